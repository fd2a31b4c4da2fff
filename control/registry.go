// Package control is the live registry: it turns the config file and the
// runtime overlay into running pools and a routing table, and is the one
// place where changes — reloads and operator or judge decisions — are
// applied, in order, and persisted before they are acknowledged.
package control

import (
	"context"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
	"github.com/baton-lb/baton/proxy"
)

// ErrUnknownPool is returned for a pool name the config does not have.
var ErrUnknownPool = errors.New("unknown pool")

// Registry holds the running pools, the routing table and the runtime
// overlay.
//
// It is safe for concurrent use; changes are serialised on mu. The request
// path never takes mu: it reads the routing table the proxy holds and the
// pools' own lock-free views.
type Registry struct {
	log       zerolog.Logger
	stateFile string

	// Lock order: reloadMu, then cookieMu, then mu, then the leaf locks —
	// judges.mu, history.mu and the pools' own (taken inside pool.Pool's
	// methods).
	// Nothing takes mu while holding a leaf lock, and the request path
	// takes none of these.
	//
	// mu protects cfg, state, pools, retired, table, onTable, started, generation,
	// events, refusals, gone, auditFile, refusedFile, baselines and
	// switchBase, and serialises every decision and its write to the
	// state file.
	mu    sync.Mutex
	cfg   *config.Config
	state *State
	pools map[string]*pool.Pool
	// retired are pools a reload removed, by name, kept while their
	// affinity cookies may be valid or a request still runs on one of
	// their backends: a pool the file brings back takes their cookie
	// counts, and what holds a version counts what still runs there (the
	// cascade's "gone" must not forget them).
	retired    map[string]*pool.Pool
	table      *proxy.Table
	onTable    func(*proxy.Table)
	started    bool
	generation int64
	events     []Event // the audit log of changes, oldest first, at most maxEvents
	refusals   []Event // refused requests, oldest first, at most maxEvents
	gone       *goneBackends
	auditFile  *auditFile // changes
	// refusedFile logs refused requests apart from the changes.
	refusedFile *auditFile
	baselines   map[string]*baseline

	// shared: the cluster's etcd, when the config has one (nil alone).
	shared *shared

	judges judges // its own lock (judges.mu); owned by the judge loop
	// switchPublished and switchWaits are the judge loop's alone: when
	// each pool's switch figures were last published, and why its guards
	// wait, in a cluster.
	switchPublished map[string]time.Time
	switchWaits     map[string]string
	// forgetPending: pools whose ended canary's evidence the judge loop
	// is still to delete from etcd (its alone).
	forgetPending map[string]bool
	// switchBase: each switched pool's new-version evidence when its watch
	// began (under mu).
	switchBase map[string]*canary.VersionSnapshot
	history    histories // per-version time series, for the dashboard (its own lock)

	cookieMu sync.Mutex   // protects cookieW's last and done; serialises writes of the cookie file
	cookieW  cookieWriter // the affinity cookies' counts on disk (see cookies.go)
	// countsUnknown: until when no version's cookies can be told (set
	// once in New, read-only after; see restoreCookies).
	countsUnknown time.Time
	known         knownVersions      // the versions seen per pool (its own lock)
	stop          context.CancelFunc // ends the judge loop and the history sampler; set once by Start
	wg            sync.WaitGroup

	// reloadMu makes loading a file and applying it one step, so two
	// reloads (an event and a SIGHUP) cannot apply an older file last; it
	// is taken before mu (Reload, ReloadFile, Freeze).
	reloadMu sync.Mutex

	// frozen: a new process is taking over; no decision is written (it
	// has read the state file) and the judge does not act.
	frozen atomic.Bool

	// recovered: this process started after moving a corrupt state file
	// aside (serve --state-recover).
	recovered atomic.Bool

	reloadsOK     atomic.Int64
	reloadsFailed atomic.Int64
	lastReload    atomic.Int64 // unix seconds of the last successful load
}

// New builds pools and the routing table for cfg with the overlay read from
// stateFile (none when empty). An unreadable or corrupt state file is an
// error: baton does not start by forgetting decisions. Nothing runs until
// Start.
func New(cfg *config.Config, stateFile string, log zerolog.Logger) (*Registry, error) {
	// Whether a process ran before with this state file, before anything
	// writes it: its cookie counts must then be found beside it.
	stateExisted := false
	if stateFile != "" {
		_, err := os.Stat(stateFile)
		stateExisted = err == nil
	}
	st, fileRev, warning, err := loadStateAt(stateFile)
	if err != nil {
		return nil, err
	}
	if warning != "" {
		log.Warn().Msg(warning)
	}
	var sh *shared
	if cfg.Cluster.Enabled() {
		if sh, st, err = openShared(cfg, st, fileRev, log); err != nil {
			return nil, err
		}
	}
	audit, changes, err := openAudit(AuditPath(stateFile), false)
	if err != nil {
		if sh != nil {
			sh.store.Close()
		}
		return nil, err
	}
	refusedLog, refusals, err := openAudit(RefusedPath(stateFile), true)
	if err != nil {
		audit.close()
		if sh != nil {
			sh.store.Close()
		}
		return nil, err
	}
	r := &Registry{log: log, stateFile: stateFile, cfg: cfg, state: st, pools: make(map[string]*pool.Pool), gone: &goneBackends{},
		baselines: make(map[string]*baseline), judges: judges{by: map[string]*poolJudge{}},
		switchPublished: map[string]time.Time{}, switchWaits: map[string]string{}, forgetPending: map[string]bool{}, switchBase: map[string]*canary.VersionSnapshot{},
		auditFile: audit, refusedFile: refusedLog, events: changes, refusals: refusals, shared: sh}
	r.cookieW = cookieWriter{path: AffinityPath(stateFile), kick: make(chan struct{}, 1)}
	if sh != nil {
		// The base of this instance's commits, and the local copy of the
		// cluster's state: as etcd has it, before pruneLocked drops what
		// this config lacks (see shared.base).
		sh.base = st.clone()
		if err := saveStateAt(stateFile, sh.base, sh.rev); err != nil {
			log.Error().Err(err).Msg("could not keep the cluster's desired state in the state file")
		}
		if sh.deleted != "" {
			r.recordLocked(Event{Actor: "cluster", Action: "cluster_state_deleted", Detail: sh.deleted})
		}
	}
	r.pruneLocked()
	for _, pc := range cfg.Pools {
		// A restart reaches the pools the way a live decision does: from
		// the desired state, through Apply. A backend that was draining
		// when baton stopped comes back drained once it is seen idle:
		// nothing of the old process is in flight.
		d := desired(pc, st.Pools[pc.Name])
		p := pool.New(d.Config, log)
		p.Apply(d)
		r.pools[pc.Name] = p
	}
	t, err := proxy.BuildTable(cfg, r.pools)
	if err != nil {
		audit.close()
		return nil, err
	}
	// Before any request: the cookies the process before gave out.
	now := time.Now()
	r.restoreCookies(cfg.Server.ShutdownTimeout, stateExisted, now)
	for _, p := range r.pools {
		r.noteKnownLocked(p, now)
	}
	_, r.cookieW.last = r.cookieRecord(now)
	r.table = t
	r.generation = 1
	r.reloadsOK.Add(1)
	r.lastReload.Store(time.Now().Unix())
	if n := countDecisions(r.state); n > 0 {
		log.Info().Str("state_file", stateFile).Int("decisions", n).Msg("runtime decisions restored from the state file")
	}
	return r, nil
}

// OnTable registers the function that receives every new routing table
// (the proxy's SetTable). It is called with the current one at once.
func (r *Registry) OnTable(f func(*proxy.Table)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onTable = f
	f(r.table)
}

// Table returns the routing table for the current config.
func (r *Registry) Table() *proxy.Table {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.table
}

// Config returns the config in force.
func (r *Registry) Config() *config.Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cfg
}

// Generation counts the configs applied since start, the first included.
func (r *Registry) Generation() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.generation
}

// NoteRecovered records that the state file was corrupt and moved aside to
// moved before this registry started from the config alone: it is audited
// and shown in /metrics until baton restarts.
func (r *Registry) NoteRecovered(moved string) {
	r.recovered.Store(true)
	r.Audit(Event{Actor: "baton", Action: "state_recover",
		Detail: "the state file was corrupt: moved to " + moved + "; runtime decisions start from the config alone"})
}

// Recovered reports whether this process started after moving a corrupt
// state file aside.
func (r *Registry) Recovered() bool { return r.recovered.Load() }

// Reloads returns how many config loads succeeded and failed, and when the
// last one succeeded (unix seconds).
func (r *Registry) Reloads() (ok, failed, last int64) {
	return r.reloadsOK.Load(), r.reloadsFailed.Load(), r.lastReload.Load()
}

// Pool returns the named pool, or nil.
func (r *Registry) Pool(name string) *pool.Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pools[name]
}

// Pools returns the running pools in config order.
func (r *Registry) Pools() []*pool.Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*pool.Pool, 0, len(r.pools))
	for _, pc := range r.cfg.Pools {
		if p := r.pools[pc.Name]; p != nil {
			out = append(out, p)
		}
	}
	return out
}

// Backend returns the named backend of the named pool.
func (r *Registry) Backend(poolName, name string) (*pool.Backend, error) {
	p := r.Pool(poolName)
	if p == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	b := p.Backend(name)
	if b == nil {
		return nil, fmt.Errorf("%w %q in pool %q", pool.ErrUnknownBackend, name, poolName)
	}
	return b, nil
}

// Start begins health checking and housekeeping in every pool, and the
// judge of canaries.
func (r *Registry) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started {
		return
	}
	r.started = true
	for _, p := range r.pools {
		p.Start()
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.runJudges(ctx)
	}()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.runHistory(ctx)
	}()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.runCookies(ctx)
	}()
	if r.shared != nil {
		r.startShared(ctx)
	}
}

// Close stops the judge, every pool's background work, and closes backend
// connections.
func (r *Registry) Close() {
	r.mu.Lock()
	stop := r.stop
	r.mu.Unlock()
	if stop != nil {
		stop()
		r.wg.Wait()
	}
	// Requests have finished (the server shut down first): the counts are
	// exact, and the next start needs no margin.
	r.stopCookies(true)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pools {
		p.Close()
	}
	r.auditFile.close()
	r.auditFile = nil
	r.refusedFile.close()
	r.refusedFile = nil
	if r.shared != nil {
		r.shared.store.Close()
	}
}

// WaitHealthy waits until every pool has a backend that takes requests, or
// ctx ends. It reports whether all pools are ready.
func (r *Registry) WaitHealthy(ctx context.Context) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ready := true
		for _, p := range r.Pools() {
			if !p.HasAvailable() {
				ready = false
				break
			}
		}
		if ready {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// Freeze stops (true) or resumes (false) every decision: while a new
// baton process takes over, the state file it read must stay what it read;
// a process taking over is frozen until it is ready. Admin actions answer
// ErrUpgrading; the judge and reloads wait. A decision already being
// written when Freeze(true) is called finishes first (it holds the lock),
// so the new process reads it. Resuming reads the state file again: what
// it holds then is what this process continues from (a handover that
// failed half-way must not be undone by this process's older memory).
func (r *Registry) Freeze(on bool) {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	r.mu.Lock()
	was := r.frozen.Load()
	r.frozen.Store(on)
	if r.shared != nil {
		// A frozen process does not act on verdicts: it gives the judge's
		// lead to another instance meanwhile (its report goes on, for
		// the drains).
		r.shared.member.Stand(!on)
	}
	if was && !on {
		r.rereadStateLocked()
	}
	r.mu.Unlock()
	switch {
	case was && !on:
		r.resumeCookies()
	case on && !was:
		// The process taking over reads the cookies' counts as it starts;
		// this one writes no more unless the handover fails. (The counts
		// are read under mu, so not while holding it.)
		r.stopCookies(false)
	}
}

// rereadStateLocked makes the state file's content the overlay in force,
// when it differs from what this process holds.
func (r *Registry) rereadStateLocked() {
	if r.stateFile == "" || r.shared != nil {
		return // in a cluster, the watch of etcd keeps the state current
	}
	st, warning, err := loadState(r.stateFile)
	if err != nil {
		r.log.Error().Err(err).Msg("could not read the state file again after the handover; this process keeps the decisions it knows")
		return
	}
	if warning != "" {
		r.log.Warn().Msg(warning)
	}
	reconcile(st, r.cfg, r.log, r.gone)
	if reflect.DeepEqual(st, r.state) {
		return
	}
	r.log.Warn().Str("state_file", r.stateFile).Msg("the state file changed during the handover; its decisions apply now")
	r.state = st
	for _, p := range r.pools {
		r.applyPoolLocked(p)
	}
}

// ReloadFile loads the config at path and applies it. A file that does not
// load or validate changes nothing: its errors are logged and returned, and
// the failure is counted. While frozen it does nothing and returns
// ErrUpgrading.
func (r *Registry) ReloadFile(path string) error {
	r.reloadMu.Lock()
	defer r.reloadMu.Unlock()
	if r.frozen.Load() { // checked under reloadMu, which Freeze takes
		r.log.Info().Str("file", path).Msg("config reload skipped: a baton process is handing over to another, which reads the file itself")
		return ErrUpgrading
	}
	cfg, err := config.Load(path)
	if err != nil {
		r.reloadsFailed.Add(1)
		errs := config.Errors(err)
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		r.log.Error().Str("file", path).Strs("errors", msgs).
			Msg("config reload rejected; the running config stays in force")
		return err
	}
	return r.Reload(cfg)
}

// Reload applies a validated config by difference: pools and backends that
// did not change keep their connections, counters, health and admin state;
// new backends join unchecked (no traffic until a health check passes);
// removed backends stop receiving requests and close once their in-flight
// requests and streams end. The overlay is re-applied on top. An identical
// config changes nothing.
func (r *Registry) Reload(cfg *config.Config) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen.Load() {
		// The overlay is re-saved by a reload: nothing may be written
		// while another process reads or owns the state file.
		return ErrUpgrading
	}
	if reflect.DeepEqual(r.cfg, cfg) {
		r.reloadsOK.Add(1)
		r.lastReload.Store(time.Now().Unix())
		r.log.Debug().Msg("config unchanged; nothing to do")
		return nil
	}
	if cfg.Listen != r.cfg.Listen || cfg.Admin != r.cfg.Admin || !reflect.DeepEqual(cfg.Server, r.cfg.Server) ||
		!reflect.DeepEqual(cfg.Log, r.cfg.Log) || cfg.StateFile != r.cfg.StateFile ||
		cfg.TLS.Listen != r.cfg.TLS.Listen || cfg.TLS.MinVersion != r.cfg.TLS.MinVersion || cfg.TLS.RedirectHTTP != r.cfg.TLS.RedirectHTTP {
		r.log.Warn().Msg("listen, admin, server, log, state_file and tls listener settings changed in the file; they take effect at the next restart (certificates reload now)")
	}
	for _, w := range cfg.Warnings {
		r.log.Warn().Msg(w)
	}
	// The overlay as it stands against the new file, first: overrides of
	// fields the file changed give way. In a cluster, from the desired
	// state as etcd has it: a pool or backend the file brings back gets
	// the cluster's decisions on it, which etcd kept; the base itself is
	// neither changed nor saved.
	var st *State
	stChanged := false
	if r.shared != nil && r.shared.base != nil {
		st = r.shared.base.clone()
		reconcile(st, cfg, r.log, nil)
	} else {
		st = r.state.clone()
		stChanged = reconcile(st, cfg, r.log, r.gone)
		if r.gone.restore(st, cfg, r.log) {
			stChanged = true
		}
	}
	prevPools := r.pools
	next := make(map[string]*pool.Pool, len(cfg.Pools))
	var added, removed, changed []string
	for _, pc := range cfg.Pools {
		d := desired(pc, st.Pools[pc.Name])
		if names := retiredInFile(pc, st.Pools[pc.Name]); len(names) > 0 {
			r.log.Warn().Str("pool", pc.Name).Strs("backends", names).
				Msg("the file puts backends of a retired version in the pool; they stay out of rotation until a rollout to that version (see the cascade section of the README)")
		}
		if p := prevPools[pc.Name]; p != nil {
			if !reflect.DeepEqual(*p.Settings(), d.Config) {
				changed = append(changed, pc.Name)
			}
			p.Apply(d)
			r.noteKnownLocked(p, time.Now())
			next[pc.Name] = p
			continue
		}
		p := pool.New(d.Config, r.log)
		p.Apply(d)
		if old := r.retired[pc.Name]; old != nil {
			p.RestoreCookies(old.Cookies(time.Now()))
		}
		r.noteKnownLocked(p, time.Now())
		if r.started {
			p.Start()
		}
		next[pc.Name] = p
		added = append(added, pc.Name)
	}
	t, err := proxy.BuildTable(cfg, next)
	if err != nil {
		r.reloadsFailed.Add(1)
		return err
	}
	// Publish the new table before retiring removed pools, so no request is
	// routed to a pool that no longer serves.
	if r.onTable != nil {
		r.onTable(t)
	}
	for name, p := range prevPools {
		if next[name] == nil {
			removed = append(removed, name)
			p.Retire()
			if r.retired == nil {
				r.retired = map[string]*pool.Pool{}
			}
			r.retired[name] = p
		}
	}
	r.pruneRetiredLocked(time.Now())
	r.cfg = cfg
	r.pools = next
	r.table = t
	r.generation++
	r.state = st
	if stChanged {
		if err := saveState(r.stateFile, r.state); err != nil {
			r.log.Error().Err(err).Msg("could not write the state file after reconciling it with the new config")
		}
	}
	for _, p := range next {
		r.syncBaselineLocked(p)
	}
	for _, name := range removed {
		delete(r.baselines, name)
	}
	r.reloadsOK.Add(1)
	r.lastReload.Store(time.Now().Unix())
	sort.Strings(changed)
	r.recordLocked(Event{Actor: "config", Action: "reload", Detail: fmt.Sprintf("generation %d", r.generation)})
	r.log.Info().Int64("generation", r.generation).Strs("pools_added", added).Strs("pools_removed", removed).
		Strs("pools_changed", changed).Msg("config reloaded")
	return nil
}

// pruneLocked reconciles the overlay with the file: entries for pools and
// backends the file no longer has go (backends added at runtime stay); a
// runtime-added backend the file now lists becomes a file backend; and an
// override whose field the file has changed since it was made gives way to
// the file, since someone edited that field on purpose. It reports whether
// anything changed.
func (r *Registry) pruneLocked() bool { return reconcile(r.state, r.cfg, r.log, r.gone) }

// reconcile is pruneLocked for any state and config; it edits st, and
// remembers in gone the admin states of backends the file dropped.
func reconcile(st *State, cfg *config.Config, log zerolog.Logger, gone *goneBackends) bool {
	changed := false
	drop := func(pn, bn, what string) {
		ev := log.Warn().Str("pool", pn)
		if bn != "" {
			ev = ev.Str("backend", bn)
		}
		ev.Msg("the file changed " + what + " since it was overridden at runtime; the file's value now applies")
		changed = true
	}
	for pn, ps := range st.Pools {
		pc, ok := filePool(cfg, pn)
		if !ok {
			delete(st.Pools, pn)
			log.Warn().Str("pool", pn).Str("dropped", describePool(ps)).
				Msg("the file no longer has this pool; its runtime decisions are dropped")
			for bn, bs := range ps.Backends {
				if !bs.Added {
					gone.add(pn, bn, bs)
				}
			}
			changed = true
			continue
		}
		if ps.StableVersion != "" && ps.FileStable != "" && pc.StableVersion != ps.FileStable {
			ps.StableVersion, ps.FileStable = "", ""
			drop(pn, "", "stable_version")
		}
		if ps.Canary != nil && ps.FileCanary != nil &&
			(pc.Canary.Version != ps.FileCanary.Version || pc.Canary.Weight != ps.FileCanary.Weight) {
			ps.Canary, ps.FileCanary = nil, nil
			drop(pn, "", "the canary")
		}
		for bn, bs := range ps.Backends {
			fb, inFile := fileBackend(pc, bn)
			switch {
			case !inFile && !bs.Added:
				delete(ps.Backends, bn)
				log.Warn().Str("pool", pn).Str("backend", bn).Str("dropped", describeBackend(bs)).
					Msg("the file no longer has this backend; its runtime decisions are dropped")
				gone.add(pn, bn, bs)
				changed = true
				continue
			case inFile && bs.Added:
				// Listed by the file now: its runtime values stay, as
				// overrides of what the file says today.
				bs.Added = false
				setBase(bs, fb)
				changed = true
				continue
			case !inFile:
				continue
			}
			if bs.Weight != nil && bs.FileWeight != nil && fb.WeightOf() != *bs.FileWeight {
				bs.Weight, bs.FileWeight = nil, nil
				drop(pn, bn, "weight")
			}
			if bs.Version != "" && bs.FileVersion != "" && fb.Version != bs.FileVersion {
				bs.Version, bs.FileVersion = "", ""
				drop(pn, bn, "version")
			}
			if bs.Address != "" && bs.FileAddress != "" && fb.Address != bs.FileAddress {
				bs.Address, bs.FileAddress = "", ""
				drop(pn, bn, "address")
			}
		}
	}
	st.compact()
	return changed
}

func (r *Registry) filePoolLocked(name string) (config.Pool, bool) { return filePool(r.cfg, name) }

func filePool(cfg *config.Config, name string) (config.Pool, bool) {
	for _, pc := range cfg.Pools {
		if pc.Name == name {
			return pc, true
		}
	}
	return config.Pool{}, false
}

func fileBackend(pc config.Pool, name string) (config.Backend, bool) {
	for _, b := range pc.Backends {
		if b.Name == name {
			return b, true
		}
	}
	return config.Backend{}, false
}

// setBase records what the file says of a backend, beside its overrides.
func setBase(bs *BackendState, fb config.Backend) {
	w := fb.WeightOf()
	bs.FileWeight, bs.FileVersion, bs.FileAddress = &w, fb.Version, fb.Address
}

// setPoolBase records the file's stable version and canary, beside a pool's
// overrides.
func setPoolBase(ps *PoolState, pc config.Pool) {
	ps.FileStable = pc.StableVersion
	ps.FileCanary = &CanaryState{Version: pc.Canary.Version, Weight: pc.Canary.Weight}
}

// State returns a copy of the runtime overlay.
func (r *Registry) State() *State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state.clone()
}

func (r *Registry) poolConfigLocked(name string) config.Pool {
	if pc, ok := r.filePoolLocked(name); ok {
		return pc
	}
	return config.Pool{Name: name}
}

// pruneRetiredLocked forgets the retired pools that hold nothing any
// more: no affinity cookie of theirs can be valid and no request runs on
// their backends.
func (r *Registry) pruneRetiredLocked(now time.Time) {
	for name, p := range r.retired {
		if len(p.Cookies(now)) == 0 && len(p.LeavingBackends()) == 0 {
			delete(r.retired, name)
		}
	}
}

// retiredPools returns the pools a reload removed that still hold
// something (see retired).
func (r *Registry) retiredPools() []*pool.Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*pool.Pool, 0, len(r.retired))
	for _, p := range r.retired {
		out = append(out, p)
	}
	return out
}
