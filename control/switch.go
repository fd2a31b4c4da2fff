package control

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// Blue/green: for a release that cannot run beside the old version, the
// new version's servers stand by (added with Standby: drained, health
// checked), and a switch moves all new requests to them at once and
// drains the old ones. For a while after, absolute guards watch the new
// version and switch back at once if one fires.

// Switch defaults and bounds.
const (
	DefaultSwitchWatch        = time.Minute
	DefaultSwitchMaxErrorRate = 0.05
	switchMinRequests         = 20 // before the error guards judge
	maxSwitchWatch            = time.Hour
)

// SwitchSpec is a blue/green switch to ask for; zero fields take defaults.
type SwitchSpec struct {
	To           string
	Watch        time.Duration
	MaxErrorRate float64
}

// SwitchState is a switch whose guards are being watched. It is persisted,
// so a restart keeps watching (with evidence gathered anew).
type SwitchState struct {
	From         string
	To           string
	At           time.Time
	Until        time.Time
	MaxErrorRate float64
	Old          []string // the From backends the switch drained
	New          []string // the To backends it activated
	By           string
}

// SwitchOutcome is how the last switch ended: done (the guards held for
// the whole watch) or switched_back, with the guard that fired.
type SwitchOutcome struct {
	From    string
	To      string
	Outcome string
	Reason  string
	At      time.Time
}

// Switch moves pool's traffic to the standby backends of spec.To at once:
// they must all be healthy; the others are drained; To becomes the stable
// version (clients whose affinity names the old version move with it).
// Until the watch ends, guards switch back at once if To's servers all
// fail their health checks, give no answer to half their requests, or
// answer more than MaxErrorRate of them with errors.
func (r *Registry) Switch(poolName string, spec SwitchSpec, opts ...Opt) (*SwitchState, error) {
	if err := checkName("version", spec.To); err != nil {
		return nil, err
	}
	if spec.Watch == 0 {
		spec.Watch = DefaultSwitchWatch
	}
	if spec.MaxErrorRate == 0 {
		spec.MaxErrorRate = DefaultSwitchMaxErrorRate
	}
	if spec.Watch < time.Second || spec.Watch > maxSwitchWatch {
		return nil, fmt.Errorf("%w: watch must be 1s..%s, got %s", ErrInvalid, maxSwitchWatch, spec.Watch)
	}
	if spec.MaxErrorRate <= 0 || spec.MaxErrorRate > 1 {
		return nil, fmt.Errorf("%w: max_error_rate must be above 0 and at most 1, got %g", ErrInvalid, spec.MaxErrorRate)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _, err := r.lookupLocked(poolName, "")
	if err != nil {
		return nil, err
	}
	ps := r.state.Pools[poolName]
	if ps != nil && ps.Switch != nil {
		if ps.Switch.To == spec.To {
			sw := *ps.Switch
			return &sw, nil // the same switch again: it holds
		}
		return nil, conflictf(v1.CodeSwitchRunning, "pool %q switched to %s and watches it until %s; wait for that to end",
			poolName, ps.Switch.To, ps.Switch.Until.UTC().Format(time.RFC3339))
	}
	stable := p.StableVersion()
	if spec.To == stable {
		return nil, conflictf(v1.CodeAlreadyStable, "%s is already the stable version of pool %q", spec.To, poolName)
	}
	if cv, _ := p.Canary(); cv != "" {
		return nil, conflictf(v1.CodeCanaryRunning, "pool %q is running canary %s; promote or roll it back before a switch", poolName, cv)
	}
	var old, next, sick []string
	for _, b := range p.Backends() {
		switch {
		case b.Version() == spec.To:
			next = append(next, b.Name())
			if b.Health() != pool.Up || b.State() == pool.Ejected {
				why := b.Health().String()
				if b.State() == pool.Ejected {
					why = "ejected"
				}
				if e := b.LastError(); e != "" {
					why += ": " + e
				}
				sick = append(sick, b.Name()+" ("+why+")")
			}
		case b.State() == pool.Active:
			old = append(old, b.Name())
		}
	}
	if len(next) == 0 {
		return nil, conflictf(v1.CodeVersionNotRunning, "pool %q has no backend of version %s; add them on standby first: baton ctl add %s NAME --address HOST:PORT --version %s --standby",
			poolName, spec.To, poolName, spec.To)
	}
	if len(sick) > 0 {
		return nil, conflictf(v1.CodeNotHealthy, "not every %s backend is healthy: %s; nothing was switched", spec.To, strings.Join(sick, ", "))
	}
	now := time.Now().UTC()
	sw := &SwitchState{From: stable, To: spec.To, At: now, Until: now.Add(spec.Watch), MaxErrorRate: spec.MaxErrorRate,
		Old: old, New: next, By: actorOf(opts)}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "switch", Pool: poolName,
		Detail: fmt.Sprintf("%s → %s: %s in, %s drained; watching until %s", stable, spec.To, strings.Join(next, ", "),
			orNobody(old), sw.Until.Format(time.TimeOnly))},
		func(s *State) error {
			ps := s.pool(poolName)
			ps.StableVersion = spec.To
			ps.Canary = &CanaryState{}
			setPoolBase(ps, r.poolConfigLocked(poolName))
			for _, n := range next {
				ps.backend(n).State = pool.Active
			}
			for _, n := range old {
				ps.backend(n).State = pool.Draining
			}
			c := *sw
			ps.Switch = &c
			return nil
		}, next...)
	if err == nil {
		delete(r.switchBase, poolName)
	}
	if err != nil {
		return nil, err
	}
	return sw, nil
}

func orNobody(names []string) string {
	if len(names) == 0 {
		return "nothing"
	}
	return strings.Join(names, ", ")
}

// watchSwitch checks a switched pool's guards, and switches back when one
// fires or ends the watch when its time is up.
//
// In a cluster every instance publishes what the new version served it,
// and the leader's error guards watch the sum: a leader that serves little
// of the traffic still sees a failing version. While that sum cannot be
// had (etcd away, a live instance's figures missing) they wait. The
// health guard is each instance's own checks and runs on every instance,
// leader or not: it must not wait for a leader that acts (one that died
// keeps the lead until its lease runs out). Several instances switching
// back at once make one decision: each is compared on the revision, and
// endSwitch finds the switch ended already.
func (r *Registry) watchSwitch(ctx context.Context, p *pool.Pool, now time.Time) {
	name := p.Name()
	r.mu.Lock()
	ps := r.state.Pools[name]
	if ps == nil || ps.Switch == nil {
		r.mu.Unlock()
		if _, ok := r.switchPublished[name]; ok && r.forgetEvidence(ctx, switchSpace(name)) {
			delete(r.switchPublished, name) // the switch ended: so does its evidence
		}
		return
	}
	sw := *ps.Switch
	snap := snapshotVersions(p)[sw.To]
	base := r.switchBase[name]
	if base == nil || (snap != nil && base.Of != snap.Of) {
		if snap != nil {
			r.switchBase[name] = snap
		}
		base = snap
	}
	r.mu.Unlock()

	var d *canary.VersionSnapshot
	if snap != nil {
		d = snap.Since(base)
	} else {
		d = &canary.VersionSnapshot{}
	}
	healthy := 0
	for _, b := range p.Backends() {
		if b.Version() == sw.To && b.State() == pool.Active && b.Health() != pool.Down {
			healthy++
		}
	}
	// incomplete: in a cluster, why the whole cluster's figures could not
	// be had; only the health guard (this instance's own checks) and the
	// end of the watch go on without them.
	incomplete := ""
	if r.shared != nil {
		run := fmt.Sprintf("switch:%s@%d", sw.To, sw.At.UnixNano())
		local := &canary.Contribution{Run: run, At: now.UTC(),
			Canary: canary.SideEvidence{Version: sw.To, Requests: d.Requests, Errors: d.Errors, Gateway: d.NoAnswer}}
		if now.Sub(r.switchPublished[name]) >= evidenceEvery {
			r.switchPublished[name] = now
			r.publishEvidence(switchSpace(name), local)
		}
		if !r.judgeLeads() {
			if healthy == 0 && !r.frozen.Load() {
				r.switchBack(name, sw, fmt.Sprintf("no %s backend passes its health check", sw.To))
			}
			return // the leader watches the rest
		}
		pv, err := r.poolEvidence(ctx, switchSpace(name), run, 0, local)
		if err != nil {
			incomplete = err.Error()
			if r.switchWaits[name] != incomplete {
				r.switchWaits[name] = incomplete
				r.log.Warn().Str("pool", name).Str("to", sw.To).Err(err).Msg("the switch's error guards wait for the whole cluster's figures")
			}
		} else {
			delete(r.switchWaits, name)
			c := pv.Evidence.Canary
			d = &canary.VersionSnapshot{Requests: c.Requests, Errors: c.Errors, NoAnswer: c.Gateway}
		}
	}
	reason := ""
	switch {
	case healthy == 0:
		reason = fmt.Sprintf("no %s backend passes its health check", sw.To)
	case incomplete != "":
		// The error guards need every instance's figures.
	case d.Requests >= switchMinRequests && 2*d.NoAnswer >= d.Requests:
		reason = fmt.Sprintf("%s gave no answer to %d of its %d requests (refused, reset or timed out)", sw.To, d.NoAnswer, d.Requests)
	case d.Requests >= switchMinRequests && float64(d.Errors) >= sw.MaxErrorRate*float64(d.Requests):
		reason = fmt.Sprintf("%s answered %d of its %d requests with errors (%.1f%%, guard %.1f%%)", sw.To, d.Errors, d.Requests,
			100*float64(d.Errors)/float64(d.Requests), 100*sw.MaxErrorRate)
	}
	switch {
	case reason != "":
		r.switchBack(name, sw, reason)
	case now.After(sw.Until):
		reason := fmt.Sprintf("the guards held for %s: %d requests, %d errors", sw.Until.Sub(sw.At).Round(time.Second), d.Requests, d.Errors)
		if incomplete != "" {
			reason = fmt.Sprintf("the watch of %s ended without the whole cluster's figures (%s); on this instance's: %d requests, %d errors",
				sw.Until.Sub(sw.At).Round(time.Second), incomplete, d.Requests, d.Errors)
		}
		if err := r.endSwitch(name, sw, "done", reason, By("judge")); err != nil {
			r.log.Error().Err(err).Str("pool", name).Msg("could not end the switch's watch")
		}
	}
}

// switchBack ends sw by switching back, for reason. Another instance
// that did first is no failure.
func (r *Registry) switchBack(name string, sw SwitchState, reason string) {
	r.log.Warn().Str("pool", name).Str("from", sw.From).Str("to", sw.To).Str("reason", reason).Msg("switching back")
	err := r.endSwitch(name, sw, "switched_back", reason, By("judge"))
	var c *Conflict
	switch {
	case errors.As(err, &c) && c.Code == v1.CodeStateChanged:
		r.log.Info().Str("pool", name).Msg("another instance changed the pool first; the switch is looked at again on its state")
	case err != nil:
		r.log.Error().Err(err).Str("pool", name).Msg("could not switch back")
	}
}

// endSwitch ends the watch of sw: done keeps the switch; switched_back
// puts the old backends back and drains the new ones.
func (r *Registry) endSwitch(poolName string, sw SwitchState, outcome, reason string, opts ...Opt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _, err := r.lookupLocked(poolName, "")
	if err != nil {
		return err
	}
	ps := r.state.Pools[poolName]
	if ps == nil || ps.Switch == nil || ps.Switch.To != sw.To || !ps.Switch.At.Equal(sw.At) {
		return nil // ended already
	}
	delete(r.switchBase, poolName)
	out := &SwitchOutcome{From: sw.From, To: sw.To, Outcome: outcome, Reason: reason, At: time.Now().UTC()}
	if outcome == "done" {
		return r.changeLocked(nil, Event{Actor: actorOf(opts), Action: "switch_done", Pool: poolName, Detail: sw.To + " stays: " + reason},
			func(s *State) error {
				ps := s.pool(poolName)
				ps.Switch, ps.LastSwitch = nil, out
				return nil
			})
	}
	back := sw.Old
	healthyBack := 0
	for _, n := range back {
		if b := p.Backend(n); b != nil && b.Health() == pool.Up {
			healthyBack++
		}
	}
	if healthyBack == 0 {
		// Switching back would leave nothing in service: the switch stays,
		// and the log says why.
		r.log.Error().Str("pool", poolName).Str("to", sw.To).Str("guard", reason).
			Msg("a guard fired but no old backend is healthy to switch back to; the switch stays")
		out.Outcome, out.Reason = "kept", reason+"; no "+sw.From+" backend was healthy to switch back to"
		return r.changeLocked(nil, Event{Actor: actorOf(opts), Action: "switch_kept", Pool: poolName, Detail: out.Reason},
			func(s *State) error {
				ps := s.pool(poolName)
				ps.Switch, ps.LastSwitch = nil, out
				return nil
			})
	}
	var drain []string
	for _, b := range p.Backends() {
		if b.Version() == sw.To && b.State() == pool.Active {
			drain = append(drain, b.Name())
		}
	}
	sort.Strings(drain)
	return r.changeLocked(p, Event{Actor: actorOf(opts), Action: "switch_back", Pool: poolName,
		Detail: fmt.Sprintf("%s → %s: %s", sw.To, sw.From, reason)},
		func(s *State) error {
			ps := s.pool(poolName)
			ps.StableVersion = sw.From
			ps.Canary = &CanaryState{}
			setPoolBase(ps, r.poolConfigLocked(poolName))
			for _, n := range back {
				if p.Backend(n) != nil {
					ps.backend(n).State = pool.Active
				}
			}
			for _, n := range drain {
				ps.backend(n).State = pool.Draining
			}
			ps.Switch, ps.LastSwitch = nil, out
			return nil
		}, back...)
}

// SwitchStatus returns pool's running switch (nil when none) and how the
// last one ended (nil before the first).
func (r *Registry) SwitchStatus(poolName string) (*SwitchState, *SwitchOutcome) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := r.state.Pools[poolName]
	if ps == nil {
		return nil, nil
	}
	var sw *SwitchState
	var last *SwitchOutcome
	if ps.Switch != nil {
		c := *ps.Switch
		sw = &c
	}
	if ps.LastSwitch != nil {
		c := *ps.LastSwitch
		last = &c
	}
	return sw, last
}
