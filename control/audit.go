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
	"unicode/utf8"

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

// RefusedPath returns where refused requests are logged, beside the audit
// log and apart from it, so that a flood of refusals (which anyone who can
// reach the admin port can send) never rotates the changes out.
func RefusedPath(stateFile string) string {
	a := AuditPath(stateFile)
	if a == "" {
		return ""
	}
	return strings.TrimSuffix(a, ".audit.jsonl") + ".refused.jsonl"
}

// auditFile is an audit log on disk: one JSON object per line, appended
// as events happen, rotated by size. A nil *auditFile writes nothing.
// Its methods are called with the registry's lock held.
type auditFile struct {
	path   string
	f      *os.File
	size   int64
	failed bool // a write failed; logged once until one succeeds
}

// openAudit prepares the audit file at path and returns the last maxEvents
// events it and its rotated files hold, oldest first: the refused requests
// with refused, else the changes (files older than the split held both).
func openAudit(path string, refused bool) (*auditFile, []Event, error) {
	if path == "" {
		return nil, nil, nil
	}
	var events []Event
	for i := auditKeep; i >= 0; i-- {
		name := path
		if i > 0 {
			name = fmt.Sprintf("%s.%d", path, i)
		}
		f, err := os.Open(name)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("reading the audit log: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			var ev Event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue // a line cut short by a crash; the rest still counts
			}
			if (ev.Refused != "") != refused {
				continue
			}
			ev.Clean()
			events = appendEvent(events, ev)
		}
		f.Close()
	}
	// Opened for writing with the first event: a state directory that
	// cannot be written refuses decisions (ErrPersist), it does not stop
	// baton from starting.
	return &auditFile{path: path}, events, nil
}

// maxField bounds each text field of an event: a refused request's path is
// the client's to choose.
const maxField = 256

// Clean makes an event's text safe to keep and to print: control
// characters become '?', and each field is cut to maxField bytes.
func (ev *Event) Clean() {
	for _, f := range []*string{&ev.Actor, &ev.Action, &ev.Pool, &ev.Backend, &ev.Detail, &ev.Refused} {
		*f = cleanText(*f, maxField)
	}
}

// cleanText replaces control characters and invalid UTF-8 in s with '?'
// and cuts it to at most max bytes (at a character boundary, marked "…").
func cleanText(s string, max int) string {
	ok := len(s) <= max
	for i := 0; ok && i < len(s); i++ {
		ok = s[i] >= 0x20 && s[i] != 0x7f && s[i] < 0x80
	}
	if ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == utf8.RuneError {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > max-len("…") {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
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
