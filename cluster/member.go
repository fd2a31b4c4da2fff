package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Report is what an instance publishes of itself, under its lease: alive
// while the lease lives.
type Report struct {
	Instance string `json:"instance"`
	// Process tells two processes of one instance apart (a hitless
	// upgrade runs both for a while).
	Process   string    `json:"process"`
	PID       int       `json:"pid"`
	Heartbeat time.Time `json:"heartbeat"`
	// Applied is the revision of the desired state this process runs.
	Applied int64 `json:"applied"`
	// Backends are the live load per "pool/backend" that has any.
	Backends map[string]Load `json:"backends,omitempty"`
}

// Load is a backend's live load on one instance.
type Load struct {
	InFlight int64 `json:"inflight"`
	Conns    int   `json:"conns"`
}

// Timing of the membership.
const (
	// LeaseTTL is how long an instance that stopped answering counts as
	// alive: drains stop waiting for it, and another takes the judge.
	LeaseTTL = 5 // seconds
	// PublishEvery is how often an instance publishes its report.
	PublishEvery = 500 * time.Millisecond
)

// Member is this process's membership: it publishes reports under a lease
// and campaigns to be the judge leader, from Run until its context ends.
type Member struct {
	s       *Store
	process string
	leading atomic.Bool
	kick    chan struct{}
	ttl     int
}

// NewMember returns the membership of this process in the store's cluster.
func (s *Store) NewMember() *Member {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &Member{s: s, process: hex.EncodeToString(b[:]), kick: make(chan struct{}, 1), ttl: LeaseTTL}
}

// Process tells this process apart from another of the same instance.
func (m *Member) Process() string { return m.process }

// Leading reports whether this process is the judge leader now. It turns
// false as soon as the lease is lost, and within LeaseTTL when etcd stops
// answering.
func (m *Member) Leading() bool { return m.leading.Load() }

// Kick asks for a report to be published now (something changed).
func (m *Member) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Run publishes report() every PublishEvery and on each Kick, and
// campaigns for the judge, until ctx ends; then it withdraws (the report
// goes and leadership passes at once). A lost lease (etcd out of reach
// longer than its TTL) starts over with a new one.
func (m *Member) Run(ctx context.Context, report func() Report) {
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		if m.session(ctx, report) {
			delay = 100 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// session runs one lease's life; it reports whether the lease was granted.
func (m *Member) session(ctx context.Context, report func() Report) bool {
	// The grant waits for etcd while it is away; ctx ends it.
	sess, err := concurrency.NewSession(m.s.c, concurrency.WithTTL(m.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return false
	}
	defer func() {
		m.leading.Store(false)
		// Revoke the lease, so the others know at once (when etcd can be
		// reached); bounded, so a stop is never held up by etcd.
		rctx, rcancel := context.WithTimeout(context.Background(), m.s.dial)
		_, _ = m.s.c.Revoke(rctx, sess.Lease())
		rcancel()
		sess.Orphan()
	}()
	cctx, stopCampaign := context.WithCancel(ctx)
	campaigned := make(chan struct{})
	defer func() {
		// The campaign ends before leading is cleared above, so a late
		// win cannot outlive this session.
		stopCampaign()
		<-campaigned
	}()
	go func() {
		defer close(campaigned)
		el := concurrency.NewElection(sess, m.s.key("judge"))
		if el.Campaign(cctx, m.s.instance) == nil && cctx.Err() == nil {
			m.leading.Store(true)
		}
	}()
	key := m.s.key("instances/" + m.s.instance + "/" + m.process)
	t := time.NewTicker(PublishEvery)
	defer t.Stop()
	for {
		r := report()
		r.Instance, r.Process, r.PID, r.Heartbeat = m.s.instance, m.process, os.Getpid(), time.Now().UTC()
		data, _ := json.Marshal(r)
		pctx, pcancel := m.s.callCtx(ctx)
		_, _ = m.s.c.Put(pctx, key, string(data), clientv3.WithLease(sess.Lease()))
		pcancel()
		select {
		case <-ctx.Done():
			return true
		case <-sess.Done():
			return true
		case <-t.C:
		case <-m.kick:
		}
	}
}

// Instances returns the reports of the processes alive now, by instance
// then process.
func (s *Store) Instances(ctx context.Context) ([]Report, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, s.key("instances/"), clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]Report, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		// Only a process's own report under its lease counts: a key
		// anyone wrote without a lease would never die, and one that
		// does not read, or names another key, is no instance.
		var r Report
		if kv.Lease == 0 || json.Unmarshal(kv.Value, &r) != nil || r.Instance == "" || r.Process == "" ||
			string(kv.Key) != s.key("instances/"+r.Instance+"/"+r.Process) {
			continue
		}
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Instance != out[j].Instance {
			return out[i].Instance < out[j].Instance
		}
		return out[i].Process < out[j].Process
	})
	return out, nil
}

// Leader returns the instance whose judge leads ("" while none does).
func (s *Store) Leader(ctx context.Context) (string, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	resp, err := s.c.Get(ctx, s.key("judge")+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// String names the store in logs.
func (s *Store) String() string {
	return fmt.Sprintf("etcd %s under %s", strings.Join(s.c.Endpoints(), ","), s.prefix)
}
