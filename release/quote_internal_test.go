package release

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/baton-lb/baton/admin/v1"
)

// TestTemplatesAreShellQuoted: values substituted into upgrade and gate
// templates reach sh as one word each, never as shell syntax.
func TestTemplatesAreShellQuoted(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "ran")
	evil := "$(touch " + marker + ")'`touch " + marker + "`"
	b := v1.Backend{Name: "web-1;touch " + marker, Address: "[fe80::1%" + evil + "]:80"}
	line := expand("printf '%s|' {name} {host} {address} {port} {version}", "shop", b, "v2 && touch "+marker, "v1")
	out, err := Shell(nil)(context.Background(), Command{Line: line})
	if err != nil {
		t.Fatalf("%s: %v (%s)", line, err, out)
	}
	want := b.Name + "|fe80::1%" + evil + "|" + b.Address + "|80|v2 && touch " + marker + "|"
	if out != want {
		t.Errorf("sh saw %q, want %q", out, want)
	}
	r := &Release{pool: "shop;touch " + marker, rec: &v1.Rollout{From: "v1"}, o: Options{To: "v3"}}
	gate := r.expandGate("printf '%s|' {pool} {from} {to}")
	if out, err := Shell(nil)(context.Background(), Command{Line: gate}); err != nil || out != "shop;touch "+marker+"|v1|v3|" {
		t.Errorf("the gate line %s gave %q (%v)", gate, out, err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatalf("a substituted value ran a command")
	}
}
