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
// bounded by the run's context (SIGTERM when it ends, then 10 s to exit).
// Its output goes to out; with out nil it is kept instead, and its last
// 2 KiB returned, so that a caller printing one JSON event per line can put
// it in the message.
func Shell(out io.Writer) Runner {
	return func(ctx context.Context, c Command) (string, error) {
		cmd := exec.CommandContext(ctx, "sh", "-c", c.Line)
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = 10 * time.Second
		var buf tailBuffer
		if out != nil {
			cmd.Stdout, cmd.Stderr = out, out
		} else {
			cmd.Stdout, cmd.Stderr = &buf, &buf
		}
		err := cmd.Run()
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
