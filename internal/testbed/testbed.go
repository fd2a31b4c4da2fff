// Package testbed starts real baton instances and real backends on loopback
// for tests: no mocks of the network or of the proxy.
package testbed

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/pool"
	"github.com/baton-lb/baton/proxy"
)

// Baton is a running baton: proxy server, registry and its address.
type Baton struct {
	Addr string // host:port of the traffic listener
	Reg  *control.Registry
	Srv  *proxy.Server
	Cfg  *config.Config
	Logs *SyncBuffer // everything baton logged, JSON lines
}

// SyncBuffer is a bytes.Buffer safe for concurrent writes and reads.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Start parses yamlText as a baton config (its "listen" is replaced by
// 127.0.0.1:0 when absent), starts baton and registers its shutdown with
// t.Cleanup.
func Start(t testing.TB, yamlText string) *Baton {
	t.Helper()
	cfg, err := config.Parse([]byte(yamlText), "test.yaml")
	if err != nil {
		t.Fatalf("test config: %v", err)
	}
	return StartConfig(t, cfg)
}

// StartConfig is Start for a parsed config. Listen addresses other than
// 127.0.0.1 are replaced by 127.0.0.1:0.
func StartConfig(t testing.TB, cfg *config.Config) *Baton {
	t.Helper()
	if !strings.HasPrefix(cfg.Listen, "127.0.0.1:") {
		cfg.Listen = "127.0.0.1:0"
	}
	logs := &SyncBuffer{}
	log := zerolog.New(logs).Level(zerolog.DebugLevel).With().Timestamp().Logger()
	reg, err := control.New(cfg, cfg.StateFile, log)
	if err != nil {
		t.Fatalf("registry: %v", err)
	}
	srv := proxy.New(cfg, reg.Table(), log)
	reg.OnTable(srv.SetTable)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	reg.Start()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	b := &Baton{Addr: ln.Addr().String(), Reg: reg, Srv: srv, Cfg: cfg, Logs: logs}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
		reg.Close()
		if t.Failed() {
			t.Logf("baton logs:\n%s", tail(logs.String(), 60))
		}
	})
	return b
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// URL returns http://ADDR + path.
func (b *Baton) URL(path string) string { return "http://" + b.Addr + path }

// Pool returns a pool by name or fails the test.
func (b *Baton) Pool(t testing.TB, name string) *pool.Pool {
	t.Helper()
	p := b.Reg.Pool(name)
	if p == nil {
		t.Fatalf("no pool %q", name)
	}
	return p
}

// WaitHealthy waits until n backends of the pool are healthy and active.
func (b *Baton) WaitHealthy(t testing.TB, poolName string, n int) {
	t.Helper()
	p := b.Pool(t, poolName)
	Eventually(t, 10*time.Second, func() bool {
		up := 0
		for _, be := range p.Backends() {
			if be.Health() == pool.Up && be.State() == pool.Active {
				up++
			}
		}
		return up >= n
	}, "%d healthy backends in pool %s", n, poolName)
}

// Eventually polls cond every few milliseconds until it holds or the
// timeout passes, then fails the test with the formatted message.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(5 * time.Millisecond) // polling interval, not a wait for a condition
	}
}

// Backend starts an HTTP backend on 127.0.0.1 and returns its address.
func Backend(t testing.TB, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// NamedBackend is a backend answering 200 with its name as the body, and
// /healthz with 200.
func NamedBackend(t testing.TB, name string) string {
	return Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		_, _ = io.WriteString(w, name)
	}))
}

// RawBackend starts a TCP server on 127.0.0.1 that hands every accepted
// connection to serve, and returns its address. The listener and open
// connections close at cleanup.
func RawBackend(t testing.TB, serve func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("raw backend listen: %v", err)
	}
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// ReadRequestHead reads one request head (through the blank line) from br
// and returns it raw.
func ReadRequestHead(br *bufio.Reader) ([]byte, error) {
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		head = append(head, line...)
		if err != nil {
			return head, err
		}
		if len(line) <= 2 && strings.TrimRight(string(line), "\r\n") == "" {
			return head, nil
		}
	}
}

// RawRequest sends raw bytes to addr, half-closes, and returns everything
// baton answered before closing the connection (or the timeout).
func RawRequest(t testing.TB, addr string, raw string, timeout time.Duration) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatalf("write: %v", err)
	}
	_ = c.(*net.TCPConn).CloseWrite()
	out, _ := io.ReadAll(c)
	return string(out)
}

// PoolYAML renders a minimal pool named name with the given backends
// (name=address pairs) and fast health checks, for tests. extra is indented
// YAML added to the pool (e.g. "    balance: least_inflight\n").
func PoolYAML(name string, backends [][2]string, extra string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "  - name: %s\n", name)
	if !strings.Contains(extra, "health_check:") {
		sb.WriteString("    health_check: {interval: 100ms, timeout: 50ms, rise: 1, fall: 1}\n")
	}
	sb.WriteString(extra)
	sb.WriteString("    backends:\n")
	for _, b := range backends {
		fmt.Fprintf(&sb, "      - {name: %s, address: \"%s\", version: v1}\n", b[0], b[1])
	}
	return sb.String()
}

// Config renders a whole config with access logs on and the given pools.
func Config(pools ...string) string {
	return "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: debug, format: json}\npools:\n" + strings.Join(pools, "")
}
