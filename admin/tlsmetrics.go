package admin

import (
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baton-lb/baton/proxy"
)

// CertReloads counts certificate reloads by result, for /metrics.
type CertReloads struct{ OK, Failed atomic.Int64 }

// TLSCollector exports the served certificates' expiry times and the
// certificate reloads. Register it on the registry main builds when baton
// serves HTTPS.
func TLSCollector(certs *proxy.Certs, reloads *CertReloads) prometheus.Collector {
	return &tlsCollector{certs: certs, reloads: reloads}
}

type tlsCollector struct {
	certs   *proxy.Certs
	reloads *CertReloads
}

var (
	certExpiryDesc = prometheus.NewDesc("baton_tls_certificate_expiry_timestamp_seconds",
		"When a served certificate expires (Unix seconds), by its file and names.", []string{"file", "names"}, nil)
	certReloadsDesc = prometheus.NewDesc("baton_tls_certificate_reloads_total",
		"Certificate reloads after their files changed, by result; a failure keeps the certificates in service.", []string{"result"}, nil)
)

func (c *tlsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- certExpiryDesc
	ch <- certReloadsDesc
}

func (c *tlsCollector) Collect(ch chan<- prometheus.Metric) {
	for _, ci := range c.certs.Infos() {
		ch <- prometheus.MustNewConstMetric(certExpiryDesc, prometheus.GaugeValue, float64(ci.NotAfter.Unix()),
			ci.File, strings.Join(ci.Names, ","))
	}
	ch <- prometheus.MustNewConstMetric(certReloadsDesc, prometheus.CounterValue, float64(c.reloads.OK.Load()), "success")
	ch <- prometheus.MustNewConstMetric(certReloadsDesc, prometheus.CounterValue, float64(c.reloads.Failed.Load()), "failure")
}
