package control

import (
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

// goneKeep is how long the admin state of a backend the config file
// dropped is remembered. A file caught half-written, or an edit undone, can
// drop a server for a moment; one that was drained for an upgrade must not
// come back active and take traffic mid-upgrade.
const goneKeep = time.Minute

// goneBackends remembers the admin states (draining, drained, ejected) of
// backends that left the config file, for goneKeep. It is used under the
// registry's lock.
type goneBackends struct {
	by map[string]goneBackend // by pool + "\x00" + backend
}

type goneBackend struct {
	state pool.State
	at    time.Time
}

func (g *goneBackends) add(poolName, name string, bs *BackendState) {
	if g == nil || bs.State == pool.Active {
		return
	}
	if g.by == nil {
		g.by = map[string]goneBackend{}
	}
	g.by[poolName+"\x00"+name] = goneBackend{state: bs.State, at: time.Now()}
}

// restore puts a backend the file lists again within goneKeep of dropping
// it back in the admin state it had, unless a decision since says
// otherwise. It reports whether st changed.
func (g *goneBackends) restore(st *State, cfg *config.Config, log zerolog.Logger) bool {
	if g == nil || len(g.by) == 0 {
		return false
	}
	changed := false
	now := time.Now()
	for key, gb := range g.by {
		if now.Sub(gb.at) >= goneKeep {
			delete(g.by, key)
			continue
		}
		pn, bn, _ := strings.Cut(key, "\x00")
		pc, ok := filePool(cfg, pn)
		if !ok {
			continue
		}
		fb, ok := fileBackend(pc, bn)
		if !ok {
			continue
		}
		delete(g.by, key)
		bs := st.pool(pn).backend(bn)
		if bs.State != pool.Active {
			continue
		}
		bs.State = gb.state
		setBase(bs, fb)
		changed = true
		log.Warn().Str("pool", pn).Str("backend", bn).Str("state", gb.state.String()).Dur("gone_for", now.Sub(gb.at).Round(time.Millisecond)).
			Msg("the file lists this backend again within a minute of dropping it; it keeps the admin state it had")
	}
	return changed
}

// describeBackend names a backend's runtime decisions, for the log.
func describeBackend(bs *BackendState) string {
	var parts []string
	if bs.State != pool.Active {
		parts = append(parts, "state "+bs.State.String())
	}
	if bs.Weight != nil {
		parts = append(parts, fmt.Sprintf("weight %d", *bs.Weight))
	}
	if bs.Version != "" {
		parts = append(parts, "version "+bs.Version)
	}
	if bs.Address != "" {
		parts = append(parts, "address "+bs.Address)
	}
	if bs.Removed {
		parts = append(parts, "removed")
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// describePool names a pool's runtime decisions, for the log.
func describePool(ps *PoolState) string {
	var parts []string
	if ps.StableVersion != "" {
		parts = append(parts, "stable version "+ps.StableVersion)
	}
	if c := ps.Canary; c != nil && c.Version != "" {
		parts = append(parts, fmt.Sprintf("canary %s at %g%%", c.Version, c.Weight))
	}
	if ps.Held {
		parts = append(parts, "judge held")
	}
	if ps.Lease != nil {
		parts = append(parts, "lease of "+ps.Lease.Holder)
	}
	if ps.Switch != nil {
		parts = append(parts, "a blue/green switch being watched")
	}
	if ps.Rollout != nil {
		parts = append(parts, fmt.Sprintf("the record of the rollout of %s (from %s)", ps.Rollout.To, ps.Rollout.From))
	}
	for bn, bs := range ps.Backends {
		parts = append(parts, bn+": "+describeBackend(bs))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "; ")
}
