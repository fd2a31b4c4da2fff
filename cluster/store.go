// Package cluster keeps several batons' runtime decisions in etcd: the
// desired state under one key, written in transactions that compare its
// revision, and watched by every instance; each instance's presence and
// live load under a lease; and the election of the one instance whose
// judge acts.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"github.com/baton-lb/baton/config"
)

// ErrUnavailable: etcd could not be reached, or did not answer in time;
// nothing was written.
var ErrUnavailable = errors.New("etcd is unavailable")

// Conflict is a commit refused because the state changed since the
// revision it was based on: Current is the state now, at Rev.
type Conflict struct {
	Current []byte
	Rev     int64
}

func (c *Conflict) Error() string {
	return fmt.Sprintf("the shared state changed first (now at revision %d)", c.Rev)
}

// Store is a connection to etcd under one prefix.
type Store struct {
	c        *clientv3.Client
	prefix   string
	timeout  time.Duration
	dial     time.Duration
	instance string
}

// Dial connects to the etcd of c. It does not wait for etcd: a baton
// starts and serves while etcd is down, and the client reconnects on its
// own.
func Dial(c config.Cluster) (*Store, error) {
	e := c.Etcd
	cc := clientv3.Config{
		Endpoints:            e.Endpoints,
		DialTimeout:          e.DialTimeout,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: e.DialTimeout,
		Username:             e.Username,
		Password:             e.Password,
		Logger:               zap.NewNop(),
		// Reconnect soon after etcd comes back: the default backoff
		// grows to two minutes.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 500 * time.Millisecond},
			MinConnectTimeout: e.DialTimeout,
		})},
	}
	if e.TLS != (config.EtcdTLS{}) {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if e.TLS.CA != "" {
			pem, err := os.ReadFile(e.TLS.CA)
			if err != nil {
				return nil, fmt.Errorf("cluster.etcd.tls.ca: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster.etcd.tls.ca: %s holds no PEM certificate", e.TLS.CA)
			}
			tc.RootCAs = pool
		}
		if e.TLS.Cert != "" {
			cert, err := tls.LoadX509KeyPair(e.TLS.Cert, e.TLS.Key)
			if err != nil {
				return nil, fmt.Errorf("cluster.etcd.tls: %w", err)
			}
			tc.Certificates = []tls.Certificate{cert}
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd: %w", err)
	}
	return &Store{c: cli, prefix: e.Prefix, timeout: e.RequestTimeout, dial: e.DialTimeout, instance: c.Instance}, nil
}

// Close ends the connection.
func (s *Store) Close() error { return s.c.Close() }

// Instance is this baton's name in the cluster.
func (s *Store) Instance() string { return s.instance }

// Prefix is where the cluster's keys live.
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) key(k string) string { return s.prefix + k }

// callCtx bounds one call: the request timeout while connected, the dial
// timeout while the connection is down, so a decision is refused soon
// instead of waiting for an etcd that is not there.
func (s *Store) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	d := s.timeout
	if conn := s.c.ActiveConnection(); conn != nil {
		if st := conn.GetState(); st == connectivity.TransientFailure || st == connectivity.Connecting {
			d = min(d, s.dial)
		}
	}
	return context.WithTimeout(ctx, d)
}

func unavailable(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer in time (%v)", ErrUnavailable, err)
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// Load returns the desired state and its revision (0 and nil when none
// was ever written).
func (s *Store) Load(ctx context.Context) ([]byte, int64, error) { return s.Get(ctx, "state") }

// Commit writes data as the desired state if it is still at rev (0: none
// written yet) and returns the new revision. A state changed since is a
// *Conflict holding the current one; etcd out of reach is ErrUnavailable.
// Either way nothing was written.
func (s *Store) Commit(ctx context.Context, data []byte, rev int64) (int64, error) {
	return s.Swap(ctx, "state", data, rev)
}

// Get returns the value of the cluster's key name and its revision (0
// and nil when none was ever written).
func (s *Store) Get(ctx context.Context, name string) ([]byte, int64, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, s.key(name))
	if err != nil {
		return nil, 0, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	return resp.Kvs[0].Value, resp.Kvs[0].ModRevision, nil
}

// Swap writes data to the cluster's key name if it is still at rev (0:
// none written yet), as Commit does.
func (s *Store) Swap(ctx context.Context, name string, data []byte, rev int64) (int64, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	k := s.key(name)
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
		Then(clientv3.OpPut(k, string(data))).
		Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return 0, unavailable(err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	c := &Conflict{}
	if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
		c.Current, c.Rev = r.Kvs[0].Value, r.Kvs[0].ModRevision
	}
	return 0, c
}

// Watch calls apply with every desired state written after rev, in order,
// until ctx ends: first the current one when it is newer than rev (an
// instance that was away catches up), then each change. It resynchronises
// by reading the key after a lost watch or a compaction. apply is called
// from one goroutine; data is nil, at revision 0, when the key was
// deleted.
func (s *Store) Watch(ctx context.Context, rev int64, apply func(data []byte, rev int64)) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		gctx, gcancel := s.callCtx(ctx)
		resp, err := s.c.Get(gctx, s.key("state"))
		gcancel()
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 100 * time.Millisecond
		if len(resp.Kvs) > 0 && resp.Kvs[0].ModRevision > rev {
			rev = resp.Kvs[0].ModRevision
			apply(resp.Kvs[0].Value, rev)
		}
		// Watched from the read's revision, not the key's: the key may be
		// older than a compaction the cluster's other writes moved past.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range s.c.Watch(wctx, s.key("state"), clientv3.WithRev(resp.Header.Revision+1)) {
			if wr.CompactRevision != 0 || wr.Err() != nil {
				break // read it again
			}
			for _, ev := range wr.Events {
				if ev.Kv.ModRevision <= rev {
					continue
				}
				rev = ev.Kv.ModRevision
				if ev.Type == clientv3.EventTypeDelete {
					apply(nil, 0) // the next write starts the key again
				} else {
					apply(ev.Kv.Value, rev)
				}
			}
		}
		cancel()
	}
}
