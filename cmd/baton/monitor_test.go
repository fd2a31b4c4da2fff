package main

import (
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCtlBackendWatch: baton ctl backend --watch draws the backend and its
// monitor again and again — its request rate beside the average v1
// backend's — until Ctrl-C, which exits 0. Bad intervals are usage errors.
func TestCtlBackendWatch(t *testing.T) {
	_, traffic, adminAddr := tailBaton(t)
	admin := "http://" + adminAddr
	for _, c := range []struct {
		args []string
		says string
	}{
		{[]string{"--watch", "5ms"}, "--watch takes an interval of at least 500ms"},
		{[]string{"--watch", "-o", "json"}, "--watch draws text"},
	} {
		_, stderr, code := runBinary(t, append([]string{"ctl", "backend", "shop", "b1", "--admin", admin}, c.args...)...)
		if code != 2 || !strings.Contains(stderr, c.says) {
			t.Errorf("backend %v: exit %d, %q; want 2 saying %q", c.args, code, stderr, c.says)
		}
	}

	watch := startBinary(t, "ctl", "backend", "shop", "b1", "--watch", "1s", "--admin", admin)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	// b1 serving at a rate: "b1  N.N  0.00%  …" with N above 0, and the
	// average v1 backend (stable) beside it.
	served := regexp.MustCompile(`(?m)^b1 +[1-9][0-9]*\.[0-9] +0\.00% +\S+ +\S+ `)
	if !poll(30*time.Second, func() bool {
		for range 20 {
			if _, _, err := get(client, "http://"+traffic+"/ok"); err != nil {
				return false
			}
		}
		return served.MatchString(watch.stdout.String())
	}) {
		t.Fatalf("the watch did not show b1 serving within 30s:\n%s\n%s", watch.stdout, watch.stderr)
	}
	out := watch.stdout.String()
	for _, want := range []string{"name              b1", "monitor: a sample every 2s", "average v1 (stable)", "WORST P99", "b1 req/s  "} {
		if !strings.Contains(out, want) {
			t.Errorf("the watch does not show %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "--- "); n < 2 {
		t.Errorf("drawn %d times, want again and again:\n%s", n, out)
	}
	watch.cmd.Process.Signal(syscall.SIGINT)
	if code := watch.waitExit(t, 10*time.Second); code != 0 {
		t.Fatalf("Ctrl-C: exit %d: %s", code, watch.stderr)
	}
}
