package control

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/baton-lb/baton/pool"
)

// VersionPresence is what still holds one version of a pool: its
// backends, what is in flight on them and open to them, and the affinity
// cookies issued for it that may still be valid. A version is gone —
// the question a cascade release asks before it drops what the version
// needed — once no backend of it is in rotation, nothing is in flight on
// one or open to one, and (unless affinity is ignored) no client can
// still be pinned to it.
type VersionPresence struct {
	Version  string
	Role     string // "stable", "canary" or ""
	Backends []BackendPresence
	Inflight int64
	Conns    int
	Cookies  pool.CookieCounts
	// Known: this baton has seen the version in the pool (a backend ran
	// it, it was stable or canary, a rollout named it) within what it
	// remembers. A version never seen is not "gone": a typo, or a pool
	// asked about on the wrong baton, must not release a migration.
	Known bool
	// CountsUnknownUntil, when set, is until when the cookies of every
	// version count as unknown: this process could not read what the one
	// before it issued (see Registry.CookiesUnknownUntil).
	CountsUnknownUntil time.Time
	// OthersUncounted: in a cluster, the other batons' requests in flight
	// and the cookies they gave are not in these figures (each baton
	// counts its own), so this one cannot call the version gone unless
	// its caller asked for this instance alone.
	OthersUncounted bool
}

// BackendPresence is one backend of a version.
type BackendPresence struct {
	Name string
	// State is active, draining, drained, ejected, removed (still
	// finishing), or relabelled (it runs another version now, and still
	// finishes what it had of this one).
	State    string
	Healthy  bool
	Inflight int64
	Conns    int
}

// InRotation names the version's backends in rotation (active, healthy
// or not: an unhealthy one comes back when its checks pass).
func (v *VersionPresence) InRotation() []string {
	var out []string
	for _, b := range v.Backends {
		if b.State == pool.Active.String() {
			out = append(out, b.Name)
		}
	}
	return out
}

// Serving reports whether the version serves anywhere: a backend in
// rotation, or a request or connection still open.
func (v *VersionPresence) Serving() bool {
	return len(v.InRotation()) > 0 || v.Inflight > 0 || v.Conns > 0
}

// Gone reports whether the version is gone: not serving, and no cookie
// of it can still be valid (unless ignoreAffinity).
//
// It is never gone while it is the pool's stable or canary version (a
// backend may take it again at any moment), while it is not known, or,
// unless affinity is ignored, while the cookie counts are unknown.
func (v *VersionPresence) Gone(ignoreAffinity bool) bool {
	if v.Serving() || v.Role != "" || !v.Known || v.OthersUncounted {
		return false
	}
	return ignoreAffinity || (v.Cookies.Count() == 0 && v.CountsUnknownUntil.IsZero())
}

// holds says in a few words what holds the version (for a refusal).
func (v *VersionPresence) holds() string {
	var out []string
	if v.Role != "" {
		out = append(out, "it is the pool's "+v.Role+" version")
	}
	if !v.Known {
		out = append(out, "baton never saw it in this pool")
	}
	if v.OthersUncounted {
		out = append(out, "the other batons of the cluster are not counted here (ask each with this_instance_only)")
	}
	if in := v.InRotation(); len(in) > 0 {
		out = append(out, "in rotation on "+strings.Join(in, ", "))
	}
	if v.Inflight > 0 || v.Conns > 0 {
		out = append(out, fmt.Sprintf("%d in flight, %d open connections", v.Inflight, v.Conns))
	}
	if n := v.Cookies.Count(); n > 0 {
		out = append(out, fmt.Sprintf("%d affinity cookies valid until %s", n, v.Cookies.Until.UTC().Format(time.RFC3339)))
	}
	if !v.CountsUnknownUntil.IsZero() {
		out = append(out, "affinity cookie counts unknown until "+v.CountsUnknownUntil.UTC().Format(time.RFC3339))
	}
	return strings.Join(out, "; ")
}

// PoolVersions is every version present in a pool, at a moment.
type PoolVersions struct {
	Pool          string
	At            time.Time
	StableVersion string
	CanaryVersion string
	// AffinityMaxAge is how long a cookie issued now pins its client.
	AffinityMaxAge time.Duration
	// CountsUnknownUntil: see VersionPresence.CountsUnknownUntil.
	CountsUnknownUntil time.Time
	// Clustered: this baton shares decisions with others through etcd;
	// ThisInstanceOnly: the figures were judged by this one alone, as
	// asked.
	Clustered, ThisInstanceOnly bool
	Versions                    []VersionPresence
}

// Versions lists every version present in a pool: those its backends run
// (removed ones still finishing included), the stable and canary
// versions, those with affinity cookies that may still be valid, and
// those asked about even when absent — stable first, then by name.
//
// In a cluster each baton counts only its own requests and cookies: no
// version is gone by these figures (OthersUncounted) — see VersionsHere.
func (r *Registry) Versions(poolName string, ask ...string) (*PoolVersions, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.versionsLocked(poolName, false, ask...)
}

// VersionsHere is Versions judged by this baton's figures alone, in a
// cluster too: for a caller that asks every instance in turn.
func (r *Registry) VersionsHere(poolName string, ask ...string) (*PoolVersions, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.versionsLocked(poolName, true, ask...)
}

// versionsLocked is Versions with r.mu held (RecordGate re-checks under
// it that a version is gone, in the same step that retires it); here
// judges by this instance's figures even in a cluster.
func (r *Registry) versionsLocked(poolName string, here bool, ask ...string) (*PoolVersions, error) {
	p := r.pools[poolName]
	if p == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	now := time.Now()
	cv, _ := p.Canary()
	out := &PoolVersions{Pool: poolName, At: now.UTC(), StableVersion: p.StableVersion(), CanaryVersion: cv,
		AffinityMaxAge: p.Settings().Affinity.MaxAge}
	if u := r.cookiesUnknownUntil(); now.Before(u) {
		out.CountsUnknownUntil = u.UTC()
	}
	r.noteKnownLocked(p, now)
	by := map[string]*VersionPresence{}
	get := func(v string) *VersionPresence {
		vp := by[v]
		if vp == nil {
			vp = &VersionPresence{Version: v, CountsUnknownUntil: out.CountsUnknownUntil}
			switch v {
			case out.StableVersion:
				vp.Role = "stable"
			case cv:
				vp.Role = "canary"
			}
			by[v] = vp
		}
		return vp
	}
	add := func(b *pool.Backend, state string) {
		// The versions it ran before first: a request counted there and
		// finishing meanwhile may only be counted twice, never nowhere.
		for _, f := range b.Former() {
			vp := get(f.Version)
			vp.Backends = append(vp.Backends, BackendPresence{Name: b.Name(), State: "relabelled", Inflight: f.Inflight, Conns: f.Conns})
			vp.Inflight += f.Inflight
			vp.Conns += f.Conns
		}
		vp := get(b.Version())
		in, conns := b.Inflight(), b.OpenConns()
		vp.Backends = append(vp.Backends, BackendPresence{Name: b.Name(), State: state, Healthy: b.Health() == pool.Up,
			Inflight: in, Conns: conns})
		vp.Inflight += in
		vp.Conns += conns
	}
	if out.StableVersion != "" {
		get(out.StableVersion)
	}
	if cv != "" {
		get(cv)
	}
	for _, b := range p.Backends() {
		add(b, b.State().String())
	}
	leaving := p.LeavingBackends()
	sort.Slice(leaving, func(i, j int) bool { return leaving[i].Name() < leaving[j].Name() })
	for _, b := range leaving {
		add(b, "removed")
	}
	if old := r.retired[poolName]; old != nil && old != p {
		// The pool was removed by a reload and brought back: what runs
		// on its former backends still holds their versions.
		for _, b := range old.LeavingBackends() {
			add(b, "removed")
		}
	}
	for _, c := range p.Cookies(now) {
		get(c.Version).Cookies = c
	}
	for _, v := range ask {
		get(v)
	}
	for _, vp := range by {
		vp.Known = r.known.has(poolName, vp.Version)
		vp.OthersUncounted = r.shared != nil && !here
		out.Versions = append(out.Versions, *vp)
	}
	out.Clustered, out.ThisInstanceOnly = r.shared != nil, here
	sort.Slice(out.Versions, func(i, j int) bool {
		a, b := out.Versions[i], out.Versions[j]
		if (a.Role == "stable") != (b.Role == "stable") {
			return a.Role == "stable"
		}
		return a.Version < b.Version
	})
	return out, nil
}
