package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
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
//
// It is safe for concurrent use.
type Member struct {
	s       *Store
	process string
	leading atomic.Bool
	kick    chan struct{}
	ttl     int

	mu sync.Mutex // protects standing and changed
	// standing: this process campaigns for the judge; changed is closed
	// (and replaced) when standing changes.
	standing bool
	changed  chan struct{}
}

// NewMember returns the membership of this process in the store's cluster.
func (s *Store) NewMember() *Member {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return &Member{s: s, process: hex.EncodeToString(b[:]), kick: make(chan struct{}, 1), ttl: LeaseTTL,
		standing: true, changed: make(chan struct{})}
}

// Stand makes this process campaign for the judge (true, the default) or
// withdraw (false): it gives the lead up at once, and its candidate key
// goes, while its report is published as before. A process frozen for a
// hitless upgrade, which does not judge, withdraws, so that another
// judges meanwhile.
func (m *Member) Stand(on bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.standing == on {
		return
	}
	m.standing = on
	close(m.changed)
	m.changed = make(chan struct{})
}

// stand returns whether this process stands, and a channel closed at the
// next change.
func (m *Member) stand() (bool, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.standing, m.changed
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
		// win cannot outlive this session. It returns as soon as cctx
		// ends, whether etcd answers or not.
		stopCampaign()
		<-campaigned
	}()
	go func() {
		defer close(campaigned)
		m.campaign(cctx, sess.Lease())
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

// campaign runs the election for the judge under lease until ctx ends,
// the way etcd's concurrency.Election does — a candidate's key under
// judge/ named by its lease; the oldest key leads — but with every call
// bounded by ctx. etcd's Campaign, cancelled, resigns with the client's
// own context, which waits for etcd for as long as it is away: a baton
// that did not lead could not stop during an outage, nor start a new
// session after its lease ran out in one.
func (m *Member) campaign(ctx context.Context, lease clientv3.LeaseID) {
	defer m.leading.Store(false)
	k := m.s.key(fmt.Sprintf("judge/%x", int64(lease)))
	delay := 100 * time.Millisecond
	for ctx.Err() == nil {
		on, changed := m.stand()
		if !on {
			m.withdraw(ctx, k, changed)
			select {
			case <-ctx.Done():
			case <-changed:
			}
			continue
		}
		// Standing down ends this round at once, leading included.
		sctx, cancel := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			select {
			case <-changed:
				cancel()
			case <-sctx.Done():
			}
		}()
		created, err := m.enter(sctx, k, lease)
		if err == nil {
			err = m.waitTurn(sctx, created)
		}
		if err == nil {
			delay = 100 * time.Millisecond
			m.leading.Store(true)
			m.lead(sctx, k, created)
			m.leading.Store(false)
		}
		won := err == nil
		if !won {
			pause(sctx, delay)
			delay = min(2*delay, 2*time.Second)
		}
		cancel()
		<-watched
	}
}

// withdraw deletes this process's candidate key k, trying again until it
// is gone or ctx ends or standing changes again.
func (m *Member) withdraw(ctx context.Context, k string, changed <-chan struct{}) {
	for {
		dctx, cancel := m.s.callCtx(ctx)
		_, err := m.s.c.Delete(dctx, k)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// enter puts this process's candidate key k under its lease, unless it is
// there already, and returns the key's create revision: its place in the
// queue.
func (m *Member) enter(ctx context.Context, k string, lease clientv3.LeaseID) (int64, error) {
	cctx, cancel := m.s.callCtx(ctx)
	defer cancel()
	resp, err := m.s.c.Txn(cctx).If(clientv3.Compare(clientv3.CreateRevision(k), "=", 0)).
		Then(clientv3.OpPut(k, m.s.instance, clientv3.WithLease(lease))).
		Else(clientv3.OpGet(k)).Commit()
	if err != nil {
		return 0, err
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return 0, errors.New("the candidate key went between the compare and the read")
	}
	return kvs[0].CreateRevision, nil
}

// waitTurn returns once no candidate key older than created is left, or
// with ctx's error; any other error sends the caller round again. Keys
// that are no live candidate's are deleted on the way (see candidate).
func (m *Member) waitTurn(ctx context.Context, created int64) error {
	for {
		gctx, cancel := m.s.callCtx(ctx)
		resp, err := m.s.c.Get(gctx, m.s.key("judge/"), clientv3.WithPrefix(),
			clientv3.WithMaxCreateRev(created-1), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend))
		cancel()
		if err != nil {
			return err
		}
		// The newest live candidate of the older ones goes last (its
		// lease runs out, or it resigns): wait for it, then look again.
		wait := ""
		for _, kv := range resp.Kvs {
			ok, err := m.s.candidate(ctx, kv.Key, kv.Lease)
			if err != nil {
				return err
			}
			if ok {
				wait = string(kv.Key)
				break
			}
			m.s.dropStray(ctx, kv.Key, kv.ModRevision)
		}
		if wait == "" {
			return nil
		}
		if !m.waitDelete(ctx, wait, resp.Header.Revision) && !pause(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

// candidate reports whether key, under lease, is a live campaigner's:
// named by its lease, as a campaign writes it, and the lease alive.
// Anything else under judge/ would hold the election up, for ever when it
// has no lease.
func (s *Store) candidate(ctx context.Context, key []byte, lease int64) (bool, error) {
	if lease == 0 || string(key) != s.key(fmt.Sprintf("judge/%x", lease)) {
		return false, nil
	}
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	resp, err := s.c.TimeToLive(cctx, clientv3.LeaseID(lease))
	if err != nil {
		return false, err
	}
	return resp.TTL != -1, nil // -1: no such lease (it ran out)
}

// dropStray deletes key, which is no candidate's, unless it changed since
// revision mod; a failure leaves it, to be passed over again.
func (s *Store) dropStray(ctx context.Context, key []byte, mod int64) {
	cctx, cancel := s.callCtx(ctx)
	defer cancel()
	k := string(key)
	_, _ = s.c.Txn(cctx).If(clientv3.Compare(clientv3.ModRevision(k), "=", mod)).Then(clientv3.OpDelete(k)).Commit()
}

// waitDelete reports whether key was deleted after revision rev. It
// returns false when ctx ends or the watch is lost (a compaction, say),
// for the caller to read again.
func (m *Member) waitDelete(ctx context.Context, key string, rev int64) bool {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range m.s.c.Watch(wctx, key, clientv3.WithRev(rev+1)) {
		if wr.Err() != nil || wr.CompactRevision != 0 {
			return false
		}
		for _, ev := range wr.Events {
			if ev.Type == clientv3.EventTypeDelete {
				return true
			}
		}
	}
	return false
}

// pause waits d, or less when ctx ends; it reports whether ctx lives on.
func pause(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// lead returns when ctx ends or this process's candidate key k (created
// at created) is gone — deleted by hand, say: leading then ends, and the
// caller campaigns again.
func (m *Member) lead(ctx context.Context, k string, created int64) {
	rev := created
	for {
		if !m.waitDelete(ctx, k, rev) && !pause(ctx, 200*time.Millisecond) {
			return
		}
		gctx, cancel := m.s.callCtx(ctx)
		resp, err := m.s.c.Get(gctx, k)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			// etcd away: the lease's keep-alive decides (the session ends
			// when it runs out); watch again meanwhile.
			continue
		case len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != created:
			return
		}
		rev = resp.Header.Revision
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

// Leader returns the instance whose judge leads ("" while none does): the
// oldest live candidate's (see candidate).
func (s *Store) Leader(ctx context.Context) (string, error) {
	gctx, cancel := s.callCtx(ctx)
	resp, err := s.c.Get(gctx, s.key("judge/"), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	cancel()
	if err != nil {
		return "", unavailable(err)
	}
	for _, kv := range resp.Kvs {
		ok, err := s.candidate(ctx, kv.Key, kv.Lease)
		if err != nil {
			return "", unavailable(err)
		}
		if ok {
			return string(kv.Value), nil
		}
	}
	return "", nil
}

// String names the store in logs.
func (s *Store) String() string {
	return fmt.Sprintf("etcd %s under %s", strings.Join(s.c.Endpoints(), ","), s.prefix)
}
