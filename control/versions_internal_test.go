package control

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
)

func versionIn(t *testing.T, pv *PoolVersions, version string) VersionPresence {
	t.Helper()
	for _, v := range pv.Versions {
		if v.Version == version {
			return v
		}
	}
	t.Fatalf("version %s not listed: %+v", version, pv.Versions)
	return VersionPresence{}
}

// TestCountsLostHoldEveryVersion: a restart that cannot restore the
// cookies' counts — the file missing beside an existing state file, or no
// state file at all — holds every version asked about, even one no
// backend runs now, for a max_age from the start.
func TestCountsLostHoldEveryVersion(t *testing.T) {
	dir := t.TempDir()
	r := cookieRegistry(t, dir)
	if err := r.SetCanary("web", "v2", 10); err != nil { // a decision: the state file exists
		t.Fatal(err)
	}
	r.Close()
	if _, err := os.Stat(r.stateFile); err != nil {
		t.Fatalf("no state file after a decision: %v", err)
	}
	if err := os.Remove(AffinityPath(r.stateFile)); err != nil {
		t.Fatal(err)
	}
	r2 := cookieRegistry(t, dir)
	pv, err := r2.Versions("web", "v0")
	if err != nil {
		t.Fatal(err)
	}
	if pv.CountsUnknownUntil.Before(time.Now().Add(time.Hour)) {
		t.Errorf("counts unknown until %s, want at least a max_age from now", pv.CountsUnknownUntil)
	}
	if v := versionIn(t, pv, "v0"); v.Gone(false) || v.CountsUnknownUntil.IsZero() {
		t.Errorf("v0, which no backend runs, with the counts lost: gone %v, unknown until %s; want held", v.Gone(false), v.CountsUnknownUntil)
	}

	// state_file: off keeps no counts at all.
	cfg, err := config.Load(filepath.Join(dir, "baton.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r2.Close()
	r3, err := New(cfg, "", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer r3.Close()
	pv, err = r3.Versions("web", "v0")
	if err != nil {
		t.Fatal(err)
	}
	if v := versionIn(t, pv, "v0"); v.Gone(false) || v.CountsUnknownUntil.Before(time.Now().Add(time.Hour)) {
		t.Errorf("v0 without a state file: gone %v, unknown until %s; want held for a max_age", v.Gone(false), v.CountsUnknownUntil)
	}
}

// TestVersionsStableAndUnknownNeverGone: the pool's stable version is not
// gone while it is stable, even with no backend of it in rotation, and a
// version baton never saw is listed unknown and not gone.
func TestVersionsStableAndUnknownNeverGone(t *testing.T) {
	r := cookieRegistry(t, t.TempDir()) // a first start: nothing to restore
	if _, err := r.Drain("web", "b1"); err != nil {
		t.Fatal(err)
	}
	pv, err := r.Versions("web", "v9")
	if err != nil {
		t.Fatal(err)
	}
	if !pv.CountsUnknownUntil.IsZero() {
		t.Fatalf("a first start has nothing to restore, but counts are unknown until %s", pv.CountsUnknownUntil)
	}
	v1 := versionIn(t, pv, "v1")
	if v1.Role != "stable" || v1.Gone(false) || v1.Gone(true) {
		t.Errorf("stable v1 with b1 draining: role %q gone %v/%v; want stable and not gone", v1.Role, v1.Gone(false), v1.Gone(true))
	}
	v9 := versionIn(t, pv, "v9")
	if v9.Known || v9.Gone(false) || v9.Gone(true) {
		t.Errorf("v9, never seen: known %v gone %v/%v; want unknown and not gone", v9.Known, v9.Gone(false), v9.Gone(true))
	}

}

// TestPoolRemovedAndBroughtBackKeepsItsCookies: a reload that drops a
// pool and one that brings it back do not make its versions' cookies
// vanish (a reviewer's false "gone": the new pool started empty).
func TestPoolRemovedAndBroughtBackKeepsItsCookies(t *testing.T) {
	dir := t.TempDir()
	r := cookieRegistry(t, dir)
	issueCookies(t, r, "b1", 5)
	before, err := r.Versions("web", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if n := versionIn(t, before, "v1").Cookies.Count(); n != 5 {
		t.Fatalf("v1 has %d cookies before the reloads, want 5", n)
	}
	full := r.cfg
	without := *full
	other := full.Pools[0]
	other.Name = "other"
	without.Pools = []config.Pool{other}
	if err := r.Reload(&without); err != nil {
		t.Fatal(err)
	}
	back := *full
	if err := r.Reload(&back); err != nil {
		t.Fatal(err)
	}
	after, err := r.Versions("web", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if v := versionIn(t, after, "v1"); v.Cookies.Count() != 5 || v.Gone(false) {
		t.Fatalf("after the pool left and came back v1 has %d cookies (gone %v), want the 5 issued before", v.Cookies.Count(), v.Gone(false))
	}
}
