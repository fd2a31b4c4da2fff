package control

import (
	"context"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// History settings: one sample per version every historyStep, kept for
// historyWindow, which is what the dashboard charts.
const (
	historyStep   = 2 * time.Second
	historyWindow = 15 * time.Minute
	historyLen    = int(historyWindow / historyStep)
)

// VersionSeries is one version's figures, one value per sample time; a
// nil value is an interval in which the version served nothing (or, for
// rates, did not exist).
type VersionSeries struct {
	RequestsPerSecond []*float64 `json:"rps"`
	ErrorRate         []*float64 `json:"error_rate"`
	P50               []*float64 `json:"p50_ms"`
	P99               []*float64 `json:"p99_ms"`
}

// History is a pool's per-version time series over the last 15 minutes,
// aligned on T (Unix seconds, oldest first).
type History struct {
	Pool     string                    `json:"pool"`
	Interval float64                   `json:"interval_seconds"`
	T        []int64                   `json:"t"`
	Versions map[string]*VersionSeries `json:"versions"`
}

// histSample is the figures of one version over one interval.
type histSample struct {
	rps, errRate, p50, p99 float64 // all but rps NaN without requests
}

// histPoint is one sample time of a pool.
type histPoint struct {
	at       time.Time
	versions map[string]histSample
	// backends are each backend's own figures (every request it
	// answered, forced ones too), by name; average the average backend
	// of each version, from the same figures.
	backends map[string]histSample
	average  map[string]histSample
}

// poolHistory is a pool's ring of samples and the snapshot the next one is
// measured from.
type poolHistory struct {
	points   []histPoint // oldest first, at most historyLen
	last     map[string]*canary.VersionSnapshot
	lastAt   time.Time
	backends map[string]*backendMark // by name
}

// backendMark is where a backend's next sample is measured from.
type backendMark struct {
	b                *pool.Backend // a backend of the same name that is another one starts afresh
	requests, errors uint64
	lat              canary.Snapshot
}

// versionSum adds up one version's backends over one interval.
type versionSum struct {
	backends         int // that served a request
	requests, errors uint64
	lat              canary.Snapshot
}

// histories holds every pool's history; the sampler writes, the API reads.
type histories struct {
	mu     sync.Mutex // protects byPool and every series in it; a leaf lock
	byPool map[string]*poolHistory
}

// runHistory samples every pool each historyStep until ctx ends.
func (r *Registry) runHistory(ctx context.Context) {
	t := time.NewTicker(historyStep)
	defer t.Stop()
	r.sampleHistory(time.Now()) // the starting point of the first interval
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.sampleHistory(now)
		}
	}
}

// sampleHistory records, for every pool, each version's figures since the
// previous sample.
func (r *Registry) sampleHistory(now time.Time) {
	pools := r.Pools()
	h := &r.history
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.byPool == nil {
		h.byPool = map[string]*poolHistory{}
	}
	seen := map[string]bool{}
	for _, p := range pools {
		seen[p.Name()] = true
		ph := h.byPool[p.Name()]
		if ph == nil {
			ph = &poolHistory{}
			h.byPool[p.Name()] = ph
		}
		ph.sample(p, now)
	}
	for name := range h.byPool {
		if !seen[name] {
			delete(h.byPool, name) // the pool left the config
		}
	}
}

func (ph *poolHistory) sample(p *pool.Pool, now time.Time) {
	snaps := snapshotVersions(p)
	backends, average := ph.sampleBackends(p, now)
	if ph.last != nil {
		secs := now.Sub(ph.lastAt).Seconds()
		pt := histPoint{at: now, versions: map[string]histSample{}, backends: backends, average: average}
		for v, s := range snaps {
			d := s.Since(ph.last[v]) // new or recreated evidence counts from zero
			if ph.last[v] == nil && d.Requests == 0 {
				continue
			}
			hs := histSample{errRate: math.NaN(), p50: math.NaN(), p99: math.NaN()}
			if secs > 0 {
				hs.rps = float64(d.Requests) / secs
			}
			if d.Requests > 0 {
				hs.errRate = float64(d.Errors) / float64(d.Requests)
				lat := d.Latency()
				hs.p50, hs.p99 = lat.Quantile(0.5)/1000, lat.Quantile(0.99)/1000
			}
			pt.versions[v] = hs
		}
		if len(ph.points) == historyLen {
			copy(ph.points, ph.points[1:])
			ph.points = ph.points[:historyLen-1]
		}
		ph.points = append(ph.points, pt)
	}
	ph.last, ph.lastAt = snaps, now
}

// sampleBackends measures every backend since the previous sample, and
// the average backend of each version; nil on the first sample.
func (ph *poolHistory) sampleBackends(p *pool.Pool, now time.Time) (backends, average map[string]histSample) {
	secs := now.Sub(ph.lastAt).Seconds()
	first := ph.backends == nil
	marks := make(map[string]*backendMark, len(ph.backends))
	if !first {
		backends, average = map[string]histSample{}, map[string]histSample{}
	}
	sums := map[string]*versionSum{}
	for _, b := range p.Backends() {
		m := &backendMark{b: b, requests: b.Requests(), errors: b.Errors()}
		b.Latency(&m.lat)
		marks[b.Name()] = m
		prev := ph.backends[b.Name()]
		if first || prev == nil || prev.b != b {
			continue // it starts now
		}
		req, errs := m.requests-prev.requests, m.errors-prev.errors
		lat := m.lat.Sub(&prev.lat)
		backends[b.Name()] = rates(req, errs, &lat, secs)
		sum := sums[b.Version()]
		if sum == nil {
			sum = &versionSum{}
			sums[b.Version()] = sum
		}
		if req > 0 {
			sum.backends++
		}
		sum.requests += req
		sum.errors += errs
		sum.lat.Add(&lat)
	}
	ph.backends = marks
	for v, sum := range sums {
		a := rates(sum.requests, sum.errors, &sum.lat, secs)
		if sum.backends > 0 {
			a.rps /= float64(sum.backends)
		}
		average[v] = a
	}
	return backends, average
}

// rates are an interval's figures from its counts.
func rates(requests, errors uint64, lat *canary.Snapshot, secs float64) histSample {
	s := histSample{errRate: math.NaN(), p50: math.NaN(), p99: math.NaN()}
	if secs > 0 {
		s.rps = float64(requests) / secs
	}
	if requests > 0 {
		s.errRate = float64(errors) / float64(requests)
	}
	if lat.Count > 0 {
		s.p50, s.p99 = lat.Quantile(0.5)/1000, lat.Quantile(0.99)/1000
	}
	return s
}

// BackendHistory is one backend's figures over the last 15 minutes beside
// those of the average backend of its version and of the stable version:
// is this server unlike its peers?
type BackendHistory struct {
	Pool          string  `json:"pool"`
	Backend       string  `json:"backend"`
	Version       string  `json:"version"`
	StableVersion string  `json:"stable_version"`
	Interval      float64 `json:"interval_seconds"`
	T             []int64 `json:"t"`
	// Series is the backend's own: every request it answered.
	Series *VersionSeries `json:"series"`
	// VersionAverage is the average backend of Version (request rate per
	// backend that served; error rate and latency of all their
	// requests); StableAverage the same of StableVersion.
	VersionAverage *VersionSeries `json:"version_average"`
	StableAverage  *VersionSeries `json:"stable_average"`
}

// BackendHistory returns a backend's monitor: request rate, error rate,
// p50 and p99 over the last 15 minutes, one sample every 2 seconds,
// beside the average backend of its version and of the stable version.
func (r *Registry) BackendHistory(poolName, backend string) (*BackendHistory, error) {
	b, err := r.Backend(poolName, backend)
	if err != nil {
		return nil, err
	}
	p := r.Pool(poolName)
	if p == nil { // it left the config a moment ago
		return nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	out := &BackendHistory{Pool: poolName, Backend: backend, Version: b.Version(), StableVersion: p.StableVersion(),
		Interval: historyStep.Seconds(), T: []int64{}, Series: &VersionSeries{}, VersionAverage: &VersionSeries{}, StableAverage: &VersionSeries{}}
	h := &r.history
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.byPool[poolName]
	if ph == nil {
		return out, nil
	}
	for _, pt := range ph.points {
		out.T = append(out.T, pt.at.Unix())
		s, ok := pt.backends[backend]
		out.Series.add(s, ok)
		s, ok = pt.average[out.Version]
		out.VersionAverage.add(s, ok)
		s, ok = pt.average[out.StableVersion]
		out.StableAverage.add(s, ok)
	}
	return out, nil
}

// add appends one sample; ok false (no figures then) appends nulls.
func (vs *VersionSeries) add(s histSample, ok bool) {
	if !ok {
		vs.RequestsPerSecond = append(vs.RequestsPerSecond, nil)
		vs.ErrorRate = append(vs.ErrorRate, nil)
		vs.P50 = append(vs.P50, nil)
		vs.P99 = append(vs.P99, nil)
		return
	}
	vs.RequestsPerSecond = append(vs.RequestsPerSecond, seriesValue(s.rps))
	vs.ErrorRate = append(vs.ErrorRate, seriesValue(s.errRate))
	vs.P50 = append(vs.P50, seriesValue(s.p50))
	vs.P99 = append(vs.P99, seriesValue(s.p99))
}

// seriesValue is a figure as the series show it: nil for none, rounded
// to three decimals.
func seriesValue(x float64) *float64 {
	if math.IsNaN(x) {
		return nil
	}
	x = math.Round(x*1000) / 1000
	return &x
}

// History returns a pool's per-version request rate, error rate and
// latency over the last 15 minutes, one sample every 2 seconds.
func (r *Registry) History(poolName string) (*History, error) {
	if r.Pool(poolName) == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownPool, poolName)
	}
	out := &History{Pool: poolName, Interval: historyStep.Seconds(), T: []int64{}, Versions: map[string]*VersionSeries{}}
	h := &r.history
	h.mu.Lock()
	defer h.mu.Unlock()
	ph := h.byPool[poolName]
	if ph == nil {
		return out, nil
	}
	var versions []string
	for _, pt := range ph.points {
		for v := range pt.versions {
			if out.Versions[v] == nil {
				out.Versions[v] = &VersionSeries{}
				versions = append(versions, v)
			}
		}
	}
	sort.Strings(versions)
	for _, pt := range ph.points {
		out.T = append(out.T, pt.at.Unix())
		for _, v := range versions {
			s, ok := pt.versions[v]
			out.Versions[v].add(s, ok)
		}
	}
	return out, nil
}
