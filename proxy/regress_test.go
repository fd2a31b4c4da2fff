package proxy_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/proxy"
)

// countingBackend is an HTTP backend that counts the connections that
// carried a request (TCP health checks connect without one).
func countingBackend(t *testing.T, h http.HandlerFunc) (string, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	var mu sync.Mutex
	seen := map[net.Conn]bool{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, s http.ConnState) {
			if s != http.StateActive {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if !seen[c] {
				seen[c] = true
				conns.Add(1)
			}
		}}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String(), &conns
}

func get(t *testing.T, c *http.Client, url string) (int, string, http.Header) {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body), res.Header
}

// A pooled connection whose last response-header deadline has passed is
// still healthy: reusing it after an idle pause must not dial again.
func TestPooledConnectionSurvivesItsOldDeadline(t *testing.T) {
	addr, conns := countingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
		"    health_check: {interval: 30s, timeout: 1s}\n    timeouts: {response_header: 200ms}\n")))
	b.WaitHealthy(t, "web", 1)
	c := &http.Client{}
	for i := range 3 {
		if i > 0 {
			<-time.After(400 * time.Millisecond) // idle past the 200 ms deadline: pacing, not waiting
		}
		if s, body, _ := get(t, c, b.URL("/")); s != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, s, body)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("the backend accepted %d connections for 3 requests; the pooled one should have been reused", n)
	}
}

// A weight change keeps the backend's pooled connections.
func TestWeightChangeKeepsConnections(t *testing.T) {
	addr, conns := countingBackend(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok")
	})
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
		"    health_check: {interval: 30s, timeout: 1s}\n")))
	b.WaitHealthy(t, "web", 1)
	c := &http.Client{}
	get(t, c, b.URL("/"))
	if _, err := b.Reg.SetWeight("web", "b1", 300); err != nil {
		t.Fatal(err)
	}
	get(t, c, b.URL("/"))
	if n := conns.Load(); n != 1 {
		t.Errorf("the backend accepted %d connections; a weight change must not drop pooled ones", n)
	}
}

// A backend that sends a body after its answer to HEAD (a bug) must not have
// those bytes read as the next request's response.
func TestLateBodyAfterHeadIsNotServed(t *testing.T) {
	addr := testbed.RawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			head, err := testbed.ReadRequestHead(br)
			if err != nil {
				return
			}
			switch {
			case strings.HasPrefix(string(head), "HEAD "):
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
				<-time.After(5 * time.Millisecond) // the broken backend's own delay
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nX-Evil: 1\r\nContent-Length: 6\r\n\r\nPOISON")
			default:
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
			}
		}
	})
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
		"    health_check: {interval: 30s, timeout: 1s}\n")))
	b.WaitHealthy(t, "web", 1)
	c := &http.Client{}
	for i := range 5 {
		res, err := c.Head(b.URL("/"))
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		<-time.After(15 * time.Millisecond) // the late body arrives meanwhile
		s, body, h := get(t, c, b.URL("/"))
		if body == "POISON" || h.Get("X-Evil") != "" {
			t.Fatalf("round %d: a GET got the late body of a HEAD answer (%d %q)", i, s, body)
		}
		if s != 200 || body != "good" {
			t.Fatalf("round %d: GET got %d %q", i, s, body)
		}
	}
}

// A backend at weight 0 takes no traffic, so it does not count as a
// healthy alternative: the failing one is not ejected into certain 503s.
func TestOutlierKeepsLastServingBackendBesideWeightZero(t *testing.T) {
	bad := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		w.WriteHeader(502)
	}))
	idle := testbed.NamedBackend(t, "idle")
	b := testbed.Start(t, "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: debug}\npools:\n"+
		"  - name: web\n    health_check: {interval: 30s, timeout: 1s}\n    outlier: {consecutive_failures: 3}\n"+
		"    retries: {attempts: 1}\n    backends:\n"+
		"      - {name: bad, address: \""+bad+"\", version: v1}\n"+
		"      - {name: idle, address: \""+idle+"\", version: v1, weight: 0}\n")
	b.WaitHealthy(t, "web", 2)
	c := &http.Client{}
	for i := range 8 {
		if s, _, _ := get(t, c, b.URL("/")); s != 502 {
			t.Fatalf("request %d: status %d; want the backend's own 502 (not a 503 from an ejection)", i, s)
		}
	}
}

// An HTTP/1.0 client cannot read chunked framing: a chunked backend response
// reaches it with a Content-Length.
func TestHTTP10ClientGetsLengthNotChunks(t *testing.T) {
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 3 {
			_, _ = io.WriteString(w, strings.Repeat(string(rune('a'+i)), 100))
			w.(http.Flusher).Flush()
		}
	}))
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}}, "")))
	b.WaitHealthy(t, "web", 1)
	out := testbed.RawRequest(t, b.Addr, "GET /x HTTP/1.0\r\nHost: shop\r\n\r\n", 5*time.Second)
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if strings.Contains(strings.ToLower(head), "transfer-encoding") || !strings.Contains(head, "Content-Length: 300") {
		t.Errorf("HTTP/1.0 client got head:\n%s", head)
	}
	if body != strings.Repeat("a", 100)+strings.Repeat("b", 100)+strings.Repeat("c", 100) {
		t.Errorf("HTTP/1.0 client got body %q", body)
	}
}

// A retried request's response carries no Content-Type the backend did not
// send.
func TestRetryAddsNoContentType(t *testing.T) {
	var mu sync.Mutex
	first := true
	addr := testbed.RawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			head, err := testbed.ReadRequestHead(br)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(head), "GET /healthz") {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
				continue
			}
			mu.Lock()
			reset := first
			first = false
			mu.Unlock()
			if reset {
				_ = c.(*net.TCPConn).SetLinger(0)
				return // reset without answering: the GET is retried
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
		"    health_check: {path: /healthz, interval: 30s, timeout: 1s}\n")))
	b.WaitHealthy(t, "web", 1)
	out := testbed.RawRequest(t, b.Addr, "GET /x HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n", 5*time.Second)
	head, body, _ := strings.Cut(out, "\r\n\r\n")
	if !strings.HasPrefix(head, "HTTP/1.1 200") || body != "ok" {
		t.Fatalf("got %q", out)
	}
	if strings.Contains(strings.ToLower(head), "content-type") {
		t.Errorf("the retried response gained a Content-Type:\n%s", head)
	}
	if n := b.Pool(t, "web").Retries(); n != 1 {
		t.Errorf("retries = %d, want 1", n)
	}
}

// A client that stalls in the middle of its upload gets 408, naming the
// problem without internal addresses.
func TestStalledUploadGets408(t *testing.T) {
	addr := testbed.NamedBackend(t, "b1")
	b := testbed.Start(t, "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nserver: {body_idle_timeout: 300ms}\npools:\n"+
		testbed.PoolYAML("web", [][2]string{{"b1", addr}}, ""))
	b.WaitHealthy(t, "web", 1)
	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	// More than the 64 KiB baton buffers, so the body streams; then stall.
	_, _ = io.WriteString(c, "POST /up HTTP/1.1\r\nHost: shop\r\nContent-Length: 200000\r\n\r\n"+strings.Repeat("x", 100000))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 408 || strings.Contains(string(body), "127.0.0.1") {
		t.Errorf("stalled upload got %d %q; want 408 without addresses", res.StatusCode, body)
	}
}

// Response headers that share a name with request headers baton manages
// (Host, Expect, X-Forwarded-*) are the backend's and pass through.
func TestResponseHeadersWithRequestOnlyNamesPass(t *testing.T) {
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Forwarded-For", "from-backend")
		w.Header().Set("Expect", "odd-but-legal")
		_, _ = io.WriteString(w, "ok")
	}))
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}}, "")))
	b.WaitHealthy(t, "web", 1)
	_, _, h := get(t, &http.Client{}, b.URL("/"))
	if h.Get("X-Forwarded-For") != "from-backend" || h.Get("Expect") != "odd-but-legal" {
		t.Errorf("response headers lost: %v", h)
	}
}

// A shutdown that comes before Serve has started (a SIGTERM right at start,
// a test that ends at once) must still end Serve: fasthttp's Shutdown
// returns at once when it has no listener yet, and a Serve started after
// it would accept for ever.
func TestShutdownBeforeServeEndsServe(t *testing.T) {
	cfg, err := config.Parse([]byte(testbed.Config(testbed.PoolYAML("shop", [][2]string{{"s1", "127.0.0.1:9"}}, ""))), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	srv := proxy.New(cfg, nil, zerolog.Nop())
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		ln.Close()
		t.Fatal("Serve after Shutdown kept accepting")
	}
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("the listener still accepts after Shutdown")
	}
}

// TestBareLFRequestsAreAnsweredAtOnce: request heads whose lines end in LF
// alone are never left waiting (fasthttp waits for CRLF CRLF). A head that
// ends with a bare LF gets 400 naming the problem; one whose request line
// alone ends in LF is forwarded normalised, and the connection closes
// after the answer. Bytes sent one at a time, and a bare-LF request after
// a clean one on the same connection, behave the same.
func TestBareLFRequestsAreAnsweredAtOnce(t *testing.T) {
	got := make(chan string, 16)
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			got <- r.Method + " " + r.URL.Path + " host=" + r.Host
		}
		_, _ = io.WriteString(w, "b1")
	}))
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}}, "")))
	b.WaitHealthy(t, "web", 1)

	// exchange writes raw (in one write, or byte by byte) without closing
	// its side, and returns everything baton sends before it closes.
	exchange := func(t *testing.T, c net.Conn, raw string, byteByByte bool) string {
		t.Helper()
		start := time.Now()
		if byteByByte {
			for i := 0; i < len(raw); i++ {
				if _, err := c.Write([]byte{raw[i]}); err != nil {
					break
				}
			}
		} else if _, err := io.WriteString(c, raw); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		out, err := io.ReadAll(c)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("%q: no answer and no close within 3s (got %q)", raw, out)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("%q: answered after %s", raw, took)
		}
		return string(out)
	}
	dial := func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", b.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	refused := []string{
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET / HTTP/1.1\r\nHost: a\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\n\n",
		"POST /cart HTTP/1.1\nHost: a\nContent-Length: 3\n\nabc",
	}
	for _, raw := range refused {
		for _, slow := range []bool{false, true} {
			out := exchange(t, dial(t), raw, slow)
			if !strings.HasPrefix(out, "HTTP/1.1 400 ") || !strings.Contains(out, "bare LF") {
				t.Errorf("%q (byte by byte %v): got %q, want 400 naming the bare LF", raw, slow, out)
			}
		}
	}
	select {
	case r := <-got:
		t.Errorf("a refused request reached the backend: %s", r)
	default:
	}

	// The request line alone ends in LF: forwarded, then the connection ends.
	out := exchange(t, dial(t), "GET /lf HTTP/1.1\nHost: a\r\n\r\n", false)
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.HasSuffix(out, "b1") {
		t.Errorf("a request line ending in LF: got %q, want the backend's 200 and a close", out)
	}
	if r := <-got; r != "GET /lf host=a" {
		t.Errorf("the backend got %q", r)
	}

	// A clean request, then a bare-LF one on the same connection.
	c := dial(t)
	br := bufio.NewReader(c)
	if _, err := io.WriteString(c, "GET /first HTTP/1.1\r\nHost: a\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("first request: %v %v", res, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	<-got
	if _, err := io.WriteString(c, "GET /second HTTP/1.1\nHost: a\n\n"); err != nil {
		t.Fatal(err)
	}
	res, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("a bare-LF request after a clean one got no answer: %v", err)
	}
	if res.StatusCode != 400 || !res.Close {
		t.Errorf("a bare-LF request after a clean one: %d, close %v", res.StatusCode, res.Close)
	}

	// Both in one write: the clean one is answered and the connection
	// closes at once, instead of waiting for the header timeout.
	out = exchange(t, dial(t), "GET /pipelined HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\n\n", false)
	if !strings.HasPrefix(out, "HTTP/1.1 200 ") || !strings.Contains(out, "Connection: close") {
		t.Errorf("a bare-LF head pipelined behind a clean one: got %q, want the first answer and a close", out)
	}
	if r := <-got; r != "GET /pipelined host=a" {
		t.Errorf("the backend got %q", r)
	}
}
