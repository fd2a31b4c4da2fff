package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// soakLoad is steady GET+POST load on keep-alive connections and on fresh
// ones, recording when each request started and whether it failed.
type soakLoad struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	mu       sync.Mutex // protects results
	results  []soakResult
	inFlight atomic.Int64
}

type soakResult struct {
	start time.Time
	err   error
}

func (l *soakLoad) record(start time.Time, err error) {
	l.mu.Lock()
	l.results = append(l.results, soakResult{start, err})
	l.mu.Unlock()
}

func (l *soakLoad) run(keepAlive bool) {
	defer l.wg.Done()
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	for i := 0; i < 100000; i++ { // bounded; the test stops it long before
		select {
		case <-l.stop:
			return
		default:
		}
		start := time.Now()
		err := func() error {
			if c == nil {
				var err error
				if c, err = net.DialTimeout("tcp", l.addr, 3*time.Second); err != nil {
					return err
				}
				br = bufio.NewReader(c)
			}
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			req := "GET /products HTTP/1.1\r\nHost: shop.test\r\n\r\n"
			if i%2 == 1 {
				req = "POST /orders HTTP/1.1\r\nHost: shop.test\r\nContent-Length: 5\r\n\r\norder"
			}
			if !keepAlive {
				req = strings.Replace(req, "\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
			}
			if _, err := io.WriteString(c, req); err != nil {
				return err
			}
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if err == nil && res.StatusCode != 200 {
				err = fmt.Errorf("status %d", res.StatusCode)
			}
			if err == nil && (res.Close || !keepAlive) {
				c.Close()
				c = nil
			}
			return err
		}()
		if err != nil && c != nil {
			c.Close()
			c = nil
		}
		l.record(start, err)
		if err != nil {
			// A failed client waits a moment before trying again, as a
			// real one would (and so the results stay bounded).
			select {
			case <-l.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
}

// between counts the requests started in [from, to): answered and failed,
// with a sample error.
func (l *soakLoad) between(from, to time.Time) (ok, failed int, sample error, lastFail time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.results {
		if r.start.Before(from) || !r.start.Before(to) {
			continue
		}
		if r.err != nil {
			failed++
			sample = r.err
			if r.start.After(lastFail) {
				lastFail = r.start
			}
		} else {
			ok++
		}
	}
	return
}

// TestSoakFloodTunnelsIdleAdmin: with idle tunnels and idle admin
// connections open and steady GET+POST load going on, a flood of
// connections runs baton past a low descriptor limit. baton never exits,
// the load fails only while descriptors are exhausted, and every request
// started from 1 s after the flood stops succeeds. Bounded: about 15 s and
// at most 1 500 flood connections.
func TestSoakFloodTunnelsIdleAdmin(t *testing.T) {
	backend := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "echo") {
			c, rw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
			_ = rw.Flush()
			_, _ = io.Copy(c, rw)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "ok\n")
	}))
	dir := t.TempDir()
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "baton.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s, max_connections: 32}
log: {format: json, access: false}
server: {read_header_timeout: 1s, max_connections: 4000}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1, fall: 2}
    connections: {idle_timeout: 5m}
    backends:
      - {name: b1, address: %q, version: v1}
`, traffic, adminAddr, backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, "serve", "-c", cfg)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	waitServing(t, p, a, "shop", "b1")

	// Idle tunnels and idle admin connections.
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for i := 0; i < 20; i++ {
		c, err := net.Dial("tcp", traffic)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		_, _ = io.WriteString(c, "GET /chat HTTP/1.1\r\nHost: shop.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		res, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil || res.StatusCode != 101 {
			t.Fatalf("tunnel %d: %v %v", i, res, err)
		}
	}
	for i := 0; i < 10; i++ {
		c, err := net.Dial("tcp", adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if st, _, err := rawGet(c, bufio.NewReader(c), "/healthz"); err != nil || st != 200 {
			t.Fatalf("admin connection %d: %d %v", i, st, err)
		}
	}

	load := &soakLoad{addr: traffic, stop: make(chan struct{})}
	for i := 0; i < 4; i++ {
		load.wg.Add(1)
		go load.run(i != 3) // three keep-alive clients, one on fresh connections
	}
	defer func() {
		close(load.stop)
		load.wg.Wait()
	}()
	if !poll(10*time.Second, func() bool { ok, _, _, _ := load.between(time.Time{}, time.Now()); return ok >= 200 }) {
		t.Fatal("the load did not get going")
	}

	pid := p.cmd.Process.Pid
	limit := openFiles(t, pid) + 24
	limitFiles(t, pid, limit)
	floodStart := time.Now()
	var flood []net.Conn
	for len(flood) < 1500 && time.Since(floodStart) < 4*time.Second {
		c, err := net.DialTimeout("tcp", traffic, 500*time.Millisecond)
		if err != nil {
			break
		}
		flood = append(flood, c)
	}
	// Keep the flood up a moment so the load meets the exhaustion.
	exhausted := poll(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "too many open files") })
	time.Sleep(time.Second) // the flood holds baton exhausted for a second of steady load
	for _, c := range flood {
		c.Close()
	}
	floodEnd := time.Now()
	if !exhausted {
		t.Fatalf("the flood of %d connections never exhausted baton's %d descriptors", len(flood), limit)
	}
	// Steady load after the flood, for three seconds.
	deadline := floodEnd.Add(4 * time.Second)
	for time.Now().Before(deadline) && p.running() {
		<-time.After(50 * time.Millisecond)
	}
	if !p.running() {
		t.Fatalf("baton exited during the soak: %s", tailLines(p.stderr.String(), 10))
	}
	duringOK, duringFailed, duringErr, _ := load.between(floodStart, floodEnd)
	graceOK, graceFailed, _, lastFail := load.between(floodEnd, floodEnd.Add(time.Second))
	afterOK, afterFailed, afterErr, _ := load.between(floodEnd.Add(time.Second), deadline)
	t.Logf("flood: %d connections in %s past a limit of %d descriptors; load during the flood: %d ok, %d failed (e.g. %v); first second after: %d ok, %d failed; then: %d ok, %d failed",
		len(flood), floodEnd.Sub(floodStart).Round(time.Millisecond), limit, duringOK, duringFailed, duringErr, graceOK, graceFailed, afterOK, afterFailed)
	if graceFailed > 0 {
		t.Logf("last failure started %s after the flood stopped", lastFail.Sub(floodEnd).Round(time.Millisecond))
	}
	if afterFailed > 0 || afterOK < 50 {
		t.Errorf("from 1s after the flood stopped: %d ok, %d failed (e.g. %v); want all to succeed", afterOK, afterFailed, afterErr)
	}
	// The tunnels and admin connections held through it still work.
	tunnel := held[0]
	_ = tunnel.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(tunnel, "ping"); err != nil {
		t.Errorf("an idle tunnel after the soak: %v", err)
	} else if buf := make([]byte, 4); func() error { _, err := io.ReadFull(tunnel, buf); return err }() != nil || string(buf) != "ping" {
		t.Errorf("an idle tunnel after the soak echoed %q", buf)
	}
	if v := metricValue(t, a.c, adminAddr, `baton_listener_accept_errors_total{listener="http"}`); v < 1 {
		t.Errorf("accept errors counted: %v", v)
	}
	// Tunnels would get shutdown_timeout to end on their own.
	for _, c := range held {
		c.Close()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Errorf("exit %d after the soak", code)
	}
}
