package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"
)

const (
	// auditMaxSize: the audit file is rotated when a line would take it
	// past this size; auditKeep rotated files are kept (NAME.1 the newest).
	auditMaxSize = 10 << 20
	auditKeep    = 3
)

// AuditPath returns where the audit log of a state file is kept: beside
// it, named after it (baton.state.json → baton.audit.jsonl). "" for none.
func AuditPath(stateFile string) string {
	if stateFile == "" {
		return ""
	}
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(stateFile), ".json"), ".state")
	return filepath.Join(filepath.Dir(stateFile), base+".audit.jsonl")
}

// auditFile is the audit log on disk: one JSON object per line, appended
// as events happen, rotated by size. A nil *auditFile writes nothing.
// Its methods are called with the registry's lock held.
type auditFile struct {
	path   string
	f      *os.File
	size   int64
	failed bool // a write failed; logged once until one succeeds
}

// openAudit prepares the audit file at path and returns the events it
// already holds, oldest first: the changes and the refusals,
// each at most maxEvents.
func openAudit(path string) (*auditFile, []Event, []Event, error) {
	if path == "" {
		return nil, nil, nil, nil
	}
	var changes, refusals []Event
	if f, err := os.Open(path); err == nil {
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue // a line cut short by a crash; the rest still counts
			}
			if ev.Refused != "" {
				refusals = appendEvent(refusals, ev)
			} else {
				changes = appendEvent(changes, ev)
			}
		}
		f.Close()
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil, fmt.Errorf("reading the audit log: %w", err)
	}
	// Opened for writing with the first event: a state directory that
	// cannot be written refuses decisions (ErrPersist), it does not stop
	// baton from starting.
	return &auditFile{path: path}, changes, refusals, nil
}

func (a *auditFile) open() error {
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening the audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening the audit log: %w", err)
	}
	a.f, a.size = f, st.Size()
	return nil
}

// write appends ev, rotating the file first when it would grow past
// auditMaxSize. A failure is logged (once until writing works again) and
// does not stop the change the event records.
func (a *auditFile) write(ev Event, log zerolog.Logger) {
	if a == nil {
		return
	}
	line, err := json.Marshal(ev)
	if err == nil {
		line = append(line, '\n')
		if a.size+int64(len(line)) > auditMaxSize && a.size > 0 {
			err = a.rotate()
		}
	}
	if err == nil && a.f == nil {
		err = a.open()
	}
	if err == nil {
		var n int
		n, err = a.f.Write(line)
		a.size += int64(n)
	}
	if err != nil {
		if !a.failed {
			log.Error().Err(err).Str("file", a.path).Msg("the audit log could not be written; events are still kept in memory and in baton's log")
		}
		a.failed = true
		return
	}
	a.failed = false
}

// rotate moves NAME to NAME.1 (NAME.1 to NAME.2, …, dropping the oldest)
// and starts an empty NAME.
func (a *auditFile) rotate() error {
	if a.f != nil {
		a.f.Close()
		a.f = nil
	}
	for i := auditKeep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", a.path, i), fmt.Sprintf("%s.%d", a.path, i+1))
	}
	if err := os.Rename(a.path, a.path+".1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("rotating the audit log: %w", err)
	}
	return a.open()
}

func (a *auditFile) close() {
	if a != nil && a.f != nil {
		a.f.Close()
		a.f = nil
	}
}
