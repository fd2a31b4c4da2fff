package proxy_test

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// benchBackend is a fasthttp backend answering every request with body, so
// that the client and the backend add next to nothing to the measurement.
func benchBackend(b *testing.B, body []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.Response.Header.SetContentType("text/plain")
			ctx.Response.SetBodyRaw(body)
		},
		NoDefaultServerHeader: true,
	}
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Shutdown() })
	return ln.Addr().String()
}

func benchProxy(b *testing.B, size int, post bool) {
	body := bytes.Repeat([]byte("x"), size)
	addr := benchBackend(b, body)
	bt := testbed.Start(b, "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: warn, format: json, access: false}\npools:\n"+
		testbed.PoolYAML("web", [][2]string{{"b1", addr}}, ""))
	bt.WaitHealthy(b, "web", 1)
	reqBody := []byte(`{"item":42,"qty":1}`)
	benchLoad(b, bt, size, func(req *fasthttp.Request) {
		if post {
			req.Header.SetMethod("POST")
			req.SetBodyRaw(reqBody)
		}
	}, nil)
}

// benchLoad sends requests through bt from parallel clients and checks
// each answer (200 with size bytes); prepare adjusts a client's request
// once, after (when not nil) sees each answer.
func benchLoad(b *testing.B, bt *testbed.Baton, size int, prepare func(*fasthttp.Request), after func(*fasthttp.Request, *fasthttp.Response)) {
	client := &fasthttp.HostClient{Addr: bt.Addr, MaxConns: 512}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req := fasthttp.AcquireRequest()
		resp := fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://shop.example/products/42?ref=bench")
		req.Header.Set("Accept", "text/html")
		req.Header.Set("Cookie", "session=abcdef0123456789")
		prepare(req)
		for pb.Next() {
			if err := client.Do(req, resp); err != nil {
				b.Fatal(err)
			}
			if resp.StatusCode() != 200 || len(resp.Body()) != size {
				b.Fatalf("status %d, %d bytes", resp.StatusCode(), len(resp.Body()))
			}
			if after != nil {
				after(req, resp)
			}
		}
	})
}

// BenchmarkProxyGet1K measures a proxied GET with a 1 KiB response: client,
// baton and backend all in this process over loopback. allocs/op covers all
// three; the fasthttp client and backend allocate nothing in steady state.
func BenchmarkProxyGet1K(b *testing.B) { benchProxy(b, 1<<10, false) }

// BenchmarkProxyGet64K is the same with a 64 KiB response (buffered path).
func BenchmarkProxyGet64K(b *testing.B) { benchProxy(b, 64<<10, false) }

// BenchmarkProxyGet256K streams a 256 KiB response through baton.
func BenchmarkProxyGet256K(b *testing.B) { benchProxy(b, 256<<10, false) }

// BenchmarkProxyPost1K sends a small JSON body with each request.
func BenchmarkProxyPost1K(b *testing.B) { benchProxy(b, 1<<10, true) }

// startCanaryBench starts baton with pool web: v1 and a canary v2 at 10 %,
// each on a backend answering 1 KiB.
func startCanaryBench(b *testing.B) *testbed.Baton {
	b.Helper()
	body := bytes.Repeat([]byte("x"), 1<<10)
	v1, v2 := benchBackend(b, body), benchBackend(b, body)
	bt := testbed.Start(b, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: warn, format: json, access: false}
pools:
  - name: web
    health_check: {interval: 100ms, timeout: 50ms, rise: 1, fall: 1}
    canary: {version: v2, weight: 10}
    backends:
      - {name: b1, address: %q, version: v1}
      - {name: b2, address: %q, version: v2}
`, v1, v2))
	bt.WaitHealthy(b, "web", 2)
	return bt
}

// BenchmarkProxyCanaryIssueGet1K is BenchmarkProxyCanaryGet1K with
// clients that never keep their cookie: every response issues one, and
// counts it for its version (what a cascade release waits on).
func BenchmarkProxyCanaryIssueGet1K(b *testing.B) {
	bt := startCanaryBench(b)
	benchLoad(b, bt, 1<<10, func(*fasthttp.Request) {}, func(*fasthttp.Request, *fasthttp.Response) {})
	var n int64
	for _, c := range bt.Pool(b, "web").Cookies(time.Now()) {
		n += c.Count()
	}
	if n < int64(b.N) {
		b.Fatalf("%d cookies counted for %d responses", n, b.N)
	}
}

// BenchmarkProxyCanaryGet1K is BenchmarkProxyGet1K with a canary taking
// 10 %: every request carries the signed affinity cookie it was given, so
// each one is verified (an HMAC) on the way.
func BenchmarkProxyCanaryGet1K(b *testing.B) {
	bt := startCanaryBench(b)
	benchLoad(b, bt, 1<<10, func(*fasthttp.Request) {}, func(req *fasthttp.Request, resp *fasthttp.Response) {
		// Keep the affinity cookie baton gave: every later request's is
		// verified.
		if c := resp.Header.PeekCookie("baton_web"); len(c) > 0 {
			var ck fasthttp.Cookie
			if ck.ParseBytes(c) == nil {
				req.Header.SetCookieBytesKV([]byte("baton_web"), ck.Value())
			}
		}
	})
}

// BenchmarkProxyGet1KTailed is BenchmarkProxyGet1K with a live tail of
// every request attached and read as fast as it comes: what an engineer
// watching the pool costs the proxy. Without a tail, the request path
// pays one atomic load for it (BenchmarkProxyGet1K).
func BenchmarkProxyGet1KTailed(b *testing.B) {
	addr := benchBackend(b, bytes.Repeat([]byte("x"), 1<<10))
	bt := testbed.Start(b, "listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: warn, format: json, access: false}\npools:\n"+
		testbed.PoolYAML("web", [][2]string{{"b1", addr}}, ""))
	bt.WaitHealthy(b, "web", 1)
	_, rd, err := bt.Pool(b, "web").Tail(pool.TailFilter{Only: "all", Sample: 1}, 0, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan int)
	go func() {
		n := 0
		for range rd.C {
			n++
		}
		done <- n
	}()
	benchLoad(b, bt, 1<<10, func(*fasthttp.Request) {}, nil)
	b.StopTimer()
	rd.Close()
	if n := <-done; rd.Ended() == pool.TailDropped {
		b.Fatalf("the reader was dropped after %d records", n)
	}
}
