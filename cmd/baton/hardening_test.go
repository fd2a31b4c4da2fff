package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/baton-lb/baton/internal/testbed"
)

// openFiles counts the descriptors process pid has open.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// limitFiles sets process pid's descriptor limit (soft and hard), as
// prlimit --nofile=n:n does.
func limitFiles(t *testing.T, pid, n int) {
	t.Helper()
	lim := unix.Rlimit{Cur: uint64(n), Max: uint64(n)}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
}

// metricValue returns the value of the exposition line that starts with
// series (name and labels) in baton's /metrics, or -1.
func metricValue(t *testing.T, c *http.Client, admin, series string) float64 {
	t.Helper()
	_, body, err := get(c, "http://"+admin+"/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(line[len(series):]), 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// rawGet sends one GET on c (keep-alive) and reads the answer.
func rawGet(c net.Conn, br *bufio.Reader, path string) (int, string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res.StatusCode, string(body), err
}

// TestDescriptorExhaustionKeepsServing: baton runs out of file descriptors
// (its limit lowered to a few more than it uses, then connections opened on
// every listener until it can take no more). It must not exit: connections
// already open keep being served, the backend is not held responsible, and
// once the flood's connections close, new ones are served again on the
// HTTP, HTTPS and admin listeners. Accept errors are counted and logged once
// per burst.
func TestDescriptorExhaustionKeepsServing(t *testing.T) {
	dir := t.TempDir()
	ca := testbed.NewCA(t)
	now := time.Now()
	ca.Issue(t, []string{"shop.test"}, now.Add(-time.Hour), now.Add(24*time.Hour)).Write(t, dir, "shop")
	backend := testbed.NamedBackend(t, "b1")
	plain, https, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "baton.yaml")
	// Fast health checks that would mark the backend down within a second
	// if checks failing for lack of descriptors counted against it; pooled
	// backend connections that outlive the test.
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
tls:
  listen: %s
  certificates: [{cert: shop.crt, key: shop.key}]
pools:
  - name: shop
    health_check: {interval: 50ms, timeout: 40ms, rise: 1, fall: 2}
    connections: {idle_timeout: 5m}
    outlier: {consecutive_failures: 2}
    backends:
      - {name: b1, address: %q, version: v1}
`, plain, adminAddr, https, backend)), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, "serve", "-c", cfg)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second}}
	waitServing(t, p, a, "shop", "b1")

	// A keep-alive client connected before the flood.
	kept, err := net.Dial("tcp", plain)
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	keptR := bufio.NewReader(kept)
	if st, body, err := rawGet(kept, keptR, "/"); err != nil || st != 200 || body != "b1" {
		t.Fatalf("before the flood: %d %q %v", st, body, err)
	}

	pid := p.cmd.Process.Pid
	limitFiles(t, pid, openFiles(t, pid)+8)
	// The flood: connections to every listener, more than baton has
	// descriptors for. Connections baton cannot accept wait in the kernel's
	// queue; the flood stops at a bounded count.
	var flood []net.Conn
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	for i := 0; i < 60; i++ {
		addr := []string{plain, https, adminAddr}[i%3]
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break // refused: the kernel's queue is full too
		}
		flood = append(flood, c)
	}
	// Exhausted: baton's accepts fail.
	if !poll(10*time.Second, func() bool { return strings.Contains(p.stderr.String(), "too many open files") }) {
		t.Fatalf("baton never ran out of descriptors (%d flood connections)", len(flood))
	}
	// Health checks fail meanwhile for baton's lack of descriptors: give
	// them time to (wrongly) take the backend down — 20 checks.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) && p.running() {
		if st, body, err := rawGet(kept, keptR, "/"); err != nil || st != 200 || body != "b1" {
			t.Fatalf("a connection open before the flood failed during it: %d %q %v", st, body, err)
		}
	}
	if !p.running() {
		t.Fatalf("baton exited when it ran out of descriptors: %s", tailLines(p.stderr.String(), 10))
	}

	// The flood ends: baton serves new connections again on every listener.
	nFlood := len(flood)
	for _, c := range flood {
		c.Close()
	}
	flood = nil
	stopped := time.Now()
	var recovered time.Duration
	if !poll(10*time.Second, func() bool {
		c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		st, body, err := get(c, "http://"+plain+"/")
		if err != nil || st != 200 || body != "b1" {
			return false
		}
		recovered = time.Since(stopped)
		return true
	}) {
		t.Fatalf("no new HTTP connection served after the flood: %s", tailLines(p.stderr.String(), 10))
	}
	tc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca.Pool, ServerName: "shop.test"}, DisableKeepAlives: true}}
	if st, body, err := get(tc, "https://"+https+"/"); err != nil || st != 200 || body != "b1" {
		t.Errorf("HTTPS after the flood: %d %q %v", st, body, err)
	}
	fresh := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	if st, _, err := get(fresh, "http://"+adminAddr+"/healthz"); err != nil || st != 200 {
		t.Errorf("admin after the flood: %d %v", st, err)
	}
	if st, body, err := rawGet(kept, keptR, "/"); err != nil || st != 200 || body != "b1" {
		t.Errorf("the connection open before the flood, after it: %d %q %v", st, body, err)
	}
	pj, err := a.pool("shop")
	if err != nil {
		t.Fatal(err)
	}
	if b := findBackend(pj, "b1"); b == nil || !b.Healthy || b.State != "active" {
		t.Errorf("the backend was held responsible for baton's lack of descriptors: %+v", b)
	}
	for _, l := range []string{"http", "https", "admin"} {
		if v := metricValue(t, fresh, adminAddr, `baton_listener_accept_errors_total{listener="`+l+`"}`); v < 1 {
			t.Errorf("baton_listener_accept_errors_total{listener=%q} = %v, want ≥ 1", l, v)
		}
	}
	// Logged once per burst and listener, not once per failed accept.
	logs := p.stderr.String()
	failed := 0
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"listener":"http"`) && strings.Contains(line, "accepting connections failed") {
			failed++
		}
	}
	if failed != 1 {
		t.Errorf("the HTTP listener logged %d accept failures in one burst; want one", failed)
	}
	t.Logf("served again %s after the flood closed; %d flood connections", recovered.Round(time.Millisecond), nFlood)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestAdminListenerLimits: idle keep-alive connections to the admin API are
// closed after admin.idle_timeout; a client trickling its request is cut
// off after admin.read_timeout; connections over admin.max_connections are
// answered 503; and a drain?wait= longer than the write timeout still
// answers once the backend is idle.
func TestAdminListenerLimits(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	backend := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			started <- struct{}{}
			<-release
		}
		_, _ = io.WriteString(w, "ok")
	}))
	plain, adminAddr := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "baton.yaml", fmt.Sprintf(`listen: %s
admin: {listen: %s, idle_timeout: 300ms, read_timeout: 500ms, write_timeout: 500ms, max_connections: 4}
log: {format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
`, plain, adminAddr, backend))
	p := startBinary(t, "serve", "-c", cfg)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true}}}
	waitServing(t, p, a, "shop", "b1")

	// Idle keep-alive connections are closed by baton.
	var idle []net.Conn
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		if st, _, err := rawGet(c, br, "/healthz"); err != nil || st != 200 {
			t.Fatalf("/healthz: %d %v", st, err)
		}
		idle = append(idle, c)
	}
	for i, c := range idle {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("idle admin connection %d: read %d bytes, %v; want it closed by baton (EOF)", i, n, err)
		}
	}

	// A request trickled byte by byte is cut off after the read timeout.
	slow, err := net.Dial("tcp", adminAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	head := "GET /v1/pools HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + strings.Repeat("a", 200) + "\r\n\r\n"
	cut := false
	for i := 0; i < len(head) && !cut; i++ {
		_ = slow.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := slow.Write([]byte{head[i]}); err != nil {
			cut = true
			break
		}
		_ = slow.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := slow.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
			cut = true
		}
	}
	if !cut {
		t.Errorf("a request trickled over %d bytes was never cut off", len(head))
	}

	// ?wait= stretches the timeouts only on the routes that wait: a body
	// trickled to another route with it is cut off like any other.
	trickle, err := net.Dial("tcp", adminAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer trickle.Close()
	if _, err := io.WriteString(trickle, "POST /v1/pools/shop/backends?wait=1h HTTP/1.1\r\nHost: 127.0.0.1\r\n"+
		"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	began, cut := time.Now(), false
	for i := 0; i < 80 && !cut; i++ { // 80 × 50 ms: eight read timeouts
		_ = trickle.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := trickle.Write([]byte{'{'}); err != nil {
			cut = true
			break
		}
		_ = trickle.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		if _, err := trickle.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
			cut = true
		}
	}
	if !cut {
		t.Errorf("a body trickled to a route that does not wait, with ?wait=1h, was not cut off in %s", time.Since(began).Round(time.Millisecond))
	}

	// Over the cap: four connections held open, the fifth reads a 503. The
	// held ones send nothing, so baton cuts them after the read timeout; a
	// machine so busy that this happened before the fifth was accepted
	// gets another try.
	var refused []byte
	for try := 0; try < 5 && !strings.HasPrefix(string(refused), "HTTP/1.1 503 "); try++ {
		var held []net.Conn
		for i := 0; i < 4; i++ {
			c, err := net.Dial("tcp", adminAddr)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		over, err := net.Dial("tcp", adminAddr)
		if err != nil {
			t.Fatal(err)
		}
		_ = over.SetReadDeadline(time.Now().Add(5 * time.Second))
		refused, _ = io.ReadAll(over)
		over.Close()
		for _, c := range held {
			c.Close()
		}
	}
	if !strings.HasPrefix(string(refused), "HTTP/1.1 503 ") || !strings.Contains(string(refused), "admin.max_connections") {
		t.Errorf("a connection over admin.max_connections read %q", refused)
	}
	// The held connections closed, the API answers again.
	if !poll(5*time.Second, func() bool { st, _, err := a.do("GET", "/v1/pools", ""); return err == nil && st == 200 }) {
		t.Fatal("the admin API did not answer after the held connections closed")
	}

	// A drain that waits longer than the write timeout still answers.
	go func() {
		c := &http.Client{Timeout: 20 * time.Second}
		_, _, _ = get(c, "http://"+plain+"/slow")
	}()
	<-started
	time.AfterFunc(1500*time.Millisecond, func() { close(release) })
	var drained struct {
		State string `json:"state"`
	}
	begun := time.Now()
	a.must("POST", "/v1/pools/shop/backends/b1/drain?wait=10s", "", 200, &drained)
	if took := time.Since(begun); drained.State != "drained" || took < time.Second {
		t.Errorf("drain?wait=10s answered state %q after %s; want drained after the held request ended (~1.5s)", drained.State, took)
	}
}

// TestAdminTokensReloadAndTLS: the admin API over HTTPS (admin.tls), baton
// ctl trusting its CA with --ca; a token file others can read is warned
// about by check and serve; revoking a token in the file takes effect
// without a restart, and a broken token file keeps the tokens in force.
func TestAdminTokensReloadAndTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testbed.NewCA(t)
	leaf := ca.Issue(t, []string{"localhost"}, time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	leaf.Write(t, dir, "admin")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, leaf.CertPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("ops:ops-token-0123456789\nci:ci-token-0123456789\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"ops.tok": "ops-token-0123456789", "ci.tok": "ci-token-0123456789"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, port, _ := net.SplitHostPort(freeAddr(t))
	cfg := filepath.Join(dir, "baton.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`listen: %s
admin: {listen: "127.0.0.1:%s", token_file: tokens, tls: {cert: admin.crt, key: admin.key}}
log: {format: json}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
`, freeAddr(t), port, testbed.NamedBackend(t, "b1"))), 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := runBinary(t, "check", "-c", cfg)
	if code != 0 || !strings.Contains(stderr, "warning: admin.token_file: "+tokens+" can be read by other users (mode 0644); chmod 600 it") {
		t.Errorf("baton check with a token file others can read: exit %d, %q", code, stderr)
	}
	p := startBinary(t, "serve", "-c", cfg)
	admin := "https://localhost:" + port
	ctl := func(token string, args ...string) (int, string) {
		out, errOut, code := runBinary(t, append([]string{"ctl", "--admin", admin, "--ca", caFile, "--token-file", filepath.Join(dir, token)}, args...)...)
		return code, out + errOut
	}
	if !poll(15*time.Second, func() bool { code, _ := ctl("ops.tok", "pools"); return code == 0 }) {
		_, out := ctl("ops.tok", "pools")
		t.Fatalf("baton ctl over HTTPS never worked: %s\n%s", out, p.stderr)
	}
	// The log reaches the test through a pipe copied by another goroutine:
	// wait for it rather than read it at once.
	if !poll(5*time.Second, func() bool { return strings.Contains(p.stderr.String(), "can be read by other users") }) {
		t.Errorf("serve did not warn about the token file")
	}
	if code, out := ctl("ci.tok", "pools"); code != 0 {
		t.Fatalf("the ci token before the revocation: %d %s", code, out)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if st, _, err := get(plain, "http://127.0.0.1:"+port+"/healthz"); err == nil && st == 200 {
		t.Errorf("plain HTTP to the admin listener with admin.tls answered 200")
	}

	// Revoke ci.
	testbed.WriteAtomic(t, tokens, []byte("ops:ops-token-0123456789\n"))
	if !poll(10*time.Second, func() bool {
		code, out := ctl("ci.tok", "pools")
		return code == 1 && strings.Contains(out, "a valid token is required")
	}) {
		t.Fatal("a revoked token still works")
	}
	if code, out := ctl("ops.tok", "pools"); code != 0 {
		t.Errorf("the kept token after the revocation: %d %s", code, out)
	}
	// A token file emptied, broken or removed revokes every token: "revoke
	// everyone" in an emergency must not revoke no one. The refusal says
	// why; a file that loads again opens the API again.
	for _, c := range []struct {
		name  string
		write func()
		why   string
	}{
		{"emptied", func() { testbed.WriteAtomic(t, tokens, []byte("# all access revoked\n")) }, "has no token"},
		{"broken", func() { testbed.WriteAtomic(t, tokens, []byte("ops:ops-token-0123456789\ncarol:short\n")) }, "shorter than"},
		{"removed", func() { _ = os.Remove(tokens) }, "reading the token file"},
	} {
		c.write()
		if !poll(10*time.Second, func() bool {
			code, out := ctl("ops.tok", "pools")
			return code == 1 && strings.Contains(out, "no token is accepted until the token file loads again") && strings.Contains(out, c.why)
		}) {
			_, out := ctl("ops.tok", "pools")
			t.Fatalf("token file %s: the ops token still answers %s", c.name, out)
		}
		testbed.WriteAtomic(t, tokens, []byte("ops:ops-token-0123456789\n"))
		if !poll(10*time.Second, func() bool { code, _ := ctl("ops.tok", "pools"); return code == 0 }) {
			t.Fatalf("after the token file %s and came back, the ops token does not work", c.name)
		}
	}
	code, out := ctl("ops.tok", "events")
	if code != 0 || !strings.Contains(out, "revoke admin tokens") || !strings.Contains(out, "reload admin tokens") {
		t.Errorf("token reloads and revocations are not in the audit log: %s", out)
	}
}
