package release

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/baton-lb/baton/admin/client"
	"github.com/baton-lb/baton/admin/v1"
)

// The gates as baton records them.
const (
	v1GateBefore    = "before"
	v1GateAfterGone = "after_gone"
)

// gateFlag names a gate as the operator gave it.
func gateFlag(gate string) string {
	if gate == v1GateBefore {
		return "--before"
	}
	return "--after-gone"
}

// getVersions asks what holds the pool's versions, those named listed
// even when absent (with whether baton ever saw them).
func (r *Release) getVersions(ctx context.Context, versions ...string) (v1.PoolVersions, error) {
	var pv v1.PoolVersions
	q := url.Values{"version": versions}
	if r.o.ThisInstanceOnly {
		q.Set("this_instance_only", "true")
	}
	err := r.call(ctx, "GET", r.poolPath()+"/versions", q, nil, &pv)
	return pv, err
}

// requiresGone refuses the release while a version of RequiresGone is
// still present in the pool: the new version must never meet it (v3, which
// dropped a column, beside a v1 that still reads it).
func (r *Release) requiresGone(ctx context.Context) error {
	if len(r.o.RequiresGone) == 0 && r.o.AfterGone == "" {
		return nil
	}
	pv, err := r.getVersions(ctx, r.o.RequiresGone...)
	if err != nil {
		return err
	}
	if pv.Clustered && !pv.ThisInstanceOnly {
		// Each baton of a cluster counts only its own requests in flight
		// and the cookies it gave: one of them cannot say a version is
		// gone, and waiting on it would wait for ever. Say so before
		// anything is drained.
		return &failure{kind: ErrRequiresGone, msg: fmt.Sprintf("refusing to release %s to %s with --requires-gone or --after-gone: this baton is one of a cluster, and each counts only its own requests and affinity cookies. Check every other instance yourself (baton ctl wait-gone POOL VERSION --this-instance-only against each) and run this with --this-instance-only",
			r.pool, r.o.To)}
	}
	if len(r.o.RequiresGone) == 0 {
		return nil
	}
	for _, version := range r.o.RequiresGone {
		v := pv.Find(version)
		if v == nil || !v.Known {
			if !r.o.AllowUnknown {
				return &failure{kind: ErrRequiresGone, msg: fmt.Sprintf("refusing to release %s to %s: baton has never seen %s in the pool, so it cannot say it is gone (a typo, or the wrong pool or baton?); --allow-unknown lets it count as gone",
					r.o.To, r.pool, version)}
			}
			if v == nil {
				continue
			}
			v.Known = true // the operator vouches for it
		}
		if held := v.HeldBy(false, time.Local); len(held) > 0 {
			return &failure{kind: ErrRequiresGone, msg: fmt.Sprintf("refusing to release %s to %s: %s is still present (%s), and %s must not run beside it. Finish the release that replaces %s first; baton ctl wait-gone %s %s returns once it is gone",
				r.o.To, r.pool, version, strings.Join(held, "; "), r.o.To, version, r.pool, version)}
		}
	}
	return nil
}

// begin records the release in baton, or reads back the record of the
// same release begun before: the version it replaces (which the pool no
// longer shows once To is stable) and the gates that ran.
func (r *Release) begin(ctx context.Context, p v1.Pool) error {
	from := p.StableVersion
	if from == r.o.To {
		// Promoted already: the record of a run before says what it
		// replaced; failing that, the servers not yet upgraded do.
		var rec v1.Rollout
		err := r.call(ctx, "GET", r.poolPath()+"/rollout", nil, nil, &rec)
		switch {
		case err == nil && rec.To == r.o.To:
			from = rec.From
		case err != nil && client.CodeOf(err) != "no_rollout":
			return err
		default:
			for _, b := range p.Backends {
				if b.Version != r.o.To {
					from = b.Version
					break
				}
			}
		}
		if from == r.o.To {
			return failf("every server of %s runs %s already and baton has no record of the version it replaced, so the gates cannot be given {from}; run them by hand", r.pool, r.o.To)
		}
	}
	var rec v1.Rollout
	body := v1.BeginRollout{Holder: r.o.Holder, From: from, To: r.o.To, AfterGone: r.o.AfterGone != "", Replace: r.o.ReplaceUnfinished}
	if err := r.call(ctx, "PUT", r.poolPath()+"/rollout", nil, body, &rec); err != nil {
		return err
	}
	r.rec = &rec
	return nil
}

// untouched reports whether every server of p runs from and is active.
func untouched(p v1.Pool, from string) bool {
	for _, b := range p.Backends {
		if b.Version != from || b.State != "active" {
			return false
		}
	}
	return true
}

// expandGate fills a gate's template: {pool}, {from} and {to},
// shell-quoted (see expand).
func (r *Release) expandGate(tmpl string) string {
	return strings.NewReplacer("{pool}", shellQuote(r.pool), "{from}", shellQuote(r.rec.From), "{to}", shellQuote(r.o.To)).Replace(tmpl)
}

// gate runs a migration gate once: not when baton records it done, and
// recorded running, then done or failed, around the command. A failure
// stops the release where it is, to be run again once fixed.
func (r *Release) gate(ctx context.Context, gate, tmpl string) error {
	line := r.expandGate(tmpl)
	flag := gateFlag(gate)
	if g := r.rec.Gate(gate); g != nil && g.State == "done" {
		r.say("gate", "", r.o.To, "the %s gate ran at %s already (%s); it is not run again", flag, g.At.Local().Format(time.DateTime), g.Command)
		return nil
	}
	path := r.poolPath() + "/rollout/gates/" + url.PathEscape(gate)
	record := func(ctx context.Context, state, detail string) error {
		var rec v1.Rollout
		err := r.call(ctx, "POST", path, nil, v1.RecordGate{Holder: r.o.Holder, To: r.o.To, State: state, Command: line, Detail: detail, ThisInstanceOnly: r.o.ThisInstanceOnly}, &rec)
		if err == nil {
			r.rec = &rec
		}
		return err
	}
	if err := record(ctx, "running", ""); err != nil {
		if client.CodeOf(err) == v1.CodeGateDone {
			r.say("gate", "", r.o.To, "the %s gate ran already: %s", flag, r.o.Describe(err))
			return nil
		}
		return err
	}
	r.say("gate", "", r.o.To, "running the %s gate: %s", flag, line)
	out, err := r.o.Run(ctx, Command{Line: line, Version: r.o.To})
	if out != "" && err == nil {
		r.say("gate_output", "", r.o.To, "%s", out)
	}
	if err != nil {
		if ctx.Err() != nil {
			// Interrupted: its state stays "running", and the next run
			// runs it again (gates must be safe to run twice).
			return ctx.Err()
		}
		detail := err.Error()
		if out != "" {
			detail += ": " + out
		}
		_ = record(context.WithoutCancel(ctx), "failed", detail)
		where := "this run drained no server"
		if p, err := r.getPool(context.WithoutCancel(ctx)); err == nil && untouched(p, r.rec.From) {
			where = fmt.Sprintf("nothing was drained: every server still runs %s, in rotation", r.rec.From)
		}
		if gate == v1GateAfterGone {
			where = fmt.Sprintf("every server runs %s and %s is gone", r.o.To, r.rec.From)
		}
		return failf("the %s gate failed (%s); %s. Fix it, then run the same baton rollout command again: it runs the gate again (a gate that succeeded never runs twice)",
			flag, detail, where)
	}
	if err := record(ctx, "done", ""); err != nil {
		return err
	}
	r.say("gate", "", r.o.To, "the %s gate is done", flag)
	return nil
}

// waitGone waits until every version the release replaced — From, and
// the others present when it began (Also) — is gone from the pool — no
// server of it in rotation, nothing in flight on one, no affinity cookie
// that may still pin a client — up to GoneWait.
func (r *Release) waitGone(ctx context.Context) error {
	deadline := time.Now().Add(r.o.GoneWait)
	last, lastAt := "", time.Time{}
	waited := append([]string{r.rec.From}, r.rec.Also...)
	for {
		pv, err := r.getVersions(ctx, waited...)
		if err != nil {
			return err
		}
		from := ""
		var held []string
		for _, version := range waited {
			if v := pv.Find(version); v != nil {
				// The rollout record names it, so baton knows it; a
				// baton that never saw it holds it (its HeldBy says so)
				// until GoneWait rather than call it gone.
				if held = v.HeldBy(false, time.Local); len(held) > 0 {
					from = version
					break
				}
			}
		}
		if len(held) == 0 {
			for _, from := range waited {
				r.say("gone", "", from, "%s is gone from %s: no server in rotation runs it, nothing is in flight on one, no affinity cookie of it can still be valid", from, r.pool)
			}
			return nil
		}
		line := strings.Join(held, "; ")
		// A line when what holds it changes (not each time a bucket of
		// cookies expires), and every 30 s while it does not.
		key := from + ": " + strings.Join(held[:len(held)-1], "; ")
		if v := pv.Find(from); v.AffinityCookies == 0 {
			key = from + ": " + line
		}
		if time.Now().After(deadline) {
			return &failure{kind: ErrNotGone, msg: fmt.Sprintf("%s is still present in %s after %s (%s); every server runs %s, and the --after-gone gate has not run. Run the same command again to keep waiting",
				from, r.pool, r.o.GoneWait, line, r.o.To)}
		}
		if key != last || time.Since(lastAt) >= 30*time.Second {
			r.say("waiting", "", from, "waiting for %s to be gone before the --after-gone gate: %s", from, line)
			last, lastAt = key, time.Now()
		}
		if err := sleep(ctx, r.o.Poll); err != nil {
			return err
		}
	}
}
