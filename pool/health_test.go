package pool_test

import (
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// hcPool builds (without starting) a pool from pool YAML.
func hcPool(t *testing.T, poolYAML string) *pool.Pool {
	t.Helper()
	p := pool.New(hcPoolConfig(t, poolYAML), zerolog.Nop())
	t.Cleanup(p.Close)
	return p
}

// hcPoolConfig parses pool YAML.
func hcPoolConfig(t *testing.T, poolYAML string) config.Pool {
	t.Helper()
	cfg, err := config.Parse([]byte("listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\npools:\n"+poolYAML), "health_test.yaml")
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	return cfg.Pools[0]
}

// hcPick picks n times and returns how often each backend was picked.
func hcPick(t *testing.T, p *pool.Pool, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for range n {
		b, err := p.Pick(nil)
		if errors.Is(err, pool.ErrNoBackend) {
			out[""]++
			continue
		}
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		out[b.Name()]++
		b.Finish(&pool.Outcome{Class: pool.ClassOK, Status: 200})
	}
	return out
}

func TestHealthRiseAndFall(t *testing.T) {
	hb := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1"})
	p := hcPool(t, "  - name: web\n"+
		"    health_check: {path: /healthz, interval: 250ms, timeout: 240ms, rise: 3, fall: 2}\n"+
		"    backends:\n      - {name: b1, address: \""+hb.Addr()+"\"}\n")
	b := p.Backend("b1")

	// Never checked: no traffic.
	if b.Health() != pool.Unknown {
		t.Fatalf("health before any check is %s", b.Health())
	}
	if _, err := p.Pick(nil); !errors.Is(err, pool.ErrNoBackend) {
		t.Fatalf("Pick before the first check: %v, want ErrNoBackend", err)
	}

	// A new backend needs one passing check, not rise (3).
	p.Start()
	testbed.Eventually(t, 5*time.Second, func() bool { return b.Health() == pool.Up }, "the first check to pass")
	if n := hb.Passes(); n >= 3 {
		t.Errorf("a new backend came up after %d passing checks; one is enough", n)
	}
	if got := hcPick(t, p, 4); got["b1"] != 4 {
		t.Fatalf("picks after the first pass: %v", got)
	}

	// Fall: healthy until the second failure in a row.
	hb.SetHealthy(false)
	failsBefore := hb.Fails()
	testbed.Eventually(t, 5*time.Second, func() bool {
		h := b.Health() // read before the count: Down implies the count already reached fall
		if n := hb.Fails() - failsBefore; h == pool.Down && n < 2 {
			t.Fatalf("marked down after %d failed check(s), want fall = 2", n)
		}
		return h == pool.Down
	}, "the backend to be marked down")
	if got := hcPick(t, p, 4); got[""] != 4 {
		t.Fatalf("picks while down: %v, want none", got)
	}
	if !strings.Contains(b.LastError(), "503") {
		t.Errorf("last error %q should name the failed check's status", b.LastError())
	}

	// Rise: down until the third pass in a row.
	passesBefore := hb.Passes()
	hb.SetHealthy(true)
	testbed.Eventually(t, 5*time.Second, func() bool {
		h := b.Health()
		if n := hb.Passes() - passesBefore; h == pool.Up && n < 3 {
			t.Fatalf("back up after %d passing check(s), want rise = 3", n)
		}
		if h == pool.Down {
			if got := hcPick(t, p, 1); got[""] != 1 {
				t.Fatalf("picked while still down: %v", got)
			}
		}
		return h == pool.Up
	}, "the backend to come back")
	if got := hcPick(t, p, 4); got["b1"] != 4 {
		t.Fatalf("picks after coming back: %v", got)
	}
}

func TestHealthNewBackendWaitsForFirstPass(t *testing.T) {
	b1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1"})
	b2Checks := testbed.NewGate() // b2's checks hang until released
	b2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b2", HoldChecks: b2Checks})
	base := "  - name: web\n" +
		"    health_check: {path: /healthz, interval: 2s, timeout: 1900ms, rise: 3, fall: 1}\n" +
		"    backends:\n      - {name: b1, address: \"" + b1.Addr() + "\"}\n"
	p := hcPool(t, base)
	p.Start()
	testbed.Eventually(t, 5*time.Second, func() bool { return p.Backend("b1").Health() == pool.Up }, "b1 up")

	p.Configure(hcPoolConfig(t, base+"      - {name: b2, address: \""+b2.Addr()+"\"}\n"))
	nb := p.Backend("b2")
	if nb == nil {
		t.Fatal("b2 not added")
	}
	b2Checks.Wait(t, 5*time.Second, "b2's first check")
	// Its check is in progress: b2 is unchecked and gets nothing.
	if got := hcPick(t, p, 100); got["b2"] != 0 || got["b1"] != 100 {
		t.Fatalf("picks before b2's first check completed: %v", got)
	}
	if nb.Health() != pool.Unknown {
		t.Fatalf("b2 health %s before its first check completed", nb.Health())
	}
	b2Checks.Release()
	testbed.Eventually(t, 5*time.Second, func() bool { return nb.Health() == pool.Up }, "b2 up after one pass")
	if n := b2.Passes(); n != 1 {
		t.Errorf("b2 came up after %d passes, want 1 (rise applies to a backend that was down)", n)
	}
	if got := hcPick(t, p, 100); got["b2"] != 50 || got["b1"] != 50 {
		t.Errorf("picks after b2's first pass: %v, want 50/50", got)
	}
}

func TestHealthTCPCheckWhenNoPath(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var accepted, bytesIn atomic.Int64
	serve := func(ln net.Listener) {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				bytesIn.Add(n)
				accepted.Add(1)
			}()
		}
	}
	go serve(ln)
	defer func() { ln.Close() }()

	p := hcPool(t, "  - name: tcp\n"+
		"    health_check: {interval: 50ms, timeout: 40ms, rise: 2, fall: 2}\n"+
		"    backends:\n      - {name: b1, address: \""+addr+"\"}\n")
	b := p.Backend("b1")
	p.Start()
	testbed.Eventually(t, 5*time.Second, func() bool { return b.Health() == pool.Up && accepted.Load() >= 3 }, "TCP checks to pass")
	if n := bytesIn.Load(); n != 0 {
		t.Errorf("a TCP check sent %d bytes; it should only connect", n)
	}
	if b.OpenConns() != 0 {
		t.Errorf("checks left %d pooled connections", b.OpenConns())
	}

	// Nobody listening: down after fall refused connects.
	ln.Close()
	testbed.Eventually(t, 5*time.Second, func() bool { return b.Health() == pool.Down }, "the backend down once its port is closed")
	if !strings.Contains(b.LastError(), "connect") {
		t.Errorf("last error %q should say the connect failed", b.LastError())
	}

	// Listening again on the same port: up after rise passes.
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	ln = ln2
	go serve(ln2)
	testbed.Eventually(t, 5*time.Second, func() bool { return b.Health() == pool.Up }, "the backend up again")
}

// hcFail picks until b is chosen and records a gateway failure on it; other
// picks succeed. It returns when b has failed once.
func hcFail(t *testing.T, p *pool.Pool, name string) {
	t.Helper()
	for range 100 {
		b, err := p.Pick(nil)
		if err != nil {
			t.Fatalf("Pick: %v", err)
		}
		if b.Name() == name {
			b.Finish(&pool.Outcome{Class: pool.ClassReset})
			return
		}
		b.Finish(&pool.Outcome{Class: pool.ClassOK, Status: 200})
	}
	t.Fatalf("%s was never picked", name)
}

func TestOutlierEjectionBackoffDoubles(t *testing.T) {
	const base = 200 * time.Millisecond
	bs := testbed.NewBackends(t, testbed.BackendOptions{}, "b1", "b2")
	hb, other := bs[0], bs[1]
	p := hcPool(t, "  - name: web\n"+
		"    health_check: {path: /healthz, interval: 50ms, timeout: 45ms, rise: 1, fall: 3}\n"+
		"    outlier: {consecutive_failures: 2, base_ejection: 200ms, max_ejection: 10s}\n"+
		"    backends:\n"+
		"      - {name: b1, address: \""+hb.Addr()+"\"}\n"+
		"      - {name: b2, address: \""+other.Addr()+"\"}\n")
	p.Start()
	b := p.Backend("b1")
	testbed.Eventually(t, 5*time.Second, func() bool {
		return b.Health() == pool.Up && p.Backend("b2").Health() == pool.Up
	}, "both backends up")

	eject := func() time.Time {
		t.Helper()
		hcFail(t, p, "b1")
		if b.Health() != pool.Up {
			t.Fatalf("b1 ejected after one failure; consecutive_failures is 2")
		}
		at := time.Now()
		hcFail(t, p, "b1")
		if b.Health() != pool.Down {
			t.Fatalf("b1 not ejected after 2 failures in a row (health %s)", b.Health())
		}
		if got := hcPick(t, p, 10); got["b1"] != 0 {
			t.Fatalf("ejected b1 was picked: %v", got)
		}
		return at
	}

	// Checks keep passing: each ejection lasts base·2^(k-1), then one pass
	// brings b1 back.
	var took []time.Duration
	for k := range 3 {
		at := eject()
		testbed.Eventually(t, 10*time.Second, func() bool { return b.Health() == pool.Up }, "b1 back after ejection %d", k+1)
		d := time.Since(at)
		took = append(took, d)
		if want := base << k; d < want {
			t.Errorf("ejection %d lasted %s, want at least %s", k+1, d, want)
		}
	}
	t.Logf("ejections lasted %v", took)

	// The fourth ejection (1.6s) with failing checks: the backend stays out
	// after the ejection time and returns only once a check passes.
	at := eject()
	hb.SetHealthy(false)
	var failsAfter int64 = -1
	testbed.Eventually(t, 15*time.Second, func() bool {
		if time.Since(at) < 8*base+100*time.Millisecond {
			return false
		}
		if failsAfter < 0 {
			failsAfter = hb.Fails()
		}
		return hb.Fails() >= failsAfter+3
	}, "three failed checks after the ejection ran out")
	if b.Health() != pool.Down {
		t.Fatalf("b1 is %s after its ejection ran out while its checks fail", b.Health())
	}
	if got := hcPick(t, p, 10); got["b1"] != 0 {
		t.Fatalf("b1 picked while its checks fail: %v", got)
	}
	passes := hb.Passes()
	hb.SetHealthy(true)
	testbed.Eventually(t, 5*time.Second, func() bool {
		h := b.Health()
		if h == pool.Up && hb.Passes() == passes {
			t.Fatalf("b1 came back without a passing check")
		}
		return h == pool.Up
	}, "b1 back once its checks pass")
	if got := hcPick(t, p, 10); got["b1"] != 5 {
		t.Errorf("picks after b1 came back: %v, want 5/5", got)
	}
}
