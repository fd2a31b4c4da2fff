// Package pool owns backends: their connections, admin state, health and
// in-flight counters, and picking one for a request — first the version (the
// canary's exact share), then a backend of that version by weight.
package pool

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/config"
)

// ErrNoBackend is returned by Pick when no backend of the pool admits new
// requests (all drained, ejected, unhealthy or at weight 0).
var ErrNoBackend = errors.New("no backend available")

// ErrUnknownBackend is returned for a backend name the pool does not have.
var ErrUnknownBackend = errors.New("unknown backend")

// view is an immutable snapshot of who gets traffic, rebuilt whenever
// membership, weights, state, health or the canary share change. The request
// path reads it with one atomic load.
type view struct {
	cfg      *config.Pool
	all      []*Backend // every member, for totals read without the lock
	stable   *group
	canary   *group // nil without a canary version
	canaryBP uint64 // canary share in basis points, 0..10000
}

// servedByOtherThan reports whether a backend other than b gets traffic.
func (v *view) servedByOtherThan(b *Backend) bool {
	for _, g := range [2]*group{v.stable, v.canary} {
		if g == nil {
			continue
		}
		for _, o := range g.sched {
			if o != b {
				return true
			}
		}
	}
	return false
}

// group is one version's backends that admit requests, in schedule order.
type group struct {
	version string
	sched   []*Backend
	next    atomic.Uint64
}

// Pool is one application's set of backends.
//
// It is safe for concurrent use: Pick and Release run on the request path
// without locks; configuration and state changes serialise on mu and publish
// a new view. Pool values must not be copied.
type Pool struct {
	name string
	log  zerolog.Logger

	view  atomic.Pointer[view]
	split atomic.Uint64 // requests that went through the version split

	mu       sync.Mutex // protects cfg, backends, order, stable, canary*, stats; serialises rebuilds
	cfg      *config.Pool
	backends map[string]*Backend
	order    []*Backend
	stable   string
	canaryV  string
	canaryPc float64
	stats    map[string]*canary.VersionStats // by version
	groups   atomic.Pointer[canary.Groups]
	// signatures of the current canary's evidence, and of the one before
	// (readable while its report is).
	signatures, prevSignatures atomic.Pointer[canary.Signatures]
	// leaving are backends removed from the pool that still finish
	// requests, oldest first; housekeeping enforces their drain timeout
	// until idle. Several may share a name: a backend added under the name
	// of one still finishing does not make the old one's requests vanish.
	leaving []*Backend
	retired bool
	// cookies count the affinity cookies issued per version (see
	// CookieCounter); kept apart from stats, which go with the last
	// backend of a version, while its cookies may outlive it.
	cookies map[string]*versionCookies

	budget  retryBudget
	started bool // guarded by mu

	tunnels tunnelCount
	tail    tail // the live tail: recent records and attached readers

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a pool configured from cfg. Its background work (health checks,
// connection expiry, drain deadlines) starts with Start.
func New(cfg config.Pool, log zerolog.Logger) *Pool {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		name:     cfg.Name,
		log:      log.With().Str("pool", cfg.Name).Logger(),
		backends: make(map[string]*Backend),
		stats:    make(map[string]*canary.VersionStats),
		cookies:  make(map[string]*versionCookies),
		ctx:      ctx,
		cancel:   cancel,
	}
	p.signatures.Store(canary.NewSignatures())
	p.Configure(cfg)
	return p
}

// Name returns the pool's name.
func (p *Pool) Name() string { return p.name }

// settings returns the pool's current configuration.
func (p *Pool) settings() *config.Pool { return p.view.Load().cfg }

// Settings returns the pool's current configuration. It must not be modified.
func (p *Pool) Settings() *config.Pool { return p.settings() }

// Configure applies a pool's configuration: new backends join (unchecked,
// so without traffic until a health check passes), known ones keep their
// connections, counters and state, and backends no longer listed stop
// receiving requests and are closed once idle.
func (p *Pool) Configure(cfg config.Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.configureLocked(cfg)
	p.rebuildLocked()
}

// Desired is what a pool should be: its configuration and each backend's
// admin state. Apply brings the pool there. The live registry changes a
// pool only this way — for an operator's or the judge's decision, a reload
// and a restart alike — so a restart reaches the state live operation did.
type Desired struct {
	Config config.Pool
	// Admin is each backend's admin state; a backend not named is Active.
	// Draining and Drained both mean out of rotation: a backend already out
	// stays as it is, one in rotation starts draining.
	Admin map[string]State
	// Proven names backends that, brought back into rotation, keep the
	// health their checks found while they stood by (a blue/green switch
	// has just checked them). Any other backend brought back waits for a
	// fresh check: an operator enables a server they may just have
	// upgraded.
	Proven map[string]bool
}

// Apply configures the pool as d says and puts every backend in its admin
// state. Backends coming into rotation do so first, unseen; then one view
// is published in which the backends going out already have no part (a
// rolled-back canary never serves stable traffic, a standby added never
// takes a request); only then are those taken out. A request that read
// the old view still finds its backends in rotation, so a switch from one
// set of backends to another never leaves a moment with none.
func (p *Pool) Apply(d Desired) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.configureLocked(d.Config)
	var out map[*Backend]State
	for _, b := range p.order {
		switch want := d.Admin[b.name]; want {
		case Draining, Drained, Ejected:
			if out == nil {
				out = make(map[*Backend]State)
			}
			out[b] = want
		default:
			p.enableLocked(b, d.Proven[b.name])
		}
	}
	p.rebuildExceptLocked(out)
	for _, b := range p.order {
		switch out[b] {
		case Draining, Drained:
			p.drainLocked(b)
		case Ejected:
			p.ejectLocked(b)
		}
	}
}

// configureLocked is Configure without publishing the view.
func (p *Pool) configureLocked(cfg config.Pool) {
	old := p.cfg
	c := cfg
	c.Backends = append([]config.Backend(nil), cfg.Backends...)
	p.cfg = &c
	if old == nil || !slices.Equal(old.Judge.RouteGroups, c.Judge.RouteGroups) {
		// New route groups mean new evidence: group indices changed.
		p.groups.Store(canary.NewGroups(c.Judge.RouteGroups))
		if old != nil {
			clear(p.stats)
			for _, b := range p.backends {
				b.stats.Store(p.statsLocked(b.spec.Load().version))
			}
		}
	}

	if old == nil || old.StableVersion != c.StableVersion {
		p.stable = c.StableVersion
	}
	if old == nil || old.Canary.Version != c.Canary.Version || old.Canary.Weight != c.Canary.Weight {
		p.canaryV, p.canaryPc = c.Canary.Version, c.Canary.Weight
	}
	if old != nil && c.Canary.Version != "" && old.Canary.Version != c.Canary.Version {
		p.freshEvidenceLocked()
	}
	if old != nil && old.Affinity.MaxAge != c.Affinity.MaxAge {
		p.resizeCookiesLocked()
	}

	seen := make(map[string]bool, len(c.Backends))
	order := make([]*Backend, 0, len(c.Backends))
	for _, bc := range c.Backends {
		seen[bc.Name] = true
		sp := &spec{address: bc.Address, version: bc.Version, weight: bc.WeightOf(), cookies: p.cookiesLocked(bc.Version)}
		b, ok := p.backends[bc.Name]
		if !ok {
			b = p.newBackendLocked(bc.Name, sp)
			if old != nil {
				p.logb(p.log.Info(), b).Str("address", sp.address).Int("weight", sp.weight).
					Msg("backend joined; it gets traffic once a health check passes")
			}
		} else {
			p.updateBackendLocked(b, sp)
		}
		order = append(order, b)
	}
	for name, b := range p.backends {
		if !seen[name] {
			p.removeLocked(b)
		}
	}
	p.order = order
	p.pruneStatsLocked()
}

// statsLocked returns the pool's evidence for version, creating it.
func (p *Pool) statsLocked(version string) *canary.VersionStats {
	vs := p.stats[version]
	if vs == nil {
		vs = canary.NewVersionStats(p.name, version)
		p.stats[version] = vs
	}
	return vs
}

// pruneStatsLocked forgets versions no backend runs and that are neither
// stable nor canary, so evidence stays bounded across releases.
func (p *Pool) pruneStatsLocked() {
	for v := range p.stats {
		if v == p.stable || v == p.canaryV {
			continue
		}
		used := false
		for _, b := range p.order {
			if b.spec.Load().version == v {
				used = true
				break
			}
		}
		if !used {
			delete(p.stats, v)
		}
	}
}

// Groups returns the pool's route groups.
func (p *Pool) Groups() *canary.Groups { return p.groups.Load() }

// Signatures returns the failure signatures of the pool's current canary
// (since the last one started).
func (p *Pool) Signatures() *canary.Signatures { return p.signatures.Load() }

// PreviousSignatures returns those of the canary before (nil: none).
func (p *Pool) PreviousSignatures() *canary.Signatures { return p.prevSignatures.Load() }

// freshEvidenceLocked starts the tables that fill up — automatic route
// groups, error signatures — afresh for a new canary, so that one release's
// paths and failures never crowd out the next one's. The previous
// signatures stay readable; counters and the latency metrics go on.
func (p *Pool) freshEvidenceLocked() {
	p.prevSignatures.Store(p.signatures.Load())
	p.signatures.Store(canary.NewSignatures())
	for _, vs := range p.stats {
		vs.ResetClients()
	}
	if len(p.cfg.Judge.RouteGroups) == 0 {
		p.groups.Store(canary.NewGroups(nil))
		for _, vs := range p.stats {
			vs.ResetGroups()
		}
	}
}

// StatsOf returns the evidence of one version (nil: none).
func (p *Pool) StatsOf(version string) *canary.VersionStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats[version]
}

// VersionStats returns the evidence of every version the pool runs.
func (p *Pool) VersionStats() []*canary.VersionStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*canary.VersionStats, 0, len(p.stats))
	for _, vs := range p.stats {
		out = append(out, vs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version() < out[j].Version() })
	return out
}

func (p *Pool) newBackendLocked(name string, sp *spec) *Backend {
	b := &Backend{
		pool:     p,
		name:     name,
		checkNow: make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	b.spec.Store(sp)
	b.conns.Store(p.newConns(sp.address))
	b.counts.Store(&Counts{Version: sp.version})
	b.stats.Store(p.statsLocked(sp.version))
	b.health.Store(int32(Unknown))
	p.backends[name] = b
	if p.running() {
		p.startHealth(b)
	}
	return b
}

func (p *Pool) newConns(addr string) *Conns {
	return NewConns(addr, p.cfg.Timeouts.Connect, p.cfg.Connections.IdleTimeout, p.cfg.Connections.Max)
}

func (p *Pool) updateBackendLocked(b *Backend, sp *spec) {
	old := b.spec.Load()
	if *old == *sp && b.conns.Load().dialTimeout == p.cfg.Timeouts.Connect &&
		b.conns.Load().idleTimeout == p.cfg.Connections.IdleTimeout && b.conns.Load().max == p.cfg.Connections.Max {
		return
	}
	b.spec.Store(sp)
	if !old.sameAs(sp) {
		p.logb(p.log.Info(), b).Str("address", sp.address).Int("weight", sp.weight).
			Str("was_version", old.version).Str("was_address", old.address).Int("was_weight", old.weight).
			Msg("backend changed")
	}
	if old.version != sp.version {
		b.counts.Store(&Counts{Version: sp.version})
		b.stats.Store(p.statsLocked(sp.version))
	}
	if old.address != sp.address {
		// A new address is a new server: it must pass a check first.
		b.resetHealthLocked()
	}
	relabelled := old.version != sp.version
	c := b.conns.Load()
	if old.address == sp.address && !relabelled && c.dialTimeout == p.cfg.Timeouts.Connect &&
		c.idleTimeout == p.cfg.Connections.IdleTimeout && c.max == p.cfg.Connections.Max {
		return // a weight change keeps the pooled connections
	}
	// A new version gets a new set too: the connections of the old one
	// close as their requests end, and until then they are the old
	// version's, not the new one's.
	prev := b.conns.Swap(p.newConns(sp.address))
	if State(b.state.Load()) != Active {
		b.conns.Load().reuse.Store(false)
	}
	prev.Retire()
	// Requests still using the old set keep it open; a drain must see and,
	// at its timeout, close those connections too.
	b.retireConns(prev)
	if relabelled {
		// Read after the new spec is stored: a request picked under the
		// old one is counted in flight by now (acquire counts first).
		b.noteFormer(old.version, prev, b.inflight.Load() > 0)
	}
}

func (p *Pool) removeLocked(b *Backend) {
	delete(p.backends, b.name)
	if State(b.state.Load()) != Draining {
		b.drainStart.Store(Nanotime())
	}
	b.state.Store(int32(Draining))
	b.conns.Load().Retire()
	close(b.stop)
	p.leaving = append(p.leaving, b)
	p.logb(p.log.Info(), b).Msg("backend removed from the pool; its in-flight requests finish")
}

// logb starts a log event about b with its pool, name and version.
func (p *Pool) logb(ev *zerolog.Event, b *Backend) *zerolog.Event {
	return ev.Str("backend", b.name).Str("version", b.spec.Load().version)
}

// rebuildLocked publishes a new view from the current members. The canary
// version's backends form one group; every other backend serves the rest of
// the traffic by weight — the stable version's, and during a rolling upgrade
// after a promotion, the previous version's servers not yet upgraded.
func (p *Pool) rebuildLocked() { p.rebuildExceptLocked(nil) }

// rebuildExceptLocked is rebuildLocked leaving out the backends in out,
// which are about to leave rotation.
func (p *Pool) rebuildExceptLocked(out map[*Backend]State) {
	v := &view{cfg: p.cfg, all: append([]*Backend(nil), p.order...)}
	canary := ""
	if p.canaryV != "" && p.canaryV != p.stable {
		canary = p.canaryV
	}
	v.stable = p.groupLocked(func(ver string) bool { return ver != canary }, p.stable, out)
	if canary != "" {
		v.canary = p.groupLocked(func(ver string) bool { return ver == canary }, canary, out)
		v.canaryBP = uint64(p.canaryPc*100 + 0.5)
	}
	p.view.Store(v)
}

func (p *Pool) groupLocked(member func(version string) bool, version string, out map[*Backend]State) *group {
	g := &group{version: version}
	var members []*Backend
	var weights []int
	for _, b := range p.order {
		sp := b.spec.Load()
		if _, leaving := out[b]; leaving || !member(sp.version) || !b.admits() {
			continue
		}
		members = append(members, b)
		weights = append(weights, sp.weight)
	}
	g.sched = buildSchedule(members, weights)
	return g
}

// rebuild publishes a new view after a state or health change.
func (p *Pool) rebuild() {
	p.mu.Lock()
	p.rebuildLocked()
	p.mu.Unlock()
}

// Pick chooses a backend for a request and counts it in flight; the caller
// must call Release on it exactly once. exclude (may be nil) is a backend that
// already failed this request: another is preferred, but exclude is returned
// when it is the only one left.
//
// Pick takes no lock and does not allocate.
func (p *Pool) Pick(exclude *Backend) (*Backend, error) { return p.PickVersion(exclude, nil, false) }

// PickVersion is Pick for a client that asks for a version: its affinity
// cookie (sticky) or a tester's forced choice (forced). A sticky client keeps
// the canary while it takes traffic, and the stable version otherwise; a
// forced one gets the version even at a 0 % share. When the version cannot
// serve, the request goes where the split sends it, without an error.
// Sticky and forced requests do not advance the split, so the share holds
// for everyone else.
func (p *Pool) PickVersion(exclude *Backend, version []byte, forced bool) (*Backend, error) {
	v := p.view.Load()
	b, err := p.pickFrom(v, exclude, version, forced)
	if err != nil {
		if nv := p.view.Load(); nv != v {
			// Its backends left rotation after the view was read: the
			// view published before they did has the ones that serve.
			return p.pickFrom(nv, exclude, version, forced)
		}
	}
	return b, err
}

func (p *Pool) pickFrom(v *view, exclude *Backend, version []byte, forced bool) (*Backend, error) {
	first, second := v.stable, v.canary
	switch {
	case second == nil:
	case len(version) > 0 && string(version) == second.version && (forced || v.canaryBP > 0) && len(second.sched) > 0:
		first, second = second, first
	case len(version) > 0 && string(version) != second.version:
		second = nil // a stable client stays on stable
	case v.canaryBP > 0:
		// Exact share: request n goes to the canary when floor(n·share)
		// steps up, so after N requests the canary had floor(N·share).
		n := p.split.Add(1)
		if n*v.canaryBP/10000 != (n-1)*v.canaryBP/10000 {
			first, second = second, first
		}
	default:
		second = nil
	}
	if b := first.pick(v.cfg.Balance, exclude); b != nil {
		return b, nil
	}
	if second != nil {
		if b := second.pick(v.cfg.Balance, exclude); b != nil {
			return b, nil
		}
	} else if v.canary != nil && first != v.canary {
		// The canary at 0 % still serves when nothing else can.
		if b := v.canary.pick(v.cfg.Balance, exclude); b != nil {
			return b, nil
		}
	}
	if exclude != nil && exclude.acquire() {
		return exclude, nil
	}
	return nil, ErrNoBackend
}

// HasCanary reports whether the pool has a canary version, at any share,
// read without a lock for the request path.
func (p *Pool) HasCanary() bool { return p.view.Load().canary != nil }

// CanaryActive returns the canary version when one takes traffic, read
// without a lock for the request path.
func (p *Pool) CanaryActive() string {
	v := p.view.Load()
	if v.canary == nil || v.canaryBP == 0 {
		return ""
	}
	return v.canary.version
}

func (g *group) pick(balance string, exclude *Backend) *Backend {
	n := uint64(len(g.sched))
	if n == 0 {
		return nil
	}
	if balance == config.BalanceLeastInflight {
		return g.pickLeast(exclude)
	}
	tries := min(n, 64)
	for range tries {
		b := g.sched[(g.next.Add(1)-1)%n]
		if b != exclude && b.acquire() {
			return b
		}
	}
	return nil
}

// pickLeast is the power of two choices, weight-aware: two draws from the
// weighted schedule, and the one with fewer requests in flight per unit of
// weight wins.
func (g *group) pickLeast(exclude *Backend) *Backend {
	n := uint64(len(g.sched))
	for range 4 {
		a := g.sched[rand.Uint64N(n)]
		c := g.sched[rand.Uint64N(n)]
		if a == exclude {
			a = c
		}
		if c == exclude {
			c = a
		}
		if a == exclude {
			continue
		}
		if a != c && c.inflight.Load()*int64(a.Weight()) < a.inflight.Load()*int64(c.Weight()) {
			a = c
		}
		if a.acquire() {
			return a
		}
	}
	return nil
}

// HasAvailable reports whether some backend of the pool takes new requests.
func (p *Pool) HasAvailable() bool {
	v := p.view.Load()
	return len(v.stable.sched) > 0 || (v.canary != nil && len(v.canary.sched) > 0)
}

// Backend returns the named backend, or nil.
func (p *Pool) Backend(name string) *Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backends[name]
}

// Backends returns the pool's backends in configuration order.
func (p *Pool) Backends() []*Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*Backend(nil), p.order...)
}

// StableVersion returns the version that gets the traffic the canary does not.
func (p *Pool) StableVersion() string {
	return p.view.Load().stable.version // lock-free: the request path asks
}

// Canary returns the canary version and its share in percent ("" and 0
// without a canary).
func (p *Pool) Canary() (version string, percent float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.canaryV, p.canaryPc
}

// Split returns how many requests went through the version split with a
// canary present.
func (p *Pool) Split() uint64 { return p.split.Load() }

func (p *Pool) lookup(name string) (*Backend, error) {
	b := p.backends[name]
	if b == nil {
		return nil, fmt.Errorf("%w %q in pool %q", ErrUnknownBackend, name, p.name)
	}
	return b, nil
}

// Drain stops new requests to the backend and closes its idle connections.
// In-flight requests and streams finish, up to the pool's drain timeout.
// Draining a backend that is draining or drained changes nothing.
func (p *Pool) Drain(name string) (*Backend, error) {
	return p.change(name, func(b *Backend) { p.drainLocked(b) })
}

// Eject takes the backend out of rotation at once; in-flight requests finish.
func (p *Pool) Eject(name string) (*Backend, error) {
	return p.change(name, func(b *Backend) { p.ejectLocked(b) })
}

// Enable puts the backend back into rotation. It receives requests once a
// health check passes, which is run at once.
func (p *Pool) Enable(name string) (*Backend, error) {
	return p.change(name, func(b *Backend) { p.enableLocked(b, false) })
}

// Activate puts a drained or ejected backend back into rotation keeping the
// health its checks found while it stood by: a healthy standby takes
// traffic at once, where Enable waits for a fresh check.
func (p *Pool) Activate(name string) (*Backend, error) {
	return p.change(name, func(b *Backend) { p.enableLocked(b, true) })
}

// change applies one backend's admin transition and publishes the view.
func (p *Pool) change(name string, to func(*Backend)) (*Backend, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b, err := p.lookup(name)
	if err != nil {
		return nil, err
	}
	to(b)
	p.rebuildLocked()
	return b, nil
}

// drainLocked starts draining b unless it is out of rotation by a drain.
func (p *Pool) drainLocked(b *Backend) {
	switch State(b.state.Load()) {
	case Draining, Drained:
		return
	}
	b.drainStart.Store(Nanotime())
	b.state.Store(int32(Draining))
	b.conns.Load().SetReuse(false)
	p.logb(p.log.Info(), b).Int64("inflight", b.inflight.Load()).Msg("drain started")
}

// ejectLocked takes b out of rotation at once.
func (p *Pool) ejectLocked(b *Backend) {
	if State(b.state.Load()) == Ejected {
		return
	}
	b.state.Store(int32(Ejected))
	b.conns.Load().SetReuse(false)
	p.logb(p.log.Info(), b).Msg("backend ejected by operator")
}

// enableLocked puts b back into rotation; keepHealth keeps what its checks
// found while it stood by, else it waits for a fresh check, run at once.
func (p *Pool) enableLocked(b *Backend, keepHealth bool) {
	if State(b.state.Load()) == Active {
		return
	}
	if !keepHealth {
		b.resetHealthLocked()
	}
	b.state.Store(int32(Active))
	b.conns.Load().SetReuse(true)
	b.kick()
	if keepHealth {
		p.logb(p.log.Info(), b).Str("health", Health(b.health.Load()).String()).Msg("backend activated")
	} else {
		p.logb(p.log.Info(), b).Msg("backend enabled; it gets traffic once a health check passes")
	}
}

// DrainStatus is what a drain is still waiting for.
type DrainStatus struct {
	Inflight int64
	Conns    int
}

// Idle reports whether nothing is left.
func (s DrainStatus) Idle() bool { return s.Inflight == 0 && s.Conns == 0 }

func (s DrainStatus) String() string {
	return fmt.Sprintf("%d request(s) in flight, %d open connection(s)", s.Inflight, s.Conns)
}

// Status returns what the backend still has in flight and open.
func (b *Backend) Status() DrainStatus {
	return DrainStatus{Inflight: b.inflight.Load(), Conns: b.OpenConns()}
}

// ErrDrainCancelled is returned by WaitDrained when the backend was enabled
// or ejected while the wait went on: it was not drained.
var ErrDrainCancelled = errors.New("the drain was cancelled: the backend was enabled or ejected meanwhile")

// WaitDrained waits until a draining backend has no request in flight and no
// open connection from baton, then marks it drained. When the pool's drain
// timeout passes first, the backend's remaining connections are closed (long
// streams end) and the wait goes on until they are gone. It returns early
// with ctx's error and what is still open; the drain stays in force. If the
// backend is enabled or ejected meanwhile it returns ErrDrainCancelled.
func (b *Backend) WaitDrained(ctx context.Context) (DrainStatus, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if st, done := b.pool.checkDrain(b); done {
			if s := b.State(); s != Drained {
				return st, ErrDrainCancelled
			}
			return st, nil
		}
		select {
		case <-ctx.Done():
			return b.Status(), ctx.Err()
		case <-t.C:
		}
	}
}

// checkDrain advances a drain: enforces the drain timeout and flips the state
// to drained once idle. done is true when the backend is drained, or no longer
// draining at all.
func (p *Pool) checkDrain(b *Backend) (DrainStatus, bool) {
	switch State(b.state.Load()) {
	case Drained:
		return b.Status(), true
	case Draining:
	default:
		return b.Status(), true
	}
	c := b.conns.Load()
	c.CloseIdle()
	b.pruneRetired()
	st := b.Status()
	if st.Idle() {
		p.mu.Lock()
		p.forgetLeavingLocked(b) // a removed backend is gone once idle
		p.mu.Unlock()
		if b.state.CompareAndSwap(int32(Draining), int32(Drained)) {
			p.logb(p.log.Info(), b).Dur("took", time.Duration(Nanotime()-b.drainStart.Load())).Msg("drain finished")
		}
		return st, true
	}
	if time.Duration(Nanotime()-b.drainStart.Load()) >= p.settings().DrainTimeout {
		p.logb(p.log.Warn(), b).Stringer("open", st).
			Msg("drain timeout reached; closing the backend's remaining connections")
		// Tunnels first: each is told it is going away (a WebSocket
		// client gets 1001) before its backend connection is cut.
		b.closeTunnels()
		c.CloseAll()
		for _, rc := range b.retiredConns() {
			rc.CloseAll()
		}
	}
	return st, false
}

// Start begins the pool's background work: one health-check loop per backend
// and a housekeeping tick. Close stops it.
func (p *Pool) Start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running() {
		return
	}
	p.started = true
	p.wg.Add(1)
	go p.housekeeping()
	for _, b := range p.order {
		p.startHealth(b)
	}
}

func (p *Pool) running() bool { return p.started }

// Retire takes a pool that left the config out of service: its backends get
// no new requests and their connections close as their in-flight requests
// and streams end. Background work stops.
func (p *Pool) Retire() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		p.removeLocked(b)
	}
	p.order = nil
	p.retired = true
	p.rebuildLocked()
	p.tail.closeAll() // its tails would otherwise wait for records that never come
	if !p.running() {
		p.cancel()
	}
}

// Leaving returns the backend of that name removed last from the pool
// that still finishes requests, or nil.
func (p *Pool) Leaving(name string) *Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := len(p.leaving) - 1; i >= 0; i-- {
		if p.leaving[i].name == name {
			return p.leaving[i]
		}
	}
	return nil
}

// forgetLeavingLocked drops b from the backends leaving, once it is idle
// (or its drain timeout closed what it had).
func (p *Pool) forgetLeavingLocked(b *Backend) {
	if i := slices.Index(p.leaving, b); i >= 0 {
		p.leaving = slices.Delete(p.leaving, i, i+1)
	}
}

// Close stops the pool's background work and closes every connection.
func (p *Pool) Close() {
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.backends {
		b.conns.Load().Retire()
		b.conns.Load().CloseAll()
	}
}

// housekeeping runs once a second: idle connection expiry, drain progress,
// and the retry budget's window.
func (p *Pool) housekeeping() {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
		now := Nanotime()
		for _, b := range p.Backends() {
			b.conns.Load().CloseExpired(now)
			if b.State() == Draining {
				p.checkDrain(b)
			}
		}
		for _, b := range p.LeavingBackends() {
			if _, done := p.checkDrain(b); done {
				p.mu.Lock()
				p.forgetLeavingLocked(b)
				p.mu.Unlock()
			}
		}
		p.budget.tick(p.totalRequests())
		p.pruneCookies(time.Now())
		p.mu.Lock()
		over := p.retired && len(p.leaving) == 0
		p.mu.Unlock()
		if over {
			p.cancel() // a retired pool's last backend is gone
			return
		}
	}
}

// LeavingBackends returns every backend removed from the pool that still
// finishes requests, oldest first, those sharing a name included.
func (p *Pool) LeavingBackends() []*Backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.leaving)
}

func (p *Pool) totalRequests() int64 {
	var n uint64
	for _, b := range p.view.Load().all {
		n += b.requests.Load()
	}
	return int64(n)
}

// AllowRetry reports whether one more retry fits the pool's retry budget
// (retries at most the configured share of requests over the last 10 s, with
// 10 always allowed) and, if so, counts it.
func (p *Pool) AllowRetry() bool {
	return p.budget.allow(p.totalRequests(), p.settings().Retries.Budget())
}

// Retries returns how many retries the pool made.
func (p *Pool) Retries() int64 { return p.budget.retries.Load() }

// retryBudget keeps per-second totals of requests and retries for 10 s.
type retryBudget struct {
	retries atomic.Int64
	mu      sync.Mutex // protects ring and pos
	ring    [10][2]int64
	pos     int
}

func (r *retryBudget) tick(requests int64) {
	r.mu.Lock()
	r.pos = (r.pos + 1) % len(r.ring)
	r.ring[r.pos] = [2]int64{requests, r.retries.Load()}
	r.mu.Unlock()
}

func (r *retryBudget) allow(requests int64, percent int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	oldest := r.ring[(r.pos+1)%len(r.ring)]
	reqs := requests - oldest[0]
	used := r.retries.Load() - oldest[1]
	if used+1 > max(10, reqs*int64(percent)/100) {
		return false
	}
	r.retries.Add(1)
	return true
}

// SortedVersions returns the versions present in the pool, stable first.
func (p *Pool) SortedVersions() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	set := map[string]bool{}
	for _, b := range p.order {
		set[b.spec.Load().version] = true
	}
	out := make([]string, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool {
		if (out[i] == p.stable) != (out[j] == p.stable) {
			return out[i] == p.stable
		}
		return out[i] < out[j]
	})
	return out
}
