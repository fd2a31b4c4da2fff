package proxy_test

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// The helpers below (prefixed lb) are shared by balance_test.go,
// drain_test.go and retry_test.go; their backends are testbed.Servers.

// lbMember is one backend line of a pool.
type lbMember struct {
	name, addr, version string
	weight              int
}

func lbMembers(weight int, version string, bs ...*testbed.Server) []lbMember {
	out := make([]lbMember, len(bs))
	for i, b := range bs {
		out[i] = lbMember{name: b.Name(), addr: b.Addr(), version: version, weight: weight}
	}
	return out
}

// lbStatic is a health check for tests that need no health transitions: the
// first check runs at once, the next only after the test is over, so a
// starved check on a busy machine cannot take a backend out mid-test.
const lbStatic = "    health_check: {path: /healthz, interval: 30s, timeout: 2s}\n"

// lbConfig renders a config with one default pool "web" of the given
// members. extra is indented pool YAML; without a health_check in it, checks
// are HTTP GETs of /healthz every 250ms with rise 1 and fall 2 (one starved
// check does not take a healthy backend out).
func lbConfig(extra string, members ...lbMember) string {
	var sb strings.Builder
	sb.WriteString("  - name: web\n")
	if !strings.Contains(extra, "health_check:") {
		sb.WriteString("    health_check: {path: /healthz, interval: 250ms, timeout: 240ms, rise: 1, fall: 2}\n")
	}
	sb.WriteString(extra)
	sb.WriteString("    backends:\n")
	for _, m := range members {
		fmt.Fprintf(&sb, "      - {name: %s, address: \"%s\", version: %s, weight: %d}\n", m.name, m.addr, m.version, m.weight)
	}
	return "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: info, format: json, access: false}\npools:\n" + sb.String()
}

// lbClient is a keep-alive client for baton.
func lbClient(t testing.TB) *http.Client {
	tr := &http.Transport{
		MaxIdleConns:        128,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 15 * time.Second}
}

// lbResult is what a client saw for one request.
type lbResult struct {
	status  int
	body    string
	backend string // X-Backend
	err     error
}

func lbDo(c *http.Client, method, url, body string, hdr map[string]string) lbResult {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		return lbResult{err: err}
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		return lbResult{err: err}
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return lbResult{status: res.StatusCode, body: string(b), backend: res.Header.Get("X-Backend"), err: err}
}

// lbLoad is workers clients, each making up to perWorker requests through
// send until the load is stopped or its deadline passes; done counts the
// requests made, and mark closes when the mark-th is done.
type lbLoad struct {
	done     atomic.Int64
	mark     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	finished chan struct{} // closed when every worker has returned
}

// lbStartLoad starts a load that lasts d at most; it is stopped at the
// end of the test, if not before.
func lbStartLoad(t *testing.T, workers, perWorker int, d time.Duration, mark int64, send func(w, i int)) *lbLoad {
	l := &lbLoad{mark: make(chan struct{}), stop: make(chan struct{}), finished: make(chan struct{})}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				select {
				case <-l.stop:
					return
				default:
				}
				if time.Now().After(deadline) {
					return
				}
				send(w, i)
				if l.done.Add(1) == mark {
					close(l.mark)
				}
			}
		}()
	}
	go func() { wg.Wait(); close(l.finished) }()
	t.Cleanup(l.end)
	return l
}

// waitMark waits until the mark-th request is done; the load ending first
// fails the test.
func (l *lbLoad) waitMark(t *testing.T, what string) {
	t.Helper()
	select {
	case <-l.mark:
	case <-l.finished:
		t.Fatalf("load ended after %d requests before %s", l.done.Load(), what)
	}
}

// waitMore waits until n more requests than after are done, or the load
// ended.
func (l *lbLoad) waitMore(t *testing.T, after, n int64, timeout time.Duration, what string) {
	t.Helper()
	testbed.Eventually(t, timeout, func() bool {
		select {
		case <-l.finished:
			return true
		default:
		}
		return l.done.Load() >= after+n
	}, "%s", what)
}

// end stops the load and waits for its workers.
func (l *lbLoad) end() {
	l.stopOnce.Do(func() { close(l.stop) })
	<-l.finished
}

// lbSpray sends n GETs with the given concurrency and returns how many each
// backend (by X-Backend) answered. Any failure fails the test.
func lbSpray(t *testing.T, c *http.Client, url string, n, workers int) map[string]int {
	t.Helper()
	var next atomic.Int64
	var mu sync.Mutex
	counts := map[string]int{}
	var failures []string
	var wg sync.WaitGroup
	deadline := time.Now().Add(60 * time.Second)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]int{}
			for next.Add(1) <= int64(n) && time.Now().Before(deadline) {
				r := lbDo(c, "GET", url, "", nil)
				if r.err != nil || r.status != 200 || r.body != r.backend {
					mu.Lock()
					if len(failures) < 5 {
						failures = append(failures, fmt.Sprintf("status %d body %q backend %q err %v", r.status, r.body, r.backend, r.err))
					}
					counts["<failed>"]++
					mu.Unlock()
					continue
				}
				local[r.backend]++
			}
			mu.Lock()
			for k, v := range local {
				counts[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed, e.g. %s", counts["<failed>"], n, strings.Join(failures, "; "))
	}
	total := 0
	for _, v := range counts {
		total += v
	}
	if total != n {
		t.Fatalf("only %d of %d requests were sent before the deadline", total, n)
	}
	return counts
}

// lbHealthChanges counts the health changes baton logged so far.
func lbHealthChanges(bt *testbed.Baton) int {
	return strings.Count(bt.Logs.String(), "backend health changed")
}

// lbSprayStable is lbSpray over a run during which no backend's health
// changed, so that the expected split is well defined: a health check
// starved on a busy machine can flap a backend, and such a run is measured
// again (at most three runs).
func lbSprayStable(t *testing.T, bt *testbed.Baton, c *http.Client, url string, n, workers int) map[string]int {
	t.Helper()
	for range 3 {
		before := lbHealthChanges(bt)
		counts := lbSpray(t, c, url, n, workers)
		if lbHealthChanges(bt) == before {
			return counts
		}
		t.Logf("a backend's health changed during the run (%v); measuring again", counts)
	}
	t.Fatalf("backend health kept changing during three runs of %d requests; see the logs", n)
	return nil
}

// lbCheckShares asserts that counts split n requests in proportion to want
// (backend name → weight), each backend within 1 % of its expected count.
func lbCheckShares(t *testing.T, counts map[string]int, want map[string]int, n int) {
	t.Helper()
	sum := 0
	for _, w := range want {
		sum += w
	}
	for name := range counts {
		if _, ok := want[name]; !ok {
			t.Errorf("backend %s got %d requests, want none", name, counts[name])
		}
	}
	for name, w := range want {
		exp := float64(n) * float64(w) / float64(sum)
		got := float64(counts[name])
		if math.Abs(got-exp) > 0.01*exp {
			t.Errorf("backend %s got %d of %d requests, want %.0f ±1 %% (weight %d of %d)", name, counts[name], n, exp, w, sum)
		}
	}
}

// lbWeighted starts backends b1, b2 and b3 with weights w1, w2 and w3 in
// pool web (checked every 250ms) and waits until all three are healthy.
func lbWeighted(t *testing.T, w1, w2, w3 int) (b1, b2, b3 *testbed.Server, bt *testbed.Baton) {
	t.Helper()
	bs := testbed.NewBackends(t, testbed.BackendOptions{}, "b1", "b2", "b3")
	b1, b2, b3 = bs[0], bs[1], bs[2]
	bt = testbed.Start(t, lbConfig("",
		lbMember{"b1", b1.Addr(), "v1", w1},
		lbMember{"b2", b2.Addr(), "v1", w2},
		lbMember{"b3", b3.Addr(), "v1", w3},
	))
	bt.WaitHealthy(t, "web", 3)
	return b1, b2, b3, bt
}

func TestBalanceWeightedRoundRobin(t *testing.T) {
	_, b2, _, bt := lbWeighted(t, 10, 20, 70)
	c := lbClient(t)

	const n = 10000
	counts := lbSprayStable(t, bt, c, bt.URL("/w"), n, 8)
	t.Logf("1:2:7 over %d requests: %v", n, counts)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b2": 2, "b3": 7}, n)

	// b2 fails its health check: once baton marks it down, the other two
	// keep their exact 1:7 ratio and b2 gets nothing (it still listens, so a
	// stray request would be counted).
	b2.SetHealthy(false)
	p := bt.Pool(t, "web")
	testbed.Eventually(t, 5*time.Second, func() bool { return p.Backend("b2").Health() == pool.Down }, "b2 marked down")
	before := b2.Hits()
	counts = lbSprayStable(t, bt, c, bt.URL("/w"), n, 8)
	t.Logf("1:7 with b2 down over %d requests: %v", n, counts)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b3": 7}, n)
	if got := b2.Hits() - before; got != 0 {
		t.Errorf("b2 is unhealthy but received %d requests", got)
	}
}

func TestBalanceWeightedWithMemberKilled(t *testing.T) {
	// The same with the listener of one member gone: baton sees the check
	// fail, and the other two keep their exact ratio without a failed request.
	b1, _, _, bt := lbWeighted(t, 300, 200, 100)
	b1.Kill()
	p := bt.Pool(t, "web")
	testbed.Eventually(t, 5*time.Second, func() bool { return p.Backend("b1").Health() == pool.Down }, "b1 marked down")
	const n = 3000
	counts := lbSprayStable(t, bt, lbClient(t), bt.URL("/k"), n, 8)
	t.Logf("2:1 with b1 stopped: %v", counts)
	lbCheckShares(t, counts, map[string]int{"b2": 2, "b3": 1}, n)
	if got := p.Backend("b1").Requests(); got != 0 {
		t.Errorf("baton sent %d requests to the stopped backend", got)
	}
}

func TestCanarySplitIsExact(t *testing.T) {
	for _, tc := range []struct{ stable, canary int }{{2, 1}, {2, 3}, {1, 3}} {
		t.Run(fmt.Sprintf("stable%d_canary%d", tc.stable, tc.canary), func(t *testing.T) {
			var stable, canary []*testbed.Server
			var members []lbMember
			for i := range tc.stable {
				b := testbed.NewBackend(t, testbed.BackendOptions{Name: fmt.Sprintf("s%d", i)})
				stable = append(stable, b)
				members = append(members, lbMember{b.Name(), b.Addr(), "v1", 100})
			}
			for i := range tc.canary {
				b := testbed.NewBackend(t, testbed.BackendOptions{Name: fmt.Sprintf("c%d", i)})
				canary = append(canary, b)
				members = append(members, lbMember{b.Name(), b.Addr(), "v2", 100})
			}
			bt := testbed.Start(t, lbConfig(lbStatic+"    canary: {version: v2, weight: 10}\n", members...))
			bt.WaitHealthy(t, "web", tc.stable+tc.canary)
			c := lbClient(t)
			sum := func(bs []*testbed.Server) int64 {
				n := int64(0)
				for _, b := range bs {
					n += b.Hits()
				}
				return n
			}
			// 10 batches of 100 concurrent requests: after each batch the
			// canary must have had exactly 10 % (a random split would
			// wander by several requests).
			const batches, per = 10, 100
			for k := 1; k <= batches; k++ {
				lbSpray(t, c, bt.URL("/c"), per, 4)
				got := sum(canary)
				if want := int64(k * per / 10); got < want-1 || got > want+1 {
					t.Fatalf("after %d requests the canary had %d, want %d", k*per, got, want)
				}
			}
			total := batches * per
			v2, v1 := sum(canary), sum(stable)
			t.Logf("v1 %d, v2 %d of %d", v1, v2, total)
			if v1+v2 != int64(total) {
				t.Fatalf("backends counted %d requests, want %d", v1+v2, total)
			}
			if math.Abs(float64(v2)-0.1*float64(total)) > 0.01*float64(total) {
				t.Errorf("canary got %d of %d requests, want 10 %% within 1 %%", v2, total)
			}
			// Within each version the backends share equally.
			for _, g := range [][]*testbed.Server{stable, canary} {
				var lo, hi int64 = math.MaxInt64, 0
				for _, b := range g {
					lo, hi = min(lo, b.Hits()), max(hi, b.Hits())
				}
				if hi-lo > 1 {
					t.Errorf("backends of one version got between %d and %d requests; want an even split", lo, hi)
				}
			}
		})
	}
}

func TestLeastInflightFavoursFastBackend(t *testing.T) {
	// Slow: 60ms per request.
	slow := testbed.NewBackend(t, testbed.BackendOptions{Name: "slow", Delay: func(string) time.Duration { return 60 * time.Millisecond }})
	fast := testbed.NewBackend(t, testbed.BackendOptions{Name: "fast"})
	bt := testbed.Start(t, lbConfig(lbStatic+"    balance: least_inflight\n",
		lbMember{"slow", slow.Addr(), "v1", 100},
		lbMember{"fast", fast.Addr(), "v1", 100},
	))
	bt.WaitHealthy(t, "web", 2)
	const n = 400
	counts := lbSpray(t, lbClient(t), bt.URL("/l"), n, 8)
	t.Logf("least_inflight with one slow backend: %v", counts)
	// Round-robin would give 50/50; power of two choices sends to the slow
	// one only when both draws land on it (about a quarter).
	if counts["fast"] < n*6/10 {
		t.Errorf("fast backend got %d of %d requests, want most (>= 60 %%)", counts["fast"], n)
	}
	if counts["slow"] == 0 {
		t.Errorf("slow backend got no request at all; it is healthy and should get some")
	}
}

func TestWeightZeroGetsNoRequests(t *testing.T) {
	bs := testbed.NewBackends(t, testbed.BackendOptions{}, "zero", "b1", "b2")
	b0, b1, b2 := bs[0], bs[1], bs[2]
	bt := testbed.Start(t, lbConfig(lbStatic,
		lbMember{"zero", b0.Addr(), "v1", 0},
		lbMember{"b1", b1.Addr(), "v1", 100},
		lbMember{"b2", b2.Addr(), "v1", 300},
	))
	bt.WaitHealthy(t, "web", 3) // weight 0 is still checked and healthy
	const n = 800
	counts := lbSpray(t, lbClient(t), bt.URL("/z"), n, 4)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b2": 3}, n)
	if got := b0.Hits(); got != 0 {
		t.Errorf("weight-0 backend received %d requests", got)
	}
}
