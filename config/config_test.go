package config_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton"
	"github.com/baton-lb/baton/config"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// parse parses yamlText as test.yaml.
func parse(t *testing.T, yamlText string) (*config.Config, error) {
	t.Helper()
	return config.Parse([]byte(yamlText), "test.yaml")
}

// mustParse parses yamlText and fails the test on any error.
func mustParse(t *testing.T, yamlText string) *config.Config {
	t.Helper()
	cfg, err := parse(t, yamlText)
	if err != nil {
		t.Fatalf("Parse: unexpected error:\n%v", err)
	}
	return cfg
}

// errorLines returns every problem of err as its message, one per element.
func errorLines(err error) []string {
	var out []string
	for _, e := range config.Errors(err) {
		out = append(out, e.Error())
	}
	return out
}

// asConfigError returns e as a *config.Error or fails the test.
func asConfigError(t *testing.T, e error) *config.Error {
	t.Helper()
	var ce *config.Error
	if !errors.As(e, &ce) {
		t.Fatalf("error %q (%T) is not a *config.Error", e, e)
	}
	return ce
}

const minimal = `
pools:
  - name: web
    backends:
      - name: b1
        address: 127.0.0.1:9001
`

func TestExampleConfigLoadsAndValidates(t *testing.T) {
	cfg, err := config.Load("../config.example.yaml")
	if err != nil {
		t.Fatalf("config.example.yaml does not load:\n%v", err)
	}
	if len(cfg.Validate()) != 0 {
		t.Fatalf("Validate of the loaded example reports: %v", cfg.Validate())
	}
	if cfg.Listen != ":8080" || cfg.Admin.Listen != "127.0.0.1:9090" {
		t.Errorf("listen = %q, admin.listen = %q; want :8080 and 127.0.0.1:9090", cfg.Listen, cfg.Admin.Listen)
	}
	if len(cfg.Pools) != 1 {
		t.Fatalf("pools = %d, want 1", len(cfg.Pools))
	}
	p := cfg.Pools[0]
	if p.Name != "shop" || !p.IsDefault() || p.StableVersion != "v41" || p.HealthCheck.Path != "/healthz" {
		t.Errorf("pool = name %q default %v stable %q health path %q; want shop, true, v41, /healthz",
			p.Name, p.IsDefault(), p.StableVersion, p.HealthCheck.Path)
	}
	if len(p.Backends) != 4 {
		t.Fatalf("backends = %d, want 4", len(p.Backends))
	}
	for i, b := range p.Backends {
		wantAddr := fmt.Sprintf("127.0.0.1:%d", 9101+i)
		if b.Name != fmt.Sprintf("web-%d", i+1) || b.Address != wantAddr || b.Version != "v41" || b.WeightOf() != 100 {
			t.Errorf("backend %d = %+v (weight %d); want web-%d at %s, v41, weight 100", i, b, b.WeightOf(), i+1, wantAddr)
		}
	}

	// The embedded copy `baton demo` runs is the same file.
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if string(baton.ExampleConfig) != string(data) {
		t.Error("baton.ExampleConfig differs from config.example.yaml")
	}
}

// The example says every key is shown with its default (except where the
// comment says otherwise). Parse the example with only what it must set
// (names, addresses, versions, the health-check path it documents as
// non-default) and check both configs are equal.
func TestExampleConfigShowsTheDefaults(t *testing.T) {
	data, err := os.ReadFile("../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Parse, not Load: Load also places the state file beside the config.
	example, err := config.Parse(data, "config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	bare := mustParse(t, `
pools:
  - name: shop
    routes: []
    health_check: {path: /healthz}
    backends:
      - {name: web-1, address: "127.0.0.1:9101", version: v41}
      - {name: web-2, address: "127.0.0.1:9102", version: v41}
      - {name: web-3, address: "127.0.0.1:9103", version: v41}
      - {name: web-4, address: "127.0.0.1:9104", version: v41}
`)
	if !reflect.DeepEqual(example, bare) {
		t.Errorf("the example's values differ from the defaults:\nexample:  %+v\ndefaults: %+v", example, bare)
	}
}

func TestDefaults(t *testing.T) {
	cfg := mustParse(t, `
pools:
  - name: web
    backends:
      - name: b1
        address: 127.0.0.1:9001
      - name: b2
        address: 127.0.0.1:9002
        weight: 0
      - name: b3
        address: 127.0.0.1:9003
        weight: 7
`)
	if cfg.Listen != config.DefaultListen || cfg.Admin.Listen != config.DefaultAdminListen {
		t.Errorf("listen %q admin %q", cfg.Listen, cfg.Admin.Listen)
	}
	if a := cfg.Admin; a.ReadTimeout != 30*time.Second || a.WriteTimeout != 30*time.Second || a.IdleTimeout != 10*time.Second || a.MaxConnections != 64 {
		t.Errorf("admin limits = %+v; want read 30s, write 30s, idle 10s, 64 connections", a)
	}
	if cfg.Log.Level != "info" || cfg.Log.Format != "auto" || !cfg.Log.AccessLog() {
		t.Errorf("log = %+v (access %v); want info, auto, access on", cfg.Log, cfg.Log.AccessLog())
	}
	s := cfg.Server
	wantServer := config.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		BodyIdleTimeout:   60 * time.Second,
		MaxRequestBody:    1 << 30,
		MaxHeaderBytes:    32 << 10,
		MaxConnections:    262144,
		ShutdownTimeout:   30 * time.Second,
		ShutdownGrace:     time.Second,
	}
	if !reflect.DeepEqual(s, wantServer) {
		t.Errorf("server = %+v\nwant      %+v", s, wantServer)
	}
	p := cfg.Pools[0]
	if p.Balance != "round_robin" || p.StableVersion != "default" || (p.Canary.Version != "" || p.Canary.Weight != 0 || p.Canary.InitialWeight != 5 || p.Canary.Steps != nil) || !p.IsDefault() {
		t.Errorf("pool balance %q stable %q canary %+v default %v", p.Balance, p.StableVersion, p.Canary, p.IsDefault())
	}
	wantTimeouts := config.Timeouts{Connect: 2 * time.Second, ResponseHeader: 30 * time.Second, Idle: 60 * time.Second, Total: 0}
	if p.Timeouts != wantTimeouts {
		t.Errorf("timeouts = %+v, want %+v", p.Timeouts, wantTimeouts)
	}
	if p.Connections != (config.Connections{Max: 0, IdleTimeout: 4 * time.Second}) {
		t.Errorf("connections = %+v", p.Connections)
	}
	wantHC := config.HealthCheck{Interval: 2 * time.Second, Timeout: time.Second, Rise: 2, Fall: 3}
	if p.HealthCheck != wantHC {
		t.Errorf("health_check = %+v, want %+v", p.HealthCheck, wantHC)
	}
	wantOutlier := config.Outlier{ConsecutiveFailures: 5, BaseEjection: 10 * time.Second, MaxEjection: 5 * time.Minute}
	if p.Outlier != wantOutlier {
		t.Errorf("outlier = %+v, want %+v", p.Outlier, wantOutlier)
	}
	if p.Retries.Attempts != 2 || p.Retries.BudgetPercent == nil || *p.Retries.BudgetPercent != 20 || p.Retries.Budget() != 20 {
		t.Errorf("retries = attempts %d budget %v", p.Retries.Attempts, p.Retries.Budget())
	}
	if p.DrainTimeout != 30*time.Second {
		t.Errorf("drain_timeout = %s", p.DrainTimeout)
	}
	wantWeights := []int{100, 0, 7}
	for i, b := range p.Backends {
		if b.Weight == nil {
			t.Errorf("backend %s: weight left nil", b.Name)
			continue
		}
		if *b.Weight != wantWeights[i] || b.WeightOf() != wantWeights[i] {
			t.Errorf("backend %s: weight %d (WeightOf %d), want %d", b.Name, *b.Weight, b.WeightOf(), wantWeights[i])
		}
		if b.Version != "default" {
			t.Errorf("backend %s: version %q, want default", b.Name, b.Version)
		}
	}
}

func TestExplicitValuesAreKept(t *testing.T) {
	cfg := mustParse(t, `
listen: 127.0.0.1:18080
admin: {listen: off}
log: {level: debug, format: json, access: false}
server:
  read_header_timeout: 3s
  idle_timeout: 1m30s
  body_idle_timeout: 250ms
  max_request_body: 10MB
  max_header_bytes: 64KiB
  max_connections: 100
  shutdown_timeout: 2s
  shutdown_grace: 500ms
pools:
  - name: web
    balance: least_inflight
    timeouts: {connect: 500ms, response_header: 5s, idle: 7s, total: 1m}
    connections: {max: 8, idle_timeout: 3s}
    health_check: {path: /hc, host: web.internal, interval: 5s, timeout: 4s, expect_status: 204, rise: 1, fall: 9}
    outlier: {consecutive_failures: -1, base_ejection: 1s, max_ejection: 2s}
    retries: {attempts: 1, budget_percent: 0}
    drain_timeout: 45s
    canary: {version: v2, weight: 2.5}
    backends:
      - {name: a, address: "127.0.0.1:9001", version: v1, weight: 1000}
      - {name: b, address: "localhost:9002", version: v2, weight: 0}
`)
	if cfg.Listen != "127.0.0.1:18080" || cfg.Admin.Listen != "off" {
		t.Errorf("listen %q admin %q; want unquoted off to stay the string \"off\"", cfg.Listen, cfg.Admin.Listen)
	}
	if cfg.Log.Level != "debug" || cfg.Log.Format != "json" || cfg.Log.AccessLog() {
		t.Errorf("log = %+v access %v", cfg.Log, cfg.Log.AccessLog())
	}
	wantServer := config.Server{
		ReadHeaderTimeout: 3 * time.Second,
		IdleTimeout:       90 * time.Second,
		BodyIdleTimeout:   250 * time.Millisecond,
		MaxRequestBody:    10_000_000,
		MaxHeaderBytes:    64 << 10,
		MaxConnections:    100,
		ShutdownTimeout:   2 * time.Second,
		ShutdownGrace:     500 * time.Millisecond,
	}
	if !reflect.DeepEqual(cfg.Server, wantServer) {
		t.Errorf("server = %+v\nwant      %+v", cfg.Server, wantServer)
	}
	p := cfg.Pools[0]
	if p.Balance != "least_inflight" || p.DrainTimeout != 45*time.Second {
		t.Errorf("balance %q drain %s", p.Balance, p.DrainTimeout)
	}
	if want := (config.Timeouts{Connect: 500 * time.Millisecond, ResponseHeader: 5 * time.Second, Idle: 7 * time.Second, Total: time.Minute}); p.Timeouts != want {
		t.Errorf("timeouts = %+v, want %+v", p.Timeouts, want)
	}
	if want := (config.Connections{Max: 8, IdleTimeout: 3 * time.Second}); p.Connections != want {
		t.Errorf("connections = %+v, want %+v", p.Connections, want)
	}
	if want := (config.HealthCheck{Path: "/hc", Host: "web.internal", Interval: 5 * time.Second, Timeout: 4 * time.Second, ExpectStatus: 204, Rise: 1, Fall: 9}); p.HealthCheck != want {
		t.Errorf("health_check = %+v, want %+v", p.HealthCheck, want)
	}
	if want := (config.Outlier{ConsecutiveFailures: -1, BaseEjection: time.Second, MaxEjection: 2 * time.Second}); p.Outlier != want {
		t.Errorf("outlier = %+v, want %+v", p.Outlier, want)
	}
	if p.Retries.Attempts != 1 || p.Retries.Budget() != 0 {
		t.Errorf("retries attempts %d budget %d; want 1 and an explicit 0 kept", p.Retries.Attempts, p.Retries.Budget())
	}
	if p.Canary.Version != "v2" || p.Canary.Weight != 2.5 || p.Canary.InitialWeight != 5 || p.StableVersion != "v1" {
		t.Errorf("canary %+v stable %q; want v2 at 2.5%% and the stable version inferred as v1", p.Canary, p.StableVersion)
	}
	if p.Backends[0].WeightOf() != 1000 || p.Backends[1].WeightOf() != 0 {
		t.Errorf("weights %d, %d; want 1000, 0", p.Backends[0].WeightOf(), p.Backends[1].WeightOf())
	}
}

// wantMarks reads the "# want: PATH ..." comments of a testdata file:
// "PATH@LINE" for every error expected.
func wantMarks(t *testing.T, data []byte) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`#\s*want:\s*(.+)$`)
	marks := map[string]bool{}
	for i, line := range strings.Split(string(data), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, p := range strings.Fields(m[1]) {
			marks[fmt.Sprintf("%s@%d", p, i+1)] = true
		}
	}
	if len(marks) == 0 {
		t.Fatal("no want: comments in the testdata file")
	}
	return marks
}

// TestBrokenConfigGolden loads each broken config in testdata and checks
// that every problem is reported, each once, with the path and line its
// "want:" comment names, and that the text matches the .golden file
// (go test ./config -run Golden -update rewrites them).
func TestBrokenConfigGolden(t *testing.T) {
	for _, name := range []string{"validation", "strict"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join("testdata", name+".yaml")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err == nil {
				t.Fatalf("Load(%s) succeeded: %+v", path, cfg)
			}
			if cfg != nil {
				t.Errorf("Load returned a config along with errors")
			}

			marks := wantMarks(t, data)
			got := map[string]bool{}
			for _, e := range config.Errors(err) {
				ce := asConfigError(t, e)
				if ce.File != name+".yaml" {
					t.Errorf("%v: File = %q, want %q", e, ce.File, name+".yaml")
				}
				key := fmt.Sprintf("%s@%d", ce.Path, ce.Line)
				if got[key] {
					t.Errorf("reported twice: %v", e)
				}
				got[key] = true
				if !marks[key] {
					t.Errorf("unexpected error (no want: %s on line %d): %v", ce.Path, ce.Line, e)
				}
			}
			var missing []string
			for k := range marks {
				if !got[k] {
					missing = append(missing, k)
				}
			}
			sort.Strings(missing)
			for _, k := range missing {
				t.Errorf("missing error: %s", k)
			}

			text := strings.Join(errorLines(err), "\n") + "\n"
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./config -run Golden -update to create it)", err)
			}
			if text != string(want) {
				t.Errorf("errors differ from %s:\n--- got\n%s--- want\n%s", golden, text, want)
			}
		})
	}
}

func TestUnknownKeysNamePathAndLine(t *testing.T) {
	// Line numbers matter: wieght is on line 14.
	yamlText := `listen: 127.0.0.1:8080
admin:
  listen: "off"
  port: 9090
pools:
  - name: web
    routes: [{host: a.example, path: /x}]
    backends:
      - name: b1
        address: 127.0.0.1:9001
        weight: 1
      - name: b2
        address: 127.0.0.1:9002
        wieght: 3
    health: {path: /h}
extra: true
`
	_, err := parse(t, yamlText)
	want := []string{
		"admin.port: unknown key (test.yaml:4)",
		"pools[0].routes[0].path: unknown key (test.yaml:7)",
		"pools[0].backends[1].wieght: unknown key (test.yaml:14)",
		"pools[0].health: unknown key (test.yaml:15)",
		"extra: unknown key (test.yaml:16)",
	}
	if got := errorLines(err); !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestWrongTypesNamePathAndLine(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"string for int", "server:\n  max_connections: many\n" + minimal,
			`server.max_connections: must be a whole number, got str "many" (test.yaml:2)`},
		{"duration without unit", "server:\n  shutdown_timeout: 10\n" + minimal,
			`server.shutdown_timeout: must be a duration with a unit such as 500ms, 10s or 2m, got int "10" (test.yaml:2)`},
		{"quoted number as duration", "server:\n  idle_timeout: \"10\"\n" + minimal,
			`server.idle_timeout: must be a duration with a unit such as 500ms, 10s or 2m, got str "10" (test.yaml:2)`},
		{"string for weight", "pools:\n  - name: web\n    backends:\n      - {name: b, address: \"1.2.3.4:80\", weight: heavy}\n",
			`pools[0].backends[0].weight: must be a whole number, got str "heavy" (test.yaml:4)`},
		{"bad duration in pool", "pools:\n  - name: web\n    timeouts:\n      connect: 2 seconds\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			`pools[0].timeouts.connect: must be a duration with a unit such as 500ms, 10s or 2m, got str "2 seconds" (test.yaml:4)`},
		{"bad size", "server:\n  max_header_bytes: 32KB?\n" + minimal,
			`server.max_header_bytes: must be a size such as 512KiB, 10MiB or a number of bytes, got "32KB?" (test.yaml:2)`},
		{"scalar for list", "pools: 5\n",
			`pools: must be a list, got int "5" (test.yaml:1)`},
		{"scalar for mapping", "server: fast\n" + minimal,
			`server: must be a mapping, got str "fast" (test.yaml:1)`},
		{"duplicate key", "listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\n" + minimal,
			`listen: duplicate key (first set on line 1) (test.yaml:2)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.yaml)
			got := errorLines(err)
			if len(got) != 1 || got[0] != c.want {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), c.want)
			}
		})
	}
}

// A list or mapping where the other is expected must get the same friendly
// wording as a wrong scalar, at the key's path, without Go type names.
func TestWrongKindOfNodeMessages(t *testing.T) {
	cases := []struct {
		name, yaml, wantPath, wantWord string
	}{
		{"mapping for the backend list (flow)", "pools:\n  - name: web\n    backends: {name: b1}\n", "pools[0].backends", "list"},
		{"mapping for the pool list (block)", "pools:\n  web: 1\n", "pools", "list"},
		{"list for a mapping", "server: [1, 2]\n" + minimal, "server", "mapping"},
		{"a list as the whole file", "- name: web\n- name: api\n", "", "mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.yaml)
			errs := config.Errors(err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			ce := asConfigError(t, errs[0])
			if ce.Path != c.wantPath || ce.Line < 1 || strings.Contains(ce.Msg, "config.") ||
				!strings.Contains(ce.Msg, c.wantWord) {
				t.Errorf("got %q (path %q, line %d); want path %q, a line, a message saying %q without Go type names",
					ce.Error(), ce.Path, ce.Line, c.wantPath, c.wantWord)
			}
		})
	}
}

// Validation must still run when the file also has an unknown key or a
// wrong type: every problem is reported in one go.
func TestDecodeAndValidationErrorsReportedTogether(t *testing.T) {
	_, err := parse(t, `pools:
  - name: web
    backends:
      - name: b1
        address: 127.0.0.1:9001
        wieght: 10
      - name: b2
        address: nowhere
`)
	got := errorLines(err)
	want := []string{
		"pools[0].backends[0].wieght: unknown key (test.yaml:6)",
		`pools[0].backends[1].address: must be host:port such as 10.0.0.5:8080, got "nowhere" (test.yaml:8)`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestValidationMessages(t *testing.T) {
	// One problem each, checked with its full text; the golden test covers
	// the brief's list, this covers the rest of Validate.
	cases := []struct {
		name, yaml, want string
	}{
		{"no pools", "listen: 127.0.0.1:8080\n",
			"pools: at least one pool is required (test.yaml:1)"},
		{"bad listen", "listen: 8080\n" + minimal,
			`listen: must be host:port such as :8080 or 127.0.0.1:8080, got "8080" (test.yaml:1)`},
		{"listen host name", "listen: example.com:80\n" + minimal,
			`listen: host must be an IP address or localhost, got "example.com" (test.yaml:1)`},
		{"bad log level", "log: {level: loud}\n" + minimal,
			`log.level: must be debug, info, warn or error, got "loud" (test.yaml:1)`},
		{"grace longer than the shutdown", "server:\n  shutdown_timeout: 2s\n  shutdown_grace: 5s\n" + minimal,
			"server.shutdown_grace: must not be longer than server.shutdown_timeout (2s), got 5s (test.yaml:3)"},
		{"bad trusted proxy", "server:\n  trusted_proxies: [10.0.0.0/8, 10.0.0.300]\n" + minimal,
			`server.trusted_proxies[1]: must be an IP address or a CIDR such as 10.0.0.0/8, got "10.0.0.300" (test.yaml:2)`},
		{"admin tls without key", "admin:\n  tls: {cert: a.crt}\n" + minimal,
			"admin.tls.key: the private key's PEM file is required with admin.tls.cert (test.yaml:2)"},
		{"negative admin cap", "admin:\n  max_connections: -1\n" + minimal,
			"admin.max_connections: must not be negative, got -1 (test.yaml:2)"},
		{"header limit too small", "server:\n  max_header_bytes: 2KiB\n" + minimal,
			"server.max_header_bytes: must be 4KiB..1MiB, got 2KiB (test.yaml:2)"},
		{"no backends", "pools:\n  - name: web\n",
			"pools[0].backends: at least one backend is required (test.yaml:2)"},
		{"force header without a secret", "pools:\n  - name: web\n    affinity:\n      force_header: X-Baton-Version\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			"pools[0].affinity.force_header: a forced version needs a secret: write {name: X-Baton-Version, secret_file: FILE} (requests send X-Baton-Version: VERSION:SECRET), or off (test.yaml:4)"},
		{"force header mapping without its file", "pools:\n  - name: web\n    affinity: {force_header: {name: X-T}}\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			"pools[0].affinity.force_header.secret_file: is required: a version anyone can force is a version anyone can judge (test.yaml:3)"},
		{"force secret missing", "pools:\n  - name: web\n    affinity: {force_cookie: {name: t, secret_file: /nonexistent/force.secret}}\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			"pools[0].affinity.force_cookie.secret_file: cannot read the secret: open /nonexistent/force.secret: no such file or directory (test.yaml:3)"},
		{"gross factor too small", "pools:\n  - name: web\n    judge: {gross_factor: 1.1}\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			"pools[0].judge.gross_factor: must be 1.2..100 (2 is twice as slow), got 1.1 (test.yaml:3)"},
		{"bad pool name", "pools:\n  - name: web shop\n    backends: [{name: b, address: \"1.2.3.4:80\"}]\n",
			`pools[0].name: must be 1-63 letters, digits, '.', '_' or '-', got "web shop" (test.yaml:2)`},
		{"backend port 0", "pools:\n  - name: web\n    backends: [{name: b, address: \"1.2.3.4:0\"}]\n",
			`pools[0].backends[0].address: port must be 1..65535, got "0" (test.yaml:3)`},
		{"duplicate address", "pools:\n  - name: web\n    backends:\n      - {name: a, address: \"1.2.3.4:80\"}\n      - {name: b, address: \"1.2.3.4:80\"}\n",
			`pools[0].backends[1].address: 1.2.3.4:80 is already backends[0] of this pool (test.yaml:5)`},
		{"negative weight", "pools:\n  - name: web\n    backends:\n      - name: a\n        address: 1.2.3.4:80\n        weight: -1\n",
			"pools[0].backends[0].weight: must be 0..1000, got -1 (test.yaml:6)"},
		{"canary weight without version", "pools:\n  - name: web\n    canary: {weight: 5}\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			"pools[0].canary.weight: is set but canary.version is not (test.yaml:3)"},
		{"two versions without canary", "pools:\n  - name: web\n    stable_version: v1\n    backends:\n      - {name: a, address: \"1.2.3.4:80\", version: v1}\n      - {name: b, address: \"1.2.3.5:80\", version: v2}\n",
			`pools[0].backends: a pool runs at most two versions, stable and canary; found "v1", "v2" with no canary.version set (test.yaml:4)`},
		{"duplicate route", "pools:\n  - name: a\n    routes: [{host: X.example}]\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n  - name: b\n    routes: [{host: x.example, path_prefix: /}]\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			"pools[1].routes[0]: matches nothing: the same host and path_prefix are already routed by pools[0].routes[0] (test.yaml:6)"},
		{"path prefix with dot segment", "pools:\n  - name: web\n    routes: [{path_prefix: /a/../b}]\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			`pools[0].routes[0].path_prefix: matches nothing: paths are matched after dot segments and repeated slashes are resolved, and without the query; got "/a/../b" (test.yaml:3)`},
		{"route host with port", "pools:\n  - name: web\n    routes: [{host: \"a.example:80\"}]\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			`pools[0].routes[0].host: must be a host name without a port, got "a.example:80" (test.yaml:3)`},
		{"base ejection above max", "pools:\n  - name: web\n    outlier: {base_ejection: 10m}\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			"pools[0].outlier.base_ejection: must not exceed outlier.max_ejection (10m0s > 5m0s) (test.yaml:3)"},
		{"connect not below total", "pools:\n  - name: web\n    timeouts:\n      connect: 5s\n      total: 5s\n      response_header: 5s\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			"pools[0].timeouts.connect: can never fire: it is not below timeouts.total (5s >= 5s) (test.yaml:4)"},
		{"budget over 100", "pools:\n  - name: web\n    retries: {budget_percent: 101}\n    backends: [{name: a, address: \"1.2.3.4:80\"}]\n",
			"pools[0].retries.budget_percent: must be 0..100, got 101 (test.yaml:3)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.yaml)
			got := errorLines(err)
			if len(got) != 1 || got[0] != c.want {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), c.want)
			}
		})
	}
}

func TestEmptyAndMultiDocumentFiles(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"empty", "", "test.yaml: the file is empty; it needs at least one pool"},
		{"only comments", "# nothing yet\n\n", "test.yaml: the file is empty; it needs at least one pool"},
		{"second document", minimal + "---\nlisten: 127.0.0.1:9\n",
			"test.yaml:7: a second YAML document (---) is not allowed; put everything in one"},
		{"empty second document", "listen: 127.0.0.1:1\n---\n# more later\n",
			"test.yaml:2: a second YAML document (---) is not allowed; put everything in one"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parse(t, c.yaml)
			got := errorLines(err)
			if cfg != nil || len(got) != 1 || got[0] != c.want {
				t.Errorf("errors:\n%s\nwant:\n%s", strings.Join(got, "\n"), c.want)
			}
		})
	}

	// A leading document marker is fine; lines still count from the top.
	_, err := parse(t, "---\nlisten: nope\n"+strings.TrimPrefix(minimal, "\n"))
	if got := errorLines(err); len(got) != 1 || got[0] != `listen: must be host:port such as :8080 or 127.0.0.1:8080, got "nope" (test.yaml:2)` {
		t.Errorf("with a leading ---: %q", got)
	}
}

func TestYAMLSyntaxErrorsHaveLines(t *testing.T) {
	cases := []struct {
		name  string
		yaml  string
		lines []int // acceptable lines: where the problem is, or where its construct starts
		msg   string
	}{
		{"mapping value on line 2", "listen: 127.0.0.1:1\nadmin: listen: off\n", []int{2},
			"mapping values are not allowed in this context"},
		{"tab indentation", "listen: 127.0.0.1:1\n\tpools: []\n", []int{2},
			"found a tab character that violates indentation"},
		{"unterminated quote", "pools:\n  - name: \"web\n    backends: []\n", []int{2, 3, 4},
			"found unexpected end of stream"},
		// The ones below get a wrong line, or none, from yaml.v3.
		{"mapping value on line 1", "listen: admin: off\npools: []\n", []int{1},
			"mapping values are not allowed in this context"},
		{"unclosed flow list", "listen: 127.0.0.1:1\npools: [web, api\nadmin: {}\n", []int{2, 3},
			"did not find expected ',' or ']'"},
		{"key indented one space too far", "pools:\n  - name: web\n   backends: []\n", []int{2, 3},
			"did not find expected '-' indicator"},
		{"tab indentation in a pool", "pools:\n  - name: web\n\tbackends: []\n", []int{3},
			"found a tab character that violates indentation"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := parse(t, c.yaml)
			errs := config.Errors(err)
			if len(errs) != 1 {
				t.Fatalf("got %d errors, want 1: %v", len(errs), err)
			}
			ce := asConfigError(t, errs[0])
			okLine := false
			for _, l := range c.lines {
				okLine = okLine || ce.Line == l
			}
			if !okLine || ce.File != "test.yaml" || ce.Msg != "YAML syntax: "+c.msg {
				t.Errorf("got %q (line %d); want line %v and message %q", ce.Error(), ce.Line, c.lines, "YAML syntax: "+c.msg)
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "reading config: ") {
		t.Errorf("Load of a missing file: %v; want a wrapped os.ErrNotExist starting \"reading config: \"", err)
	}
}

func TestErrorFormat(t *testing.T) {
	cases := []struct {
		e    config.Error
		want string
	}{
		{config.Error{Path: "pools[0].name", Msg: "bad", File: "b.yaml", Line: 3}, "pools[0].name: bad (b.yaml:3)"},
		{config.Error{Msg: "bad", File: "b.yaml", Line: 3}, "b.yaml:3: bad"},
		{config.Error{Msg: "bad", File: "b.yaml"}, "b.yaml: bad"},
	}
	for _, c := range cases {
		if got := c.e.Error(); got != c.want {
			t.Errorf("Error() = %q, want %q", got, c.want)
		}
	}
	if config.Errors(nil) != nil {
		t.Error("Errors(nil) != nil")
	}
	single := errors.New("x")
	if got := config.Errors(single); len(got) != 1 || got[0] != single {
		t.Errorf("Errors(single) = %v", got)
	}
}

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want config.Size
	}{
		{"0", 0},
		{"1048576", 1 << 20},
		{"512KiB", 512 << 10},
		{"10MB", 10_000_000},
		{"1GiB", 1 << 30},
		{"3MiB", 3 << 20},
		{"2KB", 2000},
		{"7GB", 7_000_000_000},
		{"100B", 100},
		{" 64 KiB ", 64 << 10},
		{"4294967296GiB", 1 << 62},
	}
	for _, c := range good {
		got, err := config.ParseSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	bad := []string{"", "KiB", "-1", "-1KiB", "1.5MiB", "10XB", "10 kib", "1e6", "0x10", "ten", "10KiBs",
		"9223372036854775807", "4294967297GiB", "99999999999999999999"}
	for _, in := range bad {
		if got, err := config.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", in)) {
			t.Errorf("ParseSize(%q) error %q does not quote the input", in, err)
		}
	}
}

func TestSizeString(t *testing.T) {
	cases := map[config.Size]string{
		0:                     "0B",
		100:                   "100B",
		1 << 10:               "1KiB",
		1536:                  "1536B",
		3 << 19:               "1536KiB",
		1 << 20:               "1MiB",
		1 << 30:               "1GiB",
		5 << 30:               "5GiB",
		10_000_000:            "10000000B",
		(1 << 30) + (1<<20)*3: "1027MiB",
	}
	for s, want := range cases {
		if got := s.String(); got != want {
			t.Errorf("Size(%d).String() = %q, want %q", int64(s), got, want)
		}
		if back, err := config.ParseSize(want); err != nil || back != s {
			t.Errorf("ParseSize(%q) = %d, %v; want %d back", want, back, err, int64(s))
		}
	}
}

func TestSizeInYAML(t *testing.T) {
	cfg := mustParse(t, "server:\n  max_request_body: 1048576\n  max_header_bytes: \"8KiB\"\n"+minimal)
	if cfg.Server.MaxRequestBody != 1<<20 || cfg.Server.MaxHeaderBytes != 8<<10 {
		t.Errorf("sizes = %d, %d; want %d, %d", cfg.Server.MaxRequestBody, cfg.Server.MaxHeaderBytes, 1<<20, 8<<10)
	}
	_, err := parse(t, "server:\n  max_request_body: [1]\n"+minimal)
	if got := errorLines(err); len(got) != 1 || got[0] != "server.max_request_body: must be a size such as 512KiB (test.yaml:2)" {
		t.Errorf("list for a size: %q", got)
	}
}
