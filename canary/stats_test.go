package canary

import (
	"fmt"
	"testing"
)

func TestGroupsByConfiguredPrefix(t *testing.T) {
	g := NewGroups([]string{"/api", "/api/checkout", "/static"})
	cases := map[string]string{
		"/api/checkout/pay": "/api/checkout", // the longest prefix wins
		"/api/cart":         "/api",
		"/static/app.js":    "/static",
		"/":                 "other",
		"/about":            "other",
		"":                  "other",
	}
	for path, want := range cases {
		if got := g.Name(g.Index([]byte(path))); got != want {
			t.Errorf("%q: group %q, want %q", path, got, want)
		}
	}
}

func TestGroupsByFirstSegmentAreBounded(t *testing.T) {
	g := NewGroups(nil)
	cases := map[string]string{
		"/":              "/",
		"/checkout/pay":  "/checkout",
		"/checkout":      "/checkout",
		"/cart?x=1":      "/cart?x=1", // callers pass the path without its query
		"relative":       "other",
		"":               "other",
		"/checkout/":     "/checkout",
		"/static/a/b/c/": "/static",
	}
	for path, want := range cases {
		if got := g.Name(g.Index([]byte(path))); got != want {
			t.Errorf("%q: group %q, want %q", path, got, want)
		}
	}
	// Hostile clients sending endless distinct paths cannot grow the groups.
	for i := range 1000 {
		g.Index(fmt.Appendf(nil, "/p%d/x", i))
	}
	if last := g.Name(MaxGroups - 1); last == "other" {
		t.Fatalf("only some groups filled after 1000 distinct segments")
	}
	if past := g.Name(MaxGroups); past != "other" {
		t.Fatalf("a group %q past the bound of %d", past, MaxGroups)
	}
	if got := g.Name(g.Index([]byte("/p999/x"))); got != "other" {
		t.Fatalf("a segment past the bound is in group %q, want other", got)
	}
	if got := g.Name(g.Index([]byte("/checkout/again"))); got != "/checkout" {
		t.Fatalf("a known segment moved to %q", got)
	}
	if a := testing.AllocsPerRun(100, func() { g.Index([]byte("/checkout/pay")) }); a != 0 {
		t.Fatalf("Index of a known group allocates %v times", a)
	}
}
