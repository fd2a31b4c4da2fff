package canary

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"
)

func testJudgeConfig() JudgeConfig {
	return JudgeConfig{
		Alpha: 0.01, ErrorMargin: 0.1, ErrorFloor: 0.002, LatencyTol: 0.1, LatencyFloor: 5 * time.Millisecond,
		SignatureMargin: 0.5, GrossFactor: 2, GrossFloor: 20 * time.Millisecond, StepMinTime: time.Minute, StepMinRequests: 200,
	}
}

// sim is a seeded synthetic release: requests split by share, errors and
// latencies drawn per version, fed to a Judge tick by tick.
type sim struct {
	rng       *rand.Rand
	share     float64 // canary share
	perTick   int     // requests per tick (5 s)
	errStable float64
	errCanary float64
	latCanary func(us float64) float64 // transforms a stable-like latency for the canary
	newSig    float64                  // rate of a canary-only error signature
	knownSig  float64                  // rate of a signature both versions have
	maxTicks  int
	// warmupRequests: latency is judged from the tick the canary has
	// served this many (as the control loop's warm-up by evidence does).
	warmupRequests uint64
	warmed         bool
	stable         Side
	canary         Side
	sHist          Histogram
	cHist          Histogram
	ss, cs         Snapshot
	signatures     map[string]*SignatureEvidence
}

func newSim(seed uint64) *sim {
	return &sim{
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), share: 0.1, perTick: 200,
		errStable: 0.005, errCanary: 0.005, latCanary: func(us float64) float64 { return us },
		maxTicks: 120, signatures: map[string]*SignatureEvidence{},
	}
}

// latency draws a realistic response time in µs: log-normal, median 40 ms,
// p99 about 160 ms.
func (s *sim) latency() float64 { return 40000 * math.Exp(0.6*s.rng.NormFloat64()) }

func (e *SignatureEvidence) canaryCount() uint64 {
	if e == nil {
		return 0
	}
	return e.Canary
}

func (s *sim) sig(key string, canary bool) {
	e := s.signatures[key]
	if e == nil {
		e = &SignatureEvidence{Key: key}
		s.signatures[key] = e
	}
	if canary {
		e.Canary++
	} else {
		e.Stable++
	}
}

// run feeds ticks until the judge fails the canary or maxTicks pass. It
// returns the first failing result (or the last one) and the canary
// requests seen by then.
func (s *sim) run(cfg JudgeConfig) (Result, uint64, int) {
	j := NewJudge(cfg)
	start := time.Unix(0, 0)
	var last Result
	for tick := 1; tick <= s.maxTicks; tick++ {
		var nc uint64
		for range s.perTick {
			canary := s.rng.Float64() < s.share
			side, h, errRate := &s.stable, &s.sHist, s.errStable
			if canary {
				side, h, errRate = &s.canary, &s.cHist, s.errCanary
				nc++
			}
			side.Requests++
			u := s.rng.Float64()
			switch {
			case u < errRate:
				side.Errors++
				s.sig("GET /catalog 500", canary)
			case canary && u < errRate+s.newSig:
				side.Errors++
				s.sig("POST /checkout 500 code=PAYMENT_TIMEOUT", true)
			case u < errRate+s.knownSig:
				side.Errors++
				s.sig("GET /search 503", canary)
			}
			lat := s.latency()
			if canary {
				lat = s.latCanary(lat)
			}
			h.Observe(time.Duration(lat) * time.Microsecond)
		}
		if tick == 1 {
			s.warmed = s.warmupRequests == 0
		}
		if !s.warmed {
			// Still warming up: the latency so far is not evidence; it
			// starts after the tick the canary served enough.
			s.sHist, s.cHist = Histogram{}, Histogram{}
			s.warmed = s.canary.Requests >= s.warmupRequests
		}
		s.sHist.Snapshot(&s.ss)
		s.cHist.Snapshot(&s.cs)
		if s.stable.Latency == nil && s.ss.Count > 0 {
			s.stable.Latency = map[string]*Snapshot{"/": &s.ss}
			s.canary.Latency = map[string]*Snapshot{"/": &s.cs}
		}
		in := Input{
			Now: start.Add(time.Duration(tick) * 5 * time.Second), Share: float64(nc) / float64(s.perTick),
			Stable: s.stable, Canary: s.canary, StepStart: start, StepCanaryRequests: s.canary.Requests,
			CanaryBackends: 1, CanaryHealthy: 1,
		}
		for _, e := range s.signatures {
			in.Signatures = append(in.Signatures, *e)
		}
		sort.Slice(in.Signatures, func(a, b int) bool { return in.Signatures[a].Key < in.Signatures[b].Key })
		last = j.Evaluate(in)
		if last.Verdict == Fail {
			return last, s.canary.Requests, tick
		}
	}
	return last, s.canary.Requests, s.maxTicks
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

type calibrationRow struct {
	scenario, outcome string
}

// TestJudgeCalibration runs seeded synthetic releases through the judge
// alone (no network) and checks its error rates: the table it logs is the
// one in the README's "How the judge decides".
func TestJudgeCalibration(t *testing.T) {
	cfg := testJudgeConfig()
	var rows []calibrationRow
	// The race detector adds nothing to this single-goroutine simulation
	// and makes it twenty times slower: it runs a quarter of the releases.
	runs := 1000
	if testing.Short() || raceEnabled {
		runs = 200
	}

	// 1. A/A: identical versions must almost never fail.
	fails := map[string]int{}
	for i := range runs {
		s := newSim(uint64(i) + 1)
		s.maxTicks = 360 // 30 min, judged every 5 s
		s.warmupRequests, s.knownSig = 100, 0.01
		r, _, _ := s.run(cfg)
		if r.Verdict == Fail {
			fails[r.Rule]++
		}
	}
	total := 0
	for _, n := range fails {
		total += n
	}
	rate := float64(total) / float64(runs)
	rows = append(rows, calibrationRow{
		fmt.Sprintf("A/A, every rule on: both 0.5 %% errors and a shared 1 %% signature, realistic latency, 10 %% share, 30 min judged every 5 s (%d runs)", runs),
		fmt.Sprintf("false fail %.1f %% (α = %.0f %%) %v", 100*rate, 100*cfg.Alpha, fails)})
	if rate > cfg.Alpha {
		t.Errorf("A/A false fail rate %.2f%% exceeds α %.0f%%: %v", 100*rate, 100*cfg.Alpha, fails)
	}

	// 2. Error rate doubled on the canary.
	n := runs / 5
	var needed []float64
	failed := 0
	for i := range n {
		s := newSim(uint64(10000 + i))
		s.errCanary = 0.010
		s.maxTicks = 720 // 60 min
		r, req, _ := s.run(cfg)
		if r.Verdict == Fail && r.Rule == "error_rate" {
			failed++
			needed = append(needed, float64(req))
		}
	}
	rows = append(rows, calibrationRow{"errors 0.5 % → 1.0 % on the canary, 10 % share, up to 60 min",
		fmt.Sprintf("failed %d of %d runs; median %.0f canary requests", failed, n, median(needed))})
	if float64(failed) < 0.8*float64(n) {
		t.Errorf("a doubled error rate failed only %d of %d releases", failed, n)
	}

	// 3. A new error signature (2 % of canary requests), at three shares,
	// within 30 minutes.
	for _, share := range []float64{0.01, 0.05, 0.10} {
		var occ []float64
		failed := 0
		for i := range n {
			s := newSim(uint64(20000 + i))
			s.share, s.newSig, s.maxTicks = share, 0.02, 360
			r, _, _ := s.run(cfg)
			if r.Verdict == Fail {
				failed++
				occ = append(occ, float64(s.signatures["POST /checkout 500 code=PAYMENT_TIMEOUT"].Canary))
			}
		}
		rows = append(rows, calibrationRow{fmt.Sprintf("new error signature on 2 %% of canary requests, %.0f %% share", 100*share),
			fmt.Sprintf("failed %d of %d runs; median %.0f occurrences", failed, n, median(occ))})
		if float64(failed) < 0.9*float64(n) {
			t.Errorf("a new signature at %.0f%% share failed only %d of %d releases", 100*share, failed, n)
		}
	}

	// 4. A failure both versions share at the same rate is known.
	knownFails := 0
	for i := range n {
		s := newSim(uint64(30000 + i))
		s.knownSig = 0.01
		r, _, _ := s.run(cfg)
		if r.Verdict == Fail {
			knownFails++
		}
		for _, sc := range r.Signatures {
			if sc.Key == "GET /search 503" && sc.Canary > 0 && sc.Class != "known" && i == 0 {
				t.Errorf("a signature at the same rate on both versions is %q", sc.Class)
			}
		}
	}
	rows = append(rows, calibrationRow{"a signature both versions have at 1 %",
		fmt.Sprintf("failed %d of %d runs (known, never fails)", knownFails, n)})
	if float64(knownFails) > cfg.Alpha*float64(n)+1 {
		t.Errorf("a known signature failed %d of %d releases", knownFails, n)
	}

	// 5. Slower canary: the tail (p99 +50 %), and everything (p50 +20 %).
	tail := func(us float64) float64 {
		if us > 40000*math.Exp(0.6*1.2816) { // above stable's p90
			return us * 1.5
		}
		return us
	}
	for _, c := range []struct {
		name string
		f    func(float64) float64
	}{{"canary p99 +50 % (tail only)", tail}, {"canary p50 +20 % (all slower)", func(us float64) float64 { return us * 1.2 }}} {
		var req []float64
		failed := 0
		for i := range n {
			s := newSim(uint64(40000 + i))
			s.latCanary, s.maxTicks = c.f, 360
			r, q, _ := s.run(cfg)
			if r.Verdict == Fail && r.Rule == "latency" {
				failed++
				req = append(req, float64(q))
			}
		}
		rows = append(rows, calibrationRow{c.name + ", 10 % share",
			fmt.Sprintf("failed %d of %d runs; median %.0f canary requests", failed, n, median(req))})
		if float64(failed) < 0.8*float64(n) {
			t.Errorf("%s: detected in only %d of %d releases", c.name, failed, n)
		}
	}

	// 6. Gross regressions at 300 requests/s: a route 3× and 2× slower
	// (every request), and a new error on 2 % of one route's requests (a
	// fifth of the traffic), latency judged after 100 canary requests.
	for _, c := range []struct {
		name   string
		factor float64
		sig    float64
	}{{"a route 3× slower (every request)", 3, 0}, {"a route 2× slower (every request)", 2, 0},
		{"a new error on 2 % of one route (a fifth of the requests)", 1, 0.02 / 5}} {
		var req, secs, occ []float64
		failed, byRule := 0, map[string]int{}
		for i := range n {
			s := newSim(uint64(60000 + i))
			s.perTick, s.maxTicks, s.warmupRequests, s.newSig = 1500, 120, 100, c.sig
			f := c.factor
			s.latCanary = func(us float64) float64 { return us * f }
			r, q, tick := s.run(cfg)
			if r.Verdict == Fail {
				failed++
				byRule[r.Rule]++
				req = append(req, float64(q))
				secs = append(secs, float64(5*tick))
				occ = append(occ, float64(s.signatures["POST /checkout 500 code=PAYMENT_TIMEOUT"].canaryCount()))
			}
		}
		out := fmt.Sprintf("failed %d of %d runs %v; median %.0f canary requests, %.0f s", failed, n, byRule, median(req), median(secs))
		if c.sig > 0 {
			out += fmt.Sprintf(", %.0f occurrences", median(occ))
		}
		rows = append(rows, calibrationRow{c.name + ", 10 % share of 300 requests/s", out})
		if failed < n {
			t.Errorf("%s: failed only %d of %d releases", c.name, failed, n)
		}
		if c.factor == 3 && median(secs) > 10 {
			t.Errorf("a 3× slower route took a median %.0f s to fail", median(secs))
		}
	}

	// 7. Too little data never fails.
	holds := map[string]int{}
	for i := range n {
		s := newSim(uint64(50000 + i))
		s.perTick, s.share, s.maxTicks = 2, 0.5, 20 // 20 canary requests in all
		s.errCanary = 0.05
		r, _, _ := s.run(cfg)
		holds[r.Verdict]++
	}
	rows = append(rows, calibrationRow{"a canary with about 20 requests in all (5 % errors)",
		fmt.Sprintf("verdicts %v", holds)})
	if holds[Fail] > 0 || holds[Pass] > 0 {
		t.Errorf("a canary with 20 requests got %v; want only hold or inconclusive", holds)
	}

	var sb strings.Builder
	sb.WriteString("| scenario | outcome |\n|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&sb, "| %s | %s |\n", r.scenario, r.outcome)
	}
	t.Logf("judge calibration (α %.0f %%, margin %.0f %%, floor %.1f points, latency tolerance %.0f %%):\n%s",
		100*cfg.Alpha, 100*cfg.ErrorMargin, 100*cfg.ErrorFloor, 100*cfg.LatencyTol, sb.String())
}

// TestJudgeGuardsAndHolds: absolute guards fail without statistics; an
// operator's hold and too little traffic hold, never fail.
func TestJudgeGuardsAndHolds(t *testing.T) {
	cfg := testJudgeConfig()
	start := time.Unix(0, 0)
	base := Input{Now: start.Add(10 * time.Second), Share: 0.1, StepStart: start, CanaryBackends: 1, CanaryHealthy: 1,
		Stable: Side{Requests: 1000, Errors: 5}, Canary: Side{Requests: 100, Errors: 0}, StepCanaryRequests: 100}
	cases := []struct {
		name        string
		edit        func(*Input)
		verdict     string
		rule        string
		reasonWords string
	}{
		{"no healthy canary backend", func(in *Input) { in.CanaryHealthy = 0 }, Fail, "guard_health", "health check"},
		{"canary gives no answer", func(in *Input) { in.Canary.Gateway, in.Canary.Errors = 60, 60 }, Fail, "guard_unreachable", "no answer"},
		{"canary answers mostly errors", func(in *Input) { in.Canary.Errors = 70 }, Fail, "guard_errors", "errors"},
		{"held by an operator", func(in *Input) { in.Held = true; in.Now = start.Add(10 * time.Minute) }, Hold, "held", "on hold"},
		{"too little traffic", func(in *Input) {
			in.Now, in.StepCanaryRequests, in.Canary.Requests = start.Add(10*time.Minute), 12, 12
		}, Hold, "too_little_traffic", "12 of the 200"},
		{"still gathering", func(in *Input) { in.StepCanaryRequests = 12 }, Inconclusive, "gathering", "12 of 200"},
		{"enough and fine", func(in *Input) { in.Now = start.Add(2 * time.Minute); in.StepCanaryRequests = 300 }, Pass, "no_difference", "no difference"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			in := base
			c.edit(&in)
			r := NewJudge(cfg).Evaluate(in)
			if r.Verdict != c.verdict || r.Rule != c.rule || !strings.Contains(r.Reason, c.reasonWords) {
				t.Errorf("got %s/%s %q; want %s/%s with %q", r.Verdict, r.Rule, r.Reason, c.verdict, c.rule, c.reasonWords)
			}
		})
	}
}

// When the error rate fails a release before any one signature has enough
// evidence of its own, the reason still names the failure to look at: the
// canary's most frequent one that stable does not share.
func TestJudgeErrorRateNamesTheSignature(t *testing.T) {
	start := time.Unix(0, 0)
	in := Input{Now: start.Add(10 * time.Second), Share: 0.1, StepStart: start, CanaryBackends: 1, CanaryHealthy: 1,
		Stable: Side{Requests: 1000, Errors: 40}, Canary: Side{Requests: 100, Errors: 20}, StepCanaryRequests: 100,
		Signatures: []SignatureEvidence{
			{Key: "GET /search 500 server_error", Stable: 40, Canary: 4}, // known: stable has it as often
			{Key: "GET /cart 502 bad_gateway", Canary: 2},                // new, too rare to fail on its own
		}}
	for i := range 14 { // and rarer ones still
		in.Signatures = append(in.Signatures, SignatureEvidence{Key: fmt.Sprintf("POST /orders 500 server_error code=E%d", i), Canary: 1})
	}
	r := NewJudge(testJudgeConfig()).Evaluate(in)
	if r.Verdict != Fail || r.Rule != "error_rate" {
		t.Fatalf("got %s/%s %q; want a fail by error_rate", r.Verdict, r.Rule, r.Reason)
	}
	want := `; most often new error "GET /cart 502 bad_gateway": 2 on the canary, 0 on stable`
	if !strings.HasSuffix(r.Reason, want) {
		t.Errorf("reason %q; want it to end with %q", r.Reason, want)
	}
}

// Two occurrences of a new signature fail the canary when chance would
// explain them less often than the first signature's share of α allows
// (the arithmetic in the README): the bar is 1/(½·α·6/π²) ≈ 329; at a 3.5 %
// share 1/(2·0.035²) ≈ 408 passes it, at 5 % 200 and at 10 % 50 fall short,
// and at 10 % a third occurrence (500) is needed.
func TestJudgeNewSignatureAtTwoOccurrences(t *testing.T) {
	start := time.Unix(0, 0)
	for _, c := range []struct {
		share float64
		occ   uint64
		fail  bool
	}{{0.035, 2, true}, {0.02, 2, true}, {0.05, 2, false}, {0.10, 2, false}, {0.10, 3, true}, {0.02, 1, false}} {
		j := NewJudge(testJudgeConfig())
		stable, canary := uint64(0), uint64(0)
		var r Result
		for tick := uint64(1); tick <= c.occ; tick++ {
			stable += 1000
			canary += uint64(1000 * c.share / (1 - c.share))
			r = j.Evaluate(Input{Now: start.Add(time.Duration(tick) * 5 * time.Second), Share: c.share, StepStart: start,
				CanaryBackends: 1, CanaryHealthy: 1, StepCanaryRequests: canary,
				Stable: Side{Requests: stable}, Canary: Side{Requests: canary, Errors: tick},
				Signatures: []SignatureEvidence{{Key: "POST /checkout 500 server_error", Canary: tick}}})
		}
		if got := r.Verdict == Fail && r.Rule == "signature"; got != c.fail {
			t.Errorf("%d occurrences at %.0f%% share: verdict %s/%s %q; want fail %v", c.occ, 100*c.share, r.Verdict, r.Rule, r.Reason, c.fail)
		}
	}
}

// A route three times slower fails by the gross rule with a reason naming
// the group and both medians; one as fast never does.
func TestJudgeGrossRegression(t *testing.T) {
	start := time.Unix(0, 0)
	for _, factor := range []float64{3, 1} {
		rng := rand.New(rand.NewPCG(7, 7))
		var sh, ch Histogram
		var ss, cs Snapshot
		cfg := testJudgeConfig()
		cfg.LatencyTol = 5 // the fine comparison stays out of the way
		j := NewJudge(cfg)
		var r Result
		for tick := 1; tick <= 4 && r.Verdict != Fail; tick++ {
			for range 300 {
				sh.Observe(time.Duration(22000*math.Exp(0.3*rng.NormFloat64())) * time.Microsecond)
			}
			for range 30 {
				ch.Observe(time.Duration(factor*22000*math.Exp(0.3*rng.NormFloat64())) * time.Microsecond)
			}
			sh.Snapshot(&ss)
			ch.Snapshot(&cs)
			s, c := ss, cs
			r = j.Evaluate(Input{Now: start.Add(time.Duration(tick) * 5 * time.Second), Share: 0.1, StepStart: start,
				CanaryBackends: 1, CanaryHealthy: 1,
				Stable: Side{Requests: uint64(300 * tick), Latency: map[string]*Snapshot{"/search": &s}},
				Canary: Side{Requests: uint64(30 * tick), Latency: map[string]*Snapshot{"/search": &c}}})
		}
		if factor == 1 {
			if r.Verdict == Fail {
				t.Errorf("an equally fast canary failed: %s %q", r.Rule, r.Reason)
			}
			continue
		}
		if r.Verdict != Fail || r.Rule != "latency_gross" || !strings.Contains(r.Reason, "p50 of /search is") ||
			!strings.Contains(r.Reason, "on the canary against 2") {
			t.Errorf("3× slower /search: %s/%s %q; want latency_gross naming /search and both medians", r.Verdict, r.Rule, r.Reason)
		}
		t.Logf("3× slower: %s", r.Reason)
	}
}
