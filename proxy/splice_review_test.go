//go:build linux

package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/proxy"
)

// TestSplicePipeFullThenBackendCloses: a backend that dies mid-body after
// the pipe ran out of room. With the pipe full, splice says "try again"
// whatever the socket holds, and a socket that holds only the backend's
// close has nothing for SIOCINQ to count: the close must still be seen at
// once (a 502, or a retry), not after the idle timeout as a 504.
func TestSplicePipeFullThenBackendCloses(t *testing.T) {
	addr := stRaw(t, func(c net.Conn, br *bufio.Reader, line string) bool {
		// One write: the head and the start of a body the pipe of one
		// slot takes whole (and is then full); then the close.
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 40000\r\n\r\n"+strings.Repeat("x", 100))
		return false
	})
	b := testbed.Start(t, testbed.Config(stPool("one", [][2]string{{"b1", addr}},
		"    timeouts: {idle: 4s}\n    outlier: {consecutive_failures: -1}\n")))
	b.WaitHealthy(t, "one", 1)
	defer proxy.SetPipeSize(4096)()
	for i := 0; i < 3; i++ {
		c, br := stDial(t, b.Addr, 20*time.Second)
		start := time.Now()
		res, body := stExchange(t, c, br, "GET", "GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
		took := time.Since(start)
		if res.StatusCode != 502 || took > 2*time.Second {
			t.Fatalf("GET %d from a backend that closed mid-body: status %d after %v (%q); want 502 at once (idle timeout 4s)",
				i, res.StatusCode, took.Round(time.Millisecond), body)
		}
	}
}

// TestSpliceBytesAfterBodyCloseConnection: a backend that sends more than
// its Content-Length (a second response behind the first: response
// splitting, or a broken backend) must not have the extra bytes read as
// the answer to the next request on the connection, another client's. A
// body read through the backend's reader pulls what follows it into the
// reader, and the connection is closed for it; a body spliced from the
// socket leaves what follows in the socket, where the reader does not see
// it, so the connection must be checked before its next use.
func TestSpliceBytesAfterBodyCloseConnection(t *testing.T) {
	body := strings.Repeat("a", 40000)
	const smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"
	addr := stRaw(t, func(c net.Conn, br *bufio.Reader, line string) bool {
		if strings.Contains(line, " /split ") {
			// One write: the body, and another response behind it.
			_, err := io.WriteString(c, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s%s", len(body), body, smuggled))
			return err == nil
		}
		_, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
		return err == nil
	})
	b := testbed.Start(t, testbed.Config(stPool("one", [][2]string{{"b1", addr}},
		"    connections: {max: 1}\n    outlier: {consecutive_failures: -1}\n")))
	b.WaitHealthy(t, "one", 1)
	before, _ := b.Srv.PipedBodies()
	for round := 0; round < 5; round++ {
		a, abr := stDial(t, b.Addr, 20*time.Second)
		res, got := stExchange(t, a, abr, "GET", "GET /split HTTP/1.1\r\nHost: a\r\n\r\n")
		if res.StatusCode != 200 || string(got) != body {
			t.Fatalf("round %d: the first answer: status %d, %d bytes", round, res.StatusCode, len(got))
		}
		// Another client, at once (before the pool's 50ms idle check).
		c, cbr := stDial(t, b.Addr, 20*time.Second)
		res, got = stExchange(t, c, cbr, "GET", "GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
		if string(got) != "good" {
			t.Fatalf("round %d: another client got %q (status %d), bytes the backend sent after an earlier body", round, got, res.StatusCode)
		}
	}
	if piped, _ := b.Srv.PipedBodies(); piped == before {
		t.Error("no body went through a pipe: the test did not test the pipe")
	}
}

// TestSpliceStalledEnds: neither end can hold a pipe (and its request)
// for longer than its timeout. A backend that stops mid-body while it is
// spliced into the pipe gets timeouts.idle (504); a client that stops
// reading while the pipe drains into its socket gets body_idle_timeout
// (fasthttp's write deadline for the response), and its connection
// closes.
func TestSpliceStalledEnds(t *testing.T) {
	addr := stRaw(t, func(c net.Conn, br *bufio.Reader, line string) bool {
		if strings.Contains(line, " /stall ") {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n"+strings.Repeat("s", 30000))
			_, _ = io.Copy(io.Discard, br) // until baton closes
			return false
		}
		_, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 60000\r\n\r\n%s", strings.Repeat("b", 60000))
		return err == nil
	})
	b := testbed.Start(t, stConfig("body_idle_timeout: 1s", stPool("one", [][2]string{{"b1", addr}},
		"    timeouts: {idle: 500ms}\n    outlier: {consecutive_failures: -1}\n")))
	b.WaitHealthy(t, "one", 1)

	t.Run("Backend", func(t *testing.T) {
		c, br := stDial(t, b.Addr, 20*time.Second)
		start := time.Now()
		res, body := stExchange(t, c, br, "GET", "GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
		if took := time.Since(start); res.StatusCode != 504 || took > 5*time.Second {
			t.Fatalf("a backend stalled mid-body: status %d after %v (%q); want 504 after the 500ms idle timeout", res.StatusCode, took, body)
		}
	})

	t.Run("Client", func(t *testing.T) {
		// A client whose socket takes little, asking for more than the
		// sockets on the way can hold, and reading nothing: a body
		// cannot all leave its pipe.
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048) })
		}}
		waitOpen := func(n int64, what string) {
			for deadline := time.Now().Add(10 * time.Second); b.Srv.OpenConnections() != n; {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d client connections open after 10s, want %d (body_idle_timeout 1s)", what, b.Srv.OpenConnections(), n)
				}
				time.Sleep(time.Millisecond)
			}
		}
		waitOpen(0, "before")
		before, _ := b.Srv.PipedBodies()
		c, err := d.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var reqs strings.Builder
		// More than the kernel lets baton's socket hold (4 MiB at most).
		for i := 0; i < 120; i++ {
			reqs.WriteString("GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
		}
		if _, err := io.WriteString(c, reqs.String()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		waitOpen(1, "the client's connection")
		waitOpen(0, "a client that reads nothing")
		if took := time.Since(start); took < 900*time.Millisecond {
			t.Errorf("closed after %v, before the 1s body_idle_timeout", took)
		}
		piped, _ := b.Srv.PipedBodies()
		t.Logf("closed after %v; %d bodies went whole through a pipe before the stall", time.Since(start), piped-before)
	})
}

// TestSpliceOutOfDescriptorsFallsBack: with no descriptor left for a pipe,
// a body that would have been piped is read into memory: whole, a 200,
// not a failure. The connections it needs are open before the limit.
func TestSpliceOutOfDescriptorsFallsBack(t *testing.T) {
	b := testbed.Start(t, testbed.Config(stPool("web", [][2]string{{"b1", spliceBackend(t)}}, "")))
	b.WaitHealthy(t, "web", 1)
	c, br := stDial(t, b.Addr, 20*time.Second)
	get := func(what string) {
		t.Helper()
		res, body := stExchange(t, c, br, "GET", "GET /?size=40000 HTTP/1.1\r\nHost: a\r\n\r\n")
		check := newStCheck()
		_, _ = check.Write(body)
		if err := check.verify(40000); res.StatusCode != 200 || err != nil {
			t.Fatalf("%s: status %d, %v", what, res.StatusCode, err)
		}
	}
	get("with descriptors") // the backend connection is open and pooled
	piped := waitPiped(b, 1)
	if piped == 0 {
		t.Fatal("no body went through a pipe: the test would not test the fallback")
	}

	// No pipe kept for reuse: the pooled ones (all the pipes baton has
	// open now, nothing being in flight) are dropped by two collections
	// and closed by their cleanups, which take a moment.
	open := pipeInodes(t)
	for deadline := time.Now().Add(10 * time.Second); ; {
		runtime.GC()
		runtime.GC()
		still := 0
		for ino := range pipeInodes(t) {
			if open[ino] {
				still++
			}
		}
		if still == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pooled pipes still open after 10s of collections", still)
		}
		time.Sleep(time.Millisecond)
	}

	// Every descriptor taken: the limit just above the highest open one,
	// and the holes under it filled.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	high := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > high {
			high = n
		}
	}
	low := lim
	low.Cur = uint64(high + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Skipf("cannot lower RLIMIT_NOFILE: %v", err)
	}
	var fillers []int
	defer func() {
		for _, fd := range fillers {
			_ = syscall.Close(fd)
		}
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}()
	for i := 0; i < 1<<16; i++ {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == syscall.EMFILE {
			break
		}
		if err != nil {
			t.Fatalf("filling the descriptor table: %v", err)
		}
		fillers = append(fillers, fd)
	}
	var fds [2]int
	if err := syscall.Pipe2(fds[:], syscall.O_CLOEXEC); err != syscall.EMFILE {
		syscall.Close(fds[0])
		syscall.Close(fds[1])
		t.Fatalf("pipe2 with the table full: %v, want EMFILE", err)
	}

	get("without a descriptor for a pipe")
	if now := waitPiped(b, piped+1); now != piped {
		t.Errorf("%d more bodies piped with no descriptor left", now-piped)
	}
}

// TestSpliceHTTP10Clients: an HTTP/1.0 client gets a piped body with its
// Content-Length, then the close; one asking for keep-alive gets the next
// answer on the same connection.
func TestSpliceHTTP10Clients(t *testing.T) {
	b := testbed.Start(t, testbed.Config(stPool("web", [][2]string{{"b1", spliceBackend(t)}}, "")))
	b.WaitHealthy(t, "web", 1)
	before, _ := b.Srv.PipedBodies()
	read := func(br *bufio.Reader, what string, size int64) *http.Response {
		t.Helper()
		res, err := http.ReadResponse(br, &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		check := newStCheck()
		_, err = io.Copy(check, res.Body)
		res.Body.Close()
		if err := check.verify(size); err != nil || res.StatusCode != 200 || res.ContentLength != size {
			t.Fatalf("%s: status %d, Content-Length %d, %v", what, res.StatusCode, res.ContentLength, err)
		}
		return res
	}

	c, br := stDial(t, b.Addr, 20*time.Second)
	_, _ = io.WriteString(c, "GET /?size=40000 HTTP/1.0\r\nHost: a\r\n\r\n")
	read(br, "HTTP/1.0", 40000)
	if k, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after an HTTP/1.0 answer: %q, %v; want the close", k, err)
	}

	c, br = stDial(t, b.Addr, 20*time.Second)
	for i := 0; i < 3; i++ {
		_, _ = io.WriteString(c, "GET /?size=50000 HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
		if res := read(br, fmt.Sprintf("HTTP/1.0 keep-alive %d", i), 50000); res.Close {
			t.Fatalf("HTTP/1.0 keep-alive %d: the connection closes", i)
		}
	}
	if piped := waitPiped(b, before+4); piped-before < 4 {
		t.Errorf("%d bodies piped, want 4: the test did not test the pipe", piped-before)
	}
}

// pipeInodes returns the pipes this process has open, by inode, but
// those it had before any test ran (go test's own, for its output).
func pipeInodes(t *testing.T) map[string]bool {
	t.Helper()
	out, err := pipesOpen()
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	for ino := range startPipes {
		delete(out, ino)
	}
	return out
}

var startPipes, _ = pipesOpen()

func pipesOpen() (map[string]bool, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "pipe:") {
			out[l] = true
		}
	}
	return out, nil
}

// waitPiped returns b's count of piped bodies once it reaches want, or
// after 2s: the count goes up after the body's last byte reached the
// client, so a client that read it may look before.
func waitPiped(b *testbed.Baton, want uint64) uint64 {
	deadline := time.Now().Add(2 * time.Second)
	for {
		piped, _ := b.Srv.PipedBodies()
		if piped >= want || time.Now().After(deadline) {
			return piped
		}
		time.Sleep(time.Millisecond)
	}
}
