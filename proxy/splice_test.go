//go:build linux

package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/proxy"
)

// Bodies from 16 KiB up to 64 KiB (Content-Length) go to a plain-HTTP
// client through a pipe (splice_linux.go). These tests hold that path to
// what the buffered one does: every byte in order, pipelined answers in
// order, HEAD without a body, a backend that sends its body in small
// pieces (more pieces than a pipe has slots), and a client that leaves
// before reading.

// spliceSizes cross the thresholds: below 16 KiB (copied), 16 KiB and up
// (piped), the 64 KiB limit of bodies read whole, and past it (streamed).
var spliceSizes = []int64{16<<10 - 1, 16 << 10, 16<<10 + 1, 20000, 40000, 64<<10 - 1, 64 << 10, 64<<10 + 1, 200 << 10}

func spliceBackend(t *testing.T) string {
	return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size, _ := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(200)
		if r.Method == "HEAD" {
			return
		}
		if fill := r.URL.Query().Get("fill"); fill != "" {
			// Not the pattern: a body that overwrote another shows.
			_, _ = io.Copy(w, io.LimitReader(strings.NewReader(strings.Repeat(fill[:1], int(size))), size))
			return
		}
		_, _ = io.Copy(w, &stGen{n: size})
	}))
}

// TestSplicePipeOwnsItsBytes: a piped body waits in the kernel (the pipe,
// then the client's socket) after the backend connection went back, so
// none of it may be memory that connection's next response is read into.
// One backend connection for all: client A's body is piped and left
// unread while client B's answers, of other bytes, go through the same
// connection and its read buffer; A then reads its own body, whole.
func TestSplicePipeOwnsItsBytes(t *testing.T) {
	b := testbed.Start(t, testbed.Config(stPool("web", [][2]string{{"b1", spliceBackend(t)}}, "    connections: {max: 1}\n")))
	b.WaitHealthy(t, "web", 1)
	for round := 0; round < 5; round++ {
		a, abr := stDial(t, b.Addr, 20*time.Second)
		if _, err := io.WriteString(a, "GET /?size=60000 HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// B's answers go through the connection once A's is done with it.
		c, br := stDial(t, b.Addr, 20*time.Second)
		for i := 0; i < 4; i++ {
			res, body := stExchange(t, c, br, "GET", "GET /?size=60000&fill=B HTTP/1.1\r\nHost: a\r\n\r\n")
			if res.StatusCode != 200 || strings.Trim(string(body), "B") != "" || len(body) != 60000 {
				t.Fatalf("round %d: B's answer %d: status %d, %d bytes", round, i, res.StatusCode, len(body))
			}
		}
		res, err := http.ReadResponse(abr, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("round %d: A's answer: %v", round, err)
		}
		check := newStCheck()
		_, err = io.Copy(check, res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != 200 {
			t.Fatalf("round %d: A's answer: status %d, %v", round, res.StatusCode, err)
		}
		if err := check.verify(60000); err != nil {
			t.Fatalf("round %d: A's body, left unread while B's went through the same connection: %v", round, err)
		}
	}
	if piped, _ := b.Srv.PipedBodies(); piped == 0 {
		t.Error("no body went through a pipe: the test did not test the pipe")
	}
}

func TestSpliceBodiesWholeAndInOrder(t *testing.T) {
	b := testbed.Start(t, testbed.Config(stPool("web", [][2]string{{"b1", spliceBackend(t)}}, "")))
	b.WaitHealthy(t, "web", 1)

	t.Run("OneByOne", func(t *testing.T) {
		before, _ := b.Srv.PipedBodies()
		c, br := stDial(t, b.Addr, 20*time.Second)
		for round := 0; round < 3; round++ {
			for _, size := range spliceSizes {
				res, body := stExchange(t, c, br, "GET", fmt.Sprintf("GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n", size))
				check := newStCheck()
				_, _ = check.Write(body)
				if err := check.verify(size); res.StatusCode != 200 || res.ContentLength != size || err != nil {
					t.Fatalf("GET size=%d: status %d, Content-Length %d, %v", size, res.StatusCode, res.ContentLength, err)
				}
			}
		}
		// 40000 and the two around 64 KiB are piped whatever the
		// backend's first read took; 3 rounds.
		if piped, _ := b.Srv.PipedBodies(); piped-before < 9 {
			t.Errorf("%d bodies went through a pipe, want at least 9: the test did not test the pipe", piped-before)
		}
	})

	t.Run("Pipelined", func(t *testing.T) {
		c, br := stDial(t, b.Addr, 20*time.Second)
		var reqs strings.Builder
		for _, size := range spliceSizes {
			fmt.Fprintf(&reqs, "GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n", size)
			fmt.Fprintf(&reqs, "HEAD /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n", size)
		}
		if _, err := io.WriteString(c, reqs.String()); err != nil {
			t.Fatal(err)
		}
		for _, size := range spliceSizes {
			for _, method := range []string{"GET", "HEAD"} {
				res, err := http.ReadResponse(br, &http.Request{Method: method})
				if err != nil {
					t.Fatalf("%s size=%d: %v", method, size, err)
				}
				check := newStCheck()
				_, err = io.Copy(check, res.Body)
				res.Body.Close()
				want := size
				if method == "HEAD" {
					want = 0
				}
				if err != nil || res.StatusCode != 200 || res.ContentLength != size {
					t.Fatalf("%s size=%d: status %d, Content-Length %d, %v", method, size, res.StatusCode, res.ContentLength, err)
				}
				if err := check.verify(want); err != nil {
					t.Fatalf("%s size=%d: %v", method, size, err)
				}
			}
		}
	})

	t.Run("ClientLeavesBeforeReading", func(t *testing.T) {
		// Each client asks for a piped body and closes at once; what
		// the pipe held must not reach anyone else.
		for i := 0; i < 20; i++ {
			c, _ := stDial(t, b.Addr, 5*time.Second)
			_, _ = io.WriteString(c, "GET /?size=60000 HTTP/1.1\r\nHost: a\r\n\r\n")
			_ = c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
		c, br := stDial(t, b.Addr, 20*time.Second)
		for i := 0; i < 20; i++ {
			res, body := stExchange(t, c, br, "GET", "GET /?size=50000 HTTP/1.1\r\nHost: a\r\n\r\n")
			check := newStCheck()
			_, _ = check.Write(body)
			if err := check.verify(50000); res.StatusCode != 200 || err != nil {
				t.Fatalf("GET %d after clients left: status %d, %v", i, res.StatusCode, err)
			}
		}
	})
}

// TestSpliceBodyInSmallPieces: a backend that writes its body in 100-byte
// pieces, each its own TCP segment. A pipe takes a slot per piece, so it
// can run out of room before the body is in; the body is then read back
// into memory. Whole and in order either way, on a connection that stays
// in sync.
func TestSpliceBodyInSmallPieces(t *testing.T) {
	var sent atomic.Int64
	addr := stRaw(t, func(c net.Conn, br *bufio.Reader, line string) bool {
		size, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(line, "GET /?size="), " HTTP/1.1"))
		if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", size); err != nil {
			return false
		}
		g := &stGen{n: int64(size)}
		var piece [100]byte
		for {
			k, _ := g.Read(piece[:])
			if k == 0 {
				break
			}
			if _, err := c.Write(piece[:k]); err != nil {
				return false
			}
			sent.Add(1)
		}
		return true
	})
	b := testbed.Start(t, testbed.Config(stPool("web", [][2]string{{"b1", addr}}, "")))
	b.WaitHealthy(t, "web", 1)
	c, br := stDial(t, b.Addr, 60*time.Second)
	for _, size := range []int64{20000, 40000, 64 << 10} {
		for i := 0; i < 3; i++ {
			res, body := stExchange(t, c, br, "GET", fmt.Sprintf("GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n", size))
			check := newStCheck()
			_, _ = check.Write(body)
			if err := check.verify(size); res.StatusCode != 200 || err != nil {
				t.Fatalf("GET size=%d: status %d, %v", size, res.StatusCode, err)
			}
		}
	}
	piped, readBack := b.Srv.PipedBodies()
	t.Logf("the backend wrote %d pieces; %d bodies piped, %d read back", sent.Load(), piped, readBack)

	// A pipe of one slot cannot hold what the backend's reader had, nor
	// the pieces after it: every body is read back, whole.
	t.Run("PipeOfOneSlot", func(t *testing.T) {
		defer proxy.SetPipeSize(4096)()
		_, before := b.Srv.PipedBodies()
		for _, size := range []int64{40000, 50000, 64 << 10} {
			res, body := stExchange(t, c, br, "GET", fmt.Sprintf("GET /?size=%d HTTP/1.1\r\nHost: a\r\n\r\n", size))
			check := newStCheck()
			_, _ = check.Write(body)
			if err := check.verify(size); res.StatusCode != 200 || err != nil {
				t.Fatalf("GET size=%d: status %d, %v", size, res.StatusCode, err)
			}
		}
		if _, after := b.Srv.PipedBodies(); after-before != 3 {
			t.Errorf("%d bodies read back from a pipe of one slot, want 3", after-before)
		}
	})
}
