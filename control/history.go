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
}

// poolHistory is a pool's ring of samples and the snapshot the next one is
// measured from.
type poolHistory struct {
	points []histPoint // oldest first, at most historyLen
	last   map[string]*canary.VersionSnapshot
	lastAt time.Time
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
	if ph.last != nil {
		secs := now.Sub(ph.lastAt).Seconds()
		pt := histPoint{at: now, versions: map[string]histSample{}}
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
	val := func(x float64) *float64 {
		if math.IsNaN(x) {
			return nil
		}
		x = math.Round(x*1000) / 1000
		return &x
	}
	for _, pt := range ph.points {
		out.T = append(out.T, pt.at.Unix())
		for _, v := range versions {
			vs := out.Versions[v]
			s, ok := pt.versions[v]
			if !ok {
				vs.RequestsPerSecond = append(vs.RequestsPerSecond, nil)
				vs.ErrorRate = append(vs.ErrorRate, nil)
				vs.P50 = append(vs.P50, nil)
				vs.P99 = append(vs.P99, nil)
				continue
			}
			vs.RequestsPerSecond = append(vs.RequestsPerSecond, val(s.rps))
			vs.ErrorRate = append(vs.ErrorRate, val(s.errRate))
			vs.P50 = append(vs.P50, val(s.p50))
			vs.P99 = append(vs.P99, val(s.p99))
		}
	}
	return out, nil
}
