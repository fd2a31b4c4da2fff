package proxy_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// A minimal WebSocket (RFC 6455) for the tests: enough framing for text
// and close frames of under 126 bytes.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// wsWrite writes one frame; client frames are masked.
func wsWrite(w io.Writer, opcode byte, payload []byte, mask bool) error {
	f := []byte{0x80 | opcode, byte(len(payload))}
	if !mask {
		_, err := w.Write(append(f, payload...))
		return err
	}
	f[1] |= 0x80
	var key [4]byte
	_, _ = rand.Read(key[:])
	f = append(f, key[:]...)
	for i, b := range payload {
		f = append(f, b^key[i%4])
	}
	_, err := w.Write(f)
	return err
}

// wsRead reads one frame and returns its opcode and payload.
func wsRead(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := int(h[1] & 0x7f)
	if n > 125 {
		return 0, nil, errors.New("frame too long for the test helper")
	}
	var key [4]byte
	masked := h[1]&0x80 != 0
	if masked {
		if _, err := io.ReadFull(r, key[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= key[i%4]
		}
	}
	return h[0] & 0x0f, p, nil
}

// wsEcho is a WebSocket backend: it echoes text frames prefixed with its
// name, sends "hello from NAME" first, and counts the close frames it got.
type wsEcho struct {
	name   string
	closes chan uint16
}

func (e *wsEcho) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		return
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
		http.Error(w, "websocket only", http.StatusForbidden)
		return
	}
	conn, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\nX-Backend: %s\r\n\r\n",
		wsAccept(r.Header.Get("Sec-WebSocket-Key")), e.name)
	_ = wsWrite(rw, 1, []byte("hello from "+e.name), false)
	_ = rw.Flush()
	for {
		op, p, err := wsRead(rw.Reader)
		if err != nil {
			return
		}
		if op == 8 {
			if len(p) >= 2 && e.closes != nil {
				e.closes <- binary.BigEndian.Uint16(p)
			}
			return
		}
		_ = wsWrite(rw, 1, append([]byte(e.name+": "), p...), false)
		_ = rw.Flush()
	}
}

// wsClient is a WebSocket opened through baton.
type wsClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func wsDial(t *testing.T, addr, path string) (*wsClient, *http.Response) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n", path, key)
	r := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("reading the upgrade answer: %v", err)
	}
	if res.StatusCode == 101 && res.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		t.Fatalf("Sec-WebSocket-Accept %q, want %q", res.Header.Get("Sec-WebSocket-Accept"), wsAccept(key))
	}
	return &wsClient{conn: c, r: r}, res
}

func (w *wsClient) read(t *testing.T) (byte, string) {
	t.Helper()
	_ = w.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	op, p, err := wsRead(w.r)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return op, string(p)
}

func (w *wsClient) send(t *testing.T, msg string) {
	t.Helper()
	if err := wsWrite(w.conn, 1, []byte(msg), true); err != nil {
		t.Fatalf("sending %q: %v", msg, err)
	}
}

func wsPool(addr string, extra string) string {
	return fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: info, access: false}
pools:
  - name: chat
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    drain_timeout: 1s
    backends:
      - {name: w1, address: %q, version: v1}
%s`, addr, extra)
}

// TestWebSocketTunnel: a WebSocket through baton carries messages both
// ways; a config reload leaves it open; a drain waits for it, then closes
// it with 1001 "going away" once the drain timeout runs out.
func TestWebSocketTunnel(t *testing.T) {
	echo := &wsEcho{name: "w1", closes: make(chan uint16, 1)}
	addr := testbed.Backend(t, echo)
	b := testbed.Start(t, wsPool(addr, ""))
	b.WaitHealthy(t, "chat", 1)

	ws, res := wsDial(t, b.Addr, "/socket")
	if res.StatusCode != 101 || res.Header.Get("X-Backend") != "w1" || !strings.EqualFold(res.Header.Get("Upgrade"), "websocket") {
		t.Fatalf("upgrade answered %d %v", res.StatusCode, res.Header)
	}
	if ct, ok := res.Header["Content-Type"]; ok {
		t.Errorf("the 101 gained a Content-Type the backend did not send: %q", ct)
	}
	if op, msg := ws.read(t); op != 1 || msg != "hello from w1" {
		t.Fatalf("first frame %d %q, want the backend's hello", op, msg)
	}
	ws.send(t, "ping 1")
	if _, msg := ws.read(t); msg != "w1: ping 1" {
		t.Fatalf("echo %q", msg)
	}
	be := b.Pool(t, "chat").Backend("w1")
	if be.Inflight() != 1 || be.Tunnels() != 1 {
		t.Errorf("an open tunnel: backend in flight %d, tunnels %d; want 1, 1", be.Inflight(), be.Tunnels())
	}

	// A reload (a second backend joins) leaves the tunnel alone.
	addr2 := testbed.Backend(t, &wsEcho{name: "w2"})
	cfg, err := config.Parse([]byte(wsPool(addr, fmt.Sprintf("      - {name: w2, address: %q, version: v1}\n", addr2))), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Reg.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	ws.send(t, "after the reload")
	if _, msg := ws.read(t); msg != "w1: after the reload" {
		t.Fatalf("after a reload the tunnel answered %q", msg)
	}

	// A drain waits for the tunnel, then closes it politely.
	start := time.Now()
	if _, err := b.Reg.Drain("chat", "w1"); err != nil {
		t.Fatal(err)
	}
	if be.State() != pool.Draining {
		t.Errorf("with a tunnel open the drain is %s at once, want draining", be.State())
	}
	op, msg := ws.read(t)
	if op != 8 || len(msg) < 2 || binary.BigEndian.Uint16([]byte(msg)) != 1001 || msg[2:] != "going away" {
		t.Fatalf("after the drain timeout the client got frame %d %q; want close 1001 going away", op, msg)
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("the tunnel was closed %s after the drain began; the drain timeout is 1s", took)
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.State() == pool.Drained }, "w1 drained")
	if be.Tunnels() != 0 || be.Inflight() != 0 {
		t.Errorf("after the drain: tunnels %d, in flight %d", be.Tunnels(), be.Inflight())
	}
}

// TestUpgradeDeclinedAndFailed: a backend that answers the upgrade with
// an error passes that answer on; a backend that is down answers 502 and
// counts as an error of its version.
func TestUpgradeDeclinedAndFailed(t *testing.T) {
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		if r.URL.Path == "/broken" {
			http.Error(w, "socket service crashed", http.StatusInternalServerError)
			return
		}
		http.Error(w, "no sockets here", http.StatusForbidden)
	}))
	b := testbed.Start(t, wsPool(addr, ""))
	b.WaitHealthy(t, "chat", 1)
	_, res := wsDial(t, b.Addr, "/socket")
	body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
	if res.StatusCode != 403 || !strings.Contains(string(body), "no sockets here") {
		t.Errorf("a declined upgrade answered %d %q; want the backend's 403", res.StatusCode, body)
	}

	// An upgrade the backend fails is a failure of its version, like any.
	_, res = wsDial(t, b.Addr, "/broken")
	if res.StatusCode != 500 {
		t.Errorf("a failed upgrade answered %d, want the backend's 500", res.StatusCode)
	}
	// The evidence is recorded once the answer has gone to the client, so
	// the client can read it first: wait for the count, then hold it.
	versionErrors := func() uint64 {
		var errs uint64
		for _, vs := range b.Pool(t, "chat").VersionStats() {
			errs += vs.Errors()
		}
		return errs
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return versionErrors() >= 1 }, "the failed upgrade to count as an error")
	if errs := versionErrors(); errs != 1 {
		t.Errorf("the version's evidence counts %d errors after one failed upgrade (and one declined), want 1", errs)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	b2 := testbed.Start(t, strings.Replace(wsPool(dead, ""), "health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}", "health_check: {interval: 1h, timeout: 150ms, rise: 1, fall: 3}", 1))
	_, res = wsDial(t, b2.Addr, "/socket")
	if res.StatusCode != 502 && res.StatusCode != 503 {
		t.Errorf("an upgrade to a backend that is down answered %d, want 502 or 503", res.StatusCode)
	}
}

// TestShutdownWaitsForTunnels: a shutdown (SIGTERM, or the old process
// after an upgrade) gives open tunnels its timeout to end, then closes
// them with 1001 going away.
func TestShutdownWaitsForTunnels(t *testing.T) {
	addr := testbed.Backend(t, &wsEcho{name: "w1"})
	b := testbed.Start(t, wsPool(addr, ""))
	b.WaitHealthy(t, "chat", 1)
	ws, res := wsDial(t, b.Addr, "/socket")
	if res.StatusCode != 101 {
		t.Fatalf("upgrade answered %d", res.StatusCode)
	}
	ws.read(t) // the hello
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		_ = b.Srv.Shutdown(ctx)
	}()
	// Still open while the shutdown waits.
	ws.send(t, "during the shutdown")
	if _, msg := ws.read(t); msg != "w1: during the shutdown" {
		t.Fatalf("during the shutdown the tunnel answered %q", msg)
	}
	op, msg := ws.read(t)
	if op != 8 || len(msg) < 2 || binary.BigEndian.Uint16([]byte(msg)) != 1001 {
		t.Fatalf("at the shutdown timeout the client got frame %d %q; want close 1001", op, msg)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return after closing the tunnel")
	}
	if took := time.Since(start); took < 900*time.Millisecond {
		t.Errorf("the tunnel was closed %s into a 1s shutdown", took)
	}
}

// TestUpgradeClientGoneHoldsNothing: a client that pipelines a request and
// an upgrade, then resets the connection, leaves nothing held: the backend
// goes back to nothing in flight and can drain.
func TestUpgradeClientGoneHoldsNothing(t *testing.T) {
	addr := testbed.Backend(t, &wsEcho{name: "w1"})
	b := testbed.Start(t, wsPool(addr, ""))
	b.WaitHealthy(t, "chat", 1)
	for range 5 {
		c, err := net.DialTimeout("tcp", b.Addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: chat.test\r\n\r\nGET /socket HTTP/1.1\r\nHost: chat.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
			base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")))
		_ = c.(*net.TCPConn).SetLinger(0) // a reset, not a polite close
		c.Close()
	}
	be := b.Pool(t, "chat").Backend("w1")
	testbed.Eventually(t, 10*time.Second, func() bool { return be.Inflight() == 0 && be.Tunnels() == 0 }, "nothing in flight on w1")
	if _, err := b.Reg.Drain("chat", "w1"); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return be.State() == pool.Drained }, "w1 drained")
}

// TestDrainClosesTunnelOfAClientThatStopsReading: a WebSocket client that
// stops reading while its backend keeps sending cannot hold a drain past
// its timeout.
func TestDrainClosesTunnelOfAClientThatStopsReading(t *testing.T) {
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		conn, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
			wsAccept(r.Header.Get("Sec-WebSocket-Key")))
		msg := []byte(strings.Repeat("x", 120))
		for { // a stock ticker that never stops
			if wsWrite(rw, 1, msg, false) != nil || rw.Flush() != nil {
				return
			}
		}
	}))
	b := testbed.Start(t, wsPool(addr, ""))
	b.WaitHealthy(t, "chat", 1)
	_, res := wsDial(t, b.Addr, "/ticker") // and never read again
	if res.StatusCode != 101 {
		t.Fatalf("upgrade answered %d", res.StatusCode)
	}
	be := b.Pool(t, "chat").Backend("w1")
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Tunnels() == 1 }, "the tunnel open")
	if _, err := b.Reg.Drain("chat", "w1"); err != nil {
		t.Fatal(err)
	}
	// drain_timeout 1s, then the 2 s write deadline, and 2 s more for the
	// close frame the client does not read either.
	testbed.Eventually(t, 15*time.Second, func() bool { return be.State() == pool.Drained }, "w1 drained despite the stalled client")
}

// TestTunnelsCountAgainstConnectionLimits: tunnels hold a client and a
// backend connection each, so they count against server.max_connections
// (one connection more is answered 503) and the backend's connections.max
// (one tunnel more is answered 503 once the connect timeout passes), and
// the pool's tunnels.max refuses one more with a message naming it.
func TestTunnelsCountAgainstConnectionLimits(t *testing.T) {
	addr := testbed.Backend(t, &wsEcho{name: "w1"})
	open := func(t *testing.T, b *testbed.Baton, n int) {
		t.Helper()
		for i := 0; i < n; i++ {
			ws, res := wsDial(t, b.Addr, "/socket")
			if res.StatusCode != 101 {
				t.Fatalf("tunnel %d answered %d", i+1, res.StatusCode)
			}
			if _, msg := ws.read(t); msg != "hello from w1" {
				t.Fatalf("tunnel %d: %q", i+1, msg)
			}
		}
	}
	t.Run("server.max_connections", func(t *testing.T) {
		b := testbed.Start(t, strings.Replace(wsPool(addr, ""), "log:", "server: {max_connections: 3}\nlog:", 1))
		b.WaitHealthy(t, "chat", 1)
		open(t, b, 3)
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, _ := io.ReadAll(c)
		if !strings.HasPrefix(string(got), "HTTP/1.1 503 ") || !strings.Contains(string(got), "server.max_connections") {
			t.Errorf("with 3 tunnels open and max_connections 3, a new connection read %q", got)
		}
		if n := b.Srv.OpenConnections(); n != 3 {
			t.Errorf("open connections %d, want the 3 tunnels", n)
		}
	})
	t.Run("connections.max", func(t *testing.T) {
		// Tunnels take at most three quarters of connections.max: the rest
		// stays for ordinary requests.
		b := testbed.Start(t, wsPool(addr, "")+"    connections: {max: 4}\n    timeouts: {connect: 200ms}\n")
		b.WaitHealthy(t, "chat", 1)
		open(t, b, 3)
		_, res := wsDial(t, b.Addr, "/socket")
		if res.StatusCode != 503 {
			t.Errorf("a fourth tunnel to a backend with connections.max 4 answered %d, want 503", res.StatusCode)
		}
		if n := b.Pool(t, "chat").Backend("w1").OpenConns(); n != 3 {
			t.Errorf("the backend has %d connections open, want the 3 tunnels'", n)
		}
		out := testbed.RawRequest(t, b.Addr, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 5*time.Second)
		if !strings.HasPrefix(out, "HTTP/1.1 200 ") {
			t.Errorf("with the tunnels' share of connections.max taken, a plain request got %q", out)
		}
	})
	t.Run("tunnels.max", func(t *testing.T) {
		b := testbed.Start(t, wsPool(addr, "")+"    tunnels: {max: 2}\n")
		b.WaitHealthy(t, "chat", 1)
		open(t, b, 2)
		_, res := wsDial(t, b.Addr, "/socket")
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != 503 || !strings.Contains(string(body), "maximum of 2 tunnels") {
			t.Errorf("a third tunnel with tunnels.max 2 answered %d %q", res.StatusCode, body)
		}
		st := b.Pool(t, "chat").TunnelStats()
		if st.Open != 2 || st.Refused != 1 {
			t.Errorf("tunnel stats %+v, want 2 open and 1 refused", st)
		}
		if !strings.Contains(b.Logs.String(), "tunnel refused: the pool has tunnels.max open") {
			t.Errorf("the refusal was not logged")
		}
	})
}

// TestIdleTunnelIsClosed: a tunnel that carries no byte either way for
// tunnels.idle_timeout is closed (the WebSocket client gets 1001) and
// gives back its connections; one that keeps talking stays open past it.
func TestIdleTunnelIsClosed(t *testing.T) {
	addr := testbed.Backend(t, &wsEcho{name: "w1"})
	b := testbed.Start(t, wsPool(addr, "")+"    tunnels: {idle_timeout: 800ms}\n")
	b.WaitHealthy(t, "chat", 1)
	be := b.Pool(t, "chat").Backend("w1")

	busy, _ := wsDial(t, b.Addr, "/busy")
	busy.read(t)
	quiet, _ := wsDial(t, b.Addr, "/quiet")
	quiet.read(t)
	start := time.Now()
	// The busy one sends every 100ms for 2s, more than two idle timeouts.
	for i := 0; time.Since(start) < 2*time.Second; i++ {
		busy.send(t, fmt.Sprintf("ping %d", i))
		if _, msg := busy.read(t); msg != fmt.Sprintf("w1: ping %d", i) {
			t.Fatalf("the busy tunnel answered %q after %s", msg, time.Since(start))
		}
		time.Sleep(100 * time.Millisecond) // the pace of the client's messages
	}
	op, msg := quiet.read(t)
	if op != 8 || len(msg) < 2 || binary.BigEndian.Uint16([]byte(msg)) != 1001 {
		t.Fatalf("the idle tunnel got frame %d %q; want close 1001", op, msg)
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Tunnels() == 1 && be.OpenConns() == 1 },
		"the idle tunnel's backend connection closed (tunnels %d, connections %d)", be.Tunnels(), be.OpenConns())
	if st := b.Pool(t, "chat").TunnelStats(); st.IdleClosed != 1 || st.Open != 1 {
		t.Errorf("tunnel stats %+v, want 1 closed for idleness and 1 open", st)
	}
	busy.send(t, "still there")
	if _, msg := busy.read(t); msg != "w1: still there" {
		t.Errorf("the busy tunnel after the idle one closed: %q", msg)
	}
}
