package proxy

import (
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSpliceFailedMovesNothing: a failed splice returns -1 from the
// kernel; counted as bytes moved it made a failed drain report one byte
// less than it sent (the access log's bytes, -1 for a client gone before
// the body).
func TestSpliceFailedMovesNothing(t *testing.T) {
	n, err := rawSplice(-1, -1, 4096)
	if err != unix.EBADF || n != 0 {
		t.Fatalf("splice of bad descriptors: %d, %v; want 0, EBADF", n, err)
	}
}

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (a, b *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// peekOf peeks at c's socket until want (a byte count, or an error) or
// 5 s; what the peer sends takes a moment to arrive.
func peekOf(t *testing.T, c *net.TCPConn, want func(int, error) bool) (int, error) {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var k int
	var perr error
	for deadline := time.Now().Add(5 * time.Second); ; {
		_ = rc.Control(func(fd uintptr) { k, perr = peekByte(fd) })
		if want(k, perr) || time.Now().After(deadline) {
			return k, perr
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPeekByteTellsEmptyBytesCloseAndReset: what the pipe-full and
// bytes-after-the-body checks rely on.
func TestPeekByteTellsEmptyBytesCloseAndReset(t *testing.T) {
	a, b := tcpPair(t)
	if k, err := peekOf(t, a, func(int, error) bool { return true }); err != unix.EAGAIN {
		t.Fatalf("empty socket: %d, %v; want EAGAIN", k, err)
	}
	_, _ = b.Write([]byte("x"))
	if k, err := peekOf(t, a, func(k int, err error) bool { return err == nil }); k != 1 || err != nil {
		t.Fatalf("a byte waiting: %d, %v; want 1", k, err)
	}
	if k, err := peekOf(t, a, func(int, error) bool { return true }); k != 1 || err != nil {
		t.Fatalf("peeked twice: %d, %v; the byte must stay", k, err)
	}
	var one [1]byte
	_, _ = a.Read(one[:])
	_ = b.CloseWrite()
	if k, err := peekOf(t, a, func(k int, err error) bool { return err == nil }); k != 0 || err != nil {
		t.Fatalf("peer closed: %d, %v; want 0 (end)", k, err)
	}

	c, d := tcpPair(t)
	_ = d.SetLinger(0)
	d.Close() // a reset
	if k, err := peekOf(t, c, func(_ int, err error) bool { return err != unix.EAGAIN }); err != syscall.ECONNRESET {
		t.Fatalf("peer reset: %d, %v; want ECONNRESET", k, err)
	}
}
