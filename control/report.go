package control

import (
	"fmt"
	"math"
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
	b := &baseline{canary: cur, since: time.Now().UTC(), snaps: map[string]*versionSnap{}}
	for _, vs := range p.VersionStats() {
		b.snaps[vs.Version()] = snapVersion(vs)
	}
	r.baselines[p.Name()] = b
}

// VersionReport is one version's figures over the comparison window.
type VersionReport struct {
	Version   string   `json:"version"`
	Role      string   `json:"role"` // stable, canary, or previous (not yet upgraded)
	Requests  uint64   `json:"requests"`
	Errors    uint64   `json:"errors"`
	ErrorRate float64  `json:"error_rate"`
	P50ms     *float64 `json:"p50_ms"`
	P90ms     *float64 `json:"p90_ms"`
	P99ms     *float64 `json:"p99_ms"`
}

// CanaryReport compares a pool's versions since its canary started (or since
// baton started, without a canary).
type CanaryReport struct {
	Pool          string          `json:"pool"`
	StableVersion string          `json:"stable_version"`
	CanaryVersion string          `json:"canary_version,omitempty"`
	Weight        float64         `json:"weight"`
	Held          bool            `json:"held"`
	Since         time.Time       `json:"since"`
	Versions      []VersionReport `json:"versions"`
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
	rep := &CanaryReport{Pool: poolName, StableVersion: p.StableVersion(), CanaryVersion: cur, Weight: w,
		Held: r.state.Pools[poolName] != nil && r.state.Pools[poolName].Held, Since: base.since}
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
		switch vs.Version() {
		case rep.StableVersion:
			vr.Role = "stable"
		case cur:
			vr.Role = "canary"
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
