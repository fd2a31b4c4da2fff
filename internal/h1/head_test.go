package h1

import "testing"

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
