package control

import (
	"context"
	"errors"
	"runtime/debug"
	"sort"
	"sync"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

// poolJudge follows one canary of one pool: the evidence windows (since the
// canary started, since its warm-up ended, since its step started) and the
// judge's sequential tests.
type poolJudge struct {
	canary string
	run    string // names this canary's evidence in a cluster (see canaryRun)
	stable string // the stable version it is compared with
	judge  *canary.Judge
	start  time.Time
	base   map[string]*canary.VersionSnapshot // at the canary's start, by version
	// warm holds, per route group, the snapshot at the end of its warm-up
	// (judge.warmup passed, or the canary served judge.warmup_requests in
	// it); a group without one is still warming up.
	warm    map[int]map[string]*canary.VersionSnapshot
	sigBase map[string]canary.Signature
	sigOf   *canary.Signatures // the table sigBase was taken from
	// windowStart: each version's requests when the current window of the
	// per-client bounds began; discardBase: what was discarded before.
	windowStart map[string]uint64
	windowAt    time.Time
	discardBase map[*canary.VersionStats]uint64
	weight      float64 // the share of the current step
	stepStart   time.Time
	stepBase    uint64    // canary requests when the step started
	last        [2]uint64 // stable, canary requests at the last tick
	lastEval    time.Time
	result      canary.Result // result, at and ended: written under judges.mu
	at          time.Time
	// ended: the canary is gone (promoted or rolled back); the last
	// verdict stays for reports until the next canary.
	ended bool
	// pooled: in a cluster, the leader's verdict and the pooled evidence
	// behind it (written under judges.mu); published: when this
	// process last published its own evidence.
	pooled    *pooledVerdict
	published time.Time
}

// judges holds the per-pool judges; the judge loop owns them, the API reads
// their latest results.
type judges struct {
	mu sync.Mutex // protects by, and each judge's result, at and ended
	by map[string]*poolJudge
}

func (j *judges) get(name string) *poolJudge {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.by[name]
}

func (j *judges) set(name string, pj *poolJudge) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if pj == nil {
		delete(j.by, name)
		return
	}
	j.by[name] = pj
}

// record stores pj's new verdict, reached at, and in a cluster the pooled
// evidence behind it (nil: keep the last); reports read them under the
// same lock.
func (j *judges) record(name string, pj *poolJudge, res canary.Result, at time.Time, pooled *pooledVerdict) {
	j.mu.Lock()
	defer j.mu.Unlock()
	pj.result, pj.at = res, at
	if pooled != nil {
		pj.pooled = pooled
	}
	j.by[name] = pj
}

// end marks a pool's judged canary as gone: promoted or rolled back.
func (j *judges) end(name string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if pj := j.by[name]; pj != nil {
		pj.ended = true
	}
}

// latest returns the last verdict on a pool's running canary and when it
// was reached.
func (j *judges) latest(name string) (canary.Result, time.Time, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	pj := j.by[name]
	if pj == nil || pj.at.IsZero() || pj.ended {
		return canary.Result{}, time.Time{}, false
	}
	return pj.result, pj.at, true
}

// pooledOf returns the pooled evidence behind the latest verdict on the
// pool's canary cv (nil: none, or alone).
func (j *judges) pooledOf(name, cv string) *pooledVerdict {
	j.mu.Lock()
	defer j.mu.Unlock()
	if pj := j.by[name]; pj != nil && !pj.ended && pj.pooled != nil && pj.pooled.Canary == cv {
		return pj.pooled
	}
	return nil
}

// ended returns the last verdict on a pool's last judged canary and the
// stable version it was compared with; callers ask once the pool has no
// canary.
func (j *judges) ended(name string) (string, string, canary.Result, time.Time, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	pj := j.by[name]
	if pj == nil || pj.at.IsZero() {
		return "", "", canary.Result{}, time.Time{}, false
	}
	return pj.canary, pj.stable, pj.result, pj.at, true
}

// judging returns the canary version a pool's judge follows, "" for none.
func (j *judges) judging(name string) string {
	j.mu.Lock()
	defer j.mu.Unlock()
	if pj := j.by[name]; pj != nil {
		return pj.canary
	}
	return ""
}

func judgeConfig(pc *config.Pool) canary.JudgeConfig {
	j := pc.Judge
	return canary.JudgeConfig{
		Alpha: j.Alpha, ErrorMargin: j.ErrorMargin, ErrorFloor: j.ErrorFloor,
		LatencyTol: j.LatencyTolerance, LatencyFloor: j.LatencyFloor, SignatureMargin: j.SignatureMargin,
		GrossFactor: j.GrossFactor, GrossFloor: j.GrossFloor,
		StepMinTime: pc.Canary.StepMinTime, StepMinRequests: uint64(pc.Canary.StepMinRequests),
	}
}

// runJudges judges every pool with a canary at its judge interval, until
// ctx ends.
func (r *Registry) runJudges(ctx context.Context) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if r.frozen.Load() && r.shared == nil {
				continue // handing over: the new process judges
			}
			// In a cluster a frozen process has given the lead up: its
			// judge follows the leader's — it publishes its evidence, as
			// a live instance must for the leader to judge, and never
			// acts.
			for _, p := range r.Pools() {
				r.judgeSafely(ctx, p, now)
			}
		}
	}
}

// judgeSafely judges one pool and watches its switch; a fault in either is
// logged and that pool waits for the next tick, never taking the process
// (and the traffic it serves) down with it.
func (r *Registry) judgeSafely(ctx context.Context, p *pool.Pool, now time.Time) {
	defer func() {
		if v := recover(); v != nil {
			r.log.Error().Str("pool", p.Name()).Interface("panic", v).Str("stack", string(debug.Stack())).
				Msg("the judge failed on this pool; it tries again at the next tick")
		}
	}()
	r.judgePool(ctx, p, now)
	r.watchSwitch(ctx, p, now)
}

func snapshotVersions(p *pool.Pool) map[string]*canary.VersionSnapshot {
	out := map[string]*canary.VersionSnapshot{}
	for _, vs := range p.VersionStats() {
		out[vs.Version()] = vs.Snapshot()
	}
	return out
}

func since(now, base map[string]*canary.VersionSnapshot, version string) *canary.VersionSnapshot {
	s := now[version]
	if s == nil {
		return &canary.VersionSnapshot{Groups: map[int]*canary.GroupSnapshot{}}
	}
	return s.Since(base[version])
}

// judgePool takes one verdict for p when its interval has passed, and acts
// on it as the pool's automation allows. In a cluster every instance
// gathers and publishes its evidence; the leader judges on all of it.
//
// Its calls to etcd end with ctx, the registry's: a stop does not wait
// for them.
func (r *Registry) judgePool(ctx context.Context, p *pool.Pool, now time.Time) {
	name := p.Name()
	cfg := p.Settings()
	cv, weight := p.Canary()
	pj := r.judges.get(name)
	if cv == "" {
		if pj != nil && !pj.ended {
			liftClientBounds(p)
			if r.shared != nil {
				r.forgetPending[name] = true
			}
		}
		if r.forgetPending[name] && r.forgetEvidence(ctx, canarySpace(name)) {
			delete(r.forgetPending, name)
		}
		r.judges.end(name)
		return
	}
	run := r.canaryRun(name, cv)
	// A new canary, or in a cluster a new run of the same version (it
	// ended and came back between two ticks): evidence starts afresh.
	fresh := pj == nil || pj.canary != cv || pj.ended || r.shared != nil && pj.run != run
	if !fresh && now.Sub(pj.lastEval) < cfg.Judge.Interval {
		// Between verdicts: a route group's warm-up ends when it does,
		// not at the next verdict, so its evidence starts on time.
		pj.checkWarm(p, cfg, now)
		if r.shared != nil && now.Sub(pj.published) >= evidenceEvery {
			pj.published = now
			r.publishEvidence(canarySpace(name), pj.observe(p, cfg, snapshotVersions(p), now, weight, run))
		}
		return
	}
	snaps := snapshotVersions(p)
	if fresh {
		pj = &poolJudge{canary: cv, run: run, stable: p.StableVersion(), judge: canary.NewJudge(judgeConfig(cfg)), start: now, base: snaps,
			warm:    map[int]map[string]*canary.VersionSnapshot{},
			sigBase: p.Signatures().Snapshot(), sigOf: p.Signatures(), weight: weight, stepStart: now}
		pj.stepBase = since(snaps, pj.base, cv).Requests
		r.log.Info().Str("pool", name).Str("canary", cv).Float64("weight", weight).Msg("judging a new canary")
	}
	pj.lastEval = now
	stable := p.StableVersion()
	local := pj.observe(p, cfg, snaps, now, weight, run)
	var pooled *pooledVerdict
	in := local.Input()
	if r.shared != nil {
		pj.published = now
		r.publishEvidence(canarySpace(name), local)
		if !r.judgeLeads() {
			r.followVerdict(ctx, name, pj, run, cfg.Judge.Interval, now)
			pj.nextWindow(p, cfg, stable, cv, now)
			return
		}
		var err error
		if pooled, err = r.poolEvidence(ctx, canarySpace(name), run, weight, local); err != nil {
			// Never a verdict on part of the evidence: the judge waits.
			r.pauseLeading(ctx, name, pj, err, now)
			pj.nextWindow(p, cfg, stable, cv, now)
			return
		}
		in = pooled.Evidence.Input()
	}

	// The share during this tick, from what each version actually served:
	// affinity and retries make it differ from the configured one.
	dS, dC := in.Stable.Requests-min(in.Stable.Requests, pj.last[0]), in.Canary.Requests-min(in.Canary.Requests, pj.last[1])
	share := weight / 100
	if dS+dC > 0 {
		share = float64(dC) / float64(dS+dC)
	}
	pj.last = [2]uint64{in.Stable.Requests, in.Canary.Requests}
	in.Now, in.Share, in.StepStart, in.Held = now, share, pj.stepStart, r.Held(name)
	for _, b := range p.Backends() {
		if b.Version() == cv && b.State() == pool.Active {
			in.CanaryBackends++
			if b.Health() != pool.Down {
				in.CanaryHealthy++
			}
		}
	}
	res := pj.judge.Evaluate(in)
	pj.nextWindow(p, cfg, stable, cv, now)
	prev := pj.result
	if pooled != nil {
		pooled.Canary, pooled.Stable, pooled.At = cv, stable, now.UTC()
		pooled.Result, pooled.Signatures = res, res.Signatures
		r.publishVerdict(ctx, name, pooled)
	}
	r.judges.record(name, pj, res, now, pooled)
	r.logVerdict(name, cv, prev, res)
	r.act(p, cfg, cv, weight, res, in.Held)
}

// logVerdict logs a verdict that differs from the previous one.
func (r *Registry) logVerdict(name, cv string, prev, res canary.Result) {
	if res.Verdict == prev.Verdict && res.Rule == prev.Rule {
		return
	}
	ev := r.log.Info()
	if res.Verdict == canary.Fail {
		ev = r.log.Warn()
	}
	ev.Str("pool", name).Str("canary", cv).Str("verdict", res.Verdict).Str("rule", res.Rule).
		Str("reason", res.Reason).Msg("canary verdict")
}

// observe returns this process's evidence on pj's canary: each version's
// counts since the canary started, latency per route group since the
// group's warm-up ended, the signatures seen since, and what the
// per-client bounds left out.
func (pj *poolJudge) observe(p *pool.Pool, cfg *config.Pool, snaps map[string]*canary.VersionSnapshot, now time.Time, weight float64, run string) *canary.Contribution {
	cv, stable := pj.canary, p.StableVersion()
	st, ca := since(snaps, pj.base, stable), since(snaps, pj.base, cv)
	if weight != pj.weight {
		pj.weight, pj.stepStart, pj.stepBase = weight, now, ca.Requests
	}
	warmedUp := now.Sub(pj.start) >= cfg.Judge.Warmup
	for i, g := range ca.Groups {
		if pj.warm[i] == nil && (warmedUp || g.Requests >= uint64(cfg.Judge.WarmupRequests)) {
			pj.warm[i] = snaps
		}
	}
	c := &canary.Contribution{Run: run, At: now.UTC(), Weight: weight, StepCanaryRequests: ca.Requests - min(ca.Requests, pj.stepBase),
		Stable: side(st, p.Groups(), pj.warm, snaps, stable),
		Canary: side(ca, p.Groups(), pj.warm, snaps, cv)}
	if t := p.Signatures(); t != pj.sigOf {
		pj.sigBase, pj.sigOf = nil, t // a table made for this canary: all of it counts
	}
	for key, sig := range p.Signatures().Snapshot() {
		b := pj.sigBase[key]
		e := canary.SigEvidence{Key: key, Stable: sig.Counts[stable] - b.Counts[stable], Canary: sig.Counts[cv] - b.Counts[cv],
			CanaryClients: sig.Clients[cv]}
		if e.Stable+e.Canary == 0 {
			continue
		}
		if n := len(sig.Examples); n > 0 {
			ex := sig.Examples[n-1]
			e.Example = &ex
		}
		c.Signatures = append(c.Signatures, e)
	}
	sort.Slice(c.Signatures, func(i, j int) bool { return c.Signatures[i].Key < c.Signatures[j].Key })
	c.Discarded, c.DiscardedFailures = pj.discarded(p, stable, cv)
	return c
}

// nextWindow starts the next window of the per-client bounds once the last
// lasted canary.ClientWindow.
func (pj *poolJudge) nextWindow(p *pool.Pool, cfg *config.Pool, stable, cv string, now time.Time) {
	if now.Sub(pj.windowAt) >= canary.ClientWindow {
		pj.windowAt = now
		pj.newWindow(p, cfg, stable, cv)
	}
}

// newWindow starts the next window of the per-client bounds: in it, one
// client counts for at most judge.max_client_share of what its version
// served in the window that ended (at least canary.MinClientRequests), and
// of each signature's occurrences.
func (pj *poolJudge) newWindow(p *pool.Pool, cfg *config.Pool, stable, cv string) {
	share := cfg.Judge.MaxClientShare
	if pj.windowStart == nil {
		pj.windowStart = map[string]uint64{}
	}
	for _, vs := range p.VersionStats() {
		v := vs.Version()
		if v != stable && v != cv {
			vs.NewWindow(0)
			continue
		}
		n := vs.Requests() - min(vs.Requests(), pj.windowStart[v])
		pj.windowStart[v] = vs.Requests()
		vs.NewWindow(max(canary.MinClientRequests, uint32(share*float64(n))))
	}
	p.Signatures().NewWindow(share)
}

// discarded returns the requests and failures left out of this canary's
// evidence for being over a client's bound.
func (pj *poolJudge) discarded(p *pool.Pool, stable, cv string) (requests, failures uint64) {
	if pj.discardBase == nil {
		pj.discardBase = map[*canary.VersionStats]uint64{}
		for _, vs := range p.VersionStats() {
			pj.discardBase[vs] = vs.Discarded()
		}
	}
	for _, vs := range p.VersionStats() {
		if v := vs.Version(); v == stable || v == cv {
			requests += vs.Discarded() - min(vs.Discarded(), pj.discardBase[vs])
		}
	}
	return requests, p.Signatures().Discarded()
}

// liftClientBounds ends the per-client bounds once a pool has no canary.
func liftClientBounds(p *pool.Pool) {
	for _, vs := range p.VersionStats() {
		vs.NewWindow(0)
	}
	p.Signatures().NewWindow(0)
}

// checkWarm ends the warm-up of route groups whose canary served
// judge.warmup_requests since the canary started (or all, once
// judge.warmup passed): their latency evidence starts from this moment. It
// reads one counter per group; a snapshot is taken only when a group's
// warm-up ends.
func (pj *poolJudge) checkWarm(p *pool.Pool, cfg *config.Pool, now time.Time) {
	vs := p.StatsOf(pj.canary)
	if vs == nil {
		return
	}
	base := pj.base[pj.canary]
	timeUp := now.Sub(pj.start) >= cfg.Judge.Warmup
	var snaps map[string]*canary.VersionSnapshot
	for i := range canary.MaxGroups {
		if pj.warm[i] != nil {
			continue
		}
		n := vs.GroupRequests(i)
		if base != nil && base.Of == vs && base.Groups[i] != nil {
			n -= min(n, base.Groups[i].Requests)
		}
		if n == 0 || !timeUp && n < uint64(cfg.Judge.WarmupRequests) {
			continue
		}
		if snaps == nil {
			snaps = snapshotVersions(p)
		}
		pj.warm[i] = snaps
	}
}

// side is one version's evidence for the judge: counts since the canary
// started, latency per route group since the group's warm-up ended.
func side(s *canary.VersionSnapshot, groups *canary.Groups, warm map[int]map[string]*canary.VersionSnapshot, now map[string]*canary.VersionSnapshot, version string) canary.SideEvidence {
	out := canary.SideEvidence{Version: version, Requests: s.Requests, Errors: s.Errors, Gateway: s.NoAnswer, All: *s.Latency()}
	if s.Of != nil {
		out.ErrorClients = s.Of.ErrorClients()
	}
	for i, base := range warm {
		g := since(now, base, version).Groups[i]
		if g == nil || g.Latency.Count == 0 {
			continue
		}
		if out.Latency == nil {
			out.Latency = map[string]*canary.Snapshot{}
		}
		l := g.Latency
		out.Latency[groups.Name(i)] = &l
	}
	// A request is counted before its latency is observed, and a snapshot
	// reads the count first: one that ends between the two reads (or was
	// counted before the base snapshot and observed after) has a latency
	// and no request here. It was served all the same: count it, so that
	// the contribution passes the others' check (latencies ≤ requests).
	out.Requests = max(out.Requests, out.All.Count)
	for _, l := range out.Latency {
		out.Requests = max(out.Requests, l.Count)
	}
	return out
}

// act carries out what a verdict calls for, as far as the pool's automation
// allows: a failing canary is rolled back, a passing step moves to the next
// share, and passing the last one promotes. Held pools and dry runs only
// report. Each action is made only if the pool is still as judged — canary
// cv at weight, not held — checked under the registry's lock with the
// decision: a hold or a share set by hand between the verdict and the
// action (the verdict's write to etcd takes a while) wins over it.
func (r *Registry) act(p *pool.Pool, cfg *config.Pool, cv string, weight float64, res canary.Result, held bool) {
	c := cfg.Canary
	if c.DryRun || held || !r.judgeLeads() {
		return // in a cluster, the leader's judge acts
	}
	name := p.Name()
	opts := []Opt{By("judge"), asJudged(cv, weight)}
	switch res.Verdict {
	case canary.Fail:
		if !c.AutoRollback {
			return
		}
		r.log.Warn().Str("pool", name).Str("canary", cv).Str("reason", res.Reason).Msg("judge rolls the canary back")
		r.logAct(name, "roll the canary back", r.rollback(name, res.Reason, opts...))
	case canary.Pass:
		for _, s := range c.Steps {
			if s > weight {
				r.logAct(name, "move the canary to its next step", r.SetCanary(name, cv, s, opts...))
				return
			}
		}
		if c.AutoPromote {
			r.logAct(name, "promote the canary", r.promote(name, res.Reason, opts...))
		}
	}
}

// logAct logs why the judge could not do what: a decision that overtook
// the verdict is no failure.
func (r *Registry) logAct(name, what string, err error) {
	var c *Conflict
	switch {
	case err == nil:
	case errors.As(err, &c) && (c.Code == v1.CodeVerdictOvertaken || c.Code == v1.CodeStateChanged):
		r.log.Info().Err(err).Str("pool", name).Msg("the judge did not " + what + ": a decision overtook its verdict")
	default:
		r.log.Error().Err(err).Str("pool", name).Msg("judge could not " + what)
	}
}

// Verdict returns a pool's latest verdict and its reason ("" without a
// canary or before the judge looked).
func (r *Registry) Verdict(poolName string) (verdict, reason string) {
	res, _, ok := r.judges.latest(poolName)
	if !ok {
		return "", ""
	}
	return res.Verdict, res.Reason
}
