package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/baton-lb/baton"
	"github.com/baton-lb/baton/config"
)

// cmdDemo runs a config (the built-in example by default) with a demo backend
// on every loopback backend address, so baton answers at once on a fresh
// machine.
func cmdDemo(args []string, stdout, stderr io.Writer) int {
	f, code, ok := parseFlags("demo", args, stderr, false)
	if !ok {
		return code
	}
	path := f.path
	var cfg *config.Config
	var err error
	if path == "" {
		cfg, err = config.Parse(baton.ExampleConfig, "config.example.yaml")
	} else {
		cfg, err = config.Load(path)
	}
	if err != nil {
		printConfigErrors(stderr, err)
		return exitFail
	}
	f.applyStateFlag(cfg)
	ctx, stop := signalContext()
	defer stop()

	backends, err := startDemoBackends(cfg)
	defer func() {
		for _, b := range backends {
			_ = b.Close()
		}
	}()
	if err != nil {
		fmt.Fprintln(stderr, "baton demo:", err)
		return exitFail
	}
	ready := func(traffic, admin net.Addr) {
		port := traffic.(*net.TCPAddr).Port
		fmt.Fprintf(stdout, "\nbaton demo: %d demo backend(s) running; baton is serving on %s\n", len(backends), traffic)
		fmt.Fprintf(stdout, "  try:  curl http://localhost:%d/\n", port)
		if admin != nil {
			fmt.Fprintf(stdout, "        curl http://%s/healthz\n", admin)
			fmt.Fprintf(stdout, "  dashboard: http://%s/ui/\n", admin)
		}
		fmt.Fprintf(stdout, "  stop: Ctrl-C\n\n")
	}
	if err := serve(ctx, cfg, path, [32]byte{}, stderr, ready); err != nil {
		fmt.Fprintln(stderr, "baton demo:", err)
		return exitFail
	}
	return exitOK
}

// startDemoBackends starts a small HTTP server for each backend whose address
// is on this machine's loopback. Each answers with its name and version, and
// /healthz with 200.
func startDemoBackends(cfg *config.Config) ([]*http.Server, error) {
	var servers []*http.Server
	for _, p := range cfg.Pools {
		for _, b := range p.Backends {
			host, _, err := net.SplitHostPort(b.Address)
			if err != nil {
				continue
			}
			ip, err := netip.ParseAddr(host)
			if host != "localhost" && (err != nil || !ip.IsLoopback()) {
				continue
			}
			ln, err := net.Listen("tcp", b.Address)
			if err != nil {
				return servers, fmt.Errorf("starting demo backend %s: %w", b.Name, err)
			}
			srv := &http.Server{Handler: demoHandler(b.Name, b.Version), ReadHeaderTimeout: 10 * time.Second}
			servers = append(servers, srv)
			go func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					fmt.Fprintln(os.Stderr, "baton demo: backend stopped:", err)
				}
			}()
		}
	}
	if len(servers) == 0 {
		return nil, errors.New("the config has no backend on a loopback address to run a demo backend for")
	}
	return servers, nil
}

func demoHandler(name, version string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Backend", name)
		w.Header().Set("X-Version", version)
		fmt.Fprintf(w, "Hello from %s, running %s. You asked for %s %s via %s.\n",
			name, version, r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-For"))
	})
	return mux
}
