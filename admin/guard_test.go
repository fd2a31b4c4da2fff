package admin_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/internal/testbed"
)

// guardWorld is a baton with the admin API as the default config has it:
// loopback, no token file.
type guardWorld struct {
	bt  *testbed.Baton
	url string
	c   *http.Client
}

func startGuard(t *testing.T, opts ...admin.Option) *guardWorld {
	t.Helper()
	addr := testbed.NamedBackend(t, "b1")
	bt := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}}, "")))
	bt.WaitHealthy(t, "web", 1)
	srv := httptest.NewServer(admin.Handler(bt.Reg, prometheus.NewRegistry(), zerolog.Nop(), opts...))
	t.Cleanup(srv.Close)
	return &guardWorld{bt: bt, url: srv.URL, c: &http.Client{Timeout: 5 * time.Second}}
}

// send makes one request; headers are name, value pairs ("Host" sets the
// Host header).
func (g *guardWorld) send(t *testing.T, method, path, body string, headers ...string) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, g.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := g.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	var out map[string]any
	_ = json.Unmarshal(data, &out)
	return res.StatusCode, out
}

func (g *guardWorld) backends(t *testing.T) int {
	t.Helper()
	return len(g.bt.Pool(t, "web").Backends())
}

// TestAdminRefusesWhatAWebPageCouldSend: with the default config (loopback,
// no token), a page in the operator's browser cannot drive the API: a
// "simple" cross-site POST (text/plain, form) is refused, so is anything a
// browser marks as from another site, and a Host that is not a loopback
// name (DNS rebinding). Scripts and the same-origin dashboard pass; every
// refusal is audited and changes nothing.
func TestAdminRefusesWhatAWebPageCouldSend(t *testing.T) {
	g := startGuard(t)
	evil := `{"name":"evil","address":"127.0.0.1:9","version":"v1"}`

	// The attack of the report: a cross-site text/plain POST.
	st, body := g.send(t, "POST", "/v1/pools/web/backends", evil, "Origin", "https://attacker.example", "Content-Type", "text/plain")
	if st != 403 || body["code"] != "cross_site" || !strings.Contains(body["error"].(string), "https://attacker.example") {
		t.Errorf("cross-site text/plain POST: %d %v, want 403 cross_site naming the origin", st, body)
	}
	// Without an Origin (an old browser, a form), the body type alone
	// refuses it.
	for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""} {
		st, body := g.send(t, "POST", "/v1/pools/web/backends", evil, "Content-Type", ct)
		if st != 415 || body["code"] != "unsupported_media_type" || !strings.Contains(body["error"].(string), "application/json") {
			t.Errorf("POST with Content-Type %q: %d %v, want 415 naming application/json", ct, st, body)
		}
	}
	st, body = g.send(t, "POST", "/v1/pools/web/backends/b1/drain", "", "Content-Type", "text/plain")
	if st != 415 {
		t.Errorf("a drain as text/plain: %d %v, want 415", st, body)
	}
	for _, site := range []string{"cross-site", "same-site"} { // same-site: another port of localhost
		st, body := g.send(t, "POST", "/v1/pools/web/backends/b1/drain", "", "Content-Type", "application/json", "Sec-Fetch-Site", site)
		if st != 403 || body["code"] != "cross_site" {
			t.Errorf("a drain with Sec-Fetch-Site %s: %d %v, want 403 cross_site", site, st, body)
		}
	}
	st, _ = g.send(t, "PUT", "/v1/pools/web/canary", `{"version":"v2","weight":50}`, "Content-Type", "application/json", "Origin", "null")
	if st != 403 {
		t.Errorf("a canary from a sandboxed page (Origin null): %d, want 403", st)
	}
	// DNS rebinding: the page's own name now resolves to 127.0.0.1.
	for _, host := range []string{"attacker.example", "attacker.example:9090", "10.0.0.1:9090"} {
		st, body := g.send(t, "GET", "/v1/pools", "", "Host", host)
		if st != 403 || body["code"] != "host_not_allowed" || !strings.Contains(body["error"].(string), host) {
			t.Errorf("GET /v1/pools with Host %s: %d %v, want 403 host_not_allowed", host, st, body)
		}
	}
	if n := g.backends(t); n != 1 || g.bt.Pool(t, "web").Backend("b1").State().String() != "active" {
		t.Fatalf("refused requests changed the pool: %d backends, b1 %s", n, g.bt.Pool(t, "web").Backend("b1").State())
	}

	// What must keep working: loopback names with any port, a script, the
	// dashboard's same-origin requests, and a link to the dashboard.
	for _, host := range []string{"localhost:9090", "[::1]:9090", "127.0.0.1", "LOCALHOST"} {
		if st, _ := g.send(t, "GET", "/v1/pools", "", "Host", host); st != 200 {
			t.Errorf("GET /v1/pools with Host %s: %d, want 200", host, st)
		}
	}
	if st, _ := g.send(t, "GET", "/ui/", "", "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate"); st != 200 {
		t.Errorf("following a link to the dashboard: %d, want 200", st)
	}
	if st, _ := g.send(t, "GET", "/v1/pools", "", "Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "cors"); st != 403 {
		t.Errorf("a cross-site page reading the API: %d, want 403", st)
	}
	st, body = g.send(t, "POST", "/v1/pools/web/backends", `{"name":"b2","address":"127.0.0.1:9","version":"v1"}`,
		"Content-Type", "application/json; charset=utf-8", "Origin", g.url, "Sec-Fetch-Site", "same-origin")
	if st != 201 {
		t.Errorf("the dashboard's own POST: %d %v, want 201", st, body)
	}
	if st, body := g.send(t, "POST", "/v1/pools/web/backends/b2/drain", "", "Content-Type", "application/json"); st != 200 && st != 202 {
		t.Errorf("a script's drain without a body: %d %v", st, body)
	}

	// Refusals are audited apart from changes.
	_, _ = g.send(t, "GET", "/v1/events", "")
	req, _ := http.NewRequest("GET", g.url+"/v1/events?refused=true&limit=100", nil)
	res, err := g.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var refusals []map[string]any
	_ = json.NewDecoder(res.Body).Decode(&refusals)
	res.Body.Close()
	found := false
	for _, ev := range refusals {
		if ev["action"] == "POST /v1/pools/web/backends" && strings.HasPrefix(ev["refused"].(string), "403 cross_site") {
			found = true
		}
	}
	if !found || len(refusals) < 10 {
		t.Errorf("%d refusals in the audit log, none the cross-site POST: %v", len(refusals), refusals)
	}
	req, _ = http.NewRequest("GET", g.url+"/v1/events", nil)
	res, err = g.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var changes []map[string]any
	_ = json.NewDecoder(res.Body).Decode(&changes)
	res.Body.Close()
	if len(changes) != 2 {
		t.Errorf("changes in the audit log: %v, want the add and the drain", changes)
	}
}

// TestAdminWithTokenAcceptsAnyHost: with a token file, the token is the
// proof, so the admin API answers whatever name it is reached by; the
// cross-site and JSON rules still hold.
func TestAdminWithTokenAcceptsAnyHost(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte("ops:0123456789abcdef0123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := admin.LoadTokens(path)
	if err != nil {
		t.Fatal(err)
	}
	g := startGuard(t, admin.WithTokens(tokens))
	auth := "Bearer 0123456789abcdef0123"
	if st, _ := g.send(t, "GET", "/v1/pools", "", "Host", "baton.internal:9090", "Authorization", auth); st != 200 {
		t.Errorf("GET with a token by another name: %d, want 200", st)
	}
	if st, _ := g.send(t, "POST", "/v1/pools/web/backends/b1/drain", "", "Authorization", auth, "Content-Type", "text/plain"); st != 415 {
		t.Errorf("a text/plain drain with a token: %d, want 415", st)
	}
	if st, _ := g.send(t, "POST", "/v1/pools/web/backends/b1/drain", "", "Authorization", auth, "Content-Type", "application/json",
		"Origin", "https://attacker.example"); st != 403 {
		t.Errorf("a cross-site drain with a token: %d, want 403", st)
	}
}
