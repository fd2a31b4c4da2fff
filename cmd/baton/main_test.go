package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// testVersion is stamped into the binary TestMain builds, to check that
// -ldflags "-X main.version=..." reaches `baton version`.
const testVersion = "v0.0.0-test+abc123"

// batonBin is the baton binary built once by TestMain.
var batonBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "baton-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	batonBin = filepath.Join(dir, "baton")
	build := exec.Command(goBin, "build", "-o", batonBin, "-ldflags", "-X main.version="+testVersion, ".")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "TestMain: building baton: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// syncBuffer is a bytes.Buffer that a process may write to while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runBinary runs the built baton to completion (at most 30s) and returns
// its output and exit code.
func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, batonBin, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		code = 0
	case errors.As(err, &ee) && ctx.Err() == nil:
		code = ee.ExitCode()
	default:
		t.Fatalf("baton %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return out.String(), errOut.String(), code
}

// runDirect calls run in-process.
func runDirect(args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return out.String(), errOut.String(), code
}

// writeFile writes a file in a fresh temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago, for a baton the test starts (testbed.FreeAddr says why not :0).
func freeAddr(t *testing.T) string {
	t.Helper()
	return testbed.FreeAddr(t)
}

// poll calls cond every 20ms until it is true or timeout passes.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}

// proc is a baton process started by the test.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *syncBuffer
	exited         chan struct{} // closed when the process has exited
	waitErr        error         // valid once exited is closed
}

// startBinary starts the built baton; the process is killed at the end of
// the test if it is still running.
func startBinary(t *testing.T, args ...string) *proc {
	t.Helper()
	return startBinaryTo(t, nil, args...)
}

// startBinaryTo is startBinary with the process's output going to out
// (when not nil): a file, which a process it hands over to inherits and
// may keep writing after this one exits. stdout and stderr stay empty then.
func startBinaryTo(t *testing.T, out *os.File, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(batonBin, args...), stdout: &syncBuffer{}, stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if out != nil {
		p.cmd.Stdout, p.cmd.Stderr = out, out
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("baton stdout:\n%s\nbaton stderr:\n%s", p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// waitExit waits for the process to exit and returns its exit code.
func (p *proc) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("baton did not exit within %s", timeout)
	}
	if p.waitErr == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		return ee.ExitCode()
	}
	t.Fatalf("waiting for baton: %v", p.waitErr)
	return -1
}

// get does one GET and returns the status and body, or an error.
func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func TestNoArgumentsPrintsUsageAndExits2(t *testing.T) {
	stdout, stderr, code := runBinary(t)
	if code != exitUsage || stdout != "" || !strings.Contains(stderr, "Usage:") || !strings.Contains(stderr, "baton check -c") {
		t.Errorf("baton with no args: code %d, stdout %q, stderr %q; want 2 and the usage on stderr", code, stdout, stderr)
	}
}

func TestUnknownCommandExits2(t *testing.T) {
	stdout, stderr, code := runBinary(t, "frobnicate")
	if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, `baton: unknown command "frobnicate"`) || !strings.Contains(stderr, "Usage:") {
		t.Errorf("baton frobnicate: code %d, stdout %q, stderr %q; want 2, the command named and the usage on stderr", code, stdout, stderr)
	}
	// A flag where a command belongs is an unknown command too.
	if _, stderr, code := runDirect("-c", "baton.yaml"); code != exitUsage || !strings.Contains(stderr, `unknown command "-c"`) {
		t.Errorf("baton -c baton.yaml: code %d, stderr %q", code, stderr)
	}
}

func TestHelpGoesToStdoutAndExits0(t *testing.T) {
	for _, arg := range []string{"help", "-h", "--help"} {
		stdout, stderr, code := runDirect(arg)
		if code != exitOK || stderr != "" || stdout != usage {
			t.Errorf("baton %s: code %d, stdout %q, stderr %q; want 0 and the usage on stdout", arg, code, stdout, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	stdout, stderr, code := runBinary(t, "version")
	if code != exitOK || stderr != "" || stdout != "baton "+testVersion+"\n" {
		t.Errorf("built binary: code %d, stdout %q, stderr %q; want \"baton %s\\n\"", code, stdout, stderr, testVersion)
	}
	for _, arg := range []string{"version", "--version"} {
		stdout, _, code := runDirect(arg)
		if code != exitOK || stdout != "baton "+version+"\n" || version == "" {
			t.Errorf("run(%s): code %d, stdout %q; want \"baton %s\\n\"", arg, code, stdout, version)
		}
	}
}

const goodConfig = `listen: 127.0.0.1:18080
admin:
  listen: "off"
pools:
  - name: shop
    routes: [{host: shop.example.com}]
    backends:
      - {name: s1, address: "127.0.0.1:9201"}
      - {name: s2, address: "127.0.0.1:9202"}
  - name: web
    backends:
      - {name: w1, address: "127.0.0.1:9203"}
`

func TestCheckGoodConfig(t *testing.T) {
	path := writeFile(t, "good.yaml", goodConfig)
	stdout, stderr, code := runBinary(t, "check", "-c", path)
	want := path + ": ok (2 pool(s), 3 backend(s), listening on 127.0.0.1:18080)\n"
	if code != exitOK || stdout != want || stderr != "" {
		t.Errorf("check good.yaml: code %d\nstdout %q\nstderr %q\nwant 0 and stdout %q", code, stdout, stderr, want)
	}
	// The long flag works the same.
	if stdout, _, code := runDirect("check", "--config", path); code != exitOK || stdout != want {
		t.Errorf("check --config: code %d, stdout %q", code, stdout)
	}
}

func TestCheckExampleConfig(t *testing.T) {
	stdout, stderr, code := runDirect("check", "-c", "../../config.example.yaml")
	want := "../../config.example.yaml: ok (1 pool(s), 4 backend(s), listening on :8080)\n"
	if code != exitOK || stdout != want || stderr != "" {
		t.Errorf("check config.example.yaml: code %d, stdout %q, stderr %q; want %q", code, stdout, stderr, want)
	}
}

func TestCheckBrokenConfigPrintsEveryError(t *testing.T) {
	path := writeFile(t, "broken.yaml", `listen: 127.0.0.1:18080
admin:
  listen: "off"
pools:
  - name: shop
    balance: fastest
    retries:
      attempts: 9
    backends:
      - name: s1
        address: 127.0.0.1:9201
        weight: 5000
      - name: s1
        address: "no-port"
  - name: shop
    backends:
      - {name: w1, address: "127.0.0.1:9203"}
`)
	stdout, stderr, code := runBinary(t, "check", "-c", path)
	want := `pools[0].balance: must be round_robin or least_inflight, got "fastest" (broken.yaml:6)
pools[0].retries.attempts: must be 1..5, got 9 (broken.yaml:8)
pools[0].backends[0].weight: must be 0..1000, got 5000 (broken.yaml:12)
pools[0].backends[1].name: duplicate backend name "s1" (also backends[0]) (broken.yaml:13)
pools[0].backends[1].address: must be host:port such as 10.0.0.5:8080, got "no-port" (broken.yaml:14)
pools[1].name: duplicate pool name "shop" (also pools[0]) (broken.yaml:15)
pools[1].routes: only one pool may have no routes (the default pool); pools[0] already is (broken.yaml:15)
7 errors
`
	if code != exitFail || stdout != "" || stderr != want {
		t.Errorf("check broken.yaml: code %d, stdout %q\nstderr:\n%s\nwant code 1 and stderr:\n%s", code, stdout, stderr, want)
	}

	// Unknown keys are reported the same way, with path and line.
	path = writeFile(t, "typo.yaml", strings.Replace(goodConfig, `      - {name: w1, address: "127.0.0.1:9203"}`,
		"      - name: w1\n        address: 127.0.0.1:9203\n        wieght: 10", 1))
	_, stderr, code = runDirect("check", "-c", path)
	if want := "pools[1].backends[0].wieght: unknown key (typo.yaml:14)\n"; code != exitFail || stderr != want {
		t.Errorf("check typo.yaml: code %d, stderr %q; want 1 and %q (one error: no count line)", code, stderr, want)
	}
}

func TestCommandLineMistakes(t *testing.T) {
	good := writeFile(t, "good.yaml", goodConfig)
	broken := writeFile(t, "broken.yaml", "pools: []\n")
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	cases := []struct {
		args     []string
		code     int
		inStderr string
	}{
		{[]string{"check"}, exitUsage, "baton check: -c FILE is required"},
		{[]string{"serve"}, exitUsage, "baton serve: -c FILE is required"},
		{[]string{"check", "-c", good, "extra"}, exitUsage, `baton check: unexpected argument "extra"`},
		{[]string{"check", "-x"}, exitUsage, "flag provided but not defined: -x"},
		{[]string{"check", "-c", missing}, exitFail, "reading config: open " + missing},
		{[]string{"check", "-c", broken}, exitFail, "pools: at least one pool is required (broken.yaml:1)"},
		{[]string{"serve", "-c", broken}, exitFail, "pools: at least one pool is required (broken.yaml:1)"},
		{[]string{"demo", "-c", broken}, exitFail, "pools: at least one pool is required (broken.yaml:1)"},
		{[]string{"check", "-h"}, exitOK, "config file (YAML)"},
	}
	for _, c := range cases {
		stdout, stderr, code := runDirect(c.args...)
		if code != c.code || !strings.Contains(stderr, c.inStderr) || stdout != "" {
			t.Errorf("baton %s: code %d, stdout %q, stderr %q; want code %d and stderr containing %q",
				strings.Join(c.args, " "), code, stdout, stderr, c.code, c.inStderr)
		}
	}
}

// A demo config whose backends are all remote has nothing to run.
func TestDemoNeedsALoopbackBackend(t *testing.T) {
	path := writeFile(t, "remote.yaml", "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\npools:\n  - name: web\n    backends: [{name: a, address: \"10.1.2.3:80\"}]\n")
	_, stderr, code := runDirect("demo", "-c", path)
	if code != exitFail || !strings.Contains(stderr, "no backend on a loopback address") {
		t.Errorf("demo with remote backends: code %d, stderr %q; want 1 and an explanation", code, stderr)
	}
}

// TestServeGracefulShutdown runs the built binary, puts a slow request in
// flight, sends SIGTERM and checks that baton stops accepting at once, lets
// the request finish, and exits 0.
func TestServeGracefulShutdown(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseBackend := func() { releaseOnce.Do(func() { close(release) }) }
	slowStarted := make(chan struct{}, 1)
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/slow" {
			_, _ = io.WriteString(w, "fast\n")
			return
		}
		select {
		case slowStarted <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, "slow done\n")
	}))
	t.Cleanup(backend.Close)
	t.Cleanup(releaseBackend) // runs before backend.Close

	addr, adminAddr := freeAddr(t), freeAddr(t)
	cfgPath := writeFile(t, "serve.yaml", fmt.Sprintf(`listen: %s
admin:
  listen: %s
log:
  format: json
server:
  shutdown_timeout: 30s
pools:
  - name: web
    health_check: {path: /healthz, interval: 100ms, timeout: 50ms, rise: 1}
    backends:
      - name: b1
        address: %s
`, addr, adminAddr, backend.Listener.Addr()))

	p := startBinary(t, "serve", "-c", cfgPath)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	var lastStatus int
	var lastBody string
	var lastErr error
	ready := poll(15*time.Second, func() bool {
		if !p.running() {
			return true
		}
		lastStatus, lastBody, lastErr = get(client, "http://"+addr+"/")
		return lastErr == nil && lastStatus == 200
	})
	if !p.running() {
		t.Fatalf("baton exited before serving")
	}
	if !ready || lastBody != "fast\n" {
		t.Fatalf("baton did not answer 200 through the backend within 15s: last status %d body %q err %v", lastStatus, lastBody, lastErr)
	}
	if status, body, err := get(client, "http://"+adminAddr+"/healthz"); err != nil || status != 200 || body != "ok\n" {
		t.Errorf("admin /healthz: %d %q %v", status, body, err)
	}
	client.CloseIdleConnections()

	type result struct {
		status int
		body   string
		err    error
	}
	slow := make(chan result, 1)
	go func() {
		c := &http.Client{Timeout: 30 * time.Second}
		status, body, err := get(c, "http://"+addr+"/slow")
		slow <- result{status, body, err}
	}()
	select {
	case <-slowStarted:
	case r := <-slow:
		t.Fatalf("slow request finished before the backend saw it: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not reach the backend within 10s")
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sigAt := time.Now()

	// New connections are refused soon after.
	var dialErr error
	refused := poll(3*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			dialErr = err
			return true
		}
		c.Close()
		return false
	})
	if !refused {
		t.Errorf("baton still accepts connections 3s after SIGTERM")
	} else if !errors.Is(dialErr, syscall.ECONNREFUSED) && !errors.Is(dialErr, syscall.ECONNRESET) {
		// Refused once the listener is closed; reset for a connection the
		// kernel had queued in the backlog just as it closed.
		t.Errorf("dial after SIGTERM: %v; want connection refused", dialErr)
	}

	// The request in flight keeps baton running.
	if !p.running() {
		t.Fatalf("baton exited %s after SIGTERM with a request in flight", time.Since(sigAt))
	}
	select {
	case r := <-slow:
		t.Fatalf("the slow request ended before the backend answered: %+v", r)
	default:
	}

	releaseBackend()
	select {
	case r := <-slow:
		if r.err != nil || r.status != 200 || r.body != "slow done\n" {
			t.Errorf("slow request during shutdown: status %d body %q err %v; want 200 \"slow done\\n\"", r.status, r.body, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow request did not complete within 10s of the backend answering")
	}

	if code := p.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("baton exited with code %d after SIGTERM, want 0", code)
	}
	logs := p.stderr.String()
	for _, want := range []string{`"message":"baton is serving"`, `"message":"shutting down`, `"message":"baton stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log lacks %s", want)
		}
	}
}

// demoPortsFree skips the test unless the built-in demo's fixed ports are
// free.
func demoPortsFree(t *testing.T) {
	t.Helper()
	for _, a := range []string{"127.0.0.1:8080", "127.0.0.1:9090", "127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103", "127.0.0.1:9104"} {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			t.Skipf("baton demo needs %s, which is busy: %v", a, err)
		}
		ln.Close()
	}
}

// TestDemoStory runs the whole demo, shortened: customers shop while v42
// (which loses carts) is rolled back by the judge and v43 is released to
// every server; the summary says so, with the figures.
func TestDemoStory(t *testing.T) {
	demoPortsFree(t)
	p := startBinary(t, "demo", "--fast", "--exit")
	code := p.waitExit(t, 90*time.Second)
	out := p.stdout.String()
	t.Logf("baton demo --fast --exit:\n%s", out)
	if code != 0 {
		t.Fatalf("baton demo --fast --exit exited %d; stderr:\n%s", code, p.stderr)
	}
	for _, want := range []string{
		"== Release 1: v42. It has a bug",
		"web-1 becomes the canary",
		`v42 was rolled back by baton's judge: new error "POST /checkout 500 server_error code=CART_LOST"`,
		"web-1 runs v41 again",
		"== Release 2: v43, a good version.",
		"v43 is promoted",
		"released: all 4 servers of shop run v43",
		"== Summary",
		`   v42  rolled back by baton's judge: new error "POST /checkout 500 server_error code=CART_LOST"`,
		"   v43  released: 4 of 4 servers run it, stable version v43",
		"before the judge rolled it back, 0 anything else",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	for _, wrong := range []string{"upgrading web-2 to v42", "upgrading web-3 to v42"} {
		if strings.Contains(out, wrong) {
			t.Errorf("the bad version went further than its canary: %q", wrong)
		}
	}
}

// TestDemo runs `baton demo` (built-in example config, fixed ports) if its
// ports are free.
func TestDemo(t *testing.T) {
	demoPortsFree(t)
	p := startBinary(t, "demo")
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	// The banner says baton is ready: the very first request must succeed.
	ok := poll(20*time.Second, func() bool {
		return !p.running() || strings.Contains(p.stdout.String(), "try:")
	})
	if !p.running() {
		if strings.Contains(p.stderr.String(), "address already in use") {
			t.Skipf("baton demo could not bind its ports: %s", p.stderr)
		}
		t.Fatalf("baton demo exited early")
	}
	if !ok {
		t.Fatalf("baton demo printed no banner within 20s")
	}
	status, body, err := get(client, "http://127.0.0.1:8080/")
	if err != nil || status != 200 {
		t.Fatalf("baton demo's first request after the banner: status %d body %q err %v", status, body, err)
	}
	if !strings.HasPrefix(body, "Hello from web-") || !strings.Contains(body, "running v41") {
		t.Errorf("demo body %q; want \"Hello from web-N, running v41...\"", body)
	}
	if s, b, err := get(client, "http://127.0.0.1:9090/healthz"); err != nil || s != 200 || b != "ok\n" {
		t.Errorf("demo admin /healthz: %d %q %v", s, b, err)
	}
	if s, b, err := get(client, "http://127.0.0.1:9090/ui/"); err != nil || s != 200 || !strings.Contains(b, "<title>baton</title>") {
		t.Errorf("demo dashboard /ui/: %d %.80q %v", s, b, err)
	}
	if out := p.stdout.String(); !strings.Contains(out, "baton demo: 4 demo backend(s) running") || !strings.Contains(out, "curl http://localhost:8080/") ||
		!strings.Contains(out, "dashboard: http://127.0.0.1:9090/ui/") {
		t.Errorf("demo stdout %q lacks the banner", out)
	}
	client.CloseIdleConnections()

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("baton demo exited with code %d after SIGTERM, want 0", code)
	}
}
