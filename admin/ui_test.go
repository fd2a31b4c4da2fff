package admin_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
)

// browser starts headless Chromium for one test. Without Chromium the test
// is skipped, unless BATON_BROWSER_TESTS=required (CI sets it, having
// installed Debian's chromium).
func browser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv("BATON_CHROMIUM")
	if path == "" {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if p, err := exec.LookPath(name); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		if os.Getenv("BATON_BROWSER_TESTS") == "required" {
			t.Fatal("no Chromium found (install Debian's chromium, or set BATON_CHROMIUM)")
		}
		t.Skip("no Chromium: install Debian's chromium to run the dashboard's browser tests")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser, with no timeout of its own
		t.Fatalf("start Chromium (%s): %v", path, err)
	}
	return ctx
}

// run runs browser actions, bounded in time, or fails the test.
func run(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(c, actions...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// get runs one browser action that returns a value, or fails the test.
func get[T any](t *testing.T, ctx context.Context, what string, action chromedp.Action[T]) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, action)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// waitJS polls a JavaScript expression in the page until it is true.
func waitJS(t *testing.T, ctx context.Context, timeout time.Duration, expr, what string) {
	t.Helper()
	var last string
	testbed.Eventually(t, timeout, func() bool {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		ok, err := chromedp.Run(c, chromedp.Evaluate[bool](expr))
		if err != nil {
			last = err.Error()
			return false
		}
		return ok
	}, "%s (last error: %s)", what, last)
}

func textOf(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	return get(t, ctx, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// dashFixture is baton with a shop pool of three v1 servers and a spare
// that becomes the v2 canary, which fails every tenth checkout with an
// error stable never has; a catalogue pool of 20 servers with long names;
// the admin API with a token; and steady traffic while the test runs.
type dashFixture struct {
	bt       *testbed.Baton
	adminURL string
	sent     atomic.Int64
	upgraded atomic.Bool // s4 runs v2, which loses carts
}

func startDashboard(t *testing.T) *dashFixture {
	t.Helper()
	f := &dashFixture{}
	backend := func(name, version string, failEvery int64) string {
		var n atomic.Int64
		return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				return
			}
			if failEvery > 0 && f.upgraded.Load() && r.URL.Path == "/checkout" && n.Add(1)%failEvery == 0 {
				w.Header().Set("X-Error-Code", "CART_LOST")
				w.WriteHeader(500)
				_, _ = io.WriteString(w, "cart service lost the cart")
				return
			}
			_, _ = fmt.Fprintf(w, "%s %s\n", name, version)
		}))
	}
	var y strings.Builder
	fmt.Fprintf(&y, `listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: info, access: false}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    canary: {initial_weight: 30, steps: [30, 60, 100]}
    judge: {interval: 300ms, warmup: 1ms, error_code_header: X-Error-Code}
    backends:
      - {name: s1, address: %q, version: v1}
      - {name: s2, address: %q, version: v1}
      - {name: s3, address: %q, version: v1}
      - {name: s4, address: %q, version: v1}
  - name: catalogue
    routes: [{path_prefix: /catalogue}]
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    backends:
`, backend("s1", "v1", 0), backend("s2", "v1", 0), backend("s3", "v1", 0), backend("s4", "v2", 10))
	for i := range 20 {
		fmt.Fprintf(&y, "      - {name: catalogue-server-in-the-second-datacentre-rack-%02d, address: %q, version: release-2026-11-27-build-0007}\n",
			i, backend("catalogue", "v1", 0))
	}
	f.bt = testbed.Start(t, y.String())
	f.bt.WaitHealthy(t, "shop", 4)

	dir := t.TempDir()
	tokenPath := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokenPath, []byte(apiTokenFile), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := admin.LoadTokens(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	promReg := prometheus.NewRegistry()
	srv := httptest.NewServer(admin.Handler(f.bt.Reg, promReg, zerolog.Nop(), admin.WithTokens(tokens)))
	t.Cleanup(srv.Close)
	f.adminURL = srv.URL

	// Steady traffic, bounded in count and time, until the test ends.
	ctx, stop := context.WithTimeout(context.Background(), 3*time.Minute)
	var wg sync.WaitGroup
	for c := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 5 * time.Second}
			defer client.CloseIdleConnections()
			for i := 0; i < 200000 && ctx.Err() == nil; i++ {
				path := "/checkout"
				if (i+c)%2 == 0 {
					path = "/search"
				}
				res, err := client.Get(f.bt.URL(path))
				if err == nil {
					_, _ = io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
				f.sent.Add(1)
				// Pace the load: a dashboard is watched at shop traffic, not
				// at benchmark rates.
				select {
				case <-ctx.Done():
				case <-time.After(2 * time.Millisecond):
				}
			}
		}()
	}
	t.Cleanup(func() { stop(); wg.Wait() })
	return f
}

// clickConfirm opens an action's dialog with a click, optionally fills its
// fields, and confirms.
func clickConfirm(t *testing.T, ctx context.Context, button string, fields map[string]string) {
	t.Helper()
	actions := []chromedp.Action[chromedp.Void]{
		chromedp.Click(chromedp.CSS(button)),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
	}
	for id, v := range fields {
		actions = append(actions, chromedp.SetValue(chromedp.CSS("#field-"+id), v))
	}
	actions = append(actions, chromedp.Click(chromedp.CSS("#confirm-ok")), chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	run(t, ctx, "confirm "+button, actions...)
}

// TestDashboard drives the dashboard in headless Chromium against a running
// baton: token handling, the backends, a drain followed to the end, a
// refused action's message, a canary whose verdict and charts update, the
// audit log, keyboard use and a layout that holds with 20 long-named
// backends.
func TestDashboard(t *testing.T) {
	f := startDashboard(t)
	ctx := browser(t)
	row := func(pool, name string) string {
		return fmt.Sprintf(`#pool-tables tr[data-pool=%q][data-backend=%q]`, pool, name)
	}

	// No token: the page asks for one, saying why.
	run(t, ctx, "open the dashboard", chromedp.Navigate(f.adminURL+"/"), chromedp.WaitVisible(chromedp.CSS("#login")))
	if why := textOf(t, ctx, "#login-why"); !strings.Contains(why, "needs a token") || !strings.Contains(why, "401") {
		t.Errorf("without a token the page says %q; want that the API needs a token (401)", why)
	}
	// A wrong token is refused, and the page says so.
	run(t, ctx, "enter a wrong token",
		chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)))
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#login-why").textContent.includes("refused that token")`, "the wrong token refused")
	stored := get(t, ctx, "read session storage", chromedp.Evaluate[string](`sessionStorage.getItem("baton.token") || ""`))
	if stored != "" {
		t.Errorf("a refused token stays in session storage: %q", stored)
	}
	// The right one shows the backends.
	run(t, ctx, "enter the token",
		chromedp.SendKeys(chromedp.CSS("#token"), tokDeployer),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#app")))
	for _, n := range []string{"s1", "s2", "s3", "s4"} {
		run(t, ctx, "see backend "+n, chromedp.WaitVisible(chromedp.CSS(row("shop", n))))
	}
	url := get(t, ctx, "read the URL", chromedp.Location())
	if strings.Contains(url, tokDeployer) {
		t.Errorf("the token is in the URL: %s", url)
	}
	waitJS(t, ctx, 10*time.Second, `document.querySelector('`+row("shop", "s1")+` [data-field="rps"]').textContent !== "—"`, "a request rate for s1")

	// Drain s4 and watch it reach drained.
	clickConfirm(t, ctx, row("shop", "s4")+` button[data-action="drain"]`, nil)
	waitJS(t, ctx, 15*time.Second, `document.querySelector('`+row("shop", "s4")+`').dataset.state === "drained"`, "s4 drained in the dashboard")
	if be := f.bt.Pool(t, "shop").Backend("s4"); be.State().String() != "drained" {
		t.Errorf("the dashboard shows s4 drained, baton says %s", be.State())
	}

	// A refused action: no canary to promote. The API's message is shown.
	clickConfirm(t, ctx, `#release-actions button[data-action="promote"]`, nil)
	waitJS(t, ctx, 5*time.Second, `document.querySelector("#message").textContent.includes("has no canary to promote")`, "the refusal's message")
	if cls := textOfAttr(t, ctx, "#message", "class"); !strings.Contains(cls, "error") {
		t.Errorf("the refusal is shown with class %q, want error", cls)
	}

	// Keyboard: open Enable on s4 with Enter, cancel with Escape; nothing
	// changes.
	run(t, ctx, "enable dialog by keyboard",
		chromedp.Focus(chromedp.CSS(row("shop", "s4")+` button[data-action="enable"]`)),
		chromedp.KeyEvent(kb.Enter),
		chromedp.WaitVisible(chromedp.CSS("#confirm")),
		chromedp.KeyEvent(kb.Escape),
		chromedp.WaitNotVisible(chromedp.CSS("#confirm")))
	if be := f.bt.Pool(t, "shop").Backend("s4"); be.State().String() != "drained" {
		t.Errorf("cancelling the dialog changed s4 to %s", be.State())
	}

	// Upgrade s4 to v2 and enable it: a canary starts; its verdict and
	// charts update.
	f.upgraded.Store(true)
	clickConfirm(t, ctx, row("shop", "s4")+` button[data-action="enable"]`, map[string]string{"version": "v2"})
	waitJS(t, ctx, 15*time.Second, `document.querySelector("#release-head").textContent.includes("canary v2 at 30%")`, "the canary in the release view")
	waitJS(t, ctx, 30*time.Second, `document.querySelector("#verdict").dataset.verdict === "fail"`, "the judge's fail verdict in the release view")
	verdict := textOf(t, ctx, "#verdict")
	if !strings.Contains(verdict, "CART_LOST") {
		t.Errorf("the verdict says %q; want it to name the new error CART_LOST", verdict)
	}
	waitJS(t, ctx, 10*time.Second, `[...document.querySelectorAll("#signatures tbody tr")].some(r => r.dataset.class === "new" && r.textContent.includes("CART_LOST") && r.textContent.includes("cart service lost the cart"))`,
		"the new signature with its example")
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#compare thead").textContent.includes("v2 (canary)")`, "v2 beside v1 in the comparison")
	waitJS(t, ctx, 15*time.Second, `+document.querySelector("#chart-p99").dataset.points >= 2 && document.querySelector("#chart-rps").dataset.versions.includes("v2")`, "charts with v2")
	points1 := get(t, ctx, "count chart points", chromedp.Evaluate[int](`+document.querySelector("#chart-rps").dataset.points`))
	waitJS(t, ctx, 15*time.Second, fmt.Sprintf(`+document.querySelector("#chart-rps").dataset.points > %d`, points1), "the charts to update")
	points2 := get(t, ctx, "count chart points", chromedp.Evaluate[int](`+document.querySelector("#chart-rps").dataset.points`))
	canvases := get(t, ctx, "count chart canvases", chromedp.Evaluate[int](`document.querySelectorAll("#charts canvas").length`))
	if canvases != 4 {
		t.Errorf("%d chart canvases drawn, want 4", canvases)
	}
	if shot := os.Getenv("BATON_SCREENSHOT"); shot != "" {
		// A minute of history makes a picture worth looking at.
		waitJS(t, ctx, 90*time.Second, `+document.querySelector("#chart-rps").dataset.points >= 30`, "a minute of history")
		run(t, ctx, "scroll to the release view", chromedp.ScrollIntoView(chromedp.CSS("#release")))
		png := get(t, ctx, "screenshot", chromedp.Screenshot(chromedp.CSS("#release")))
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("release view saved to %s", shot)
	}

	// Roll back from the release view.
	clickConfirm(t, ctx, `#release-actions button[data-action="rollback"]`, nil)
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#previous").textContent.includes("Previous canary v2: rolled back by deployer")`, "the rollback in the release view")
	if v, _ := f.bt.Pool(t, "shop").Canary(); v != "" {
		t.Errorf("after the dashboard's rollback the canary is %q", v)
	}

	// The audit log, live, with the token's name.
	waitJS(t, ctx, 10*time.Second, `[...document.querySelectorAll("#events tbody tr")].some(r => r.textContent.includes("deployer") && r.textContent.includes("rollback"))`, "the rollback in the events")
	events := textOf(t, ctx, "#events tbody")
	for _, want := range []string{"drain", "enable"} {
		if !strings.Contains(events, want) {
			t.Errorf("the events table lacks %q: %s", want, events)
		}
	}

	// A release under way shows with its holder.
	if _, err := f.bt.Reg.TakeLease("shop", "baton rollout of shop to v3 on ci-7", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, 10*time.Second, `document.querySelector('.pool-block[data-pool="shop"] .pool-notes').textContent.includes("Release under way: baton rollout of shop to v3 on ci-7")`,
		"the lease in the pool's header")

	// 20 long-named backends: every row is there, and the page does not
	// scroll sideways on a laptop screen (wide tables scroll in place).
	run(t, ctx, "select the catalogue pool", chromedp.Click(chromedp.CSS(`#pools button[data-pool="catalogue"]`)))
	waitJS(t, ctx, 10*time.Second, `document.querySelectorAll('#pool-tables tr[data-pool="catalogue"]').length === 20`, "20 catalogue rows")
	waitJS(t, ctx, 10*time.Second, `document.querySelector("#release-title").textContent.includes("catalogue")`, "the catalogue's release view")
	overflow := get(t, ctx, "measure the page", chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`))
	if overflow {
		t.Errorf("the page scrolls sideways with 20 long-named backends")
	}
	if f.sent.Load() == 0 {
		t.Errorf("no traffic was sent")
	}
	t.Logf("%d requests during the test; charts went from %d to %d points", f.sent.Load(), points1, points2)
}

func textOfAttr(t *testing.T, ctx context.Context, sel, attr string) string {
	t.Helper()
	return get(t, ctx, "read "+sel+"@"+attr, chromedp.AttributeValue(chromedp.CSS(sel), attr)).Value
}

// TestAPIHistory: GET …/history answers the pool's per-version series,
// aligned on t, sampled every 2 s, with the traffic each version served.
func TestAPIHistory(t *testing.T) {
	f := startAPI(t)
	var h map[string]any
	testbed.Eventually(t, 15*time.Second, func() bool {
		f.send(t, 20, "/x")
		h = f.api(t, "GET", "/v1/pools/shop/history", "").want(t, 200)
		vs, _ := h["versions"].(map[string]any)
		v1, _ := vs["v1"].(map[string]any)
		rps, _ := v1["rps"].([]any)
		for _, x := range rps {
			if n, ok := x.(float64); ok && n > 0 {
				return true
			}
		}
		return false
	}, "a sample with v1's requests")
	wantKeys(t, "history", h, []string{"pool", "interval_seconds", "t", "versions"}, nil)
	if h["pool"] != "shop" || h["interval_seconds"] != 2.0 {
		t.Errorf("history of %v every %v s; want shop every 2 s", h["pool"], h["interval_seconds"])
	}
	ts, _ := h["t"].([]any)
	v1 := h["versions"].(map[string]any)["v1"].(map[string]any)
	wantKeys(t, "history v1", v1, []string{"rps", "error_rate", "p50_ms", "p99_ms"}, nil)
	for k, series := range v1 {
		if n := len(series.([]any)); n != len(ts) {
			t.Errorf("v1 %s has %d values for %d times", k, n, len(ts))
		}
	}
	for i := 1; i < len(ts); i++ {
		if ts[i].(float64) <= ts[i-1].(float64) {
			t.Errorf("times not increasing: %v", ts)
		}
	}
	last := len(ts) - 1
	for i := last; i >= 0; i-- {
		if n, ok := v1["rps"].([]any)[i].(float64); ok && n > 0 {
			if p50, ok := v1["p50_ms"].([]any)[i].(float64); !ok || p50 <= 0 {
				t.Errorf("a sample with %g requests/s has p50 %v", n, v1["p50_ms"].([]any)[i])
			}
			if e, ok := v1["error_rate"].([]any)[i].(float64); !ok || e != 0 {
				t.Errorf("a sample with %g requests/s and no error has error rate %v", n, v1["error_rate"].([]any)[i])
			}
			break
		}
	}
}

// TestDashboardFiles: the dashboard's files need no token and hold no
// data; they come with a strict content security policy; / leads to them.
func TestDashboardFiles(t *testing.T) {
	f := startAPI(t)
	noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noRedirect.Get(f.url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /: %d to %q, want 302 to /ui/", res.StatusCode, res.Header.Get("Location"))
	}
	for path, want := range map[string]string{
		"/ui/":                         "text/html",
		"/ui/app.js":                   "text/javascript",
		"/ui/app.css":                  "text/css",
		"/ui/vendor/uPlot.iife.min.js": "text/javascript",
		"/ui/vendor/uPlot.min.css":     "text/css",
	} {
		res, err := f.client.Get(f.url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), want) || len(body) == 0 {
			t.Errorf("GET %s without a token: %d %q, %d bytes; want 200 %s", path, res.StatusCode, res.Header.Get("Content-Type"), len(body), want)
		}
		if csp := res.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if res.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: no X-Content-Type-Options: nosniff", path)
		}
	}
	res, err = f.client.Get(f.url + "/ui/nope.js")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 404 {
		t.Errorf("GET /ui/nope.js: %d, want 404", res.StatusCode)
	}
}

// TestDashboardLiveRequestsAndMonitor: the release view tails each
// version's failures live; a signature's "Live requests" filters the
// tails to it; Pause lets go of the streams and Resume goes on from the
// last record shown, without repeating one; a backend's Monitor charts it
// beside the average backend of its version and of the stable version.
func TestDashboardLiveRequestsAndMonitor(t *testing.T) {
	f := startDashboard(t)
	ctx := browser(t)
	f.upgraded.Store(true)
	if _, err := f.bt.Reg.Drain("shop", "s4"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.bt.Reg.Enable("shop", "s4", control.EnableSpec{Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "open the dashboard with the token",
		chromedp.Navigate(f.adminURL+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login")),
		chromedp.SendKeys(chromedp.CSS("#token"), tokDeployer),
		chromedp.Click(chromedp.CSS(`#login-form button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#app")))

	// A tail per version; v2's failures arrive with their signature.
	waitJS(t, ctx, 20*time.Second, `document.querySelectorAll("#tails .tail").length === 2 && !!document.querySelector('#tails .tail[data-version="v2"]')`, "a tail for v1 and v2")
	waitJS(t, ctx, 30*time.Second, `[...document.querySelectorAll('#tails .tail[data-version="v2"] li')].some(li => li.dataset.failed === "true" && li.textContent.includes("CART_LOST") && li.textContent.includes("cart service lost the cart"))`,
		"v2's failures in its live tail")

	// "Live requests" of the new signature: the tails show it alone.
	waitJS(t, ctx, 30*time.Second, `[...document.querySelectorAll("#signatures tbody tr")].some(r => r.textContent.includes("CART_LOST"))`, "the signature row")
	key := get(t, ctx, "the signature's key", chromedp.Evaluate[string](`[...document.querySelectorAll("#signatures tbody tr")].find(r => r.textContent.includes("CART_LOST")).querySelector("code").textContent`))
	get(t, ctx, "click Live requests", chromedp.Evaluate[bool](`(() => { [...document.querySelectorAll("#signatures tbody tr")].find(r => r.textContent.includes("CART_LOST")).querySelector("button.live").click(); return true })()`))
	if got := get(t, ctx, "the filter", chromedp.Evaluate[string](`document.querySelector("#tail-signature").value`)); got != key {
		t.Fatalf("the filter is %q, want %q", got, key)
	}
	waitJS(t, ctx, 10*time.Second, `(() => { const shown = [...document.querySelectorAll("#tails li")].filter(li => !li.hidden); return shown.length > 0 && shown.every(li => li.dataset.signature === `+"`"+key+"`"+`) })()`,
		"only the signature's requests shown")

	// Pause, then Resume: the stream goes on after the last record shown.
	run(t, ctx, "pause", chromedp.Click(chromedp.CSS("#tail-pause")))
	waitJS(t, ctx, 5*time.Second, `document.querySelector("#tail-pause").getAttribute("aria-pressed") === "true" && [...document.querySelectorAll(".tail-state")].every(s => s.textContent.includes("paused"))`, "paused tails")
	last := get(t, ctx, "the last record shown", chromedp.Evaluate[int](`Math.max(0, ...[...document.querySelectorAll('#tails .tail[data-version="v2"] li')].map(li => +li.dataset.seq))`))
	run(t, ctx, "resume", chromedp.Click(chromedp.CSS("#tail-pause")))
	waitJS(t, ctx, 30*time.Second, fmt.Sprintf(`[...document.querySelectorAll('#tails .tail[data-version="v2"] li')].some(li => +li.dataset.seq > %d)`, last), "records after the pause")
	dups := get(t, ctx, "repeated records", chromedp.Evaluate[int](`(() => { const seen = new Set(); let d = 0; for (const li of document.querySelectorAll("#tails li")) { if (seen.has(li.dataset.seq)) d++; seen.add(li.dataset.seq) } return d })()`))
	if dups != 0 {
		t.Errorf("%d records shown twice after Resume", dups)
	}

	shot := func(sel, name string) {
		dir := os.Getenv("BATON_SCREENSHOT")
		if dir == "" {
			return
		}
		path := filepath.Join(filepath.Dir(dir), name)
		run(t, ctx, "scroll to "+sel, chromedp.ScrollIntoView(chromedp.CSS(sel)))
		png := get(t, ctx, "screenshot of "+sel, chromedp.Screenshot(chromedp.CSS(sel)))
		if err := os.WriteFile(path, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s saved to %s", sel, path)
	}
	get(t, ctx, "clear the filter", chromedp.Evaluate[bool](`(() => { const i = document.querySelector("#tail-signature"); i.value = ""; return i.dispatchEvent(new Event("input")) })()`))
	shot("#tails", "live-requests.png")

	// The monitor of s4 (v2): beside the average v2 and v1 backends.
	run(t, ctx, "open s4's monitor", chromedp.Click(chromedp.CSS(`#pool-tables tr[data-pool="shop"][data-backend="s4"] button[data-action="monitor"]`)),
		chromedp.WaitVisible(chromedp.CSS("#monitor")))
	waitJS(t, ctx, 20*time.Second, `+document.querySelector("#monitor-rps").dataset.points >= 2 && document.querySelectorAll("#monitor canvas").length === 4`, "s4's monitor charts")
	if title := textOf(t, ctx, "#monitor-title"); title != "Monitor of s4 (v2) in shop" {
		t.Errorf("monitor title %q", title)
	}
	if head := textOf(t, ctx, "#monitor-head"); !strings.Contains(head, "average v2 backend") || !strings.Contains(head, "average v1 (stable) backend") {
		t.Errorf("monitor says %q", head)
	}
	legend := textOf(t, ctx, "#monitor")
	for _, want := range []string{"s4", "average v2", "average v1 (stable)"} {
		if !strings.Contains(legend, want) {
			t.Errorf("the monitor's legend lacks %q", want)
		}
	}
	if os.Getenv("BATON_SCREENSHOT") != "" {
		waitJS(t, ctx, 60*time.Second, `+document.querySelector("#monitor-rps").dataset.points >= 20`, "some history in the monitor")
		shot("#monitor", "backend-monitor.png")
	}
	run(t, ctx, "close the monitor", chromedp.Click(chromedp.CSS("#monitor-close")), chromedp.WaitNotVisible(chromedp.CSS("#monitor")))
}
