package admin_test

import (
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// TestAPIBackendHistory: GET …/backends/{name}/history answers the
// backend's own request rate, error rate and latency, aligned on t,
// beside the average backend of its version and of the stable version;
// with three equal backends the average is the backend's own rate.
func TestAPIBackendHistory(t *testing.T) {
	f := startAPI(t)
	var h map[string]any
	var own, avg, stable float64
	testbed.Eventually(t, 20*time.Second, func() bool {
		f.send(t, 30, "/x")
		h = f.api(t, "GET", "/v1/pools/shop/backends/s1/history", "").want(t, 200)
		series := func(k string) []any {
			m, _ := h[k].(map[string]any)
			v, _ := m["rps"].([]any)
			return v
		}
		s, a, st := series("series"), series("version_average"), series("stable_average")
		// The latest sample in which s1 served.
		for i := len(s) - 1; i >= 0; i-- {
			if n, ok := s[i].(float64); ok && n > 0 && i < len(a) && i < len(st) {
				own = n
				avg, _ = a[i].(float64)
				stable, _ = st[i].(float64)
				return true
			}
		}
		return false
	}, "a sample in which s1 served")
	wantKeys(t, "backend history", h, []string{"pool", "backend", "version", "stable_version", "interval_seconds", "t",
		"series", "version_average", "stable_average"}, nil)
	if h["backend"] != "s1" || h["version"] != "v1" || h["stable_version"] != "v1" || h["interval_seconds"] != 2.0 {
		t.Errorf("history of %v (%v, stable %v) every %v s", h["backend"], h["version"], h["stable_version"], h["interval_seconds"])
	}
	ts, _ := h["t"].([]any)
	for _, k := range []string{"series", "version_average", "stable_average"} {
		m := h[k].(map[string]any)
		wantKeys(t, k, m, []string{"rps", "error_rate", "p50_ms", "p99_ms"}, nil)
		for name, v := range m {
			if n := len(v.([]any)); n != len(ts) {
				t.Errorf("%s %s has %d values for %d times", k, name, n, len(ts))
			}
		}
	}
	// Round-robin over three: each backend serves a third, as does the
	// average one; s1 is stable, so both averages are the same.
	if avg < own/2 || avg > own*2 || stable != avg {
		t.Errorf("s1 served %g/s, the average v1 backend %g/s, the average stable one %g/s", own, avg, stable)
	}
}
