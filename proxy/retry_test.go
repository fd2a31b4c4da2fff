package proxy_test

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

func TestRetryBackendKilledMidLoad(t *testing.T) {
	ledger := testbed.NewLedger("X-Post-Id")
	opts := lbMixed
	opts.Ledger = ledger
	bs := testbed.NewBackends(t, opts, "b0", "b1", "b2")
	// Once armed, the victim holds its slow requests at a gate that never
	// opens: they are received, then lost with the backend. The kill is so
	// sure to find a GET and a POST in flight however busy the machine is.
	killed := make(chan struct{})
	bt := testbed.Start(t, lbConfig("", lbMembers(100, "v1", bs...)...))
	bt.WaitHealthy(t, "web", 3)
	p := bt.Pool(t, "web")
	victim := bs[0]
	c := lbClient(t)

	var getFail, postOK, postGateway atomic.Int64
	var mu sync.Mutex
	var problems []string
	note := func(s string) {
		mu.Lock()
		if len(problems) < 10 {
			problems = append(problems, s)
		}
		mu.Unlock()
	}
	// 8 workers of 120 requests; the kill comes after the 150th.
	load := lbStartLoad(t, 8, 120, 20*time.Second, 150, func(w, i int) {
		path := "/fast"
		if i%3 == 0 {
			path = "/slow" // in flight on the victim when it dies
		}
		if i%2 == 0 {
			r := lbDo(c, "GET", bt.URL(path), "", nil)
			if r.err != nil || r.status != 200 || r.body != r.backend {
				getFail.Add(1)
				note(fmt.Sprintf("GET %s: status %d body %q err %v", path, r.status, r.body, r.err))
			}
			return
		}
		id := fmt.Sprintf("w%d-%d", w, i)
		r := lbDo(c, "POST", bt.URL(path), "body-"+id, map[string]string{"X-Post-Id": id})
		switch {
		case r.err == nil && r.status == 200 && r.body == r.backend+":body-"+id:
			postOK.Add(1)
			if n := ledger.Received(id); n != 1 {
				note(fmt.Sprintf("POST %s answered 200 but backends received it %d times", id, n))
			}
		case r.err == nil && (r.status == 502 || r.status == 503 || r.status == 504):
			postGateway.Add(1)
		default:
			note(fmt.Sprintf("POST %s: status %d body %q err %v", id, r.status, r.body, r.err))
		}
	})
	load.waitMark(t, "the kill")
	victim.Hold("/slow", testbed.NewGate())
	// Kill it while it is busy, with a GET and a POST in flight: the GET
	// must be retried, the POST may fail cleanly but must not be replayed.
	// The load may or may not have put one of each there; two senders make
	// sure of it, each sending its method to /slow until the balancer puts
	// one on the victim, where it is held (round-robin: within a few tries),
	// whatever the machine's pace.
	var sure sync.WaitGroup
	for _, method := range []string{"GET", "POST"} {
		sure.Add(1)
		go func() {
			defer sure.Done()
			for i := 0; i < 60; i++ {
				select {
				case <-killed:
					return
				default:
				}
				if method == "GET" {
					if r := lbDo(c, "GET", bt.URL("/slow"), "", nil); r.err != nil || r.status != 200 || r.body != r.backend {
						getFail.Add(1)
						note(fmt.Sprintf("GET /slow (sure): status %d body %q err %v", r.status, r.body, r.err))
					}
					continue
				}
				id := fmt.Sprintf("sure-%d", i)
				r := lbDo(c, "POST", bt.URL("/slow"), "body-"+id, map[string]string{"X-Post-Id": id})
				switch {
				case r.err == nil && r.status == 200 && r.body == r.backend+":body-"+id:
					postOK.Add(1)
				case r.err == nil && (r.status == 502 || r.status == 503 || r.status == 504):
					postGateway.Add(1)
				default:
					note(fmt.Sprintf("POST %s: status %d body %q err %v", id, r.status, r.body, r.err))
				}
			}
		}()
	}
	testbed.Eventually(t, 30*time.Second, func() bool {
		gets := victim.InFlightGETs()
		return gets > 0 && victim.InFlight() > gets
	}, "a GET and a POST in flight on the victim")
	hitsBefore, busy := victim.Hits(), victim.InFlight()
	victim.Kill()
	close(killed)
	load.waitMore(t, load.done.Load(), 300, 20*time.Second, "300 requests after the kill")
	load.end()
	sure.Wait()

	t.Logf("%d requests; victim served %d before the kill, %d of them in flight; POSTs: %d ok, %d gateway errors; pool retries %d",
		load.done.Load(), hitsBefore, busy, postOK.Load(), postGateway.Load(), p.Retries())
	for _, pr := range problems {
		t.Errorf("%s", pr)
	}
	if n := getFail.Load(); n != 0 {
		t.Errorf("%d GETs failed; every GET must be retried on a live backend", n)
	}
	if d := ledger.Duplicates(); len(d) > 0 {
		t.Errorf("POSTs delivered more than once: %v", d)
	}
	if n := victim.Late(); n != 0 {
		t.Errorf("the killed backend served %d requests after the kill", n)
	}

	// The victim is marked down and gets nothing more.
	vb := p.Backend(victim.Name())
	testbed.Eventually(t, 5*time.Second, func() bool { return vb.Health() == pool.Down }, "the killed backend marked down")
	before := vb.Requests()
	counts := lbSpray(t, c, bt.URL("/fast"), 100, 4)
	if counts[victim.Name()] != 0 || vb.Requests() != before {
		t.Errorf("the killed backend still got traffic: %d answers, %d attempts", counts[victim.Name()], vb.Requests()-before)
	}
}

func TestKeepAliveRaceStalePooledConnection(t *testing.T) {
	// The backend closes idle keep-alive connections after 75ms, baton keeps
	// them for 4s. A POST is never retried once sent, so each must go on a
	// connection that baton checked is still open.
	ledger := testbed.NewLedger("X-Post-Id")
	b := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1", IdleTimeout: 75 * time.Millisecond, Ledger: ledger})
	bt := testbed.Start(t, lbConfig("    connections: {idle_timeout: 4s}\n"+lbStatic,
		lbMember{"b1", b.Addr(), "v1", 100}))
	bt.WaitHealthy(t, "web", 1)
	c := lbClient(t)

	const n = 10
	tick := time.NewTicker(150 * time.Millisecond) // pacing between requests
	defer tick.Stop()
	for i := range n {
		if i > 0 {
			<-tick.C
		}
		id := fmt.Sprintf("ka-%d", i)
		r := lbDo(c, "POST", bt.URL("/ka"), "payload-"+id, map[string]string{"X-Post-Id": id})
		if r.err != nil || r.status != 200 || r.body != "b1:payload-"+id {
			t.Errorf("POST %d after a %s pause: status %d body %q err %v", i, 150*time.Millisecond, r.status, r.body, r.err)
		}
	}
	if d := ledger.Duplicates(); len(d) > 0 {
		t.Errorf("POSTs delivered more than once: %v", d)
	}
	// The race was real: the backend had to take new connections.
	if got := b.Conns(); got < n/2 {
		t.Errorf("backend accepted only %d connections for %d spaced requests; its idle timeout did not bite", got, n)
	}
	t.Logf("backend accepted %d connections for %d requests", b.Conns(), n)
}

func TestRetryConnectRefusedOnHealthyBackend(t *testing.T) {
	// b1 passed its check, then its listener closes. Health checks are far
	// apart and outlier detection tolerant, so baton still believes in it:
	// every request picked for it is refused and must go to b2, POSTs too,
	// since nothing was sent.
	refusing := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1"})
	ledger := testbed.NewLedger("X-Post-Id")
	b2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b2", Ledger: ledger})
	bt := testbed.Start(t, lbConfig(
		"    health_check: {interval: 30s, timeout: 1s}\n"+
			"    outlier: {consecutive_failures: 1000}\n"+
			"    retries: {attempts: 2, budget_percent: 100}\n",
		lbMember{"b1", refusing.Addr(), "v1", 100}, lbMember{"b2", b2.Addr(), "v1", 100}))
	bt.WaitHealthy(t, "web", 2)
	testbed.Eventually(t, 5*time.Second, func() bool { return refusing.Conns() > 0 }, "b1's TCP check accepted")
	refusing.Close()
	p := bt.Pool(t, "web")
	c := lbClient(t)

	const n = 20
	for i := range n {
		id := fmt.Sprintf("cr-%d", i)
		method := "POST"
		if i%4 == 3 {
			method = "GET"
		}
		body := ""
		if method == "POST" {
			body = "x" + id
		}
		r := lbDo(c, method, bt.URL("/r"), body, map[string]string{"X-Post-Id": id})
		if r.err != nil || r.status != 200 || r.backend != "b2" {
			t.Fatalf("%s %d: status %d from %q body %q err %v; want 200 from b2", method, i, r.status, r.backend, r.body, r.err)
		}
	}
	b1 := p.Backend("b1")
	if b1.Health() != pool.Up {
		t.Fatalf("b1 is %s; the test needs it still considered healthy", b1.Health())
	}
	// Every request tried b1 first or second; each refusal was retried.
	if got := b1.Requests(); got < n/2 {
		t.Errorf("b1 was tried %d times, want at least %d", got, n/2)
	}
	if got := p.Retries(); got != int64(b1.Requests()) {
		t.Errorf("pool made %d retries for %d refused attempts", got, b1.Requests())
	}
	if d := ledger.Duplicates(); len(d) > 0 {
		t.Errorf("POSTs delivered more than once: %v", d)
	}
	t.Logf("b1 refused %d attempts, all retried on b2", b1.Requests())
}

// lbResetBackend counts request heads and resets the connection after each,
// without answering.
func lbResetBackend(t *testing.T, attempts *atomic.Int64) string {
	return testbed.RawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := testbed.ReadRequestHead(br); err != nil {
			return // a TCP health check
		}
		attempts.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
	})
}

func TestRetryBudgetFloor(t *testing.T) {
	// Both backends reset every request. With budget_percent 0 only the
	// floor of 10 retries in 10s applies: the first 10 failing GETs are
	// tried twice, the rest once.
	var a1, a2 atomic.Int64
	addr1, addr2 := lbResetBackend(t, &a1), lbResetBackend(t, &a2)
	bt := testbed.Start(t, lbConfig(
		"    health_check: {interval: 30s, timeout: 1s}\n"+
			"    outlier: {consecutive_failures: -1}\n"+
			"    retries: {attempts: 2, budget_percent: 0}\n",
		lbMember{"b1", addr1, "v1", 100}, lbMember{"b2", addr2, "v1", 100}))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)
	start := time.Now()
	const n = 30
	for i := range n {
		r := lbDo(c, "GET", bt.URL(fmt.Sprintf("/b%d", i)), "", nil)
		if r.err != nil || r.status != 502 {
			t.Fatalf("GET %d: status %d err %v, want 502", i, r.status, r.err)
		}
	}
	if time.Since(start) > 9*time.Second {
		t.Skip("too slow to stay inside the budget's 10s window")
	}
	got := a1.Load() + a2.Load()
	t.Logf("%d requests made %d attempts, %d retries", n, got, p.Retries())
	if got != n+10 {
		t.Errorf("backends saw %d attempts for %d failing requests, want %d (10 retries, then none)", got, n, n+10)
	}
	if p.Retries() != 10 {
		t.Errorf("pool counted %d retries, want 10", p.Retries())
	}
}

func TestOutlierEjectionSparesLastHealthyBackend(t *testing.T) {
	// Both backends answer 502 to everything while passing their TCP
	// checks. After 3 failures in a row one of them is ejected; the other is
	// then the last healthy backend and keeps serving (and failing) rather
	// than leaving the pool with nothing.
	broken := testbed.BackendOptions{Fail: map[string]testbed.Failure{"": {Status: 502}}}
	bs := testbed.NewBackends(t, broken, "bad1", "bad2")
	bad1, bad2 := bs[0], bs[1]
	bt := testbed.Start(t, lbConfig(
		lbStatic+"    outlier: {consecutive_failures: 3, base_ejection: 30s}\n",
		lbMembers(100, "v1", bad1, bad2)...))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)

	for i := range 5 {
		r := lbDo(c, "GET", bt.URL("/o"), "", nil)
		if r.err != nil || r.status != 502 {
			t.Fatalf("GET %d: status %d err %v, want the backend's 502", i, r.status, r.err)
		}
	}
	// Round-robin: bad1 got requests 1, 3, 5 and is ejected after the third.
	if h := p.Backend("bad1").Health(); h != pool.Down {
		t.Fatalf("bad1 after 3 straight 502s is %s, want ejected (unhealthy)", h)
	}
	if h := p.Backend("bad2").Health(); h != pool.Up {
		t.Fatalf("bad2 after 2 straight 502s is %s, want healthy", h)
	}
	h1 := bad1.Hits()
	for i := range 20 {
		r := lbDo(c, "GET", bt.URL("/o"), "", nil)
		if r.err != nil || r.status != 502 || r.backend != "bad2" {
			t.Fatalf("GET %d after the ejection: status %d from %q err %v, want bad2's 502", i, r.status, r.backend, r.err)
		}
	}
	if got := bad1.Hits() - h1; got != 0 {
		t.Errorf("ejected bad1 received %d requests", got)
	}
	if h := p.Backend("bad2").Health(); h != pool.Up {
		t.Errorf("bad2, the pool's last healthy backend, was ejected (%s)", h)
	}
	if got := bad1.Hits(); got != 3 {
		t.Errorf("bad1 received %d requests in all, want 3", got)
	}
}

func TestOutlierEjectsBackendResettingConnections(t *testing.T) {
	// A backend that resets every request is ejected after
	// consecutive_failures; GETs that hit it are retried on the good one.
	var resets atomic.Int64
	bad := lbResetBackend(t, &resets)
	good := testbed.NewBackend(t, testbed.BackendOptions{Name: "good"})
	bt := testbed.Start(t, lbConfig(
		"    health_check: {interval: 30s, timeout: 1s}\n"+
			"    outlier: {consecutive_failures: 4, base_ejection: 30s}\n",
		lbMember{"bad", bad, "v1", 100}, lbMember{"good", good.Addr(), "v1", 100}))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)
	for i := range 30 {
		r := lbDo(c, "GET", bt.URL("/r"), "", nil)
		if r.err != nil || r.status != 200 || r.backend != "good" {
			t.Fatalf("GET %d: status %d from %q err %v, want 200 from good", i, r.status, r.backend, r.err)
		}
	}
	if h := p.Backend("bad").Health(); h != pool.Down {
		t.Errorf("the resetting backend is %s, want ejected", h)
	}
	if got := resets.Load(); got != 4 {
		t.Errorf("the resetting backend got %d requests, want 4 (ejected after 4 in a row)", got)
	}
	if strings.Contains(p.Backend("bad").LastError(), "health") {
		t.Errorf("ejection should come from live requests, last error %q", p.Backend("bad").LastError())
	}
}
