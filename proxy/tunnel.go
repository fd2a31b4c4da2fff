package proxy

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/internal/h1"
	"github.com/baton-lb/baton/pool"
)

// Upgrade requests (WebSocket and the like) are tunnelled: fasthttp's
// client cannot carry a 101, so baton dials the backend itself, sends the
// request with its Upgrade, and on 101 hijacks the client connection and
// copies bytes both ways until one side closes. A tunnel counts as in
// flight for its backend: a drain waits for it, up to the drain timeout,
// then closes it, with a WebSocket close frame (1001, going away) where the
// protocol is WebSocket.

var upgradeToken = []byte("upgrade")

// wantsUpgrade: the request asks to switch protocols (Connection: upgrade
// with an Upgrade field).
func (x *exchange) wantsUpgrade(h *fasthttp.RequestHeader) bool {
	return x.sc.Conn.Has(upgradeToken) && len(h.Peek("Upgrade")) > 0
}

// hopByHopResponse are the response fields a 101 does not pass on as they
// came: baton writes its own Connection and Upgrade.
func hopByHopResponse(k []byte) bool {
	switch len(k) {
	case 7:
		return h1.EqualFoldLower(k, "upgrade") || h1.EqualFoldLower(k, "trailer")
	case 10:
		return h1.EqualFoldLower(k, "connection") || h1.EqualFoldLower(k, "keep-alive")
	case 14:
		return h1.EqualFoldLower(k, "content-length")
	case 16:
		return h1.EqualFoldLower(k, "proxy-connection")
	case 17:
		return h1.EqualFoldLower(k, "transfer-encoding")
	}
	return false
}

// tunnel serves an Upgrade request. The request's head for the backend is
// built now, while the request is readable; everything that takes a
// resource (picking a backend, dialling it) happens in the hijack
// handler, which fasthttp skips when the client is already gone, so
// nothing can be left held. The handler answers on the raw connection.
func (x *exchange) tunnel(ctx *fasthttp.RequestCtx, p *pool.Pool, target, absHost []byte) bool {
	h := &ctx.Request.Header
	if cl := h.ContentLength(); cl > 0 || cl == -1 { // a length, or chunked
		return x.reply(ctx, 400, "an Upgrade request must not have a body", true)
	}
	want := append([]byte(nil), h.Peek("Upgrade")...)
	proto := "http"
	if ctx.IsTLS() {
		proto = "https"
	}
	head := h1.AppendRequestHead(nil, h, &x.sc, target, absHost, x.clientIP, proto, 0)
	head = append(head[:len(head)-2], "Connection: Upgrade\r\nUpgrade: "...)
	head = append(head, want...)
	head = append(head, "\r\n\r\n"...)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) { x.upgradeOn(c, p, head, want) })
	return true
}

// upgradeOn runs in the hijack handler: it sends the request to a backend
// and, on 101, carries bytes both ways; any other outcome is answered on
// the client connection, which then closes.
func (x *exchange) upgradeOn(c net.Conn, p *pool.Pool, head, want []byte) {
	defer x.s.putExchange(x)
	b, err := p.PickVersion(nil, x.wantVersion, x.forced)
	if err != nil {
		x.class = pool.ClassNoBackend
		x.answer(c, 503, "no backend of pool "+p.Name()+" is available")
		return
	}
	x.b, x.attempts = b, 1
	if !p.ReserveTunnel() {
		x.answer(c, 503, fmt.Sprintf("pool %s has its maximum of %d tunnels open; retry in a moment", p.Name(), x.cfg.Tunnels.Max))
		return
	}
	idleClosed := false
	defer func() { p.ReleaseTunnel(idleClosed) }()
	fail := func(err error, st stage, bc *pool.Conn) {
		if bc != nil {
			bc.Close()
		}
		x.class = classify(err, st, 0)
		if x.class.BackendsFault() {
			b.NoteError(x.class.String() + ": " + err.Error())
		}
		x.s.log.Warn().Str("pool", p.Name()).Str("backend", b.Name()).Str("outcome", x.class.String()).
			Err(err).Msg("upgrade request failed")
		x.answer(c, x.class.Status(), x.failureText())
	}
	// A connection of its own, under the backend's connections.max.
	bc, err := b.Conns().Dedicated(time.Now().Add(x.cfg.Timeouts.Connect))
	if err != nil {
		fail(err, stageConnect, nil)
		return
	}
	nc := bc.NetConn()
	_ = nc.SetDeadline(time.Now().Add(x.cfg.Timeouts.ResponseHeader))
	if _, err := nc.Write(head); err != nil {
		fail(err, stageSend, bc)
		return
	}
	br := bc.Reader()
	resp := &fasthttp.Response{}
	resp.Header.SetNoDefaultContentType(true) // only what the backend sent
	if err := resp.ReadLimitBody(br, 1<<20); err != nil {
		fail(err, stageResponse, bc)
		return
	}
	x.ttfb = time.Since(x.start)
	status := resp.StatusCode()
	x.status, x.upstream = status, status
	if status != fasthttp.StatusSwitchingProtocols {
		// The backend declined the upgrade: its answer goes to the client.
		bc.Close()
		x.class = classify(nil, stageResponse, status)
		if status >= 500 {
			if name := x.cfg.Judge.ErrorCodeHeader; name != "" {
				if v := resp.Header.Peek(name); len(v) > 0 {
					x.appCode = append(x.appCode[:0], v[:min(len(v), 64)]...)
				}
			}
			body := resp.Body()
			x.excerpt = append(x.excerpt[:0], body[:min(len(body), x.excerptMax())]...)
		}
		resp.Header.Del("Upgrade")
		resp.SetConnectionClose()
		_ = c.SetWriteDeadline(time.Now().Add(x.cfg.Timeouts.ResponseHeader))
		w := bufio.NewWriter(c)
		if resp.Write(w) == nil {
			_ = w.Flush()
		}
		x.bytesOut = int64(len(resp.Body()))
		x.finish()
		return
	}
	_ = nc.SetDeadline(time.Time{})
	x.class = pool.ClassOK
	out := append([]byte(nil), "HTTP/1.1 101 Switching Protocols\r\n"...)
	resp.Header.VisitAll(func(k, v []byte) {
		if hopByHopResponse(k) {
			return
		}
		out = append(out, k...)
		out = append(out, ": "...)
		out = append(out, v...)
		out = append(out, "\r\n"...)
	})
	up := resp.Header.Peek("Upgrade")
	if len(up) == 0 {
		up = want
	}
	out = append(out, "Connection: Upgrade\r\nUpgrade: "...)
	out = append(out, up...)
	out = append(out, "\r\n\r\n"...)
	t := &tunnel{x: x, bconn: bc, backend: nc, br: br, head: out, websocket: h1.EqualFoldLower(up, "websocket"),
		idleTimeout: x.cfg.Tunnels.IdleTimeout, pumped: make(chan struct{})}
	t.run(c)
	idleClosed = t.idle.Load()
}

// answer writes a short error response on a hijacked connection and
// finishes the exchange.
func (x *exchange) answer(c net.Conn, status int, msg string) {
	x.status = status
	if x.class == pool.ClassOK && status >= 400 {
		x.class = pool.ClassClientError
	}
	body := "baton: " + msg + "\n"
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, _ = fmt.Fprintf(c, "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		status, fasthttp.StatusMessage(status), len(body), body)
	x.bytesOut = int64(len(body))
	x.finish()
}

// tunnel is one open Upgrade connection between a client and a backend.
type tunnel struct {
	x         *exchange
	bconn     *pool.Conn    // the backend connection, counted under its cap
	backend   net.Conn      // bconn's connection, for reads, writes and deadlines
	br        *bufio.Reader // the backend's bytes after the 101 head
	head      []byte        // the 101 head for the client
	websocket bool
	client    net.Conn // as hijacked: reads see bytes fasthttp had buffered
	clientRaw net.Conn // the connection itself, to close

	idleTimeout time.Duration // tunnels.idle_timeout
	active      atomic.Int64  // Nanotime of the last byte either way

	pumped    chan struct{} // closed when backend → client copying ends
	away      atomic.Bool   // a drain timed out or the tunnel idled: the client is told, then closed
	idle      atomic.Bool   // closed for idleness
	closeOnce sync.Once
}

func (t *tunnel) run(c net.Conn) {
	t.client, t.clientRaw = c, c
	// fasthttp's hijacked connection does not close until this handler
	// returns; closing the connection under it ends a pump's read at once.
	if u, ok := c.(interface{ UnsafeConn() net.Conn }); ok {
		t.clientRaw = u.UnsafeConn()
	}
	if w := watchOf(t.clientRaw); w != nil {
		w.off.Store(true) // the bytes are the new protocol's now, both ways at once
	}
	x := t.x
	remove := x.b.AddTunnel(t.goingAway)
	x.s.addTunnel(t)
	defer func() {
		x.s.removeTunnel(t)
		remove()
		x.finish()
	}()
	if _, err := c.Write(t.head); err != nil {
		t.close()
		return
	}
	x.bytesOut = int64(len(t.head))
	t.active.Store(pool.Nanotime())
	up := make(chan struct{})
	go func() {
		defer close(up)
		_, _ = t.pump(t.backend, c, t.clientRaw, t.backend) // client → backend
	}()
	go func() {
		defer close(t.pumped)
		n, _ := t.pump(c, t.br, t.backend, t.clientRaw) // backend → client
		x.bytesOut += n
	}()
	select {
	case <-up:
	case <-t.pumped:
	}
	if t.away.Load() {
		// A drain ran out of time or the tunnel idled: once nothing more
		// is copied to the client, a WebSocket gets its close frame.
		<-t.pumped
		if t.websocket {
			_ = t.clientRaw.SetWriteDeadline(time.Now().Add(2 * time.Second))
			_, _ = t.clientRaw.Write(wsCloseFrame(1001, "going away"))
		}
	}
	t.close()
	<-up
	<-t.pumped
}

// pump copies src to dst until either ends. from is the connection src
// reads from and to the one dst writes to, for their deadlines: a read that
// waits tunnels.idle_timeout while the other direction was quiet too, or a
// write that cannot go out for that long, ends the tunnel as idle.
func (t *tunnel) pump(dst io.Writer, src io.Reader, from, to net.Conn) (int64, error) {
	buf := make([]byte, 32<<10)
	var n int64
	idle := t.idleTimeout
	_ = from.SetReadDeadline(time.Now().Add(idle))
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			t.active.Store(pool.Nanotime())
			_ = to.SetWriteDeadline(time.Now().Add(idle))
			if t.away.Load() {
				// goingAway may have set its shorter deadline just before
				// the line above: a client that stopped reading must not
				// hold a closing tunnel for the idle timeout.
				_ = to.SetWriteDeadline(time.Now().Add(2 * time.Second))
			}
			w, werr := dst.Write(buf[:k])
			n += int64(w)
			if werr != nil {
				if isTimeout(werr) {
					t.idled()
				}
				return n, werr
			}
			t.active.Store(pool.Nanotime())
		}
		if rerr == nil {
			continue
		}
		if !isTimeout(rerr) || t.away.Load() {
			return n, rerr
		}
		// No byte this way for idle: the tunnel is idle only if the other
		// way was quiet as long.
		quiet := time.Duration(pool.Nanotime() - t.active.Load())
		if quiet >= idle {
			t.idled()
			return n, rerr
		}
		_ = from.SetReadDeadline(time.Now().Add(idle - quiet))
	}
}

// idled ends a tunnel that carried nothing for tunnels.idle_timeout, as a
// drain past its timeout would.
func (t *tunnel) idled() {
	if !t.idle.Swap(true) {
		t.x.s.log.Info().Str("pool", t.x.pool.Name()).Str("backend", t.x.b.Name()).Dur("idle", t.idleTimeout).
			Msg("tunnel closed: no byte either way for tunnels.idle_timeout")
	}
	t.goingAway()
}

// close ends both sides.
func (t *tunnel) close() {
	t.closeOnce.Do(func() {
		t.bconn.Close()
		_ = t.clientRaw.Close()
	})
}

// goingAway ends the tunnel for a drain that ran out of time (or for
// idleness): the backend side closes, and run, once nothing more is copied
// to the client, sends a WebSocket client a close frame 1001 "going away".
func (t *tunnel) goingAway() {
	if t.away.Swap(true) {
		return
	}
	// A client that stopped reading cannot hold the tunnel open: its
	// pending write fails after this.
	_ = t.clientRaw.SetWriteDeadline(time.Now().Add(2 * time.Second))
	t.bconn.Close()
}

// wsCloseFrame is an unmasked WebSocket close frame (server to client,
// RFC 6455 §5.5.1) with a status code and a short reason.
func wsCloseFrame(code uint16, reason string) []byte {
	f := make([]byte, 4, 4+len(reason))
	f[0] = 0x88 // FIN, opcode close
	f[1] = byte(2 + len(reason))
	binary.BigEndian.PutUint16(f[2:], code)
	return append(f, reason...)
}
