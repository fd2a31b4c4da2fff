package pool

import (
	"bufio"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/baton-lb/baton/internal/sockio"
)

// Upstream buffer sizes. The read buffer also bounds a response's header
// block: a backend sending more gets a 502, like nginx's "upstream sent too
// big header".
const (
	ReadBufferSize = 16 << 10
	headBufferSize = 4 << 10
	// staleCheckAfter: a pooled connection idle for longer than this is
	// checked for a close from the backend (a non-blocking peek) before it is
	// reused. Busy connections skip the syscall; see Conn.stale.
	staleCheckAfter = 50 * time.Millisecond
)

// ErrPoolFull is returned by Get when the backend's connection cap is reached
// and none frees up before the deadline.
var ErrPoolFull = errors.New("no free connection to the backend")

// LocalExhaustion reports whether err is baton running out of file
// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM): a failure of
// baton's own, never held against a backend.
func LocalExhaustion(err error) bool {
	if err == nil {
		return false
	}
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}

// ErrClosing is returned by Get once the pool is being closed (the backend was
// removed or its address changed).
var ErrClosing = errors.New("backend connections are closing")

// Conn is one keep-alive connection to a backend. One request owns it at a
// time, between Conns.Get and Conn.Release or Conn.Close.
type Conn struct {
	nc        net.Conn
	rw        io.ReadWriter // nc's socket read and written with sockio, or nc
	io        *sockio.IO    // nil for a connection that is no plain socket
	raw       syscall.RawConn
	br        *bufio.Reader
	head      []byte
	bufs      [2][]byte
	nb        net.Buffers
	owner     *Conns
	dedicated bool  // a tunnel's: counted in owner.dedicated while open
	idleSince int64 // nanotime when last put back
	uses      int
	large     bool // the last response's body was large (see ExpectLarge)
	// suspect: the last response had no body by rule (HEAD, 204, 304) but
	// announced one; a broken backend may still send it, so the connection
	// is checked before its next use however briefly it was idle.
	suspect bool
}

// MarkSuspect makes the next Get check the connection for unsolicited bytes
// whatever its idle time.
func (c *Conn) MarkSuspect() { c.suspect = true }

// Reader returns the connection's buffered reader.
func (c *Conn) Reader() *bufio.Reader { return c.br }

// Head returns the connection's scratch buffer for building a request head,
// emptied. Pass the grown buffer to WriteHead.
func (c *Conn) Head() []byte { return c.head[:0] }

// Reused reports whether the connection served a request before this one.
func (c *Conn) Reused() bool { return c.uses > 1 }

// NetConn returns the underlying connection, for deadlines.
func (c *Conn) NetConn() net.Conn { return c.nc }

// WriteHead writes head followed by body (which may be nil) with one
// syscall. It returns how many bytes the kernel accepted: 0 with an error
// means the backend received nothing of this request.
func (c *Conn) WriteHead(head, body []byte) (int64, error) {
	if cap(head) > cap(c.head) && cap(head) <= 64<<10 {
		c.head = head[:0]
	}
	if len(body) == 0 {
		n, err := c.rw.Write(head)
		return int64(n), err
	}
	if c.io != nil {
		n, err := c.io.Write2(head, body)
		return int64(n), err
	}
	c.bufs[0], c.bufs[1] = head, body
	c.nb = c.bufs[:]
	n, err := c.nb.WriteTo(c.nc)
	c.bufs[0], c.bufs[1] = nil, nil
	return n, err
}

// Write writes p to the backend.
func (c *Conn) Write(p []byte) (int, error) { return c.rw.Write(p) }

// ExpectLarge records whether the response just read had a large body; a
// connection whose last answer was large reads the next response head in
// small reads (LargeExpected), so that its body is left in the socket for
// the caller to move in the kernel.
func (c *Conn) ExpectLarge(large bool) { c.large = large }

// LargeExpected reports what ExpectLarge recorded.
func (c *Conn) LargeExpected() bool { return c.large }

// CapReads caps each read from the socket at n bytes (0: no cap), for a
// response head; see sockio.IO.CapReads.
func (c *Conn) CapReads(n int) {
	if c.io != nil {
		c.io.CapReads(n)
	}
}

// RawConn returns the connection's descriptor access, for moving a body
// between sockets in the kernel; nil when the connection has none.
func (c *Conn) RawConn() syscall.RawConn { return c.raw }

// stale reports whether the backend closed the connection (or sent bytes
// nobody asked for) while it sat in the pool. This is the keep-alive race:
// a request written to such a connection never reaches the backend's
// application, but baton could not prove that afterwards, so it checks first.
func (c *Conn) stale() bool {
	if c.br.Buffered() > 0 {
		return true
	}
	if c.raw == nil {
		return false
	}
	// A deadline left from the last exchange would make the raw read fail
	// before peeking, and a healthy connection would look stale.
	_ = c.nc.SetReadDeadline(time.Time{})
	var buf [1]byte
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true
	})
	if err != nil {
		return true
	}
	// EAGAIN: nothing to read, the connection is fine. Anything else —
	// unsolicited bytes, EOF (0 bytes, no error) or a reset — makes it stale.
	return rerr != syscall.EAGAIN
}

// Conns is the set of connections to one backend address: idle ones kept in
// LIFO order (the most recently used is reused first, so surplus connections
// age out), and a cap on how many may be open. A connection taken with Get
// goes back with its Release or Close.
//
// It is safe for concurrent use. Conns values must not be copied.
type Conns struct {
	addr        string
	dialTimeout time.Duration
	idleTimeout time.Duration
	max         int

	// reuse is false while the backend is draining: released connections
	// are closed instead of pooled.
	reuse atomic.Bool

	mu      sync.Mutex // protects idle, open, dialing, dedicated, closing, waiting and freed
	idle    []*Conn
	open    map[*Conn]struct{}
	dialing int
	// dedicated counts the open (and dialling) connections of tunnels: they
	// may take at most tunnelShare of max, so a few idle WebSockets cannot
	// starve ordinary requests.
	dedicated int
	closing   bool
	waiting   int           // requests waiting for a free slot
	freed     chan struct{} // closed and replaced when a slot frees up and someone waits
}

// NewConns returns an empty connection set for addr.
func NewConns(addr string, dialTimeout, idleTimeout time.Duration, max int) *Conns {
	c := &Conns{
		addr:        addr,
		dialTimeout: dialTimeout,
		idleTimeout: idleTimeout,
		max:         max,
		open:        make(map[*Conn]struct{}),
		freed:       make(chan struct{}),
	}
	c.reuse.Store(true)
	return c
}

// Addr returns the backend address.
func (c *Conns) Addr() string { return c.addr }

// Get returns an idle connection, or dials a new one. now is nanotime();
// deadline bounds the wait for a free slot and the dial. The caller sets its
// own deadlines on the connection before using it.
func (c *Conns) Get(now int64, deadline time.Time) (conn *Conn, err error) {
	return c.get(now, deadline, false)
}

// Dedicated dials a connection of its own for one long exchange (an
// Upgrade tunnel): it takes a place under the backend's cap like any
// connection, and the drain timeout closes it like any busy one, but it
// never goes back to the pool: end it with Close.
func (c *Conns) Dedicated(deadline time.Time) (*Conn, error) {
	c.mu.Lock()
	if c.max > 0 && c.dedicated >= c.maxDedicated() {
		c.mu.Unlock()
		return nil, ErrPoolFull
	}
	c.dedicated++
	c.mu.Unlock()
	conn, err := c.get(0, deadline, true)
	if err != nil {
		c.mu.Lock()
		c.dedicated--
		c.mu.Unlock()
		return nil, err
	}
	return conn, nil
}

// maxDedicated is how many of max connections tunnels may hold: all but a
// quarter (at least one), which stays for ordinary requests.
func (c *Conns) maxDedicated() int { return c.max - max(1, c.max/4) }

func (c *Conns) get(now int64, deadline time.Time, fresh bool) (conn *Conn, err error) {
	c.mu.Lock()
	for {
		if c.closing {
			c.mu.Unlock()
			return nil, ErrClosing
		}
		for n := len(c.idle); n > 0 && !fresh; n = len(c.idle) {
			conn = c.idle[n-1]
			c.idle[n-1] = nil
			c.idle = c.idle[:n-1]
			idle := time.Duration(now - conn.idleSince)
			if idle >= c.idleTimeout {
				c.closeLocked(conn)
				continue
			}
			if idle >= staleCheckAfter || conn.suspect {
				conn.suspect = false
				c.mu.Unlock()
				if !conn.stale() {
					conn.uses++
					return conn, nil
				}
				c.mu.Lock()
				c.closeLocked(conn)
				continue
			}
			c.mu.Unlock()
			conn.uses++
			return conn, nil
		}
		if c.max <= 0 || len(c.open)+c.dialing < c.max {
			break
		}
		wait := c.freed
		c.waiting++
		c.mu.Unlock()
		timer := time.NewTimer(time.Until(deadline))
		select {
		case <-wait:
			timer.Stop()
		case <-timer.C:
			c.mu.Lock()
			c.waiting--
			c.mu.Unlock()
			return nil, ErrPoolFull
		}
		c.mu.Lock()
		c.waiting--
	}
	c.dialing++
	c.mu.Unlock()

	conn, err = c.dial(deadline)

	c.mu.Lock()
	c.dialing--
	if err != nil {
		c.signalLocked()
		c.mu.Unlock()
		return nil, err
	}
	if c.closing {
		c.mu.Unlock()
		conn.nc.Close()
		return nil, ErrClosing
	}
	conn.dedicated = fresh // only tunnels dial fresh
	c.open[conn] = struct{}{}
	c.mu.Unlock()
	conn.uses = 1
	return conn, nil
}

func (c *Conns) dial(deadline time.Time) (*Conn, error) {
	d := net.Dialer{Timeout: c.dialTimeout, Deadline: deadline, KeepAlive: 30 * time.Second}
	nc, err := d.Dial("tcp", c.addr)
	if err != nil {
		return nil, err
	}
	conn := &Conn{
		nc:    nc,
		rw:    nc,
		head:  make([]byte, 0, headBufferSize),
		owner: c,
	}
	if conn.io = sockio.New(nc); conn.io != nil {
		conn.rw, conn.raw = conn.io, conn.io.RawConn()
	} else if sc, ok := nc.(syscall.Conn); ok {
		conn.raw, _ = sc.SyscallConn() // for stale (sockio is Linux only)
	}
	conn.br = bufio.NewReaderSize(conn.rw, ReadBufferSize)
	return conn, nil
}

// Release returns a connection whose exchange completed cleanly to the set
// it came from, or closes it when the backend is draining or the set is
// retired. now is Nanotime().
func (c *Conn) Release(now int64) { c.owner.put(c, now) }

// Close closes a connection that cannot be reused.
func (c *Conn) Close() { c.owner.discard(c) }

func (c *Conns) put(conn *Conn, now int64) {
	if !c.reuse.Load() {
		c.discard(conn)
		return
	}
	conn.idleSince = now
	c.mu.Lock()
	if c.closing {
		c.closeLocked(conn)
	} else {
		c.idle = append(c.idle, conn)
		c.signalLocked()
	}
	c.mu.Unlock()
}

func (c *Conns) discard(conn *Conn) {
	c.mu.Lock()
	c.closeLocked(conn)
	c.mu.Unlock()
}

func (c *Conns) closeLocked(conn *Conn) {
	if _, ok := c.open[conn]; ok {
		delete(c.open, conn)
		if conn.dedicated {
			c.dedicated--
		}
		conn.nc.Close()
		c.signalLocked()
	}
}

// signalLocked wakes requests waiting for a free slot.
func (c *Conns) signalLocked() {
	if c.waiting > 0 {
		close(c.freed)
		c.freed = make(chan struct{})
	}
}

// SetReuse turns pooling of released connections on or off. Turning it off
// also closes the idle ones.
func (c *Conns) SetReuse(on bool) {
	c.reuse.Store(on)
	if !on {
		c.CloseIdle()
	}
}

// CloseIdle closes every idle connection.
func (c *Conns) CloseIdle() {
	c.mu.Lock()
	for i, conn := range c.idle {
		c.closeLocked(conn)
		c.idle[i] = nil
	}
	c.idle = c.idle[:0]
	c.mu.Unlock()
}

// CloseExpired closes idle connections unused for the idle timeout.
func (c *Conns) CloseExpired(now int64) {
	c.mu.Lock()
	kept := c.idle[:0]
	for _, conn := range c.idle {
		if time.Duration(now-conn.idleSince) >= c.idleTimeout {
			c.closeLocked(conn)
		} else {
			kept = append(kept, conn)
		}
	}
	for i := len(kept); i < len(c.idle); i++ {
		c.idle[i] = nil
	}
	c.idle = kept
	c.mu.Unlock()
}

// CloseAll closes every connection, busy ones included: requests still using
// them fail. Used when a drain times out and when the pool is retired.
func (c *Conns) CloseAll() {
	c.mu.Lock()
	for conn := range c.open {
		c.closeLocked(conn)
	}
	c.idle = c.idle[:0]
	c.mu.Unlock()
}

// Retire stops handing out connections and closes the idle ones; busy ones
// close when released.
func (c *Conns) Retire() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.CloseIdle()
}

// Open returns how many connections are open or being dialled.
func (c *Conns) Open() int {
	c.mu.Lock()
	n := len(c.open) + c.dialing
	c.mu.Unlock()
	return n
}

// IdleCount returns how many connections sit idle in the pool.
func (c *Conns) IdleCount() int {
	c.mu.Lock()
	n := len(c.idle)
	c.mu.Unlock()
	return n
}
