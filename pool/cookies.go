package pool

import (
	"sort"
	"sync/atomic"
	"time"
)

// Affinity cookies are counted per version so that a release can ask
// whether a client may still be pinned to an old version (a cascade
// release drops a column only once no v1 can be served anywhere). A
// cookie lives exactly its Max-Age from when it was given — baton never
// renews one — so the question is how many cookies given for a version
// expire after now.
//
// They are counted by the second they expire rather than the second they
// were given: a cookie keeps the lifetime it was given with, so a reload
// that changes affinity.max_age changes nothing about the ones already out.
const cookieSlots = 64

// cookieSlack is added to each cookie's expiry: the client starts its
// Max-Age when the response reaches it, a moment after baton sent it, and
// Max-Age is whole seconds. Counting a cookie a little longer errs on the
// side of "still pinned", the safe side.
const cookieSlack = 2 * time.Second

// CookieCounter counts the affinity cookies issued for one version of a
// pool, in a ring of slots by when they expire. Counting one is an atomic
// compare-and-swap on its slot and a load (rarely a swap) of the latest
// expiry: no lock, no allocation, for the request path.
//
// It is safe for concurrent use; CookieCounter values must not be copied.
type CookieCounter struct {
	// width is how many seconds of expiry one slot covers: at least one,
	// and enough that cookieSlots-2 slots cover a cookie's whole life.
	width int64
	// until is the latest expiry of a cookie counted (unix seconds).
	until atomic.Int64
	// Each slot holds epoch<<32 | count, epoch being the expiry in unix
	// seconds divided by width: one word, so that a slot reused for a
	// later epoch starts afresh atomically with its first count.
	slots [cookieSlots]atomic.Uint64
}

func newCookieCounter(maxAge time.Duration) *CookieCounter {
	return &CookieCounter{width: cookieWidth(maxAge)}
}

// cookieWidth is the slot width for cookies of maxAge: a cookie given now
// expires within the next maxAge plus the slack, which cookieSlots-2 slots
// must span so that a slot is reused only once all its cookies expired.
func cookieWidth(maxAge time.Duration) int64 {
	span := int64((maxAge + cookieSlack + time.Second - 1) / time.Second)
	return max(1, (span+cookieSlots-3)/(cookieSlots-2))
}

// Issued counts one cookie given with maxAge at now.
func (c *CookieCounter) Issued(now time.Time, maxAge time.Duration) {
	exp := now.Add(maxAge + cookieSlack)
	sec := exp.Unix()
	if exp.Nanosecond() > 0 {
		sec++ // whole seconds, rounded up
	}
	c.add(sec)
}

// add counts a cookie that expires at exp (unix seconds).
func (c *CookieCounter) add(exp int64) {
	epoch := uint64(exp/c.width) & 0xffffffff
	s := &c.slots[epoch%cookieSlots]
	for {
		old := s.Load()
		var next uint64
		switch e := old >> 32; {
		case e == epoch, e > epoch:
			// The slot's epoch, or a later one (the clock stepped back):
			// counted there, it is counted as valid for longer, never less.
			if uint32(old) == ^uint32(0) {
				next = old // saturated; the expiry still says "pinned"
			} else {
				next = old + 1
			}
		default:
			// An earlier epoch: every cookie in it expired (the ring spans
			// more than a cookie's life), so the slot starts afresh.
			next = epoch<<32 | 1
		}
		if s.CompareAndSwap(old, next) {
			break
		}
	}
	for {
		u := c.until.Load()
		if exp <= u || c.until.CompareAndSwap(u, exp) {
			return
		}
	}
}

// addTo adds the counter's cookies still valid at now (unix seconds) to
// by, keyed by the latest expiry their slot holds: a cookie that expires
// at second X (by X.0, rounded up) is valid while X is after now.
func (c *CookieCounter) addTo(by map[int64]int64, now int64) {
	if c.until.Load() <= now {
		return
	}
	for i := range c.slots {
		v := c.slots[i].Load()
		n := int64(uint32(v))
		if n == 0 {
			continue
		}
		end := (int64(v>>32)+1)*c.width - 1
		if end > now {
			by[end] += n
		}
	}
}

// CookieCounts are the affinity cookies issued for one version that may
// still be valid: an upper bound (a cookie is counted until the end of its
// slot, plus cookieSlack), never fewer than there are.
type CookieCounts struct {
	Version string
	// Until is when the last of them expires (zero: none is valid).
	Until time.Time
	// Expiring counts them by when they expire at the latest, soonest
	// first.
	Expiring []CookieBucket
}

// CookieBucket is a number of cookies that expire by Expires.
type CookieBucket struct {
	Expires time.Time
	Count   int64
}

// Count is how many cookies may still be valid.
func (c CookieCounts) Count() int64 {
	var n int64
	for _, b := range c.Expiring {
		n += b.Count
	}
	return n
}

// versionCookies are the counters of one version of a pool: the one its
// backends count into now, those replaced when affinity.max_age changed
// (their cookies live on), and what an earlier baton process issued, read
// back from the file control keeps. Guarded by the pool's mu.
type versionCookies struct {
	live     *CookieCounter
	old      []*CookieCounter
	restored CookieCounts
}

// cookiesLocked returns version's live counter, creating it.
func (p *Pool) cookiesLocked(version string) *CookieCounter {
	vc := p.cookies[version]
	if vc == nil {
		vc = &versionCookies{live: newCookieCounter(p.cfg.Affinity.MaxAge)}
		p.cookies[version] = vc
	}
	return vc.live
}

// resizeCookiesLocked gives every version a live counter with slots fit
// for the pool's affinity.max_age, keeping the old one readable until its
// cookies expire.
func (p *Pool) resizeCookiesLocked() {
	w := cookieWidth(p.cfg.Affinity.MaxAge)
	for _, vc := range p.cookies {
		if vc.live.width != w {
			vc.old = append(vc.old, vc.live)
			vc.live = &CookieCounter{width: w}
		}
	}
}

// cookieGrace is how long a version's counters outlive their last cookie
// once no backend runs it: a request that read its backend's counter just
// before the backend changed version still counts into it.
const cookieGrace = 10 * time.Second

// pruneCookies forgets the counters of versions that no backend runs and
// none of whose cookies can still be valid.
func (p *Pool) pruneCookies(now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cut := now.Add(-cookieGrace).Unix()
	used := map[string]bool{}
	for _, b := range p.order {
		used[b.spec.Load().version] = true
	}
	for _, b := range p.leaving {
		used[b.spec.Load().version] = true
	}
	for v, vc := range p.cookies {
		kept := vc.old[:0]
		for _, c := range vc.old {
			if c.until.Load() > cut {
				kept = append(kept, c)
			}
		}
		clear(vc.old[len(kept):])
		vc.old = kept
		if !used[v] && len(vc.old) == 0 && vc.live.until.Load() <= cut && vc.restored.Until.Unix() <= cut {
			delete(p.cookies, v)
		}
	}
}

// Cookies returns, for each version with affinity cookies that may still
// be valid at now, how many there are and when they expire, sorted by
// version.
func (p *Pool) Cookies(now time.Time) []CookieCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	sec := now.Unix()
	var out []CookieCounts
	for v, vc := range p.cookies {
		by := map[int64]int64{}
		vc.live.addTo(by, sec)
		for _, c := range vc.old {
			c.addTo(by, sec)
		}
		for _, b := range vc.restored.Expiring {
			if end := b.Expires.Unix(); end > sec && b.Count > 0 {
				by[end] += b.Count
			}
		}
		if len(by) == 0 {
			continue
		}
		cc := CookieCounts{Version: v}
		for end, n := range by {
			cc.Expiring = append(cc.Expiring, CookieBucket{Expires: time.Unix(end, 0).UTC(), Count: n})
		}
		sort.Slice(cc.Expiring, func(i, j int) bool { return cc.Expiring[i].Expires.Before(cc.Expiring[j].Expires) })
		cc.Until = cc.Expiring[len(cc.Expiring)-1].Expires
		out = append(out, cc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out
}

// RestoreCookies replaces what the pool knows of cookies an earlier baton
// process issued (what it read from the file control keeps); a version not
// in counts has none from before. Counts whose buckets are all past are
// kept by their Until alone, which then must be in the past too.
func (p *Pool) RestoreCookies(counts []CookieCounts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, vc := range p.cookies {
		vc.restored = CookieCounts{}
	}
	for _, c := range counts {
		vc := p.cookies[c.Version]
		if vc == nil {
			vc = &versionCookies{live: newCookieCounter(p.cfg.Affinity.MaxAge)}
			p.cookies[c.Version] = vc
		}
		c.Expiring = append([]CookieBucket(nil), c.Expiring...)
		vc.restored = c
	}
}
