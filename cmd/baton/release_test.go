package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The pool settings of the baton rollout tests: a judge that decides in
// seconds, with two steps.
const releasePoolYAML = "    canary: {initial_weight: 25, steps: [25, 50], step_min_time: 1s, step_min_requests: 20}\n" +
	"    judge: {interval: 200ms, warmup: 1ms, error_code_header: X-Error-Code}\n"

// batonRollout runs baton rollout against e's admin API and returns its
// output (stdout and stderr) and error.
func batonRollout(t *testing.T, e releaseEnv, args ...string) (string, error) {
	t.Helper()
	cmd := rolloutCommand(e, args...)
	out, err := cmd.CombinedOutput()
	t.Logf("baton rollout %s:\n%s", strings.Join(args, " "), out)
	return string(out), err
}

func rolloutCommand(e releaseEnv, args ...string) *exec.Cmd {
	cmd := exec.Command(batonBin, append([]string{"rollout", "shop"}, args...)...)
	cmd.Env = append(os.Environ(), "BATON_ADMIN="+e.admin)
	return cmd
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// TestRolloutReleasesEveryServer: a dry run changes nothing; then baton
// rollout releases v42 to all four servers under steady load: the first as
// the canary through the judge's steps, promoted, then the others, with no
// failed request and every POST delivered once.
func TestRolloutReleasesEveryServer(t *testing.T) {
	r := &rollout{poolYAML: releasePoolYAML}
	r.drive = func(t *testing.T, e releaseEnv) (string, error) {
		plan, err := batonRollout(t, e, "--to", "v42", "--upgrade", "deploy {name} {address} {version}", "--dry-run")
		if err != nil {
			t.Errorf("--dry-run: %v", err)
		}
		for _, want := range []string{"plan: release v42 to pool shop (stable v41; 4 servers",
			"1. web-1 (127.0.0.1:", "`deploy web-1 127.0.0.1:", "the canary at the pool's initial share",
			"through the steps 25% → 50%", "5. web-4 (", "nothing was changed (--dry-run)"} {
			if !strings.Contains(plan, want) {
				t.Errorf("the plan lacks %q", want)
			}
		}
		for _, s := range e.servers {
			if v := s.version.Load().(string); v != "v41" {
				t.Errorf("the dry run upgraded %s to %s", s.name, v)
			}
		}
		return batonRollout(t, e, "--to", "v42", "--upgrade", e.upgradeCmd, "--poll", "200ms", "--drain-wait", "30s", "--health-wait", "20s")
	}
	r.run(t)
	if r.err != nil {
		t.Fatalf("baton rollout failed: %v", r.err)
	}
	r.everyServerAnswers(t, "v42")
	for _, want := range []string{
		"releasing v42 to pool shop (stable v41; servers web-1, web-2, web-3, web-4)",
		"web-1 becomes the canary", "draining web-1", "web-1 drained: nothing in flight",
		"canary v42 at 25%: ", "canary v42 at 50%: ", "promoting v42: ", "v42 is promoted; the other servers follow",
		"web-4 is back, running v42", "4 of 4 servers run v42", "released: all 4 servers of shop run v42",
	} {
		if !strings.Contains(r.out, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	t.Logf("%d requests during the rollout, %d POSTs, none failed", r.sent, r.posts)
}

// TestRolloutRollsBackABadVersion: v42 declines every tenth payment. The
// judge fails it; baton rollout rolls it back, reinstalls v41 on the canary
// with --rollback, and exits 1 naming the new error. The other servers are
// never touched.
func TestRolloutRollsBackABadVersion(t *testing.T) {
	r := &rollout{poolYAML: releasePoolYAML, badPOST: "v42"}
	r.drive = func(t *testing.T, e releaseEnv) (string, error) {
		return batonRollout(t, e, "--to", "v42", "--upgrade", e.upgradeCmd, "--rollback", e.upgradeCmd, "--poll", "200ms")
	}
	r.run(t)
	if code := exitCode(r.err); code != 1 {
		t.Fatalf("baton rollout ended with %v, want exit status 1", r.err)
	}
	for _, want := range []string{"rolling v42 back: ", "web-1 runs v41 again", "baton rollout: v42 was not released: ",
		`"POST /orders 500 server_error code=PAYMENT_DECLINED"`} {
		if !strings.Contains(r.out, want) {
			t.Errorf("the output lacks %q", want)
		}
	}
	for _, s := range r.servers {
		if v := s.version.Load().(string); v != "v41" {
			t.Errorf("%s runs %s after the rollback", s.name, v)
		}
	}
	r.everyServerAnswers(t, "v41")
}

// TestRolloutResumesAfterInterrupt: a second rollout of the pool is refused
// while one runs; the first is interrupted (SIGINT) after the canary was
// promoted, and running it again finishes the release without upgrading a
// server twice. A failing upgrade command stops a rollout with its server
// drained and says how to go on. Events come as JSON with -o json.
func TestRolloutResumesAfterInterrupt(t *testing.T) {
	r := &rollout{poolYAML: releasePoolYAML}
	r.drive = func(t *testing.T, e releaseEnv) (string, error) {
		var all strings.Builder
		args := []string{"--to", "v42", "--upgrade", e.upgradeCmd, "--poll", "200ms", "-o", "json"}
		first := rolloutCommand(e, args...)
		stdout, err := first.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		first.Stderr = &stderr
		if err := first.Start(); err != nil {
			t.Fatal(err)
		}
		events := make(chan map[string]string, 100)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(events)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				all.WriteString(sc.Text() + "\n")
				var ev map[string]string
				if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
					t.Errorf("-o json printed a line that is not JSON: %q", sc.Text())
					continue
				}
				events <- ev
			}
		}()
		deadline := time.After(60 * time.Second)
		interrupted := false
		for !interrupted {
			select {
			case ev, ok := <-events:
				if !ok {
					t.Fatalf("baton rollout ended before the test could interrupt it:\n%s%s", all.String(), stderr.String())
				}
				switch {
				case ev["event"] == "start":
					// A second rollout of the pool is refused while this one runs.
					out, err := batonRollout(t, e, "--to", "v43", "--upgrade", "true")
					if exitCode(err) != 1 || !strings.Contains(out, "another release of shop is under way") || !strings.Contains(out, "baton rollout of shop to v42") {
						t.Errorf("a second rollout: exit %v, output %q; want it refused naming the first", err, out)
					}
				case ev["event"] == "ready" && ev["backend"] == "web-2":
					// The canary was promoted and web-2 upgraded: interrupt.
					if err := first.Process.Signal(syscall.SIGINT); err != nil {
						t.Fatal(err)
					}
					interrupted = true
				}
			case <-deadline:
				_ = first.Process.Kill()
				t.Fatalf("no upgrade of web-2 within 60s:\n%s", all.String())
			}
		}
		for range events {
		}
		wg.Wait()
		err = first.Wait()
		if exitCode(err) != 130 || !strings.Contains(all.String(), `"event":"interrupted"`) {
			t.Errorf("the interrupted rollout ended with %v and printed:\n%s%s", err, all.String(), stderr.String())
		}

		// A failing upgrade command: web-3 stays drained, the message says what to do.
		out, err := batonRollout(t, e, "--to", "v42", "--upgrade", "echo broken disk >&2; exit 3")
		if exitCode(err) != 1 || !strings.Contains(out, "the command failed on web-3") || !strings.Contains(out, "web-3 stays drained") ||
			!strings.Contains(out, "broken disk") || !strings.Contains(out, "run the same baton rollout command again") {
			t.Errorf("a failing upgrade: exit %v; want 1 and a message naming web-3, drained, and what to do", err)
		}

		// Run again: it continues where baton's state says.
		out, err = batonRollout(t, e, args[:len(args)-2]...)
		all.WriteString(out)
		for _, again := range []string{"upgrading web-1", "upgrading web-2", "web-1 becomes the canary"} {
			if strings.Contains(out, again) {
				t.Errorf("the resumed rollout did %q again", again)
			}
		}
		if !strings.Contains(out, "upgrading web-3") || !strings.Contains(out, "upgrading web-4") {
			t.Errorf("the resumed rollout did not upgrade web-3 and web-4")
		}
		return all.String(), err
	}
	r.run(t)
	if r.err != nil {
		t.Fatalf("the resumed rollout failed: %v", r.err)
	}
	if !strings.Contains(r.out, "released: all 4 servers of shop run v42") {
		t.Errorf("the resumed rollout did not report the release")
	}
	r.everyServerAnswers(t, "v42")
}
