package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/pool"
)

// durationBuckets are the upper bounds, in seconds, of the exported latency
// histogram. The recorded histogram is finer (3 % buckets); it is folded into
// these at scrape time, so the request path pays for one bucket increment.
var durationBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// collector exports what the registry's pools already count, read at scrape
// time: nothing is counted twice, and labels are pool, backend, version and
// status class only, so cardinality stays bounded.
type collector struct {
	ctl *control.Registry

	requests, errors, duration, inflight, up, state, weight, conns, retries *prometheus.Desc
	canaryWeight, reloads, generation, lastReload, verdict                  *prometheus.Desc
	tunnels, tunnelsRefused, tunnelsIdle, recovered                         *prometheus.Desc
	groupsFolded, sigsFolded                                                *prometheus.Desc
}

func newCollector(ctl *control.Registry) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("baton_"+name, help, labels, nil)
	}
	return &collector{
		ctl:            ctl,
		requests:       d("requests_total", "Requests finished by a backend, by status class (none: the backend gave no status).", "pool", "backend", "version", "code_class"),
		errors:         d("request_errors_total", "Requests a version failed on the server's side: 5xx answers and transport failures.", "pool", "version"),
		duration:       d("request_duration_seconds", "Time from a request's arrival to its backend's response headers.", "pool", "version"),
		inflight:       d("inflight_requests", "Requests being served by a backend now.", "pool", "backend"),
		up:             d("backend_healthy", "1 when active and passive health checks consider the backend healthy.", "pool", "backend"),
		state:          d("backend_state", "1 for the backend's admin state.", "pool", "backend", "state"),
		weight:         d("backend_weight", "The backend's weight within its version.", "pool", "backend"),
		conns:          d("backend_open_connections", "Connections baton has open to the backend.", "pool", "backend"),
		retries:        d("retries_total", "Requests sent again to another backend after a failure.", "pool"),
		recovered:      d("state_file_recovered", "1 when this baton started after moving a corrupt state file aside (serve --state-recover): runtime decisions were lost."),
		tunnels:        d("tunnels_open", "WebSocket and other Upgrade tunnels open now.", "pool"),
		tunnelsRefused: d("tunnels_refused_total", "Upgrade requests answered 503 because the pool had tunnels.max open.", "pool"),
		tunnelsIdle:    d("tunnels_idle_closed_total", "Tunnels closed after tunnels.idle_timeout without a byte either way.", "pool"),
		groupsFolded:   d("route_groups_folded", "Requests since the current canary started whose path found no free automatic route group (counted in \"other\").", "pool"),
		sigsFolded:     d("signatures_folded", "Failures since the current canary started that found no room in the signature table (counted in \"other\").", "pool"),
		canaryWeight:   d("canary_weight_percent", "The canary version's share of the pool's requests.", "pool", "version"),
		verdict:        d("canary_verdict", "1 for the judge's latest verdict on the pool's canary.", "pool", "version", "verdict"),
		reloads:        d("config_reloads_total", "Config loads, the first included, by result.", "result"),
		generation:     d("config_generation", "How many configs were applied since start."),
		lastReload:     d("config_last_reload_success_timestamp_seconds", "When the config was last loaded successfully."),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.errors, c.duration, c.inflight, c.up, c.state, c.weight,
		c.conns, c.retries, c.canaryWeight, c.reloads, c.generation, c.lastReload, c.verdict,
		c.tunnels, c.tunnelsRefused, c.tunnelsIdle, c.recovered, c.groupsFolded, c.sigsFolded} {
		ch <- d
	}
}

var classLabels = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

var states = []pool.State{pool.Active, pool.Draining, pool.Drained, pool.Ejected}

var verdicts = []string{canary.Pass, canary.Hold, canary.Fail, canary.Inconclusive}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	var snap canary.Snapshot
	for _, p := range c.ctl.Pools() {
		pn := p.Name()
		for _, b := range p.Backends() {
			bn := b.Name()
			counts := b.Counts()
			for i := range counts.ByClass {
				if n := counts.ByClass[i].Load(); n > 0 || i == 2 {
					counter(c.requests, float64(n), pn, bn, counts.Version, classLabels[i])
				}
			}
			gauge(c.inflight, float64(b.Inflight()), pn, bn)
			gauge(c.up, boolFloat(b.Health() == pool.Up), pn, bn)
			for _, s := range states {
				gauge(c.state, boolFloat(b.State() == s), pn, bn, s.String())
			}
			gauge(c.weight, float64(b.Weight()), pn, bn)
			gauge(c.conns, float64(b.OpenConns()), pn, bn)
		}
		for _, vs := range p.VersionStats() {
			counter(c.errors, float64(vs.Errors()), pn, vs.Version())
			vs.Latency(&snap)
			ch <- prometheus.MustNewConstHistogram(c.duration, snap.Count, float64(snap.SumUS)/1e6,
				foldBuckets(&snap), pn, vs.Version())
		}
		counter(c.retries, float64(p.Retries()), pn)
		ts := p.TunnelStats()
		gauge(c.tunnels, float64(ts.Open), pn)
		counter(c.tunnelsRefused, float64(ts.Refused), pn)
		counter(c.tunnelsIdle, float64(ts.IdleClosed), pn)
		gauge(c.groupsFolded, float64(p.Groups().Folded()), pn)
		gauge(c.sigsFolded, float64(p.Signatures().Folded()), pn)
		if v, w := p.Canary(); v != "" {
			gauge(c.canaryWeight, w, pn, v)
			current, _ := c.ctl.Verdict(pn)
			for _, verdict := range verdicts {
				gauge(c.verdict, boolFloat(current == verdict), pn, v, verdict)
			}
		}
	}
	ok, failed, last := c.ctl.Reloads()
	counter(c.reloads, float64(ok), "success")
	counter(c.reloads, float64(failed), "failure")
	gauge(c.generation, float64(c.ctl.Generation()))
	gauge(c.lastReload, float64(last))
	gauge(c.recovered, boolFloat(c.ctl.Recovered()))
}

// foldBuckets turns the fine histogram into cumulative counts at
// durationBuckets, in one pass.
func foldBuckets(s *canary.Snapshot) map[float64]uint64 {
	out := make(map[float64]uint64, len(durationBuckets))
	var cum uint64
	i := 0
	for _, le := range durationBuckets {
		limit := le * 1e6
		for ; i < canary.NumBuckets; i++ {
			_, hi := canary.BucketBounds(i)
			if float64(hi) > limit {
				break
			}
			cum += s.Buckets[i]
		}
		out[le] = cum
	}
	return out
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
