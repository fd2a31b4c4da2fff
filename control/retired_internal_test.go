package control

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

func wantCode(t *testing.T, what string, err error, code string) {
	t.Helper()
	var c *Conflict
	if !errors.As(err, &c) || c.Code != code {
		t.Fatalf("%s: %v; want 409 %s", what, err, code)
	}
}

// TestAfterGoneRetiresFrom: the after_gone gate cannot start while the
// version it waits for is held (checked under the registry's lock), and
// starting it retires that version in the same change: no patch, add or
// enable, no reload and no restart puts a backend of it in rotation again,
// until a rollout to it clears the tombstone.
func TestAfterGoneRetiresFrom(t *testing.T) {
	dir := t.TempDir()
	r := cookieRegistry(t, dir)
	if _, err := r.TakeLease("web", "ci", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := r.BeginRollout("web", "ci", "v1", "v2"); err != nil {
		t.Fatal(err)
	}
	gate := GateSpec{Holder: "ci", To: "v2", Gate: GateAfterGone, State: GateRunning, Command: "drop column"}
	_, err := r.RecordGate("web", gate)
	wantCode(t, "the gate while v1 is stable and serves", err, v1.CodeVersionPresent)
	if !strings.Contains(err.Error(), "stable") || !strings.Contains(err.Error(), "b1") {
		t.Errorf("the refusal does not say what holds v1: %v", err)
	}

	// v2 becomes stable and b1 runs it: v1 is gone.
	if err := r.Promote("web"); err != nil {
		t.Fatal(err)
	}
	v := "v2"
	if _, err := r.Patch("web", "b1", PatchSpec{Version: &v}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RecordGate("web", gate); err != nil {
		t.Fatalf("the gate once v1 is gone: %v", err)
	}

	check := func(r *Registry, when string) {
		t.Helper()
		v := "v1"
		_, err := r.Patch("web", "b1", PatchSpec{Version: &v})
		wantCode(t, when+": b1 back to v1", err, v1.CodeVersionRetired)
		_, err = r.Add("web", AddSpec{Name: "b3", Address: "127.0.0.1:3", Version: "v1"})
		wantCode(t, when+": a new backend of v1", err, v1.CodeVersionRetired)
	}
	check(r, "after the gate")
	r.Close()
	r2 := cookieRegistry(t, dir)
	check(r2, "after a restart")

	// A reload that names b1 on v1 again (the override dropped by the
	// file changing it) keeps b1 out of rotation.
	path := filepath.Join(dir, "baton.yaml")
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(text), `{name: b2, address: "127.0.0.1:2", version: v2}`,
		`{name: b2, address: "127.0.0.1:2", version: v2}
      - {name: b4, address: "127.0.0.1:4", version: v1}`, 1)
	if err := os.WriteFile(path, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	if b, err := r2.Backend("web", "b4"); err != nil || b.State() == pool.Active {
		t.Fatalf("b4 of retired v1 after a reload: %v %v; want it out of rotation", b.State(), err)
	}
	_, err = r2.Enable("web", "b4", EnableSpec{})
	wantCode(t, "enabling b4 of v1", err, v1.CodeVersionRetired)

	// A rollout to v1 clears it.
	if _, err := r2.BeginRollout("web", "ci", "v2", "v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r2.Enable("web", "b4", EnableSpec{}); err != nil {
		t.Fatalf("enabling b4 once a rollout to v1 began: %v", err)
	}
}

// TestAfterGoneWaitsForEveryVersion: in a mixed pool — stable v2, b1 left
// on v1 — a rollout to v3 records v1 beside v2 (also), and its after_gone
// gate cannot start while v1 is present, even with v2 gone; starting it
// retires both. A rollout does not replace one whose after_gone gate has
// not run, unless told to (review item 9).
func TestAfterGoneWaitsForEveryVersion(t *testing.T) {
	r := cookieRegistry(t, t.TempDir())
	if _, err := r.TakeLease("web", "ci", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := r.Promote("web"); err != nil { // v2 stable; b1 still on v1
		t.Fatal(err)
	}
	rec, err := r.BeginRollout("web", "ci", "v2", "v3", WithAfterGone())
	if err != nil {
		t.Fatal(err)
	}
	if rec.From != "v2" || len(rec.Also) != 1 || rec.Also[0] != "v1" || !rec.AfterGone {
		t.Fatalf("the record of v2 → v3 with b1 on v1: %+v; want from v2, also [v1], after_gone", rec)
	}
	_, err = r.BeginRollout("web", "ci", "v3", "v4")
	wantCode(t, "another rollout over one whose after_gone gate has not run", err, v1.CodeRolloutUnfinished)

	// v3 replaces v2 on b2 and becomes stable: v2 is gone, v1 is not.
	v := "v3"
	if _, err := r.Patch("web", "b2", PatchSpec{Version: &v}); err != nil {
		t.Fatal(err)
	}
	if err := r.Promote("web"); err != nil {
		t.Fatal(err)
	}
	gate := GateSpec{Holder: "ci", To: "v3", Gate: GateAfterGone, State: GateRunning, Command: "drop column"}
	_, err = r.RecordGate("web", gate)
	wantCode(t, "the gate while b1 still runs v1", err, v1.CodeVersionPresent)
	if !strings.Contains(err.Error(), "v1") || !strings.Contains(err.Error(), "b1") {
		t.Errorf("the refusal does not say v1 on b1 holds it: %v", err)
	}

	if _, err := r.Drain("web", "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.RecordGate("web", gate); err != nil {
		t.Fatalf("the gate once v1 and v2 are gone: %v", err)
	}
	for _, old := range []string{"v1", "v2"} {
		if _, err := r.Enable("web", "b1", EnableSpec{Version: old}); err == nil {
			t.Errorf("%s put back in rotation after the gate retired it", old)
		} else {
			wantCode(t, "enable "+old, err, v1.CodeVersionRetired)
		}
	}

	// Running: not done yet, so still unfinished; done, it may be replaced.
	_, err = r.BeginRollout("web", "ci", "v3", "v4")
	wantCode(t, "a rollout over one whose after_gone gate runs", err, v1.CodeRolloutUnfinished)
	if rec, err := r.BeginRollout("web", "ci", "v3", "v4", ReplaceUnfinished()); err != nil || rec.To != "v4" {
		t.Fatalf("replacing the unfinished record when told to: %+v, %v", rec, err)
	}
	if _, err := r.BeginRollout("web", "ci", "v4", "v5"); err != nil {
		t.Errorf("a rollout over one without an after_gone gate: %v", err)
	}
}
