package control_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// rgPool renders a pool "shop" whose backends answer their names.
func rgConfig(extra string, backends ...string) string {
	var sb strings.Builder
	sb.WriteString("listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: debug, access: false}\npools:\n  - name: shop\n")
	sb.WriteString("    health_check: {interval: 100ms, timeout: 80ms, rise: 1, fall: 3}\n")
	sb.WriteString(extra)
	sb.WriteString("    backends:\n")
	for _, b := range backends {
		sb.WriteString("      - " + b + "\n")
	}
	return sb.String()
}

func rgSpray(t *testing.T, url string, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	out := map[string]int{}
	for range n {
		res, err := c.Get(url)
		if err != nil {
			t.Fatalf("GET: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("GET: %d %s", res.StatusCode, body)
		}
		out[string(body)]++
	}
	return out
}

func rgReload(t *testing.T, b *testbed.Baton, yaml string) {
	t.Helper()
	cfg, err := config.Parse([]byte(yaml), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = b.Cfg.Listen
	cfg.StateFile = b.Cfg.StateFile
	if err := b.Reg.Reload(cfg); err != nil {
		t.Fatal(err)
	}
}

// After a promotion through the API, an edit of the file that sets a new
// canary (or switches everything to another version) wins over the runtime
// overrides it contradicts: a new version never gets stable traffic
// unverified.
func TestFileEditWinsOverStaleOverrides(t *testing.T) {
	s1, s2, s3, s4 := testbed.NamedBackend(t, "s1"), testbed.NamedBackend(t, "s2"), testbed.NamedBackend(t, "s3"), testbed.NamedBackend(t, "s4")
	be := func(name, addr, v string) string {
		return fmt.Sprintf("{name: %s, address: %q, version: %s}", name, addr, v)
	}
	b := testbed.Start(t, rgConfig("", be("s1", s1, "v1"), be("s2", s2, "v1"), be("s3", s3, "v1")))
	b.WaitHealthy(t, "shop", 3)
	if _, err := b.Reg.Drain("shop", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reg.Enable("shop", "s1", control.EnableSpec{Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Reg.Promote("shop"); err != nil {
		t.Fatal(err)
	}
	// The file now says: v2 everywhere is stable, and s4 runs v3 as a 5 % canary.
	rgReload(t, b, rgConfig("    stable_version: v2\n    canary: {version: v3, weight: 5}\n",
		be("s1", s1, "v2"), be("s2", s2, "v2"), be("s3", s3, "v2"), be("s4", s4, "v3")))
	p := b.Pool(t, "shop")
	if v, w := p.Canary(); v != "v3" || w != 5 {
		t.Fatalf("after the file set canary v3 at 5%%: canary %q at %g%%", v, w)
	}
	b.WaitHealthy(t, "shop", 4)
	got := rgSpray(t, b.URL("/"), 400)
	if got["s4"] != 20 {
		t.Errorf("the file's 5 %% canary got %d of 400 requests: %v", got["s4"], got)
	}
	// Blue/green in the file: every backend v3, stable v3.
	rgReload(t, b, rgConfig("    stable_version: v3\n",
		be("s1", s1, "v3"), be("s2", s2, "v3"), be("s3", s3, "v3"), be("s4", s4, "v3")))
	if p.StableVersion() != "v3" || p.Backend("s1").Version() != "v3" {
		t.Errorf("after the file moved everything to v3: stable %q, s1 runs %q", p.StableVersion(), p.Backend("s1").Version())
	}
	if v, _ := p.Canary(); v != "" {
		t.Errorf("after blue/green in the file a canary %q remains", v)
	}
}

// After a promotion, a server not yet upgraded comes back on the previous
// version beside the new stable one — it is not a new canary, and a later
// rollback does not drain servers that never ran the canary.
func TestPreviousVersionStaysInService(t *testing.T) {
	s1, s2, s3 := testbed.NamedBackend(t, "s1"), testbed.NamedBackend(t, "s2"), testbed.NamedBackend(t, "s3")
	b := testbed.Start(t, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1),
		fmt.Sprintf("{name: s2, address: %q, version: v1}", s2), fmt.Sprintf("{name: s3, address: %q, version: v1}", s3)))
	b.WaitHealthy(t, "shop", 3)
	b.Reg.Drain("shop", "s1")
	if _, err := b.Reg.Enable("shop", "s1", control.EnableSpec{Version: "v2"}); err != nil {
		t.Fatal(err)
	}
	if err := b.Reg.Promote("shop"); err != nil {
		t.Fatal(err)
	}
	b.Reg.Drain("shop", "s2")
	if _, err := b.Reg.Enable("shop", "s2", control.EnableSpec{}); err != nil {
		t.Fatal(err)
	}
	p := b.Pool(t, "shop")
	if v, _ := p.Canary(); v != "" {
		t.Fatalf("re-enabling a server still on v1 after promoting v2 started canary %q", v)
	}
	b.WaitHealthy(t, "shop", 3)
	got := rgSpray(t, b.URL("/"), 300)
	if got["s1"] != 100 || got["s2"] != 100 || got["s3"] != 100 {
		t.Errorf("split after the upgrade of s1 and re-enable of s2: %v; want 100 each", got)
	}
	if err := b.Reg.Rollback("shop"); err != nil {
		t.Fatal(err)
	}
	if p.Backend("s3").State() != pool.Active {
		t.Errorf("a rollback without a canary drained s3 (now %s)", p.Backend("s3").State())
	}
}

// A backend added at runtime that the file later lists, then removed through
// the API, stays removed.
func TestRemoveOfAddedBackendTheFileListsSticks(t *testing.T) {
	s1, s4 := testbed.NamedBackend(t, "s1"), testbed.NamedBackend(t, "s4")
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1))), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.StateFile = dir + "/state.json"
	b := testbed.StartConfig(t, cfg)
	b.WaitHealthy(t, "shop", 1)
	if _, err := b.Reg.Add("shop", control.AddSpec{Name: "s4", Address: s4, Version: "v1"}); err != nil {
		t.Fatal(err)
	}
	rgReload(t, b, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1), fmt.Sprintf("{name: s4, address: %q, version: v1}", s4)))
	if _, err := b.Reg.Remove("shop", "s4"); err != nil {
		t.Fatal(err)
	}
	if be := b.Pool(t, "shop").Backend("s4"); be != nil {
		t.Fatalf("s4 is still in the pool after its removal (%s)", be.State())
	}
	st := b.Reg.State()
	if bs := st.Pools["shop"].Backends["s4"]; bs == nil || !bs.Removed {
		t.Errorf("the overlay lost the removal of s4: %+v", bs)
	}
}

// Repeating a removal that is still waiting for in-flight requests answers
// with the same backend, so a script can keep waiting.
func TestRepeatedRemoveWhileFinishing(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	slow := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "s1")
	}))
	b := testbed.Start(t, rgConfig("    drain_timeout: 20s\n", fmt.Sprintf("{name: s1, address: %q, version: v1}", slow)))
	b.WaitHealthy(t, "shop", 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res, err := http.Get(b.URL("/slow"))
		if err == nil {
			res.Body.Close()
		}
	}()
	be := b.Pool(t, "shop").Backend("s1")
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 1 }, "the slow request in flight")
	first, err := b.Reg.Remove("shop", "s1")
	if err != nil {
		t.Fatal(err)
	}
	again, err := b.Reg.Remove("shop", "s1")
	if err != nil || again != first {
		t.Fatalf("repeating the removal: %v, %v; want the same backend", again, err)
	}
	once.Do(func() { close(release) })
	<-done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := again.WaitDrained(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Reg.Remove("shop", "s1"); !errors.Is(err, pool.ErrUnknownBackend) {
		t.Errorf("once gone, removing again: %v; want unknown backend", err)
	}
}

// A drain that someone cancels by enabling the backend does not report the
// backend drained.
func TestDrainWaitCancelledByEnable(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	defer once.Do(func() { close(release) })
	slow := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
	}))
	b := testbed.Start(t, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", slow)))
	b.WaitHealthy(t, "shop", 1)
	go func() {
		res, err := http.Get(b.URL("/slow"))
		if err == nil {
			res.Body.Close()
		}
	}()
	be := b.Pool(t, "shop").Backend("s1")
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 1 }, "the slow request in flight")
	b.Reg.Drain("shop", "s1")
	errc := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := be.WaitDrained(ctx)
		errc <- err
	}()
	if _, err := b.Reg.Enable("shop", "s1", control.EnableSpec{}); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, pool.ErrDrainCancelled) {
		t.Errorf("WaitDrained after the backend was enabled: %v; want ErrDrainCancelled", err)
	}
	once.Do(func() { close(release) })
}

// A backend removed without waiting still has its drain timeout enforced.
func TestRemovedBackendDrainTimeout(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	slow := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			w.WriteHeader(200)
			w.(http.Flusher).Flush()
			<-release
		}
	}))
	other := testbed.NamedBackend(t, "s2")
	b := testbed.Start(t, rgConfig("    drain_timeout: 300ms\n", fmt.Sprintf("{name: s1, address: %q, version: v1}", slow),
		fmt.Sprintf("{name: s2, address: %q, version: v1, weight: 0}", other)))
	b.WaitHealthy(t, "shop", 2)
	go func() {
		res, err := http.Get(b.URL("/slow"))
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
		}
	}()
	be := b.Pool(t, "shop").Backend("s1")
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 1 }, "the stream in flight")
	if _, err := b.Reg.Remove("shop", "s1"); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Status().Idle() },
		"the removed backend's stream cut at its 300ms drain timeout")
}

// PATCH refuses an address another backend of the pool already has.
func TestPatchRefusesDuplicateAddress(t *testing.T) {
	s1, s2 := testbed.NamedBackend(t, "s1"), testbed.NamedBackend(t, "s2")
	b := testbed.Start(t, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1), fmt.Sprintf("{name: s2, address: %q, version: v1}", s2)))
	b.WaitHealthy(t, "shop", 2)
	addr := s1
	if _, err := b.Reg.Patch("shop", "s2", control.PatchSpec{Address: &addr}); !errors.Is(err, control.ErrConflict) {
		t.Errorf("PATCH s2 to s1's address: %v; want a conflict", err)
	}
}

// The comparison's counts never wrap when a version's evidence is recreated.
func TestCanaryReportSurvivesEvidenceRecreated(t *testing.T) {
	s1 := testbed.NamedBackend(t, "s1")
	b := testbed.Start(t, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1)))
	b.WaitHealthy(t, "shop", 1)
	rgSpray(t, b.URL("/"), 30)
	if _, err := b.Reg.Canary("shop"); err != nil {
		t.Fatal(err)
	}
	rgReload(t, b, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v2}", s1)))
	rgReload(t, b, rgConfig("", fmt.Sprintf("{name: s1, address: %q, version: v1}", s1)))
	b.WaitHealthy(t, "shop", 1)
	rgSpray(t, b.URL("/"), 5)
	rep, err := b.Reg.Canary("shop")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range rep.Versions {
		if v.Requests > 1000 {
			t.Errorf("version %s reports %d requests", v.Version, v.Requests)
		}
	}
}
