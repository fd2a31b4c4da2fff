package proxy_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// This file checks that a request whose framing is ambiguous never reaches a
// backend ambiguously: baton either rejects it (400/431, then closes the
// client connection) or normalises it into one clean request and closes the
// client connection, so nothing after the irregular bytes is read as a
// request. The backend is a raw TCP server with its own strict parser
// (frParseRequest), which records every byte it gets.

// ---------------------------------------------------------------------------
// A strict HTTP/1.1 request parser (RFC 9112), used twice: by the recording
// backend on what baton sends (strict: only clean requests are accepted), and
// by the fuzz target as the reference framer on what the client sends
// (lenient: the normalisations RFC 9112 allows a recipient to make — bare LF
// line ends in the head, obs-fold, Content-Length beside chunked — are
// accepted but flagged irregular: such a request may be forwarded, but the
// connection must end after it).

type frField struct{ name, value string }

// frRequest is one request the parser accepted.
type frRequest struct {
	method, target, version string
	fields                  []frField
	chunked                 bool
	length                  int64  // Content-Length, -1 when absent
	body                    []byte // decoded body
	head                    []byte // the head as received, through the blank line
	size                    int    // bytes of the whole request as received
}

// values returns the values of the fields named name (case-insensitive).
func (r *frRequest) values(name string) []string {
	var vs []string
	for _, f := range r.fields {
		if strings.EqualFold(f.name, name) {
			vs = append(vs, f.value)
		}
	}
	return vs
}

type frStatus int

const (
	frComplete  frStatus = iota // a whole request
	frNeedMore                  // a prefix of a request, maybe
	frMalformed                 // not a request
)

type frResult struct {
	req       frRequest
	status    frStatus
	irregular bool   // lenient mode: accepted only because of a normalisation
	why       string // for frMalformed
}

func frIsTchar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func frIsToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !frIsTchar(c) {
			return false
		}
	}
	return true
}

// frValidValue: field-value bytes are HTAB, SP, VCHAR and obs-text.
func frValidValue(b []byte) bool {
	for _, c := range b {
		if c != '\t' && (c < ' ' || c == 0x7f) {
			return false
		}
	}
	return true
}

func frTrimOWS(b []byte) []byte { return bytes.Trim(b, " \t") }

func frIsHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// frLine returns the line at b[i:] without its line end and the index after
// it. bareLF: it ended in LF without CR. ok=false: no LF yet.
func frLine(b []byte, i int) (line []byte, next int, bareLF, ok bool) {
	j := bytes.IndexByte(b[i:], '\n')
	if j < 0 {
		return nil, 0, false, false
	}
	line = b[i : i+j]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		return line[:len(line)-1], i + j + 1, false, true
	}
	return line, i + j + 1, true, true
}

// frParseRequest parses one request at the start of b. In strict mode every
// line ends in CRLF, there is no obs-fold, no empty line before the request
// line, the version is HTTP/1.1, no chunk extensions, and a message has at
// most one of Content-Length and Transfer-Encoding: chunked.
func frParseRequest(b []byte, lenient bool) (res frResult) {
	bad := func(format string, args ...any) frResult {
		return frResult{status: frMalformed, why: fmt.Sprintf(format, args...)}
	}
	more := frResult{status: frNeedMore}
	i := 0
	irregular := false

	// Request line, after any empty lines (RFC 9112 §2.2).
	var line []byte
	for {
		l, next, bare, ok := frLine(b, i)
		if !ok {
			if i < len(b) && bytes.IndexByte(b[i:], 0) >= 0 {
				return bad("NUL in the request line")
			}
			return more
		}
		if bare && !lenient {
			return bad("bare LF after %.40q", l)
		}
		// A lenient recipient may end the request line (and the empty lines
		// before it) with a bare LF (RFC 9112 §2.2). baton does, through
		// fasthttp, which does not tell it apart from CRLF; such a request is
		// still framed unambiguously, so what follows it counts.
		i = next
		if len(l) > 0 {
			line = l
			break
		}
		if !lenient {
			return bad("empty line before the request line")
		}
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !frIsToken(line[:sp1]) {
		return bad("method in %.60q", line)
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return bad("request line %.60q", line)
	}
	target, version := rest[:sp2], rest[sp2+1:]
	for _, c := range target {
		if c <= ' ' || c == 0x7f {
			return bad("request target %.60q", target)
		}
	}
	if len(version) != 8 || string(version[:5]) != "HTTP/" || version[6] != '.' ||
		version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9' {
		return bad("version %.20q", version)
	}
	http11 := string(version) == "HTTP/1.1"
	if !lenient && !http11 {
		return bad("version %q", version)
	}
	r := frRequest{method: string(line[:sp1]), target: string(target), version: string(version), length: -1}

	// Field lines.
	for {
		l, next, bare, ok := frLine(b, i)
		if !ok {
			return more
		}
		if bare {
			if !lenient {
				return bad("bare LF after %.40q", l)
			}
			irregular = true
		}
		i = next
		if len(l) == 0 {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			// obs-fold (RFC 9112 §5.2): a lenient recipient replaces it by SP.
			if !lenient || len(r.fields) == 0 {
				return bad("obs-fold %.40q", l)
			}
			irregular = true
			v := frTrimOWS(l)
			if !frValidValue(v) {
				return bad("field value %.40q", v)
			}
			if last := &r.fields[len(r.fields)-1]; len(v) > 0 {
				if last.value != "" {
					last.value += " "
				}
				last.value += string(v)
			}
			continue
		}
		colon := bytes.IndexByte(l, ':')
		if colon < 0 {
			return bad("field line without a colon %.40q", l)
		}
		if !frIsToken(l[:colon]) {
			return bad("field name %.40q", l[:colon])
		}
		v := frTrimOWS(l[colon+1:])
		if !frValidValue(v) {
			return bad("field value %.40q", v)
		}
		r.fields = append(r.fields, frField{string(l[:colon]), string(v)})
	}
	r.head = b[:i]

	hosts, cls, tes := len(r.values("Host")), r.values("Content-Length"), r.values("Transfer-Encoding")
	if hosts > 1 || (http11 && hosts == 0) {
		return bad("%d Host fields", hosts)
	}
	if len(cls) > 1 {
		return bad("%d Content-Length fields", len(cls))
	}
	if len(cls) == 1 {
		v := cls[0]
		if v == "" || strings.Trim(v, "0123456789") != "" {
			return bad("Content-Length %q", v)
		}
		if d := strings.TrimLeft(v, "0"); len(d) > 18 {
			return bad("Content-Length %q", v)
		}
		r.length, _ = strconv.ParseInt(v, 10, 64)
	}
	if len(tes) > 0 {
		if len(tes) > 1 || !http11 || !strings.EqualFold(tes[0], "chunked") {
			return bad("Transfer-Encoding %q in %s", tes, version)
		}
		r.chunked = true
		if r.length >= 0 {
			// RFC 9112 §6.3: chunked wins; the connection must close after.
			if !lenient {
				return bad("Content-Length beside Transfer-Encoding")
			}
			irregular = true
			r.length = -1
		}
	}

	// Body.
	switch {
	case r.chunked:
		var body []byte
		for {
			l, next, bare, ok := frLine(b, i)
			if !ok {
				return more
			}
			if bare {
				return bad("bare LF in chunk framing")
			}
			i = next
			j := 0
			for j < len(l) && frIsHex(l[j]) {
				j++
			}
			if j == 0 || j > 15 {
				return bad("chunk size %.40q", l)
			}
			size, _ := strconv.ParseInt(string(l[:j]), 16, 64)
			ext := l[j:]
			if len(ext) > 0 {
				if !lenient {
					return bad("chunk extension %.40q", ext)
				}
				ext = bytes.TrimLeft(ext, " \t")
				if len(ext) > 0 && (ext[0] != ';' || !frValidValue(ext)) {
					return bad("chunk extension %.40q", ext)
				}
			}
			if size == 0 {
				break
			}
			if int64(len(b)-i) < size+2 {
				return more
			}
			body = append(body, b[i:i+int(size)]...)
			i += int(size)
			if b[i] != '\r' || b[i+1] != '\n' {
				return bad("chunk data longer than its size")
			}
			i += 2
		}
		// Trailer section: field lines, then an empty line. They are field
		// lines, so the same normalisations apply as in the head.
		for first := true; ; first = false {
			l, next, bare, ok := frLine(b, i)
			if !ok {
				return more
			}
			if bare {
				if !lenient {
					return bad("bare LF in the trailer section")
				}
				irregular = true
			}
			i = next
			if len(l) == 0 {
				break
			}
			if l[0] == ' ' || l[0] == '\t' {
				if !lenient || first {
					return bad("obs-fold in the trailer section")
				}
				irregular = true
				if !frValidValue(l) {
					return bad("trailer line %.40q", l)
				}
				continue
			}
			colon := bytes.IndexByte(l, ':')
			if colon <= 0 || !frIsToken(l[:colon]) || !frValidValue(l[colon+1:]) {
				return bad("trailer line %.40q", l)
			}
		}
		r.body = body
	case r.length > 0:
		if int64(len(b)-i) < r.length {
			return more
		}
		r.body = b[i : i+int(r.length)]
		i += int(r.length)
	}
	r.size = i
	return frResult{req: r, status: frComplete, irregular: irregular}
}

// frReferenceCount is the reference framer: how many requests of the client
// byte stream in are unambiguously framed, so that a proxy may forward them.
// It stops at the first malformed or incomplete request, and after a request
// that is acceptable only thanks to a normalisation.
func frReferenceCount(in []byte) int {
	n := 0
	for len(in) > 0 && n < 1000 {
		res := frParseRequest(in, true)
		if res.status != frComplete {
			break
		}
		n++
		if res.irregular {
			break
		}
		in = in[res.req.size:]
	}
	return n
}

// ---------------------------------------------------------------------------
// The recording backend.

type frEventKind int

const (
	frEvRequest   frEventKind = iota // a complete request
	frEvMalformed                    // bytes the strict parser rejected; the connection is closed
	frEvPartial                      // the connection ended in the middle of a request
)

type frEvent struct {
	kind frEventKind
	req  frRequest
	raw  []byte // for frEvMalformed and frEvPartial: the unparsed bytes
	why  string
}

func (e frEvent) String() string {
	switch e.kind {
	case frEvRequest:
		return fmt.Sprintf("request %s %s (%d bytes)", e.req.method, e.req.target, e.req.size)
	case frEvMalformed:
		return fmt.Sprintf("malformed bytes (%s): %.200q", e.why, e.raw)
	}
	return fmt.Sprintf("partial request then close: %.200q", e.raw)
}

type frConnState struct {
	open    bool
	pending int // bytes received that do not form a complete request yet
}

// frRecorder is a raw backend: it parses what arrives strictly, records it,
// and answers each request with 200 and the body "seen <target>".
type frRecorder struct {
	addr string

	mu     sync.Mutex
	events []frEvent
	conns  []*frConnState
}

func newFrRecorder(t testing.TB) *frRecorder {
	r := &frRecorder{}
	r.addr = testbed.RawBackend(t, r.serve)
	return r
}

func (r *frRecorder) serve(c net.Conn) {
	st := &frConnState{open: true}
	r.mu.Lock()
	r.conns = append(r.conns, st)
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		st.open = false
		r.mu.Unlock()
	}()
	var buf []byte
	tmp := make([]byte, 32<<10)
	for {
		n, rerr := c.Read(tmp)
		buf = append(buf, tmp[:n]...)
		for len(buf) > 0 {
			res := frParseRequest(buf, false)
			if res.status == frNeedMore {
				break
			}
			r.mu.Lock()
			if res.status == frMalformed {
				r.events = append(r.events, frEvent{kind: frEvMalformed, raw: append([]byte(nil), buf...), why: res.why})
				st.pending = 0
				r.mu.Unlock()
				return
			}
			req := res.req
			req.head = append([]byte(nil), req.head...)
			req.body = append([]byte(nil), req.body...)
			r.events = append(r.events, frEvent{kind: frEvRequest, req: req})
			r.mu.Unlock()
			buf = buf[req.size:]
			body := "seen " + req.target
			resp := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
			if _, err := io.WriteString(c, resp); err != nil {
				return
			}
		}
		r.mu.Lock()
		st.pending = len(buf)
		if rerr != nil && len(buf) > 0 {
			r.events = append(r.events, frEvent{kind: frEvPartial, raw: append([]byte(nil), buf...)})
			st.pending = 0
		}
		r.mu.Unlock()
		if rerr != nil {
			return
		}
	}
}

// mark returns a position in the event log.
func (r *frRecorder) mark() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.events)
}

// since returns the events after mark.
func (r *frRecorder) since(mark int) []frEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]frEvent(nil), r.events[mark:]...)
}

// reset forgets the events so far and the closed connections.
func (r *frRecorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = r.events[:0]
	open := r.conns[:0]
	for _, c := range r.conns {
		if c.open {
			open = append(open, c)
		}
	}
	clear(r.conns[len(open):])
	r.conns = open
}

// settled: no open connection holds the beginning of a request, and at most
// open connections are open.
func (r *frRecorder) settled(open int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.conns {
		if !c.open {
			continue
		}
		n++
		if c.pending > 0 {
			return false
		}
	}
	return n <= open
}

// ---------------------------------------------------------------------------
// Client side.

// frExchange is what a raw client connection got back.
type frExchange struct {
	raw    []byte
	closed bool  // baton closed the connection (EOF or reset) before the deadline
	err    error // the read error that ended the exchange
}

// frSend writes raw to addr (without half-closing: a keep-alive connection
// stays open unless baton closes it) and reads until baton closes the
// connection or the timeout passes.
func frSend(t testing.TB, addr, raw string, timeout time.Duration) frExchange {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, raw); err != nil {
		// Baton may answer and close before reading everything (431);
		// what it answered is still to be read.
		t.Logf("write: %v", err)
	}
	return frReadAll(c)
}

func frReadAll(c net.Conn) frExchange {
	var ex frExchange
	buf := make([]byte, 8<<10)
	for {
		n, err := c.Read(buf)
		ex.raw = append(ex.raw, buf[:n]...)
		if err != nil {
			ex.err = err
			ex.closed = errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
			return ex
		}
	}
}

type frResponse struct {
	status int
	header http.Header
	body   string
}

// responses parses the responses in ex.raw; trailing bytes that are not a
// response are an error.
func (ex frExchange) responses() ([]frResponse, error) {
	br := bufio.NewReader(bytes.NewReader(ex.raw))
	var out []frResponse
	for {
		if _, err := br.Peek(1); err == io.EOF {
			return out, nil
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			return out, fmt.Errorf("response %d: %v", len(out)+1, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			return out, fmt.Errorf("response %d body: %v", len(out)+1, err)
		}
		out = append(out, frResponse{status: res.StatusCode, header: res.Header, body: string(body)})
	}
}

// ---------------------------------------------------------------------------
// Test fixture: one baton in front of one recording backend.

type frFixture struct {
	b   *testbed.Baton
	be  *pool.Backend // the recorder, as baton sees it
	rec *frRecorder
	seq int
}

// newFrFixture starts a recorder and a baton in front of it. logYAML is the
// config's log section, e.g. "{level: debug, format: json}".
func newFrFixture(t testing.TB, logYAML string) *frFixture {
	rec := newFrRecorder(t)
	cfg := "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: " + logYAML + "\npools:\n" +
		testbed.PoolYAML("web", [][2]string{{"rec", rec.addr}},
			// A loaded machine (race detector, parallel fuzz workers) must
			// not take the one backend out of service.
			"    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 100}\n"+
				"    outlier: {consecutive_failures: -1}\n")
	b := testbed.Start(t, cfg)
	b.WaitHealthy(t, "web", 1)
	return &frFixture{b: b, be: b.Pool(t, "web").Backends()[0], rec: rec}
}

const frDebugLog = "{level: debug, format: json}"

const frSentinelPrefix = "/__sentinel/"

// frTimeout bounds one raw exchange: baton answers on loopback in
// milliseconds, so only a connection baton wrongly keeps open waits for it.
const frTimeout = 1500 * time.Millisecond

// settle waits until everything baton sent on behalf of earlier exchanges has
// reached the recorder: a sentinel request goes through baton and back, then
// no backend connection may hold half a request.
func (fx *frFixture) settle(t testing.TB) {
	t.Helper()
	fx.seq++
	path := frSentinelPrefix + strconv.Itoa(fx.seq)
	ex := frSend(t, fx.b.Addr, "GET "+path+" HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n", 5*time.Second)
	rs, err := ex.responses()
	if err != nil || len(rs) != 1 || rs[0].status != 200 || rs[0].body != "seen "+path {
		t.Fatalf("sentinel request through baton failed: %v, %q", err, ex.raw)
	}
	testbed.Eventually(t, 2*time.Second, fx.quiet, "the backend to have read everything baton sent")
}

// quiet reports whether the recorder has read everything baton sent so far.
// Baton closes a backend connection before it answers the client, and the
// recorder reads a connection's bytes before its close: once every
// connection baton closed is closed at the recorder too (at most as many open
// there as baton has open; a health check may briefly add one), nothing is
// in flight. Connections baton keeps sit between requests, since baton only
// keeps one after a whole response, so none may hold half a request.
func (fx *frFixture) quiet() bool {
	return fx.rec.settled(fx.be.OpenConns())
}

// backendEvents returns what the backend got since mark, sentinels excluded.
func (fx *frFixture) backendEvents(mark int) []frEvent {
	var out []frEvent
	for _, e := range fx.rec.since(mark) {
		if e.kind == frEvRequest && strings.HasPrefix(e.req.target, frSentinelPrefix) {
			continue
		}
		out = append(out, e)
	}
	return out
}

func frDescribe(evs []frEvent) string {
	if len(evs) == 0 {
		return "(nothing)"
	}
	var sb strings.Builder
	for _, e := range evs {
		sb.WriteString("\n\t")
		sb.WriteString(e.String())
	}
	return sb.String()
}

// ---------------------------------------------------------------------------
// Tests.

type frRejectCase struct {
	name    string
	raw     string
	status  int    // 400 unless set
	mention string // a word the error body must contain, case-insensitive
	// partial: the body is chunked and the bad chunk comes after the head, so
	// baton may have forwarded the beginning of the request. The backend must
	// then see no complete request (and in particular no second one).
	partial bool
}

const frTail = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

var frRejectCases = []frRejectCase{
	{name: "differing duplicate Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" + frTail, mention: "content-length"},
	{name: "identical duplicate Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "Content-Length list", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "non-numeric Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "negative Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "plus-signed Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "Content-Length with inner space", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length:  5 5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "Content-Length hex", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\nhello" + frTail, mention: "content-length"},
	{name: "Transfer-Encoding identity", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding identity alone", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding gzip", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding chunked, gzip", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding gzip, chunked", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding xchunked", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding xchunked with Content-Length", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "duplicate Transfer-Encoding lines", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding chunked then identity", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding in HTTP/1.0", raw: "POST /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "transfer-encoding"},
	{name: "Transfer-Encoding with space before colon", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n" + frTail, mention: "header"},
	{name: "invalid chunk size", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n" + frTail, partial: true},
	{name: "invalid chunk size after a good chunk", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nhello\r\n0\r\n\r\n" + frTail, partial: true},
	{name: "overflowing chunk size", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n100000000000000000005\r\nhello\r\n0\r\n\r\n" + frTail, partial: true},
	{name: "chunk data longer than its size", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n" + frTail, partial: true},
	{name: "bare LF after chunk size", raw: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + frTail, partial: true},
	{name: "NUL in a header value", raw: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n" + frTail, mention: "header"},
	{name: "CR alone in a header value", raw: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n" + frTail, mention: "header"},
	{name: "CR alone before a smuggled field", raw: "POST /a HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello" + frTail, mention: "header"},
	{name: "0x01 in a header value", raw: "GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n" + frTail, mention: "header"},
	{name: "missing Host", raw: "GET /a HTTP/1.1\r\nX-A: b\r\n\r\n" + frTail, mention: "host"},
	{name: "duplicate Host", raw: "GET /a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n" + frTail, mention: "host"},
	{name: "space before the colon", raw: "GET /a HTTP/1.1\r\nHost : x\r\n\r\n" + frTail, mention: "header"},
	{name: "tab before the colon", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length\t: 5\r\n\r\nhello" + frTail, mention: "header"},
	{name: "space inside a header name", raw: "POST /a HTTP/1.1\r\nHost: x\r\nContent Length: 5\r\n\r\nhello" + frTail, mention: "header"},
	{name: "header line without a colon", raw: "GET /a HTTP/1.1\r\nHost: x\r\nX-A b\r\n\r\n" + frTail, mention: "colon"},
	{name: "fold before the first field", raw: "GET /a HTTP/1.1\r\n Host: x\r\n\r\n" + frTail},
	{name: "header too large", raw: "GET /a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n" + frTail, status: 431, mention: "larger than"},
}

// TestFramingRejectsAmbiguousRequests sends each ambiguous request raw and
// checks: 400 (or 431) with baton's own explanation, the client connection
// closed after it, and nothing of the request at the backend (for chunked
// bodies broken after the head: no complete request at the backend).
func TestFramingRejectsAmbiguousRequests(t *testing.T) {
	fx := newFrFixture(t, frDebugLog)
	for _, tc := range frRejectCases {
		t.Run(tc.name, func(t *testing.T) {
			mark := fx.rec.mark()
			ex := frSend(t, fx.b.Addr, tc.raw, frTimeout)
			fx.settle(t)
			evs := fx.backendEvents(mark)

			want := tc.status
			if want == 0 {
				want = 400
			}
			rs, err := ex.responses()
			switch {
			case err != nil:
				t.Errorf("unparsable answer: %v\n%q", err, ex.raw)
			case len(rs) != 1:
				t.Errorf("got %d responses, want 1:\n%q", len(rs), ex.raw)
			default:
				r := rs[0]
				t.Logf("%d %q", r.status, r.body)
				if r.status != want {
					t.Errorf("status %d, want %d (body %q)", r.status, want, r.body)
				}
				if !strings.HasPrefix(r.body, "baton:") {
					t.Errorf("body %q does not start with \"baton:\"", r.body)
				}
				if tc.mention != "" && !strings.Contains(strings.ToLower(r.body), tc.mention) {
					t.Errorf("body %q does not mention %q", r.body, tc.mention)
				}
			}
			if !ex.closed {
				t.Errorf("baton did not close the client connection after the response (read ended with %v)", ex.err)
			}
			if !tc.partial {
				if len(evs) != 0 {
					t.Errorf("the backend received something: %s", frDescribe(evs))
				}
				return
			}
			for _, e := range evs {
				switch e.kind {
				case frEvRequest:
					t.Errorf("the backend received a complete request: %s", e)
				case frEvMalformed:
					t.Errorf("the backend received bytes that are not a request: %s", e)
				}
			}
		})
	}
}

type frNormaliseCase struct {
	name       string
	raw        string
	target     string // the one request the backend must see
	chunked    bool   // framed chunked (else Content-Length or no body)
	body       string
	field      string // a field the backend must see, "Name: value"
	afterwards string // a target sent after the irregular request, which must not arrive
}

var frNormaliseCases = []frNormaliseCase{
	{
		name:       "Content-Length and chunked",
		raw:        "POST /cl-te HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
		target:     "/cl-te",
		chunked:    true,
		body:       "hello world",
		afterwards: "/after",
	},
	{
		name:       "chunked and Content-Length",
		raw:        "POST /te-cl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
		target:     "/te-cl",
		chunked:    true,
		body:       "hello",
		afterwards: "/after",
	},
	{
		name:       "bare LF in the header block",
		raw:        "POST /bare-lf HTTP/1.1\r\nHost: x\nX-Bare: 1\nContent-Length: 5\r\n\r\nhelloGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
		target:     "/bare-lf",
		body:       "hello",
		field:      "X-Bare: 1",
		afterwards: "/after",
	},
	{
		name:       "bare LF ending the header block",
		raw:        "GET /bare-lf-end HTTP/1.1\r\nHost: x\r\nX-Bare: 2\n\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
		target:     "/bare-lf-end",
		field:      "X-Bare: 2",
		afterwards: "/after",
	},
	{
		name:       "obs-fold",
		raw:        "GET /fold HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n   b\r\n\tc\r\nX-Next: 1\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n",
		target:     "/fold",
		field:      "X-Fold: a b c",
		afterwards: "/after",
	},
}

// TestFramingNormalisesIrregularRequests: irregular but unambiguous requests
// reach the backend as exactly one clean request (the backend's strict parser
// accepts it), and the client connection closes after the response, so a
// request sent after the irregular one is never forwarded.
func TestFramingNormalisesIrregularRequests(t *testing.T) {
	fx := newFrFixture(t, frDebugLog)
	for _, tc := range frNormaliseCases {
		t.Run(tc.name, func(t *testing.T) {
			mark := fx.rec.mark()
			ex := frSend(t, fx.b.Addr, tc.raw, frTimeout)
			fx.settle(t)
			evs := fx.backendEvents(mark)

			rs, err := ex.responses()
			if !ex.closed {
				t.Errorf("baton did not close the client connection after the response (read ended with %v)", ex.err)
			}
			if err != nil || len(rs) != 1 || rs[0].status != 200 || rs[0].body != "seen "+tc.target {
				t.Errorf("client got %d responses (%v), want one 200 \"seen %s\":\n%q", len(rs), err, tc.target, ex.raw)
			}
			if len(evs) != 1 || evs[0].kind != frEvRequest {
				t.Fatalf("the backend received %s\nwant exactly one request for %s", frDescribe(evs), tc.target)
			}
			req := evs[0].req
			if req.target != tc.target {
				t.Errorf("the backend got target %q, want %q", req.target, tc.target)
			}
			if tc.chunked {
				if !req.chunked || len(req.values("Content-Length")) != 0 {
					t.Errorf("the backend's request is not framed by chunked alone:\n%s", req.head)
				}
			} else if req.chunked {
				t.Errorf("the backend's request is chunked:\n%s", req.head)
			}
			if string(req.body) != tc.body {
				t.Errorf("the backend got body %q, want %q", req.body, tc.body)
			}
			if tc.field != "" {
				name, value, _ := strings.Cut(tc.field, ": ")
				if got := req.values(name); len(got) != 1 || got[0] != value {
					t.Errorf("the backend got %s = %q, want %q:\n%s", name, got, value, req.head)
				}
			}
		})
	}
}

// TestBareLFEndingTheRequestLine: RFC 9112 §2.2 lets a recipient take a bare
// LF as the end of the request line. fasthttp does so; baton forwards the
// request with a clean CRLF request line and, as for bare LF among the
// header fields, ends the connection after the answer, so nothing after the
// irregular bytes is read as another request.
func TestBareLFEndingTheRequestLine(t *testing.T) {
	fx := newFrFixture(t, frDebugLog)
	mark := fx.rec.mark()
	raw := "GET /bare-lf-rl HTTP/1.1\nHost: x\r\nX-Bare: 3\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n"
	ex := frSend(t, fx.b.Addr, raw, frTimeout)
	fx.settle(t)
	evs := fx.backendEvents(mark)
	rs, err := ex.responses()
	if err != nil || len(rs) != 1 || rs[0].body != "seen /bare-lf-rl" || !strings.Contains(string(ex.raw), "Connection: close") {
		t.Errorf("client got %d responses (%v), want one that closes the connection:\n%q", len(rs), err, ex.raw)
	}
	if len(evs) != 1 || evs[0].kind != frEvRequest {
		t.Fatalf("the backend received %s\nwant the first request alone, clean", frDescribe(evs))
	}
	if evs[0].req.target != "/bare-lf-rl" {
		t.Errorf("the backend got %q", evs[0].req.target)
	}
	if got := evs[0].req.values("X-Bare"); len(got) != 1 || got[0] != "3" {
		t.Errorf("the backend got X-Bare = %q:\n%s", got, evs[0].req.head)
	}
}

type frSmuggleCase struct {
	name string
	raw  string
	// body: the request is valid; the backend must get it with this body,
	// and the client connection may stay open.
	body string
}

const frSmuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"

var frSmuggleCases = []frSmuggleCase{
	{name: "CL.TE", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.CL", raw: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "CL.TE with a chunk", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE tab", raw: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE folded", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE xchunked", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE duplicate", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE space before name", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE bare LF", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE.TE CR", raw: "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX: y\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "TE in HTTP/1.0", raw: "POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + frSmuggled},
	{name: "chunk extension with LF", raw: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;\n0\r\n\r\n" + frSmuggled},
	{name: "trailer field ending in bare LF", raw: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\n\r\n" + frSmuggled},
	{name: "trailer section ending in bare LF", raw: "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n" + frSmuggled},
	{name: "GET with a body", raw: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: " + strconv.Itoa(len(frSmuggled)) + "\r\n\r\n" + frSmuggled, body: frSmuggled},
}

// TestSmugglingAttemptsNeverReachTheBackend: classic CL.TE / TE.CL / TE.TE
// payloads and bare-LF tricks. Whatever baton answers, the backend never
// receives the request hidden after the first one, never receives bytes its
// strict parser rejects, and the client connection is closed after an
// irregular request.
func TestSmugglingAttemptsNeverReachTheBackend(t *testing.T) {
	fx := newFrFixture(t, frDebugLog)
	for _, tc := range frSmuggleCases {
		t.Run(tc.name, func(t *testing.T) {
			mark := fx.rec.mark()
			timeout := frTimeout
			if tc.body != "" {
				timeout = 300 * time.Millisecond // the connection stays open
			}
			ex := frSend(t, fx.b.Addr, tc.raw, timeout)
			fx.settle(t)
			evs := fx.backendEvents(mark)
			for _, e := range evs {
				if e.kind == frEvMalformed || (e.kind == frEvRequest && strings.Contains(e.req.target, "smuggled")) {
					t.Errorf("the backend received %s", e)
				}
			}
			if n := len(evs); n > 1 {
				t.Errorf("the backend received %d events, at most one request expected: %s", n, frDescribe(evs))
			}
			rs, err := ex.responses()
			if err != nil || len(rs) != 1 {
				t.Errorf("client got %d responses (%v), want 1:\n%q", len(rs), err, ex.raw)
			}
			if tc.body != "" {
				if len(evs) != 1 || string(evs[0].req.body) != tc.body {
					t.Errorf("the backend received %s\nwant one request with body %q", frDescribe(evs), tc.body)
				}
				return
			}
			if !ex.closed {
				t.Errorf("baton did not close the client connection after the response (read ended with %v)", ex.err)
			}
		})
	}
}

// TestPipelinedRequestsAreAnsweredInOrder is the positive control: valid
// pipelined requests on one connection (the last one chunked) all reach the
// backend, in order, and the answers come back in order on the same
// connection, which stays open between them.
func TestPipelinedRequestsAreAnsweredInOrder(t *testing.T) {
	fx := newFrFixture(t, frDebugLog)
	mark := fx.rec.mark()
	c, err := net.DialTimeout("tcp", fx.b.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	raw := "GET /one HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /three HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /four HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	targets := []string{"/one", "/two", "/three", "/four"}
	for i, target := range targets {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response for %s: %v", target, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(body) != "seen "+target {
			t.Errorf("response %d (for %s): %d %q", i+1, target, res.StatusCode, body)
		}
		if res.Close && i < len(targets)-1 {
			t.Errorf("baton closes the connection after %s", target)
		}
	}

	fx.settle(t)
	evs := fx.backendEvents(mark)
	var got []string
	for _, e := range evs {
		if e.kind != frEvRequest {
			t.Errorf("the backend received %s", e)
			continue
		}
		got = append(got, e.req.target+" "+string(e.req.body))
	}
	want := []string{"/one ", "/two hello", "/three ", "/four abc"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("the backend received %q, want %q", got, want)
	}
}

// TestFramingReferenceParser pins the reference framer the fuzz target
// compares baton with, so a mistake in it cannot hide one in baton.
func TestFramingReferenceParser(t *testing.T) {
	for _, tc := range frRejectCases {
		if tc.status == 431 {
			continue // the reference does not limit sizes
		}
		if n := frReferenceCount([]byte(tc.raw)); n != 0 {
			t.Errorf("%s: reference counts %d requests, want 0", tc.name, n)
		}
	}
	for _, tc := range frNormaliseCases {
		if n := frReferenceCount([]byte(tc.raw)); n != 1 {
			t.Errorf("%s: reference counts %d requests, want 1", tc.name, n)
		}
	}
	for _, tc := range frSmuggleCases {
		// The request hidden after the first one is never framed.
		if n := frReferenceCount([]byte(tc.raw)); n > 1 {
			t.Errorf("%s: reference counts %d requests, want at most 1", tc.name, n)
		}
	}
	valid := map[string]int{
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0000000000000000000005\r\n\r\nhello":             1,
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n":                                                             1,
		"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n":                        2,
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n": 2,
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nT: 1\r\n\r\n" +
			"GET / HTTP/1.1\r\nHost: x\r\n\r\n": 2,
		"GET / HTTP/1.0\r\n\r\n": 1,
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhell": 0,
		"GET / HTTP/1.1\r\nHost: x\r\n":                               0,
	}
	for raw, want := range valid {
		if n := frReferenceCount([]byte(raw)); n != want {
			t.Errorf("reference counts %d requests in %q, want %d", n, raw, want)
		}
	}
	// The backend's strict mode accepts exactly what baton should send.
	strict := frParseRequest([]byte("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), false)
	if strict.status != frComplete || string(strict.req.body) != "hello" || !strict.req.chunked {
		t.Errorf("strict parse of a clean chunked request: %+v", strict)
	}
	for _, raw := range []string{
		"GET / HTTP/1.1\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
		"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
	} {
		if res := frParseRequest([]byte(raw), false); res.status != frMalformed {
			t.Errorf("strict parse of %q: status %d, want malformed", raw, res.status)
		}
	}
}
