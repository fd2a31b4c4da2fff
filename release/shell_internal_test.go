package release

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShellEndsTheWholeGroup: when the run ends, the command sh started
// ends with it, and Shell returns only once it is gone.
func TestShellEndsTheWholeGroup(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// sh waits for sleep: a migration running under the gate.
		_, err := Shell(nil)(ctx, Command{Line: "sleep 60 & echo $! > " + pidFile + "; wait"})
		done <- err
	}()
	var pid int
	deadline := time.Now().Add(10 * time.Second)
	for pid == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the command did not start within 10s")
		}
		if data, err := os.ReadFile(pidFile); err == nil && strings.HasSuffix(string(data), "\n") {
			pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		}
		time.Sleep(10 * time.Millisecond) // polling for the file the command writes
	}
	cancel()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Shell did not return within 30s of the cancel")
	}
	// Returned: the child must be gone (a zombie reaped by init at most).
	if err := syscall.Kill(pid, 0); err == nil {
		if data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); !strings.Contains(string(data), ") Z ") {
			t.Fatalf("sleep (pid %d) outlived the cancelled run", pid)
		}
	}
}
