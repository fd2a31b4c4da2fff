package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"time"

	"github.com/baton-lb/baton/internal/sockio"
)

// fasthttp ends a request head only at CRLF CRLF. A head whose empty line
// ends in a bare LF ("GET / HTTP/1.1\nHost: a\n\n") never ends for it: it
// waits for more bytes until the header timeout, and the client waits for
// an answer that does not come. baton's client connections watch the bytes
// of each request head (up to its empty line, nothing of the body) and, when
// the head ended with a bare LF, answer fasthttp's next read with errBareLF,
// so the client gets a 400 at once. They also note a request line ending in
// a bare LF, which fasthttp accepts: the request is forwarded normalised and
// the connection closed after it. Bytes after a head are watched too: a
// bare-LF head pipelined behind a clean one closes the connection after the
// clean one's answer (or, arriving later, gets the 400).
//
// The watch also gives each read of a body body_idle_timeout: fasthttp reads
// the first 8 KiB of a body (all of a small one) under one deadline, so a
// slow client's small form would otherwise have to arrive whole within it.

// errBareLF: a request head whose lines end in LF alone.
var errBareLF = errors.New("the request head ends with a bare LF; HTTP lines end with CRLF")

// headWatch follows one connection's request heads. Read calls scan; Write
// calls written. It is used by one request at a time (fasthttp serves a
// connection's requests in turn); a tunnel turns it off before its two
// directions run at once.
type headWatch struct {
	off     atomic.Bool // the connection was hijacked: bytes are no longer HTTP
	inHead  bool        // reading a request head
	lines   int         // line ends seen in this head
	last    byte        // the last byte seen
	afterLF uint8       // 1: just after a line end; 2: just after a line end and CR
	lfBare  bool        // the last line end was a bare LF
	lineLF  bool        // the request line ended with a bare LF
	bareEnd bool        // the head ended with a bare LF: fasthttp will wait for ever
	// tailLF: after the head, two LFs in a row came (a pipelined bare-LF
	// head, or a body that has them): the connection closes after this
	// request, and a read for the next head gets errBareLF.
	tailLF   bool
	tailLast byte
	bodyIdle time.Duration // renewed read deadline per body read; 0: none
}

func (h *headWatch) reset() {
	h.bareEnd = h.bareEnd || h.tailLF
	h.inHead, h.lines, h.last, h.afterLF, h.lfBare, h.lineLF = true, 0, 0, 0, false, false
	h.tailLF, h.tailLast = false, 0
}

// scanTail looks at bytes read after a head.
func (h *headWatch) scanTail(s []byte) {
	if h.tailLF || len(s) == 0 {
		return
	}
	if h.tailLast == '\n' && s[0] == '\n' || bytes.Contains(s, lfLF) {
		h.tailLF = true
	}
	h.tailLast = s[len(s)-1]
}

var lfLF = []byte("\n\n")

// closeAfter reports whether the connection must close after this request.
func (h *headWatch) closeAfter() bool { return h.lineLF || h.tailLF }

// scan looks at the next bytes read from the client.
func (h *headWatch) scan(s []byte) {
	if !h.inHead {
		h.scanTail(s)
		return
	}
	for h.inHead && len(s) > 0 {
		switch h.afterLF {
		case 1:
			switch s[0] {
			case '\n': // an empty line ended by a bare LF
				h.inHead, h.bareEnd = false, true
				return
			case '\r':
				h.afterLF, h.last = 2, '\r'
				s = s[1:]
				continue
			}
			h.afterLF = 0
		case 2:
			if s[0] == '\n' { // the empty line, CRLF: a proper end only after a CRLF line
				h.inHead, h.bareEnd = false, h.lfBare
				h.scanTail(s[1:])
				return
			}
			h.afterLF = 0
		}
		i := bytes.IndexByte(s, '\n')
		if i < 0 {
			h.last = s[len(s)-1]
			return
		}
		prev := h.last
		if i > 0 {
			prev = s[i-1]
		}
		h.lfBare = prev != '\r'
		if h.lines == 0 && h.lfBare {
			h.lineLF = true
		}
		h.lines++
		h.afterLF, h.last = 1, '\n'
		s = s[i+1:]
	}
}

// written sees the start of a write to the client: a final response
// (status 2xx and up) means the next bytes read begin a new request head.
// 100 Continue and 101 Switching Protocols do not.
func (h *headWatch) written(p []byte) {
	if len(p) >= 10 && p[9] >= '2' && bytes.HasPrefix(p, httpVersionPrefix) {
		h.reset()
	}
}

var httpVersionPrefix = []byte("HTTP/1.")

// read is Read of a watched connection c.
// (r reads c's bytes; it may bypass c's own Read).
func (h *headWatch) read(c net.Conn, r io.Reader, p []byte) (int, error) {
	if h.off.Load() {
		return r.Read(p)
	}
	if h.bareEnd {
		return 0, errBareLF
	}
	body := !h.inHead
	n, err := r.Read(p)
	if body && n > 0 && h.bodyIdle > 0 {
		_ = c.SetReadDeadline(time.Now().Add(h.bodyIdle))
	}
	h.scan(p[:n])
	return n, err
}

// write is Write of a watched connection c.
func (h *headWatch) write(w io.Writer, p []byte) (int, error) {
	if !h.off.Load() {
		h.written(p)
	}
	return w.Write(p)
}

// clientConn is a plain client connection with its head watch.
type clientConn struct {
	net.Conn
	h  headWatch
	rw io.ReadWriter // the socket's raw reads and writes (sockio), or Conn
	io *sockio.IO    // nil when Conn is no plain socket
}

func (c *clientConn) Read(p []byte) (int, error)  { return c.h.read(c.Conn, c.rw, p) }
func (c *clientConn) Write(p []byte) (int, error) { return c.h.write(c.rw, p) }
func (c *clientConn) watch() *headWatch           { return &c.h }

// tlsClientConn is clientConn for HTTPS. It embeds the *tls.Conn so that
// fasthttp still sees a TLS connection (ctx.IsTLS, the handshake state).
type tlsClientConn struct {
	*tls.Conn
	h headWatch
}

func (c *tlsClientConn) Read(p []byte) (int, error)  { return c.h.read(c.Conn, c.Conn, p) }
func (c *tlsClientConn) Write(p []byte) (int, error) { return c.h.write(c.Conn, p) }
func (c *tlsClientConn) watch() *headWatch           { return &c.h }

type watched interface{ watch() *headWatch }

// watchOf returns the head watch of a client connection (nil for one that
// has none, as in tests that serve fasthttp's in-memory connections).
func watchOf(c net.Conn) *headWatch {
	if w, ok := c.(watched); ok {
		return w.watch()
	}
	return nil
}

// watchingListener gives every connection it accepts a head watch.
type watchingListener struct {
	net.Listener
	tls      *tls.Config // nil: plain HTTP
	bodyIdle time.Duration
}

func (l watchingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.tls != nil {
		tc := &tlsClientConn{Conn: tls.Server(c, l.tls)}
		tc.h.reset()
		tc.h.bodyIdle = l.bodyIdle
		return tc, nil
	}
	cc := &clientConn{Conn: c, rw: c}
	nc := c
	if u, ok := nc.(interface{ NetConn() net.Conn }); ok {
		nc = u.NetConn() // the listener's counting wrapper
	}
	if cc.io = sockio.New(nc); cc.io != nil {
		cc.rw = cc.io
	}
	cc.h.reset()
	cc.h.bodyIdle = l.bodyIdle
	return cc, nil
}
