package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/control"
)

// namedBackend starts an HTTP backend on 127.0.0.1 that answers with its
// name in X-Backend.
func namedBackend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		_, _ = io.WriteString(w, name+"\n")
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// adminClient talks to a baton's admin API.
type adminClient struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (a *adminClient) do(method, path, body string) (int, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// must sends a request that must answer want, and decodes the answer into
// out (when not nil).
func (a *adminClient) must(method, path, body string, want int, out any) {
	a.t.Helper()
	status, data, err := a.do(method, path, body)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	if status != want {
		a.t.Fatalf("%s %s: status %d, want %d: %s", method, path, status, want, data)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			a.t.Fatalf("%s %s: %v\n%s", method, path, err, data)
		}
	}
}

func (a *adminClient) pool(name string) (v1.Pool, error) {
	var p v1.Pool
	status, data, err := a.do("GET", "/v1/pools/"+name, "")
	if err != nil {
		return p, err
	}
	if status != 200 {
		return p, fmt.Errorf("GET pool %s: %d %s", name, status, data)
	}
	err = json.Unmarshal(data, &p)
	return p, err
}

func findBackend(p v1.Pool, name string) *v1.Backend {
	for i := range p.Backends {
		if p.Backends[i].Name == name {
			return &p.Backends[i]
		}
	}
	return nil
}

// waitServing waits until the baton process answers on its admin API and
// the named backends of pool take traffic; it fails the test with the
// process's logs otherwise.
func waitServing(t *testing.T, p *proc, a *adminClient, poolName string, names ...string) v1.Pool {
	t.Helper()
	var last v1.Pool
	var lastErr error
	ok := poll(15*time.Second, func() bool {
		if !p.running() {
			return true
		}
		last, lastErr = a.pool(poolName)
		if lastErr != nil {
			return false
		}
		for _, n := range names {
			b := findBackend(last, n)
			if b == nil || !b.Healthy || b.EffectiveWeight == 0 {
				return false
			}
		}
		return true
	})
	if !p.running() {
		t.Fatalf("baton exited: %s", p.stderr)
	}
	if !ok {
		t.Fatalf("baton did not have %v of pool %s taking traffic within 15s: last %+v, %v", names, poolName, last, lastErr)
	}
	return last
}

// split sends n GETs through baton and counts answers by backend; every
// answer must be 200.
func split(t *testing.T, c *http.Client, traffic string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := range n {
		resp, err := c.Get("http://" + traffic + "/")
		if err != nil {
			t.Fatalf("request %d of %d through baton: %v", i+1, n, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d of %d through baton: status %d", i+1, n, resp.StatusCode)
		}
		out[resp.Header.Get("X-Backend")]++
	}
	return out
}

func sameSplit(got, want map[string]int) bool {
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	for k, v := range got {
		if v != 0 && want[k] == 0 {
			return false
		}
	}
	return true
}

// TestRestartKeepsDecisions is the durability test: decisions made through
// the admin API — a drain, a weight override, a canary started by enabling
// a backend with a new version, a backend added at runtime — survive
// SIGKILL (no graceful shutdown) and are in force, in the API and in the
// traffic, when the same binary starts again with the same config.
func TestRestartKeepsDecisions(t *testing.T) {
	b1, b2, b3 := namedBackend(t, "b1"), namedBackend(t, "b2"), namedBackend(t, "b3")
	b4 := namedBackend(t, "b4") // in no pool until added at runtime
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o755); err != nil {
		t.Fatal(err)
	}
	stateFile := filepath.Join(dir, "state", "baton.state.json")
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfgPath := filepath.Join(dir, "baton.yaml")
	cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s}
state_file: state/baton.state.json
log: {format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    stable_version: v1
    canary: {initial_weight: 20}
    backends:
      - {name: b1, address: "%s", version: v1}
      - {name: b2, address: "%s", version: v1}
      - {name: b3, address: "%s", version: v1}
`, traffic, adminAddr, b1, b2, b3)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 20 * time.Second}}
	client := &http.Client{Timeout: 5 * time.Second}
	defer client.CloseIdleConnections()
	defer a.c.CloseIdleConnections()

	first := startBinary(t, "serve", "-c", cfgPath)
	waitServing(t, first, a, "shop", "b1", "b2", "b3")
	if got := split(t, client, traffic, 30); !sameSplit(got, map[string]int{"b1": 10, "b2": 10, "b3": 10}) {
		t.Fatalf("before any decision: split %v, want 10 each", got)
	}

	// The decisions.
	var be v1.Backend
	a.must("POST", "/v1/pools/shop/backends/b1/drain?wait=5s", "", 200, &be)
	if be.State != "drained" {
		t.Fatalf("drain?wait=5s answered 200 with state %q", be.State)
	}
	a.must("PATCH", "/v1/pools/shop/backends/b2", `{"weight":300}`, 200, &be)
	a.must("POST", "/v1/pools/shop/backends/b3/enable", `{"version":"v2"}`, 200, &be)
	a.must("POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"b4","address":%q,"version":"v1","weight":100}`, b4), 201, &be)
	waitServing(t, first, a, "shop", "b2", "b3", "b4")
	// In force before the crash: canary 20 %, the rest 300:100.
	want := map[string]int{"b2": 60, "b3": 20, "b4": 20}
	if got := split(t, client, traffic, 100); !sameSplit(got, want) {
		t.Fatalf("before the crash: split %v, want %v", got, want)
	}
	saved, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatalf("the state file after four decisions: %v", err)
	}

	// Crash: SIGKILL, no graceful shutdown.
	client.CloseIdleConnections()
	a.c.CloseIdleConnections()
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.waitExit(t, 10*time.Second)
	if ws, ok := first.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("baton did not die of SIGKILL: %v", first.cmd.ProcessState)
	}

	// The same binary, the same config.
	second := startBinary(t, "serve", "-c", cfgPath)
	p := waitServing(t, second, a, "shop", "b2", "b3", "b4")
	if !strings.Contains(second.stderr.String(), "runtime decisions restored from the state file") {
		t.Errorf("the restarted baton did not log that it restored decisions")
	}

	// The API shows every decision.
	if p.StableVersion != "v1" || p.Canary == nil || p.Canary.Version != "v2" || p.Canary.Weight != 20 {
		t.Errorf("after the restart pool shop has stable %q, canary %+v; want stable v1, canary v2 at 20", p.StableVersion, p.Canary)
	}
	var rep v1.CanaryReport
	a.must("GET", "/v1/pools/shop/canary", "", 200, &rep)
	if rep.StableVersion != "v1" || rep.CanaryVersion != "v2" || rep.Weight != 20 {
		t.Errorf("after the restart GET canary: stable %q canary %q weight %g; want v1, v2, 20", rep.StableVersion, rep.CanaryVersion, rep.Weight)
	}
	var b1State string
	if !poll(5*time.Second, func() bool {
		q, err := a.pool("shop")
		if err != nil {
			return false
		}
		if b := findBackend(q, "b1"); b != nil {
			b1State = b.State
		}
		return b1State == "drained"
	}) {
		t.Errorf("after the restart b1 is %q, want drained (it was drained before the crash)", b1State)
	}
	p, err = a.pool("shop")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name                    string
		address, version, state string
		weight, effective       int
	}{
		{"b1", b1, "v1", "drained", 100, 0},
		{"b2", b2, "v1", "active", 300, 300},
		{"b3", b3, "v2", "active", 100, 100},
		{"b4", b4, "v1", "active", 100, 100},
	}
	for _, c := range checks {
		b := findBackend(p, c.name)
		if b == nil {
			t.Errorf("after the restart pool shop has no backend %s", c.name)
			continue
		}
		if b.Address != c.address || b.Version != c.version || b.State != c.state || b.Weight != c.weight || b.EffectiveWeight != c.effective {
			t.Errorf("after the restart %s = %s %s %s weight %d (effective %d); want %s %s %s weight %d (effective %d)",
				c.name, b.Address, b.Version, b.State, b.Weight, b.EffectiveWeight, c.address, c.version, c.state, c.weight, c.effective)
		}
	}
	if len(p.Backends) != 4 {
		t.Errorf("after the restart pool shop has %d backends, want 4", len(p.Backends))
	}

	// And the traffic: nothing to the drained b1, the canary's 20 %, the
	// rest 300:100.
	if got := split(t, client, traffic, 100); !sameSplit(got, want) {
		t.Errorf("after the restart: split %v, want %v", got, want)
	}
	if got, err := os.ReadFile(stateFile); err != nil || !bytes.Equal(got, saved) {
		t.Errorf("the restart changed the state file (%v):\nbefore: %s\nafter:  %s", err, saved, got)
	}
}

// TestServeRefusesCorruptStateFile: baton does not start by forgetting
// decisions. A state file it cannot read makes `baton serve` exit non-zero
// with a message naming the file and saying it is corrupt, and the file is
// left as it was.
func TestServeRefusesCorruptStateFile(t *testing.T) {
	cases := []struct{ name, content, where string }{
		{"truncated", `{"format": 1, "pools": {"shop": {"backends": {"b1": {"state": "drain`, "(line 1, column 69)"},
		{"not JSON", "this is not a state file\n", "(line 1, column 2)"},
		{"bad value on line 3", "{\n  \"format\": 1,\n  \"pools\": {\"shop\": {\"held\": \"yes\"}}\n}\n", "(line 3,"},
		{"empty", "", ""},
		{"unknown state", `{"format":1,"pools":{"shop":{"backends":{"b1":{"state":"sleeping"}}}}}`, ""},
		{"newer format", `{"format": 3}`, "written by a newer baton"},
		{"other format", `{"format": 2}`, ""},
		{"null pool", `{"format":1,"pools":{"shop":null}}`, ""},
		{"trailing data", `{"format":1}` + "\n" + `{"format":1,"pools":{"shop":{"backends":{"b1":{"state":"ejected"}}}}}` + "\n", "(line 2, column 1)"},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			dir := t.TempDir()
			stateFile := filepath.Join(dir, "baton.state.json")
			if err := os.WriteFile(stateFile, []byte(c.content), 0o644); err != nil {
				t.Fatal(err)
			}
			cfgPath := filepath.Join(dir, "baton.yaml")
			cfg := fmt.Sprintf("listen: %s\nadmin: {listen: \"off\"}\nlog: {format: json}\npools:\n  - name: shop\n    backends: [{name: b1, address: \"%s\"}]\n",
				freeAddr(t), freeAddr(t))
			if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			p := startBinary(t, "serve", "-c", cfgPath)
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
				t.Fatalf("baton serve started with a %s state file (%q) and ran for 5s; want it to refuse", c.name, c.content)
			}
			if code := p.waitExit(t, time.Second); code == 0 {
				t.Errorf("baton serve with a %s state file exited 0, want non-zero", c.name)
			}
			msg := p.stderr.String()
			if !strings.Contains(msg, stateFile) || !strings.Contains(msg, "corrupt") || !strings.Contains(msg, "--state-recover") {
				t.Errorf("baton serve with a %s state file said %q; want the file (%s) named, called corrupt, and --state-recover suggested", c.name, msg, stateFile)
			}
			if c.where != "" && !strings.Contains(msg, c.where) {
				t.Errorf("baton serve with a %s state file said %q; want the place, %q", c.name, msg, c.where)
			}
			if got, err := os.ReadFile(stateFile); err != nil || string(got) != c.content {
				t.Errorf("the %s state file was changed: %q (%v), want it left as it was", c.name, got, err)
			}
		})
	}
}

// TestServeStateRecover: with --state-recover, a corrupt state file is
// moved aside (kept, unchanged, as NAME.corrupt-TIME) and baton starts from
// the config alone, saying so in its log, its audit log and /metrics.
func TestServeStateRecover(t *testing.T) {
	dir := t.TempDir()
	stateFile := filepath.Join(dir, "baton.state.json")
	bad := `{"format": 1, "pools": {"shop": {"backends": {"b1": {"state": "drai`
	if err := os.WriteFile(stateFile, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	adminAddr := freeAddr(t)
	cfgPath := filepath.Join(dir, "baton.yaml")
	cfg := fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nlog: {format: json}\npools:\n  - name: shop\n    health_check: {interval: 100ms, timeout: 80ms, rise: 1}\n    backends: [{name: b1, address: \"%s\"}]\n",
		freeAddr(t), adminAddr, namedBackend(t, "b1"))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	p := startBinary(t, "serve", "-c", cfgPath, "--state-recover")
	a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 5 * time.Second}}
	waitServing(t, p, a, "shop", "b1")
	moved, _ := filepath.Glob(stateFile + ".corrupt-*")
	if len(moved) != 1 {
		t.Fatalf("corrupt files kept: %v, want one", moved)
	}
	if got, _ := os.ReadFile(moved[0]); string(got) != bad {
		t.Errorf("the moved file holds %q, want the corrupt content unchanged", got)
	}
	if !strings.Contains(p.stderr.String(), "the state file is corrupt; moved aside") {
		t.Errorf("no log line says the state file was moved aside:\n%s", p.stderr)
	}
	_, metrics, err := get(a.c, "http://"+adminAddr+"/metrics")
	if err != nil || !strings.Contains(metrics, "baton_state_file_recovered 1") {
		t.Errorf("/metrics does not show the recovery (%v)", err)
	}
	var evs []control.Event
	a.must("GET", "/v1/events", "", 200, &evs)
	if len(evs) == 0 || evs[len(evs)-1].Action != "state_recover" || !strings.Contains(evs[len(evs)-1].Detail, moved[0]) {
		t.Errorf("audit log %+v; want the recovery, naming %s", evs, moved[0])
	}
	// Decisions work again, in a new state file.
	a.must("POST", "/v1/pools/shop/backends/b1/drain", "", 202, nil)
	if _, err := os.Stat(stateFile); err != nil {
		t.Errorf("no new state file after a decision: %v", err)
	}
}
