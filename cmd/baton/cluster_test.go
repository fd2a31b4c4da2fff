package main

import (
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// clusterBaton is one baton process of a test cluster.
type clusterBaton struct {
	name    string
	cfgPath string
	traffic string
	admin   *adminClient
	proc    *proc
}

// startClusterBaton writes the config of instance name (pools is the YAML of
// its pools) sharing etcd's prefix, runs each setup on the config's
// directory, and starts it.
func startClusterBaton(t *testing.T, etcd *testbed.Etcd, name, pools string, setup ...func(dir string)) *clusterBaton {
	t.Helper()
	dir := t.TempDir()
	cb := &clusterBaton{name: name, cfgPath: filepath.Join(dir, "baton.yaml"), traffic: freeAddr(t)}
	adminAddr := freeAddr(t)
	cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
cluster:
  instance: %s
  etcd: {endpoints: [%q], prefix: /baton/test/, dial_timeout: 500ms, request_timeout: 2s}
%s`, cb.traffic, adminAddr, name, etcd.Endpoint(), pools)
	if err := os.WriteFile(cb.cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cb.admin = &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 30 * time.Second}}
	t.Cleanup(cb.admin.c.CloseIdleConnections)
	for _, f := range setup {
		f(dir)
	}
	cb.start(t)
	return cb
}

func (cb *clusterBaton) start(t *testing.T) {
	t.Helper()
	cb.proc = startBinary(t, "serve", "-c", cb.cfgPath)
}

// cluster reads GET /v1/cluster; status 0 while the admin API does not
// answer (not started yet, or killed).
func (cb *clusterBaton) cluster(t *testing.T) (int, v1.Cluster) {
	t.Helper()
	var cl v1.Cluster
	status, data, err := cb.admin.do("GET", "/v1/cluster", "")
	if err != nil {
		return 0, cl
	}
	if err := json.Unmarshal(data, &cl); err != nil {
		t.Fatalf("%s: GET /v1/cluster: %v\n%s", cb.name, err, data)
	}
	return status, cl
}

// waitCluster waits until every baton sees all of them alive, on one
// revision, with one judge leader.
func waitCluster(t *testing.T, bs ...*clusterBaton) {
	t.Helper()
	var last v1.Cluster
	ok := poll(20*time.Second, func() bool {
		leader := ""
		for _, b := range bs {
			status, cl := b.cluster(t)
			last = cl
			if status != 200 || len(cl.Instances) != len(bs) || cl.JudgeLeader == "" || (leader != "" && cl.JudgeLeader != leader) {
				return false
			}
			leader = cl.JudgeLeader
			for _, in := range cl.Instances {
				if in.AppliedRevision != cl.AppliedRevision {
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("the batons did not agree on the cluster within 20s; last seen %+v", last)
	}
}

const clusterPools = `pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    drain_timeout: 60s
    backends:
      - {name: web-1, address: "%s", version: v1}
      - {name: web-2, address: "%s", version: v1}
`

// startClusterPair starts backends web-1 (holding requests to the paths of
// hold1) and web-2, and batons a and b on etcd serving them, and waits
// until both serve and agree on the cluster.
func startClusterPair(t *testing.T, etcd *testbed.Etcd, hold1 map[string]*testbed.Gate) (a, b *clusterBaton) {
	t.Helper()
	w1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-1", Version: "v1", Hold: hold1})
	w2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-2", Version: "v1"})
	return startPair(t, etcd, fmt.Sprintf(clusterPools, w1.Addr(), w2.Addr()), "web-1", "web-2")
}

// startPair starts instances a and b with pools and waits until both serve
// pool shop's backends and agree on the cluster.
func startPair(t *testing.T, etcd *testbed.Etcd, pools string, backends ...string) (a, b *clusterBaton) {
	t.Helper()
	a = startClusterBaton(t, etcd, "a", pools)
	b = startClusterBaton(t, etcd, "b", pools)
	waitServing(t, a.proc, a.admin, "shop", backends...)
	waitServing(t, b.proc, b.admin, "shop", backends...)
	waitCluster(t, a, b)
	return a, b
}

// leaderFirst returns the one of a and b whose judge leads, then the other.
func leaderFirst(t *testing.T, a, b *clusterBaton) (leader, other *clusterBaton) {
	t.Helper()
	if _, cl := a.cluster(t); cl.JudgeLeader == b.name {
		return b, a
	}
	return a, b
}

// backendOf polls b's view of the pool until cond holds for the backend.
func backendOf(t *testing.T, b *clusterBaton, name, what string, cond func(v1.Backend) bool) v1.Backend {
	t.Helper()
	var last v1.Backend
	ok := poll(15*time.Second, func() bool {
		p, err := b.admin.pool("shop")
		if err != nil {
			return false
		}
		be := findBackend(p, name)
		if be == nil {
			return false
		}
		last = *be
		return cond(last)
	})
	if !ok {
		t.Fatalf("%s: %s of %s did not come within 15s: last %+v", b.name, what, name, last)
	}
	return last
}

// TestClusterDecisionsDrainAcrossInstances runs two batons on one etcd: a
// decision made through one applies on the other; a drain through one
// waits for the other's request in flight and names it while it does; two
// decisions at once through both cannot both land on the same revision.
func TestClusterDecisionsDrainAcrossInstances(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	gate := testbed.NewGate()
	defer gate.Release()
	a, b := startClusterPair(t, etcd, map[string]*testbed.Gate{"/slow": gate})

	// A decision through a applies on b.
	a.admin.must("PATCH", "/v1/pools/shop/backends/web-2", `{"weight":250}`, 200, nil)
	backendOf(t, b, "web-2", "weight 250", func(be v1.Backend) bool { return be.Weight == 250 })

	// A long request through b on web-1.
	client := &http.Client{Timeout: 60 * time.Second}
	defer client.CloseIdleConnections()
	long := make(chan int, 1)
	a.admin.must("POST", "/v1/pools/shop/backends/web-2/drain?wait=10s", "", 200, nil)
	backendOf(t, b, "web-2", "drained", func(be v1.Backend) bool { return be.State == "drained" })
	go func() {
		resp, err := client.Get("http://" + b.traffic + "/slow")
		if err != nil {
			long <- 0
			return
		}
		resp.Body.Close()
		long <- resp.StatusCode
	}()
	if who := gate.Wait(t, 10*time.Second, "the long request through b"); who != "web-1" {
		t.Fatalf("the long request reached %s", who)
	}
	a.admin.must("POST", "/v1/pools/shop/backends/web-2/enable", "", 200, nil)

	// A short wait through a runs out and names b.
	status, data, err := a.admin.do("POST", "/v1/pools/shop/backends/web-1/drain?wait=1s", "")
	if err != nil || status != 504 || !strings.Contains(string(data), "b (1 in flight") {
		t.Fatalf("drain?wait=1s through a with b's request in flight: %d %s %v; want 504 naming b", status, data, err)
	}
	var e struct {
		Busy []string `json:"busy_instances"`
	}
	if json.Unmarshal(data, &e); len(e.Busy) != 1 || !strings.HasPrefix(e.Busy[0], "b ") {
		t.Fatalf("busy_instances: %q", e.Busy)
	}
	// A longer one does not return while b's request is in flight.
	drained := make(chan string, 1)
	go func() {
		status, data, err := a.admin.do("POST", "/v1/pools/shop/backends/web-1/drain?wait=30s", "")
		drained <- fmt.Sprintf("%d %s %v", status, data, err)
	}()
	backendOf(t, b, "web-1", "draining with the long request", func(be v1.Backend) bool { return be.State == "draining" && be.Inflight == 1 })
	// b has published that it applied the drain, and still has the
	// request: the drain through a waits.
	_, ca := a.cluster(t)
	if !poll(10*time.Second, func() bool {
		_, cl := a.cluster(t)
		for _, in := range cl.Instances {
			if in.Name == "b" && in.AppliedRevision >= ca.AppliedRevision {
				return true
			}
		}
		return false
	}) {
		t.Fatal("b did not report the drain's revision")
	}
	select {
	case got := <-drained:
		t.Fatalf("the drain through a returned while b had a request in flight on web-1: %s", got)
	default:
	}
	gate.Release()
	if code := <-long; code != 200 {
		t.Fatalf("the long request through b answered %d", code)
	}
	select {
	case got := <-drained:
		if !strings.HasPrefix(got, "200 ") || !strings.Contains(got, `"state": "drained"`) {
			t.Fatalf("the drain through a: %s", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the drain through a did not return within 20s of b's request ending")
	}
	backendOf(t, b, "web-1", "drained", func(be v1.Backend) bool { return be.State == "drained" })
	a.admin.must("POST", "/v1/pools/shop/backends/web-1/enable", "", 200, nil)

	// Decisions at once through both: each is made on the revision its
	// instance applied, so when both start from the same one, one is
	// refused with the state as it is now.
	conflicts := 0
	for i := 0; i < 50 && conflicts == 0; i++ {
		var wg sync.WaitGroup
		var sa, sb int
		var db []byte
		wg.Add(2)
		go func() {
			defer wg.Done()
			sa, _, _ = a.admin.do("PATCH", "/v1/pools/shop/backends/web-1", fmt.Sprintf(`{"weight":%d}`, 10+i))
		}()
		go func() {
			defer wg.Done()
			sb, db, _ = b.admin.do("PATCH", "/v1/pools/shop/backends/web-1", fmt.Sprintf(`{"weight":%d}`, 100+i))
		}()
		wg.Wait()
		if sa != 200 && sa != 409 || sb != 200 && sb != 409 {
			t.Fatalf("concurrent decisions: %d and %d", sa, sb)
		}
		if sb == 409 {
			conflicts++
			var body struct {
				Code string  `json:"code"`
				Pool v1.Pool `json:"pool"`
			}
			if err := json.Unmarshal(db, &body); err != nil || body.Code != v1.CodeStateChanged || findBackend(body.Pool, "web-1") == nil {
				t.Fatalf("the refused decision: %s", db)
			}
		}
		if sa == 409 {
			conflicts++
		}
		// Whatever landed, both instances agree on it.
		waitCluster(t, a, b)
		pa, _ := a.admin.pool("shop")
		pb, _ := b.admin.pool("shop")
		if findBackend(pa, "web-1").Weight != findBackend(pb, "web-1").Weight {
			t.Fatalf("after round %d the instances disagree: a %d, b %d", i, findBackend(pa, "web-1").Weight, findBackend(pb, "web-1").Weight)
		}
	}
	if conflicts == 0 {
		t.Fatal("50 rounds of decisions at once through both instances and none refused")
	}
}

// TestClusterEtcdOutageAndRestart: with etcd away, both batons serve on
// with the decisions they have and refuse new ones with 503; once it is
// back, a decision applies everywhere; a baton that was down applies the
// current decisions before it serves.
func TestClusterEtcdOutageAndRestart(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	a, b := startClusterPair(t, etcd, nil)
	a.admin.must("POST", "/v1/pools/shop/backends/web-2/drain?wait=10s", "", 200, nil)
	backendOf(t, b, "web-2", "drained", func(be v1.Backend) bool { return be.State == "drained" })

	etcd.Stop()
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	for _, cb := range []*clusterBaton{a, b} {
		// Once the baton knows etcd is gone, a decision is never sent, so
		// nothing changed. (One sent just before it knew is refused as
		// cluster_outcome_unknown: etcd may have taken it as it went.)
		if !poll(10*time.Second, func() bool { status, _ := cb.cluster(t); return status == 503 }) {
			t.Fatalf("%s: GET /v1/cluster did not answer 503 within 10s of etcd going away", cb.name)
		}
		status, data, err := cb.admin.do("POST", "/v1/pools/shop/backends/web-2/enable", "")
		if err != nil || status != 503 || !strings.Contains(string(data), `"code": "cluster_unavailable"`) {
			t.Fatalf("%s: a decision with etcd away: %d %s %v; want 503 cluster_unavailable", cb.name, status, data, err)
		}
		for i := 0; i < 20; i++ {
			resp, err := client.Get("http://" + cb.traffic + "/")
			if err != nil {
				t.Fatalf("%s: a request with etcd away: %v", cb.name, err)
			}
			if resp.StatusCode != 200 || resp.Header.Get("X-Backend") != "web-1" {
				t.Fatalf("%s: a request with etcd away: %d from %q, want 200 from web-1 (web-2 stays drained)", cb.name, resp.StatusCode, resp.Header.Get("X-Backend"))
			}
			resp.Body.Close()
		}
	}
	// b goes down while etcd is away too; a decision is made once etcd
	// is back; b starts again and applies it before it serves.
	b.proc.cmd.Process.Kill()
	b.proc.waitExit(t, 10*time.Second)
	etcd.Start()
	if !poll(20*time.Second, func() bool {
		status, _, _ := a.admin.do("PATCH", "/v1/pools/shop/backends/web-1", `{"weight":70}`)
		return status == 200
	}) {
		t.Fatal("no decision through a within 20s of etcd coming back")
	}
	b.start(t)
	p := waitServing(t, b.proc, b.admin, "shop", "web-1")
	if be := findBackend(p, "web-1"); be.Weight != 70 {
		t.Fatalf("b after its restart: web-1 at weight %d, want 70 (decided while it was down)", be.Weight)
	}
	// A drained backend comes back draining until it is seen idle.
	if be := findBackend(p, "web-2"); be.State != "drained" && be.State != "draining" {
		t.Fatalf("b after its restart: web-2 %s, want drained", be.State)
	}
	backendOf(t, b, "web-2", "drained", func(be v1.Backend) bool { return be.State == "drained" })
	waitCluster(t, a, b)
}

// TestClusterAffinityCookieHoldsOnEveryInstance: the batons of a cluster
// sign affinity cookies with the same keys, kept in etcd, so a client that
// got its version through one keeps it through the other (DNS or a VIP
// moving it) — even when each ran alone before, with a key file of its
// own; a cookie no instance signed is ignored on both.
func TestClusterAffinityCookieHoldsOnEveryInstance(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	w1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-1", Version: "v1"})
	w2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "web-2", Version: "v2"})
	pools := fmt.Sprintf(`pools:
  - name: shop
    stable_version: v1
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    canary: {version: v2, weight: 50}
    backends:
      - {name: web-1, address: %q, version: v1}
      - {name: web-2, address: %q, version: v2}
`, w1.Addr(), w2.Addr())
	ownKeys := func(dir string) {
		secret := make([]byte, 32)
		_, _ = crand.Read(secret)
		kf := fmt.Sprintf(`{"format":1,"keys":[{"id":3,"secret":%q,"created":%q}]}`,
			base64.StdEncoding.EncodeToString(secret), time.Now().UTC().Format(time.RFC3339))
		if err := os.WriteFile(filepath.Join(dir, "baton.keys.json"), []byte(kf), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := startClusterBaton(t, etcd, "a", pools, ownKeys)
	b := startClusterBaton(t, etcd, "b", pools, ownKeys)
	waitServing(t, a.proc, a.admin, "shop", "web-1", "web-2")
	waitServing(t, b.proc, b.admin, "shop", "web-1", "web-2")
	waitCluster(t, a, b)

	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	visit := func(addr string, cookie *http.Cookie) (string, *http.Cookie) {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+addr+"/", nil)
		if cookie != nil {
			req.AddCookie(cookie)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got *http.Cookie
		for _, c := range resp.Cookies() {
			if c.Name == "baton_shop" {
				got = c
			}
		}
		return resp.Header.Get("X-Backend"), got
	}
	for _, pair := range [][2]*clusterBaton{{a, b}, {b, a}} {
		from, to := pair[0], pair[1]
		for range 4 { // new visitors, on both versions
			backend, cookie := visit(from.traffic, nil)
			if cookie == nil {
				t.Fatalf("%s gave no affinity cookie", from.name)
			}
			for i := range 20 {
				if got, _ := visit(to.traffic, cookie); got != backend {
					t.Fatalf("a cookie %s signed for %s: request %d through %s reached %s", from.name, backend, i, to.name, got)
				}
			}
		}
	}
	// Keys in etcd that no baton would write (a 3-byte secret) do not
	// break cookies: b, restarted, signs with its copy of the cluster's
	// keys and writes them back over the unusable ones.
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Put(context.Background(), "/baton/test/affinity-keys", `{"format":1,"keys":[{"id":9,"secret":"AAAA","created":"2026-01-01T00:00:00Z"}]}`); err != nil {
		t.Fatal(err)
	}
	_ = b.proc.cmd.Process.Kill()
	b.proc.waitExit(t, 10*time.Second)
	b.start(t)
	waitServing(t, b.proc, b.admin, "shop", "web-1", "web-2")
	backend, cookie := visit(a.traffic, nil)
	for i := range 20 {
		if got, _ := visit(b.traffic, cookie); got != backend {
			t.Fatalf("after unusable keys in etcd: a cookie a signed for %s: request %d through the restarted b reached %s", backend, i, got)
		}
	}
	if !poll(10*time.Second, func() bool {
		resp, err := raw.Get(context.Background(), "/baton/test/affinity-keys")
		return err == nil && len(resp.Kvs) == 1 && !strings.Contains(string(resp.Kvs[0].Value), `"AAAA"`)
	}) {
		t.Fatal("the unusable affinity keys in etcd were not replaced")
	}

	// A made-up cookie steers nothing: the split decides on both.
	forged := &http.Cookie{Name: "baton_shop", Value: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}
	for _, x := range []*clusterBaton{a, b} {
		seen := map[string]bool{}
		for range 40 {
			got, _ := visit(x.traffic, forged)
			seen[got] = true
		}
		if !seen["web-1"] || !seen["web-2"] {
			t.Fatalf("%s: a forged cookie kept every request on %v", x.name, seen)
		}
	}
}

// TestClusterStopWithEtcdAway: SIGTERM stops a baton that does not lead
// the judge, and then the leader, while etcd cannot be reached: a stop
// never waits for etcd.
func TestClusterStopWithEtcdAway(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	a, b := startClusterPair(t, etcd, nil)
	leader, other := leaderFirst(t, a, b)
	etcd.Stop()
	for _, cb := range []*clusterBaton{other, leader} {
		_ = cb.proc.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-cb.proc.exited:
		case <-time.After(15 * time.Second):
			t.Fatalf("%s did not exit within 15s of SIGTERM with etcd away", cb.name)
		}
		if code := cb.proc.waitExit(t, time.Second); code != 0 {
			t.Fatalf("%s exited with %d after SIGTERM", cb.name, code)
		}
	}
}

// TestClusterUnreadableSharedState: a shared state in etcd that no baton
// of this version reads does not keep a restarted baton down: it serves
// with its state file and refuses decisions with the reason, pointing at
// reset-state, not at --state-recover. baton ctl cluster reset-state
// writes its state over the unreadable one, audited; every instance
// applies it, and decisions work again.
func TestClusterUnreadableSharedState(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	a, b := startClusterPair(t, etcd, nil)
	a.admin.must("POST", "/v1/pools/shop/backends/web-2/drain?wait=10s", "", 200, nil)
	backendOf(t, b, "web-2", "drained", func(be v1.Backend) bool { return be.State == "drained" })
	_ = b.proc.cmd.Process.Kill()
	b.proc.waitExit(t, 10*time.Second)

	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{etcd.Endpoint()}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := raw.Put(context.Background(), "/baton/test/state", `{"Format": 9, "Pools": {}}`); err != nil {
		t.Fatal(err)
	}
	b.start(t)
	p := waitServing(t, b.proc, b.admin, "shop", "web-1")
	if be := findBackend(p, "web-2"); be.State != "drained" && be.State != "draining" {
		t.Fatalf("b, started on an unreadable shared state: web-2 %s, want drained as its state file has it", be.State)
	}
	for _, cb := range []*clusterBaton{a, b} {
		var status int
		var data []byte
		// a learns of the unreadable state from its watch.
		poll(10*time.Second, func() bool {
			status, data, _ = cb.admin.do("PATCH", "/v1/pools/shop/backends/web-1", `{"weight":30}`)
			return status == 503
		})
		if status != 503 || !strings.Contains(string(data), `"code": "shared_state_unusable"`) ||
			!strings.Contains(string(data), "format 9") || !strings.Contains(string(data), "reset-state") ||
			strings.Contains(string(data), "state-recover") {
			t.Fatalf("%s: a decision on an unreadable shared state: %d %s; want 503 shared_state_unusable naming the format and reset-state", cb.name, status, data)
		}
	}
	if _, cl := b.cluster(t); !strings.Contains(cl.SharedStateError, "format 9") {
		t.Fatalf("b: GET /v1/cluster says shared_state_error %q", cl.SharedStateError)
	}

	out, errOut, code := runBinary(t, "ctl", "--admin", b.admin.base, "cluster", "reset-state")
	if code != 0 || !strings.Contains(out, "revision") {
		t.Fatalf("baton ctl cluster reset-state: exit %d\n%s%s", code, out, errOut)
	}
	// A state that reads is not reset.
	if _, errOut, code := runBinary(t, "ctl", "--admin", a.admin.base, "cluster", "reset-state"); code != 1 || !strings.Contains(errOut, "reads") {
		t.Fatalf("reset-state of a readable state: exit %d: %s", code, errOut)
	}
	var evs []struct {
		Action string `json:"action"`
		Detail string `json:"detail"`
	}
	b.admin.must("GET", "/v1/events", "", 200, &evs)
	found := false
	for _, ev := range evs {
		found = found || ev.Action == "cluster_reset_state" && strings.Contains(ev.Detail, "format 9")
	}
	if !found {
		t.Fatalf("the reset is not in b's audit log: %+v", evs)
	}
	// a applies the reset state (web-2 stays drained) and decides again.
	backendOf(t, a, "web-2", "drained", func(be v1.Backend) bool { return be.State == "drained" })
	if !poll(10*time.Second, func() bool {
		status, _, _ := a.admin.do("PATCH", "/v1/pools/shop/backends/web-1", `{"weight":30}`)
		return status == 200
	}) {
		t.Fatal("a decision through a after the reset was not taken within 10s")
	}
	backendOf(t, b, "web-1", "weight 30", func(be v1.Backend) bool { return be.Weight == 30 })
}

// TestClusterGoneIsNotOneBatonsWord: each baton of a cluster counts only
// its own requests in flight and the affinity cookies it gave, so none of
// them calls a version gone by itself. /versions says so; wait-gone and
// rollout --after-gone refuse at once, naming the way out
// (--this-instance-only against every instance), instead of waiting for
// ever or deciding on part of the figures.
func TestClusterGoneIsNotOneBatonsWord(t *testing.T) {
	etcd := testbed.StartEtcd(t)
	a, _ := startClusterPair(t, etcd, nil)

	var pv v1.PoolVersions
	a.admin.must("GET", "/v1/pools/shop/versions", "", 200, &pv)
	if !pv.Clustered || pv.ThisInstanceOnly || len(pv.Versions) == 0 || !pv.Versions[0].OthersUncounted || pv.Versions[0].Gone {
		t.Fatalf("a cluster's /versions: %+v", pv)
	}
	pv = v1.PoolVersions{}
	a.admin.must("GET", "/v1/pools/shop/versions?this_instance_only=true", "", 200, &pv)
	if !pv.Clustered || !pv.ThisInstanceOnly || pv.Versions[0].OthersUncounted {
		t.Fatalf("/versions?this_instance_only=true: %+v", pv)
	}

	_, stderr, code := runBinary(t, "ctl", "wait-gone", "shop", "v1", "--admin", a.admin.base)
	if code != 1 || !strings.Contains(stderr, "served by a cluster of batons") || !strings.Contains(stderr, "--this-instance-only") {
		t.Errorf("wait-gone in a cluster: exit %d, %q", code, stderr)
	}
	// Judged by one instance, as asked: v1 is stable here, so it waits.
	_, stderr, code = runBinary(t, "ctl", "wait-gone", "shop", "v1", "--this-instance-only", "--timeout", "1s", "--admin", a.admin.base)
	if code != 3 || !strings.Contains(stderr, "stable version") {
		t.Errorf("wait-gone --this-instance-only: exit %d, %q", code, stderr)
	}

	_, stderr, code = runBinary(t, "rollout", "shop", "--to", "v2", "--upgrade", "true", "--after-gone", "true", "--admin", a.admin.base)
	if code != 2 || !strings.Contains(stderr, "one of a cluster") {
		t.Errorf("rollout --after-gone in a cluster: exit %d, %q", code, stderr)
	}
	var p v1.Pool
	a.admin.must("GET", "/v1/pools/shop", "", 200, &p)
	for _, b := range p.Backends {
		if b.State != "active" {
			t.Errorf("the refused rollout left %s %s", b.Name, b.State)
		}
	}
}
