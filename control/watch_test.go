package control_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/baton-lb/baton/control"
)

// wtQuiet is how long a "not called" assertion waits: several times the
// watcher's 100ms debounce.
const wtQuiet = 500 * time.Millisecond

// wtEventWait bounds the wait for a callback. It is well below the
// watcher's 5s backstop comparison, so a callback in time comes from the
// file-system events, not from the backstop.
const wtEventWait = 2500 * time.Millisecond

// wtWatch runs control.WatchConfig on path until the test ends. Every
// callback sends the file's content as the callback read it on calls.
type wtWatch struct {
	path   string
	calls  chan string
	cancel context.CancelFunc
	done   chan error
}

func wtStart(t *testing.T, path string) *wtWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &wtWatch{path: path, calls: make(chan string, 64), cancel: cancel, done: make(chan error, 1)}
	log := ctLogger(t)
	go func() {
		w.done <- control.WatchConfig(ctx, path, log, func() {
			data, err := os.ReadFile(path)
			if err != nil {
				data = []byte("unreadable: " + err.Error())
			}
			select {
			case w.calls <- string(data):
			default: // the test fails on the count anyway
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(5 * time.Second):
			t.Errorf("WatchConfig did not return after its context was cancelled")
		}
	})
	w.prime(t)
	return w
}

// prime makes sure the watcher is running: WatchConfig has no ready
// signal, and a change made before it read the file is never reported. It
// rewrites the file with new content until a callback arrives, then waits
// for quiet.
func (w *wtWatch) prime(t *testing.T) {
	t.Helper()
	orig, err := os.ReadFile(w.path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		content := fmt.Sprintf("%s# prime %d\n", orig, i)
		ctWriteInPlace(t, w.path, []byte(content))
		select {
		case got := <-w.calls:
			w.quiet(t, "after priming")
			if got != content {
				t.Logf("priming callback saw %q", got)
			}
			return
		case err := <-w.done:
			t.Fatalf("WatchConfig returned while priming: %v", err)
		case <-time.After(time.Second):
		}
	}
	t.Fatal("WatchConfig never called back while priming (10 writes)")
}

// next waits for one callback and returns what it read.
func (w *wtWatch) next(t *testing.T, what string) string {
	t.Helper()
	select {
	case got := <-w.calls:
		return got
	case err := <-w.done:
		t.Fatalf("%s: WatchConfig returned (%v) instead of calling back", what, err)
	case <-time.After(wtEventWait):
		t.Fatalf("%s: no callback within %s", what, wtEventWait)
	}
	return ""
}

// quiet asserts that no callback comes within wtQuiet.
func (w *wtWatch) quiet(t *testing.T, what string) {
	t.Helper()
	select {
	case got := <-w.calls:
		t.Errorf("%s: unexpected callback (file %q)", what, got)
	case <-time.After(wtQuiet):
	}
}

func wtFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	ctWriteInPlace(t, path, []byte(content))
	return path
}

func TestWatchInPlaceWrite(t *testing.T) {
	t.Parallel()
	path := wtFile(t, "baton.yaml", "a: 1\n")
	w := wtStart(t, path)
	for i := range 3 {
		content := fmt.Sprintf("a: %d\n", 10+i)
		ctWriteInPlace(t, path, []byte(content))
		if got := w.next(t, "in-place write"); got != content {
			t.Errorf("callback read %q, want %q", got, content)
		}
		w.quiet(t, "after one in-place write")
	}
}

func TestWatchRenameOverWrite(t *testing.T) {
	t.Parallel()
	path := wtFile(t, "baton.yaml", "a: 1\n")
	w := wtStart(t, path)
	for i := range 3 {
		content := fmt.Sprintf("a: %d\n", 20+i)
		ctWriteAtomic(t, path, []byte(content))
		if got := w.next(t, "rename over the file"); got != content {
			t.Errorf("callback read %q, want %q", got, content)
		}
		w.quiet(t, "after one rename")
	}

	// vim without backupcopy: the file moves to a backup, a new file is
	// written under the name, the backup goes.
	content := "a: 99\n"
	if err := os.Rename(path, path+"~"); err != nil {
		t.Fatal(err)
	}
	ctWriteInPlace(t, path, []byte(content))
	if err := os.Remove(path + "~"); err != nil {
		t.Fatal(err)
	}
	if got := w.next(t, "backup-and-write"); got != content {
		t.Errorf("callback read %q, want %q", got, content)
	}
	w.quiet(t, "after backup-and-write")
}

// TestWatchConfigMapSwap updates the file the way the kubelet updates a
// mounted ConfigMap: nothing named config.yaml changes; the "..data"
// symlink is swapped to a new timestamped directory.
func TestWatchConfigMapSwap(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writeVersion := func(ts, content string) {
		t.Helper()
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		ctWriteInPlace(t, filepath.Join(dir, ts, "config.yaml"), []byte(content))
	}
	first := "..2026_01_01_00_00_00.000"
	writeVersion(first, "a: 1\n")
	if err := os.Symlink(first, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
		t.Fatal(err)
	}

	// Priming writes through the symlink into the first version's file;
	// that is an event in a subdirectory, which the watcher does not see.
	// Prime with a swap instead.
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan string, 64)
	done := make(chan error, 1)
	log := ctLogger(t)
	go func() {
		done <- control.WatchConfig(ctx, path, log, func() {
			data, _ := os.ReadFile(path)
			select {
			case calls <- string(data):
			default:
			}
		})
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("WatchConfig did not return after cancel")
		}
	}()
	w := &wtWatch{path: path, calls: calls, cancel: cancel, done: done}

	prev := first
	swap := func(i int, content string) {
		t.Helper()
		ts := fmt.Sprintf("..2026_01_01_00_%02d_00.000", i)
		writeVersion(ts, content)
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(ts, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(filepath.Join(dir, prev)); err != nil {
			t.Fatal(err)
		}
		prev = ts
	}
	primed := false
	for i := 1; i <= 10 && !primed; i++ {
		swap(i, fmt.Sprintf("prime: %d\n", i))
		select {
		case <-calls:
			primed = true
		case err := <-done:
			t.Fatalf("WatchConfig returned: %v", err)
		case <-time.After(time.Second):
		}
	}
	if !primed {
		t.Fatal("no callback for 10 ConfigMap swaps while priming")
	}
	w.quiet(t, "after priming")

	for i := range 3 {
		content := fmt.Sprintf("a: %d\n", 100+i)
		swap(20+i, content)
		if got := w.next(t, "ConfigMap swap"); got != content {
			t.Errorf("callback read %q, want %q", got, content)
		}
		w.quiet(t, "after one ConfigMap swap")
	}
	// The kubelet re-syncs with identical content: a new directory and a
	// swap, but the same bytes. No reload.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	swap(30, string(data))
	w.quiet(t, "ConfigMap swap with identical content")
}

// TestWatchDebouncesBurst: one save is many events; a burst of writes of
// several kinds gives one callback, which reads the final content.
func TestWatchDebouncesBurst(t *testing.T) {
	t.Parallel()
	path := wtFile(t, "baton.yaml", "a: 1\n")
	w := wtStart(t, path)
	var final string
	for i := range 20 {
		final = fmt.Sprintf("a: %d\n", 1000+i)
		switch i % 4 {
		case 0, 1:
			ctWriteInPlace(t, path, []byte(final))
		case 2:
			ctWriteAtomic(t, path, []byte(final))
		case 3:
			ctWriteInPlace(t, path, []byte(final))
			if err := os.Chmod(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := w.next(t, "burst of 20 writes"); got != final {
		t.Errorf("callback read %q, want the burst's final content %q", got, final)
	}
	w.quiet(t, "after the burst's callback")
}

// TestWatchIgnoresNoChange: a touch, a rewrite with the same bytes (in
// place or by rename), a chmod, and changes to other files in the
// directory do not call back. A real change afterwards still does.
func TestWatchIgnoresNoChange(t *testing.T) {
	t.Parallel()
	path := wtFile(t, "baton.yaml", "a: 1\n")
	dir := filepath.Dir(path)
	w := wtStart(t, path)
	same, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	now := time.Now()
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
	ctWriteInPlace(t, path, same)
	ctWriteAtomic(t, path, same)
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	w.quiet(t, "touch, identical rewrites in place and by rename, chmod")

	for i, name := range []string{"other.yaml", "baton.yaml.bak", ".baton.yaml.swp", "baton.state.json", "..2026_01_01"} {
		p := filepath.Join(dir, name)
		ctWriteInPlace(t, p, []byte(fmt.Sprintf("x: %d\n", i)))
		ctWriteAtomic(t, p, []byte(fmt.Sprintf("x: %d\n", i+100)))
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	w.quiet(t, "changes to other files in the directory")

	content := "a: 2\n"
	ctWriteInPlace(t, path, []byte(content))
	if got := w.next(t, "real change after the no-ops"); got != content {
		t.Errorf("callback read %q, want %q", got, content)
	}
}

// TestWatchStopsOnCancel: cancelling the context makes WatchConfig return
// nil, leaves no goroutine behind, and no callback follows.
func TestWatchStopsOnCancel(t *testing.T) {
	path := wtFile(t, "baton.yaml", "a: 1\n")
	before := runtime.NumGoroutine()
	w := wtStart(t, path)
	w.cancel()
	select {
	case err := <-w.done:
		if err != nil {
			t.Errorf("WatchConfig returned %v after cancel, want nil", err)
		}
		w.done <- err // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("WatchConfig did not return within 5s of cancel")
	}
	ctWriteInPlace(t, path, []byte("a: 2\n"))
	w.quiet(t, "a change after cancel")
	var now int
	if !ctPoll(5*time.Second, func() bool { now = runtime.NumGoroutine(); return now <= before }) {
		buf := make([]byte, 1<<16)
		n := runtime.Stack(buf, true)
		t.Errorf("%d goroutines after WatchConfig returned, %d before it started:\n%s", now, before, buf[:n])
	}
}

// TestWatchMissingDirectory: a config in a directory that does not exist is
// an error at once, not a silent watcher that never fires.
func TestWatchMissingDirectory(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope", "baton.yaml")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- control.WatchConfig(ctx, path, ctLogger(t), func() {}) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("WatchConfig on a missing directory returned nil")
		}
	case <-time.After(3 * time.Second):
		t.Error("WatchConfig on a missing directory did not return")
	}
}

// TestWatchWaitsForAHalfWrittenFileToSettle: a slow writer writes the
// file in place in two parts, 150ms apart (longer than the event
// debounce). The first part alone is never reported: only the content
// that then stays the same is.
func TestWatchWaitsForAHalfWrittenFileToSettle(t *testing.T) {
	t.Parallel()
	path := wtFile(t, "baton.yaml", "a: 1\n")
	w := wtStart(t, path)
	for i := range 3 {
		full := fmt.Sprintf("pools:\n  - name: web\n    backends:\n      - {name: b1}\n      - {name: b%d}\n", 10+i)
		half := full[:len(full)-20]
		ctWriteInPlace(t, path, []byte(half))
		time.Sleep(150 * time.Millisecond) // the slow writer's pause between its two writes
		ctWriteInPlace(t, path, []byte(full))
		if got := w.next(t, "a file written in two parts"); got != full {
			t.Fatalf("callback read %q, want the whole file %q", got, full)
		}
		w.quiet(t, "after the whole file was reported")
	}
}
