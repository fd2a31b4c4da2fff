package canary

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// Verdict values, as the API shows them.
const (
	Pass         = "pass"
	Hold         = "hold"
	Fail         = "fail"
	Inconclusive = "inconclusive"
)

// JudgeConfig is how a pool's judge decides. Zero values are not valid; the
// config package fills defaults.
type JudgeConfig struct {
	Alpha           float64       // false-fail probability bound over a whole release, e.g. 0.01
	ErrorMargin     float64       // relative: the canary may fail this much more often (0.25 = 25 %)
	ErrorFloor      float64       // absolute: and must be worse by at least this rate (0.002 = 0.2 points)
	LatencyTol      float64       // relative tolerance on latency quantiles (0.2 = 20 %)
	LatencyFloor    time.Duration // and at least this much slower
	SignatureMargin float64       // relative margin for a signature to count as elevated
	GrossFactor     float64       // a gross regression: the canary's p50 or p90 this many times stable's
	GrossFloor      time.Duration // and at least this much slower
	StepMinTime     time.Duration // a step passes no sooner than this
	StepMinRequests uint64        // and not before the canary served this many in it
}

// How the judge spends α, a fixed split over the rules that are tests: each
// is an e-value, valid however often it is looked at, so by Ville's
// inequality and a union bound the chance that a canary as good as stable
// fails on any of them over the whole release is at most the sum, α. The
// fine latency comparison is not among them: it compares confidence bounds
// at a strict z at each look, and the A/A calibration measures its share.
const (
	alphaSignatures = 0.5  // split again: the k-th signature seen gets 6/(π²k²) of it
	alphaErrorRate  = 0.25 // the error rate's sequential test
	alphaGross      = 0.25 // gross regressions, split over the 17 groups × {p50, p90}
)

// quantiles the judge compares, with the fewest samples per side each needs:
// a p99 estimate from fewer than a few hundred requests is noise.
var judgedQuantiles = []struct {
	q    float64
	name string
	min  uint64
}{{0.5, "p50", 30}, {0.9, "p90", 100}, {0.99, "p99", 400}}

// latencyZ is the z-score of the quantiles' confidence bounds. The comparison
// is repeated at every tick, so each look is held to a strict level; the
// calibration test shows the resulting false-fail rate.
const latencyZ = 3.0

// Side is what one version showed over the judged window.
type Side struct {
	Requests uint64
	Errors   uint64
	// Gateway counts failures where the backend gave no answer at all
	// (refused, reset, timed out).
	Gateway uint64
	// Latency by route group, since the warm-up ended.
	Latency map[string]*Snapshot
	// ErrorClients is how many distinct clients the errors came from
	// (capped at MaxErrorClients; 0: none known). Errors from fewer than
	// MinErrorClients never fail a release by the error rules: one client
	// that holds a canary cookie chooses where its failures land.
	ErrorClients int
}

// MinErrorClients is how many distinct clients a canary's errors must come
// from before the error rules may fail it (when clients are known).
const MinErrorClients = 3

// SignatureEvidence is one failure signature's counts over the window.
type SignatureEvidence struct {
	Key            string
	Stable, Canary uint64
	// CanaryClients is how many distinct clients the canary's occurrences
	// came from (capped; 0: not known). One alone never fails a release.
	CanaryClients int
}

// Input is one tick's evidence for a pool with a canary.
type Input struct {
	Now time.Time
	// Share is the canary's share of the requests during this tick,
	// measured from request counts (0..1).
	Share float64
	// Stable and Canary are cumulative since the canary started.
	Stable, Canary Side
	// StepStart is when the current step began; StepCanaryRequests how many
	// requests the canary served in it.
	StepStart          time.Time
	StepCanaryRequests uint64
	// CanaryBackends and CanaryHealthy count the canary's backends and those
	// that pass health checks.
	CanaryBackends, CanaryHealthy int
	Signatures                    []SignatureEvidence
	Held                          bool
	// Discarded and DiscardedFailures: requests and failures left out of
	// the evidence for being over a client's share.
	Discarded, DiscardedFailures uint64
}

// Finding is a figure behind a verdict.
type Finding struct {
	Rule   string `json:"rule"`
	Detail string `json:"detail"`
}

// SignatureClass is how a signature compares across versions.
type SignatureClass struct {
	Key            string  `json:"key"`
	Class          string  `json:"class"` // new, elevated, known
	Stable         uint64  `json:"stable"`
	Canary         uint64  `json:"canary"`
	LogEvidence    float64 `json:"log_evidence"`
	FailsRelease   bool    `json:"fails_release"`
	ExpectedCanary float64 `json:"expected_canary"`
}

// Result is a verdict with its reason and the figures behind it.
type Result struct {
	Verdict    string           `json:"verdict"`
	Rule       string           `json:"rule"`
	Reason     string           `json:"reason"`
	Findings   []Finding        `json:"figures"`
	Signatures []SignatureClass `json:"-"`
	// Discarded and DiscardedFailures repeat the input's: evidence left
	// out for being over a client's share.
	Discarded, DiscardedFailures uint64 `json:"-"`
}

// Judge keeps the sequential tests of one canary. Feed it one Input per tick
// with cumulative evidence; it works out the increments itself.
//
// A Judge is not safe for concurrent use.
type Judge struct {
	cfg    JudgeConfig
	errors *SeqTest
	sigs   map[string]*sigTest
	gross  map[string]*grossGroup // by route group
	last   Input
	ticks  int
}

// sigTest is one signature's two sequential tests: elevated (the canary has
// it more often than its share explains, beyond the margin) and new (every
// occurrence so far on the canary).
type sigTest struct {
	elevated *SeqTest
	onlyNew  NewTest
	order    int // 1 for the first signature this canary had, 2 for the next, …
}

// logE is the signature's evidence: the log of the mean of its two
// e-values, itself an e-value when the canary has the signature no more
// often than stable.
func (t *sigTest) logE() float64 {
	a, b := t.elevated.LogEValue(), t.onlyNew.LogEValue()
	m := math.Max(a, b)
	if math.IsInf(m, -1) {
		return m
	}
	return m + math.Log((math.Exp(a-m)+math.Exp(b-m))/2)
}

// NewJudge returns a judge for a canary that just started.
func NewJudge(cfg JudgeConfig) *Judge {
	return &Judge{cfg: cfg, errors: NewSeqTest(cfg.ErrorMargin), sigs: map[string]*sigTest{}, gross: map[string]*grossGroup{}}
}

// Evaluate takes the tick's evidence and returns the verdict.
func (j *Judge) Evaluate(in Input) Result {
	share := in.Share
	dse, dce := sub(in.Stable.Errors, j.last.Stable.Errors), sub(in.Canary.Errors, j.last.Canary.Errors)
	j.errors.Observe(dse, dce, share)
	prevSig := map[string]SignatureEvidence{}
	for _, s := range j.last.Signatures {
		prevSig[s.Key] = s
	}
	for _, s := range in.Signatures {
		t := j.sigs[s.Key]
		if t == nil {
			t = &sigTest{elevated: NewSeqTest(j.cfg.SignatureMargin), order: len(j.sigs) + 1}
			j.sigs[s.Key] = t
		}
		p := prevSig[s.Key]
		ds, dc := sub(s.Stable, p.Stable), sub(s.Canary, p.Canary)
		t.elevated.Observe(ds, dc, share)
		t.onlyNew.Observe(ds, dc, share)
	}
	j.last = in
	j.ticks++

	r := Result{Discarded: in.Discarded, DiscardedFailures: in.DiscardedFailures}
	add := func(rule, format string, args ...any) {
		r.Findings = append(r.Findings, Finding{Rule: rule, Detail: fmt.Sprintf(format, args...)})
	}
	st, ca := in.Stable, in.Canary
	sRate, cRate := rate(st.Errors, st.Requests), rate(ca.Errors, ca.Requests)
	add("counts", "stable %d requests, %d errors (%.2f%%); canary %d requests, %d errors (%.2f%%); canary share %.1f%%",
		st.Requests, st.Errors, 100*sRate, ca.Requests, ca.Errors, 100*cRate, 100*share)
	if in.Discarded+in.DiscardedFailures > 0 {
		add("client_bound", "left out for being over one client's share: %d requests, %d failures", in.Discarded, in.DiscardedFailures)
	}

	// Absolute guards: no statistics needed to see these.
	switch {
	case in.CanaryBackends > 0 && in.CanaryHealthy == 0:
		return r.fail("guard_health", "no canary backend passes its health check (%d of %d down)", in.CanaryBackends, in.CanaryBackends)
	case ca.Requests >= 20 && float64(ca.Gateway) >= 0.5*float64(ca.Requests):
		return r.fail("guard_unreachable", "the canary gave no answer to %d of its %d requests (refused, reset or timed out)", ca.Gateway, ca.Requests)
	case ca.Requests >= 20 && cRate >= 0.5 && sRate < 0.25 && !fewErrorClients(ca):
		return r.fail("guard_errors", "the canary answered %.0f%% of its %d requests with errors, stable %.2f%%", 100*cRate, ca.Requests, 100*sRate)
	}

	// Gross regressions: a route group's median or p90 several times
	// stable's, beyond chance. Checked before the fine statistics so that
	// the obvious is said in seconds.
	if f := j.grossLatency(&r, st, ca); f != "" {
		return r.fail("latency_gross", "%s", f)
	}

	// Signatures first, as the most specific finding: a failure the canary
	// has and stable does not (or far less) is new (elevated); comparable
	// rates make it known, a caveat of the old version that never fails a
	// release. Each is a sequential test; the level is split over the
	// signatures in the order they appeared: the k-th gets 6/(π²k²) of the
	// signatures' share, weights fixed in advance that sum to 1, so the
	// split holds however many signatures come.
	var worst *SignatureClass
	var sigThreshold float64
	for _, s := range in.Signatures {
		t := j.sigs[s.Key]
		lev := t.logE()
		threshold := sigLevel(j.cfg.Alpha, t.order)
		sc := SignatureClass{Key: s.Key, Stable: s.Stable, Canary: s.Canary, LogEvidence: round2(lev),
			ExpectedCanary: round2(float64(s.Stable+s.Canary) * share)}
		switch {
		case s.Canary > 0 && s.Stable == 0:
			sc.Class = "new"
		case s.Canary > 0 && lev >= threshold:
			sc.Class = "elevated"
		default:
			sc.Class = "known"
		}
		sc.FailsRelease = sc.Class != "known" && lev >= threshold && s.Canary >= 2 && s.CanaryClients != 1
		r.Signatures = append(r.Signatures, sc)
		if sc.FailsRelease && (worst == nil || sc.LogEvidence > worst.LogEvidence) {
			c := sc
			worst, sigThreshold = &c, threshold
		}
	}
	sort.Slice(r.Signatures, func(a, b int) bool {
		if r.Signatures[a].Canary != r.Signatures[b].Canary {
			return r.Signatures[a].Canary > r.Signatures[b].Canary
		}
		return r.Signatures[a].Key < r.Signatures[b].Key
	})
	if worst != nil {
		return r.fail("signature", "%s error %q: %d on the canary, %d on stable, %.1f expected on the canary at its share (log e-value %.1f ≥ %.1f)",
			worst.Class, worst.Key, worst.Canary, worst.Stable, worst.ExpectedCanary, worst.LogEvidence, sigThreshold)
	}

	threshold := math.Log(1 / (alphaErrorRate * j.cfg.Alpha))

	// Error rate: the sequential test, and a floor so that a tiny
	// difference at high volume never fails a release.
	le := j.errors.LogEValue()
	add("error_rate", "evidence the canary fails more than %.0f%% more often: log e-value %.2f of %.2f needed; rates %.3f%% against %.3f%%, floor %.2f points",
		100*j.cfg.ErrorMargin, le, threshold, 100*cRate, 100*sRate, 100*j.cfg.ErrorFloor)
	if le >= threshold && cRate-sRate >= j.cfg.ErrorFloor && fewErrorClients(ca) {
		add("error_clients", "the canary's errors came from %d clients only; it takes %d to fail a release by its error rate", ca.ErrorClients, MinErrorClients)
	}
	if le >= threshold && cRate-sRate >= j.cfg.ErrorFloor && !fewErrorClients(ca) {
		r = r.fail("error_rate", "the canary's error rate %.2f%% is above stable's %.2f%% beyond the %.0f%% margin (log e-value %.1f ≥ %.1f)",
			100*cRate, 100*sRate, 100*j.cfg.ErrorMargin, le, threshold)
		// Name the failure the canary has most of that stable does not
		// share, so the reason says what to look at.
		for _, sc := range r.Signatures {
			if sc.Class != "known" {
				r.Reason += fmt.Sprintf("; most often %s error %q: %d on the canary, %d on stable", sc.Class, sc.Key, sc.Canary, sc.Stable)
				break
			}
		}
		return r
	}

	// Latency, per route group, from the warm-up's end.
	if f := j.compareLatency(&r, st, ca); f != "" {
		return r.fail("latency", "%s", f)
	}

	if in.Held {
		r.Verdict, r.Rule, r.Reason = Hold, "held", "automatic steps are on hold by an operator"
		return r
	}
	elapsed := in.Now.Sub(in.StepStart)
	if elapsed < j.cfg.StepMinTime || in.StepCanaryRequests < j.cfg.StepMinRequests {
		if elapsed >= 3*j.cfg.StepMinTime && in.StepCanaryRequests < j.cfg.StepMinRequests {
			r.Verdict, r.Rule = Hold, "too_little_traffic"
			r.Reason = fmt.Sprintf("the canary served %d of the %d requests this step needs in %s; it holds until it has enough",
				in.StepCanaryRequests, j.cfg.StepMinRequests, elapsed.Round(time.Second))
			return r
		}
		r.Verdict, r.Rule = Inconclusive, "gathering"
		r.Reason = fmt.Sprintf("gathering evidence: %d of %d canary requests, %s of %s",
			in.StepCanaryRequests, j.cfg.StepMinRequests, elapsed.Round(time.Second), j.cfg.StepMinTime)
		return r
	}
	r.Verdict, r.Rule = Pass, "no_difference"
	r.Reason = fmt.Sprintf("no difference beyond tolerance after %d canary requests in this step: error rate %.2f%% against %.2f%%",
		in.StepCanaryRequests, 100*cRate, 100*sRate)
	return r
}

// fewErrorClients: the errors came from known clients, too few of them.
func fewErrorClients(s Side) bool { return s.ErrorClients > 0 && s.ErrorClients < MinErrorClients }

// sigLevel is the log e-value the k-th signature must reach: its share of
// α is alphaSignatures · 6/(π²k²).
func sigLevel(alpha float64, k int) float64 {
	w := 6 / (math.Pi * math.Pi * float64(k) * float64(k))
	return math.Log(1 / (alphaSignatures * alpha * w))
}

func (r Result) fail(rule, format string, args ...any) Result {
	r.Verdict, r.Rule, r.Reason = Fail, rule, fmt.Sprintf(format, args...)
	return r
}

// grossQuantiles are the quantiles the gross rule watches, with the fewest
// stable samples its bound needs.
var grossQuantiles = [2]struct {
	q    float64
	name string
	min  uint64
}{{0.5, "p50", 30}, {0.9, "p90", 100}}

// grossGroup is the gross-regression evidence of one route group: for p50
// and p90, a sequential sign test that more than half (a tenth) of the
// canary's requests take longer than GrossFactor times stable's quantile.
type grossGroup struct {
	tests [2]*BernoulliTest
	seen  Snapshot // the canary's latency at the last look, to take increments
}

// grossLatency returns why the canary is grossly slower, or "". For each
// route group and quantile q (p50, p90) it takes stable's upper confidence
// bound u (distribution-free, from the ranks), the limit L = max(factor·u,
// u + floor), and counts the canary's requests since the last look that
// certainly took longer than L (their histogram bucket starts above it). If
// the canary's q quantile were at most L, each would do so with probability
// at most 1 − q: a sequential sign test of that, one per group and
// quantile, each at its share of alphaGross.
func (j *Judge) grossLatency(r *Result, st, ca Side) string {
	groups := make([]string, 0, len(ca.Latency))
	for g := range ca.Latency {
		if st.Latency[g] != nil {
			groups = append(groups, g)
		}
	}
	if len(groups) == 0 {
		return ""
	}
	sort.Strings(groups)
	// Split over every group there can be (× p50, p90), fixed in advance.
	threshold := math.Log(float64(2*MaxGroups) / (alphaGross * j.cfg.Alpha))
	floor := float64(j.cfg.GrossFloor / time.Microsecond)
	for _, g := range groups {
		cs, ss := ca.Latency[g], st.Latency[g]
		gg := j.gross[g]
		if gg == nil {
			gg = &grossGroup{}
			for i, gq := range grossQuantiles {
				gg.tests[i] = NewBernoulliTest(1 - gq.q)
			}
			j.gross[g] = gg
		}
		d := *cs
		if gg.seen.Count <= cs.Count {
			d = cs.Sub(&gg.seen)
		}
		gg.seen = *cs
		for i, gq := range grossQuantiles {
			if ss.Count < gq.min {
				continue
			}
			_, sMid, sHi := quantileCI(ss, gq.q, latencyZ)
			limit := math.Max(j.cfg.GrossFactor*sHi, sHi+floor)
			t := gg.tests[i]
			t.Observe(d.countFrom(limit), d.Count)
			le := t.LogEValue()
			cMid := cs.Quantile(gq.q)
			if le < threshold || !(cMid >= limit) {
				continue
			}
			above := cs.countFrom(limit)
			return fmt.Sprintf("%s of %s is %s on the canary against %s on stable (%.1f× slower): %d of its %d requests took over %s (%g× stable's at most %s, and at least %s more; log e-value %.1f ≥ %.1f)",
				gq.name, g, ms(cMid), ms(sMid), cMid/sMid, above, cs.Count, ms(limit), j.cfg.GrossFactor, ms(sHi), ms(floor), le, threshold)
		}
	}
	return ""
}

// countFrom returns the observations certainly at least us: those in
// buckets whose lower edge is at least us.
func (s *Snapshot) countFrom(us float64) uint64 {
	var n uint64
	for i := NumBuckets - 1; i >= 0; i-- {
		lo, _ := BucketBounds(i)
		if float64(lo) < us {
			break
		}
		n += s.Buckets[i]
	}
	return n
}

// compareLatency returns why the canary is slower, or "". A quantile counts
// as slower when the canary's lower confidence bound is above the stable
// upper bound by the relative tolerance and the floor.
func (j *Judge) compareLatency(r *Result, st, ca Side) string {
	groups := make([]string, 0, len(ca.Latency))
	for g := range ca.Latency {
		if st.Latency[g] != nil {
			groups = append(groups, g)
		}
	}
	sort.Strings(groups)
	floor := float64(j.cfg.LatencyFloor / time.Microsecond)
	for _, g := range groups {
		cs, ss := ca.Latency[g], st.Latency[g]
		for _, jq := range judgedQuantiles {
			if cs.Count < jq.min || ss.Count < jq.min {
				continue
			}
			cLo, cMid, _ := quantileCI(cs, jq.q, latencyZ)
			_, sMid, sHi := quantileCI(ss, jq.q, latencyZ)
			worse := cLo > sHi*(1+j.cfg.LatencyTol) && cLo-sHi >= floor
			r.Findings = append(r.Findings, Finding{Rule: "latency_" + jq.name,
				Detail: fmt.Sprintf("%s %s: canary %s (at least %s), stable %s (at most %s), %d and %d samples",
					g, jq.name, ms(cMid), ms(cLo), ms(sMid), ms(sHi), cs.Count, ss.Count)})
			if worse {
				return fmt.Sprintf("%s of %s is %s on the canary against %s on stable (%.0f%% slower; at least %s against at most %s, beyond the %.0f%% tolerance)",
					jq.name, g, ms(cMid), ms(sMid), 100*(cMid/sMid-1), ms(cLo), ms(sHi), 100*j.cfg.LatencyTol)
			}
		}
	}
	return ""
}

// quantileCI returns a distribution-free confidence interval for the q
// quantile (by the ranks of the order statistics around nq) and the point
// estimate, in microseconds, from the histogram: the lower bound uses the
// lower edge of its bucket and the upper bound the upper edge, so bucket
// width only widens the interval.
func quantileCI(s *Snapshot, q, z float64) (lo, mid, hi float64) {
	n := float64(s.Count)
	sd := math.Sqrt(n * q * (1 - q))
	loRank := uint64(math.Max(1, math.Floor(n*q-z*sd)))
	hiRank := uint64(math.Min(n, math.Ceil(n*q+z*sd+1)))
	lo = s.rankBound(loRank, false)
	hi = s.rankBound(hiRank, true)
	mid = s.Quantile(q)
	return lo, mid, hi
}

// rankBound returns the lower (upper=false) or upper edge of the bucket that
// holds the rank-th smallest observation.
func (s *Snapshot) rankBound(rank uint64, upper bool) float64 {
	var seen uint64
	for i, c := range s.Buckets {
		seen += c
		if seen >= rank {
			lo, hi := BucketBounds(i)
			if upper {
				return float64(hi)
			}
			return float64(lo)
		}
	}
	lo, _ := BucketBounds(NumBuckets - 1)
	return float64(lo)
}

func ms(us float64) string {
	switch {
	case us >= 10000:
		return fmt.Sprintf("%.0fms", us/1000)
	case us >= 1000:
		return fmt.Sprintf("%.1fms", us/1000)
	}
	return fmt.Sprintf("%.2fms", us/1000)
}

func rate(errors, requests uint64) float64 {
	if requests == 0 {
		return 0
	}
	return float64(errors) / float64(requests)
}

func sub(a, b uint64) uint64 {
	if a < b {
		return 0
	}
	return a - b
}

func round2(x float64) float64 { return math.Round(x*100) / 100 }
