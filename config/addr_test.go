package config_test

import (
	"strings"
	"testing"

	"github.com/baton-lb/baton/config"
)

// TestBackendAddressZone: an IPv6 zone is an interface name; anything
// else there (it reaches baton rollout's shell commands) is refused.
func TestBackendAddressZone(t *testing.T) {
	for _, ok := range []string{"[fe80::1%eth0]:80", "[fe80::1%2]:80", "[fe80::1%en0.10_a-b]:80", "[::1]:80", "10.0.0.5:8080"} {
		if p := config.CheckBackendAddress(ok); p != "" {
			t.Errorf("%s: %s; want it accepted", ok, p)
		}
	}
	for _, bad := range []string{"[fe80::1%$(id)]:80", "[fe80::1%a;b]:80", "[fe80::1%a b]:80", "[fe80::1%`id`]:80"} {
		if p := config.CheckBackendAddress(bad); !strings.Contains(p, "IPv6 zone") {
			t.Errorf("%s: %q; want the zone refused", bad, p)
		}
	}
}
