package proxy

import (
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

func TestRoutePathNormalisation(t *testing.T) {
	cases := []struct{ in, want string }{
		{"/", "/"},
		{"/a/b", "/a/b"},
		{"/a/b/", "/a/b/"},
		{"/a/../b", "/b"},
		{"//x", "/x"},
		{"/a//b///c", "/a/b/c"},
		{"/%2e%2e/admin", "/admin"},
		{"/%2E%2E/admin", "/admin"},
		{"/.%2e/admin", "/admin"},
		{"/static/%2e%2e/admin", "/admin"},
		{"/static/../admin", "/admin"},
		{"/a%2Fb", "/a%2Fb"},
		{"/a%2fb/../c", "/c"},
		{"/a%2F..%2Fadmin", "/a%2F..%2Fadmin"},
		{"/%7Euser/%41", "/~user/A"},
		{"/a%20b", "/a%20b"},
		{"/a%", "/a%"},
		{"/a%2", "/a%2"},
		{"/a%zz", "/a%zz"},
		{"/p?q=1", "/p"},
		{"/p?x=/../admin", "/p"},
		{"/p#frag", "/p"},
		{"/a/../b?q", "/b"},
		{"", "/"},
		{"*", "/"},
		{"?q=1", "/"},
		{"/..", "/"},
		{"/../../x", "/x"},
		{"/a/b/..", "/a/"},
		{"/a/./b", "/a/b"},
		{"/a/b/.", "/a/b/"},
		{"/./", "/"},
		{"/a/.hidden/..b", "/a/.hidden/..b"},
	}
	for _, c := range cases {
		target := []byte(c.in)
		orig := string(target)
		got, _ := routePath(nil, target)
		if string(got) != c.want {
			t.Errorf("routePath(%q) = %q, want %q", c.in, got, c.want)
		}
		if string(target) != orig {
			t.Errorf("routePath(%q) changed the target to %q; the backend must get it as sent", orig, target)
		}
	}
}

func TestRoutePathBuffers(t *testing.T) {
	// A path that needs no change aliases the target: no copy.
	target := []byte("/shop/cart?id=1")
	scratch := make([]byte, 0, 64)
	got, sc := routePath(scratch, target)
	if string(got) != "/shop/cart" || &got[0] != &target[0] {
		t.Errorf("clean path: got %q aliasing target %v; want \"/shop/cart\" aliasing the target", got, &got[0] == &target[0])
	}
	if cap(sc) != 64 {
		t.Errorf("clean path: scratch cap %d, want the caller's 64 back", cap(sc))
	}
	// One that does is built in the scratch space, which is reused.
	got, sc = routePath(sc, []byte("/a//b/../c"))
	if string(got) != "/a/c" || cap(sc) != 64 || &got[0] != &sc[:1][0] || &sc[:1][0] != &scratch[:1][0] {
		t.Errorf("dirty path: got %q; want \"/a/c\" built in the caller's scratch buffer", got)
	}
}

// table builds a Table from routes given as "pool host path_prefix" lines
// (host or prefix "-" for empty) and a default pool name ("" for none).
func table(t *testing.T, defaultPool string, routes ...string) (*Table, map[string]*pool.Pool) {
	t.Helper()
	cfg := &config.Config{}
	index := map[string]int{}
	for _, r := range routes {
		f := strings.Fields(r)
		name, host, prefix := f[0], f[1], f[2]
		if host == "-" {
			host = ""
		}
		if prefix == "-" {
			prefix = ""
		}
		i, ok := index[name]
		if !ok {
			i = len(cfg.Pools)
			index[name] = i
			cfg.Pools = append(cfg.Pools, config.Pool{Name: name})
		}
		cfg.Pools[i].Routes = append(cfg.Pools[i].Routes, config.Route{Host: host, PathPrefix: prefix})
	}
	if defaultPool != "" {
		cfg.Pools = append(cfg.Pools, config.Pool{Name: defaultPool})
	}
	pools := map[string]*pool.Pool{}
	for _, pc := range cfg.Pools {
		pools[pc.Name] = pool.New(pc, zerolog.Nop())
	}
	tb, err := BuildTable(cfg, pools)
	if err != nil {
		t.Fatal(err)
	}
	return tb, pools
}

func matchName(tb *Table, host, path string) string {
	p := tb.Match([]byte(host), []byte(path))
	if p == nil {
		return "<nil>"
	}
	return p.Name()
}

func TestRouteTableMatchPrecedence(t *testing.T) {
	// Listed least specific first, so that order in the file cannot be what
	// makes the right route win.
	tb, _ := table(t, "fallback",
		"api - /api",
		"apiv2 - /api/v2",
		"wild *.example.com -",
		"wildadmin *.example.com /admin",
		"euwild *.EU.example.com -",
		"shop Shop.Example.com -",
		"shopadmin shop.example.com /admin",
	)
	cases := []struct{ host, path, want string }{
		{"shop.example.com", "/", "shop"},
		{"shop.example.com", "/cart", "shop"},
		{"shop.example.com", "/admin/users", "shopadmin"},
		// Exact host beats any host, even with a longer prefix there.
		{"shop.example.com", "/api/v2/x", "shop"},
		// Case and port are ignored.
		{"SHOP.EXAMPLE.COM", "/", "shop"},
		{"Shop.Example.Com:8443", "/admin", "shopadmin"},
		{"shop.example.com:80", "/x", "shop"},
		// Wildcard beats any host; longer prefix wins among wildcards.
		{"a.example.com", "/api/v2", "wild"},
		{"a.example.com", "/admin/x", "wildadmin"},
		{"a.b.example.com", "/", "wild"},
		{"A.Example.COM:9000", "/", "wild"},
		// The longer wildcard suffix is more specific.
		{"x.eu.example.com", "/admin", "euwild"},
		{"X.EU.EXAMPLE.COM", "/", "euwild"},
		// A wildcard needs at least one label before the suffix.
		{"example.com", "/", "fallback"},
		{"eu.example.com", "/", "wild"},
		{"badexample.com", "/", "fallback"},
		{"example.com", "/api/v2/x", "apiv2"},
		// Any host: the longer prefix wins.
		{"other.test", "/api/v2/users", "apiv2"},
		{"other.test", "/api/v1", "api"},
		{"other.test", "/ap", "fallback"},
		{"", "/api", "api"},
		{"", "/", "fallback"},
		{"[::1]:8080", "/api", "api"},
	}
	for _, c := range cases {
		if got := matchName(tb, c.host, c.path); got != c.want {
			t.Errorf("Match(%q, %q) = %s, want %s", c.host, c.path, got, c.want)
		}
	}
}

func TestRouteTableWithoutDefault(t *testing.T) {
	tb, pools := table(t, "", "shop shop.example.com /", "api - /api")
	if got := tb.Match([]byte("other.test"), []byte("/")); got != nil {
		t.Errorf("no route and no default pool: Match = %s, want nil", got.Name())
	}
	if got := tb.Match([]byte("other.test"), []byte("/api/x")); got != pools["api"] {
		t.Errorf("Match(other.test, /api/x) = %v, want pool api", got)
	}

	// Only a default pool: it takes everything.
	tb, pools = table(t, "all")
	if got := tb.Match([]byte("any.host"), []byte("/x/y")); got != pools["all"] {
		t.Errorf("default only: Match = %v, want pool all", got)
	}
}

func TestRouteTableNeedsEveryPool(t *testing.T) {
	cfg := &config.Config{Pools: []config.Pool{{Name: "a"}, {Name: "b", Routes: []config.Route{{PathPrefix: "/b"}}}}}
	pools := map[string]*pool.Pool{"a": pool.New(cfg.Pools[0], zerolog.Nop())}
	if tb, err := BuildTable(cfg, pools); err == nil || !strings.Contains(err.Error(), `no live pool "b"`) {
		t.Errorf("BuildTable without pool b: %v, %v; want an error naming b", tb, err)
	}
}

func TestRouteStripPort(t *testing.T) {
	cases := map[string]string{
		"example.com":      "example.com",
		"example.com:8080": "example.com",
		"example.com:":     "example.com",
		"10.0.0.1:80":      "10.0.0.1",
		"10.0.0.1":         "10.0.0.1",
		"[::1]:443":        "[::1]",
		"[::1]":            "[::1]",
		"":                 "",
	}
	for in, want := range cases {
		if got := string(stripPort([]byte(in))); got != want {
			t.Errorf("stripPort(%q) = %q, want %q", in, got, want)
		}
	}
}
