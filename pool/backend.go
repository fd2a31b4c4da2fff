package pool

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton/canary"
)

// State is a backend's admin state, set by config, the admin API or a drain.
// It is separate from health: a backend receives new requests only when it is
// Active and healthy (see Backend.admits).
type State int32

const (
	// Active backends are in rotation.
	Active State = iota
	// Draining backends get no new requests; in-flight ones finish.
	Draining
	// Drained backends have nothing in flight and no open connection.
	Drained
	// Ejected backends were taken out at once by an operator.
	Ejected
)

// ParseState reads a state's name; "" is Active.
func ParseState(name string) (State, bool) {
	switch name {
	case "", "active":
		return Active, true
	case "draining":
		return Draining, true
	case "drained":
		return Drained, true
	case "ejected":
		return Ejected, true
	}
	return Active, false
}

// MarshalText writes the state's name (JSON shows states as words).
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText reads a state's name.
func (s *State) UnmarshalText(b []byte) error {
	v, ok := ParseState(string(b))
	if !ok {
		return fmt.Errorf("unknown backend state %q", b)
	}
	*s = v
	return nil
}

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Draining:
		return "draining"
	case Drained:
		return "drained"
	case Ejected:
		return "ejected"
	}
	return "unknown"
}

// Health is what active checks and passive outlier detection concluded.
type Health int32

const (
	// Unknown: not checked yet since the backend joined or was enabled. It
	// gets no traffic until a check passes.
	Unknown Health = iota
	Up
	Down
)

func (h Health) String() string {
	switch h {
	case Up:
		return "healthy"
	case Down:
		return "unhealthy"
	}
	return "unchecked"
}

// spec is the part of a backend that the file or the admin API sets,
// and the counter of its version's affinity cookies, which goes with the
// version: one atomic load gives the request path both.
type spec struct {
	address string
	version string
	weight  int
	cookies *CookieCounter
}

// sameAs reports whether s and o say the same of the backend (the counter
// may be a new one for the same version).
func (s *spec) sameAs(o *spec) bool {
	return s.address == o.address && s.version == o.version && s.weight == o.weight
}

// Backend is one server of a pool. It lives as long as the pool has a backend
// of that name, across config reloads, and keeps its counters, connections,
// health and admin state.
//
// Its methods are safe for concurrent use; its hot counters are atomics.
// Backend values must not be copied.
type Backend struct {
	pool *Pool
	name string

	spec  atomic.Pointer[spec]
	conns atomic.Pointer[Conns]

	state  atomic.Int32 // State
	health atomic.Int32 // Health

	inflight atomic.Int64
	requests atomic.Uint64
	errors   atomic.Uint64
	// counts are the backend's requests by status class while it runs its
	// current version; a new version starts a new set.
	counts atomic.Pointer[Counts]
	// stats is the evidence of the backend's version in its pool.
	stats atomic.Pointer[canary.VersionStats]
	// latency is the backend's own time to response head, every answered
	// request (the evidence is its version's): its monitor.
	latency canary.Histogram

	// Outlier detection.
	consecutive  atomic.Int32 // gateway failures in a row
	ejections    atomic.Int32 // passive ejections since last reset, for backoff
	ejectedUntil atomic.Int64 // nanotime before which checks do not count
	lastEjected  atomic.Int64 // nanotime of the last passive ejection
	// healthEpoch counts the times the backend's health was reset (an
	// enable, a new address; under the pool's lock): a check that began
	// before a reset speaks of the server before it and is not counted.
	healthEpoch atomic.Uint64

	drainStart atomic.Int64 // nanotime the current drain began

	checkNow chan struct{} // asks the health loop for an immediate check
	stop     chan struct{} // closed when the backend leaves its pool
	lastErr  atomic.Pointer[string]

	retiredMu sync.Mutex // protects retired
	retired   []*Conns   // connection sets of former addresses, still in use

	tunnelMu sync.Mutex      // protects tunnels
	tunnels  map[*int]func() // open Upgrade tunnels: how to close each

	formerMu sync.Mutex // protects former
	// former are the versions the backend ran before its current one that
	// still hold something: a version must not look gone while a request
	// sent to it runs on, or a connection opened to it is open.
	former []*former
}

// former is what a backend still holds of a version it no longer runs.
type former struct {
	version string
	conns   *Conns // the connections opened while it ran the version
	// busy: requests picked while it ran the version may still run. A
	// request does not say which version it was picked for, so every
	// request in flight counts until none is: the first moment nothing
	// is in flight, each request picked before the change has ended.
	busy bool
}

// Former is a version the backend ran before its current one, with what
// it still holds of it.
type Former struct {
	Version string
	// Inflight is every request in flight on the backend while one picked
	// under the former version may still run (an upper bound).
	Inflight int64
	Conns    int
}

// noteFormer records that the backend ran version until now, with its
// connections conns and, if busy, requests that may still run.
func (b *Backend) noteFormer(version string, conns *Conns, busy bool) {
	if !busy && conns.Open() == 0 {
		return
	}
	b.formerMu.Lock()
	b.former = append(b.former, &former{version: version, conns: conns, busy: busy})
	b.formerMu.Unlock()
}

// Former returns the versions the backend ran before its current one that
// still hold a request in flight or an open connection, and forgets those
// that hold nothing any more.
func (b *Backend) Former() []Former {
	b.formerMu.Lock()
	defer b.formerMu.Unlock()
	if len(b.former) == 0 {
		return nil
	}
	var out []Former
	kept := b.former[:0]
	for _, f := range b.former {
		if f.busy && b.inflight.Load() == 0 {
			f.busy = false
		}
		open := f.conns.Open()
		if !f.busy && open == 0 {
			continue
		}
		kept = append(kept, f)
		e := Former{Version: f.version, Conns: open}
		if f.busy {
			e.Inflight = b.inflight.Load()
		}
		out = append(out, e)
	}
	clear(b.former[len(kept):])
	b.former = kept
	return out
}

// AddTunnel registers an open Upgrade tunnel (a WebSocket, say) and how to
// close it politely (closeFn must not block, and may be called more than
// once); the tunnel counts as in flight until remove is called. A drain
// that reaches its timeout closes the tunnels left.
func (b *Backend) AddTunnel(closeFn func()) (remove func()) {
	key := new(int)
	b.tunnelMu.Lock()
	if b.tunnels == nil {
		b.tunnels = map[*int]func(){}
	}
	b.tunnels[key] = closeFn
	b.tunnelMu.Unlock()
	return func() {
		b.tunnelMu.Lock()
		delete(b.tunnels, key)
		b.tunnelMu.Unlock()
	}
}

// Tunnels returns the number of open Upgrade tunnels.
func (b *Backend) Tunnels() int {
	b.tunnelMu.Lock()
	defer b.tunnelMu.Unlock()
	return len(b.tunnels)
}

// closeTunnels asks every open tunnel to close. The close functions do
// not block and repeat calls cost nothing, so a drain past its timeout may
// call this on every check.
func (b *Backend) closeTunnels() {
	b.tunnelMu.Lock()
	fns := make([]func(), 0, len(b.tunnels))
	for _, f := range b.tunnels {
		fns = append(fns, f)
	}
	b.tunnelMu.Unlock()
	for _, f := range fns {
		f()
	}
}

func (b *Backend) retireConns(c *Conns) {
	b.retiredMu.Lock()
	b.retired = append(b.retired, c)
	b.retiredMu.Unlock()
	b.pruneRetired()
}

// pruneRetired forgets retired sets with nothing open.
func (b *Backend) pruneRetired() {
	b.retiredMu.Lock()
	defer b.retiredMu.Unlock()
	kept := b.retired[:0]
	for _, c := range b.retired {
		if c.Open() > 0 {
			kept = append(kept, c)
		}
	}
	for i := len(kept); i < len(b.retired); i++ {
		b.retired[i] = nil
	}
	b.retired = kept
}

func (b *Backend) retiredConns() []*Conns {
	b.retiredMu.Lock()
	defer b.retiredMu.Unlock()
	return append([]*Conns(nil), b.retired...)
}

// Name returns the backend's name, unique within its pool.
func (b *Backend) Name() string { return b.name }

// Address returns host:port.
func (b *Backend) Address() string { return b.spec.Load().address }

// Version returns the version label.
func (b *Backend) Version() string { return b.spec.Load().version }

// CookieVersion returns the version label and the counter of the affinity
// cookies issued for it, read together: a cookie naming the version is
// counted for that version even while the backend changes version.
func (b *Backend) CookieVersion() (string, *CookieCounter) {
	sp := b.spec.Load()
	return sp.version, sp.cookies
}

// Weight returns the configured weight (0–1000).
func (b *Backend) Weight() int { return b.spec.Load().weight }

// State returns the admin state.
func (b *Backend) State() State { return State(b.state.Load()) }

// Health returns the health verdict.
func (b *Backend) Health() Health { return Health(b.health.Load()) }

// Inflight returns the requests being served now.
func (b *Backend) Inflight() int64 { return b.inflight.Load() }

// Requests returns the requests finished since the backend joined.
func (b *Backend) Requests() uint64 { return b.requests.Load() }

// Errors returns the requests that failed on the backend's side.
func (b *Backend) Errors() uint64 { return b.errors.Load() }

// OpenConns returns the connections baton has open to the backend, those to
// a former address still in use included.
func (b *Backend) OpenConns() int {
	n := b.conns.Load().Open()
	for _, c := range b.retiredConns() {
		n += c.Open()
	}
	return n
}

// LastError returns the last failure recorded for the backend, or "".
func (b *Backend) LastError() string {
	if p := b.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// Conns returns the backend's connections.
func (b *Backend) Conns() *Conns { return b.conns.Load() }

// Pool returns the backend's pool.
func (b *Backend) Pool() *Pool { return b.pool }

// admits reports whether the backend takes new requests: admin state and
// health composed in one place.
func (b *Backend) admits() bool {
	return State(b.state.Load()) == Active && Health(b.health.Load()) == Up
}

// acquire counts a request in flight if the backend admits it. The order —
// count first, then check — is what lets a drain trust "inflight == 0": a
// request that raced with the drain either sees the new state and backs off,
// or is counted before the drain looks.
func (b *Backend) acquire() bool {
	b.inflight.Add(1)
	if b.admits() {
		return true
	}
	b.inflight.Add(-1)
	return false
}

// Counts are a backend's finished requests by status class, for one version.
type Counts struct {
	Version string
	// ByClass[0] counts requests that got no status from the backend
	// (refused, reset, timed out, invalid); ByClass[1..5] count 1xx..5xx.
	ByClass [6]atomic.Uint64
}

// Counts returns the backend's request counts for its current version.
func (b *Backend) Counts() *Counts { return b.counts.Load() }

// Stats returns the evidence of the backend's version.
func (b *Backend) Stats() *canary.VersionStats { return b.stats.Load() }

// NoteError records the reason of the latest failure, for the admin API.
func (b *Backend) NoteError(msg string) {
	b.lastErr.Store(&msg)
}

var epoch = time.Now()

// Nanotime returns a monotonic clock reading in nanoseconds.
func Nanotime() int64 { return int64(time.Since(epoch)) }

// Latency copies the backend's time-to-response-head histogram since it
// joined its pool, every answered request counted.
func (b *Backend) Latency(s *canary.Snapshot) { b.latency.Snapshot(s) }
