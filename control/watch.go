package control

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/rs/zerolog"
)

const (
	// reloadDebounce: one save can produce several events (truncate, write,
	// chmod, rename); the reload runs once they have been quiet this long.
	reloadDebounce = 100 * time.Millisecond
	// backstopInterval: the file's content is also compared this often, in
	// case an event was missed (some network file systems send none).
	backstopInterval = 5 * time.Second
	// settleTime: a new content is acted on only once it has stayed the
	// same this long. A file written in place by a slow writer can be read
	// half-written, and a half that parses (a pool cut off after its first
	// backends) would remove servers and drop their drains.
	settleTime = 300 * time.Millisecond
)

// WatchConfig calls reload whenever the content of the config file at path
// changes, until ctx ends. It watches the file's directory, not the file:
// editors replace files by rename, and Kubernetes swaps a ConfigMap's
// "..data" symlink without any event naming the file (fsnotify's own advice,
// viper#284). Events are debounced, and the content is compared so that a
// touch without a change does nothing.
func WatchConfig(ctx context.Context, path string, log zerolog.Logger, reload func()) error {
	return WatchConfigFrom(ctx, path, [32]byte{}, log, reload)
}

// WatchConfigFrom is WatchConfig for a file whose content, when baton
// loaded it, had the SHA-256 initial: an edit made between that load and the
// start of the watch is reloaded at once. A zero initial means the content
// found when the watch starts.
func WatchConfigFrom(ctx context.Context, path string, initial [32]byte, log zerolog.Logger, reload func()) error {
	return watchContent(ctx, []string{path}, initial, log, "the config directory", reload)
}

// WatchFiles calls changed whenever the content of any of paths changes,
// until ctx ends: certificate and key files, watched like the config.
func WatchFiles(ctx context.Context, paths []string, log zerolog.Logger, changed func()) error {
	return watchContent(ctx, paths, [32]byte{}, log, "certificate directories", changed)
}

// watchContent calls changed whenever the combined content of paths
// changes: their directories are watched (renames and "..data" symlink
// swaps included), events debounced, and the content compared, with a
// periodic comparison as a backstop; a new content counts once it has
// stayed the same for settleTime. initial, when not zero, is the hash
// the caller last acted on.
func watchContent(ctx context.Context, paths []string, initial [32]byte, log zerolog.Logger, what string, changed func()) error {
	dirs := map[string]bool{}
	bases := map[string]bool{}
	abs := make([]string, 0, len(paths))
	for _, p := range paths {
		a, err := filepath.Abs(p)
		if err != nil {
			return err
		}
		abs = append(abs, a)
		dirs[filepath.Dir(a)] = true
		bases[filepath.Base(a)] = true
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	for d := range dirs {
		if err := w.Add(d); err != nil {
			return err
		}
	}
	sum := func() ([32]byte, bool) {
		h := sha256.New()
		for _, p := range abs {
			data, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrNotExist) {
				// Gone is a content too (a removed token file revokes its
				// tokens) once it stays gone for settleTime; a rename in
				// progress does not.
				data = []byte("\x00missing\x00" + p)
			} else if err != nil {
				return [32]byte{}, false
			}
			h.Write(data)
		}
		var out [32]byte
		copy(out[:], h.Sum(nil))
		return out, true
	}
	last, _ := sum()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	if initial != ([32]byte{}) && initial != last {
		// Edited while baton was starting: act on it soon (the debounce
		// gives a writer still at it a moment to finish).
		last = initial
		debounce.Reset(reloadDebounce)
	}
	backstop := time.NewTicker(backstopInterval)
	defer backstop.Stop()
	var pending [32]byte // a new content waiting to settle
	var pendingSince time.Time
	check := func() {
		h, ok := sum()
		if !ok || h == last {
			pending = [32]byte{}
			return // unreadable for a moment (mid-rename): the next event or tick retries
		}
		if h != pending {
			pending, pendingSince = h, time.Now()
			debounce.Reset(settleTime)
			return
		}
		if wait := settleTime - time.Since(pendingSince); wait > 0 {
			debounce.Reset(wait)
			return
		}
		last, pending = h, [32]byte{}
		changed()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			name := filepath.Base(ev.Name)
			if bases[name] || strings.HasPrefix(name, "..") {
				debounce.Reset(reloadDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				debounce.Reset(reloadDebounce)
				continue
			}
			log.Warn().Err(err).Msg("watching " + what)
		case <-debounce.C:
			check()
		case <-backstop.C:
			check()
		}
	}
}
