package control

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/pool"
)

// retired reports whether ps retired version, and when.
func (ps *PoolState) retired(version string) (time.Time, bool) {
	if ps == nil {
		return time.Time{}, false
	}
	at, ok := ps.Retired[version]
	return at, ok
}

// RolloutRecord is what baton keeps of a pool's release by baton rollout
// beyond what the pool itself shows: which version it replaces (once the
// new one is stable, the pool no longer says) and the migration gates it
// ran. A rollout reads it back to resume, so a gate that ran is never run
// again, across reruns of the rollout and restarts of baton alike. It is
// a record, not a decision: it changes no traffic.
type RolloutRecord struct {
	From, To string
	// Also are the other versions present in the pool when it began —
	// in a mixed pool, servers an earlier release left on its old
	// version. The after_gone gate waits until they are gone as well as
	// From: what it drops, they may need too.
	Also []string
	// AfterGone: the rollout has an after_gone gate; until that is done
	// another rollout does not silently replace the record.
	AfterGone bool
	By        string // the lease holder that began it
	Started   time.Time
	Gates     []GateRun // in the order they were first recorded
}

// GateRun is one migration gate of a rollout.
type GateRun struct {
	Gate    string // GateBefore or GateAfterGone
	Command string
	State   string // GateRunning, GateDone or GateFailed
	At      time.Time
	Detail  string // why it failed
}

// Gates and their states.
const (
	GateBefore    = "before"
	GateAfterGone = "after_gone"

	GateRunning = "running"
	GateDone    = "done"
	GateFailed  = "failed"
)

// Bounds of what a rollout record keeps.
const (
	maxGateCommand = 2000
	maxGateDetail  = 1000
)

// Gate returns the gate's run, or nil.
func (rr *RolloutRecord) Gate(gate string) *GateRun {
	for i := range rr.Gates {
		if rr.Gates[i].Gate == gate {
			return &rr.Gates[i]
		}
	}
	return nil
}

func (rr *RolloutRecord) clone() *RolloutRecord {
	if rr == nil {
		return nil
	}
	c := *rr
	c.Also = slices.Clone(rr.Also)
	c.Gates = append([]GateRun(nil), rr.Gates...)
	return &c
}

// Rollout returns the pool's rollout record, or nil.
func (r *Registry) Rollout(poolName string) *RolloutRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ps := r.state.Pools[poolName]; ps != nil {
		return ps.Rollout.clone()
	}
	return nil
}

// holdsLeaseLocked refuses a rollout's record change from anyone but the
// holder of the pool's running lease: two releases never write one record.
func (r *Registry) holdsLeaseLocked(poolName, holder string) error {
	cur := r.leaseLocked(poolName, time.Now())
	switch {
	case cur == nil:
		return conflictf(v1.CodeLeaseNotHeld, "pool %q has no release lease; take it first (PUT /v1/pools/%s/lease)", poolName, poolName)
	case cur.Holder != holder:
		return conflictf(v1.CodeLeaseNotHeld, "pool %q's lease is held by %s, not %s", poolName, cur.Holder, holder)
	}
	return nil
}

// Waited returns every version the after_gone gate waits for: From, then
// Also.
func (rr *RolloutRecord) Waited() []string { return append([]string{rr.From}, rr.Also...) }

// unfinished reports whether the rollout has an after_gone gate not done.
func (rr *RolloutRecord) unfinished() bool {
	if rr == nil || !rr.AfterGone {
		return false
	}
	g := rr.Gate(GateAfterGone)
	return g == nil || g.State != GateDone
}

// BeginRollout records that holder, who holds the pool's lease, releases
// to into the pool, replacing from and every other version present now
// (Also). A record of a rollout to the same version is kept as it is and
// returned — the rollout resumes, with the versions it replaced and the
// gates it ran. Any other is replaced, except one whose after_gone gate
// has not run: its versions would never be waited for, and its gate never
// run, so that is refused (rollout_unfinished) unless ReplaceUnfinished.
// WithAfterGone says this rollout has an after_gone gate.
func (r *Registry) BeginRollout(poolName, holder, from, to string, opts ...Opt) (RolloutRecord, error) {
	if err := checkName("from", from); err != nil {
		return RolloutRecord{}, err
	}
	if err := checkName("to", to); err != nil {
		return RolloutRecord{}, err
	}
	if from == to {
		return RolloutRecord{}, fmt.Errorf("%w: from and to are both %s", ErrInvalid, to)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, err := r.lookupLocked(poolName, ""); err != nil {
		return RolloutRecord{}, err
	}
	if err := r.holdsLeaseLocked(poolName, holder); err != nil {
		return RolloutRecord{}, err
	}
	info := infoOf(opts)
	if ps := r.state.Pools[poolName]; ps != nil && ps.Rollout != nil {
		old := ps.Rollout
		if old.To == to {
			return *old.clone(), nil
		}
		if old.unfinished() && !info.replace {
			return RolloutRecord{}, conflictf(v1.CodeRolloutUnfinished, "pool %q has a rollout to %s (begun %s by %s) whose --after-gone gate has not run; finish it first (run the same baton rollout command again), or replace it and run that gate by hand (--replace-unfinished, replace: true)",
				poolName, old.To, old.Started.Format(time.RFC3339), old.By)
		}
	}
	// Every version present now besides to: what the after_gone gate
	// drops, the servers a release left behind may still need.
	pv, err := r.versionsLocked(poolName, true)
	if err != nil {
		return RolloutRecord{}, err
	}
	var also []string
	for _, v := range pv.Versions {
		if v.Version != from && v.Version != to && !v.Gone(false) {
			also = append(also, v.Version)
		}
	}
	rec := RolloutRecord{From: from, Also: also, To: to, AfterGone: info.afterGone, By: holder, Started: time.Now().UTC()}
	detail := fmt.Sprintf("%s → %s by %s", from, to, holder)
	if len(also) > 0 {
		detail = fmt.Sprintf("%s (and %s) → %s by %s", from, strings.Join(also, ", "), to, holder)
	}
	_, unretire := r.state.Pools[poolName].retired(to)
	if unretire {
		detail += "; " + to + " is no longer retired"
	}
	p := r.pools[poolName]
	if !unretire {
		p = nil // nothing about the pool changes
	}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "rollout", Pool: poolName, Detail: detail},
		func(s *State) error {
			ps := s.pool(poolName)
			ps.Rollout = rec.clone()
			// Releasing a retired version again is the operator saying
			// it may run: its tombstone goes.
			delete(ps.Retired, to)
			return nil
		})
	return rec, err
}

// GateSpec is one step of a gate's run, as a rollout reports it.
type GateSpec struct {
	Holder  string // must hold the pool's lease
	To      string // the rollout it belongs to
	Gate    string // GateBefore or GateAfterGone
	State   string // GateRunning, GateDone or GateFailed
	Command string
	Detail  string
	// ThisInstanceOnly: in a cluster, the after_gone gate's check judges
	// by this baton's figures alone (the caller checked every other one);
	// otherwise a cluster never finds a version gone here.
	ThisInstanceOnly bool
}

// RecordGate records a step of a migration gate of the pool's rollout to
// spec.To. A gate that is done is never started again: recording it
// running is refused (409 gate_done), which is how a resumed rollout — or
// a second one racing it — is kept from running it twice.
func (r *Registry) RecordGate(poolName string, spec GateSpec, opts ...Opt) (RolloutRecord, error) {
	switch spec.Gate {
	case GateBefore, GateAfterGone:
	default:
		return RolloutRecord{}, fmt.Errorf("%w: gate must be %s or %s, got %q", ErrInvalid, GateBefore, GateAfterGone, spec.Gate)
	}
	switch spec.State {
	case GateRunning, GateDone, GateFailed:
	default:
		return RolloutRecord{}, fmt.Errorf("%w: state must be %s, %s or %s, got %q", ErrInvalid, GateRunning, GateDone, GateFailed, spec.State)
	}
	if spec.Command == "" || len(spec.Command) > maxGateCommand {
		return RolloutRecord{}, fmt.Errorf("%w: command must be 1..%d characters, got %d", ErrInvalid, maxGateCommand, len(spec.Command))
	}
	if len(spec.Detail) > maxGateDetail {
		spec.Detail = spec.Detail[len(spec.Detail)-maxGateDetail:] // the end says why it failed
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, err := r.lookupLocked(poolName, ""); err != nil {
		return RolloutRecord{}, err
	}
	if err := r.holdsLeaseLocked(poolName, spec.Holder); err != nil {
		return RolloutRecord{}, err
	}
	ps := r.state.Pools[poolName]
	if ps == nil || ps.Rollout == nil || ps.Rollout.To != spec.To {
		return RolloutRecord{}, conflictf(v1.CodeNoRollout, "pool %q has no rollout to %s recorded; begin it first (PUT /v1/pools/%s/rollout)", poolName, spec.To, poolName)
	}
	if g := ps.Rollout.Gate(spec.Gate); g != nil && g.State == GateDone {
		if spec.State == GateDone && g.Command == spec.Command {
			return *ps.Rollout.clone(), nil // the same report again: it holds
		}
		return RolloutRecord{}, conflictf(v1.CodeGateDone, "the %s gate of the rollout of %s to pool %q ran at %s already (%s); it is not run twice",
			spec.Gate, spec.To, poolName, g.At.UTC().Format(time.RFC3339), g.Command)
	}
	waited := ps.Rollout.Waited()
	retire := spec.Gate == GateAfterGone && spec.State == GateRunning
	if retire {
		// Check and act in one step: every version it replaced must be
		// gone now, under the lock that every change of the pool takes,
		// and the same change retires them, so nothing brings one back
		// while the gate drops what they needed.
		pv, err := r.versionsLocked(poolName, spec.ThisInstanceOnly, waited...)
		if err != nil {
			return RolloutRecord{}, err
		}
		for _, v := range pv.Versions {
			if slices.Contains(waited, v.Version) && !v.Gone(false) {
				return RolloutRecord{}, conflictf(v1.CodeVersionPresent, "the %s gate of the rollout of %s to pool %q cannot start: %s is not gone (%s)",
					spec.Gate, spec.To, poolName, v.Version, v.holds())
			}
		}
	}
	run := GateRun{Gate: spec.Gate, Command: spec.Command, State: spec.State, At: time.Now().UTC(), Detail: spec.Detail}
	var rec RolloutRecord
	detail := spec.Gate + " " + spec.State + ": " + spec.Command
	if spec.Detail != "" {
		detail += " (" + spec.Detail + ")"
	}
	if retire {
		detail += "; " + strings.Join(waited, ", ") + " retired"
	}
	var p *pool.Pool
	if retire {
		p = r.pools[poolName] // its backends of from, if any, stay out
	}
	err := r.changeLocked(p, Event{Actor: actorOf(opts), Action: "gate", Pool: poolName, Detail: detail},
		func(s *State) error {
			rr := s.pool(poolName).Rollout
			if retire {
				ps := s.pool(poolName)
				if ps.Retired == nil {
					ps.Retired = map[string]time.Time{}
				}
				for _, v := range waited {
					if _, ok := ps.Retired[v]; !ok {
						ps.Retired[v] = run.At
					}
				}
			}
			if g := rr.Gate(spec.Gate); g != nil {
				*g = run
			} else {
				rr.Gates = append(rr.Gates, run)
			}
			rec = *rr.clone()
			return nil
		})
	return rec, err
}
