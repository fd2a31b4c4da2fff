package canary

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"time"
)

// Contribution is one baton's evidence on one canary, to be pooled with
// the other batons' that share the release: what Input holds about each
// version, cumulative since that baton started judging the canary, with the
// latest example of each failure signature. Contributions add up: the
// judge of a cluster evaluates their sum.
type Contribution struct {
	// Run names the canary (its version and how the previous one
	// ended), so evidence of an earlier canary of the same version is
	// never mixed in.
	Run    string    `json:"run"`
	At     time.Time `json:"at"`
	Weight float64   `json:"weight"`
	// StepCanaryRequests: the canary's requests since its share became
	// Weight.
	StepCanaryRequests uint64        `json:"step_canary_requests"`
	Stable             SideEvidence  `json:"stable"`
	Canary             SideEvidence  `json:"canary"`
	Signatures         []SigEvidence `json:"signatures,omitempty"`
	Discarded          uint64        `json:"discarded,omitempty"`
	DiscardedFailures  uint64        `json:"discarded_failures,omitempty"`
}

// SideEvidence is one version's part of a Contribution.
type SideEvidence struct {
	Version      string `json:"version"`
	Requests     uint64 `json:"requests"`
	Errors       uint64 `json:"errors"`
	Gateway      uint64 `json:"gateway,omitempty"`
	ErrorClients int    `json:"error_clients,omitempty"`
	// Latency by route group since its warm-up ended, as the judge
	// compares it; All is every request's since the canary started, as
	// reports show it.
	Latency map[string]*Snapshot `json:"latency,omitempty"`
	All     Snapshot             `json:"all"`
}

// SigEvidence is one failure signature's part of a Contribution.
type SigEvidence struct {
	Key           string   `json:"key"`
	Stable        uint64   `json:"stable"`
	Canary        uint64   `json:"canary"`
	CanaryClients int      `json:"canary_clients,omitempty"`
	Example       *Example `json:"example,omitempty"`
}

// Check refuses a contribution no baton would publish: another
// instance's evidence is read from etcd, where anything may have been
// written, and must neither crash nor mislead the judge.
func (c *Contribution) Check() error {
	if math.IsNaN(c.Weight) || c.Weight < 0 || c.Weight > 100 {
		return fmt.Errorf("weight %v out of range", c.Weight)
	}
	if c.StepCanaryRequests > c.Canary.Requests {
		return fmt.Errorf("%d step requests of %d", c.StepCanaryRequests, c.Canary.Requests)
	}
	for _, s := range []*SideEvidence{&c.Stable, &c.Canary} {
		if s.Errors > s.Requests || s.Gateway > s.Requests || s.ErrorClients < 0 || s.ErrorClients > MaxErrorClients {
			return fmt.Errorf("%s: %d errors, %d without answer, %d clients of %d requests", s.Version, s.Errors, s.Gateway, s.ErrorClients, s.Requests)
		}
		if len(s.Latency) > MaxGroups {
			return fmt.Errorf("%s: latency of %d route groups, at most %d", s.Version, len(s.Latency), MaxGroups)
		}
		// Every latency observed is a request's: more would let one
		// contribution outweigh every other's latency.
		if s.All.Count > s.Requests {
			return fmt.Errorf("%s: %d latencies of %d requests", s.Version, s.All.Count, s.Requests)
		}
		for g, l := range s.Latency {
			if l == nil {
				return fmt.Errorf("%s: no latency for route group %q", s.Version, g)
			}
			if l.Count > s.Requests {
				return fmt.Errorf("%s: %d latencies in route group %q of %d requests", s.Version, l.Count, g, s.Requests)
			}
		}
	}
	if len(c.Signatures) > maxSignatures+1 {
		return fmt.Errorf("%d signatures, at most %d", len(c.Signatures), maxSignatures+1)
	}
	for _, sig := range c.Signatures {
		if len(sig.Key) > 512 || sig.CanaryClients < 0 || sig.CanaryClients > maxSigClients {
			return fmt.Errorf("signature %.40q: malformed", sig.Key)
		}
		if e := sig.Example; e != nil && (len(e.Path) > 4096 || len(e.Body) > 4096 || len(e.Version) > 256) {
			return fmt.Errorf("signature %.40q: example too large", sig.Key)
		}
	}
	return nil
}

// Side returns the version's evidence as the judge takes it.
func (s *SideEvidence) Side() Side {
	return Side{Requests: s.Requests, Errors: s.Errors, Gateway: s.Gateway, Latency: s.Latency, ErrorClients: s.ErrorClients}
}

// Input returns the contribution as the judge's input; the caller adds
// what is not evidence (the time, the share, the step's start, backends'
// health, whether the pool is held).
func (c *Contribution) Input() Input {
	in := Input{Stable: c.Stable.Side(), Canary: c.Canary.Side(), StepCanaryRequests: c.StepCanaryRequests,
		Discarded: c.Discarded, DiscardedFailures: c.DiscardedFailures}
	for _, s := range c.Signatures {
		in.Signatures = append(in.Signatures, SignatureEvidence{Key: s.Key, Stable: s.Stable, Canary: s.Canary, CanaryClients: s.CanaryClients})
	}
	return in
}

// Pool adds up contributions of the same canary run. Counts and histograms
// add; distinct clients add up to their caps (one client seen by two
// batons counts twice, which only errs on the side of judging); a step's
// requests count from the contributions made at the current share
// (weight); each signature keeps its latest example.
func Pool(run string, weight float64, cs []*Contribution) *Contribution {
	out := &Contribution{Run: run, Weight: weight}
	sigs := map[string]*SigEvidence{}
	for _, c := range cs {
		if c.Run != run {
			continue
		}
		if c.At.After(out.At) {
			out.At = c.At
		}
		if c.Weight == weight {
			out.StepCanaryRequests = addSat(out.StepCanaryRequests, c.StepCanaryRequests)
		}
		out.Stable.add(&c.Stable)
		out.Canary.add(&c.Canary)
		out.Discarded = addSat(out.Discarded, c.Discarded)
		out.DiscardedFailures = addSat(out.DiscardedFailures, c.DiscardedFailures)
		for i := range c.Signatures {
			s := &c.Signatures[i]
			m := sigs[s.Key]
			if m == nil {
				m = &SigEvidence{Key: s.Key}
				sigs[s.Key] = m
			}
			m.Stable = addSat(m.Stable, s.Stable)
			m.Canary = addSat(m.Canary, s.Canary)
			m.CanaryClients = min(maxSigClients, m.CanaryClients+s.CanaryClients)
			if s.Example != nil && (m.Example == nil || s.Example.Time.After(m.Example.Time)) {
				e := *s.Example
				m.Example = &e
			}
		}
	}
	for _, s := range sigs {
		out.Signatures = append(out.Signatures, *s)
	}
	sort.Slice(out.Signatures, func(i, j int) bool { return out.Signatures[i].Key < out.Signatures[j].Key })
	return out
}

func (s *SideEvidence) add(o *SideEvidence) {
	if s.Version == "" {
		s.Version = o.Version
	}
	s.Requests = addSat(s.Requests, o.Requests)
	s.Errors = min(s.Requests, addSat(s.Errors, o.Errors))
	s.Gateway = min(s.Requests, addSat(s.Gateway, o.Gateway))
	s.ErrorClients = min(MaxErrorClients, s.ErrorClients+o.ErrorClients)
	s.All.add(&o.All)
	for g, l := range o.Latency {
		if s.Latency == nil {
			s.Latency = map[string]*Snapshot{}
		}
		m := s.Latency[g]
		if m == nil {
			m = &Snapshot{}
			s.Latency[g] = m
		}
		m.add(l)
	}
}

// addSat adds without wrapping: evidence read from etcd may hold any
// number, and a sum that wrapped would read as fewer requests than errors.
func addSat(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}

// snapshotJSON is a Snapshot on the wire: only the buckets that hold
// observations, as [index, count] pairs.
type snapshotJSON struct {
	Count   uint64      `json:"count"`
	SumUS   uint64      `json:"sum_us"`
	Buckets [][2]uint64 `json:"buckets,omitempty"`
}

// MarshalJSON writes the snapshot's non-empty buckets only.
func (s Snapshot) MarshalJSON() ([]byte, error) {
	w := snapshotJSON{Count: s.Count, SumUS: s.SumUS}
	for i, c := range s.Buckets {
		if c > 0 {
			w.Buckets = append(w.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads what MarshalJSON wrote, refusing buckets out of
// range and counts that do not add up.
func (s *Snapshot) UnmarshalJSON(b []byte) error {
	var w snapshotJSON
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	*s = Snapshot{SumUS: w.SumUS}
	for _, p := range w.Buckets {
		if p[0] >= NumBuckets {
			return fmt.Errorf("latency bucket %d out of range (0 to %d)", p[0], NumBuckets-1)
		}
		// Counts that wrap could add up to a count they are not.
		if s.Buckets[p[0]] > math.MaxUint64-p[1] || s.Count > math.MaxUint64-p[1] {
			return fmt.Errorf("latency buckets hold more than %d observations", uint64(math.MaxUint64))
		}
		s.Buckets[p[0]] += p[1]
		s.Count += p[1]
	}
	if s.Count != w.Count {
		return fmt.Errorf("latency buckets hold %d observations, the count says %d", s.Count, w.Count)
	}
	return nil
}
