package admin_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// exportedBuckets are the upper bounds baton_request_duration_seconds is
// documented to export, in seconds.
var exportedBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// slowDelay is how long the backends take to answer /slow: a lower bound on
// those requests' latency, so they must stay out of the buckets below it.
const slowDelay = 60 * time.Millisecond

// fixture is a running baton with two pools, and its admin handler served on
// 127.0.0.1 with a registry holding only baton's collector.
//
// Pool "web" (the default pool) has backend a (version v1, stable) and b
// (v2, canary at 50 %, so requests alternate between them). Its backends
// answer /fail with 503, /oops with 500, /missing with 404, /slow with 200
// after slowDelay, /hold with 200 once the test releases it, and anything
// else with 200; every answer names the backend in X-Backend. Passive
// ejection is off so the 5xx answers do not take a backend out.
//
// Pool "flaky" (routes /flaky) has backend "reset", which closes every
// connection after reading a request head, and "good", which answers 200.
// A GET that meets "reset" is retried on "good".
type fixture struct {
	bt      *testbed.Baton
	yaml    string // the config baton started with
	admin   string // base URL of the admin handler
	client  *http.Client
	resets  atomic.Int64  // requests "reset" received (and dropped)
	hold    chan struct{} // closed to let /hold requests answer
	holding chan struct{} // receives when a /hold request reaches a backend
}

func appHandler(f *fixture, name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Backend", name)
		switch r.URL.Path {
		case "/fail":
			w.WriteHeader(http.StatusServiceUnavailable)
		case "/oops":
			w.WriteHeader(http.StatusInternalServerError)
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
		case "/slow":
			time.Sleep(slowDelay) // simulated latency, not a wait for a condition
		case "/hold":
			select {
			case f.holding <- struct{}{}:
			default:
			}
			select {
			case <-f.hold:
			case <-time.After(20 * time.Second): // bound, should the test never release it
			}
		}
		_, _ = io.WriteString(w, name+"\n")
	})
}

func webPool(a, b string) string {
	return fmt.Sprintf(`  - name: web
    health_check: {interval: 100ms, timeout: 50ms, rise: 1, fall: 1}
    outlier: {consecutive_failures: -1}
    stable_version: v1
    canary: {version: v2, weight: 50}
    backends:
      - {name: a, address: "%s", version: v1}
      - {name: b, address: "%s", version: v2}
`, a, b)
}

func flakyPool(reset, good string) string {
	return fmt.Sprintf(`  - name: flaky
    routes: [{path_prefix: /flaky}]
    health_check: {interval: 100ms, timeout: 50ms, rise: 1, fall: 1}
    outlier: {consecutive_failures: -1}
    retries: {attempts: 2}
    backends:
      - {name: reset, address: "%s", version: v1}
      - {name: good, address: "%s", version: v1}
`, reset, good)
}

func startFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{hold: make(chan struct{}), holding: make(chan struct{}, 1)}
	a := testbed.Backend(t, appHandler(f, "a"))
	b := testbed.Backend(t, appHandler(f, "b"))
	good := testbed.Backend(t, appHandler(f, "good"))
	reset := testbed.RawBackend(t, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		head, err := testbed.ReadRequestHead(bufio.NewReader(c))
		if err == nil && len(head) > 0 {
			f.resets.Add(1)
		}
		// Closing without an answer: baton sees the connection reset.
	})
	f.yaml = testbed.Config(webPool(a, b), flakyPool(reset, good))
	f.bt = testbed.Start(t, f.yaml)
	f.bt.WaitHealthy(t, "web", 2)
	f.bt.WaitHealthy(t, "flaky", 2)

	promReg := prometheus.NewRegistry()
	promReg.MustRegister(admin.Collector(f.bt.Reg))
	srv := httptest.NewServer(admin.Handler(f.bt.Reg, promReg, zerolog.Nop()))
	t.Cleanup(srv.Close)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("admin test server on %s, want 127.0.0.1", srv.URL)
	}
	f.admin = srv.URL
	f.client = &http.Client{Timeout: 5 * time.Second}
	t.Cleanup(f.client.CloseIdleConnections)
	t.Cleanup(func() {
		select {
		case <-f.hold:
		default:
			close(f.hold)
		}
	})
	return f
}

// get sends GET path through baton and returns the status and the backend
// that answered ("" for baton's own answers).
func (f *fixture) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := f.client.Get(f.bt.URL(path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatalf("GET %s: reading body: %v", path, err)
	}
	return resp.StatusCode, resp.Header.Get("X-Backend")
}

// scrape fetches /metrics and parses the text exposition.
func (f *fixture) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := f.client.Get(f.admin + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: status %d\n%s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET /metrics: Content-Type %q, want the text exposition", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parsing /metrics: %v\n%s", err, body)
	}
	return fams
}

// lbl is a label set written name=value, ...
type lbl map[string]string

func labelsOf(m *dto.Metric) lbl {
	out := lbl{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func (l lbl) String() string {
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%q", k, l[k])
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func sameLabels(m *dto.Metric, want lbl) bool {
	got := labelsOf(m)
	if len(got) != len(want) {
		return false
	}
	for k, v := range want {
		if got[k] != v {
			return false
		}
	}
	return true
}

// find returns the series of family name with exactly the labels want.
func find(fams map[string]*dto.MetricFamily, name string, want lbl) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
	for _, m := range f.GetMetric() {
		if sameLabels(m, want) {
			return m
		}
	}
	return nil
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return math.NaN()
}

// value returns the value of a counter or gauge series, failing the test
// when the series is missing.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want lbl) float64 {
	t.Helper()
	m := find(fams, name, want)
	if m == nil {
		t.Fatalf("no series %s%s; the family has %s", name, want, seriesOf(fams, name))
	}
	return metricValue(m)
}

// expect checks that a counter or gauge series has the value want.
func expect(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels lbl, want float64) {
	t.Helper()
	m := find(fams, name, labels)
	if m == nil {
		t.Errorf("no series %s%s (want %g); the family has %s", name, labels, want, seriesOf(fams, name))
		return
	}
	if got := metricValue(m); got != want {
		t.Errorf("%s%s = %g, want %g", name, labels, got, want)
	}
}

func seriesOf(fams map[string]*dto.MetricFamily, name string) string {
	f := fams[name]
	if f == nil {
		return "no series (the family is missing)"
	}
	var out []string
	for _, m := range f.GetMetric() {
		out = append(out, fmt.Sprintf("%s=%g", labelsOf(m), metricValue(m)))
	}
	return strings.Join(out, " ")
}

func expectType(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType) {
	t.Helper()
	f := fams[name]
	if f == nil {
		t.Errorf("family %s is missing", name)
		return
	}
	if f.GetType() != typ {
		t.Errorf("%s has type %s, want %s", name, f.GetType(), typ)
	}
}

// tally counts what the client saw: answers by backend and status class.
type tally map[string]map[string]int

func (ty tally) add(backend string, status int) {
	if ty[backend] == nil {
		ty[backend] = map[string]int{}
	}
	ty[backend][fmt.Sprintf("%dxx", status/100)]++
}

func (ty tally) answered(backend string) int {
	n := 0
	for _, c := range ty[backend] {
		n += c
	}
	return n
}

// totalRequests sums baton_requests_total over every series.
func totalRequests(fams map[string]*dto.MetricFamily) float64 {
	n := 0.0
	if f := fams["baton_requests_total"]; f != nil {
		for _, m := range f.GetMetric() {
			n += metricValue(m)
		}
	}
	return n
}

// scrapeUntil scrapes until done holds for the scrape or 5 s pass, and
// returns the last scrape. Baton records a request before it answers the
// client, so one scrape normally suffices; the deadline is a safety bound.
func (f *fixture) scrapeUntil(t *testing.T, what string, done func(map[string]*dto.MetricFamily) bool) map[string]*dto.MetricFamily {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fams := f.scrape(t)
		if done(fams) {
			return fams
		}
		if time.Now().After(deadline) {
			t.Errorf("timed out after 5s waiting for %s", what)
			return fams
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
}

func TestHealthz(t *testing.T) {
	f := startFixture(t)
	resp, err := f.client.Get(f.admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Errorf("GET /healthz: %d %q (Content-Type %q); want 200 \"ok\\n\" as text/plain",
			resp.StatusCode, body, resp.Header.Get("Content-Type"))
	}
}

// TestMetricsCountTraffic sends a known mix of answers through both pools
// and checks every counter the collector exports against what the client
// saw.
func TestMetricsCountTraffic(t *testing.T) {
	f := startFixture(t)

	// Before any request: the 2xx series exist at 0, and one config was
	// loaded.
	fams := f.scrape(t)
	for _, b := range [][2]string{{"a", "v1"}, {"b", "v2"}} {
		expect(t, fams, "baton_requests_total", lbl{"pool": "web", "backend": b[0], "version": b[1], "code_class": "2xx"}, 0)
		expect(t, fams, "baton_request_errors_total", lbl{"pool": "web", "version": b[1]}, 0)
	}
	expect(t, fams, "baton_retries_total", lbl{"pool": "web"}, 0)
	expect(t, fams, "baton_retries_total", lbl{"pool": "flaky"}, 0)

	// Paths are sent in pairs: the 50 % canary split alternates, so each
	// backend gets one of every pair and sees every kind of answer.
	kinds := []string{"/", "/fail", "/oops", "/missing", "/slow"}
	const rounds = 3
	seen := tally{}
	slow := map[string]int{}
	sent := 0
	for range rounds {
		for _, path := range kinds {
			for range 2 {
				status, backend := f.get(t, path)
				sent++
				if backend != "a" && backend != "b" {
					t.Fatalf("GET %s: status %d from %q; want an answer from backend a or b", path, status, backend)
				}
				seen.add(backend, status)
				if path == "/slow" {
					slow[backend]++
				}
			}
		}
	}
	for _, b := range []string{"a", "b"} {
		for _, cls := range []string{"2xx", "4xx", "5xx"} {
			if seen[b][cls] == 0 {
				t.Fatalf("backend %s answered no %s (client saw %v): the canary split did not alternate, so this test checks nothing", b, cls, seen)
			}
		}
	}

	// Pool flaky: each GET that meets "reset" fails there and is retried
	// on "good"; the client sees 200 every time.
	const flakyRequests = 6
	for i := range flakyRequests {
		status, backend := f.get(t, fmt.Sprintf("/flaky/%d", i))
		sent++
		if status != 200 || backend != "good" {
			t.Fatalf("GET /flaky/%d: status %d from %q; want 200 from good (the reset is retried)", i, status, backend)
		}
	}
	resets := int(f.resets.Load())
	if resets == 0 {
		t.Fatalf("backend reset received no request: nothing was retried, so this test checks nothing")
	}

	want := float64(sent + resets) // every attempt is counted on its backend
	fams = f.scrapeUntil(t, fmt.Sprintf("baton_requests_total to sum to %g", want), func(fams map[string]*dto.MetricFamily) bool {
		return totalRequests(fams) >= want
	})

	expectType(t, fams, "baton_requests_total", dto.MetricType_COUNTER)
	expectType(t, fams, "baton_request_errors_total", dto.MetricType_COUNTER)
	expectType(t, fams, "baton_request_duration_seconds", dto.MetricType_HISTOGRAM)
	expectType(t, fams, "baton_inflight_requests", dto.MetricType_GAUGE)
	expectType(t, fams, "baton_retries_total", dto.MetricType_COUNTER)
	expectType(t, fams, "baton_config_reloads_total", dto.MetricType_COUNTER)

	// Requests by backend, version and status class: exactly what the
	// client got from each.
	versionOf := map[string]string{"a": "v1", "b": "v2"}
	for _, b := range []string{"a", "b"} {
		for _, cls := range []string{"2xx", "4xx", "5xx"} {
			expect(t, fams, "baton_requests_total", lbl{"pool": "web", "backend": b, "version": versionOf[b], "code_class": cls}, float64(seen[b][cls]))
		}
		for _, cls := range []string{"none", "1xx", "3xx"} {
			if m := find(fams, "baton_requests_total", lbl{"pool": "web", "backend": b, "version": versionOf[b], "code_class": cls}); m != nil {
				t.Errorf("baton_requests_total{backend=%q,code_class=%q} = %g; want no such series, no request ended so", b, cls, metricValue(m))
			}
		}
		// Errors per version: the 500s and 503s, not the 404s.
		expect(t, fams, "baton_request_errors_total", lbl{"pool": "web", "version": versionOf[b]}, float64(seen[b]["5xx"]))
	}
	expect(t, fams, "baton_requests_total", lbl{"pool": "flaky", "backend": "good", "version": "v1", "code_class": "2xx"}, flakyRequests)
	expect(t, fams, "baton_requests_total", lbl{"pool": "flaky", "backend": "reset", "version": "v1", "code_class": "none"}, float64(resets))
	expect(t, fams, "baton_requests_total", lbl{"pool": "flaky", "backend": "reset", "version": "v1", "code_class": "2xx"}, 0)
	// The attempts that failed on "reset" are transport failures of v1.
	expect(t, fams, "baton_request_errors_total", lbl{"pool": "flaky", "version": "v1"}, float64(resets))

	// Retries: one per request that met "reset", none in web (5xx answers
	// are not retried).
	expect(t, fams, "baton_retries_total", lbl{"pool": "web"}, 0)
	expect(t, fams, "baton_retries_total", lbl{"pool": "flaky"}, float64(resets))

	// Latency: one observation per answer, in the documented buckets,
	// cumulative, and the slow answers above slowDelay.
	for _, b := range []string{"a", "b"} {
		checkHistogram(t, fams, lbl{"pool": "web", "version": versionOf[b]}, seen.answered(b), slow[b])
	}
	checkHistogram(t, fams, lbl{"pool": "flaky", "version": "v1"}, flakyRequests, 0)

	// At rest: nothing in flight, every backend healthy and active at its
	// configured weight.
	backends := [][2]string{{"web", "a"}, {"web", "b"}, {"flaky", "reset"}, {"flaky", "good"}}
	for _, pb := range backends {
		l := lbl{"pool": pb[0], "backend": pb[1]}
		expect(t, fams, "baton_inflight_requests", l, 0)
		expect(t, fams, "baton_backend_healthy", l, 1)
		expect(t, fams, "baton_backend_weight", l, 100)
		checkOneState(t, fams, pb[0], pb[1], "active")
	}
	expect(t, fams, "baton_canary_weight_percent", lbl{"pool": "web", "version": "v2"}, 50)
	if f := fams["baton_canary_weight_percent"]; f != nil && len(f.GetMetric()) != 1 {
		t.Errorf("baton_canary_weight_percent has %d series, want 1 (pool flaky has no canary): %s", len(f.GetMetric()), seriesOf(fams, "baton_canary_weight_percent"))
	}

	expect(t, fams, "baton_config_reloads_total", lbl{"result": "success"}, 1)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "failure"}, 0)
	expect(t, fams, "baton_config_generation", lbl{}, 1)
	if ts := value(t, fams, "baton_config_last_reload_success_timestamp_seconds", lbl{}); ts < float64(time.Now().Add(-time.Minute).Unix()) || ts > float64(time.Now().Unix()+1) {
		t.Errorf("baton_config_last_reload_success_timestamp_seconds = %g, want about now (%d)", ts, time.Now().Unix())
	}
}

// checkHistogram checks baton_request_duration_seconds{labels}: count is
// the answered requests, the buckets are the documented ones and
// cumulative, the 10 s bucket holds everything (the client waits 5 s at
// most), and the slow answers are above every bucket below slowDelay.
func checkHistogram(t *testing.T, fams map[string]*dto.MetricFamily, labels lbl, answered, slow int) {
	t.Helper()
	m := find(fams, "baton_request_duration_seconds", labels)
	if m == nil || m.GetHistogram() == nil {
		t.Errorf("no histogram baton_request_duration_seconds%s; the family has %d series", labels, len(fams["baton_request_duration_seconds"].GetMetric()))
		return
	}
	h := m.GetHistogram()
	if h.GetSampleCount() != uint64(answered) {
		t.Errorf("baton_request_duration_seconds_count%s = %d, want %d (the requests a backend answered)", labels, h.GetSampleCount(), answered)
	}
	if min := float64(slow) * slowDelay.Seconds(); h.GetSampleSum() < min {
		t.Errorf("baton_request_duration_seconds_sum%s = %g, want at least %g (%d answers took %s or more)", labels, h.GetSampleSum(), min, slow, slowDelay)
	}
	var les []float64
	var prev uint64
	for _, bk := range h.GetBucket() {
		le, n := bk.GetUpperBound(), bk.GetCumulativeCount()
		if n < prev {
			t.Errorf("baton_request_duration_seconds_bucket%s: le=%g has %d, below the previous bucket's %d: not cumulative", labels, le, n, prev)
		}
		prev = n
		if math.IsInf(le, +1) {
			if n != h.GetSampleCount() {
				t.Errorf("baton_request_duration_seconds_bucket%s{le=+Inf} = %d, want the count %d", labels, n, h.GetSampleCount())
			}
			continue
		}
		les = append(les, le)
		if n > h.GetSampleCount() {
			t.Errorf("baton_request_duration_seconds_bucket%s{le=%g} = %d, above the count %d", labels, le, n, h.GetSampleCount())
		}
		if le < slowDelay.Seconds() && n > uint64(answered-slow) {
			t.Errorf("baton_request_duration_seconds_bucket%s{le=%g} = %d, but %d of the %d answers took %s or more", labels, le, n, slow, answered, slowDelay)
		}
		if le == 10 && n != uint64(answered) {
			t.Errorf("baton_request_duration_seconds_bucket%s{le=10} = %d, want all %d answers (none took 5s)", labels, n, answered)
		}
	}
	if fmt.Sprint(les) != fmt.Sprint(exportedBuckets) {
		t.Errorf("baton_request_duration_seconds%s has buckets %v, want %v", labels, les, exportedBuckets)
	}
}

// checkOneState checks that baton_backend_state has a series for each of
// the four admin states and that exactly state is 1.
func checkOneState(t *testing.T, fams map[string]*dto.MetricFamily, poolName, backend, state string) {
	t.Helper()
	for _, s := range []string{"active", "draining", "drained", "ejected"} {
		want := 0.0
		if s == state {
			want = 1
		}
		expect(t, fams, "baton_backend_state", lbl{"pool": poolName, "backend": backend, "state": s}, want)
	}
	n := 0
	for _, m := range fams["baton_backend_state"].GetMetric() {
		l := labelsOf(m)
		if l["pool"] == poolName && l["backend"] == backend {
			n++
		}
	}
	if n != 4 {
		t.Errorf("baton_backend_state has %d series for %s/%s, want 4 (one per state)", n, poolName, backend)
	}
}

// TestMetricsInflight holds a request at a backend and checks that it shows
// in flight, and no longer once answered.
func TestMetricsInflight(t *testing.T) {
	f := startFixture(t)
	type result struct {
		status  int
		backend string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := f.client.Get(f.bt.URL("/hold"))
		if err != nil {
			done <- result{err: err}
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		done <- result{status: resp.StatusCode, backend: resp.Header.Get("X-Backend")}
	}()
	select {
	case <-f.holding:
	case r := <-done:
		t.Fatalf("/hold answered before the test released it: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatal("/hold did not reach a backend within 10s")
	}
	inflight := func(fams map[string]*dto.MetricFamily) float64 {
		return value(t, fams, "baton_inflight_requests", lbl{"pool": "web", "backend": "a"}) +
			value(t, fams, "baton_inflight_requests", lbl{"pool": "web", "backend": "b"})
	}
	fams := f.scrape(t)
	if n := inflight(fams); n != 1 {
		t.Errorf("with one request held at a backend, baton_inflight_requests of web sums to %g, want 1 (%s)", n, seriesOf(fams, "baton_inflight_requests"))
	}
	close(f.hold)
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("/hold did not finish within 10s of its release")
	}
	if r.err != nil || r.status != 200 {
		t.Fatalf("/hold: status %d, err %v", r.status, r.err)
	}
	fams = f.scrapeUntil(t, "no request in flight", func(fams map[string]*dto.MetricFamily) bool { return inflight(fams) == 0 })
	if n := inflight(fams); n != 0 {
		t.Errorf("after the held request was answered, baton_inflight_requests of web sums to %g, want 0", n)
	}
	expect(t, fams, "baton_requests_total", lbl{"pool": "web", "backend": r.backend, "version": map[string]string{"a": "v1", "b": "v2"}[r.backend], "code_class": "2xx"}, 1)
}

// TestMetricsFollowAdminState drains, ejects and reweighs backends through
// the registry and checks that the next scrape shows it.
func TestMetricsFollowAdminState(t *testing.T) {
	f := startFixture(t)
	if s, _ := f.get(t, "/"); s != 200 {
		t.Fatalf("GET /: %d", s)
	}

	b, err := f.bt.Reg.Drain("web", "a")
	if err != nil {
		t.Fatalf("Drain web/a: %v", err)
	}
	fams := f.scrape(t)
	expect(t, fams, "baton_backend_state", lbl{"pool": "web", "backend": "a", "state": "active"}, 0)
	if d, dd := value(t, fams, "baton_backend_state", lbl{"pool": "web", "backend": "a", "state": "draining"}),
		value(t, fams, "baton_backend_state", lbl{"pool": "web", "backend": "a", "state": "drained"}); d+dd != 1 {
		t.Errorf("right after Drain: backend a draining=%g drained=%g; want exactly one of them 1", d, dd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := b.WaitDrained(ctx); err != nil {
		t.Fatalf("web/a did not drain within 10s: %v (%s)", err, st)
	}
	fams = f.scrape(t)
	checkOneState(t, fams, "web", "a", "drained")
	checkOneState(t, fams, "web", "b", "active")

	if _, err := f.bt.Reg.Eject("flaky", "good"); err != nil {
		t.Fatalf("Eject flaky/good: %v", err)
	}
	if _, err := f.bt.Reg.SetWeight("web", "b", 250); err != nil {
		t.Fatalf("SetWeight web/b 250: %v", err)
	}
	fams = f.scrape(t)
	checkOneState(t, fams, "flaky", "good", "ejected")
	checkOneState(t, fams, "flaky", "reset", "active")
	expect(t, fams, "baton_backend_weight", lbl{"pool": "web", "backend": "b"}, 250)
	expect(t, fams, "baton_backend_weight", lbl{"pool": "web", "backend": "a"}, 100)

	// Back in rotation: active again.
	if _, err := f.bt.Reg.Enable("web", "a", control.EnableSpec{}); err != nil {
		t.Fatalf("Enable web/a: %v", err)
	}
	fams = f.scrape(t)
	checkOneState(t, fams, "web", "a", "active")
	if got := f.bt.Pool(t, "web").Backend("a").State(); got != pool.Active {
		t.Errorf("web/a state %s after Enable, want active", got)
	}
}

// TestMetricsConfigReloads applies a changed config, a broken one and an
// identical one, and checks the reload counters, the generation and that
// the collector reads the new config's values.
func TestMetricsConfigReloads(t *testing.T) {
	f := startFixture(t)
	fams := f.scrape(t)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "success"}, 1)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "failure"}, 0)
	expect(t, fams, "baton_config_generation", lbl{}, 1)

	// Changed: backend a's weight in the file.
	changed := strings.Replace(f.yaml, `{name: a, address:`, `{name: a, weight: 300, address:`, 1)
	if changed == f.yaml {
		t.Fatal("the test config did not change")
	}
	cfg, err := config.Parse([]byte(changed), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.bt.Reg.Reload(cfg); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	fams = f.scrape(t)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "success"}, 2)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "failure"}, 0)
	expect(t, fams, "baton_config_generation", lbl{}, 2)
	expect(t, fams, "baton_backend_weight", lbl{"pool": "web", "backend": "a"}, 300)
	expect(t, fams, "baton_backend_weight", lbl{"pool": "web", "backend": "b"}, 100)

	// A file that does not load: a failure, nothing applied.
	if err := f.bt.Reg.ReloadFile(t.TempDir() + "/missing.yaml"); err == nil {
		t.Fatal("ReloadFile of a missing file succeeded")
	}
	fams = f.scrape(t)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "success"}, 2)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "failure"}, 1)
	expect(t, fams, "baton_config_generation", lbl{}, 2)

	// The same config again: a successful load that applies nothing new.
	same, err := config.Parse([]byte(changed), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.bt.Reg.Reload(same); err != nil {
		t.Fatalf("Reload of the same config: %v", err)
	}
	fams = f.scrape(t)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "success"}, 3)
	expect(t, fams, "baton_config_reloads_total", lbl{"result": "failure"}, 1)
	expect(t, fams, "baton_config_generation", lbl{}, 2)
}

// TestMetricsLabelsStayBounded sends requests to many distinct paths, hosts
// and queries and checks that the set of series does not grow and that no
// label carries a path, a host or a client address.
func TestMetricsLabelsStayBounded(t *testing.T) {
	f := startFixture(t)
	for range 4 {
		if s, _ := f.get(t, "/"); s != 200 {
			t.Fatalf("GET /: %d", s)
		}
	}
	before := f.scrape(t)
	reqsBefore := totalRequests(before)

	const n = 60
	for i := range n {
		req, err := http.NewRequest("GET", f.bt.URL(fmt.Sprintf("/users/%d/orders/x%d?session=s%d", i, i*7, i)), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = fmt.Sprintf("tenant%d.example.com", i)
		req.Header.Set("User-Agent", fmt.Sprintf("agent-%d", i))
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.9.%d.%d", i/250, i%250))
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: status %d", i, resp.StatusCode)
		}
	}
	after := f.scrapeUntil(t, fmt.Sprintf("%d more requests counted", n), func(fams map[string]*dto.MetricFamily) bool {
		return totalRequests(fams) >= reqsBefore+n
	})
	if got := totalRequests(after) - reqsBefore; got != n {
		t.Errorf("baton_requests_total grew by %g, want %d", got, n)
	}

	sb, sa := seriesSet(before), seriesSet(after)
	if len(sa) != len(sb) {
		t.Errorf("%d series before the requests to %d distinct paths, %d after", len(sb), n, len(sa))
	}
	for s := range sa {
		if !sb[s] {
			t.Errorf("new series after requests to distinct paths: %s", s)
		}
	}
	allowed := map[string]bool{"pool": true, "backend": true, "version": true, "code_class": true, "state": true, "result": true, "verdict": true}
	for name, fam := range after {
		for _, m := range fam.GetMetric() {
			for _, lp := range m.GetLabel() {
				k, v := lp.GetName(), lp.GetValue()
				if !allowed[k] {
					t.Errorf("%s has label %s=%q; labels are pool, backend, version, code_class, state, result and verdict only", name, k, v)
				}
				if strings.ContainsAny(v, "/?:") || strings.Contains(v, "127.0.0.1") || strings.Contains(v, "example.com") ||
					strings.Contains(v, "agent-") || strings.HasPrefix(v, "10.9.") {
					t.Errorf("%s has label %s=%q, which looks like a path, host or address", name, k, v)
				}
			}
		}
	}
}

// seriesSet names every series of a scrape by family and labels.
func seriesSet(fams map[string]*dto.MetricFamily) map[string]bool {
	out := map[string]bool{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			out[name+labelsOf(m).String()] = true
		}
	}
	return out
}
