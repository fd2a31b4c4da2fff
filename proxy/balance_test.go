package proxy_test

import (
	"fmt"
	"io"
	"math"
	"net"
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
// drain_test.go and retry_test.go.

// lbBackend is a real net/http backend on 127.0.0.1. It answers /healthz with
// 200 or 503 (healthy), counts what baton sends it, tracks its connections so
// that kill can reset them, and serves every other request with handle (by
// default: its name in the body and in X-Backend, POST bodies echoed).
type lbBackend struct {
	name string
	addr string
	srv  *http.Server

	healthy atomic.Bool
	hits    atomic.Int64 // proxied requests (anything but /healthz)
	active  atomic.Int64 // proxied requests being handled now
	getsNow atomic.Int64 // proxied GETs being handled now
	checks  atomic.Int64 // health checks served
	passes  atomic.Int64 // health checks answered 200
	conns   atomic.Int64 // connections accepted

	// closed is set once the backend was killed; a request whose handling
	// starts after that is counted in lateHits (there must be none).
	closed   atomic.Bool
	lateHits atomic.Int64

	// minPasses > 0: a proxied request arriving before the backend answered
	// that many passing health checks is counted in early.
	minPasses atomic.Int64
	early     atomic.Int64

	// sealed is set by a test once baton must no longer send anything here;
	// proxied requests arriving afterwards are counted in afterSeal.
	sealed    atomic.Bool
	afterSeal atomic.Int64

	handle func(b *lbBackend, w http.ResponseWriter, r *http.Request)

	mu   sync.Mutex
	open map[net.Conn]struct{}
}

type lbOption func(*lbBackend, *http.Server)

// lbHandler replaces the default request handler.
func lbHandler(h func(b *lbBackend, w http.ResponseWriter, r *http.Request)) lbOption {
	return func(b *lbBackend, _ *http.Server) { b.handle = h }
}

// lbIdleTimeout sets the backend's own keep-alive idle timeout.
func lbIdleTimeout(d time.Duration) lbOption {
	return func(_ *lbBackend, s *http.Server) { s.IdleTimeout = d }
}

func lbDefaultHandler(b *lbBackend, w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Backend", b.name)
	if r.Method == http.MethodPost {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(400)
			return
		}
		_, _ = io.WriteString(w, b.name+":"+string(body))
		return
	}
	_, _ = io.WriteString(w, b.name)
}

func lbStart(t testing.TB, name string, opts ...lbOption) *lbBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	b := &lbBackend{name: name, addr: ln.Addr().String(), handle: lbDefaultHandler, open: map[net.Conn]struct{}{}}
	b.healthy.Store(true)
	b.srv = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			b.mu.Lock()
			defer b.mu.Unlock()
			switch s {
			case http.StateNew:
				b.open[c] = struct{}{}
				b.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				delete(b.open, c)
			}
		},
	}
	for _, o := range opts {
		o(b, b.srv)
	}
	b.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			b.checks.Add(1)
			if b.healthy.Load() {
				b.passes.Add(1)
				w.WriteHeader(200)
			} else {
				w.WriteHeader(503)
			}
			return
		}
		b.hits.Add(1)
		b.active.Add(1)
		defer b.active.Add(-1)
		if r.Method == http.MethodGet {
			b.getsNow.Add(1)
			defer b.getsNow.Add(-1)
		}
		if b.closed.Load() {
			b.lateHits.Add(1)
		}
		if m := b.minPasses.Load(); m > 0 && b.passes.Load() < m {
			b.early.Add(1)
		}
		if b.sealed.Load() {
			b.afterSeal.Add(1)
		}
		b.handle(b, w, r)
	})
	go func() { _ = b.srv.Serve(ln) }()
	t.Cleanup(func() { _ = b.srv.Close() })
	return b
}

// kill stops the backend abruptly: the listener closes and every open
// connection is reset (SO_LINGER 0), busy ones included.
func (b *lbBackend) kill() {
	b.closed.Store(true)
	b.mu.Lock()
	for c := range b.open {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	}
	b.mu.Unlock()
	_ = b.srv.Close()
}

// lbMember is one backend line of a pool.
type lbMember struct {
	name, addr, version string
	weight              int
}

func lbMembers(weight int, version string, bs ...*lbBackend) []lbMember {
	out := make([]lbMember, len(bs))
	for i, b := range bs {
		out[i] = lbMember{name: b.name, addr: b.addr, version: version, weight: weight}
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

func TestBalanceWeightedRoundRobin(t *testing.T) {
	b1, b2, b3 := lbStart(t, "b1"), lbStart(t, "b2"), lbStart(t, "b3")
	bt := testbed.Start(t, lbConfig("",
		lbMember{"b1", b1.addr, "v1", 10},
		lbMember{"b2", b2.addr, "v1", 20},
		lbMember{"b3", b3.addr, "v1", 70},
	))
	bt.WaitHealthy(t, "web", 3)
	c := lbClient(t)

	const n = 10000
	counts := lbSprayStable(t, bt, c, bt.URL("/w"), n, 8)
	t.Logf("1:2:7 over %d requests: %v", n, counts)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b2": 2, "b3": 7}, n)

	// b2 fails its health check: once baton marks it down, the other two
	// keep their exact 1:7 ratio and b2 gets nothing (it still listens, so a
	// stray request would be counted).
	b2.healthy.Store(false)
	p := bt.Pool(t, "web")
	testbed.Eventually(t, 5*time.Second, func() bool { return p.Backend("b2").Health() == pool.Down }, "b2 marked down")
	before := b2.hits.Load()
	counts = lbSprayStable(t, bt, c, bt.URL("/w"), n, 8)
	t.Logf("1:7 with b2 down over %d requests: %v", n, counts)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b3": 7}, n)
	if got := b2.hits.Load() - before; got != 0 {
		t.Errorf("b2 is unhealthy but received %d requests", got)
	}
}

func TestBalanceWeightedWithMemberKilled(t *testing.T) {
	// The same with the listener of one member gone: baton sees the check
	// fail, and the other two keep their exact ratio without a failed request.
	b1, b2, b3 := lbStart(t, "b1"), lbStart(t, "b2"), lbStart(t, "b3")
	bt := testbed.Start(t, lbConfig("",
		lbMember{"b1", b1.addr, "v1", 300},
		lbMember{"b2", b2.addr, "v1", 200},
		lbMember{"b3", b3.addr, "v1", 100},
	))
	bt.WaitHealthy(t, "web", 3)
	b1.kill()
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
			var stable, canary []*lbBackend
			var members []lbMember
			for i := range tc.stable {
				b := lbStart(t, fmt.Sprintf("s%d", i))
				stable = append(stable, b)
				members = append(members, lbMember{b.name, b.addr, "v1", 100})
			}
			for i := range tc.canary {
				b := lbStart(t, fmt.Sprintf("c%d", i))
				canary = append(canary, b)
				members = append(members, lbMember{b.name, b.addr, "v2", 100})
			}
			bt := testbed.Start(t, lbConfig(lbStatic+"    canary: {version: v2, weight: 10}\n", members...))
			bt.WaitHealthy(t, "web", tc.stable+tc.canary)
			c := lbClient(t)
			sum := func(bs []*lbBackend) int64 {
				n := int64(0)
				for _, b := range bs {
					n += b.hits.Load()
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
			for _, g := range [][]*lbBackend{stable, canary} {
				var lo, hi int64 = math.MaxInt64, 0
				for _, b := range g {
					lo, hi = min(lo, b.hits.Load()), max(hi, b.hits.Load())
				}
				if hi-lo > 1 {
					t.Errorf("backends of one version got between %d and %d requests; want an even split", lo, hi)
				}
			}
		})
	}
}

func TestLeastInflightFavoursFastBackend(t *testing.T) {
	release := make(chan struct{})
	slow := lbStart(t, "slow", lbHandler(func(b *lbBackend, w http.ResponseWriter, r *http.Request) {
		// Slow: held until released, at most 60ms per request.
		timer := time.NewTimer(60 * time.Millisecond)
		defer timer.Stop()
		select {
		case <-release:
		case <-timer.C:
		case <-r.Context().Done():
		}
		lbDefaultHandler(b, w, r)
	}))
	fast := lbStart(t, "fast")
	bt := testbed.Start(t, lbConfig(lbStatic+"    balance: least_inflight\n",
		lbMember{"slow", slow.addr, "v1", 100},
		lbMember{"fast", fast.addr, "v1", 100},
	))
	bt.WaitHealthy(t, "web", 2)
	const n = 400
	counts := lbSpray(t, lbClient(t), bt.URL("/l"), n, 8)
	close(release)
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
	b0, b1, b2 := lbStart(t, "zero"), lbStart(t, "b1"), lbStart(t, "b2")
	bt := testbed.Start(t, lbConfig(lbStatic,
		lbMember{"zero", b0.addr, "v1", 0},
		lbMember{"b1", b1.addr, "v1", 100},
		lbMember{"b2", b2.addr, "v1", 300},
	))
	bt.WaitHealthy(t, "web", 3) // weight 0 is still checked and healthy
	const n = 800
	counts := lbSpray(t, lbClient(t), bt.URL("/z"), n, 4)
	lbCheckShares(t, counts, map[string]int{"b1": 1, "b2": 3}, n)
	if got := b0.hits.Load(); got != 0 {
		t.Errorf("weight-0 backend received %d requests", got)
	}
}
