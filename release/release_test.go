package release_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/release"
)

// The pool settings of these tests: a judge that decides in seconds, with
// two steps.
const poolYAML = "    health_check: {path: /healthz, interval: 100ms, timeout: 80ms, rise: 1, fall: 2}\n" +
	"    affinity: {max_age: 2s}\n" +
	"    canary: {initial_weight: 25, steps: [25, 50], step_min_time: 1s, step_min_requests: 20}\n" +
	"    judge: {interval: 200ms, warmup: 1ms, error_code_header: X-Error-Code}\n"

// server is one backend of the shop: it answers as its version, which the
// in-process "upgrade" changes. The version in bad fails every tenth POST
// with an application error code, a bug the judge must catch.
type server struct {
	name    string
	version atomic.Value // string
	bad     string
	posts   atomic.Int64
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		return
	}
	v := s.version.Load().(string)
	if r.Method == http.MethodPost {
		_, _ = io.Copy(io.Discard, r.Body)
		if v == s.bad && s.posts.Add(1)%10 == 0 {
			w.Header().Set("X-Error-Code", "CART_LOST")
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
	}
	fmt.Fprintf(w, "%s %s", s.name, v)
}

// shop is a real baton with its admin API and three real backends on v1,
// all on loopback.
type shop struct {
	baton   *testbed.Baton
	api     *client.Client
	servers []*server

	mu   sync.Mutex // protects ran
	ran  []release.Command
	fail func(release.Command) (string, error) // set: a command fails
}

func startShop(t *testing.T, bad string) *shop {
	t.Helper()
	s := &shop{}
	var backends [][2]string
	for i := range 3 {
		srv := &server{name: fmt.Sprintf("web-%d", i+1), bad: bad}
		srv.version.Store("v1")
		s.servers = append(s.servers, srv)
		backends = append(backends, [2]string{srv.name, testbed.Backend(t, srv)})
	}
	s.baton = testbed.Start(t, testbed.Config(testbed.PoolYAML("shop", backends, poolYAML)))
	s.baton.WaitHealthy(t, "shop", 3)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := admin.Handler(s.baton.Reg, prometheus.NewRegistry(), zerolog.Nop())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	s.api, err = client.New(ln.Addr().String(), client.Options{Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// install is the shop's Runner: it records the command and "installs" its
// version on the server at once.
func (s *shop) install(_ context.Context, c release.Command) (string, error) {
	s.mu.Lock()
	s.ran = append(s.ran, c)
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return fail(c)
	}
	if c.Backend.Name == "" {
		return "", nil // a migration gate: nothing to install
	}
	for _, srv := range s.servers {
		if srv.name == c.Backend.Name {
			srv.version.Store(c.Version)
			return "", nil
		}
	}
	return "", fmt.Errorf("no server %s", c.Backend.Name)
}

// load sends customers' GETs and POSTs until the test ends; it returns how
// many requests failed although no backend was told to fail them.
func (s *shop) load(t *testing.T) (failed func() int64) {
	ctx, cancel := context.WithCancel(context.Background())
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var n atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ctx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(ctx, "GET", s.baton.URL("/products"), nil)
				if i%2 == 1 {
					req, _ = http.NewRequestWithContext(ctx, "POST", s.baton.URL("/checkout"), strings.NewReader(fmt.Sprintf("order %d-%d", w, i)))
				}
				res, err := hc.Do(req)
				if ctx.Err() != nil {
					return
				}
				if err != nil {
					n.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 && res.Header.Get("X-Error-Code") == "" {
					n.Add(1)
				}
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait(); hc.CloseIdleConnections() })
	return n.Load
}

// events collects a release's events.
type events struct {
	mu   sync.Mutex // protects list
	list []release.Event
}

func (e *events) add(ev release.Event) {
	e.mu.Lock()
	e.list = append(e.list, ev)
	e.mu.Unlock()
}

// messages returns the events' messages, one a line, as "kind: message".
func (e *events) messages() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var b strings.Builder
	for _, ev := range e.list {
		fmt.Fprintf(&b, "%s: %s\n", ev.Kind, ev.Message)
	}
	return b.String()
}

func (s *shop) options(to string, evs *events) release.Options {
	return release.Options{To: to, Upgrade: "install {version} on {name} at {host}:{port} from {from}", Rollback: "reinstall {version} on {name}",
		DrainWait: 10 * time.Second, HealthWait: 10 * time.Second, JudgeWait: 30 * time.Second, Poll: 100 * time.Millisecond,
		Holder: "release test", Events: evs.add, Run: s.install}
}

func (s *shop) pool(t *testing.T) v1.Pool {
	t.Helper()
	var p v1.Pool
	if _, _, err := s.api.Do(context.Background(), "GET", "/v1/pools/shop", nil, nil, &p); err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *shop) backend(t *testing.T, name string) v1.Backend {
	t.Helper()
	for _, b := range s.pool(t).Backends {
		if b.Name == name {
			return b
		}
	}
	t.Fatalf("no backend %s", name)
	return v1.Backend{}
}

// everyServerRuns checks that version is stable and every server runs it,
// active, and returns the pool.
func (s *shop) everyServerRuns(t *testing.T, version string) v1.Pool {
	t.Helper()
	p := s.pool(t)
	if p.StableVersion != version {
		t.Errorf("the stable version is %s, want %s", p.StableVersion, version)
	}
	for _, b := range p.Backends {
		if b.Version != version || b.State != "active" {
			t.Errorf("%s is %s on %s, want active on %s", b.Name, b.State, b.Version, version)
		}
	}
	return p
}

// TestPlanChangesNothing: the plan names the canary, the judge's steps and
// the other servers with their commands filled in, and changes nothing.
func TestPlanChangesNothing(t *testing.T) {
	s := startShop(t, "")
	var evs events
	plan, err := release.New(s.api, "shop", s.options("v2", &evs)).Plan(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := "release v2 to pool shop (stable v1; 3 servers; at most 1 out of rotation at once after the canary)"; plan.Summary != want {
		t.Errorf("summary %q, want %q", plan.Summary, want)
	}
	if len(plan.Steps) != 4 {
		t.Fatalf("%d steps, want 4 (canary, judge, two servers): %q", len(plan.Steps), plan.Steps)
	}
	for i, want := range []string{"web-1 (127.0.0.1:", "the judge compares v2 with v1 through the steps 25% → 50%", "web-2 (", "web-3 ("} {
		if !strings.Contains(plan.Steps[i], want) {
			t.Errorf("step %d %q lacks %q", i+1, plan.Steps[i], want)
		}
	}
	addr := s.backend(t, "web-1").Address
	host, port, _ := net.SplitHostPort(addr)
	if want := fmt.Sprintf("`install v2 on web-1 at %s:%s from v1`", host, port); !strings.Contains(plan.Steps[0], want) {
		t.Errorf("step 1 %q lacks the command %s", plan.Steps[0], want)
	}
	if len(s.ran) != 0 || len(evs.list) != 0 || s.pool(t).Canary != nil {
		t.Errorf("the plan ran %d commands, reported %d events, or started a canary", len(s.ran), len(evs.list))
	}
}

// TestReleaseResumesAfterAFailedCommand: a failing upgrade command stops
// the release with its server drained and says how to go on; the next run
// takes the same server as the canary, follows the judge through both
// steps, promotes and upgrades the others one at a time, with no request
// failed.
func TestReleaseResumesAfterAFailedCommand(t *testing.T) {
	s := startShop(t, "")
	failed := s.load(t)
	s.fail = func(release.Command) (string, error) { return "disk full", errors.New("exit status 3") }
	var first events
	err := release.New(s.api, "shop", s.options("v2", &first)).Run(context.Background())
	for _, want := range []string{"the command failed on web-1 (exit status 3: disk full); web-1 stays drained, out of traffic",
		"baton ctl enable shop web-1 --version v1"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a failing command: %v; want it to say %q", err, want)
		}
	}
	if b := s.backend(t, "web-1"); b.State != "drained" || b.Version != "v1" {
		t.Errorf("after the failed command web-1 is %s on %s, want drained on v1", b.State, b.Version)
	}
	if s.pool(t).Lease != nil {
		t.Errorf("the failed run did not release the lease")
	}

	s.mu.Lock()
	s.fail, s.ran = nil, nil
	s.mu.Unlock()
	var second events
	if err := release.New(s.api, "shop", s.options("v2", &second)).Run(context.Background()); err != nil {
		t.Fatalf("the release failed: %v\n%s", err, second.messages())
	}
	out := second.messages()
	for _, want := range []string{"start: releasing v2 to pool shop (stable v1; servers web-1, web-2, web-3)",
		"canary: web-1 becomes the canary", "verdict: canary v2 at 25%: ", "verdict: canary v2 at 50%: ",
		"promoted: v2 is promoted", "progress: 3 of 3 servers run v2", "done: released: all 3 servers of shop run v2"} {
		if !strings.Contains(out, want) {
			t.Errorf("the events lack %q:\n%s", want, out)
		}
	}
	var order []string
	for _, c := range s.ran {
		order = append(order, c.Backend.Name+":"+c.Version)
	}
	if got := strings.Join(order, " "); got != "web-1:v2 web-2:v2 web-3:v2" {
		t.Errorf("commands ran on %s, want web-1, web-2, web-3 once each", got)
	}
	if p := s.everyServerRuns(t, "v2"); p.Lease != nil {
		t.Errorf("after the release the lease is still held: %v", p.Lease)
	}
	if n := failed(); n != 0 {
		t.Errorf("%d requests failed during the release", n)
	}
}

// TestReleaseRollsBackABadVersion: v2 loses one cart in ten. The judge
// fails it on the canary; the release rolls it back (the pool does not on
// its own), reinstalls v1 on the canary and ends naming the new error. The
// other servers are never touched.
func TestReleaseRollsBackABadVersion(t *testing.T) {
	s := startShop(t, "v2")
	s.load(t)
	var evs events
	err := release.New(s.api, "shop", s.options("v2", &evs)).Run(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "v2 was not released: ") || !strings.Contains(err.Error(), "CART_LOST") {
		t.Fatalf("the release of a bad version ended with %v; want it rolled back naming CART_LOST\n%s", err, evs.messages())
	}
	if errors.Is(err, release.ErrUndecided) {
		t.Errorf("a rollback is not undecided")
	}
	out := evs.messages()
	for _, want := range []string{"rollback: rolling v2 back: ", "reinstall: reinstalling v1 on web-1: reinstall v1 on web-1", "restored: web-1 runs v1 again"} {
		if !strings.Contains(out, want) {
			t.Errorf("the events lack %q:\n%s", want, out)
		}
	}
	if len(s.ran) != 2 || s.ran[0].Backend.Name != "web-1" || s.ran[1].Version != "v1" {
		t.Errorf("commands %+v; want web-1 upgraded and reinstalled, nothing else", s.ran)
	}
	if p := s.everyServerRuns(t, "v1"); p.Canary != nil {
		t.Errorf("after the rollback the pool has a canary: %+v", p.Canary)
	}
}

// TestReleaseRefusedWhileAnotherRuns: the pool's lease is held by another
// release; this one changes nothing and names it.
func TestReleaseRefusedWhileAnotherRuns(t *testing.T) {
	s := startShop(t, "")
	body := map[string]string{"holder": "the other release", "ttl": "30s"}
	if _, _, err := s.api.Do(context.Background(), "PUT", "/v1/pools/shop/lease", nil, body, nil); err != nil {
		t.Fatal(err)
	}
	var evs events
	err := release.New(s.api, "shop", s.options("v2", &evs)).Run(context.Background())
	if !errors.Is(err, release.ErrLeaseHeld) || !strings.Contains(err.Error(), "another release of shop is under way") ||
		!strings.Contains(err.Error(), "the other release") {
		t.Fatalf("a release while another holds the lease: %v; want ErrLeaseHeld naming the holder", err)
	}
	if len(s.ran) != 0 || len(evs.list) != 0 {
		t.Errorf("the refused release ran %d commands and reported %d events", len(s.ran), len(evs.list))
	}
}

// TestReleaseUndecided: with no traffic the judge cannot decide; after
// JudgeWait the release stops with ErrUndecided and the canary keeps its
// share.
func TestReleaseUndecided(t *testing.T) {
	s := startShop(t, "")
	var evs events
	o := s.options("v2", &evs)
	o.JudgeWait = 500 * time.Millisecond
	err := release.New(s.api, "shop", o).Run(context.Background())
	if !errors.Is(err, release.ErrUndecided) || !strings.Contains(err.Error(), "the judge did not decide on v2 within 500ms") {
		t.Fatalf("a release the judge cannot decide: %v; want ErrUndecided", err)
	}
	if c := s.pool(t).Canary; c == nil || c.Version != "v2" || c.Weight != 25 {
		t.Errorf("the canary after an undecided release: %+v; want v2 at 25%%", c)
	}
}

// TestReleaseStopsWhenInterrupted: a run whose context ends stops at once
// and releases the lease; what it did stays.
func TestReleaseStopsWhenInterrupted(t *testing.T) {
	s := startShop(t, "")
	ctx, cancel := context.WithCancel(context.Background())
	var evs events
	o := s.options("v2", &evs)
	o.Events = func(e release.Event) {
		evs.add(e)
		if e.Kind == "ready" {
			cancel() // the canary is up: interrupt
		}
	}
	err := release.New(s.api, "shop", o).Run(ctx)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("an interrupted release ended with %v, want context.Canceled", err)
	}
	p := s.pool(t)
	if p.Lease != nil || p.Canary == nil || p.Canary.Version != "v2" {
		t.Errorf("after the interruption: lease %v, canary %v; want no lease and the canary v2", p.Lease, p.Canary)
	}
}

// TestShell: the shell runner streams a command's output, or keeps its end
// for the message when there is nowhere to stream it.
func TestShell(t *testing.T) {
	var streamed bytes.Buffer
	out, err := release.Shell(&streamed)(context.Background(), release.Command{Line: "echo installing; echo done >&2"})
	if err != nil || out != "" || streamed.String() != "installing\ndone\n" {
		t.Errorf("streamed: %q %v, wrote %q", out, err, streamed.String())
	}
	out, err = release.Shell(nil)(context.Background(), release.Command{Line: "head -c 5000 /dev/zero | tr '\\0' x; echo; echo broken disk >&2; exit 3"})
	if err == nil || !strings.HasSuffix(out, "broken disk") || len(out) > 2048 {
		t.Errorf("kept: %d bytes ending %q, %v; want the last 2 KiB and exit status 3", len(out), out[max(0, len(out)-20):], err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := release.Shell(nil)(ctx, release.Command{Line: "sleep 10"}); err == nil {
		t.Errorf("a command under an ended context ran")
	}
}

// TestReleaseInterruptedMidCallResumes: a release interrupted just as a
// call that changes state goes out (the drain of the canary, its enable,
// a later drain) ends with the context's error, leaves no lease, and a
// second run finishes it, each server upgraded once, no request failed.
func TestReleaseInterruptedMidCallResumes(t *testing.T) {
	for _, at := range []string{"drain web-1", "enable web-1", "drain web-2"} {
		t.Run(at, func(t *testing.T) {
			s := startShop(t, "")
			failed := s.load(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var evs events
			o := s.options("v2", &evs)
			kind, name, _ := strings.Cut(at, " ")
			o.Events = func(e release.Event) {
				evs.add(e)
				if e.Kind == kind && e.Backend == name {
					cancel() // the call that follows the event goes out with a dead context
				}
			}
			err := release.New(s.api, "shop", o).Run(ctx)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted at %s: %v; want context.Canceled\n%s", at, err, evs.messages())
			}
			if p := s.pool(t); p.Lease != nil {
				t.Errorf("the lease is still held after the interrupt: %+v", p.Lease)
			}
			var second events
			if err := release.New(s.api, "shop", s.options("v2", &second)).Run(context.Background()); err != nil {
				t.Fatalf("the second run: %v\n%s", err, second.messages())
			}
			s.everyServerRuns(t, "v2")
			seen := map[string]int{}
			for _, c := range s.ran {
				seen[c.Backend.Name+" "+c.Version]++
			}
			for k, n := range seen {
				if n != 1 {
					t.Errorf("%s was run %d times", k, n)
				}
			}
			if n := failed(); n != 0 {
				t.Errorf("%d requests failed", n)
			}
		})
	}
}

// TestReleaseRunnerPanicReleasesTheLease: a runner that panics while the
// rest are upgraded together (each in its own goroutine) still lets the
// release give its lease back; the panic reaches Run's caller.
func TestReleaseRunnerPanicReleasesTheLease(t *testing.T) {
	s := startShop(t, "")
	s.load(t) // the canary needs traffic to be judged
	var evs events
	o := s.options("v2", &evs)
	base := o.Run
	o.Run = func(ctx context.Context, c release.Command) (string, error) {
		if c.Backend.Name != "web-1" {
			panic("the upgrade script's runner blew up")
		}
		return base(ctx, c)
	}
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		_ = release.New(s.api, "shop", o).Run(context.Background())
	}()
	if recovered == nil {
		t.Fatalf("the runner's panic did not reach Run's caller\n%s", evs.messages())
	}
	if p := s.pool(t); p.Lease != nil {
		t.Errorf("the lease is held after the runner panicked: %+v", p.Lease)
	}
}

// gatesRun returns the gate commands a release ran (those with no server).
func (s *shop) gatesRun() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, c := range s.ran {
		if c.Backend.Name == "" {
			out = append(out, c.Line)
		}
	}
	return out
}

// TestReleaseMigrationGates: a failing --before gate stops the release
// before any server is drained, with the failure recorded; run again, the
// gate runs once, the release goes through, and the --after-gone gate runs
// only once v1 is gone (its last cookies expired); a third run runs
// neither gate again. A release that requires v1 gone is refused while
// any v1 server is in rotation, and allowed once none is; one that
// requires gone a version baton never saw is refused.
func TestReleaseMigrationGates(t *testing.T) {
	s := startShop(t, "")
	failed := s.load(t)
	opts := func(evs *events) release.Options {
		o := s.options("v2", evs)
		o.Before, o.AfterGone = "expand {pool} {from} {to}", "contract {pool} {from} {to}"
		return o
	}

	// --requires-gone v1 for v3: refused, nothing done.
	var refused events
	o := s.options("v3", &refused)
	o.RequiresGone = []string{"v1"}
	err := release.New(s.api, "shop", o).Run(context.Background())
	if !errors.Is(err, release.ErrRequiresGone) || !strings.Contains(err.Error(), "v1 is still present (web-1 active") ||
		!strings.Contains(err.Error(), "v3 must not run beside it") {
		t.Fatalf("a release requiring v1 gone while it serves: %v", err)
	}
	if len(s.ran) != 0 || s.pool(t).Lease != nil {
		t.Fatalf("the refused release ran %v or took the lease", s.ran)
	}
	// A version baton never saw is refused too (a typo must not let v3
	// in), unless the operator vouches for it.
	o.RequiresGone = []string{"v0"}
	err = release.New(s.api, "shop", o).Run(context.Background())
	if !errors.Is(err, release.ErrRequiresGone) || !strings.Contains(err.Error(), "baton has never seen v0 in the pool") {
		t.Fatalf("a release requiring v0, never seen, gone: %v", err)
	}
	// (This baton keeps no state file, so for a while after its start
	// the cookies' counts are unknown and hold every version: that may
	// still refuse it, but not for being unknown.)
	o.AllowUnknown = true
	if _, err := release.New(s.api, "shop", o).Plan(context.Background()); err != nil && strings.Contains(err.Error(), "never seen") {
		t.Fatalf("the plan of a release requiring v0 gone with AllowUnknown: %v", err)
	}
	if len(s.ran) != 0 || s.pool(t).Lease != nil {
		t.Fatalf("the refused release ran %v or took the lease", s.ran)
	}

	s.fail = func(c release.Command) (string, error) {
		if c.Backend.Name == "" {
			return "ALTER TABLE: permission denied", errors.New("exit status 4")
		}
		return "", nil
	}
	var first events
	err = release.New(s.api, "shop", opts(&first)).Run(context.Background())
	for _, want := range []string{"the --before gate failed (exit status 4: ALTER TABLE: permission denied)",
		"nothing was drained: every server still runs v1", "run the same baton rollout command again"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("a failing --before gate: %v; want it to say %q", err, want)
		}
	}
	p := s.everyServerRuns(t, "v1")
	if p.Canary != nil || p.Lease != nil || p.Rollout == nil || p.Rollout.Gate("before").State != "failed" {
		t.Errorf("after the failed gate: canary %v, lease %v, record %+v", p.Canary, p.Lease, p.Rollout)
	}

	s.mu.Lock()
	s.fail, s.ran = nil, nil
	s.mu.Unlock()
	var contractSawV1 atomic.Value
	var second events
	o = opts(&second)
	base := o.Run
	o.Run = func(ctx context.Context, c release.Command) (string, error) {
		if strings.HasPrefix(c.Line, "contract") {
			pv, err := s.baton.Reg.Versions("shop")
			if err != nil {
				return "", err
			}
			for _, v := range pv.Versions {
				if v.Version == "v1" && !v.Gone(false) {
					contractSawV1.Store(fmt.Sprintf("%+v", v))
				}
			}
		}
		return base(ctx, c)
	}
	if err := release.New(s.api, "shop", o).Run(context.Background()); err != nil {
		t.Fatalf("the release: %v\n%s", err, second.messages())
	}
	if got := strings.Join(s.gatesRun(), ", "); got != "expand shop v1 v2, contract shop v1 v2" {
		t.Errorf("gates run: %s; want expand, then contract, once each", got)
	}
	if v := contractSawV1.Load(); v != nil {
		t.Errorf("the --after-gone gate ran while v1 was still present: %s", v)
	}
	out := second.messages()
	for _, want := range []string{"gate: running the --before gate: expand shop v1 v2", "gate: the --before gate is done",
		"done: released: all 3 servers of shop run v2", "waiting: waiting for v1 to be gone before the --after-gone gate: ",
		" affinity cookies valid until ", "gone: v1 is gone from shop", "gate: running the --after-gone gate: contract shop v1 v2"} {
		if !strings.Contains(out, want) {
			t.Errorf("the events lack %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "--before gate is done") > strings.Index(out, "drain: draining web-1") {
		t.Errorf("a server was drained before the --before gate was done:\n%s", out)
	}

	// Run again: both gates ran, neither runs twice.
	s.mu.Lock()
	s.ran = nil
	s.mu.Unlock()
	var third events
	if err := release.New(s.api, "shop", opts(&third)).Run(context.Background()); err != nil {
		t.Fatalf("the release run again: %v\n%s", err, third.messages())
	}
	if len(s.ran) != 0 || !strings.Contains(third.messages(), "the --before gate ran at ") || !strings.Contains(third.messages(), "the --after-gone gate ran at ") {
		t.Errorf("run again, it ran %v:\n%s", s.ran, third.messages())
	}

	// v1 is gone now: v3 may follow.
	o = s.options("v3", &refused)
	o.RequiresGone = []string{"v1"}
	if _, err := release.New(s.api, "shop", o).Plan(context.Background()); err != nil {
		t.Errorf("the plan of v3 once v1 is gone: %v", err)
	}
	if n := failed(); n != 0 {
		t.Errorf("%d requests failed", n)
	}
}
