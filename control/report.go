package control

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/baton-lb/baton/admin/v1"
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

// PreviousCanary is how the last canary ended. It is kept in the state
// file, so a report after a restart still says why a version was promoted
// or rolled back.
type PreviousCanary struct {
	Version string
	Stable  string // the stable version it was compared with
	// Outcome is promoted or rolled_back; empty when the canary ended
	// otherwise (its backends drained or removed, or the file changed).
	Outcome string
	By      string // who promoted or rolled back: judge, or the token's name
	// The judge's last verdict on it; empty verdict when it had none.
	Verdict, Rule, Reason string
	At                    time.Time // when it ended, or the verdict's time when it ended otherwise
	Signatures            []JudgedSignature
}

// JudgedSignature is a kind of failure as the judge classed it: new,
// elevated or known, its counts per version, whether it failed the
// release, and its latest example.
type JudgedSignature struct {
	Key          string
	Class        string
	Counts       map[string]uint64
	FailsRelease bool
	Example      *canary.Example
}

// report is pc as the API shows it.
func (pc *PreviousCanary) report() *v1.PreviousCanary {
	out := &v1.PreviousCanary{Version: pc.Version, Stable: pc.Stable, Outcome: pc.Outcome, By: pc.By, Verdict: pc.Verdict,
		Rule: pc.Rule, Reason: pc.Reason, At: pc.At, Signatures: make([]v1.SignatureReport, 0, len(pc.Signatures))}
	for _, js := range pc.Signatures {
		out.Signatures = append(out.Signatures, v1.SignatureReport{Key: js.Key, Class: js.Class, Counts: js.Counts,
			FailsRelease: js.FailsRelease, Example: example(js.Example)})
	}
	return out
}

// example is e as the API shows it.
func example(e *canary.Example) *v1.Example {
	if e == nil {
		return nil
	}
	return &v1.Example{Time: e.Time, Version: e.Version, Path: e.Path, Status: e.Status, Body: e.Body}
}

// endedCanaryLocked is how canary version cur of p ends now: outcome, by
// whom, the judge's last verdict on it and its signatures with examples.
func (r *Registry) endedCanaryLocked(p *pool.Pool, cur, outcome, by string) *PreviousCanary {
	prev := &PreviousCanary{Version: cur, Stable: p.StableVersion(), Outcome: outcome, By: by,
		At: time.Now().UTC(), Signatures: []JudgedSignature{}}
	if res, _, ok := r.judges.latest(p.Name()); ok && r.judges.judging(p.Name()) == cur {
		prev.Verdict, prev.Rule, prev.Reason = res.Verdict, res.Rule, res.Reason
		prev.Signatures = signatureReports(res, p, cur, prev.Stable)
	}
	return prev
}

// signatureReports is the judge's classes of a canary's signatures, with
// counts per version and the latest example of each.
func signatureReports(res canary.Result, p *pool.Pool, canaryVersion, stable string) []JudgedSignature {
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
	out := []JudgedSignature{}
	for _, sc := range res.Signatures {
		sr := JudgedSignature{Key: sc.Key, Class: sc.Class, FailsRelease: sc.FailsRelease,
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

// Canary returns the pool's version comparison.
func (r *Registry) Canary(poolName string) (*v1.CanaryReport, error) {
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
	rep := &v1.CanaryReport{Pool: poolName, StableVersion: p.StableVersion(), CanaryVersion: cur, Weight: w,
		Held: r.state.Pools[poolName] != nil && r.state.Pools[poolName].Held, Since: base.since,
		Steps: append([]float64{}, cfg.Canary.Steps...), AutoPromote: cfg.Canary.AutoPromote,
		AutoRollback: cfg.Canary.AutoRollback, DryRun: cfg.Canary.DryRun, Signatures: []v1.SignatureReport{}}
	for i, st := range cfg.Canary.Steps {
		if st == w {
			rep.Step = i + 1
		}
	}
	var classes map[string]canary.SignatureClass
	if cur != "" {
		rep.Verdict, rep.Reason = canary.Inconclusive, "the judge has not looked at this canary yet"
		if res, at, ok := r.judges.latest(poolName); ok {
			rep.Verdict, rep.Rule, rep.Reason = res.Verdict, res.Rule, res.Reason
			for _, f := range res.Findings {
				rep.Figures = append(rep.Figures, v1.Finding{Rule: f.Rule, Detail: f.Detail})
			}
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
			rep.Previous = ps.LastCanary.report()
		}
		if v, stable, res, at, ok := r.judges.ended(poolName); ok && (rep.Previous == nil || at.After(rep.Previous.At)) {
			ended := &PreviousCanary{Version: v, Stable: stable, Verdict: res.Verdict, Rule: res.Rule, Reason: res.Reason,
				At: at.UTC(), Signatures: signatureReports(res, p, v, stable)}
			rep.Previous = ended.report()
		}
	}
	for key, sig := range sigs {
		b := base.sigs[key]
		sr := v1.SignatureReport{Key: key, Counts: map[string]uint64{}}
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
			sr.Example = example(&sig.Examples[len(sig.Examples)-1])
		}
		sr.Class = "known"
		if sc, ok := classes[key]; ok {
			sr.Class, sr.FailsRelease = sc.Class, sc.FailsRelease
		} else if cur != "" && sr.Counts[cur] > 0 && sr.Counts[rep.StableVersion] == 0 {
			sr.Class = "new"
		}
		rep.Signatures = append(rep.Signatures, sr)
	}
	sortSignatures(rep.Signatures)
	for _, vs := range p.VersionStats() {
		now := snapVersion(vs)
		// Only from the same evidence: a version's evidence is recreated
		// when the version leaves the pool and comes back.
		if b := base.snaps[vs.Version()]; b != nil && b.of == vs {
			now.requests -= b.requests
			now.errors -= b.errors
			now.latency = now.latency.Sub(&b.latency)
		}
		vr := v1.VersionReport{Version: vs.Version(), Role: "previous", Requests: now.requests, Errors: now.errors}
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
	if pv := r.judges.pooledOf(poolName, cur); pv != nil && cur != "" {
		pooledReport(rep, pv, classes)
	}
	return rep, nil
}

// pooledReport puts the cluster's pooled evidence in place of this
// instance's own, so that every instance reports the verdict with the
// figures it was reached on: the stable and canary versions' counts and
// latency, and the signatures with their latest example from any
// instance.
func pooledReport(rep *v1.CanaryReport, pv *pooledVerdict, classes map[string]canary.SignatureClass) {
	e := pv.Evidence
	for _, s := range []*canary.SideEvidence{&e.Stable, &e.Canary} {
		i := slices.IndexFunc(rep.Versions, func(vr v1.VersionReport) bool { return vr.Version == s.Version })
		if i < 0 {
			// Served elsewhere only.
			role := "stable"
			if s == &e.Canary {
				role = "canary"
			}
			rep.Versions = append(rep.Versions, v1.VersionReport{Version: s.Version, Role: role})
			i = len(rep.Versions) - 1
		}
		vr := &rep.Versions[i]
		vr.Requests, vr.Errors, vr.ErrorRate = s.Requests, s.Errors, 0
		if s.Requests > 0 {
			vr.ErrorRate = float64(s.Errors) / float64(s.Requests)
		}
		vr.P50ms, vr.P90ms, vr.P99ms = quantileMs(&s.All, 0.5), quantileMs(&s.All, 0.9), quantileMs(&s.All, 0.99)
	}
	rep.Signatures = rep.Signatures[:0]
	for _, sig := range e.Signatures {
		sr := v1.SignatureReport{Key: sig.Key, Counts: map[string]uint64{}, Example: example(sig.Example), Class: "known"}
		if sig.Stable > 0 {
			sr.Counts[e.Stable.Version] = sig.Stable
		}
		if sig.Canary > 0 {
			sr.Counts[e.Canary.Version] = sig.Canary
		}
		if sc, ok := classes[sig.Key]; ok {
			sr.Class, sr.FailsRelease = sc.Class, sc.FailsRelease
		} else if sig.Canary > 0 && sig.Stable == 0 {
			sr.Class = "new"
		}
		rep.Signatures = append(rep.Signatures, sr)
	}
	sortSignatures(rep.Signatures)
	rep.Evidence.Instances = append([]string{}, pv.Instances...)
	rep.Evidence.JudgedBy = pv.Leader
}

// sortSignatures puts those that fail the release first, then by key.
func sortSignatures(sigs []v1.SignatureReport) {
	sort.Slice(sigs, func(i, j int) bool {
		a, b := sigs[i], sigs[j]
		if a.FailsRelease != b.FailsRelease {
			return a.FailsRelease
		}
		return a.Key < b.Key
	})
}

func quantileMs(s *canary.Snapshot, q float64) *float64 {
	v := s.Quantile(q)
	if math.IsNaN(v) {
		return nil
	}
	ms := math.Round(v) / 1000
	return &ms
}
