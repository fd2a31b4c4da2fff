package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// shopServer is one backend of the rolling-deploy test: a testbed.Server
// answering "NAME VERSION", recording every POST in the run's ledger and
// restarted as a new version on the same address by upgrade. A version in
// badPOST fails every tenth POST with an application error code: a bug the
// judge must catch. name and version mirror the server's for the tests
// that read them.
type shopServer struct {
	*testbed.Server
	name    string
	version atomic.Value // string
}

// upgrade restarts the server as version: like a real upgrade, the old
// process goes away (its connections close) and a new one listens.
func (s *shopServer) upgrade(version string) error {
	s.version.Store(version)
	return s.Restart(version)
}

// rollout is one release of v42 to a pool of four v41 servers under
// steady load: by examples/rolling-deploy.sh, or by what drive runs.
type rollout struct {
	poolYAML string // extra keys of the pool
	badPOST  string // a version that fails every tenth POST
	env      []string
	// drive runs the release and returns its output; nil runs the
	// example script with env.
	drive func(t *testing.T, e releaseEnv) (string, error)

	// instances > 1 runs that many batons sharing one etcd, the load
	// spread over all of them and the release driven through the first;
	// during, when set, runs beside the release.
	instances int
	during    func(t *testing.T, c *rolloutCluster)

	out      string
	err      error
	servers  []*shopServer
	traffic  string
	client   *http.Client
	sent     int64
	posts    int
	failures []string // failures the backends were not told to produce
}

func (r *rollout) run(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	dir := t.TempDir()
	ledger := testbed.NewLedger("X-Order")
	var fail map[string]testbed.Failure
	if r.badPOST != "" {
		fail = map[string]testbed.Failure{"/orders": {Every: 10, Status: 500, Code: "PAYMENT_DECLINED", Version: r.badPOST}}
	}
	r.servers = make([]*shopServer, 4)
	var backendsYAML strings.Builder
	for i := range r.servers {
		name := fmt.Sprintf("web-%d", i+1)
		s := &shopServer{name: name, Server: testbed.NewBackend(t, testbed.BackendOptions{Name: name, Version: "v41", Ledger: ledger, Fail: fail})}
		s.version.Store("v41")
		r.servers[i] = s
		fmt.Fprintf(&backendsYAML, "      - {name: %s, address: \"%s\", version: v41}\n", s.name, s.Addr())
	}
	pools := fmt.Sprintf(`pools:
  - name: shop
    health_check: {path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}
    drain_timeout: 20s
%s    backends:
%s`, r.poolYAML, backendsYAML.String())
	r.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(r.client.CloseIdleConnections)
	var adminURL string
	var traffics []string
	var cl *rolloutCluster
	if r.instances > 1 {
		cl = startRolloutCluster(t, r.instances, pools)
		for _, b := range cl.batons {
			traffics = append(traffics, b.traffic)
		}
		adminURL = cl.batons[0].admin.base
	} else {
		traffic, adminAddr := freeAddr(t), freeAddr(t)
		cfg := writeFile(t, "baton.yaml", fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nlog: {format: json, access: false}\n%s",
			traffic, adminAddr, pools))
		startBinary(t, "serve", "-c", cfg)
		traffics, adminURL = []string{traffic}, "http://"+adminAddr
	}
	r.traffic = traffics[0]
	for _, traffic := range traffics {
		if !poll(20*time.Second, func() bool {
			s, _, err := get(r.client, "http://"+traffic+"/")
			return err == nil && s == 200
		}) {
			t.Fatalf("baton at %s did not start serving", traffic)
		}
	}

	// Steady load: GETs and POSTs with unique order numbers, two workers
	// per baton.
	ctx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	var sent, failed atomic.Int64
	var failures sync.Map
	var wg sync.WaitGroup
	workers := 2 * len(traffics)
	if len(traffics) == 1 {
		workers = 6
	}
	loadOf := make([]context.Context, len(traffics))
	for i := range traffics {
		var stop context.CancelFunc
		loadOf[i], stop = context.WithCancel(ctx)
		defer stop()
		if cl != nil {
			cl.stopLoad = append(cl.stopLoad, stop)
			cl.loadWG = append(cl.loadWG, &sync.WaitGroup{})
		}
	}
	for w := range workers {
		wg.Add(1)
		at := w % len(traffics)
		if cl != nil {
			cl.loadWG[at].Add(1)
		}
		go func() {
			defer wg.Done()
			if cl != nil {
				defer cl.loadWG[at].Done()
			}
			traffic, ctx := traffics[at], loadOf[at]
			for i := 0; i < 20000 && ctx.Err() == nil; i++ {
				var req *http.Request
				if i%2 == 0 {
					req, _ = http.NewRequest("GET", "http://"+traffic+"/products", nil)
				} else {
					id := fmt.Sprintf("o%d-%d", w, i)
					req, _ = http.NewRequest("POST", "http://"+traffic+"/orders", strings.NewReader("order "+id))
					req.Header.Set("X-Order", id)
				}
				sent.Add(1)
				res, err := r.client.Do(req)
				if err != nil {
					failed.Add(1)
					failures.Store(req.Method+" "+req.Header.Get("X-Order"), err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 && res.Header.Get("X-Error-Code") == "" {
					failed.Add(1)
					failures.Store(req.Method+" "+req.Header.Get("X-Order"), res.Status)
				}
			}
		}()
	}

	// The upgrade and rollback commands block until the test has restarted
	// that server as the version asked for.
	upgrades := make(chan string, 8)
	done := make(chan struct{})
	var upgradeErr atomic.Value
	go func() {
		for {
			select {
			case <-done:
				return
			case req := <-upgrades:
				name, version, _ := strings.Cut(req, ":")
				for _, s := range r.servers {
					if s.name == name {
						if err := s.upgrade(version); err != nil {
							upgradeErr.Store(err.Error())
						}
					}
				}
				if err := os.WriteFile(filepath.Join(dir, "done-"+name+"-"+version), nil, 0o644); err != nil {
					upgradeErr.Store(err.Error())
				}
			}
		}
	}()
	fifo := filepath.Join(dir, "upgrade-requests")
	upgradeCmd := fmt.Sprintf(`echo {name}:{version} >> %s; for i in $(seq 1 400); do [ -e %s/done-{name}-{version} ] && exit 0; sleep 0.05; done; exit 1`, fifo, dir)
	go func() {
		// Hand each requested upgrade to the test, in order.
		seen := 0
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond): // polling the request file
			}
			data, _ := os.ReadFile(fifo)
			lines := strings.Fields(string(data))
			for ; seen < len(lines); seen++ {
				upgrades <- lines[seen]
			}
		}
	}()

	drive := r.drive
	if drive == nil {
		drive = func(t *testing.T, e releaseEnv) (string, error) {
			script := exec.Command("bash", "../../examples/rolling-deploy.sh", "shop", "v42")
			script.Env = append(os.Environ(),
				"BATON="+batonBin, "BATON_ADMIN="+e.admin,
				"UPGRADE_CMD="+e.upgradeCmd, "ROLLBACK_CMD="+e.upgradeCmd, "INTERVAL=1", "MIN_REQUESTS=5", "DRAIN_WAIT=30s", "HEALTH_WAIT=20")
			script.Env = append(script.Env, r.env...)
			out, err := script.CombinedOutput()
			t.Logf("rolling-deploy.sh:\n%s", out)
			return string(out), err
		}
	}
	var out string
	var err error
	if r.during != nil {
		// The release runs beside what during does on the test's
		// goroutine.
		released := make(chan struct{})
		go func() {
			defer close(released)
			out, err = drive(t, releaseEnv{admin: adminURL, upgradeCmd: upgradeCmd, servers: r.servers})
		}()
		r.during(t, cl)
		<-released
	} else {
		out, err = drive(t, releaseEnv{admin: adminURL, upgradeCmd: upgradeCmd, servers: r.servers})
	}
	close(done)
	stopLoad()
	wg.Wait()
	r.out, r.err, r.sent = out, err, sent.Load()
	if e := upgradeErr.Load(); e != nil {
		t.Fatalf("upgrading a server: %v", e)
	}
	failures.Range(func(k, v any) bool {
		r.failures = append(r.failures, fmt.Sprintf("%s: %s", k, v))
		return true
	})
	r.posts = ledger.Len()
	for _, d := range ledger.Duplicates() {
		t.Errorf("POST %s: it reached the backends more than once", d)
	}
	if r.posts == 0 || r.sent < 100 {
		t.Errorf("the load was too light to prove anything: %d requests, %d POSTs", r.sent, r.posts)
	}
	if len(r.failures) != 0 {
		t.Errorf("%d of %d requests failed during the rolling deploy: %v", len(r.failures), r.sent, r.failures[:min(10, len(r.failures))])
	}
}

// releaseEnv is what a release in the rollout test works with.
type releaseEnv struct {
	admin      string // the admin API's URL
	upgradeCmd string // restarts {name} as {version}, once the test has done it
	servers    []*shopServer
}

// everyServerAnswers checks that the pool now answers as version only.
func (r *rollout) everyServerAnswers(t *testing.T, version string) {
	t.Helper()
	for range 20 {
		_, body, err := get(r.client, "http://"+r.traffic+"/products")
		if err != nil || !strings.Contains(body, " "+version) {
			t.Fatalf("after the deploy a request got %q (%v), want %s", body, err, version)
		}
	}
}

// TestRollingDeployScript runs examples/rolling-deploy.sh against a real
// baton process with four backends under steady load: every server is
// drained, upgraded (restarted) and re-enabled, the first one as the canary,
// which is then promoted. No request may fail and every POST must reach a
// backend exactly once.
func TestRollingDeployScript(t *testing.T) {
	r := &rollout{env: []string{"OBSERVE=2s"}}
	r.run(t)
	if r.err != nil {
		t.Fatalf("rolling-deploy.sh failed: %v", r.err)
	}
	r.everyServerAnswers(t, "v42")
	if !strings.Contains(r.out, "v42 is released to every server of shop") {
		t.Errorf("the script did not report the release")
	}
	t.Logf("%d requests during the deploy, %d POSTs, none failed", r.sent, r.posts)
}

// TestRollingDeployScriptFollowsTheJudge: v42 declines every tenth payment,
// an error v41 never had. The pool lets the judge roll back; the script
// stops watching as soon as it has, reinstalls v41 on the canary server,
// reports the judge's reason and exits 1. The other servers are never
// touched, and no request fails but those v42 itself failed.
func TestRollingDeployScriptFollowsTheJudge(t *testing.T) {
	r := &rollout{badPOST: "v42", env: []string{"OBSERVE=60s"},
		poolYAML: "    canary: {initial_weight: 25, auto_rollback: true}\n" +
			"    judge: {interval: 200ms, error_code_header: X-Error-Code}\n"}
	start := time.Now()
	r.run(t)
	var exit *exec.ExitError
	if !errors.As(r.err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("rolling-deploy.sh ended with %v, want exit status 1", r.err)
	}
	if took := time.Since(start); took >= 60*time.Second {
		t.Errorf("the script watched for its whole %s instead of following the judge", took.Round(time.Second))
	}
	for _, want := range []string{
		// The signature rule or the error rate may fire first; either
		// reason names the new error.
		"baton's judge rolled v42 back: ",
		`new error "POST /orders 500 server_error code=PAYMENT_DECLINED"`,
		"web-1 runs v41 again; v42 was not released",
		"previous canary v42: rolled back by judge at ", // ctl canary says how the last canary ended
		" — fail: ",
		"v42      rolled_back",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("the script's output lacks %q", want)
		}
	}
	for _, s := range r.servers[1:] {
		if v := s.version.Load().(string); v != "v41" {
			t.Errorf("%s was upgraded to %s although the canary failed", s.name, v)
		}
	}
	r.everyServerAnswers(t, "v41")
}
