package control

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// ErrStateInUse: another baton holds the state file's lock.
var ErrStateInUse = errors.New("the state file is in use by another baton")

// StateLock is an exclusive lock (flock) on a state file, so that two
// batons never write the same one: each would overwrite the other's
// decisions. It is held on a lock file beside the state file (NAME.lock),
// since the state file itself is replaced by rename at every write. The
// lock belongs to the open file, so a new process of a hitless upgrade
// that inherits the file holds the same lock, and keeps it when the old
// one exits.
type StateLock struct {
	f    *os.File
	path string
}

// LockStateFile takes the lock of stateFile ("" for none: nil, nil).
// inherited, when not nil, is the lock file handed over by the process
// this one takes over from. A lock held by another baton is an
// ErrStateInUse naming its process.
func LockStateFile(stateFile string, inherited *os.File) (*StateLock, error) {
	if stateFile == "" {
		return nil, nil
	}
	path := stateFile + ".lock"
	f := inherited
	if f == nil {
		var err error
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("locking the state file: %w", err)
		}
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			holder := "unknown"
			if data, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(data)) != "" {
				holder = strings.TrimSpace(string(data))
			}
			return nil, fmt.Errorf("%w: %s is locked by baton pid %s (lock file %s); give each baton its own state_file, or stop the other one",
				ErrStateInUse, stateFile, holder, path)
		}
		return nil, fmt.Errorf("locking the state file: %w", err)
	}
	// Who holds it, for the message a second baton gets.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &StateLock{f: f, path: path}, nil
}

// File returns the lock's open file, to hand to a new process.
func (l *StateLock) File() *os.File { return l.f }

// Release gives the lock up (a nil lock does nothing). The lock file stays:
// removing it would let two processes lock two different files.
func (l *StateLock) Release() {
	if l != nil && l.f != nil {
		l.f.Close()
		l.f = nil
	}
}
