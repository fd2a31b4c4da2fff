package proxy_test

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// Per-input deadlines. Baton answers on loopback in well under a
// millisecond; these only bound a baton that hangs. A connection still open
// after fuzzIODeadline gets one grace period before the input counts as a
// hang: a loaded machine running several fuzz workers can stall a process for
// a moment, which must not pass for a bug.
const (
	fuzzIODeadline     = 300 * time.Millisecond
	fuzzGrace          = 2 * time.Second
	fuzzSettleDeadline = 500 * time.Millisecond
)

// FuzzRequestFraming sends arbitrary bytes to a real baton in front of a
// recording backend and checks that baton never forwards more requests than
// a strict reference framer (frReferenceCount) finds unambiguously framed in
// the input, that everything it forwards is a clean request, and that it is
// still alive afterwards.
func FuzzRequestFraming(f *testing.F) {
	for _, tc := range frRejectCases {
		f.Add([]byte(tc.raw))
	}
	for _, tc := range frNormaliseCases {
		f.Add([]byte(tc.raw))
	}
	for _, tc := range frSmuggleCases {
		f.Add([]byte(tc.raw))
	}
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nUser-Agent: fuzz\r\nAccept: */*\r\n\r\n",
		"GET http://example.com/abs HTTP/1.1\r\nHost: example.com\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
		"PUT /p HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
		"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
		"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"POST /1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}

	// One baton and one recording backend for this process. Inputs run one
	// at a time, so everything the backend records between two inputs was
	// sent on behalf of the input in between.
	fx := newFrFixture(f, "{level: warn, format: json, access: false}")
	var mu sync.Mutex
	f.Fuzz(func(t *testing.T, in []byte) {
		mu.Lock()
		defer mu.Unlock()
		fx.rec.reset()

		out, closed := fuzzSend(t, fx.b.Addr, in)
		if !closed {
			t.Fatalf("baton did not close the connection within %s after the client half-closed; input %q, got %q", fuzzIODeadline+fuzzGrace, in, out)
		}
		// Every complete request baton forwarded was recorded before the
		// backend answered it, hence before baton closed the client
		// connection. A request cut short is on a backend connection baton
		// closed before answering: wait for the recorder to read it all.
		testbed.Eventually(t, fuzzSettleDeadline, fx.quiet,
			"the backend to have read everything baton sent (or baton left half a request on a pooled connection)")

		evs := fx.rec.since(0)
		got := 0
		for _, e := range evs {
			switch e.kind {
			case frEvRequest:
				got++
			case frEvMalformed:
				t.Errorf("baton sent bytes that are not a clean request: %s", e)
			}
		}
		if want := frReferenceCount(in); got > want {
			t.Errorf("the backend received %d requests, the reference framer finds %d in the input\ninput: %q\nbackend: %s\nclient got: %q",
				got, want, in, frDescribe(evs), out)
		}
		if bytes.Contains(out, []byte("baton: internal error")) {
			t.Errorf("baton panicked on input %q: %q", in, out)
		}

		// Still alive: a normal request goes through.
		alive, closed := fuzzSend(t, fx.b.Addr, []byte("GET /__alive HTTP/1.1\r\nHost: alive\r\nConnection: close\r\n\r\n"))
		if !closed || !bytes.HasPrefix(alive, []byte("HTTP/1.1 200 ")) || !bytes.HasSuffix(alive, []byte("\r\n\r\nseen /__alive")) {
			t.Fatalf("baton stopped serving after input %q: got %q", in, alive)
		}
	})
}

// fuzzSend writes in to addr, half-closes, and reads until baton closes the
// connection. closed is false when the deadline passed first.
func fuzzSend(t *testing.T, addr string, in []byte) (out []byte, closed bool) {
	c, err := net.DialTimeout("tcp", addr, fuzzIODeadline)
	if err != nil {
		t.Fatalf("dial baton: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(fuzzIODeadline))
	// Baton may answer and close before reading everything: a write error
	// is not a failure, what baton answered is read anyway.
	if _, err := c.Write(in); err == nil {
		_ = c.(*net.TCPConn).CloseWrite()
	}
	ex := frReadAll(c)
	if errors.Is(ex.err, os.ErrDeadlineExceeded) {
		start := time.Now()
		_ = c.SetReadDeadline(start.Add(fuzzGrace))
		more := frReadAll(c)
		ex.raw = append(ex.raw, more.raw...)
		ex.err = more.err
		t.Logf("baton took %s longer than %s to close the connection (read ended: %v)", time.Since(start), fuzzIODeadline, more.err)
	}
	return ex.raw, !errors.Is(ex.err, os.ErrDeadlineExceeded)
}
