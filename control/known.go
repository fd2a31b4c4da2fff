package control

import (
	"sort"
	"sync"
	"time"

	"github.com/baton-lb/baton/pool"
)

// maxKnownVersions bounds how many versions a pool remembers: the most
// recently seen are kept. A cascade needs the last two or three.
const maxKnownVersions = 32

// knownVersions remembers, per pool, the versions this baton has seen
// and when it last saw each: a version asked about that it never saw is
// reported unknown rather than gone (a typo in wait-gone must not release
// a migration). It is kept in the affinity counts' file, this instance's
// own, so it survives a restart without a write to the shared state.
//
// It is safe for concurrent use.
type knownVersions struct {
	mu sync.Mutex                      // protects by
	by map[string]map[string]time.Time // pool → version → last seen
}

// note records that pool has version at now.
func (k *knownVersions) note(poolName, version string, at time.Time) {
	if version == "" {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.by == nil {
		k.by = map[string]map[string]time.Time{}
	}
	vs := k.by[poolName]
	if vs == nil {
		vs = map[string]time.Time{}
		k.by[poolName] = vs
	}
	if at.After(vs[version]) {
		vs[version] = at
	}
	for len(vs) > maxKnownVersions {
		oldest, at := "", time.Time{}
		for v, t := range vs {
			if oldest == "" || t.Before(at) {
				oldest, at = v, t
			}
		}
		delete(vs, oldest)
	}
}

// has reports whether pool's version was seen.
func (k *knownVersions) has(poolName, version string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.by[poolName][version]
	return ok
}

// snapshot returns a copy of what is known, to be written.
func (k *knownVersions) snapshot() map[string]map[string]time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]map[string]time.Time, len(k.by))
	for pn, vs := range k.by {
		c := make(map[string]time.Time, len(vs))
		for v, t := range vs {
			c[v] = t.UTC()
		}
		out[pn] = c
	}
	return out
}

// noteKnownLocked remembers every version pool p shows now: its backends'
// (those leaving included), its stable and canary versions, and those its
// state records (the rollout's, the last canary's, the retired ones).
func (r *Registry) noteKnownLocked(p *pool.Pool, now time.Time) {
	name := p.Name()
	for _, v := range p.SortedVersions() {
		r.known.note(name, v, now)
	}
	for _, b := range p.LeavingBackends() {
		r.known.note(name, b.Version(), now)
	}
	r.known.note(name, p.StableVersion(), now)
	if cv, _ := p.Canary(); cv != "" {
		r.known.note(name, cv, now)
	}
	for _, c := range p.Cookies(now) {
		r.known.note(name, c.Version, now)
	}
	for _, v := range stateVersions(r.state.Pools[name]) {
		r.known.note(name, v, now)
	}
}

// stateVersions are the versions a pool's state names: its stable and
// canary overrides, its rollout's from and to, its last canary and the
// versions it retired — sorted, without repeats.
func stateVersions(ps *PoolState) []string {
	if ps == nil {
		return nil
	}
	set := map[string]bool{ps.StableVersion: true}
	if ps.Canary != nil {
		set[ps.Canary.Version] = true
	}
	if ps.Rollout != nil {
		set[ps.Rollout.From], set[ps.Rollout.To] = true, true
	}
	if ps.LastCanary != nil {
		set[ps.LastCanary.Version], set[ps.LastCanary.Stable] = true, true
	}
	for v := range ps.Retired {
		set[v] = true
	}
	delete(set, "")
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}
