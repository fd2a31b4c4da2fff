package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/pool"
)

const (
	// tailHeartbeat is how often an idle tail says it is alive, so that
	// proxies between do not time it out and a gone reader is noticed.
	tailHeartbeat = 15 * time.Second
	// tailWriteTimeout bounds one write to a tail's reader; a reader that
	// takes longer is gone or too slow, and the tail ends.
	tailWriteTimeout = 10 * time.Second
	// defaultTailSlow is the slow threshold of only=slow without slow=.
	defaultTailSlow = 500 * time.Millisecond
	// tailBatch is how many waiting records are written before a flush.
	tailBatch = 64
)

// tailParams are the query parameters GET /v1/pools/{pool}/tail takes.
var tailParams = map[string]bool{"backend": true, "version": true, "only": true, "slow": true, "sample": true, "since": true}

// streamer is a handler's answer that writes itself: route calls serve
// instead of writing JSON, after the checks every route makes.
type streamer interface {
	serve(w http.ResponseWriter, r *http.Request)
}

// getTail is GET /v1/pools/{pool}/tail: the pool's requests as they end,
// as Server-Sent Events, or newline-delimited JSON when the client accepts
// application/x-ndjson.
func (a *api) getTail(r *http.Request, _ string) (int, any, error) {
	p, err := a.pool(r)
	if err != nil {
		return 0, nil, err
	}
	q := r.URL.Query()
	for k := range q {
		if !tailParams[k] {
			return 0, nil, errorf(400, "invalid_parameter", "unknown parameter %q: the tail takes backend, version, only, slow, sample and since", k)
		}
	}
	f := pool.TailFilter{Backend: q.Get("backend"), Version: q.Get("version"), Only: "all", Sample: 1}
	if f.Backend != "" {
		if _, err := a.ctl.Backend(p.Name(), f.Backend); err != nil {
			return 0, nil, err
		}
	}
	switch v := q.Get("only"); v {
	case "", "all":
	case "errors", "slow":
		f.Only = v
	default:
		return 0, nil, errorf(400, "invalid_parameter", "only must be errors, slow or all, got %q", v)
	}
	if v := q.Get("slow"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return 0, nil, errorf(400, "invalid_parameter", "slow must be a duration above 0 such as 200ms, got %q", v)
		}
		f.Slow = d
	} else if f.Only == "slow" {
		f.Slow = defaultTailSlow
	}
	if v := q.Get("sample"); v != "" {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || !(s > 0 && s <= 1) {
			return 0, nil, errorf(400, "invalid_parameter", "sample must be a share above 0 and at most 1 such as 0.01, got %q", v)
		}
		f.Sample = s
	}
	after, since, err := tailStart(q.Get("since"), r.Header.Get("Last-Event-ID"))
	if err != nil {
		return 0, nil, err
	}
	if n := a.tails.Add(1); n > int64(a.tailLimit()) {
		a.tails.Add(-1)
		return 0, nil, errorf(503, "too_many_tails", "%d tails are open on this baton, the most it keeps (a quarter of admin.max_connections); close one, or try again later", n-1)
	}
	st, rd, err := p.Tail(f, after, since)
	if err != nil {
		a.tails.Add(-1)
		if errors.Is(err, pool.ErrTooManyTails) {
			return 0, nil, errorf(503, "too_many_tails", "%v; close one, or try again later", err)
		}
		return 0, nil, err
	}
	return 200, &tailStream{a: a, pool: p.Name(), filter: f, start: st, rd: rd, last: st.Last, auth: r.Header.Get("Authorization")}, nil
}

// tailLimit is how many tails may be open on this baton at once, all
// pools together: each holds an admin connection, which the rest of the
// API (and baton ctl, and /metrics) needs too.
func (a *api) tailLimit() int {
	if a.maxTails > 0 {
		return a.maxTails
	}
	return 16
}

// tailStart reads where a tail starts: ?since= a record's sequence number
// (the records after it), a duration (those that ended that long ago or
// later) or a time (RFC 3339); an SSE client's Last-Event-ID resumes after
// the last record it got. Neither: only new records.
func tailStart(since, lastEventID string) (after uint64, from time.Time, err error) {
	if lastEventID != "" {
		// An EventSource reconnecting to a URL with since= sends the
		// last id it got: that, not the URL's start, is where it is.
		since = lastEventID
	}
	if since == "" {
		return 0, time.Now().Add(time.Hour), nil // nothing from the ring
	}
	if n, err := strconv.ParseUint(since, 10, 64); err == nil {
		return n, time.Time{}, nil
	}
	if d, err := time.ParseDuration(since); err == nil && d > 0 {
		return 0, time.Now().Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, since); err == nil {
		return 0, t, nil
	}
	return 0, time.Time{}, errorf(400, "invalid_parameter", "since must be a record's seq, a duration such as 5m, or an RFC 3339 time, got %q", since)
}

// tailStream writes one tail until its reader goes, falls behind, or
// baton stops.
type tailStream struct {
	a      *api
	pool   string
	filter pool.TailFilter
	start  pool.TailStart
	rd     *pool.TailReader
	last   uint64 // the last record's seq written, or the pool's when it began
	auth   string // the request's Authorization, checked again while it streams

	ndjson  bool
	classes map[string]string // signature key → class in the current canary's comparison
	classAt time.Time
	buf     []byte
}

func (s *tailStream) serve(w http.ResponseWriter, r *http.Request) {
	defer s.a.tails.Add(-1)
	defer s.rd.Close()
	rc := http.NewResponseController(w)
	// A tail lasts as long as its reader wants: no read deadline (net/http
	// would cancel the request when it passed), and a write deadline per
	// write instead of the server's.
	_ = rc.SetReadDeadline(time.Time{})
	// A stop or a gone client ends a write in progress at once: a reader
	// that does not read must not hold a shutdown up for the write's 10 s.
	// The watcher is gone before serve returns: a deadline set after the
	// handler would fall on the connection's next request.
	done, exited := make(chan struct{}), make(chan struct{})
	defer func() { close(done); <-exited }()
	go func() {
		defer close(exited)
		select {
		case <-s.a.stop:
		case <-r.Context().Done():
		case <-done:
			return
		}
		_ = rc.SetWriteDeadline(time.Now())
	}()
	s.ndjson = strings.Contains(r.Header.Get("Accept"), "application/x-ndjson")
	h := w.Header()
	if s.ndjson {
		h.Set("Content-Type", "application/x-ndjson")
	} else {
		h.Set("Content-Type", "text/event-stream")
	}
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // a proxy in front must not hold events back
	w.WriteHeader(200)
	if !s.ndjson {
		s.buf = append(s.buf, "retry: 2000\n\n"...)
	}
	if s.start.Gap {
		s.notice("gap", fmt.Sprintf("records after %d are no longer kept; going on from %d", s.last, s.start.FirstKept))
	}
	// The past in batches, each flushed: a long one must not be one
	// write that outlasts the write timeout on a slow link.
	for i := range s.start.Past {
		s.record(&s.start.Past[i])
		if (i+1)%tailBatch == 0 && !s.flush(w, rc) {
			return
		}
	}
	s.start.Past = nil
	if !s.flush(w, rc) {
		return
	}
	check := time.NewTicker(time.Second)
	defer check.Stop()
	ticks := 0
	for {
		select {
		case rec, ok := <-s.rd.C:
			if !ok {
				switch s.rd.Ended() {
				case pool.TailRemoved:
					s.notice("removed", "the pool left the config")
				default:
					s.notice("dropped", "the reader fell more than 1024 records behind; reconnect with since= the last seq to go on")
				}
				s.flush(w, rc)
				return
			}
			s.record(&rec)
			for n := 1; n < tailBatch; n++ {
				select {
				case rec, ok = <-s.rd.C:
				default:
					ok = false
				}
				if !ok {
					break
				}
				s.record(&rec)
			}
			if !s.flush(w, rc) {
				return
			}
		case <-check.C:
			// A revoked token ends its tails too, within a second.
			if _, ok := s.a.authenticateHeader(s.auth); !ok {
				s.notice("revoked", "the token this tail was opened with is no longer accepted")
				s.flush(w, rc)
				return
			}
			if ticks++; ticks%int(tailHeartbeat/time.Second) != 0 {
				continue
			}
			if s.ndjson {
				s.notice("heartbeat", "")
			} else {
				s.buf = append(s.buf, ": keep-alive\n\n"...)
			}
			if !s.flush(w, rc) {
				return
			}
		case <-s.a.stop:
			s.notice("closing", "baton is shutting down; reconnect with since= the last seq to go on")
			s.flush(w, rc)
			return
		case <-r.Context().Done():
			return
		}
	}
}

// record appends one record in the stream's format.
func (s *tailStream) record(rec *pool.TailRecord) {
	j := v1.TailRecord{
		Type: "request", Seq: rec.Seq, Time: rec.Time.UTC(), Backend: rec.Backend, Version: rec.Version,
		Method: rec.Method, Path: rec.Path, Status: rec.Status, Outcome: rec.Class.String(), Failed: rec.Failed,
		Slow:       s.filter.Slow > 0 && rec.Duration >= s.filter.Slow,
		DurationMS: ms(rec.Duration), TTFBMS: ms(rec.TTFB), Bytes: rec.Bytes,
		Signature: rec.Signature, SignatureClass: s.classOf(rec.Signature), AppCode: rec.AppCode, Body: rec.Body,
	}
	s.last = rec.Seq
	b, _ := json.Marshal(j)
	if s.ndjson {
		s.buf = append(append(s.buf, b...), '\n')
		return
	}
	s.buf = append(s.buf, "id: "...)
	s.buf = strconv.AppendUint(s.buf, rec.Seq, 10)
	s.buf = append(s.buf, "\nevent: request\ndata: "...)
	s.buf = append(append(s.buf, b...), "\n\n"...)
}

// notice appends a notice of kind t.
func (s *tailStream) notice(t, msg string) {
	b, _ := json.Marshal(v1.TailNotice{Type: t, Time: time.Now().UTC(), Message: msg, LastSeq: s.last})
	if s.ndjson {
		s.buf = append(append(s.buf, b...), '\n')
		return
	}
	s.buf = append(s.buf, "event: "...)
	s.buf = append(s.buf, t...)
	s.buf = append(s.buf, "\ndata: "...)
	s.buf = append(append(s.buf, b...), "\n\n"...)
}

// flush writes what is buffered, within tailWriteTimeout.
func (s *tailStream) flush(w http.ResponseWriter, rc *http.ResponseController) bool {
	_ = rc.SetWriteDeadline(time.Now().Add(tailWriteTimeout))
	_, err := w.Write(s.buf)
	s.buf = s.buf[:0]
	if err == nil {
		err = rc.Flush()
	}
	return err == nil
}

// classOf returns a signature's class in the pool's current canary
// comparison, read at most once a second.
func (s *tailStream) classOf(sig string) string {
	if sig == "" {
		return ""
	}
	if now := time.Now(); now.Sub(s.classAt) >= time.Second {
		s.classAt = now
		s.classes = map[string]string{}
		// Without a canary nothing is compared: a signature is then
		// unjudged, not "known".
		if rep, err := s.a.ctl.Canary(s.pool); err == nil && rep != nil && rep.CanaryVersion != "" {
			for _, sr := range rep.Signatures {
				s.classes[sr.Key] = sr.Class
			}
		}
	}
	return s.classes[sig]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
