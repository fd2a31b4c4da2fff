package proxy

import (
	"bytes"
	"testing"
)

// TestClientAddrForBounds: the address that stands for a client in the
// judge's per-client bounds — IPv4 as is, IPv6 by its /64, the forwarded
// address behind a trusted proxy, none for a shared peer that forwarded
// nothing.
func TestClientAddrForBounds(t *testing.T) {
	addr := func(ip, fwd string, shared bool) []byte {
		x := &exchange{clientIP: []byte(ip), fwdClient: []byte(fwd), sharedPeer: shared}
		return append([]byte(nil), x.clientAddr()...)
	}
	if got := addr("203.0.113.9", "", false); string(got) != "203.0.113.9" {
		t.Errorf("IPv4: %q", got)
	}
	a, b := addr("2001:db8:1:2::1", "", false), addr("2001:db8:1:2:ffff::9", "", false)
	if !bytes.Equal(a, b) || bytes.Equal(a, addr("2001:db8:1:3::1", "", false)) {
		t.Errorf("IPv6 /64s: %x %x", a, b)
	}
	if got := addr("127.0.0.1", "198.51.100.7", true); string(got) != "198.51.100.7" {
		t.Errorf("behind a trusted proxy: %q", got)
	}
	if got := addr("127.0.0.1", "", true); got != nil {
		t.Errorf("a shared peer that forwarded nothing: %q", got)
	}
}
