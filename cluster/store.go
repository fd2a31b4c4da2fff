// Package cluster keeps several batons' runtime decisions in etcd: the
// desired state under one key, written in transactions that compare its
// revision, and watched by every instance; each instance's presence and
// live load under a lease; and the election of the one instance whose
// judge acts.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/stats"

	"github.com/baton-lb/baton/config"
)

// ErrUnavailable: etcd could not be reached, or did not answer in time;
// nothing was written.
var ErrUnavailable = errors.New("etcd is unavailable")

// ErrOutcomeUnknown: a write reached etcd, or may have, but its answer
// did not come back, and etcd could not be asked in time whether it took
// it: it may have been committed, and then applies everywhere.
var ErrOutcomeUnknown = errors.New("etcd did not say whether it took the write")

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
		}), grpc.WithStatsHandler(sentTracker{})},
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
// *Conflict holding the current one, and nothing was written; etcd out of
// reach is ErrUnavailable, and nothing was written either. A commit whose
// answer was lost is settled by asking etcd again (see settle); one that
// cannot be is ErrOutcomeUnknown: it may have been written.
func (s *Store) Commit(ctx context.Context, data []byte, rev int64) (int64, error) {
	id := newCommitID()
	sent := &atomic.Bool{}
	cctx, cancel := s.callCtx(context.WithValue(ctx, sentKey{}, sent))
	resp, err := s.commitTxn(cctx, data, rev, id)
	cancel()
	switch {
	case err == nil && resp.Succeeded:
		return resp.Header.Revision, nil
	case err == nil:
		return 0, conflictOf(resp)
	case !sent.Load():
		return 0, unavailable(err) // it never left this process
	}
	return s.settle(ctx, data, rev, id, err)
}

// commitTxn writes data as the state if it is still at rev, and id, which
// names this commit, beside it: a commit whose answer was lost is told
// from another instance's that way.
func (s *Store) commitTxn(ctx context.Context, data []byte, rev int64, id string) (*clientv3.TxnResponse, error) {
	k := s.key("state")
	return s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
		Then(clientv3.OpPut(k, string(data)), clientv3.OpPut(s.key(commitKey), id)).
		Else(clientv3.OpGet(k)).Commit()
}

// commitKey holds the id of the commit that wrote the state last.
const commitKey = "state-commit"

// settle finds out whether commit id, whose answer was lost (cause), was
// taken, within the request timeout. It sends the same transaction again:
// taken now, it is this commit, and the first, if still on its way, can no
// longer apply, as the revision it compares has moved. Refused, the state
// moved past rev, and the first write after rev tells whose commit it
// was: this one's (its revision is returned), or another's (a *Conflict:
// this one can never apply). ErrOutcomeUnknown when etcd does not answer
// in time, or the history after rev was compacted away.
func (s *Store) settle(ctx context.Context, data []byte, rev int64, id string, cause error) (int64, error) {
	sctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for {
		cctx, ccancel := s.callCtx(sctx)
		resp, err := s.commitTxn(cctx, data, rev, id)
		ccancel()
		switch {
		case err == nil && resp.Succeeded:
			return resp.Header.Revision, nil
		case err == nil:
			at, by, ferr := s.firstCommitAfter(sctx, rev)
			switch {
			case ferr == nil && by == id:
				return at, nil
			case ferr == nil:
				return 0, conflictOf(resp)
			case errors.Is(ferr, errCompacted):
				return 0, fmt.Errorf("%w: %v", ErrOutcomeUnknown, ferr)
			}
			cause = ferr
		default:
			cause = err
		}
		if !pause(sctx, 100*time.Millisecond) {
			return 0, fmt.Errorf("%w: %v", ErrOutcomeUnknown, cause)
		}
	}
}

var errCompacted = errors.New("etcd compacted the revisions that would tell")

// firstCommitAfter returns the revision of the first write of the state
// after rev and the commit id written with it ("" when it carried none: a
// delete, or an older baton's write).
func (s *Store) firstCommitAfter(ctx context.Context, rev int64) (int64, string, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	k, ck := s.key("state"), s.key(commitKey)
	// The range [state, state-commit] holds these two keys alone.
	for wr := range s.c.Watch(wctx, k, clientv3.WithRange(ck+"\x00"), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 {
			return 0, "", errCompacted
		}
		if err := wr.Err(); err != nil {
			return 0, "", err
		}
		// A transaction's events come in one response.
		first, ids := int64(0), map[int64]string{}
		for _, ev := range wr.Events {
			switch string(ev.Kv.Key) {
			case k:
				if first == 0 {
					first = ev.Kv.ModRevision
				}
			case ck:
				if ev.Type == clientv3.EventTypePut {
					ids[ev.Kv.ModRevision] = string(ev.Kv.Value)
				}
			}
		}
		if first != 0 {
			return first, ids[first], nil
		}
	}
	return 0, "", fmt.Errorf("no answer in time (%w)", ctx.Err())
}

func conflictOf(resp *clientv3.TxnResponse) *Conflict {
	c := &Conflict{}
	if r := resp.Responses[0].GetResponseRange(); r != nil && len(r.Kvs) > 0 {
		c.Current, c.Rev = r.Kvs[0].Value, r.Kvs[0].ModRevision
	}
	return c
}

func newCommitID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sentKey marks a call's context with a flag that sentTracker sets once
// the request has left this process: until then etcd cannot have taken it.
type sentKey struct{}

// sentTracker is the etcd client's gRPC stats handler, for sentKey.
type sentTracker struct{}

func (sentTracker) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (sentTracker) HandleRPC(ctx context.Context, st stats.RPCStats) {
	if _, ok := st.(*stats.OutPayload); ok {
		if sent, ok := ctx.Value(sentKey{}).(*atomic.Bool); ok {
			sent.Store(true)
		}
	}
}

func (sentTracker) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (sentTracker) HandleConn(context.Context, stats.ConnStats) {}

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
// none written yet), as Commit does, but does not settle a write whose
// answer was lost: that is ErrOutcomeUnknown at once (for values, such as
// the affinity keys, that the caller reads again anyway).
func (s *Store) Swap(ctx context.Context, name string, data []byte, rev int64) (int64, error) {
	sent := &atomic.Bool{}
	ctx, cancel := s.callCtx(context.WithValue(ctx, sentKey{}, sent))
	defer cancel()
	k := s.key(name)
	resp, err := s.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(k), "=", rev)).
		Then(clientv3.OpPut(k, string(data))).
		Else(clientv3.OpGet(k)).Commit()
	switch {
	case err != nil && sent.Load():
		return 0, fmt.Errorf("%w: %v", ErrOutcomeUnknown, err)
	case err != nil:
		return 0, unavailable(err)
	case resp.Succeeded:
		return resp.Header.Revision, nil
	}
	return 0, conflictOf(resp)
}

// Watch calls apply with every desired state written after rev, in order,
// until ctx ends: first the current one when it is newer than rev (an
// instance that was away catches up), then each change. It resynchronises
// by reading the key after a lost watch or a compaction. apply is called
// from one goroutine; data is nil, at revision 0, when the key was
// deleted, and on every read that finds it missing (deleted while the
// watch was lost, or never written): the caller tells which.
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
		switch {
		case len(resp.Kvs) > 0 && resp.Kvs[0].ModRevision > rev:
			rev = resp.Kvs[0].ModRevision
			apply(resp.Kvs[0].Value, rev)
		case len(resp.Kvs) == 0:
			// Deleted while the watch was lost, or never written: apply
			// knows which (this watch's rev may lag the caller's own
			// writes).
			rev = 0
			apply(nil, 0)
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
					rev = 0 // the next write starts the key again
					apply(nil, 0)
				} else {
					apply(ev.Kv.Value, rev)
				}
			}
		}
		cancel()
	}
}
