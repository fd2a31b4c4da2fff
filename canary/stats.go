package canary

import (
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxGroups bounds the route groups of a pool, "other" included, so
// evidence stays bounded whatever paths clients send.
const MaxGroups = 17

// OtherGroup is the index of requests no route group matches.
const OtherGroup = 0

// Groups sorts requests into route groups, so that a canary serving a
// different mix of requests than stable is compared like with like. Groups
// are configured path prefixes, or — when none are configured — the first
// path segment ("/checkout/pay" → "/checkout", "/" its own), for the first
// 16 segments seen; everything else is "other".
//
// Index is safe for concurrent use and allocates nothing once a group exists.
type Groups struct {
	prefixes []string // configured, longest first; nil: automatic
	index    []uint8  // group index of each prefix

	mu    sync.Mutex // serialises additions to auto
	auto  atomic.Pointer[map[string]uint8]
	names atomic.Pointer[[]string] // by index; copy-on-write
	// full: every automatic group is taken; requests of further segments
	// count in folded (and in "other") without taking the lock.
	full   atomic.Bool
	folded atomic.Uint64
}

// NewGroups returns route groups for prefixes (automatic when empty).
func NewGroups(prefixes []string) *Groups {
	g := &Groups{}
	names := []string{"other"}
	if len(prefixes) > 0 {
		ps := append([]string(nil), prefixes...)
		sort.SliceStable(ps, func(i, j int) bool { return len(ps[i]) > len(ps[j]) })
		seen := map[string]uint8{}
		for _, p := range ps {
			if _, ok := seen[p]; !ok && len(names) < MaxGroups {
				seen[p] = uint8(len(names))
				names = append(names, p)
			}
			if i, ok := seen[p]; ok {
				g.prefixes = append(g.prefixes, p)
				g.index = append(g.index, i)
			}
		}
	} else {
		m := map[string]uint8{}
		g.auto.Store(&m)
	}
	g.names.Store(&names)
	return g
}

// Index returns the group of a (normalised) request path.
func (g *Groups) Index(path []byte) int {
	if g.prefixes != nil {
		for i, p := range g.prefixes {
			if len(path) >= len(p) && string(path[:len(p)]) == p {
				return int(g.index[i])
			}
		}
		return OtherGroup
	}
	seg := firstSegment(path)
	if len(seg) == 0 {
		return OtherGroup
	}
	if i, ok := (*g.auto.Load())[string(seg)]; ok {
		return int(i)
	}
	if g.full.Load() {
		g.folded.Add(1)
		return OtherGroup
	}
	return g.add(string(seg))
}

// Folded returns how many requests went to "other" because every
// automatic route group was taken.
func (g *Groups) Folded() uint64 { return g.folded.Load() }

func (g *Groups) add(seg string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	m := *g.auto.Load()
	if i, ok := m[seg]; ok {
		return int(i)
	}
	names := *g.names.Load()
	if len(names) >= MaxGroups {
		g.full.Store(true)
		g.folded.Add(1)
		return OtherGroup
	}
	next := make(map[string]uint8, len(m)+1)
	for k, v := range m {
		next[k] = v
	}
	i := uint8(len(names))
	next[seg] = i
	nn := append(append([]string(nil), names...), seg)
	g.names.Store(&nn)
	g.auto.Store(&next)
	return int(i)
}

// Name returns a group's name.
func (g *Groups) Name(i int) string {
	names := *g.names.Load()
	if i < 0 || i >= len(names) {
		return "other"
	}
	return names[i]
}

// firstSegment returns "/seg" of "/seg/rest" ("" for "/").
func firstSegment(path []byte) []byte {
	if len(path) == 0 || path[0] != '/' {
		return nil
	}
	if len(path) == 1 {
		return path // the home page is a group of its own
	}
	for i := 1; i < len(path); i++ {
		if path[i] == '/' {
			return path[:i]
		}
	}
	return path
}

// groupStats is the evidence of one version in one route group.
type groupStats struct {
	requests atomic.Uint64
	errors   atomic.Uint64
	latency  Histogram
}

// VersionStats is the evidence about one version of one pool: requests,
// failures on the server's side, failures without any answer, and time to
// response headers, per route group. The request path records into it;
// readers take snapshots.
//
// It is safe for concurrent use; values must not be copied.
type VersionStats struct {
	pool, version string

	requests atomic.Uint64
	errors   atomic.Uint64 // 5xx answers and transport failures
	gateway  atomic.Uint64 // no answer at all: refused, reset, timed out
	groups   [MaxGroups]atomic.Pointer[groupStats]

	retiredMu sync.Mutex // protects retired
	retired   Snapshot   // latency of groups reset by ResetGroups

	bound      bound        // per-client bounds of the current judge window
	errClients errorClients // the clients errors came from
}

// NewVersionStats returns empty stats for a pool's version.
func NewVersionStats(pool, version string) *VersionStats {
	return &VersionStats{pool: pool, version: version}
}

// Pool returns the pool's name.
func (v *VersionStats) Pool() string { return v.pool }

// Version returns the version label.
func (v *VersionStats) Version() string { return v.version }

func (v *VersionStats) group(i int) *groupStats {
	if i < 0 || i >= MaxGroups {
		i = OtherGroup
	}
	if g := v.groups[i].Load(); g != nil {
		return g
	}
	g := &groupStats{} // once per group, then reused
	if v.groups[i].CompareAndSwap(nil, g) {
		return g
	}
	return v.groups[i].Load()
}

// Record counts one finished request of route group group. failed marks a
// failure on the server's side, noAnswer one where the backend gave no
// answer at all; latency (time to response headers) is recorded when the
// backend answered.
func (v *VersionStats) Record(group int, failed, noAnswer bool, latency time.Duration) {
	g := v.group(group)
	v.requests.Add(1)
	g.requests.Add(1)
	if failed {
		v.errors.Add(1)
		g.errors.Add(1)
	}
	if noAnswer {
		v.gateway.Add(1)
		return
	}
	g.latency.Observe(latency)
}

// ResetGroups starts the per-group evidence afresh (the route groups were
// made anew). The version's totals go on, and so does its latency as
// Latency reports it: the retired groups' histograms are kept in one sum.
func (v *VersionStats) ResetGroups() {
	v.retiredMu.Lock()
	defer v.retiredMu.Unlock()
	var g Snapshot
	for i := range v.groups {
		if gs := v.groups[i].Swap(nil); gs != nil {
			gs.latency.Snapshot(&g)
			v.retired.add(&g)
		}
	}
}

// Requests returns the requests recorded.
func (v *VersionStats) Requests() uint64 { return v.requests.Load() }

// GroupRequests returns the requests recorded in route group i.
func (v *VersionStats) GroupRequests(i int) uint64 {
	if i < 0 || i >= MaxGroups {
		return 0
	}
	if g := v.groups[i].Load(); g != nil {
		return g.requests.Load()
	}
	return 0
}

// Errors returns the failures recorded.
func (v *VersionStats) Errors() uint64 { return v.errors.Load() }

// NoAnswer returns the requests the backend gave no answer to.
func (v *VersionStats) NoAnswer() uint64 { return v.gateway.Load() }

// Latency copies the latency histogram of all route groups, those reset
// included, into s.
func (v *VersionStats) Latency(s *Snapshot) {
	v.retiredMu.Lock()
	*s = v.retired
	v.retiredMu.Unlock()
	var g Snapshot
	for i := range v.groups {
		if gs := v.groups[i].Load(); gs != nil {
			gs.latency.Snapshot(&g)
			s.add(&g)
		}
	}
}

// GroupSnapshot is one route group's evidence at a moment.
type GroupSnapshot struct {
	Requests, Errors uint64
	Latency          Snapshot
}

// VersionSnapshot is a version's evidence at a moment.
type VersionSnapshot struct {
	Of                         *VersionStats
	Requests, Errors, NoAnswer uint64
	Groups                     map[int]*GroupSnapshot
}

// Snapshot copies the version's evidence.
func (v *VersionStats) Snapshot() *VersionSnapshot {
	s := &VersionSnapshot{Of: v, Requests: v.Requests(), Errors: v.Errors(), NoAnswer: v.NoAnswer(), Groups: map[int]*GroupSnapshot{}}
	for i := range v.groups {
		if gs := v.groups[i].Load(); gs != nil {
			g := &GroupSnapshot{Requests: gs.requests.Load(), Errors: gs.errors.Load()}
			gs.latency.Snapshot(&g.Latency)
			s.Groups[i] = g
		}
	}
	return s
}

// Since returns the evidence gathered between earlier and s (earlier may be
// nil, or of other evidence, which counts as empty).
func (s *VersionSnapshot) Since(earlier *VersionSnapshot) *VersionSnapshot {
	if earlier == nil || earlier.Of != s.Of {
		return s
	}
	d := &VersionSnapshot{Of: s.Of, Requests: sub(s.Requests, earlier.Requests), Errors: sub(s.Errors, earlier.Errors),
		NoAnswer: sub(s.NoAnswer, earlier.NoAnswer), Groups: map[int]*GroupSnapshot{}}
	for i, g := range s.Groups {
		e := earlier.Groups[i]
		if e == nil {
			d.Groups[i] = g
			continue
		}
		d.Groups[i] = &GroupSnapshot{Requests: sub(g.Requests, e.Requests), Errors: sub(g.Errors, e.Errors),
			Latency: g.Latency.Sub(&e.Latency)}
	}
	return d
}

// Latency sums the latency of every group.
func (s *VersionSnapshot) Latency() *Snapshot {
	var out Snapshot
	for _, g := range s.Groups {
		out.add(&g.Latency)
	}
	return &out
}

// Add adds o's observations to s: two backends' latencies as one.
func (s *Snapshot) Add(o *Snapshot) { s.add(o) }

// add adds o's observations, saturating: pooled evidence comes from etcd,
// where any number may have been written, and a sum that wrapped would
// read as a few fast requests.
func (s *Snapshot) add(o *Snapshot) {
	for i := range s.Buckets {
		s.Buckets[i] = addSat(s.Buckets[i], o.Buckets[i])
	}
	s.Count = addSat(s.Count, o.Count)
	s.SumUS = addSat(s.SumUS, o.SumUS)
}

// Failure is one failed request, as the request path reports it for error
// signatures.
type Failure struct {
	Group   string
	Method  string
	Status  int    // the status the client got (499 when it left)
	Class   string // how it failed: server_error, reset, timeout, …
	AppCode string // the backend's application error code header, if any
	Path    string // the request path, without its query
	Body    string // a short excerpt of the response body
}

// Example is one occurrence of a signature.
type Example struct {
	Time    time.Time `json:"time"`
	Version string    `json:"version"`
	Path    string    `json:"path"`
	Status  int       `json:"status"`
	Body    string    `json:"body,omitempty"`
}

// Signature is a kind of failure: route group, method, status, failure class
// and application error code, with its count per version and a few
// examples.
type Signature struct {
	Key      string            `json:"key"`
	Counts   map[string]uint64 `json:"counts"`
	Examples []Example         `json:"examples"`
	// Clients counts, per version, the distinct client addresses it came
	// from (up to maxSigClients): a failure one client alone provokes
	// never fails a release.
	Clients map[string]int `json:"clients"`

	addrs                map[string][]uint64 // per version, up to maxSigClients
	inWindow, lastWindow uint32              // occurrences this and last window
}

// maxSignatures bounds the signatures a pool keeps; further kinds count in
// one "other" signature.
const (
	maxSignatures = 256
	maxExamples   = 3
	maxSigClients = 8
)

// Signatures collects the failure signatures of one pool. Failures are rare
// next to requests, so a mutex is fine here.
//
// It is safe for concurrent use.
type Signatures struct {
	mu     sync.Mutex // protects everything below
	sigs   map[string]*Signature
	folded uint64 // failures counted in "other" for want of room
	// Per-client bounds: in each judge window a client counts for at most
	// max(1, share × the signature's occurrences last window) of it.
	share     float64
	perClient map[sigClient]uint32
	discarded uint64
}

type sigClient struct {
	key    string
	client uint64
}

// NewSignatures returns an empty collection.
func NewSignatures() *Signatures {
	return &Signatures{sigs: map[string]*Signature{}, perClient: map[sigClient]uint32{}}
}

// NewWindow starts a judge window: one client may count for at most share
// of a signature's occurrences (at least one); 0 lifts the bound.
func (s *Signatures) NewWindow(share float64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.share = share
	clear(s.perClient)
	for _, sig := range s.sigs {
		sig.lastWindow, sig.inWindow = sig.inWindow, 0
	}
}

// Discarded returns the failures left out for being over a client's bound.
func (s *Signatures) Discarded() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discarded
}

// admitLocked counts one occurrence of sig from client and reports whether
// it is within the client's bound.
func (s *Signatures) admitLocked(sig *Signature, client uint64) bool {
	if s.share <= 0 || client == 0 {
		return true
	}
	limit := max(1, uint32(s.share*float64(sig.lastWindow)))
	k := sigClient{sig.Key, client}
	if s.perClient[k] >= limit {
		s.discarded++
		return false
	}
	s.perClient[k]++
	return true
}

// StandardMethod returns m for the standard methods (RFC 9110 and PATCH)
// and "OTHER" for the rest, so that made-up methods cannot fill the
// signature table.
func StandardMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH":
		return m
	}
	return "OTHER"
}

// Key returns a failure's signature.
func (f *Failure) Key() string {
	var b strings.Builder
	b.WriteString(StandardMethod(f.Method))
	b.WriteByte(' ')
	b.WriteString(f.Group)
	b.WriteByte(' ')
	if f.Status > 0 {
		b.WriteString(strconv.Itoa(f.Status))
	} else {
		b.WriteByte('-')
	}
	b.WriteByte(' ')
	b.WriteString(f.Class)
	if f.AppCode != "" {
		b.WriteString(" code=")
		b.WriteString(f.AppCode)
	}
	return b.String()
}

// Record counts a failure of version from client (a ClientKey's hash; 0:
// unknown). It returns false when the failure was over the client's bound
// and left out.
func (s *Signatures) Record(version string, f *Failure, now time.Time, client ClientKey) bool {
	key := f.Key()
	s.mu.Lock()
	defer s.mu.Unlock()
	sig := s.sigs[key]
	if sig == nil {
		if len(s.sigs) >= maxSignatures {
			key = "other"
			sig = s.sigs[key]
			s.folded++
		}
		if sig == nil {
			sig = &Signature{Key: key, Counts: map[string]uint64{}, addrs: map[string][]uint64{}}
			s.sigs[key] = sig
		}
	}
	id := client.ID()
	if !s.admitLocked(sig, client.Addr) || client.Cookie != 0 && !s.admitLocked(sig, client.Cookie^0x9e3779b97f4a7c15) {
		return false
	}
	sig.inWindow++
	sig.Counts[version]++
	if a := sig.addrs[version]; id != 0 && len(a) < maxSigClients && !slices.Contains(a, id) {
		sig.addrs[version] = append(a, id)
	}
	ex := Example{Time: now.UTC(), Version: version, Path: f.Path, Status: f.Status, Body: f.Body}
	if len(sig.Examples) < maxExamples {
		sig.Examples = append(sig.Examples, ex)
	} else {
		copy(sig.Examples, sig.Examples[1:])
		sig.Examples[maxExamples-1] = ex
	}
	return true
}

// Folded returns how many failures were counted in "other" because the
// signature table was full.
func (s *Signatures) Folded() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.folded
}

// Snapshot returns a copy of every signature.
func (s *Signatures) Snapshot() map[string]Signature {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]Signature, len(s.sigs))
	for k, sig := range s.sigs {
		c := Signature{Key: sig.Key, Counts: make(map[string]uint64, len(sig.Counts)), Examples: append([]Example(nil), sig.Examples...),
			Clients: make(map[string]int, len(sig.addrs))}
		for v, n := range sig.Counts {
			c.Counts[v] = n
		}
		for v, a := range sig.addrs {
			c.Clients[v] = len(a)
		}
		out[k] = c
	}
	return out
}
