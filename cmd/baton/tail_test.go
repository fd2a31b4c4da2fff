package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/internal/testbed"
)

// tailBaton starts baton serve with pool shop: b1 and b2 at v1, b2 failing
// /boom with 500. It returns the process, its traffic and admin addresses.
func tailBaton(t *testing.T) (p *proc, traffic, adminAddr string) {
	t.Helper()
	b1 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b1"})
	b2 := testbed.NewBackend(t, testbed.BackendOptions{Name: "b2"})
	b2.Fail("/boom", testbed.Failure{Status: 500, Code: "E_STOCK", Body: "out of stock"})
	traffic, adminAddr = freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "baton.yaml", fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {level: info, format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 100ms, rise: 1}
    outlier: {consecutive_failures: -1}
    retries: {attempts: 1}
    judge: {error_code_header: X-Error-Code}
    backends:
      - {name: b1, address: "%s", version: v1}
      - {name: b2, address: "%s", version: v1}
`, traffic, adminAddr, b1.Addr(), b2.Addr()))
	p = startBinary(t, "serve", "-c", cfg)
	if !poll(15*time.Second, func() bool {
		var pl v1.Pool
		c := &http.Client{Timeout: time.Second}
		resp, err := c.Get("http://" + adminAddr + "/v1/pools/shop")
		if err != nil {
			return !p.running()
		}
		defer resp.Body.Close()
		if json.NewDecoder(resp.Body).Decode(&pl) != nil {
			return false
		}
		healthy := 0
		for _, b := range pl.Backends {
			if b.Healthy {
				healthy++
			}
		}
		return healthy == 2
	}) || !p.running() {
		t.Fatal("baton did not get both backends healthy within 15s")
	}
	return p, traffic, adminAddr
}

// TestCtlTail follows b2's failures with baton ctl tail, as text and as
// JSON, and stops it with Ctrl-C (exit 0). Then a tail attached while
// baton stops does not hold baton up: baton exits, and the tail ends with
// exit 1 saying so and where to go on from.
func TestCtlTail(t *testing.T) {
	_, traffic, adminAddr := tailBaton(t)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	boom := func(n int) {
		t.Helper()
		for got, i := 0, 0; got < n; i++ {
			if i > 40 {
				t.Fatalf("only %d of %d requests to /boom reached b2", got, n)
			}
			status, _, err := get(client, "http://"+traffic+"/boom?user=alice")
			if err != nil {
				t.Fatal(err)
			}
			if status == 500 {
				got++
			}
		}
	}
	for _, o := range []string{"text", "json"} {
		var tail *proc
		if o == "text" {
			tail = startBinary(t, "ctl", "tail", "shop", "b2", "--errors", "--admin", "http://"+adminAddr)
			if !poll(10*time.Second, func() bool { return strings.Contains(tail.stderr.String(), "tailing pool shop") }) {
				t.Fatalf("baton ctl tail did not start: %s", tail.stderr)
			}
			boom(2)
		} else {
			// Failures are kept in the pool's ring: a tail started
			// after them gets them with --since.
			boom(2)
			tail = startBinary(t, "ctl", "tail", "shop", "b2", "--errors", "--since", "1m", "--admin", "http://"+adminAddr, "-o", "json")
		}
		lines := func() []string {
			var out []string
			for _, l := range strings.Split(tail.stdout.String(), "\n") {
				if l != "" {
					out = append(out, l)
				}
			}
			return out
		}
		if !poll(10*time.Second, func() bool { return len(lines()) >= 2 }) {
			t.Fatalf("-o %s: the tail printed %q", o, tail.stdout)
		}
		for _, l := range lines() {
			if o == "json" {
				var r v1.TailRecord
				if err := json.Unmarshal([]byte(l), &r); err != nil || r.Backend != "b2" || r.Path != "/boom" || r.Status != 500 || r.AppCode != "E_STOCK" {
					t.Fatalf("-o json line %q: %+v %v", l, r, err)
				}
				continue
			}
			for _, want := range []string{" b2 v1 GET /boom 500 server_error ", "[unjudged] GET /boom 500 server_error code=E_STOCK", `body="out of stock"`} {
				if !strings.Contains(l, want) || strings.Contains(l, "\x1b[") || strings.Contains(l, "alice") {
					t.Fatalf("text line %q: want %q, no colour on a pipe, no query", l, want)
				}
			}
		}
		tail.cmd.Process.Signal(syscall.SIGINT)
		if code := tail.waitExit(t, 10*time.Second); code != 0 {
			t.Fatalf("-o %s: Ctrl-C: exit %d: %s", o, code, tail.stderr)
		}
	}
}

// TestCtlTailDoesNotHoldShutdown: baton stops promptly with a tail
// attached, and the tail says why it ended.
func TestCtlTailDoesNotHoldShutdown(t *testing.T) {
	p, _, adminAddr := tailBaton(t)
	tail := startBinary(t, "ctl", "tail", "shop", "--admin", "http://"+adminAddr)
	if !poll(10*time.Second, func() bool { return strings.Contains(tail.stderr.String(), "tailing pool shop") }) {
		t.Fatalf("baton ctl tail did not start: %s", tail.stderr)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, 20*time.Second); code != 0 {
		t.Fatalf("baton exited %d", code)
	}
	if code := tail.waitExit(t, 10*time.Second); code != 1 || !strings.Contains(tail.stderr.String(), "baton is shutting down") {
		t.Fatalf("the tail ended with %d: %s", code, tail.stderr)
	}
}
