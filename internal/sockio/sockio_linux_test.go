package sockio_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/sockio"
)

// pair returns both ends of a loopback TCP connection, the first read and
// written with sockio.
func pair(t *testing.T) (*sockio.IO, *net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); peer.Close() })
	s := sockio.New(c)
	if s == nil {
		t.Fatal("no sockio for a TCP connection")
	}
	return s, c.(*net.TCPConn), peer.(*net.TCPConn)
}

func TestReadWaitsWritesAllAndSeesEOF(t *testing.T) {
	s, c, peer := pair(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB: more than the socket buffers take at once
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := s.Write(big)
	if n != len(big) || err != nil {
		t.Fatalf("Write: %d, %v; want %d, nil", n, err, len(big))
	}
	n, err = s.Write2([]byte("head:"), []byte("body"))
	if n != 9 || err != nil {
		t.Fatalf("Write2: %d, %v", n, err)
	}
	_ = c.CloseWrite()
	if b := <-got; !bytes.Equal(b, append(big, "head:body"...)) {
		t.Fatalf("the peer read %d bytes, not what was written", len(b))
	}

	// Read waits for data that comes later, then sees the close.
	go func() {
		_, _ = peer.Write([]byte("late"))
		_ = peer.CloseWrite()
	}()
	buf := make([]byte, 64)
	var all []byte
	for {
		n, err := s.Read(buf)
		all = append(all, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
	if string(all) != "late" {
		t.Fatalf("read %q, want %q", all, "late")
	}
}

func TestDeadlinesAndErrorsAreNetConns(t *testing.T) {
	s, c, peer := pair(t)
	_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := s.Read(make([]byte, 8))
	var ne net.Error
	if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Read past its deadline: %v, want a timeout", err)
	}
	_ = c.SetReadDeadline(time.Time{})

	// A reset shows as ECONNRESET on the next read, wrapped as net would.
	_ = peer.SetLinger(0)
	_, _ = peer.Write([]byte("x"))
	peer.Close()
	buf := make([]byte, 8)
	for i := 0; ; i++ {
		_, err = s.Read(buf)
		if err != nil || i > 10 {
			break
		}
	}
	var op *net.OpError
	if !errors.Is(err, syscall.ECONNRESET) || !errors.As(err, &op) || op.Op != "read" {
		t.Fatalf("Read after a reset: %v, want a read *net.OpError with ECONNRESET", err)
	}
	_, err = s.Write(bytes.Repeat([]byte("y"), 1<<20))
	if err == nil {
		t.Fatal("Write to a reset connection: no error")
	}

	// Closed under a waiting reader: the reader returns.
	s2, c2, _ := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := s2.Read(make([]byte, 8))
		done <- err
	}()
	c2.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed connection: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read did not return after Close")
	}
}

func TestNewOnlyForSockets(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if sockio.New(a) != nil {
		t.Fatal("sockio for an in-memory pipe")
	}
}

// TestReadAndWriteAtOnce: a tunnel reads and writes one connection from two
// goroutines (run with -race).
func TestReadAndWriteAtOnce(t *testing.T) {
	s, c, peer := pair(t)
	const n = 1 << 20
	echoed := make(chan error, 1)
	go func() { // the peer echoes what it reads
		_, err := io.CopyN(peer, peer, n)
		echoed <- err
	}()
	wrote := make(chan error, 1)
	go func() {
		chunk := bytes.Repeat([]byte("z"), 4096)
		var err error
		for i := 0; i < n/len(chunk) && err == nil; i++ {
			_, err = s.Write(chunk)
		}
		wrote <- err
	}()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := 0
	buf := make([]byte, 8192)
	for got < n {
		k, err := s.Read(buf)
		got += k
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", got, err)
		}
	}
	if err := <-wrote; err != nil {
		t.Fatalf("Write: %v", err)
	}
	if err := <-echoed; err != nil {
		t.Fatalf("echo: %v", err)
	}
}
