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

// serve runs baton until ctx ends, then shuts down gracefully: it stops
// accepting, lets requests in flight finish for up to the shutdown timeout,
// and returns nil. path is the config file, watched and reloaded on change
// and on SIGHUP ("" for a built-in config); loaded is the SHA-256 of the
// content the config came from (zero: whatever is there when watching
// starts). ready, when set, is called with
// the listeners' addresses once baton accepts traffic.
//
// With recoverState (serve --state-recover), a corrupt state file is moved
// aside and baton starts from the config alone.
//
// With upg (baton serve), the listening sockets can be handed to a new
// baton process (SIGUSR2 or POST /v1/upgrade): once it serves, this one
// finishes what it has in flight and returns.
func serve(ctx context.Context, cfg *config.Config, path string, loaded [32]byte, logw io.Writer, ready func(traffic, admin net.Addr),
	upg *tableflip.Upgrader, recoverState bool) error {
	log := newLogger(cfg.Log, logw)
	listen := net.Listen
	if upg != nil {
		listen = upg.Listen // inherited from the previous process after an upgrade
	}
	// One baton per state file. A process taking over from another
	// inherits the lock with the sockets.
	var inheritedLock *os.File
	if upg != nil {
		inheritedLock, _ = upg.Fds.File(stateLockName)
	}
	lock, err := control.LockStateFile(cfg.StateFile, inheritedLock)
	if err != nil {
		return err
	}
	defer lock.Release()
	if upg != nil && lock != nil {
		if err := upg.Fds.AddFile(stateLockName, lock.File()); err != nil {
			log.Warn().Err(err).Msg("the state file's lock cannot be handed to a new process; upgrades will fail")
		}
	}
	reg, err := control.New(cfg, cfg.StateFile, log)
	moved := ""
	if errors.Is(err, control.ErrCorruptState) && recoverState {
		// The operator chose to lose the decisions rather than stay down.
		if moved, err = control.MoveAsideState(cfg.StateFile); err == nil {
			log.Error().Str("state_file", cfg.StateFile).Str("moved_to", moved).
				Msg("the state file is corrupt; moved aside, starting from the config alone: drains, canary shares and other runtime decisions are lost")
			reg, err = control.New(cfg, cfg.StateFile, log)
		}
	}
	if err != nil {
		return err
	}
	if moved != "" {
		reg.NoteRecovered(moved)
	}
	takingOver := upg != nil && upg.HasParent()
	if takingOver {
		// Until this process is ready, the one handing over may still be
		// the one that serves: no decision here yet.
		reg.Freeze(true)
	}
	var thawed func() // once decisions resume: apply an edit of the config skipped meanwhile
	srv := proxy.New(cfg, reg.Table(), log)
	reg.OnTable(srv.SetTable)
	// Affinity cookies are signed with the keys kept beside the state file,
	// so they outlive restarts and upgrades; checked hourly for rotation.
	installKeys := func() {
		keys, err := reg.AffinityKeys(time.Now())
		if err != nil {
			log.Error().Err(err).Msg("affinity keys not loaded; cookies are signed with this process's own key until they are")
			return
		}
		if len(keys) == 0 {
			return
		}
		pk := make([]proxy.AffinityKey, len(keys))
		for i, k := range keys {
			pk[i] = proxy.AffinityKey{ID: k.ID, Secret: k.Secret}
		}
		srv.SetAffinityKeys(pk)
	}
	installKeys()

	for _, w := range cfg.Warnings {
		log.Warn().Msg(w)
	}
	ln, err := listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listening for traffic: %w", err)
	}
	var adminLn *listener.Listener // set before the admin server serves /metrics
	metrics := prometheus.NewRegistry()
	metrics.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		admin.Collector(reg),
		admin.ListenerCollector(func() []listener.Stats {
			out := srv.Listeners()
			if adminLn != nil {
				out = append(out, adminLn.Stats())
			}
			return out
		}),
	)
	// HTTPS: the same server on a TLS listener, certificates by SNI.
	var tlsLn net.Listener // the TCP listener HTTPS is served on
	var tlsConf *tls.Config
	var certs *proxy.Certs
	certReloads := &admin.CertReloads{}
	if cfg.TLS.Listen != "" {
		certs, err = proxy.NewCerts(cfg.TLS.Certificates)
		if err != nil {
			ln.Close()
			return err
		}
		tlsLn, err = listen("tcp", cfg.TLS.Listen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("listening for HTTPS: %w", err)
		}
		tlsConf = proxy.TLSConfig(cfg.TLS, certs)
		metrics.MustRegister(admin.TLSCollector(certs, certReloads))
	}
	closeListeners := func() {
		ln.Close()
		if tlsLn != nil {
			tlsLn.Close()
		}
	}
	// upgrade starts the binary again and hands it the sockets. Decisions
	// wait meanwhile: the new process reads the state file as it starts.
	var upgradeMu sync.Mutex
	upgrade := func(actor string) error {
		upgradeMu.Lock()
		defer upgradeMu.Unlock()
		log.Info().Str("actor", actor).Msg("upgrade: starting a new baton process and handing it the listening sockets")
		// Audited first, so that the new process, which reads the audit
		// file as it starts, has it; a failure is audited as refused.
		reg.Audit(control.Event{Actor: actor, Action: "upgrade", Detail: fmt.Sprintf("from pid %d", os.Getpid())})
		reg.Freeze(true)
		if err := upg.Upgrade(); err != nil {
			reg.Freeze(false) // reads the state file again
			thawed()
			log.Error().Err(err).Msg("upgrade failed; this process keeps serving")
			err = fmt.Errorf("the new baton did not start (%v); this one keeps serving", err)
			reg.Audit(control.Event{Actor: actor, Action: "upgrade", Refused: err.Error()})
			return err
		}
		log.Info().Msg("upgrade: the new process serves; finishing the requests in flight here, then exiting")
		return nil
	}
	var adminSrv *http.Server
	var adminAddr net.Addr
	var tokenSet *admin.TokenSet // the admin API's tokens, read again on change
	var adminCerts *proxy.Certs  // admin.tls
	if cfg.Admin.Listen != "off" {
		aln, err := listen("tcp", cfg.Admin.Listen)
		if err != nil {
			closeListeners()
			return fmt.Errorf("listening for admin: %w", err)
		}
		adminAddr = aln.Addr()
		var opts []admin.Option
		if cfg.Admin.TokenFile != "" {
			tokens, err := admin.LoadTokens(cfg.Admin.TokenFile)
			if err != nil {
				closeListeners()
				aln.Close()
				return err
			}
			tokenSet = admin.NewTokenSet(tokens)
			opts = append(opts, admin.WithTokenSet(tokenSet))
		}
		if cfg.Admin.TLS != (config.Certificate{}) {
			if adminCerts, err = proxy.NewCerts([]config.Certificate{cfg.Admin.TLS}); err != nil {
				closeListeners()
				aln.Close()
				return fmt.Errorf("admin.tls: %w", err)
			}
		}
		if upg != nil {
			opts = append(opts, admin.WithUpgrade(upgrade))
		}
		ac := cfg.Admin
		opts = append(opts, admin.WithTimeouts(ac.ReadTimeout, ac.WriteTimeout))
		adminSrv = &http.Server{
			Handler:           admin.Handler(reg, metrics, log, opts...),
			ReadHeaderTimeout: min(10*time.Second, ac.ReadTimeout),
			ReadTimeout:       ac.ReadTimeout,
			WriteTimeout:      ac.WriteTimeout,
			IdleTimeout:       ac.IdleTimeout,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          httpErrorLog(log),
		}
		refusal := listener.Refusal("baton: too many admin connections (admin.max_connections); retry in a moment")
		if adminCerts != nil {
			refusal = nil // a TLS client could not read it
		}
		adminLn = listener.Wrap(aln, "admin", listener.NewGate(ac.MaxConnections), refusal, log)
		var served net.Listener = adminLn
		if adminCerts != nil {
			served = tls.NewListener(adminLn, &tls.Config{MinVersion: tls.VersionTLS12,
				GetCertificate: adminCerts.GetCertificate, NextProtos: []string{"http/1.1"}})
		}
		go func() {
			if err := adminSrv.Serve(served); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error().Err(err).Msg("admin listener stopped")
			}
		}()
	}

	reg.Start()
	// The watchers end with ctx, or when serving fails.
	ctx, stopWatching := context.WithCancel(ctx)
	defer stopWatching()
	var watchers sync.WaitGroup
	// Certificates come back from their files when those change, and with
	// every config reload; a bad set is refused and the old one serves on.
	reloadCerts := func(why string) {
		if adminCerts != nil {
			// The admin listener's settings change at a restart; its
			// certificate files are read again.
			if err := adminCerts.Load([]config.Certificate{cfg.Admin.TLS}); err != nil {
				log.Error().Err(err).Str("trigger", why).Msg("the admin certificate was not reloaded; the one in service stays")
			}
		}
		if certs == nil {
			return
		}
		list := reg.Config().TLS.Certificates
		if err := certs.Load(list); err != nil {
			certReloads.Failed.Add(1)
			log.Error().Err(err).Str("trigger", why).Msg("certificates not reloaded; the ones in service stay")
			return
		}
		certReloads.OK.Add(1)
		log.Info().Str("trigger", why).Int("certificates", len(list)).Msg("certificates reloaded")
	}
	// Tokens come back from their file when it changes and on SIGHUP: a
	// revoked token stops working without a restart. A file that is
	// emptied, removed or broken revokes every token (the API stays closed
	// until it loads): "revoke everyone" must never revoke no one.
	reloadTokens := func(why string) {
		if tokenSet == nil {
			return
		}
		tokens, err := admin.LoadTokens(cfg.Admin.TokenFile)
		if err != nil {
			tokenSet.Revoke(err.Error())
			log.Error().Err(err).Str("trigger", why).Msg("admin token file did not load: every token is revoked until it does")
			reg.Audit(control.Event{Actor: "baton", Action: "revoke admin tokens", Detail: "the token file did not load: " + err.Error()})
			return
		}
		tokenSet.Store(tokens)
		log.Info().Str("trigger", why).Int("tokens", len(tokens)).Msg("admin tokens reloaded")
		reg.Audit(control.Event{Actor: "baton", Action: "reload admin tokens", Detail: fmt.Sprintf("%d tokens (%s)", len(tokens), why)})
	}
	reloadConfig := func() {
		if reg.ReloadFile(path) == nil {
			reloadCerts("config reload")
		}
	}
	thawed = func() {
		if path != "" {
			reloadConfig() // the same file is a no-op
		}
		installKeys()
	}
	watchers.Add(1)
	go func() {
		defer watchers.Done()
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				installKeys()
			}
		}
	}()
	if tokenSet != nil {
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			if err := control.WatchFiles(ctx, []string{cfg.Admin.TokenFile}, log, func() { reloadTokens("file changed") }); err != nil {
				log.Warn().Err(err).Msg("the token file is not watched; send SIGHUP to reload it")
			}
		}()
	}
	if certs != nil || adminCerts != nil {
		var files []string
		for _, c := range cfg.TLS.Certificates {
			files = append(files, c.Cert, c.Key)
		}
		if adminCerts != nil {
			files = append(files, cfg.Admin.TLS.Cert, cfg.Admin.TLS.Key)
		}
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			if err := control.WatchFiles(ctx, files, log, func() { reloadCerts("files changed") }); err != nil {
				log.Warn().Err(err).Msg("the certificate files are not watched; send SIGHUP to reload them")
			}
		}()
	}
	if path != "" {
		watchers.Add(2)
		go func() {
			defer watchers.Done()
			err := control.WatchConfigFrom(ctx, path, loaded, log, reloadConfig)
			if err != nil {
				log.Warn().Err(err).Str("file", path).Msg("the config file is not watched; send SIGHUP to reload it")
			}
		}()
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		go func() {
			defer watchers.Done()
			defer signal.Stop(hup)
			for {
				select {
				case <-ctx.Done():
					return
				case <-hup:
					log.Info().Str("file", path).Msg("SIGHUP: reloading the config, certificates and tokens")
					reloadConfig()
					reloadTokens("SIGHUP")
				}
			}
		}()
	}
	var handedOver <-chan struct{}
	if upg != nil {
		usr2 := make(chan os.Signal, 1)
		signal.Notify(usr2, syscall.SIGUSR2)
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			defer signal.Stop(usr2)
			for {
				select {
				case <-ctx.Done():
					return
				case <-usr2:
					_ = upgrade("signal")
				}
			}
		}()
		handedOver = upg.Exit()
	}
	if takingOver {
		// Taking over from a running baton, which serves meanwhile: start
		// accepting once the backends' first health checks have passed,
		// not with every backend still unchecked.
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		reg.WaitHealthy(wctx)
		cancel()
	}
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	if tlsLn != nil {
		go func() { served <- srv.ServeTLS(tlsLn, tlsConf) }()
	}
	ev := log.Info().Str("listen", ln.Addr().String()).Int("pools", len(cfg.Pools))
	if tlsLn != nil {
		ev = ev.Str("https", tlsLn.Addr().String())
	}
	if adminAddr != nil {
		ev = ev.Str("admin", adminAddr.String())
	}
	if upg != nil {
		ev = ev.Bool("took_over", takingOver)
		if err := upg.Ready(); err != nil {
			log.Warn().Err(err).Msg("could not tell the previous process or write the PID file")
		}
		if takingOver {
			// The previous process stops serving now: decisions are ours.
			reg.Freeze(false)
			thawed()
		}
	}
	ev.Msg("baton is serving")
	if ready != nil {
		// Give the first health checks a moment, so that whoever is told
		// "ready" finds backends taking requests.
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		reg.WaitHealthy(wctx)
		cancel()
		ready(ln.Addr(), adminAddr)
	}

	select {
	case <-ctx.Done():
	case <-handedOver:
		stopWatching()
		// The admin socket is the new process's now: stop answering on it
		// at once (the request that asked for the upgrade completes).
		if adminSrv != nil {
			actx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = adminSrv.Shutdown(actx)
			cancel()
		}
	case err := <-served:
		stopWatching()
		watchers.Wait()
		if adminSrv != nil {
			_ = adminSrv.Close()
		}
		reg.Close()
		return fmt.Errorf("serving: %w", err)
	}
	watchers.Wait()
	if upg != nil {
		// tableflip keeps a copy of each listening socket for a future
		// upgrade; without this the kernel would go on accepting.
		upg.Stop()
	}

	log.Info().Dur("timeout", cfg.Server.ShutdownTimeout).Msg("shutting down: no new connections, finishing requests in flight")
	sctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn().Err(err).Int64("connections", srv.OpenConnections()).
			Msg("shutdown timeout reached; exiting with connections still open")
	}
	if adminSrv != nil {
		_ = adminSrv.Shutdown(sctx)
	}
	reg.Close()
	log.Info().Msg("baton stopped")
	return nil
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
