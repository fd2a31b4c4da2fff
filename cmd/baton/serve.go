package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	stdlog "log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin"
	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/listener"
	"github.com/baton-lb/baton/proxy"
)

// newLogger builds the one logger baton passes down.
func newLogger(c config.Log, w io.Writer) zerolog.Logger {
	lvl, err := zerolog.ParseLevel(c.Level)
	if err != nil {
		lvl = zerolog.InfoLevel
	}
	out := w
	if c.Format == "console" || (c.Format == "auto" && isTerminal(w)) {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: "15:04:05"}
	}
	return zerolog.New(out).Level(lvl).With().Timestamp().Logger()
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// serveOptions are how serve runs a config.
type serveOptions struct {
	// path is the config file, watched and reloaded on change and on
	// SIGHUP ("" for a built-in config); loaded is the SHA-256 of the
	// content the config came from (zero: whatever is there when watching
	// starts).
	path   string
	loaded [32]byte
	logw   io.Writer // where baton logs
	// ready, when set, is called with the listeners' addresses once baton
	// accepts traffic.
	ready func(traffic, admin net.Addr)
	// upg (baton serve): the listening sockets can be handed to a new
	// baton process (SIGUSR2 or POST /v1/upgrade); once it serves, this
	// one finishes what it has in flight and returns.
	upg *tableflip.Upgrader
	// recoverState (serve --state-recover): a corrupt state file is moved
	// aside and baton starts from the config alone.
	recoverState bool
}

// serve runs baton on cfg until ctx ends, then shuts down gracefully: it
// stops accepting, lets requests in flight finish for up to the shutdown
// timeout, and returns nil.
func serve(ctx context.Context, cfg *config.Config, o serveOptions) error {
	s := newServer(cfg, o)
	lock, err := s.lockState()
	if err != nil {
		return err
	}
	defer lock.Release()
	if err := s.openRegistry(); err != nil {
		return err
	}
	s.srv = proxy.New(cfg, s.reg.Table(), s.log)
	s.reg.OnTable(s.srv.SetTable)
	s.installKeys()
	for _, w := range cfg.Warnings {
		s.log.Warn().Msg(w)
	}
	s.metrics = s.newMetrics()
	if err := s.listenTraffic(); err != nil {
		return err
	}
	if err := s.startAdmin(); err != nil {
		s.closeListeners()
		return err
	}
	s.reg.Start()
	// The watchers end with ctx, or when serving fails.
	ctx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	s.watchKeys(ctx)
	s.watchTokensAndCerts(ctx)
	s.watchConfig(ctx)
	handedOver := s.watchUpgrades(ctx)
	served := s.startServing(ctx)

	select {
	case <-ctx.Done():
	case <-handedOver:
		stopWatching()
		// The admin socket is the new process's now: stop answering on it
		// at once (the request that asked for the upgrade completes).
		if s.adminSrv != nil {
			actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.adminSrv.Shutdown(actx)
			cancel()
		}
	case err := <-served:
		stopWatching()
		s.watchers.Wait()
		if s.adminSrv != nil {
			_ = s.adminSrv.Close()
		}
		s.reg.Close()
		return fmt.Errorf("serving: %w", err)
	}
	s.watchers.Wait()
	if s.o.upg != nil {
		// tableflip keeps a copy of each listening socket for a future
		// upgrade; without this the kernel would go on accepting.
		s.o.upg.Stop()
	}
	s.shutdown()
	return nil
}

// server is one serve: the registry, the proxy and the admin API, their
// listeners, and the files watched for them. Its fields are set by serve's
// steps before the goroutines that read them start.
type server struct {
	cfg        *config.Config
	o          serveOptions
	log        zerolog.Logger
	listen     func(network, address string) (net.Listener, error)
	takingOver bool // from a running baton, which serves meanwhile

	reg     *control.Registry
	srv     *proxy.Server
	metrics *prometheus.Registry

	ln          net.Listener // traffic
	tlsLn       net.Listener // the TCP listener HTTPS is served on
	tlsConf     *tls.Config
	certs       *proxy.Certs
	certReloads *admin.CertReloads

	adminSrv   *http.Server
	adminAddr  net.Addr
	adminLn    *listener.Listener // set before the admin server serves /metrics
	tokenSet   *admin.TokenSet    // the admin API's tokens, read again on change
	adminCerts *proxy.Certs       // admin.tls

	upgradeMu sync.Mutex // serialises upgrades: one new process at a time
	watchers  sync.WaitGroup
}

func newServer(cfg *config.Config, o serveOptions) *server {
	s := &server{cfg: cfg, o: o, log: newLogger(cfg.Log, o.logw), listen: net.Listen, certReloads: &admin.CertReloads{}}
	if o.upg != nil {
		s.listen = o.upg.Listen // inherited from the previous process after an upgrade
		s.takingOver = o.upg.HasParent()
	}
	return s
}

// lockState takes the state file's lock: one baton per state file. A
// process taking over from another inherits the lock with the sockets.
func (s *server) lockState() (*control.StateLock, error) {
	var inherited *os.File
	if s.o.upg != nil {
		inherited, _ = s.o.upg.Fds.File(stateLockName)
	}
	lock, err := control.LockStateFile(s.cfg.StateFile, inherited)
	if err != nil {
		return nil, err
	}
	if s.o.upg != nil && lock != nil {
		if err := s.o.upg.Fds.AddFile(stateLockName, lock.File()); err != nil {
			s.log.Warn().Err(err).Msg("the state file's lock cannot be handed to a new process; upgrades will fail")
		}
	}
	return lock, nil
}

// openRegistry builds the registry from the config and the state file,
// moving a corrupt state file aside with --state-recover.
func (s *server) openRegistry() error {
	reg, err := control.New(s.cfg, s.cfg.StateFile, s.log)
	moved := ""
	if errors.Is(err, control.ErrCorruptState) && s.o.recoverState {
		// The operator chose to lose the decisions rather than stay down.
		if moved, err = control.MoveAsideState(s.cfg.StateFile); err == nil {
			s.log.Error().Str("state_file", s.cfg.StateFile).Str("moved_to", moved).
				Msg("the state file is corrupt; moved aside, starting from the config alone: drains, canary shares and other runtime decisions are lost")
			reg, err = control.New(s.cfg, s.cfg.StateFile, s.log)
		}
	}
	if err != nil {
		return err
	}
	if moved != "" {
		reg.NoteRecovered(moved)
	}
	if s.takingOver {
		// Until this process is ready, the one handing over may still be
		// the one that serves: no decision here yet.
		reg.Freeze(true)
	}
	s.reg = reg
	return nil
}

// installKeys gives the proxy the affinity cookies' keys, kept beside the
// state file so that cookies outlive restarts and upgrades.
func (s *server) installKeys() {
	keys, err := s.reg.AffinityKeys(time.Now())
	if err != nil {
		s.log.Error().Err(err).Msg("affinity keys not loaded; cookies are signed with this process's own key until they are")
		return
	}
	if len(keys) == 0 {
		return
	}
	pk := make([]proxy.AffinityKey, len(keys))
	for i, k := range keys {
		pk[i] = proxy.AffinityKey{ID: k.ID, Secret: k.Secret}
	}
	s.srv.SetAffinityKeys(pk)
}

// newMetrics is the one Prometheus registry, served on the admin API.
func (s *server) newMetrics() *prometheus.Registry {
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		admin.Collector(s.reg),
		admin.ListenerCollector(func() []listener.Stats {
			out := s.srv.Listeners()
			if s.adminLn != nil {
				out = append(out, s.adminLn.Stats())
			}
			return out
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "baton_response_bodies_piped_total",
			Help: "Response bodies (16 to 64 KiB, to plain-HTTP clients) moved from backend to client in the kernel (splice), never copied through baton's memory.",
		}, func() float64 { p, _ := s.srv.PipedBodies(); return float64(p) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "baton_response_bodies_read_back_total",
			Help: "Response bodies meant for a pipe that were read into memory because the backend sent them in more pieces than the pipe had room for.",
		}, func() float64 { _, r := s.srv.PipedBodies(); return float64(r) }),
	)
	return metrics
}

// listenTraffic opens the traffic listener and, with tls.listen, the HTTPS
// one: the same server on a TLS listener, certificates by SNI.
func (s *server) listenTraffic() error {
	ln, err := s.listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening for traffic: %w", err)
	}
	if s.cfg.TLS.Listen == "" {
		s.ln = ln
		return nil
	}
	certs, err := proxy.NewCerts(s.cfg.TLS.Certificates)
	if err != nil {
		ln.Close()
		return err
	}
	tlsLn, err := s.listen("tcp", s.cfg.TLS.Listen)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listening for HTTPS: %w", err)
	}
	s.ln, s.tlsLn, s.certs = ln, tlsLn, certs
	s.tlsConf = proxy.TLSConfig(s.cfg.TLS, certs)
	s.metrics.MustRegister(admin.TLSCollector(certs, s.certReloads))
	return nil
}

func (s *server) closeListeners() {
	s.ln.Close()
	if s.tlsLn != nil {
		s.tlsLn.Close()
	}
}

// startAdmin opens the admin listener (unless admin.listen is off) and
// serves the admin API on it.
func (s *server) startAdmin() error {
	ac := s.cfg.Admin
	if ac.Listen == "off" {
		return nil
	}
	aln, err := s.listen("tcp", ac.Listen)
	if err != nil {
		return fmt.Errorf("listening for admin: %w", err)
	}
	opts, err := s.adminOptions()
	if err != nil {
		aln.Close()
		return err
	}
	s.adminAddr = aln.Addr()
	// Live tails never end by themselves: Shutdown (a stop, or an upgrade
	// handing the socket over) ends them, or it would wait for them.
	tailsStop := make(chan struct{})
	var stopTails sync.Once
	opts = append(opts, admin.WithStop(tailsStop), admin.WithTailLimit(max(1, ac.MaxConnections/4)))
	s.adminSrv = &http.Server{
		Handler:           admin.Handler(s.reg, s.metrics, s.log, opts...),
		ReadHeaderTimeout: min(10*time.Second, ac.ReadTimeout),
		ReadTimeout:       ac.ReadTimeout,
		WriteTimeout:      ac.WriteTimeout,
		IdleTimeout:       ac.IdleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          httpErrorLog(s.log),
	}
	s.adminSrv.RegisterOnShutdown(func() { stopTails.Do(func() { close(tailsStop) }) })
	refusal := listener.Refusal("baton: too many admin connections (admin.max_connections); retry in a moment")
	if s.adminCerts != nil {
		refusal = nil // a TLS client could not read it
	}
	s.adminLn = listener.Wrap(aln, "admin", listener.NewGate(ac.MaxConnections), refusal, s.log)
	var served net.Listener = s.adminLn
	if s.adminCerts != nil {
		served = tls.NewListener(s.adminLn, &tls.Config{MinVersion: tls.VersionTLS12,
			GetCertificate: s.adminCerts.GetCertificate, NextProtos: []string{"http/1.1"}})
	}
	go func() {
		if err := s.adminSrv.Serve(served); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Msg("admin listener stopped")
		}
	}()
	return nil
}

// adminOptions loads the admin API's tokens and certificate and says what
// it may do.
func (s *server) adminOptions() ([]admin.Option, error) {
	ac := s.cfg.Admin
	var opts []admin.Option
	if ac.TokenFile != "" {
		tokens, err := admin.LoadTokens(ac.TokenFile)
		if err != nil {
			return nil, err
		}
		s.tokenSet = admin.NewTokenSet(tokens)
		opts = append(opts, admin.WithTokenSet(s.tokenSet))
	}
	if ac.TLS != (config.Certificate{}) {
		certs, err := proxy.NewCerts([]config.Certificate{ac.TLS})
		if err != nil {
			return nil, fmt.Errorf("admin.tls: %w", err)
		}
		s.adminCerts = certs
	}
	if s.o.upg != nil {
		opts = append(opts, admin.WithUpgrade(s.upgrade))
	}
	return append(opts, admin.WithTimeouts(ac.ReadTimeout, ac.WriteTimeout)), nil
}

// upgrade starts the binary again and hands it the sockets. Decisions
// wait meanwhile: the new process reads the state file as it starts.
func (s *server) upgrade(actor string) error {
	s.upgradeMu.Lock()
	defer s.upgradeMu.Unlock()
	s.log.Info().Str("actor", actor).Msg("upgrade: starting a new baton process and handing it the listening sockets")
	// Audited first, so that the new process, which reads the audit
	// file as it starts, has it; a failure is audited as refused.
	s.reg.Audit(control.Event{Actor: actor, Action: "upgrade", Detail: fmt.Sprintf("from pid %d", os.Getpid())})
	s.reg.Freeze(true)
	if err := s.o.upg.Upgrade(); err != nil {
		s.reg.Freeze(false) // reads the state file again
		s.thawed()
		s.log.Error().Err(err).Msg("upgrade failed; this process keeps serving")
		err = fmt.Errorf("the new baton did not start (%v); this one keeps serving", err)
		s.reg.Audit(control.Event{Actor: actor, Action: "upgrade", Refused: err.Error()})
		return err
	}
	s.log.Info().Msg("upgrade: the new process serves; finishing the requests in flight here, then exiting")
	return nil
}

// thawed is called once decisions resume: it applies an edit of the
// config skipped meanwhile, and the affinity keys.
func (s *server) thawed() {
	if s.o.path != "" {
		s.reloadConfig() // the same file is a no-op
	}
	s.installKeys()
}

// reloadCerts loads the certificates again from their files, as they
// change and with every config reload; a bad set is refused and the old
// one serves on.
func (s *server) reloadCerts(why string) {
	if s.adminCerts != nil {
		// The admin listener's settings change at a restart; its
		// certificate files are read again.
		if err := s.adminCerts.Load([]config.Certificate{s.cfg.Admin.TLS}); err != nil {
			s.log.Error().Err(err).Str("trigger", why).Msg("the admin certificate was not reloaded; the one in service stays")
		}
	}
	if s.certs == nil {
		return
	}
	list := s.reg.Config().TLS.Certificates
	if err := s.certs.Load(list); err != nil {
		s.certReloads.Failed.Add(1)
		s.log.Error().Err(err).Str("trigger", why).Msg("certificates not reloaded; the ones in service stay")
		return
	}
	s.certReloads.OK.Add(1)
	s.log.Info().Str("trigger", why).Int("certificates", len(list)).Msg("certificates reloaded")
}

// reloadTokens loads the admin tokens again when their file changes and on
// SIGHUP: a revoked token stops working without a restart. A file that is
// emptied, removed or broken revokes every token (the API stays closed
// until it loads): "revoke everyone" must never revoke no one.
func (s *server) reloadTokens(why string) {
	if s.tokenSet == nil {
		return
	}
	tokens, err := admin.LoadTokens(s.cfg.Admin.TokenFile)
	if err != nil {
		s.tokenSet.Revoke(err.Error())
		s.log.Error().Err(err).Str("trigger", why).Msg("admin token file did not load: every token is revoked until it does")
		s.reg.Audit(control.Event{Actor: "baton", Action: "revoke admin tokens", Detail: "the token file did not load: " + err.Error()})
		return
	}
	s.tokenSet.Store(tokens)
	s.log.Info().Str("trigger", why).Int("tokens", len(tokens)).Msg("admin tokens reloaded")
	s.reg.Audit(control.Event{Actor: "baton", Action: "reload admin tokens", Detail: fmt.Sprintf("%d tokens (%s)", len(tokens), why)})
}

func (s *server) reloadConfig() {
	if s.reg.ReloadFile(s.o.path) == nil {
		s.reloadCerts("config reload")
	}
}

// watchKeys checks the affinity keys hourly, for their rotation; in a
// cluster every 10 s, so that a key another instance rotated in signs and
// verifies here soon after.
func (s *server) watchKeys(ctx context.Context) {
	every := time.Hour
	if s.reg.Clustered() {
		every = 10 * time.Second
	}
	s.watchers.Go(func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.installKeys()
			}
		}
	})
}

// watchTokensAndCerts reloads the token file and the certificates when
// their files change.
func (s *server) watchTokensAndCerts(ctx context.Context) {
	if s.tokenSet != nil {
		s.watchers.Go(func() {
			if err := control.WatchFiles(ctx, []string{s.cfg.Admin.TokenFile}, s.log, func() { s.reloadTokens("file changed") }); err != nil {
				s.log.Warn().Err(err).Msg("the token file is not watched; send SIGHUP to reload it")
			}
		})
	}
	if s.certs == nil && s.adminCerts == nil {
		return
	}
	var files []string
	for _, c := range s.cfg.TLS.Certificates {
		files = append(files, c.Cert, c.Key)
	}
	if s.adminCerts != nil {
		files = append(files, s.cfg.Admin.TLS.Cert, s.cfg.Admin.TLS.Key)
	}
	s.watchers.Go(func() {
		if err := control.WatchFiles(ctx, files, s.log, func() { s.reloadCerts("files changed") }); err != nil {
			s.log.Warn().Err(err).Msg("the certificate files are not watched; send SIGHUP to reload them")
		}
	})
}

// watchConfig reloads the config file when it changes, and it, the
// certificates and the tokens on SIGHUP.
func (s *server) watchConfig(ctx context.Context) {
	path := s.o.path
	if path == "" {
		return
	}
	s.watchers.Go(func() {
		err := control.WatchConfigFrom(ctx, path, s.o.loaded, s.log, s.reloadConfig)
		if err != nil {
			s.log.Warn().Err(err).Str("file", path).Msg("the config file is not watched; send SIGHUP to reload it")
		}
	})
	s.onSignal(ctx, syscall.SIGHUP, func() {
		s.log.Info().Str("file", path).Msg("SIGHUP: reloading the config, certificates and tokens")
		s.reloadConfig()
		s.reloadTokens("SIGHUP")
	})
}

// onSignal calls fn on each sig until ctx ends.
func (s *server) onSignal(ctx context.Context, sig os.Signal, fn func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sig)
	s.watchers.Go(func() {
		defer signal.Stop(ch)
		for {
			select {
			case <-ctx.Done():
				return
			case <-ch:
				fn()
			}
		}
	})
}

// watchUpgrades upgrades on SIGUSR2, when upgrades are on. The channel it
// returns closes once a new process has taken over (nil: never).
func (s *server) watchUpgrades(ctx context.Context) <-chan struct{} {
	if s.o.upg == nil {
		return nil
	}
	s.onSignal(ctx, syscall.SIGUSR2, func() { _ = s.upgrade("signal") })
	return s.o.upg.Exit()
}

// startServing accepts traffic, tells the process handing over (if any)
// and whoever waits for ready, and returns where a listener's failure
// comes.
func (s *server) startServing(ctx context.Context) <-chan error {
	if s.takingOver {
		// Taking over from a running baton, which serves meanwhile: start
		// accepting once the backends' first health checks have passed,
		// not with every backend still unchecked.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		s.reg.WaitHealthy(wctx)
		cancel()
	}
	served := make(chan error, 2)
	go func() { served <- s.srv.Serve(s.ln) }()
	if s.tlsLn != nil {
		go func() { served <- s.srv.ServeTLS(s.tlsLn, s.tlsConf) }()
	}
	ev := s.log.Info().Str("listen", s.ln.Addr().String()).Int("pools", len(s.cfg.Pools))
	if s.tlsLn != nil {
		ev = ev.Str("https", s.tlsLn.Addr().String())
	}
	if s.adminAddr != nil {
		ev = ev.Str("admin", s.adminAddr.String())
	}
	if s.o.upg != nil {
		ev = ev.Bool("took_over", s.takingOver)
		if err := s.o.upg.Ready(); err != nil {
			s.log.Warn().Err(err).Msg("could not tell the previous process or write the PID file")
		}
		if s.takingOver {
			// The previous process stops serving now: decisions are ours.
			s.reg.Freeze(false)
			s.thawed()
		}
	}
	ev.Msg("baton is serving")
	if s.o.ready != nil {
		// Give the first health checks a moment, so that whoever is told
		// "ready" finds backends taking requests.
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		s.reg.WaitHealthy(wctx)
		cancel()
		s.o.ready(s.ln.Addr(), s.adminAddr)
	}
	return served
}

// shutdown stops accepting and lets the requests in flight finish, up to
// server.shutdown_timeout.
func (s *server) shutdown() {
	s.log.Info().Dur("timeout", s.cfg.Server.ShutdownTimeout).Msg("shutting down: no new connections, finishing requests in flight")
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		s.log.Warn().Err(err).Int64("connections", s.srv.OpenConnections()).
			Msg("shutdown timeout reached; exiting with connections still open")
	}
	if s.adminSrv != nil {
		_ = s.adminSrv.Shutdown(sctx)
	}
	s.reg.Close()
	s.log.Info().Msg("baton stopped")
}

// httpErrorLog sends net/http's own messages (TLS handshake errors, panics
// in handlers) to baton's log at debug level.
func httpErrorLog(l zerolog.Logger) *stdlog.Logger {
	return stdlog.New(debugWriter{l.With().Str("log", "admin_http").Logger()}, "", 0)
}

type debugWriter struct{ l zerolog.Logger }

func (d debugWriter) Write(p []byte) (int, error) {
	d.l.Debug().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// stateLockName names the state file's lock among the files a hitless
// upgrade hands to the new process.
const stateLockName = "state-lock"
