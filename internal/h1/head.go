package h1

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
// SP or HTAB and ending in LF). colon: the line had one (without, the whole
// line is the name).
type field struct {
	name, value, cont []byte
	colon             bool
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
		f.colon = true
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

// nameClasses lists the header names baton treats specially, by length:
// a name is compared with the one or two of its length only.
var nameClasses = [18][]struct {
	name  string
	class int
}{
	2:  {{"te", hdrHopByHop}},
	4:  {{"host", hdrHost}},
	6:  {{"expect", hdrExpect}},
	7:  {{"trailer", hdrHopByHop}, {"upgrade", hdrHopByHop}},
	9:  {{"x-real-ip", hdrClientAddr}, {"forwarded", hdrClientAddr}},
	10: {{"connection", hdrConnection}, {"keep-alive", hdrHopByHop}},
	14: {{"content-length", hdrContentLength}},
	15: {{"x-forwarded-for", hdrXFF}},
	16: {{"proxy-connection", hdrHopByHop}, {"x-forwarded-host", hdrXFHost}},
	17: {{"transfer-encoding", hdrTransferEncoding}, {"x-forwarded-proto", hdrXFProto}},
}

// classifyName sorts a header name into the classes baton treats specially.
func classifyName(n []byte) int {
	if len(n) < len(nameClasses) {
		for _, e := range nameClasses[len(n)] {
			if EqualFoldLower(n, e.name) {
				return e.class
			}
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

// ConnTokens holds the header names listed in Connection fields, which are
// hop-by-hop too (RFC 9110 §7.6.1). A fixed array: no allocation. The
// tokens alias the header block they were read from (or the ConnTokens' own
// buffer, for folded fields): they are valid as long as that block is. The
// zero value is empty and ready; a ConnTokens is not safe for concurrent use.
type ConnTokens struct {
	n   int
	tok [16][]byte
	buf []byte // holds the joined values of folded Connection fields
}

// Reset empties ct, keeping its buffer.
func (ct *ConnTokens) Reset() {
	ct.n = 0
	ct.tok = [16][]byte{}
	ct.buf = ct.buf[:0]
}

// addField records the tokens of a Connection field, joining obs-fold
// continuation lines into the tokens' own buffer.
func (ct *ConnTokens) addField(f field) []byte {
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
func (ct *ConnTokens) add(v []byte) {
	for len(v) > 0 {
		var t []byte
		t, v = nextToken(v)
		if len(t) == 0 || EqualFoldLower(t, "close") || EqualFoldLower(t, "keep-alive") {
			continue
		}
		if ct.n == len(ct.tok) {
			return // beyond 16 names: the rest pass (no real client sends that many)
		}
		ct.tok[ct.n] = t
		ct.n++
	}
}

// Has reports whether name (any case) was listed. "close" and "keep-alive"
// are options, not names, and never listed; beyond 16 names the rest are
// not kept.
func (ct *ConnTokens) Has(name []byte) bool {
	for i := 0; i < ct.n; i++ {
		if bytes.EqualFold(ct.tok[i], name) {
			return true
		}
	}
	return false
}

// RequestScan is what one pass over a request's raw header block found.
// BadName and Conn's tokens alias the block given to Scan.
type RequestScan struct {
	BareLF, Folded bool   // a line ended in a bare LF; a field was obs-folded
	BadName        []byte // the first field name that is not a token, or nil
	TE             bool   // a Transfer-Encoding field is present
	XFF            bool   // an X-Forwarded-For field is present; the caller clears it unless Trusted
	Addr           bool   // an X-Real-IP or Forwarded field is present
	Forwarded      bool   // an X-Forwarded-Proto or X-Forwarded-Host field is present
	Trusted        bool   // the peer is a trusted proxy (set by the caller when XFF, Addr or Forwarded)
	Conn           ConnTokens
}

// Scan reads the raw request header block once. It rejects nothing itself:
// the caller decides what BadName, TE, BareLF and Folded mean for the
// request.
func (sc *RequestScan) Scan(raw []byte) {
	sc.BareLF, sc.Folded, sc.TE, sc.XFF, sc.Addr, sc.Forwarded, sc.Trusted, sc.BadName = false, false, false, false, false, false, false, nil
	sc.Conn.Reset()
	for i := 0; ; {
		f, next, lf, fold, ok := nextField(raw, i)
		sc.BareLF = sc.BareLF || lf
		if !ok {
			break
		}
		i = next
		sc.Folded = sc.Folded || fold
		if sc.BadName == nil && !validName(f.name) {
			// fasthttp accepts "Content Length: 5"; a backend might not
			// read it the way baton does, so it is refused.
			sc.BadName = f.name
		}
		switch classifyName(f.name) {
		case hdrConnection:
			sc.Conn.addField(f)
		case hdrTransferEncoding:
			sc.TE = true
		case hdrXFF:
			sc.XFF = true
		case hdrClientAddr:
			sc.Addr = true
		case hdrXFProto, hdrXFHost:
			sc.Forwarded = true
		}
	}
}

// AppendRequestHead appends the head baton sends to a backend: the client's
// request line (with the target exactly as sent) and header fields in their
// order, minus hop-by-hop fields and those named in Connection, then
// X-Forwarded-For (with sc.XFF, set for a trusted proxy, its values with its
// address appended; else the client's address alone),
// X-Forwarded-Proto and X-Forwarded-Host (a trusted proxy's own when it
// sent them: it knows the scheme and host the client used, where baton
// sees only the proxy), and baton's own framing. Hop-by-hop
// fields go before baton adds its own, so a client cannot name baton's
// headers in Connection to strip them (golang/go#50580).
func AppendRequestHead(dst []byte, h *fasthttp.RequestHeader, sc *RequestScan, target, host, clientIP []byte, proto string, bodyLen int64) []byte {
	dst = append(dst, h.Method()...)
	dst = append(dst, ' ')
	dst = append(dst, target...)
	dst = append(dst, " HTTP/1.1\r\n"...)
	raw := h.RawHeaders()
	if sc.XFF {
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
	wroteHost, wroteProto, wroteXFHost := false, false, false
	for i := 0; ; {
		f, next, _, _, ok := nextField(raw, i)
		if !ok {
			break
		}
		i = next
		switch classifyName(f.name) {
		case hdrOther:
			if sc.Conn.n > 0 && sc.Conn.Has(f.name) {
				continue
			}
		case hdrHost:
			if host != nil {
				continue // absolute-form target: its authority is the Host
			}
			wroteHost = true
		case hdrClientAddr:
			if !sc.Trusted {
				continue // a client naming its own address
			}
		case hdrXFProto:
			if !sc.Trusted {
				continue
			}
			wroteProto = true
		case hdrXFHost:
			if !sc.Trusted {
				continue
			}
			wroteXFHost = true
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
	if !sc.XFF {
		dst = append(dst, "X-Forwarded-For: "...)
		dst = append(dst, clientIP...)
		dst = append(dst, "\r\n"...)
	}
	if !wroteProto {
		dst = append(dst, "X-Forwarded-Proto: "...)
		dst = append(dst, proto...)
		dst = append(dst, "\r\n"...)
	}
	if !wroteXFHost {
		dst = append(dst, "X-Forwarded-Host: "...)
		if host == nil {
			host = h.Host()
		}
		dst = append(dst, host...)
		dst = append(dst, "\r\n"...)
	}
	switch {
	case bodyLen > 0:
		dst = append(dst, "Content-Length: "...)
		dst = strconv.AppendInt(dst, bodyLen, 10)
		dst = append(dst, "\r\n"...)
	case bodyLen == BodyChunked:
		dst = append(dst, "Transfer-Encoding: chunked\r\n"...)
	case bodyLen == 0 && !h.IsGet() && !h.IsHead():
		// An explicit zero says "no body" to every backend.
		if h.ContentLength() == 0 {
			dst = append(dst, "Content-Length: 0\r\n"...)
		}
	}
	return append(dst, "\r\n"...)
}

const BodyChunked = -1

// Framing is how a response body is delimited, RFC 9112 §6.3.
type Framing uint8

const (
	FrameNone    Framing = iota // HEAD, 1xx, 204, 304
	FrameLength                 // Content-Length
	FrameChunked                // Transfer-Encoding: chunked
	FrameClose                  // neither: the body runs until the backend closes
)

// The errors ReadResponseHead returns besides a *BadResponseError and br's
// own read errors.
var (
	ErrNoResponse     = errors.New("backend closed the connection without responding")
	ErrHeadTooLarge   = fmt.Errorf("backend response header is larger than %d bytes", 16<<10)
	ErrTruncatedHead  = errors.New("backend closed the connection in the middle of the response header")
	ErrTooManyInterim = errors.New("backend sent too many 1xx responses")
)

// BadResponseError is a response baton will not pass on: its head (or its
// chunked framing) is malformed or ambiguous. Error says what was wrong.
type BadResponseError struct{ why string }

func (e *BadResponseError) Error() string { return "invalid response from backend: " + e.why }

func badResponse(format string, args ...any) error {
	return &BadResponseError{why: fmt.Sprintf(format, args...)}
}

// ResponseHead is what ReadResponseHead learned beyond what it put in the
// response header.
type ResponseHead struct {
	Framing   Framing
	Length    int64 // with FrameLength, the body's length
	CloseConn bool  // the backend asked to close, or framing requires it
	HTTP10    bool  // an HTTP/1.0 response
	Announced bool  // a response without a body by rule announced one
}

// ReadResponseHead reads the backend's response head from br into resp,
// skipping interim 1xx responses. It validates the head strictly (a response
// baton cannot frame is never passed on), drops hop-by-hop fields and those
// named in Connection, and leaves the body in br. isHead: the request was a
// HEAD, so no body follows whatever the head says. ct is scratch for the
// response's Connection tokens (they alias br's buffer and are stale once
// this returns); scratch is grown as needed for joined obs-fold values and
// returned for reuse. The head must fit in br's buffer (else
// ErrHeadTooLarge). On error, resp is as it was.
func ReadResponseHead(br *bufio.Reader, resp *fasthttp.ResponseHeader, isHead bool, ct *ConnTokens, scratch []byte) (rh ResponseHead, _ []byte, err error) {
	for interim := 0; ; interim++ {
		if interim > 10 {
			return rh, scratch, ErrTooManyInterim
		}
		var n int
		n, err = peekHead(br)
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
		rh.HTTP10 = block[7] == '0'
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
				return 0, ErrNoResponse
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
			return 0, ErrHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			if errors.Is(err, io.EOF) {
				return 0, ErrTruncatedHead
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
func fillResponse(resp *fasthttp.ResponseHeader, code int, reason, b []byte, isHead bool, ct *ConnTokens, scratch []byte, rh *ResponseHead) ([]byte, error) {
	ct.Reset()
	length := int64(-1)
	chunked, te, keepAlive := false, false, false
	// Pass 1: validate, find framing and Connection tokens.
	for i := 0; ; {
		f, next, _, _, ok := nextField(b, i)
		if !ok {
			break
		}
		i = next
		if len(f.name) == 0 || !validName(f.name) || !f.colon {
			// Without a colon, net/http and fasthttp refuse the line
			// (found by FuzzResponseHead; baton passed it on as a field
			// with an empty value).
			return scratch, badResponse("header name %.40q", f.name)
		}
		// A bare CR is refused, not replaced with SP (RFC 9112 §2.2 allows
		// either): baton would otherwise read Connection and the framing
		// fields with the CR while the client got a space (found by
		// FuzzResponseHead).
		if !validValue(f.value) || !validFold(f.cont) {
			return scratch, badResponse("control character in header %.40q", f.name)
		}
		switch classifyName(f.name) {
		case hdrConnection:
			v := ct.addField(f)
			rh.CloseConn = rh.CloseConn || hasToken(v, "close")
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
			if !EqualFoldLower(trimOWS(f.value), "chunked") || len(f.cont) > 0 {
				return scratch, badResponse("Transfer-Encoding %.40q (only chunked is supported)", f.value)
			}
			chunked = true
		}
	}

	if rh.HTTP10 && !keepAlive {
		rh.CloseConn = true
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
		if ct.n > 0 && ct.Has(f.name) {
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
		rh.Framing = FrameNone
		if length >= 0 && code != 204 {
			resp.SetContentLength(int(length))
		}
		// A body announced where none may follow: a broken backend might
		// send it anyway, after baton has moved on.
		rh.Announced = length > 0 || chunked
	case chunked:
		rh.Framing = FrameChunked
		// Content-Length beside chunked is a framing conflict: chunked wins,
		// and the connection is not reused (RFC 9112 §6.3 item 3). An
		// HTTP/1.0 message with Transfer-Encoding has faulty framing too
		// (§6.1): it is read as chunked and the connection closed.
		if length >= 0 || rh.HTTP10 {
			rh.CloseConn = true
		}
	case length >= 0:
		rh.Framing, rh.Length = FrameLength, length
	default:
		rh.Framing = FrameClose
		rh.CloseConn = true
	}
	return scratch, nil
}

// nextToken splits the first element off a comma-separated list value,
// without its surrounding whitespace.
func nextToken(v []byte) (tok, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		return trimOWS(v[:i]), v[i+1:]
	}
	return trimOWS(v), nil
}

func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var t []byte
		t, v = nextToken(v)
		if EqualFoldLower(t, tok) {
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

// validValueByte allows HTAB, SP, visible ASCII and obs-text.
func validValueByte(c byte) bool {
	return c == '\t' || (c >= ' ' && c != 0x7f)
}

func validValue(v []byte) bool {
	for _, c := range v {
		if !validValueByte(c) {
			return false
		}
	}
	return true
}

// validFold checks raw obs-fold continuation lines: valid values, each
// ending in LF or CRLF.
func validFold(cont []byte) bool {
	for len(cont) > 0 {
		line, i, _ := readLine(cont, 0)
		if !validValue(line) {
			return false
		}
		cont = cont[i:]
	}
	return true
}

// EqualFoldLower compares b with an already lower-case ASCII s.
func EqualFoldLower(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
