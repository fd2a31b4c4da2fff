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

	read := func(path string) []map[string]any {
		t.Helper()
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		var lines []map[string]any
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Fatalf("audit line %q: %v", sc.Text(), err)
			}
			lines = append(lines, ev)
		}
		return lines
	}
	refusedPath := control.RefusedPath(cfg.StateFile)
	if filepath.Base(refusedPath) != "baton.refused.jsonl" {
		t.Fatalf("refused log %s", refusedPath)
	}
	if lines := read(audit); len(lines) != 1 || lines[0]["action"] != "drain" || lines[0]["actor"] != "ops" {
		t.Fatalf("audit file holds %v", lines)
	}
	if lines := read(refusedPath); len(lines) != 1 || lines[0]["refused"] == nil {
		t.Fatalf("refused log holds %v", lines)
	}

	r2 := stNew(t, cfg, cfg.StateFile)
	if evs := r2.Events(0, false); len(evs) != 1 || evs[0].Action != "drain" || evs[0].Backend != "b1" {
		t.Errorf("changes after a restart: %+v", evs)
	}
	if evs := r2.Events(0, true); len(evs) != 1 || !strings.HasPrefix(evs[0].Refused, "401") {
		t.Errorf("refusals after a restart: %+v", evs)
	}

	// A flood of refusals with long paths full of control characters (any
	// client can send them): each is kept short and printable, they rotate
	// only their own file, and the change survives in memory and on disk.
	hostile := "GET /v1/x\x1b[31mFAKE\n2026-12-04T00:00:00Z alice POST /v1/pools/shop/canary/promote" + strings.Repeat("\x01", 60000)
	for i := 0; i < 40000; i++ {
		r2.Audit(control.Event{Actor: "unauthenticated", Action: hostile, Detail: "from 127.0.0.1:1", Refused: "401 unauthorized"})
	}
	if _, err := os.Stat(refusedPath + ".1"); err != nil {
		t.Errorf("40 000 refusals did not rotate the refused log: %v", err)
	}
	if lines := read(audit); len(lines) != 1 || lines[0]["action"] != "drain" {
		t.Errorf("after a flood of refusals the audit file holds %d lines", len(lines))
	}
	r2.Close()
	r3 := stNew(t, cfg, cfg.StateFile)
	if evs := r3.Events(0, false); len(evs) != 1 || evs[0].Action != "drain" {
		t.Errorf("changes after a flood of refusals and a restart: %+v", evs)
	}
	ref := r3.Events(1, true)
	if len(ref) != 1 || len(ref[0].Action) > 256 || strings.ContainsAny(ref[0].Action, "\x1b\n\x01") {
		t.Errorf("a hostile refusal is kept as %q", ref)
	}

	// Rotation by size; the events of the rotated file come back after a
	// restart too.
	extra := -1 // events after the rotation
	for i := 0; i < 50000 && extra < 10; i++ {
		r3.Audit(control.Event{Actor: "ops", Action: "note", Detail: strings.Repeat("x", 250)})
		if extra >= 0 {
			extra++
		} else if _, err := os.Stat(audit + ".1"); err == nil {
			extra = 0
		}
	}
	st1, err1 := os.Stat(audit + ".1")
	st0, err0 := os.Stat(audit)
	if err1 != nil || err0 != nil {
		t.Fatalf("after 10 MiB of events: %v, %v", err1, err0)
	}
	if st1.Size() > 10<<20 || st0.Size() >= st1.Size() {
		t.Errorf("rotated file %d bytes, current %d; want at most 10 MiB and the current one smaller", st1.Size(), st0.Size())
	}
	if _, err := os.Stat(audit + ".2"); err == nil {
		t.Errorf("one rotation made a second rotated file")
	}
	r3.Close()
	if n := len(read(audit)); n >= 1000 {
		t.Fatalf("the current file alone holds %d events; the test needs fewer", n)
	}
	r4 := stNew(t, cfg, cfg.StateFile)
	if n := len(r4.Events(0, false)); n != 1000 {
		t.Errorf("after a restart %d changes came back, want the newest 1000 from the current and rotated files", n)
	}
}
