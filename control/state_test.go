package control_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// The helpers below (prefixed ct) are shared by the tests of this package.

// ctLogger returns a logger into a buffer that is printed when the test
// fails.
func ctLogger(t *testing.T) zerolog.Logger {
	t.Helper()
	buf := &testbed.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(buf.String(), "\n")
			if len(lines) > 80 {
				lines = lines[len(lines)-80:]
			}
			t.Logf("baton logs (tail):\n%s", strings.Join(lines, "\n"))
		}
	})
	return zerolog.New(buf).Level(zerolog.DebugLevel).With().Timestamp().Logger()
}

// ctWriteAtomic replaces path the way editors and config tools do: a
// temporary file in the same directory, then a rename over path.
func ctWriteAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".edit-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		t.Fatal(err)
	}
}

// ctWriteInPlace truncates path and writes data into the same inode.
func ctWriteInPlace(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// ctDirNames lists the names in dir, sorted, hidden files included.
func ctDirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// ctPoll polls cond every few milliseconds until it holds or timeout passes;
// it reports whether cond held.
func ctPoll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not a wait for a condition
	}
	return true
}

// stBackends are the backend lines of the state tests' pool "web": b1–b3
// and b5 run v1, b4 runs v2 (the file's canary, at 0 %).
type stBackends map[string]string // name → address

func stConfigText(addrs stBackends, names []string, extra string) string {
	var sb strings.Builder
	sb.WriteString("listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: debug, format: json, access: false}\n")
	sb.WriteString(extra)
	sb.WriteString("pools:\n  - name: web\n    stable_version: v1\n    canary: {version: v2, weight: 0}\n")
	sb.WriteString("    health_check: {interval: 100ms, timeout: 80ms, rise: 1, fall: 3}\n    backends:\n")
	for _, n := range names {
		v := "v1"
		if n == "b4" {
			v = "v2"
		}
		fmt.Fprintf(&sb, "      - {name: %s, address: \"%s\", version: %s}\n", n, addrs[n], v)
	}
	return sb.String()
}

var stAllNames = []string{"b1", "b2", "b3", "b4", "b5"}

// stFakeAddrs are addresses nothing listens on, for tests that never start
// health checks.
func stFakeAddrs() stBackends {
	out := stBackends{}
	for i, n := range stAllNames {
		out[n] = fmt.Sprintf("127.0.0.1:%d", 1+i)
	}
	return out
}

// stSetup writes baton.yaml into a new directory and loads it.
func stSetup(t *testing.T, addrs stBackends, extra string) (dir, cfgPath string, cfg *config.Config) {
	t.Helper()
	dir = t.TempDir()
	cfgPath = filepath.Join(dir, "baton.yaml")
	ctWriteInPlace(t, cfgPath, []byte(stConfigText(addrs, stAllNames, extra)))
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return dir, cfgPath, cfg
}

func stNew(t *testing.T, cfg *config.Config, stateFile string) *control.Registry {
	t.Helper()
	r, err := control.New(cfg, stateFile, ctLogger(t))
	if err != nil {
		t.Fatalf("control.New: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func stBackend(t *testing.T, r *control.Registry, name string) *pool.Backend {
	t.Helper()
	b, err := r.Backend("web", name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// stReadState reads the state file strictly: it must exist, be one valid
// JSON document, and read back as baton reads it at start, with no field
// this baton does not know.
func stReadState(t *testing.T, path string) *control.State {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the state file: %v", err)
	}
	if !json.Valid(data) {
		t.Fatalf("the state file is not valid JSON: %q", data)
	}
	s, warning, err := control.ReadStateFile(path)
	if err != nil || warning != "" {
		t.Fatalf("reading the state file: %v %s\n%s", err, warning, data)
	}
	if s.Format != 1 {
		t.Fatalf("state file format %d, want 1", s.Format)
	}
	return s
}

func stBackendState(s *control.State, name string) *control.BackendState {
	if s == nil || s.Pools["web"] == nil {
		return nil
	}
	return s.Pools["web"].Backends[name]
}

// TestStateSurvivesCrash applies every kind of decision, and after each one
// checks that it is already on disk, in a valid file written atomically.
// Then, without closing the first registry (a crash), a second one built
// from the same file and state must have every decision in force, down to
// which backends Pick returns and the canary's exact share.
func TestStateSurvivesCrash(t *testing.T) {
	addrs := stBackends{}
	for _, n := range stAllNames {
		addrs[n] = testbed.NamedBackend(t, n)
	}
	dir, cfgPath, cfg := stSetup(t, addrs, "")
	stateFile := filepath.Join(dir, "baton.state.json")
	if cfg.StateFile != stateFile {
		t.Fatalf("default state file %q, want %q", cfg.StateFile, stateFile)
	}
	r1 := stNew(t, cfg, cfg.StateFile)
	if _, err := os.Stat(stateFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a state file exists before any decision: %v", err)
	}

	wantNames := []string{"baton.audit.jsonl", "baton.state.json", "baton.yaml"}
	afterEach := func(what string, check func(s *control.State) bool) {
		t.Helper()
		if got := ctDirNames(t, dir); !reflect.DeepEqual(got, wantNames) {
			t.Errorf("after %s the directory holds %q, want %q (temporary files left behind?)", what, got, wantNames)
		}
		s := stReadState(t, stateFile)
		if !check(s) {
			data, _ := os.ReadFile(stateFile)
			t.Errorf("after %s returned, the state file does not hold the decision:\n%s", what, data)
		}
	}

	if _, err := r1.Drain("web", "b1"); err != nil {
		t.Fatalf("drain: %v", err)
	}
	afterEach("Drain b1", func(s *control.State) bool {
		bs := stBackendState(s, "b1")
		return bs != nil && (bs.State == pool.Draining || bs.State == pool.Drained)
	})
	if _, err := r1.Eject("web", "b2"); err != nil {
		t.Fatalf("eject: %v", err)
	}
	afterEach("Eject b2", func(s *control.State) bool {
		bs := stBackendState(s, "b2")
		return bs != nil && bs.State == pool.Ejected
	})
	if _, err := r1.SetWeight("web", "b3", 7); err != nil {
		t.Fatalf("set weight: %v", err)
	}
	afterEach("SetWeight b3 7", func(s *control.State) bool {
		bs := stBackendState(s, "b3")
		return bs != nil && bs.Weight != nil && *bs.Weight == 7
	})
	if err := r1.SetCanary("web", "v2", 25); err != nil {
		t.Fatalf("set canary: %v", err)
	}
	afterEach("SetCanary v2 25%", func(s *control.State) bool {
		ps := s.Pools["web"]
		return ps != nil && ps.Canary != nil && ps.Canary.Version == "v2" && ps.Canary.Weight == 25
	})
	// The first registry has them in force too.
	if v, w := r1.Pool("web").Canary(); v != "v2" || w != 25 {
		t.Errorf("first registry: canary %s at %g%%, want v2 at 25%%", v, w)
	}

	// Crash: r1 is neither closed nor asked to save anything more. A new
	// process loads the file and the state from disk.
	cfg2, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	r2 := stNew(t, cfg2, cfg2.StateFile)
	if !reflect.DeepEqual(r2.State(), r1.State()) {
		a, _ := json.Marshal(r1.State())
		b, _ := json.Marshal(r2.State())
		t.Errorf("restored overlay differs:\n before %s\n after  %s", a, b)
	}
	if s := stBackend(t, r2, "b1").State(); s != pool.Draining && s != pool.Drained {
		t.Errorf("b1 after restart is %s, want draining or drained", s)
	}
	if s := stBackend(t, r2, "b2").State(); s != pool.Ejected {
		t.Errorf("b2 after restart is %s, want ejected", s)
	}
	for _, n := range []string{"b3", "b4", "b5"} {
		if s := stBackend(t, r2, n).State(); s != pool.Active {
			t.Errorf("%s after restart is %s, want active", n, s)
		}
	}
	wantW := map[string]int{"b1": 100, "b2": 100, "b3": 7, "b4": 100, "b5": 100}
	for n, w := range wantW {
		if got := stBackend(t, r2, n).Weight(); got != w {
			t.Errorf("%s weight after restart %d, want %d", n, got, w)
		}
	}
	p := r2.Pool("web")
	if v, w := p.Canary(); v != "v2" || w != 25 {
		t.Errorf("canary after restart %q at %g%%, want v2 at 25%%", v, w)
	}
	if sv := p.StableVersion(); sv != "v1" {
		t.Errorf("stable version after restart %q, want v1", sv)
	}

	// In force where it matters: what Pick hands out.
	r2.Start()
	if !ctPoll(10*time.Second, func() bool {
		for _, n := range []string{"b3", "b4", "b5"} {
			if stBackend(t, r2, n).Health() != pool.Up {
				return false
			}
		}
		return true
	}) {
		t.Fatal("b3, b4, b5 did not become healthy")
	}
	const picks = 400
	got := map[string]int{}
	for range picks {
		b, err := p.Pick(nil)
		if err != nil {
			t.Fatalf("pick: %v", err)
		}
		got[b.Name()]++
		b.Finish(&pool.Outcome{Class: pool.ClassOK, Status: 200, TTFB: time.Millisecond})
	}
	t.Logf("picks after restart: %v", got)
	if got["b1"] != 0 || got["b2"] != 0 {
		t.Errorf("the drained b1 got %d and the ejected b2 got %d picks, want none", got["b1"], got["b2"])
	}
	if got["b4"] != picks/4 {
		t.Errorf("the canary b4 got %d of %d picks, want exactly %d (25%%)", got["b4"], picks, picks/4)
	}
	// b3:b5 = 7:100 of the 300 stable picks: about 20 for b3.
	if got["b3"] < 14 || got["b3"] > 26 {
		t.Errorf("b3 (weight 7 against b5's 100) got %d of 300 stable picks, want about 20", got["b3"])
	}
}

// TestStateFileNeverTorn reads the state file in a loop while decisions are
// written: every read must see a whole, valid file (the rename makes the
// switch atomic), and no temporary file may remain.
func TestStateFileNeverTorn(t *testing.T) {
	dir, _, cfg := stSetup(t, stFakeAddrs(), "")
	r := stNew(t, cfg, cfg.StateFile)

	var reads, torn atomic.Int64
	var tornSample atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 200000 {
			select {
			case <-stop:
				return
			default:
			}
			data, err := os.ReadFile(cfg.StateFile)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			reads.Add(1)
			var s control.State
			if err != nil || json.Unmarshal(data, &s) != nil || s.Format != 1 {
				torn.Add(1)
				tornSample.Store(fmt.Sprintf("%q (err %v)", data, err))
			}
		}
	}()
	for i := range 40 {
		if _, err := r.SetWeight("web", "b"+fmt.Sprint(1+i%3), 10+i); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("set weight: %v", err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d reads of the state file during 40 decisions", reads.Load())
	if n := torn.Load(); n != 0 {
		t.Errorf("%d reads saw a torn or invalid state file, e.g. %v", n, tornSample.Load())
	}
	if got, want := ctDirNames(t, dir), []string{"baton.audit.jsonl", "baton.state.json", "baton.yaml"}; !reflect.DeepEqual(got, want) {
		t.Errorf("directory holds %q, want %q", got, want)
	}
	s := stReadState(t, cfg.StateFile)
	for i, n := range []string{"b1", "b2", "b3"} {
		want := 10 + 39 - (39-i)%3 // the last weight set for this backend
		bs := stBackendState(s, n)
		if bs == nil || bs.Weight == nil || *bs.Weight != want {
			t.Errorf("state file: %s weight %v, want %d", n, bs, want)
		}
	}
}

// TestCorruptStateRefusesToStart: a state file that cannot be used stops
// control.New with an error that wraps ErrCorruptState and names the file,
// and the file is left exactly as it was.
func TestCorruptStateRefusesToStart(t *testing.T) {
	cases := []struct{ name, content string }{
		{"garbage", "this is not JSON {{{\n"},
		{"truncated", `{"format": 1, "pools": {"web": {"backends": {"b1": {"state": "drai`},
		{"wrong format number", `{"format": 2, "pools": {}}`},
		{"format zero", `{"format": 0}`},
		{"bad state value", `{"format": 1, "pools": {"web": {"backends": {"b1": {"state": "sleeping"}}}}}`},
		{"null pool entry", `{"format": 1, "pools": {"web": null}}`},
		{"wrong type", `{"format": "1"}`},
		// A valid object followed by more data: the rest (here a second
		// state with a decision) would be silently ignored.
		{"trailing data", `{"format": 1}` + "\n" + `{"format": 1, "pools": {"web": {"backends": {"b1": {"state": "drained"}}}}}` + "\n"},
		{"trailing garbage", `{"format": 1, "pools": {"web": {"backends": {"b1": {"state": "ejected"}}}}} trailing junk`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, _, cfg := stSetup(t, stFakeAddrs(), "")
			if err := os.WriteFile(cfg.StateFile, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			old := time.Now().Add(-time.Hour).Truncate(time.Second)
			if err := os.Chtimes(cfg.StateFile, old, old); err != nil {
				t.Fatal(err)
			}
			namesBefore := ctDirNames(t, dir)
			r, err := control.New(cfg, cfg.StateFile, ctLogger(t))
			if err == nil {
				r.Close()
				t.Fatalf("control.New accepted the corrupt state file %q; overlay %+v", tc.content, r.State())
			}
			if !errors.Is(err, control.ErrCorruptState) {
				t.Errorf("error %q does not wrap ErrCorruptState", err)
			}
			if !strings.Contains(err.Error(), cfg.StateFile) {
				t.Errorf("error %q does not name the file %s", err, cfg.StateFile)
			}
			data, rerr := os.ReadFile(cfg.StateFile)
			if rerr != nil {
				t.Fatalf("the corrupt state file is gone: %v", rerr)
			}
			if string(data) != tc.content {
				t.Errorf("the corrupt state file was changed to %q", data)
			}
			if fi, err := os.Stat(cfg.StateFile); err == nil && !fi.ModTime().Equal(old) {
				t.Errorf("the corrupt state file was rewritten (mtime %s)", fi.ModTime())
			}
			if got := ctDirNames(t, dir); !reflect.DeepEqual(got, namesBefore) {
				t.Errorf("directory changed from %q to %q", namesBefore, got)
			}
		})
	}
	t.Run("state path is a directory", func(t *testing.T) {
		_, _, cfg := stSetup(t, stFakeAddrs(), "")
		if err := os.Mkdir(cfg.StateFile, 0o755); err != nil {
			t.Fatal(err)
		}
		r, err := control.New(cfg, cfg.StateFile, ctLogger(t))
		if err == nil {
			r.Close()
			t.Fatal("control.New accepted a directory as the state file")
		}
		if !errors.Is(err, control.ErrCorruptState) || !strings.Contains(err.Error(), cfg.StateFile) {
			t.Errorf("error %q: want ErrCorruptState naming %s", err, cfg.StateFile)
		}
		if fi, err := os.Stat(cfg.StateFile); err != nil || !fi.IsDir() {
			t.Errorf("the state path was touched: %v", err)
		}
	})
}

// TestMissingStateFileIsEmpty: no state file yet is a fresh start.
func TestMissingStateFileIsEmpty(t *testing.T) {
	dir, _, cfg := stSetup(t, stFakeAddrs(), "")
	r := stNew(t, cfg, cfg.StateFile)
	if s := r.State(); len(s.Pools) != 0 {
		t.Errorf("overlay from a missing file: %+v, want empty", s.Pools)
	}
	for _, n := range stAllNames {
		b := stBackend(t, r, n)
		if b.State() != pool.Active || b.Weight() != 100 {
			t.Errorf("%s: %s weight %d, want active weight 100", n, b.State(), b.Weight())
		}
	}
	if v, w := r.Pool("web").Canary(); v != "v2" || w != 0 {
		t.Errorf("canary %q at %g%%, want the file's v2 at 0%%", v, w)
	}
	if got := ctDirNames(t, dir); !reflect.DeepEqual(got, []string{"baton.yaml"}) {
		t.Errorf("directory holds %q after New with a missing state file", got)
	}
}

// TestUnwritableStateRefusesDecision: when the state cannot be saved, the
// decision fails with ErrPersist and nothing changes in the pool or the
// overlay.
func TestUnwritableStateRefusesDecision(t *testing.T) {
	dir, _, cfg := stSetup(t, stFakeAddrs(), "")
	missing := filepath.Join(dir, "no-such-dir")
	stateFile := filepath.Join(missing, "baton.state.json")
	r := stNew(t, cfg, stateFile)
	p := r.Pool("web")
	check := func(what string, err error) {
		t.Helper()
		if err == nil {
			t.Errorf("%s succeeded though the state file cannot be written", what)
			return
		}
		if !errors.Is(err, control.ErrPersist) {
			t.Errorf("%s: error %q does not wrap ErrPersist", what, err)
		}
	}
	_, err := r.Drain("web", "b1")
	check("Drain", err)
	_, err = r.Eject("web", "b2")
	check("Eject", err)
	_, err = r.SetWeight("web", "b3", 7)
	check("SetWeight", err)
	check("SetCanary", r.SetCanary("web", "v2", 25))

	for _, n := range stAllNames {
		b := stBackend(t, r, n)
		if b.State() != pool.Active || b.Weight() != 100 {
			t.Errorf("%s after failed decisions: %s weight %d, want active weight 100", n, b.State(), b.Weight())
		}
	}
	if v, w := p.Canary(); v != "v2" || w != 0 {
		t.Errorf("canary after a failed SetCanary: %q at %g%%, want v2 at 0%%", v, w)
	}
	if s := r.State(); len(s.Pools) != 0 {
		t.Errorf("overlay after failed decisions: %+v, want empty", s.Pools)
	}
	for _, ev := range r.Events(0, false) {
		switch ev.Action {
		case "drain", "eject", "patch", "canary":
			t.Errorf("audit log records %s of %s though it was not applied", ev.Action, ev.Backend)
		}
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the missing directory now exists: %v", err)
	}
	// Once the directory exists, the same decision works.
	if err := os.Mkdir(missing, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain("web", "b1"); err != nil {
		t.Fatalf("drain with a writable state path: %v", err)
	}
	if bs := stBackendState(stReadState(t, stateFile), "b1"); bs == nil || bs.State != pool.Draining {
		t.Errorf("state file after a successful drain: %+v", bs)
	}
}

// TestStateDropsRemovedBackends: a backend the file no longer lists loses
// its runtime decisions at the reload (on disk too), other decisions stay,
// and when it comes back within a minute it keeps only its admin state (a
// drained server stays out of rotation; after a minute it would start
// afresh, see TestGoneBackendsExpire).
func TestStateDropsRemovedBackends(t *testing.T) {
	addrs := stFakeAddrs()
	_, cfgPath, cfg := stSetup(t, addrs, "")
	r := stNew(t, cfg, cfg.StateFile)
	if _, err := r.SetWeight("web", "b2", 9); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain("web", "b3"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetWeight("web", "b3", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Eject("web", "b5"); err != nil {
		t.Fatal(err)
	}
	if bs := stBackendState(stReadState(t, cfg.StateFile), "b3"); bs == nil {
		t.Fatal("b3's decisions are not in the state file")
	}

	// The file drops b3.
	ctWriteAtomic(t, cfgPath, []byte(stConfigText(addrs, []string{"b1", "b2", "b4", "b5"}, "")))
	if err := r.ReloadFile(cfgPath); err != nil {
		t.Fatalf("reload without b3: %v", err)
	}
	if b := r.Pool("web").Backend("b3"); b != nil {
		t.Fatalf("b3 still in the pool after the file dropped it")
	}
	onDisk := stReadState(t, cfg.StateFile)
	if bs := stBackendState(onDisk, "b3"); bs != nil {
		t.Errorf("the state file still holds decisions about the removed b3: %+v", bs)
	}
	if bs := stBackendState(r.State(), "b3"); bs != nil {
		t.Errorf("the overlay still holds decisions about the removed b3: %+v", bs)
	}
	if bs := stBackendState(onDisk, "b2"); bs == nil || bs.Weight == nil || *bs.Weight != 9 {
		t.Errorf("b2's weight override was lost from the state file: %+v", bs)
	}
	if bs := stBackendState(onDisk, "b5"); bs == nil || bs.State != pool.Ejected {
		t.Errorf("b5's ejection was lost from the state file: %+v", bs)
	}
	if w := stBackend(t, r, "b2").Weight(); w != 9 {
		t.Errorf("b2 weight %d after the reload, want the override 9", w)
	}
	if s := stBackend(t, r, "b5").State(); s != pool.Ejected {
		t.Errorf("b5 is %s after the reload, want ejected", s)
	}

	// b3 comes back at once: a new backend, still drained, with the
	// file's weight.
	ctWriteAtomic(t, cfgPath, []byte(stConfigText(addrs, stAllNames, "")))
	if err := r.ReloadFile(cfgPath); err != nil {
		t.Fatalf("reload with b3: %v", err)
	}
	out := func(s pool.State) bool { return s == pool.Draining || s == pool.Drained }
	b3 := stBackend(t, r, "b3")
	if !out(b3.State()) || b3.Weight() != 100 {
		t.Errorf("b3 back in the file: %s weight %d, want out of rotation with weight 100", b3.State(), b3.Weight())
	}
	// And a restart agrees.
	cfg2, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	r2 := stNew(t, cfg2, cfg2.StateFile)
	if b := stBackend(t, r2, "b3"); !out(b.State()) || b.Weight() != 100 {
		t.Errorf("b3 after restart: %s weight %d, want out of rotation with weight 100", b.State(), b.Weight())
	}
	if b := stBackend(t, r2, "b5"); b.State() != pool.Ejected {
		t.Errorf("b5 after restart: %s, want ejected", b.State())
	}
}

// TestStateFileOff: state_file "off" keeps decisions in memory only.
func TestStateFileOff(t *testing.T) {
	dir, _, cfg := stSetup(t, stFakeAddrs(), "state_file: \"off\"\n")
	if cfg.StateFile != "" {
		t.Fatalf("state_file off loads as %q, want empty", cfg.StateFile)
	}
	r := stNew(t, cfg, cfg.StateFile)
	if _, err := r.Drain("web", "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetWeight("web", "b2", 5); err != nil {
		t.Fatal(err)
	}
	if err := r.SetCanary("web", "v2", 10); err != nil {
		t.Fatal(err)
	}
	if s := stBackend(t, r, "b1").State(); s != pool.Draining {
		t.Errorf("b1 is %s, want draining (in memory)", s)
	}
	if got := ctDirNames(t, dir); !reflect.DeepEqual(got, []string{"baton.yaml"}) {
		t.Errorf("with state_file off the directory holds %q, want only baton.yaml", got)
	}
	if _, err := os.Stat("off"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a file named \"off\" exists in the working directory")
	}
	r2 := stNew(t, cfg, cfg.StateFile)
	if s := stBackend(t, r2, "b1").State(); s != pool.Active {
		t.Errorf("after restart with state_file off b1 is %s, want active", s)
	}
	if w := stBackend(t, r2, "b2").Weight(); w != 100 {
		t.Errorf("after restart with state_file off b2 weight %d, want 100", w)
	}
}

// TestStateFileLocation: the default state file sits beside the config,
// named after it; a relative state_file is relative to the config's
// directory, not the working directory; an absolute one is kept.
func TestStateFileLocation(t *testing.T) {
	root := t.TempDir()
	abs := filepath.Join(root, "elsewhere", "abs.json")
	cases := []struct {
		file, stateLine, want string
	}{
		{"baton.yaml", "", "baton.state.json"},
		{"config.yml", "", "config.state.json"},
		{"etc/baton/prod.yaml", "", "etc/baton/prod.state.json"},
		{"baton.yaml", "state_file: custom.json\n", "custom.json"},
		{"etc/baton/baton.yaml", "state_file: state/s.json\n", "etc/baton/state/s.json"},
		{"etc/baton/baton.yaml", "state_file: ../shared/s.json\n", "etc/shared/s.json"},
		{"etc/baton/baton.yaml", "state_file: " + abs + "\n", abs},
	}
	for i, tc := range cases {
		dir := filepath.Join(root, fmt.Sprint(i))
		path := filepath.Join(dir, tc.file)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		ctWriteInPlace(t, path, []byte(stConfigText(stFakeAddrs(), stAllNames, tc.stateLine)))
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		want := tc.want
		if !filepath.IsAbs(want) {
			want = filepath.Join(dir, want)
		}
		if filepath.Clean(cfg.StateFile) != want {
			t.Errorf("%s with %q: state file %q, want %q", tc.file, tc.stateLine, cfg.StateFile, want)
		}
	}

	// End to end: decisions land where Load said, beside the config.
	dir, _, cfg := stSetup(t, stFakeAddrs(), "state_file: custom.json\n")
	r := stNew(t, cfg, cfg.StateFile)
	if _, err := r.Eject("web", "b1"); err != nil {
		t.Fatal(err)
	}
	if bs := stBackendState(stReadState(t, filepath.Join(dir, "custom.json")), "b1"); bs == nil || bs.State != pool.Ejected {
		t.Errorf("custom.json beside the config does not hold the decision: %+v", bs)
	}
	if _, err := os.Stat("custom.json"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("custom.json was written to the working directory")
	}
}

// TestFreezeWritesNothingAndThawRereadsTheFile: while frozen (a handover),
// neither decisions nor reloads write the state file; when decisions
// resume, the file's content is what counts, so a process whose handover
// failed half-way does not overwrite what the other process acknowledged.
func TestFreezeWritesNothingAndThawRereadsTheFile(t *testing.T) {
	_, cfgPath, cfg := stSetup(t, stFakeAddrs(), "")
	parent := stNew(t, cfg, cfg.StateFile)
	parent.Freeze(true)
	if _, err := parent.Drain("web", "b1"); !errors.Is(err, control.ErrUpgrading) {
		t.Errorf("a drain while frozen: %v, want ErrUpgrading", err)
	}
	cfg2, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg2.Pools[0].Backends[0].Weight = nil
	w := 7
	cfg2.Pools[0].Backends[1].Weight = &w
	if err := parent.Reload(cfg2); !errors.Is(err, control.ErrUpgrading) {
		t.Errorf("a reload while frozen: %v, want ErrUpgrading", err)
	}
	if err := parent.ReloadFile(cfgPath); !errors.Is(err, control.ErrUpgrading) {
		t.Errorf("a file reload while frozen: %v, want ErrUpgrading", err)
	}
	if _, err := os.Stat(cfg.StateFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the state file was written while frozen: %v", err)
	}

	// The other process (here a second registry on the same file) decides.
	child := stNew(t, cfg, cfg.StateFile)
	if _, err := child.Drain("web", "b2"); err != nil {
		t.Fatal(err)
	}
	if err := child.SetCanary("web", "v2", 25); err != nil {
		t.Fatal(err)
	}
	parent.Freeze(false)
	if s := stBackend(t, parent, "b2").State(); s != pool.Draining && s != pool.Drained {
		t.Errorf("after thawing, b2 is %s; want the drain the other process acknowledged", s)
	}
	if v, w := parent.Pool("web").Canary(); v != "v2" || w != 25 {
		t.Errorf("after thawing the canary is %q at %g%%, want v2 at 25%%", v, w)
	}
	// And the next decision keeps them.
	if _, err := parent.Eject("web", "b3"); err != nil {
		t.Fatal(err)
	}
	s := stReadState(t, cfg.StateFile)
	if bs := stBackendState(s, "b2"); bs == nil || (bs.State != pool.Draining && bs.State != pool.Drained) {
		t.Errorf("the parent's next decision dropped b2's drain: %+v", bs)
	}
}

// TestDroppedBackendKeepsItsDrainWhenItComesBack: a reload of a file that
// lost some backends (caught half-written, or an edit undone) logs which
// decisions it drops; a drained backend listed again within the minute is
// still drained, so a server being upgraded does not get traffic.
func TestDroppedBackendKeepsItsDrainWhenItComesBack(t *testing.T) {
	dir, _, cfg := stSetup(t, stFakeAddrs(), "")
	logs := &testbed.SyncBuffer{}
	r, err := control.New(cfg, cfg.StateFile, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	if _, err := r.Drain("web", "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetWeight("web", "b2", 7); err != nil {
		t.Fatal(err)
	}
	load := func(names ...string) {
		t.Helper()
		path := filepath.Join(dir, "baton.yaml")
		ctWriteInPlace(t, path, []byte(stConfigText(stFakeAddrs(), names, "")))
		c, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Reload(c); err != nil {
			t.Fatal(err)
		}
	}
	load("b3", "b4", "b5") // b1 and b2 missing
	for _, want := range []string{`"backend":"b1","dropped":"state draining"`, `"backend":"b2","dropped":"weight 7"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not name the dropped decision %s:\n%s", want, logs)
		}
	}
	load(stAllNames...)
	if s := stBackend(t, r, "b1").State(); s != pool.Draining && s != pool.Drained {
		t.Errorf("b1 came back %s; want it still out of rotation", s)
	}
	if w := stBackend(t, r, "b2").Weight(); w != 100 {
		t.Errorf("b2 came back with weight %d; only admin states are kept, want the file's 100", w)
	}
	if bs := stBackendState(stReadState(t, cfg.StateFile), "b1"); bs == nil || (bs.State != pool.Draining && bs.State != pool.Drained) {
		t.Errorf("the state file has b1 as %+v; want its drain saved again", bs)
	}
	if !strings.Contains(logs.String(), "keeps the admin state it had") {
		t.Errorf("the restored drain was not logged")
	}
}
