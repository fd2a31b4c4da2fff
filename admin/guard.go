package admin

import (
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/baton-lb/baton/control"
)

// The admin API can drain every server: a web page must not be able to
// drive it through the operator's browser. Browsers send "simple" cross-site
// POSTs (form or text/plain bodies) without asking first, and a page whose
// name is made to resolve to 127.0.0.1 (DNS rebinding) is same-origin to the
// browser. So, on every request:
//
//   - without a token file, the Host must be a loopback name (127.0.0.1,
//     [::1], localhost, any port): a rebound name is refused;
//   - a request a browser marks as coming from another site (Sec-Fetch-Site,
//     or an Origin that is not this listener) is refused, except a plain
//     navigation to the dashboard (a link to it);
//   - a change (POST, PUT, PATCH, DELETE) must say Content-Type:
//     application/json, which no web page can send to another site without
//     the browser asking first (a CORS preflight baton never grants); see
//     needJSON.
//
// Scripts (curl, baton ctl) send no Origin and no Sec-Fetch-*, so they pass
// as long as they name the JSON type; the dashboard is same-origin.

// guard refuses requests that a web page could have made on the operator's
// behalf, before any handler runs.
func (a *api) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if e := a.refuse(r); e != nil {
			a.refused(r, e)
			writeError(w, e)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *api) refuse(r *http.Request) *apiError {
	if a.tokens == nil && !loopbackHost(r.Host) {
		return errorf(403, "host_not_allowed",
			"without an admin token baton answers only requests addressed to 127.0.0.1, [::1] or localhost, got Host %q; set admin.token_file to reach the admin API by another name",
			r.Host)
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" && !dashboardNavigation(r) {
		return errorf(403, "cross_site", "a request from another site (Sec-Fetch-Site: %s) is refused: the admin API acts only for its own dashboard and for scripts", site)
	}
	if origin := r.Header.Get("Origin"); origin != "" && !sameOrigin(origin, r) && !dashboardNavigation(r) {
		return errorf(403, "cross_site", "a request from another origin (%s) is refused: the admin API acts only for its own dashboard and for scripts", origin)
	}
	return nil
}

// needJSON refuses a change (POST, PUT, PATCH, DELETE) that does not say
// Content-Type: application/json. route checks it once the request is
// authenticated and its route and method exist, so that 401, 404 and 405
// keep their meaning.
func needJSON(r *http.Request) *apiError {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
			return errorf(415, "unsupported_media_type", "%s needs Content-Type: application/json (got %q), even without a body", r.Method, r.Header.Get("Content-Type"))
		}
	}
	return nil
}

// dashboardNavigation: the browser opens the dashboard from a link (a
// top-level GET of a page, which reads nothing for the other site).
func dashboardNavigation(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
		(r.URL.Path == "/" || strings.HasPrefix(r.URL.Path, "/ui/")) &&
		r.Header.Get("Sec-Fetch-Mode") == "navigate"
}

// sameOrigin reports whether origin (scheme://host[:port]) is this
// listener as the request names it.
func sameOrigin(origin string, r *http.Request) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // "null" (a sandboxed frame, a file) is never this listener
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return strings.EqualFold(u.Scheme, scheme) && strings.EqualFold(u.Host, r.Host)
}

// loopbackHost reports whether a Host header names this machine's loopback
// interface: 127.0.0.1 (or any 127/8 address), [::1] or localhost, with or
// without a port.
func loopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// refused records a refused request in the audit log: who (as far as
// known), what was asked, and the answer.
func (a *api) refused(r *http.Request, e *apiError) {
	actor := "unauthenticated"
	if name, ok := a.authenticate(r); ok {
		actor = name
	}
	a.audit(r, actor, e)
}

// audit records a refused request or change.
func (a *api) audit(r *http.Request, actor string, e *apiError) {
	a.ctl.Audit(control.Event{Actor: actor, Action: r.Method + " " + r.URL.Path,
		Detail: "from " + r.RemoteAddr, Refused: fmt.Sprintf("%d %s: %s", e.status, e.code, e.msg)})
}
