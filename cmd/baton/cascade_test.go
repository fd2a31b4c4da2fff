package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// cascadeMaxAge is the affinity cookies' lifetime in the cascade test:
// short, so the contract step's wait for the last v1 cookie is seconds.
const cascadeMaxAge = 3 * time.Second

// cascadeShop is the cascade test's world: two servers whose version is
// what their file in dir says (the upgrade command writes it), a baton
// process, and customers.
type cascadeShop struct {
	dir     string
	cfg     string
	traffic string
	admin   string
	baton   *proc

	pause sync.RWMutex // held by the test while baton restarts; each request holds it for reading

	mu            sync.Mutex // protects the fields below
	lastV1Cookie  time.Time  // when a response last gave a v1 cookie
	lastV1Answer  time.Time  // when a v1 answer last ended
	failures      []string
	sent, cookies int
}

// server answers "NAME VERSION", the version read from its file.
func (s *cascadeShop) server(t *testing.T, name string) string {
	vf := filepath.Join(s.dir, name+".version")
	if err := os.WriteFile(vf, []byte("v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := os.ReadFile(vf)
		if err != nil || len(strings.TrimSpace(string(v))) == 0 {
			http.Error(w, "no version installed", http.StatusServiceUnavailable)
			return
		}
		if r.URL.Path == "/healthz" {
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s %s", name, strings.TrimSpace(string(v)))
	}))
}

func (s *cascadeShop) start(t *testing.T) {
	t.Helper()
	s.baton = startBinary(t, "serve", "-c", s.cfg)
	client := &http.Client{Timeout: 2 * time.Second}
	defer client.CloseIdleConnections()
	if !poll(20*time.Second, func() bool {
		st, _, err := get(client, "http://"+s.traffic+"/")
		return err == nil && st == 200
	}) {
		t.Fatalf("baton did not serve within 20s")
	}
}

// restart stops baton (SIGTERM: a clean stop) while no customer request
// is on its way, and starts it again on the same state file.
func (s *cascadeShop) restart(t *testing.T) {
	t.Helper()
	s.pause.Lock()
	defer s.pause.Unlock()
	if err := s.baton.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := s.baton.waitExit(t, 30*time.Second); code != 0 {
		t.Fatalf("baton exited %d on SIGTERM", code)
	}
	s.start(t)
}

// customer sends requests until ctx ends (at most 20000). A browser keeps
// the affinity cookie it is given, for its max age; others never send one,
// so every answer they get during a canary gives a cookie.
func (s *cascadeShop) customer(ctx context.Context, browser bool) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
	defer client.CloseIdleConnections()
	cookie, expires := "", time.Time{}
	pace := time.NewTicker(4 * time.Millisecond) // a steady load, not a flood: it lasts the whole release
	defer pace.Stop()
	for i := 0; i < 20000 && ctx.Err() == nil; i++ {
		select {
		case <-ctx.Done():
			return
		case <-pace.C:
		}
		req, _ := http.NewRequest("GET", "http://"+s.traffic+"/cart", nil)
		if i%3 == 2 {
			req, _ = http.NewRequest("POST", "http://"+s.traffic+"/cart", strings.NewReader("item"))
		}
		if browser && cookie != "" && time.Now().Before(expires) {
			req.Header.Set("Cookie", cookie)
		}
		s.pause.RLock()
		resp, err := client.Do(req)
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		s.pause.RUnlock()
		now := time.Now()
		s.mu.Lock()
		s.sent++
		switch {
		case err != nil:
			s.failures = append(s.failures, req.Method+": "+err.Error())
		case resp.StatusCode != 200:
			s.failures = append(s.failures, fmt.Sprintf("%s: %s %s", req.Method, resp.Status, body))
		default:
			if strings.HasSuffix(string(body), " v1") {
				s.lastV1Answer = now
			}
			for _, sc := range resp.Header.Values("Set-Cookie") {
				name, rest, _ := strings.Cut(sc, "=")
				if name != "baton_shop" {
					continue
				}
				s.cookies++
				value, _, _ := strings.Cut(rest, ";")
				if strings.HasPrefix(value, "v1.") { // affinity.expose_version
					s.lastV1Cookie = now
				}
				cookie, expires = "baton_shop="+value, now.Add(cascadeMaxAge)
			}
		}
		s.mu.Unlock()
	}
}

// rollout runs baton rollout against the shop and returns its output and
// exit code.
func (s *cascadeShop) rollout(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := batonRollout(t, releaseEnv{admin: s.admin}, args...)
	return out, exitCode(err)
}

// gatesLog is what the gates wrote, one line a run.
func (s *cascadeShop) gatesLog() string {
	data, _ := os.ReadFile(filepath.Join(s.dir, "gates.log"))
	return string(data)
}

// TestCascadeRelease is the first half of a column drop, v1 → v2, under
// load, with the migration gates of baton rollout: a failing --before gate
// stops the rollout with nothing drained; the rollout is interrupted once
// the canary serves, and while a v1 server is still in rotation a rollout
// of v3 that requires v1 gone is refused (exit 2); baton restarts; the
// rollout run again does not run --before again, finishes, and runs
// --after-gone only after the last v1 answer ended and the last v1
// affinity cookie expired. No customer request fails.
func TestCascadeRelease(t *testing.T) {
	s := &cascadeShop{dir: t.TempDir(), traffic: freeAddr(t), admin: freeAddr(t)}
	web1, web2 := s.server(t, "web-1"), s.server(t, "web-2")
	s.cfg = filepath.Join(s.dir, "baton.yaml")
	if err := os.WriteFile(s.cfg, []byte(fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
pools:
  - name: shop
    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1, fall: 2}
    drain_timeout: 20s
    canary: {initial_weight: 25, steps: [25, 50], step_min_time: 1s, step_min_requests: 20}
    judge: {interval: 200ms, warmup: 1ms}
    affinity: {max_age: %s, expose_version: true}
    backends:
      - {name: web-1, address: "%s", version: v1}
      - {name: web-2, address: "%s", version: v1}
`, s.traffic, s.admin, cascadeMaxAge, web1, web2)), 0o644); err != nil {
		t.Fatal(err)
	}
	s.admin = "http://" + s.admin
	s.start(t)

	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() { s.customer(ctx, i%2 == 0) })
	}

	upgrade := "echo {version} > " + s.dir + "/{name}.version"
	before := "echo expand {pool} {from} {to} >> " + s.dir + "/gates.log"
	after := "date +%s%N > " + s.dir + "/contract-at; echo contract {pool} {from} {to} >> " + s.dir + "/gates.log"
	common := []string{"--to", "v2", "--upgrade", upgrade, "--poll", "200ms", "--drain-wait", "30s", "--health-wait", "20s", "--gone-wait", "2m"}

	// A failing --before gate: exit 1, nothing drained, its output shown.
	out, code := s.rollout(t, append(common, "--before", "echo expanding {pool} {from} {to}; exit 4", "--after-gone", after)...)
	if code != 1 || !strings.Contains(out, "expanding shop v1 v2") || !strings.Contains(out, "the --before gate failed (exit status 4)") ||
		!strings.Contains(out, "nothing was drained: every server still runs v1") {
		t.Fatalf("a failing --before gate: exit %d, want 1 naming the gate and that nothing was drained", code)
	}
	pool := s.pool(t)
	for _, b := range pool.Backends {
		if b.State != "active" || b.Version != "v1" {
			t.Errorf("after the failed gate %s is %s on %s, want active on v1", b.Name, b.State, b.Version)
		}
	}
	if pool.Canary != nil || pool.Rollout == nil || pool.Rollout.Gate("before").State != "failed" {
		t.Errorf("after the failed gate: canary %+v, rollout %+v; want no canary and the gate recorded failed", pool.Canary, pool.Rollout)
	}

	// The rollout, interrupted once the canary (web-1 on v2) serves.
	cmd := rolloutCommand(releaseEnv{admin: s.admin}, append(common, "--before", before, "--after-gone", after, "-o", "json")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var first strings.Builder
	interrupted := false
	for sc.Scan() {
		first.WriteString(sc.Text() + "\n")
		var ev map[string]string
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev["event"] == "ready" && ev["backend"] == "web-1" && !interrupted {
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			interrupted = true
		}
	}
	if err := cmd.Wait(); exitCode(err) != 130 || !interrupted {
		t.Fatalf("the interrupted rollout ended with %v (interrupted: %v):\n%s", err, interrupted, first.String())
	}
	t.Logf("the first rollout:\n%s", first.String())
	if got := s.gatesLog(); got != "expand shop v1 v2\n" {
		t.Fatalf("after the first rollout the gates wrote %q; want the --before gate once", got)
	}

	// v3 cannot run beside v1: refused while web-2 serves v1.
	out, code = s.rollout(t, "--to", "v3", "--upgrade", upgrade, "--requires-gone", "v1")
	if code != 2 || !strings.Contains(out, "refusing to release v3 to shop: v1 is still present (web-2 active") ||
		!strings.Contains(out, "v3 must not run beside it") {
		t.Errorf("a v3 rollout requiring v1 gone while web-2 runs it: exit %d, want 2 naming web-2", code)
	}
	if data, _ := os.ReadFile(filepath.Join(s.dir, "web-2.version")); string(data) != "v1\n" {
		t.Errorf("the refused rollout touched web-2: %q", data)
	}

	s.restart(t)

	out, code = s.rollout(t, append(common, "--before", before, "--after-gone", after)...)
	if code != 0 {
		t.Fatalf("the resumed rollout: exit %d", code)
	}
	stopLoad()
	wg.Wait()
	for _, want := range []string{"the --before gate ran at ", "released: all 2 servers of shop run v2",
		"v1 is gone from shop", "running the --after-gone gate: date +%s%N"} {
		if !strings.Contains(out, want) {
			t.Errorf("the resumed rollout's output lacks %q", want)
		}
	}
	if got := s.gatesLog(); got != "expand shop v1 v2\ncontract shop v1 v2\n" {
		t.Errorf("the gates wrote %q; want expand once, then contract once", got)
	}
	data, err := os.ReadFile(filepath.Join(s.dir, "contract-at"))
	if err != nil {
		t.Fatal(err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		t.Fatalf("contract-at: %q", data)
	}
	contract := time.Unix(0, ns)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastV1Cookie.IsZero() || s.cookies < 20 {
		t.Fatalf("the customers got %d cookies, none for v1: the canary gave none to wait for", s.cookies)
	}
	if expiry := s.lastV1Cookie.Add(cascadeMaxAge); contract.Before(expiry) {
		t.Errorf("the --after-gone gate ran at %s, before the last v1 cookie (given at %s) expired at %s",
			contract.Format(time.StampMilli), s.lastV1Cookie.Format(time.StampMilli), expiry.Format(time.StampMilli))
	}
	if contract.Before(s.lastV1Answer) {
		t.Errorf("the --after-gone gate ran at %s, before the last v1 answer ended at %s", contract.Format(time.StampMilli), s.lastV1Answer.Format(time.StampMilli))
	}
	if !strings.Contains(out, "waiting for v1 to be gone before the --after-gone gate: ") {
		t.Logf("the last v1 cookie had expired by the time the last server was upgraded; the gate had nothing to wait for")
	}
	if len(s.failures) > 0 || s.sent < 100 {
		t.Errorf("%d of %d requests failed: %v", len(s.failures), s.sent, s.failures[:min(10, len(s.failures))])
	}
	t.Logf("%d requests, %d affinity cookies; last v1 cookie %s, last v1 answer %s, contract %s",
		s.sent, s.cookies, s.lastV1Cookie.Format(time.StampMilli), s.lastV1Answer.Format(time.StampMilli), contract.Format(time.StampMilli))

	// v1 is gone: v3 may now be planned.
	if out, code := s.rollout(t, "--to", "v3", "--upgrade", upgrade, "--requires-gone", "v1", "--dry-run"); code != 0 {
		t.Errorf("a v3 plan once v1 is gone: exit %d\n%s", code, out)
	}
}

// pool reads the shop pool through the admin API.
func (s *cascadeShop) pool(t *testing.T) v1.Pool {
	t.Helper()
	var p v1.Pool
	resp, err := http.Get(s.admin + "/v1/pools/shop")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
		t.Fatal(err)
	}
	return p
}
