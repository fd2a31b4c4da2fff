package control

import (
	"time"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// The state file's records. They are private and converted explicitly to
// and from the domain types (State, PreviousCanary, Lease, SwitchState,
// SwitchOutcome — which the admin API also shows), so that a field added to
// the API does not change the file, and the file's format is what
// stateFormat says. Adding an optional field to a record keeps format 1:
// an older baton reads the file and ignores what it does not know (with a
// warning). A change an older baton would misread takes a new format, which
// it refuses with a clear error.

type stateRecord struct {
	Format int                    `json:"format"`
	Pools  map[string]*poolRecord `json:"pools,omitempty"`
	// ClusterRevision, in a clustered baton's state file, is the revision
	// of the cluster's desired state the file is a copy of (0: none, or
	// reset). Not in etcd's value, whose revision is etcd's own.
	ClusterRevision int64 `json:"cluster_revision,omitempty"`
}

type poolRecord struct {
	StableVersion string                    `json:"stable_version,omitempty"`
	Canary        *canaryRecord             `json:"canary,omitempty"`
	Held          bool                      `json:"held,omitempty"`
	Backends      map[string]*backendRecord `json:"backends,omitempty"`
	LastCanary    *previousCanaryRecord     `json:"last_canary,omitempty"`
	Lease         *leaseRecord              `json:"lease,omitempty"`
	Switch        *switchRecord             `json:"switch,omitempty"`
	LastSwitch    *switchOutcomeRecord      `json:"last_switch,omitempty"`
	Rollout       *rolloutRecord            `json:"rollout,omitempty"`
	Retired       map[string]time.Time      `json:"retired,omitempty"` // version → when its after_gone gate began
	FileStable    string                    `json:"file_stable,omitempty"`
	FileCanary    *canaryRecord             `json:"file_canary,omitempty"`
}

type canaryRecord struct {
	Version string  `json:"version"`
	Weight  float64 `json:"weight"`
}

type backendRecord struct {
	State       string `json:"state,omitempty"`
	Weight      *int   `json:"weight,omitempty"`
	Version     string `json:"version,omitempty"`
	Address     string `json:"address,omitempty"`
	Added       bool   `json:"added,omitempty"`
	Removed     bool   `json:"removed,omitempty"`
	FileWeight  *int   `json:"file_weight,omitempty"`
	FileVersion string `json:"file_version,omitempty"`
	FileAddress string `json:"file_address,omitempty"`
}

type previousCanaryRecord struct {
	Version    string            `json:"version"`
	Stable     string            `json:"stable,omitempty"`
	Outcome    string            `json:"outcome,omitempty"`
	By         string            `json:"by,omitempty"`
	Verdict    string            `json:"verdict"`
	Rule       string            `json:"rule"`
	Reason     string            `json:"reason"`
	At         time.Time         `json:"at"`
	Signatures []signatureRecord `json:"signatures"`
}

type signatureRecord struct {
	Key          string            `json:"key"`
	Class        string            `json:"class"`
	Counts       map[string]uint64 `json:"counts"`
	FailsRelease bool              `json:"fails_release"`
	Example      *exampleRecord    `json:"example,omitempty"`
}

type exampleRecord struct {
	Time    time.Time `json:"time"`
	Version string    `json:"version"`
	Path    string    `json:"path"`
	Status  int       `json:"status"`
	Body    string    `json:"body,omitempty"`
}

type leaseRecord struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

type switchRecord struct {
	From         string    `json:"from"`
	To           string    `json:"to"`
	At           time.Time `json:"at"`
	Until        time.Time `json:"until"`
	MaxErrorRate float64   `json:"max_error_rate"`
	Old          []string  `json:"old"`
	New          []string  `json:"new"`
	By           string    `json:"by"`
}

type switchOutcomeRecord struct {
	From    string    `json:"from"`
	To      string    `json:"to"`
	Outcome string    `json:"outcome"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

type rolloutRecord struct {
	From      string          `json:"from"`
	Also      []string        `json:"also,omitempty"`
	To        string          `json:"to"`
	AfterGone bool            `json:"after_gone,omitempty"`
	By        string          `json:"by"`
	Started   time.Time       `json:"started"`
	Gates     []gateRunRecord `json:"gates,omitempty"`
}

type gateRunRecord struct {
	Gate    string    `json:"gate"`
	Command string    `json:"command"`
	State   string    `json:"state"`
	At      time.Time `json:"at"`
	Detail  string    `json:"detail,omitempty"`
}

func rolloutToRecord(rr *RolloutRecord) *rolloutRecord {
	if rr == nil {
		return nil
	}
	out := &rolloutRecord{From: rr.From, Also: rr.Also, To: rr.To, AfterGone: rr.AfterGone, By: rr.By, Started: rr.Started}
	for _, g := range rr.Gates {
		out.Gates = append(out.Gates, gateRunRecord{Gate: g.Gate, Command: g.Command, State: g.State, At: g.At, Detail: g.Detail})
	}
	return out
}

func rolloutFromRecord(rec *rolloutRecord) *RolloutRecord {
	if rec == nil {
		return nil
	}
	out := &RolloutRecord{From: rec.From, Also: rec.Also, To: rec.To, AfterGone: rec.AfterGone, By: rec.By, Started: rec.Started}
	for _, g := range rec.Gates {
		out.Gates = append(out.Gates, GateRun{Gate: g.Gate, Command: g.Command, State: g.State, At: g.At, Detail: g.Detail})
	}
	return out
}

// record converts the state to what the file holds.
func (s *State) record() *stateRecord {
	out := &stateRecord{Format: stateFormat}
	if len(s.Pools) > 0 {
		out.Pools = make(map[string]*poolRecord, len(s.Pools))
	}
	for name, ps := range s.Pools {
		pr := &poolRecord{StableVersion: ps.StableVersion, Held: ps.Held, FileStable: ps.FileStable,
			Canary: canaryToRecord(ps.Canary), FileCanary: canaryToRecord(ps.FileCanary)}
		if len(ps.Backends) > 0 {
			pr.Backends = make(map[string]*backendRecord, len(ps.Backends))
		}
		for bn, bs := range ps.Backends {
			state := ""
			if bs.State != pool.Active {
				state = bs.State.String()
			}
			pr.Backends[bn] = &backendRecord{State: state, Weight: bs.Weight, Version: bs.Version, Address: bs.Address,
				Added: bs.Added, Removed: bs.Removed, FileWeight: bs.FileWeight, FileVersion: bs.FileVersion, FileAddress: bs.FileAddress}
		}
		if c := ps.LastCanary; c != nil {
			cr := &previousCanaryRecord{Version: c.Version, Stable: c.Stable, Outcome: c.Outcome, By: c.By, Verdict: c.Verdict,
				Rule: c.Rule, Reason: c.Reason, At: c.At, Signatures: []signatureRecord{}}
			for _, sr := range c.Signatures {
				rec := signatureRecord{Key: sr.Key, Class: sr.Class, Counts: sr.Counts, FailsRelease: sr.FailsRelease}
				if e := sr.Example; e != nil {
					rec.Example = &exampleRecord{Time: e.Time, Version: e.Version, Path: e.Path, Status: e.Status, Body: e.Body}
				}
				cr.Signatures = append(cr.Signatures, rec)
			}
			pr.LastCanary = cr
		}
		if l := ps.Lease; l != nil {
			pr.Lease = &leaseRecord{Holder: l.Holder, Expires: l.Expires}
		}
		if sw := ps.Switch; sw != nil {
			pr.Switch = &switchRecord{From: sw.From, To: sw.To, At: sw.At, Until: sw.Until, MaxErrorRate: sw.MaxErrorRate,
				Old: sw.Old, New: sw.New, By: sw.By}
		}
		if o := ps.LastSwitch; o != nil {
			pr.LastSwitch = &switchOutcomeRecord{From: o.From, To: o.To, Outcome: o.Outcome, Reason: o.Reason, At: o.At}
		}
		pr.Rollout = rolloutToRecord(ps.Rollout)
		for v, at := range ps.Retired {
			if pr.Retired == nil {
				pr.Retired = map[string]time.Time{}
			}
			pr.Retired[v] = at.UTC()
		}
		out.Pools[name] = pr
	}
	return out
}

// state converts what the file holds to the domain's state. Entries that
// are null stay nil, for the checks that follow to name.
func (rec *stateRecord) state() *State {
	s := &State{Format: rec.Format}
	if len(rec.Pools) > 0 {
		s.Pools = make(map[string]*PoolState, len(rec.Pools))
	}
	for name, pr := range rec.Pools {
		if pr == nil {
			s.Pools[name] = nil
			continue
		}
		ps := &PoolState{StableVersion: pr.StableVersion, Held: pr.Held, FileStable: pr.FileStable,
			Canary: canaryFromRecord(pr.Canary), FileCanary: canaryFromRecord(pr.FileCanary)}
		if len(pr.Backends) > 0 {
			ps.Backends = make(map[string]*BackendState, len(pr.Backends))
		}
		for bn, br := range pr.Backends {
			if br == nil {
				ps.Backends[bn] = nil
				continue
			}
			state, _ := pool.ParseState(br.State) // checked by loadState
			ps.Backends[bn] = &BackendState{State: state, Weight: br.Weight, Version: br.Version, Address: br.Address,
				Added: br.Added, Removed: br.Removed, FileWeight: br.FileWeight, FileVersion: br.FileVersion, FileAddress: br.FileAddress}
		}
		if c := pr.LastCanary; c != nil {
			pc := &PreviousCanary{Version: c.Version, Stable: c.Stable, Outcome: c.Outcome, By: c.By, Verdict: c.Verdict,
				Rule: c.Rule, Reason: c.Reason, At: c.At, Signatures: []JudgedSignature{}}
			for _, sr := range c.Signatures {
				rep := JudgedSignature{Key: sr.Key, Class: sr.Class, Counts: sr.Counts, FailsRelease: sr.FailsRelease}
				if e := sr.Example; e != nil {
					rep.Example = &canary.Example{Time: e.Time, Version: e.Version, Path: e.Path, Status: e.Status, Body: e.Body}
				}
				pc.Signatures = append(pc.Signatures, rep)
			}
			ps.LastCanary = pc
		}
		if l := pr.Lease; l != nil {
			ps.Lease = &Lease{Holder: l.Holder, Expires: l.Expires}
		}
		if sw := pr.Switch; sw != nil {
			ps.Switch = &SwitchState{From: sw.From, To: sw.To, At: sw.At, Until: sw.Until, MaxErrorRate: sw.MaxErrorRate,
				Old: sw.Old, New: sw.New, By: sw.By}
		}
		if o := pr.LastSwitch; o != nil {
			ps.LastSwitch = &SwitchOutcome{From: o.From, To: o.To, Outcome: o.Outcome, Reason: o.Reason, At: o.At}
		}
		ps.Rollout = rolloutFromRecord(pr.Rollout)
		for v, at := range pr.Retired {
			if ps.Retired == nil {
				ps.Retired = map[string]time.Time{}
			}
			ps.Retired[v] = at
		}
		s.Pools[name] = ps
	}
	return s
}

// backends returns the pool's backend records, none for a null pool.
func (pr *poolRecord) backends() map[string]*backendRecord {
	if pr == nil {
		return nil
	}
	out := make(map[string]*backendRecord, len(pr.Backends))
	for bn, br := range pr.Backends {
		if br != nil {
			out[bn] = br
		}
	}
	return out
}

func canaryToRecord(c *CanaryState) *canaryRecord {
	if c == nil {
		return nil
	}
	return &canaryRecord{Version: c.Version, Weight: c.Weight}
}

func canaryFromRecord(c *canaryRecord) *CanaryState {
	if c == nil {
		return nil
	}
	return &CanaryState{Version: c.Version, Weight: c.Weight}
}
