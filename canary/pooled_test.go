package canary

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"
)

func contribution(run string, weight float64, stable, canary uint64, lat time.Duration) *Contribution {
	var h Histogram
	for range canary {
		h.Observe(lat)
	}
	var s Snapshot
	h.Snapshot(&s)
	c := &Contribution{Run: run, At: time.Now(), Weight: weight, StepCanaryRequests: canary,
		Stable: SideEvidence{Version: "v1", Requests: stable, Errors: 1, ErrorClients: 5},
		Canary: SideEvidence{Version: "v2", Requests: canary, Errors: 2, ErrorClients: 2, Latency: map[string]*Snapshot{"/api": &s}, All: s},
		Signatures: []SigEvidence{{Key: "GET /api 500 server_error", Stable: 1, Canary: 2, CanaryClients: 2,
			Example: &Example{Time: time.Now(), Version: "v2", Path: "/api/x", Status: 500}}}}
	return c
}

// Contributions survive the wire and add up: counts and histograms sum,
// capped client counts stay capped, a step counts only at the current
// share, another run's evidence is left out.
func TestPoolAddsContributions(t *testing.T) {
	a := contribution("v2@0", 10, 900, 100, 3*time.Millisecond)
	b := contribution("v2@0", 5, 450, 50, 30*time.Millisecond)
	old := contribution("v2@1", 10, 1e6, 1e6, time.Second)
	var wire []*Contribution
	for _, c := range []*Contribution{a, b, old} {
		data, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		var back Contribution
		if err := json.Unmarshal(data, &back); err != nil {
			t.Fatalf("%v in %s", err, data)
		}
		wire = append(wire, &back)
	}
	p := Pool("v2@0", 10, wire)
	if p.Stable.Requests != 1350 || p.Canary.Requests != 150 || p.Canary.Errors != 4 || p.Stable.Errors != 2 {
		t.Fatalf("counts: %+v %+v", p.Stable, p.Canary)
	}
	if p.StepCanaryRequests != 100 {
		t.Fatalf("step requests %d, want 100 (only the contribution at 10%%)", p.StepCanaryRequests)
	}
	if p.Stable.ErrorClients != MaxErrorClients || p.Canary.ErrorClients != 4 {
		t.Fatalf("error clients %d %d", p.Stable.ErrorClients, p.Canary.ErrorClients)
	}
	l := p.Canary.Latency["/api"]
	if l == nil || l.Count != 150 || p.Canary.All.Count != 150 {
		t.Fatalf("latency %+v", l)
	}
	if q := l.Quantile(0.5) / 1000; q < 2.9 || q > 3.1 {
		t.Fatalf("pooled p50 %.2f ms, want 3 (two thirds of the requests)", q)
	}
	if q := l.Quantile(0.9) / 1000; q < 29 || q > 31 {
		t.Fatalf("pooled p90 %.2f ms, want 30", q)
	}
	if len(p.Signatures) != 1 || p.Signatures[0].Canary != 4 || p.Signatures[0].Example == nil {
		t.Fatalf("signatures %+v", p.Signatures)
	}
	in := p.Input()
	if in.Canary.Requests != 150 || len(in.Signatures) != 1 || in.Signatures[0].CanaryClients != 4 {
		t.Fatalf("input %+v", in)
	}
}

func TestSnapshotJSONRefusesNonsense(t *testing.T) {
	var s Snapshot
	for _, bad := range []string{`{"count":1,"buckets":[[99999,1]]}`, `{"count":5,"buckets":[[3,1]]}`, `{"count":"x"}`} {
		if err := json.Unmarshal([]byte(bad), &s); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	err := json.Unmarshal([]byte(`{"count":5,"buckets":[[3,1]]}`), &s)
	if err == nil || !strings.Contains(err.Error(), "count says 5") {
		t.Fatalf("error %v", err)
	}
}

// Evidence another instance published is checked before it is pooled:
// what no baton writes is refused, not added (nor dereferenced).
func TestContributionCheckRefusesWhatNoBatonWrites(t *testing.T) {
	for _, bad := range []string{
		`{"run":"v2@0","canary":{"latency":{"/x":null}}}`,
		`{"run":"v2@0","weight":1e9}`,
		`{"run":"v2@0","canary":{"requests":1,"errors":5}}`,
		`{"run":"v2@0","step_canary_requests":7}`,
		`{"run":"v2@0","stable":{"error_clients":-1}}`,
	} {
		var c Contribution
		if err := json.Unmarshal([]byte(bad), &c); err != nil {
			t.Fatalf("%s: %v", bad, err)
		}
		if err := c.Check(); err == nil {
			t.Errorf("%s passed the check", bad)
		}
	}
	if err := contribution("v2@0", 10, 900, 100, time.Millisecond).Check(); err != nil {
		t.Fatalf("a baton's own contribution refused: %v", err)
	}
}

// Pooled latency cannot wrap: buckets, counts and sums saturate, and
// buckets on the wire that overflow are refused; a contribution with more
// latencies than requests is no baton's.
func TestPooledLatencyCannotWrap(t *testing.T) {
	var huge Snapshot
	huge.Buckets[3], huge.Count, huge.SumUS = math.MaxUint64-1, math.MaxUint64-1, math.MaxUint64-1
	a := &Contribution{Run: "v2@0", Canary: SideEvidence{Version: "v2", Requests: math.MaxUint64, All: huge}}
	b := contribution("v2@0", 10, 900, 100, time.Millisecond)
	p := Pool("v2@0", 10, []*Contribution{a, b})
	if c := p.Canary.All; c.Count != math.MaxUint64 || c.SumUS != math.MaxUint64 || c.Buckets[3] < huge.Buckets[3] {
		t.Fatalf("pooled latency wrapped: count %d, sum %d, bucket %d", c.Count, c.SumUS, c.Buckets[3])
	}
	var s Snapshot
	if err := json.Unmarshal([]byte(`{"count":1,"buckets":[[3,18446744073709551615],[4,2]]}`), &s); err == nil {
		t.Fatalf("buckets that wrap to the count accepted: %+v", s.Count)
	}
	var c Contribution
	if err := json.Unmarshal([]byte(`{"run":"v2@0","canary":{"requests":1,"all":{"count":5,"buckets":[[3,5]]}}}`), &c); err != nil {
		t.Fatal(err)
	}
	if err := c.Check(); err == nil {
		t.Fatal("5 latencies of 1 request passed the check")
	}
}
