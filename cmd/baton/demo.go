package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton"
	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/release"
)

// cmdDemo runs a config (the built-in example by default) with a demo backend
// on every loopback backend address, so baton answers at once on a fresh
// machine. On the built-in example it then shows a whole release story with
// its own customers' traffic: a bad version the judge rolls back, a good one
// rolled out to every server.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseFlags("demo", args, stderr, false)
	if !ok {
		return code
	}
	path := f.path
	var cfg *config.Config
	var err error
	if path == "" {
		cfg, err = config.Parse(baton.ExampleConfig, "config.example.yaml")
	} else {
		cfg, err = config.Load(path)
	}
	if err != nil {
		printConfigErrors(stderr, err)
		return exitFail
	}
	f.applyStateFlag(cfg)
	story := path == "" && !f.noRelease
	if story {
		tuneDemoPool(cfg, f.fast)
		// The story narrates on stdout; baton's own log keeps to warnings
		// (the judge's fail verdicts among them) and no access log.
		cfg.Log.Level = "warn"
		off := false
		cfg.Log.Access = &off
	}
	ctx, stop := signalContext()
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	backends, err := startDemoBackends(cfg)
	defer func() {
		for _, b := range backends {
			_ = b.srv.Close()
		}
	}()
	if err != nil {
		fmt.Fprintln(stderr, "baton demo:", err)
		return exitFail
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	result := exitOK
	ready := func(traffic, adminAddr net.Addr) {
		port := traffic.(*net.TCPAddr).Port
		fmt.Fprintf(stdout, "\nbaton demo: %d demo backend(s) running; baton is serving on %s\n", len(backends), traffic)
		fmt.Fprintf(stdout, "  try:  curl http://localhost:%d/\n", port)
		if adminAddr != nil {
			fmt.Fprintf(stdout, "        curl http://%s/healthz\n", adminAddr)
			fmt.Fprintf(stdout, "  dashboard: http://%s/ui/\n", adminAddr)
		}
		fmt.Fprintf(stdout, "  stop: Ctrl-C\n\n")
		if !story {
			return
		}
		if adminAddr == nil {
			fmt.Fprintln(stdout, "baton demo: the admin listener is off; no release to show")
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := &demoStory{out: stdout, traffic: fmt.Sprintf("localhost:%d", port), admin: adminAddr.String(),
				backends: backends, pool: cfg.Pools[0], fast: f.fast}
			if err := d.run(ctx); err != nil {
				if ctx.Err() == nil {
					fmt.Fprintln(stderr, "baton demo:", err)
					result = exitFail
				}
			}
			if f.exit || result != exitOK {
				cancel()
			}
		}()
	}
	if err := serve(ctx, cfg, serveOptions{path: path, logw: stderr, ready: ready}); err != nil {
		fmt.Fprintln(stderr, "baton demo:", err)
		return exitFail
	}
	cancel()
	wg.Wait()
	return result
}

// tuneDemoPool sets the example pool up for the story: steps the judge
// walks on its own, its own rollback and promotion, the demo backends'
// error code header, and pauses short enough to watch (or, with fast, for
// CI).
func tuneDemoPool(cfg *config.Config, fast bool) {
	p := &cfg.Pools[0]
	p.Canary.InitialWeight = 10
	p.Canary.Steps = []float64{10, 50}
	p.Canary.AutoPromote, p.Canary.AutoRollback = true, true
	p.Judge.ErrorCodeHeader = "X-Error-Code"
	p.Canary.StepMinTime, p.Canary.StepMinRequests = 15*time.Second, 200
	p.Judge.Interval, p.Judge.Warmup = 2*time.Second, 5*time.Second
	if fast {
		p.Canary.StepMinTime, p.Canary.StepMinRequests = time.Second, 120
		p.Judge.Interval, p.Judge.Warmup = 250*time.Millisecond, time.Millisecond
	}
}

// demoBackend is one demo server: it answers as its name and version, and
// can be "upgraded" in place to another version.
type demoBackend struct {
	name    string
	version atomic.Value // string
	srv     *http.Server
	orders  atomic.Int64
}

// startDemoBackends starts a small HTTP server for each backend whose address
// is on this machine's loopback. Each answers with its name and version, and
// /healthz with 200.
func startDemoBackends(cfg *config.Config) ([]*demoBackend, error) {
	var out []*demoBackend
	for _, p := range cfg.Pools {
		for _, b := range p.Backends {
			host, _, err := net.SplitHostPort(b.Address)
			if err != nil {
				continue
			}
			ip, err := netip.ParseAddr(host)
			if host != "localhost" && (err != nil || !ip.IsLoopback()) {
				continue
			}
			ln, err := net.Listen("tcp", b.Address)
			if err != nil {
				return out, fmt.Errorf("starting demo backend %s: %w", b.Name, err)
			}
			d := &demoBackend{name: b.Name}
			d.version.Store(b.Version)
			d.srv = &http.Server{Handler: d, ReadHeaderTimeout: 10 * time.Second}
			out = append(out, d)
			go func() {
				if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					fmt.Fprintln(os.Stderr, "baton demo: backend stopped:", err)
				}
			}()
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the config has no backend on a loopback address to run a demo backend for")
	}
	return out, nil
}

// demoBadVersion is the version of the story with a bug: one checkout in
// eight loses the cart.
const demoBadVersion = "v42"

func (d *demoBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		_, _ = io.WriteString(w, "ok\n")
		return
	}
	version := d.version.Load().(string)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Backend", d.name)
	w.Header().Set("X-Version", version)
	if r.Method == http.MethodPost && r.URL.Path == "/checkout" && version == demoBadVersion && d.orders.Add(1)%8 == 0 {
		w.Header().Set("X-Error-Code", "CART_LOST")
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprintf(w, "%s %s: the cart service lost the cart\n", d.name, version)
		return
	}
	fmt.Fprintf(w, "Hello from %s, running %s. You asked for %s %s via %s.\n",
		d.name, version, r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"))
}

// demoStory is baton demo's narrated release: customers shop while v42
// (bad) and then v43 (good) are released by package release, as baton
// rollout releases them.
type demoStory struct {
	out            io.Writer
	traffic, admin string
	backends       []*demoBackend
	pool           config.Pool
	fast           bool

	sent, failed, cartLost atomic.Int64
}

func (d *demoStory) say(format string, args ...any) {
	fmt.Fprintf(d.out, "\n== "+format+"\n", args...)
}

func (d *demoStory) run(ctx context.Context) error {
	shopCtx, stopShopping := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.shop(shopCtx, i)
		}()
	}
	defer func() { stopShopping(); wg.Wait() }()

	names := make([]string, len(d.pool.Backends))
	for i, b := range d.pool.Backends {
		names[i] = b.Name
	}
	stable := d.pool.StableVersion
	d.say("The webshop runs %s on %s; customers are shopping. Watch it live on the dashboard: http://%s/ui/",
		stable, strings.Join(names, ", "), d.admin)
	if err := d.pause(ctx, 3*time.Second); err != nil {
		return err
	}

	d.say("Release 1: %s. It has a bug: one checkout in eight loses the cart (500, X-Error-Code: CART_LOST).", demoBadVersion)
	badErr := d.release(ctx, demoBadVersion)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if badErr == nil {
		return fmt.Errorf("%s was released although it loses carts", demoBadVersion)
	}
	lostDuring := d.cartLost.Load()
	d.say("baton's judge caught it on the canary alone; %s never reached the other servers.", demoBadVersion)
	if err := d.pause(ctx, 3*time.Second); err != nil {
		return err
	}

	d.say("Release 2: v43, a good version.")
	if err := d.release(ctx, "v43"); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("releasing v43: %w", err)
	}
	if err := d.pause(ctx, time.Second); err != nil {
		return err
	}
	stopShopping()
	wg.Wait()

	var p v1.Pool
	c, err := d.client(0)
	if err != nil {
		return err
	}
	if _, _, err := c.Do(ctx, "GET", "/v1/pools/"+url.PathEscape(d.pool.Name), nil, nil, &p); err != nil {
		return apiFailure(err)
	}
	on := 0
	for _, b := range p.Backends {
		if b.Version == "v43" && b.State == "active" {
			on++
		}
	}
	d.say("Summary")
	fmt.Fprintf(d.out, "   %s  rolled back by baton's judge: %s\n", demoBadVersion, strings.TrimPrefix(badErr.Error(), demoBadVersion+" was not released: "))
	fmt.Fprintf(d.out, "   v43  released: %d of %d servers run it, stable version %s\n", on, len(p.Backends), p.StableVersion)
	fmt.Fprintf(d.out, "   customers: %d requests; %d failed: %d checkouts %s lost on its canary before the judge rolled it back, %d anything else\n",
		d.sent.Load(), d.failed.Load()+d.cartLost.Load(), lostDuring, demoBadVersion, d.failed.Load())
	fmt.Fprintf(d.out, "   baton keeps serving: curl http://%s/ · dashboard http://%s/ui/ · Ctrl-C stops it\n", d.traffic, d.admin)
	if on != len(p.Backends) || p.StableVersion != "v43" {
		return fmt.Errorf("v43 runs on %d of %d servers (stable %s)", on, len(p.Backends), p.StableVersion)
	}
	return nil
}

// pause waits a moment for a human to read (shortened with --fast).
func (d *demoStory) pause(ctx context.Context, dur time.Duration) error {
	if d.fast {
		dur /= 10
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(dur):
		return nil
	}
}

// client is a client of the story's baton whose calls may wait up to
// wait on top of 30 s.
func (d *demoStory) client(wait time.Duration) (*client.Client, error) {
	c, err := client.New(d.admin, client.Options{Timeout: 30*time.Second + wait})
	if err != nil {
		return nil, fail(exitUsage, "%v", err)
	}
	return c, nil
}

// release releases version as baton rollout does, in-process: the
// "upgrade" restarts a demo backend as the new version.
func (d *demoStory) release(ctx context.Context, version string) error {
	c, err := d.client(2 * time.Minute)
	if err != nil {
		return err
	}
	pr := &rolloutPrinter{out: indent{d.out}, pool: d.pool.Name}
	install := func(ctx context.Context, cmd release.Command) (string, error) {
		for _, db := range d.backends {
			if db.name == cmd.Backend.Name {
				db.version.Store(cmd.Version)
				return "", d.pause(ctx, time.Second) // an install takes a moment
			}
		}
		return "", fmt.Errorf("no demo backend %s", cmd.Backend.Name)
	}
	r := release.New(c, d.pool.Name, release.Options{To: version, Upgrade: "install {version} on {name}",
		Rollback: "reinstall {version} on {name}", MaxUnavailable: 1, DrainWait: 2 * time.Minute, HealthWait: time.Minute,
		JudgeWait: 5 * time.Minute, Poll: 500 * time.Millisecond, Holder: "baton demo",
		Events: pr.event, Run: install, Describe: describeAPI})
	return rolloutFailed(r.Run(ctx))
}

// shop is a stream of customers: each browses and checks out over twelve
// requests with their own cookie jar, so version affinity keeps their cart
// on one version; then the next customer comes.
func (d *demoStory) shop(ctx context.Context, n int) {
	var client *http.Client
	defer func() {
		if client != nil {
			client.CloseIdleConnections()
		}
	}()
	pace := 20 * time.Millisecond
	if d.fast {
		pace = 4 * time.Millisecond
	}
	for i := 0; ctx.Err() == nil; i++ {
		if i%12 == 0 { // a new customer
			if client != nil {
				client.CloseIdleConnections()
			}
			jar, _ := cookiejar.New(nil)
			client = &http.Client{Timeout: 10 * time.Second, Jar: jar}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/products/%d", d.traffic, (i*7+n)%50), nil)
		if i%3 == 2 {
			req, _ = http.NewRequestWithContext(ctx, http.MethodPost, "http://"+d.traffic+"/checkout",
				strings.NewReader(fmt.Sprintf(`{"customer":%d,"order":%d}`, n, i)))
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := client.Do(req)
		if ctx.Err() != nil {
			return
		}
		d.sent.Add(1)
		switch {
		case err != nil:
			d.failed.Add(1)
		case res.Header.Get("X-Error-Code") == "CART_LOST":
			d.cartLost.Add(1)
		case res.StatusCode >= 500:
			d.failed.Add(1)
		}
		if err == nil {
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pace):
		}
	}
}

// indent prefixes every line written to it, for the rollout's events
// inside the story.
type indent struct{ w io.Writer }

func (i indent) Write(p []byte) (int, error) {
	lines := strings.SplitAfter(string(p), "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString("   " + l)
		}
	}
	if _, err := io.WriteString(i.w, b.String()); err != nil {
		return 0, err
	}
	return len(p), nil
}
