package control_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baton-lb/baton/control"
)

// TestAuditLogIsPersisted: changes and refusals are appended to the audit
// file beside the state file as JSON lines, come back after a restart (in
// their own lists), and the file is rotated by size.
func TestAuditLogIsPersisted(t *testing.T) {
	_, _, cfg := stSetup(t, stFakeAddrs(), "")
	audit := control.AuditPath(cfg.StateFile)
	if filepath.Dir(audit) != filepath.Dir(cfg.StateFile) || filepath.Base(audit) != "baton.audit.jsonl" {
		t.Fatalf("audit file %s for state file %s", audit, cfg.StateFile)
	}
	r1, err := control.New(cfg, cfg.StateFile, ctLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Drain("web", "b1", control.By("ops")); err != nil {
		t.Fatal(err)
	}
	r1.Audit(control.Event{Actor: "unauthenticated", Action: "POST /v1/pools/web/backends", Refused: "401 unauthorized: a valid token is required"})
	r1.Close()

	f, err := os.Open(audit)
	if err != nil {
		t.Fatal(err)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev map[string]any
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		lines = append(lines, ev)
	}
	f.Close()
	if len(lines) != 2 || lines[0]["action"] != "drain" || lines[0]["actor"] != "ops" || lines[1]["refused"] == nil {
		t.Fatalf("audit file holds %v", lines)
	}

	r2 := stNew(t, cfg, cfg.StateFile)
	if evs := r2.Events(0, false); len(evs) != 1 || evs[0].Action != "drain" || evs[0].Backend != "b1" {
		t.Errorf("changes after a restart: %+v", evs)
	}
	if evs := r2.Events(0, true); len(evs) != 1 || !strings.HasPrefix(evs[0].Refused, "401") {
		t.Errorf("refusals after a restart: %+v", evs)
	}

	// Rotation: 12 MiB of events make one rotated file, and the current
	// file starts small again.
	big := strings.Repeat("x", 300<<10)
	for i := 0; i < 40; i++ {
		r2.Audit(control.Event{Actor: "ops", Action: "note", Detail: big})
	}
	st1, err1 := os.Stat(audit + ".1")
	st0, err0 := os.Stat(audit)
	if err1 != nil || err0 != nil {
		t.Fatalf("after 12 MiB of events: %v, %v", err1, err0)
	}
	if st1.Size() > 10<<20 || st0.Size() >= st1.Size() {
		t.Errorf("rotated file %d bytes, current %d; want at most 10 MiB and the current one smaller", st1.Size(), st0.Size())
	}
	if _, err := os.Stat(audit + ".2"); err == nil {
		t.Errorf("12 MiB made a second rotated file")
	}
}
