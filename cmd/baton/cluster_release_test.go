package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// rolloutCluster is the batons of a clustered rollout test: batons[0] ("a")
// is the one the release is driven through; "b" was started first and
// leads the judge.
type rolloutCluster struct {
	etcd     *testbed.Etcd
	batons   []*clusterBaton
	stopLoad []context.CancelFunc // ends the load sent through each baton
	loadWG   []*sync.WaitGroup
}

func startRolloutCluster(t *testing.T, n int, pools string) *rolloutCluster {
	t.Helper()
	c := &rolloutCluster{etcd: testbed.StartEtcd(t), batons: make([]*clusterBaton, n)}
	name := func(i int) string { return string(rune('a' + i)) }
	c.batons[1] = startClusterBaton(t, c.etcd, name(1), pools)
	if !poll(20*time.Second, func() bool {
		status, cl := c.batons[1].cluster(t)
		return status == 200 && cl.JudgeLeader == name(1)
	}) {
		t.Fatal("b did not become the judge leader")
	}
	for i := range c.batons {
		if i != 1 {
			c.batons[i] = startClusterBaton(t, c.etcd, name(i), pools)
		}
	}
	waitCluster(t, c.batons...)
	return c
}

// stopTraffic ends the load sent through baton i and waits for its
// requests in flight to finish: the clients have moved to another
// instance, as a VIP or DNS would move them.
func (c *rolloutCluster) stopTraffic(i int) {
	c.stopLoad[i]()
	c.loadWG[i].Wait()
}

// sameCanary polls until every baton reports the same canary, share and
// verdict, reached by the same judge on the same pooled evidence of n
// processes, and returns that report.
func sameCanary(t *testing.T, bs []*clusterBaton, n int, cond func(v1.CanaryReport) bool) (v1.CanaryReport, error) {
	var reps []v1.CanaryReport
	ok := poll(30*time.Second, func() bool {
		reps = reps[:0]
		for _, b := range bs {
			rep, ok := b.canaryReport(t)
			if !ok || rep.VerdictAt == nil || len(rep.Evidence.Instances) != n || !cond(rep) {
				return false
			}
			reps = append(reps, rep)
		}
		for _, rep := range reps[1:] {
			f := reps[0]
			if rep.CanaryVersion != f.CanaryVersion || rep.Weight != f.Weight || rep.Verdict != f.Verdict || rep.Reason != f.Reason ||
				!rep.VerdictAt.Equal(*f.VerdictAt) || rep.Evidence.JudgedBy != f.Evidence.JudgedBy ||
				canaryRequests(rep, "canary") != canaryRequests(f, "canary") {
				return false
			}
		}
		return true
	})
	if !ok {
		var b strings.Builder
		for i, rep := range reps {
			fmt.Fprintf(&b, "\n%s: %s at %v: %s %s (%s) by %s on %v", bs[i].name, rep.CanaryVersion, rep.Weight, rep.Verdict, rep.Rule,
				rep.Reason, rep.Evidence.JudgedBy, rep.Evidence.Instances)
		}
		return v1.CanaryReport{}, fmt.Errorf("the batons did not report the same canary and verdict within 30s:%s", b.String())
	}
	return reps[0], nil
}

// TestClusterRollingReleaseThreeInstances releases v42 to four servers with
// examples/rolling-deploy.sh driven through instance a of three batons
// sharing one etcd, under steady GET and POST load spread over all three.
// Mid-canary all three report the same canary share and verdict on their
// pooled evidence; then the judge leader b is killed, and a and c elect
// another and go on with the release. Afterwards etcd is stopped for 10 s
// under load: decisions are refused, nothing fails, and the instances
// converge when it returns. No request fails and every POST reaches a
// backend once.
func TestClusterRollingReleaseThreeInstances(t *testing.T) {
	r := &rollout{instances: 3, env: []string{"OBSERVE=20s"}, poolYAML: "    judge: {interval: 500ms, warmup: 1s}\n"}
	r.during = func(t *testing.T, c *rolloutCluster) {
		a, b, cc := c.batons[0], c.batons[1], c.batons[2]
		if !poll(60*time.Second, func() bool {
			rep, ok := a.canaryReport(t)
			return ok && rep.CanaryVersion == "v42"
		}) {
			t.Fatal("the canary did not start within 60s")
		}
		rep, err := sameCanary(t, c.batons, 3, func(rep v1.CanaryReport) bool {
			return rep.CanaryVersion == "v42" && canaryRequests(rep, "canary") > 0
		})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Evidence.JudgedBy != "b" {
			t.Errorf("judged by %q, want b", rep.Evidence.JudgedBy)
		}
		t.Logf("mid-canary, all three: v42 at %v%%, %s (%s), judged by %s on the evidence of %v",
			rep.Weight, rep.Verdict, rep.Reason, rep.Evidence.JudgedBy, rep.Evidence.Instances)

		// The judge leader dies; its clients went to the others first.
		c.stopTraffic(1)
		if err := b.proc.cmd.Process.Kill(); err != nil {
			t.Fatalf("killing b: %v", err)
		}
		rep, err = sameCanary(t, []*clusterBaton{a, cc}, 3, func(rep v1.CanaryReport) bool {
			return rep.CanaryVersion == "v42" && rep.Evidence.JudgedBy != "b" && rep.Evidence.JudgedBy != ""
		})
		if err != nil {
			t.Fatalf("after the leader died: %v", err)
		}
		t.Logf("after b died: %s judges, %s (%s), still on the evidence of %v", rep.Evidence.JudgedBy, rep.Verdict, rep.Reason, rep.Evidence.Instances)

		// The release finishes through a.
		if !poll(120*time.Second, func() bool {
			p, err := a.admin.pool("shop")
			if err != nil || p.StableVersion != "v42" {
				return false
			}
			for _, be := range p.Backends {
				if be.Version != "v42" || be.State != "active" || !be.Healthy {
					return false
				}
			}
			return true
		}) {
			t.Fatal("the release did not finish within 120s")
		}
		if !poll(20*time.Second, func() bool {
			_, cl := a.cluster(t)
			return len(cl.Instances) == 2
		}) {
			t.Fatal("b's lease did not run out")
		}

		// etcd away for 10 s under load: every instance serves, and
		// refuses decisions with the reason.
		c.etcd.Stop()
		outage := time.After(10 * time.Second)
		for _, x := range []*clusterBaton{a, cc} {
			status, data, err := x.admin.do("PATCH", "/v1/pools/shop/backends/web-2", `{"weight":150}`)
			if err != nil || status != 503 || !strings.Contains(string(data), "cluster_unavailable") {
				t.Errorf("%s: a decision with etcd away: %d %s %v; want 503 cluster_unavailable", x.name, status, data, err)
			}
		}
		<-outage // the fault lasts 10 s; the load runs all along
		c.etcd.Start()

		// They converge: a decision through c applies on a.
		if !poll(20*time.Second, func() bool {
			status, _, err := cc.admin.do("PATCH", "/v1/pools/shop/backends/web-2", `{"weight":150}`)
			return err == nil && status == 200
		}) {
			t.Fatal("c refused decisions 20s after etcd came back")
		}
		backendOf(t, a, "web-2", "weight 150", func(be v1.Backend) bool { return be.Weight == 150 })
		waitCluster(t, a, cc)
	}
	r.run(t)
	if r.err != nil {
		t.Fatalf("rolling-deploy.sh through a failed: %v", r.err)
	}
	r.everyServerAnswers(t, "v42")
	t.Logf("%d requests through three batons during the release and the outage, %d POSTs, none failed", r.sent, r.posts)
}
