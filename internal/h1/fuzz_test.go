package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// fuzzBufSize is the size of a backend connection's read buffer
// (pool.ReadBufferSize), which bounds a head and a chunk line.
const fuzzBufSize = 16 << 10

// responseHeadSeeds are heads worth starting from: the ordinary, every
// framing, and the ambiguous ones a smuggler would try.
var responseHeadSeeds = []string{
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nServer: x\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-A: 1\r\nX-A: 2\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\n\r\nuntil close",
	"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
	"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi",
	"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
	"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 2\r\n\r\n",
	"HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: close\r\nX-A: 1\r\n\r\n",
	// Smuggling and desync shapes.
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nContent-Length: 2\r\n\r\nhi",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding: \tChunked \r\n\r\n",
	"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n 2\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\n Content-Length: 5\r\n\r\nhello",
	"HTTP/1.1 200 OK\r\nX: a\r\n\tfolded\r\n  twice\r\n\r\n",
	"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi",
	"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
	"HTTP/1.1 200 OK\r\nX: caf\xc3\xa9\r\n\r\n",
	"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
	"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
	"HTTP/1.1 200\r\n\r\n",
	"HTTP/1.1 200 \r\n\r\n",
	"HTTP/1.1 999 Nine\r\n\r\n",
	"HTTP/1.1 099 Low\r\n\r\n",
	"HTTP/2.0 200 OK\r\n\r\n",
	"HTTP/1.1  200 OK\r\n\r\n",
	"http/1.1 200 OK\r\n\r\n",
	"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n",
	"",
}

// FuzzResponseHead feeds arbitrary bytes as a backend's response head to
// ReadResponseHead and, differentially, to net/http.ReadResponse (with 1xx
// responses skipped the way baton skips them). When ours accepts, net/http
// must accept the same head, end it at the same byte, and agree on the
// status code, the framing (Content-Length value, chunked, or until close;
// none where no body may follow) and the values of the fields we keep; and
// where net/http closes the connection after the response, so must we. So
// when net/http rejects a head — a duplicate differing Content-Length, a
// Transfer-Encoding other than chunked, a malformed line — ours must reject
// it too. Transfer-Encoding beside Content-Length net/http accepts, chunked
// winning, as we do; we also close the connection after it.
//
// Intended disagreements:
//   - We are stricter in places, and a head we reject needs no check (the
//     client gets a 502): status codes outside 100–599, a 101 baton did
//     not ask for, a reason with control characters, Content-Length over
//     18 digits, a Transfer-Encoding other than chunked on HTTP/1.0.
//   - Transfer-Encoding on HTTP/1.0: net/http ignores it
//     (golang/go#12785); we read the body as chunked and close (RFC 9112
//     §6.1: its framing is faulty). Checked as that, not against net/http.
//   - Interim 1xx heads are not forwarded: we check their status line and
//     skip to the blank line, where net/http also parses their fields and
//     may reject them. Skipped when net/http's error is in an interim head.
//   - An obs-fold line with only whitespace: net/http keeps a space for it
//     (and so trailing or double spaces), we drop it. Values in heads with
//     obs-fold are compared word by word.
//   - fasthttp keeps one Content-Type, Content-Encoding and Server (the
//     last one added, and none if that is empty) and drops Date (baton
//     writes its own): those are compared with net/http's last value, Date
//     not at all.
func FuzzResponseHead(f *testing.F) {
	for _, s := range responseHeadSeeds {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, in []byte, isHead bool) {
		var resp fasthttp.ResponseHeader
		resp.SetNoDefaultContentType(true)
		var ct ConnTokens
		src := bytes.NewReader(in)
		br := bufio.NewReaderSize(src, fuzzBufSize)
		rh, _, err := ReadResponseHead(br, &resp, isHead, &ct, nil)
		if err != nil {
			var bre *BadResponseError
			if !errors.As(err, &bre) && !errors.Is(err, ErrNoResponse) && !errors.Is(err, ErrTruncatedHead) &&
				!errors.Is(err, ErrHeadTooLarge) && !errors.Is(err, ErrTooManyInterim) {
				t.Fatalf("ReadResponseHead(%q) failed with an error of no documented kind: %v", in, err)
			}
			return
		}
		ourEnd := len(in) - src.Len() - br.Buffered()

		method := "GET"
		if isHead {
			method = "HEAD"
		}
		nres, raw, nerr, interim, netEnd := netReadResponse(in, method)
		if nerr != nil {
			if interim {
				return // net/http read an interim head's fields; we skip them
			}
			t.Fatalf("baton accepts a head net/http rejects (%v):\n%q", nerr, in)
		}
		if netEnd != ourEnd {
			t.Fatalf("the head ends at byte %d for baton, %d for net/http:\n%q", ourEnd, netEnd, in)
		}
		if nres.StatusCode != resp.StatusCode() {
			t.Fatalf("status %d for baton, %d for net/http:\n%q", resp.StatusCode(), nres.StatusCode, in)
		}
		if rh.HTTP10 != (nres.ProtoMinor == 0) {
			t.Fatalf("HTTP/1.0 is %v for baton, net/http read HTTP/1.%d:\n%q", rh.HTTP10, nres.ProtoMinor, in)
		}
		http10TE := rh.HTTP10 && len(raw.Values("Transfer-Encoding")) > 0
		switch {
		case http10TE:
			// net/http ignores Transfer-Encoding on HTTP/1.0; we frame by
			// it and close.
			if rh.Framing != FrameNone && (rh.Framing != FrameChunked || !rh.CloseConn) {
				t.Fatalf("HTTP/1.0 with Transfer-Encoding: framing %d, close %v; want chunked and close:\n%q", rh.Framing, rh.CloseConn, in)
			}
		case rh.Framing == FrameNone:
			if nres.Body != http.NoBody {
				t.Fatalf("no body for baton, net/http reads one (length %d, %q):\n%q", nres.ContentLength, nres.TransferEncoding, in)
			}
		case rh.Framing == FrameChunked:
			if !slices.Equal(nres.TransferEncoding, []string{"chunked"}) {
				t.Fatalf("chunked for baton, not for net/http (length %d, %q):\n%q", nres.ContentLength, nres.TransferEncoding, in)
			}
		case rh.Framing == FrameLength:
			if nres.ContentLength != rh.Length || nres.TransferEncoding != nil {
				t.Fatalf("length %d for baton, net/http: length %d, %q:\n%q", rh.Length, nres.ContentLength, nres.TransferEncoding, in)
			}
		case rh.Framing == FrameClose:
			if nres.ContentLength != -1 || nres.TransferEncoding != nil || nres.Body == http.NoBody {
				t.Fatalf("until close for baton, net/http: length %d, %q:\n%q", nres.ContentLength, nres.TransferEncoding, in)
			}
		}
		if nres.Close && !rh.CloseConn {
			t.Fatalf("net/http closes the connection after this response, baton would reuse it:\n%q", in)
		}
		compareFields(t, in, &resp, nres.Header, raw.Values("Connection"))
	})
}

// netReadResponse reads in with net/http, skipping 1xx heads as baton does.
// raw is the final head's fields as textproto read them, before net/http
// removed Connection and Transfer-Encoding. interim reports that the error
// (if any) came from an interim head; end is where the final head ended.
func netReadResponse(in []byte, method string) (res *http.Response, raw textproto.MIMEHeader, err error, interim bool, end int) {
	src := bytes.NewReader(in)
	br := bufio.NewReaderSize(src, fuzzBufSize)
	for {
		pos := len(in) - src.Len() - br.Buffered()
		code, _, _, perr := parseStatusLine(in[pos:])
		interim = perr == nil && code >= 100 && code < 200
		res, err = http.ReadResponse(br, &http.Request{Method: method})
		if err != nil || res.StatusCode >= 200 || res.StatusCode == 101 {
			end = len(in) - src.Len() - br.Buffered()
			if err == nil {
				tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(in[pos:])))
				_, _ = tr.ReadLine()
				raw, _ = tr.ReadMIMEHeader()
			}
			return res, raw, err, interim, end
		}
	}
}

// hopByHop are the fields ReadResponseHead never copies.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade", "Transfer-Encoding", "Content-Length"}

// compareFields checks that resp holds exactly net/http's end-to-end fields.
func compareFields(t *testing.T, in []byte, resp *fasthttp.ResponseHeader, want http.Header, connection []string) {
	t.Helper()
	folded := bytes.Contains(in, []byte("\n ")) || bytes.Contains(in, []byte("\n\t"))
	named := map[string]bool{}
	for _, v := range connection {
		for tok := range strings.SplitSeq(v, ",") {
			named[textproto.CanonicalMIMEHeaderKey(strings.Trim(tok, " \t"))] = true
		}
	}
	got := http.Header{}
	for k, v := range resp.All() {
		got[textproto.CanonicalMIMEHeaderKey(string(k))] = append(got[textproto.CanonicalMIMEHeaderKey(string(k))], string(v))
	}
	delete(got, "Content-Length") // framing, compared by the caller
	for k, vs := range want {
		switch {
		case slices.Contains(hopByHop, k) || named[k] || k == "Date":
			continue
		case k == "Content-Type" || k == "Content-Encoding" || k == "Server":
			vs = vs[len(vs)-1:] // fasthttp keeps the last, and not an empty one
			if vs[0] == "" {
				vs = nil
			}
		}
		if folded {
			// net/http joins each continuation line as SP and the line
			// trimmed, empty or not; we join the non-empty ones with one
			// SP and trim the whole (RFC 9112 §5.2, §5): compare words.
			vs = words(vs)
			got[k] = words(got[k])
		}
		if !slices.Equal(got[k], vs) {
			t.Fatalf("field %s: baton keeps %q, net/http %q:\n%q", k, got[k], vs, in)
		}
		delete(got, k)
	}
	for k, vs := range got {
		t.Fatalf("baton keeps field %s: %q, which net/http does not have (or drops):\n%q", k, vs, in)
	}
}

// words returns vs with each value's runs of SP and HTAB as one SP, trimmed.
func words(vs []string) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = strings.Join(strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == '\t' }), " ")
	}
	return out
}

// chunkedSeeds are chunked bodies worth starting from.
var chunkedSeeds = []string{
	"5\r\nhello\r\n0\r\n\r\n",
	"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n",
	"A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
	"3\r\nabc\r\n0\r\nX-Trailer: 1\r\nY: 2\r\n\r\n",
	"3 ;ext\r\nabc\r\n0\r\n\r\n",
	"3\t\r\nabc\r\n0\r\n\r\n",
	"3;a=\"x y\";b\r\nabc\r\n0;last\r\n\r\n",
	"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
	"0000000000000000003\r\nabc\r\n0\r\n\r\n",
	"fffffffffffffff\r\nabc",
	"1000000000000000\r\n",
	"3\r\nabcd\r\n0\r\n\r\n",
	"3\r\nab\r\n0\r\n\r\n",
	"3\nabc\n0\n\n",
	"3\r\nabc\n0\r\n\r\n",
	"3\r\nabc\r\n0\r\n\n",
	"3\r\nabc\r\n0\r\nX: 1\n\r\n",
	"3;\rx\r\nabc\r\n0\r\n\r\n",
	"3\r\r\nabc\r\n0\r\n\r\n",
	"-3\r\nabc\r\n0\r\n\r\n",
	"0x3\r\nabc\r\n0\r\n\r\n",
	"3\r\nabc\r\n",
	"3\r\nabc\r\n0\r\n",
	"\r\n",
	"",
}

// FuzzChunkedBody feeds arbitrary bytes as a chunked response body to a
// BodyReader, through CopyTo and through small Reads (which must agree),
// and differentially to net/http's chunked reader and to net/http reading a
// whole chunked response. When ours yields a body without error, net/http
// must yield the same bytes and end the body (trailers included) at the
// same byte: a disagreement there is a desync on a pooled backend
// connection. It found that baton accepted a bare LF (and a stray CR) in
// chunked framing, which net/http refuses; fixed.
//
// Where ours errors and net/http does not, deliberately:
//   - chunk sizes of 2^60 and over (no honest backend sends them);
//   - control characters (NUL, DEL...) in chunk extensions, which net/http
//     drops unread.
//
// Where ours yields a body and net/http errors, skipped explicitly:
//   - whitespace between the chunk size and ";" (BWS, RFC 9112 §7.1.1),
//     which net/http refuses;
//   - chunk sizes written with more than 16 hex digits (leading zeros);
//   - net/http's heuristics: chunk lines of 4 KiB and over, and "too much
//     non-data" (long extensions on short chunks);
//   - malformed trailer fields: baton drops the trailer section unparsed
//     (both end it at the same blank line), net/http parses it.
func FuzzChunkedBody(f *testing.F) {
	for _, s := range chunkedSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got, ourEnd, err := readChunked(in, 0)
		small, smallEnd, serr := readChunked(in, 7)
		if (err == nil) != (serr == nil) || !bytes.Equal(got, small) || (err == nil && ourEnd != smallEnd) {
			t.Fatalf("CopyTo: %q (%v, end %d); Read: %q (%v, end %d); input %q", got, err, ourEnd, small, serr, smallEnd, in)
		}
		if err != nil {
			var bre *BadResponseError
			if !errors.As(err, &bre) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("chunked body %q failed with an error of no documented kind: %v", in, err)
			}
			return
		}
		if netLenient(in) {
			return
		}
		data, derr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReaderSize(bytes.NewReader(in), fuzzBufSize)))
		if derr != nil {
			if strings.Contains(derr.Error(), "too much non-data") || strings.Contains(derr.Error(), "line too long") {
				return
			}
			t.Fatalf("baton reads %q from a chunked body net/http rejects (%v):\n%q", got, derr, in)
		}
		if !bytes.Equal(data, got) {
			t.Fatalf("baton reads %q, net/http %q, from:\n%q", got, data, in)
		}
		const head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
		whole := append([]byte(head), in...)
		src := bytes.NewReader(whole)
		br := bufio.NewReaderSize(src, fuzzBufSize)
		res, rerr := http.ReadResponse(br, &http.Request{Method: "GET"})
		if rerr != nil {
			t.Fatalf("net/http rejects the head: %v", rerr)
		}
		if _, rerr = io.ReadAll(res.Body); rerr != nil {
			return // the trailer section, which baton drops unread
		}
		if netEnd := len(whole) - len(head) - src.Len() - br.Buffered(); netEnd != ourEnd {
			t.Fatalf("the body ends at byte %d for baton, %d for net/http:\n%q", ourEnd, netEnd, in)
		}
	})
}

// readChunked reads in as a chunked body: through CopyTo when step is 0,
// else through Reads of step bytes. end is where the body ended.
func readChunked(in []byte, step int) (body []byte, end int, err error) {
	src := bytes.NewReader(in)
	br := bufio.NewReaderSize(src, fuzzBufSize)
	var r BodyReader
	r.Reset(br, FrameChunked, 0, nil)
	body, err = drain(&r, step)
	return body, len(in) - src.Len() - br.Buffered(), err
}

// netLenient reports a chunked body with a chunk-size line net/http refuses
// and baton accepts on purpose: whitespace before ";", or more than 16 hex
// digits.
func netLenient(in []byte) bool {
	br := bufio.NewReaderSize(bytes.NewReader(in), fuzzBufSize)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return false
		}
		line = bytes.TrimSuffix(line, []byte("\r\n"))
		digits := 0
		for digits < len(line) {
			if _, ok := Unhex(line[digits]); !ok {
				break
			}
			digits++
		}
		rest := line[digits:]
		if digits > 16 || (len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') && bytes.IndexByte(rest, ';') >= 0) {
			return true
		}
		size, ok := parseChunkSize(line)
		if !ok || size == 0 {
			return false
		}
		if _, err := br.Discard(int(size)); err != nil {
			return false
		}
		if _, err := br.ReadSlice('\n'); err != nil {
			return false
		}
	}
}
