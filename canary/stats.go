package canary

import (
	"sync/atomic"
	"time"
)

// VersionStats is the evidence about one version of one pool: how many
// requests it served, how many failed on the server's side, and how long it
// took to answer. The request path records into it; readers take snapshots.
//
// It is safe for concurrent use; values must not be copied.
type VersionStats struct {
	pool, version string

	requests atomic.Uint64
	errors   atomic.Uint64 // 5xx answers and transport failures
	latency  Histogram     // time to response headers
}

// NewVersionStats returns empty stats for a pool's version.
func NewVersionStats(pool, version string) *VersionStats {
	return &VersionStats{pool: pool, version: version}
}

// Pool returns the pool's name.
func (v *VersionStats) Pool() string { return v.pool }

// Version returns the version label.
func (v *VersionStats) Version() string { return v.version }

// Record counts one finished request. failed marks a failure on the
// server's side; latency (time to response headers) is recorded when the
// backend answered at all (answered).
func (v *VersionStats) Record(failed, answered bool, latency time.Duration) {
	v.requests.Add(1)
	if failed {
		v.errors.Add(1)
	}
	if answered {
		v.latency.Observe(latency)
	}
}

// Requests returns the requests recorded.
func (v *VersionStats) Requests() uint64 { return v.requests.Load() }

// Errors returns the failures recorded.
func (v *VersionStats) Errors() uint64 { return v.errors.Load() }

// Latency copies the latency histogram into s.
func (v *VersionStats) Latency(s *Snapshot) { v.latency.Snapshot(s) }
