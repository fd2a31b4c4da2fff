package pool_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// TestCheckBeforeEnableDoesNotCount: a health check that began before an
// operator enabled the backend (the server was being upgraded, and that
// check fails as its old process goes away) says nothing of the server
// that was enabled: it must not mark the backend down. The next check
// decides, and one pass brings it up.
func TestCheckBeforeEnableDoesNotCount(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The first check is held open until the test ends it with no
	// answer; every later one passes.
	held := make(chan net.Conn, 1)
	go func() {
		for first := true; ; first = false {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if first {
				held <- c
				continue
			}
			go func() {
				defer c.Close()
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					_, _ = c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
				}
			}()
		}
	}()
	logs := &testbed.SyncBuffer{}
	p := pool.New(hcPoolConfig(t, "  - name: web\n"+
		"    health_check: {path: /healthz, interval: 2s, timeout: 1900ms, rise: 3, fall: 1}\n"+
		"    backends:\n      - {name: b1, address: \""+ln.Addr().String()+"\"}\n"), zerolog.New(logs))
	defer p.Close()
	p.Start()
	var stale net.Conn
	select {
	case stale = <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the first check never came")
	}
	if _, err := p.Drain("b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Enable("b1"); err != nil {
		t.Fatal(err)
	}
	stale.Close() // the check from before the enable fails now
	b := p.Backend("b1")
	testbed.Eventually(t, 10*time.Second, func() bool { return b.Health() == pool.Up }, "b1 up after its first check since the enable")
	if strings.Contains(logs.String(), `"health":"unhealthy"`) {
		t.Errorf("the check from before the enable marked the backend down:\n%s", logs.String())
	}
}
