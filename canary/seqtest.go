package canary

import "math"

// SeqTest is an anytime-valid sequential test of whether the canary's error
// rate exceeds the stable version's by more than a relative margin. It may
// be looked at after every batch of evidence without inflating its false
// alarm rate: its statistic is a mixture of likelihood ratios, a test
// martingale under the null, so by Ville's inequality it exceeds 1/α with
// probability at most α over the whole release (Robbins' method of
// mixtures).
//
// The model conditions on the errors: an error lands on the canary with
// probability θ = sρ/(sρ + 1 − s), where s is the canary's share of the
// requests when it happened and ρ the ratio of the canary's error rate to the
// stable one's. The null is ρ ≤ ρ0 = 1 + margin; the alternatives are a grid
// of ρ > ρ0 with prior weights. Because θ grows with ρ, each alternative's
// likelihood ratio is a supermartingale for every ρ ≤ ρ0, so the test stays
// valid for the whole composite null. Knowing s from actual request counts
// makes the test immune to how the traffic was split.
//
// A SeqTest is not safe for concurrent use.
type SeqTest struct {
	rho0   float64
	logw   []float64 // log prior weight of each alternative
	rho    []float64 // the alternatives
	logLR  []float64 // accumulated log likelihood ratio of each
	errors [2]uint64 // errors seen on stable, canary
}

// seqGrid: alternatives from ρ0·1.1 to ρ0·1000, log-spaced, with equal
// prior weights per doubling, so both modest and gross effects are found.
const seqGrid = 40

// NewSeqTest returns a test with relative margin (0.1: the canary may fail
// 10 % more often than stable before it counts as worse).
func NewSeqTest(margin float64) *SeqTest {
	t := &SeqTest{rho0: 1 + margin}
	total := 0.0
	for i := range seqGrid {
		f := float64(i) / float64(seqGrid-1)
		t.rho = append(t.rho, t.rho0*1.1*math.Pow(1000/1.1, f))
		w := 1.0
		t.logw = append(t.logw, w)
		total += w
	}
	for i := range t.logw {
		t.logw[i] = math.Log(t.logw[i] / total)
	}
	t.logLR = make([]float64, seqGrid)
	return t
}

func theta(s, rho float64) float64 { return s * rho / (s*rho + 1 - s) }

// Observe adds a batch: stableErrs and canaryErrs errors that happened while
// the canary had share s (0 < s < 1) of the requests.
func (t *SeqTest) Observe(stableErrs, canaryErrs uint64, s float64) {
	if stableErrs+canaryErrs == 0 || s <= 0 || s >= 1 || math.IsNaN(s) {
		return
	}
	t.errors[0] += stableErrs
	t.errors[1] += canaryErrs
	th0 := theta(s, t.rho0)
	lc0, ls0 := math.Log(th0), math.Log(1-th0)
	for i, r := range t.rho {
		th := theta(s, r)
		t.logLR[i] += float64(canaryErrs)*(math.Log(th)-lc0) + float64(stableErrs)*(math.Log(1-th)-ls0)
	}
}

// LogEValue returns the log of the mixture likelihood ratio: evidence against
// "the canary is no worse than stable by more than the margin". Reject at
// significance α when it is at least log(1/α).
func (t *SeqTest) LogEValue() float64 {
	m := math.Inf(-1)
	for i := range t.logLR {
		m = math.Max(m, t.logw[i]+t.logLR[i])
	}
	sum := 0.0
	for i := range t.logLR {
		sum += math.Exp(t.logw[i] + t.logLR[i] - m)
	}
	return m + math.Log(sum)
}

// Errors returns the errors observed on stable and canary.
func (t *SeqTest) Errors() (stable, canary uint64) { return t.errors[0], t.errors[1] }

// NewTest is the sequential test for a failure that, so far, only the canary
// has. Under the null — the canary has it no more often than stable — each
// occurrence lands on the canary with probability at most s, the canary's
// share of the requests when it happened. Its e-value is the likelihood
// ratio of the alternative "it only happens on the canary": ∏ 1/s over the
// occurrences while every one is on the canary, and 0 for good once stable
// has one. It is a test martingale under the null, so it passes 1/α with
// probability at most α however often it is looked at; two occurrences at a
// 5 % share give 1/0.05² = 400, and at 10 % 1/0.1² = 100.
//
// The zero value is ready to use; a NewTest is not safe for concurrent use.
type NewTest struct {
	logE float64
	dead bool // stable had it: the alternative is refuted
}

// Observe adds a batch: stableErrs and canaryErrs occurrences while the
// canary had share s (0 < s < 1).
func (t *NewTest) Observe(stableErrs, canaryErrs uint64, s float64) {
	if t.dead || stableErrs+canaryErrs == 0 || s <= 0 || s >= 1 || math.IsNaN(s) {
		return
	}
	if stableErrs > 0 {
		t.dead = true
		return
	}
	t.logE += float64(canaryErrs) * -math.Log(s)
}

// LogEValue returns the log of the e-value (−Inf once stable had it).
func (t *NewTest) LogEValue() float64 {
	if t.dead {
		return math.Inf(-1)
	}
	return t.logE
}

// BernoulliTest is a sequential test that the probability of an event is
// above p0: a mixture, over a grid of alternatives p > p0, of the
// likelihood ratios of Bernoulli trials. Under any probability ≤ p0 each
// alternative's ratio is a supermartingale, so the mixture passes 1/α with
// probability at most α over any number of looks.
//
// A BernoulliTest is not safe for concurrent use.
type BernoulliTest struct {
	p0    float64
	p     []float64
	logLR []float64
}

// NewBernoulliTest returns a test of "the probability is above p0" with
// alternatives spread between p0 and 1.
func NewBernoulliTest(p0 float64) *BernoulliTest {
	t := &BernoulliTest{p0: p0}
	for _, f := range []float64{0.2, 0.4, 0.6, 0.75, 0.9, 0.97} {
		t.p = append(t.p, p0+(1-p0)*f)
	}
	t.logLR = make([]float64, len(t.p))
	return t
}

// Observe adds n trials of which k had the event.
func (t *BernoulliTest) Observe(k, n uint64) {
	if n == 0 || k > n {
		return
	}
	for i, p := range t.p {
		t.logLR[i] += float64(k)*math.Log(p/t.p0) + float64(n-k)*math.Log((1-p)/(1-t.p0))
	}
}

// LogEValue returns the log of the mixture's e-value (equal weights).
func (t *BernoulliTest) LogEValue() float64 {
	m := math.Inf(-1)
	for _, l := range t.logLR {
		m = math.Max(m, l)
	}
	sum := 0.0
	for _, l := range t.logLR {
		sum += math.Exp(l - m)
	}
	return m + math.Log(sum/float64(len(t.logLR)))
}
