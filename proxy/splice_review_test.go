//go:build linux

package proxy_test

import (
	"bufio"
	"io"
	"net"
	"strings"
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
