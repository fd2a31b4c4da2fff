package config

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Validate checks a defaulted config and returns every problem found, each an
// *Error with the key's path. It does not change the config.
func (c *Config) Validate() []error {
	v := &validator{}
	v.listenAddr("listen", c.Listen)
	if c.Admin.Listen != "off" {
		v.listenAddr("admin.listen", c.Admin.Listen)
		if c.Admin.TokenFile == "" && !loopback(c.Admin.Listen) {
			v.add("admin.listen", "%q is reachable from other hosts; set admin.token_file so the API needs a token, or listen on 127.0.0.1", c.Admin.Listen)
		}
		v.positive("admin.read_timeout", c.Admin.ReadTimeout)
		v.positive("admin.write_timeout", c.Admin.WriteTimeout)
		v.positive("admin.idle_timeout", c.Admin.IdleTimeout)
		if c.Admin.MaxConnections < 0 {
			v.add("admin.max_connections", "must not be negative, got %d", c.Admin.MaxConnections)
		}
		v.adminTLS(c)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "console", "auto":
	default:
		v.add("log.format", "must be json, console or auto, got %q", c.Log.Format)
	}
	s := c.Server
	v.positive("server.read_header_timeout", s.ReadHeaderTimeout)
	v.positive("server.idle_timeout", s.IdleTimeout)
	v.positive("server.body_idle_timeout", s.BodyIdleTimeout)
	v.positive("server.shutdown_timeout", s.ShutdownTimeout)
	v.positive("server.shutdown_grace", s.ShutdownGrace)
	if s.ShutdownGrace > s.ShutdownTimeout {
		v.add("server.shutdown_grace", "must not be longer than server.shutdown_timeout (%s), got %s", s.ShutdownTimeout, s.ShutdownGrace)
	}
	if s.MaxRequestBody < 0 {
		v.add("server.max_request_body", "must not be negative, got %d", int64(s.MaxRequestBody))
	}
	if s.MaxHeaderBytes < 4<<10 || s.MaxHeaderBytes > 1<<20 {
		v.add("server.max_header_bytes", "must be 4KiB..1MiB, got %s", s.MaxHeaderBytes)
	}
	if s.MaxConnections < 0 {
		v.add("server.max_connections", "must not be negative, got %d", s.MaxConnections)
	}
	for i, tp := range s.TrustedProxies {
		if _, err := ParseTrusted(tp); err != nil {
			v.add(fmt.Sprintf("server.trusted_proxies[%d]", i), "must be an IP address or a CIDR such as 10.0.0.0/8, got %q", tp)
		}
	}
	v.tls(c)
	v.cluster(c.Cluster)

	if len(c.Pools) == 0 {
		v.add("pools", "at least one pool is required")
	}
	poolNames := map[string]int{}
	routes := map[string]string{}
	defaults := []string{}
	for i := range c.Pools {
		p := &c.Pools[i]
		path := fmt.Sprintf("pools[%d]", i)
		if prev, dup := poolNames[p.Name]; dup && p.Name != "" {
			v.add(path+".name", "duplicate pool name %q (also pools[%d])", p.Name, prev)
		}
		poolNames[p.Name] = i
		if p.IsDefault() {
			defaults = append(defaults, path)
		}
		for j, r := range p.Routes {
			rp := fmt.Sprintf("%s.routes[%d]", path, j)
			v.route(rp, r)
			key := strings.ToLower(r.Host) + " " + normPrefix(r.PathPrefix)
			if prev, dup := routes[key]; dup {
				v.add(rp, "matches nothing: the same host and path_prefix are already routed by %s", prev)
			}
			routes[key] = rp
		}
		v.pool(path, p)
	}
	if len(defaults) > 1 {
		v.add(defaults[1]+".routes", "only one pool may have no routes (the default pool); %s already is", defaults[0])
	}
	return v.errs
}

func normPrefix(p string) string {
	if p == "" {
		return "/"
	}
	return p
}

// loopback reports whether a listen address only accepts local connections.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

type validator struct{ errs []error }

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, &Error{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (v *validator) positive(path string, d time.Duration) {
	if d <= 0 {
		v.add(path, "must be a positive duration, got %s", d)
	}
}

func (v *validator) nonNegative(path string, d time.Duration) {
	if d < 0 {
		v.add(path, "must not be negative, got %s", d)
	}
}

func (v *validator) listenAddr(path, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(path, "must be host:port such as :8080 or 127.0.0.1:8080, got %q", addr)
		return
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil && host != "localhost" {
			v.add(path, "host must be an IP address or localhost, got %q", host)
		}
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		v.add(path, "port must be 0..65535, got %q", port)
	}
}

var (
	tokenRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	nameRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// cookieRE: a cookie name, long enough for "baton_" and a pool name.
	cookieRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	labelRE  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

func (v *validator) route(path string, r Route) {
	if r.Host != "" {
		h := strings.TrimPrefix(r.Host, "*.")
		if strings.Contains(h, ":") {
			v.add(path+".host", "must be a host name without a port, got %q", r.Host)
		} else {
			for _, l := range strings.Split(h, ".") {
				if !labelRE.MatchString(l) {
					v.add(path+".host", "must be a host name or *.domain, got %q", r.Host)
					break
				}
			}
		}
	}
	if r.PathPrefix != "" {
		switch {
		case !strings.HasPrefix(r.PathPrefix, "/"):
			v.add(path+".path_prefix", "matches nothing: it must start with \"/\", got %q", r.PathPrefix)
		case strings.ContainsAny(r.PathPrefix, "?#") || strings.Contains(r.PathPrefix, "//") ||
			strings.Contains(r.PathPrefix, "/./") || strings.Contains(r.PathPrefix, "/../") ||
			strings.HasSuffix(r.PathPrefix, "/.") || strings.HasSuffix(r.PathPrefix, "/.."):
			v.add(path+".path_prefix", "matches nothing: paths are matched after dot segments and repeated slashes are resolved, and without the query; got %q", r.PathPrefix)
		}
	}
}

func (v *validator) pool(path string, p *Pool) {
	if !nameRE.MatchString(p.Name) {
		v.add(path+".name", "must be 1-63 letters, digits, '.', '_' or '-', got %q", p.Name)
	}
	switch p.Balance {
	case BalanceRoundRobin, BalanceLeastInflight:
	default:
		v.add(path+".balance", "must be %s or %s, got %q", BalanceRoundRobin, BalanceLeastInflight, p.Balance)
	}
	t := p.Timeouts
	v.positive(path+".timeouts.connect", t.Connect)
	v.positive(path+".timeouts.response_header", t.ResponseHeader)
	v.positive(path+".timeouts.idle", t.Idle)
	v.nonNegative(path+".timeouts.total", t.Total)
	if t.Total > 0 {
		if t.Connect >= t.Total {
			v.add(path+".timeouts.connect", "can never fire: it is not below timeouts.total (%s >= %s)", t.Connect, t.Total)
		}
		if t.ResponseHeader > t.Total {
			v.add(path+".timeouts.response_header", "can never fire: it is above timeouts.total (%s > %s)", t.ResponseHeader, t.Total)
		}
	}
	if p.Connections.Max < 0 {
		v.add(path+".connections.max", "must not be negative, got %d", p.Connections.Max)
	}
	v.positive(path+".connections.idle_timeout", p.Connections.IdleTimeout)
	if p.Tunnels.Max < 0 {
		v.add(path+".tunnels.max", "must not be negative, got %d", p.Tunnels.Max)
	}
	v.positive(path+".tunnels.idle_timeout", p.Tunnels.IdleTimeout)

	h := p.HealthCheck
	if h.Path != "" && (!strings.HasPrefix(h.Path, "/") || strings.ContainsAny(h.Path, " \r\n\t")) {
		v.add(path+".health_check.path", "must start with \"/\" and contain no spaces, got %q", h.Path)
	}
	if strings.ContainsAny(h.Host, " \r\n\t/") {
		v.add(path+".health_check.host", "must be a host name, got %q", h.Host)
	}
	v.positive(path+".health_check.interval", h.Interval)
	v.positive(path+".health_check.timeout", h.Timeout)
	if h.Timeout > 0 && h.Interval > 0 && h.Timeout >= h.Interval {
		v.add(path+".health_check.timeout", "must be below health_check.interval (%s >= %s)", h.Timeout, h.Interval)
	}
	if h.ExpectStatus != 0 && (h.ExpectStatus < 100 || h.ExpectStatus > 599) {
		v.add(path+".health_check.expect_status", "must be an HTTP status 100..599 or 0 for any 2xx/3xx, got %d", h.ExpectStatus)
	}
	if h.Rise < 1 || h.Rise > 100 {
		v.add(path+".health_check.rise", "must be 1..100, got %d", h.Rise)
	}
	if h.Fall < 1 || h.Fall > 100 {
		v.add(path+".health_check.fall", "must be 1..100, got %d", h.Fall)
	}

	o := p.Outlier
	if o.ConsecutiveFailures < -1 || o.ConsecutiveFailures > 1000 {
		v.add(path+".outlier.consecutive_failures", "must be 1..1000, or -1 to disable, got %d", o.ConsecutiveFailures)
	}
	v.positive(path+".outlier.base_ejection", o.BaseEjection)
	v.positive(path+".outlier.max_ejection", o.MaxEjection)
	if o.MaxEjection > 0 && o.BaseEjection > o.MaxEjection {
		v.add(path+".outlier.base_ejection", "must not exceed outlier.max_ejection (%s > %s)", o.BaseEjection, o.MaxEjection)
	}
	for i, st := range p.Canary.Steps {
		if !(st > 0 && st <= 100) {
			v.add(fmt.Sprintf("%s.canary.steps[%d]", path, i), "must be a percentage above 0 and at most 100, got %g", st)
		} else if i > 0 && !(st > p.Canary.Steps[i-1]) {
			v.add(fmt.Sprintf("%s.canary.steps[%d]", path, i), "steps must increase, got %g after %g", st, p.Canary.Steps[i-1])
		}
	}
	v.positive(path+".canary.step_min_time", p.Canary.StepMinTime)
	if p.Canary.StepMinRequests < 1 {
		v.add(path+".canary.step_min_requests", "must be at least 1, got %d", p.Canary.StepMinRequests)
	}
	j := p.Judge
	if j.Interval < 100*time.Millisecond {
		v.add(path+".judge.interval", "must be at least 100ms, got %s", j.Interval)
	}
	v.nonNegative(path+".judge.warmup", j.Warmup)
	v.nonNegative(path+".judge.latency_floor", j.LatencyFloor)
	if j.WarmupRequests < 1 {
		v.add(path+".judge.warmup_requests", "must be at least 1, got %d", j.WarmupRequests)
	}
	if !(j.GrossFactor >= 1.2 && j.GrossFactor <= 100) {
		v.add(path+".judge.gross_factor", "must be 1.2..100 (2 is twice as slow), got %g", j.GrossFactor)
	}
	v.nonNegative(path+".judge.gross_floor", j.GrossFloor)
	if !(j.MaxClientShare > 0 && j.MaxClientShare <= 1) {
		v.add(path+".judge.max_client_share", "must be a fraction above 0 and at most 1 (0.1 is 10 %%), got %g", j.MaxClientShare)
	}
	if !(j.Alpha > 0 && j.Alpha <= 0.5) {
		v.add(path+".judge.alpha", "must be above 0 and at most 0.5, got %g", j.Alpha)
	}
	for _, f := range []struct {
		key string
		val float64
	}{{"error_margin", j.ErrorMargin}, {"latency_tolerance", j.LatencyTolerance}, {"signature_margin", j.SignatureMargin}} {
		if !(f.val >= 0 && f.val <= 100) {
			v.add(path+".judge."+f.key, "must be a fraction 0..100 (0.1 is 10 %%), got %g", f.val)
		}
	}
	if !(j.ErrorFloor >= 0 && j.ErrorFloor < 1) {
		v.add(path+".judge.error_floor", "must be a fraction 0..1 (0.002 is 0.2 points), got %g", j.ErrorFloor)
	}
	if len(j.RouteGroups) > 16 {
		v.add(path+".judge.route_groups", "at most 16 route groups, got %d", len(j.RouteGroups))
	}
	seenGroup := map[string]bool{}
	for i, g := range j.RouteGroups {
		gp := fmt.Sprintf("%s.judge.route_groups[%d]", path, i)
		switch {
		case !strings.HasPrefix(g, "/"):
			v.add(gp, "must be a path prefix starting with \"/\", got %q", g)
		case seenGroup[g]:
			v.add(gp, "duplicate route group %q", g)
		}
		seenGroup[g] = true
	}
	if j.ErrorCodeHeader != "" && !tokenRE.MatchString(j.ErrorCodeHeader) {
		v.add(path+".judge.error_code_header", "must be a header name, got %q", j.ErrorCodeHeader)
	}
	a := p.Affinity
	if a.Cookie != "" && !cookieRE.MatchString(a.Cookie) && (a.Cookie != DefaultAffinityCookiePrefix+p.Name || nameRE.MatchString(p.Name)) {
		v.add(path+".affinity.cookie", "must be a cookie name (letters, digits, -_.), or off, got %q", a.Cookie)
	}
	v.positive(path+".affinity.max_age", a.MaxAge)
	for _, f := range []struct {
		key string
		f   Force
	}{{"force_header", a.ForceHeader}, {"force_cookie", a.ForceCookie}} {
		fp := path + ".affinity." + f.key
		switch {
		case f.f.Name == "" && f.f.SecretFile == "":
		case !tokenRE.MatchString(f.f.Name):
			v.add(fp+".name", "must be a header or cookie name, got %q", f.f.Name)
		case f.f.SecretFile == "":
			v.add(fp+".secret_file", "is required: a version anyone can force is a version anyone can judge")
		default:
			if err := checkForceSecret(f.f.SecretFile); err != nil {
				v.add(fp+".secret_file", "%v", err)
			}
		}
	}
	if t := p.Tail; t.Buffer < 1 || t.Buffer > MaxTailBuffer {
		v.add(path+".tail.buffer", "must be 1..%d records, got %d", MaxTailBuffer, t.Buffer)
	}
	if t := p.Tail; t.Body < 0 || t.Body > MaxTailBody {
		v.add(path+".tail.body", "must be 0..%d bytes, or -1 for none, got %d", MaxTailBody, t.Body)
	}
	for i, sp := range p.Tail.SensitivePaths {
		if !strings.HasPrefix(sp, "/") {
			v.add(fmt.Sprintf("%s.tail.sensitive_paths[%d]", path, i), "must be a path prefix starting with \"/\", got %q", sp)
		}
	}
	if p.Retries.Attempts < 1 || p.Retries.Attempts > 5 {
		v.add(path+".retries.attempts", "must be 1..5, got %d", p.Retries.Attempts)
	}
	if b := p.Retries.Budget(); b < 0 || b > 100 {
		v.add(path+".retries.budget_percent", "must be 0..100, got %d", b)
	}
	v.positive(path+".drain_timeout", p.DrainTimeout)

	if len(p.Backends) == 0 {
		v.add(path+".backends", "at least one backend is required")
	}
	names := map[string]int{}
	addrs := map[string]int{}
	versions := map[string]bool{}
	for j, b := range p.Backends {
		bp := fmt.Sprintf("%s.backends[%d]", path, j)
		if !nameRE.MatchString(b.Name) {
			v.add(bp+".name", "must be 1-63 letters, digits, '.', '_' or '-', got %q", b.Name)
		} else if prev, dup := names[b.Name]; dup {
			v.add(bp+".name", "duplicate backend name %q (also backends[%d])", b.Name, prev)
		}
		names[b.Name] = j
		if err := checkBackendAddr(b.Address); err != "" {
			v.add(bp+".address", "%s", err)
		} else if prev, dup := addrs[b.Address]; dup {
			v.add(bp+".address", "%s is already backends[%d] of this pool", b.Address, prev)
		}
		addrs[b.Address] = j
		if !nameRE.MatchString(b.Version) {
			v.add(bp+".version", "must be 1-63 letters, digits, '.', '_' or '-', got %q", b.Version)
		}
		versions[b.Version] = true
		if w := b.WeightOf(); w < 0 || w > MaxWeight {
			v.add(bp+".weight", "must be 0..%d, got %d", MaxWeight, w)
		}
	}

	c := p.Canary
	// Written as "not inside" so that NaN (".nan" in YAML) is refused too.
	if !(c.Weight >= 0 && c.Weight <= 100) {
		v.add(path+".canary.weight", "must be a percentage 0..100, got %g", c.Weight)
	}
	if !(c.InitialWeight > 0 && c.InitialWeight <= 100) {
		v.add(path+".canary.initial_weight", "must be a percentage above 0 and at most 100, got %g", c.InitialWeight)
	}
	if c.Version != "" {
		if !versions[c.Version] {
			v.add(path+".canary.version", "no backend of this pool has version %q", c.Version)
		}
		if c.Version == p.StableVersion {
			v.add(path+".canary.version", "must differ from the stable version %q", p.StableVersion)
		}
	} else if c.Weight != 0 {
		v.add(path+".canary.weight", "is set but canary.version is not")
	}
	if len(versions) > 2 || (len(versions) == 2 && c.Version == "") {
		v.add(path+".backends", "a pool runs at most two versions, stable and canary; found %s%s", listVersions(versions),
			map[bool]string{true: " with no canary.version set", false: ""}[c.Version == ""])
	}
	if p.StableVersion == "" && len(p.Backends) > 0 {
		v.add(path+".stable_version", "cannot tell which version is stable; set stable_version")
	} else if p.StableVersion != "" && len(p.Backends) > 0 && !versions[p.StableVersion] {
		v.add(path+".stable_version", "no backend of this pool has version %q", p.StableVersion)
	}
}

func listVersions(m map[string]bool) string {
	var vs []string
	for k := range m {
		vs = append(vs, strconv.Quote(k))
	}
	// Sorted for stable messages.
	for i := 1; i < len(vs); i++ {
		for j := i; j > 0 && vs[j] < vs[j-1]; j-- {
			vs[j], vs[j-1] = vs[j-1], vs[j]
		}
	}
	return strings.Join(vs, ", ")
}

// minForceSecret is the shortest secret a forced version accepts.
const minForceSecret = 16

// checkForceSecret reports what is wrong with a force secret file.
func checkForceSecret(file string) error {
	secret, err := readForceSecret(file)
	if err != nil {
		return err
	}
	switch {
	case len(secret) < minForceSecret:
		return fmt.Errorf("the secret in %s is shorter than %d characters", file, minForceSecret)
	case bytes.ContainsAny(secret, " \t\r\n:;,"):
		return fmt.Errorf("the secret in %s must not contain spaces, ':', ';' or ','", file)
	}
	return nil
}

func readForceSecret(file string) ([]byte, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("cannot read the secret: %w", err)
	}
	return bytes.TrimSpace(data), nil
}

// ValidName reports whether s is a valid pool, backend or version name:
// 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// zoneRE is an IPv6 zone baton accepts: an interface name or index.
var zoneRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// CheckBackendAddress returns what is wrong with a backend address, or "".
func CheckBackendAddress(addr string) string { return checkBackendAddr(addr) }

// checkBackendAddr returns a problem with addr, or "".
func checkBackendAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Sprintf("must be host:port such as 10.0.0.5:8080, got %q", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("port must be 1..65535, got %q", port)
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		// An IPv6 zone is an interface name; netip takes any text there,
		// and the address reaches shell commands of baton rollout
		// ({host}, {address}): `[fe80::1%$(id)]:80` must not pass.
		if z := ip.Zone(); z != "" && !zoneRE.MatchString(z) {
			return fmt.Sprintf("IPv6 zone must be letters, digits, '.', '_' or '-', got %q", z)
		}
	} else {
		for _, l := range strings.Split(host, ".") {
			if !labelRE.MatchString(l) {
				return fmt.Sprintf("host must be an IP address or a host name, got %q", host)
			}
		}
	}
	return ""
}

// ParseTrusted parses one server.trusted_proxies entry: a CIDR, or an IP
// address standing for itself alone.
func ParseTrusted(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p.Masked(), err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
