package proxy

import (
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"github.com/baton-lb/baton/pool"
)

// Response bodies through a pipe.
//
// A response of known length up to maxBufferedResponseBody is read whole
// before the client gets a byte, so that a failure mid-body is a clean
// retry or 502 and the backend connection goes back at once. For a large
// one (spliceMinBody and up) going to a plain-TCP client, what the backend
// reader holds already is written into a pipe, and what it has not read
// yet is not read into memory: splice(2) moves it
// from the backend socket into a pipe, and, once the head went out, from
// the pipe to the client socket. The pipe plays the part of the buffer, the
// bytes are never copied through user space, and it takes two syscalls
// instead of a read and a write per 16 KiB. HTTPS clients (the body is
// encrypted in user space) and answers of 500 and up (whose start is kept
// for error signatures) take the buffered path.
//
// A pipe takes what it has room for; when it has no more room while the
// backend still has bytes for it, what it holds is read back into memory
// and the rest of the body is read as usual. splice's "try again" does not
// say which of the two ends was not ready, so the socket is asked.

// spliceMinBody: bodies smaller than this, and what is left of them beyond
// what the backend reader already holds, are copied; two copies of a few
// kilobytes cost less than the pipe's syscalls.
const spliceMinBody = 16 << 10

// pipeSize is the size asked for each new pipe (tests make it small).
var pipeSize atomic.Int32

func init() { pipeSize.Store(256 << 10) }

// A pipe is a kernel buffer between two sockets; n is how many bytes it
// holds.
type pipe struct {
	r, w    int
	n       int
	size    int32 // pipeSize when it was made
	cleanup runtime.Cleanup
}

// pipes keeps empty pipes for reuse without a lock; the ones a collection
// drops close their descriptors.
var pipes sync.Pool

func getPipe() *pipe {
	if p, _ := pipes.Get().(*pipe); p != nil {
		return p
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil // out of descriptors: the body is copied instead
	}
	// Room for a whole body up to maxBufferedResponseBody even when the
	// backend's bytes come in small pieces (each takes a slot of the
	// pipe); the default is 16 slots. Refused (a user over its pipe
	// quota), the pipe keeps its size, and a body it cannot hold is read
	// into memory.
	size := pipeSize.Load()
	_, _ = unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, int(size))
	p := &pipe{r: fds[0], w: fds[1], size: size}
	p.cleanup = runtime.AddCleanup(p, closePipe, fds)
	return p
}

func closePipe(fds [2]int) {
	_ = unix.Close(fds[0])
	_ = unix.Close(fds[1])
}

// putPipe keeps an empty pipe and closes one that still holds bytes: they
// belong to a body that was not sent and must not start the next one. A
// pipe made before pipeSize changed (tests) is closed too: one in use
// while SetPipeSize emptied the pool would otherwise come back into it.
func putPipe(p *pipe) {
	if p.n == 0 && p.size == pipeSize.Load() {
		pipes.Put(p)
		return
	}
	p.cleanup.Stop()
	closePipe([2]int{p.r, p.w})
	// Stop works only while p is reachable: a cleanup queued meanwhile
	// would close the two numbers again, by then maybe another socket's.
	runtime.KeepAlive(p)
}

// splicer moves bytes between a socket and its pipe. fill and drain are
// bound once, so RawConn.Read and Write take them without allocating.
type splicer struct {
	p     *pipe
	want  int   // bytes to move into the pipe
	moved int   // bytes the last call moved
	err   error // the last call's error
	// full: the pipe took nothing more while the socket had bytes.
	full bool
	// after: once the body was in, the socket still had bytes, its
	// close or an error (see fillFrom).
	after       bool
	fill, drain func(fd uintptr) bool
	dst         syscall.RawConn // the client socket
}

func newSplicer() *splicer {
	s := &splicer{}
	s.fill, s.drain = s.fillFrom, s.drainTo
	return s
}

const spliceFlags = unix.SPLICE_F_MOVE | unix.SPLICE_F_NONBLOCK

func rawSplice(in, out, n int) (int, error) {
	r, _, e := unix.RawSyscall6(unix.SYS_SPLICE, uintptr(in), 0, uintptr(out), 0, uintptr(n), spliceFlags)
	if e != 0 {
		return 0, e // r is -1: not a count of bytes moved
	}
	return int(r), nil
}

// fillFrom moves up to want bytes from the socket fd into the pipe. It
// returns false, to wait for the socket, only when the socket is empty.
func (s *splicer) fillFrom(fd uintptr) bool {
	retried := false
	for {
		n, err := rawSplice(int(fd), s.p.w, s.want)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if s.p.n == 0 {
				return false // an empty pipe has room: the socket is empty
			}
			// The socket may be empty, or the pipe full: a full pipe
			// says "try again" without looking at the socket, even one
			// the backend closed or reset, whose readiness this wait
			// has already consumed. So the socket is asked with a
			// peek, which also reports its end: bytes (the pipe is
			// full, unless they arrived since the splice: tried once
			// more), the close or a reset (the body is cut), or
			// nothing (wait for it).
			switch k, perr := peekByte(fd); {
			case perr == unix.EINTR:
				continue
			case perr == unix.EAGAIN:
				return false
			case perr != nil:
				s.moved, s.err = 0, perr
				return true
			case k == 0:
				s.moved, s.err = 0, nil // the backend closed mid-body
				return true
			}
			if !retried {
				retried = true
				continue
			}
			s.moved, s.err, s.full = 0, nil, true
			return true
		}
		if n > 0 {
			s.p.n += int(n)
		}
		s.moved, s.err = int(n), err
		if err == nil && n > 0 && n == s.want {
			// The body is in. What the backend sent after it (a second
			// response: a broken backend, or one splitting responses)
			// stays in the socket, where the connection's reader, which
			// would have taken it along with the body and kept the
			// connection from reuse, never looks: the next request on
			// the connection, another client's, would read it as its
			// answer. So the socket is asked now; anything but "nothing
			// yet" ends the connection after this exchange.
			_, perr := peekByte(fd)
			s.after = perr != unix.EAGAIN
		}
		return true
	}
}

// peekByte looks at the next byte of the socket fd without taking it: 1
// when there is one, 0 at its end (the peer closed), or an error (EAGAIN:
// nothing yet).
func peekByte(fd uintptr) (int, error) {
	var b [1]byte
	k, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
	if e == unix.ENOSYS {
		// 32-bit x86 before Linux 4.3 has socket calls only through
		// socketcall(2), which unix.Recvfrom knows.
		n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return n, err
	}
	if e != 0 {
		return 0, e
	}
	return int(k), nil
}

// drainTo moves what the pipe holds into the socket fd, waiting while the
// socket has no room.
func (s *splicer) drainTo(fd uintptr) bool {
	for {
		n, err := rawSplice(s.p.r, int(fd), s.p.n)
		switch err {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		if n > 0 {
			s.p.n -= int(n)
		}
		s.moved, s.err = int(n), err
		return true
	}
}

// spliceTo returns the client's socket when a body can be spliced to it:
// a plain TCP connection.
func (c *clientConn) spliceTo() syscall.RawConn {
	if c.io == nil {
		return nil
	}
	return c.io.RawConn()
}

// readBodyToPipe reads a response body of n bytes (Content-Length) into a
// pipe: what conn's reader holds is copied in, the rest moved
// from the socket. It returns false, having read nothing, when the body
// should be read into memory instead; an error is the backend's, as when
// reading into memory.
func (x *exchange) readBodyToPipe(ctx *fasthttp.RequestCtx, conn *pool.Conn, n int) (bool, error) {
	if n < spliceMinBody || x.isHead || ctx.Response.StatusCode() >= 500 {
		return false, nil
	}
	cc, ok := ctx.Conn().(*clientConn)
	if !ok {
		return false, nil
	}
	dst, src := cc.spliceTo(), conn.RawConn()
	br := conn.Reader()
	if dst == nil || src == nil || n-br.Buffered() < spliceMinBody {
		return false, nil
	}
	p := getPipe()
	if p == nil {
		return false, nil
	}
	if x.sp == nil {
		x.sp = newSplicer()
	}
	sp := x.sp
	sp.p, sp.dst, sp.full, sp.after = p, dst, false, false
	if b, _ := br.Peek(min(br.Buffered(), n)); len(b) > 0 {
		k, err := pipeWrite(p, b)
		_, _ = br.Discard(k)
		if err != nil || k < len(b) {
			// A pipe with less room than a read buffer: read into memory.
			return true, x.unpipe(ctx, conn, n)
		}
	}
	_ = conn.NetConn().SetReadDeadline(x.bound(time.Now().Add(x.cfg.Timeouts.Idle)))
	for p.n < n {
		sp.want = n - p.n
		err := src.Read(sp.fill)
		if err == nil {
			err = sp.err
		}
		if err == nil && sp.moved == 0 && !sp.full {
			err = io.ErrUnexpectedEOF // the backend closed mid-body
		}
		if err != nil {
			x.dropPipe()
			return true, err
		}
		if sp.full {
			return true, x.unpipe(ctx, conn, n)
		}
	}
	if sp.after {
		x.closeConn = true // bytes beyond the body: not reused
	}
	return true, nil
}

// pipeWrite copies b into p (which must not be full), returning how much
// it took. A write, not vmsplice: vmsplice would lend the pipe the pages of
// b, a reader's buffer that the next response on the backend connection
// overwrites while the pipe may still hold them.
func pipeWrite(p *pipe, b []byte) (int, error) {
	for {
		k, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(p.w), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			p.n += int(k)
			return int(k), nil
		case unix.EINTR:
			continue
		}
		return 0, e
	}
}

// unpipe reads a body of n bytes whose pipe ran out of room into memory:
// what the pipe holds, then the rest from conn.
func (x *exchange) unpipe(ctx *fasthttp.RequestCtx, conn *pool.Conn, n int) error {
	x.s.readBack.Add(1)
	sp := x.sp
	if x.ioBuf == nil {
		x.ioBuf = make([]byte, ioBufSize)
	}
	w := ctx.Response.BodyWriter()
	left := n - sp.p.n
	for sp.p.n > 0 {
		k, err := unix.Read(sp.p.r, x.ioBuf[:min(len(x.ioBuf), sp.p.n)])
		if err == unix.EINTR {
			continue
		}
		if err != nil || k <= 0 {
			x.dropPipe()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		sp.p.n -= k
		_, _ = w.Write(x.ioBuf[:k])
	}
	x.dropPipe()
	return x.readSmallBody(ctx, conn, left)
}

// piped reports whether the response body waits in a pipe.
func (x *exchange) piped() bool { return x.sp != nil && x.sp.p != nil }

// pipedLen is the length of a piped body.
func (x *exchange) pipedLen() int { return x.sp.p.n }

// writePiped sends a piped body from the pipe straight to the client's
// socket. fasthttp has flushed the head.
func (x *exchange) writePiped() (int64, error) {
	sp := x.sp
	var n int64
	for sp.p.n > 0 {
		err := sp.dst.Write(sp.drain)
		if err == nil {
			err = sp.err
		}
		n += int64(sp.moved)
		if err == nil && sp.moved == 0 {
			err = io.ErrShortWrite
		}
		if err != nil {
			x.bytesOut = n
			return n, err
		}
	}
	x.dropPipe()
	x.bytesOut = n
	x.s.piped.Add(1)
	return n, nil
}

// dropPipe gives the exchange's pipe back (closed if it holds bytes).
func (x *exchange) dropPipe() {
	if x.sp != nil && x.sp.p != nil {
		putPipe(x.sp.p)
		x.sp.p, x.sp.dst = nil, nil
	}
}
