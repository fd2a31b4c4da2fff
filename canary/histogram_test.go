package canary

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// maxExact is the largest value bucketOf/BucketBounds describe exactly:
// values at or above 2^40 µs all land in the last bucket.
const maxExact = uint64(1) << 40

// TestBucketBoundsAreContiguous walks every bucket: each starts where the
// previous one ended, the first starts at 0 and the last ends at 2^40; the
// first 64 are one microsecond wide and the rest at most 1/32 of their
// lower bound.
func TestBucketBoundsAreContiguous(t *testing.T) {
	var prevHi uint64
	for i := range NumBuckets {
		lo, hi := BucketBounds(i)
		if lo != prevHi {
			t.Fatalf("bucket %d is [%d, %d): starts at %d, want %d (where bucket %d ended)", i, lo, hi, lo, prevHi, i-1)
		}
		if hi <= lo {
			t.Fatalf("bucket %d is [%d, %d): empty or reversed", i, lo, hi)
		}
		switch {
		case lo < 64:
			if hi-lo != 1 {
				t.Errorf("bucket %d is [%d, %d): values below 64µs must be exact", i, lo, hi)
			}
		default:
			if rel := float64(hi-lo) / float64(lo); rel > 1.0/32 {
				t.Errorf("bucket %d is [%d, %d): relative width %.4f > 1/32", i, lo, hi, rel)
			}
		}
		prevHi = hi
	}
	if prevHi != maxExact {
		t.Errorf("the last bucket ends at %d, want 2^40 = %d", prevHi, maxExact)
	}
}

// TestBucketOfMatchesBounds checks that every value falls in the bucket
// whose bounds hold it: exhaustively below 2^20, at and around every
// bucket edge, and for random values up to 2^40.
func TestBucketOfMatchesBounds(t *testing.T) {
	check := func(v uint64) {
		t.Helper()
		i := bucketOf(v)
		if i < 0 || i >= NumBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside 0..%d", v, i, NumBuckets-1)
		}
		lo, hi := BucketBounds(i)
		if v < lo || v >= hi {
			t.Fatalf("bucketOf(%d) = %d, whose bounds are [%d, %d)", v, i, lo, hi)
		}
	}
	for v := range uint64(1 << 20) {
		check(v)
	}
	for i := range NumBuckets {
		lo, hi := BucketBounds(i)
		check(lo)
		check(hi - 1)
		if lo > 0 {
			check(lo - 1)
		}
		if hi < maxExact {
			check(hi)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		check(r.Uint64N(maxExact))
	}
	// Beyond the range: the last bucket, as documented.
	for _, v := range []uint64{maxExact, maxExact + 1, math.MaxUint64} {
		if i := bucketOf(v); i != NumBuckets-1 {
			t.Errorf("bucketOf(%d) = %d, want the last bucket %d", v, i, NumBuckets-1)
		}
	}
}

// TestObserveUnits checks that Observe records microseconds, truncating,
// and clamps negative durations to 0.
func TestObserveUnits(t *testing.T) {
	var h Histogram
	h.Observe(1500 * time.Nanosecond) // 1 µs
	h.Observe(250 * time.Microsecond)
	h.Observe(-time.Second) // 0 µs
	h.Observe(0)
	var s Snapshot
	h.Snapshot(&s)
	if s.Count != 4 || s.SumUS != 1+250 {
		t.Fatalf("Count %d SumUS %d, want 4 and 251", s.Count, s.SumUS)
	}
	for v, want := range map[uint64]uint64{0: 2, 1: 1, 250: 1} {
		if got := s.Buckets[bucketOf(v)]; got != want {
			t.Errorf("bucket of %dµs holds %d, want %d", v, got, want)
		}
	}
	// A duration longer than the range lands in the last bucket.
	h.Observe(time.Duration(maxExact) * 4 * time.Microsecond)
	h.Snapshot(&s)
	if s.Buckets[NumBuckets-1] != 1 || s.Count != 5 {
		t.Errorf("a %s observation: last bucket %d, count %d; want 1 and 5", time.Duration(maxExact)*4*time.Microsecond, s.Buckets[NumBuckets-1], s.Count)
	}
}

// exactQuantile is the value of rank ceil(q·n) in sorted (1-based), the
// definition Quantile documents.
func exactQuantile(sorted []uint64, q float64) float64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return float64(sorted[rank-1])
}

var quantiles = []float64{0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1}

// checkQuantiles observes values (in µs) and compares Quantile with the
// exact quantile of the same values: within 3.2 %, and exact below 64 µs.
func checkQuantiles(t *testing.T, name string, values []uint64) {
	t.Helper()
	var h Histogram
	for _, v := range values {
		h.Observe(time.Duration(v) * time.Microsecond)
	}
	var s Snapshot
	h.Snapshot(&s)
	if s.Count != uint64(len(values)) {
		t.Fatalf("%s: Count %d, want %d", name, s.Count, len(values))
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	for _, q := range quantiles {
		got, want := s.Quantile(q), exactQuantile(sorted, q)
		if want < 64 {
			if got != want {
				t.Errorf("%s: Quantile(%g) = %g, want exactly %g (values below 64µs are exact)", name, q, got, want)
			}
			continue
		}
		if rel := math.Abs(got-want) / want; rel > 0.032 {
			t.Errorf("%s: Quantile(%g) = %g, exact %g: off by %.2f%%, want within 3.2%%", name, q, got, want, 100*rel)
		}
	}
}

func TestQuantileUniform(t *testing.T) {
	values := make([]uint64, 100000)
	for i := range values {
		values[i] = uint64(i + 1) // 1..100000 µs
	}
	checkQuantiles(t, "uniform 1..100000µs", values)

	// Known values: the median of 1..100000 is 50000, in bucket
	// [49152, 50176) whose midpoint is 49664.
	var h Histogram
	for _, v := range values {
		h.Observe(time.Duration(v) * time.Microsecond)
	}
	var s Snapshot
	h.Snapshot(&s)
	if got := s.Quantile(0.5); got != 49664 {
		t.Errorf("uniform: Quantile(0.5) = %g, want 49664, the midpoint of [49152, 50176)", got)
	}
	if got := s.Quantile(0.00001); got != 1 {
		t.Errorf("uniform: Quantile(0.00001) = %g, want 1 (the smallest value, exact)", got)
	}
}

func TestQuantileExponential(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	values := make([]uint64, 200000)
	for i := range values {
		values[i] = uint64(r.ExpFloat64() * 20000) // mean 20 ms
	}
	checkQuantiles(t, "exponential, mean 20ms", values)
}

func TestQuantileLogNormalWideRange(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	values := make([]uint64, 200000)
	for i := range values {
		values[i] = uint64(math.Exp(r.NormFloat64()*3 + 8)) // ~µs to minutes
	}
	checkQuantiles(t, "log-normal", values)
}

func TestQuantileSmallAndEmpty(t *testing.T) {
	var s Snapshot
	if q := s.Quantile(0.5); !math.IsNaN(q) {
		t.Errorf("empty snapshot: Quantile(0.5) = %g, want NaN", q)
	}
	checkQuantiles(t, "one value", []uint64{12345})
	checkQuantiles(t, "exact small values", []uint64{3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3, 8, 4, 6, 2, 6, 4, 3, 3, 8, 3, 2, 7, 9, 5})
	checkQuantiles(t, "two clusters", []uint64{100, 100, 100, 1000000, 1000000})
}

// TestSnapshotSub checks that the difference of two snapshots is what was
// observed between them.
func TestSnapshotSub(t *testing.T) {
	var h Histogram
	for v := range uint64(1000) {
		h.Observe(time.Duration(v*37) * time.Microsecond)
	}
	var before Snapshot
	h.Snapshot(&before)

	var between Histogram // the same observations, kept apart
	r := rand.New(rand.NewPCG(7, 8))
	for range 5000 {
		d := time.Duration(r.Uint64N(1<<30)) * time.Microsecond
		h.Observe(d)
		between.Observe(d)
	}
	var after, want Snapshot
	h.Snapshot(&after)
	between.Snapshot(&want)

	got := after.Sub(&before)
	if got != want {
		if got.Count != want.Count || got.SumUS != want.SumUS {
			t.Fatalf("Sub: Count %d SumUS %d, want %d and %d", got.Count, got.SumUS, want.Count, want.SumUS)
		}
		for i := range got.Buckets {
			if got.Buckets[i] != want.Buckets[i] {
				t.Fatalf("Sub: bucket %d holds %d, want %d", i, got.Buckets[i], want.Buckets[i])
			}
		}
	}
	if got.Quantile(0.5) != want.Quantile(0.5) {
		t.Errorf("Sub: median %g, want %g", got.Quantile(0.5), want.Quantile(0.5))
	}
	// Nothing in between: an empty difference.
	if zero := after.Sub(&after); zero != (Snapshot{}) {
		t.Errorf("s.Sub(s) is not empty: Count %d SumUS %d", zero.Count, zero.SumUS)
	}
}

// TestObserveConcurrent observes from many goroutines while another takes
// snapshots; run under -race. Every observation is counted, and every
// snapshot is self-consistent and no smaller than the one before.
func TestObserveConcurrent(t *testing.T) {
	var h Histogram
	const workers, each = 8, 20000
	stop := make(chan struct{})
	snapErr := make(chan string, 1)
	var snaps sync.WaitGroup
	snaps.Add(1)
	go func() {
		defer snaps.Done()
		var prev, s Snapshot
		for n := 0; ; n++ {
			h.Snapshot(&s)
			var sum uint64
			for i, c := range s.Buckets {
				sum += c
				if c < prev.Buckets[i] {
					snapErr <- "a bucket shrank between snapshots"
					return
				}
			}
			if sum != s.Count || s.Count < prev.Count {
				snapErr <- "Count is not the sum of the buckets, or shrank"
				return
			}
			prev = s
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				h.Observe(time.Duration((w*each+i)%5000) * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	close(stop)
	snaps.Wait()
	select {
	case e := <-snapErr:
		t.Error(e)
	default:
	}
	var s Snapshot
	h.Snapshot(&s)
	if s.Count != workers*each {
		t.Errorf("Count %d after %d concurrent observations", s.Count, workers*each)
	}
	// Each worker observed (w·each+i) mod 5000 for i < each; each is a
	// multiple of 5000, so every worker observed 0..4999 each/5000 times.
	wantSum := uint64(workers) * (each / 5000) * (4999 * 5000 / 2)
	if s.SumUS != wantSum {
		t.Errorf("SumUS %d, want %d", s.SumUS, wantSum)
	}
	for v := range uint64(64) {
		if got := s.Buckets[bucketOf(v)]; got != workers*each/5000 {
			t.Errorf("bucket of %dµs holds %d, want %d", v, got, workers*each/5000)
		}
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	var h Histogram
	d := 1234 * time.Microsecond
	if n := testing.AllocsPerRun(1000, func() {
		h.Observe(d)
		d += 17 * time.Microsecond
	}); n != 0 {
		t.Errorf("Observe allocates %g times per call, want 0", n)
	}
	vs := NewVersionStats("web", "v1")
	if n := testing.AllocsPerRun(1000, func() { vs.Record(1, false, false, d) }); n != 0 {
		t.Errorf("VersionStats.Record allocates %g times per call, want 0", n)
	}
}

func TestVersionStatsRecord(t *testing.T) {
	vs := NewVersionStats("web", "v2")
	vs.Record(0, false, false, 2*time.Millisecond)   // answered
	vs.Record(1, true, false, 3*time.Millisecond)    // answered 5xx
	vs.Record(1, true, true, 0)                      // transport failure
	vs.Record(2, false, false, 100*time.Microsecond) // answered
	var s Snapshot
	vs.Latency(&s)
	if vs.Pool() != "web" || vs.Version() != "v2" || vs.Requests() != 4 || vs.Errors() != 2 || vs.NoAnswer() != 1 || s.Count != 3 || s.SumUS != 5100 {
		t.Errorf("pool %q version %q requests %d errors %d latency count %d sum %dµs; want web v2 4 2 3 5100",
			vs.Pool(), vs.Version(), vs.Requests(), vs.Errors(), s.Count, s.SumUS)
	}
}

func BenchmarkObserve(b *testing.B) {
	var h Histogram
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		d := time.Duration(rand.Uint64N(1<<20)) * time.Microsecond
		for pb.Next() {
			h.Observe(d)
			d = (d*3 + 7*time.Microsecond) % time.Second
		}
	})
}
