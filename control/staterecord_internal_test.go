package control

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// goldenState sets every field the state file holds.
func goldenState() *State {
	at := time.Date(2026, 12, 4, 1, 2, 3, 0, time.UTC)
	w, fw := 50, 100
	return &State{Format: stateFormat, Pools: map[string]*PoolState{
		"shop": {
			StableVersion: "v41", Held: true, FileStable: "v40",
			Canary:     &CanaryState{Version: "v42", Weight: 25},
			FileCanary: &CanaryState{Version: "v42", Weight: 5},
			Backends: map[string]*BackendState{
				"web-1": {State: pool.Drained, Weight: &w, Version: "v42", Address: "127.0.0.1:9101",
					FileWeight: &fw, FileVersion: "v41", FileAddress: "127.0.0.1:9001"},
				"web-9": {State: pool.Ejected, Address: "127.0.0.1:9109", Added: true},
				"web-3": {Removed: true},
			},
			LastCanary: &PreviousCanary{Version: "v40", Stable: "v39", Outcome: "rolled_back", By: "judge", Verdict: "fail",
				Rule: "signature", Reason: "new error", At: at, Signatures: []JudgedSignature{{
					Key: "POST /checkout 500 server_error", Class: "new", Counts: map[string]uint64{"v40": 4}, FailsRelease: true,
					Example: &canary.Example{Time: at, Version: "v40", Path: "/checkout", Status: 500, Body: "cart lost"}}}},
			Lease: &Lease{Holder: "deploy-7", Expires: at.Add(time.Minute)},
			Rollout: &RolloutRecord{From: "v41", To: "v42", By: "deploy-7", Started: at, Gates: []GateRun{
				{Gate: GateBefore, Command: "migrate expand", State: GateDone, At: at},
				{Gate: GateAfterGone, Command: "migrate contract", State: GateFailed, At: at, Detail: "exit status 1"}}},
		},
		"blue": {
			Switch: &SwitchState{From: "v1", To: "v2", At: at, Until: at.Add(time.Minute), MaxErrorRate: 0.05,
				Old: []string{"b1"}, New: []string{"g1"}, By: "ops"},
			LastSwitch: &SwitchOutcome{From: "v0", To: "v1", Outcome: "kept", Reason: "no errors", At: at},
		},
	}}
}

// TestStateFileGolden: the state file of format 1 is what
// testdata/state.v1.json holds, byte for byte, and reads back to the same
// state (set BATON_UPDATE_GOLDEN=1 to write it after a deliberate change).
func TestStateFileGolden(t *testing.T) {
	golden := filepath.Join("testdata", "state.v1.json")
	if os.Getenv("BATON_UPDATE_GOLDEN") != "" {
		if err := saveState(golden, goldenState()); err != nil {
			t.Fatal(err)
		}
	}
	st, warning, err := loadState(golden)
	if err != nil || warning != "" {
		t.Fatalf("reading the golden file: %v %q", err, warning)
	}
	if !reflect.DeepEqual(st, goldenState()) {
		t.Errorf("the golden file reads as\n%+v\nwant\n%+v", st, goldenState())
	}
	out := filepath.Join(t.TempDir(), "state.json")
	if err := saveState(out, goldenState()); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(golden)
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, want) {
		t.Errorf("the state file written differs from %s:\n%s", golden, got)
	}
}

// TestStateFileForwardCompatible: a file a newer baton wrote within format 1
// — fields added at every level — reads as the same state, with a warning
// naming a field it ignored; a newer format is refused, saying so.
func TestStateFileForwardCompatible(t *testing.T) {
	st, warning, err := loadState(filepath.Join("testdata", "state.v1-newer.json"))
	if err != nil {
		t.Fatalf("a newer file of format 1: %v", err)
	}
	if !reflect.DeepEqual(st, goldenState()) {
		t.Errorf("the newer file reads as\n%+v\nwant\n%+v", st, goldenState())
	}
	if !strings.Contains(warning, "does not know") || !strings.Contains(warning, "cluster, pools.blue.switch.guard, pools.shop.backends.web-1.zone, pools.shop.last_canary.signatures[0].first_seen, pools.shop.train") {
		t.Errorf("warning %q; want it to name the unknown field", warning)
	}
	path := filepath.Join(t.TempDir(), "state.json")
	if err := os.WriteFile(path, []byte(`{"format": 2, "pools": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = loadState(path)
	if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "written by a newer baton") {
		t.Errorf("a format-2 file: %v", err)
	}
}
