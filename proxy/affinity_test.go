package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// affinityPools: two pools on one host, /a and /b, each with a v1 and a
// v2 backend answering their name, and v2 a canary at 50 %.
func affinityPools(t *testing.T, extra string) *testbed.Baton {
	t.Helper()
	named := func(name string) string {
		return testbed.Backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, name) }))
	}
	pool := func(name, prefix string) string {
		return fmt.Sprintf(`  - name: %s
    routes: [{path_prefix: %s}]
    health_check: {interval: 100ms, timeout: 50ms, rise: 1, fall: 1}
    canary: {version: v2, weight: 50}
%s    backends:
      - {name: %s1, address: %q, version: v1}
      - {name: %s2, address: %q, version: v2}
`, name, prefix, extra, name, named(name+" v1"), name, named(name+" v2"))
	}
	b := testbed.Start(t, testbed.Config(pool("a", "/a"), pool("b", "/b")))
	b.WaitHealthy(t, "a", 2)
	b.WaitHealthy(t, "b", 2)
	return b
}

// get sends one request with the given cookies and returns the body and
// the cookies set.
func affinityGet(t *testing.T, url string, cookies ...*http.Cookie) (string, []*http.Cookie) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for _, c := range cookies {
		req.AddCookie(c)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return string(body), res.Cookies()
}

// TestAffinityCookiesAreSignedPerPool: each pool has its own cookie
// (baton_POOL) with an opaque, signed value; a client keeps its version;
// one pool's cookie under the other's name, or with its version's name in
// front changed, is ignored; expose_version shows the version (still
// signed).
func TestAffinityCookiesAreSignedPerPool(t *testing.T) {
	b := affinityPools(t, "")
	// A client the split sends to a's canary.
	var ck *http.Cookie
	for i := 0; i < 100 && ck == nil; i++ {
		body, set := affinityGet(t, b.URL("/a/x"))
		if body == "a v2" {
			for _, c := range set {
				if c.Name == "baton_a" {
					ck = c
				}
			}
		}
	}
	if ck == nil {
		t.Fatal("no baton_a cookie for a client of a's canary in 100 tries at 50 %")
	}
	// Exposed, the value would start "v2." (base64url has no dot).
	if strings.Contains(ck.Value, ".") || !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode {
		t.Errorf("cookie %+v: want an opaque HttpOnly SameSite=Lax value", ck)
	}
	for range 20 {
		if body, set := affinityGet(t, b.URL("/a/x"), ck); body != "a v2" || len(set) != 0 {
			t.Fatalf("with its cookie a client got %q and cookies %v; want a v2 and nothing new", body, set)
		}
	}
	// a's cookie presented to b (same value, b's name): not b's, ignored.
	// With 50 % each way, 40 requests all on v2 would be chance 1 in 10¹².
	moved := &http.Cookie{Name: "baton_b", Value: ck.Value}
	v2 := 0
	for range 40 {
		if body, _ := affinityGet(t, b.URL("/b/x"), moved); body == "b v2" {
			v2++
		}
	}
	if v2 == 40 {
		t.Errorf("pool a's cookie under b's name kept b's clients on v2")
	}
	// A version name in front does not count: only the signed part.
	if body, _ := affinityGet(t, b.URL("/a/x"), &http.Cookie{Name: "baton_a", Value: "v1." + ck.Value}); body != "a v2" {
		t.Errorf("a prefix naming another version moved the client to %q", body)
	}

	// expose_version: the value starts with the version's name.
	e := affinityPools(t, "    affinity: {expose_version: true}\n")
	for i := 0; i < 50; i++ {
		body, set := affinityGet(t, e.URL("/a/x"))
		for _, c := range set {
			if c.Name == "baton_a" {
				want := strings.TrimPrefix(body, "a ") + "."
				if !strings.HasPrefix(c.Value, want) {
					t.Fatalf("with expose_version the cookie of a %s client is %q", body, c.Value)
				}
				return
			}
		}
	}
	t.Fatal("expose_version: no cookie set")
}
