package pool

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton/config"
)

// TailRecord is one finished request as the live tail shows it. Records
// are values: a reader may keep them.
type TailRecord struct {
	// Seq orders the pool's records. It starts at the pool's creation time
	// in microseconds and grows by one per record, so that a reader of an
	// earlier baton process resuming after its last seq misses nothing of
	// this one's and is given nothing twice.
	Seq      uint64
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

// wantsSuccesses reports whether a reader with this filter needs requests
// that did not fail recorded.
func (f *TailFilter) wantsSuccesses() bool { return f.Only != "errors" }

// TailReader receives the records of one tail as they happen. Records
// arrive on C; when the reader falls more than its buffer behind, or the
// pool leaves the config, the pool stops sending and closes C, and Ended
// says why: a slow reader never slows the proxy.
type TailReader struct {
	C      <-chan TailRecord
	c      chan TailRecord
	filter TailFilter
	seen   uint64 // sampled requests offered, for Sample
	t      *tail
	// ended is set before C is closed by the pool.
	ended  atomic.Pointer[string]
	closed bool // guarded by t.mu
}

// Reasons a tail ends, as TailReader.Ended reports them.
const (
	TailDropped = "dropped" // the reader fell more than its buffer behind
	TailRemoved = "removed" // the pool left the config
)

// Ended returns why the pool stopped sending ("" while it sends, or after
// the reader's own Close).
func (r *TailReader) Ended() string {
	if p := r.ended.Load(); p != nil {
		return *p
	}
	return ""
}

// Close detaches the reader. It is safe to call more than once.
func (r *TailReader) Close() {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	t.detachLocked(r, "")
}

const (
	// tailReaderBuffer is how many records a reader may fall behind.
	tailReaderBuffer = 1024
	// MaxTailReaders bounds the tails attached to one pool: each holds a
	// buffer of records.
	MaxTailReaders = 16
)

// ErrTooManyTails refuses a tail past MaxTailReaders.
var ErrTooManyTails = errors.New("too many tails attached")

// ring is the latest records of one kind, oldest overwritten first.
type ring struct {
	recs    []TailRecord
	next    int  // where the next record goes
	evicted bool // a record was overwritten: the ring no longer holds all
}

func (g *ring) add(r TailRecord, n int) {
	if len(g.recs) != n {
		g.resize(n)
	}
	if g.recs[g.next].Seq != 0 {
		g.evicted = true
	}
	g.recs[g.next] = r
	g.next = (g.next + 1) % len(g.recs)
}

// lostAfter reports whether records after seq may have been overwritten,
// and the oldest kept.
func (g *ring) lostAfter(seq uint64) (bool, uint64) {
	o := g.oldest()
	return g.evicted && o > seq+1, o
}

// resize keeps the latest records in a ring of n.
func (g *ring) resize(n int) {
	var keep []TailRecord
	g.each(func(r *TailRecord) { keep = append(keep, *r) })
	if len(keep) > n {
		keep = keep[len(keep)-n:]
		g.evicted = true
	}
	g.recs = make([]TailRecord, n)
	copy(g.recs, keep)
	g.next = len(keep) % n
}

// each calls f on the ring's records, oldest first, in place.
func (g *ring) each(f func(*TailRecord)) {
	for i := range g.recs {
		r := &g.recs[(g.next+i)%len(g.recs)]
		if r.Seq != 0 {
			f(r)
		}
	}
}

// oldest returns the seq of the ring's oldest record (0: empty).
func (g *ring) oldest() uint64 {
	var s uint64
	g.each(func(r *TailRecord) {
		if s == 0 {
			s = r.Seq
		}
	})
	return s
}

// tail is a pool's rings of recent records and its attached readers.
// Failures and other requests have a ring each, so that a busy tail of
// everything does not push out the failures a later reader asks for.
type tail struct {
	// wantOK counts the attached readers that want requests that did not
	// fail: while 0, only failures are recorded.
	wantOK atomic.Int32

	mu     sync.Mutex // protects failed, ok, seq and subs
	failed ring
	ok     ring
	seq    uint64 // the last record's
	subs   []*TailReader
}

// tailing reports whether a request that did not fail must be recorded:
// someone reads a tail of more than failures. The one atomic load is all
// the request path pays for the tail otherwise.
func (t *tail) tailing() bool { return t.wantOK.Load() > 0 }

// add stores r in its ring (sized by cfg) and hands it to the readers
// whose filter it passes.
func (t *tail) add(r TailRecord, cfg *config.Tail) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.seq == 0 {
		t.seq = seqBase()
	}
	t.seq++
	r.Seq = t.seq
	if n := cfg.Buffer; n > 0 {
		if r.Failed {
			t.failed.add(r, n)
		} else {
			t.ok.add(r, n)
		}
	}
	for i := 0; i < len(t.subs); i++ {
		s := t.subs[i]
		if !s.filter.Match(&r) || !s.sampled(&r) {
			continue
		}
		select {
		case s.c <- r:
		default:
			t.detachLocked(s, TailDropped)
			i--
		}
	}
}

// seqBase is where a pool's record numbers start: now in microseconds,
// above any number an earlier process gave (it would have had to make
// more than a record a microsecond to get there).
func seqBase() uint64 { return uint64(time.Now().UnixMicro()) }

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

func (t *tail) detachLocked(r *TailReader, why string) {
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
	if r.filter.wantsSuccesses() {
		t.wantOK.Add(-1)
	}
	if why != "" {
		r.ended.Store(&why)
	}
	close(r.c)
}

// closeAll ends every reader: the pool left the config.
func (t *tail) closeAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for len(t.subs) > 0 {
		t.detachLocked(t.subs[0], TailRemoved)
	}
}

// TailStart is what a new tail begins with.
type TailStart struct {
	// Past holds the ring's records that pass the filter, oldest first.
	Past []TailRecord
	// Last is the seq of the pool's latest record when the tail began:
	// where a reader that got nothing yet goes on from.
	Last uint64
	// Gap: records after the one asked for are no longer kept; Past
	// starts at FirstKept.
	Gap       bool
	FirstKept uint64
}

// Tail attaches a reader to the pool's live requests. Its start holds
// the ring's records that pass the filter and came after the record with
// sequence number after (0: none), or ended at or after since (zero: no
// bound); then C carries every new record that passes. The caller closes
// the reader.
func (p *Pool) Tail(f TailFilter, after uint64, since time.Time) (TailStart, *TailReader, error) {
	t := &p.tail
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.subs) >= MaxTailReaders {
		return TailStart{}, nil, fmt.Errorf("%w: pool %q has %d tails attached", ErrTooManyTails, p.name, len(t.subs))
	}
	c := make(chan TailRecord, tailReaderBuffer)
	r := &TailReader{C: c, c: c, filter: f, t: t}
	st := TailStart{Last: t.seq}
	if after > 0 {
		// Failures are always kept: a reader of failures has missed none
		// while their ring reaches back to after; one of more, while the
		// other ring does too.
		if lost, o := t.failed.lostAfter(after); lost {
			st.Gap, st.FirstKept = true, o
		}
		if lost, o := t.ok.lostAfter(after); lost && f.wantsSuccesses() && (!st.Gap || o > st.FirstKept) {
			st.Gap, st.FirstKept = true, o
		}
	}
	// Both rings, merged by seq; only the matches are copied.
	var fs, oks []*TailRecord
	pick := func(dst *[]*TailRecord) func(*TailRecord) {
		return func(rec *TailRecord) {
			if rec.Seq > after && !rec.Time.Before(since) && f.Match(rec) {
				*dst = append(*dst, rec)
			}
		}
	}
	t.failed.each(pick(&fs))
	if f.wantsSuccesses() {
		t.ok.each(pick(&oks))
	}
	for len(fs) > 0 || len(oks) > 0 {
		var rec *TailRecord
		if len(oks) == 0 || len(fs) > 0 && fs[0].Seq < oks[0].Seq {
			rec, fs = fs[0], fs[1:]
		} else {
			rec, oks = oks[0], oks[1:]
		}
		if r.sampled(rec) {
			st.Past = append(st.Past, *rec)
		}
	}
	t.subs = append(t.subs, r)
	if f.wantsSuccesses() {
		t.wantOK.Add(1)
	}
	return st, r, nil
}

// tailRecord makes the tail's record of a finished request. It runs for
// failures, and for every request while a tail wants them; it allocates.
func (b *Backend) tailRecord(o *Outcome, failed bool, signature string) {
	cfg := &b.pool.settings().Tail
	target := originForm(o.Target)
	p := target
	if !cfg.KeepQuery {
		if i := bytes.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
	}
	p = p[:min(len(p), 1024)]
	now := time.Now()
	r := TailRecord{
		Time: now, Backend: b.name, Version: b.Version(),
		Method: string(o.Method), Path: printable(p),
		Status: o.Sent, Class: o.Class, TTFB: o.TTFB, Bytes: o.Bytes,
		Failed: failed, Signature: signature,
	}
	if !o.Start.IsZero() {
		r.Duration = now.Sub(o.Start)
	}
	if failed {
		r.AppCode = printable(o.AppCode)
		if n := min(len(o.Excerpt), cfg.Body); n > 0 && !sensitive(target, cfg.SensitivePaths) {
			r.Body = printable(o.Excerpt[:n])
		}
	}
	b.pool.tail.add(r, cfg)
}

// originForm returns a request target's path and query: an absolute-form
// target (http://user:pass@host/path) loses its scheme and authority,
// credentials included.
func originForm(target []byte) []byte {
	if len(target) == 0 || target[0] == '/' {
		return target
	}
	if i := bytes.Index(target, []byte("://")); i >= 0 {
		rest := target[i+3:]
		if j := bytes.IndexAny(rest, "/?"); j >= 0 {
			return rest[j:]
		}
		return nil
	}
	return target
}

// sensitive reports whether a request's path falls under one of
// prefixes, compared as routing sees it: percent-decoded, with dot
// segments and repeated slashes resolved, so /%61ccount and //account are
// /account.
func sensitive(target []byte, prefixes []string) bool {
	if len(prefixes) == 0 {
		return false
	}
	p := string(target)
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	if u, err := url.PathUnescape(p); err == nil {
		p = u
	}
	p = path.Clean("/" + p)
	for _, pre := range prefixes {
		if strings.HasPrefix(p, pre) || strings.HasPrefix(p+"/", pre) {
			return true
		}
	}
	return false
}
