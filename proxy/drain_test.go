package proxy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// lbMixed is a backend that serves /slow after ~50ms and everything else
// at once.
var lbMixed = testbed.BackendOptions{Delay: func(path string) time.Duration {
	if strings.HasPrefix(path, "/slow") {
		return 50 * time.Millisecond
	}
	return 0
}}

func TestDrainUnderConcurrentLoad(t *testing.T) {
	bs := testbed.NewBackends(t, lbMixed, "b0", "b1", "b2")
	bt := testbed.Start(t, lbConfig(lbStatic+"    drain_timeout: 10s\n", lbMembers(100, "v1", bs...)...))
	bt.WaitHealthy(t, "web", 3)
	p := bt.Pool(t, "web")
	victim := bs[1]
	c := lbClient(t)

	var failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	// 16 workers of 50 requests; the drain comes after the 200th.
	load := lbStartLoad(t, 16, 50, 15*time.Second, 200, func(w, i int) {
		var r lbResult
		var wantSuffix string
		switch i % 4 {
		case 0:
			r = lbDo(c, "GET", bt.URL("/slow"), "", nil)
		case 1:
			body := fmt.Sprintf("w%d-i%d", w, i)
			wantSuffix = ":" + body
			r = lbDo(c, "POST", bt.URL("/post"), body, nil)
		case 2:
			body := fmt.Sprintf("slow-w%d-i%d", w, i)
			wantSuffix = ":" + body
			r = lbDo(c, "POST", bt.URL("/slow"), body, nil)
		default:
			r = lbDo(c, "GET", bt.URL("/fast"), "", nil)
		}
		ok := r.err == nil && r.status == 200 && strings.HasPrefix(r.body, r.backend) &&
			strings.HasSuffix(r.body, wantSuffix)
		if !ok {
			failed.Add(1)
			failMu.Lock()
			failures = append(failures, fmt.Sprintf("worker %d request %d: status %d body %q err %v", w, i, r.status, r.body, r.err))
			failMu.Unlock()
		}
	})
	load.waitMark(t, "reaching the drain point")
	hitsAtDrain := victim.Hits()
	start := time.Now()
	b, err := p.Drain(victim.Name())
	if err != nil {
		t.Fatal(err)
	}
	atDrain := b.Status()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := b.WaitDrained(ctx)
	cancel()
	// Right after the wait: nothing in flight, no connection open.
	inflight, open, state := b.Inflight(), b.OpenConns(), b.State()
	victim.Seal()
	hitsAtDrained := victim.Hits()
	if err != nil {
		t.Fatalf("WaitDrained: %v (%s)", err, st)
	}
	t.Logf("drained after %s; at Drain the victim had %s; it got %d requests before Drain and %d between Drain and the end of the wait",
		time.Since(start).Round(time.Millisecond), atDrain, hitsAtDrain, hitsAtDrained-hitsAtDrain)
	if atDrain.Inflight == 0 {
		t.Logf("nothing was in flight on the victim when the drain began; the test is weaker this run")
	}
	if inflight != 0 || open != 0 || !st.Idle() {
		t.Errorf("WaitDrained returned with %d in flight and %d open connections (status %s)", inflight, open, st)
	}
	if state != pool.Drained {
		t.Errorf("state after WaitDrained is %s, want drained", state)
	}

	// The load goes on for another 200 requests, none of which may reach
	// the drained backend, also after the pool rebuilds who gets traffic (as
	// any health change or canary change does).
	after := load.done.Load()
	p.Configure(*p.Settings())
	load.waitMore(t, after, 200, 15*time.Second, "200 more requests after the drain")
	load.end()

	failMu.Lock()
	for i, f := range failures {
		if i == 10 {
			break
		}
		t.Errorf("failed request: %s", f)
	}
	failMu.Unlock()
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed during the drain, want none", n, load.done.Load())
	}
	if n := victim.AfterSeal(); n != 0 {
		t.Errorf("the drained backend received %d requests after WaitDrained returned", n)
	}
	if load.done.Load() < after+200 {
		t.Errorf("only %d requests after the drain; the load stopped early", load.done.Load()-after)
	}
	if b.Inflight() != 0 || b.OpenConns() != 0 || b.State() != pool.Drained {
		t.Errorf("after the load: %d in flight, %d open, state %s", b.Inflight(), b.OpenConns(), b.State())
	}
	// The other two took the rest.
	for _, o := range []*testbed.Server{bs[0], bs[2]} {
		if o.Hits() == 0 {
			t.Errorf("backend %s got no requests", o.Name())
		}
	}
}

// lbOpenStream starts GET /stream and returns the response (headers read).
func lbOpenStream(t *testing.T, c *http.Client, url string) *http.Response {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	if res.StatusCode != 200 {
		t.Fatalf("stream: status %d", res.StatusCode)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

func TestDrainLetsStreamFinish(t *testing.T) {
	// /stream is a chunked response, "tick\n" every 10ms, until the gate
	// opens (then "END\n").
	end := testbed.NewGate()
	bs := testbed.NewBackends(t, testbed.BackendOptions{Stream: map[string]*testbed.Gate{"/stream": end}}, "b1", "b2")
	b1, b2 := bs[0], bs[1]
	bt := testbed.Start(t, lbConfig(lbStatic+"    drain_timeout: 20s\n", lbMembers(100, "v1", b1, b2)...))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)

	res := lbOpenStream(t, c, bt.URL("/stream"))
	name := res.Header.Get("X-Backend")
	end.Wait(t, 10*time.Second, "the stream to start")
	victim, other := b1, b2
	if name == "b2" {
		victim, other = b2, b1
	}
	be, err := p.Drain(victim.Name())
	if err != nil {
		t.Fatal(err)
	}
	var ended atomic.Bool // the backend was told to end the stream
	waitDone := make(chan struct{})
	var waitErr error
	var waitSt pool.DrainStatus
	var endedAtReturn bool
	go func() {
		defer close(waitDone)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		waitSt, waitErr = be.WaitDrained(ctx)
		endedAtReturn = ended.Load()
	}()

	// The stream keeps flowing through the drain, and new requests go to
	// the other backend only.
	br := bufio.NewReader(res.Body)
	for i := range 20 {
		line, err := br.ReadString('\n')
		if err != nil || line != "tick\n" {
			t.Fatalf("stream line %d during the drain: %q, %v", i, line, err)
		}
	}
	for range 20 {
		r := lbDo(c, "GET", bt.URL("/x"), "", nil)
		if r.err != nil || r.status != 200 || r.backend != other.Name() {
			t.Fatalf("request during the drain: status %d from %q, err %v; want 200 from %s", r.status, r.backend, r.err, other.Name())
		}
	}
	select {
	case <-waitDone:
		t.Fatalf("WaitDrained returned (%v, %s) while a stream was still running", waitErr, waitSt)
	default:
	}
	if be.State() != pool.Draining {
		t.Errorf("state during the drain is %s, want draining", be.State())
	}

	ended.Store(true)
	end.Release()
	rest, err := io.ReadAll(br)
	if err != nil {
		t.Fatalf("stream ended with %v after %q", err, rest)
	}
	if !strings.HasSuffix(string(rest), "END\n") {
		t.Fatalf("stream did not end normally: tail %q", rest[max(0, len(rest)-20):])
	}
	select {
	case <-waitDone:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitDrained did not return after the stream ended")
	}
	if waitErr != nil {
		t.Fatalf("WaitDrained: %v (%s)", waitErr, waitSt)
	}
	if !endedAtReturn {
		t.Errorf("WaitDrained returned before the stream ended")
	}
	if be.State() != pool.Drained || be.Inflight() != 0 || be.OpenConns() != 0 {
		t.Errorf("after the drain: state %s, %d in flight, %d open", be.State(), be.Inflight(), be.OpenConns())
	}
}

func TestDrainTimeoutCutsEndlessStream(t *testing.T) {
	end := testbed.NewGate() // never released: the stream is endless
	b1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1", Stream: map[string]*testbed.Gate{"/stream": end}})
	b2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b2"})
	bt := testbed.Start(t, lbConfig(lbStatic+"    drain_timeout: 300ms\n", lbMember{"b1", b1.Addr(), "v1", 100}, lbMember{"b2", b2.Addr(), "v1", 0}))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)

	res := lbOpenStream(t, c, bt.URL("/stream"))
	if got := res.Header.Get("X-Backend"); got != "b1" {
		t.Fatalf("stream served by %q, want b1", got)
	}
	end.Wait(t, 10*time.Second, "the stream to start")
	start := time.Now()
	be, err := p.Drain("b1")
	if err != nil {
		t.Fatal(err)
	}
	// Read the stream concurrently; it must be cut, not end cleanly.
	readDone := make(chan error, 1)
	var tail atomic.Value
	go func() {
		data, err := io.ReadAll(res.Body)
		tail.Store(string(data[max(0, len(data)-20):]))
		readDone <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	st, err := be.WaitDrained(ctx)
	cancel()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("WaitDrained: %v (%s) after %s", err, st, took)
	}
	t.Logf("endless stream cut; drained after %s", took.Round(time.Millisecond))
	if took < 300*time.Millisecond {
		t.Errorf("drain finished after %s, before the 300ms drain timeout", took)
	}
	if took > 5*time.Second {
		t.Errorf("drain took %s; the 300ms drain timeout should have cut the stream", took)
	}
	if be.State() != pool.Drained || be.Inflight() != 0 || be.OpenConns() != 0 {
		t.Errorf("after the drain: state %s, %d in flight, %d open", be.State(), be.Inflight(), be.OpenConns())
	}
	select {
	case err := <-readDone:
		if err == nil {
			t.Errorf("the client saw a clean end of an endless stream (tail %q); want it cut", tail.Load())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the client's stream did not end after the drain timeout")
	}
}

func TestEjectLetsInflightFinish(t *testing.T) {
	release := testbed.NewGate()
	b1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1", Hold: map[string]*testbed.Gate{"/hold": release}})
	b2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b2"})
	bt := testbed.Start(t, lbConfig(lbStatic, lbMember{"b1", b1.Addr(), "v1", 100}, lbMember{"b2", b2.Addr(), "v1", 0}))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)

	held := make(chan lbResult, 1)
	go func() { held <- lbDo(c, "GET", bt.URL("/hold"), "", nil) }()
	release.Wait(t, 10*time.Second, "the held request to reach b1")
	be, err := p.Eject("b1")
	if err != nil {
		t.Fatal(err)
	}
	b1.Seal()
	if be.State() != pool.Ejected {
		t.Fatalf("state %s after Eject", be.State())
	}
	// b1 has weight 100 and b2 weight 0: with b1 ejected, b2 (weight 0)
	// must not take over either — nothing admits requests but b1.
	for range 20 {
		r := lbDo(c, "GET", bt.URL("/x"), "", nil)
		if r.err != nil || r.status != 503 {
			t.Fatalf("with the only weighted backend ejected: status %d from %q, err %v; want 503", r.status, r.backend, r.err)
		}
	}
	if be.Inflight() != 1 {
		t.Errorf("ejected backend has %d requests in flight, want the held one", be.Inflight())
	}
	if release.Arrived() != 1 || release.Waiting() != 1 {
		t.Errorf("b1 holds %d requests (%d arrived); want the one", release.Waiting(), release.Arrived())
	}
	release.Release()
	r := <-held
	if r.err != nil || r.status != 200 || r.body != "b1" {
		t.Errorf("the in-flight request on the ejected backend: status %d body %q err %v; want 200 b1", r.status, r.body, r.err)
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 0 }, "the ejected backend's request to finish")
	if n := b1.AfterSeal(); n != 0 {
		t.Errorf("the ejected backend received %d requests after Eject", n)
	}
}

func TestEjectSendsTrafficToOthers(t *testing.T) {
	release := testbed.NewGate()
	bs := testbed.NewBackends(t, testbed.BackendOptions{Hold: map[string]*testbed.Gate{"/hold": release}}, "b1", "b2")
	b1, b2 := bs[0], bs[1]
	bt := testbed.Start(t, lbConfig(lbStatic, lbMembers(100, "v1", b1, b2)...))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)

	held := make(chan lbResult, 1)
	go func() { held <- lbDo(c, "GET", bt.URL("/hold"), "", nil) }()
	victim, other := b1, b2
	if release.Wait(t, 10*time.Second, "the held request to reach a backend") == "b2" {
		victim, other = b2, b1
	}
	be, err := p.Eject(victim.Name())
	if err != nil {
		t.Fatal(err)
	}
	victim.Seal()
	for i := range 30 {
		body := fmt.Sprintf("e%d", i)
		r := lbDo(c, "POST", bt.URL("/x"), body, nil)
		if r.err != nil || r.status != 200 || r.body != other.Name()+":"+body {
			t.Fatalf("request after Eject: status %d body %q err %v; want 200 from %s", r.status, r.body, r.err, other.Name())
		}
	}
	release.Release()
	r := <-held
	if r.err != nil || r.status != 200 || r.body != victim.Name() {
		t.Errorf("in-flight request on the ejected backend: status %d body %q err %v", r.status, r.body, r.err)
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 0 }, "the ejected backend's request to finish")
	if n := victim.AfterSeal(); n != 0 {
		t.Errorf("the ejected backend received %d requests after Eject", n)
	}
	if be.State() != pool.Ejected {
		t.Errorf("state %s, want ejected", be.State())
	}
}

func TestEnableAfterDrainWaitsForHealthCheck(t *testing.T) {
	bs := testbed.NewBackends(t, testbed.BackendOptions{}, "b1", "b2")
	b1, b2 := bs[0], bs[1]
	bt := testbed.Start(t, lbConfig("    drain_timeout: 5s\n", lbMembers(100, "v1", b1, b2)...))
	bt.WaitHealthy(t, "web", 2)
	p := bt.Pool(t, "web")
	c := lbClient(t)
	lbSpray(t, c, bt.URL("/warm"), 20, 2)

	be, err := p.Drain("b1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if st, err := be.WaitDrained(ctx); err != nil {
		t.Fatalf("WaitDrained: %v (%s)", err, st)
	}

	// b1 comes back failing its health check: Enable must not send it
	// anything until a check passes.
	b1.SetHealthy(false)
	b1.SetMinPasses(b1.Passes() + 1)
	checks := b1.Checks()
	hits := b1.Hits()
	if _, err := p.Enable("b1"); err != nil {
		t.Fatal(err)
	}
	if be.State() != pool.Active {
		t.Fatalf("state %s after Enable", be.State())
	}
	if h := be.Health(); h == pool.Up {
		t.Fatalf("health is %s right after Enable, before any check", h)
	}
	for range 3 {
		counts := lbSpray(t, c, bt.URL("/e"), 20, 2)
		if counts["b1"] != 0 {
			t.Fatalf("b1 got %d requests after Enable while its health check fails", counts["b1"])
		}
	}
	// Enable runs a check at once, and it fails.
	testbed.Eventually(t, 5*time.Second, func() bool { return b1.Checks() > checks && be.Health() == pool.Down },
		"a failed check of the re-enabled backend")
	for range 3 {
		if counts := lbSpray(t, c, bt.URL("/e"), 20, 2); counts["b1"] != 0 {
			t.Fatalf("b1 got %d requests while unhealthy", counts["b1"])
		}
	}
	if got := b1.Hits(); got != hits {
		t.Fatalf("b1 received %d requests before its health check passed", got-hits)
	}

	b1.SetHealthy(true)
	testbed.Eventually(t, 5*time.Second, func() bool {
		lbDo(c, "GET", bt.URL("/e"), "", nil)
		return b1.Hits() > hits
	}, "b1 to get traffic again")
	if n := b1.Early(); n != 0 {
		t.Errorf("b1 received %d requests before a health check passed", n)
	}
	if be.Health() != pool.Up {
		t.Errorf("b1 health %s, want healthy", be.Health())
	}
	// And it is back in the rotation with its full share.
	counts := lbSprayStable(t, bt, c, bt.URL("/e"), 100, 2)
	if counts["b1"] != 50 || counts["b2"] != 50 {
		t.Errorf("after Enable: %v, want 50/50", counts)
	}
}
