package main

import (
	"bufio"
	"errors"
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

// keepAliveLoad sends GETs and POSTs from a few clients, each on one
// keep-alive connection that it replaces only when baton answers with
// Connection: close. It does not retry anything: a request written on a
// connection that then breaks is a failed request. A connection that cannot
// be made because baton stopped listening (refused, or reset before the
// handshake completed) ends the client (when refusedEnds), as a real
// client would go elsewhere.
type keepAliveLoad struct {
	addr        string
	refusedEnds bool
	prefix      string // of POST ids, unique per load

	sent, ok, failed atomic.Int64
	mu               sync.Mutex // protects failures and posts
	failures         []string
	posts            map[string]int // POST ids answered 200
	stop             chan struct{}
	wg               sync.WaitGroup
}

var loads atomic.Int64

func startKeepAliveLoad(addr string, clients int, refusedEnds bool) *keepAliveLoad {
	l := &keepAliveLoad{addr: addr, refusedEnds: refusedEnds, stop: make(chan struct{}), posts: map[string]int{},
		prefix: fmt.Sprintf("l%d", loads.Add(1))}
	for w := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.client(w)
		}()
	}
	return l
}

func (l *keepAliveLoad) fail(format string, args ...any) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 10 {
		l.failures = append(l.failures, fmt.Sprintf(format, args...))
	}
	l.mu.Unlock()
}

func (l *keepAliveLoad) client(w int) {
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	// Bounded: at most 200 000 requests per client, and the test stops it.
	for i := 0; i < 200000; i++ {
		select {
		case <-l.stop:
			return
		default:
		}
		if c == nil {
			var err error
			c, err = net.DialTimeout("tcp", l.addr, 2*time.Second)
			if err != nil {
				// Refused, or reset while connecting (the listener closed
				// with the handshake in its queue): nothing was sent.
				if l.refusedEnds && (errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)) {
					return
				}
				l.fail("dial: %v", err)
				return
			}
			br = bufio.NewReader(c)
		}
		var req string
		id := ""
		if i%2 == 0 {
			req = "GET /products HTTP/1.1\r\nHost: shop.test\r\n\r\n"
		} else {
			id = fmt.Sprintf("%s-c%d-%d", l.prefix, w, i)
			body := "order " + id
			req = fmt.Sprintf("POST /orders HTTP/1.1\r\nHost: shop.test\r\nX-Order: %s\r\nContent-Length: %d\r\n\r\n%s", id, len(body), body)
		}
		l.sent.Add(1)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		_, err := io.WriteString(c, req)
		var res *http.Response
		if err == nil {
			res, err = http.ReadResponse(br, nil)
		}
		if err == nil {
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		if err != nil {
			l.fail("%s on a connection baton had accepted: %v", strings.Fields(req)[0], err)
			c.Close()
			c = nil
			continue
		}
		if res.StatusCode != 200 {
			l.fail("%s: status %d", strings.Fields(req)[0], res.StatusCode)
		} else {
			l.ok.Add(1)
			if id != "" {
				l.mu.Lock()
				l.posts[id]++
				l.mu.Unlock()
			}
		}
		if res.Close {
			c.Close()
			c = nil
		}
	}
}

// waitFor waits until n more requests than now were answered.
func (l *keepAliveLoad) waitFor(t *testing.T, n int64) {
	t.Helper()
	target := l.ok.Load() + n
	if !poll(30*time.Second, func() bool { return l.ok.Load() >= target }) {
		t.Fatalf("the load stalled at %d answered requests (%d failed: %v)", l.ok.Load(), l.failed.Load(), l.failures)
	}
}

// end stops the clients and waits for them.
func (l *keepAliveLoad) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// orderBackend answers GETs and POSTs and records each POST's id.
func orderBackend(t *testing.T, mu *sync.Mutex, ledger map[string]int) string {
	return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			_, _ = io.Copy(io.Discard, r.Body)
			mu.Lock()
			ledger[r.Header.Get("X-Order")]++
			mu.Unlock()
		}
		_, _ = io.WriteString(w, "ok\n")
	}))
}

// TestSIGTERMUnderKeepAliveLoadLosesNothing: SIGTERM while clients send
// GETs and POSTs on keep-alive connections, three times. Requests a client
// was already sending on an idle connection get their answer (with
// Connection: close), none fails, and baton exits 0 at once, without
// reporting a timeout.
func TestSIGTERMUnderKeepAliveLoadLosesNothing(t *testing.T) {
	var mu sync.Mutex
	ledger := map[string]int{}
	b1, b2 := orderBackend(t, &mu, ledger), orderBackend(t, &mu, ledger)
	for run := 1; run <= 3; run++ {
		traffic, adminAddr := freeAddr(t), freeAddr(t)
		cfg := writeFile(t, "baton.yaml", fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
server: {shutdown_timeout: 10s}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
      - {name: b2, address: %q, version: v1}
`, traffic, adminAddr, b1, b2))
		p := startBinary(t, "serve", "-c", cfg)
		a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second}}
		waitServing(t, p, a, "shop", "b1", "b2")
		load := startKeepAliveLoad(traffic, 6, true)
		load.waitFor(t, 400)
		begun := time.Now()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		code := p.waitExit(t, 20*time.Second)
		took := time.Since(begun)
		load.end()
		if code != 0 {
			t.Errorf("run %d: exit code %d after SIGTERM", run, code)
		}
		if n := load.failed.Load(); n != 0 {
			t.Errorf("run %d: %d of %d requests failed through SIGTERM: %v", run, n, load.sent.Load(), load.failures)
		}
		if logs := p.stderr.String(); strings.Contains(logs, "shutdown timeout reached") {
			t.Errorf("run %d: a shutdown that took %s reported a timeout: %s", run, took, tailLines(logs, 5))
		}
		mu.Lock()
		for id := range load.posts {
			if ledger[id] != 1 {
				t.Errorf("run %d: POST %s reached the backends %d times", run, id, ledger[id])
			}
		}
		mu.Unlock()
		t.Logf("run %d: %d requests answered, %d failed; baton exited %s after SIGTERM", run, load.ok.Load(), load.failed.Load(), took.Round(time.Millisecond))
	}
}

// TestSIGTERMWithoutTrafficIsQuiet: with nothing open, SIGTERM stops baton
// at once and says nothing of a timeout or of connections left open.
func TestSIGTERMWithoutTrafficIsQuiet(t *testing.T) {
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "baton.yaml", fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
`, traffic, adminAddr, testbed.NamedBackend(t, "b1")))
	p := startBinary(t, "serve", "-c", cfg)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	waitServing(t, p, a, "shop", "b1")
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	logs := p.stderr.String()
	for _, bad := range []string{"shutdown timeout reached", `"connections":-1`, "use of closed network connection"} {
		if strings.Contains(logs, bad) {
			t.Errorf("an idle shutdown logged %q:\n%s", bad, tailLines(logs, 5))
		}
	}
	if !strings.Contains(logs, "baton stopped") {
		t.Errorf("no \"baton stopped\" in the log:\n%s", tailLines(logs, 5))
	}
}

// processGone reports whether pid has exited (gone, or a zombie).
func processGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the parenthesised command name.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] == 'Z'
}

// startUpgradable starts baton serve on cfgPath with a PID file beside it,
// its output in a file (the processes it hands over to inherit it), and
// kills whichever process serves at the end of the test.
func startUpgradable(t *testing.T, cfgPath string) (first *proc, pidFile string) {
	t.Helper()
	dir := filepath.Dir(cfgPath)
	pidFile = filepath.Join(dir, "baton.pid")
	logPath := filepath.Join(dir, "baton.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logFile.Close() })
	first = startBinaryTo(t, logFile, "serve", "-c", cfgPath, "--pid-file", pidFile)
	t.Cleanup(func() {
		if pid := readPID(pidFile); pid > 0 && pid != first.cmd.Process.Pid {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("baton log:\n%s", tailLines(string(data), 40))
		}
	})
	return first, pidFile
}

// TestUpgradesUnderKeepAliveLoadLoseNothing: three hitless upgrades in a
// row (SIGUSR2) while clients send GETs and POSTs on keep-alive
// connections: no request fails, every POST reaches a backend once, and
// each old process exits.
func TestUpgradesUnderKeepAliveLoadLoseNothing(t *testing.T) {
	var mu sync.Mutex
	ledger := map[string]int{}
	b1, b2 := orderBackend(t, &mu, ledger), orderBackend(t, &mu, ledger)
	dir := t.TempDir()
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "baton.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
server: {shutdown_timeout: 10s}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
      - {name: b2, address: %q, version: v1}
`, traffic, adminAddr, b1, b2)), 0o644); err != nil {
		t.Fatal(err)
	}
	first, pidFile := startUpgradable(t, cfgPath)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	if !poll(20*time.Second, func() bool { return readPID(pidFile) == first.cmd.Process.Pid }) {
		t.Fatal("baton wrote no PID file")
	}
	waitServing(t, first, a, "shop", "b1", "b2")
	load := startKeepAliveLoad(traffic, 6, false)
	defer load.end()
	load.waitFor(t, 400)
	pid := first.cmd.Process.Pid
	for up := 1; up <= 3; up++ {
		if err := syscall.Kill(pid, syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
		if !poll(30*time.Second, func() bool { n := readPID(pidFile); return n != 0 && n != pid }) {
			t.Fatalf("upgrade %d: no new process took over from %d", up, pid)
		}
		if !poll(30*time.Second, func() bool { return processGone(pid) }) {
			t.Fatalf("upgrade %d: the old process %d did not exit", up, pid)
		}
		pid = readPID(pidFile)
		load.waitFor(t, 400)
	}
	load.end()
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d of %d requests failed across 3 upgrades: %v", n, load.sent.Load(), load.failures)
	}
	mu.Lock()
	for id := range load.posts {
		if ledger[id] != 1 {
			t.Errorf("POST %s reached the backends %d times", id, ledger[id])
		}
	}
	mu.Unlock()
	if code := first.waitExit(t, 5*time.Second); code != 0 {
		t.Errorf("the first process exited %d after handing over, want 0", code)
	}
	t.Logf("%d requests answered across 3 upgrades, %d failed", load.ok.Load(), load.failed.Load())
	// Each upgrade is in the audit log the last process serves.
	var evs []map[string]any
	a.must("GET", "/v1/events", "", 200, &evs)
	upgrades := 0
	for _, ev := range evs {
		if ev["action"] == "upgrade" && ev["actor"] == "signal" {
			upgrades++
		}
	}
	if upgrades != 3 {
		t.Errorf("%d upgrades in the audit log, want 3: %v", upgrades, evs)
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if !poll(20*time.Second, func() bool { return processGone(pid) }) {
		t.Errorf("the last process %d did not stop on SIGTERM", pid)
	}
}

// TestSecondBatonRefusesAStateFileInUse: two batons on one state file
// would overwrite each other's decisions; the second refuses to start and
// names the first.
func TestSecondBatonRefusesAStateFileInUse(t *testing.T) {
	dir := t.TempDir()
	backend := testbed.NamedBackend(t, "b1")
	write := func(name string) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s}
state_file: shared.state.json
log: {format: json}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
`, freeAddr(t), freeAddr(t), backend)), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	first := startBinary(t, "serve", "-c", write("a.yaml"))
	if !poll(15*time.Second, func() bool {
		data, err := os.ReadFile(filepath.Join(dir, "shared.state.json.lock"))
		return err == nil && strings.TrimSpace(string(data)) == fmt.Sprint(first.cmd.Process.Pid)
	}) {
		t.Fatalf("the first baton took no lock: %s", first.stderr)
	}
	_, stderr, code := runBinary(t, "serve", "-c", write("b.yaml"))
	want := fmt.Sprintf("is locked by baton pid %d", first.cmd.Process.Pid)
	if code != 1 || !strings.Contains(stderr, "state file is in use by another baton") || !strings.Contains(stderr, want) {
		t.Errorf("a second baton on the same state file: exit %d, %q; want 1 naming pid %d", code, stderr, first.cmd.Process.Pid)
	}
	if !first.running() {
		t.Errorf("the first baton stopped")
	}
}

// TestNewProcessDecidesNothingBeforeItIsReady: during a hitless upgrade the
// admin socket is shared by both processes, and the new one waits for its
// first health checks before it is ready. Until then neither takes a
// decision (503 upgrading); once it is, decisions work and are the new
// process's.
func TestNewProcessDecidesNothingBeforeItIsReady(t *testing.T) {
	dir := t.TempDir()
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	down := freeAddr(t) // nothing listens: the "later" pool never gets healthy
	cfgPath := filepath.Join(dir, "baton.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: b1, address: %q, version: v1}
  - name: later
    routes: [{path_prefix: /later}]
    health_check: {interval: 100ms, timeout: 80ms, rise: 1}
    backends:
      - {name: l1, address: %q, version: v1}
`, traffic, adminAddr, testbed.NamedBackend(t, "b1"), down)), 0o644); err != nil {
		t.Fatal(err)
	}
	first, pidFile := startUpgradable(t, cfgPath)
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	waitServing(t, first, a, "shop", "b1")
	if err := first.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	// The new process has started (it holds the lock file) but waits
	// for the "later" pool, up to 10 s.
	if !poll(15*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(dir, "baton.state.json.lock"))
		pid := strings.TrimSpace(string(data))
		return pid != "" && pid != fmt.Sprint(first.cmd.Process.Pid)
	}) {
		t.Fatal("no new process started")
	}
	answers := map[int]int{}
	for i := 0; i < 20 && readPID(pidFile) == first.cmd.Process.Pid; i++ {
		st, body, err := a.do("POST", "/v1/pools/shop/backends/b1/eject", "")
		if err != nil {
			continue // the old process closing its admin socket under us
		}
		answers[st]++
		if st != 503 || !strings.Contains(string(body), "upgrading") {
			t.Errorf("an eject during the handover answered %d %s; want 503 upgrading", st, body)
		}
	}
	if answers[503] == 0 {
		t.Fatalf("no request was answered during the handover (%v)", answers)
	}
	if !poll(30*time.Second, func() bool { n := readPID(pidFile); return n != 0 && n != first.cmd.Process.Pid }) {
		t.Fatal("the new process never took over")
	}
	if !poll(10*time.Second, func() bool {
		st, _, err := a.do("POST", "/v1/pools/shop/backends/b1/drain", "")
		return err == nil && (st == 200 || st == 202)
	}) {
		t.Fatal("decisions did not resume in the new process")
	}
	p, err := a.pool("shop")
	if err != nil {
		t.Fatal(err)
	}
	if b := findBackend(p, "b1"); b == nil || (b.State != "draining" && b.State != "drained") {
		t.Errorf("b1 after the handover: %+v; want drained by the new process, never ejected", b)
	}
	t.Logf("answers during the handover: %v", answers)
}
