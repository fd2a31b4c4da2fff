package control

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

// Conflict is ErrConflict with a reason code that scripts branch on
// (the API's "code"): lease_held, no_canary, canary_running, …
type Conflict struct {
	Code string
	msg  string
}

func (e *Conflict) Error() string { return ErrConflict.Error() + ": " + e.msg }

// Is makes a Conflict an ErrConflict for errors.Is.
func (e *Conflict) Is(target error) bool { return target == ErrConflict }

// conflictf returns a Conflict with the code and a message saying what to do.
func conflictf(code, format string, args ...any) error {
	return &Conflict{Code: code, msg: fmt.Sprintf(format, args...)}
}

// Errors that callers branch on; the messages around them say what to do.
var (
	// ErrInvalid: a bad value in a request (400).
	ErrInvalid = errors.New("invalid request")
	// ErrConflict: the action is not allowed in the current state (409).
	ErrConflict = errors.New("not allowed now")
	// ErrPersist: the decision could not be written to the state file, so it
	// was not applied (500).
	ErrPersist = errors.New("the decision could not be saved")
	// ErrUpgrading: baton is handing over to a new process, which has read
	// the state file; decisions wait for it (503).
	ErrUpgrading = errors.New("baton is handing over to a new process; retry in a moment")
)

// Opt qualifies an action.
type Opt func(*actionInfo)

type actionInfo struct {
	actor string
	// afterGone, replace: a rollout begun with an after_gone gate, and
	// allowed to replace an unfinished one (see BeginRollout).
	afterGone, replace bool
	// judged: the judge acts on a verdict on this canary, at this share.
	judged *CanaryState
}

// By names who asked for an action (an API token's name), for the audit log.
func By(actor string) Opt { return func(a *actionInfo) { a.actor = actor } }

// asJudged makes a judge's action conditional on the pool being as it
// judged it: the canary cv at weight, not held. A decision made between
// the verdict and the action (through any instance) wins.
func asJudged(cv string, weight float64) Opt {
	return func(a *actionInfo) { a.judged = &CanaryState{Version: cv, Weight: weight} }
}

// WithAfterGone says the rollout being begun has an after_gone gate.
func WithAfterGone() Opt { return func(a *actionInfo) { a.afterGone = true } }

// ReplaceUnfinished lets a rollout being begun replace the record of one
// whose after_gone gate has not run.
func ReplaceUnfinished() Opt { return func(a *actionInfo) { a.replace = true } }

func infoOf(opts []Opt) actionInfo {
	a := actionInfo{actor: "system"}
	for _, o := range opts {
		o(&a)
	}
	return a
}

func actorOf(opts []Opt) string { return infoOf(opts).actor }

// stillAsJudgedLocked refuses (v1.CodeVerdictOvertaken) a judge's action
// on pool p once a decision overtook its verdict: the pool is held now, or
// its canary is not the one, or not at the share, the verdict was on.
// Other actions pass.
func (r *Registry) stillAsJudgedLocked(p *pool.Pool, opts []Opt) error {
	j := infoOf(opts).judged
	if j == nil {
		return nil
	}
	if ps := r.state.Pools[p.Name()]; ps != nil && ps.Held {
		return conflictf(v1.CodeVerdictOvertaken, "pool %q was held after the verdict; the judge does nothing", p.Name())
	}
	if cv, w := p.Canary(); cv != j.Version || w != j.Weight {
		return conflictf(v1.CodeVerdictOvertaken, "the canary of pool %q is %q at %g%% now, the verdict was on %q at %g%%; the judge does nothing",
			p.Name(), cv, w, j.Version, j.Weight)
	}
	return nil
}

// changeLocked is how every decision is made: edit computes the next
// overlay (the desired state) from a copy of the current one, it is
// persisted, and only then made current and applied to pool p (nil: the
// decision changes no pool, a lease or a hold), and the event recorded.
// Nothing changes when edit refuses or persisting fails. proven names
// backends brought back into rotation that keep the health their checks
// found (see pool.Desired).
func (r *Registry) changeLocked(p *pool.Pool, ev Event, edit func(*State) error, proven ...string) error {
	if err := r.persistLocked(edit); err != nil {
		return err
	}
	if p != nil {
		r.applyPoolLocked(p, proven...)
	}
	r.recordLocked(ev)
	// A canary started or ended: the cookies' counts as they were then
	// are what a crash soon after must not lose.
	r.kickCookies()
	return nil
}

// persistLocked prepares a new overlay with edit, writes it to the state
// file and makes it current; nothing changes when edit refuses, baton is
// handing over to a new process, or writing fails.
func (r *Registry) persistLocked(edit func(*State) error) error {
	if r.frozen.Load() {
		return ErrUpgrading
	}
	next := r.state.clone()
	if err := edit(next); err != nil {
		return err
	}
	next.compact()
	if r.shared != nil {
		// Acknowledged once etcd has it; the state file is the local copy
		// of what etcd has.
		committed, err := r.commitSharedLocked(next)
		if err != nil {
			return err
		}
		if err := saveStateAt(r.stateFile, committed, r.shared.rev); err != nil {
			r.log.Error().Err(err).Msg("could not keep the decision in the state file; etcd has it, and it applies")
		}
	} else if err := saveState(r.stateFile, next); err != nil {
		return fmt.Errorf("%w; nothing changed: %v", ErrPersist, err)
	}
	r.state = next
	return nil
}

// applyPoolLocked brings pool p to its desired state: the file's spec with
// the overlay on top. It is the one path from a decision, a reload or a
// restart to the pool.
func (r *Registry) applyPoolLocked(p *pool.Pool, proven ...string) {
	d := desired(r.poolConfigLocked(p.Name()), r.state.Pools[p.Name()])
	if len(proven) > 0 {
		d.Proven = make(map[string]bool, len(proven))
		for _, n := range proven {
			d.Proven[n] = true
		}
	}
	p.Apply(d)
	r.noteKnownLocked(p, time.Now())
	r.syncBaselineLocked(p)
}

func (r *Registry) lookupLocked(poolName, name string) (*pool.Pool, *pool.Backend, error) {
	p := r.pools[poolName]
	if p == nil {
		return nil, nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	if name == "" {
		return p, nil, nil
	}
	b := p.Backend(name)
	if b == nil {
		return p, nil, fmt.Errorf("%w %q in pool %q", pool.ErrUnknownBackend, name, poolName)
	}
	return p, b, nil
}

// versionPolicyLocked decides what a backend of pool p running version means
// for the pool's release: the stable version or the running canary's is
// fine; a new version starts a canary at the pool's initial share; a second
// new version while a canary runs is refused.
//
// A version a rollout retired (its after_gone gate ran) is refused
// outright: its database columns may be gone.
func (r *Registry) versionPolicyLocked(p *pool.Pool, s *State, version string) error {
	ps := s.pool(p.Name())
	if at, retired := ps.Retired[version]; retired {
		return conflictf(v1.CodeVersionRetired, "version %s of pool %q was retired at %s by a rollout's --after-gone gate (what it needs may be dropped); a rollout to %s clears that (baton rollout %s --to %s)",
			version, p.Name(), at.UTC().Format(time.RFC3339), version, p.Name(), version)
	}
	stable := p.StableVersion()
	if ps.StableVersion != "" {
		stable = ps.StableVersion
	}
	canaryV, _ := p.Canary()
	if ps.Canary != nil {
		canaryV = ps.Canary.Version
	}
	switch {
	case version == stable, version == canaryV:
		return nil
	case r.inServiceLocked(p, version, canaryV):
		// The previous version during a rolling upgrade: servers not yet
		// upgraded still serve it beside the new stable version.
		return nil
	case canaryV != "":
		return conflictf(v1.CodeCanaryRunning, "pool %q is running canary %s; promote or roll it back before starting %s",
			p.Name(), canaryV, version)
	}
	ps.Canary = &CanaryState{Version: version, Weight: p.Settings().Canary.InitialWeight}
	setPoolBase(ps, r.poolConfigLocked(p.Name()))
	return nil
}

// inServiceLocked reports whether an active backend of p runs version as
// part of the stable traffic (not the canary).
func (r *Registry) inServiceLocked(p *pool.Pool, version, canaryV string) bool {
	if version == canaryV {
		return false
	}
	for _, b := range p.Backends() {
		if b.Version() == version && b.State() == pool.Active {
			return true
		}
	}
	return false
}

// overrideLocked returns the overlay entry of a backend, with the file's
// values recorded beside it when the file lists the backend.
func (r *Registry) overrideLocked(s *State, poolName, name string) *BackendState {
	bs := s.pool(poolName).backend(name)
	if fb, ok := fileBackend(r.poolConfigLocked(poolName), name); ok && !bs.Added {
		setBase(bs, fb)
	}
	return bs
}

// checkFields validates what a change to a backend gives; nil is not
// given.
func checkFields(version *string, weight *int, address *string) error {
	if version != nil {
		if err := checkName("version", *version); err != nil {
			return err
		}
	}
	if weight != nil {
		if err := checkWeight(*weight); err != nil {
			return err
		}
	}
	if address != nil {
		return checkAddress(*address)
	}
	return nil
}

// given is v when it is set, nil when empty (not given).
func given(v string) *string {
	if v == "" {
		return nil
	}
	return &v
}

func checkName(what, v string) error {
	if !config.ValidName(v) {
		return fmt.Errorf("%w: %s must be 1-63 letters, digits, '.', '_' or '-', got %q", ErrInvalid, what, v)
	}
	return nil
}

func checkWeight(w int) error {
	if w < 0 || w > config.MaxWeight {
		return fmt.Errorf("%w: weight must be 0..%d, got %d", ErrInvalid, config.MaxWeight, w)
	}
	return nil
}

func checkAddress(a string) error {
	if problem := config.CheckBackendAddress(a); problem != "" {
		return fmt.Errorf("%w: address %s", ErrInvalid, problem)
	}
	return nil
}

// Drain stops new requests to a backend, persistently: it stays out across
// reloads and restarts until enabled. Use the backend's WaitDrained to wait
// until it is idle. Draining a draining or drained backend changes nothing.
func (r *Registry) Drain(poolName, name string, opts ...Opt) (*pool.Backend, error) {
	return r.takeOut(poolName, name, pool.Draining, "drain", opts)
}

// Eject takes a backend out of rotation at once, persistently; in-flight
// requests finish.
func (r *Registry) Eject(poolName, name string, opts ...Opt) (*pool.Backend, error) {
	return r.takeOut(poolName, name, pool.Ejected, "eject", opts)
}

// takeOut is Drain and Eject: the backend's admin state becomes to (a
// drained backend is drained already).
func (r *Registry) takeOut(poolName, name string, to pool.State, action string, opts []Opt) (*pool.Backend, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, b, err := r.lookupLocked(poolName, name)
	if err != nil {
		return nil, err
	}
	if s := b.State(); s == to || (to == pool.Draining && s == pool.Drained) {
		return b, nil
	}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: action, Pool: poolName, Backend: name},
		func(s *State) error {
			s.pool(poolName).backend(name).State = to
			return nil
		})
	return b, err
}

// EnableSpec is what an enable may change besides the admin state.
type EnableSpec struct {
	Version string // empty: keep
	Weight  *int   // nil: keep
}

// Enable puts a backend back into rotation, optionally as a new version and
// with a new weight. It gets requests once a health check passes. A version
// other than the stable one makes it the pool's canary at the initial share.
func (r *Registry) Enable(poolName, name string, spec EnableSpec, opts ...Opt) (*pool.Backend, error) {
	if err := checkFields(given(spec.Version), spec.Weight, nil); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p, b, err := r.lookupLocked(poolName, name)
	if err != nil {
		return nil, err
	}
	if b.State() == pool.Active && (spec.Version == "" || spec.Version == b.Version()) &&
		(spec.Weight == nil || *spec.Weight == b.Weight()) {
		return b, nil
	}
	detail := ""
	if spec.Version != "" {
		detail = "version " + spec.Version
	}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "enable", Pool: poolName, Backend: name, Detail: detail},
		func(s *State) error {
			bs := r.overrideLocked(s, poolName, name)
			bs.State = pool.Active
			if spec.Weight != nil {
				w := *spec.Weight
				bs.Weight = &w
			}
			// The version it comes back with, given or kept, follows the
			// pool's release rule: a version that is neither stable nor the
			// running canary (say, one rolled back earlier) starts a canary
			// rather than joining the stable traffic unverified.
			v := spec.Version
			if v == "" {
				v = b.Version()
			}
			if err := r.versionPolicyLocked(p, s, v); err != nil {
				return err
			}
			if v != b.Version() {
				bs.Version = v
			}
			return nil
		})
	return p.Backend(name), err
}

// SetWeight overrides a backend's weight (0–1000) at runtime; the override
// wins over the file across reloads and restarts.
func (r *Registry) SetWeight(poolName, name string, weight int, opts ...Opt) (*pool.Backend, error) {
	w := weight
	return r.Patch(poolName, name, PatchSpec{Weight: &w}, opts...)
}

// PatchSpec is a change to a backend's weight, version or address; nil
// fields stay.
type PatchSpec struct {
	Weight  *int
	Version *string
	Address *string
}

// Patch changes a backend's weight, version or address at runtime. A new
// address is a new server: it gets requests once a health check passes. A
// new version follows the same rule as Enable.
func (r *Registry) Patch(poolName, name string, spec PatchSpec, opts ...Opt) (*pool.Backend, error) {
	if err := checkFields(spec.Version, spec.Weight, spec.Address); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p, b, err := r.lookupLocked(poolName, name)
	if err != nil {
		return nil, err
	}
	if (spec.Weight == nil || *spec.Weight == b.Weight()) && (spec.Version == nil || *spec.Version == b.Version()) &&
		(spec.Address == nil || *spec.Address == b.Address()) {
		return b, nil
	}
	if spec.Address != nil {
		for _, o := range p.Backends() {
			if o != b && o.Address() == *spec.Address {
				return nil, conflictf(v1.CodeAddressInUse, "%s is already backend %q of pool %q", *spec.Address, o.Name(), poolName)
			}
		}
	}
	var parts []string
	if spec.Weight != nil {
		parts = append(parts, fmt.Sprintf("weight %d", *spec.Weight))
	}
	if spec.Version != nil {
		parts = append(parts, "version "+*spec.Version)
	}
	if spec.Address != nil {
		parts = append(parts, "address "+*spec.Address)
	}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "patch", Pool: poolName, Backend: name, Detail: strings.Join(parts, ", ")},
		func(s *State) error {
			bs := r.overrideLocked(s, poolName, name)
			if spec.Weight != nil {
				w := *spec.Weight
				bs.Weight = &w
			}
			if spec.Version != nil && *spec.Version != b.Version() {
				if err := r.versionPolicyLocked(p, s, *spec.Version); err != nil {
					return err
				}
				bs.Version = *spec.Version
			}
			if spec.Address != nil {
				bs.Address = *spec.Address
			}
			return nil
		})
	return p.Backend(name), err
}

// AddSpec describes a backend added at runtime.
type AddSpec struct {
	Name, Address, Version string
	Weight                 *int
	// Standby adds the backend drained: health checked, no traffic, and
	// no canary started for its version. A blue/green switch brings the
	// standby backends of a version in.
	Standby bool
}

// Add adds a backend to a pool at runtime, persistently. It gets requests
// once a health check passes. A new version follows the same rule as Enable.
func (r *Registry) Add(poolName string, spec AddSpec, opts ...Opt) (*pool.Backend, error) {
	if err := checkName("name", spec.Name); err != nil {
		return nil, err
	}
	if err := checkFields(given(spec.Version), spec.Weight, &spec.Address); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _, err := r.lookupLocked(poolName, "")
	if err != nil {
		return nil, err
	}
	if spec.Version == "" {
		spec.Version = p.StableVersion() // a new server of the version in service
	}
	if b := p.Backend(spec.Name); b != nil {
		if b.Address() == spec.Address && b.Version() == spec.Version && (spec.Weight == nil || *spec.Weight == b.Weight()) {
			return b, nil // the same add again: it holds already
		}
		return nil, conflictf(v1.CodeBackendExists, "pool %q already has a backend %q; change it with PATCH (baton ctl set)", poolName, spec.Name)
	}
	for _, b := range p.Backends() {
		if b.Address() == spec.Address {
			return nil, conflictf(v1.CodeAddressInUse, "%s is already backend %q of pool %q", spec.Address, b.Name(), poolName)
		}
	}
	inFile := false
	for _, b := range r.poolConfigLocked(poolName).Backends {
		inFile = inFile || b.Name == spec.Name
	}
	detail := spec.Address + " " + spec.Version
	if spec.Standby {
		detail += " on standby"
	}
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "add", Pool: poolName, Backend: spec.Name, Detail: detail},
		func(s *State) error {
			if !spec.Standby {
				if err := r.versionPolicyLocked(p, s, spec.Version); err != nil {
					return err
				}
			}
			bs := s.pool(poolName).backend(spec.Name)
			*bs = BackendState{Added: !inFile, Address: spec.Address, Version: spec.Version}
			if spec.Standby {
				bs.State = pool.Drained
			}
			if inFile {
				fb, _ := fileBackend(r.poolConfigLocked(poolName), spec.Name)
				setBase(bs, fb)
			}
			if spec.Weight != nil {
				w := *spec.Weight
				bs.Weight = &w
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return p.Backend(spec.Name), nil
}

// Remove takes a backend out of the pool, persistently (also one the file
// lists, until it is added again): it gets no new requests and goes once its
// in-flight requests finish. The returned backend can be waited on with
// WaitDrained.
func (r *Registry) Remove(poolName, name string, opts ...Opt) (*pool.Backend, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, b, err := r.lookupLocked(poolName, name)
	if err != nil {
		// Removed already and still finishing: the removal holds, and the
		// caller may wait for it again.
		if p != nil {
			if ps := r.state.Pools[poolName]; ps != nil && ps.Backends[name] != nil && ps.Backends[name].Removed {
				if lb := p.Leaving(name); lb != nil {
					return lb, nil
				}
			}
		}
		return nil, err
	}
	_, inFile := fileBackend(r.poolConfigLocked(poolName), name)
	err = r.changeLocked(p, Event{Actor: actorOf(opts), Action: "remove", Pool: poolName, Backend: name},
		func(s *State) error {
			bs := s.pool(poolName).backend(name)
			bs.Removed = true
			if inFile {
				bs.Added = false // the file lists it: the removal must outlive the entry
			}
			return nil
		})
	return b, err
}

// SetCanary starts a canary or shifts its share (percent) by hand.
func (r *Registry) SetCanary(poolName, version string, weight float64, opts ...Opt) error {
	if err := checkName("version", version); err != nil {
		return err
	}
	if !(weight >= 0 && weight <= 100) { // NaN included
		return fmt.Errorf("%w: canary weight must be 0..100 percent, got %g", ErrInvalid, weight)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _, err := r.lookupLocked(poolName, "")
	if err != nil {
		return err
	}
	if err := r.stillAsJudgedLocked(p, opts); err != nil {
		return err
	}
	if version == p.StableVersion() {
		return conflictf(v1.CodeAlreadyStable, "%s is the stable version of pool %q", version, poolName)
	}
	cur, curW := p.Canary()
	if cur != "" && cur != version {
		return conflictf(v1.CodeCanaryRunning, "pool %q is running canary %s; promote or roll it back before starting %s",
			poolName, cur, version)
	}
	if cur == version && curW == weight {
		return nil
	}
	runs := false
	for _, b := range p.Backends() {
		runs = runs || b.Version() == version
	}
	if !runs {
		return conflictf(v1.CodeVersionNotRunning, "no backend of pool %q runs %s; enable or add one with that version first", poolName, version)
	}
	return r.changeLocked(p, Event{Actor: actorOf(opts), Action: "canary", Pool: poolName, Detail: fmt.Sprintf("%s at %g%%", version, weight)},
		func(s *State) error {
			ps := s.pool(poolName)
			ps.Canary = &CanaryState{Version: version, Weight: weight}
			setPoolBase(ps, r.poolConfigLocked(poolName))
			return nil
		})
}

// Promote makes the canary the stable version. The previous version's
// backends keep serving until they are upgraded one by one.
func (r *Registry) Promote(poolName string, opts ...Opt) error {
	return r.promote(poolName, "", opts...)
}

// promote is Promote with the reason recorded in the audit log.
func (r *Registry) promote(poolName, reason string, opts ...Opt) error {
	return r.endCanary(poolName, "promoted", reason, opts...)
}

// Rollback stops the canary at once: it gets no new requests and its
// backends are drained. Without a canary it changes nothing.
func (r *Registry) Rollback(poolName string, opts ...Opt) error {
	return r.rollback(poolName, "", opts...)
}

// rollback is Rollback with the reason recorded in the audit log.
func (r *Registry) rollback(poolName, reason string, opts ...Opt) error {
	return r.endCanary(poolName, "rolled_back", reason, opts...)
}

// endCanary ends the pool's canary, promoted or rolled_back: one decision
// that records why it ended, clears the canary and a hold, and — promoted
// — makes it the stable version, or — rolled back — drains its backends.
// Promoting with no canary is refused; rolling back none changes nothing.
func (r *Registry) endCanary(poolName, outcome, reason string, opts ...Opt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, _, err := r.lookupLocked(poolName, "")
	if err != nil {
		return err
	}
	if err := r.stillAsJudgedLocked(p, opts); err != nil {
		return err
	}
	promote := outcome == "promoted"
	cur, _ := p.Canary()
	if cur == "" {
		if promote {
			return conflictf(v1.CodeNoCanary, "pool %q has no canary to promote; a canary starts when a backend is enabled with a new version", poolName)
		}
		return nil
	}
	ev := Event{Actor: actorOf(opts), Action: "promote", Pool: poolName, Detail: cur + " is stable"}
	var drained []string
	if !promote {
		for _, b := range p.Backends() {
			if b.Version() == cur {
				drained = append(drained, b.Name())
			}
		}
		ev.Action, ev.Detail = "rollback", cur+" rolled back; drained "+strings.Join(drained, ", ")
	}
	if reason != "" {
		ev.Detail += ": " + reason
	}
	ended := r.endedCanaryLocked(p, cur, outcome, actorOf(opts))
	edit := func(s *State) error {
		ps := s.pool(poolName)
		ps.LastCanary = ended
		if promote {
			ps.StableVersion = cur
		}
		ps.Canary = &CanaryState{} // no canary, whatever the file says
		ps.Held = false            // the release is over
		setPoolBase(ps, r.poolConfigLocked(poolName))
		for _, n := range drained {
			ps.backend(n).State = pool.Draining
		}
		return nil
	}
	return r.changeLocked(p, ev, edit)
}

// Hold freezes (true) or resumes (false) the judge's automatic steps for a
// pool.
func (r *Registry) Hold(poolName string, hold bool, opts ...Opt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, err := r.lookupLocked(poolName, ""); err != nil {
		return err
	}
	if ps := r.state.Pools[poolName]; (ps != nil && ps.Held) == hold {
		return nil
	}
	action := "resume"
	if hold {
		action = "hold"
	}
	return r.changeLocked(nil, Event{Actor: actorOf(opts), Action: action, Pool: poolName},
		func(s *State) error {
			s.pool(poolName).Held = hold
			return nil
		})
}

// Held reports whether the judge's automatic steps are frozen for a pool.
func (r *Registry) Held(poolName string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ps := r.state.Pools[poolName]
	return ps != nil && ps.Held
}
