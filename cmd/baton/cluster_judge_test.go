package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// tunableShop is a backend whose /search takes about median, changeable
// while it runs.
func tunableShop(t *testing.T, name, version string, median *atomic.Int64, seed uint64) *testbed.Server {
	var mu sync.Mutex // protects rng
	rng := rand.New(rand.NewPCG(seed, 7))
	return testbed.NewBackend(t, testbed.BackendOptions{Name: name, Version: version, Delay: func(path string) time.Duration {
		if path != "/search" {
			return 0
		}
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(float64(median.Load()) * math.Exp(0.25*rng.NormFloat64()))
	}})
}

// canaryReport reads b's GET /v1/pools/shop/canary.
func (cb *clusterBaton) canaryReport(t *testing.T) (v1.CanaryReport, bool) {
	t.Helper()
	var rep v1.CanaryReport
	status, data, err := cb.admin.do("GET", "/v1/pools/shop/canary", "")
	return rep, err == nil && status == 200 && json.Unmarshal(data, &rep) == nil
}

func canaryRequests(rep v1.CanaryReport, role string) uint64 {
	for _, v := range rep.Versions {
		if v.Role == role {
			return v.Requests
		}
	}
	return 0
}

// TestClusterJudgePoolsEvidence runs two batons on one etcd with all the
// traffic through the one whose judge does not lead: the leader, which
// serves nothing itself, judges on the evidence the other publishes, both
// report the same verdict on the same figures, the judge pauses while
// etcd is away, and the leader rolls back a canary that became slower
// than stable on the other instance's traffic alone.
func TestClusterJudgePoolsEvidence(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	var fast, canaryMedian atomic.Int64
	fast.Store(int64(2 * time.Millisecond))
	canaryMedian.Store(int64(2 * time.Millisecond))
	var addrs []any
	for i, n := range []string{"web-1", "web-2", "web-3"} {
		addrs = append(addrs, tunableShop(t, n, "v1", &fast, uint64(i+1)).Addr())
	}
	canary := tunableShop(t, "web-4", "v2", &canaryMedian, 9)
	addrs = append(addrs, canary.Addr())
	pools := fmt.Sprintf(`pools:
  - name: shop
    routes: [{host: shop.test}]
    stable_version: v1
    health_check: {interval: 200ms, timeout: 150ms, rise: 1}
    canary: {version: v2, weight: 0, auto_rollback: true}
    judge: {interval: 500ms, warmup: 1s}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v1}
      - {name: web-3, address: %q, version: v1}
      - {name: web-4, address: %q, version: v2}
`, addrs...)
	a, b := startPair(t, etcd, pools, "web-1", "web-2", "web-3", "web-4")
	leader, other := leaderFirst(t, a, b)

	ctx, stop := context.WithTimeout(context.Background(), 90*time.Second)
	defer stop()
	wg, sent, bad := paceLoad(ctx, other.traffic, []string{"shop.test"}, 200)
	defer wg.Wait()
	defer stop()
	if !poll(10*time.Second, func() bool { return sent.Load() >= 200 }) {
		t.Fatal("the load did not start")
	}
	leader.admin.must("PUT", "/v1/pools/shop/canary", `{"version": "v2", "weight": 20}`, 200, nil)

	// The same verdict on the same pooled figures on both, though the
	// leader served none of them.
	var lr, or v1.CanaryReport
	if !poll(30*time.Second, func() bool {
		var ok1, ok2 bool
		lr, ok1 = leader.canaryReport(t)
		or, ok2 = other.canaryReport(t)
		return ok1 && ok2 && lr.VerdictAt != nil && or.VerdictAt != nil && lr.VerdictAt.Equal(*or.VerdictAt) &&
			len(lr.Evidence.Instances) == 2 && canaryRequests(lr, "canary") >= 50
	}) {
		t.Fatalf("no verdict on pooled evidence shown alike on both within 30s:\nleader %+v\nother %+v", lr, or)
	}
	if lr.Verdict != or.Verdict || lr.Reason != or.Reason || !reflect.DeepEqual(lr.Figures, or.Figures) ||
		!reflect.DeepEqual(lr.Versions, or.Versions) || lr.Evidence.JudgedBy != leader.name || or.Evidence.JudgedBy != leader.name {
		t.Fatalf("the two instances report differently:\nleader %+v\nother  %+v", lr, or)
	}
	if lr.Verdict == "fail" || lr.Rule == "cluster_paused" {
		t.Fatalf("an identical canary judged %s: %s", lr.Verdict, lr.Reason)
	}
	out, errOut, code := runBinary(t, "ctl", "--admin", other.admin.base, "canary", "shop")
	if code != 0 || !strings.Contains(out, "judged by "+leader.name+" on the evidence of 2 baton processes") {
		t.Fatalf("baton ctl canary through %s: exit %d\n%s%s", other.name, code, out, errOut)
	}
	t.Logf("pooled verdict on both: %s (%s), canary %d requests, stable %d; evidence of %v",
		lr.Verdict, lr.Reason, canaryRequests(lr, "canary"), canaryRequests(lr, "stable"), lr.Evidence.Instances)

	// etcd away: both say the judge pauses; the canary stays as it is.
	etcd.Stop()
	for _, x := range []*clusterBaton{leader, other} {
		var rep v1.CanaryReport
		if !poll(20*time.Second, func() bool {
			var ok bool
			rep, ok = x.canaryReport(t)
			return ok && rep.Rule == "cluster_paused"
		}) {
			t.Fatalf("%s: the judge did not pause with etcd away: %s %s: %s", x.name, rep.Verdict, rep.Rule, rep.Reason)
		}
		if rep.CanaryVersion != "v2" || rep.Weight != 20 || rep.Verdict != "inconclusive" {
			t.Fatalf("%s: while paused: canary %q at %v, verdict %s", x.name, rep.CanaryVersion, rep.Weight, rep.Verdict)
		}
		t.Logf("%s while etcd is away: %s", x.name, rep.Reason)
	}
	etcd.Start()

	// The canary becomes three times slower; only the other instance
	// sees it, and whichever leads now rolls it back.
	canaryMedian.Store(int64(20 * time.Millisecond))
	fast.Store(int64(6 * time.Millisecond))
	var rep v1.CanaryReport
	if !poll(60*time.Second, func() bool {
		var ok bool
		rep, ok = other.canaryReport(t)
		return ok && rep.CanaryVersion == "" && rep.Previous != nil
	}) {
		t.Fatalf("the slower canary was not rolled back within 60s: %s %s: %s", rep.Verdict, rep.Rule, rep.Reason)
	}
	if p := rep.Previous; p.Outcome != "rolled_back" || p.By != "judge" || p.Rule != "latency_gross" && p.Rule != "latency" {
		t.Fatalf("the canary ended %+v; want rolled back by the judge for its latency", *p)
	}
	stop()
	wg.Wait()
	if bad.Load() > 0 {
		t.Fatalf("%d of %d requests failed", bad.Load(), sent.Load())
	}
	t.Logf("rolled back by the judge: %s; %d requests, none failed", rep.Previous.Reason, sent.Load())
}

// TestClusterSwitchGuardsWatchEveryInstance: a blue/green switch to a
// version that fails every request is switched back by the leader's
// guards, though all the traffic went through the other instance: the
// guards watch the whole cluster's figures.
func TestClusterSwitchGuardsWatchEveryInstance(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	w1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-1", Version: "v1"})
	w2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-2", Version: "v1"})
	green := testbed.NewBackend(t, testbed.BackendOptions{Name: "green-1", Version: "v2",
		Fail: map[string]testbed.Failure{"/": {Status: 500, Code: "BROKEN"}}})
	pools := fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    outlier: {consecutive_failures: -1}
    retries: {attempts: 0}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v1}
`, w1.Addr(), w2.Addr())
	a, b := startPair(t, etcd, pools, "web-1", "web-2")
	leader, other := leaderFirst(t, a, b)
	leader.admin.must("POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"green-1","address":%q,"version":"v2","standby":true}`, green.Addr()), 201, nil)
	for _, x := range []*clusterBaton{leader, other} {
		backendOf(t, x, "green-1", "healthy on standby", func(be v1.Backend) bool { return be.Healthy })
	}
	leader.admin.must("POST", "/v1/pools/shop/switch", `{"to":"v2","watch":"60s","max_error_rate":0.05}`, 200, nil)

	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	var last *v1.SwitchOutcome
	if !poll(40*time.Second, func() bool {
		for range 5 {
			if resp, err := client.Get("http://" + other.traffic + "/"); err == nil {
				resp.Body.Close()
			}
		}
		p, err := leader.admin.pool("shop")
		if err != nil {
			return false
		}
		last = p.LastSwitch
		return last != nil
	}) {
		t.Fatal("the switch to a failing version was not switched back within 40s")
	}
	if last.Outcome != "switched_back" || !strings.Contains(last.Reason, "v2 answered") {
		t.Fatalf("the switch ended %+v; want switched back by the error guard", *last)
	}
	if green.Hits() == 0 {
		t.Fatalf("green served %d requests", green.Hits())
	}
	t.Logf("switched back on the other instance's traffic: %s", last.Reason)
}

// TestClusterCanaryDuringSwitchIsJudged: a canary set while a blue/green
// switch is still watched is judged on both instances' evidence; the
// switch's figures and the canary's are published apart and neither
// takes the other's for an old run's.
func TestClusterCanaryDuringSwitchIsJudged(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	w1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-1", Version: "v1"})
	green := testbed.NewBackend(t, testbed.BackendOptions{Name: "green-1", Version: "v2"})
	v3 := testbed.NewBackend(t, testbed.BackendOptions{Name: "v3-1", Version: "v3"})
	pools := fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    judge: {interval: 500ms}
    backends:
      - {name: web-1, address: %q, version: v1}
`, w1.Addr())
	a, b := startPair(t, etcd, pools, "web-1")
	leader, other := leaderFirst(t, a, b)
	leader.admin.must("POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"green-1","address":%q,"version":"v2","standby":true}`, green.Addr()), 201, nil)
	for _, x := range []*clusterBaton{leader, other} {
		backendOf(t, x, "green-1", "healthy on standby", func(be v1.Backend) bool { return be.Healthy })
	}
	leader.admin.must("POST", "/v1/pools/shop/switch", `{"to":"v2","watch":"120s"}`, 200, nil)
	leader.admin.must("POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"v3-1","address":%q,"version":"v3"}`, v3.Addr()), 201, nil)
	for _, x := range []*clusterBaton{leader, other} {
		backendOf(t, x, "v3-1", "healthy", func(be v1.Backend) bool { return be.Healthy })
	}
	leader.admin.must("PUT", "/v1/pools/shop/canary", `{"version": "v3", "weight": 20}`, 200, nil)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	traffic := func() { // ten requests through each instance
		for _, x := range []*clusterBaton{leader, other} {
			for range 10 {
				if resp, err := client.Get("http://" + x.traffic + "/"); err == nil {
					resp.Body.Close()
				}
			}
		}
	}
	var rep v1.CanaryReport
	if !poll(30*time.Second, func() bool {
		traffic()
		var ok bool
		rep, ok = leader.canaryReport(t)
		return ok && rep.CanaryVersion == "v3" && rep.Rule != "cluster_paused" && rep.Rule != "cluster" &&
			rep.Evidence.JudgedBy == leader.name && len(rep.Evidence.Instances) == 2 && canaryRequests(rep, "canary") > 0
	}) {
		t.Fatalf("the canary during the switch was not judged on both instances' evidence: %s %s: %s (evidence of %v)",
			rep.Verdict, rep.Rule, rep.Reason, rep.Evidence.Instances)
	}
	// And it stays judged: eight verdicts in a row, none a pause.
	seen, paused := map[time.Time]bool{}, 0
	if !poll(30*time.Second, func() bool {
		traffic()
		if r, ok := leader.canaryReport(t); ok && r.VerdictAt != nil && !seen[*r.VerdictAt] {
			seen[*r.VerdictAt] = true
			if r.Rule == "cluster_paused" {
				paused++
				rep = r
			}
		}
		return len(seen) >= 8
	}) || paused > 0 {
		t.Fatalf("%d of %d verdicts during the switch were pauses: %s", paused, len(seen), rep.Reason)
	}
	if p, err := leader.admin.pool("shop"); err != nil || p.Switch == nil {
		t.Fatalf("the switch's watch ended: %+v %v", p.LastSwitch, err)
	}
	t.Logf("during the switch the canary is judged: %s (%s) on %v", rep.Verdict, rep.Reason, rep.Evidence.Instances)
}
