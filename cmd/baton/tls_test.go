package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// httpsWorld is a baton process serving HTTP and HTTPS, with certificates
// for shop.test and api.test issued by a test CA, in front of a backend
// that echoes what it was told about the request.
type httpsWorld struct {
	dir          string
	ca           *testbed.CA
	plain, https string // host:port
	admin        string
	proc         *proc
}

func startHTTPS(t *testing.T, extraTLS string) *httpsWorld {
	t.Helper()
	w := &httpsWorld{dir: t.TempDir(), ca: testbed.NewCA(t)}
	now := time.Now()
	w.ca.Issue(t, []string{"shop.test", "www.shop.test"}, now.Add(-time.Hour), now.Add(90*24*time.Hour)).Write(t, w.dir, "shop")
	w.ca.Issue(t, []string{"api.test"}, now.Add(-time.Hour), now.Add(60*24*time.Hour)).Write(t, w.dir, "api")
	backend := testbed.Backend(t, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		fmt.Fprintf(rw, "proto=%s host=%s path=%s", r.Header.Get("X-Forwarded-Proto"), r.Host, r.URL.RequestURI())
	}))
	w.plain, w.https, w.admin = freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := filepath.Join(w.dir, "baton.yaml")
	data := fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
tls:
  listen: %s
  certificates:
    - {cert: shop.crt, key: shop.key}
    - {cert: api.crt, key: api.key}
%spools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 3}
    backends:
      - {name: s1, address: %q, version: v1}
`, w.plain, w.admin, w.https, extraTLS, backend)
	if err := os.WriteFile(cfg, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	w.proc = startBinary(t, "serve", "-c", cfg)
	if !poll(20*time.Second, func() bool {
		c, err := tls.Dial("tcp", w.https, &tls.Config{ServerName: "shop.test", RootCAs: w.ca.Pool})
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("baton did not serve HTTPS: %s", w.proc.stderr)
	}
	return w
}

// client is an HTTPS client that trusts the test CA and connects to
// baton's HTTPS listener whatever host it is asked for.
func (w *httpsWorld) client(keepAlive bool) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: w.ca.Pool},
		DisableKeepAlives: !keepAlive,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, w.https)
		},
	}}
}

// served returns the serial of the certificate baton presents for name.
func (w *httpsWorld) served(t *testing.T, name string) (*big.Int, tls.ConnectionState) {
	t.Helper()
	c, err := tls.Dial("tcp", w.https, &tls.Config{ServerName: name, RootCAs: w.ca.Pool, NextProtos: []string{"h2", "http/1.1"}})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer c.Close()
	st := c.ConnectionState()
	return st.PeerCertificates[0].SerialNumber, st
}

// TestHTTPS: certificates by SNI, ALPN offering HTTP/1.1 only, TLS 1.2 as
// the floor, X-Forwarded-Proto https to the backend, plain HTTP redirected
// to HTTPS, and the certificates' expiry in /metrics.
func TestHTTPS(t *testing.T) {
	w := startHTTPS(t, "  redirect_http: true\n")
	for name, want := range map[string]string{"shop.test": "shop.test", "www.shop.test": "shop.test", "api.test": "api.test", "other.test": "shop.test"} {
		c, err := tls.Dial("tcp", w.https, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
		st := c.ConnectionState()
		c.Close()
		if got := st.PeerCertificates[0].Subject.CommonName; got != want {
			t.Errorf("SNI %s got the certificate of %s, want %s", name, got, want)
		}
		if st.NegotiatedProtocol != "http/1.1" {
			t.Errorf("SNI %s: ALPN chose %q offered h2 and http/1.1; baton speaks http/1.1", name, st.NegotiatedProtocol)
		}
	}
	if c, err := tls.Dial("tcp", w.https, &tls.Config{ServerName: "shop.test", RootCAs: w.ca.Pool, MaxVersion: tls.VersionTLS11}); err == nil {
		c.Close()
		t.Errorf("a TLS 1.1 handshake succeeded; the floor is 1.2")
	}

	status, body, err := get(w.client(true), "https://api.test/orders?id=7")
	if err != nil || status != 200 || body != "proto=https host=api.test path=/orders?id=7" {
		t.Errorf("GET over HTTPS: %d %q %v", status, body, err)
	}

	// Plain HTTP: a permanent redirect to the same URL on HTTPS.
	noFollow := &http.Client{Timeout: 5 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	req, _ := http.NewRequest("POST", "http://"+w.plain+"/cart/add?item=3", strings.NewReader("x"))
	req.Host = "shop.test"
	res, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	_, port, _ := net.SplitHostPort(w.https)
	if want := "https://shop.test:" + port + "/cart/add?item=3"; res.StatusCode != 308 || res.Header.Get("Location") != want {
		t.Errorf("plain POST: %d to %q, want 308 to %q", res.StatusCode, res.Header.Get("Location"), want)
	}

	_, metrics, err := get(&http.Client{Timeout: 5 * time.Second}, "http://"+w.admin+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`baton_tls_certificate_expiry_timestamp_seconds{file="` + filepath.Join(w.dir, "shop.crt") + `",names="shop.test,www.shop.test"}`,
		`baton_tls_certificate_reloads_total{result="failure"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestHTTPSCertificateRotation: under steady HTTPS load (new connections
// and keep-alive), shop.test's certificate files are replaced: new
// handshakes get the new certificate, and no handshake or request fails. A
// broken replacement is refused with the reason, and the certificate in
// service stays.
func TestHTTPSCertificateRotation(t *testing.T) {
	w := startHTTPS(t, "")
	first, _ := w.served(t, "shop.test")

	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	var sent, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := w.client(i%2 == 0) // half on fresh connections: a handshake each
			defer c.CloseIdleConnections()
			for n := 0; n < 20000 && ctx.Err() == nil; n++ {
				sent.Add(1)
				status, body, err := get(c, "https://shop.test/p")
				if err != nil || status != 200 || !strings.HasPrefix(body, "proto=https") {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%d %q %v", status, body, err))
					mu.Unlock()
				}
			}
		}()
	}

	// Under load before, between and after the replacements.
	underLoad := func(n int64) {
		t.Helper()
		target := sent.Load() + n
		if !poll(30*time.Second, func() bool { return sent.Load() >= target }) {
			t.Fatalf("the load stalled at %d requests", sent.Load())
		}
	}
	underLoad(300)
	next := w.ca.Issue(t, []string{"shop.test", "www.shop.test"}, time.Now().Add(-time.Hour), time.Now().Add(120*24*time.Hour))
	next.Write(t, w.dir, "shop")
	if !poll(15*time.Second, func() bool {
		s, _ := w.served(t, "shop.test")
		return s.Cmp(next.Serial) == 0
	}) {
		t.Fatalf("baton still serves certificate %s after the files changed; want %s\n%s", first, next.Serial, w.proc.stderr)
	}

	underLoad(300)
	// A broken replacement: refused, the certificate in service stays.
	testbed.WriteAtomic(t, filepath.Join(w.dir, "shop.crt"), []byte("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n"))
	if !poll(15*time.Second, func() bool {
		return strings.Contains(w.proc.stderr.String(), "certificates not reloaded; the ones in service stay")
	}) {
		t.Fatalf("no refusal of the broken certificate in the log:\n%s", w.proc.stderr)
	}
	if s, _ := w.served(t, "shop.test"); s.Cmp(next.Serial) != 0 {
		t.Errorf("after a broken replacement baton serves %s, want %s still", s, next.Serial)
	}
	underLoad(300)
	stop()
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d HTTPS requests failed during the rotation: %v", failed.Load(), sent.Load(), failures[:min(5, len(failures))])
	}
	_, metrics, _ := get(&http.Client{Timeout: 5 * time.Second}, "http://"+w.admin+"/metrics")
	for _, want := range []string{`baton_tls_certificate_reloads_total{result="success"} 1`, `baton_tls_certificate_reloads_total{result="failure"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	t.Logf("%d HTTPS requests during the rotation, none failed", sent.Load())
}

// TestCheckCertificates: baton check validates the certificate files and
// warns about one that expires within 14 days.
func TestCheckCertificates(t *testing.T) {
	dir := t.TempDir()
	ca := testbed.NewCA(t)
	now := time.Now()
	ca.Issue(t, []string{"shop.test"}, now.Add(-time.Hour), now.Add(3*24*time.Hour)).Write(t, dir, "soon")
	ca.Issue(t, []string{"shop.test"}, now.Add(-72*time.Hour), now.Add(-time.Hour)).Write(t, dir, "old")
	conf := func(name string) string {
		path := filepath.Join(dir, name+".yaml")
		data := fmt.Sprintf("listen: 127.0.0.1:8080\ntls:\n  listen: 127.0.0.1:8443\n  certificates:\n    - {cert: %s.crt, key: %s.key}\npools:\n  - name: shop\n    backends: [{name: s1, address: \"127.0.0.1:9\"}]\n", name, name)
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return path
	}
	p := startBinary(t, "check", "-c", conf("soon"))
	if code := p.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("check of a certificate expiring in 3 days exited %d: %s", code, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "ok (1 pool(s), 1 backend(s), listening on 127.0.0.1:8080, HTTPS on 127.0.0.1:8443 with 1 certificate(s))") ||
		!strings.Contains(p.stderr.String(), "warning: tls.certificates[0]: "+filepath.Join(dir, "soon.crt")+" expires on ") {
		t.Errorf("check output:\n%s%s", p.stdout, p.stderr)
	}
	p = startBinary(t, "check", "-c", conf("old"))
	if code := p.waitExit(t, 10*time.Second); code != 1 || !strings.Contains(p.stderr.String(), "tls.certificates[0]: "+filepath.Join(dir, "old.crt")+" expired on ") {
		t.Errorf("check of an expired certificate: exit %d, %s", code, p.stderr)
	}
}
