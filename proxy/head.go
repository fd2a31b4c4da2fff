package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/valyala/fasthttp"
)

// A header field as read from a raw header block: name, first line of value
// (trimmed), and any obs-fold continuation lines (raw, each starting with
// SP or HTAB and ending in LF).
type field struct {
	name, value, cont []byte
}

// nextField parses the field at b[i:]. It returns ok=false at the blank line
// that ends the block (or the end of b). Lines may end in CRLF or a bare LF;
// flags report which irregular forms were seen.
func nextField(b []byte, i int) (f field, next int, bareLF, folded, ok bool) {
	line, i, lf := readLine(b, i)
	if len(line) == 0 {
		return f, i, lf, false, false
	}
	bareLF = lf
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		colon = len(line)
	}
	f.name = line[:colon]
	if colon < len(line) {
		f.value = trimOWS(line[colon+1:])
	}
	start := i
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		_, i, lf = readLine(b, i)
		bareLF = bareLF || lf
		folded = true
	}
	f.cont = b[start:i]
	return f, i, bareLF, folded, true
}

// readLine returns the line at b[i:] without its line end, the index after
// it, and whether it ended in a bare LF.
func readLine(b []byte, i int) (line []byte, next int, bareLF bool) {
	j := bytes.IndexByte(b[i:], '\n')
	if j < 0 {
		return b[i:], len(b), false
	}
	line = b[i : i+j]
	next = i + j + 1
	if len(line) > 0 && line[len(line)-1] == '\r' {
		return line[:len(line)-1], next, false
	}
	return line, next, true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// appendValue appends f's whole value, continuation lines joined with one
// space each (RFC 9112 §5.2 lets a proxy replace obs-fold with SP).
func appendValue(dst []byte, f field) []byte {
	dst = append(dst, f.value...)
	c := f.cont
	for len(c) > 0 {
		line, i, _ := readLine(c, 0)
		c = c[i:]
		if v := trimOWS(line); len(v) > 0 {
			if len(dst) > 0 {
				dst = append(dst, ' ')
			}
			dst = append(dst, v...)
		}
	}
	return dst
}

// hop-by-hop and baton-managed header names, as bit flags.
const (
	hdrOther = iota
	hdrConnection
	hdrHopByHop // Keep-Alive, Proxy-Connection, TE, Trailer, Upgrade
	hdrTransferEncoding
	hdrContentLength
	hdrHost
	hdrXFF
	hdrXFProto
	hdrXFHost
	hdrExpect
	hdrClientAddr // X-Real-IP, Forwarded: a client address, kept only from a trusted proxy
	hdrLookalike  // X_Forwarded_For and the like: read by CGI-style apps as the real one
)

// classifyName sorts a header name into the classes baton treats specially.
func classifyName(n []byte) int {
	switch len(n) {
	case 2:
		if equalFoldLower(n, "te") {
			return hdrHopByHop
		}
	case 4:
		if equalFoldLower(n, "host") {
			return hdrHost
		}
	case 6:
		if equalFoldLower(n, "expect") {
			return hdrExpect
		}
	case 9:
		if equalFoldLower(n, "x-real-ip") || equalFoldLower(n, "forwarded") {
			return hdrClientAddr
		}
	case 7:
		if equalFoldLower(n, "trailer") || equalFoldLower(n, "upgrade") {
			return hdrHopByHop
		}
	case 10:
		if equalFoldLower(n, "connection") {
			return hdrConnection
		}
		if equalFoldLower(n, "keep-alive") {
			return hdrHopByHop
		}
	case 14:
		if equalFoldLower(n, "content-length") {
			return hdrContentLength
		}
	case 15:
		if equalFoldLower(n, "x-forwarded-for") {
			return hdrXFF
		}
	case 16:
		if equalFoldLower(n, "proxy-connection") {
			return hdrHopByHop
		}
		if equalFoldLower(n, "x-forwarded-host") {
			return hdrXFHost
		}
	case 17:
		if equalFoldLower(n, "transfer-encoding") {
			return hdrTransferEncoding
		}
		if equalFoldLower(n, "x-forwarded-proto") {
			return hdrXFProto
		}
	}
	if bytes.IndexByte(n, '_') >= 0 {
		return classifyLookalike(n)
	}
	return hdrOther
}

// classifyLookalike returns hdrLookalike for a name with underscores that
// reads as a header baton sets or vets once "_" is "-" (X_Forwarded_For):
// applications that map both to one name (CGI, WSGI, Rack) would take the
// client's value for baton's.
func classifyLookalike(n []byte) int {
	var buf [20]byte
	if len(n) > len(buf) {
		return hdrOther
	}
	b := buf[:len(n)]
	for i, c := range n {
		if c == '_' {
			c = '-'
		}
		b[i] = c
	}
	if c := classifyName(b); c != hdrOther {
		return hdrLookalike
	}
	return hdrOther
}

// connTokens holds the header names listed in Connection fields, which are
// hop-by-hop too (RFC 9110 §7.6.1). A fixed array: no allocation.
type connTokens struct {
	n   int
	tok [16][]byte
	buf []byte // holds the joined values of folded Connection fields
}

func (ct *connTokens) reset() {
	ct.n = 0
	ct.tok = [16][]byte{}
	ct.buf = ct.buf[:0]
}

// addField records the tokens of a Connection field, joining obs-fold
// continuation lines into the tokens' own buffer.
func (ct *connTokens) addField(f field) []byte {
	if len(f.cont) == 0 {
		ct.add(f.value)
		return f.value
	}
	start := len(ct.buf)
	ct.buf = appendValue(ct.buf, f)
	v := ct.buf[start:]
	ct.add(v)
	return v
}

// add records the comma-separated tokens of one Connection value.
func (ct *connTokens) add(v []byte) {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var t []byte
		if i < 0 {
			t, v = v, nil
		} else {
			t, v = v[:i], v[i+1:]
		}
		t = trimOWS(t)
		if len(t) == 0 || equalFoldLower(t, "close") || equalFoldLower(t, "keep-alive") {
			continue
		}
		if ct.n == len(ct.tok) {
			return // beyond 16 names: the rest pass (no real client sends that many)
		}
		ct.tok[ct.n] = t
		ct.n++
	}
}

func (ct *connTokens) has(name []byte) bool {
	for i := 0; i < ct.n; i++ {
		if bytes.EqualFold(ct.tok[i], name) {
			return true
		}
	}
	return false
}

// reqScan is what one pass over a request's raw header block found.
type reqScan struct {
	bareLF, folded bool
	badName        []byte // the first field name that is not a token, or nil
	te             bool   // a Transfer-Encoding field is present
	xff            bool
	addr           bool // an X-Real-IP or Forwarded field is present
	trusted        bool // the peer is a trusted proxy (set by the caller when xff or addr)
	conn           connTokens
}

// scan reads the raw request header block once.
func (sc *reqScan) scan(raw []byte) {
	sc.bareLF, sc.folded, sc.te, sc.xff, sc.addr, sc.trusted, sc.badName = false, false, false, false, false, false, nil
	sc.conn.reset()
	for i := 0; ; {
		f, next, lf, fold, ok := nextField(raw, i)
		sc.bareLF = sc.bareLF || lf
		if !ok {
			break
		}
		i = next
		sc.folded = sc.folded || fold
		if sc.badName == nil && !validName(f.name) {
			// fasthttp accepts "Content Length: 5"; a backend might not
			// read it the way baton does, so it is refused.
			sc.badName = f.name
		}
		switch classifyName(f.name) {
		case hdrConnection:
			sc.conn.addField(f)
		case hdrTransferEncoding:
			sc.te = true
		case hdrXFF:
			sc.xff = true
		case hdrClientAddr:
			sc.addr = true
		}
	}
}

// appendRequestHead appends the head baton sends to a backend: the client's
// request line (with the target exactly as sent) and header fields in their
// order, minus hop-by-hop fields and those named in Connection, then
// X-Forwarded-For (with sc.xff, set for a trusted proxy, its values with its
// address appended; else the client's address alone),
// X-Forwarded-Proto, X-Forwarded-Host and baton's own framing. Hop-by-hop
// fields go before baton adds its own, so a client cannot name baton's
// headers in Connection to strip them (golang/go#50580).
func appendRequestHead(dst []byte, h *fasthttp.RequestHeader, sc *reqScan, target, host, clientIP []byte, proto string, bodyLen int64) []byte {
	dst = append(dst, h.Method()...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\n"...)
	raw := h.RawHeaders()
	if sc.xff {
		// The merged X-Forwarded-For goes first, where it usually was.
		dst = append(dst, "X-Forwarded-For: "...)
		n := len(dst)
		for i := 0; ; {
			f, next, _, _, ok := nextField(raw, i)
			if !ok {
				break
			}
			i = next
			if classifyName(f.name) == hdrXFF {
				if len(dst) > n {
					dst = append(dst, ", "...)
				}
				dst = appendValue(dst, f)
			}
		}
		if len(dst) > n {
			dst = append(dst, ", "...)
		}
		dst = append(dst, clientIP...)
		dst = append(dst, "\r\n"...)
	}
	wroteHost := false
	for i := 0; ; {
		f, next, _, _, ok := nextField(raw, i)
		if !ok {
			break
		}
		i = next
		switch classifyName(f.name) {
		case hdrOther:
			if sc.conn.n > 0 && sc.conn.has(f.name) {
				continue
			}
		case hdrHost:
			if host != nil {
				continue // absolute-form target: its authority is the Host
			}
			wroteHost = true
		case hdrClientAddr:
			if !sc.trusted {
				continue // a client naming its own address
			}
		default:
			continue
		}
		dst = append(dst, f.name...)
		dst = append(dst, ": "...)
		dst = appendValue(dst, f)
		dst = append(dst, "\r\n"...)
	}
	if !wroteHost {
		if host == nil {
			host = h.Host()
		}
		dst = append(dst, "Host: "...)
		dst = append(dst, host...)
		dst = append(dst, "\r\n"...)
	}
	if !sc.xff {
		dst = append(dst, "X-Forwarded-For: "...)
		dst = append(dst, clientIP...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "X-Forwarded-Proto: "...)
	dst = append(dst, proto...)
	dst = append(dst, "\r\nX-Forwarded-Host: "...)
	if host == nil {
		host = h.Host()
	}
	dst = append(dst, host...)
	dst = append(dst, "\r\n"...)
	switch {
	case bodyLen > 0:
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, bodyLen, 10)
		dst = append(dst, "\r\n"...)
	case bodyLen == bodyChunked:
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	case bodyLen == 0 && !h.IsGet() && !h.IsHead():
		// An explicit zero says "no body" to every backend.
		if h.ContentLength() == 0 {
			dst = append(dst, "Content-Length: 0\r\n"...)
		}
	}
	return append(dst, "\r\n"...)
}

const bodyChunked = -1

// Response framing, RFC 9112 §6.3.
type framing uint8

const (
	frameNone    framing = iota // HEAD, 1xx, 204, 304
	frameLength                 // Content-Length
	frameChunked                // Transfer-Encoding: chunked
	frameClose                  // neither: the body runs until the backend closes
)

var (
	errNoResponse     = errors.New("backend closed the connection without responding")
	errHeadTooLarge   = fmt.Errorf("backend response header is larger than %d bytes", 16<<10)
	errTruncatedHead  = errors.New("backend closed the connection in the middle of the response header")
	errTooManyInterim = errors.New("backend sent too many 1xx responses")
)

// badResponseError is a response baton will not pass on.
type badResponseError struct{ why string }

func (e *badResponseError) Error() string { return "invalid response from backend: " + e.why }

func badResponse(format string, args ...any) error {
	return &badResponseError{why: fmt.Sprintf(format, args...)}
}

// respHead is what readResponseHead learned beyond what it put in the
// response header.
type respHead struct {
	framing   framing
	length    int64
	closeConn bool // the backend asked to close, or framing requires it
	http10    bool // an HTTP/1.0 response
	announced bool // a response without a body by rule announced one
	got       int  // bytes of response read, for "did the backend say anything"
}

// readResponseHead reads the backend's response head from br into resp,
// skipping interim 1xx responses. It validates the head strictly (a response
// baton cannot frame is never passed on), drops hop-by-hop fields and those
// named in Connection, and leaves the body in br.
func readResponseHead(br *bufio.Reader, resp *fasthttp.ResponseHeader, isHead bool, ct *connTokens, scratch []byte) (rh respHead, _ []byte, err error) {
	for interim := 0; ; interim++ {
		if interim > 10 {
			return rh, scratch, errTooManyInterim
		}
		var n int
		n, err = peekHead(br)
		rh.got += br.Buffered()
		if err != nil {
			return rh, scratch, err
		}
		block, _ := br.Peek(n)
		code, status, body, perr := parseStatusLine(block)
		if perr != nil {
			return rh, scratch, perr
		}
		// An HTTP/1.0 response closes the connection unless it says
		// "Connection: keep-alive" (fillResponse clears this then).
		rh.http10 = block[7] == '0'
		if code >= 100 && code < 200 {
			if code == 101 {
				return rh, scratch, badResponse("101 Switching Protocols to a request that did not ask for an upgrade")
			}
			_, _ = br.Discard(n)
			continue
		}
		scratch, err = fillResponse(resp, code, status, block[body:], isHead, ct, scratch, &rh)
		if err != nil {
			return rh, scratch, err
		}
		_, _ = br.Discard(n)
		return rh, scratch, nil
	}
}

// peekHead waits until br holds a complete head and returns its length
// (through the blank line).
func peekHead(br *bufio.Reader) (int, error) {
	if br.Buffered() == 0 {
		if _, err := br.Peek(1); err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errNoResponse
			}
			return 0, err
		}
	}
	searched := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		// A blank line: "\n\r\n" or "\n\n".
		for i := max(searched-2, 0); i < len(buf); i++ {
			if buf[i] != '\n' {
				continue
			}
			if i+1 < len(buf) && buf[i+1] == '\n' {
				return i + 2, nil
			}
			if i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n' {
				return i + 3, nil
			}
		}
		searched = len(buf)
		if len(buf) >= br.Size() {
			return 0, errHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) {
				return 0, errTruncatedHead
			}
			return 0, err
		}
	}
}

// parseStatusLine parses "HTTP/1.x NNN reason" and returns the code, the
// reason phrase and the offset of the header fields.
func parseStatusLine(b []byte) (code int, reason []byte, next int, err error) {
	line, next, _ := readLine(b, 0)
	if len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' {
		return 0, nil, 0, badResponse("status line %.40q", line)
	}
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return 0, nil, 0, badResponse("status code in %.40q", line)
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 || code > 599 || (len(line) > 12 && line[12] != ' ') {
		return 0, nil, 0, badResponse("status line %.40q", line)
	}
	if len(line) > 13 {
		reason = line[13:]
	}
	for _, c := range reason {
		if !validValueByte(c) {
			return 0, nil, 0, badResponse("control character in the status line")
		}
	}
	return code, reason, next, nil
}

// fillResponse validates the header fields in b and copies the end-to-end
// ones into resp.
func fillResponse(resp *fasthttp.ResponseHeader, code int, reason, b []byte, isHead bool, ct *connTokens, scratch []byte, rh *respHead) ([]byte, error) {
	ct.reset()
	length := int64(-1)
	chunked, te, keepAlive := false, false, false
	// Pass 1: validate, find framing and Connection tokens.
	for i := 0; ; {
		f, next, _, _, ok := nextField(b, i)
		if !ok {
			break
		}
		i = next
		if len(f.name) == 0 || !validName(f.name) {
			return scratch, badResponse("header name %.40q", f.name)
		}
		if !validValue(f.value) || !validValue(f.cont) {
			return scratch, badResponse("control character in header %.40q", f.name)
		}
		switch classifyName(f.name) {
		case hdrConnection:
			v := ct.addField(f)
			rh.closeConn = rh.closeConn || hasToken(v, "close")
			keepAlive = keepAlive || hasToken(v, "keep-alive")
		case hdrContentLength:
			n, ok := parseLength(f.value)
			if !ok || len(f.cont) > 0 || (length >= 0 && n != length) {
				return scratch, badResponse("Content-Length %.40q", f.value)
			}
			length = n
		case hdrTransferEncoding:
			if te {
				return scratch, badResponse("more than one Transfer-Encoding")
			}
			te = true
			if !equalFoldLower(trimOWS(f.value), "chunked") || len(f.cont) > 0 {
				return scratch, badResponse("Transfer-Encoding %.40q (only chunked is supported)", f.value)
			}
			chunked = true
		}
	}

	if rh.http10 && !keepAlive {
		rh.closeConn = true
	}
	resp.SetStatusCode(code)
	if len(reason) > 0 {
		resp.SetStatusMessage(reason)
	}
	// Pass 2: copy end-to-end fields in order.
	for i := 0; ; {
		f, next, _, _, ok := nextField(b, i)
		if !ok {
			break
		}
		i = next
		switch classifyName(f.name) {
		case hdrConnection, hdrHopByHop, hdrTransferEncoding, hdrContentLength:
			continue // hop-by-hop, or framing baton sets itself
		}
		if ct.n > 0 && ct.has(f.name) {
			continue
		}
		if len(f.cont) > 0 {
			scratch = appendValue(scratch[:0], f)
			resp.AddBytesKV(f.name, scratch)
		} else {
			resp.AddBytesKV(f.name, f.value)
		}
	}

	switch {
	case isHead || code < 200 || code == 204 || code == 304:
		rh.framing = frameNone
		if length >= 0 && code != 204 {
			resp.SetContentLength(int(length))
		}
		// A body announced where none may follow: a broken backend might
		// send it anyway, after baton has moved on.
		rh.announced = length > 0 || chunked
	case chunked:
		rh.framing = frameChunked
		// Content-Length beside chunked is a framing conflict: chunked wins,
		// and the connection is not reused (RFC 9112 §6.3 item 3). An
		// HTTP/1.0 message with Transfer-Encoding has faulty framing too
		// (§6.1): it is read as chunked and the connection closed.
		if length >= 0 || rh.http10 {
			rh.closeConn = true
		}
	case length >= 0:
		rh.framing, rh.length = frameLength, length
	default:
		rh.framing = frameClose
		rh.closeConn = true
	}
	return scratch, nil
}

func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		i := bytes.IndexByte(v, ',')
		var t []byte
		if i < 0 {
			t, v = v, nil
		} else {
			t, v = v[:i], v[i+1:]
		}
		if equalFoldLower(trimOWS(t), tok) {
			return true
		}
	}
	return false
}

func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// tchar, RFC 9110 §5.6.2.
var tcharTable = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func validName(n []byte) bool {
	for _, c := range n {
		if !tcharTable[c] {
			return false
		}
	}
	return true
}

// validValueByte allows HTAB, SP, visible ASCII and obs-text; continuation
// line ends (CR, LF) are allowed by validValue for the raw fold bytes.
func validValueByte(c byte) bool {
	return c == '\t' || (c >= ' ' && c != 0x7f)
}

func validValue(v []byte) bool {
	for _, c := range v {
		if !validValueByte(c) && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}
