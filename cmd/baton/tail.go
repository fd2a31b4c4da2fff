package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/baton-lb/baton/admin/v1"
)

// tailQuery is the tail's query from baton ctl tail's flags.
func tailQuery(a *ctlArgs) (url.Values, error) {
	q := url.Values{}
	if len(a.pos) > 2 {
		q.Set("backend", a.pos[2])
	}
	if v := a.flags["version"]; v != "" {
		q.Set("version", v)
	}
	switch {
	case a.flags["errors"] != "" && a.flags["slow"] != "":
		return nil, fail(exitUsage, "--errors and --slow: choose one (--slow shows failures too)")
	case a.flags["errors"] != "":
		q.Set("only", "errors")
	case a.flags["slow"] != "":
		d, err := time.ParseDuration(a.flags["slow"])
		if err != nil || d <= 0 {
			return nil, fail(exitUsage, "--slow must be a duration such as 200ms, got %q", a.flags["slow"])
		}
		q.Set("only", "slow")
		q.Set("slow", a.flags["slow"])
	}
	if v := a.flags["sample"]; v != "" {
		q.Set("sample", v)
	}
	if v := a.flags["since"]; v != "" {
		q.Set("since", v)
	}
	return q, nil
}

// tail is baton ctl tail: the pool's requests as they end, a line each
// (-o json: the records as newline-delimited JSON), until Ctrl-C.
func (c *ctlClient) tail(a *ctlArgs) error {
	q, err := tailQuery(a)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	body, err := c.api.Stream(ctx, a.poolPath()+"/tail", q, "application/x-ndjson")
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return apiFailure(err)
	}
	defer body.Close()
	p := &tailPrinter{out: c.stdout, json: c.output == "json", colour: colourful(c.stdout)}
	if !p.json {
		fmt.Fprintf(c.stderr, "tailing pool %s%s; Ctrl-C to stop\n", a.pos[1], tailWhat(q))
	}
	err = p.copy(body)
	if ctx.Err() != nil {
		return nil // Ctrl-C: a clean end
	}
	return err
}

// tailWhat says what a tail shows, for its first line.
func tailWhat(q url.Values) string {
	var parts []string
	if b := q.Get("backend"); b != "" {
		parts = append(parts, "backend "+b)
	}
	if v := q.Get("version"); v != "" {
		parts = append(parts, "version "+v)
	}
	switch q.Get("only") {
	case "errors":
		parts = append(parts, "failures only")
	case "slow":
		parts = append(parts, "failures and requests of "+q.Get("slow")+" or more")
	}
	if s := q.Get("sample"); s != "" {
		parts = append(parts, "successes sampled at "+s)
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// colourful reports whether w is a terminal that wants colour.
func colourful(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("NO_COLOR") != "" || os.Getenv("TERM") == "dumb" {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// tailPrinter prints a tail's NDJSON lines.
type tailPrinter struct {
	out    io.Writer
	json   bool
	colour bool
}

const (
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiBold   = "\x1b[1m"
	ansiReset  = "\x1b[0m"
)

// copy prints every line of r until it ends. A notice that the stream was
// dropped or closed by baton is an error saying how to go on.
func (p *tailPrinter) copy(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var kind struct{ Type string }
		if err := json.Unmarshal(line, &kind); err != nil {
			return fail(exitFail, "the tail sent a line that is not JSON: %v", err)
		}
		switch kind.Type {
		case "request":
			if p.json {
				fmt.Fprintf(p.out, "%s\n", line)
				continue
			}
			var rec v1.TailRecord
			if err := json.Unmarshal(line, &rec); err != nil {
				return fail(exitFail, "the tail sent a record this baton ctl cannot read: %v", err)
			}
			p.record(&rec)
		case "heartbeat":
		case "gap":
			var n v1.TailNotice
			_ = json.Unmarshal(line, &n)
			if p.json {
				fmt.Fprintf(p.out, "%s\n", line)
			} else {
				fmt.Fprintf(p.out, "-- %s\n", n.Message)
			}
		case "dropped", "closing":
			var n v1.TailNotice
			_ = json.Unmarshal(line, &n)
			return fail(exitFail, "%s (last seq %d: --since %d goes on from there)", n.Message, n.LastSeq, n.LastSeq)
		case "removed", "revoked":
			var n v1.TailNotice
			_ = json.Unmarshal(line, &n)
			return fail(exitFail, "the tail ended: %s", n.Message)
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return fail(exitFail, "the tail ended: %v", err)
	}
	return fail(exitFail, "the tail ended: baton closed the stream")
}

// record prints one request on a line: time, backend, version, method,
// path, status, outcome, duration (ttfb), bytes, then a failure's
// signature with its class, code and body.
func (p *tailPrinter) record(r *v1.TailRecord) {
	var b strings.Builder
	colour := ""
	switch {
	case r.Failed:
		colour = ansiRed
	case r.Slow:
		colour = ansiYellow
	}
	if p.colour && colour != "" {
		b.WriteString(colour)
	}
	fmt.Fprintf(&b, "%s %s %s %s %s %d %s %s (ttfb %s) %dB", r.Time.Local().Format("15:04:05.000"), r.Backend, r.Version,
		r.Method, r.Path, r.Status, r.Outcome, msString(r.DurationMS), msString(r.TTFBMS), r.Bytes)
	if r.Slow {
		b.WriteString(" slow")
	}
	if r.Signature != "" {
		class := r.SignatureClass
		if class == "" {
			class = "unjudged"
		}
		if p.colour && class == "new" {
			b.WriteString(ansiBold)
		}
		fmt.Fprintf(&b, " [%s] %s", class, r.Signature)
	}
	if r.Body != "" {
		fmt.Fprintf(&b, " body=%q", r.Body)
	}
	if p.colour && colour != "" || p.colour && r.SignatureClass == "new" {
		b.WriteString(ansiReset)
	}
	fmt.Fprintln(p.out, b.String())
}

// msString shows milliseconds as a duration: 1.2ms, 340ms, 2.5s.
func msString(ms float64) string {
	return time.Duration(ms * float64(time.Millisecond)).Round(100 * time.Microsecond).String()
}
