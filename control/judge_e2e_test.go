package control_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
)

// judgeYAML is a pool of three v1 servers and one spare that becomes the
// v2 canary, judged fast.
func judgeYAML(addrs [4]string, canaryExtra string, poolExtra ...string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: info, access: false}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    retries: {attempts: 1}
    canary: {initial_weight: 20, step_min_time: 1s, step_min_requests: 40%s}
    judge: {interval: 200ms, warmup: 1ms, error_code_header: X-Error-Code}
%s    backends:
      - {name: s1, address: %q, version: v1}
      - {name: s2, address: %q, version: v1}
      - {name: s3, address: %q, version: v1}
      - {name: s4, address: %q, version: v1}
`, canaryExtra, strings.Join(poolExtra, ""), addrs[0], addrs[1], addrs[2], addrs[3])
}

// load sends requests to /checkout and /search from several clients until
// stop, and counts the failures.
type load struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	failures     []string
}

func (l *load) run(ctx context.Context, url string, clients int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			for i := 0; i < 100000 && ctx.Err() == nil; i++ {
				path := "/checkout"
				if (i+c)%2 == 0 {
					path = "/search"
				}
				target := path
				if path == "/checkout" {
					target += "?cart=" + strconv.Itoa(i) // a query examples must not keep
				}
				res, err := client.Get(url + target)
				l.sent.Add(1)
				if err != nil {
					l.note(path + ": " + err.Error())
					continue
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode >= 500 && !strings.Contains(string(body), "failed:") {
					// A failure baton made, not one the backend was told to give.
					l.note(fmt.Sprintf("%s: %d %s", path, res.StatusCode, body))
				}
			}
		}()
	}
	return &wg
}

// startLoad sends the shop's load to b from clients for d at most; finish
// stops it and waits for the clients (also at the end of the test).
func startLoad(t *testing.T, b *testbed.Baton, clients int, d time.Duration) (l *load, ctx context.Context, finish func()) {
	ctx, stop := context.WithTimeout(context.Background(), d)
	l = &load{}
	wg := l.run(ctx, b.URL(""), clients)
	var once sync.Once
	finish = func() { once.Do(func() { stop(); wg.Wait() }) }
	t.Cleanup(finish)
	return l, ctx, finish
}

func (l *load) note(s string) {
	l.failed.Add(1)
	l.mu.Lock()
	if len(l.failures) < 5 {
		l.failures = append(l.failures, s)
	}
	l.mu.Unlock()
}

// startShop starts the shop: webshop servers s1, s2, s3 at v1 failing
// requests as v1Fail says, and s4, the spare, answering as v2 and failing
// as v2Fail says. Bodies are "NAME VERSION", failures "PATH failed: CODE"
// with the code in X-Error-Code.
func startShop(t *testing.T, v2Fail, v1Fail map[string]testbed.Failure, canaryExtra string) *testbed.Baton {
	t.Helper()
	return startShopState(t, v2Fail, v1Fail, canaryExtra, "")
}

// startShopState is startShop keeping runtime state in stateFile.
func startShopState(t *testing.T, v2Fail, v1Fail map[string]testbed.Failure, canaryExtra, stateFile string) *testbed.Baton {
	t.Helper()
	return startShopWith(t, v2Fail, v1Fail, canaryExtra, stateFile, "")
}

// startShopWith is startShopState with more lines for the pool.
func startShopWith(t *testing.T, v2Fail, v1Fail map[string]testbed.Failure, canaryExtra, stateFile, poolExtra string) *testbed.Baton {
	t.Helper()
	var addrs [4]string
	for i, s := range testbed.NewBackends(t, testbed.BackendOptions{Version: "v1", Fail: v1Fail}, "s1", "s2", "s3") {
		addrs[i] = s.Addr()
	}
	addrs[3] = testbed.NewBackend(t, testbed.BackendOptions{Name: "s4", Version: "v2", Fail: v2Fail}).Addr()
	cfg, err := config.Parse([]byte(judgeYAML(addrs, canaryExtra, poolExtra)), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateFile = stateFile
	b := testbed.StartConfig(t, cfg)
	b.WaitHealthy(t, "shop", 4)
	return b
}

func startCanary(t *testing.T, b *testbed.Baton) {
	t.Helper()
	if _, err := b.Reg.Drain("shop", "s4"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reg.Enable("shop", "s4", control.EnableSpec{Version: "v2"}); err != nil {
		t.Fatal(err)
	}
}

// A healthy canary walks its steps and is promoted, with no failed request.
func TestJudgePromotesHealthyCanary(t *testing.T) {
	b := startShop(t, nil, nil, ", steps: [20, 50, 100], auto_promote: true, auto_rollback: true")
	l, _, finish := startLoad(t, b, 4, 60*time.Second)
	startCanary(t, b)
	p := b.Pool(t, "shop")
	var steps []float64
	testbed.Eventually(t, 45*time.Second, func() bool {
		if v, w := p.Canary(); v == "v2" && (len(steps) == 0 || steps[len(steps)-1] != w) {
			steps = append(steps, w)
		}
		return p.StableVersion() == "v2"
	}, "the judge to promote v2 (steps seen %v)", steps)
	finish()
	if l.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the release: %v", l.failed.Load(), l.sent.Load(), l.failures)
	}
	if len(steps) < 2 || steps[0] != 20 {
		t.Errorf("the canary went through shares %v; want 20, 50, 100", steps)
	}
	var promoted bool
	for _, e := range b.Reg.Events(50, false) {
		if e.Actor == "judge" && e.Action == "promote" {
			promoted = true
		}
	}
	if !promoted {
		t.Errorf("no promote by the judge in the audit log: %+v", b.Reg.Events(10, false))
	}
	t.Logf("%d requests, promoted after shares %v", l.sent.Load(), steps)
}

// A canary that fails part of /checkout with an error stable never has is
// rolled back automatically, and the report names the signature as new.
func TestJudgeRollsBackNewError(t *testing.T) {
	v2Fail := map[string]testbed.Failure{"/checkout": {Every: 20, Status: 500, Code: "PAYMENT_TIMEOUT"}}
	b := startShopState(t, v2Fail, nil, ", steps: [20, 50], auto_rollback: true", filepath.Join(t.TempDir(), "state.json"))
	l, _, finish := startLoad(t, b, 4, 60*time.Second)
	startCanary(t, b)
	p := b.Pool(t, "shop")
	testbed.Eventually(t, 45*time.Second, func() bool {
		v, _ := p.Canary()
		return v == "" && p.Backend("s4").Version() == "v2"
	}, "the judge to roll v2 back")
	finish()
	rep, err := b.Reg.Canary("shop")
	if err != nil {
		t.Fatal(err)
	}
	if l.failed.Load() != 0 {
		t.Errorf("%d requests failed in ways the backends were not told to: %v", l.failed.Load(), l.failures)
	}
	if s4 := p.Backend("s4"); s4.State().String() != "draining" && s4.State().String() != "drained" {
		t.Errorf("after the rollback the canary backend is %s, want drained", s4.State())
	}
	var rolled *control.Event
	for _, e := range b.Reg.Events(50, false) {
		if e.Actor == "judge" && e.Action == "rollback" {
			rolled = &e
		}
	}
	if rolled == nil {
		t.Fatalf("no rollback by the judge in the audit log")
	}
	checkPrevious(t, "after the rollback", rep.Previous)

	// A restart keeps the record: a registry started from the same file
	// and state reports the same ending, examples included.
	r2, err := control.New(b.Cfg, b.Cfg.StateFile, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	rep2, err := r2.Canary("shop")
	if err != nil {
		t.Fatal(err)
	}
	checkPrevious(t, "after a restart", rep2.Previous)
	t.Logf("rolled back: %s", rolled.Detail)
}

// checkPrevious asserts that the report says the judge rolled v2 back for
// its new PAYMENT_TIMEOUT error, with an example.
func checkPrevious(t *testing.T, when string, prev *v1.PreviousCanary) {
	t.Helper()
	if prev == nil || prev.Verdict != canary.Fail || prev.Version != "v2" || prev.Stable != "v1" ||
		prev.Outcome != "rolled_back" || prev.By != "judge" || !strings.Contains(prev.Reason, "PAYMENT_TIMEOUT") {
		t.Fatalf("%s the report says of the previous canary: %+v", when, prev)
	}
	var found bool
	for _, s := range prev.Signatures {
		if strings.Contains(s.Key, "PAYMENT_TIMEOUT") {
			found = true
			if s.Class != "new" || s.Counts["v2"] == 0 || s.Counts["v1"] != 0 || s.Example == nil || !strings.Contains(s.Example.Body, "PAYMENT_TIMEOUT") {
				t.Errorf("signature %+v; want class new, seen on v2 only, with an example", s)
			} else if s.Example.Path != "/checkout" || s.Example.Status != 500 {
				t.Errorf("example %+v; want path /checkout without its query, status 500", *s.Example)
			}
		}
	}
	if !found {
		t.Errorf("%s the report names no PAYMENT_TIMEOUT signature: %+v", when, prev.Signatures)
	}
}

// A failure the stable version has at the same rate is known and does not
// fail the release.
func TestJudgeKnownErrorDoesNotFail(t *testing.T) {
	known := map[string]testbed.Failure{"/search": {Every: 25, Status: 503, Code: "SEARCH_DOWN"}}
	b := startShop(t, known, known, ", steps: [20, 50], auto_promote: true, auto_rollback: true")
	_, _, finish := startLoad(t, b, 4, 60*time.Second)
	startCanary(t, b)
	p := b.Pool(t, "shop")
	var rep *v1.CanaryReport
	testbed.Eventually(t, 45*time.Second, func() bool {
		if v, _ := p.Canary(); v == "v2" {
			if r, err := b.Reg.Canary("shop"); err == nil && len(r.Signatures) > 0 {
				rep = r
			}
		}
		return p.StableVersion() == "v2" || p.Backend("s4").State().String() != "active"
	}, "the judge to decide")
	finish()
	if p.StableVersion() != "v2" {
		t.Fatalf("a failure stable has at the same rate failed the release: %+v", b.Reg.Events(5, false))
	}
	if rep == nil {
		t.Fatal("no report with signatures seen during the canary")
	}
	for _, s := range rep.Signatures {
		if strings.Contains(s.Key, "SEARCH_DOWN") && (s.Class != "known" || s.FailsRelease) {
			t.Errorf("signature %+v; want known, not failing the release", s)
		}
	}
}

// A client keeps the version that served it while the canary runs, and
// moves to stable without an error when the canary is rolled back. Its
// cookie is signed and opaque; a forged, altered or other pool's cookie is
// ignored, and only a tester with the force secret picks a version.
func TestAffinityHoldsAndMovesBackOnRollback(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "force.secret")
	if err := os.WriteFile(secret, []byte("tester-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := startShopWith(t, nil, nil, "", "", fmt.Sprintf("    affinity: {force_header: {name: X-Baton-Version, secret_file: %q}}\n", secret))
	startCanary(t, b)
	p := b.Pool(t, "shop")
	testbed.Eventually(t, 10*time.Second, func() bool { return p.CanaryActive() == "v2" && p.HasAvailable() }, "the canary in service")
	testbed.Eventually(t, 10*time.Second, func() bool { return p.Backend("s4").Health().String() == "healthy" }, "the canary healthy")

	// Find a client the split sends to the canary, then check it stays.
	var canaryClient *http.Client
	var canaryCookie *http.Cookie
	for i := 0; i < 200 && canaryClient == nil; i++ {
		jar, _ := cookiejar.New(nil)
		c := &http.Client{Jar: jar, Timeout: 5 * time.Second}
		if body := getBody(t, c, b.URL("/checkout")); strings.HasSuffix(body, "v2") {
			canaryClient = c
			u, _ := url.Parse(b.URL("/"))
			for _, ck := range jar.Cookies(u) {
				if ck.Name == "baton_shop" {
					canaryCookie = ck
				}
			}
		}
	}
	if canaryClient == nil {
		t.Fatal("no client reached the canary in 200 tries at a 20 % share")
	}
	// Exposed, the value would start "VERSION." (base64url has no dot);
	// an opaque one may hold "v1" by chance among its random letters.
	if canaryCookie == nil || strings.Contains(canaryCookie.Value, ".") {
		t.Fatalf("the canary client's cookie %v: want baton_shop with an opaque value", canaryCookie)
	}
	for i := range 30 {
		if body := getBody(t, canaryClient, b.URL("/checkout")); !strings.HasSuffix(body, "v2") {
			t.Fatalf("request %d of a canary client went to %q", i, body)
		}
	}
	// A stable client stays on stable too.
	jar, _ := cookiejar.New(nil)
	stableClient := &http.Client{Jar: jar, Timeout: 5 * time.Second}
	for strings.HasSuffix(getBody(t, stableClient, b.URL("/checkout")), "v2") {
		jar, _ = cookiejar.New(nil)
		stableClient = &http.Client{Jar: jar, Timeout: 5 * time.Second}
	}
	for i := range 30 {
		if body := getBody(t, stableClient, b.URL("/checkout")); strings.HasSuffix(body, "v2") {
			t.Fatalf("request %d of a stable client went to the canary", i)
		}
	}
	// served sends n requests with the given header and cookie and counts
	// those the canary served.
	served := func(header, value string, cookie *http.Cookie, n int) int {
		onCanary := 0
		for range n {
			req, _ := http.NewRequest("GET", b.URL("/checkout"), nil)
			if header != "" {
				req.Header.Set(header, value)
			}
			if cookie != nil {
				req.AddCookie(cookie)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if strings.HasSuffix(string(body), "v2") {
				onCanary++
			}
		}
		return onCanary
	}
	// A tester with the secret forces the canary; without it, or with a
	// wrong one, the header is an ordinary request's.
	if n := served("X-Baton-Version", "v2:tester-secret-0123456789", nil, 10); n != 10 {
		t.Errorf("with the force secret, %d of 10 requests reached v2", n)
	}
	for _, v := range []string{"v2", "v2:wrong-secret-0123456789", "v2:"} {
		if n := served("X-Baton-Version", v, nil, 40); n > 25 {
			t.Errorf("X-Baton-Version: %s sent %d of 40 requests to the canary at a 20 %% share", v, n)
		}
	}
	// Forged cookies: a version name, an altered signature, the old
	// cookie name. Each is ignored and the split decides.
	altered := []byte(canaryCookie.Value)
	if i := len(altered) - 10; altered[i] != 'A' { // inside the MAC
		altered[i] = 'A'
	} else {
		altered[i] = 'B'
	}
	for _, ck := range []*http.Cookie{{Name: "baton_shop", Value: "v2"}, {Name: "baton_shop", Value: string(altered)},
		{Name: "baton_version", Value: "v2"}} {
		if n := served("", "", ck, 40); n > 25 {
			t.Errorf("a forged cookie %s=%s sent %d of 40 requests to the canary at a 20 %% share", ck.Name, ck.Value, n)
		}
	}
	if n := served("", "", canaryCookie, 10); n != 10 {
		t.Errorf("the canary client's own cookie sent %d of 10 requests to the canary", n)
	}
	if err := b.Reg.Rollback("shop"); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if body := getBody(t, canaryClient, b.URL("/checkout")); !strings.HasSuffix(body, "v1") {
			t.Fatalf("after the rollback, request %d of a former canary client got %q", i, body)
		}
	}
}

func getBody(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", url, res.StatusCode, body)
	}
	return string(body)
}

// In a dry run the judge reports a failing canary but does not act; a held
// pool is not acted on until it resumes.
func TestJudgeDryRunAndHold(t *testing.T) {
	bad := map[string]testbed.Failure{"/checkout": {Every: 5, Status: 500, Code: "BROKEN"}}
	for _, mode := range []string{"dry_run", "hold"} {
		t.Run(mode, func(t *testing.T) {
			extra := ", auto_rollback: true"
			if mode == "dry_run" {
				extra += ", dry_run: true"
			}
			b := startShop(t, bad, nil, extra)
			if mode == "hold" {
				if err := b.Reg.Hold("shop", true); err != nil {
					t.Fatal(err)
				}
			}
			startLoad(t, b, 2, 30*time.Second)
			startCanary(t, b)
			testbed.Eventually(t, 20*time.Second, func() bool {
				v, _ := b.Reg.Verdict("shop")
				return v == canary.Fail
			}, "a fail verdict")
			// Judged several more times, still not acted on.
			testbed.Eventually(t, 5*time.Second, func() bool {
				r, _ := b.Reg.Canary("shop")
				return r != nil && r.VerdictAt != nil && time.Since(*r.VerdictAt) < 300*time.Millisecond
			}, "a fresh verdict")
			if v, _ := b.Pool(t, "shop").Canary(); v != "v2" {
				t.Fatalf("%s: the judge acted: canary is %q", mode, v)
			}
			if mode == "hold" {
				if err := b.Reg.Hold("shop", false); err != nil {
					t.Fatal(err)
				}
				testbed.Eventually(t, 20*time.Second, func() bool {
					v, _ := b.Pool(t, "shop").Canary()
					return v == ""
				}, "the rollback once resumed")
			}
		})
	}
}

// attack sends requests to path until ctx ends, each with the given
// cookies and headers, and counts them.
func attack(ctx context.Context, url, path string, header http.Header, cookies []*http.Cookie) (*sync.WaitGroup, *atomic.Int64) {
	var wg sync.WaitGroup
	var sent atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 5 * time.Second}
		for i := 0; i < 100000 && ctx.Err() == nil; i++ {
			req, _ := http.NewRequestWithContext(ctx, "GET", url+path, nil)
			for k, v := range header {
				req.Header[k] = v
			}
			for _, ck := range cookies {
				req.AddCookie(ck)
			}
			if res, err := c.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				sent.Add(1)
			}
		}
	}()
	return &wg, &sent
}

// genuineCanaryCookie asks until the split sends it to the canary, and
// returns the affinity cookie it got.
func genuineCanaryCookie(t *testing.T, b *testbed.Baton) *http.Cookie {
	t.Helper()
	for i := 0; i < 200; i++ {
		res, err := http.Get(b.URL("/search"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if strings.HasSuffix(string(body), "v2") {
			for _, ck := range res.Cookies() {
				if ck.Name == "baton_shop" {
					return ck
				}
			}
		}
	}
	t.Fatal("no genuine canary cookie in 200 tries")
	return nil
}

// TestForgedEvidenceCannotSteerTheJudge: a client forging the affinity
// cookie and the force header, and provoking 500s on a path that fails on
// both versions, cannot make the judge fail a good canary; one pumping cheap
// 200s — with forged cookies, or with a genuine canary cookie — cannot make
// a bad canary pass.
func TestForgedEvidenceCannotSteerTheJudge(t *testing.T) {
	forged := http.Header{"X-Baton-Version": {"v2"}}
	cookies := []*http.Cookie{{Name: "baton_shop", Value: "v2"}, {Name: "baton_version", Value: "v2"}}

	t.Run("500s against a good canary", func(t *testing.T) {
		broken := map[string]testbed.Failure{"/broken": {Every: 1, Status: 500, Code: "BROKEN"}}
		b := startShop(t, broken, broken, ", auto_rollback: true")
		_, ctx, finish := startLoad(t, b, 2, 30*time.Second)
		startCanary(t, b)
		// One attacker forges the header, one the cookies.
		awg, sent := attack(ctx, b.URL(""), "/broken", forged, nil)
		cwg, csent := attack(ctx, b.URL(""), "/broken", nil, cookies)
		// Thirty verdicts (200 ms apart) under attack, looked at every 100 ms.
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); <-tick.C {
			if v, reason := b.Reg.Verdict("shop"); v == canary.Fail {
				t.Fatalf("forged evidence failed a good canary: %s", reason)
			}
			if cv, _ := b.Pool(t, "shop").Canary(); cv != "v2" {
				t.Fatalf("forged evidence rolled a good canary back")
			}
		}
		finish()
		awg.Wait()
		cwg.Wait()
		if sent.Load() < 100 || csent.Load() < 100 {
			t.Fatalf("the attacks sent only %d and %d requests", sent.Load(), csent.Load())
		}
		rep, _ := b.Reg.Canary("shop")
		for _, s := range rep.Signatures {
			if strings.Contains(s.Key, "BROKEN") && s.Class != "known" {
				t.Errorf("the attacked path's failure is %q; want known (it fails on both versions)", s.Class)
			}
		}
	})

	// A client that holds a genuine canary cookie chooses where its
	// failures land: all on the canary. It still cannot fail a good one.
	t.Run("500s with a genuine canary cookie against a good canary", func(t *testing.T) {
		broken := map[string]testbed.Failure{"/broken": {Every: 1, Status: 500, Code: "BROKEN"}}
		b := startShop(t, broken, broken, ", auto_rollback: true")
		startCanary(t, b)
		p := b.Pool(t, "shop")
		testbed.Eventually(t, 10*time.Second, func() bool { return p.Backend("s4").Health().String() == "healthy" }, "the canary healthy")
		ck := genuineCanaryCookie(t, b)
		_, ctx, finish := startLoad(t, b, 2, 30*time.Second)
		awg, sent := attack(ctx, b.URL(""), "/broken", nil, []*http.Cookie{ck})
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); <-tick.C {
			if v, reason := b.Reg.Verdict("shop"); v == canary.Fail {
				t.Fatalf("one client with a genuine cookie failed a good canary: %s", reason)
			}
		}
		finish()
		awg.Wait()
		if sent.Load() < 100 {
			t.Fatalf("the attack sent only %d requests", sent.Load())
		}
	})

	bad := map[string]testbed.Failure{"/checkout": {Every: 4, Status: 500, Code: "PAYMENT_DOWN"}}
	for _, genuine := range []bool{false, true} {
		name := "200s with forged cookies for a bad canary"
		if genuine {
			name = "200s with a genuine canary cookie for a bad canary"
		}
		t.Run(name, func(t *testing.T) {
			b := startShop(t, bad, nil, ", auto_rollback: true")
			ctx, stop := context.WithTimeout(context.Background(), 40*time.Second)
			defer stop()
			startCanary(t, b)
			p := b.Pool(t, "shop")
			testbed.Eventually(t, 10*time.Second, func() bool { return p.Backend("s4").Health().String() == "healthy" }, "the canary healthy")
			jar := cookies
			if genuine {
				jar = []*http.Cookie{genuineCanaryCookie(t, b)}
			}
			awg, _ := attack(ctx, b.URL(""), "/search", forged, jar)
			l := &load{}
			wg := l.run(ctx, b.URL(""), 2)
			testbed.Eventually(t, 30*time.Second, func() bool {
				cv, _ := p.Canary()
				return cv == ""
			}, "the judge to roll the bad canary back despite the pumped 200s")
			rep, _ := b.Reg.Canary("shop")
			stop()
			wg.Wait()
			awg.Wait()
			if rep.Previous == nil || rep.Previous.Verdict != canary.Fail {
				t.Errorf("the canary ended with %+v; want a fail", rep.Previous)
			}
			t.Logf("ended: %s %s", rep.Previous.Rule, rep.Previous.Reason)
		})
	}
}
