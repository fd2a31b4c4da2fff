package testbed

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Etcd is a real etcd server on loopback, one member, its data in a
// temporary directory. It can be stopped and started again on the same
// ports and data, for the tests of an etcd outage.
type Etcd struct {
	t       testing.TB
	bin     string
	dir     string
	client  string // http://127.0.0.1:PORT
	peer    string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	logFile *os.File
}

// EtcdBinary returns the etcd binary the cluster tests use: $BATON_ETCD,
// else etcd on the PATH or /usr/bin/etcd (Debian's etcd-server). Without
// one the test is skipped, unless BATON_ETCD_TESTS=required (CI), where it
// fails.
func EtcdBinary(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("BATON_ETCD")
	if bin == "" {
		if p, err := exec.LookPath("etcd"); err == nil {
			bin = p
		} else if _, err := os.Stat("/usr/bin/etcd"); err == nil {
			bin = "/usr/bin/etcd"
		}
	}
	if bin == "" {
		if os.Getenv("BATON_ETCD_TESTS") == "required" {
			t.Fatal("BATON_ETCD_TESTS=required but no etcd binary: install etcd-server or set BATON_ETCD")
		}
		t.Skip("no etcd binary (install etcd-server, or set BATON_ETCD); BATON_ETCD_TESTS=required makes this a failure")
	}
	return bin
}

// StartEtcd starts an etcd on free loopback ports and stops it at the end
// of the test. Its election timing is short (heartbeat 10 ms, election 100
// ms) so that it is ready within a fraction of a second.
func StartEtcd(t testing.TB) *Etcd {
	t.Helper()
	e := &Etcd{t: t, bin: EtcdBinary(t), dir: t.TempDir(),
		client: "http://" + freeLoopbackPort(t), peer: "http://" + freeLoopbackPort(t)}
	t.Cleanup(e.Stop)
	e.Start()
	return e
}

// Endpoint is the client URL, for cluster.etcd.endpoints.
func (e *Etcd) Endpoint() string { return e.client }

// Start starts the server (again, after Stop) and waits until it answers
// its health check.
func (e *Etcd) Start() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		return
	}
	lf, err := os.OpenFile(filepath.Join(e.dir, "etcd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		e.t.Fatal(err)
	}
	cmd := exec.Command(e.bin,
		"--name", "t", "--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", e.client, "--advertise-client-urls", e.client,
		"--listen-peer-urls", e.peer, "--initial-advertise-peer-urls", e.peer,
		"--initial-cluster", "t="+e.peer, "--initial-cluster-state", "new",
		"--heartbeat-interval", "10", "--election-timeout", "100",
		"--log-level", "warn")
	// etcd 3.4 refuses to start on architectures it does not support
	// officially (arm64 among them) unless told.
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		e.t.Fatalf("starting etcd: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	e.cmd, e.done, e.logFile = cmd, done, lf
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.client+"/health", nil)
		resp, err := http.DefaultClient.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-done:
			data, _ := os.ReadFile(filepath.Join(e.dir, "etcd.log"))
			e.t.Fatalf("etcd exited at start:\n%s", data)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("etcd did not become healthy in 30s: %v", err)
		}
	}
}

// Stop kills the server (SIGKILL: an outage, not a goodbye) and waits for
// it to exit. Its data stays for Start.
func (e *Etcd) Stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	_ = e.cmd.Process.Kill()
	<-e.done
	e.logFile.Close()
	e.cmd = nil
}

// freeLoopbackPort returns 127.0.0.1:PORT for a port free at this moment.
func freeLoopbackPort(t testing.TB) string {
	t.Helper()
	return FreeAddr(t)
}

// Client is a plain etcd client on e, closed at the test's end: for what
// a test reads or writes behind the batons' backs, or that no baton would
// write.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	raw, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint()}, DialTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	return raw
}
