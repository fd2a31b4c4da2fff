package h1

import (
	"bufio"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// fields parses every field of a raw header block with nextField.
type parsed struct {
	name, value    string // value with folds joined, as appendValue gives it
	cont           string
	bareLF, folded bool
}

func parseFields(t *testing.T, raw string, start int) (fs []parsed, end int, endLF bool) {
	t.Helper()
	b := []byte(raw)
	i := start
	for n := 0; n < 100; n++ {
		f, next, lf, fold, ok := nextField(b, i)
		if !ok {
			return fs, next, lf
		}
		if next <= i {
			t.Fatalf("nextField(%q, %d) did not advance", raw, i)
		}
		fs = append(fs, parsed{string(f.name), string(appendValue(nil, f)), string(f.cont), lf, fold})
		i = next
	}
	t.Fatalf("nextField never reached the end of %q", raw)
	return nil, 0, false
}

func TestNextFieldParsesHeaderLines(t *testing.T) {
	cases := []struct {
		name   string
		raw    string
		start  int
		want   []parsed
		end    int
		endLF  bool
		reason string
	}{
		{
			name: "CRLF",
			raw:  "Host: a.example\r\nX-Two:  spaced \t\r\n\r\nbody",
			want: []parsed{{name: "Host", value: "a.example"}, {name: "X-Two", value: "spaced"}},
			end:  len("Host: a.example\r\nX-Two:  spaced \t\r\n\r\n"),
		},
		{
			name:  "bare LF lines",
			raw:   "Host: a\nX: b\r\n\n",
			want:  []parsed{{name: "Host", value: "a", bareLF: true}, {name: "X", value: "b"}},
			end:   len("Host: a\nX: b\r\n\n"),
			endLF: true,
		},
		{
			name: "obs-fold",
			raw:  "X-Long: one\r\n two\r\n\t three \r\nY: z\r\n\r\n",
			want: []parsed{
				{name: "X-Long", value: "one two three", cont: " two\r\n\t three \r\n", folded: true},
				{name: "Y", value: "z"},
			},
			end: len("X-Long: one\r\n two\r\n\t three \r\nY: z\r\n\r\n"),
		},
		{
			name: "obs-fold ending in a bare LF",
			raw:  "X: a\r\n b\nY: c\r\n\r\n",
			want: []parsed{{name: "X", value: "a b", cont: " b\n", bareLF: true, folded: true}, {name: "Y", value: "c"}},
			end:  len("X: a\r\n b\nY: c\r\n\r\n"),
		},
		{
			name: "empty first line of a folded value",
			raw:  "X:\r\n  b\r\n\r\n",
			want: []parsed{{name: "X", value: "b", cont: "  b\r\n", folded: true}},
			end:  len("X:\r\n  b\r\n\r\n"),
		},
		{
			name: "colon in value, empty value, no colon",
			raw:  "X: a:b\r\nEmpty:\r\nNoColon\r\n\r\n",
			want: []parsed{{name: "X", value: "a:b"}, {name: "Empty", value: ""}, {name: "NoColon", value: ""}},
			end:  len("X: a:b\r\nEmpty:\r\nNoColon\r\n\r\n"),
		},
		{
			name: "block without its blank line",
			raw:  "X: a\r\nY: b",
			want: []parsed{{name: "X", value: "a"}, {name: "Y", value: "b"}},
			end:  len("X: a\r\nY: b"),
		},
		{
			name:  "starting mid-buffer",
			raw:   "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
			start: len("GET / HTTP/1.1\r\n"),
			want:  []parsed{{name: "Host", value: "h"}},
			end:   len("GET / HTTP/1.1\r\nHost: h\r\n\r\n"),
		},
		{
			name: "empty block",
			raw:  "\r\n",
			end:  2,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, end, endLF := parseFields(t, c.raw, c.start)
			if len(got) != len(c.want) {
				t.Fatalf("fields %+v, want %+v", got, c.want)
			}
			for i := range got {
				if got[i] != c.want[i] {
					t.Errorf("field %d = %+v, want %+v", i, got[i], c.want[i])
				}
			}
			if end != c.end || endLF != c.endLF {
				t.Errorf("block ends at %d (bare LF %v), want %d (%v)", end, endLF, c.end, c.endLF)
			}
		})
	}
}

func readHead(in string, isHead bool) (*fasthttp.ResponseHeader, ResponseHead, string, error) {
	br := bufio.NewReaderSize(strings.NewReader(in), 1024)
	resp := &fasthttp.ResponseHeader{}
	resp.SetNoDefaultContentType(true)
	var ct ConnTokens
	rh, _, err := ReadResponseHead(br, resp, isHead, &ct, nil)
	rest, _ := io.ReadAll(br)
	return resp, rh, string(rest), err
}

func TestReadResponseHeadFraming(t *testing.T) {
	cases := []struct {
		in      string
		isHead  bool
		framing Framing
		length  int64
		close   bool
	}{
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", framing: FrameLength, length: 5},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", framing: FrameLength, length: 5},
		{in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", framing: FrameChunked},
		{in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", framing: FrameChunked, close: true},
		{in: "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", framing: FrameChunked, close: true},
		{in: "HTTP/1.1 200 OK\r\n\r\n", framing: FrameClose, close: true},
		{in: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", framing: FrameLength, length: 1, close: true},
		{in: "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n", framing: FrameLength, length: 1},
		{in: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n", framing: FrameLength, length: 1, close: true},
		{in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", isHead: true, framing: FrameNone},
		{in: "HTTP/1.1 204 No Content\r\n\r\n", framing: FrameNone},
		{in: "HTTP/1.1 100 Continue\r\nJunk without colon\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n", framing: FrameNone},
		{in: "HTTP/1.1 200 OK\nContent-Length: 2\n\n", framing: FrameLength, length: 2},
		{in: strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 10) + "HTTP/1.1 200 OK\r\n\r\n", framing: FrameClose, close: true},
	}
	for _, c := range cases {
		_, rh, rest, err := readHead(c.in+"BODY", c.isHead)
		if err != nil || rh.Framing != c.framing || rh.Length != c.length || rh.CloseConn != c.close || rest != "BODY" {
			t.Errorf("%q (HEAD %v): %+v, left %q, %v; want framing %d, length %d, close %v", c.in, c.isHead, rh, rest, err, c.framing, c.length, c.close)
		}
	}
}

func TestReadResponseHeadFields(t *testing.T) {
	resp, _, _, err := readHead("HTTP/1.1 200 OK\r\nConnection: X-Gone\r\nX-Gone: 1\r\nKeep-Alive: 5\r\nX-Fold: a\r\n b\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n", false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for k, v := range resp.All() {
		got = append(got, string(k)+": "+string(v))
	}
	if want := []string{"X-Fold: a b", "X-Kept: 2"}; !slices.Equal(got, want) {
		t.Errorf("fields %q, want %q", got, want)
	}
}

func TestReadResponseHeadRejects(t *testing.T) {
	for _, in := range []string{
		"HTTP/1.1 101 Switching Protocols\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n 2\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\n Content-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
		"HTTP/1.1 999 Nine\r\n\r\n",
		"HTTP/2.0 200 OK\r\n\r\n",
		// Found by FuzzResponseHead: baton passed these on, net/http
		// refuses them.
		"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
		"HTTP/1.1 200 OK\r\nConnection: close\r, X-Secret\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\rc\r\n\r\n",
	} {
		var bre *BadResponseError
		if _, rh, _, err := readHead(in, false); !errors.As(err, &bre) {
			t.Errorf("%q: %+v, %v; want a *BadResponseError", in, rh, err)
		}
	}
	for in, want := range map[string]error{
		"":                    ErrNoResponse,
		"HTTP/1.1 200 OK\r\n": ErrTruncatedHead,
		"HTTP/1.1 200 OK\r\nX: " + strings.Repeat("a", 1024) + "\r\n\r\n":               ErrHeadTooLarge,
		strings.Repeat("HTTP/1.1 100 Continue\r\n\r\n", 11) + "HTTP/1.1 200 OK\r\n\r\n": ErrTooManyInterim,
	} {
		if _, _, _, err := readHead(in, false); !errors.Is(err, want) {
			t.Errorf("%.40q: %v, want %v", in, err, want)
		}
	}
}
