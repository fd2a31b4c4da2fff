package pool

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton/config"
)

// TailRecord is one finished request as the live tail shows it. Records
// are values: a reader may keep them.
type TailRecord struct {
	Seq      uint64    // the pool's count of records; increases by one per record
	Time     time.Time // when the request ended
	Backend  string
	Version  string
	Method   string
	Path     string // without the query unless tail.keep_query
	Status   int    // what the client got; 499 when it went away first
	Class    Class
	Duration time.Duration // from the request's start to its end
	TTFB     time.Duration // to the backend's response head; 0 without one
	Bytes    int64         // response body bytes sent to the client
	// Failed: the backend failed the request or the client got a 5xx.
	Failed bool
	// Signature is the failure's error signature (canary.Failure.Key);
	// empty for requests that did not fail.
	Signature string
	AppCode   string
	Body      string // the start of a failed response's body, printable
}

// TailFilter selects the records a tail reader gets.
type TailFilter struct {
	Backend string // "" any
	Version string // "" any
	// Only is "errors" (failed requests), "slow" (failed or at least Slow),
	// or "all".
	Only string
	Slow time.Duration // for Only "slow", and to keep slow ones unsampled under "all"
	// Sample is the share of successful, not slow requests sent under
	// "all": 1 every one, 0.01 one in a hundred (counted, not random).
	Sample float64
}

// Match reports whether r passes the filter, not counting sampling.
func (f *TailFilter) Match(r *TailRecord) bool {
	if f.Backend != "" && r.Backend != f.Backend || f.Version != "" && r.Version != f.Version {
		return false
	}
	switch f.Only {
	case "errors":
		return r.Failed
	case "slow":
		return r.Failed || f.Slow > 0 && r.Duration >= f.Slow
	}
	return true
}

// TailReader receives the records of one tail as they happen. Records
// arrive on C; when the reader falls more than its buffer behind, the
// pool stops sending, closes C and Dropped reports true: a slow reader
// never slows the proxy.
type TailReader struct {
	C      <-chan TailRecord
	c      chan TailRecord
	filter TailFilter
	seen   uint64 // sampled requests offered, for Sample
	t      *tail
	// dropped is set before C is closed by the pool.
	dropped atomic.Bool
	closed  bool // guarded by t.mu
}

// Dropped reports whether the pool dropped the reader for falling behind.
func (r *TailReader) Dropped() bool { return r.dropped.Load() }

// Close detaches the reader. It is safe to call more than once.
func (r *TailReader) Close() {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.detachLocked(r)
}

// tailReaderBuffer is how many records a reader may fall behind.
const tailReaderBuffer = 1024

// MaxTailReaders bounds the tails attached to one pool: each holds a
// buffer of records, and while any is attached every request is recorded.
const MaxTailReaders = 16

// ErrTooManyTails refuses a tail past MaxTailReaders.
var ErrTooManyTails = errors.New("too many tails attached")

// tail is a pool's ring of recent records and its attached readers.
type tail struct {
	readers atomic.Int32 // attached readers: while 0, only failures are recorded

	mu   sync.Mutex // protects ring, next, seq and subs
	ring []TailRecord
	next int    // where the next record goes
	seq  uint64 // records made
	subs []*TailReader
}

// tailing reports whether a request that did not fail must be recorded:
// someone is reading the tail. The one atomic load is all the request
// path pays for the tail while nobody reads it.
func (t *tail) tailing() bool { return t.readers.Load() > 0 }

// add stores r in the ring (sized by cfg) and hands it to the readers
// whose filter it passes.
func (t *tail) add(r TailRecord, cfg *config.Tail) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	r.Seq = t.seq
	if n := cfg.Buffer; n > 0 && len(t.ring) != n {
		t.resizeLocked(n)
	}
	if len(t.ring) > 0 {
		t.ring[t.next] = r
		t.next = (t.next + 1) % len(t.ring)
	}
	for i := 0; i < len(t.subs); i++ {
		s := t.subs[i]
		if !s.filter.Match(&r) || !s.sampled(&r) {
			continue
		}
		select {
		case s.c <- r:
		default:
			s.dropped.Store(true)
			t.detachLocked(s)
			i--
		}
	}
}

// sampled applies the reader's sample share to a successful, not slow
// request under "all".
func (s *TailReader) sampled(r *TailRecord) bool {
	f := &s.filter
	if f.Only != "all" || r.Failed || f.Slow > 0 && r.Duration >= f.Slow || f.Sample >= 1 {
		return true
	}
	// The n-th such request passes when ⌊n·share⌋ steps up: exactly one
	// in ten at 0.1, spread evenly (the epsilon keeps 10·0.1 at 1).
	s.seen++
	n := float64(s.seen)
	return math.Floor(n*f.Sample+1e-9) > math.Floor((n-1)*f.Sample+1e-9)
}

// resizeLocked keeps the latest records in a ring of n.
func (t *tail) resizeLocked(n int) {
	old := t.snapshotLocked()
	if len(old) > n {
		old = old[len(old)-n:]
	}
	t.ring = make([]TailRecord, n)
	copy(t.ring, old)
	t.next = len(old) % n
}

// snapshotLocked returns the ring's records, oldest first.
func (t *tail) snapshotLocked() []TailRecord {
	out := make([]TailRecord, 0, len(t.ring))
	for i := range t.ring {
		r := t.ring[(t.next+i)%len(t.ring)]
		if r.Seq != 0 {
			out = append(out, r)
		}
	}
	return out
}

func (t *tail) detachLocked(r *TailReader) {
	if r.closed {
		return
	}
	r.closed = true
	for i, s := range t.subs {
		if s == r {
			t.subs = append(t.subs[:i], t.subs[i+1:]...)
			break
		}
	}
	t.readers.Add(-1)
	close(r.c)
}

// Tail attaches a reader to the pool's live requests. Past holds the
// ring's records that pass the filter and came after the record with
// sequence number after (0: none), or ended at or after since (zero: no
// bound), oldest first; then C carries every new record that passes. The
// caller closes the reader.
func (p *Pool) Tail(f TailFilter, after uint64, since time.Time) (past []TailRecord, r *TailReader, err error) {
	t := &p.tail
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.subs) >= MaxTailReaders {
		return nil, nil, fmt.Errorf("%w: pool %q has %d tails attached", ErrTooManyTails, p.name, len(t.subs))
	}
	c := make(chan TailRecord, tailReaderBuffer)
	r = &TailReader{C: c, c: c, filter: f, t: t}
	for _, rec := range t.snapshotLocked() {
		if rec.Seq <= after || rec.Time.Before(since) || !f.Match(&rec) || !r.sampled(&rec) {
			continue
		}
		past = append(past, rec)
	}
	t.subs = append(t.subs, r)
	t.readers.Add(1)
	return past, r, nil
}

// TailSeq returns the sequence number of the pool's latest record.
func (p *Pool) TailSeq() uint64 {
	p.tail.mu.Lock()
	defer p.tail.mu.Unlock()
	return p.tail.seq
}

// tailRecord makes the tail's record of a finished request. It runs for
// failures, and for every request while a tail is attached; it allocates.
func (b *Backend) tailRecord(o *Outcome, failed bool, signature string) {
	cfg := &b.pool.settings().Tail
	path := o.Target
	if !cfg.KeepQuery {
		if i := bytes.IndexByte(path, '?'); i >= 0 {
			path = path[:i]
		}
	}
	path = path[:min(len(path), 1024)]
	now := time.Now()
	r := TailRecord{
		Time: now, Backend: b.name, Version: b.Version(),
		Method: string(o.Method), Path: printable(path),
		Status: o.Sent, Class: o.Class, TTFB: o.TTFB, Bytes: o.Bytes,
		Failed: failed, Signature: signature,
	}
	if !o.Start.IsZero() {
		r.Duration = now.Sub(o.Start)
	}
	if failed {
		r.AppCode = printable(o.AppCode)
		if n := min(len(o.Excerpt), cfg.Body); n > 0 && !sensitive(path, cfg.SensitivePaths) {
			r.Body = printable(o.Excerpt[:n])
		}
	}
	b.pool.tail.add(r, cfg)
}

// sensitive reports whether path starts with one of prefixes.
func sensitive(path []byte, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(string(path), p) {
			return true
		}
	}
	return false
}
