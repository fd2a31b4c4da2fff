package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// shopServer is one backend of the rolling-deploy test: it answers with its
// name and version, records every POST it receives, and can be restarted as
// a new version on the same address (the "upgrade").
type shopServer struct {
	name, addr string
	version    atomic.Value // string
	ledger     *postLedger

	mu  sync.Mutex // protects srv
	srv *http.Server
}

type postLedger struct {
	mu   sync.Mutex
	seen map[string]int
}

func (l *postLedger) add(id string) {
	l.mu.Lock()
	l.seen[id]++
	l.mu.Unlock()
}

func (s *shopServer) start() error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("%s listen: %w", s.name, err)
	}
	s.addr = ln.Addr().String()
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			return
		}
		v := s.version.Load().(string)
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				w.WriteHeader(400)
				return
			}
			s.ledger.add(r.Header.Get("X-Order"))
			fmt.Fprintf(w, "%s %s got %s", s.name, v, body)
			return
		}
		fmt.Fprintf(w, "%s %s", s.name, v)
	})}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
	return nil
}

// upgrade restarts the server as version: like a real upgrade, the old
// process goes away (its connections close) and a new one listens.
func (s *shopServer) upgrade(version string) error {
	s.mu.Lock()
	old := s.srv
	s.mu.Unlock()
	_ = old.Close()
	s.version.Store(version)
	return s.start()
}

func (s *shopServer) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.srv.Close()
}

// TestRollingDeployScript runs examples/rolling-deploy.sh against a real
// baton process with four backends under steady load: every server is
// drained, upgraded (restarted) and re-enabled, the first one as the canary,
// which is then promoted. No request may fail and every POST must reach a
// backend exactly once.
func TestRollingDeployScript(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("bash is not installed")
	}
	dir := t.TempDir()
	ledger := &postLedger{seen: map[string]int{}}
	servers := make([]*shopServer, 4)
	var backendsYAML strings.Builder
	for i := range servers {
		s := &shopServer{name: fmt.Sprintf("web-%d", i+1), addr: "127.0.0.1:0", ledger: ledger}
		s.version.Store("v41")
		if err := s.start(); err != nil {
			t.Fatal(err)
		}
		servers[i] = s
		fmt.Fprintf(&backendsYAML, "      - {name: %s, address: \"%s\", version: v41}\n", s.name, s.addr)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			s.stop()
		}
	})
	traffic, adminAddr := freeAddr(t), freeAddr(t)
	cfg := writeFile(t, "baton.yaml", fmt.Sprintf(`listen: %s
admin: {listen: %s}
log: {format: json, access: false}
pools:
  - name: shop
    health_check: {path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 2}
    drain_timeout: 20s
    backends:
%s`, traffic, adminAddr, backendsYAML.String()))

	p := startBinary(t, "serve", "-c", cfg)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer client.CloseIdleConnections()
	if !poll(20*time.Second, func() bool {
		s, _, err := get(client, "http://"+traffic+"/")
		return err == nil && s == 200
	}) {
		t.Fatalf("baton did not start serving: %s", p.stderr)
	}

	// Steady load: GETs and POSTs with unique order numbers.
	ctx, stopLoad := context.WithCancel(context.Background())
	var sent, failed atomic.Int64
	var failures sync.Map
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000 && ctx.Err() == nil; i++ {
				var req *http.Request
				if i%2 == 0 {
					req, _ = http.NewRequest("GET", "http://"+traffic+"/products", nil)
				} else {
					id := fmt.Sprintf("o%d-%d", w, i)
					req, _ = http.NewRequest("POST", "http://"+traffic+"/orders", strings.NewReader("order "+id))
					req.Header.Set("X-Order", id)
				}
				sent.Add(1)
				res, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					failures.Store(req.Method+" "+req.Header.Get("X-Order"), err.Error())
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					failed.Add(1)
					failures.Store(req.Method+" "+req.Header.Get("X-Order"), res.Status)
				}
			}
		}()
	}

	// The upgrade command blocks until the test has restarted that server.
	upgrades := make(chan string, 8)
	done := make(chan struct{})
	var upgradeErr atomic.Value
	go func() {
		for {
			select {
			case <-done:
				return
			case name := <-upgrades:
				for _, s := range servers {
					if s.name == name {
						if err := s.upgrade("v42"); err != nil {
							upgradeErr.Store(err.Error())
						}
					}
				}
				if err := os.WriteFile(filepath.Join(dir, "done-"+name), nil, 0o644); err != nil {
					upgradeErr.Store(err.Error())
				}
			}
		}
	}()
	fifo := filepath.Join(dir, "upgrade-requests")
	upgradeCmd := fmt.Sprintf(`echo {name} >> %s; for i in $(seq 1 400); do [ -e %s/done-{name} ] && exit 0; sleep 0.05; done; exit 1`, fifo, dir)
	go func() {
		// Hand each requested upgrade to the test, in order.
		seen := 0
		for {
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond): // polling the request file
			}
			data, _ := os.ReadFile(fifo)
			lines := strings.Fields(string(data))
			for ; seen < len(lines); seen++ {
				upgrades <- lines[seen]
			}
		}
	}()

	script := exec.Command("bash", "../../examples/rolling-deploy.sh", "shop", "v42")
	script.Env = append(os.Environ(),
		"BATON="+batonBin, "BATON_ADMIN=http://"+adminAddr,
		"UPGRADE_CMD="+upgradeCmd, "OBSERVE=2s", "INTERVAL=1", "MIN_REQUESTS=5", "DRAIN_WAIT=30s", "HEALTH_WAIT=20")
	out, err := script.CombinedOutput()
	close(done)
	stopLoad()
	wg.Wait()
	t.Logf("rolling-deploy.sh:\n%s", out)
	if e := upgradeErr.Load(); e != nil {
		t.Fatalf("upgrading a server: %v", e)
	}
	if err != nil {
		t.Fatalf("rolling-deploy.sh failed: %v", err)
	}

	if n := failed.Load(); n != 0 {
		var some []string
		failures.Range(func(k, v any) bool {
			if len(some) < 10 {
				some = append(some, fmt.Sprintf("%s: %s", k, v))
			}
			return true
		})
		t.Errorf("%d of %d requests failed during the rolling deploy: %v", n, sent.Load(), some)
	}
	ledger.mu.Lock()
	posts := 0
	for id, n := range ledger.seen {
		posts++
		if n != 1 {
			t.Errorf("POST %s reached the backends %d times", id, n)
		}
	}
	ledger.mu.Unlock()
	if posts == 0 || sent.Load() < 100 {
		t.Errorf("the load was too light to prove anything: %d requests, %d POSTs", sent.Load(), posts)
	}
	// Every server now answers as v42.
	for range 20 {
		_, body, err := get(client, "http://"+traffic+"/products")
		if err != nil || !strings.Contains(body, " v42") {
			t.Fatalf("after the release a request got %q (%v)", body, err)
		}
	}
	if !strings.Contains(string(out), "v42 is released to every server of shop") {
		t.Errorf("the script did not report the release")
	}
	t.Logf("%d requests during the deploy, %d POSTs, none failed", sent.Load(), posts)
}
