package canary

import (
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Per-client bounds on evidence. One client — by address, and by the
// client id its affinity cookie carries — may count for at most a share of
// a version's requests in each window of ClientWindow, and for a share of a
// failure signature's occurrences: a single client pumping cheap successes through
// the canary, or provoking failures on it, moves the verdict no further than
// that share. Requests over the bound are served as usual; they are only
// left out of the evidence, and counted as discarded.

// clientSlots is the size of the per-window count tables. Clients that
// share a slot share a count, which only makes the bound stricter for them.
const clientSlots = 4096

// ClientWindow is how long a window of the per-client bounds lasts, and
// MinClientRequests the least a client may count for in one: a browser
// loading a page with its assets (some 30 requests) is never cut short,
// and a canary with little traffic is not left without evidence.
const (
	ClientWindow      = 10 * time.Second
	MinClientRequests = 50
)

// ClientKey identifies one client for the bounds: a hash of its address
// (zero: not known, as behind a trusted proxy), and of its affinity cookie's
// client id (zero: none).
type ClientKey struct{ Addr, Cookie uint64 }

var clientSeed = maphash.MakeSeed()

// ClientHash hashes an address or client id for a ClientKey; never zero.
func ClientHash(b []byte) uint64 { return maphash.Bytes(clientSeed, b) | 1 }

type clientWindow struct {
	addr, cookie [clientSlots]atomic.Uint32
}

// bound is one version's per-client counts in the current window.
type bound struct {
	limit     atomic.Uint32 // per client per window; 0: no bound
	window    atomic.Pointer[clientWindow]
	discarded atomic.Uint64
}

// Admit counts a request of client k and reports whether it is evidence.
func (v *VersionStats) Admit(k ClientKey) bool {
	lim := v.bound.limit.Load()
	if lim == 0 {
		return true
	}
	w := v.bound.window.Load()
	ok := true
	if k.Addr != 0 && w.addr[k.Addr%clientSlots].Add(1) > lim {
		ok = false
	}
	if k.Cookie != 0 && w.cookie[k.Cookie%clientSlots].Add(1) > lim {
		ok = false
	}
	if !ok {
		v.bound.discarded.Add(1)
	}
	return ok
}

// NewWindow starts a judge window in which one client counts for at most
// limit requests (0: no bound).
func (v *VersionStats) NewWindow(limit uint32) {
	if limit > 0 {
		v.bound.window.Store(&clientWindow{})
	}
	v.bound.limit.Store(limit)
}

// Discarded returns the requests left out of the evidence for being over a
// client's bound.
func (v *VersionStats) Discarded() uint64 { return v.bound.discarded.Load() }

// MaxErrorClients caps the distinct clients a version's errors are
// remembered from: enough to tell one or two from many.
const MaxErrorClients = 8

// errorClients remembers from which clients a version's errors came.
type errorClients struct {
	mu  sync.Mutex
	ids [MaxErrorClients]uint64
	n   int
}

// NoteErrorClient records that an error of this version came from the
// client with this id (a ClientKey's address hash, else its cookie's; 0:
// unknown, not recorded). Errors are rare next to requests: a mutex is fine.
func (v *VersionStats) NoteErrorClient(id uint64) {
	if id == 0 {
		return
	}
	e := &v.errClients
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == MaxErrorClients || slices.Contains(e.ids[:e.n], id) {
		return
	}
	e.ids[e.n] = id
	e.n++
}

// ErrorClients returns how many distinct clients the version's errors came
// from since ResetClients (at most MaxErrorClients).
func (v *VersionStats) ErrorClients() int {
	v.errClients.mu.Lock()
	defer v.errClients.mu.Unlock()
	return v.errClients.n
}

// ResetClients forgets the clients errors came from (a new canary).
func (v *VersionStats) ResetClients() {
	v.errClients.mu.Lock()
	defer v.errClients.mu.Unlock()
	v.errClients.n = 0
}

// ID returns the key's client id for distinct counts: its address, else its
// cookie (0: unknown).
func (k ClientKey) ID() uint64 {
	if k.Addr != 0 {
		return k.Addr
	}
	return k.Cookie
}
