package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/control"
)

// Exit code of baton rollout when interrupted (128 + SIGINT, as shells do).
const exitInterrupted = 130

const rolloutUsage = `baton rollout — release a version to a pool, server by server

Usage: baton rollout POOL --to VERSION --upgrade CMD [FLAGS]

The first server is drained (baton waits until nothing is in flight on it),
upgraded with CMD, and enabled as VERSION: it becomes the canary, and
baton's judge compares it with the stable version through the pool's steps.
On pass the canary is promoted and the other servers follow the same way,
at most --max-unavailable at a time. On fail it is rolled back: drained,
--rollback run on it, re-enabled on the old version; rollout exits 1 with
the judge's reason.

Interrupted (Ctrl-C, a lost session), the same command continues from what
baton shows. One rollout per pool runs at a time.

Commands run with sh -c after replacing {name}, {address}, {host}, {port},
{pool}, {version} (the version to install) and {from} (the version it
replaces). Name the admin API with --admin/--token-file as for baton ctl.

Flags:
`

// rolloutCmd is one run of baton rollout.
type rolloutCmd struct {
	ctx        context.Context
	c          *ctlClient
	pool, to   string
	upgrade    string
	rollback   string
	maxOut     int
	drainWait  time.Duration
	healthWait time.Duration
	judgeWait  time.Duration
	poll       time.Duration
	dryRun     bool
	json       bool
	tty        bool
	out        io.Writer
	holder     string

	// install runs one upgrade or rollback command line on b; nil: sh -c.
	// baton demo installs its versions in-process.
	install func(line string, b v1.Backend, version string) (string, error)

	mu   sync.Mutex // serialises output of servers upgraded together
	lost error      // the lease was lost: why the run stopped
}

func cmdRollout(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("baton rollout", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, rolloutUsage)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nExit codes: 0 released, 1 rolled back or failed (the message says what to do),\n2 usage, 3 the judge did not decide within --judge-wait, 130 interrupted.\n")
	}
	r := &rolloutCmd{out: stdout}
	fs.StringVar(&r.to, "to", "", "the version to release (required)")
	fs.StringVar(&r.upgrade, "upgrade", "", "command that installs --to on one server (required)")
	fs.StringVar(&r.rollback, "rollback", "", "command that reinstalls the old version ({version}) on the canary after a failed release")
	fs.IntVar(&r.maxOut, "max-unavailable", 1, "servers out of rotation at once after the canary")
	fs.DurationVar(&r.drainWait, "drain-wait", 5*time.Minute, "longest a drain may take")
	fs.DurationVar(&r.healthWait, "health-wait", 2*time.Minute, "longest a server may take to pass its health check")
	fs.DurationVar(&r.judgeWait, "judge-wait", 30*time.Minute, "longest to wait for the judge's decision on the canary")
	fs.DurationVar(&r.poll, "poll", time.Second, "how often to look at the canary")
	fs.BoolVar(&r.dryRun, "dry-run", false, "print the plan and change nothing")
	output := fs.String("o", "text", "text, or json: one event per line")
	adminURL := fs.String("admin", "", "admin API URL (env BATON_ADMIN; default http://127.0.0.1:9090)")
	tokenFile := fs.String("token-file", "", "file with the API token (env BATON_TOKEN_FILE, or BATON_TOKEN)")

	var pos []string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		pos, args = append(pos, args[0]), args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	pos = append(pos, fs.Args()...)
	usageErr := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "baton rollout: "+format+"\n\n", a...)
		fs.Usage()
		return exitUsage
	}
	switch {
	case len(pos) != 1:
		return usageErr("give one pool, got %d arguments", len(pos))
	case r.to == "":
		return usageErr("--to VERSION is required")
	case r.upgrade == "":
		return usageErr("--upgrade CMD is required")
	case r.maxOut < 1:
		return usageErr("--max-unavailable must be 1 or more, got %d", r.maxOut)
	case r.drainWait <= 0 || r.healthWait <= 0 || r.judgeWait <= 0 || r.poll <= 0:
		return usageErr("--drain-wait, --health-wait, --judge-wait and --poll must be positive")
	case *output != "text" && *output != "json":
		return usageErr("-o must be text or json, got %q", *output)
	}
	r.pool, r.json = pos[0], *output == "json"
	if f, ok := stdout.(*os.File); ok && !r.json {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			r.tty = true
		}
	}
	base, o := withEnv(*adminURL, client.Options{TokenFile: *tokenFile})
	o.Timeout += r.drainWait
	c, err := apiClient(base, o, stderr)
	if err != nil {
		var ce *ctlError
		if errors.As(err, &ce) {
			fmt.Fprintln(stderr, "baton rollout:", ce.msg)
			return ce.code
		}
		fmt.Fprintln(stderr, "baton rollout:", err)
		return exitFail
	}
	r.c = c
	host, _ := os.Hostname()
	r.holder = fmt.Sprintf("baton rollout of %s to %s on %s (pid %d)", r.pool, r.to, host, os.Getpid())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	r.ctx = ctx
	err = r.run()
	if err == nil {
		return exitOK
	}
	r.mu.Lock()
	if r.lost != nil {
		err = r.lost
	}
	r.mu.Unlock()
	if ctx.Err() != nil {
		r.event("interrupted", "", "", "interrupted; baton keeps every step taken so far: run the same command again to continue")
		return exitInterrupted
	}
	var ce *ctlError
	code, msg := exitFail, err.Error()
	if errors.As(err, &ce) {
		code, msg = ce.code, ce.msg
	}
	r.event("failed", "", "", "%s", msg)
	if !r.json {
		fmt.Fprintln(stderr, "baton rollout:", msg)
	}
	return code
}

// event reports one step: a line of text, or a JSON object.
func (r *rolloutCmd) event(kind, backend, version, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.json {
		ev := map[string]string{"time": time.Now().UTC().Format(time.RFC3339Nano), "event": kind, "pool": r.pool, "message": msg}
		if backend != "" {
			ev["backend"] = backend
		}
		if version != "" {
			ev["version"] = version
		}
		data, _ := json.Marshal(ev)
		fmt.Fprintf(r.out, "%s\n", data)
		return
	}
	fmt.Fprintf(r.out, "%s %s\n", time.Now().Format("15:04:05"), msg)
}

// progress reports how many servers run the new version: a bar on a
// terminal, a plain line otherwise.
func (r *rolloutCmd) progress(p v1.Pool) {
	done := 0
	for _, b := range p.Backends {
		if b.Version == r.to && b.State == "active" {
			done++
		}
	}
	total := len(p.Backends)
	line := fmt.Sprintf("%d of %d servers run %s", done, total, r.to)
	if r.tty && total > 0 {
		const width = 20
		n := done * width / total
		line = "[" + strings.Repeat("#", n) + strings.Repeat("-", width-n) + "] " + line
	}
	r.event("progress", "", r.to, "%s", line)
}

// sleep waits d, or returns the context's error when interrupted.
func (r *rolloutCmd) sleep(d time.Duration) error {
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (r *rolloutCmd) poolPath() string { return "/v1/pools/" + url.PathEscape(r.pool) }

func (r *rolloutCmd) getPool() (v1.Pool, error) {
	var p v1.Pool
	_, err := r.c.call("GET", r.poolPath(), nil, nil, &p)
	return p, err
}

func (r *rolloutCmd) getCanary() (control.CanaryReport, error) {
	var rep control.CanaryReport
	_, err := r.c.call("GET", r.poolPath()+"/canary", nil, nil, &rep)
	return rep, err
}

// lease takes the pool's release lease and keeps renewing it until the
// returned stop is called, which releases it. Losing it cancels the run.
func (r *rolloutCmd) lease() (stop func(), err error) {
	const ttl = 30 * time.Second
	body := map[string]string{"holder": r.holder, "ttl": ttl.String()}
	if _, err := r.c.call("PUT", r.poolPath()+"/lease", nil, body, nil); err != nil {
		if apiCode(err) == control.CodeLeaseHeld {
			return nil, fail(exitFail, "another release of %s is under way: %v", r.pool, err)
		}
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(r.ctx)
	parent := r.ctx
	r.ctx = ctx
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		failures := 0
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := r.c.call("PUT", r.poolPath()+"/lease", nil, body, nil); err != nil {
					if failures++; apiCode(err) == control.CodeLeaseHeld || failures >= 2 {
						lost := fail(exitFail, "stopped: the release lease of %s was lost (%v); nothing else was changed. Run the same command again to continue", r.pool, err)
						r.mu.Lock()
						r.lost = lost
						r.mu.Unlock()
						cancel(lost)
						return
					}
				} else {
					failures = 0
				}
			}
		}
	}()
	return func() {
		cancel(nil)
		<-done
		r.ctx = parent
		_, _ = r.c.call("DELETE", r.poolPath()+"/lease", url.Values{"holder": {r.holder}}, nil, nil)
	}, nil
}

func (r *rolloutCmd) run() error {
	p, err := r.getPool()
	if err != nil {
		return err
	}
	if len(p.Backends) == 0 {
		return fail(exitFail, "pool %s has no servers", r.pool)
	}
	if r.dryRun {
		r.plan(p)
		return nil
	}
	stop, err := r.lease()
	if err != nil {
		return err
	}
	defer stop()
	names := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		names[i] = b.Name
	}
	r.event("start", "", r.to, "releasing %s to pool %s (stable %s; servers %s)", r.to, r.pool, p.StableVersion, strings.Join(names, ", "))
	for {
		if err := r.ctx.Err(); err != nil {
			return err
		}
		p, err := r.getPool()
		if err != nil {
			return err
		}
		switch {
		case p.Canary != nil && p.Canary.Version != r.to:
			return fail(exitFail, "pool %s is running canary %s; promote or roll it back first (baton ctl promote|rollback %s), then run this again",
				r.pool, p.Canary.Version, r.pool)
		case p.Canary != nil:
			if err := r.watchCanary(p); err != nil {
				return err
			}
		case p.StableVersion != r.to:
			// No canary yet, or it was rolled back and this run did not
			// see it happen: a server drained on the new version is one.
			for _, b := range p.Backends {
				if b.Version == r.to && b.State != "active" {
					return r.rolledBack(p, "")
				}
			}
			b := r.nextCanary(p)
			if b == nil {
				return fail(exitFail, "pool %s has no active server to make the canary", r.pool)
			}
			r.event("canary", b.Name, r.to, "%s becomes the canary", b.Name)
			if err := r.upgradeServer(*b, r.to, p.StableVersion, r.upgrade, false); err != nil {
				return err
			}
		default:
			done, err := r.upgradeRest(p)
			if err != nil || done {
				return err
			}
		}
	}
}

// nextCanary picks the server to make the canary: one a previous run
// drained on the old version and did not finish, else the first active one.
func (r *rolloutCmd) nextCanary(p v1.Pool) *v1.Backend {
	for i, b := range p.Backends {
		if b.Version != r.to && b.State != "active" {
			return &p.Backends[i]
		}
	}
	for i, b := range p.Backends {
		if b.Version != r.to {
			return &p.Backends[i]
		}
	}
	return nil
}

// upgradeServer drains b, runs cmd on it, enables it as version and waits
// until its health check passes. back: it is going back to the old version
// after a rollback.
func (r *rolloutCmd) upgradeServer(b v1.Backend, version, from, cmd string, back bool) error {
	bpath := r.poolPath() + "/backends/" + url.PathEscape(b.Name)
	r.event("drain", b.Name, version, "draining %s (%s)", b.Name, b.Address)
	if _, err := r.c.call("POST", bpath+"/drain", url.Values{"wait": {r.drainWait.String()}}, nil, nil); err != nil {
		var ce *ctlError
		if errors.As(err, &ce) && ce.code == exitWait {
			return fail(exitFail, "%s did not drain within %s (%s); it stays drained. Run the same command again to keep waiting", b.Name, r.drainWait, ce.msg)
		}
		return err
	}
	r.event("drained", b.Name, version, "%s drained: nothing in flight", b.Name)
	line := expand(cmd, r.pool, b, version, from)
	if back {
		r.event("reinstall", b.Name, version, "reinstalling %s on %s: %s", version, b.Name, line)
	} else {
		r.event("upgrade", b.Name, version, "upgrading %s to %s: %s", b.Name, version, line)
	}
	run := r.sh
	if r.install != nil {
		run = func(line string) (string, error) { return r.install(line, b, version) }
	}
	if out, err := run(line); err != nil {
		if r.ctx.Err() != nil {
			return r.ctx.Err()
		}
		detail := err.Error()
		if out != "" {
			detail += ": " + out
		}
		return fail(exitFail, "the command failed on %s (%s); %s stays drained, out of traffic. Fix it, then run the same baton rollout command again to continue (or put it back as it was: baton ctl enable %s %s --version %s)",
			b.Name, detail, b.Name, r.pool, b.Name, from)
	}
	if _, err := r.c.call("POST", bpath+"/enable", nil, map[string]string{"version": version}, nil); err != nil {
		return err
	}
	r.event("enable", b.Name, version, "%s enabled as %s; waiting for its health check", b.Name, version)
	if err := r.waitHealthy(b.Name); err != nil {
		return err
	}
	r.event("ready", b.Name, version, "%s is back, running %s", b.Name, version)
	if p, err := r.getPool(); err == nil && !back {
		r.progress(p)
	}
	return nil
}

// sh runs a command line with sh -c, bounded by the run's context. In text
// mode its output goes to ours; in JSON mode it is kept, and its end
// returned, so events stay one JSON object per line.
func (r *rolloutCmd) sh(line string) (string, error) {
	cmd := exec.CommandContext(r.ctx, "sh", "-c", line)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	var buf tailBuffer
	if r.json {
		cmd.Stdout, cmd.Stderr = &buf, &buf
	} else {
		w := &lockedWriter{mu: &r.mu, w: r.out}
		cmd.Stdout, cmd.Stderr = w, w
	}
	err := cmd.Run()
	return strings.TrimSpace(buf.String()), err
}

func (r *rolloutCmd) waitHealthy(name string) error {
	deadline := time.Now().Add(r.healthWait)
	for {
		var b v1.Backend
		if _, err := r.c.call("GET", r.poolPath()+"/backends/"+url.PathEscape(name), nil, nil, &b); err != nil {
			return err
		}
		if b.State == "active" && b.Healthy {
			return nil
		}
		if time.Now().After(deadline) {
			return fail(exitFail, "%s did not pass its health check within %s (%s); it is enabled but gets no traffic. Fix the server, then run the same command again (or take it out: baton ctl drain %s %s)",
				name, r.healthWait, orNone(b.LastError), r.pool, name)
		}
		if err := r.sleep(200 * time.Millisecond); err != nil {
			return err
		}
	}
}

// watchCanary follows the judge on the canary until it is promoted (nil:
// the loop goes on with the other servers) or rolled back (an error with
// the reason). A passing step the judge does not take itself (dry run) is
// taken here; so is the promotion after the last step, and the rollback
// when the pool does not roll back on its own.
func (r *rolloutCmd) watchCanary(p v1.Pool) error {
	for _, b := range p.Backends {
		if b.Version == r.to && b.State == "active" && !b.Healthy {
			if err := r.waitHealthy(b.Name); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(r.judgeWait)
	last, lastAt := "", time.Time{}
	promoted := false // by this run
	for {
		rep, err := r.getCanary()
		if err != nil {
			return err
		}
		if rep.CanaryVersion == "" {
			if rep.StableVersion == r.to {
				by := ""
				switch pc := rep.Previous; {
				case promoted:
				case pc != nil && pc.By == "judge":
					by = " by baton's judge"
				case pc != nil && pc.By != "":
					by = " by " + pc.By
				}
				r.event("promoted", "", r.to, "%s is promoted%s; the other servers follow", r.to, by)
				return nil
			}
			p, err := r.getPool()
			if err != nil {
				return err
			}
			return r.rolledBack(p, "")
		}
		// A line when the verdict, its rule or the share changes, and every
		// 10 s while it does not.
		key := fmt.Sprintf("%s %s %g", rep.Verdict, rep.Rule, rep.Weight)
		if key != last || time.Since(lastAt) >= 10*time.Second {
			r.event("verdict", "", r.to, "canary %s at %s%%: %s — %s", rep.CanaryVersion, trimFloat(rep.Weight), rep.Verdict, rep.Reason)
			last, lastAt = key, time.Now()
		}
		switch rep.Verdict {
		case canary.Pass:
			next := 0.0
			for _, s := range rep.Steps {
				if s > rep.Weight {
					next = s
					break
				}
			}
			switch {
			case rep.Held:
			case next > 0 && rep.DryRun:
				r.event("step", "", r.to, "moving the canary to %s%%", trimFloat(next))
				body := map[string]any{"version": r.to, "weight": next}
				if _, err := r.c.call("PUT", r.poolPath()+"/canary", nil, body, nil); err != nil {
					return err
				}
			case next == 0:
				r.event("promote", "", r.to, "promoting %s: %s", r.to, rep.Reason)
				_, err := r.c.call("POST", r.poolPath()+"/canary/promote", nil, nil, nil)
				if err != nil && !noCanary(err) {
					return err
				}
				promoted = err == nil
			}
		case canary.Fail:
			if rep.Held {
				// An operator holds the pool: nothing automatic, this
				// rollout included, until they resume or act.
				break
			}
			if !rep.AutoRollback || rep.DryRun {
				r.event("rollback", "", r.to, "rolling %s back: %s", r.to, rep.Reason)
				if _, err := r.c.call("POST", r.poolPath()+"/canary/rollback", nil, nil, nil); err != nil {
					return err
				}
				p, err := r.getPool()
				if err != nil {
					return err
				}
				return r.rolledBack(p, rep.Reason)
			}
		}
		if time.Now().After(deadline) {
			return fail(exitWait, "the judge did not decide on %s within %s (last: %s — %s); the canary keeps its share. Run the same command again to keep waiting",
				r.to, r.judgeWait, rep.Verdict, rep.Reason)
		}
		if err := r.sleep(r.poll); err != nil {
			return err
		}
	}
}

// noCanary tells a promote that found no canary: the judge promoted first.
func noCanary(err error) bool { return apiCode(err) == control.CodeNoCanary }

// rolledBack puts the canary servers back on the stable version (with
// --rollback) and returns the error that ends the run, with the reason.
func (r *rolloutCmd) rolledBack(p v1.Pool, reason string) error {
	by := "rolled back"
	if reason == "" {
		if rep, err := r.getCanary(); err == nil && rep.Previous != nil && rep.Previous.Version == r.to {
			reason = rep.Previous.Reason
			if rep.Previous.By == "judge" {
				by = "rolled back by baton's judge"
			} else if rep.Previous.By != "" {
				by = "rolled back by " + rep.Previous.By
			}
		}
	}
	if reason == "" {
		reason = "no verdict recorded"
	}
	r.event("rolled_back", "", r.to, "%s was %s: %s", r.to, by, reason)
	var stuck []string
	for _, b := range p.Backends {
		if b.Version != r.to {
			continue
		}
		if r.rollback == "" {
			stuck = append(stuck, b.Name)
			continue
		}
		if err := r.upgradeServer(b, p.StableVersion, r.to, r.rollback, true); err != nil {
			return err
		}
		r.event("restored", b.Name, p.StableVersion, "%s runs %s again", b.Name, p.StableVersion)
	}
	if len(stuck) > 0 {
		return fail(exitFail, "%s was not released: %s. %s stay drained on %s; reinstall %s on them, then: baton ctl enable %s NAME --version %s",
			r.to, reason, strings.Join(stuck, ", "), r.to, p.StableVersion, r.pool, p.StableVersion)
	}
	return fail(exitFail, "%s was not released: %s", r.to, reason)
}

// upgradeRest upgrades the servers not yet on the new version, at most
// maxOut out of rotation at once. It returns true once every server runs it.
func (r *rolloutCmd) upgradeRest(p v1.Pool) (bool, error) {
	var out, todo []v1.Backend
	for _, b := range p.Backends {
		if b.State != "active" {
			out = append(out, b)
		}
		if b.Version != r.to {
			todo = append(todo, b)
		}
	}
	if len(todo) == 0 {
		for _, b := range p.Backends {
			if !b.Healthy {
				if err := r.waitHealthy(b.Name); err != nil {
					return false, err
				}
			}
		}
		r.event("done", "", r.to, "released: all %d servers of %s run %s", len(p.Backends), r.pool, r.to)
		return true, nil
	}
	// Servers a previous run left out of rotation first, then as many
	// active ones as --max-unavailable allows.
	slices.SortStableFunc(todo, func(a, b v1.Backend) int {
		return boolRank(a.State == "active") - boolRank(b.State == "active")
	})
	var batch []v1.Backend
	room := r.maxOut - len(out)
	for _, b := range todo {
		if b.State != "active" {
			batch = append(batch, b)
		} else if room > 0 {
			batch = append(batch, b)
			room--
		}
	}
	if len(batch) == 0 {
		names := make([]string, len(out))
		for i, b := range out {
			names[i] = b.Name + " (" + b.State + ")"
		}
		return false, fail(exitFail, "%s already out of rotation and --max-unavailable is %d; bring them back, or allow more, then run this again",
			strings.Join(names, ", "), r.maxOut)
	}
	errs := make([]error, len(batch))
	var wg sync.WaitGroup
	for i, b := range batch {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.upgradeServer(b, r.to, b.Version, r.upgrade, false)
		}()
	}
	wg.Wait()
	return false, errors.Join(errs...)
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// plan prints what a run would do from the pool's state now.
func (r *rolloutCmd) plan(p v1.Pool) {
	rep, _ := r.getCanary()
	fmt.Fprintf(r.out, "plan: release %s to pool %s (stable %s; %d servers; at most %d out of rotation at once after the canary)\n",
		r.to, r.pool, p.StableVersion, len(p.Backends), r.maxOut)
	n := 1
	step := func(format string, a ...any) {
		fmt.Fprintf(r.out, "  %d. %s\n", n, fmt.Sprintf(format, a...))
		n++
	}
	rest := p.Backends
	if p.StableVersion != r.to {
		if p.Canary == nil || p.Canary.Version != r.to {
			if c := r.nextCanary(p); c != nil {
				step("%s (%s): drain, run `%s`, enable as %s: the canary at the pool's initial share",
					c.Name, c.Address, expand(r.upgrade, r.pool, *c, r.to, p.StableVersion), r.to)
			}
		}
		steps := "its steps"
		if len(rep.Steps) > 0 {
			s := make([]string, len(rep.Steps))
			for i, v := range rep.Steps {
				s[i] = trimFloat(v) + "%"
			}
			steps = "the steps " + strings.Join(s, " → ")
		}
		rb := "leave it drained"
		if r.rollback != "" {
			rb = "run `" + r.rollback + "` on it and enable it as " + p.StableVersion
		}
		step("the judge compares %s with %s through %s; on pass %s is promoted; on fail it is rolled back: drain the canary, %s, and stop with exit 1",
			r.to, p.StableVersion, steps, r.to, rb)
	}
	for _, b := range rest {
		if b.Version == r.to {
			continue
		}
		if p.StableVersion != r.to && (p.Canary == nil || p.Canary.Version != r.to) {
			if c := r.nextCanary(p); c != nil && c.Name == b.Name {
				continue
			}
		}
		step("%s (%s): drain, run `%s`, enable as %s", b.Name, b.Address, expand(r.upgrade, r.pool, b, r.to, b.Version), r.to)
	}
	fmt.Fprintln(r.out, "nothing was changed (--dry-run)")
}

// expand fills a command template for one server.
func expand(tmpl, poolName string, b v1.Backend, version, from string) string {
	host, port, err := net.SplitHostPort(b.Address)
	if err != nil {
		host, port = b.Address, ""
	}
	return strings.NewReplacer("{name}", b.Name, "{address}", b.Address, "{host}", host, "{port}", port,
		"{pool}", poolName, "{version}", version, "{from}", from).Replace(tmpl)
}

func trimFloat(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".")
}

func orNone(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}

// tailBuffer keeps the last 2 KiB written to it.
type tailBuffer struct {
	mu  sync.Mutex
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

// lockedWriter serialises writes to w with the run's other output.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
