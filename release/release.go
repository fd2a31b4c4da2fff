// Package release releases a version to one of baton's pools through the
// admin API, server by server: drain one, upgrade it, enable it as the
// canary, follow baton's judge through the pool's steps, then promote and
// upgrade the others — or roll the canary back and reinstall the old
// version on it. Every step is read back from baton, so a run interrupted
// anywhere continues where it stopped when run again. baton rollout and
// baton demo drive it; it prints nothing and runs no command of its own
// choosing: what it says goes to Options.Events, what it installs runs
// through Options.Run.
package release

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/canary"
)

// Options say what to release and how. To and Upgrade are required; a
// zero duration or count takes the default named beside it.
type Options struct {
	// To is the version to release.
	To string
	// Upgrade installs To on one drained server; Rollback reinstalls the
	// old version on the canary after a failed release ("": the canary
	// stays drained). Both are templates: {name}, {address}, {host},
	// {port}, {pool}, {version} (the version to install) and {from} (the
	// version it replaces) are filled in for each server.
	Upgrade, Rollback string
	// Before and AfterGone are the migration gates of a release that
	// changes a database the old version uses: Before (the expand step)
	// runs once before the first server is drained; AfterGone (the
	// contract step) runs once every server runs To and the version it
	// replaced is gone — no server of it in rotation, nothing in flight
	// on one, no affinity cookie that may still pin a client to it. Both
	// are templates of {pool}, {from} and {to}. baton records each gate's
	// run with the release, so a gate that succeeded never runs again:
	// not when the release is run again, nor after a restart of baton.
	Before, AfterGone string
	// RequiresGone are versions that must be gone from the pool (as
	// above) before the release may start: To cannot run beside them.
	RequiresGone []string
	// AllowUnknown lets a version of RequiresGone that baton never saw in
	// the pool count as gone; without it the release is refused, since
	// baton cannot tell a typo from a version long gone.
	AllowUnknown bool
	// ThisInstanceOnly judges "gone" (--requires-gone, --after-gone) by
	// the baton the release talks to alone, in a cluster too, where each
	// baton counts only its own requests and cookies: for a caller that
	// checked every other instance itself. Without it a cluster never
	// finds a version gone.
	ThisInstanceOnly bool
	// ReplaceUnfinished lets the release replace baton's record of an
	// earlier rollout whose after_gone gate has not run; without it baton
	// refuses, as the versions that gate waits for would be forgotten.
	ReplaceUnfinished bool
	// MaxUnavailable is how many servers may be out of rotation at once
	// after the canary. Default 1.
	MaxUnavailable int
	// DrainWait bounds one drain (default 5m), HealthWait a server's wait
	// for its health check (2m), JudgeWait the wait for the judge's
	// decision on the canary (30m), GoneWait the wait for the old version
	// to be gone before AfterGone (2h); Poll is how often the canary and
	// the old version are looked at (1s).
	DrainWait, HealthWait, JudgeWait, GoneWait, Poll time.Duration
	// Holder names this run in the pool's lease: what a second release of
	// the pool is told is under way.
	Holder string
	// Events receives each step as it happens; nil discards them. Calls
	// never overlap, also while servers are upgraded together.
	Events func(Event)
	// Run runs one upgrade or rollback command. Nil: Shell(nil).
	Run Runner
	// Describe words an admin API error inside the run's own messages
	// (baton rollout adds which flag to set); nil: its Error().
	Describe func(error) string
}

// Event is one step of a release.
type Event struct {
	// Kind: start, gate, gate_output, canary, drain, drained, upgrade,
	// reinstall, enable, ready, progress, verdict, step, promote,
	// promoted, rollback, rolled_back, restored, done, waiting or gone.
	Kind    string
	Backend string // the server it is about, if any
	Version string // the version it is about, if any
	Message string // one sentence for people
	// Done and Total, on a progress event: the servers that run To and
	// are active, out of the pool's.
	Done, Total int
}

// Command is one upgrade or rollback command for a drained server.
type Command struct {
	Line    string     // the template filled in for Backend
	Backend v1.Backend // the server, as baton showed it before the drain
	Version string     // the version to install
}

// A Runner runs cmd until it ends or ctx does. When it fails, output is
// the end of what it printed, for the message that says what went wrong.
type Runner func(ctx context.Context, cmd Command) (output string, err error)

// Plan is what a release would do from the pool's state now.
type Plan struct {
	Summary string   // the release in one line
	Steps   []string // what happens, in order
}

// Errors a run can end with, for errors.Is. Their messages say what
// happened and what to do.
var (
	// ErrUndecided: the judge did not decide within JudgeWait; the canary
	// keeps its share.
	ErrUndecided = errors.New("the judge did not decide")
	// ErrLeaseHeld: another release of the pool is under way.
	ErrLeaseHeld = errors.New("another release is under way")
	// ErrLeaseLost: this run lost the pool's lease and stopped.
	ErrLeaseLost = errors.New("the release lease was lost")
	// ErrRequiresGone: a version in RequiresGone is still present; the
	// release did not start.
	ErrRequiresGone = errors.New("a version the release requires gone is present")
	// ErrNotGone: the version replaced was not gone within GoneWait; every
	// server runs To, and AfterGone has not run.
	ErrNotGone = errors.New("the old version is not gone")
)

// failure is an error of the run's own: the sentence for the operator,
// and the sentinel it matches, if any.
type failure struct {
	msg  string
	kind error
}

func (f *failure) Error() string        { return f.msg }
func (f *failure) Is(target error) bool { return f.kind != nil && target == f.kind }

func failf(format string, args ...any) error {
	return &failure{msg: fmt.Sprintf(format, args...)}
}

// Release is one release of a version to a pool. Run it once; it is not
// safe for concurrent use by several goroutines.
type Release struct {
	c    *client.Client
	pool string
	o    Options

	// rec is the rollout's record in baton when it has gates: the version
	// it replaces and the gates that ran.
	rec *v1.Rollout

	mu sync.Mutex // serialises calls of o.Events
}

// New prepares the release of o.To to pool through c. c's timeout must
// leave room for a drain's wait (o.DrainWait).
func New(c *client.Client, pool string, o Options) *Release {
	if o.MaxUnavailable <= 0 {
		o.MaxUnavailable = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.DrainWait, 5*time.Minute)
	def(&o.HealthWait, 2*time.Minute)
	def(&o.JudgeWait, 30*time.Minute)
	def(&o.GoneWait, 2*time.Hour)
	def(&o.Poll, time.Second)
	if o.Run == nil {
		o.Run = Shell(nil)
	}
	if o.Describe == nil {
		o.Describe = func(err error) string { return err.Error() }
	}
	return &Release{c: c, pool: pool, o: o}
}

// event reports one step.
func (r *Release) event(e Event) {
	if r.o.Events == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.o.Events(e)
}

func (r *Release) say(kind, backend, version, format string, args ...any) {
	r.event(Event{Kind: kind, Backend: backend, Version: version, Message: fmt.Sprintf(format, args...)})
}

// progress reports how many servers run the new version.
func (r *Release) progress(p v1.Pool) {
	done := 0
	for _, b := range p.Backends {
		if b.Version == r.o.To && b.State == "active" {
			done++
		}
	}
	r.event(Event{Kind: "progress", Version: r.o.To, Done: done, Total: len(p.Backends),
		Message: fmt.Sprintf("%d of %d servers run %s", done, len(p.Backends), r.o.To)})
}

// sleep waits d, or returns the context's error when it ends first.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (r *Release) poolPath() string { return "/v1/pools/" + url.PathEscape(r.pool) }

func (r *Release) backendPath(name string) string {
	return r.poolPath() + "/backends/" + url.PathEscape(name)
}

// call sends one request of the admin API and decodes its answer into out.
func (r *Release) call(ctx context.Context, method, path string, query url.Values, body, out any) error {
	_, _, err := r.c.Do(ctx, method, path, query, body, out)
	return err
}

func (r *Release) getPool(ctx context.Context) (v1.Pool, error) {
	var p v1.Pool
	err := r.call(ctx, "GET", r.poolPath(), nil, nil, &p)
	return p, err
}

func (r *Release) getCanary(ctx context.Context) (v1.CanaryReport, error) {
	var rep v1.CanaryReport
	err := r.call(ctx, "GET", r.poolPath()+"/canary", nil, nil, &rep)
	return rep, err
}

// lease takes the pool's release lease and keeps renewing it until stop is
// called, which releases it. The returned context ends with ctx, or when
// the lease is lost, with an ErrLeaseLost error as its cause.
func (r *Release) lease(ctx context.Context) (leased context.Context, stop func(), err error) {
	const ttl = 30 * time.Second
	body := v1.TakeLease{Holder: r.o.Holder, TTL: ttl.String()}
	if err := r.call(ctx, "PUT", r.poolPath()+"/lease", nil, body, nil); err != nil {
		if client.CodeOf(err) == v1.CodeLeaseHeld {
			return nil, nil, &failure{kind: ErrLeaseHeld, msg: fmt.Sprintf("another release of %s is under way: %s", r.pool, r.o.Describe(err))}
		}
		return nil, nil, err
	}
	leased, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(ttl / 3)
		defer t.Stop()
		failures := 0
		for {
			select {
			case <-leased.Done():
				return
			case <-t.C:
			}
			err := r.call(leased, "PUT", r.poolPath()+"/lease", nil, body, nil)
			switch {
			case err == nil:
				failures = 0
			case leased.Err() != nil:
				return // the run ended while renewing
			default:
				if failures++; client.CodeOf(err) == v1.CodeLeaseHeld || failures >= 2 {
					cancel(&failure{kind: ErrLeaseLost, msg: fmt.Sprintf("stopped: the release lease of %s was lost (%s); nothing else was changed. Run the same command again to continue",
						r.pool, r.o.Describe(err))})
					return
				}
			}
		}
	}()
	return leased, func() {
		cancel(nil)
		<-done
		// Released even when the run was interrupted: the next run need
		// not wait for the lease to run out.
		_ = r.call(context.WithoutCancel(ctx), "DELETE", r.poolPath()+"/lease", url.Values{"holder": {r.o.Holder}}, nil, nil)
	}, nil
}

// Plan says what Run would do from the pool's state now, and changes
// nothing.
func (r *Release) Plan(ctx context.Context) (Plan, error) {
	p, err := r.servers(ctx)
	if err != nil {
		return Plan{}, err
	}
	if err := r.requiresGone(ctx); err != nil {
		return Plan{}, err
	}
	return r.plan(ctx, p), nil
}

// servers reads the pool, which must have servers to release to.
func (r *Release) servers(ctx context.Context) (v1.Pool, error) {
	p, err := r.getPool(ctx)
	if err != nil {
		return p, err
	}
	if len(p.Backends) == 0 {
		return p, failf("pool %s has no servers", r.pool)
	}
	return p, nil
}

// Run releases o.To to the pool. It returns nil once every server runs it,
// or the error that stopped the release: the canary was rolled back (with
// the judge's reason), a command failed, the judge did not decide
// (ErrUndecided), the lease was held or lost, or ctx ended. Admin API
// refusals come back as they are (*client.Error). Each message says in
// what state the pool was left and how to go on.
func (r *Release) Run(ctx context.Context) error {
	p, err := r.servers(ctx)
	if err != nil {
		return err
	}
	if err := r.requiresGone(ctx); err != nil {
		return err
	}
	leased, stop, err := r.lease(ctx)
	if err != nil {
		return err
	}
	defer stop()
	err = r.run(leased, p)
	if lost := context.Cause(leased); err != nil && errors.Is(lost, ErrLeaseLost) {
		return lost // what stopped the run, rather than how a step noticed
	}
	return err
}

// run is the state machine: each turn reads the pool and takes the next
// step from what it shows.
func (r *Release) run(ctx context.Context, p v1.Pool) error {
	names := make([]string, len(p.Backends))
	for i, b := range p.Backends {
		names[i] = b.Name
	}
	r.say("start", "", r.o.To, "releasing %s to pool %s (stable %s; servers %s)", r.o.To, r.pool, p.StableVersion, strings.Join(names, ", "))
	if r.o.Before != "" || r.o.AfterGone != "" {
		if err := r.begin(ctx, p); err != nil {
			return err
		}
	}
	if r.o.Before != "" {
		if err := r.gate(ctx, v1GateBefore, r.o.Before); err != nil {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		p, err := r.getPool(ctx)
		if err != nil {
			return err
		}
		switch {
		case p.Canary != nil && p.Canary.Version != r.o.To:
			return failf("pool %s is running canary %s; promote or roll it back first (baton ctl promote|rollback %s), then run this again",
				r.pool, p.Canary.Version, r.pool)
		case p.Canary != nil:
			if err := r.watchCanary(ctx, p); err != nil {
				return err
			}
		case p.StableVersion != r.o.To:
			// No canary yet, or it was rolled back and this run did not
			// see it happen: a server drained on the new version is one.
			for _, b := range p.Backends {
				if b.Version == r.o.To && b.State != "active" {
					return r.rolledBack(ctx, p, "")
				}
			}
			b := r.nextCanary(p)
			if b == nil {
				return failf("pool %s has no active server to make the canary", r.pool)
			}
			r.say("canary", b.Name, r.o.To, "%s becomes the canary", b.Name)
			if err := r.upgradeServer(ctx, *b, r.o.To, p.StableVersion, r.o.Upgrade, false); err != nil {
				return err
			}
		default:
			done, err := r.upgradeRest(ctx, p)
			if err != nil || !done {
				if err != nil {
					return err
				}
				continue // the next batch
			}
			if r.o.AfterGone == "" {
				return nil
			}
			// Every server runs To; the contract step waits until no
			// client can be served the old version any more.
			if err := r.waitGone(ctx); err != nil {
				return err
			}
			return r.gate(ctx, v1GateAfterGone, r.o.AfterGone)
		}
	}
}

// nextCanary picks the server to make the canary: one a previous run
// drained on the old version and did not finish, else the first active one.
func (r *Release) nextCanary(p v1.Pool) *v1.Backend {
	for i, b := range p.Backends {
		if b.Version != r.o.To && b.State != "active" {
			return &p.Backends[i]
		}
	}
	for i, b := range p.Backends {
		if b.Version != r.o.To {
			return &p.Backends[i]
		}
	}
	return nil
}

// upgradeServer drains b, runs cmd on it, enables it as version and waits
// until its health check passes. back: it is going back to the old version
// after a rollback.
func (r *Release) upgradeServer(ctx context.Context, b v1.Backend, version, from, cmd string, back bool) error {
	bpath := r.backendPath(b.Name)
	r.say("drain", b.Name, version, "draining %s (%s)", b.Name, b.Address)
	if err := r.call(ctx, "POST", bpath+"/drain", url.Values{"wait": {r.o.DrainWait.String()}}, nil, nil); err != nil {
		var ae *client.Error
		if errors.As(err, &ae) && ae.Status == 504 {
			return failf("%s did not drain within %s (%s); it stays drained. Run the same command again to keep waiting", b.Name, r.o.DrainWait, r.o.Describe(err))
		}
		return err
	}
	r.say("drained", b.Name, version, "%s drained: nothing in flight", b.Name)
	line := expand(cmd, r.pool, b, version, from)
	if back {
		r.say("reinstall", b.Name, version, "reinstalling %s on %s: %s", version, b.Name, line)
	} else {
		r.say("upgrade", b.Name, version, "upgrading %s to %s: %s", b.Name, version, line)
	}
	if out, err := r.o.Run(ctx, Command{Line: line, Backend: b, Version: version}); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		detail := err.Error()
		if out != "" {
			detail += ": " + out
		}
		return failf("the command failed on %s (%s); %s stays drained, out of traffic. Fix it, then run the same baton rollout command again to continue (or put it back as it was: baton ctl enable %s %s --version %s)",
			b.Name, detail, b.Name, r.pool, b.Name, from)
	}
	if err := r.call(ctx, "POST", bpath+"/enable", nil, v1.EnableBackend{Version: version}, nil); err != nil {
		return err
	}
	r.say("enable", b.Name, version, "%s enabled as %s; waiting for its health check", b.Name, version)
	if err := r.waitHealthy(ctx, b.Name); err != nil {
		return err
	}
	r.say("ready", b.Name, version, "%s is back, running %s", b.Name, version)
	if p, err := r.getPool(ctx); err == nil && !back {
		r.progress(p)
	}
	return nil
}

// waitHealthy waits until the server is active and passes its health
// check, up to HealthWait.
func (r *Release) waitHealthy(ctx context.Context, name string) error {
	deadline := time.Now().Add(r.o.HealthWait)
	for {
		var b v1.Backend
		if err := r.call(ctx, "GET", r.backendPath(name), nil, nil, &b); err != nil {
			return err
		}
		if b.State == "active" && b.Healthy {
			return nil
		}
		if time.Now().After(deadline) {
			return failf("%s did not pass its health check within %s (%s); it is enabled but gets no traffic. Fix the server, then run the same command again (or take it out: baton ctl drain %s %s)",
				name, r.o.HealthWait, orNone(b.LastError), r.pool, name)
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// watchCanary follows the judge on the canary until it is promoted (nil:
// the run goes on with the other servers) or rolled back (an error with
// the reason). A passing step the judge does not take itself (dry run) is
// taken here; so is the promotion after the last step, and the rollback
// when the pool does not roll back on its own.
func (r *Release) watchCanary(ctx context.Context, p v1.Pool) error {
	for _, b := range p.Backends {
		if b.Version == r.o.To && b.State == "active" && !b.Healthy {
			if err := r.waitHealthy(ctx, b.Name); err != nil {
				return err
			}
		}
	}
	deadline := time.Now().Add(r.o.JudgeWait)
	last, lastAt := "", time.Time{}
	promoted := false // by this run
	for {
		rep, err := r.getCanary(ctx)
		if err != nil {
			return err
		}
		if rep.CanaryVersion == "" {
			return r.canaryEnded(ctx, rep, promoted)
		}
		// A line when the verdict, its rule or the share changes, and every
		// 10 s while it does not.
		key := fmt.Sprintf("%s %s %g", rep.Verdict, rep.Rule, rep.Weight)
		if key != last || time.Since(lastAt) >= 10*time.Second {
			r.say("verdict", "", r.o.To, "canary %s at %s%%: %s — %s", rep.CanaryVersion, trimFloat(rep.Weight), rep.Verdict, rep.Reason)
			last, lastAt = key, time.Now()
		}
		switch rep.Verdict {
		case canary.Pass:
			by, err := r.passed(ctx, rep)
			if err != nil {
				return err
			}
			promoted = promoted || by
		case canary.Fail:
			if rep.Held {
				// An operator holds the pool: nothing automatic, this
				// run included, until they resume or act.
				break
			}
			if !rep.AutoRollback || rep.DryRun {
				r.say("rollback", "", r.o.To, "rolling %s back: %s", r.o.To, rep.Reason)
				if err := r.call(ctx, "POST", r.poolPath()+"/canary/rollback", nil, nil, nil); err != nil {
					return err
				}
				p, err := r.getPool(ctx)
				if err != nil {
					return err
				}
				return r.rolledBack(ctx, p, rep.Reason)
			}
		}
		if time.Now().After(deadline) {
			return &failure{kind: ErrUndecided, msg: fmt.Sprintf("the judge did not decide on %s within %s (last: %s — %s); the canary keeps its share. Run the same command again to keep waiting",
				r.o.To, r.o.JudgeWait, rep.Verdict, rep.Reason)}
		}
		if err := sleep(ctx, r.o.Poll); err != nil {
			return err
		}
	}
}

// canaryEnded tells how the canary ended: promoted (nil), or rolled back
// by someone else (the error that ends the run).
func (r *Release) canaryEnded(ctx context.Context, rep v1.CanaryReport, promoted bool) error {
	if rep.StableVersion != r.o.To {
		p, err := r.getPool(ctx)
		if err != nil {
			return err
		}
		return r.rolledBack(ctx, p, "")
	}
	by := ""
	switch pc := rep.Previous; {
	case promoted:
	case pc != nil && pc.By == "judge":
		by = " by baton's judge"
	case pc != nil && pc.By != "":
		by = " by " + pc.By
	}
	r.say("promoted", "", r.o.To, "%s is promoted%s; the other servers follow", r.o.To, by)
	return nil
}

// passed takes the step after a pass the judge does not take itself: the
// next share in a dry run, the promotion after the last. promoted: this
// run promoted the canary.
func (r *Release) passed(ctx context.Context, rep v1.CanaryReport) (promoted bool, err error) {
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
		r.say("step", "", r.o.To, "moving the canary to %s%%", trimFloat(next))
		body := v1.SetCanary{Version: r.o.To, Weight: &next}
		if err := r.call(ctx, "PUT", r.poolPath()+"/canary", nil, body, nil); err != nil {
			return false, err
		}
	case next == 0:
		r.say("promote", "", r.o.To, "promoting %s: %s", r.o.To, rep.Reason)
		err := r.call(ctx, "POST", r.poolPath()+"/canary/promote", nil, nil, nil)
		// No canary to promote: the judge promoted first.
		if err != nil && client.CodeOf(err) != v1.CodeNoCanary {
			return false, err
		}
		return err == nil, nil
	}
	return false, nil
}

// rolledBack puts the canary servers back on the stable version (with
// Rollback) and returns the error that ends the run, with the reason.
func (r *Release) rolledBack(ctx context.Context, p v1.Pool, reason string) error {
	by := "rolled back"
	if reason == "" {
		if rep, err := r.getCanary(ctx); err == nil && rep.Previous != nil && rep.Previous.Version == r.o.To {
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
	r.say("rolled_back", "", r.o.To, "%s was %s: %s", r.o.To, by, reason)
	var stuck []string
	for _, b := range p.Backends {
		if b.Version != r.o.To {
			continue
		}
		if r.o.Rollback == "" {
			stuck = append(stuck, b.Name)
			continue
		}
		if err := r.upgradeServer(ctx, b, p.StableVersion, r.o.To, r.o.Rollback, true); err != nil {
			return err
		}
		r.say("restored", b.Name, p.StableVersion, "%s runs %s again", b.Name, p.StableVersion)
	}
	if len(stuck) > 0 {
		return failf("%s was not released: %s. %s stay drained on %s; reinstall %s on them, then: baton ctl enable %s NAME --version %s",
			r.o.To, reason, strings.Join(stuck, ", "), r.o.To, p.StableVersion, r.pool, p.StableVersion)
	}
	return failf("%s was not released: %s", r.o.To, reason)
}

// upgradeRest upgrades the servers not yet on the new version, at most
// MaxUnavailable out of rotation at once. It returns true once every
// server runs it.
func (r *Release) upgradeRest(ctx context.Context, p v1.Pool) (bool, error) {
	var out, todo []v1.Backend
	for _, b := range p.Backends {
		if b.State != "active" {
			out = append(out, b)
		}
		if b.Version != r.o.To {
			todo = append(todo, b)
		}
	}
	if len(todo) == 0 {
		for _, b := range p.Backends {
			if !b.Healthy {
				if err := r.waitHealthy(ctx, b.Name); err != nil {
					return false, err
				}
			}
		}
		r.say("done", "", r.o.To, "released: all %d servers of %s run %s", len(p.Backends), r.pool, r.o.To)
		return true, nil
	}
	batch := r.nextBatch(out, todo)
	if len(batch) == 0 {
		names := make([]string, len(out))
		for i, b := range out {
			names[i] = b.Name + " (" + b.State + ")"
		}
		return false, failf("%s already out of rotation and --max-unavailable is %d; bring them back, or allow more, then run this again",
			strings.Join(names, ", "), r.o.MaxUnavailable)
	}
	errs := make([]error, len(batch))
	panics := make([]any, len(batch))
	var wg sync.WaitGroup
	for i, b := range batch {
		wg.Go(func() {
			// A runner that panics must not end the process from this
			// goroutine, past the deferred release of the lease: the
			// panic goes on from Run's goroutine once the others are done.
			defer func() { panics[i] = recover() }()
			errs[i] = r.upgradeServer(ctx, b, r.o.To, b.Version, r.o.Upgrade, false)
		})
	}
	wg.Wait()
	for _, p := range panics {
		if p != nil {
			panic(p)
		}
	}
	return false, errors.Join(errs...)
}

// nextBatch picks the servers to upgrade together: those a previous run
// left out of rotation first, then as many active ones as MaxUnavailable
// allows beside the out ones.
func (r *Release) nextBatch(out, todo []v1.Backend) []v1.Backend {
	todo = slices.Clone(todo)
	slices.SortStableFunc(todo, func(a, b v1.Backend) int {
		return boolRank(a.State == "active") - boolRank(b.State == "active")
	})
	var batch []v1.Backend
	room := r.o.MaxUnavailable - len(out)
	for _, b := range todo {
		if b.State != "active" {
			batch = append(batch, b)
		} else if room > 0 {
			batch = append(batch, b)
			room--
		}
	}
	return batch
}

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// plan says what a run would do from the pool's state p.
func (r *Release) plan(ctx context.Context, p v1.Pool) Plan {
	rep, _ := r.getCanary(ctx)
	pl := Plan{Summary: fmt.Sprintf("release %s to pool %s (stable %s; %d servers; at most %d out of rotation at once after the canary)",
		r.o.To, r.pool, p.StableVersion, len(p.Backends), r.o.MaxUnavailable)}
	step := func(format string, a ...any) { pl.Steps = append(pl.Steps, fmt.Sprintf(format, a...)) }
	gateLine := func(tmpl string) string {
		return strings.NewReplacer("{pool}", r.pool, "{from}", p.StableVersion, "{to}", r.o.To).Replace(tmpl)
	}
	for _, v := range r.o.RequiresGone {
		step("checked: %s is gone from %s", v, r.pool)
	}
	if r.o.Before != "" && p.StableVersion != r.o.To {
		step("run the --before gate once, before the first server is drained: `%s`", gateLine(r.o.Before))
	}
	var first *v1.Backend // the server this run would make the canary
	if p.StableVersion != r.o.To {
		if p.Canary == nil || p.Canary.Version != r.o.To {
			if first = r.nextCanary(p); first != nil {
				step("%s (%s): drain, run `%s`, enable as %s: the canary at the pool's initial share",
					first.Name, first.Address, expand(r.o.Upgrade, r.pool, *first, r.o.To, p.StableVersion), r.o.To)
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
		if r.o.Rollback != "" {
			rb = "run `" + r.o.Rollback + "` on it and enable it as " + p.StableVersion
		}
		step("the judge compares %s with %s through %s; on pass %s is promoted; on fail it is rolled back: drain the canary, %s, and stop with exit 1",
			r.o.To, p.StableVersion, steps, r.o.To, rb)
	}
	for _, b := range p.Backends {
		if b.Version == r.o.To || (first != nil && first.Name == b.Name) {
			continue
		}
		step("%s (%s): drain, run `%s`, enable as %s", b.Name, b.Address, expand(r.o.Upgrade, r.pool, b, r.o.To, b.Version), r.o.To)
	}
	if r.o.AfterGone != "" && p.StableVersion != r.o.To {
		step("wait until %s is gone (no server of it in rotation, nothing in flight on one, no affinity cookie of it still valid), then run the --after-gone gate once: `%s`",
			p.StableVersion, gateLine(r.o.AfterGone))
	}
	return pl
}

// expand fills a command template for one server: {name}, {address},
// {host}, {port}, {pool}, {version} and {from}, each shell-quoted: the
// line runs with sh -c, and the values come from the admin API, so a
// token holder must not be able to run commands here through them.
func expand(tmpl, poolName string, b v1.Backend, version, from string) string {
	host, port, err := net.SplitHostPort(b.Address)
	if err != nil {
		host, port = b.Address, ""
	}
	return strings.NewReplacer("{name}", shellQuote(b.Name), "{address}", shellQuote(b.Address), "{host}", shellQuote(host),
		"{port}", shellQuote(port), "{pool}", shellQuote(poolName), "{version}", shellQuote(version), "{from}", shellQuote(from)).Replace(tmpl)
}

// shellQuote returns s as one sh word: as it is when it holds only
// characters sh treats as plain, else in single quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:/@%+=,-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// trimFloat formats a share as the messages show it: at most two decimals,
// no trailing zeros ("12.5", "50").
func trimFloat(f float64) string {
	return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.2f", f), "0"), ".")
}

func orNone(s string) string {
	if s == "" {
		return "no error recorded"
	}
	return s
}
