// Package config holds baton's YAML configuration: its types, their defaults,
// loading with line numbers, and validation that reports every error at once.
//
// The file defines membership, addresses and defaults. Runtime decisions made
// through the admin API or by the judge (drains, ejections, canary share) are an
// overlay kept by the control package; they are not part of this package.
//
// Config values are plain data. They are built by Load, never mutated after
// Validate, and safe to share between goroutines once loaded.
package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole file.
type Config struct {
	// Listen is the address client traffic is served on, as host:port.
	// Default ":8080".
	Listen string `yaml:"listen"`

	Admin  Admin  `yaml:"admin"`
	Log    Log    `yaml:"log"`
	Server Server `yaml:"server"`
	TLS    TLS    `yaml:"tls"`

	// StateFile is where baton keeps runtime decisions (drains, ejections,
	// weight overrides, canary share) across restarts; each is written
	// there, atomically, before it is acknowledged. A relative path is
	// relative to the config file. Default: beside the config file, named
	// after it (baton.yaml → baton.state.json). "off": memory only, so
	// decisions end with the process.
	StateFile string `yaml:"state_file"`
	// stateFileSet records that the file said "off".
	stateFileSet bool

	// Cluster shares runtime decisions with other batons through etcd;
	// see Cluster. Off by default.
	Cluster Cluster `yaml:"cluster"`

	// Pools are the applications behind baton. At least one is required.
	Pools []Pool `yaml:"pools"`

	// Warnings are problems that do not stop baton, found while loading:
	// certificates that expire soon, route hosts no certificate covers.
	Warnings []string `yaml:"-"`
}

// TLS is baton's HTTPS listener.
type TLS struct {
	// Listen is host:port for HTTPS (":8443", ":443"). Empty (the
	// default): no HTTPS listener.
	Listen string `yaml:"listen"`
	// Certificates are PEM files: the certificate (the leaf first, then
	// its chain) and its private key. A client's SNI picks the certificate
	// whose names match; one without SNI, or matching none, gets the first.
	// Relative paths are relative to the config file. Reloaded when the
	// files change.
	Certificates []Certificate `yaml:"certificates"`
	// MinVersion is the oldest TLS version accepted: "1.2" (the default)
	// or "1.3".
	MinVersion string `yaml:"min_version"`
	// RedirectHTTP answers every request on the plain listen address with
	// a permanent redirect (308) to the same URL on HTTPS.
	RedirectHTTP bool `yaml:"redirect_http"`
}

// Certificate is one certificate and key, as PEM files.
type Certificate struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Admin is the admin listener: the API deploy scripts use, /metrics and
// /healthz.
type Admin struct {
	// Listen is host:port for the admin listener. Default "127.0.0.1:9090".
	// Empty string in the file means the default; "off" disables it.
	Listen string `yaml:"listen"`
	// TokenFile holds the API's bearer tokens, one "name:token" per line
	// (# starts a comment); the name appears in the audit log. A relative
	// path is relative to the config file. Empty (the default): no token is
	// needed, which is allowed only on a loopback listener.
	TokenFile string `yaml:"token_file"`
	// ReadTimeout bounds reading one request, headers and body. Default 30s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing one response. A request with ?wait= (a
	// drain that answers once the backend is idle) gets its wait on top.
	// Default 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes a keep-alive connection that sends no request for
	// this long. Default 10s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// MaxConnections caps the admin listener's open connections; one more
	// is answered 503 and closed. Default 64.
	MaxConnections int `yaml:"max_connections"`
	// TLS, when its cert and key are set, serves the admin listener over
	// HTTPS, so tokens do not travel in cleartext off loopback. Relative
	// paths are relative to the config file; the files are reloaded when
	// they change. Default: plain HTTP.
	TLS Certificate `yaml:"tls"`
}

// Log configures baton's own logs and the access log.
type Log struct {
	// Level is debug, info, warn or error. Default info.
	Level string `yaml:"level"`
	// Format is json, console (readable, for people), or auto (the default):
	// console when standard error is a terminal, json otherwise.
	Format string `yaml:"format"`
	// Access turns the per-request access log on. Default true. When off it
	// costs nothing per request.
	Access *bool `yaml:"access"`
}

// Server is the client-facing side of the proxy.
type Server struct {
	// ReadHeaderTimeout bounds reading a request's headers. A slow client is
	// cut off after it (408). Default 10s.
	ReadHeaderTimeout time.Duration `yaml:"read_header_timeout"`
	// IdleTimeout is how long a keep-alive client connection may wait for its
	// next request. Default 60s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// BodyIdleTimeout is the longest a client may go without sending a byte
	// of its request body or accepting a byte of the response, for bodies of
	// any size (the first 8 KiB of a request body, read with its headers,
	// must arrive within it). It restarts whenever a body makes progress, so
	// it never cuts a long upload or download that keeps moving. Default 60s.
	BodyIdleTimeout time.Duration `yaml:"body_idle_timeout"`
	// MaxRequestBody is the largest request body accepted; larger ones get 413.
	// Bodies are streamed, so this is a policy limit, not a memory cost.
	// Default 1GiB. Zero in the file means the default.
	MaxRequestBody Size `yaml:"max_request_body"`
	// MaxHeaderBytes is the largest request header block (request line,
	// headers, cookies); larger ones get 431. Default 32KiB.
	MaxHeaderBytes Size `yaml:"max_header_bytes"`
	// MaxConnections caps concurrent client connections. Default 262144.
	MaxConnections int `yaml:"max_connections"`
	// ShutdownTimeout is how long SIGTERM waits for in-flight requests before
	// baton exits anyway. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// TrustedProxies are the addresses (IPs or CIDRs, "10.0.0.0/8") of
	// proxies in front of baton whose X-Forwarded-For baton keeps, adding
	// the peer's address after it. From any other client the header is
	// replaced by the client's own address: a client cannot make a backend
	// believe it comes from elsewhere. Default: none (always replaced).
	TrustedProxies []string `yaml:"trusted_proxies"`
	// ShutdownGrace is how long, when baton shuts down or hands over to a
	// new process, an idle keep-alive client connection stays open: a
	// request its client is already sending still gets an answer (with
	// Connection: close) instead of a reset. Connections still idle after
	// it are closed. Default 1s; at most shutdown_timeout.
	ShutdownGrace time.Duration `yaml:"shutdown_grace"`
}

// Pool is one application: the backends that serve it and how to reach them.
type Pool struct {
	// Name identifies the pool in logs, metrics and the admin API. Required,
	// unique, letters, digits, '-', '_' and '.'.
	Name string `yaml:"name"`
	// Routes select requests for this pool. A pool without routes is the
	// default pool: it receives every request no route matches. At most one
	// pool may be the default.
	Routes []Route `yaml:"routes"`
	// StableVersion is the version that gets the traffic the canary does not.
	// Default: the one version the backends share, or, with a canary, the
	// one version that is not the canary's.
	StableVersion string `yaml:"stable_version"`
	// Canary sends a share of the pool's requests to a second version.
	Canary Canary `yaml:"canary"`
	// Balance is round_robin (default: smooth weighted round-robin, exact
	// ratios) or least_inflight (power of two choices, weight-aware).
	Balance string `yaml:"balance"`

	Judge    Judge    `yaml:"judge"`
	Affinity Affinity `yaml:"affinity"`

	Timeouts    Timeouts    `yaml:"timeouts"`
	Connections Connections `yaml:"connections"`
	HealthCheck HealthCheck `yaml:"health_check"`
	Outlier     Outlier     `yaml:"outlier"`
	Retries     Retries     `yaml:"retries"`
	Tunnels     Tunnels     `yaml:"tunnels"`
	Tail        Tail        `yaml:"tail"`

	// DrainTimeout is how long a drain lets in-flight requests and streams
	// finish before it closes what is still open. Default 30s.
	DrainTimeout time.Duration `yaml:"drain_timeout"`

	Backends []Backend `yaml:"backends"`
}

// Route matches requests by host and path prefix; both must match.
type Route struct {
	// Host is an exact host name ("shop.example.com") or a wildcard for one or
	// more labels ("*.example.com"). Empty matches any host. Compared without
	// the port and case-insensitively.
	Host string `yaml:"host"`
	// PathPrefix must start with "/". Empty means "/". Matched against the
	// normalised path (dot segments resolved, repeated slashes merged); the
	// backend still receives the path exactly as the client sent it.
	PathPrefix string `yaml:"path_prefix"`
}

// Canary is the pool's second version and its share of requests.
type Canary struct {
	// Version of the canary backends. Empty: no canary.
	Version string `yaml:"version"`
	// Weight is the canary's share of the pool's requests in percent, 0–100
	// (fractions allowed). Zero: the canary gets no requests.
	Weight float64 `yaml:"weight"`
	// InitialWeight is the share, in percent, a canary starts with when a
	// backend is enabled or added with a version other than the stable one.
	// Default 5.
	InitialWeight float64 `yaml:"initial_weight"`
	// Steps are the shares, in percent and increasing, the judge moves the
	// canary through each time a step passes. Empty (the default): the
	// judge only gives verdicts, and people move the share.
	Steps []float64 `yaml:"steps"`
	// StepMinTime is the least time a step lasts before it can pass.
	// Default 2m.
	StepMinTime time.Duration `yaml:"step_min_time"`
	// StepMinRequests is the least number of canary requests in a step
	// before it can pass. Default 500.
	StepMinRequests int `yaml:"step_min_requests"`
	// AutoPromote makes the canary the stable version when the last step
	// passes (or the first verdict pass, without steps). Default false.
	AutoPromote bool `yaml:"auto_promote"`
	// AutoRollback stops the canary at once when the judge fails it: no new
	// requests, its backends drained. Default false.
	AutoRollback bool `yaml:"auto_rollback"`
	// DryRun judges and reports but never acts on its own. Default false.
	DryRun bool `yaml:"dry_run"`
}

// Judge is how a pool's canary is compared with its stable version.
type Judge struct {
	// Interval between verdicts. Default 5s.
	Interval time.Duration `yaml:"interval"`
	// Warmup is the time after a canary starts whose latency is not judged
	// (caches fill, code warms up). Errors count from the start. Default 30s.
	Warmup time.Duration `yaml:"warmup"`
	// WarmupRequests ends a route group's latency warm-up early, once the
	// canary has served this many requests in it: caches and code warm by
	// the requests served, not by the clock. Default 100.
	WarmupRequests int `yaml:"warmup_requests"`
	// GrossFactor: a route group whose canary p50 or p90 is this many times
	// stable's, beyond chance, fails the canary at once. Default 2.
	GrossFactor float64 `yaml:"gross_factor"`
	// GrossFloor: and at least this much slower. Default 20ms.
	GrossFloor time.Duration `yaml:"gross_floor"`
	// MaxClientShare: in each 10 s window one client (by address, and by
	// its affinity cookie) counts for at most this share of a version's
	// requests (at least 50) and of a failure signature's occurrences (at
	// least one); the rest is served but left out of the evidence, so one
	// client cannot steer the verdict. Loopback and trusted proxies'
	// addresses are shared by many clients: for them only the cookie
	// counts. Default 0.1.
	MaxClientShare float64 `yaml:"max_client_share"`
	// Alpha bounds the chance that a release as good as the stable version
	// fails, over its whole life. Default 0.01.
	Alpha float64 `yaml:"alpha"`
	// ErrorMargin: the canary may fail this much more often than stable,
	// relatively, before it counts as worse (0.1: 10 %). Default 0.1.
	ErrorMargin float64 `yaml:"error_margin"`
	// ErrorFloor: and its error rate must exceed stable's by at least this
	// much (0.002: 0.2 points), so a tiny difference at high volume never
	// fails a release. Default 0.002.
	ErrorFloor float64 `yaml:"error_floor"`
	// LatencyTolerance: p50, p90 and p99 may be this much slower,
	// relatively (0.1: 10 %). Default 0.1.
	LatencyTolerance float64 `yaml:"latency_tolerance"`
	// LatencyFloor: and at least this much slower in time. Default 5ms.
	LatencyFloor time.Duration `yaml:"latency_floor"`
	// SignatureMargin: a kind of error the canary has more often than stable
	// by more than this (0.5: 50 %) is elevated. Default 0.5.
	SignatureMargin float64 `yaml:"signature_margin"`
	// RouteGroups are path prefixes compared separately. Empty (the
	// default): the first path segment, for up to 16 segments.
	RouteGroups []string `yaml:"route_groups"`
	// ErrorCodeHeader names a response header carrying the application's
	// error code (e.g. X-Error-Code); it becomes part of error signatures.
	// Empty (the default): none.
	ErrorCodeHeader string `yaml:"error_code_header"`
}

// Affinity keeps each client on the version that served it during a canary.
type Affinity struct {
	// Cookie is the name of the cookie that keeps a client on its version.
	// Default "baton_" and the pool's name, so two pools' canaries on one
	// host do not overwrite each other; "off": no affinity. Its value is
	// signed (a key in the state directory) and names the pool: a forged,
	// altered or other pool's cookie is ignored and the split decides.
	Cookie string `yaml:"cookie"`
	// MaxAge is the cookie's lifetime. Default 1h.
	MaxAge time.Duration `yaml:"max_age"`
	// ExposeVersion puts the version's name in the cookie's value (still
	// signed). Default false: the value is opaque, so version names do not
	// leak to clients.
	ExposeVersion bool `yaml:"expose_version"`
	// ForceHeader lets a tester pick a version with a request header whose
	// value is "VERSION:SECRET", the secret read from secret_file and
	// compared in constant time. Default: off. Forced requests are not
	// evidence for the judge.
	ForceHeader Force `yaml:"force_header"`
	// ForceCookie does the same with a cookie. Default: off.
	ForceCookie Force `yaml:"force_cookie"`
}

// Force is a header or cookie by which a tester picks a version.
type Force struct {
	// Name of the header or cookie.
	Name string `yaml:"name"`
	// SecretFile holds the secret (at least 16 characters, no spaces or
	// ':'), relative to the config file's directory.
	SecretFile string `yaml:"secret_file"`
	// Secret is SecretFile's content, read when the config loads.
	Secret []byte `yaml:"-"`
}

// UnmarshalYAML takes {name, secret_file} or off. A bare header name (the
// form before secrets were needed) is refused with what to write instead.
func (f *Force) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Value == "off" || n.Value == "" || n.Tag == "!!null" {
			*f = Force{}
			return nil
		}
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a forced version needs a secret: write {name: %s, secret_file: FILE} (requests send %s: VERSION:SECRET), or off", n.Line, n.Value, n.Value)}}
	}
	if n.Kind != yaml.MappingNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: must be {name, secret_file} or off", n.Line)}}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i].Value; k != "name" && k != "secret_file" {
			return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: field %s not found in type config.Force", n.Content[i].Line, k)}}
		}
	}
	type plain Force
	return n.Decode((*plain)(f))
}

// Timeouts towards backends.
type Timeouts struct {
	// Connect bounds establishing a TCP connection. Default 2s.
	Connect time.Duration `yaml:"connect"`
	// ResponseHeader bounds the wait from the request being sent to the
	// response headers arriving. Default 30s.
	ResponseHeader time.Duration `yaml:"response_header"`
	// Idle is the longest a backend may go without sending or accepting a byte
	// while a body is in flight. Default 60s.
	Idle time.Duration `yaml:"idle"`
	// Total bounds the whole exchange, body streaming included. Zero (the
	// default) means no overall limit: long streams run as long as they move.
	Total time.Duration `yaml:"total"`
}

// Connections are the pooled keep-alive connections to each backend.
type Connections struct {
	// Max caps connections per backend; a request finding none free waits up
	// to the connect timeout and then gets 503. Zero (the default): no cap.
	Max int `yaml:"max"`
	// IdleTimeout closes a pooled connection unused for this long. Keep it
	// below the backends' own keep-alive timeout (Node.js: 5s) so that baton,
	// not the backend, closes idle connections. Default 4s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// HealthCheck configures active checks. They always run: a backend gets
// traffic only once a check has passed.
type HealthCheck struct {
	// Path for an HTTP GET check. Empty (the default): a TCP connect check.
	Path string `yaml:"path"`
	// Host header for HTTP checks. Default: the backend's address.
	Host string `yaml:"host"`
	// Interval between checks of one backend. Default 2s.
	Interval time.Duration `yaml:"interval"`
	// Timeout of one check. Default 1s; must be below Interval.
	Timeout time.Duration `yaml:"timeout"`
	// ExpectStatus is the status an HTTP check must return. Zero (the
	// default): any 2xx or 3xx.
	ExpectStatus int `yaml:"expect_status"`
	// Rise is how many passes in a row bring an unhealthy backend back.
	// Default 2. A new or re-enabled backend needs one pass.
	Rise int `yaml:"rise"`
	// Fall is how many failures in a row mark a healthy backend down.
	// Default 3.
	Fall int `yaml:"fall"`
}

// Outlier is passive detection: backends that fail live requests are ejected.
type Outlier struct {
	// ConsecutiveFailures ejects a backend after this many gateway failures
	// in a row (connection refused or reset, timeouts, 502/503/504 from the
	// backend). Default 5. Set -1 to disable.
	ConsecutiveFailures int `yaml:"consecutive_failures"`
	// BaseEjection is the first ejection's length; each further ejection
	// doubles it up to MaxEjection. After it, the backend returns only once
	// active checks pass. Default 10s.
	BaseEjection time.Duration `yaml:"base_ejection"`
	// MaxEjection caps the ejection time. Default 5m.
	MaxEjection time.Duration `yaml:"max_ejection"`
}

// Tunnels are WebSocket and other Upgrade connections, carried byte for
// byte between a client and a backend once the backend agreed to switch
// protocols. Each holds a client connection (counted in
// server.max_connections) and a backend connection (counted in
// connections.max).
type Tunnels struct {
	// Max caps the pool's open tunnels; one more is answered 503. Default
	// 10000.
	Max int `yaml:"max"`
	// IdleTimeout closes a tunnel that carried no byte either way for this
	// long (a WebSocket client gets close code 1001). Default 10m.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// Tail is what the live tail of a pool's requests (GET
// /v1/pools/{pool}/tail, baton ctl tail) shows and keeps. Failed requests
// are always kept in the pool's ring; other requests only while a tail is
// attached.
type Tail struct {
	// Buffer is how many of the latest records the pool keeps for a tail
	// that starts in the past (?since=). Default 1000; 1..100000.
	Buffer int `yaml:"buffer"`
	// KeepQuery shows a request's query string with its path. Default
	// false: queries carry tokens and personal data.
	KeepQuery bool `yaml:"keep_query"`
	// Body is how many bytes of a failed response's body a record shows,
	// printable characters only, at most 4096. Default (and 0) 256; -1
	// shows none.
	Body int `yaml:"body"`
	// SensitivePaths are path prefixes (matched on the path as sent,
	// without the query) whose response bodies are never shown.
	SensitivePaths []string `yaml:"sensitive_paths"`
}

// Retries of requests that failed before a response reached the client.
type Retries struct {
	// Attempts is the most tries per request, the first included, 1–5.
	// Default 2. 1 disables retries.
	Attempts int `yaml:"attempts"`
	// BudgetPercent caps retries at this share of the pool's requests over the
	// last 10 seconds (at least 10 retries are always allowed). Default 20.
	BudgetPercent *int `yaml:"budget_percent"`
}

// Backend is one server of a pool.
type Backend struct {
	// Name is unique within the pool; the admin API and logs use it.
	Name string `yaml:"name"`
	// Address is host:port (IP or name).
	Address string `yaml:"address"`
	// Version label of the software the backend runs. Default "default".
	Version string `yaml:"version"`
	// Weight is the backend's share within its version, 0–1000. Default 100.
	// Zero: no new requests.
	Weight *int `yaml:"weight"`
}

// Defaults. Each documents the field it fills.
const (
	DefaultListen            = ":8080"
	DefaultAdminListen       = "127.0.0.1:9090"
	DefaultAdminReadTimeout  = 30 * time.Second
	DefaultAdminWriteTimeout = 30 * time.Second
	DefaultAdminIdleTimeout  = 10 * time.Second
	DefaultAdminConnections  = 64
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultBodyIdleTimeout   = 60 * time.Second
	DefaultMaxRequestBody    = Size(1 << 30)
	DefaultMaxHeaderBytes    = Size(32 << 10)
	DefaultMaxConnections    = 256 * 1024
	DefaultShutdownTimeout   = 30 * time.Second
	DefaultShutdownGrace     = time.Second

	DefaultConnectTimeout        = 2 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	DefaultIdleBodyTimeout       = 60 * time.Second
	DefaultConnIdleTimeout       = 4 * time.Second
	DefaultHealthInterval        = 2 * time.Second
	DefaultHealthTimeout         = 1 * time.Second
	DefaultRise                  = 2
	DefaultFall                  = 3
	DefaultConsecutiveFailures   = 5
	DefaultBaseEjection          = 10 * time.Second
	DefaultMaxEjection           = 5 * time.Minute
	DefaultRetryAttempts         = 2
	DefaultRetryBudgetPercent    = 20
	DefaultDrainTimeout          = 30 * time.Second
	DefaultMaxTunnels            = 10000
	DefaultTunnelIdleTimeout     = 10 * time.Minute
	DefaultWeight                = 100
	DefaultVersion               = "default"
	DefaultCanaryInitialWeight   = 5
	DefaultStepMinTime           = 2 * time.Minute
	DefaultStepMinRequests       = 500
	DefaultJudgeInterval         = 5 * time.Second
	DefaultJudgeWarmup           = 30 * time.Second
	DefaultWarmupRequests        = 100
	DefaultGrossFactor           = 2
	DefaultGrossFloor            = 20 * time.Millisecond
	DefaultMaxClientShare        = 0.1
	DefaultJudgeAlpha            = 0.01
	DefaultErrorMargin           = 0.1
	DefaultErrorFloor            = 0.002
	DefaultLatencyTolerance      = 0.1
	DefaultLatencyFloor          = 5 * time.Millisecond
	DefaultSignatureMargin       = 0.5
	DefaultAffinityCookiePrefix  = "baton_"
	DefaultAffinityMaxAge        = time.Hour
	DefaultTailBuffer            = 1000
	DefaultTailBody              = 256
	MaxTailBuffer                = 100000
	MaxTailBody                  = 4096

	BalanceRoundRobin    = "round_robin"
	BalanceLeastInflight = "least_inflight"

	MaxWeight = 1000
)

// applyDefaults fills every field the file left empty. It runs before
// Validate, which then sees only explicit choices and defaults.
func (c *Config) applyDefaults() {
	c.Cluster.applyDefaults()
	if c.StateFile == "off" {
		c.StateFile, c.stateFileSet = "", true
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	setDur(&c.Admin.ReadTimeout, DefaultAdminReadTimeout)
	setDur(&c.Admin.WriteTimeout, DefaultAdminWriteTimeout)
	setDur(&c.Admin.IdleTimeout, DefaultAdminIdleTimeout)
	if c.Admin.MaxConnections == 0 {
		c.Admin.MaxConnections = DefaultAdminConnections
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.TLS.MinVersion == "" {
		c.TLS.MinVersion = "1.2"
	}
	if len(c.TLS.Certificates) == 0 {
		c.TLS.Certificates = nil // "certificates: []" is the same as none
	}
	if c.Log.Format == "" {
		c.Log.Format = "auto"
	}
	if c.Log.Access == nil {
		t := true
		c.Log.Access = &t
	}
	s := &c.Server
	setDur(&s.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDur(&s.IdleTimeout, DefaultIdleTimeout)
	setDur(&s.BodyIdleTimeout, DefaultBodyIdleTimeout)
	setDur(&s.ShutdownTimeout, DefaultShutdownTimeout)
	setDur(&s.ShutdownGrace, DefaultShutdownGrace)
	if len(s.TrustedProxies) == 0 {
		s.TrustedProxies = nil // "trusted_proxies: []" is the same as none
	}
	if s.MaxRequestBody == 0 {
		s.MaxRequestBody = DefaultMaxRequestBody
	}
	if s.MaxHeaderBytes == 0 {
		s.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if s.MaxConnections == 0 {
		s.MaxConnections = DefaultMaxConnections
	}
	for i := range c.Pools {
		c.Pools[i].applyDefaults()
	}
}

func (p *Pool) applyDefaults() {
	if p.Canary.InitialWeight == 0 {
		p.Canary.InitialWeight = DefaultCanaryInitialWeight
	}
	if len(p.Canary.Steps) == 0 {
		p.Canary.Steps = nil // "steps: []" and no key mean the same
	}
	if len(p.Judge.RouteGroups) == 0 {
		p.Judge.RouteGroups = nil
	}
	setDur(&p.Canary.StepMinTime, DefaultStepMinTime)
	if p.Canary.StepMinRequests == 0 {
		p.Canary.StepMinRequests = DefaultStepMinRequests
	}
	j := &p.Judge
	setDur(&j.Interval, DefaultJudgeInterval)
	setDur(&j.Warmup, DefaultJudgeWarmup)
	if j.WarmupRequests == 0 {
		j.WarmupRequests = DefaultWarmupRequests
	}
	setFloat(&j.GrossFactor, DefaultGrossFactor)
	setDur(&j.GrossFloor, DefaultGrossFloor)
	setFloat(&j.MaxClientShare, DefaultMaxClientShare)
	setDur(&j.LatencyFloor, DefaultLatencyFloor)
	setFloat(&j.Alpha, DefaultJudgeAlpha)
	setFloat(&j.ErrorMargin, DefaultErrorMargin)
	setFloat(&j.ErrorFloor, DefaultErrorFloor)
	setFloat(&j.LatencyTolerance, DefaultLatencyTolerance)
	setFloat(&j.SignatureMargin, DefaultSignatureMargin)
	a := &p.Affinity
	switch a.Cookie {
	case "":
		a.Cookie = DefaultAffinityCookiePrefix + p.Name
	case "off":
		a.Cookie = ""
	}
	setDur(&a.MaxAge, DefaultAffinityMaxAge)
	if p.Balance == "" {
		p.Balance = BalanceRoundRobin
	}
	t := &p.Timeouts
	setDur(&t.Connect, DefaultConnectTimeout)
	setDur(&t.ResponseHeader, DefaultResponseHeaderTimeout)
	setDur(&t.Idle, DefaultIdleBodyTimeout)
	setDur(&p.Connections.IdleTimeout, DefaultConnIdleTimeout)
	if p.Tunnels.Max == 0 {
		p.Tunnels.Max = DefaultMaxTunnels
	}
	setDur(&p.Tunnels.IdleTimeout, DefaultTunnelIdleTimeout)
	if len(p.Tail.SensitivePaths) == 0 {
		p.Tail.SensitivePaths = nil // "sensitive_paths: []" and no key mean the same
	}
	if p.Tail.Buffer == 0 {
		p.Tail.Buffer = DefaultTailBuffer
	}
	switch p.Tail.Body {
	case 0:
		p.Tail.Body = DefaultTailBody
	case -1:
		p.Tail.Body = 0
	}
	h := &p.HealthCheck
	setDur(&h.Interval, DefaultHealthInterval)
	setDur(&h.Timeout, DefaultHealthTimeout)
	if h.Rise == 0 {
		h.Rise = DefaultRise
	}
	if h.Fall == 0 {
		h.Fall = DefaultFall
	}
	o := &p.Outlier
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	setDur(&o.BaseEjection, DefaultBaseEjection)
	setDur(&o.MaxEjection, DefaultMaxEjection)
	if p.Retries.Attempts == 0 {
		p.Retries.Attempts = DefaultRetryAttempts
	}
	if p.Retries.BudgetPercent == nil {
		v := DefaultRetryBudgetPercent
		p.Retries.BudgetPercent = &v
	}
	setDur(&p.DrainTimeout, DefaultDrainTimeout)
	for i := range p.Backends {
		b := &p.Backends[i]
		if b.Version == "" {
			b.Version = DefaultVersion
		}
		if b.Weight == nil {
			w := DefaultWeight
			b.Weight = &w
		}
	}
	if p.StableVersion == "" {
		p.StableVersion = p.inferStable()
	}
}

// inferStable returns the single version that is not the canary's, or "" when
// there is none or more than one (Validate reports it).
func (p *Pool) inferStable() string {
	stable := ""
	for _, b := range p.Backends {
		if b.Version == p.Canary.Version {
			continue
		}
		if stable != "" && stable != b.Version {
			return ""
		}
		stable = b.Version
	}
	return stable
}

func setFloat(f *float64, def float64) {
	if *f == 0 {
		*f = def
	}
}

func setDur(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}

// AccessLog reports whether the access log is on.
func (l Log) AccessLog() bool { return l.Access == nil || *l.Access }

// WeightOf returns the backend's weight after defaults.
func (b Backend) WeightOf() int {
	if b.Weight == nil {
		return DefaultWeight
	}
	return *b.Weight
}

// Budget returns the retry budget in percent after defaults.
func (r Retries) Budget() int {
	if r.BudgetPercent == nil {
		return DefaultRetryBudgetPercent
	}
	return *r.BudgetPercent
}

// IsDefault reports whether the pool takes requests no route matches.
func (p Pool) IsDefault() bool { return len(p.Routes) == 0 }
