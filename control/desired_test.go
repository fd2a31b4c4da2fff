package control_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// poolPicture is what a pool is, as a client of the registry sees it: the
// stable version, the canary and its share, and every backend's address,
// version, weight and admin state, in name order.
func poolPicture(t *testing.T, r *control.Registry) string {
	t.Helper()
	p := r.Pool("web")
	if p == nil {
		t.Fatal("pool web is gone")
	}
	cv, share := p.Canary()
	lines := []string{fmt.Sprintf("stable %s, canary %q at %g%%, held %v", p.StableVersion(), cv, share, r.Held("web"))}
	bs := p.Backends()
	sort.Slice(bs, func(i, j int) bool { return bs[i].Name() < bs[j].Name() })
	for _, b := range bs {
		lines = append(lines, fmt.Sprintf("%s %s %s weight %d %s", b.Name(), b.Address(), b.Version(), b.Weight(), b.State()))
	}
	return strings.Join(lines, "\n")
}

// settled waits until no backend of r's pool is still draining: a live
// drain and a restarted one both end drained once the backend is idle.
func settled(t *testing.T, r *control.Registry) {
	t.Helper()
	ok := ctPoll(10*time.Second, func() bool {
		for _, b := range r.Pool("web").Backends() {
			if b.State() == pool.Draining {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("a backend is still draining after 10s:\n%s", poolPicture(t, r))
	}
}

// TestApplyLiveAndRestartReachTheSamePool makes every kind of decision on
// a running registry, then starts a second one from the same file and
// state file (a restart) and reloads the first: all three must show the
// same pool, since a decision, a restart and a reload reach the pool
// through the one desired state and the one Apply.
func TestApplyLiveAndRestartReachTheSamePool(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	addrs := stBackends{}
	for _, n := range stAllNames {
		addrs[n] = testbed.Backend(t, ok)
	}
	spare, standby := testbed.Backend(t, ok), testbed.Backend(t, ok)
	dir, cfgPath, cfg := stSetup(t, addrs, "")
	stateFile := filepath.Join(dir, "baton.state.json")

	live := stNew(t, cfg, stateFile)
	live.Start()
	w7 := 7
	steps := []struct {
		what string
		do   func() error
	}{
		{"drain b1", func() error { _, err := live.Drain("web", "b1"); return err }},
		{"eject b2", func() error { _, err := live.Eject("web", "b2"); return err }},
		{"move b3 and weigh it", func() error {
			_, err := live.Patch("web", "b3", control.PatchSpec{Weight: &w7, Address: &spare})
			return err
		}},
		{"drain then enable b5", func() error {
			if _, err := live.Drain("web", "b5"); err != nil {
				return err
			}
			_, err := live.Enable("web", "b5", control.EnableSpec{})
			return err
		}},
		{"add b6 on standby", func() error {
			_, err := live.Add("web", control.AddSpec{Name: "b6", Address: standby, Version: "v3", Standby: true})
			return err
		}},
		{"canary v2 at 10 %", func() error { return live.SetCanary("web", "v2", 10) }},
		{"hold", func() error { return live.Hold("web", true) }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
	}
	settled(t, live)
	want := poolPicture(t, live)
	for _, must := range []string{"b1 " + addrs["b1"] + " v1 weight 100 drained", "b2 " + addrs["b2"] + " v1 weight 100 ejected",
		"b3 " + spare + " v1 weight 7 active", "b5 " + addrs["b5"] + " v1 weight 100 active", "b6 " + standby + " v3 weight 100 drained",
		`canary "v2" at 10%, held true`} {
		if !strings.Contains(want, must) {
			t.Fatalf("after the decisions the pool is\n%s\nwant a line with %q", want, must)
		}
	}

	// A restart: a second process from the same files.
	restarted := stNew(t, cfg, stateFile)
	restarted.Start()
	settled(t, restarted)
	if got := poolPicture(t, restarted); got != want {
		t.Errorf("after a restart the pool is\n%s\nlive operation left it\n%s", got, want)
	}

	// A reload of a file that changed elsewhere keeps every decision.
	text, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(text), "pools:\n", "pools:\n  - name: other\n    routes: [{path_prefix: /other/}]\n    backends:\n      - {name: o1, address: \""+spare+"\"}\n", 1)
	cfg2, err := config.Parse([]byte(edited), cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Reload(cfg2); err != nil {
		t.Fatal(err)
	}
	if got := poolPicture(t, live); got != want {
		t.Errorf("after a reload the pool is\n%s\nbefore it was\n%s", got, want)
	}

	// The standby keeps out of rotation in every case: it never took a
	// request although its health checks pass.
	for _, r := range []*control.Registry{live, restarted} {
		if b := stBackend(t, r, "b6"); b.Requests() != 0 {
			t.Errorf("the standby took %d requests", b.Requests())
		}
	}
}
