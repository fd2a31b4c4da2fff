// Package proxy is baton's request path: the client-facing fasthttp server,
// routing, forwarding to a backend picked by the pool package, retries, and
// the classification of every outcome.
package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/listener"
	"github.com/baton-lb/baton/pool"
)

// Server serves client traffic. SetTable swaps the routing table atomically;
// requests in flight keep the table and pools they started with.
//
// It is safe for concurrent use. Server values must not be copied.
type Server struct {
	// piped counts response bodies sent through a pipe; readBack those
	// whose pipe ran out of room and were read into memory after all.
	piped, readBack atomic.Uint64
	log             zerolog.Logger
	access          zerolog.Logger
	accessLog       bool
	maxBody         int64
	bodyIdle        time.Duration
	table           atomic.Pointer[Table]
	srv             *fasthttp.Server
	exchanges       sync.Pool
	// gate caps client connections across the HTTP and HTTPS listeners,
	// tunnels included (fasthttp's own cap does not see hijacked ones).
	gate *listener.Gate

	// redirect answers plain-HTTP requests with a redirect to HTTPS on
	// httpsPort ("" for 443).
	redirect  bool
	httpsPort string
	https     bool // an HTTPS listener may serve: ask each request whether it came by TLS

	trusted  []netip.Prefix // server.trusted_proxies
	grace    time.Duration  // server.shutdown_grace
	draining atomic.Bool    // Shutdown began: every response closes its connection

	// keys sign affinity cookies; affinity holds each pool's table of
	// them (*pool.Pool → *affinityTable), rebuilt when keys or versions
	// change.
	keys     atomic.Pointer[keyRing]
	affinity sync.Map

	mu       sync.Mutex // protects shutdown, lns and tunnels
	shutdown bool       // Shutdown was called
	lns      []*listener.Listener
	tunnels  map[*tunnel]struct{}
}

// New returns a server for cfg's client-facing settings. Those settings are
// read once: changing them needs a restart, unlike pools and routes.
func New(cfg *config.Config, t *Table, log zerolog.Logger) *Server {
	sc := cfg.Server
	s := &Server{
		log:       log,
		access:    log.With().Str("log", "access").Logger(),
		accessLog: cfg.Log.AccessLog(),
		maxBody:   int64(sc.MaxRequestBody),
		bodyIdle:  sc.BodyIdleTimeout,
		redirect:  cfg.TLS.Listen != "" && cfg.TLS.RedirectHTTP,
		https:     cfg.TLS.Listen != "",
		httpsPort: httpsPort(cfg.TLS.Listen),
		gate:      listener.NewGate(sc.MaxConnections),
		grace:     sc.ShutdownGrace,
	}
	for _, tp := range sc.TrustedProxies {
		if p, err := config.ParseTrusted(tp); err == nil { // validated
			s.trusted = append(s.trusted, p)
		}
	}
	s.table.Store(t)
	// Until the control loop installs the persisted keys, a key of this
	// process's own signs.
	s.SetAffinityKeys([]AffinityKey{NewAffinityKey(0)})
	s.exchanges.New = func() any { return &exchange{s: s} }
	s.srv = &fasthttp.Server{
		Handler:        s.handle,
		ErrorHandler:   s.errorHandler,
		ExpectHandler:  s.expect,
		HeaderReceived: s.headerReceived,
		Logger:         fasthttpLogger{log},
		// Header names are canonicalised (as HAProxy and Envoy lowercase
		// them); values, order and repeats pass unchanged.
		DisableHeaderNamesNormalizing: false,
		NoDefaultServerHeader:         true,
		NoDefaultContentType:          true,
		ReadBufferSize:                int(sc.MaxHeaderBytes),
		WriteBufferSize:               16 << 10,
		ReadTimeout:                   sc.ReadHeaderTimeout,
		IdleTimeout:                   sc.IdleTimeout,
		WriteTimeout:                  sc.BodyIdleTimeout,
		// With streaming, this only decides which bodies fasthttp
		// prefetches; the limit itself is enforced by the handler (413).
		MaxRequestBodySize:           int(min(s.maxBody, math.MaxInt32)),
		StreamRequestBody:            true,
		DisablePreParseMultipartForm: true,
		CloseOnShutdown:              true,
		LazyRequestTime:              true,
		TCPKeepalive:                 true,
		Concurrency:                  sc.MaxConnections,
		SecureErrorLogMessage:        true,
	}
	return s
}

// PipedBodies returns how many response bodies went from backend to client
// through a pipe (splice), and how many were meant to but were read into
// memory because their pipe ran out of room.
func (s *Server) PipedBodies() (piped, readBack uint64) {
	return s.piped.Load(), s.readBack.Load()
}

// trustedPeer reports whether a client's X-Forwarded-For is kept: its
// address is one of server.trusted_proxies.
func (s *Server) trustedPeer(a net.Addr) bool {
	if len(s.trusted) == 0 {
		return false
	}
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range s.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// SetTable makes t the routing table for new requests.
func (s *Server) SetTable(t *Table) { s.table.Store(t) }

// Serve accepts plain-HTTP connections on ln until Shutdown. No accept
// error ends it but the listener closing: running out of descriptors is
// waited out (see package listener).
func (s *Server) Serve(ln net.Listener) error {
	return s.serve(listener.Wrap(ln, "http", s.gate, refusal, s.log), nil)
}

// ServeTLS is Serve for HTTPS: connections accepted on ln (a TCP listener)
// are served with TLS by conf.
func (s *Server) ServeTLS(ln net.Listener, conf *tls.Config) error {
	// No plain-text answer over the cap: a TLS client could not read it.
	return s.serve(listener.Wrap(ln, "https", s.gate, nil, s.log), conf)
}

// refusal is what a client connecting over server.max_connections reads.
var refusal = listener.Refusal("baton: too many open connections (server.max_connections); retry in a moment")

func (s *Server) serve(ln *listener.Listener, conf *tls.Config) error {
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = ln.Close()
		return nil
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	return s.srv.Serve(watchingListener{Listener: ln, tls: conf, bodyIdle: s.bodyIdle})
}

// Listeners returns each listener's counters, for /metrics.
func (s *Server) Listeners() []listener.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]listener.Stats, len(s.lns))
	for i, ln := range s.lns {
		out[i] = ln.Stats()
	}
	return out
}

// Shutdown stops accepting connections and lets the open ones end without
// a failed request: requests in flight finish; every response from now on
// carries Connection: close; a keep-alive connection that is idle stays
// open for server.shutdown_grace, so that a request its client is already
// sending is answered rather than reset, and is closed if it stays idle.
// Shutdown waits until ctx ends for what is still in flight and returns
// ctx's error only if something was still open then. A Serve that had not
// started yet when Shutdown was called returns at once: fasthttp's own
// Shutdown does not see a listener it has not registered, and would leave
// it accepting.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	lns := s.lns
	s.mu.Unlock()
	s.draining.Store(true)
	for _, ln := range lns {
		_ = ln.Close()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	grace := time.NewTimer(s.grace)
	defer grace.Stop()
	// The grace ends early once no connection but tunnels is open.
wait:
	for s.gate.Open() > int64(s.openTunnels()) {
		select {
		case <-ctx.Done():
			break wait
		case <-grace.C:
			break wait
		case <-tick.C:
		}
	}
	// fasthttp closes the connections still idle and waits for the busy
	// ones. Its error for closing listeners already closed means nothing.
	_ = s.srv.ShutdownWithContext(ctx)
	// fasthttp does not wait for hijacked connections: tunnels get the
	// same time to end on their own, then are closed politely.
	for s.openTunnels() > 0 {
		select {
		case <-ctx.Done():
			// Closed politely, with a moment for the close frames to go out.
			s.closeTunnels()
			deadline := time.Now().Add(3 * time.Second)
			for s.openTunnels() > 0 && time.Now().Before(deadline) {
				<-tick.C
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
	if s.gate.Open() > 0 {
		return ctx.Err()
	}
	return nil
}

func (s *Server) addTunnel(t *tunnel) {
	s.mu.Lock()
	if s.tunnels == nil {
		s.tunnels = map[*tunnel]struct{}{}
	}
	s.tunnels[t] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) removeTunnel(t *tunnel) {
	s.mu.Lock()
	delete(s.tunnels, t)
	s.mu.Unlock()
}

func (s *Server) openTunnels() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.tunnels)
}

// closeTunnels ends every open tunnel (a WebSocket client gets 1001).
func (s *Server) closeTunnels() {
	s.mu.Lock()
	ts := make([]*tunnel, 0, len(s.tunnels))
	for t := range s.tunnels {
		ts = append(ts, t)
	}
	s.mu.Unlock()
	for _, t := range ts {
		t.goingAway()
	}
}

// OpenConnections returns the number of open client connections, tunnels
// included.
func (s *Server) OpenConnections() int64 { return s.gate.Open() }

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	x := s.exchanges.Get().(*exchange)
	x.start = time.Now()
	defer func() {
		// fasthttp does not recover panics; one bad request must not take
		// down the process. The exchange is dropped, not reused.
		if r := recover(); r != nil {
			s.log.Error().Interface("panic", r).Bytes("uri", ctx.RequestURI()).Bytes("stack", debug.Stack()).
				Msg("panic while serving a request")
			// Give back what the request held, so a drain can finish and a
			// connection cap does not lose a slot.
			if x.conn != nil {
				x.conn.Close()
				x.conn = nil
			}
			if b := x.b; b != nil {
				x.b = nil
				// baton's fault, not the backend's; the client gets 500.
				b.Finish(&pool.Outcome{Class: pool.ClassInternal, Sent: 500, Start: x.start, Method: x.method, Target: x.target})
			}
			ctx.Response.Reset()
			ctx.SetStatusCode(500)
			ctx.SetBodyString("baton: internal error\n")
			ctx.SetConnectionClose()
		}
	}()
	if !x.serve(ctx) {
		s.putExchange(x)
	}
	if s.draining.Load() || requestLineLF(ctx) {
		// Shutting down: the client opens its next connection elsewhere
		// (or to the process taking over) instead of finding this one closed.
		// Or a bare-LF head came behind this request.
		ctx.SetConnectionClose()
	}
}

func (s *Server) putExchange(x *exchange) {
	x.reset()
	s.exchanges.Put(x)
}

// headerReceived gives a request with a body body_idle_timeout, not what
// is left of the header timeout, for the part of the body fasthttp reads
// before the handler (up to 8 KiB); the handler then renews it between
// reads, so a slow client's form arrives as long as it keeps moving.
func (s *Server) headerReceived(h *fasthttp.RequestHeader) fasthttp.RequestConfig {
	if h.ContentLength() > 0 || h.ContentLength() == -1 {
		return fasthttp.RequestConfig{ReadTimeout: s.bodyIdle}
	}
	return fasthttp.RequestConfig{}
}

// expect answers "Expect: 100-continue": a body that is too large is refused
// before the client sends it.
func (s *Server) expect(ctx *fasthttp.RequestCtx) int {
	if cl := ctx.Request.Header.ContentLength(); cl > 0 && int64(cl) > s.maxBody {
		return fasthttp.StatusRequestEntityTooLarge
	}
	return fasthttp.StatusContinue
}

// errorHandler answers requests fasthttp could not parse. fasthttp closes the
// connection afterwards.
func (s *Server) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	status, msg := 400, "malformed request: "+cleanErr(err)
	var small *fasthttp.ErrSmallBuffer
	switch {
	case errors.As(err, &small):
		status, msg = 431, fmt.Sprintf("the request header is larger than %d bytes", s.srv.ReadBufferSize)
	case errors.Is(err, fasthttp.ErrBodyTooLarge):
		status, msg = 413, fmt.Sprintf("the request body is larger than %d bytes", s.maxBody)
	case isTimeout(err):
		status, msg = 408, "the request did not arrive in time"
	case errors.Is(err, errBareLF):
		msg = errBareLF.Error()
	case errors.Is(err, fasthttp.ErrDuplicateContentLength):
		msg = "more than one Content-Length"
	case errors.Is(err, fasthttp.ErrUnsupportedTransferEncoding):
		msg = "unsupported Transfer-Encoding"
	}
	s.log.Debug().Err(err).Int("status", status).Msg("rejected a malformed request")
	ctx.Response.Reset()
	ctx.SetStatusCode(status)
	ctx.Response.Header.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString("baton: " + msg + "\n")
	if s.accessLog {
		s.access.Info().Str("client", ctx.RemoteIP().String()).Int("status", status).
			Str("outcome", pool.ClassClientError.String()).Str("error", msg).Send()
	}
}

// cleanErr shortens a parser error to printable text.
func cleanErr(err error) string {
	m := strings.TrimPrefix(err.Error(), "fasthttp: ")
	if len(m) > 160 {
		m = m[:160] + "…"
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return -1
		}
		return r
	}, m)
}

// fasthttpLogger routes fasthttp's own messages to the debug log.
type fasthttpLogger struct{ l zerolog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) { f.l.Debug().Msgf(format, args...) }
