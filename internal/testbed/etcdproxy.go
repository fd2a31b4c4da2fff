package testbed

import (
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// EtcdProxy is a TCP proxy on loopback in front of an etcd that can
// swallow etcd's answers: a write reaches etcd and is committed, and its
// client never hears so — what a network that fails after the request
// does. Clients dial Endpoint instead of the etcd's.
type EtcdProxy struct {
	t      testing.TB
	target string // host:port of the etcd
	ln     net.Listener
	// mu protects swallow, conns and closed.
	mu      sync.Mutex
	swallow bool
	conns   map[*proxyConn]bool
	closed  bool
	wg      sync.WaitGroup
}

type proxyConn struct {
	client, server net.Conn
	// broken: an answer was swallowed on it, so its HTTP/2 framing is
	// broken for good; nothing more is passed to the client (under the
	// proxy's mu).
	broken bool
}

// NewEtcdProxy starts a proxy to e and stops it at the end of the test.
func NewEtcdProxy(t testing.TB, e *Etcd) *EtcdProxy {
	t.Helper()
	ln, err := net.Listen("tcp", FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	p := &EtcdProxy{t: t, target: strings.TrimPrefix(e.Endpoint(), "http://"), ln: ln, conns: map[*proxyConn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Endpoint is the proxy's client URL, for cluster.etcd.endpoints.
func (p *EtcdProxy) Endpoint() string { return "http://" + p.ln.Addr().String() }

// Swallow makes etcd's answers vanish (on) on every connection, open or
// new, or pass again (off) on connections that have not lost one.
func (p *EtcdProxy) Swallow(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.swallow = on
}

// Cut closes every connection through the proxy: their clients see the
// connection fail and dial again.
func (p *EtcdProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
}

func (p *EtcdProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.Cut()
	p.wg.Wait()
}

func (p *EtcdProxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxyConn{client: client, server: server}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			client.Close()
			server.Close()
			return
		}
		p.conns[c] = true
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(server, client)
			server.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.answers(c)
			p.mu.Lock()
			delete(p.conns, c)
			p.mu.Unlock()
		}()
	}
}

// answers copies etcd's bytes to the client, unless they are swallowed.
func (p *EtcdProxy) answers(c *proxyConn) {
	defer c.client.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.server.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if p.swallow {
				c.broken = true
			}
			pass := !c.broken
			p.mu.Unlock()
			if pass {
				if _, werr := c.client.Write(buf[:n]); werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}
