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
