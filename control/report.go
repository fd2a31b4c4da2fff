package control

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// baseline is what every version of a pool had counted when its current
// canary started, so the comparison covers the same stretch of traffic.
type baseline struct {
	canary string
	since  time.Time
	snaps  map[string]*versionSnap
	sigs   map[string]canary.Signature
	sigsOf *canary.Signatures // the table sigs were taken from
}

type versionSnap struct {
	of               *canary.VersionStats // the evidence it was taken of
	requests, errors uint64
	latency          canary.Snapshot
}

func snapVersion(vs *canary.VersionStats) *versionSnap {
	s := &versionSnap{of: vs, requests: vs.Requests(), errors: vs.Errors()}
	vs.Latency(&s.latency)
	return s
}

// syncBaselineLocked starts a new comparison window when a pool's canary
// version changed.
func (r *Registry) syncBaselineLocked(p *pool.Pool) {
	cur, _ := p.Canary()
	if b := r.baselines[p.Name()]; b != nil && b.canary == cur {
		return
	}
	b := &baseline{canary: cur, since: time.Now().UTC(), snaps: map[string]*versionSnap{}, sigs: p.Signatures().Snapshot(), sigsOf: p.Signatures()}
	for _, vs := range p.VersionStats() {
		b.snaps[vs.Version()] = snapVersion(vs)
	}
	r.baselines[p.Name()] = b
}

// VersionReport is one version's figures over the comparison window.
type VersionReport struct {
	Version   string   `json:"version"`
	Role      string   `json:"role"` // stable, canary, rolled_back, or previous (not yet upgraded)
	Requests  uint64   `json:"requests"`
	Errors    uint64   `json:"errors"`
	ErrorRate float64  `json:"error_rate"`
	P50ms     *float64 `json:"p50_ms"`
	P90ms     *float64 `json:"p90_ms"`
	P99ms     *float64 `json:"p99_ms"`
}

// CanaryReport compares a pool's versions since its canary started (or since
// baton started, without a canary), with the judge's verdict.
type CanaryReport struct {
	Pool          string    `json:"pool"`
	StableVersion string    `json:"stable_version"`
	CanaryVersion string    `json:"canary_version,omitempty"`
	Weight        float64   `json:"weight"`
	Held          bool      `json:"held"`
	Since         time.Time `json:"since"`

	// The judge, while a canary runs.
	Verdict   string           `json:"verdict,omitempty"`
	Rule      string           `json:"rule,omitempty"`
	Reason    string           `json:"reason,omitempty"`
	Figures   []canary.Finding `json:"figures,omitempty"`
	VerdictAt *time.Time       `json:"verdict_at,omitempty"`
	// Step is the position of the current share in Steps (1-based; 0: not
	// on a step).
	Step         int       `json:"step"`
	Steps        []float64 `json:"steps"`
	AutoPromote  bool      `json:"auto_promote"`
	AutoRollback bool      `json:"auto_rollback"`
	DryRun       bool      `json:"dry_run"`

	Versions   []VersionReport   `json:"versions"`
	Signatures []SignatureReport `json:"signatures"`
	// Evidence says what the tables could not keep apart.
	Evidence EvidenceReport `json:"evidence"`

	// Previous is the last verdict on the pool's previous canary, once it
	// was promoted or rolled back: why it ended.
	Previous *PreviousCanary `json:"previous,omitempty"`
}

// EvidenceReport is what the current canary's evidence tables had no room
// for: requests of paths past the 16 automatic route groups (counted in
// "other"), failures past the 256 signatures (counted in "other").
type EvidenceReport struct {
	RouteGroupsFolded uint64 `json:"route_groups_folded"`
	SignaturesFolded  uint64 `json:"signatures_folded"`
	// Requests and failures the judge left out for being over one
	// client's share (judge.max_client_share).
	ClientDiscardedRequests uint64 `json:"client_discarded_requests"`
	ClientDiscardedFailures uint64 `json:"client_discarded_failures"`
}

// PreviousCanary is how the last canary ended. It is kept in the state
// file, so a report after a restart still says why a version was promoted
// or rolled back.
type PreviousCanary struct {
	Version string `json:"version"`
	Stable  string `json:"stable,omitempty"` // the stable version it was compared with
	// Outcome is promoted or rolled_back; empty when the canary ended
	// otherwise (its backends drained or removed, or the file changed).
	Outcome string `json:"outcome,omitempty"`
	By      string `json:"by,omitempty"` // who promoted or rolled back: judge, or the token's name
	// The judge's last verdict on it; empty verdict when it had none.
	Verdict    string            `json:"verdict"`
	Rule       string            `json:"rule"`
	Reason     string            `json:"reason"`
	At         time.Time         `json:"at"` // when it ended, or the verdict's time when it ended otherwise
	Signatures []SignatureReport `json:"signatures"`
}

// endedCanaryLocked is how canary version cur of p ends now: outcome, by
// whom, the judge's last verdict on it and its signatures with examples.
func (r *Registry) endedCanaryLocked(p *pool.Pool, cur, outcome, by string) *PreviousCanary {
	prev := &PreviousCanary{Version: cur, Stable: p.StableVersion(), Outcome: outcome, By: by,
		At: time.Now().UTC(), Signatures: []SignatureReport{}}
	if res, _, ok := r.judges.latest(p.Name()); ok && r.judges.judging(p.Name()) == cur {
		prev.Verdict, prev.Rule, prev.Reason = res.Verdict, res.Rule, res.Reason
		prev.Signatures = signatureReports(res, p, cur, prev.Stable)
	}
	return prev
}

// signatureReports is the judge's classes of a canary's signatures, with
// counts per version and the latest example of each.
func signatureReports(res canary.Result, p *pool.Pool, canaryVersion, stable string) []SignatureReport {
	sigs := p.Signatures().Snapshot()
	if prev := p.PreviousSignatures(); prev != nil {
		// A canary that ended may have had its table replaced by the next
		// one's: its examples are there.
		for k, sig := range prev.Snapshot() {
			if _, ok := sigs[k]; !ok {
				sigs[k] = sig
			}
		}
	}
	out := []SignatureReport{}
	for _, sc := range res.Signatures {
		sr := SignatureReport{Key: sc.Key, Class: sc.Class, FailsRelease: sc.FailsRelease,
			Counts: map[string]uint64{canaryVersion: sc.Canary}}
		if stable != canaryVersion {
			sr.Counts[stable] = sc.Stable
		}
		if ex := sigs[sc.Key].Examples; len(ex) > 0 {
			e := ex[len(ex)-1]
			sr.Example = &e
		}
		out = append(out, sr)
	}
	return out
}

// SignatureReport is one kind of failure over the comparison window.
type SignatureReport struct {
	Key string `json:"key"`
	// Class: new (the canary has it, stable never did), elevated (the
	// canary has it significantly more often), known (comparable rates: a
	// caveat of the old version, which never fails a release).
	Class        string            `json:"class"`
	Counts       map[string]uint64 `json:"counts"`
	FailsRelease bool              `json:"fails_release"`
	Example      *canary.Example   `json:"example,omitempty"`
}

// Canary returns the pool's version comparison.
func (r *Registry) Canary(poolName string) (*CanaryReport, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pools[poolName]
	if p == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	r.syncBaselineLocked(p)
	base := r.baselines[poolName]
	cur, w := p.Canary()
	cfg := p.Settings()
	rep := &CanaryReport{Pool: poolName, StableVersion: p.StableVersion(), CanaryVersion: cur, Weight: w,
		Held: r.state.Pools[poolName] != nil && r.state.Pools[poolName].Held, Since: base.since,
		Steps: append([]float64{}, cfg.Canary.Steps...), AutoPromote: cfg.Canary.AutoPromote,
		AutoRollback: cfg.Canary.AutoRollback, DryRun: cfg.Canary.DryRun, Signatures: []SignatureReport{}}
	for i, st := range cfg.Canary.Steps {
		if st == w {
			rep.Step = i + 1
		}
	}
	var classes map[string]canary.SignatureClass
	if cur != "" {
		rep.Verdict, rep.Reason = canary.Inconclusive, "the judge has not looked at this canary yet"
		if res, at, ok := r.judges.latest(poolName); ok {
			rep.Verdict, rep.Rule, rep.Reason, rep.Figures = res.Verdict, res.Rule, res.Reason, res.Findings
			rep.Evidence.ClientDiscardedRequests, rep.Evidence.ClientDiscardedFailures = res.Discarded, res.DiscardedFailures
			at := at.UTC()
			rep.VerdictAt = &at
			classes = map[string]canary.SignatureClass{}
			for _, sc := range res.Signatures {
				classes[sc.Key] = sc
			}
		}
	}
	table := p.Signatures()
	sigs := table.Snapshot()
	if base.sigsOf != table {
		// A new canary's table, made after the window began: all of it is
		// this window's.
		base.sigs, base.sigsOf = nil, table
	}
	rep.Evidence.RouteGroupsFolded, rep.Evidence.SignaturesFolded = p.Groups().Folded(), table.Folded()
	if cur == "" {
		// How the last canary ended: as recorded when it was promoted or
		// rolled back (kept across restarts), or, when a later canary
		// ended some other way, the judge's last verdict on that one.
		if ps := r.state.Pools[poolName]; ps != nil && ps.LastCanary != nil {
			c := *ps.LastCanary
			rep.Previous = &c
		}
		if v, stable, res, at, ok := r.judges.ended(poolName); ok && (rep.Previous == nil || at.After(rep.Previous.At)) {
			rep.Previous = &PreviousCanary{Version: v, Stable: stable, Verdict: res.Verdict, Rule: res.Rule, Reason: res.Reason,
				At: at.UTC(), Signatures: signatureReports(res, p, v, stable)}
		}
	}
	for key, sig := range sigs {
		b := base.sigs[key]
		sr := SignatureReport{Key: key, Counts: map[string]uint64{}}
		total := uint64(0)
		for v, n := range sig.Counts {
			if d := n - min(n, b.Counts[v]); d > 0 {
				sr.Counts[v] = d
				total += d
			}
		}
		if total == 0 {
			continue
		}
		if len(sig.Examples) > 0 {
			ex := sig.Examples[len(sig.Examples)-1]
			sr.Example = &ex
		}
		sr.Class = "known"
		if sc, ok := classes[key]; ok {
			sr.Class, sr.FailsRelease = sc.Class, sc.FailsRelease
		} else if cur != "" && sr.Counts[cur] > 0 && sr.Counts[rep.StableVersion] == 0 {
			sr.Class = "new"
		}
		rep.Signatures = append(rep.Signatures, sr)
	}
	sort.Slice(rep.Signatures, func(i, j int) bool {
		a, b := rep.Signatures[i], rep.Signatures[j]
		if a.FailsRelease != b.FailsRelease {
			return a.FailsRelease
		}
		return a.Key < b.Key
	})
	for _, vs := range p.VersionStats() {
		now := snapVersion(vs)
		// Only from the same evidence: a version's evidence is recreated
		// when the version leaves the pool and comes back.
		if b := base.snaps[vs.Version()]; b != nil && b.of == vs {
			now.requests -= b.requests
			now.errors -= b.errors
			now.latency = now.latency.Sub(&b.latency)
		}
		vr := VersionReport{Version: vs.Version(), Role: "previous", Requests: now.requests, Errors: now.errors}
		switch {
		case vs.Version() == rep.StableVersion:
			vr.Role = "stable"
		case vs.Version() == cur:
			vr.Role = "canary"
		case rep.Previous != nil && vs.Version() == rep.Previous.Version:
			vr.Role = "rolled_back" // its servers drain or wait to be reinstalled
		}
		if now.requests > 0 {
			vr.ErrorRate = float64(now.errors) / float64(now.requests)
		}
		vr.P50ms, vr.P90ms, vr.P99ms = quantileMs(&now.latency, 0.5), quantileMs(&now.latency, 0.9), quantileMs(&now.latency, 0.99)
		rep.Versions = append(rep.Versions, vr)
	}
	return rep, nil
}

func quantileMs(s *canary.Snapshot, q float64) *float64 {
	v := s.Quantile(q)
	if math.IsNaN(v) {
		return nil
	}
	ms := math.Round(v) / 1000
	return &ms
}
