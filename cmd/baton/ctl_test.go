package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// ctlToken is the API token of the baton the ctl scripts drive, named
// "ops" in its token file.
const ctlToken = "ctl-script-token-0123456789"

// TestCtl runs the transcripts in testdata/ctl: `baton ctl` against a real
// baton process. Setup starts, for each script, real HTTP backends on
// 127.0.0.1 and `baton serve` (the binary TestMain built) with a token file
// and a state file in the script's work dir, and waits until every backend
// is healthy. The script's environment has
//
//	BATON_ADMIN       http://ADMIN (the admin listener)
//	BATON_TOKEN_FILE  $WORK/tokens.txt (token "ops")
//	ADMIN_ADDR        ADMIN without the scheme
//	DEAD_ADMIN        http://ADDR where nothing listens
//	S1_ADDR S2_ADDR S3_ADDR K1_ADDR  the backends' addresses
//	SPARE_ADDR        a running backend in no pool (it answers as s4)
//
// Pool shop (the default pool) has s1, s2, s3 at v1, stable v1, canary
// initial weight 10 %; pool slow (path prefix /slow) has k1. baton logs to
// $WORK/baton.log and keeps its state in $WORK/baton.state.json.
//
// Besides exits (see TestScript), scripts have
//
//	hold PATH            send GET PATH (ending in /hold) through baton in the
//	                     background and wait until a backend holds it;
//	                     prints "held by NAME" and sets $HELD
//	release              let the held request answer; prints "released: STATUS"
//	traffic N [PATH]     send N GETs through baton one after another; prints
//	                     "BACKEND STATUS COUNT" lines, sorted
//	failing NAME on|off  make a backend answer 500 to every request, or not
//	waithealthy POOL NAME  wait (10s at most) until the API shows the backend
//	                     healthy and taking traffic
func TestCtl(t *testing.T) {
	if batonBin == "" {
		t.Fatal("TestMain did not build the baton binary")
	}
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "ctl"),
		RequireExplicitExec: true,
		RequireUniqueNames:  true,
		Setup:               setupCtl,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits":       cmdExits,
			"hold":        cmdHold,
			"release":     cmdRelease,
			"traffic":     cmdTraffic,
			"failing":     cmdFailing,
			"waithealthy": cmdWaitHealthy,
		},
	})
}

type ctlWorldKey struct{}

// ctlWorld is what one script's baton runs with.
type ctlWorld struct {
	traffic  string // host:port of baton's traffic listener
	admin    string // http://host:port of its admin listener
	client   *http.Client
	backends map[string]*testbed.Server // answering with their name in X-Backend

	mu   sync.Mutex   // protects held
	held *heldRequest // the request `hold` sent, until `release`
}

// heldRequest is a request held at a backend's gate for .../hold until
// the script releases it.
type heldRequest struct {
	gate *testbed.Gate
	done chan int // its final status (-1: transport error)
}

func (w *ctlWorld) current() *heldRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.held
}

// loopbackAddr returns a 127.0.0.1 address with a port that was free a
// moment ago (testbed.FreeAddr says why not :0).
func loopbackAddr() (string, error) {
	return testbed.FreeAddrErr()
}

func setupCtl(env *testscript.Env) error {
	w := &ctlWorld{backends: map[string]*testbed.Server{}, client: &http.Client{Timeout: 10 * time.Second}}
	env.Defer(w.client.CloseIdleConnections)
	// k1 is pool slow's; "s4" runs at SPARE_ADDR, in no pool until added.
	for _, name := range []string{"s1", "s2", "s3", "k1", "s4"} {
		b, err := testbed.StartBackend(testbed.BackendOptions{Name: name})
		if err != nil {
			return err
		}
		env.Defer(b.Close)
		w.backends[name] = b
	}
	traffic, err := loopbackAddr()
	if err != nil {
		return err
	}
	adminAddr, err := loopbackAddr()
	if err != nil {
		return err
	}
	dead, err := loopbackAddr()
	if err != nil {
		return err
	}
	w.traffic, w.admin = traffic, "http://"+adminAddr

	if err := os.WriteFile(filepath.Join(env.WorkDir, "tokens.txt"), []byte("# the ops team\nops:"+ctlToken+"\n"), 0o600); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`listen: %s
admin: {listen: %s, token_file: tokens.txt}
state_file: baton.state.json
log: {level: info, format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    judge: {interval: 1h}
    outlier: {consecutive_failures: -1}
    stable_version: v1
    canary: {initial_weight: 10}
    backends:
      - {name: s1, address: "%s", version: v1}
      - {name: s2, address: "%s", version: v1}
      - {name: s3, address: "%s", version: v1}
  - name: slow
    routes: [{path_prefix: /slow}]
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    judge: {interval: 1h}
    outlier: {consecutive_failures: -1}
    drain_timeout: 30s
    backends:
      - {name: k1, address: "%s", version: v1}
`, traffic, adminAddr, w.backends["s1"].Addr(), w.backends["s2"].Addr(), w.backends["s3"].Addr(), w.backends["k1"].Addr())
	cfgPath := filepath.Join(env.WorkDir, "baton.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	logPath := filepath.Join(env.WorkDir, "baton.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	cmd := exec.Command(batonBin, "serve", "-c", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	env.Defer(func() {
		if h := w.current(); h != nil {
			h.gate.Release()
		}
		_ = cmd.Process.Kill()
		<-exited
		logf.Close()
	})

	// Ready: every backend healthy, as the API shows it.
	ready := poll(15*time.Second, func() bool {
		select {
		case <-exited:
			return true
		default:
		}
		pools, err := w.pools()
		if err != nil {
			return false
		}
		n := 0
		for _, p := range pools {
			for _, b := range p.Backends {
				if b.Healthy && b.State == "active" {
					n++
				}
			}
		}
		return n == 4
	})
	select {
	case <-exited:
		data, _ := os.ReadFile(logPath)
		return fmt.Errorf("baton serve exited during setup:\n%s", data)
	default:
	}
	if !ready {
		data, _ := os.ReadFile(logPath)
		return fmt.Errorf("baton's backends were not all healthy within 15s:\n%s", data)
	}

	env.Setenv("PATH", filepath.Dir(batonBin)+string(os.PathListSeparator)+env.Getenv("PATH"))
	env.Setenv("BATON_ADMIN", w.admin)
	env.Setenv("BATON_TOKEN_FILE", filepath.Join(env.WorkDir, "tokens.txt"))
	env.Setenv("ADMIN_ADDR", adminAddr)
	env.Setenv("DEAD_ADMIN", "http://"+dead)
	for _, n := range []string{"s1", "s2", "s3", "k1"} {
		env.Setenv(strings.ToUpper(n)+"_ADDR", w.backends[n].Addr())
	}
	env.Setenv("SPARE_ADDR", w.backends["s4"].Addr())
	env.Values[ctlWorldKey{}] = w
	return nil
}

// pools reads GET /v1/pools with the script's token.
func (w *ctlWorld) pools() ([]v1.Pool, error) {
	req, err := http.NewRequest("GET", w.admin+"/v1/pools", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+ctlToken)
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /v1/pools: %s", resp.Status)
	}
	var out []v1.Pool
	err = json.NewDecoder(resp.Body).Decode(&out)
	return out, err
}

func world(ts *testscript.TestScript) *ctlWorld {
	w, _ := ts.Value(ctlWorldKey{}).(*ctlWorld)
	if w == nil {
		ts.Fatalf("no baton: Setup did not run")
	}
	return w
}

func cmdHold(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: hold PATH")
	}
	w := world(ts)
	if h := w.current(); h != nil && !h.gate.Released() {
		ts.Fatalf("hold: a request is already held; release it first")
	}
	h := &heldRequest{gate: testbed.NewGate(), done: make(chan int, 1)}
	w.mu.Lock()
	w.held = h
	w.mu.Unlock()
	for _, b := range w.backends {
		b.Hold("/hold", h.gate)
	}
	go func() {
		resp, err := w.client.Get("http://" + w.traffic + args[0])
		if err != nil {
			h.done <- -1
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h.done <- resp.StatusCode
	}()
	select {
	case name := <-h.gate.Entered():
		ts.Setenv("HELD", name)
		fmt.Fprintf(ts.Stdout(), "held by %s\n", name)
	case s := <-h.done:
		ts.Fatalf("hold: GET %s answered %d before a backend held it", args[0], s)
	case <-time.After(10 * time.Second):
		h.gate.Release()
		ts.Fatalf("hold: GET %s did not reach a backend within 10s", args[0])
	}
}

func cmdRelease(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: release")
	}
	h := world(ts).current()
	if h == nil {
		ts.Fatalf("release: nothing is held")
	}
	h.gate.Release()
	select {
	case s := <-h.done:
		fmt.Fprintf(ts.Stdout(), "released: %d\n", s)
	case <-time.After(10 * time.Second):
		ts.Fatalf("release: the held request did not finish within 10s")
	}
}

func cmdTraffic(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: traffic N [PATH]")
	}
	n, err := strconv.Atoi(args[0])
	if err != nil || n < 1 || n > 10000 {
		ts.Fatalf("traffic: bad count %q", args[0])
	}
	path := "/"
	if len(args) == 2 {
		path = args[1]
	}
	w := world(ts)
	counts := map[string]int{}
	for i := range n {
		resp, err := w.client.Get("http://" + w.traffic + path)
		if err != nil {
			ts.Fatalf("traffic: request %d of %d: %v", i+1, n, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b := resp.Header.Get("X-Backend")
		if b == "" {
			b = "baton"
		}
		counts[fmt.Sprintf("%s %d", b, resp.StatusCode)]++
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(ts.Stdout(), "%s %d\n", k, counts[k])
	}
}

func cmdFailing(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 || (args[1] != "on" && args[1] != "off") {
		ts.Fatalf("usage: failing NAME on|off")
	}
	b := world(ts).backends[args[0]]
	if b == nil {
		ts.Fatalf("failing: no backend %q", args[0])
	}
	if args[1] == "off" {
		b.StopFailing("")
		return
	}
	// The body is the one the transcripts show as the failure's example.
	b.Fail("", testbed.Failure{Status: http.StatusInternalServerError, Body: b.Name() + "\n"})
}

func cmdWaitHealthy(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 || (len(args) == 3 && args[2] != "standby") {
		ts.Fatalf("usage: waithealthy POOL NAME [standby]")
	}
	standby := len(args) == 3 // healthy, and out of rotation
	w := world(ts)
	var last string
	ok := poll(10*time.Second, func() bool {
		pools, err := w.pools()
		if err != nil {
			last = err.Error()
			return false
		}
		for _, p := range pools {
			for _, b := range p.Backends {
				if p.Name == args[0] && b.Name == args[1] {
					last = fmt.Sprintf("%+v", b)
					return b.Healthy && (b.EffectiveWeight > 0 || (standby && b.State == "drained"))
				}
			}
		}
		last = "no such backend"
		return false
	})
	if !ok {
		ts.Fatalf("waithealthy: %s/%s not healthy within 10s: %s", args[0], args[1], last)
	}
}

// TestCtlScriptsAreThere guards against the transcripts silently going
// missing: testscript passes with no file at all.
func TestCtlScriptsAreThere(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "ctl", "*.txtar"))
	if err != nil || len(files) < 5 {
		t.Fatalf("testdata/ctl has %d transcripts (%v), want the ctl scripts", len(files), err)
	}
}
