package pool

import (
	"sync/atomic"
	"time"
)

// tunnelLogEvery: a tunnel refused over the pool's cap is logged at most
// this often (each is counted).
const tunnelLogEvery = time.Minute

// tunnelCount is a pool's open Upgrade tunnels against tunnels.max.
type tunnelCount struct {
	open       atomic.Int64
	refused    atomic.Uint64
	idleClosed atomic.Uint64
	lastLog    atomic.Int64 // nanotime of the last refusal logged
}

// ReserveTunnel takes one of the pool's tunnels.max places for a new
// tunnel; it reports false (counted, and logged once a minute) when they
// are all taken. Every true is followed by one ReleaseTunnel.
func (p *Pool) ReserveTunnel() bool {
	max := int64(p.settings().Tunnels.Max)
	t := &p.tunnels
	for {
		n := t.open.Load()
		if max > 0 && n >= max {
			t.refused.Add(1)
			now := Nanotime()
			if last := t.lastLog.Load(); (last == 0 || now-last >= int64(tunnelLogEvery)) && t.lastLog.CompareAndSwap(last, now) {
				p.log.Warn().Int64("max", max).Uint64("refused_so_far", t.refused.Load()).
					Msg("tunnel refused: the pool has tunnels.max open (logged once a minute; counted in baton_tunnels_refused_total)")
			}
			return false
		}
		if t.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// ReleaseTunnel gives back a place taken by ReserveTunnel; idle says the
// tunnel was closed for carrying nothing for tunnels.idle_timeout.
func (p *Pool) ReleaseTunnel(idle bool) {
	p.tunnels.open.Add(-1)
	if idle {
		p.tunnels.idleClosed.Add(1)
	}
}

// TunnelStats are a pool's tunnel counters, for /metrics.
type TunnelStats struct {
	Open       int64
	Refused    uint64 // over tunnels.max
	IdleClosed uint64 // closed after tunnels.idle_timeout without a byte
}

// TunnelStats returns the pool's tunnel counters.
func (p *Pool) TunnelStats() TunnelStats {
	return TunnelStats{Open: p.tunnels.open.Load(), Refused: p.tunnels.refused.Load(), IdleClosed: p.tunnels.idleClosed.Load()}
}
