package testbed

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Ports for processes a test starts (baton, etcd) and for addresses it
// restarts a backend on come from below the kernel's ephemeral range. A
// port found by listening on :0 is in that range, and between closing it
// and the child binding it any outgoing connection on the machine may be
// given it as its local port: CI saw `bind: address already in use` that
// way. Below the range only another listener can take it, and each test
// process starts its walk at its own place in the range, so two packages'
// tests running side by side do not try the same ports in step.
var ports struct {
	mu    sync.Mutex // protects next, lo, hi and given
	next  int
	lo    int
	hi    int // exclusive
	given map[int]bool
}

// lowestPort is where the fixed range starts: above the ports that
// well-known services listen on.
const lowestPort = 20000

// ephemeralLow reads the first port of the kernel's ephemeral range, or 0.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// FreeAddr returns 127.0.0.1:PORT for a port that nothing listened on a
// moment ago and that no other caller in this process was given: an
// address a test hands to a process it starts, or keeps for a server it
// restarts. See ports for why it is not a port from :0.
func FreeAddr(t testing.TB) string {
	t.Helper()
	a, err := FreeAddrErr()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// FreeAddrErr is FreeAddr for callers without a testing.TB.
func FreeAddrErr() (string, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.given == nil {
		ports.given = map[int]bool{}
		ports.lo, ports.hi = lowestPort, ephemeralLow()
		if ports.hi-ports.lo >= 1000 {
			span := ports.hi - ports.lo
			ports.next = ports.lo + int((uint64(os.Getpid())*7919+uint64(time.Now().UnixNano()/1000))%uint64(span))
		}
	}
	if ports.hi-ports.lo < 1000 {
		// A kernel whose ephemeral range starts low leaves no room:
		// take a port from :0 after all.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	for tries := 0; tries < ports.hi-ports.lo; tries++ {
		p := ports.next
		ports.next++
		if ports.next >= ports.hi {
			ports.next = ports.lo
		}
		if ports.given[p] {
			continue
		}
		addr := "127.0.0.1:" + strconv.Itoa(p)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: by another test process, or a service
		}
		ln.Close()
		ports.given[p] = true
		return addr, nil
	}
	return "", fmt.Errorf("no free port in 127.0.0.1:%d-%d", ports.lo, ports.hi-1)
}
