package control_test

import (
	"bytes"
	"os"
	"testing"
	"time"

	"github.com/baton-lb/baton/control"
)

// TestAffinityKeysPersistAndRotate: the keys of affinity cookies are made
// once and kept beside the state file (mode 0600), so a restart verifies the
// cookies it signed; after a day a new key signs and the previous one still
// verifies; the one before that is dropped; a process frozen for a handover
// only reads them.
func TestAffinityKeysPersistAndRotate(t *testing.T) {
	_, _, cfg := stSetup(t, stFakeAddrs(), "")
	r := stNew(t, cfg, cfg.StateFile)
	now := time.Now()
	k1, err := r.AffinityKeys(now)
	if err != nil || len(k1) != 1 || len(k1[0].Secret) != 32 {
		t.Fatalf("first keys %v, %v", k1, err)
	}
	st, err := os.Stat(control.KeysPath(cfg.StateFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file %v, %v; want mode 0600", st, err)
	}
	r.Close()

	r2 := stNew(t, cfg, cfg.StateFile)
	same, err := r2.AffinityKeys(now.Add(time.Hour))
	if err != nil || len(same) != 1 || !bytes.Equal(same[0].Secret, k1[0].Secret) {
		t.Fatalf("after a restart the keys are %v, %v; want the same key", same, err)
	}
	r2.Freeze(true)
	if frozen, _ := r2.AffinityKeys(now.Add(48 * time.Hour)); len(frozen) != 1 {
		t.Errorf("a frozen process rotated the keys: %d keys", len(frozen))
	}
	r2.Freeze(false)
	k2, err := r2.AffinityKeys(now.Add(25 * time.Hour))
	if err != nil || len(k2) != 2 || k2[0].ID != k1[0].ID+1 || !bytes.Equal(k2[1].Secret, k1[0].Secret) {
		t.Fatalf("after a day: %v, %v; want a new signing key and the old one second", k2, err)
	}
	k3, _ := r2.AffinityKeys(now.Add(50 * time.Hour))
	if len(k3) != 2 || !bytes.Equal(k3[1].Secret, k2[0].Secret) {
		t.Errorf("after two days: %d keys; want the newest two", len(k3))
	}

	// A damaged key file is an error that says what to do; baton keeps
	// serving with a key of its own (the caller's choice). So is a key
	// anyone could sign with (an empty secret), or one dated ahead.
	for _, bad := range []string{"{", `{"format": 1, "keys": [{"id": 1, "secret": "", "created": "2026-01-01T00:00:00Z"}]}`,
		`{"format": 1, "keys": [{"id": 1, "secret": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", "created": "2099-01-01T00:00:00Z"}]}`} {
		if err := os.WriteFile(control.KeysPath(cfg.StateFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := r2.AffinityKeys(now); err == nil || !bytes.Contains([]byte(err.Error()), []byte("delete")) {
			t.Errorf("key file %s: %v", bad, err)
		}
	}
}
