package cluster_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/baton-lb/baton/cluster"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func dial(t *testing.T, e *testbed.Etcd, instance string) *cluster.Store {
	t.Helper()
	s, err := cluster.Dial(config.Cluster{Instance: instance, Etcd: config.Etcd{Endpoints: []string{e.Endpoint()},
		Prefix: "/baton/test/", DialTimeout: 500 * time.Millisecond, RequestTimeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// eventually polls cond every 10 ms until it holds or d passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCommitComparesRevision(t *testing.T) {
	e := testbed.StartEtcd(t)
	a, b := dial(t, e, "a"), dial(t, e, "b")
	ctx := context.Background()
	if data, rev, err := a.Load(ctx); err != nil || data != nil || rev != 0 {
		t.Fatalf("empty store: %q %d %v", data, rev, err)
	}
	rev1, err := a.Commit(ctx, []byte("one"), 0)
	if err != nil || rev1 == 0 {
		t.Fatalf("first commit: %d %v", rev1, err)
	}
	// b still believes nothing was written: refused, and told what is.
	_, err = b.Commit(ctx, []byte("two"), 0)
	var c *cluster.Conflict
	if !errors.As(err, &c) || string(c.Current) != "one" || c.Rev != rev1 {
		t.Fatalf("stale commit: want a conflict holding %q at %d, got %v", "one", rev1, err)
	}
	rev2, err := b.Commit(ctx, []byte("two"), c.Rev)
	if err != nil || rev2 <= rev1 {
		t.Fatalf("commit on the current revision: %d %v", rev2, err)
	}
	if data, rev, _ := a.Load(ctx); string(data) != "two" || rev != rev2 {
		t.Fatalf("load: %q at %d, want two at %d", data, rev, rev2)
	}
}

func TestWatchCatchesUpAndFollows(t *testing.T) {
	e := testbed.StartEtcd(t)
	a, b := dial(t, e, "a"), dial(t, e, "b")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rev, err := a.Commit(ctx, []byte("s1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Watch(ctx, 0, func(data []byte, _ int64) { mu.Lock(); seen = append(seen, string(data)); mu.Unlock() })
	}()
	got := func() []string { mu.Lock(); defer mu.Unlock(); return append([]string(nil), seen...) }
	eventually(t, 10*time.Second, "the watch did not catch up with s1", func() bool { return len(got()) == 1 })
	for _, v := range []string{"s2", "s3"} {
		if rev, err = a.Commit(ctx, []byte(v), rev); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "the watch did not follow s2 and s3", func() bool { return len(got()) == 3 })
	// etcd away and back: the watch goes on with what was written since.
	e.Stop()
	// Once the client knows etcd is gone, a commit is never sent: nothing
	// was written. (Sent just before it knew, its outcome is unknown.)
	eventually(t, 10*time.Second, "reads still answered with etcd stopped", func() bool {
		_, _, err := a.Load(ctx)
		return errors.Is(err, cluster.ErrUnavailable)
	})
	if _, err := a.Commit(ctx, []byte("lost"), rev); !errors.Is(err, cluster.ErrUnavailable) {
		t.Fatalf("commit with etcd stopped: want ErrUnavailable, got %v", err)
	}
	e.Start()
	var err2 error
	eventually(t, 15*time.Second, "no commit once etcd is back", func() bool {
		_, err2 = a.Commit(ctx, []byte("s4"), rev)
		return err2 == nil
	})
	eventually(t, 15*time.Second, "the watch did not resume after the outage", func() bool { return len(got()) == 4 })
	if g := got(); g[0] != "s1" || g[1] != "s2" || g[2] != "s3" || g[3] != "s4" {
		t.Fatalf("watched %q", g)
	}
	cancel()
	<-done
}

func TestMembersReportAndElectOneLeader(t *testing.T) {
	e := testbed.StartEtcd(t)
	a, b := dial(t, e, "a"), dial(t, e, "b")
	ma, mb := a.NewMember(), b.NewMember()
	actx, stopA := context.WithCancel(context.Background())
	bctx, stopB := context.WithCancel(context.Background())
	defer stopB()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		ma.Run(actx, func() cluster.Report {
			return cluster.Report{Applied: 7, Backends: map[string]cluster.Load{"shop/web-1": {InFlight: 2, Conns: 1}}}
		})
	}()
	go func() { defer wg.Done(); mb.Run(bctx, func() cluster.Report { return cluster.Report{Applied: 7} }) }()
	var reps []cluster.Report
	eventually(t, 10*time.Second, "both instances did not report", func() bool {
		reps, _ = a.Instances(context.Background())
		return len(reps) == 2
	})
	if reps[0].Instance != "a" || reps[0].Backends["shop/web-1"].InFlight != 2 || reps[1].Instance != "b" || reps[1].Applied != 7 {
		t.Fatalf("reports: %+v", reps)
	}
	// Keys anyone wrote without a lease are no instances: they would never
	// die, and drains would wait for them for ever.
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for k, v := range map[string]string{"ghost": "not json", "c/p1": `{"instance":"c","process":"p1","applied":1}`, "d/p2": `{"instance":"e","process":"p2"}`} {
		if _, err := raw.Put(context.Background(), "/baton/test/instances/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	if reps, err := a.Instances(context.Background()); err != nil || len(reps) != 2 {
		t.Fatalf("with keys without a lease: %+v %v; want a and b only", reps, err)
	}
	eventually(t, 10*time.Second, "no leader", func() bool { return ma.Leading() != mb.Leading() })
	leader, err := b.Leader(context.Background())
	if err != nil || (leader == "a") != ma.Leading() {
		t.Fatalf("leader %q (%v); a leads: %v", leader, err, ma.Leading())
	}
	// The leader stops: the other takes over at once, and the stopped
	// one's report is gone.
	stop, other, otherName := stopA, mb, "b"
	if mb.Leading() {
		stop, other, otherName = stopB, ma, "a"
	}
	stop()
	eventually(t, 10*time.Second, "the other did not take over", other.Leading)
	eventually(t, 10*time.Second, "the stopped instance's report stayed", func() bool {
		reps, _ = a.Instances(context.Background())
		return len(reps) == 1 && reps[0].Instance == otherName
	})
	stopA()
	stopB()
	wg.Wait()
}

func TestLeaderLosesLeadWhenEtcdIsAway(t *testing.T) {
	e := testbed.StartEtcd(t)
	a := dial(t, e, "a")
	m := a.NewMember()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx, func() cluster.Report { return cluster.Report{} }) }()
	eventually(t, 10*time.Second, "no leader", m.Leading)
	e.Stop()
	// The lease's TTL bounds how long it believes it leads.
	eventually(t, time.Duration(cluster.LeaseTTL+5)*time.Second, "still leading with etcd away", func() bool { return !m.Leading() })
	e.Start()
	eventually(t, 20*time.Second, "did not lead again once etcd was back", m.Leading)
	cancel()
	<-done
}

// TestFollowerStopsWithEtcdAway: a member that does not lead, stopped
// while etcd cannot be reached, returns at once: its campaign waits on
// nothing that needs etcd to answer (a stop of baton must never hang on
// the cluster).
func TestFollowerStopsWithEtcdAway(t *testing.T) {
	e := testbed.StartEtcd(t)
	a, b := dial(t, e, "a"), dial(t, e, "b")
	ma, mb := a.NewMember(), b.NewMember()
	actx, stopA := context.WithCancel(context.Background())
	defer stopA()
	bctx, stopB := context.WithCancel(context.Background())
	defer stopB()
	aDone, bDone := make(chan struct{}), make(chan struct{})
	go func() { defer close(aDone); ma.Run(actx, func() cluster.Report { return cluster.Report{} }) }()
	eventually(t, 10*time.Second, "a did not lead", ma.Leading)
	go func() { defer close(bDone); mb.Run(bctx, func() cluster.Report { return cluster.Report{} }) }()
	eventually(t, 10*time.Second, "b did not campaign", func() bool {
		resp, err := b.Instances(context.Background())
		return err == nil && len(resp) == 2
	})
	// b's campaign has its key in, behind a's: wait for it to be there.
	raw := e.Client(t)
	eventually(t, 10*time.Second, "b's candidate key is not in etcd", func() bool {
		resp, err := raw.Get(context.Background(), "/baton/test/judge/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})
	e.Stop()
	stopB()
	select {
	case <-bDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the follower's Run did not return within 10s of its stop with etcd away")
	}
	stopA()
	select {
	case <-aDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's Run did not return within 10s of its stop with etcd away")
	}
}

// TestMembersComeBackAfterTheirLeasesRanOut: etcd away for longer than
// the lease, the leader and the other both lose theirs; once etcd is back
// both report again and one leads.
func TestMembersComeBackAfterTheirLeasesRanOut(t *testing.T) {
	e := testbed.StartEtcd(t)
	a, b := dial(t, e, "a"), dial(t, e, "b")
	ma, mb := a.NewMember(), b.NewMember()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	for _, m := range []*cluster.Member{ma, mb} {
		wg.Add(1)
		go func() { defer wg.Done(); m.Run(ctx, func() cluster.Report { return cluster.Report{} }) }()
	}
	eventually(t, 10*time.Second, "no leader", func() bool { return ma.Leading() != mb.Leading() })
	e.Stop()
	// The leader stops leading once its lease ran out unrenewed; the
	// other's runs out about then too.
	eventually(t, time.Duration(cluster.LeaseTTL+5)*time.Second, "still leading with etcd away", func() bool { return !ma.Leading() && !mb.Leading() })
	e.Start()
	eventually(t, 20*time.Second, "both did not report again once etcd was back", func() bool {
		reps, err := a.Instances(context.Background())
		return err == nil && len(reps) == 2
	})
	eventually(t, 20*time.Second, "no leader once etcd was back", func() bool { return ma.Leading() != mb.Leading() })
}

// TestStrayJudgeKeysDoNotBlockTheElection: keys under judge/ that no
// campaign wrote — one without a lease would never go — are not
// candidates: a lone member leads, and Leader names it.
func TestStrayJudgeKeysDoNotBlockTheElection(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	ctx := context.Background()
	if _, err := raw.Put(ctx, "/baton/test/judge/stray", "ghost"); err != nil {
		t.Fatal(err)
	}
	// Under a live lease, but not named by it: no campaign wrote it.
	lease, err := raw.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, "/baton/test/judge/1", "phantom", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	a := dial(t, e, "a")
	if leader, err := a.Leader(ctx); err != nil || leader != "" {
		t.Fatalf("leader before any campaign: %q %v; want none", leader, err)
	}
	m := a.NewMember()
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); m.Run(mctx, func() cluster.Report { return cluster.Report{} }) }()
	defer func() { cancel(); <-done }()
	eventually(t, 10*time.Second, "a lone member behind stray judge keys did not lead", m.Leading)
	if leader, err := a.Leader(ctx); err != nil || leader != "a" {
		t.Fatalf("leader %q %v; want a", leader, err)
	}
}
