package pool_test

import (
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

func cookiePool(t *testing.T, maxAge time.Duration) *pool.Pool {
	t.Helper()
	w := 100
	pc := config.Pool{Name: "shop", StableVersion: "v1", Backends: []config.Backend{
		{Name: "web-1", Address: "127.0.0.1:1", Version: "v1", Weight: &w},
		{Name: "web-2", Address: "127.0.0.1:2", Version: "v2", Weight: &w},
	}}
	pc.Affinity.MaxAge = maxAge
	return pool.New(pc, zerolog.Nop())
}

func issue(t *testing.T, p *pool.Pool, backend string, at time.Time, maxAge time.Duration, n int) {
	t.Helper()
	v, c := p.Backend(backend).CookieVersion()
	if v == "" || c == nil {
		t.Fatalf("%s has no cookie counter", backend)
	}
	for range n {
		c.Issued(at, maxAge)
	}
}

func countOf(p *pool.Pool, version string, now time.Time) (int64, time.Time) {
	for _, c := range p.Cookies(now) {
		if c.Version == version {
			return c.Count(), c.Until
		}
	}
	return 0, time.Time{}
}

// TestCookiesCountedUntilTheyExpire: cookies are counted per version for
// their max_age (and the slack), never less, and not long after.
func TestCookiesCountedUntilTheyExpire(t *testing.T) {
	const maxAge = 2 * time.Second
	p := cookiePool(t, maxAge)
	t0 := time.Unix(1_800_000_000, 500_000_000)
	issue(t, p, "web-1", t0, maxAge, 3)
	issue(t, p, "web-2", t0.Add(time.Second), maxAge, 2)
	if n, until := countOf(p, "v1", t0); n != 3 || until.Before(t0.Add(maxAge)) {
		t.Errorf("v1 right after: %d cookies until %s, want 3 until at least %s", n, until, t0.Add(maxAge))
	}
	// The last moment a v1 cookie can be valid: still counted.
	if n, _ := countOf(p, "v1", t0.Add(maxAge)); n != 3 {
		t.Errorf("v1 at its cookies' max age: %d, want 3", n)
	}
	if n, _ := countOf(p, "v2", t0.Add(maxAge)); n != 2 {
		t.Errorf("v2: %d, want 2", n)
	}
	// Well after: gone, and at most a few seconds of slack late.
	if n, _ := countOf(p, "v1", t0.Add(maxAge+5*time.Second)); n != 0 {
		t.Errorf("v1 five seconds after its cookies expired: %d still counted", n)
	}
	// A slot reused a ring later starts afresh.
	later := t0.Add(10 * time.Minute)
	issue(t, p, "web-1", later, maxAge, 1)
	if n, _ := countOf(p, "v1", later); n != 1 {
		t.Errorf("v1 ten minutes later: %d, want the one new cookie", n)
	}
}

// TestCookiesSpanLongMaxAge: an hour's cookies fit the ring (slots about a
// minute wide); the count covers the whole hour and ends with it.
func TestCookiesSpanLongMaxAge(t *testing.T) {
	const maxAge = time.Hour
	p := cookiePool(t, maxAge)
	t0 := time.Unix(1_800_000_000, 0)
	for m := range 60 {
		issue(t, p, "web-1", t0.Add(time.Duration(m)*time.Minute), maxAge, 2)
	}
	end := t0.Add(59*time.Minute + maxAge)
	if n, until := countOf(p, "v1", t0.Add(59*time.Minute)); n != 120 || until.Before(end) {
		t.Errorf("after an hour of issuing: %d until %s, want 120 until at least %s", n, until, end)
	}
	if n, _ := countOf(p, "v1", end); n < 2 {
		t.Errorf("when the last cookie expires: %d, want it counted", n)
	}
	if n, _ := countOf(p, "v1", end.Add(3*time.Minute)); n != 0 {
		t.Errorf("three minutes after the last expired: %d", n)
	}
}

// TestCookiesConcurrent: cookies counted from many goroutines at once are
// all counted.
func TestCookiesConcurrent(t *testing.T) {
	const maxAge = 30 * time.Second
	p := cookiePool(t, maxAge)
	now := time.Now()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			_, c := p.Backend("web-1").CookieVersion()
			for i := range 1000 {
				c.Issued(now.Add(time.Duration(g*1000+i)*time.Millisecond), maxAge)
			}
		})
	}
	wg.Wait()
	if n, _ := countOf(p, "v1", now); n != 8000 {
		t.Errorf("%d cookies counted, want 8000", n)
	}
}

// TestCookiesOutliveTheirVersionsBackends: once no backend runs a version,
// its cookies are still counted until they expire; a new max_age keeps the
// cookies given under the old one; restored counts add to the live ones.
func TestCookiesOutliveTheirVersionsBackends(t *testing.T) {
	const maxAge = 5 * time.Second
	p := cookiePool(t, maxAge)
	now := time.Now()
	issue(t, p, "web-1", now, maxAge, 4)

	// web-1 is upgraded to v2 and max_age grows: v1's cookies stay.
	cfg := *p.Settings()
	cfg.Backends = append([]config.Backend(nil), cfg.Backends...)
	cfg.Backends[0].Version = "v2"
	cfg.Affinity.MaxAge = 10 * time.Minute
	p.Configure(cfg)
	if n, _ := countOf(p, "v1", now); n != 4 {
		t.Errorf("v1 after its last backend was upgraded: %d, want 4", n)
	}
	issue(t, p, "web-1", now, cfg.Affinity.MaxAge, 1)
	issue(t, p, "web-2", now, maxAge, 1) // counted by a request that read the old counter
	if n, until := countOf(p, "v2", now.Add(time.Minute)); n != 1 || until.Before(now.Add(10*time.Minute)) {
		t.Errorf("v2 a minute on: %d until %s, want the 10-minute cookie", n, until)
	}

	p.RestoreCookies([]pool.CookieCounts{{Version: "v0", Until: now.Add(time.Minute),
		Expiring: []pool.CookieBucket{{Expires: now.Add(30 * time.Second), Count: 2}, {Expires: now.Add(time.Minute), Count: 1}}}})
	if n, _ := countOf(p, "v0", now); n != 3 {
		t.Errorf("restored v0: %d, want 3", n)
	}
	if n, _ := countOf(p, "v0", now.Add(45*time.Second)); n != 1 {
		t.Errorf("restored v0 after its first bucket expired: %d, want 1", n)
	}
	p.RestoreCookies(nil)
	if n, _ := countOf(p, "v0", now); n != 0 {
		t.Errorf("v0 after restoring nothing: %d", n)
	}
}
