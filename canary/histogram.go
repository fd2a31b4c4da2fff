// Package canary keeps per-version evidence — request and error counts and
// latency distributions — for comparing a pool's canary with its stable
// version.
package canary

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// Histogram buckets latencies in microseconds with a bounded relative error:
// values below 64 µs are exact, larger ones fall in one of 32 buckets per
// power of two, so a bucket is at most 1/32 (3.1 %) wider than its lower
// bound. The range reaches 2^40 µs (12 days); longer values land in the last
// bucket.
//
// Observe is lock-free and allocation-free; it is safe for concurrent use.
// Histogram values must not be copied.
type Histogram struct {
	buckets [NumBuckets]atomic.Uint64
	sumUS   atomic.Uint64 // sum of observations in microseconds
}

const (
	subBits    = 5
	subBuckets = 1 << subBits // 32 per power of two
	maxExp     = 40 - subBits - 1
	// NumBuckets is the number of buckets of a Histogram.
	NumBuckets = (maxExp + 2) * subBuckets
)

// bucketOf returns the bucket index for v microseconds.
func bucketOf(v uint64) int {
	if v < 2*subBuckets {
		return int(v)
	}
	e := bits.Len64(v) - subBits - 1 // v>>e is in [32, 63]
	if e > maxExp {
		return NumBuckets - 1
	}
	return e*subBuckets + int(v>>uint(e))
}

// BucketBounds returns the lower (inclusive) and upper (exclusive) bound of
// bucket i in microseconds.
func BucketBounds(i int) (lo, hi uint64) {
	if i < 2*subBuckets {
		return uint64(i), uint64(i) + 1
	}
	e := uint(i/subBuckets - 1)
	m := uint64(i%subBuckets + subBuckets)
	return m << e, (m + 1) << e
}

// Observe records one latency.
func (h *Histogram) Observe(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	h.buckets[bucketOf(us)].Add(1)
	h.sumUS.Add(us)
}

// Snapshot is a point-in-time copy of a Histogram.
type Snapshot struct {
	Buckets [NumBuckets]uint64
	Count   uint64
	SumUS   uint64
}

// Snapshot copies the histogram's current counts; Count is the sum of the
// buckets, so the copy is self-consistent even while observations race
// with it.
func (h *Histogram) Snapshot(s *Snapshot) {
	var n uint64
	for i := range h.buckets {
		c := h.buckets[i].Load()
		s.Buckets[i] = c
		n += c
	}
	s.Count = n
	s.SumUS = h.sumUS.Load()
}

// Sub returns s minus an earlier snapshot of the same histogram: the
// observations made between the two.
func (s *Snapshot) Sub(earlier *Snapshot) Snapshot {
	var d Snapshot
	for i := range s.Buckets {
		d.Buckets[i] = s.Buckets[i] - earlier.Buckets[i]
	}
	d.Count = s.Count - earlier.Count
	d.SumUS = s.SumUS - earlier.SumUS
	return d
}

// Quantile returns the q-quantile (0 < q ≤ 1) in microseconds: the midpoint
// of the bucket holding the rank, so within 1.6 % of the true value. It
// returns NaN for an empty snapshot.
func (s *Snapshot) Quantile(q float64) float64 {
	if s.Count == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(s.Count)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range s.Buckets {
		seen += c
		if seen >= rank {
			lo, hi := BucketBounds(i)
			if hi-lo == 1 {
				return float64(lo)
			}
			return (float64(lo) + float64(hi)) / 2
		}
	}
	lo, _ := BucketBounds(NumBuckets - 1)
	return float64(lo)
}
