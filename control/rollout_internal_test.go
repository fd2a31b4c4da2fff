package control

import (
	"errors"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
)

func conflictCode(err error) string {
	var c *Conflict
	if errors.As(err, &c) {
		return c.Code
	}
	return ""
}

// TestRolloutRecordKeepsGatesOnce: only the lease's holder writes a
// pool's rollout record; beginning the same rollout again keeps it (the
// version it replaces, the gates it ran); a gate that is done is refused
// when it would start again; bad input changes nothing; the record
// outlives a restart.
func TestRolloutRecordKeepsGatesOnce(t *testing.T) {
	dir := t.TempDir()
	r := cookieRegistry(t, dir)
	if _, err := r.BeginRollout("web", "ci", "v1", "v2"); conflictCode(err) != v1.CodeLeaseNotHeld {
		t.Fatalf("a rollout begun without the lease: %v", err)
	}
	if _, err := r.TakeLease("web", "ci", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := r.BeginRollout("web", "someone else", "v1", "v2"); conflictCode(err) != v1.CodeLeaseNotHeld {
		t.Errorf("a rollout begun by another than the lease's holder: %v", err)
	}
	for _, bad := range [][2]string{{"v1", "v1"}, {"", "v2"}, {"v1", "v 2"}} {
		if _, err := r.BeginRollout("web", "ci", bad[0], bad[1]); !errors.Is(err, ErrInvalid) {
			t.Errorf("from %q to %q: %v, want invalid", bad[0], bad[1], err)
		}
	}
	if _, err := r.BeginRollout("nope", "ci", "v1", "v2"); !errors.Is(err, ErrUnknownPool) {
		t.Errorf("an unknown pool: %v", err)
	}
	if r.Rollout("web") != nil {
		t.Fatalf("refused calls left a record: %+v", r.Rollout("web"))
	}
	rec, err := r.BeginRollout("web", "ci", "v1", "v2")
	if err != nil || rec.From != "v1" || rec.To != "v2" || rec.By != "ci" {
		t.Fatalf("begin: %+v, %v", rec, err)
	}
	gate := func(state string) (RolloutRecord, error) {
		return r.RecordGate("web", GateSpec{Holder: "ci", To: "v2", Gate: GateBefore, State: state, Command: "migrate expand"})
	}
	if _, err := gate(GateRunning); err != nil {
		t.Fatal(err)
	}
	if rec, err = gate(GateDone); err != nil || rec.Gate(GateBefore).State != GateDone {
		t.Fatalf("gate done: %+v, %v", rec, err)
	}
	if _, err := gate(GateRunning); conflictCode(err) != v1.CodeGateDone {
		t.Errorf("a done gate started again: %v, want gate_done", err)
	}
	if _, err := gate(GateDone); err != nil {
		t.Errorf("the same report of a done gate again: %v, want it to hold", err)
	}
	for _, bad := range []GateSpec{
		{Holder: "ci", To: "v2", Gate: "during", State: GateRunning, Command: "x"},
		{Holder: "ci", To: "v2", Gate: GateAfterGone, State: "maybe", Command: "x"},
		{Holder: "ci", To: "v2", Gate: GateAfterGone, State: GateRunning},
	} {
		if _, err := r.RecordGate("web", bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%+v: %v, want invalid", bad, err)
		}
	}
	if _, err := r.RecordGate("web", GateSpec{Holder: "ci", To: "v3", Gate: GateAfterGone, State: GateRunning, Command: "x"}); conflictCode(err) != v1.CodeNoRollout {
		t.Errorf("a gate of a rollout not begun: %v, want no_rollout", err)
	}
	// Begun again (a resumed run, which sees v2 stable already): kept.
	if rec, err := r.BeginRollout("web", "ci", "v0", "v2"); err != nil || rec.From != "v1" || rec.Gate(GateBefore) == nil {
		t.Errorf("begun again: %+v, %v; want the record as it was", rec, err)
	}
	r.Close()

	r2 := cookieRegistry(t, dir)
	rr := r2.Rollout("web")
	if rr == nil || rr.From != "v1" || rr.Gate(GateBefore) == nil || rr.Gate(GateBefore).State != GateDone {
		t.Fatalf("after a restart the record is %+v", rr)
	}
	if _, err := r2.RecordGate("web", GateSpec{Holder: "ci", To: "v2", Gate: GateBefore, State: GateRunning, Command: "migrate expand"}); conflictCode(err) != v1.CodeGateDone {
		t.Errorf("after a restart a done gate started again: %v", err)
	}
	// A release to another version replaces the record.
	if rec, err := r2.BeginRollout("web", "ci", "v2", "v3"); err != nil || rec.From != "v2" || len(rec.Gates) != 0 {
		t.Errorf("a new rollout: %+v, %v", rec, err)
	}
}
