package sockio

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Reading after writing. A request written to a backend, or an answer
// written to a client, is answered a moment later; a read made at once
// finds nothing (EAGAIN), and only then does the goroutine wait in the
// netpoller: a system call and a park and wake for nothing, about one per
// request each way. An event loop (HAProxy) never makes that read: it reads
// a socket when epoll says so. Go cannot wait before reading (RawConn.Read
// forgets a readiness that came before it), so the first read after a
// write yields the processor first: the other goroutines that are ready
// run, and by the time this one reads, the answer is usually there. Where
// it is not (a backend that takes milliseconds, a client thinking), the
// yield bought nothing; a score per connection keeps the yields where they
// pay: a read that found its answer raises it, one that had to wait
// lowers it by more, and below zero the connection yields only once in a
// while, to find out whether its peer became quick.
const (
	scoreMax  = 16
	scoreMiss = 4
)

// IO reads and writes one connection. It is safe for one reader and one
// writer at a time, like a net.Conn's descriptor; the functions handed to
// RawConn are bound once, so Read and Write allocate nothing.
type IO struct {
	c  net.Conn
	rc syscall.RawConn

	// wrote: the last call was a write, so the next read may yield
	// first. Atomic: a tunnel reads and writes at once.
	wrote  atomic.Bool
	waited bool // the last read found nothing at first and waited
	score  int  // see scoreMax: yield before a read after a write while >= 0
	rcap   int  // most bytes a Read asks the socket for; 0: as many as given

	rp    []byte
	rn    int
	rerr  syscall.Errno
	rfunc func(fd uintptr) bool

	wp   []byte
	wp2  []byte
	wn   int
	werr syscall.Errno

	w2func func(fd uintptr) bool
}

// New returns an IO for c's socket, or nil when c is not a plain socket
// (a TLS connection, an in-memory pipe).
func New(c net.Conn) *IO {
	var rc syscall.RawConn
	switch t := c.(type) {
	case *net.TCPConn:
		rc, _ = t.SyscallConn()
	case *net.UnixConn:
		rc, _ = t.SyscallConn()
	}
	if rc == nil {
		return nil
	}
	s := &IO{c: c, rc: rc}
	s.rfunc, s.w2func = s.read, s.writev
	return s
}

// CapReads makes each Read ask the socket for at most n bytes (0: no cap),
// so that a caller reading a message's head does not pull the start of a
// large body into memory with it.
func (s *IO) CapReads(n int) { s.rcap = n }

// RawConn returns the socket's RawConn.
func (s *IO) RawConn() syscall.RawConn { return s.rc }

func (s *IO) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&s.rp[0])), uintptr(len(s.rp)))
		switch e {
		case 0:
			s.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			s.waited = true
			return false
		}
		s.rerr = e
		return true
	}
}

// Read reads from the socket like net.Conn's Read: it waits for data (up
// to the read deadline) and returns io.EOF when the peer closed.
func (s *IO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	yielded := false
	if s.wrote.Load() {
		s.wrote.Store(false)
		if s.score >= 0 {
			runtime.Gosched()
			yielded = true
		} else {
			s.score++
		}
	}
	if s.rcap > 0 && len(p) > s.rcap {
		p = p[:s.rcap]
	}
	s.rp, s.rn, s.rerr, s.waited = p, 0, 0, false
	err := s.rc.Read(s.rfunc)
	s.rp = nil
	if yielded {
		if s.waited {
			s.score -= scoreMiss
		} else if s.score < scoreMax {
			s.score++
		}
	}
	switch {
	case err != nil:
		return 0, err
	case s.rerr != 0:
		return 0, s.opError("read", s.rerr)
	case s.rn == 0:
		return 0, io.EOF
	}
	return s.rn, nil
}

// Write writes all of p like net.Conn's Write, waiting for room (up to the
// write deadline).
func (s *IO) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return s.Write2(p, nil)
}

// opError is the error net.Conn would return for errno e.
func (s *IO) opError(op string, e syscall.Errno) error {
	return &net.OpError{Op: op, Net: s.c.LocalAddr().Network(), Source: s.c.LocalAddr(), Addr: s.c.RemoteAddr(), Err: os.NewSyscallError(op, e)}
}

func (s *IO) writev(fd uintptr) bool {
	for len(s.wp) > 0 || len(s.wp2) > 0 {
		var iov [2]syscall.Iovec
		k := 0
		for _, b := range [2][]byte{s.wp, s.wp2} {
			if len(b) > 0 {
				iov[k].Base = &b[0]
				iov[k].SetLen(len(b))
				k++
			}
		}
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(k))
		switch e {
		case 0:
			s.wn += int(n)
			m := min(int(n), len(s.wp))
			s.wp = s.wp[m:]
			s.wp2 = s.wp2[int(n)-m:]
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.werr = e
		return true
	}
	return true
}

// Write2 writes a and then b with one system call where the socket takes
// both (writev), like Write of the two joined.
func (s *IO) Write2(a, b []byte) (int, error) {
	s.wrote.Store(true)
	s.wp, s.wp2, s.wn, s.werr = a, b, 0, 0
	err := s.rc.Write(s.w2func)
	s.wp, s.wp2 = nil, nil
	switch {
	case err != nil:
		return s.wn, err
	case s.werr != 0:
		return s.wn, s.opError("writev", s.werr)
	}
	return s.wn, nil
}
