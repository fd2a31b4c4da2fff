package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/baton-lb/baton/config"
)

// fuzzSeeds are broken and odd configs that take Parse down its error
// paths: syntax errors, tabs, several documents, duplicate keys, wrong
// kinds and types, anchors and merges, and values at their limits.
var fuzzSeeds = []string{
	"",
	"\n",
	"# only a comment\n",
	"~\n",
	"[]\n",
	"42\n",
	"pools:\n",
	"pools: {}\n",
	"pools: []\n",
	"pools: [1, 2]\n",
	"pools:\n  - name: web\n",
	"pools:\n  - name: web\n    backends: [{name: a, address: \"127.0.0.1:1\"}]\n",
	"pools:\n  - name: web\n    backends:\n      - name: a\n\taddress: 127.0.0.1:1\n",
	"pools:\n  - name: web\n    backends: [{name: a, address: \"127.0.0.1:1\"}]\n---\npools: []\n",
	"listen: :8080\nlisten: :8081\n",
	"pools:\n  - name: web\n    name: web2\n    backends: [{name: a, address: \"127.0.0.1:1\"}]\n",
	"listen: [1\n",
	"listen: \"unterminated\n",
	"listen: 'x\n",
	"a: b: c\n",
	"- a\nb: c\n",
	"{\n",
	"pools: &p\n  - name: web\n    backends: [{name: a, address: \"127.0.0.1:1\"}]\nx: *p\n",
	"base: &b {name: a, address: \"127.0.0.1:1\"}\npools:\n  - name: web\n    backends: [{<<: *b, weight: 5}]\n",
	"pools:\n  - name: web\n    backends: [*nope]\n",
	"server: {max_request_body: 99999999999GiB, max_header_bytes: -1, idle_timeout: -5s}\npools: []\n",
	"server: {max_request_body: 1.5MiB, read_header_timeout: 10}\n",
	"pools:\n  - name: web\n    canary: {version: v2, weight: 101, initial_weight: 0}\n    backends:\n      - {name: a, address: \"127.0.0.1:1\", version: v1}\n      - {name: b, address: \"127.0.0.1:2\", version: v2}\n",
	"pools:\n  - name: web\n    canary: {version: v2, weight: .inf}\n    backends:\n      - {name: a, address: \"127.0.0.1:1\", version: v1}\n      - {name: b, address: \"127.0.0.1:2\", version: v2}\n",
	"pools:\n  - name: web\n    retries: {attempts: 99999999999999999999}\n    backends: [{name: a, address: \"[::1]:1\", weight: -1}]\n",
	"pools:\n  - name: web\n    routes: [{host: \"*.\", path_prefix: \"a/../\"}, {host: \"x:1\"}]\n    backends: [{name: a, address: \"h_o.st:0\"}]\n",
	"state_file: off\nadmin: {listen: \"0.0.0.0:9090\", token_file: \"\"}\nlog: {level: loud, format: xml, access: maybe}\npools: []\n",
	"\ufeffpools: []\n",
	"pools:\n  - !!map {name: web}\n",
	"listen: !!binary aGVsbG8=\n",
	"pools:\n  - name: [web]\n    backends: {a: b}\n",
	"pools:\n  -\n    - nested\n",
	"pools: [{name: web, backends: [{name: a, address: \"127.0.0.1:1\", unknown: 1, weight: \"\"}]}]\n",
	"? [complex, key]\n: value\n",
	"pools:\n  - name: \"\\u0000\"\n",
}

// FuzzParse feeds arbitrary bytes to Parse. It must never panic; it
// returns either a config or an error, never both; every problem it
// reports is a *config.Error naming the file; and a config it returns is
// valid (Validate finds nothing, without changing it) and is the same
// every time the bytes are parsed.
func FuzzParse(f *testing.F) {
	files := []string{"../config.example.yaml"}
	more, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	files = append(files, more...)
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		const name = "fuzz.yaml"
		cfg, err := config.Parse(data, name)
		if err != nil {
			if cfg != nil {
				t.Errorf("Parse returned a config and an error: %v", err)
			}
			errs := config.Errors(err)
			if len(errs) == 0 {
				t.Errorf("Parse failed with %v, which Errors splits into nothing", err)
			}
			for _, e := range errs {
				var ce *config.Error
				if !errors.As(e, &ce) {
					t.Errorf("problem %q (%T) is not a *config.Error", e, e)
					continue
				}
				if ce.File != name || ce.Msg == "" || ce.Line < 0 {
					t.Errorf("problem %+v: want File %q, a message and a line >= 0", *ce, name)
				}
				if !strings.Contains(ce.Error(), name) {
					t.Errorf("problem %q does not name the file", ce.Error())
				}
			}
			return
		}
		if cfg == nil {
			t.Fatal("Parse returned neither a config nor an error")
		}
		again, err := config.Parse(data, name)
		if err != nil || !reflect.DeepEqual(cfg, again) {
			t.Fatalf("parsing the same bytes twice gave different results (second error: %v)", err)
		}
		if errs := cfg.Validate(); len(errs) != 0 {
			t.Errorf("Parse accepted a config that Validate rejects: %v", errors.Join(errs...))
		}
		if !reflect.DeepEqual(cfg, again) {
			t.Errorf("Validate changed the config")
		}
		checkAccepted(t, cfg)
	})
}

// checkAccepted checks the documented ranges of a config Parse accepted,
// for the values whose checks a NaN or an overflow could slip through.
func checkAccepted(t *testing.T, cfg *config.Config) {
	t.Helper()
	if len(cfg.Pools) == 0 {
		t.Errorf("accepted a config without pools")
	}
	for i, p := range cfg.Pools {
		if w := p.Canary.Weight; !(w >= 0 && w <= 100) {
			t.Errorf("pools[%d].canary.weight = %g accepted; must be 0..100", i, w)
		}
		if w := p.Canary.InitialWeight; !(w > 0 && w <= 100) {
			t.Errorf("pools[%d].canary.initial_weight = %g accepted; must be above 0 and at most 100", i, w)
		}
		if len(p.Backends) == 0 {
			t.Errorf("pools[%d] accepted without backends", i)
		}
		for j, b := range p.Backends {
			if w := b.WeightOf(); w < 0 || w > config.MaxWeight {
				t.Errorf("pools[%d].backends[%d].weight = %d accepted", i, j, w)
			}
		}
	}
}

// TestParseRejectsNaNPercentages: YAML's .nan is a float, and NaN fails
// every comparison, so a range check written as "w < 0 || w > 100" lets it
// through. A NaN canary share must be rejected like any value outside
// 0..100 (infinities already are).
func TestParseRejectsNaNPercentages(t *testing.T) {
	const pool = `pools:
  - name: web
    stable_version: v1
    canary: {version: v2, %s}
    backends:
      - {name: a, address: "127.0.0.1:9001", version: v1}
      - {name: b, address: "127.0.0.1:9002", version: v2}
`
	cases := []struct{ canary, path string }{
		{"weight: .nan", "pools[0].canary.weight"},
		{"weight: .NaN", "pools[0].canary.weight"},
		{"initial_weight: .nan", "pools[0].canary.initial_weight"},
		{"weight: .inf", "pools[0].canary.weight"}, // already rejected; the reference
	}
	for _, c := range cases {
		cfg, err := config.Parse([]byte(strings.Replace(pool, "%s", c.canary, 1)), "nan.yaml")
		if err == nil {
			t.Errorf("canary {%s}: accepted (weight %g, initial_weight %g); want an error at %s",
				c.canary, cfg.Pools[0].Canary.Weight, cfg.Pools[0].Canary.InitialWeight, c.path)
			continue
		}
		found := false
		for _, e := range config.Errors(err) {
			var ce *config.Error
			if errors.As(e, &ce) && ce.Path == c.path && ce.Line == 4 {
				found = true
			}
		}
		if !found {
			t.Errorf("canary {%s}: errors %q; want one at %s (nan.yaml:4)", c.canary, err, c.path)
		}
	}
}
