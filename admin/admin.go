// Package admin serves baton's admin listener: liveness, Prometheus metrics,
// and (with the API) the operations deploy scripts use.
package admin

import (
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/control"
)

// Collector returns the Prometheus collector for the registry's pools,
// backends, versions and reloads. Register it on the one registry main
// builds.
func Collector(ctl *control.Registry) prometheus.Collector { return newCollector(ctl) }

// Option configures Handler.
type Option func(*api)

// WithTokens requires one of tokens on every /v1 request.
func WithTokens(tokens []Token) Option { return WithTokenSet(NewTokenSet(tokens)) }

// WithTokenSet is WithTokens for a set the caller replaces when the token
// file changes. A set is given only when a token file is configured: the
// API then never answers without a token, even if the set were emptied.
func WithTokenSet(ts *TokenSet) Option { return func(a *api) { a.tokens = ts } }

// WithUpgrade serves POST /v1/upgrade with fn, which hands baton's sockets
// to a new process and returns once it serves; actor is who asked.
func WithUpgrade(fn func(actor string) error) Option { return func(a *api) { a.upgrade = fn } }

// WithTimeouts tells the API the admin server's read and write timeouts, so
// that a request that waits on purpose (?wait=, an upgrade) gets its wait on
// top of them.
func WithTimeouts(read, write time.Duration) Option {
	return func(a *api) { a.readTimeout, a.writeTimeout = read, write }
}

// WithStop ends the live tails when stop is closed: an http.Server's
// Shutdown waits for handlers, and a tail would never end by itself.
func WithStop(stop <-chan struct{}) Option { return func(a *api) { a.stop = stop } }

// WithTailLimit bounds the live tails open at once, all pools together
// (0: 16). Each holds an admin connection: keep it well below
// admin.max_connections.
func WithTailLimit(n int) Option { return func(a *api) { a.maxTails = n } }

// Handler serves the admin endpoints: the API under /v1, the dashboard
// under /ui/, GET /healthz (baton's own liveness) and GET /metrics
// (Prometheus exposition).
func Handler(ctl *control.Registry, metrics prometheus.Gatherer, log zerolog.Logger, opts ...Option) http.Handler {
	a := &api{ctl: ctl, log: log}
	for _, o := range opts {
		o(a)
	}
	mux := http.NewServeMux()
	a.register(mux)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /ui/", uiHandler())
	mux.Handle("GET /{$}", http.RedirectHandler("/ui/", http.StatusFound))
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{
		ErrorLog:      promLogger{log},
		ErrorHandling: promhttp.ContinueOnError,
	}))
	return a.guard(mux)
}

// promLogger routes the exposition's errors to baton's log.
type promLogger struct{ l zerolog.Logger }

func (p promLogger) Println(v ...any) { p.l.Error().Msgf("metrics: %v", v) }
