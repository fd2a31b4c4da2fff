package listener

import (
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestGateCapsAcrossListeners: two listeners sharing a gate of 2 hand out
// two connections in all; the third client reads the refusal and is closed;
// a closed connection (closed twice) frees exactly one place.
func TestGateCapsAcrossListeners(t *testing.T) {
	gate := NewGate(2)
	var lns []*Listener
	for _, name := range []string{"a", "b"} {
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln := Wrap(raw, name, gate, Refusal("full"), zerolog.Nop())
		t.Cleanup(func() { ln.Close() })
		lns = append(lns, ln)
	}
	accepted := make(chan net.Conn, 4)
	for _, ln := range lns {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- c
			}
		}()
	}
	dial := func(ln *Listener) net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial(lns[0])
	dial(lns[1])
	first := <-accepted
	<-accepted
	if gate.Open() != 2 {
		t.Fatalf("open %d, want 2", gate.Open())
	}
	third := dial(lns[0])
	_ = third.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(third)
	if !strings.HasPrefix(string(got), "HTTP/1.1 503 ") || !strings.HasSuffix(string(got), "\r\n\r\nfull\n") {
		t.Fatalf("over the cap the client read %q", got)
	}
	if s := lns[0].Stats(); s.Refused != 1 || s.Open != 1 {
		t.Fatalf("stats %+v, want 1 refused, 1 open", s)
	}
	first.Close()
	first.Close()
	if gate.Open() != 1 {
		t.Fatalf("after closing one connection twice, open %d, want 1", gate.Open())
	}
	dial(lns[1])
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the freed place was not given to the next connection")
	}
}

// TestCloseEndsAccept: Close makes a waiting Accept return.
func TestCloseEndsAccept(t *testing.T) {
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := Wrap(raw, "a", nil, nil, zerolog.Nop())
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		done <- err
	}()
	ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

func TestTemporary(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EMFILE)}, true},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}, true},
		{net.ErrClosed, false},
		{&net.OpError{Op: "accept", Err: os.NewSyscallError("accept4", syscall.EINVAL)}, false},
	} {
		if got := Temporary(c.err); got != c.want {
			t.Errorf("Temporary(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
