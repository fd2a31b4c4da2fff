package admin_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// The API's two tokens, as the token file names them.
const (
	tokDeployer = "deployer-token-0123456789abcdef"
	tokCIBot    = "ci-bot-token-abcdef0123456789"
)

const apiTokenFile = `# API tokens of the test
deployer:deployer-token-0123456789abcdef

  ci-bot : ci-bot-token-abcdef0123456789
`

// apiFixture is a real baton (testbed) with real backends, a state file in
// a temp dir, and the admin handler with tokens served on 127.0.0.1.
//
// Pool "shop" (the default pool) has s1, s2, s3 at v1 (stable v1; a new
// version starts a canary at 20 %). Pool "web" (path prefix /web) has w1.
// spare is a running backend that is in no pool, for POST .../backends.
// Every backend answers with its name in X-Backend; GET /hold is held at
// the backend until the test calls release.
type apiFixture struct {
	bt        *testbed.Baton
	url       string // admin base URL
	stateFile string
	addr      map[string]string // backend name → address
	spare     string
	client    *http.Client // admin API
	traffic   *http.Client // through baton

	holding     chan string // a /hold request reached the named backend
	release     chan struct{}
	releaseOnce sync.Once
}

func (f *apiFixture) releaseHeld() { f.releaseOnce.Do(func() { close(f.release) }) }

func (f *apiFixture) backend(t *testing.T, name string) string {
	return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		if r.URL.Path == "/hold" {
			f.holding <- name
			select {
			case <-f.release:
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Second): // bound, should the test never release it
			}
		}
		_, _ = io.WriteString(w, name+"\n")
	}))
}

func startAPI(t *testing.T) *apiFixture {
	t.Helper()
	dir := t.TempDir()
	f := &apiFixture{
		stateFile: filepath.Join(dir, "state", "baton.state.json"),
		addr:      map[string]string{},
		holding:   make(chan string, 8),
		release:   make(chan struct{}),
	}
	if err := os.Mkdir(filepath.Dir(f.stateFile), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"s1", "s2", "s3", "w1"} {
		f.addr[n] = f.backend(t, n)
	}
	f.spare = f.backend(t, "s4") // added at runtime as s4
	yaml := fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
state_file: "%s"
log: {level: debug, format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    stable_version: v1
    canary: {initial_weight: 20}
    drain_timeout: 30s
    backends:
      - {name: s1, address: "%s", version: v1}
      - {name: s2, address: "%s", version: v1}
      - {name: s3, address: "%s", version: v1}
  - name: web
    routes: [{path_prefix: /web}]
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    backends:
      - {name: w1, address: "%s", version: v1}
`, f.stateFile, f.addr["s1"], f.addr["s2"], f.addr["s3"], f.addr["w1"])
	f.bt = testbed.Start(t, yaml)
	t.Cleanup(f.releaseHeld) // before baton's shutdown, which waits for held requests
	f.bt.WaitHealthy(t, "shop", 3)
	f.bt.WaitHealthy(t, "web", 1)

	tokenPath := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokenPath, []byte(apiTokenFile), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := admin.LoadTokens(tokenPath)
	if err != nil {
		t.Fatalf("LoadTokens: %v", err)
	}
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(admin.Collector(f.bt.Reg))
	srv := httptest.NewServer(admin.Handler(f.bt.Reg, promReg, zerolog.Nop(), admin.WithTokens(tokens)))
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("admin test server on %s, want 127.0.0.1", srv.URL)
	}
	f.url = srv.URL
	f.client = &http.Client{Timeout: 30 * time.Second}
	f.traffic = &http.Client{Timeout: 10 * time.Second}
	t.Cleanup(f.client.CloseIdleConnections)
	t.Cleanup(f.traffic.CloseIdleConnections)
	return f
}

// apiResp is one answer of the admin API.
type apiResp struct {
	what   string // "METHOD path", for messages
	status int
	header http.Header
	body   []byte
}

// req sends one admin request. auth is the whole Authorization header
// ("" for none); body "" sends no body.
func (f *apiFixture) req(t *testing.T, method, path, auth, body string) apiResp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r, err := http.NewRequest(method, f.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if method != http.MethodGet {
		r.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	resp, err := f.client.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, path, err)
	}
	return apiResp{what: method + " " + path, status: resp.StatusCode, header: resp.Header, body: data}
}

// api sends a request with the deployer's token.
func (f *apiFixture) api(t *testing.T, method, path, body string) apiResp {
	t.Helper()
	return f.req(t, method, path, "Bearer "+tokDeployer, body)
}

// as sends a request with the given token.
func (f *apiFixture) as(t *testing.T, token, method, path, body string) apiResp {
	t.Helper()
	return f.req(t, method, path, "Bearer "+token, body)
}

// want fails the test unless the answer has status, and returns its JSON
// body as an object (nil when it is an array).
func (r apiResp) want(t *testing.T, status int) map[string]any {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d; body: %s", r.what, r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s: Content-Type %q, want application/json", r.what, ct)
	}
	var v any
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("%s: the body is not JSON: %v\n%s", r.what, err, r.body)
	}
	m, _ := v.(map[string]any)
	return m
}

// wantList is want for an answer that is a JSON array.
func (r apiResp) wantList(t *testing.T, status int) []any {
	t.Helper()
	r.want(t, status)
	var out []any
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("%s: the body is not a JSON array: %v\n%s", r.what, err, r.body)
	}
	return out
}

// wantError checks an error answer: the status, the shape {"error", "code"}
// (plus extra keys, if any), the code, and a message that is a sentence
// mentioning each of mentions. It returns the body.
func (r apiResp) wantError(t *testing.T, status int, code string, mentions []string, extra ...string) map[string]any {
	t.Helper()
	m := r.want(t, status)
	if m == nil {
		t.Fatalf("%s: error body %s is not a JSON object", r.what, r.body)
	}
	wantKeys(t, r.what+" error", m, append([]string{"error", "code"}, extra...), nil)
	if m["code"] != code {
		t.Errorf("%s: code %v, want %q (error %q)", r.what, m["code"], code, m["error"])
	}
	msg, _ := m["error"].(string)
	if len(msg) < 10 {
		t.Errorf("%s: error %q does not say what the problem is", r.what, msg)
	}
	for _, s := range mentions {
		if !strings.Contains(msg, s) {
			t.Errorf("%s: error %q does not mention %q", r.what, msg, s)
		}
	}
	return m
}

// wantKeys checks that obj has exactly the keys required plus any of
// optional.
func wantKeys(t *testing.T, what string, obj map[string]any, required, optional []string) {
	t.Helper()
	allowed := map[string]bool{}
	for _, k := range required {
		allowed[k] = true
		if _, ok := obj[k]; !ok {
			t.Errorf("%s: no field %q in %v", what, k, keysOf(obj))
		}
	}
	for _, k := range optional {
		allowed[k] = true
	}
	for k := range obj {
		if !allowed[k] {
			t.Errorf("%s: unexpected field %q", what, k)
		}
	}
}

func keysOf(m map[string]any) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// The fields of a backend, as the contract names them.
var (
	backendFields         = []string{"name", "address", "version", "weight", "effective_weight", "state", "healthy", "inflight", "open_connections", "requests", "errors"}
	backendOptionalFields = []string{"last_error", "health"}
	poolFields            = []string{"name", "stable_version", "canary", "backends"}
)

// checkBackend checks a backend's shape and the given field values.
func checkBackend(t *testing.T, what string, b map[string]any, want map[string]any) {
	t.Helper()
	if b == nil {
		t.Fatalf("%s: no backend object", what)
	}
	wantKeys(t, what, b, backendFields, backendOptionalFields)
	for k, v := range want {
		if fmt.Sprint(b[k]) != fmt.Sprint(v) {
			t.Errorf("%s: %s = %v, want %v", what, k, b[k], v)
		}
	}
}

// backendJSON gets one backend through the API.
func (f *apiFixture) backendJSON(t *testing.T, poolName, name string) map[string]any {
	t.Helper()
	return f.api(t, "GET", "/v1/pools/"+poolName+"/backends/"+name, "").want(t, 200)
}

// stateBytes returns the state file's content, nil when there is none.
func (f *apiFixture) stateBytes(t *testing.T) []byte {
	t.Helper()
	data, err := os.ReadFile(f.stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("reading the state file: %v", err)
	}
	return data
}

// state reads the state file as baton wrote it, right now.
func (f *apiFixture) state(t *testing.T) *control.State {
	t.Helper()
	data := f.stateBytes(t)
	if data == nil {
		return &control.State{}
	}
	if !json.Valid(data) {
		t.Fatalf("the state file is not valid JSON:\n%s", data)
	}
	st, warning, err := control.ReadStateFile(f.stateFile)
	if err != nil || warning != "" {
		t.Fatalf("reading the state file: %v %s\n%s", err, warning, data)
	}
	return st
}

func poolState(st *control.State, poolName string) *control.PoolState {
	if st.Pools == nil || st.Pools[poolName] == nil {
		return &control.PoolState{}
	}
	return st.Pools[poolName]
}

// backendState returns a backend's entry of the state file (a zero entry
// when it has none).
func backendState(st *control.State, poolName, name string) control.BackendState {
	ps := poolState(st, poolName)
	if ps.Backends == nil || ps.Backends[name] == nil {
		return control.BackendState{}
	}
	return *ps.Backends[name]
}

func weightOf(bs control.BackendState) string {
	if bs.Weight == nil {
		return "none"
	}
	return fmt.Sprint(*bs.Weight)
}

// stateUnchanged fails when the state file differs from before.
func (f *apiFixture) stateUnchanged(t *testing.T, what string, before []byte) {
	t.Helper()
	if after := f.stateBytes(t); !bytes.Equal(before, after) {
		t.Errorf("%s changed the state file:\nbefore: %s\nafter:  %s", what, before, after)
	}
}

// send sends n GETs of path through baton one after another and counts
// the answers by backend. Every answer must be 200.
func (f *apiFixture) send(t *testing.T, n int, path string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := range n {
		resp, err := f.traffic.Get(f.bt.URL(path))
		if err != nil {
			t.Fatalf("GET %s (request %d of %d): %v", path, i+1, n, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s (request %d of %d): status %d from %q", path, i+1, n, resp.StatusCode, resp.Header.Get("X-Backend"))
		}
		out[resp.Header.Get("X-Backend")]++
	}
	return out
}

func wantSplit(t *testing.T, what string, got, want map[string]int) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: traffic split %v, want %v", what, got, want)
			return
		}
	}
	for k, v := range got {
		if want[k] == 0 && v != 0 {
			t.Errorf("%s: traffic split %v, want %v", what, got, want)
			return
		}
	}
}

// events returns the audit log through the API.
func (f *apiFixture) events(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, e := range f.api(t, "GET", "/v1/events", "").wantList(t, 200) {
		m, ok := e.(map[string]any)
		if !ok {
			t.Fatalf("GET /v1/events: entry %v is not an object", e)
		}
		out = append(out, m)
	}
	return out
}

// wantEvent checks an audit entry.
func wantEvent(t *testing.T, e map[string]any, actor, action, poolName, backend string) {
	t.Helper()
	wantKeys(t, "event", e, []string{"time", "actor", "action"}, []string{"pool", "backend", "detail"})
	gotBackend := "<none>"
	if b, ok := e["backend"]; ok {
		gotBackend = fmt.Sprint(b)
	}
	if backend == "" {
		backend = "<none>"
	}
	got := fmt.Sprintf("%v %v %v %s", e["actor"], e["action"], e["pool"], gotBackend)
	if want := fmt.Sprintf("%s %s %s %s", actor, action, poolName, backend); got != want {
		t.Errorf("event %v: actor action pool backend = %q, want %q", e, got, want)
	}
	if ts, _ := e["time"].(string); ts == "" {
		t.Errorf("event %v has no time", e)
	} else if tm, err := time.Parse(time.RFC3339Nano, ts); err != nil || time.Since(tm) > time.Minute || time.Until(tm) > time.Second {
		t.Errorf("event time %q is not about now (%v)", ts, err)
	}
}

// actions lists the events' actions, newest first.
func actions(evs []map[string]any) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = fmt.Sprint(e["action"])
		if b, ok := e["backend"]; ok {
			out[i] += " " + fmt.Sprint(b)
		}
	}
	return out
}

// holdRequest sends GET /hold through baton in the background and waits
// until a backend holds it; it returns that backend's name and a channel
// with the request's final status.
func (f *apiFixture) holdRequest(t *testing.T) (string, chan int) {
	t.Helper()
	done := make(chan int, 1)
	go func() {
		resp, err := f.traffic.Get(f.bt.URL("/hold"))
		if err != nil {
			done <- -1
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case name := <-f.holding:
		return name, done
	case s := <-done:
		t.Fatalf("GET /hold answered %d before a backend held it", s)
	case <-time.After(10 * time.Second):
		t.Fatal("GET /hold did not reach a backend within 10s")
	}
	return "", nil
}

// waitHealthy polls the API until the backend is healthy.
func (f *apiFixture) waitHealthy(t *testing.T, poolName, name string) {
	t.Helper()
	var last map[string]any
	if !pollFor(10*time.Second, func() bool {
		last = f.backendJSON(t, poolName, name)
		return last["healthy"] == true && last["effective_weight"] != float64(0)
	}) {
		t.Fatalf("%s/%s not healthy within 10s: %v", poolName, name, last)
	}
}

// pollFor calls cond every 10ms until it holds or timeout passes.
func pollFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// deadAddr returns a 127.0.0.1 address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	return testbed.FreeAddr(t)
}

// everyRoute is one request per route and method of the contract, with a
// valid body where one is needed.
var everyRoute = []struct{ method, path, body string }{
	{"GET", "/v1/pools", ""},
	{"GET", "/v1/pools/shop", ""},
	{"GET", "/v1/pools/shop/backends/s1", ""},
	{"POST", "/v1/pools/shop/backends", `{"name":"s9","address":"127.0.0.1:9","version":"v1"}`},
	{"PATCH", "/v1/pools/shop/backends/s1", `{"weight":7}`},
	{"DELETE", "/v1/pools/shop/backends/s1?wait=1s", ""},
	{"POST", "/v1/pools/shop/backends/s1/drain", ""},
	{"POST", "/v1/pools/shop/backends/s1/enable", `{"version":"v2"}`},
	{"POST", "/v1/pools/shop/backends/s1/eject", ""},
	{"GET", "/v1/pools/shop/canary", ""},
	{"GET", "/v1/pools/shop/history", ""},
	{"GET", "/v1/pools/shop/backends/s1/history", ""},
	{"GET", "/v1/pools/shop/tail", ""},
	{"POST", "/v1/pools/shop/switch", `{"to":"v2","watch":"5s"}`},
	{"PUT", "/v1/pools/shop/lease", `{"holder":"rollout-1","ttl":"30s"}`},
	{"DELETE", "/v1/pools/shop/lease?holder=rollout-1", ""},
	{"PUT", "/v1/pools/shop/canary", `{"version":"v1","weight":5}`},
	{"POST", "/v1/pools/shop/canary/promote", ""},
	{"POST", "/v1/pools/shop/canary/rollback", ""},
	{"POST", "/v1/pools/shop/canary/hold", ""},
	{"POST", "/v1/pools/shop/canary/resume", ""},
	{"GET", "/v1/events", ""},
	{"GET", "/v1/no-such-route", ""},
}

// TestAPIAuth: every /v1 route answers 401 {"error","code"} without a
// valid bearer token and changes nothing; both tokens of the file work;
// /healthz and /metrics need none.
func TestAPIAuth(t *testing.T) {
	f := startAPI(t)
	bad := []string{
		"",                                    // no header
		"Bearer wrong-token-0123456789abcdef", // unknown token
		"Bearer " + tokDeployer + "x",         // a longer token
		"Bearer " + tokDeployer[:len(tokDeployer)-1], // a shorter one
		"Basic ZGVwbG95ZXI6ZGVwbG95ZXItdG9rZW4=",     // another scheme
		tokDeployer,                                  // no scheme
		"Bearer ",                                    // empty token
		"Bearer deployer",                            // the name is not the token
	}
	for _, rt := range everyRoute {
		for _, auth := range bad {
			r := f.req(t, rt.method, rt.path, auth, rt.body)
			r.what += fmt.Sprintf(" with Authorization %q", auth)
			r.wantError(t, 401, "unauthorized", []string{"token"})
			if h := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q, want a Bearer challenge", r.what, h)
			}
		}
	}
	// Nothing changed: no state file, every backend active at its weight,
	// no event.
	if data := f.stateBytes(t); data != nil {
		t.Errorf("requests without a valid token wrote the state file:\n%s", data)
	}
	for _, n := range []string{"s1", "s2", "s3"} {
		checkBackend(t, n, f.backendJSON(t, "shop", n), map[string]any{"state": "active", "weight": 100, "version": "v1"})
	}
	if evs := f.events(t); len(evs) != 0 {
		t.Errorf("requests without a valid token left events: %v", evs)
	}
	// Both tokens of the file work.
	f.as(t, tokCIBot, "GET", "/v1/pools", "").wantList(t, 200)
	f.as(t, tokDeployer, "GET", "/v1/pools", "").wantList(t, 200)

	// No token needed for liveness and metrics.
	resp, err := f.client.Get(f.url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("GET /healthz without a token: %d %q, want 200 \"ok\\n\"", resp.StatusCode, body)
	}
	resp, err = f.client.Get(f.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `baton_backend_healthy{backend="s1",pool="shop"} 1`) {
		t.Errorf("GET /metrics without a token: %d, want 200 and baton's metrics; body starts %.300q", resp.StatusCode, body)
	}
}

// TestAPIUnknownRouteAndWrongMethod: 404 JSON for a /v1 path that is no
// route, 405 JSON with Allow for a wrong method, and neither acts.
func TestAPIUnknownRouteAndWrongMethod(t *testing.T) {
	f := startAPI(t)
	for _, p := range []string{"/v1/", "/v1/nope", "/v1/pools/", "/v1/pools/shop/backends/s1/nope", "/v1/pools/shop/canary/nope"} {
		f.api(t, "GET", p, "").wantError(t, 404, "not_found", []string{p})
	}
	cases := []struct {
		method, path string
		allow        []string
	}{
		{"DELETE", "/v1/pools", []string{"GET"}},
		{"POST", "/v1/pools", []string{"GET"}},
		{"DELETE", "/v1/pools/shop", []string{"GET"}},
		{"GET", "/v1/pools/shop/backends", []string{"POST"}},
		{"POST", "/v1/pools/shop/backends/s1", []string{"GET", "PATCH", "DELETE"}},
		{"PUT", "/v1/pools/shop/backends/s1", []string{"GET", "PATCH", "DELETE"}},
		{"GET", "/v1/pools/shop/backends/s1/drain", []string{"POST"}},
		{"DELETE", "/v1/pools/shop/backends/s1/drain", []string{"POST"}},
		{"GET", "/v1/pools/shop/backends/s1/enable", []string{"POST"}},
		{"GET", "/v1/pools/shop/backends/s1/eject", []string{"POST"}},
		{"POST", "/v1/pools/shop/canary", []string{"GET", "PUT"}},
		{"DELETE", "/v1/pools/shop/canary", []string{"GET", "PUT"}},
		{"GET", "/v1/pools/shop/canary/promote", []string{"POST"}},
		{"GET", "/v1/pools/shop/canary/rollback", []string{"POST"}},
		{"GET", "/v1/pools/shop/canary/hold", []string{"POST"}},
		{"GET", "/v1/pools/shop/canary/resume", []string{"POST"}},
		{"POST", "/v1/events", []string{"GET"}},
		{"POST", "/v1/pools/shop/history", []string{"GET"}},
		{"GET", "/v1/pools/shop/lease", []string{"PUT", "DELETE"}},
		{"GET", "/v1/pools/shop/switch", []string{"POST"}},
	}
	for _, c := range cases {
		r := f.api(t, c.method, c.path, "")
		r.wantError(t, 405, "method_not_allowed", []string{c.method})
		var got []string
		for _, m := range strings.Split(r.header.Get("Allow"), ",") {
			if m = strings.TrimSpace(m); m != "" {
				got = append(got, m)
			}
		}
		sort.Strings(got)
		want := append([]string(nil), c.allow...)
		sort.Strings(want)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s %s: Allow %q, want %v", c.method, c.path, r.header.Get("Allow"), c.allow)
		}
	}
	// A wrong method acted on nothing.
	if data := f.stateBytes(t); data != nil {
		t.Errorf("405 answers wrote the state file:\n%s", data)
	}
	checkBackend(t, "s1", f.backendJSON(t, "shop", "s1"), map[string]any{"state": "active"})
}

// TestAPIReadShapes: GET pools, pool and backend answer with the contract's
// fields and the live figures; unknown pools and backends are 404
// unknown_pool / unknown_backend on every route.
func TestAPIReadShapes(t *testing.T) {
	f := startAPI(t)
	wantSplit(t, "GET /web", f.send(t, 3, "/web/x"), map[string]int{"w1": 3})

	pools := f.api(t, "GET", "/v1/pools", "").wantList(t, 200)
	if len(pools) != 2 {
		t.Fatalf("GET /v1/pools: %d pools, want 2", len(pools))
	}
	for i, name := range []string{"shop", "web"} {
		p, _ := pools[i].(map[string]any)
		wantKeys(t, "pool "+name, p, poolFields, nil)
		if p["name"] != name || p["stable_version"] != "v1" || p["canary"] != nil {
			t.Errorf("pool %d: name %v stable_version %v canary %v; want %s, v1, null", i, p["name"], p["stable_version"], p["canary"], name)
		}
	}
	shop := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)
	wantKeys(t, "GET /v1/pools/shop", shop, poolFields, nil)
	bs, _ := shop["backends"].([]any)
	if len(bs) != 3 {
		t.Fatalf("pool shop has %d backends, want 3: %v", len(bs), shop["backends"])
	}
	for i, n := range []string{"s1", "s2", "s3"} {
		b, _ := bs[i].(map[string]any)
		checkBackend(t, "shop backend "+n, b, map[string]any{"name": n, "address": f.addr[n], "version": "v1", "weight": 100,
			"effective_weight": 100, "state": "active", "healthy": true, "inflight": 0, "open_connections": 0, "requests": 0, "errors": 0})
	}
	w1 := f.backendJSON(t, "web", "w1")
	checkBackend(t, "GET web/w1", w1, map[string]any{"name": "w1", "address": f.addr["w1"], "version": "v1", "weight": 100,
		"effective_weight": 100, "state": "active", "healthy": true, "inflight": 0, "requests": 3, "errors": 0})
	if n, _ := w1["open_connections"].(float64); n != 1 {
		t.Errorf("web/w1 open_connections %v after 3 keep-alive requests, want 1 (one pooled connection)", w1["open_connections"])
	}

	for _, rt := range everyRoute {
		if !strings.Contains(rt.path, "/shop") {
			continue
		}
		p := strings.Replace(rt.path, "/shop", "/nope", 1)
		f.api(t, rt.method, p, rt.body).wantError(t, 404, "unknown_pool", []string{`"nope"`})
		if strings.Contains(p, "/backends/s1") {
			p = strings.Replace(rt.path, "/backends/s1", "/backends/ghost", 1)
			f.api(t, rt.method, p, rt.body).wantError(t, 404, "unknown_backend", []string{`"ghost"`})
		}
	}
	if data := f.stateBytes(t); data != nil {
		t.Errorf("404 answers wrote the state file:\n%s", data)
	}
}

// TestAPIBadInput: malformed JSON, unknown fields and bad values answer 400
// with a reason, and change nothing.
func TestAPIBadInput(t *testing.T) {
	f := startAPI(t)
	const b = "/v1/pools/shop/backends"
	cases := []struct {
		method, path, body, code string
		mentions                 []string
	}{
		{"POST", b, `{"name":"s4","address":`, "invalid_json", []string{"JSON"}},
		{"POST", b, `not json`, "invalid_json", []string{"JSON"}},
		{"POST", b, ``, "invalid_json", []string{"JSON body"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1","colour":"red"}`, "invalid_json", []string{"colour"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1"} {"name":"s5"}`, "invalid_json", []string{"after"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1","weight":"heavy"}`, "invalid_json", []string{"weight"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1","version":"v1","weight":5000}`, "invalid_value", []string{"weight", "5000"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1","version":"v1","weight":-1}`, "invalid_value", []string{"weight"}},
		{"POST", b, `{"name":"s4","address":"no-port","version":"v1"}`, "invalid_value", []string{"address", "no-port"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:99999","version":"v1"}`, "invalid_value", []string{"port"}},
		{"POST", b, `{"name":"s4","address":"bad host!:80","version":"v1"}`, "invalid_value", []string{"host"}},
		{"POST", b, `{"name":"s4","version":"v1"}`, "invalid_value", []string{"address"}},
		{"POST", b, `{"name":"bad name","address":"127.0.0.1:1","version":"v1"}`, "invalid_value", []string{"name"}},
		{"POST", b, `{"address":"127.0.0.1:1","version":"v1"}`, "invalid_value", []string{"name"}},
		{"POST", b, `{"name":"s4","address":"127.0.0.1:1","version":"v 2"}`, "invalid_value", []string{"version", "v 2"}},
		{"PATCH", b + "/s1", `{"weight":5000}`, "invalid_value", []string{"weight", "5000"}},
		{"PATCH", b + "/s1", `{"weight":-3}`, "invalid_value", []string{"weight"}},
		{"PATCH", b + "/s1", `{"weight":1.5}`, "invalid_json", []string{"weight"}},
		{"PATCH", b + "/s1", `{"address":"nope"}`, "invalid_value", []string{"address"}},
		{"PATCH", b + "/s1", `{"version":"v/2"}`, "invalid_value", []string{"version"}},
		{"PATCH", b + "/s1", `{"version":""}`, "invalid_value", []string{"version"}},
		{"PATCH", b + "/s1", `{}`, "invalid_value", []string{"weight, version or address"}},
		{"PATCH", b + "/s1", `{"wieght":5}`, "invalid_json", []string{"wieght"}},
		{"PATCH", b + "/s1", `{"weight":`, "invalid_json", []string{"JSON"}},
		{"PATCH", b + "/s1", ``, "invalid_json", []string{"JSON body"}},
		{"POST", b + "/s1/drain?wait=abc", ``, "invalid_wait", []string{"wait", "abc"}},
		{"POST", b + "/s1/drain?wait=0", ``, "invalid_wait", []string{"wait"}},
		{"POST", b + "/s1/drain?wait=0s", ``, "invalid_wait", []string{"wait"}},
		{"POST", b + "/s1/drain?wait=-5s", ``, "invalid_wait", []string{"wait"}},
		{"POST", b + "/s1/drain?wait=30", ``, "invalid_wait", []string{"wait"}},
		{"POST", b + "/s1/drain?wait=2h", ``, "invalid_wait", []string{"wait"}},
		{"DELETE", b + "/s1?wait=abc", ``, "invalid_wait", []string{"wait"}},
		{"DELETE", b + "/s1?wait=0", ``, "invalid_wait", []string{"wait"}},
		{"POST", b + "/s1/enable", `{"version":"v 2"}`, "invalid_value", []string{"version"}},
		{"POST", b + "/s1/enable", `{"weight":5000}`, "invalid_value", []string{"weight"}},
		{"POST", b + "/s1/enable", `{"version":"v2","colour":"red"}`, "invalid_json", []string{"colour"}},
		{"POST", b + "/s1/enable", `{"version":`, "invalid_json", []string{"JSON"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":150}`, "invalid_value", []string{"weight", "150"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":-1}`, "invalid_value", []string{"weight"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v2"}`, "invalid_value", []string{"weight"}},
		{"PUT", "/v1/pools/shop/canary", `{"weight":10}`, "invalid_value", []string{"version"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v/2","weight":10}`, "invalid_value", []string{"version"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":10,"step":1}`, "invalid_json", []string{"step"}},
		{"PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":"10%"}`, "invalid_json", []string{"weight"}},
		{"PUT", "/v1/pools/shop/canary", ``, "invalid_json", []string{"JSON body"}},
		{"GET", "/v1/events?limit=0", ``, "invalid_value", []string{"limit"}},
		{"GET", "/v1/events?limit=abc", ``, "invalid_value", []string{"limit"}},
	}
	for _, c := range cases {
		r := f.api(t, c.method, c.path, c.body)
		r.what += " " + c.body
		r.wantError(t, 400, c.code, c.mentions)
	}
	// Nothing changed.
	if data := f.stateBytes(t); data != nil {
		t.Errorf("400 answers wrote the state file:\n%s", data)
	}
	for _, n := range []string{"s1", "s2", "s3"} {
		checkBackend(t, n, f.backendJSON(t, "shop", n), map[string]any{"state": "active", "weight": 100, "version": "v1", "address": f.addr[n]})
	}
	if _, err := f.bt.Reg.Backend("shop", "s4"); err == nil {
		t.Errorf("a rejected add left backend s4 in the pool")
	}
	if p := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200); p["canary"] != nil {
		t.Errorf("a rejected request started a canary: %v", p["canary"])
	}
	if evs := f.events(t); len(evs) != 0 {
		t.Errorf("rejected requests left events: %v", actions(evs))
	}
}

// TestAPIAddPatchDelete: add answers 201 and persists, a name or address in
// use is 409, PATCH changes weight and address (and traffic follows),
// DELETE removes (with ?wait: 200 once idle; then 404).
func TestAPIAddPatchDelete(t *testing.T) {
	f := startAPI(t)
	add := fmt.Sprintf(`{"name":"s4","address":%q,"version":"v1","weight":50}`, f.spare)
	r := f.api(t, "POST", "/v1/pools/shop/backends", add)
	checkBackend(t, "POST add s4", r.want(t, 201), map[string]any{"name": "s4", "address": f.spare, "version": "v1", "weight": 50, "state": "active"})
	st := f.state(t)
	if bs := backendState(st, "shop", "s4"); !bs.Added || bs.Address != f.spare || bs.Version != "v1" || weightOf(bs) != "50" {
		t.Errorf("after the add answered, the state file has s4 = %+v (weight %s), want added at %s, v1, weight 50", bs, weightOf(bs), f.spare)
	}
	if evs := f.events(t); len(evs) != 1 {
		t.Errorf("events after an add: %v", actions(evs))
	} else {
		wantEvent(t, evs[0], "deployer", "add", "shop", "s4")
	}
	f.waitHealthy(t, "shop", "s4")

	// The same add again holds already: 200, nothing changes. The same
	// name with another address, or the same address under another name:
	// 409.
	before := f.stateBytes(t)
	checkBackend(t, "repeated add", f.api(t, "POST", "/v1/pools/shop/backends", add).want(t, 200), map[string]any{"name": "s4"})
	f.api(t, "POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"s4","address":%q,"version":"v1"}`, deadAddr(t))).
		wantError(t, 409, "backend_exists", []string{`"s4"`})
	f.api(t, "POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"s1","address":%q,"version":"v1"}`, deadAddr(t))).
		wantError(t, 409, "backend_exists", []string{`"s1"`})
	f.api(t, "POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"s5","address":%q,"version":"v1"}`, f.addr["s1"])).
		wantError(t, 409, "address_in_use", []string{f.addr["s1"]})
	f.stateUnchanged(t, "refused adds", before)

	// PATCH the weight: persisted, and traffic follows 300:100:100:50.
	r = f.api(t, "PATCH", "/v1/pools/shop/backends/s1", `{"weight":300}`)
	checkBackend(t, "PATCH s1 weight", r.want(t, 200), map[string]any{"name": "s1", "weight": 300, "effective_weight": 300})
	if bs := backendState(f.state(t), "shop", "s1"); weightOf(bs) != "300" {
		t.Errorf("after PATCH weight answered, the state file has s1 weight %s, want 300", weightOf(bs))
	}
	wantSplit(t, "weights 300/100/100/50", f.send(t, 110, "/"), map[string]int{"s1": 60, "s2": 20, "s3": 20, "s4": 10})
	// The same again is no change.
	nEvents := len(f.events(t))
	before = f.stateBytes(t)
	checkBackend(t, "PATCH s1 weight again", f.api(t, "PATCH", "/v1/pools/shop/backends/s1", `{"weight":300}`).want(t, 200), map[string]any{"weight": 300})
	f.stateUnchanged(t, "a repeated PATCH", before)
	if n := len(f.events(t)); n != nEvents {
		t.Errorf("a PATCH that changed nothing was recorded as an event")
	}

	// PATCH the address: a new server, no traffic until it passes a check
	// (this one never does).
	dead := deadAddr(t)
	r = f.api(t, "PATCH", "/v1/pools/shop/backends/s3", fmt.Sprintf(`{"address":%q}`, dead))
	checkBackend(t, "PATCH s3 address", r.want(t, 200), map[string]any{"address": dead, "healthy": false, "effective_weight": 0})
	if bs := backendState(f.state(t), "shop", "s3"); bs.Address != dead {
		t.Errorf("after PATCH address answered, the state file has s3 address %q, want %q", bs.Address, dead)
	}
	got := f.send(t, 90, "/")
	if got["s3"] != 0 || got["s1"]+got["s2"]+got["s4"] != 90 {
		t.Errorf("with s3 moved to a dead address: split %v; want nothing on s3", got)
	}

	// DELETE with wait: 200 once idle, then 404 and gone from the pool.
	r = f.api(t, "DELETE", "/v1/pools/shop/backends/s3?wait=5s", "")
	checkBackend(t, "DELETE s3?wait", r.want(t, 200), map[string]any{"name": "s3", "inflight": 0, "open_connections": 0})
	if bs := backendState(f.state(t), "shop", "s3"); !bs.Removed {
		t.Errorf("after DELETE answered, the state file has s3 = %+v, want removed", bs)
	}
	f.api(t, "GET", "/v1/pools/shop/backends/s3", "").wantError(t, 404, "unknown_backend", []string{`"s3"`})
	f.api(t, "DELETE", "/v1/pools/shop/backends/s3", "").wantError(t, 404, "unknown_backend", []string{`"s3"`})

	// DELETE without wait: 202; a backend added at runtime leaves no trace
	// in the state file.
	r = f.api(t, "DELETE", "/v1/pools/shop/backends/s4", "")
	checkBackend(t, "DELETE s4", r.want(t, 202), map[string]any{"name": "s4"})
	st = f.state(t)
	if ps := poolState(st, "shop"); ps.Backends["s4"] != nil {
		t.Errorf("after DELETE of the added s4, the state file still has %+v", *ps.Backends["s4"])
	}
	f.api(t, "GET", "/v1/pools/shop/backends/s4", "").wantError(t, 404, "unknown_backend", []string{`"s4"`})
	var names []string
	for _, b := range f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)["backends"].([]any) {
		names = append(names, fmt.Sprint(b.(map[string]any)["name"]))
	}
	if strings.Join(names, ",") != "s1,s2" {
		t.Errorf("pool shop lists backends %v after the removals, want s1,s2", names)
	}
	wantSplit(t, "after the removals", f.send(t, 80, "/"), map[string]int{"s1": 60, "s2": 20})

	want := []string{"remove s4", "remove s3", "patch s3", "patch s1", "add s4"}
	evs := f.events(t)
	if strings.Join(actions(evs), ",") != strings.Join(want, ",") {
		t.Errorf("events %v, want %v (newest first)", actions(evs), want)
	}
	for _, e := range evs {
		if e["actor"] != "deployer" || e["pool"] != "shop" {
			t.Errorf("event %v: want actor deployer, pool shop", e)
		}
	}
}

// TestAPIAddWithoutVersionJoinsStable: the contract's add takes {name,
// address, version, weight}. A backend added without a version to a pool
// that runs v1 is either another server of v1 (201, version v1, no canary)
// or refused with a 400 that asks for the version; it must not silently
// start a canary of a made-up version.
func TestAPIAddWithoutVersionJoinsStable(t *testing.T) {
	f := startAPI(t)
	r := f.api(t, "POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"s4","address":%q}`, f.spare))
	if r.status == 400 {
		r.wantError(t, 400, "invalid_value", []string{"version"})
		if data := f.stateBytes(t); data != nil {
			t.Errorf("a refused add wrote the state file:\n%s", data)
		}
		return
	}
	b := r.want(t, 201)
	if b["version"] != "v1" {
		t.Errorf("a backend added without a version to pool shop (stable v1) runs %q, want v1 (or a 400 asking for the version)", b["version"])
	}
	c := f.api(t, "GET", "/v1/pools/shop/canary", "").want(t, 200)
	if v, _ := c["canary_version"].(string); v != "" {
		t.Errorf("adding a backend without a version started canary %q at %v%%", v, c["weight"])
	}
	if ps := poolState(f.state(t), "shop"); ps.Canary != nil && ps.Canary.Version != "" {
		t.Errorf("the state file records canary %+v after an add without a version", *ps.Canary)
	}
}

// TestAPIDrainWait: with ?wait, drain answers 200 only once nothing is in
// flight and no connection is open, 504 wait_timeout (with what is left)
// while a request is held; the drain stays in force; without wait 202, or
// 200 when already drained. Repeats are 200 and no new event.
func TestAPIDrainWait(t *testing.T) {
	f := startAPI(t)
	held, heldDone := f.holdRequest(t)
	path := "/v1/pools/shop/backends/" + held + "/drain"

	r := f.api(t, "POST", path+"?wait=300ms", "")
	e := r.wantError(t, 504, "wait_timeout", []string{held, "stays in force"}, "inflight", "open_connections")
	if e["inflight"] != float64(1) || e["open_connections"] != float64(1) {
		t.Errorf("504 with one request held: inflight %v, open_connections %v; want 1 and 1", e["inflight"], e["open_connections"])
	}
	if bs := backendState(f.state(t), "shop", held); bs.State != pool.Draining {
		t.Errorf("after the 504, the state file has %s = %+v, want draining (the drain stays in force)", held, bs)
	}
	checkBackend(t, "GET "+held, f.backendJSON(t, "shop", held), map[string]any{"state": "draining", "effective_weight": 0, "inflight": 1})
	if got := f.send(t, 40, "/"); got[held] != 0 {
		t.Errorf("draining %s still got requests: %v", held, got)
	}

	// A long wait in the background must not answer while the request is
	// held.
	type answer struct {
		status int
		body   []byte
	}
	long := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("POST", f.url+path+"?wait=20s", nil)
		req.Header.Set("Authorization", "Bearer "+tokDeployer)
		req.Header.Set("Content-Type", "application/json")
		resp, err := f.client.Do(req)
		if err != nil {
			long <- answer{status: -1, body: []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		long <- answer{resp.StatusCode, body}
	}()
	// Without wait: 202 while draining; no new event.
	checkBackend(t, "drain without wait", f.api(t, "POST", path, "").want(t, 202), map[string]any{"state": "draining", "inflight": 1})
	f.api(t, "POST", path+"?wait=200ms", "").wantError(t, 504, "wait_timeout", nil, "inflight", "open_connections")
	select {
	case a := <-long:
		t.Fatalf("drain?wait=20s answered %d while a request was still held: %s", a.status, a.body)
	default:
	}

	f.releaseHeld()
	select {
	case s := <-heldDone:
		if s != 200 {
			t.Errorf("the held request ended with %d, want 200 (a drain lets in-flight requests finish)", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not finish within 10s of its release")
	}
	select {
	case a := <-long:
		if a.status != 200 {
			t.Fatalf("drain?wait=20s after the release: %d %s, want 200", a.status, a.body)
		}
		var b map[string]any
		if err := json.Unmarshal(a.body, &b); err != nil {
			t.Fatal(err)
		}
		checkBackend(t, "drain?wait=20s", b, map[string]any{"name": held, "state": "drained", "inflight": 0, "open_connections": 0, "effective_weight": 0})
	case <-time.After(10 * time.Second):
		t.Fatal("drain?wait=20s did not answer within 10s of the release")
	}
	be, err := f.bt.Reg.Backend("shop", held)
	if err != nil {
		t.Fatal(err)
	}
	if be.Inflight() != 0 || be.OpenConns() != 0 {
		t.Errorf("after drain?wait answered 200: Inflight %d, OpenConns %d; want 0 and 0", be.Inflight(), be.OpenConns())
	}
	// Drained: without wait 200, with wait 200 at once.
	checkBackend(t, "drain of a drained backend", f.api(t, "POST", path, "").want(t, 200), map[string]any{"state": "drained"})
	checkBackend(t, "drain?wait of a drained backend", f.api(t, "POST", path+"?wait=1s", "").want(t, 200), map[string]any{"state": "drained"})
	if got := f.send(t, 40, "/"); got[held] != 0 {
		t.Errorf("drained %s got requests: %v", held, got)
	}

	// Another, idle backend: 202 without wait.
	other := "s1"
	if held == "s1" {
		other = "s2"
	}
	checkBackend(t, "drain "+other, f.api(t, "POST", "/v1/pools/shop/backends/"+other+"/drain", "").want(t, 202), map[string]any{"name": other, "state": "draining"})
	if bs := backendState(f.state(t), "shop", other); bs.State != pool.Draining {
		t.Errorf("after drain %s answered, the state file has %+v", other, bs)
	}

	evs := f.events(t)
	if want := []string{"drain " + other, "drain " + held}; strings.Join(actions(evs), ",") != strings.Join(want, ",") {
		t.Errorf("events %v, want %v: one per drain, none for the repeats", actions(evs), want)
	} else {
		wantEvent(t, evs[1], "deployer", "drain", "shop", held)
	}
}

// TestAPIDeleteWaitTimesOut: DELETE ?wait with a request held is 504 and
// the removal stays in force; once released the backend is gone.
func TestAPIDeleteWaitTimesOut(t *testing.T) {
	f := startAPI(t)
	held, heldDone := f.holdRequest(t)
	r := f.api(t, "DELETE", "/v1/pools/shop/backends/"+held+"?wait=200ms", "")
	r.wantError(t, 504, "wait_timeout", []string{held}, "inflight", "open_connections")
	if bs := backendState(f.state(t), "shop", held); !bs.Removed {
		t.Errorf("after the 504, the state file has %s = %+v, want removed", held, bs)
	}
	f.api(t, "GET", "/v1/pools/shop/backends/"+held, "").wantError(t, 404, "unknown_backend", nil)
	f.releaseHeld()
	select {
	case s := <-heldDone:
		if s != 200 {
			t.Errorf("the held request ended with %d, want 200", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not finish within 10s of its release")
	}
	if got := f.send(t, 30, "/"); got[held] != 0 {
		t.Errorf("removed %s got requests: %v", held, got)
	}
}

// TestAPIEjectEnable: eject is immediate (in-flight requests finish) and
// persisted; enable brings a backend back once it is healthy; repeats are
// 200 with no new event.
func TestAPIEjectEnable(t *testing.T) {
	f := startAPI(t)
	held, heldDone := f.holdRequest(t)
	r := f.api(t, "POST", "/v1/pools/shop/backends/"+held+"/eject", "")
	checkBackend(t, "eject "+held, r.want(t, 200), map[string]any{"name": held, "state": "ejected", "effective_weight": 0, "inflight": 1})
	if bs := backendState(f.state(t), "shop", held); bs.State != pool.Ejected {
		t.Errorf("after eject answered, the state file has %s = %+v, want ejected", held, bs)
	}
	f.releaseHeld()
	select {
	case s := <-heldDone:
		if s != 200 {
			t.Errorf("the request in flight at the ejection ended with %d, want 200", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held request did not finish within 10s of its release")
	}
	if got := f.send(t, 40, "/"); got[held] != 0 {
		t.Errorf("ejected %s got requests: %v", held, got)
	}
	before := f.stateBytes(t)
	checkBackend(t, "eject again", f.api(t, "POST", "/v1/pools/shop/backends/"+held+"/eject", "").want(t, 200), map[string]any{"state": "ejected"})
	f.stateUnchanged(t, "a second eject", before)

	// Enable: back in rotation, the state file forgets the ejection.
	checkBackend(t, "enable "+held, f.api(t, "POST", "/v1/pools/shop/backends/"+held+"/enable", "").want(t, 200), map[string]any{"state": "active"})
	if bs := backendState(f.state(t), "shop", held); bs.State != pool.Active {
		t.Errorf("after enable answered, the state file has %s = %+v, want no admin state", held, bs)
	}
	f.waitHealthy(t, "shop", held)
	wantSplit(t, "after enable", f.send(t, 60, "/"), map[string]int{"s1": 20, "s2": 20, "s3": 20})

	// Enabling an active backend changes nothing.
	before = f.stateBytes(t)
	checkBackend(t, "enable an active backend", f.api(t, "POST", "/v1/pools/shop/backends/s1/enable", "").want(t, 200), map[string]any{"state": "active", "version": "v1", "weight": 100})
	checkBackend(t, "enable {} an active backend", f.api(t, "POST", "/v1/pools/shop/backends/s1/enable", "{}").want(t, 200), map[string]any{"state": "active"})
	f.stateUnchanged(t, "enabling an active backend", before)

	// Enable with a weight.
	checkBackend(t, "enable with weight", f.api(t, "POST", "/v1/pools/shop/backends/s2/enable", `{"weight":200}`).want(t, 200), map[string]any{"weight": 200, "state": "active"})
	if bs := backendState(f.state(t), "shop", "s2"); weightOf(bs) != "200" {
		t.Errorf("after enable {weight: 200}, the state file has s2 weight %s", weightOf(bs))
	}

	// A backend enabled at an address nothing answers on gets no traffic:
	// it is not healthy.
	dead := deadAddr(t)
	f.api(t, "POST", "/v1/pools/shop/backends/s3/eject", "").want(t, 200)
	f.api(t, "PATCH", "/v1/pools/shop/backends/s3", fmt.Sprintf(`{"address":%q}`, dead)).want(t, 200)
	reqsBefore := f.backendJSON(t, "shop", "s3")["requests"]
	checkBackend(t, "enable at a dead address", f.api(t, "POST", "/v1/pools/shop/backends/s3/enable", "").want(t, 200),
		map[string]any{"state": "active", "healthy": false, "effective_weight": 0})
	got := f.send(t, 30, "/")
	if got["s3"] != 0 {
		t.Errorf("a backend enabled at a dead address got traffic: %v", got)
	}
	if b := f.backendJSON(t, "shop", "s3"); b["requests"] != reqsBefore || b["healthy"] != false {
		t.Errorf("s3 at a dead address: requests %v (before %v), healthy %v; want no request and not healthy", b["requests"], reqsBefore, b["healthy"])
	}

	want := []string{"enable s3", "patch s3", "eject s3", "enable s2", "enable " + held, "eject " + held}
	if evs := f.events(t); strings.Join(actions(evs), ",") != strings.Join(want, ",") {
		t.Errorf("events %v, want %v", actions(evs), want)
	}
}

// canaryReport gets GET /v1/pools/shop/canary and checks its shape.
func (f *apiFixture) canaryReport(t *testing.T) map[string]any {
	t.Helper()
	c := f.api(t, "GET", "/v1/pools/shop/canary", "").want(t, 200)
	checkCanaryShape(t, "GET canary", c)
	return c
}

func checkCanaryShape(t *testing.T, what string, c map[string]any) {
	t.Helper()
	if c == nil {
		t.Fatalf("%s: not an object", what)
	}
	for _, k := range []string{"pool", "stable_version", "weight", "held", "versions"} {
		if _, ok := c[k]; !ok {
			t.Errorf("%s: no field %q in %v", what, k, keysOf(c))
		}
	}
	vs, _ := c["versions"].([]any)
	for _, v := range vs {
		m, _ := v.(map[string]any)
		wantKeys(t, what+" version", m, []string{"version", "role", "requests", "errors", "error_rate", "p50_ms", "p90_ms", "p99_ms"}, nil)
	}
}

// versionRequests returns the requests the canary report counts for
// version.
func versionRequests(c map[string]any, version string) float64 {
	vs, _ := c["versions"].([]any)
	for _, v := range vs {
		m, _ := v.(map[string]any)
		if m["version"] == version {
			n, _ := m["requests"].(float64)
			return n
		}
	}
	return -1
}

func canaryLine(c map[string]any) string {
	v, _ := c["canary_version"].(string)
	return fmt.Sprintf("stable=%v canary=%s weight=%v held=%v", c["stable_version"], v, c["weight"], c["held"])
}

// TestAPICanaryLifecycle: enable --version starts a canary at the initial
// weight and the split happens; a second candidate is refused on every
// path; PUT shifts it; hold/resume; promote; rollback drains the canary's
// backends. Every change is in the state file when the answer arrives.
func TestAPICanaryLifecycle(t *testing.T) {
	f := startAPI(t)
	if got := canaryLine(f.canaryReport(t)); got != "stable=v1 canary= weight=0 held=false" {
		t.Errorf("before any canary: %s", got)
	}
	// PUT to the stable version, or to a version no backend runs: 409.
	f.api(t, "PUT", "/v1/pools/shop/canary", `{"version":"v1","weight":10}`).wantError(t, 409, "already_stable", []string{"v1", "stable"})
	f.api(t, "PUT", "/v1/pools/shop/canary", `{"version":"v9","weight":10}`).wantError(t, 409, "version_not_running", []string{"v9", "enable or add"})
	if data := f.stateBytes(t); data != nil {
		t.Errorf("refused PUTs wrote the state file:\n%s", data)
	}

	// enable {version: v2}: the canary at canary.initial_weight (20 %).
	r := f.api(t, "POST", "/v1/pools/shop/backends/s3/enable", `{"version":"v2"}`)
	checkBackend(t, "enable s3 v2", r.want(t, 200), map[string]any{"name": "s3", "version": "v2", "state": "active"})
	st := f.state(t)
	if ps := poolState(st, "shop"); ps.Canary == nil || ps.Canary.Version != "v2" || ps.Canary.Weight != 20 || backendState(st, "shop", "s3").Version != "v2" {
		t.Errorf("after enable v2 answered, the state file has pool shop %+v, s3 %+v; want canary v2 at 20 and s3 at v2", ps, backendState(st, "shop", "s3"))
	}
	if got := canaryLine(f.canaryReport(t)); got != "stable=v1 canary=v2 weight=20 held=false" {
		t.Errorf("after enable s3 v2: %s; want canary v2 at 20", got)
	}
	pc, _ := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)["canary"].(map[string]any)
	if pc["version"] != "v2" || pc["weight"] != float64(20) {
		t.Errorf("GET pool shop: canary %v, want version v2, weight 20", pc)
	}
	wantSplit(t, "canary v2 at 20%", f.send(t, 100, "/"), map[string]int{"s1": 40, "s2": 40, "s3": 20})
	c := f.canaryReport(t)
	if versionRequests(c, "v2") != 20 || versionRequests(c, "v1") != 80 {
		t.Errorf("canary report after 100 requests: v1 %g, v2 %g requests; want 80 and 20", versionRequests(c, "v1"), versionRequests(c, "v2"))
	}

	// A second, different candidate: 409 on every path, nothing changes.
	before := f.stateBytes(t)
	hint := []string{"v2", "v3", "promote or roll it back"}
	f.api(t, "POST", "/v1/pools/shop/backends/s2/enable", `{"version":"v3"}`).wantError(t, 409, "canary_running", hint)
	f.api(t, "POST", "/v1/pools/shop/backends", fmt.Sprintf(`{"name":"s4","address":%q,"version":"v3"}`, f.spare)).wantError(t, 409, "canary_running", hint)
	f.api(t, "PATCH", "/v1/pools/shop/backends/s2", `{"version":"v3"}`).wantError(t, 409, "canary_running", hint)
	f.api(t, "PUT", "/v1/pools/shop/canary", `{"version":"v3","weight":10}`).wantError(t, 409, "canary_running", hint)
	f.api(t, "PUT", "/v1/pools/shop/canary", `{"version":"v1","weight":10}`).wantError(t, 409, "already_stable", []string{"stable"})
	f.stateUnchanged(t, "refused second candidates", before)
	checkBackend(t, "s2 after refusals", f.backendJSON(t, "shop", "s2"), map[string]any{"version": "v1", "state": "active"})
	if _, err := f.bt.Reg.Backend("shop", "s4"); err == nil {
		t.Errorf("a refused add left s4 in the pool")
	}

	// PUT shifts the share.
	c = f.api(t, "PUT", "/v1/pools/shop/canary", `{"version":"v2","weight":50}`).want(t, 200)
	checkCanaryShape(t, "PUT canary", c)
	if got := canaryLine(c); got != "stable=v1 canary=v2 weight=50 held=false" {
		t.Errorf("PUT canary v2 50: %s", got)
	}
	if ps := poolState(f.state(t), "shop"); ps.Canary == nil || ps.Canary.Weight != 50 {
		t.Errorf("after PUT answered, the state file has canary %+v, want weight 50", ps.Canary)
	}
	wantSplit(t, "canary v2 at 50%", f.send(t, 100, "/"), map[string]int{"s1": 25, "s2": 25, "s3": 50})

	// hold / resume, each idempotent.
	c = f.api(t, "POST", "/v1/pools/shop/canary/hold", "").want(t, 200)
	if c["held"] != true || !poolState(f.state(t), "shop").Held {
		t.Errorf("after hold: held %v, state file held %v; want true, true", c["held"], poolState(f.state(t), "shop").Held)
	}
	if pc, _ := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)["canary"].(map[string]any); pc["held"] != true {
		t.Errorf("GET pool shop after hold: canary %v, want held", pc)
	}
	before = f.stateBytes(t)
	if c = f.api(t, "POST", "/v1/pools/shop/canary/hold", "").want(t, 200); c["held"] != true {
		t.Errorf("hold again: held %v", c["held"])
	}
	f.stateUnchanged(t, "a second hold", before)
	c = f.api(t, "POST", "/v1/pools/shop/canary/resume", "").want(t, 200)
	if c["held"] != false || poolState(f.state(t), "shop").Held {
		t.Errorf("after resume: held %v, state file held %v; want false, false", c["held"], poolState(f.state(t), "shop").Held)
	}
	if c = f.api(t, "POST", "/v1/pools/shop/canary/resume", "").want(t, 200); c["held"] != false {
		t.Errorf("resume again: held %v", c["held"])
	}

	// promote: v2 is stable, no canary; the old servers keep serving.
	c = f.api(t, "POST", "/v1/pools/shop/canary/promote", "").want(t, 200)
	checkCanaryShape(t, "promote", c)
	if got := canaryLine(c); got != "stable=v2 canary= weight=0 held=false" {
		t.Errorf("promote: %s; want stable v2 and no canary", got)
	}
	if ps := poolState(f.state(t), "shop"); ps.StableVersion != "v2" || (ps.Canary != nil && ps.Canary.Version != "") {
		t.Errorf("after promote answered, the state file has pool shop %+v, want stable v2 and no canary", ps)
	}
	p := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)
	if p["stable_version"] != "v2" || p["canary"] != nil {
		t.Errorf("GET pool shop after promote: stable %v canary %v", p["stable_version"], p["canary"])
	}
	wantSplit(t, "after promote", f.send(t, 90, "/"), map[string]int{"s1": 30, "s2": 30, "s3": 30})
	before = f.stateBytes(t)
	f.api(t, "POST", "/v1/pools/shop/canary/promote", "").wantError(t, 409, "no_canary", []string{"no canary"})
	// rollback without a canary: 200, nothing changes.
	if got := canaryLine(f.api(t, "POST", "/v1/pools/shop/canary/rollback", "").want(t, 200)); got != "stable=v2 canary= weight=0 held=false" {
		t.Errorf("rollback with no canary: %s", got)
	}
	f.stateUnchanged(t, "promote with no canary and rollback with no canary", before)

	// A new canary, rolled back: no traffic at once, its backends drained.
	checkBackend(t, "enable s1 v3", f.api(t, "POST", "/v1/pools/shop/backends/s1/enable", `{"version":"v3"}`).want(t, 200), map[string]any{"version": "v3"})
	if got := canaryLine(f.canaryReport(t)); got != "stable=v2 canary=v3 weight=20 held=false" {
		t.Errorf("enable s1 v3 after the promotion: %s; want canary v3 at 20", got)
	}
	c = f.api(t, "POST", "/v1/pools/shop/canary/rollback", "").want(t, 200)
	if got := canaryLine(c); got != "stable=v2 canary= weight=0 held=false" {
		t.Errorf("rollback: %s", got)
	}
	st = f.state(t)
	if ps := poolState(st, "shop"); (ps.Canary != nil && ps.Canary.Version != "") || backendState(st, "shop", "s1").State != pool.Draining {
		t.Errorf("after rollback answered, the state file has canary %+v, s1 %+v; want no canary and s1 draining", ps.Canary, backendState(st, "shop", "s1"))
	}
	if b := f.backendJSON(t, "shop", "s1"); b["state"] != "draining" && b["state"] != "drained" {
		t.Errorf("s1 after the rollback: state %v, want draining or drained", b["state"])
	}
	wantSplit(t, "after rollback", f.send(t, 60, "/"), map[string]int{"s2": 30, "s3": 30})
	before = f.stateBytes(t)
	f.api(t, "POST", "/v1/pools/shop/canary/rollback", "").want(t, 200)
	f.stateUnchanged(t, "a second rollback", before)

	want := []string{"rollback", "enable s1", "promote", "resume", "hold", "canary", "enable s3"}
	evs := f.events(t)
	if strings.Join(actions(evs), ",") != strings.Join(want, ",") {
		t.Errorf("events %v, want %v (newest first, none for repeats or refusals)", actions(evs), want)
	} else {
		wantEvent(t, evs[0], "deployer", "rollback", "shop", "")
		wantEvent(t, evs[6], "deployer", "enable", "shop", "s3")
	}
}

// TestAPICanaryReportHasContractFields: the contract's canary report has
// step, verdict (pass, hold, fail, inconclusive), the reason and error
// signatures; the pool listing's canary has the verdict.
func TestAPICanaryReportHasContractFields(t *testing.T) {
	f := startAPI(t)
	f.api(t, "POST", "/v1/pools/shop/backends/s3/enable", `{"version":"v2"}`).want(t, 200)
	f.send(t, 20, "/")
	c := f.api(t, "GET", "/v1/pools/shop/canary", "").want(t, 200)
	for _, k := range []string{"step", "verdict", "reason"} {
		if _, ok := c[k]; !ok {
			t.Errorf("GET /v1/pools/shop/canary has no %q (fields: %v)", k, keysOf(c))
		}
	}
	switch c["verdict"] {
	case "pass", "hold", "fail", "inconclusive":
	default:
		t.Errorf("GET /v1/pools/shop/canary: verdict %v, want pass, hold, fail or inconclusive", c["verdict"])
	}
	sig := false
	for k := range c {
		sig = sig || strings.Contains(k, "signature")
	}
	if !sig {
		t.Errorf("GET /v1/pools/shop/canary has no error signatures (fields: %v)", keysOf(c))
	}
	pc, _ := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)["canary"].(map[string]any)
	if _, ok := pc["verdict"]; !ok {
		t.Errorf("GET /v1/pools/shop: canary %v has no verdict", pc)
	}
}

// TestAPIEvents: the audit log names the token, the action, the pool and
// the backend, newest first; reads and refusals are not events.
func TestAPIEvents(t *testing.T) {
	f := startAPI(t)
	f.as(t, tokDeployer, "POST", "/v1/pools/shop/backends/s1/drain", "").want(t, 202)
	f.as(t, tokCIBot, "POST", "/v1/pools/shop/backends/s2/eject", "").want(t, 200)
	f.as(t, tokCIBot, "POST", "/v1/pools/shop/canary/hold", "").want(t, 200)
	f.as(t, tokDeployer, "PATCH", "/v1/pools/web/backends/w1", `{"weight":7}`).want(t, 200)
	// Not events: reads, refusals, bad input, repeats.
	f.as(t, tokCIBot, "GET", "/v1/pools", "").wantList(t, 200)
	f.as(t, tokCIBot, "POST", "/v1/pools/shop/canary/promote", "").wantError(t, 409, "no_canary", nil)
	f.as(t, tokCIBot, "PATCH", "/v1/pools/shop/backends/s3", `{"weight":5000}`).wantError(t, 400, "invalid_value", nil)
	f.as(t, tokCIBot, "POST", "/v1/pools/shop/backends/s2/eject", "").want(t, 200)

	evs := f.events(t)
	if len(evs) != 4 {
		t.Fatalf("%d events, want 4: %v", len(evs), actions(evs))
	}
	wantEvent(t, evs[0], "deployer", "patch", "web", "w1")
	wantEvent(t, evs[1], "ci-bot", "hold", "shop", "")
	wantEvent(t, evs[2], "ci-bot", "eject", "shop", "s2")
	wantEvent(t, evs[3], "deployer", "drain", "shop", "s1")
	if d, _ := evs[0]["detail"].(string); !strings.Contains(d, "weight 7") {
		t.Errorf("patch event detail %q, want it to say weight 7", d)
	}
	for i := 1; i < len(evs); i++ {
		a, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(evs[i-1]["time"]))
		b, _ := time.Parse(time.RFC3339Nano, fmt.Sprint(evs[i]["time"]))
		if a.Before(b) {
			t.Errorf("events are not newest first: %v before %v", evs[i-1]["time"], evs[i]["time"])
		}
	}
	lim := f.api(t, "GET", "/v1/events?limit=2", "").wantList(t, 200)
	if len(lim) != 2 || fmt.Sprint(lim[0].(map[string]any)["action"]) != "patch" || fmt.Sprint(lim[1].(map[string]any)["action"]) != "hold" {
		t.Errorf("GET /v1/events?limit=2: %v, want the 2 newest (patch, hold)", lim)
	}
}

// TestAPIPersistFailureChangesNothing: a decision that cannot be written to
// the state file is refused (500) and not applied.
func TestAPIPersistFailureChangesNothing(t *testing.T) {
	f := startAPI(t)
	dir := filepath.Dir(f.stateFile)
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	f.api(t, "POST", "/v1/pools/shop/backends/s1/drain", "").wantError(t, 500, "persist_failed", []string{"nothing changed"})
	f.api(t, "PATCH", "/v1/pools/shop/backends/s2", `{"weight":5}`).wantError(t, 500, "persist_failed", nil)
	checkBackend(t, "s1", f.backendJSON(t, "shop", "s1"), map[string]any{"state": "active"})
	checkBackend(t, "s2", f.backendJSON(t, "shop", "s2"), map[string]any{"weight": 100})
	if evs := f.events(t); len(evs) != 0 {
		t.Errorf("unsaved decisions left events: %v", actions(evs))
	}
	wantSplit(t, "after unsaved decisions", f.send(t, 30, "/"), map[string]int{"s1": 10, "s2": 10, "s3": 10})
	// Once the directory is back, the same drain works and is saved.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.api(t, "POST", "/v1/pools/shop/backends/s1/drain", "").want(t, 202)
	if bs := backendState(f.state(t), "shop", "s1"); bs.State != pool.Draining {
		t.Errorf("state file after the drain: s1 = %+v", bs)
	}
}

// TestLoadTokens: name:token lines, comments and blank lines; every problem
// with its line; an empty file is an error.
func TestLoadTokens(t *testing.T) {
	write := func(content string) string {
		p := filepath.Join(t.TempDir(), "tokens")
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("# deploy tokens\n\ndeployer:0123456789abcdef\n   # indented comment\n  ci-bot : token:with:colons-0123  \r\nx@y.z:abcdefghijklmnopqrstuvwxyz\n")
	toks, err := admin.LoadTokens(good)
	if err != nil {
		t.Fatalf("LoadTokens of a good file: %v", err)
	}
	var names []string
	for _, tk := range toks {
		names = append(names, tk.Name)
	}
	if strings.Join(names, ",") != "deployer,ci-bot,x@y.z" {
		t.Errorf("token names %v, want deployer, ci-bot, x@y.z in file order", names)
	}

	cases := []struct {
		name, content string
		mentions      []string
		not           []string
	}{
		{"missing colon", "deployer:0123456789abcdef\njust-a-token-0123456789\n", []string{":2: want name:token"}, []string{":1:"}},
		{"short token", "# c\nci:0123456789abcde\n", []string{":2:", `"ci"`, "shorter than 16"}, nil},
		{"empty token", "ci:\n", []string{":1:", "shorter than 16"}, nil},
		{"duplicate name", "a:0123456789abcdef\n\n# c\na:fedcba9876543210\n", []string{":4:", `"a"`, "already on line 1"}, nil},
		{"bad name", "bad name:0123456789abcdef\n", []string{":1:", `"bad name"`}, nil},
		{"empty name", ":0123456789abcdef\n", []string{":1:"}, nil},
		{"several problems", "nocolon\nok:0123456789abcdef\nshort:abc\n", []string{":1: want name:token", ":3:", "shorter than 16"}, []string{":2:"}},
		{"empty file", "", []string{"no token"}, nil},
		{"only comments", "# nothing yet\n\n", []string{"no token"}, nil},
	}
	for _, c := range cases {
		p := write(c.content)
		toks, err := admin.LoadTokens(p)
		if err == nil {
			t.Errorf("%s: LoadTokens accepted %q (%d tokens)", c.name, c.content, len(toks))
			continue
		}
		msg := err.Error()
		if !strings.Contains(msg, p) {
			t.Errorf("%s: error %q does not name the file", c.name, msg)
		}
		for _, s := range c.mentions {
			if !strings.Contains(msg, s) {
				t.Errorf("%s: error %q does not mention %q", c.name, msg, s)
			}
		}
		for _, s := range c.not {
			if strings.Contains(msg, p+s) {
				t.Errorf("%s: error %q blames a good line (%s)", c.name, msg, s)
			}
		}
	}
	if _, err := admin.LoadTokens(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "token file") {
		t.Errorf("LoadTokens of a missing file: %v, want an error about the token file", err)
	}
	// Exactly 16 characters is enough.
	if toks, err := admin.LoadTokens(write("a:0123456789abcdef\n")); err != nil || len(toks) != 1 {
		t.Errorf("a 16-character token: %v, %d tokens; want accepted", err, len(toks))
	}
}

// TestAPIReenableRolledBackVersionIsCanary: after a rollback the canary's
// backend still runs the rolled-back version; enabling it again with that
// version (not the stable one) must make it the canary at the initial
// weight, not put it in front of its full share of traffic.
func TestAPIReenableRolledBackVersionIsCanary(t *testing.T) {
	f := startAPI(t)
	f.api(t, "POST", "/v1/pools/shop/backends/s3/enable", `{"version":"v2"}`).want(t, 200)
	f.api(t, "POST", "/v1/pools/shop/canary/rollback", "").want(t, 200)
	checkBackend(t, "s3 after the rollback", f.api(t, "POST", "/v1/pools/shop/backends/s3/drain?wait=5s", "").want(t, 200),
		map[string]any{"state": "drained", "version": "v2"})

	checkBackend(t, "enable s3 v2 again", f.api(t, "POST", "/v1/pools/shop/backends/s3/enable", `{"version":"v2"}`).want(t, 200),
		map[string]any{"state": "active", "version": "v2"})
	if got := canaryLine(f.canaryReport(t)); got != "stable=v1 canary=v2 weight=20 held=false" {
		t.Errorf("s3 enabled with version v2 on a pool whose stable version is v1: %s; want canary v2 at the initial 20%%", got)
	}
	if ps := poolState(f.state(t), "shop"); ps.Canary == nil || ps.Canary.Version != "v2" {
		t.Errorf("the state file has canary %+v, want v2", ps.Canary)
	}
	f.waitHealthy(t, "shop", "s3")
	wantSplit(t, "v2 re-enabled after its rollback", f.send(t, 100, "/"), map[string]int{"s1": 40, "s2": 40, "s3": 20})
}

// TestAPILease: one release per pool at a time. The holder renews its
// lease; another holder is refused with the first one's name until the
// lease is released; the lease is in the pool's JSON and the state file.
func TestAPILease(t *testing.T) {
	f := startAPI(t)
	take := func(holder, ttl string) apiResp {
		return f.api(t, "PUT", "/v1/pools/shop/lease", fmt.Sprintf(`{"holder":%q,"ttl":%q}`, holder, ttl))
	}
	l := take("rollout v2 by deployer", "30s").want(t, 200)
	wantKeys(t, "lease", l, []string{"holder", "expires"}, nil)
	first, _ := time.Parse(time.RFC3339, l["expires"].(string))
	if d := time.Until(first); d < 25*time.Second || d > 31*time.Second {
		t.Errorf("a 30s lease expires in %s", d)
	}
	take("rollout v3 by ci-bot", "30s").wantError(t, 409, "lease_held", []string{"rollout v2 by deployer", "lease"})
	renewed := take("rollout v2 by deployer", "60s").want(t, 200)
	if e, _ := time.Parse(time.RFC3339, renewed["expires"].(string)); !e.After(first) {
		t.Errorf("a renewal kept the lease until %v, not later than %v", e, first)
	}
	p := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)
	if lease, _ := p["lease"].(map[string]any); lease == nil || lease["holder"] != "rollout v2 by deployer" {
		t.Errorf("pool shop shows lease %v", p["lease"])
	}
	if ps := poolState(f.state(t), "shop"); ps == nil || ps.Lease == nil || ps.Lease.Holder != "rollout v2 by deployer" {
		t.Errorf("the lease is not in the state file: %+v", ps)
	}
	f.api(t, "DELETE", "/v1/pools/shop/lease?holder=someone", "").wantError(t, 409, "lease_not_held", []string{"rollout v2 by deployer"})
	f.api(t, "DELETE", "/v1/pools/shop/lease?holder=rollout+v2+by+deployer", "").want(t, 200)
	f.api(t, "DELETE", "/v1/pools/shop/lease?holder=rollout+v2+by+deployer", "").want(t, 200) // idempotent
	if p := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200); p["lease"] != nil {
		t.Errorf("after the release pool shop shows lease %v", p["lease"])
	}
	take("rollout v3 by ci-bot", "30s").want(t, 200)

	for _, c := range []struct{ body, mentions string }{
		{`{"holder":"x","ttl":"soon"}`, "ttl"},
		{`{"holder":"x","ttl":"0s"}`, "ttl"},
		{`{"holder":"x","ttl":"1h"}`, "ttl"},
		{`{"holder":"","ttl":"30s"}`, "holder"},
	} {
		f.api(t, "PUT", "/v1/pools/web/lease", c.body).wantError(t, 400, "invalid_value", []string{c.mentions})
	}
	f.api(t, "PUT", "/v1/pools/web/lease", `{"holder":"x","ttl":"30s","extra":1}`).wantError(t, 400, "invalid_json", []string{"extra"})
	f.api(t, "DELETE", "/v1/pools/web/lease", "").wantError(t, 400, "invalid_value", []string{"holder"})
	var actions []string
	for _, e := range f.events(t) {
		actions = append(actions, e["action"].(string))
	}
	if got := strings.Join(actions, " "); got != "lease unlease lease" && got != "lease lease unlease lease" {
		t.Errorf("events %q; want the lease taken, released, taken (renewals are no events)", got)
	}
}
