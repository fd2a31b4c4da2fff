package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/baton-lb/baton/pool"
)

// The affinity cookies each pool issued per version (pool.CookieCounts)
// must outlive a restart of baton: a restart must not make v1 look gone
// while cookies given before it still pin clients to v1, or a cascade
// release drops a column under them.
//
// They are kept in a file of their own beside the state file
// (baton.state.json → baton.affinity.json), not in the state file: they
// change with every cookie, where decisions change when someone decides
// (a write every few seconds during a canary would be a write to etcd in
// a cluster, and a conflict for every real decision), and they are this
// instance's own, where a cluster's state file is a copy of the shared
// one.
//
// The file is written when the counts changed, at most every cookieFlush,
// after each decision, when a new process takes over, and at a clean
// stop. What a crash loses — cookies given since the last write — is made
// up for conservatively at the next start: a version that was counting
// cookies at the last write, and the stable and canary versions of a pool
// whose canary takes traffic now (it did then: that is a decision, written
// before it applies), count as pinned for one more max_age from the start,
// plus server.shutdown_timeout, the longest the process before may have
// gone on answering after a handover. A clean stop's file is exact and
// needs no such margin. When the counts cannot be restored at all (see
// restoreCookies) every version, present or not, counts as pinned that
// long.

// cookieFlush is how often the counts are written when they changed.
const cookieFlush = 5 * time.Second

const cookieFileFormat = 1

// AffinityPath returns where the affinity cookies' counts of a state file
// are kept: beside it (baton.state.json → baton.affinity.json). "" for
// none.
func AffinityPath(stateFile string) string {
	a := AuditPath(stateFile)
	if a == "" {
		return ""
	}
	return strings.TrimSuffix(a, ".audit.jsonl") + ".affinity.json"
}

// cookieFile is the file's format.
type cookieFile struct {
	Format    int                          `json:"format"`
	WrittenAt time.Time                    `json:"written_at"`
	Closed    bool                         `json:"closed,omitempty"` // written at a clean stop: nothing was issued after
	Pools     map[string]*cookiePoolRecord `json:"pools,omitempty"`
	// Known: the versions seen per pool, and when last (see knownVersions).
	Known map[string]map[string]time.Time `json:"known,omitempty"`
}

type cookiePoolRecord struct {
	MaxAge   string                          `json:"max_age"`
	Versions map[string]*cookieVersionRecord `json:"versions"`
}

type cookieVersionRecord struct {
	Until time.Time `json:"until"`
	// Issuing: cookies were counted since the write before; they may
	// have gone on until the process stopped.
	Issuing  bool                 `json:"issuing,omitempty"`
	Expiring []cookieBucketRecord `json:"expiring"`
}

type cookieBucketRecord struct {
	Expires time.Time `json:"expires"`
	Count   int64     `json:"count"`
}

// cookieWriter is the registry's writer of the file (its lock: mu).
type cookieWriter struct {
	path string
	kick chan struct{} // a decision was made: write soon
	last map[string]map[string]cookiePrint
	// lastKnown: the known versions last written.
	lastKnown map[string]map[string]time.Time
	done      bool // a new process took over or the registry closed: no more writes
}

// cookiePrint is what tells that a version's cookies were issued since
// the last write: a later expiry or more of them (expiring ones make the
// count drop, which is not issuing).
type cookiePrint struct{ until, count int64 }

// cookieRecord returns what the pools' counts are now, and, per pool and
// version, a fingerprint of them to tell a change.
func (r *Registry) cookieRecord(now time.Time) (*cookieFile, map[string]map[string]cookiePrint) {
	f := &cookieFile{Format: cookieFileFormat, WrittenAt: now.UTC(), Pools: map[string]*cookiePoolRecord{}, Known: r.known.snapshot()}
	prints := map[string]map[string]cookiePrint{}
	for _, p := range append(r.Pools(), r.retiredPools()...) {
		if f.Pools[p.Name()] != nil {
			continue // a retired pool the file brought back: the new one has its counts
		}
		counts := p.Cookies(now)
		if len(counts) == 0 {
			continue
		}
		pr := &cookiePoolRecord{MaxAge: p.Settings().Affinity.MaxAge.String(), Versions: map[string]*cookieVersionRecord{}}
		prints[p.Name()] = map[string]cookiePrint{}
		for _, c := range counts {
			vr := &cookieVersionRecord{Until: c.Until}
			for _, b := range c.Expiring {
				vr.Expiring = append(vr.Expiring, cookieBucketRecord{Expires: b.Expires, Count: b.Count})
			}
			pr.Versions[c.Version] = vr
			prints[p.Name()][c.Version] = cookiePrint{until: c.Until.Unix(), count: c.Count()}
		}
		f.Pools[p.Name()] = pr
	}
	return f, prints
}

// writeCookies writes the counts when they changed since the last write
// (always when closing: the file then says so). It is called by the
// flusher, at a handover and at Close.
func (r *Registry) writeCookies(closing bool) {
	r.cookieMu.Lock()
	defer r.cookieMu.Unlock()
	w := &r.cookieW
	if w.path == "" || w.done {
		return
	}
	f, prints := r.cookieRecord(time.Now())
	changed := closing || len(prints) != len(w.last) || !reflect.DeepEqual(f.Known, w.lastKnown)
	for pn, vs := range prints {
		changed = changed || len(vs) != len(w.last[pn])
		for v, fp := range vs {
			was := w.last[pn][v]
			if fp != was {
				changed = true
			}
			if fp.until > was.until || fp.count > was.count {
				f.Pools[pn].Versions[v].Issuing = true
			}
		}
	}
	if !changed {
		return
	}
	f.Closed = closing
	data, err := json.MarshalIndent(f, "", "  ")
	if err == nil {
		err = writeAtomic(w.path, append(data, '\n'), "affinity cookie counts")
	}
	if err != nil {
		r.log.Error().Err(err).Msg("could not keep the affinity cookies' counts; after a restart they count as valid for another max_age")
		return
	}
	w.last, w.lastKnown = prints, f.Known
}

// stopCookies writes the counts a last time and no more: the registry
// closes (closing), or hands over to a new process, which reads them.
func (r *Registry) stopCookies(closing bool) {
	r.writeCookies(closing)
	r.cookieMu.Lock()
	r.cookieW.done = true
	r.cookieMu.Unlock()
}

// resumeCookies lets the counts be written again after a handover that
// failed: this process goes on serving.
func (r *Registry) resumeCookies() {
	r.cookieMu.Lock()
	r.cookieW.done = false
	r.cookieW.last = nil // the next flush writes
	r.cookieMu.Unlock()
}

// kickCookies asks the flusher to write soon (a decision was made).
func (r *Registry) kickCookies() {
	select {
	case r.cookieW.kick <- struct{}{}:
	default:
	}
}

// runCookies writes the counts every cookieFlush when they changed, and
// soon after each decision, until ctx ends.
func (r *Registry) runCookies(ctx context.Context) {
	t := time.NewTicker(cookieFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.cookieW.kick:
		}
		r.writeCookies(false)
	}
}

// restoreCookies gives each pool what the file says the process before
// issued, with the margins above. It runs before the pools take traffic.
//
// When the counts cannot be restored — the file is unreadable, missing
// while a state file shows that a process ran before (a crash before the
// first write, an upgrade from a baton that kept none, a file that
// stopped being written), or there is no state file to keep it beside —
// nothing tells which versions clients are pinned to: every version, even
// one no backend and no record names, counts as held until a max_age
// (and the shutdown timeout) from now (Registry.countsUnknown), and the
// versions the state names count one cookie each that long, so they show.
func (r *Registry) restoreCookies(cfgShutdown time.Duration, stateExisted bool, now time.Time) {
	path := r.cookieW.path
	var f cookieFile
	unreadable := ""
	switch {
	case path == "":
		unreadable = "there is no state file (state_file: off) to keep them beside"
	default:
		data, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if stateExisted {
				unreadable = "the file is missing while the state file exists"
			}
		case err != nil:
			unreadable = err.Error()
		default:
			dec := json.NewDecoder(bytes.NewReader(data))
			if err := dec.Decode(&f); err != nil {
				unreadable = err.Error()
			} else if f.Format != cookieFileFormat {
				unreadable = fmt.Sprintf("format %d, this baton reads %d", f.Format, cookieFileFormat)
			}
		}
	}
	if unreadable != "" {
		f = cookieFile{}
	}
	for pn, vs := range f.Known {
		for v, at := range vs {
			r.known.note(pn, v, at)
		}
	}
	var longest time.Duration
	for _, p := range r.Pools() {
		maxAge := p.Settings().Affinity.MaxAge
		pr := f.Pools[p.Name()]
		if pr != nil {
			if d, err := time.ParseDuration(pr.MaxAge); err == nil {
				maxAge = max(maxAge, d)
			}
		}
		longest = max(longest, maxAge)
		// Pinned at least this long: one cookie the file cannot show.
		margin := pool.CookieBucket{Expires: now.Add(maxAge + cfgShutdown + 2*time.Second).UTC().Truncate(time.Second), Count: 1}
		by := map[string]*pool.CookieCounts{}
		get := func(v string) *pool.CookieCounts {
			if by[v] == nil {
				by[v] = &pool.CookieCounts{Version: v}
			}
			return by[v]
		}
		pinned := map[string]bool{}
		if pr != nil {
			for v, vr := range pr.Versions {
				c := get(v)
				for _, b := range vr.Expiring {
					if b.Count > 0 {
						c.Expiring = append(c.Expiring, pool.CookieBucket{Expires: b.Expires, Count: b.Count})
					}
				}
				pinned[v] = vr.Issuing && !f.Closed
			}
		}
		if !f.Closed && p.Settings().Affinity.Cookie != "" {
			if cv := p.CanaryActive(); cv != "" {
				pinned[cv], pinned[p.StableVersion()] = true, true
			}
		}
		if unreadable != "" {
			for _, v := range p.SortedVersions() {
				pinned[v] = true
			}
			pinned[p.StableVersion()] = true
			for _, v := range stateVersions(r.state.Pools[p.Name()]) {
				pinned[v] = true
			}
		}
		for v, on := range pinned {
			if on {
				c := get(v)
				c.Expiring = append(c.Expiring, margin)
			}
		}
		var counts []pool.CookieCounts
		for _, c := range by {
			for _, b := range c.Expiring {
				if b.Expires.After(c.Until) {
					c.Until = b.Expires
				}
			}
			counts = append(counts, *c)
		}
		p.RestoreCookies(counts)
	}
	if unreadable != "" {
		r.countsUnknown = now.Add(longest + cfgShutdown + 2*time.Second).UTC().Truncate(time.Second).Add(time.Second)
		r.log.Error().Str("file", path).Str("problem", unreadable).Time("until", r.countsUnknown).
			Msg("the affinity cookies' counts cannot be restored; every version counts as pinned by cookies until then")
	}
}

// cookiesUnknownUntil is until when no version's cookies can be told
// (zero: they can). A pool added by a reload shares it: the process
// before may have served it too.
func (r *Registry) cookiesUnknownUntil() time.Time { return r.countsUnknown }
