package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// readPID reads a PID file; 0 while it is missing or partial.
func readPID(path string) int {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid
}

// TestUpgradeBatonUnderLoad: the baton binary hands its sockets to a new
// process while clients send GETs and POSTs on keep-alive and fresh
// connections. A new process that cannot start leaves the old one
// serving; one that starts takes over, the old one finishes and exits 0,
// no request fails, every POST arrives once, and the drain and canary
// decided before are in force in the new process.
func TestUpgradeBatonUnderLoad(t *testing.T) {
	var ledgerMu sync.Mutex
	ledger := map[string]int{}
	backend := func(name string) string {
		return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPost {
				_, _ = io.Copy(io.Discard, r.Body)
				ledgerMu.Lock()
				ledger[r.Header.Get("X-Order")]++
				ledgerMu.Unlock()
			}
			fmt.Fprintf(w, "%s\n", name)
		}))
	}
	s1, s2, s3 := backend("s1"), backend("s2"), backend("s3")
	dir := t.TempDir()
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "baton.yaml")
	cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s}
state_file: baton.state.json
log: {format: json, access: false}
server: {shutdown_timeout: 10s}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    canary: {initial_weight: 20}
    judge: {interval: 1h}
    backends:
      - {name: s1, address: %q, version: v1}
      - {name: s2, address: %q, version: v1}
      - {name: s3, address: %q, version: v1}
`, traffic, adminAddr, s1, s2, s3)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(dir, "baton.pid")
	logPath := filepath.Join(dir, "baton.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// Files, not pipes: the new process inherits them and outlives the
	// first, whose Wait must not wait for it.
	first := exec.Command(batonBin, "serve", "-c", cfgPath, "--pid-file", pidFile)
	first.Stdout, first.Stderr = logFile, logFile
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- first.Wait() }()
	t.Cleanup(func() {
		_ = first.Process.Kill()
		if pid := readPID(pidFile); pid > 0 && pid != first.Process.Pid {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("baton log:\n%s", data)
		}
	})
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 60 * time.Second}}
	if !poll(20*time.Second, func() bool { return readPID(pidFile) == first.Process.Pid }) {
		t.Fatalf("baton wrote no PID file")
	}
	if !poll(15*time.Second, func() bool {
		p, err := a.pool("shop")
		if err != nil {
			return false
		}
		up := 0
		for _, b := range p.Backends {
			if b.Healthy && b.EffectiveWeight > 0 {
				up++
			}
		}
		return up == 3
	}) {
		t.Fatal("baton did not have s1, s2 and s3 taking traffic within 15s")
	}

	// Decisions the new process must keep.
	var be v1.Backend
	a.must("POST", "/v1/pools/shop/backends/s3/drain?wait=5s", "", 200, &be)
	a.must("POST", "/v1/pools/shop/backends/s2/enable", `{"version":"v2"}`, 200, &be)

	// Steady load: keep-alive and fresh connections, GETs and POSTs.
	ctx, stopLoad := context.WithTimeout(context.Background(), 90*time.Second)
	defer stopLoad()
	var sent, failed atomic.Int64
	var failMu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: w == 3}}
			defer c.CloseIdleConnections()
			for i := 0; i < 50000 && ctx.Err() == nil; i++ {
				var req *http.Request
				if i%2 == 0 {
					req, _ = http.NewRequest("GET", "http://"+traffic+"/products", nil)
				} else {
					id := fmt.Sprintf("o%d-%d", w, i)
					req, _ = http.NewRequest("POST", "http://"+traffic+"/orders", strings.NewReader("order "+id))
					req.Header.Set("X-Order", id)
				}
				sent.Add(1)
				res, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != 200 {
						err = errors.New(res.Status)
					}
				}
				if err != nil {
					failed.Add(1)
					failMu.Lock()
					failures = append(failures, fmt.Sprintf("%s %s: %v", req.Method, req.Header.Get("X-Order"), err))
					failMu.Unlock()
				}
			}
		}()
	}
	underLoad := func(n int64) {
		t.Helper()
		target := sent.Load() + n
		if !poll(30*time.Second, func() bool { return sent.Load() >= target }) {
			t.Fatalf("the load stalled at %d requests", sent.Load())
		}
	}
	ctl := func(args ...string) (int, string) {
		cmd := exec.Command(batonBin, append([]string{"ctl", "--admin", "http://" + adminAddr}, args...)...)
		out, err := cmd.CombinedOutput()
		return exitCode(err), string(out)
	}
	underLoad(300)

	// A new process that cannot start (its config is broken now): the old
	// one keeps serving.
	if err := os.WriteFile(cfgPath, []byte(cfg+"  nonsense: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out := ctl("upgrade")
	if code != 1 || !strings.Contains(out, "the new baton did not start") || !strings.Contains(out, "this one keeps serving") {
		t.Errorf("an upgrade whose new process fails: exit %d, %q", code, out)
	}
	if readPID(pidFile) != first.Process.Pid {
		t.Errorf("after a failed upgrade the PID file names %d, want the old %d", readPID(pidFile), first.Process.Pid)
	}
	underLoad(300)
	// Decisions work again after the failed attempt.
	a.must("PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":25}`, 200, nil)

	// The real upgrade.
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out = ctl("upgrade")
	if code != 0 || !strings.Contains(out, "a new baton process serves the listeners") {
		t.Fatalf("baton ctl upgrade: exit %d, %q", code, out)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the old process exited with %v after handing over, want 0", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the old process did not exit after handing over")
	}
	newPID := readPID(pidFile)
	if newPID == 0 || newPID == first.Process.Pid {
		t.Fatalf("PID file names %d after the upgrade; want a new process", newPID)
	}
	underLoad(300)
	stopLoad()
	wg.Wait()

	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed across the upgrade: %v", failed.Load(), sent.Load(), failures[:min(5, len(failures))])
	}
	ledgerMu.Lock()
	posts := len(ledger)
	for id, n := range ledger {
		if n != 1 {
			t.Errorf("POST %s reached the backends %d times", id, n)
		}
	}
	ledgerMu.Unlock()

	// The new process has the decisions.
	var p v1.Pool
	a.must("GET", "/v1/pools/shop", "", 200, &p)
	if p.Canary == nil || p.Canary.Version != "v2" || p.Canary.Weight != 25 {
		t.Errorf("after the upgrade the canary is %+v, want v2 at 25", p.Canary)
	}
	for _, b := range p.Backends {
		if b.Name == "s3" && b.State != "drained" && b.State != "draining" {
			t.Errorf("after the upgrade s3 is %s, want out of rotation", b.State)
		}
	}
	data, _ := json.Marshal(p)
	t.Logf("%d requests (%d POSTs) across the upgrade from pid %d to %d, none failed; pool after: %s",
		sent.Load(), posts, first.Process.Pid, newPID, data)
}
