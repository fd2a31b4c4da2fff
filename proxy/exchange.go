package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/h1"
	"github.com/baton-lb/baton/pool"
)

const (
	// maxBufferedRequestBody: request bodies up to this size with a known
	// length are read before forwarding, so a request that never reached a
	// backend can be sent to another. Larger ones stream.
	maxBufferedRequestBody = 64 << 10
	// maxBufferedResponseBody: responses up to this size with a known length
	// are read whole before the client gets a byte, which frees the backend
	// connection at once and lets a failure mid-body become a clean 502 (or a
	// retry). Larger ones, chunked and close-delimited ones stream.
	maxBufferedResponseBody = 64 << 10
	ioBufSize               = 32 << 10
	// largeHeadRead: a response head on a connection whose last answer
	// had a large body is read this much at a time.
	largeHeadRead = 4 << 10
	maxLogTarget  = 1024
)

// exchange is one client request's trip through baton. Exchanges are pooled;
// a streamed response keeps its exchange until fasthttp closes the stream
// (CloseWithError), otherwise it goes back when the handler returns.
type exchange struct {
	s *Server

	pool *pool.Pool
	cfg  *config.Pool
	b    *pool.Backend
	conn *pool.Conn

	start    time.Time
	deadline time.Time // overall deadline of the exchange; zero: none
	class    pool.Class
	status   int           // the status the client got (or 499)
	upstream int           // the backend's status; 0 when it gave none
	ttfb     time.Duration // from the request's start to the backend's response headers
	group    int           // the request's route group
	outcome  pool.Outcome  // how it ended, recorded on its backend once

	// Version affinity.
	wantVersion []byte // the version the client asks for (cookie or forced)
	forced      bool
	canaryOn    bool // a canary takes traffic: the response names its version
	aff         *affinityTable
	clientID    [8]byte // from the client's verified affinity cookie, or new
	hasClientID bool
	// cookieCount is the counter a Set-Cookie was counted in; finish
	// counts it again (see setAffinity).
	cookieCount *pool.CookieCounter
	sharedPeer  bool   // the peer's address is shared (loopback, a trusted proxy): not a client's
	fwdClient   []byte // the client's address a trusted proxy forwarded
	addrBuf     []byte
	mac         hash.Hash // keyed with macKey; kept across requests
	macKey      *affinityKey
	macBuf      []byte
	cookieRaw   [cookieRaw + 2]byte
	appCode     []byte // the backend's application error code, for signatures
	excerpt     []byte // the start of an error response's body, for signatures
	attempts    int
	bytesOut    int64
	isHead      bool

	// Request body.
	bodyLen    int64  // >0 length, 0 none, h1.BodyChunked
	body       []byte // a buffered body (replayable)
	streamBody bool   // the body streams from the client (not replayable)
	wrote      int64  // bytes of this attempt the backend's kernel accepted

	// Response body streaming state.
	respBody   h1.BodyReader
	announced  bool // a bodiless-by-rule response announced a body
	closeConn  bool
	readErr    error
	clientConn net.Conn

	// For the access log after the handler returned.
	method, target, host []byte
	clientIP             []byte

	sc      h1.RequestScan
	ct      h1.ConnTokens
	scratch []byte
	pathBuf []byte
	absBuf  []byte
	ioBuf   []byte
	sp      *splicer // a body's pipe, see splice_linux.go
}

func (x *exchange) reset() {
	x.dropPipe()
	sp := x.sp
	s, sc, scratch, pathBuf, absBuf, ioBuf, body := x.s, x.sc, x.scratch, x.pathBuf, x.absBuf, x.ioBuf, x.body
	method, target, host, ip, code, exc, want := x.method, x.target, x.host, x.clientIP, x.appCode, x.excerpt, x.wantVersion
	mac, macKey, macBuf, fwd, addrBuf := x.mac, x.macKey, x.macBuf, x.fwdClient, x.addrBuf
	*x = exchange{s: s, sc: sc, scratch: scratch[:0], pathBuf: pathBuf[:0], absBuf: absBuf[:0], ioBuf: ioBuf,
		body: body[:0], method: method[:0], target: target[:0], host: host[:0], clientIP: ip[:0],
		appCode: code[:0], excerpt: exc[:0], wantVersion: want[:0], mac: mac, macKey: macKey, macBuf: macBuf,
		fwdClient: fwd[:0], addrBuf: addrBuf[:0], sp: sp}
	x.sc.Conn.Reset()
}

// serve handles one request. It returns true when a streamed response now
// owns the exchange.
func (x *exchange) serve(ctx *fasthttp.RequestCtx) bool {
	s := x.s
	h := &ctx.Request.Header
	x.isHead = h.IsHead()
	x.clientIP = appendIP(x.clientIP, ctx.RemoteAddr())
	// Copied for the access log and for error signatures, which are written
	// after the handler returns when a response streams.
	x.method = append(x.method, h.Method()...)
	uri := h.RequestURI()
	x.target = append(x.target, uri[:min(len(uri), maxLogTarget)]...)
	if s.accessLog {
		x.host = append(x.host, h.Host()...)
	}

	host := h.Host()
	if len(host) == 0 {
		return x.reply(ctx, 400, "the request has no Host header", true)
	}
	if s.redirect && !ctx.IsTLS() {
		return x.redirectHTTPS(ctx, host)
	}

	if h.IsConnect() {
		return x.reply(ctx, 405, "CONNECT is not supported", true)
	}
	x.sc.Scan(h.RawHeaders())
	if x.sc.XFF || x.sc.Addr || x.sc.Forwarded {
		// Not from a proxy baton trusts: its X-Forwarded-For is replaced
		// by the client's own address, X-Forwarded-Proto and -Host by
		// baton's, X-Real-IP and Forwarded dropped.
		x.sc.Trusted = s.trustedPeer(ctx.RemoteAddr())
		x.sc.XFF = x.sc.XFF && x.sc.Trusted
	}
	if x.sc.BadName != nil {
		return x.reply(ctx, 400, "invalid header field name "+strconv.Quote(string(x.sc.BadName[:min(len(x.sc.BadName), 64)])), true)
	}
	if x.sc.TE && h.ContentLength() != -1 {
		// fasthttp ignores "Transfer-Encoding: identity"; a request framed by
		// anything but chunked is ambiguous to someone on the path.
		return x.reply(ctx, 400, "Transfer-Encoding must be chunked", true)
	}
	if x.sc.BareLF || x.sc.Folded || requestLineLF(ctx) {
		// Normalised for the backend; the client connection ends after this
		// response so nothing after the irregular bytes is read as a request.
		ctx.SetConnectionClose()
	}
	target, absHost, ok := x.splitTarget(h.RequestURI())
	if !ok {
		return x.reply(ctx, 400, "the request target must be a path, an absolute http(s) URL or *", true)
	}
	if absHost != nil {
		host = absHost
	}
	var path []byte
	path, x.pathBuf = routePath(x.pathBuf, target)
	p := s.table.Load().Match(host, path)
	if p == nil {
		return x.reply(ctx, 404, "no route for this host and path", false)
	}
	x.pool = p
	x.cfg = p.Settings()
	x.group = p.Groups().Index(path)
	if t := x.cfg.Timeouts.Total; t > 0 {
		x.deadline = x.start.Add(t)
	}
	x.affinity(ctx, p)
	if x.wantsUpgrade(h) {
		return x.tunnel(ctx, p, target, absHost)
	}

	switch cl := h.ContentLength(); {
	case cl == -1:
		x.bodyLen, x.streamBody = h1.BodyChunked, true
		// fasthttp reads the trailer section itself and accepts a bare LF
		// there, which a proxy in front of baton may frame differently. The
		// connection ends after a chunked request, so nothing after its body
		// is ever read as another request.
		ctx.SetConnectionClose()
	case cl > 0:
		if int64(cl) > s.maxBody {
			return x.reply(ctx, 413, "the request body is larger than "+strconv.FormatInt(s.maxBody, 10)+" bytes", true)
		}
		x.bodyLen = int64(cl)
		if cl <= maxBufferedRequestBody {
			if err := x.readBody(ctx, cl); err != nil {
				return x.replyClientError(ctx, err)
			}
		} else {
			x.streamBody = true
		}
	}

	idempotent := h.IsGet() || h.IsHead() || h.IsOptions()
	var tried *pool.Backend
	for attempt := 1; ; attempt++ {
		b, err := p.PickVersion(tried, x.wantVersion, x.forced)
		if err != nil {
			x.class = pool.ClassNoBackend
			return x.reply(ctx, 503, "no backend of pool "+p.Name()+" is available", false)
		}
		x.b, x.attempts, x.wrote = b, attempt, 0
		st, err := x.roundTrip(ctx, b, target, absHost)
		if err == nil {
			return x.respond(ctx)
		}
		x.class = classify(err, st, 0)
		if x.conn != nil {
			x.conn.Close()
			x.conn = nil
		}
		if x.class == pool.ClassClientGone || x.class == pool.ClassClientError {
			return x.replyClientError(ctx, err)
		}
		if x.class == pool.ClassNoResources {
			s.log.Error().Err(err).Str("pool", p.Name()).Msg("no descriptor or memory left to reach a backend")
			return x.reply(ctx, 503, noResourcesText, false)
		}
		b.NoteError(x.class.String() + ": " + err.Error())
		// Never reached the backend: safe to send anywhere, whatever the
		// method, as long as the body can be sent again. Possibly reached:
		// only idempotent requests with a replayable body. Timeouts are not
		// retried: that would double the load on a slow backend.
		notSent := st == stageConnect || (st == stageSend && x.wrote == 0)
		retry := attempt < x.cfg.Retries.Attempts &&
			((notSent && x.replayable()) ||
				(idempotent && !x.streamBody && (x.class == pool.ClassReset || x.class == pool.ClassBadResponse)))
		if retry && p.AllowRetry() {
			x.b = nil
			x.release(b, 0)
			tried = b
			ctx.Response.Reset()
			// Reset also clears this; without it fasthttp would add a
			// Content-Type the backend did not send.
			ctx.Response.Header.SetNoDefaultContentType(true)
			s.log.Debug().Str("pool", p.Name()).Str("backend", b.Name()).Str("outcome", x.class.String()).
				Err(err).Msg("retrying on another backend")
			continue
		}
		s.log.Warn().Str("pool", p.Name()).Str("backend", b.Name()).Str("outcome", x.class.String()).
			Err(err).Msg("request failed")
		return x.reply(ctx, x.class.Status(), x.failureText(), false)
	}
}

// requestLineLF reports whether the connection must close after this
// request: its request line ended with a bare LF, or a bare-LF head came
// after it.
func requestLineLF(ctx *fasthttp.RequestCtx) bool {
	w := watchOf(ctx.Conn())
	return w != nil && w.closeAfter()
}

// replayable: the request body can be sent again (none, buffered, or a
// stream of which nothing was read yet).
func (x *exchange) replayable() bool {
	return !x.streamBody || x.wrote == 0
}

// noResourcesText answers a request baton could not forward for lack of
// descriptors or memory of its own.
const noResourcesText = "baton is out of file descriptors or memory; retry in a moment"

func (x *exchange) failureText() string {
	switch x.class {
	case pool.ClassNoResources:
		return noResourcesText
	case pool.ClassConnectFailed:
		return "could not connect to the backend"
	case pool.ClassConnectTimeout:
		return "connecting to the backend timed out"
	case pool.ClassPoolFull:
		return "the backend has no free connection"
	case pool.ClassTimeout:
		return "the backend did not respond in time"
	case pool.ClassBadResponse:
		return "the backend sent an invalid response"
	}
	return "the backend closed the connection"
}

// splitTarget returns the target to send (origin-form) and, for an
// absolute-form target, its authority, which replaces Host (RFC 9112 §3.2.2).
func (x *exchange) splitTarget(uri []byte) (target, host []byte, ok bool) {
	if len(uri) > 0 && uri[0] == '/' || string(uri) == "*" {
		return uri, nil, true
	}
	var rest []byte
	switch {
	case len(uri) > 7 && h1.EqualFoldLower(uri[:7], "http://"):
		rest = uri[7:]
	case len(uri) > 8 && h1.EqualFoldLower(uri[:8], "https://"):
		rest = uri[8:]
	default:
		return nil, nil, false
	}
	i := bytes.IndexAny(rest, "/?#")
	if i < 0 {
		i = len(rest)
	}
	host = rest[:i]
	if len(host) == 0 || bytes.IndexByte(host, '@') >= 0 {
		return nil, nil, false
	}
	target = rest[i:]
	if len(target) == 0 || target[0] != '/' {
		x.absBuf = append(append(x.absBuf[:0], '/'), target...)
		target = x.absBuf
	}
	return target, host, true
}

// readBody reads a small request body whole, so it can be sent again.
func (x *exchange) readBody(ctx *fasthttp.RequestCtx, n int) error {
	if cap(x.body) < n {
		x.body = make([]byte, n, max(n, 4<<10))
	}
	x.body = x.body[:n]
	r := ctx.Request.BodyStream()
	if r == nil {
		return &clientError{err: io.ErrUnexpectedEOF, gone: true}
	}
	// Like a streamed body, a small one may take as long as it keeps
	// moving: body_idle_timeout between bytes, not the header timeout for
	// all of it (a checkout form on a slow mobile link).
	cc := ctx.Conn()
	for got := 0; got < n; {
		_ = cc.SetReadDeadline(x.bound(time.Now().Add(x.s.bodyIdle)))
		k, err := r.Read(x.body[got:])
		got += k
		if got == n {
			break
		}
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return clientReadError(err)
		}
	}
	return nil
}

func clientReadError(err error) error {
	switch {
	case isTimeout(err):
		return &clientError{err: err, timeout: true}
	case isClosedByPeer(err):
		return &clientError{err: err, gone: true}
	}
	return &clientError{err: err}
}

// replyClientError answers a request whose body baton could not read. The
// reason is named without echoing internal addresses.
func (x *exchange) replyClientError(ctx *fasthttp.RequestCtx, err error) bool {
	var ce *clientError
	errors.As(err, &ce)
	x.class = classify(err, stageSend, 0)
	switch {
	case errors.Is(err, errBodyTooLarge):
		return x.reply(ctx, 413, "the request body is larger than "+strconv.FormatInt(x.s.maxBody, 10)+" bytes", true)
	case ce != nil && ce.timeout:
		return x.reply(ctx, 408, "the request body did not arrive in time", true)
	case ce != nil && ce.gone:
		return x.reply(ctx, 400, "the request body ended before its announced length", true)
	}
	return x.reply(ctx, 400, "the request body's chunked encoding is malformed", true)
}

// roundTrip sends the request to b and reads the response head (and a small
// body) into ctx.Response.
func (x *exchange) roundTrip(ctx *fasthttp.RequestCtx, b *pool.Backend, target, absHost []byte) (stage, error) {
	x.dropPipe() // an earlier attempt's answer, not sent
	h := &ctx.Request.Header
	now := time.Now()
	conn, err := b.Conns().Get(pool.Nanotime(), x.bound(now.Add(x.cfg.Timeouts.Connect)))
	if err != nil {
		return stageConnect, err
	}
	x.conn = conn
	nc := conn.NetConn()
	headerDeadline := x.bound(now.Add(x.cfg.Timeouts.ResponseHeader))
	if err := nc.SetDeadline(headerDeadline); err != nil {
		return stageSend, err
	}
	proto := "http"
	if x.s.https && ctx.IsTLS() {
		proto = "https"
	}
	head := h1.AppendRequestHead(conn.Head(), h, &x.sc, target, absHost, x.clientIP, proto, x.bodyLen)
	var body []byte
	if !x.streamBody {
		body = x.body
	}
	x.wrote, err = conn.WriteHead(head, body)
	if err != nil {
		return stageSend, err
	}
	if x.streamBody {
		if err := x.sendBody(ctx, conn); err != nil {
			return stageSend, err
		}
		if err := nc.SetDeadline(x.bound(time.Now().Add(x.cfg.Timeouts.ResponseHeader))); err != nil {
			return stageSend, err
		}
	}
	br := conn.Reader()
	large := conn.LargeExpected()
	if large {
		// The last answer here was piped: read this head in small reads
		// and leave a large body in the socket (see splice_linux.go).
		conn.CapReads(largeHeadRead)
	}
	rh, scratch, err := h1.ReadResponseHead(br, &ctx.Response.Header, x.isHead, &x.ct, x.scratch)
	x.scratch = scratch
	if large {
		conn.CapReads(0)
	}
	if err != nil {
		return stageResponse, err
	}
	conn.ExpectLarge(rh.Framing == h1.FrameLength && rh.Length >= 2*spliceMinBody)
	x.closeConn, x.announced = rh.CloseConn, rh.Announced
	framing := rh.Framing
	if framing == h1.FrameLength && rh.Length <= maxBufferedResponseBody {
		piped, err := x.readBodyToPipe(ctx, conn, int(rh.Length))
		if !piped && err == nil {
			err = x.readSmallBody(ctx, conn, int(rh.Length))
		}
		if err != nil {
			return stageBody, err
		}
		framing = h1.FrameNone
	}
	x.respBody.Reset(br, framing, rh.Length, x)
	return stageResponse, nil
}

// bound caps t at the exchange's overall deadline.
func (x *exchange) bound(t time.Time) time.Time {
	if !x.deadline.IsZero() && x.deadline.Before(t) {
		return x.deadline
	}
	return t
}

// sendBody streams the request body from the client to the backend.
func (x *exchange) sendBody(ctx *fasthttp.RequestCtx, conn *pool.Conn) error {
	r := ctx.Request.BodyStream()
	if r == nil {
		return &clientError{err: io.ErrUnexpectedEOF, gone: true}
	}
	if x.ioBuf == nil {
		x.ioBuf = make([]byte, ioBufSize)
	}
	// Room for a chunk-size line before the data and CRLF after it.
	const pre = 10
	buf := x.ioBuf
	cc := ctx.Conn()
	nc := conn.NetConn()
	var sent int64
	for {
		now := time.Now()
		_ = cc.SetReadDeadline(x.bound(now.Add(x.s.bodyIdle)))
		n, rerr := r.Read(buf[pre : len(buf)-2])
		if n > 0 {
			sent += int64(n)
			if sent > x.s.maxBody {
				return &clientError{err: errBodyTooLarge}
			}
			out := buf[pre : pre+n]
			if x.bodyLen == h1.BodyChunked {
				size := strconv.AppendInt(buf[:0:pre], int64(n), 16)
				k := len(size) + 2
				start := pre - k
				copy(buf[start:], size)
				buf[pre-2], buf[pre-1] = '\r', '\n'
				buf[pre+n], buf[pre+n+1] = '\r', '\n'
				out = buf[start : pre+n+2]
			}
			_ = nc.SetWriteDeadline(x.bound(now.Add(x.cfg.Timeouts.Idle)))
			w, werr := conn.Write(out)
			x.wrote += int64(w)
			if werr != nil {
				return werr
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return clientReadError(rerr)
		}
	}
	if x.bodyLen == h1.BodyChunked {
		w, err := conn.Write([]byte("0\r\n\r\n"))
		x.wrote += int64(w)
		return err
	}
	if sent != x.bodyLen {
		return &clientError{err: io.ErrUnexpectedEOF, gone: true}
	}
	return nil
}

// readSmallBody reads a response body of known small length into the
// response, so the backend connection is free before the client reads.
func (x *exchange) readSmallBody(ctx *fasthttp.RequestCtx, conn *pool.Conn, n int) error {
	br := conn.Reader()
	if br.Buffered() < n {
		_ = conn.NetConn().SetReadDeadline(x.bound(time.Now().Add(x.cfg.Timeouts.Idle)))
	}
	return h1.CopyLength(ctx.Response.BodyWriter(), br, n)
}

// respond completes a request whose response head arrived: either the body
// is already in the response (or there is none) and the backend connection
// goes back, or the body streams through this exchange.
func (x *exchange) respond(ctx *fasthttp.RequestCtx) bool {
	x.status = ctx.Response.StatusCode()
	x.upstream = x.status
	x.ttfb = time.Since(x.start)
	x.class = classify(nil, stageResponse, x.status)
	if x.status >= 500 {
		x.noteFailureDetails(ctx)
	}
	x.setAffinity(ctx)
	x.clientConn = ctx.Conn()
	framing := x.respBody.Framing()
	if framing != h1.FrameNone && framing != h1.FrameLength && !ctx.Request.Header.IsHTTP11() {
		// An HTTP/1.0 client cannot read chunked framing (RFC 9112 §6.1),
		// so a body of unknown length is read whole and sent with its length.
		if err := x.readWhole(ctx); err != nil {
			x.fail(err)
			x.releaseConn(false)
			return x.reply(ctx, 502, "the backend's response is too large for an HTTP/1.0 client or broke off", false)
		}
		framing = h1.FrameNone
	}
	if x.piped() {
		// The body is read (into a pipe): the backend connection goes
		// back, and fasthttp sends the head alone so that the body can
		// go to the socket after it.
		x.bytesOut = 0
		x.releaseConn(!x.closeConn)
		ctx.Response.ImmediateHeaderFlush = true
		ctx.Response.SetBodyStream(x, x.pipedLen())
		return true
	}
	if framing == h1.FrameNone {
		if x.announced && x.conn != nil {
			x.conn.MarkSuspect()
		}
		x.bytesOut = int64(len(ctx.Response.Body()))
		x.releaseConn(!x.closeConn)
		x.finish()
		return false
	}
	size := -1
	if framing == h1.FrameLength {
		size = int(x.respBody.Left())
	}
	ctx.Response.SetBodyStream(x, size)
	return true
}

func (x *exchange) releaseConn(reuse bool) {
	if x.conn == nil {
		return
	}
	// Bytes left over after a complete response (a body sent with a HEAD
	// answer, junk after the body) would be read as the next response.
	if reuse && x.conn.Reader().Buffered() == 0 {
		x.conn.Release(pool.Nanotime())
	} else {
		x.conn.Close()
	}
	x.conn = nil
}

// Read streams the response body from the backend; fasthttp calls it while
// writing the response to the client.
func (x *exchange) Read(p []byte) (int, error) {
	if x.respBody.Done() {
		return 0, io.EOF
	}
	if x.readErr != nil {
		return 0, x.readErr
	}
	n, err := x.respBody.Read(p)
	x.bytesOut += int64(n)
	if err != nil && err != io.EOF {
		return n, x.fail(err)
	}
	return n, err
}

// maxHTTP10Body caps a body of unknown length read whole for an HTTP/1.0
// client.
const maxHTTP10Body = 16 << 20

var errHTTP10TooLarge = fmt.Errorf("response body of unknown length over %d bytes for an HTTP/1.0 client", maxHTTP10Body)

// readWhole reads the rest of the streamed body into the response.
func (x *exchange) readWhole(ctx *fasthttp.RequestCtx) error {
	if x.ioBuf == nil {
		x.ioBuf = make([]byte, ioBufSize)
	}
	for n := 0; ; {
		k, err := x.respBody.Read(x.ioBuf)
		ctx.Response.AppendBody(x.ioBuf[:k])
		n += k
		if n > maxHTTP10Body {
			return errHTTP10TooLarge
		}
		if err == io.EOF || (err == nil && x.respBody.Done()) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// AwaitData renews deadlines before the response body's next read waits for
// the network (h1.Awaiter): the backend's idle deadline, and the client's
// write deadline, which fasthttp set once for the whole response.
func (x *exchange) AwaitData() {
	now := time.Now()
	_ = x.conn.NetConn().SetReadDeadline(x.bound(now.Add(x.cfg.Timeouts.Idle)))
	_ = x.clientConn.SetWriteDeadline(now.Add(x.s.bodyIdle))
}

// SupportsBodyWriteTo tells fasthttp that WriteTo may replace Read.
func (x *exchange) SupportsBodyWriteTo() bool { return true }

// WriteTo copies the response body straight from the backend connection's
// read buffer into the client's writer: no intermediate copy and no
// allocation. For chunked bodies each piece is one client chunk, written and
// flushed as it arrives.
func (x *exchange) WriteTo(w io.Writer) (int64, error) {
	if x.piped() {
		return x.writePiped()
	}
	if x.readErr != nil && !x.respBody.Done() {
		return 0, x.readErr
	}
	n, rerr, werr := x.respBody.CopyTo(w)
	x.bytesOut += n
	if rerr != nil {
		return n, x.fail(rerr)
	}
	return n, werr
}

// fail records a failure reading the backend's body.
func (x *exchange) fail(err error) error {
	x.readErr = err
	x.class = classify(err, stageBody, 0)
	if x.b != nil {
		x.b.NoteError(x.class.String() + " in the response body: " + err.Error())
	}
	return err
}

// CloseWithError ends a streamed response; fasthttp calls it once, with the
// error that stopped writing to the client (nil when all went out).
func (x *exchange) CloseWithError(werr error) error {
	switch {
	case x.readErr != nil:
		// Already classified as the backend's failure.
	case werr != nil || !x.respBody.Done():
		x.class = pool.ClassClientGone
	}
	x.releaseConn(x.respBody.Done() && !x.closeConn && x.readErr == nil && werr == nil)
	x.dropPipe()
	x.clientConn = nil
	x.finish()
	x.s.putExchange(x)
	return nil
}

// finish records the outcome on the backend and writes the access log line.
func (x *exchange) finish() {
	if c := x.cookieCount; c != nil {
		// The client starts the cookie's Max-Age when it receives the
		// head, which for a streamed response may be long after the
		// backend's first byte: counted again now, with the later
		// expiry. Twice is safe (the count is an upper bound), but only
		// needed past a second: the count's 2 s slack covers less, and
		// the figures operators read stay one per cookie.
		x.cookieCount = nil
		if now := time.Now(); now.Sub(x.start.Add(x.ttfb)) >= time.Second {
			c.Issued(now, x.cfg.Affinity.MaxAge)
		}
	}
	b := x.b
	if b != nil {
		x.b = nil // released once, even if logging below panics
		x.release(b, x.upstream)
	}
	if !x.s.accessLog {
		return
	}
	status := x.status
	if x.class == pool.ClassClientGone {
		status = 499
	}
	e := x.s.access.Info().
		Bytes("client", x.clientIP).
		Bytes("method", x.method).
		Bytes("host", x.host).
		Bytes("uri", x.target).
		Int("status", status).
		Int64("bytes", x.bytesOut).
		Dur("duration", time.Since(x.start)).
		Str("outcome", x.class.String()).
		Int("attempts", x.attempts)
	if x.pool != nil {
		e = e.Str("pool", x.pool.Name())
	}
	if b != nil {
		e = e.Str("backend", b.Name()).Str("version", b.Version())
	}
	e.Send()
}

// release records how the request ended on b, once, as one Outcome;
// status is the backend's (0 when it gave none). The backend decides what
// of it is evidence.
func (x *exchange) release(b *pool.Backend, status int) {
	o := &x.outcome
	sent := x.status
	if x.class == pool.ClassClientGone {
		sent = 499
	}
	*o = pool.Outcome{Class: x.class, Status: status, TTFB: x.ttfb, Group: x.group, Forced: x.forced, Judged: x.canaryOn,
		Method: x.method, Target: x.target, AppCode: x.appCode, Excerpt: x.excerpt,
		Start: x.start, Sent: sent, Bytes: x.bytesOut}
	if x.canaryOn {
		o.Client = x.clientKey()
	}
	b.Finish(o)
	o.Method, o.Target, o.AppCode, o.Excerpt = nil, nil, nil, nil
}

// reply answers the client with baton's own response. closeConn ends the
// client connection after it, for malformed requests.
// redirectHTTPS answers a plain-HTTP request with a permanent redirect
// (308, which keeps the method and body) to the same URL on HTTPS.
func (x *exchange) redirectHTTPS(ctx *fasthttp.RequestCtx, host []byte) bool {
	x.class = pool.ClassOK
	if h, _, err := net.SplitHostPort(string(host)); err == nil {
		host = []byte(h)
	}
	loc := x.scratch[:0]
	loc = append(loc, "https://"...)
	loc = append(loc, host...)
	if x.s.httpsPort != "" {
		loc = append(loc, ':')
		loc = append(loc, x.s.httpsPort...)
	}
	uri := ctx.Request.Header.RequestURI()
	if len(uri) == 0 || uri[0] != '/' {
		// An absolute-form or * target: redirect to the path of the URL.
		uri = ctx.URI().RequestURI()
	}
	loc = append(loc, uri...)
	x.scratch = loc
	ctx.Response.Reset()
	ctx.Response.Header.SetNoDefaultContentType(true)
	ctx.SetStatusCode(fasthttp.StatusPermanentRedirect)
	ctx.Response.Header.SetBytesV("Location", loc)
	x.status = fasthttp.StatusPermanentRedirect
	x.finish()
	return false
}

func (x *exchange) reply(ctx *fasthttp.RequestCtx, status int, msg string, closeConn bool) bool {
	ctx.Response.Reset()
	ctx.Response.Header.SetNoDefaultContentType(true)
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.Response.AppendBodyString("baton: ")
	ctx.Response.AppendBodyString(msg)
	ctx.Response.AppendBodyString("\n")
	if closeConn {
		ctx.SetConnectionClose()
	}
	if x.class == pool.ClassOK && status >= 400 {
		x.class = pool.ClassClientError
	}
	x.status = status
	x.bytesOut = int64(len(ctx.Response.Body()))
	x.finish()
	return false
}

// appendIP appends the client's IP address without allocating.
func appendIP(dst []byte, a net.Addr) []byte {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap().AppendTo(dst)
		}
	}
	if a == nil {
		return dst
	}
	return append(dst, a.String()...)
}
