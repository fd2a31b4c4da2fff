package control_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// clPrefix is where the tests' batons keep their keys in etcd.
const clPrefix = "/baton/test/"

// clStart starts a baton in process as instance name of a cluster on the
// etcd at endpoint, with its state file in a directory of its own and the
// given pools (YAML). request_timeout is 3s.
func clStart(t *testing.T, endpoint, name, pools string) *testbed.Baton {
	t.Helper()
	return clStartIn(t, t.TempDir(), endpoint, name, pools)
}

// clStartIn is clStart with the state file in dir.
func clStartIn(t *testing.T, dir, endpoint, name, pools string) *testbed.Baton {
	t.Helper()
	return testbed.Start(t, clConfig(dir, endpoint, name, pools))
}

// clConfig is the config of clStartIn.
func clConfig(dir, endpoint, name, pools string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: debug, access: false}
state_file: %q
cluster:
  instance: %s
  etcd: {endpoints: [%q], prefix: %s, dial_timeout: 500ms, request_timeout: 3s}
%s`, filepath.Join(dir, "baton.state.json"), name, endpoint, clPrefix, pools)
}

// clPools is pool shop with backends web-1 and web-2 at addresses that
// need not answer: the tests here look at decisions, not traffic.
const clPools = `pools:
  - name: shop
    health_check: {interval: 1s, timeout: 500ms}
    backends:
      - {name: web-1, address: "127.0.0.1:9", version: v1}
      - {name: web-2, address: "127.0.0.1:7", version: v1}
`

// clState reads the shared state's raw value ("" when there is none).
func clState(t *testing.T, raw *clientv3.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := raw.Get(ctx, clPrefix+"state")
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

// clBackendState is the admin state of a backend of pool shop on b.
func clBackendState(b *testbed.Baton, name string) pool.State {
	if be := b.Reg.Pool("shop").Backend(name); be != nil {
		return be.State()
	}
	return pool.Active
}

// clAudited reports whether b's audit log has a change with action on
// backend, made by actor.
func clAudited(b *testbed.Baton, action, backend, actor string) bool {
	for _, ev := range b.Reg.Events(0, false) {
		if ev.Action == action && ev.Backend == backend && ev.Actor == actor {
			return true
		}
	}
	return false
}

// clWaitStarted waits until b has read etcd: it answers for the cluster.
func clWaitStarted(t *testing.T, b *testbed.Baton) {
	t.Helper()
	testbed.Eventually(t, 15*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := b.Reg.Cluster(ctx)
		return err == nil && st != nil && len(st.Instances) > 0
	}, "the baton to join the cluster")
}

// TestClusterDecisionWhoseAnswerWasLost: etcd commits a decision and its
// answer never reaches the baton that asked. Once etcd can be asked, the
// baton finds the commit is its own: the decision succeeds and is
// audited. When etcd cannot be asked in time, the decision is refused as
// of unknown outcome — never as "nothing changed" — and it applies once
// etcd is back, as it was committed.
func TestClusterDecisionWhoseAnswerWasLost(t *testing.T) {
	e := testbed.StartEtcd(t)
	proxy := testbed.NewEtcdProxy(t, e)
	raw := e.Client(t)
	a := clStart(t, proxy.Endpoint(), "a", clPools)
	clWaitStarted(t, a)

	proxy.Swallow(true)
	done := make(chan error, 1)
	go func() {
		_, err := a.Reg.Drain("shop", "web-2", control.By("ops"))
		done <- err
	}()
	testbed.Eventually(t, 10*time.Second, func() bool { return strings.Contains(clState(t, raw), "web-2") },
		"etcd to commit the drain")
	// Committed, and the answer lost: the connection fails, the baton
	// dials again and asks.
	proxy.Swallow(false)
	proxy.Cut()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("a drain etcd committed, its answer lost: %v; want it settled as made", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the drain did not return within 20s")
	}
	if s := clBackendState(a, "web-2"); s != pool.Draining && s != pool.Drained {
		t.Fatalf("web-2 is %s after its drain succeeded", s)
	}
	if !clAudited(a, "drain", "web-2", "ops") {
		t.Fatalf("the drain is not in the audit log: %+v", a.Reg.Events(0, false))
	}

	// etcd cannot be asked in time: the outcome is unknown, and said so.
	proxy.Swallow(true)
	_, err := a.Reg.Drain("shop", "web-1", control.By("ops"))
	if !errors.Is(err, control.ErrClusterOutcomeUnknown) || !strings.Contains(err.Error(), "may have been applied") ||
		strings.Contains(err.Error(), "nothing changed") {
		t.Fatalf("a drain whose answer was lost with etcd out of reach after: %v; want ErrClusterOutcomeUnknown", err)
	}
	if !strings.Contains(clState(t, raw), "web-1") {
		t.Fatal("etcd did not commit the second drain; the test needs it to")
	}
	proxy.Swallow(false)
	proxy.Cut()
	testbed.Eventually(t, 20*time.Second, func() bool {
		s := clBackendState(a, "web-1")
		return s == pool.Draining || s == pool.Drained
	}, "the committed drain of web-1 to apply once etcd answers")
}

// TestClusterConfigsThatDifferKeepOthersDecisions: during a rolling config
// push a has pool extra, b not yet. A decision through b commits only what
// it changed: a's drain of extra/x-2, which b's config does not know,
// stays in force — on a, and in etcd for b once its file has the pool.
func TestClusterConfigsThatDifferKeepOthersDecisions(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	extra := `  - name: extra
    routes: [{path_prefix: /extra/}]
    health_check: {interval: 1s, timeout: 500ms}
    backends:
      - {name: x-1, address: "127.0.0.1:5", version: v1}
      - {name: x-2, address: "127.0.0.1:3", version: v1}
`
	a := clStart(t, e.Endpoint(), "a", clPools+extra)
	bDir := t.TempDir()
	b := clStartIn(t, bDir, e.Endpoint(), "b", clPools)
	clWaitStarted(t, a)
	clWaitStarted(t, b)

	if _, err := a.Reg.Drain("extra", "x-2", control.By("ops")); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return b.Reg.SharedRevision() == a.Reg.SharedRevision() },
		"b to apply a's drain")
	if _, err := b.Reg.SetWeight("shop", "web-1", 40, control.By("ops")); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return a.Reg.SharedRevision() == b.Reg.SharedRevision() },
		"a to apply b's weight")
	if w := a.Reg.Pool("shop").Backend("web-1").Weight(); w != 40 {
		t.Fatalf("a: web-1 at weight %d, want 40", w)
	}
	if s := a.Reg.Pool("extra").Backend("x-2").State(); s != pool.Draining && s != pool.Drained {
		t.Fatalf("a: extra/x-2 is %s after a decision through b, whose config lacks pool extra; want it still drained", s)
	}
	if !strings.Contains(clState(t, raw), `"x-2"`) {
		t.Fatalf("the shared state lost extra/x-2's drain: %s", clState(t, raw))
	}
	// b's file gets pool extra: the drain, kept in the shared state, now
	// applies on b too.
	next, err := config.Parse([]byte(clConfig(bDir, e.Endpoint(), "b", clPools+extra)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Reg.Reload(next); err != nil {
		t.Fatal(err)
	}
	if s := b.Reg.Pool("extra").Backend("x-2").State(); s != pool.Draining && s != pool.Drained {
		t.Fatalf("b: extra/x-2 is %s once b's config has pool extra; want drained, as the cluster decided", s)
	}
}

// TestClusterSwitchHealthGuardWithoutALeaderThatActs: the switch's health
// guard is each instance's own checks, so it does not wait for a judge
// leader that acts — here a candidate that is no baton holds the lead.
// When every new server fails its checks, the instances switch back.
func TestClusterSwitchHealthGuardWithoutALeaderThatActs(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	ghostLeads(t, raw)
	blue := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "b1", "b2")
	green := testbed.NewBackends(t, testbed.BackendOptions{Version: "v2"}, "g1", "g2")
	pools := fmt.Sprintf(`pools:
  - name: shop
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1, fall: 1}
    backends:
      - {name: b1, address: %q, version: v1}
      - {name: b2, address: %q, version: v1}
`, blue[0].Addr(), blue[1].Addr())
	a := clStart(t, e.Endpoint(), "a", pools)
	b := clStart(t, e.Endpoint(), "b", pools)
	clWaitStarted(t, a)
	clWaitStarted(t, b)
	for _, g := range green {
		if _, err := a.Reg.Add("shop", control.AddSpec{Name: g.Name(), Address: g.Addr(), Version: "v2", Standby: true}); err != nil {
			t.Fatal(err)
		}
	}
	for _, x := range []*testbed.Baton{a, b} {
		testbed.Eventually(t, 10*time.Second, func() bool {
			p := x.Reg.Pool("shop")
			g1, g2 := p.Backend("g1"), p.Backend("g2")
			return g1 != nil && g2 != nil && g1.Health() == pool.Up && g2.Health() == pool.Up
		}, "the standby servers healthy on every instance")
	}
	if _, err := a.Reg.Switch("shop", control.SwitchSpec{To: "v2", Watch: time.Minute}, control.By("deployer")); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool { sw, _ := b.Reg.SwitchStatus("shop"); return sw != nil },
		"b to apply the switch")
	for _, g := range green {
		g.SetHealthy(false)
	}
	for _, x := range []*testbed.Baton{a, b} {
		testbed.Eventually(t, 15*time.Second, func() bool {
			sw, last := x.Reg.SwitchStatus("shop")
			return sw == nil && last != nil && last.Outcome == "switched_back"
		}, "the switch back, with no new server passing its checks and the lead held by no baton")
	}
	if got := a.Reg.Pool("shop").StableVersion(); got != "v1" {
		t.Fatalf("stable version %s after the switch back, want v1", got)
	}
}

// TestClusterJudgeDoesNotOverrideLaterDecisions: between the judge's
// reading of a pool and its action — a verdict written to etcd on the
// way — an operator holds the pool or moves the canary by hand, through
// any instance. The judge's step, promotion or rollback then does
// nothing: a hold stays a hold, a weight set by hand stays.
func TestClusterJudgeDoesNotOverrideLaterDecisions(t *testing.T) {
	e := testbed.StartEtcd(t)
	be := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "web-1")
	ca := testbed.NewBackends(t, testbed.BackendOptions{Version: "v2"}, "web-2")
	a := clStart(t, e.Endpoint(), "a", fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1}
    canary: {version: v2, weight: 10, steps: [10, 25, 50], auto_promote: true, auto_rollback: true}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v2}
`, be[0].Addr(), ca[0].Addr()))
	testbed.Eventually(t, 15*time.Second, func() bool {
		st, err := a.Reg.Cluster(context.Background())
		return err == nil && st.Leading
	}, "a to lead the judge")
	canaryIs := func(what, v string, w float64) {
		t.Helper()
		if cv, cw := a.Reg.Pool("shop").Canary(); cv != v || cw != w {
			t.Fatalf("%s: canary %q at %g%%, want %q at %g%%", what, cv, cw, v, w)
		}
	}
	by := control.By("ops")
	if err := a.Reg.SetCanary("shop", "v2", 10, by); err != nil {
		t.Fatal(err)
	}
	if err := a.Reg.Hold("shop", true, by); err != nil {
		t.Fatal(err)
	}
	a.Reg.JudgeActs("shop", "v2", 10, "pass", false)
	canaryIs("a step judged before a hold", "v2", 10)
	if !a.Reg.Held("shop") {
		t.Fatal("the hold is gone after a step judged before it")
	}
	a.Reg.JudgeActs("shop", "v2", 10, "fail", false)
	canaryIs("a rollback judged before a hold", "v2", 10)

	if err := a.Reg.Hold("shop", false, by); err != nil {
		t.Fatal(err)
	}
	if err := a.Reg.SetCanary("shop", "v2", 20, by); err != nil {
		t.Fatal(err)
	}
	a.Reg.JudgeActs("shop", "v2", 10, "pass", false)
	canaryIs("a step judged at 10% after a manual 20%", "v2", 20)

	if err := a.Reg.SetCanary("shop", "v2", 50, by); err != nil {
		t.Fatal(err)
	}
	if err := a.Reg.Hold("shop", true, by); err != nil {
		t.Fatal(err)
	}
	a.Reg.JudgeActs("shop", "v2", 50, "pass", false)
	canaryIs("a promotion judged before a hold", "v2", 50)
	if !a.Reg.Held("shop") {
		t.Fatal("the hold is gone after a promotion judged before it")
	}

	// As judged, the judge acts.
	if err := a.Reg.Hold("shop", false, by); err != nil {
		t.Fatal(err)
	}
	a.Reg.JudgeActs("shop", "v2", 50, "pass", false)
	canaryIs("a promotion as judged", "", 0)
	if got := a.Reg.Pool("shop").StableVersion(); got != "v2" {
		t.Fatalf("stable %s after a promotion as judged, want v2", got)
	}
}

// TestClusterFrozenProcessHandsTheJudgeOver: a process frozen for a
// hitless upgrade does not judge, so it gives the lead up at once —
// another instance judges meanwhile — while it keeps publishing its
// report (drains count its requests in flight). Thawed (the upgrade
// failed), it stands for the lead again.
func TestClusterFrozenProcessHandsTheJudgeOver(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	a := clStart(t, e.Endpoint(), "a", clPools)
	b := clStart(t, e.Endpoint(), "b", clPools)
	leading := func(x *testbed.Baton) bool {
		st, err := x.Reg.Cluster(context.Background())
		return err == nil && st.Leading
	}
	testbed.Eventually(t, 15*time.Second, func() bool { return leading(a) != leading(b) }, "one leader")
	leader, other := a, b
	if leading(b) {
		leader, other = b, a
	}
	candidates := func() int64 {
		resp, err := raw.Get(context.Background(), clPrefix+"judge/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return -1
		}
		return resp.Count
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return candidates() == 2 }, "both to stand for the lead")

	frozenAt := time.Now().UTC()
	leader.Reg.Freeze(true)
	testbed.Eventually(t, 10*time.Second, func() bool { return leading(other) && !leading(leader) },
		"the other instance to lead once the leader is frozen")
	if n := candidates(); n != 1 {
		t.Fatalf("%d candidates with one process frozen, want 1", n)
	}
	// Its report goes on: heartbeats after the freeze.
	testbed.Eventually(t, 10*time.Second, func() bool {
		st, err := other.Reg.Cluster(context.Background())
		if err != nil {
			return false
		}
		for _, in := range st.Instances {
			if in.Name == leader.Reg.Config().Cluster.Instance && in.Heartbeat.After(frozenAt.Add(time.Second)) {
				return true
			}
		}
		return false
	}, "the frozen process's report to go on")

	leader.Reg.Freeze(false)
	testbed.Eventually(t, 10*time.Second, func() bool { return candidates() == 2 }, "the thawed process to stand again")
	if !leading(other) {
		t.Fatal("the lead moved back once the process thawed; it should stay until its holder goes")
	}
}

// TestClusterDeletedStateKeyResetsEverywhere: deleting the shared state's
// key resets the cluster's decisions, the same way on every path, and each
// instance audits it: one that sees the delete, one whose watch re-reads
// (its stream broke, the history compacted), and one that was down with
// a state file of the old revision, which must not push it back.
func TestClusterDeletedStateKeyResetsEverywhere(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	proxy := testbed.NewEtcdProxy(t, e)
	a := clStart(t, e.Endpoint(), "a", clPools)
	bDir := t.TempDir()
	b := clStartIn(t, bDir, proxy.Endpoint(), "b", clPools)
	clWaitStarted(t, a)
	clWaitStarted(t, b)
	if _, err := a.Reg.Drain("shop", "web-2", control.By("ops")); err != nil {
		t.Fatal(err)
	}
	drained := func(x *testbed.Baton) bool {
		s := clBackendState(x, "web-2")
		return s == pool.Draining || s == pool.Drained
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return drained(b) }, "b to apply the drain")
	// c was down with b's state file of this revision.
	cDir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(bDir, "baton.state.json"))
	if err != nil || !strings.Contains(string(data), "web-2") {
		t.Fatalf("b's state file: %s %v", data, err)
	}
	if err := os.WriteFile(filepath.Join(cDir, "baton.state.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}

	proxy.Swallow(true) // b hears nothing of the delete
	ctx := context.Background()
	del, err := raw.Delete(ctx, clPrefix+"state")
	if err != nil || del.Deleted != 1 {
		t.Fatalf("deleting the state key: %+v %v", del, err)
	}
	if _, err := raw.Compact(ctx, del.Header.Revision); err != nil {
		t.Fatal(err)
	}
	reset := func(x *testbed.Baton) bool {
		if drained(x) {
			return false
		}
		for _, ev := range x.Reg.Events(0, false) {
			if ev.Action == "cluster_state_deleted" {
				return true
			}
		}
		return false
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return reset(a) }, "a to apply and audit the reset")
	proxy.Swallow(false)
	proxy.Cut()
	testbed.Eventually(t, 20*time.Second, func() bool { return reset(b) }, "b, its watch re-reading, to apply and audit the reset")

	c := clStartIn(t, cDir, e.Endpoint(), "c", clPools)
	if got := clState(t, raw); got != "" {
		t.Fatalf("c, started on a state file of a deleted revision, wrote it back: %s", got)
	}
	if !reset(c) {
		t.Fatalf("c did not apply and audit the reset: web-2 %s, events %+v", clBackendState(c, "web-2"), c.Reg.Events(0, false))
	}
}

// TestClusterCloseDoesNotWaitForTheJudgesEtcdCalls: the judge's calls to
// etcd end with the registry: a stop while etcd takes a request and never
// answers returns at once, not after the request timeout (30s here).
func TestClusterCloseDoesNotWaitForTheJudgesEtcdCalls(t *testing.T) {
	e := testbed.StartEtcd(t)
	proxy := testbed.NewEtcdProxy(t, e)
	be := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "web-1")
	ca := testbed.NewBackends(t, testbed.BackendOptions{Version: "v2"}, "web-2")
	cfg, err := config.Parse([]byte(fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: debug, access: false}
state_file: %q
cluster:
  instance: a
  etcd: {endpoints: [%q], prefix: %s, dial_timeout: 500ms, request_timeout: 30s}
pools:
  - name: shop
    stable_version: v1
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1}
    canary: {version: v2, weight: 10}
    judge: {interval: 100ms}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v2}
`, filepath.Join(t.TempDir(), "baton.state.json"), proxy.Endpoint(), clPrefix, be[0].Addr(), ca[0].Addr())), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	reg, err := control.New(cfg, cfg.StateFile, ctLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	reg.Start()
	stopped := make(chan struct{})
	stop := sync.OnceFunc(func() {
		go func() {
			reg.Close()
			close(stopped)
		}()
	})
	defer func() {
		stop()
		proxy.Swallow(false)
		proxy.Cut()
		<-stopped
	}()
	testbed.Eventually(t, 15*time.Second, func() bool {
		st, err := reg.Cluster(context.Background())
		return err == nil && st.Leading
	}, "a to lead the judge")
	testbed.Eventually(t, 15*time.Second, func() bool {
		rep, err := reg.Canary("shop")
		return err == nil && rep.VerdictAt != nil
	}, "a verdict")
	proxy.Swallow(true)
	// The judge's next etcd call goes out and no answer comes: its
	// verdicts, every tick before, stop.
	testbed.Eventually(t, 15*time.Second, func() bool {
		rep, err := reg.Canary("shop")
		return err == nil && rep.VerdictAt != nil && time.Since(*rep.VerdictAt) > 2*time.Second
	}, "the judge to wait on etcd")
	stop()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5s while etcd kept the judge's requests unanswered")
	}
}

// TestClusterFollowersShowOnlyTheLeadersVerdict: a verdict under
// verdicts/ written by an instance that does not lead now (a leader that
// lost the lead and wrote once more) is not shown as the judge's word:
// the followers pause instead. Here the lead is held by a candidate that
// is no baton, and the verdict names a, alive and fresh.
func TestClusterFollowersShowOnlyTheLeadersVerdict(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	ghostLeads(t, raw)
	be := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "web-1")
	ca := testbed.NewBackends(t, testbed.BackendOptions{Version: "v2"}, "web-2")
	pools := fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1}
    canary: {version: v2, weight: 10}
    judge: {interval: 100ms}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v2}
`, be[0].Addr(), ca[0].Addr())
	a := clStart(t, e.Endpoint(), "a", pools)
	b := clStart(t, e.Endpoint(), "b", pools)
	clWaitStarted(t, a)
	clWaitStarted(t, b)
	// b's own evidence makes a verdict's figures that pass its checks.
	ctx := context.Background()
	var evidence []byte
	testbed.Eventually(t, 10*time.Second, func() bool {
		resp, err := raw.Get(ctx, clPrefix+"evidence/canary/shop/b/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		evidence = resp.Kvs[0].Value
		return true
	}, "b's evidence")
	written := time.Now().UTC()
	forged, err := json.Marshal(map[string]any{"run": "v2@0", "canary": "v2", "stable": "v1", "leader": "a",
		"at": written.Add(-time.Millisecond), "result": map[string]string{"verdict": "pass", "rule": "forged", "reason": "not the leader's"},
		"evidence": json.RawMessage(evidence), "instances": []string{"a/x"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, clPrefix+"verdicts/shop", string(forged)); err != nil {
		t.Fatal(err)
	}
	// b's first look after the write.
	var rep *v1.CanaryReport
	testbed.Eventually(t, 10*time.Second, func() bool {
		rep, err = b.Reg.Canary("shop")
		return err == nil && (rep.Verdict == "pass" || rep.VerdictAt != nil && rep.VerdictAt.After(written))
	}, "b to look at the verdicts again")
	if rep.Verdict == "pass" || rep.Rule != "cluster_paused" || !strings.Contains(rep.Reason, "ghost") {
		t.Fatalf("b shows %s (%s: %s) for a verdict by a, which does not lead; want a pause naming the leader", rep.Verdict, rep.Rule, rep.Reason)
	}
}

// TestClusterLeaderRefusesLatencyNoRequestsBack: evidence in etcd whose
// latency counts are more than its requests — a million slow canary
// requests on one request — is no baton's: the leader deletes it rather
// than let it outweigh every instance's figures.
func TestClusterLeaderRefusesLatencyNoRequestsBack(t *testing.T) {
	e := testbed.StartEtcd(t)
	raw := e.Client(t)
	be := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "web-1")
	ca := testbed.NewBackends(t, testbed.BackendOptions{Version: "v2"}, "web-2")
	a := clStart(t, e.Endpoint(), "a", fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1}
    canary: {version: v2, weight: 10}
    judge: {interval: 100ms}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v2}
`, be[0].Addr(), ca[0].Addr()))
	testbed.Eventually(t, 15*time.Second, func() bool {
		st, err := a.Reg.Cluster(context.Background())
		return err == nil && st.Leading
	}, "a to lead the judge")
	ctx := context.Background()
	key := clPrefix + "evidence/canary/shop/ghost/p1"
	forged := fmt.Sprintf(`{"run":"v2@0","at":%q,"weight":10,
"stable":{"version":"v1","requests":0,"all":{"count":0,"sum_us":0}},
"canary":{"version":"v2","requests":1,"all":{"count":1000000,"sum_us":9000000000,"buckets":[[60,1000000]]},
  "latency":{"/":{"count":1000000,"sum_us":9000000000,"buckets":[[60,1000000]]}}}}`, time.Now().UTC().Format(time.RFC3339Nano))
	if _, err := raw.Put(ctx, key, forged); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool {
		resp, err := raw.Get(ctx, key)
		return err == nil && len(resp.Kvs) == 0
	}, "the leader to delete evidence whose latency counts are above its requests")
}

// ghostLeads puts a live candidate that is no baton first in the judge's
// election, so that no baton leads while it lives (120 s).
func ghostLeads(t *testing.T, raw *clientv3.Client) {
	t.Helper()
	ctx := context.Background()
	lease, err := raw.Grant(ctx, 120)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Put(ctx, fmt.Sprintf("%sjudge/%x", clPrefix, int64(lease.ID)), "ghost", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
}
