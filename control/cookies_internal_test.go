package control

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
)

// cookieRegistry starts a registry (no health checks) of pool web: b1 on
// v1, b2 on v2, a state file in dir.
func cookieRegistry(t *testing.T, dir string) *Registry {
	t.Helper()
	path := filepath.Join(dir, "baton.yaml")
	text := `listen: 127.0.0.1:0
admin: {listen: "off"}
pools:
  - name: web
    stable_version: v1
    canary: {version: v2, weight: 0}
    affinity: {max_age: 1h}
    backends:
      - {name: b1, address: "127.0.0.1:1", version: v1}
      - {name: b2, address: "127.0.0.1:2", version: v2}
`
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(cfg, cfg.StateFile, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

func issueCookies(t *testing.T, r *Registry, backend string, n int) {
	t.Helper()
	b, err := r.Backend("web", backend)
	if err != nil {
		t.Fatal(err)
	}
	_, c := b.CookieVersion()
	for range n {
		c.Issued(time.Now(), time.Hour)
	}
}

// cookiesOf returns how many cookies of version the registry counts, and
// until when.
func cookiesOf(t *testing.T, r *Registry, version string) (int64, time.Time) {
	t.Helper()
	pv, err := r.Versions("web")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range pv.Versions {
		if v.Version == version {
			return v.Cookies.Count(), v.Cookies.Until
		}
	}
	return 0, time.Time{}
}

// TestCookieCountsOutliveARestart: after a clean stop the next process
// counts exactly the cookies the last one gave; after a crash it counts
// what was last written, and one more for a max_age (and the shutdown
// timeout) from its start for each version that was still giving them
// or that the running canary serves; a file it cannot read makes every
// version present count as pinned that long.
func TestCookieCountsOutliveARestart(t *testing.T) {
	dir := t.TempDir()
	r := cookieRegistry(t, dir)
	issueCookies(t, r, "b1", 5)
	issueCookies(t, r, "b2", 2)
	r.Close()

	r2 := cookieRegistry(t, dir)
	if n, until := cookiesOf(t, r2, "v1"); n != 5 || until.Before(time.Now().Add(59*time.Minute)) {
		t.Errorf("v1 after a clean restart: %d cookies until %s, want 5 for an hour", n, until)
	}
	if n, _ := cookiesOf(t, r2, "v2"); n != 2 {
		t.Errorf("v2 after a clean restart: %d, want 2", n)
	}

	// A crash: the flusher wrote, then the process died with a canary
	// taking traffic.
	if err := r2.SetCanary("web", "v2", 10); err != nil {
		t.Fatal(err)
	}
	issueCookies(t, r2, "b1", 1)
	r2.writeCookies(false)
	written, err := os.ReadFile(AffinityPath(r2.stateFile))
	if err != nil {
		t.Fatal(err)
	}
	r2.Close()
	if err := os.WriteFile(AffinityPath(r2.stateFile), written, 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r3 := cookieRegistry(t, dir)
	wantUntil := start.Add(time.Hour + 30*time.Second)
	if n, until := cookiesOf(t, r3, "v1"); n != 7 || until.Before(wantUntil) {
		t.Errorf("v1 after a crash: %d until %s, want 6 written and 1 unseen, until at least %s", n, until, wantUntil)
	}
	if n, until := cookiesOf(t, r3, "v2"); n != 3 || until.Before(wantUntil) {
		t.Errorf("v2 (the running canary) after a crash: %d until %s, want 2 written and 1 unseen", n, until)
	}
	r3.Close()

	if err := os.WriteFile(AffinityPath(r3.stateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	r4 := cookieRegistry(t, dir)
	for _, v := range []string{"v1", "v2"} {
		if n, until := cookiesOf(t, r4, v); n != 1 || until.Before(time.Now().Add(time.Hour)) {
			t.Errorf("%s with an unreadable file: %d until %s, want it pinned for a max_age", v, n, until)
		}
	}
	r4.Close()
	data, err := os.ReadFile(AffinityPath(r4.stateFile))
	if err != nil || !strings.Contains(string(data), `"closed": true`) {
		t.Errorf("after a clean stop the file is %q (%v); want it marked closed", data, err)
	}
}
