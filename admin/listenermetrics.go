package admin

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/baton-lb/baton/internal/listener"
)

// ListenerCollector exports the listeners' counters: connections open,
// accepts that failed and were retried (descriptors exhausted, …), and
// connections refused over a cap. stats is called at every scrape.
func ListenerCollector(stats func() []listener.Stats) prometheus.Collector {
	return &listenerCollector{stats: stats}
}

type listenerCollector struct{ stats func() []listener.Stats }

var (
	listenerOpenDesc = prometheus.NewDesc("baton_listener_open_connections",
		"Client connections open through a listener (tunnels included); HTTP and HTTPS share server.max_connections.", []string{"listener"}, nil)
	listenerAcceptErrorsDesc = prometheus.NewDesc("baton_listener_accept_errors_total",
		"Accepts that failed for a temporary reason (descriptors exhausted, connection aborted) and were retried.", []string{"listener"}, nil)
	listenerRefusedDesc = prometheus.NewDesc("baton_listener_refused_connections_total",
		"Connections closed at once because the listener's connection cap was reached.", []string{"listener"}, nil)
)

func (c *listenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- listenerOpenDesc
	ch <- listenerAcceptErrorsDesc
	ch <- listenerRefusedDesc
}

func (c *listenerCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.stats() {
		ch <- prometheus.MustNewConstMetric(listenerOpenDesc, prometheus.GaugeValue, float64(s.Open), s.Name)
		ch <- prometheus.MustNewConstMetric(listenerAcceptErrorsDesc, prometheus.CounterValue, float64(s.AcceptErrors), s.Name)
		ch <- prometheus.MustNewConstMetric(listenerRefusedDesc, prometheus.CounterValue, float64(s.Refused), s.Name)
	}
}
