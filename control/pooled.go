package control

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/baton-lb/baton/canary"
)

// evidenceEvery is how often an instance of a cluster publishes its
// evidence on each running canary.
const evidenceEvery = time.Second

// staleEvidence is how old a live instance's latest evidence may be, by
// its own clock, for the leader to judge on it.
const staleEvidence = 5 * evidenceEvery

// pooledVerdict is the judge leader's verdict on a canary and the pooled
// evidence it reached it on, as every instance of the cluster reports it.
type pooledVerdict struct {
	Run        string                  `json:"run"`
	Canary     string                  `json:"canary"`
	Stable     string                  `json:"stable"`
	Leader     string                  `json:"leader"`
	At         time.Time               `json:"at"`
	Result     canary.Result           `json:"result"`
	Signatures []canary.SignatureClass `json:"signatures"`
	Evidence   *canary.Contribution    `json:"evidence"`
	// Instances are the processes ("INSTANCE/PROCESS") whose evidence it
	// pooled, the dead ones' included.
	Instances []string `json:"instances"`
}

// outbox holds the latest evidence of each pool until the publisher
// writes it to etcd, off the judge loop: a slow etcd delays nothing here.
type outbox struct {
	mu      sync.Mutex // protects pending
	pending map[string][]byte
	kick    chan struct{}
}

// canaryRun names the pool's canary cv: its version and when the
// previous canary ended, the same on every instance that applied the same
// revision, and new when a version rolled back comes again.
func (r *Registry) canaryRun(poolName, cv string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ps := r.state.Pools[poolName]; ps != nil && ps.LastCanary != nil {
		return fmt.Sprintf("%s@%d", cv, ps.LastCanary.At.UnixNano())
	}
	return cv + "@0"
}

// self is this process as evidence keys name it.
func (sh *shared) self() string { return sh.store.Instance() + "/" + sh.member.Process() }

// Evidence spaces: a pool's canary and its blue/green switch publish
// apart, so that neither takes the other's evidence for an old run's.
func canarySpace(poolName string) string { return "canary/" + poolName }
func switchSpace(poolName string) string { return "switch/" + poolName }

// publishEvidence hands c, evidence in space, to the publisher.
func (r *Registry) publishEvidence(space string, c *canary.Contribution) {
	data, err := json.Marshal(c)
	if err != nil {
		r.log.Error().Err(err).Str("evidence", space).Msg("could not encode the evidence")
		return
	}
	o := &r.shared.out
	o.mu.Lock()
	o.pending[space] = data
	o.mu.Unlock()
	select {
	case o.kick <- struct{}{}:
	default:
	}
}

// runPublisher writes pending evidence to etcd until ctx ends. Evidence
// that could not be written is dropped: the next, cumulative, replaces it.
func (r *Registry) runPublisher(ctx context.Context) {
	sh := r.shared
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-sh.out.kick:
		}
		sh.out.mu.Lock()
		batch := sh.out.pending
		sh.out.pending = map[string][]byte{}
		sh.out.mu.Unlock()
		for space, data := range batch {
			err := sh.store.PublishEvidence(ctx, sh.member.Process(), space, data)
			switch {
			case err != nil && !failing && ctx.Err() == nil:
				r.log.Warn().Err(err).Str("evidence", space).Msg("could not publish this instance's evidence; the judge pauses until it can")
				failing = true
			case err == nil && failing:
				r.log.Info().Str("evidence", space).Msg("publishing evidence again")
				failing = false
			}
		}
	}
}

// poolEvidence reads every process's evidence in space on run (a canary's
// or a switch's) and adds it to this one's (local). It refuses to pool part of it: when
// etcd cannot be read, or a live instance has not published evidence on
// this run yet. Processes no longer alive keep their part. Evidence of
// other runs is deleted.
func (r *Registry) poolEvidence(ctx context.Context, space, run string, weight float64, local *canary.Contribution) (*pooledVerdict, error) {
	sh := r.shared
	live, err := sh.store.Instances(ctx)
	if err != nil {
		return nil, err
	}
	raw, err := sh.store.Evidence(ctx, space)
	if err != nil {
		return nil, err
	}
	self := sh.self()
	cs := []*canary.Contribution{local}
	who := []string{self}
	at := map[string]time.Time{self: local.At} // when each process's evidence was taken
	var stale []string
	for k, data := range raw {
		if k == self {
			continue
		}
		c := &canary.Contribution{}
		if err := decodeChecked(data, c); err != nil {
			r.log.Warn().Err(err).Str("evidence", space).Str("key", k).Msg("deleting evidence no baton would publish")
			stale = append(stale, k)
			continue
		}
		if c.Run != run {
			stale = append(stale, k)
			continue
		}
		cs, who = append(cs, c), append(who, k)
		at[k] = c.At
	}
	if err := sh.store.ForgetEvidence(ctx, space, stale); err != nil {
		r.log.Debug().Err(err).Str("evidence", space).Msg("could not delete the evidence of an earlier run")
	}
	// Every live process's evidence, and recent by its own clock (its
	// heartbeat and its evidence come from the same one): one that stopped
	// publishing but lives would make the verdict one on old figures.
	var missing []string
	for _, rep := range live {
		k := rep.Instance + "/" + rep.Process
		if k == self {
			continue
		}
		if t, ok := at[k]; !ok {
			missing = append(missing, rep.Instance)
		} else if age := rep.Heartbeat.Sub(t); age > staleEvidence {
			missing = append(missing, fmt.Sprintf("%s (its last is %s old)", rep.Instance, age.Round(time.Second)))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("waiting for the evidence of %s", strings.Join(missing, ", "))
	}
	sort.Strings(who)
	return &pooledVerdict{Run: run, Leader: sh.store.Instance(), Evidence: canary.Pool(run, weight, cs), Instances: who}, nil
}

// decodeChecked reads a contribution another process published, refusing
// one no baton would write.
func decodeChecked(data []byte, c *canary.Contribution) error {
	if err := json.Unmarshal(data, c); err != nil {
		return err
	}
	return c.Check()
}

// publishVerdict writes the leader's verdict for the other instances; a
// failure is logged once until it works again.
func (r *Registry) publishVerdict(ctx context.Context, poolName string, pv *pooledVerdict) {
	data, err := json.Marshal(pv)
	if err == nil {
		err = r.shared.store.PublishVerdict(ctx, poolName, data)
	}
	failing := r.shared.verdictFailing.Load()
	switch {
	case err != nil && !failing && ctx.Err() == nil:
		r.log.Warn().Err(err).Str("pool", poolName).Msg("could not publish the judge's verdict to the other instances")
	case err == nil && failing:
		r.log.Info().Str("pool", poolName).Msg("publishing the judge's verdicts again")
	}
	r.shared.verdictFailing.Store(err != nil)
}

// followVerdict takes the leader's verdict on run as this instance's. A
// verdict the leader stopped renewing (it is gone, or cut off), or one by
// an instance that does not lead now, is shown as a pause, not as the
// judge's word.
func (r *Registry) followVerdict(ctx context.Context, poolName string, pj *poolJudge, run string, interval time.Duration, now time.Time) {
	data, err := r.shared.store.Verdict(ctx, poolName)
	if err != nil {
		r.pause(poolName, pj, err, nil, now)
		return
	}
	pv := &pooledVerdict{}
	if data == nil || json.Unmarshal(data, pv) != nil || pv.Run != run || pv.Evidence == nil || pv.Evidence.Check() != nil {
		// None yet on this run, or not one a leader would write.
		r.judges.record(poolName, pj, canary.Result{Verdict: canary.Inconclusive, Rule: "cluster",
			Reason: "the judge leader has not judged this canary on the pooled evidence yet"}, now, nil)
		return
	}
	// Only the leader's word counts: a verdict by an instance that does
	// not lead now (it lost the lead and wrote once more, or wrote last
	// before another took over) is shown as a pause until the leader's.
	leader, err := r.shared.store.Leader(ctx)
	if err != nil {
		r.pause(poolName, pj, err, nil, now)
		return
	}
	if leader != pv.Leader {
		who := leader
		if who == "" {
			who = "none (electing)"
		}
		r.pause(poolName, pj, fmt.Errorf("the verdict is by %s, which does not lead the judge now; the leader is %s", pv.Leader, who), pv, now)
		return
	}
	live, err := r.shared.store.Instances(ctx)
	if err != nil {
		r.pause(poolName, pj, err, nil, now)
		return
	}
	// The leader's age of its verdict, by its own clock: its heartbeat.
	var beat time.Time
	for _, rep := range live {
		if rep.Instance == pv.Leader && rep.Heartbeat.After(beat) {
			beat = rep.Heartbeat
		}
	}
	switch age := beat.Sub(pv.At); {
	case beat.IsZero():
		r.pause(poolName, pj, fmt.Errorf("%s, which judged last, is gone; another instance takes the judge over", pv.Leader), pv, now)
		return
	case age > 3*interval+staleEvidence:
		r.pause(poolName, pj, fmt.Errorf("the judge leader %s has not judged this canary for %s", pv.Leader, age.Round(time.Second)), pv, now)
		return
	}
	res := pv.Result
	res.Signatures, res.Discarded, res.DiscardedFailures = pv.Signatures, pv.Evidence.Discarded, pv.Evidence.DiscardedFailures
	prev := pj.result
	r.judges.record(poolName, pj, res, pv.At, pv)
	r.logVerdict(poolName, pj.canary, prev, res)
}

// pause records that the judge waits instead of judging part of the
// evidence; it neither acts nor moves the canary meanwhile. The leader
// says so to the others too, with the last pooled figures (last).
func (r *Registry) pause(poolName string, pj *poolJudge, why error, last *pooledVerdict, now time.Time) {
	prev := pj.result
	res := canary.Result{Verdict: canary.Inconclusive, Rule: "cluster_paused",
		Reason: "the judge pauses: " + why.Error() + "; it judges again once every live instance's evidence can be read"}
	r.judges.record(poolName, pj, res, now, last)
	r.logVerdict(poolName, pj.canary, prev, res)
}

// pauseLeading is pause on the leader, which also publishes it.
func (r *Registry) pauseLeading(ctx context.Context, poolName string, pj *poolJudge, why error, now time.Time) {
	r.pause(poolName, pj, why, nil, now)
	if last := r.judges.pooledOf(poolName, pj.canary); last != nil {
		pv := *last
		pv.Leader, pv.At, pv.Result, pv.Signatures = r.shared.store.Instance(), now.UTC(), pj.result, nil
		r.publishVerdict(ctx, poolName, &pv)
	}
}

// forgetEvidence deletes the evidence on the pool's canary once it ended
// (the leader does; another instance reports done, the leader deletes
// it). It reports whether that is done; the judge loop tries again at
// each tick until it is.
func (r *Registry) forgetEvidence(ctx context.Context, space string) bool {
	if r.shared == nil || !r.judgeLeads() {
		return true
	}
	raw, err := r.shared.store.Evidence(ctx, space)
	if err != nil {
		return false
	}
	old := make([]string, 0, len(raw))
	for k := range raw {
		old = append(old, k)
	}
	if err := r.shared.store.ForgetEvidence(ctx, space, old); err != nil {
		r.log.Debug().Err(err).Str("evidence", space).Msg("could not delete the evidence of a canary that ended; trying again")
		return false
	}
	return true
}
