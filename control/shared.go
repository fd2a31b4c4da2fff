package control

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/cluster"
	"github.com/baton-lb/baton/config"
)

// ErrClusterUnavailable: the decision could not be written to etcd, so it
// was not made anywhere (503). Every instance goes on with the decisions
// it has.
var ErrClusterUnavailable = errors.New("the cluster's etcd cannot be reached; nothing changed")

// ErrClusterOutcomeUnknown: the decision was sent to etcd, but etcd did
// not say whether it committed it, and could not be asked in time (503).
// It may have been committed, and then applies on every instance: read
// the state again before deciding again.
var ErrClusterOutcomeUnknown = errors.New("etcd did not confirm the decision and could not be asked whether it took it; it may have been applied on every instance: read the pool again before deciding again")

// maxSharedState is the largest desired state written to etcd: its
// request limit is 1.5 MiB.
const maxSharedState = 1 << 20

// shared is a registry's part in a cluster: the desired state lives in
// etcd, and the state file is the local copy of the last revision applied.
type shared struct {
	store  *cluster.Store
	member *cluster.Member
	// rev is the revision of the desired state in force (under r.mu);
	// applied the same, for readers without the lock.
	rev     int64
	applied atomic.Int64
	// base is the desired state at rev as etcd holds it, before it was
	// reconciled with this instance's config: commits are made on it, so
	// that what another instance's config has and this one's lacks (a
	// rolling config push) passes through untouched (under r.mu).
	base *State
	// deleted, set at start, says the cluster's state was deleted while
	// this instance was away (for the audit log, once it opens).
	deleted string
	// unreadable says why the desired state in etcd cannot be used here
	// ("" when it can): this instance serves with the last one it applied
	// and its decisions are refused until a state it reads is written
	// (under r.mu).
	unreadable string
	out        outbox // evidence on its way to etcd
	// verdictFailing: the last verdict could not be published (logged
	// once).
	verdictFailing atomic.Bool
}

// openShared connects to the cluster's etcd and returns the desired state
// to start from: etcd's when it can be read, the state file's (st, a copy
// of revision fileRev) when etcd is out of reach, or holds none yet and
// this file is no copy of a revision (a baton that ran alone joins), in
// which case it is written there so that the other instances adopt it. A
// file that is a copy of a revision whose key is gone now was the
// cluster's before its state was deleted: the reset applies here too
// (shared.deleted says so, for the audit log).
func openShared(cfg *config.Config, st *State, fileRev int64, log zerolog.Logger) (*shared, *State, error) {
	store, err := cluster.Dial(cfg.Cluster)
	if err != nil {
		return nil, nil, err
	}
	sh := &shared{store: store, member: store.NewMember(), out: outbox{pending: map[string][]byte{}, kick: make(chan struct{}, 1)}}
	e := cfg.Cluster.Etcd
	ctx, cancel := context.WithTimeout(context.Background(), e.DialTimeout+e.RequestTimeout)
	defer cancel()
	data, rev, err := store.Load(ctx)
	if err != nil {
		log.Warn().Err(err).Str("etcd", store.String()).Int64("revision", fileRev).
			Msg("etcd cannot be read at start: serving with the decisions of the state file (the last revision this instance applied); decisions are refused until etcd answers")
		// Commits compare the file's revision; the watch applies what
		// changed since, a deletion included.
		sh.setRev(fileRev)
		return sh, st, nil
	}
	if data == nil && fileRev > 0 {
		sh.deleted = fmt.Sprintf("the cluster's desired state (revision %d here, %d decisions) was deleted from etcd while this instance was away; it starts again from its config, as the others did",
			fileRev, countDecisions(st))
		log.Error().Int64("revision", fileRev).Int("decisions", countDecisions(st)).
			Msg("the cluster's desired state was deleted from etcd: every runtime decision is reset, and this instance's state file is not written back")
		return sh, &State{Format: stateFormat}, nil
	}
	if data == nil {
		if countDecisions(st) == 0 {
			return sh, st, nil
		}
		enc, err := encodeState(st)
		if err != nil {
			return nil, nil, err
		}
		rev, err = store.Commit(ctx, enc, 0)
		var c *cluster.Conflict
		switch {
		case errors.As(err, &c):
			data, rev = c.Current, c.Rev // another instance was first
		case err != nil:
			log.Warn().Err(err).Msg("could not write the state file's decisions to etcd; serving with them until etcd answers")
			return sh, st, nil
		default:
			log.Info().Int64("revision", rev).Int("decisions", countDecisions(st)).
				Msg("etcd held no decisions yet: the state file's are the cluster's now")
			sh.setRev(rev)
			return sh, st, nil
		}
	}
	if data == nil {
		return sh, &State{Format: stateFormat}, nil
	}
	shared, warning, err := decodeState(data, sharedSource(store.Prefix()))
	if err != nil {
		// Not a reason to stay down: this instance serves with the state
		// file (the last revision it applied), as while etcd is away, and
		// refuses decisions with the reason until a readable state is
		// written — by a baton that reads it, or reset-state.
		log.Error().Err(err).Int64("revision", rev).
			Msg("the cluster's desired state cannot be used; serving with the decisions of the state file, and refusing new ones until a state this baton reads is written")
		sh.unreadable = err.Error()
		sh.setRev(fileRev) // what this instance serves by is that revision
		return sh, st, nil
	}
	if warning != "" {
		log.Warn().Msg(warning)
	}
	sh.setRev(rev)
	return sh, shared, nil
}

func (sh *shared) setRev(rev int64) {
	sh.rev = rev
	sh.applied.Store(rev)
}

func countDecisions(st *State) int {
	n := 0
	for _, ps := range st.Pools {
		if ps.Canary != nil || ps.StableVersion != "" || ps.Held || ps.Lease != nil || ps.Switch != nil || ps.LastCanary != nil || ps.LastSwitch != nil || ps.Rollout != nil {
			n++
		}
		n += len(ps.Backends)
	}
	return n
}

// commitSharedLocked writes to etcd the decision that takes this
// instance's state from r.state to next, if the desired state is still the
// revision this instance applied: the desired state as etcd has it (the
// base) with the pools' and backends' entries the decision changed
// replaced; the others, those this instance's config does not know
// included, stay as they are. It returns what was committed. When another
// instance changed it first, its state is applied here and the decision
// refused with v1.CodeStateChanged; when etcd cannot be reached, with
// ErrClusterUnavailable. Either way nothing changed. A decision whose
// answer from etcd was lost is settled by asking etcd again; when that
// cannot be done in time it is refused with ErrClusterOutcomeUnknown, as
// it may have been applied.
func (r *Registry) commitSharedLocked(next *State) (*State, error) {
	sh := r.shared
	commit := onto(sh.base, r.state, next)
	data, err := encodeState(commit)
	if err != nil {
		return nil, fmt.Errorf("%w; nothing changed: %v", ErrPersist, err)
	}
	if len(data) > maxSharedState {
		return nil, fmt.Errorf("%w; nothing changed: the desired state would be %d bytes, over the %d etcd takes", ErrPersist, len(data), maxSharedState)
	}
	rev, err := sh.store.Commit(context.Background(), data, sh.rev)
	var c *cluster.Conflict
	switch {
	case errors.As(err, &c):
		if err := r.adoptSharedLocked(c.Current, c.Rev); err != nil {
			return nil, fmt.Errorf("nothing changed: the shared state is at revision %d: %w", c.Rev, err)
		}
		if c.Current == nil {
			return nil, conflictf(v1.CodeStateChanged,
				"the shared state was deleted from etcd, and this baton has applied that: every runtime decision is reset; nothing changed: look at the state now and ask again")
		}
		return nil, conflictf(v1.CodeStateChanged,
			"another baton changed the shared state first (revision %d), and this one has applied it; nothing changed: look at the state now and ask again", c.Rev)
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		return nil, fmt.Errorf("%w (%v)", ErrClusterOutcomeUnknown, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	sh.setRev(rev)
	sh.base = commit
	return commit, nil
}

// onto returns base with the change from before to after applied entry by
// entry — each pool's own fields, and each backend — where before and
// after are the state as this instance sees it, reconciled with its
// config. Entries the change did not touch stay as base has them. base
// nil is before.
func onto(base, before, after *State) *State {
	if base == nil {
		base = before
	}
	out := base.clone()
	out.Format = after.Format
	names := map[string]bool{}
	for pn := range before.Pools {
		names[pn] = true
	}
	for pn := range after.Pools {
		names[pn] = true
	}
	for pn := range names {
		b, a := before.Pools[pn], after.Pools[pn]
		if b == nil {
			b = &PoolState{}
		}
		if a == nil {
			a = &PoolState{}
		}
		if !reflect.DeepEqual(poolFields(b), poolFields(a)) {
			ps := out.pool(pn)
			f := a.clone()
			f.Backends = ps.Backends
			*ps = *f
		}
		bns := map[string]bool{}
		for bn := range b.Backends {
			bns[bn] = true
		}
		for bn := range a.Backends {
			bns[bn] = true
		}
		for bn := range bns {
			bb, ab := b.Backends[bn], a.Backends[bn]
			if reflect.DeepEqual(bb, ab) {
				continue
			}
			ps := out.pool(pn)
			if ab == nil {
				delete(ps.Backends, bn)
				continue
			}
			ps.backend(bn) // makes the map
			ps.Backends[bn] = ab.clone()
		}
	}
	out.compact()
	return out
}

// poolFields is ps without its backends.
func poolFields(ps *PoolState) *PoolState {
	c := *ps
	c.Backends = nil
	return &c
}

// adoptSharedLocked makes data, the desired state at revision rev written
// by another instance, the one in force here, through the same path as a
// reload: reconciled with this instance's file, applied to every pool, and
// kept in the state file as the local copy. A state it cannot decode (a
// newer baton's format, say) is not applied, nor counted as applied: the
// others' drains wait for this instance, and its own decisions, made on the
// revision before, cannot overwrite it.
func (r *Registry) adoptSharedLocked(data []byte, rev int64) error {
	sh := r.shared
	if rev != 0 && rev <= sh.rev {
		return nil // this instance's own write, or older
	}
	if data == nil && sh.rev == 0 {
		return nil // none shared yet, or reset already
	}
	st := &State{Format: stateFormat}
	if data == nil {
		// The key was deleted (seen by the watch, on a re-read, or by a
		// commit): every instance resets to its config alike, loudly.
		r.log.Error().Int64("revision", sh.rev).Int("decisions", countDecisions(sh.base)).
			Msg("the cluster's desired state was deleted from etcd: every runtime decision is reset, on every instance")
		r.recordLocked(Event{Actor: "cluster", Action: "cluster_state_deleted",
			Detail: fmt.Sprintf("the cluster's desired state (revision %d here, %d decisions) was deleted from etcd: every instance starts again from its config",
				sh.rev, countDecisions(sh.base))})
	} else {
		var warning string
		var err error
		st, warning, err = decodeState(data, sharedSource(sh.store.Prefix()))
		if err != nil {
			// Not applied: decisions here, made on the revision before,
			// are refused (their commit finds this one) until a state
			// this baton reads is written.
			r.log.Error().Err(err).Int64("revision", rev).Msg("the cluster's desired state cannot be used; this instance keeps the decisions it has and refuses new ones until a state it can read is written")
			sh.unreadable = err.Error()
			return err
		}
		if warning != "" {
			r.log.Warn().Msg(warning)
		}
	}
	base := st.clone()
	reconcile(st, r.cfg, r.log, r.gone)
	sh.setRev(rev)
	sh.unreadable = ""
	defer sh.member.Kick()
	if !reflect.DeepEqual(base, sh.base) {
		// The local copy is etcd's, pools this config lacks included: a
		// restart with etcd away starts from it.
		sh.base = base
		if err := saveStateAt(r.stateFile, base, rev); err != nil {
			r.log.Error().Err(err).Msg("could not keep the cluster's desired state in the state file; it applies all the same")
		}
	}
	if reflect.DeepEqual(st, r.state) {
		return nil
	}
	r.state = st
	for _, p := range r.pools {
		r.applyPoolLocked(p)
	}
	r.log.Info().Int64("revision", rev).Msg("applied the cluster's desired state")
	return nil
}

// startShared follows the desired state in etcd and publishes this
// instance's presence until ctx ends.
func (r *Registry) startShared(ctx context.Context) {
	sh := r.shared
	rev := sh.rev // Start holds r.mu
	r.wg.Add(3)
	go func() {
		defer r.wg.Done()
		r.runPublisher(ctx)
	}()
	go func() {
		defer r.wg.Done()
		sh.store.Watch(ctx, rev, func(data []byte, rev int64) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.adoptSharedLocked(data, rev)
		})
	}()
	go func() {
		defer r.wg.Done()
		sh.member.Run(ctx, r.clusterReport)
	}()
}

// clusterReport is what this instance publishes: the revision it applied
// and each backend's live load.
func (r *Registry) clusterReport() cluster.Report {
	rep := cluster.Report{Applied: r.shared.applied.Load(), Backends: map[string]cluster.Load{}}
	for _, p := range r.Pools() {
		for _, b := range append(p.Backends(), p.LeavingBackends()...) {
			if in, conns := b.Inflight(), b.OpenConns(); in > 0 || conns > 0 {
				k := p.Name() + "/" + b.Name()
				l := rep.Backends[k]
				rep.Backends[k] = cluster.Load{InFlight: l.InFlight + in, Conns: l.Conns + conns}
			}
		}
	}
	return rep
}

// Clustered reports whether this baton shares its decisions through etcd.
func (r *Registry) Clustered() bool { return r.shared != nil }

// SharedRevision is the revision of the cluster's desired state in force
// here (0 alone, or before any was written).
func (r *Registry) SharedRevision() int64 {
	if r.shared == nil {
		return 0
	}
	return r.shared.applied.Load()
}

// ClusterInstance is one baton process of the cluster.
type ClusterInstance struct {
	Name      string
	PID       int
	Heartbeat time.Time
	Applied   int64
	Self      bool
}

// ClusterStatus is the cluster as this instance sees it.
type ClusterStatus struct {
	Instance    string
	Applied     int64
	Instances   []ClusterInstance
	JudgeLeader string
	Leading     bool
	// Unreadable says why the desired state in etcd cannot be used here
	// ("" when it can).
	Unreadable string
}

// Cluster returns the instances alive now and the judge leader, read from
// etcd; ErrClusterUnavailable when it cannot be, and nil, nil alone.
func (r *Registry) Cluster(ctx context.Context) (*ClusterStatus, error) {
	sh := r.shared
	if sh == nil {
		return nil, nil
	}
	out := &ClusterStatus{Instance: sh.store.Instance(), Applied: sh.applied.Load(), Leading: sh.member.Leading()}
	r.mu.Lock()
	out.Unreadable = sh.unreadable
	r.mu.Unlock()
	reps, err := sh.store.Instances(ctx)
	if err != nil {
		return out, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	for _, rep := range reps {
		out.Instances = append(out.Instances, ClusterInstance{Name: rep.Instance, PID: rep.PID, Heartbeat: rep.Heartbeat,
			Applied: rep.Applied, Self: rep.Process == sh.member.Process()})
	}
	if out.JudgeLeader, err = sh.store.Leader(ctx); err != nil {
		return out, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	return out, nil
}

// BusyElsewhere names the other live instances that still send requests
// to the backend, or keep connections to it open, or have not applied
// revision rev (the drain) yet, each with what it has; empty when none
// does, or alone. An instance whose lease ran out is dead and not
// counted.
func (r *Registry) BusyElsewhere(ctx context.Context, poolName, backend string, rev int64) ([]string, error) {
	sh := r.shared
	if sh == nil {
		return nil, nil
	}
	reps, err := sh.store.Instances(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	var busy []string
	for _, rep := range reps {
		if rep.Process == sh.member.Process() {
			continue
		}
		l := rep.Backends[poolName+"/"+backend]
		switch {
		case rep.Applied < rev:
			busy = append(busy, fmt.Sprintf("%s (has not applied revision %d yet)", rep.Instance, rev))
		case l.InFlight > 0 || l.Conns > 0:
			busy = append(busy, fmt.Sprintf("%s (%d in flight, %d open connections)", rep.Instance, l.InFlight, l.Conns))
		}
	}
	sort.Strings(busy)
	return busy, nil
}

// ResetSharedState overwrites a desired state in etcd that this baton
// cannot read (a newer baton's format, or garbage) with the one this
// instance serves by, in a commit against the revision it replaces, and
// audits it; it returns the new revision. A state this baton reads is
// not overwritten (409 shared_state_readable): decisions are made on it
// as usual. The other instances apply the new state from their watch.
func (r *Registry) ResetSharedState(opts ...Opt) (int64, error) {
	sh := r.shared
	if sh == nil {
		return 0, conflictf(v1.CodeNotClustered, "this baton is not in a cluster: there is no shared state to reset")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frozen.Load() {
		return 0, ErrUpgrading
	}
	data, rev, err := sh.store.Load(context.Background())
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	if data == nil {
		return 0, conflictf(v1.CodeSharedStateReadable, "etcd holds no shared state; nothing to reset: the next decision writes one")
	}
	_, _, why := decodeState(data, sharedSource(sh.store.Prefix()))
	if why == nil {
		return 0, conflictf(v1.CodeSharedStateReadable, "the shared state at revision %d reads; nothing to reset: make decisions on it as usual", rev)
	}
	// The state this instance serves by, as etcd had it (pools its
	// config lacks included) when it last read one.
	next := r.state.clone()
	if sh.base != nil {
		next = sh.base.clone()
	}
	next.compact()
	enc, err := encodeState(next)
	if err != nil {
		return 0, fmt.Errorf("%w; nothing changed: %v", ErrPersist, err)
	}
	newRev, err := sh.store.Commit(context.Background(), enc, rev)
	var c *cluster.Conflict
	switch {
	case errors.As(err, &c):
		if aerr := r.adoptSharedLocked(c.Current, c.Rev); aerr != nil {
			return 0, conflictf(v1.CodeStateChanged, "the shared state changed again (revision %d) and still cannot be used here; nothing changed: ask again", c.Rev)
		}
		return 0, conflictf(v1.CodeStateChanged, "another baton wrote a readable shared state first (revision %d), and this one has applied it; nothing changed", c.Rev)
	case errors.Is(err, cluster.ErrOutcomeUnknown):
		return 0, fmt.Errorf("%w (%v)", ErrClusterOutcomeUnknown, err)
	case err != nil:
		return 0, fmt.Errorf("%w: %v", ErrClusterUnavailable, err)
	}
	sh.setRev(newRev)
	sh.unreadable = ""
	sh.base = next
	sh.member.Kick()
	if err := saveStateAt(r.stateFile, next, newRev); err != nil {
		r.log.Error().Err(err).Msg("could not keep the reset shared state in the state file; etcd has it, and it applies")
	}
	r.recordLocked(Event{Actor: actorOf(opts), Action: "cluster_reset_state",
		Detail: fmt.Sprintf("revision %d, which this baton could not read (%v), replaced by this instance's state as revision %d", rev, why, newRev)})
	return newRev, nil
}

// judgeLeads reports whether this instance's judge may act: always alone;
// in a cluster only the elected leader's does. Never while frozen (the
// lead is given up then, and the flag may lag a moment).
func (r *Registry) judgeLeads() bool {
	return !r.frozen.Load() && (r.shared == nil || r.shared.member.Leading())
}
