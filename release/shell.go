package release

import (
	"context"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Shell is the Runner of baton rollout: it runs a command line with sh -c,
// bounded by the run's context (SIGTERM when it ends, then 10 s to exit,
// then SIGKILL). The command runs in a process group of its own and the
// signals go to the whole group: a migration that sh started must not
// outlive the run that recorded it running. It returns once the group is
// gone, so "running" is never left behind a command that still runs.
// Its output goes to out; with out nil it is kept instead, and its last
// 2 KiB returned, so that a caller printing one JSON event per line can put
// it in the message.
func Shell(out io.Writer) Runner {
	return func(ctx context.Context, c Command) (string, error) {
		cmd := exec.CommandContext(ctx, "sh", "-c", c.Line)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		var buf tailBuffer
		if out != nil {
			cmd.Stdout, cmd.Stderr = out, out
		} else {
			cmd.Stdout, cmd.Stderr = &buf, &buf
		}
		err := cmd.Run()
		if cmd.Process != nil {
			// sh is gone; what it started may not be. The group is sh's
			// pid: end what is left of it, and wait until none is.
			waitGroupGone(cmd.Process.Pid, ctx.Err() != nil)
		}
		return strings.TrimSpace(buf.String()), err
	}
}

// tailBuffer keeps the last 2 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex // protects buf: stdout and stderr are copied concurrently
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2048 {
		t.buf = t.buf[len(t.buf)-2048:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// waitGroupGone waits until process group pgid has no member: after a
// SIGTERM when the run was cancelled, then SIGKILL after 10 s. A group
// still there when the run was not cancelled (sh exited, a child it put
// in the background lives on) is left to finish, up to 10 s, and then
// killed: a gate's work ends with its gate.
func waitGroupGone(pgid int, cancelled bool) {
	if cancelled {
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
	}
	// Bounded: a killed member whose zombie nobody reaps (a container
	// whose init does not) still answers signal 0.
	killed := false
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(-pgid, 0) == nil {
		if time.Now().After(deadline) {
			if killed {
				return
			}
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			killed, deadline = true, time.Now().Add(2*time.Second)
		}
		time.Sleep(20 * time.Millisecond) // polling the group: there is no wait for a process we did not start
	}
}
