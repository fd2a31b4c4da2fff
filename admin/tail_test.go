package admin_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// tailFixture is a real baton with pool shop: b1 and b2 at v1, b2 failing
// /boom with 500 and a body; /slow takes 300ms on both. Its admin handler
// (no tokens) is served on 127.0.0.1; stop ends the tails as a shutdown
// would.
type tailFixture struct {
	bt      *testbed.Baton
	url     string
	b1, b2  *testbed.Server
	stop    chan struct{}
	traffic *http.Client
}

func startTail(t *testing.T, tailCfg string) *tailFixture {
	t.Helper()
	delay := func(path string) time.Duration {
		if strings.HasSuffix(path, "/slow") {
			return 300 * time.Millisecond
		}
		return 0
	}
	f := &tailFixture{
		b1:      testbed.NewBackend(t, testbed.BackendOptions{Name: "b1", Delay: delay}),
		b2:      testbed.NewBackend(t, testbed.BackendOptions{Name: "b2", Delay: delay}),
		stop:    make(chan struct{}),
		traffic: &http.Client{Timeout: 10 * time.Second},
	}
	f.b2.Fail("/boom", testbed.Failure{Status: 500, Code: "E_STOCK", Body: "stock service unavailable for sku 42"})
	f.bt = testbed.Start(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: info, format: json, access: false}
pools:
  - name: shop
    health_check: {interval: 1s, timeout: 500ms, rise: 1, fall: 3}
    outlier: {consecutive_failures: -1}
    retries: {attempts: 1}
    judge: {error_code_header: X-Error-Code}
    tail: %s
    backends:
      - {name: b1, address: "%s", version: v1}
      - {name: b2, address: "%s", version: v1}
`, tailCfg, f.b1.Addr(), f.b2.Addr()))
	f.bt.WaitHealthy(t, "shop", 2)
	srv := httptest.NewServer(admin.Handler(f.bt.Reg, prometheus.NewRegistry(), zerolog.Nop(), admin.WithStop(f.stop)))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-f.stop:
		default:
			close(f.stop)
		}
	})
	f.url = srv.URL
	t.Cleanup(f.traffic.CloseIdleConnections)
	return f
}

// get sends one request through baton to the backend named, by path
// (b2 by ?to=b2 is not possible: the pool balances; callers send enough).
func (f *tailFixture) get(t *testing.T, path string) int {
	t.Helper()
	resp, err := f.traffic.Get(f.bt.URL(path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// tailEvent is one SSE event or NDJSON line of a tail.
type tailEvent struct {
	id, event string
	data      string
}

// openTail starts GET /v1/pools/shop/tail?query and returns its events as
// they arrive; the stream ends with the test.
func (f *tailFixture) openTail(t *testing.T, query string, ndjson bool, header http.Header) (*http.Response, <-chan tailEvent) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", f.url+"/v1/pools/shop/tail?"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if ndjson {
		req.Header.Set("Accept", "application/x-ndjson")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("tail: %v", err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	events := make(chan tailEvent, 4096)
	if resp.StatusCode != 200 {
		close(events)
		return resp, events
	}
	go func() {
		defer close(events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		var ev tailEvent
		for sc.Scan() {
			line := sc.Text()
			if ndjson {
				var n struct{ Type string }
				_ = json.Unmarshal([]byte(line), &n)
				events <- tailEvent{event: n.Type, data: line}
				continue
			}
			switch {
			case line == "":
				if ev.event != "" {
					events <- ev
				}
				ev = tailEvent{}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	return resp, events
}

// next waits for the next event of the kind (skipping others).
func next(t *testing.T, events <-chan tailEvent, kind string, within time.Duration) (tailEvent, bool) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return tailEvent{}, false
			}
			if ev.event == kind {
				return ev, true
			}
		case <-deadline:
			return tailEvent{}, false
		}
	}
}

func record(t *testing.T, ev tailEvent) v1.TailRecord {
	t.Helper()
	var r v1.TailRecord
	if err := json.Unmarshal([]byte(ev.data), &r); err != nil {
		t.Fatalf("record %q: %v", ev.data, err)
	}
	return r
}

// TestTailStreamsOneBackendsFailures attaches a tail to b2's errors and
// sends successes and failures over both backends: each failure of b2
// reaches the tail while the next request has not been sent yet, with
// what an engineer needs to judge it, and nothing else does.
func TestTailStreamsOneBackendsFailures(t *testing.T) {
	f := startTail(t, "{sensitive_paths: [/account]}")
	f.b2.Fail("/account/boom", testbed.Failure{Status: 500, Body: "card 4242 declined"})
	resp, events := f.openTail(t, "backend=b2&only=errors", false, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("tail answered %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	got := 0
	for i := 0; got < 3 && i < 40; i++ {
		f.get(t, "/ok")
		sent := time.Now()
		if f.get(t, "/boom?token=secret") != 500 {
			continue // b1 served it
		}
		ev, ok := next(t, events, "request", 10*time.Second)
		if !ok {
			t.Fatalf("b2's failure %d did not reach the tail", got+1)
		}
		r := record(t, ev)
		t.Logf("failure %d on the tail %s after the request was sent", got+1, time.Since(sent))
		if r.Backend != "b2" || r.Version != "v1" || r.Method != "GET" || r.Path != "/boom" || r.Status != 500 ||
			r.Outcome != "server_error" || !r.Failed || r.AppCode != "E_STOCK" || r.Body != "stock service unavailable for sku 42" ||
			r.Signature != "GET /boom 500 server_error code=E_STOCK" || ev.id != fmt.Sprint(r.Seq) || r.DurationMS <= 0 {
			t.Fatalf("record %+v (id %q)", r, ev.id)
		}
		got++
	}
	if got < 3 {
		t.Fatalf("only %d of b2's failures seen in 40 tries", got)
	}
	// A sensitive path's body is never shown, however the path is
	// spelt; the failure is.
	for _, p := range []string{"/account/boom", "/%61ccount/boom", "//account/boom", "/x/../account/boom"} {
		for i := 0; i < 10; i++ {
			if f.get(t, p) == 500 {
				break
			}
		}
		ev, ok := next(t, events, "request", 10*time.Second)
		if r := record(t, ev); !ok || r.Path != p || r.Body != "" || !r.Failed || r.SignatureClass != "" {
			t.Fatalf("sensitive failure %s: %+v (ok %v)", p, r, ok)
		}
	}
	// No success and nothing of b1 came: the next event is what follows.
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %+v", ev)
	default:
	}
}

// TestTailFiltersSampleAndResume: only=slow keeps the slow requests;
// only=all with sample=0.1 one success in ten but every failure; a tail
// started with since= or Last-Event-ID gets the ring's records after it.
func TestTailFiltersSampleAndResume(t *testing.T) {
	f := startTail(t, "{buffer: 50}")
	_, slow := f.openTail(t, "only=slow&slow=200ms", true, nil)
	_, sampled := f.openTail(t, "only=all&sample=0.1", true, nil)
	for range 30 {
		f.get(t, "/ok")
	}
	f.get(t, "/slow")
	fails := 0
	for i := 0; fails < 2 && i < 20; i++ {
		if f.get(t, "/boom") == 500 {
			fails++
		}
	}
	ev, ok := next(t, slow, "request", 10*time.Second)
	if r := record(t, ev); !ok || r.Path != "/slow" || !r.Slow || r.DurationMS < 200 {
		t.Fatalf("slow tail: %+v (ok %v)", r, ok)
	}
	// The slow tail also shows failures (they are what is worst).
	for range fails {
		ev, ok := next(t, slow, "request", 10*time.Second)
		if r := record(t, ev); !ok || !r.Failed {
			t.Fatalf("slow tail after the slow request: %+v (ok %v)", r, ok)
		}
	}
	// sampled: 3 of 30 /ok (one in ten, counted), the slow one as a
	// success, and both failures.
	var oks, failed int
	var last v1.TailRecord
	for oks+failed < 3+fails {
		ev, ok := next(t, sampled, "request", 10*time.Second)
		if !ok {
			t.Fatalf("sampled tail: %d successes and %d failures, want 3 and %d", oks, failed, fails)
		}
		r := record(t, ev)
		if r.Failed {
			failed++
		} else if r.Path == "/ok" {
			oks++
		}
		last = r
	}
	if oks != 3 || failed != fails {
		t.Fatalf("sampled tail: %d successes and %d failures, want 3 and %d", oks, failed, fails)
	}

	// Resume: the ring (50 records) holds the latest; since=SEQ gives
	// those after it, in order; Last-Event-ID the same.
	_, resumed := f.openTail(t, fmt.Sprintf("since=%d", last.Seq-5), true, nil)
	_, sse := f.openTail(t, "", false, http.Header{"Last-Event-Id": {fmt.Sprint(last.Seq - 5)}})
	for _, events := range []<-chan tailEvent{resumed, sse} {
		for want := last.Seq - 4; want <= last.Seq; want++ {
			ev, ok := next(t, events, "request", 10*time.Second)
			if r := record(t, ev); !ok || r.Seq != want {
				t.Fatalf("resumed tail: record %+v, want seq %d", r, want)
			}
		}
	}
}

// TestTailRefusals: bad parameters and an unknown pool or backend are
// refused with a reason; too many tails on a pool get 503.
func TestTailRefusals(t *testing.T) {
	f := startTail(t, "{}")
	for _, c := range []struct {
		query  string
		status int
		code   string
		says   string
	}{
		{"only=bogus", 400, "invalid_parameter", "only must be errors, slow or all"},
		{"slow=fast", 400, "invalid_parameter", "slow must be a duration"},
		{"sample=2", 400, "invalid_parameter", "sample must be a share"},
		{"since=yesterday", 400, "invalid_parameter", "since must be"},
		{"follow=1", 400, "invalid_parameter", `unknown parameter "follow"`},
		{"backend=ghost", 404, "unknown_backend", "ghost"},
	} {
		resp, err := http.Get(f.url + "/v1/pools/shop/tail?" + c.query)
		if err != nil {
			t.Fatal(err)
		}
		var e struct{ Error, Code string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		resp.Body.Close()
		if resp.StatusCode != c.status || e.Code != c.code || !strings.Contains(e.Error, c.says) {
			t.Errorf("?%s: %d %s %q, want %d %s saying %q", c.query, resp.StatusCode, e.Code, e.Error, c.status, c.code, c.says)
		}
	}
	resp, err := http.Get(f.url + "/v1/pools/nope/tail")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("unknown pool: %d", resp.StatusCode)
	}
	for i := 0; i < 16; i++ {
		if resp, _ := f.openTail(t, "", true, nil); resp.StatusCode != 200 {
			t.Fatalf("tail %d: %d", i+1, resp.StatusCode)
		}
	}
	resp, _ = f.openTail(t, "", true, nil)
	if resp.StatusCode != 503 {
		t.Fatalf("tail 17: %d, want 503", resp.StatusCode)
	}
	var e struct{ Error, Code string }
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if e.Code != "too_many_tails" {
		t.Fatalf("tail 17: %+v", e)
	}
}

// TestTailEndsOnShutdown: a shutdown ends every tail with a notice naming
// the last record, so an http.Server's Shutdown does not wait for it.
func TestTailEndsOnShutdown(t *testing.T) {
	f := startTail(t, "{}")
	_, events := f.openTail(t, "", false, nil)
	f.get(t, "/ok")
	ev, ok := next(t, events, "request", 10*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	r := record(t, ev)
	close(f.stop)
	ev, ok = next(t, events, "closing", 10*time.Second)
	if !ok {
		t.Fatal("no closing notice")
	}
	var n v1.TailNotice
	if err := json.Unmarshal([]byte(ev.data), &n); err != nil || n.LastSeq != r.Seq {
		t.Fatalf("closing notice %q (%v), want last_seq %d", ev.data, err, r.Seq)
	}
	if _, open := <-events; open {
		t.Fatal("the stream went on after the closing notice")
	}
}

// TestTailDropsAReaderThatFallsBehind: a reader that stops reading is
// dropped once 1024 records wait for it, and not one request waits for
// it meanwhile; the records it had stay readable, then it ends.
func TestTailDropsAReaderThatFallsBehind(t *testing.T) {
	f := startTail(t, "{}")
	_, rd, err := f.bt.Pool(t, "shop").Tail(pool.TailFilter{Only: "all", Sample: 1}, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for i := 0; i < 1100; i++ {
		if s := f.get(t, "/ok"); s != 200 {
			t.Fatalf("request %d: %d", i, s)
		}
	}
	if rd.Ended() != pool.TailDropped {
		t.Fatal("a reader 1100 records behind is still attached")
	}
	n := 0
	for range rd.C {
		n++
	}
	if n != 1024 {
		t.Fatalf("the dropped reader had %d records, want the 1024 it could hold", n)
	}
	// The pool records successes only while someone reads: a new tail
	// still works.
	_, events := f.openTail(t, "", true, nil)
	f.get(t, "/ok")
	if _, ok := next(t, events, "request", 10*time.Second); !ok {
		t.Fatal("a new tail after the drop saw nothing")
	}
}

// TestTailKeepsFailuresWhateverIsTailed: a tail of everything does not
// push the failures out of the ring a later reader resumes from, and a
// tail of failures records no success at all; a reader resuming after
// records that are gone is told so before what is kept.
func TestTailKeepsFailuresWhateverIsTailed(t *testing.T) {
	f := startTail(t, "{buffer: 5}")
	p := f.bt.Pool(t, "shop")
	_, errs, err := p.Tail(pool.TailFilter{Only: "errors"}, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	defer errs.Close()
	boom := func(n int) (seqs []uint64) {
		for i := 0; len(seqs) < n && i < 20*n; i++ {
			if f.get(t, "/boom") == 500 {
				seqs = append(seqs, (<-errs.C).Seq)
			}
		}
		if len(seqs) < n {
			t.Fatalf("%d of %d failures", len(seqs), n)
		}
		return seqs
	}
	first := boom(1)[0]
	// Only failures tailed: successes are not recorded.
	for range 10 {
		f.get(t, "/ok")
	}
	st, rd, err := p.Tail(pool.TailFilter{Only: "all", Sample: 1}, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Past) != 1 || st.Past[0].Seq != first {
		t.Fatalf("with only failures tailed the ring holds %+v, want the one failure", st.Past)
	}
	// A tail of everything: 20 successes fill the other ring, the failure
	// stays.
	for range 20 {
		f.get(t, "/ok")
	}
	rd.Close()
	st, rd, err = p.Tail(pool.TailFilter{Only: "errors"}, 0, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	rd.Close()
	if len(st.Past) != 1 || st.Past[0].Seq != first {
		t.Fatalf("after 20 successes tailed the failures ring holds %+v, want the failure", st.Past)
	}
	// Six more failures: the ring of five lost the first ones. A reader
	// resuming after the first is told of the gap, over the API.
	boom(6)
	_, events := f.openTail(t, fmt.Sprintf("only=errors&since=%d", first), true, nil)
	ev, ok := next(t, events, "gap", 10*time.Second)
	if !ok || !strings.Contains(ev.data, "no longer kept") {
		t.Fatalf("no gap notice: %+v", ev)
	}
	for range 5 {
		if _, ok := next(t, events, "request", 10*time.Second); !ok {
			t.Fatal("the kept failures did not follow the gap notice")
		}
	}
}

// TestTailEndsWhenItsTokenIsRevokedOrItsPoolLeaves: a tail checks its
// token while it streams, and ends when the token is revoked; a tail of a
// pool the config no longer has ends saying so.
func TestTailEndsWhenItsTokenIsRevokedOrItsPoolLeaves(t *testing.T) {
	f := startTail(t, "{}")
	tokenPath := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokenPath, []byte(apiTokenFile), 0o600); err != nil {
		t.Fatal(err)
	}
	tokens, err := admin.LoadTokens(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	ts := admin.NewTokenSet(tokens)
	srv := httptest.NewServer(admin.Handler(f.bt.Reg, prometheus.NewRegistry(), zerolog.Nop(), admin.WithTokenSet(ts)))
	t.Cleanup(srv.Close)
	secured := &tailFixture{bt: f.bt, url: srv.URL}
	resp, events := secured.openTail(t, "", true, http.Header{"Authorization": {"Bearer " + tokDeployer}})
	if resp.StatusCode != 200 {
		t.Fatalf("tail with the token: %d", resp.StatusCode)
	}
	ts.Revoke("the token file was emptied")
	if ev, ok := next(t, events, "revoked", 10*time.Second); !ok {
		t.Fatalf("the tail went on after its token was revoked: %+v", ev)
	}

	// Last-Event-ID wins over since= in the URL: an EventSource
	// reconnecting to its URL goes on where it was.
	_, all := f.openTail(t, "since=1h", true, nil)
	f.get(t, "/ok")
	ev, ok := next(t, all, "request", 10*time.Second)
	if !ok {
		t.Fatal("no record")
	}
	last := record(t, ev).Seq
	f.get(t, "/ok")
	_, resumed := f.openTail(t, "since=1h", false, http.Header{"Last-Event-Id": {fmt.Sprint(last)}})
	ev, ok = next(t, resumed, "request", 10*time.Second)
	if r := record(t, ev); !ok || r.Seq <= last {
		t.Fatalf("resumed at %d, got %+v", last, r)
	}

	// The pool leaves the config: its tails end.
	cfg := *f.bt.Cfg
	cfg.Pools = append([]config.Pool{}, cfg.Pools...)
	extra := cfg.Pools[0]
	extra.Name, extra.Routes = "other", []config.Route{{PathPrefix: "/other"}}
	cfg.Pools = append(cfg.Pools, extra)
	if err := f.bt.Reg.Reload(&cfg); err != nil {
		t.Fatal(err)
	}
	resp, gone := f.openTail(t, "", true, nil)
	if resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}
	without := *f.bt.Cfg // shop leaves; other is the default pool now
	other := extra
	other.Routes = nil
	without.Pools = []config.Pool{other}
	if err := f.bt.Reg.Reload(&without); err != nil {
		t.Fatal(err)
	}
	if _, ok := next(t, gone, "removed", 10*time.Second); !ok {
		t.Fatal("the tail of a removed pool did not end")
	}
}
