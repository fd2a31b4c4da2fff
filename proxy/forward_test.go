package proxy_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// captureBackend answers every request with a fixed raw response and sends
// the raw request head it received on heads.
func captureBackend(t *testing.T, response string, heads chan<- string) string {
	return testbed.RawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			head, err := testbed.ReadRequestHead(br)
			if err != nil {
				return
			}
			if strings.HasPrefix(string(head), "GET /healthz ") {
				_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			heads <- string(head)
			if _, err := io.WriteString(c, response); err != nil {
				return
			}
		}
	})
}

func TestForwardingIsTransparent(t *testing.T) {
	heads := make(chan string, 10)
	resp := "HTTP/1.1 200 OK\r\n" +
		"Connection: keep-alive, X-Hop\r\n" +
		"Keep-Alive: timeout=5\r\n" +
		"Set-Cookie: a=1; Path=/\r\n" +
		"X-Hop: secret\r\n" +
		"X-Multi: one\r\n" +
		"Set-Cookie: b=2; Path=/x\r\n" +
		"X-Multi: two\r\n" +
		"Content-Length: 5\r\n\r\nhello"
	addr := captureBackend(t, resp, heads)
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
		"    health_check: {path: /healthz, interval: 100ms, timeout: 50ms, rise: 1, fall: 1}\n")))
	b.WaitHealthy(t, "web", 1)

	req := "GET /a/../b//c%2Fd?q=1&q=%20 HTTP/1.1\r\n" +
		"Host: shop.example\r\n" +
		"Connection: keep-alive, X-Private\r\n" +
		"X-Private: drop me\r\n" +
		"Keep-Alive: timeout=9\r\n" +
		"Proxy-Connection: keep-alive\r\n" +
		"TE: trailers\r\n" +
		"Upgrade: h2c\r\n" +
		"X-Forwarded-For: 203.0.113.9\r\n" +
		"X-Dup: first\r\n" +
		"Cookie: s=1\r\n" +
		"X-Dup: second\r\n" +
		"X-Forwarded-Proto: gopher\r\n" +
		"\r\n"
	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	got := <-heads
	lines := strings.Split(strings.TrimSuffix(got, "\r\n\r\n"), "\r\n")
	if lines[0] != "GET /a/../b//c%2Fd?q=1&q=%20 HTTP/1.1" {
		t.Errorf("request line reached the backend as %q", lines[0])
	}
	want := []string{
		"Host: shop.example",
		"X-Dup: first",
		"Cookie: s=1",
		"X-Dup: second",
		// Not from a trusted proxy: the client's X-Forwarded-For is replaced.
		"X-Forwarded-For: 127.0.0.1",
		"X-Forwarded-Proto: http",
		"X-Forwarded-Host: shop.example",
	}
	if strings.Join(lines[1:], "\n") != strings.Join(want, "\n") {
		t.Errorf("backend got headers\n%s\nwant\n%s", strings.Join(lines[1:], "\n"), strings.Join(want, "\n"))
	}

	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	if string(body) != "hello" {
		t.Errorf("body %q", body)
	}
	if got := r.Header.Values("Set-Cookie"); strings.Join(got, "|") != "a=1; Path=/|b=2; Path=/x" {
		t.Errorf("Set-Cookie = %q", got)
	}
	if got := r.Header.Values("X-Multi"); strings.Join(got, "|") != "one|two" {
		t.Errorf("X-Multi = %q", got)
	}
	for _, h := range []string{"Connection", "Keep-Alive", "X-Hop", "Server", "Content-Type"} {
		if v, ok := r.Header[h]; ok {
			t.Errorf("client got %s: %q", h, v)
		}
	}
}

func TestErrorsMapToStatus(t *testing.T) {
	// A closed port: connection refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()

	garbage := testbed.RawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := testbed.ReadRequestHead(br); err != nil {
			return
		}
		_, _ = io.WriteString(c, "HTTP/1.1 2OO OK\r\n\r\n")
	})
	hang := testbed.RawBackend(t, func(c net.Conn) {
		_, _ = io.Copy(io.Discard, c)
	})
	b := testbed.Start(t, testbed.Config(
		testbed.PoolYAML("garbage", [][2]string{{"g", garbage}}, "    routes: [{path_prefix: /garbage}]\n"),
		testbed.PoolYAML("hang", [][2]string{{"h", hang}}, "    routes: [{path_prefix: /hang}]\n    timeouts: {response_header: 300ms}\n"),
		testbed.PoolYAML("refused", [][2]string{{"r", refused}}, "    routes: [{path_prefix: /refused}]\n"),
	))
	b.WaitHealthy(t, "garbage", 1)
	b.WaitHealthy(t, "hang", 1)

	for path, want := range map[string]int{"/garbage": 502, "/hang": 504, "/refused": 503, "/nowhere": 404} {
		res, err := http.Get(b.URL(path))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s: status %d (%s), want %d", path, res.StatusCode, body, want)
		}
	}
}

// A client that goes away mid-response is logged as 499 and never counted
// against the backend.
func TestClientGoneIsLogged499(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr := testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 1000; i++ {
			if _, err := io.WriteString(w, "data: tick\n\n"); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			select {
			case <-release:
				return
			case <-r.Context().Done():
				return
			case <-time.After(10 * time.Millisecond): // the stream's own pace
			}
		}
	}))
	b := testbed.Start(t, testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}}, "")))
	b.WaitHealthy(t, "web", 1)

	c, err := net.Dial("tcp", b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET /events HTTP/1.1\r\nHost: shop\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "data: tick\n" {
		t.Fatalf("first event %q, %v", line, err)
	}
	// Reset rather than FIN, so baton's next write fails at once.
	_ = c.(*net.TCPConn).SetLinger(0)
	c.Close()

	testbed.Eventually(t, 10*time.Second, func() bool {
		return strings.Contains(b.Logs.String(), `"status":499`)
	}, "an access log line with status 499")
	logs := b.Logs.String()
	for _, l := range strings.Split(logs, "\n") {
		if strings.Contains(l, `"status":499`) && !strings.Contains(l, `"outcome":"client_gone"`) {
			t.Errorf("499 line without outcome client_gone: %s", l)
		}
	}
	be := b.Pool(t, "web").Backend("b1")
	if be.Errors() != 0 {
		t.Errorf("backend blamed for the client leaving: %d errors (last: %s)", be.Errors(), be.LastError())
	}
	testbed.Eventually(t, 5*time.Second, func() bool { return be.Inflight() == 0 }, "the request to end on the backend")
}

// TestXForwardedForTrust: X-Forwarded-For is kept (with the peer appended)
// only from server.trusted_proxies; from anyone else it is replaced, so a
// client cannot pose as another address to the backend.
func TestXForwardedForTrust(t *testing.T) {
	for _, c := range []struct {
		name, server, want string
		addrHeaders        bool // X-Real-IP and Forwarded reach the backend
		// The scheme and host the backend is told: a trusted proxy's
		// (it terminated TLS for shop.example), else baton's own.
		proto, fwdHost string
	}{
		{"untrusted", "", "X-Forwarded-For: 127.0.0.1", false, "http", "a"},
		{"trusted CIDR", "server: {trusted_proxies: [10.0.0.0/8, 127.0.0.0/8]}\n", "X-Forwarded-For: 203.0.113.9, 198.51.100.7, 127.0.0.1", true,
			"https", "shop.example"},
		{"trusted other address", "server: {trusted_proxies: [192.0.2.1]}\n", "X-Forwarded-For: 127.0.0.1", false, "http", "a"},
	} {
		t.Run(c.name, func(t *testing.T) {
			heads := make(chan string, 4)
			addr := captureBackend(t, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", heads)
			yaml := strings.Replace(testbed.Config(testbed.PoolYAML("web", [][2]string{{"b1", addr}},
				"    health_check: {path: /healthz, interval: 100ms, timeout: 50ms, rise: 1, fall: 1}\n")), "pools:", c.server+"pools:", 1)
			b := testbed.Start(t, yaml)
			b.WaitHealthy(t, "web", 1)
			out := testbed.RawRequest(t, b.Addr, "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 198.51.100.7\r\n"+
				"X-Real-IP: 203.0.113.9\r\nForwarded: for=203.0.113.9\r\nX_Forwarded_For: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n"+
				"X-Forwarded-Proto: https\r\nX-Forwarded-Host: shop.example\r\n"+
				"X_Custom: kept\r\nConnection: close\r\n\r\n", 5*time.Second)
			if !strings.HasPrefix(out, "HTTP/1.1 200") {
				t.Fatalf("answer %q", out)
			}
			var got, proto, fwdHost []string
			head := <-heads
			for _, l := range strings.Split(head, "\r\n") {
				switch name, v, _ := strings.Cut(l, ": "); strings.ToLower(name) {
				case "x-forwarded-for":
					got = append(got, l)
				case "x-forwarded-proto":
					proto = append(proto, v)
				case "x-forwarded-host":
					fwdHost = append(fwdHost, v)
				}
			}
			if len(got) != 1 || got[0] != c.want {
				t.Errorf("backend got %q, want [%q]", got, c.want)
			}
			if len(proto) != 1 || proto[0] != c.proto || len(fwdHost) != 1 || fwdHost[0] != c.fwdHost {
				t.Errorf("backend got X-Forwarded-Proto %q and X-Forwarded-Host %q; want one each, %q and %q", proto, fwdHost, c.proto, c.fwdHost)
			}
			// Look-alikes that applications read as the real header never
			// pass; a client's address headers pass only from a trusted proxy.
			for _, h := range []string{"X_Forwarded_For", "x_real_ip", "X_Forwarded_Proto", "6.6.6.6"} {
				if strings.Contains(head, h) {
					t.Errorf("backend got %q: %q", h, head)
				}
			}
			if !strings.Contains(head, "X_Custom: kept") {
				t.Errorf("an ordinary header with an underscore was dropped: %q", head)
			}
			for _, h := range []string{"X-Real-IP: 203.0.113.9", "Forwarded: for=203.0.113.9"} {
				if strings.Contains(head, h) != c.addrHeaders {
					t.Errorf("%q reached the backend: %v, want %v", h, !c.addrHeaders, c.addrHeaders)
				}
			}
		})
	}
}
