package testbed

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// HealthPath is the path a Server answers as its health check.
const HealthPath = "/healthz"

// holdBound bounds every wait at a Gate and every stream, should a test
// never release it: the request is then answered 504.
const holdBound = 60 * time.Second

// BackendOptions configure a Server. The zero value is a backend on
// 127.0.0.1 that passes its health checks and answers every other request
// 200 with its (empty) name.
//
// Fail, Hold and Stream are keyed by path suffix: a rule for P applies to
// a request whose URL path ends in P ("/tick" matches "/stream/tick"
// behind a path-prefixed route), the longest matching rule wins, and ""
// matches every path. The Server's methods of the same names change them
// while it runs.
type BackendOptions struct {
	// Name is answered in the X-Backend header of every answer but health
	// checks, and in the body.
	Name string
	// Version, when set, follows the name in the body: "NAME VERSION".
	// Restart changes it.
	Version string
	// Addr is the address to listen on; "" is one from FreeAddr.
	Addr string
	// Unhealthy makes the health check answer 503 until SetHealthy(true).
	Unhealthy bool
	// HoldChecks, when set, holds every health check at the gate until it
	// is released.
	HoldChecks *Gate
	// Delay, when set, says how long the backend works on a request for
	// path before answering: its own response time, cut short when the
	// client goes away (no answer then). It is called from the requests' goroutines and must
	// be safe for concurrent use. Nil: no delay.
	Delay func(path string) time.Duration
	// Fail makes some requests fail; see Failure.
	Fail map[string]Failure
	// Hold holds requests at a gate until it is released, then answers
	// them as usual. A request the client abandons, or held when the
	// backend is killed or closed, gets no answer; one still held after
	// 60s (a test that forgot to release it) is answered 504.
	Hold map[string]*Gate
	// Stream answers requests with a chunked stream, "tick\n" every 10ms,
	// ended by "END\n" when the gate is released.
	Stream map[string]*Gate
	// Ledger, when set, records the ID of every POST the backend receives.
	Ledger *Ledger
	// IdleTimeout is the backend's own keep-alive idle timeout; zero:
	// net/http's default (none).
	IdleTimeout time.Duration
}

// Failure is how a Server fails requests for a path: the Every-th,
// 2·Every-th, … request the rule applies to (counted from when it was set)
// is answered Status with Code in X-Error-Code and Body. The count is
// deterministic: no randomness.
type Failure struct {
	Every   int64  // 0 or 1: every request
	Status  int    // 0: 500
	Code    string // "": no X-Error-Code header
	Body    string // "": "PATH failed: CODE"
	Version string // applies only while the backend runs this version; "": always
}

type failRule struct {
	Failure
	n atomic.Int64 // requests the rule applied to
}

// Server is a fake HTTP backend on loopback, real sockets and net/http:
// health checks on HealthPath, every other request counted and answered
// with the backend's name (POST bodies echoed after "NAME:"), with the
// delays, failures, holds and streams its options ask for. It can be
// killed (connections reset), closed and restarted on the same address.
//
// It is safe calling Server methods from concurrently running goroutines.
// Server values must not be copied.
type Server struct {
	name      string
	delay     func(string) time.Duration
	ledger    *Ledger
	idle      time.Duration
	checkGate *Gate

	healthy   atomic.Bool
	checks    atomic.Int64 // health checks served
	passes    atomic.Int64 // health checks answered 200
	fails     atomic.Int64 // health checks answered 503
	hits      atomic.Int64 // proxied requests (anything but health checks)
	active    atomic.Int64 // proxied requests being handled now
	activeGET atomic.Int64 // proxied GETs being handled now
	conns     atomic.Int64 // connections accepted
	killed    atomic.Bool
	late      atomic.Int64 // proxied requests arriving after Kill
	minPasses atomic.Int64
	early     atomic.Int64 // proxied requests arriving before minPasses passing checks
	sealed    atomic.Bool
	afterSeal atomic.Int64 // proxied requests arriving after Seal

	mu      sync.Mutex // protects addr, version, fail, hold, stream, run, closed and open
	addr    string
	version string
	fail    map[string]*failRule
	hold    map[string]*Gate
	stream  map[string]*Gate
	run     *serverRun
	closed  bool
	open    map[net.Conn]struct{}
}

// serverRun is one incarnation of a Server: a listener and its http.Server.
type serverRun struct {
	srv  *http.Server
	stop chan struct{} // closed when this incarnation ends
	once sync.Once
}

func (r *serverRun) end(abort func()) {
	r.once.Do(func() {
		abort()
		_ = r.srv.Close()
		close(r.stop) // after the connections: what waited answers nobody
	})
}

// NewBackend starts a Server and closes it at the end of the test.
func NewBackend(t testing.TB, o BackendOptions) *Server {
	t.Helper()
	s, err := StartBackend(o)
	if err != nil {
		t.Fatalf("backend %s: %v", o.Name, err)
	}
	t.Cleanup(s.Close)
	return s
}

// StartBackend starts a Server; the caller closes it. NewBackend is the
// same for tests.
func StartBackend(o BackendOptions) (*Server, error) {
	s := &Server{
		name: o.Name, addr: o.Addr, version: o.Version, delay: o.Delay, ledger: o.Ledger,
		idle: o.IdleTimeout, checkGate: o.HoldChecks,
		fail: map[string]*failRule{}, hold: map[string]*Gate{}, stream: map[string]*Gate{},
		open: map[net.Conn]struct{}{},
	}
	s.healthy.Store(!o.Unhealthy)
	s.minPasses.Store(1)
	for p, f := range o.Fail {
		s.fail[p] = &failRule{Failure: f}
	}
	for p, g := range o.Hold {
		s.hold[p] = g
	}
	for p, g := range o.Stream {
		s.stream[p] = g
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Addr != "" {
		if err := s.listenLocked(); err != nil {
			return nil, err
		}
		return s, nil
	}
	// An address of its own from FreeAddr, so that Restart finds it free;
	// another test process may bind it between the check and here.
	var err error
	for range 5 {
		if s.addr, err = FreeAddrErr(); err != nil {
			return nil, err
		}
		if err = s.listenLocked(); err == nil {
			return s, nil
		}
	}
	return nil, err
}

// listenLocked starts a new incarnation on s.addr.
func (s *Server) listenLocked() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.addr = ln.Addr().String()
	run := &serverRun{stop: make(chan struct{})}
	run.srv = &http.Server{
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       s.idle,
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { s.serve(run, w, r) }),
		ConnState: func(c net.Conn, st http.ConnState) {
			s.mu.Lock()
			defer s.mu.Unlock()
			switch st {
			case http.StateNew:
				s.open[c] = struct{}{}
				s.conns.Add(1)
			case http.StateClosed, http.StateHijacked:
				delete(s.open, c)
			}
		},
	}
	s.run = run
	go func() { _ = run.srv.Serve(ln) }()
	return nil
}

// Name is the backend's name.
func (s *Server) Name() string { return s.name }

// Addr is the backend's host:port.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// Version is the version the backend answers as.
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// SetHealthy makes health checks answer 200 (true) or 503.
func (s *Server) SetHealthy(ok bool) { s.healthy.Store(ok) }

// Fail sets the failure rule for path (see BackendOptions), its count
// starting afresh.
func (s *Server) Fail(path string, f Failure) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[path] = &failRule{Failure: f}
}

// StopFailing removes the failure rule for path.
func (s *Server) StopFailing(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.fail, path)
}

// Hold holds requests for path at g from now on (see BackendOptions).
func (s *Server) Hold(path string, g *Gate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hold[path] = g
}

// Stream answers requests for path with a stream ended by g from now on
// (see BackendOptions).
func (s *Server) Stream(path string, g *Gate) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stream[path] = g
}

// Seal marks the moment from which nothing more may reach the backend;
// AfterSeal counts what does.
func (s *Server) Seal() { s.sealed.Store(true) }

// SetMinPasses makes a proxied request that arrives before the backend
// answered n passing health checks in all count as Early. The default is
// 1: before any check passed.
func (s *Server) SetMinPasses(n int64) { s.minPasses.Store(n) }

// Hits counts proxied requests: anything but health checks.
func (s *Server) Hits() int64 { return s.hits.Load() }

// InFlight counts proxied requests being handled now.
func (s *Server) InFlight() int64 { return s.active.Load() }

// InFlightGETs counts proxied GETs being handled now.
func (s *Server) InFlightGETs() int64 { return s.activeGET.Load() }

// Checks counts health checks received.
func (s *Server) Checks() int64 { return s.checks.Load() }

// Passes counts health checks answered 200.
func (s *Server) Passes() int64 { return s.passes.Load() }

// Fails counts health checks answered 503.
func (s *Server) Fails() int64 { return s.fails.Load() }

// Conns counts connections accepted, over every incarnation.
func (s *Server) Conns() int64 { return s.conns.Load() }

// Late counts proxied requests that arrived after Kill.
func (s *Server) Late() int64 { return s.late.Load() }

// Early counts proxied requests that arrived before the backend had
// passed the checks SetMinPasses asks for.
func (s *Server) Early() int64 { return s.early.Load() }

// AfterSeal counts proxied requests that arrived after Seal.
func (s *Server) AfterSeal() int64 { return s.afterSeal.Load() }

// Kill stops the backend abruptly, as a crashed process: the listener
// closes and every open connection is reset (SO_LINGER 0), busy ones
// included; held requests and streams end without an answer.
func (s *Server) Kill() {
	s.killed.Store(true)
	s.mu.Lock()
	run := s.run
	s.mu.Unlock()
	run.end(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for c := range s.open {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
	})
}

// Close stops the backend: the listener and its connections close. It is
// safe to call more than once.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	run := s.run
	s.mu.Unlock()
	run.end(func() {})
}

// Restart stops the backend as Close does and starts it again on the same
// address answering as version, as an upgraded process would. Counters
// carry over.
func (s *Server) Restart(version string) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("backend %s: restart after Close", s.name)
	}
	old := s.run
	s.mu.Unlock()
	old.end(func() {})
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = version
	if err := s.listenLocked(); err != nil {
		return fmt.Errorf("backend %s: %w", s.name, err)
	}
	return nil
}

// match returns the rule of m whose key is the longest suffix of path.
func match[V any](m map[string]V, path string) (V, bool) {
	var best V
	n, ok := -1, false
	for p, v := range m {
		if len(p) > n && strings.HasSuffix(path, p) {
			best, n, ok = v, len(p), true
		}
	}
	return best, ok
}

func (s *Server) serve(run *serverRun, w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == HealthPath {
		s.check(run, w, r)
		return
	}
	s.hits.Add(1)
	s.active.Add(1)
	defer s.active.Add(-1)
	if r.Method == http.MethodGet {
		s.activeGET.Add(1)
		defer s.activeGET.Add(-1)
	}
	if s.killed.Load() {
		s.late.Add(1)
	}
	if s.passes.Load() < s.minPasses.Load() {
		s.early.Add(1)
	}
	if s.sealed.Load() {
		s.afterSeal.Add(1)
	}
	// A POST counts as delivered once its head is here, before its body:
	// a replay of one whose body was cut off is a second delivery too.
	if s.ledger != nil && r.Method == http.MethodPost {
		s.ledger.record(r.Header.Get(s.ledger.header), s.name)
	}
	// The whole body first: the request has then fully arrived, and
	// net/http notices a client that goes away while the handler waits.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(400)
		return
	}
	s.mu.Lock()
	version := s.version
	streamGate, streaming := match(s.stream, r.URL.Path)
	holdGate, holding := match(s.hold, r.URL.Path)
	rule, failing := match(s.fail, r.URL.Path)
	s.mu.Unlock()

	w.Header().Set("X-Backend", s.name)
	if streaming {
		s.streamTo(run, streamGate, w, r)
		return
	}
	if holding {
		switch holdGate.wait(s.name, run.stop, r) {
		case gateGone:
			panic(http.ErrAbortHandler) // no answer at all, not an empty 200
		case gateTimeout:
			w.WriteHeader(http.StatusGatewayTimeout)
			return
		}
	}
	if s.delay != nil {
		if d := s.delay(r.URL.Path); d > 0 {
			timer := time.NewTimer(d) // the backend's own work, not a wait in the test
			select {
			case <-timer.C:
			case <-r.Context().Done():
				timer.Stop()
				panic(http.ErrAbortHandler)
			case <-run.stop:
				timer.Stop()
				panic(http.ErrAbortHandler)
			}
		}
	}
	if failing && (rule.Version == "" || rule.Version == version) {
		if every := max(rule.Every, 1); rule.n.Add(1)%every == 0 {
			if rule.Code != "" {
				w.Header().Set("X-Error-Code", rule.Code)
			}
			status, text := rule.Status, rule.Body
			if status == 0 {
				status = http.StatusInternalServerError
			}
			if text == "" {
				text = r.URL.Path + " failed: " + rule.Code
			}
			w.WriteHeader(status)
			_, _ = io.WriteString(w, text)
			return
		}
	}
	answer := s.name
	if version != "" {
		answer += " " + version
	}
	if r.Method == http.MethodPost {
		answer += ":" + string(body)
	}
	_, _ = io.WriteString(w, answer)
}

func (s *Server) check(run *serverRun, w http.ResponseWriter, r *http.Request) {
	s.checks.Add(1)
	if g := s.checkGate; g != nil {
		if g.wait(s.name, run.stop, r) != gateReleased {
			panic(http.ErrAbortHandler) // no answer, not an implicit 200
		}
	}
	if s.healthy.Load() {
		s.passes.Add(1)
		w.WriteHeader(http.StatusOK)
		return
	}
	s.fails.Add(1)
	w.WriteHeader(http.StatusServiceUnavailable)
}

// streamTo writes "tick\n" every 10ms until g is released ("END\n"), the
// client goes away or the backend stops; bounded by holdBound.
func (s *Server) streamTo(run *serverRun, g *Gate, w http.ResponseWriter, r *http.Request) {
	fl := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "tick\n")
	fl.Flush()
	g.enter(s.name)
	defer g.leave()
	tick := time.NewTicker(10 * time.Millisecond) // the stream's pace
	defer tick.Stop()
	for range holdBound / (10 * time.Millisecond) {
		select {
		case <-g.release:
			_, _ = io.WriteString(w, "END\n")
			return
		case <-r.Context().Done():
			return
		case <-run.stop:
			return
		case <-tick.C:
		}
		if _, err := io.WriteString(w, "tick\n"); err != nil {
			return
		}
		fl.Flush()
	}
}

// Gate holds requests (and keeps streams going) until Release: a signal,
// never a timer. One gate may serve several backends.
//
// It is safe calling Gate methods from concurrently running goroutines.
// Gate values must not be copied.
type Gate struct {
	entered chan string // a backend's name each time a request reaches the gate
	arrived atomic.Int64
	waiting atomic.Int64
	release chan struct{}
	once    sync.Once
}

// NewGate makes a closed gate.
func NewGate() *Gate {
	return &Gate{entered: make(chan string, 64), release: make(chan struct{})}
}

// Entered receives the backend's name each time a request reaches the
// gate (the first 64 unread; Arrived counts them all).
func (g *Gate) Entered() <-chan string { return g.entered }

// Arrived counts the requests that reached the gate.
func (g *Gate) Arrived() int64 { return g.arrived.Load() }

// Waiting counts the requests at the gate now.
func (g *Gate) Waiting() int64 { return g.waiting.Load() }

// Release opens the gate for good: held requests go on, streams end.
// It is safe to call more than once.
func (g *Gate) Release() { g.once.Do(func() { close(g.release) }) }

// Released reports whether Release was called.
func (g *Gate) Released() bool {
	select {
	case <-g.release:
		return true
	default:
		return false
	}
}

// Wait waits until a request reaches the gate and returns the name of its
// backend, or fails the test after timeout.
func (g *Gate) Wait(t testing.TB, timeout time.Duration, what string) string {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case name := <-g.entered:
		return name
	case <-timer.C:
		t.Fatalf("timed out after %s waiting for %s", timeout, what)
		return ""
	}
}

func (g *Gate) enter(name string) {
	g.arrived.Add(1)
	g.waiting.Add(1)
	select {
	case g.entered <- name:
	default:
	}
}

func (g *Gate) leave() { g.waiting.Add(-1) }

type gateOutcome int

const (
	gateReleased gateOutcome = iota
	gateGone                 // the client went away or the backend stopped
	gateTimeout              // holdBound passed
)

func (g *Gate) wait(name string, stop <-chan struct{}, r *http.Request) gateOutcome {
	g.enter(name)
	defer g.leave()
	timer := time.NewTimer(holdBound)
	defer timer.Stop()
	select {
	case <-g.release:
		return gateReleased
	case <-r.Context().Done():
		return gateGone
	case <-stop:
		return gateGone
	case <-timer.C:
		return gateTimeout
	}
}

// Ledger records which backends received each POST, by the ID the client
// sent in a header. Share one among the backends of a pool to catch a POST
// delivered twice.
//
// It is safe calling Ledger methods from concurrently running goroutines.
type Ledger struct {
	header string
	mu     sync.Mutex          // protects seen
	seen   map[string][]string // ID → backends that received it
}

// NewLedger makes a ledger of POSTs by the ID in header.
func NewLedger(header string) *Ledger {
	return &Ledger{header: header, seen: map[string][]string{}}
}

func (l *Ledger) record(id, backend string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen[id] = append(l.seen[id], backend)
}

// Received counts the deliveries of the POST with id.
func (l *Ledger) Received(id string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen[id])
}

// Len counts the distinct POST IDs received.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// Duplicates describes every POST delivered more than once: "ID received
// by [b1 b2]".
func (l *Ledger) Duplicates() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, bs := range l.seen {
		if len(bs) > 1 {
			out = append(out, fmt.Sprintf("%s received by %v", id, bs))
		}
	}
	return out
}

// NewBackends starts one Server with o for each name (o.Name is ignored)
// and closes them at the end of the test.
func NewBackends(t testing.TB, o BackendOptions, names ...string) []*Server {
	t.Helper()
	out := make([]*Server, len(names))
	for i, n := range names {
		o.Name = n
		out[i] = NewBackend(t, o)
	}
	return out
}
