// Package listener guards baton's listening sockets. No accept error ends a
// server: running out of file descriptors (EMFILE, ENFILE), a connection
// aborted before it was accepted (ECONNABORTED) and other temporary errors
// are retried with a short backoff, as net/http does, and logged once per
// burst. It also counts the connections it hands out until they close —
// hijacked ones (tunnels) included — and caps them, with a clear answer to
// a connection over the cap.
package listener

import (
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

const (
	// minBackoff and maxBackoff bound the wait between accepts that failed
	// for a temporary reason. net/http waits 5 ms doubling to 1 s; baton
	// stops at 100 ms, so new connections are served within a tenth of a
	// second once descriptors free up, and an exhausted process still makes
	// only ten failing syscalls a second.
	minBackoff = 5 * time.Millisecond
	maxBackoff = 100 * time.Millisecond
	// refuseLogEvery: a connection refused over the cap is logged at most
	// this often (each is counted).
	refuseLogEvery = time.Minute
)

// Gate caps the connections open at once across the listeners that share
// it (baton's HTTP and HTTPS listeners share one).
//
// It is safe for concurrent use. Gate values must not be copied.
type Gate struct {
	max  int64 // 0: no cap
	open atomic.Int64
}

// NewGate returns a gate for at most max open connections; 0 means no cap.
func NewGate(max int) *Gate { return &Gate{max: int64(max)} }

// Open returns the number of connections open through the gate.
func (g *Gate) Open() int64 { return g.open.Load() }

// Max returns the cap (0: none).
func (g *Gate) Max() int64 { return g.max }

func (g *Gate) enter() bool {
	if g.max <= 0 {
		g.open.Add(1)
		return true
	}
	for {
		n := g.open.Load()
		if n >= g.max {
			return false
		}
		if g.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// Stats are a listener's counters, for /metrics.
type Stats struct {
	Name         string
	AcceptErrors uint64 // accepts that failed and were retried
	Refused      uint64 // connections closed at once because the cap was reached
	Open         int64  // connections accepted by this listener and still open
}

// Listener is a net.Listener whose Accept retries temporary errors and
// enforces its gate. Connections it returns release their place in the gate
// when closed, however often Close is called.
//
// It is safe for concurrent use. Listener values must not be copied.
type Listener struct {
	net.Listener
	name   string
	gate   *Gate
	refuse []byte // written to a connection over the cap; nil: closed silently
	log    zerolog.Logger

	closed    chan struct{}
	closeOnce sync.Once

	open         atomic.Int64
	acceptErrors atomic.Uint64
	refused      atomic.Uint64
	lastRefusal  atomic.Int64 // unix nanoseconds of the last refusal logged
	burst        burst
}

// Wrap guards ln. name appears in logs and metrics ("http", "https",
// "admin"); gate may be shared with other listeners (nil: no cap); refuse,
// when not nil, is written to a connection refused over the cap before it
// is closed (a short HTTP 503 on a plain-HTTP listener; nothing on a TLS
// one, where plain bytes would only confuse the client).
func Wrap(ln net.Listener, name string, gate *Gate, refuse []byte, log zerolog.Logger) *Listener {
	if gate == nil {
		gate = NewGate(0)
	}
	return &Listener{Listener: ln, name: name, gate: gate, refuse: refuse, log: log, closed: make(chan struct{})}
}

// Refusal returns a complete HTTP/1.1 503 response with msg as its body,
// for Wrap's refuse.
func Refusal(msg string) []byte {
	body := msg + "\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" +
		"Retry-After: 1\r\nContent-Length: " + itoa(len(body)) + "\r\n\r\n" + body)
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// Accept waits for the next connection. It returns an error only when the
// listener is closed or fails for good (an error that is not temporary).
func (l *Listener) Accept() (net.Conn, error) {
	var backoff time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case <-l.closed:
				return nil, err
			default:
			}
			if errors.Is(err, net.ErrClosed) || !Temporary(err) {
				return nil, err
			}
			l.acceptErrors.Add(1)
			l.burst.failed(err, l)
			if backoff == 0 {
				backoff = minBackoff
			} else {
				backoff = min(2*backoff, maxBackoff)
			}
			t := time.NewTimer(backoff)
			select {
			case <-l.closed:
				t.Stop()
				return nil, err
			case <-t.C:
			}
			continue
		}
		backoff = 0
		l.burst.accepted(l)
		if !l.gate.enter() {
			l.refuseConn(c)
			continue
		}
		l.open.Add(1)
		return &conn{Conn: c, l: l}, nil
	}
}

// burstQuiet: accept errors closer together than this are one burst, logged
// once when it starts and once when accepting works again after it. While
// descriptors trickle free under a flood, accepts alternate between
// success and failure; that is still the same burst.
const burstQuiet = time.Second

// burst tracks a run of failed accepts, for logging. Accept calls it from
// one goroutine at a time; the mutex keeps concurrent Accepts correct too.
type burst struct {
	mu          sync.Mutex // protects the fields below
	start, last time.Time
	n           uint64
}

func (b *burst) failed(err error, l *Listener) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	if b.n == 0 || now.Sub(b.last) >= burstQuiet {
		b.start, b.n = now, 0
		l.log.Error().Err(err).Str("listener", l.name).
			Msg("accepting connections failed; retrying, new connections wait in the kernel's queue meanwhile (counted in baton_listener_accept_errors_total)")
	}
	b.n++
	b.last = now
}

func (b *burst) accepted(l *Listener) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.n == 0 || time.Since(b.last) < burstQuiet {
		return
	}
	l.log.Warn().Str("listener", l.name).Uint64("failed_accepts", b.n).Dur("for", b.last.Sub(b.start)).
		Msg("accepting connections again")
	b.n = 0
}

func (l *Listener) refuseConn(c net.Conn) {
	l.refused.Add(1)
	if l.refuse != nil {
		// The socket's send buffer is empty: this write does not wait.
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.Write(l.refuse)
	}
	_ = c.Close()
	now := time.Now().UnixNano()
	if last := l.lastRefusal.Load(); now-last >= int64(refuseLogEvery) && l.lastRefusal.CompareAndSwap(last, now) {
		l.log.Warn().Str("listener", l.name).Int64("max_connections", l.gate.max).Uint64("refused_so_far", l.refused.Load()).
			Msg("connection refused: the connection cap is reached (logged once a minute; counted in baton_listener_refused_connections_total)")
	}
}

// Close stops accepting; an Accept waiting out a backoff returns at once.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Stats returns the listener's counters.
func (l *Listener) Stats() Stats {
	return Stats{Name: l.name, AcceptErrors: l.acceptErrors.Load(), Refused: l.refused.Load(), Open: l.open.Load()}
}

// Temporary reports whether an accept error is worth retrying: the process
// or the system is out of descriptors or memory for a moment, or a client
// gave up before its connection was accepted.
func Temporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED,
			syscall.ECONNRESET, syscall.EPROTO, syscall.EPERM, syscall.EINTR, syscall.EAGAIN, syscall.ETIMEDOUT:
			return true
		}
		return false
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// conn is a connection handed out by a Listener; closing it gives its
// place in the gate back, once.
type conn struct {
	net.Conn
	l      *Listener
	closed atomic.Bool
}

// NetConn returns the accepted connection, for what needs its descriptor.
func (c *conn) NetConn() net.Conn { return c.Conn }

func (c *conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.open.Add(-1)
		c.l.gate.open.Add(-1)
	}
	return c.Conn.Close()
}
