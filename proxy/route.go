package proxy

import (
	"fmt"
	"sort"
	"strings"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/internal/h1"
	"github.com/baton-lb/baton/pool"
)

// Table maps a request's host and path to a pool. It is immutable once built:
// a reload builds a new one and swaps it in.
type Table struct {
	routes []route
	def    *pool.Pool // the pool without routes, or nil
}

type route struct {
	host     string // lower case; "" matches any host
	wildcard bool   // host is a suffix such as ".example.com"
	prefix   string
	pool     *pool.Pool
}

// BuildTable builds the routing table for cfg. pools maps every pool name in
// cfg to its live pool.
func BuildTable(cfg *config.Config, pools map[string]*pool.Pool) (*Table, error) {
	t := &Table{}
	for _, pc := range cfg.Pools {
		p := pools[pc.Name]
		if p == nil {
			return nil, fmt.Errorf("routing: no live pool %q", pc.Name)
		}
		if pc.IsDefault() {
			t.def = p
			continue
		}
		for _, r := range pc.Routes {
			rt := route{host: strings.ToLower(r.Host), prefix: r.PathPrefix, pool: p}
			if rt.prefix == "" {
				rt.prefix = "/"
			}
			if strings.HasPrefix(rt.host, "*.") {
				rt.host, rt.wildcard = rt.host[1:], true
			}
			t.routes = append(t.routes, rt)
		}
	}
	// Most specific first: exact hosts, then wildcards (longer suffix first),
	// then any host; within each, the longer path prefix first.
	rank := func(r route) int {
		switch {
		case r.host != "" && !r.wildcard:
			return 0
		case r.wildcard:
			return 1
		}
		return 2
	}
	sort.SliceStable(t.routes, func(i, j int) bool {
		a, b := t.routes[i], t.routes[j]
		if rank(a) != rank(b) {
			return rank(a) < rank(b)
		}
		if len(a.host) != len(b.host) {
			return len(a.host) > len(b.host)
		}
		return len(a.prefix) > len(b.prefix)
	})
	return t, nil
}

// Match returns the pool for a request, or nil. host may carry a port; path
// must already be normalised (see routePath).
func (t *Table) Match(host, path []byte) *pool.Pool {
	host = stripPort(host)
	for i := range t.routes {
		r := &t.routes[i]
		if r.host != "" {
			if r.wildcard {
				if len(host) <= len(r.host) || !h1.EqualFoldLower(host[len(host)-len(r.host):], r.host) {
					continue
				}
			} else if !h1.EqualFoldLower(host, r.host) {
				continue
			}
		}
		if len(path) >= len(r.prefix) && string(path[:len(r.prefix)]) == r.prefix {
			return r.pool
		}
	}
	return t.def
}

// stripPort removes a trailing :port (and the brackets of an IPv6 literal's
// port form stay, which is fine for comparison with configured names).
func stripPort(h []byte) []byte {
	for i := len(h) - 1; i >= 0; i-- {
		switch h[i] {
		case ':':
			return h[:i]
		case ']':
			return h
		}
		if h[i] < '0' || h[i] > '9' {
			return h
		}
	}
	return h
}

// routePath returns the path used for routing: target's path without the
// query, with percent-encoded unreserved characters decoded, dot segments
// resolved and repeated slashes merged, so that "/static/../admin" cannot
// reach a pool routed by "/admin" through the "/static" route. The backend
// still receives the target exactly as sent. dst is scratch space, returned
// (grown) as the second result; the path aliases target when nothing needed
// changing.
func routePath(dst, target []byte) (path, scratch []byte) {
	path = target
	for i, c := range target {
		if c == '?' || c == '#' {
			path = target[:i]
			break
		}
	}
	if len(path) == 0 || path[0] != '/' {
		dst = append(dst[:0], '/')
		return dst, dst
	}
	clean := true
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '%' || (c == '/' && i+1 < len(path) && (path[i+1] == '/' || path[i+1] == '.')) {
			clean = false
			break
		}
	}
	if clean {
		return path, dst
	}
	// Decode unreserved %XX (RFC 3986 §2.3); keep every other escape, %2F
	// included, since it is not a separator.
	dst = dst[:0]
	for i := 0; i < len(path); i++ {
		c := path[i]
		if c == '%' && i+2 < len(path) {
			if d, ok := unhex2(path[i+1], path[i+2]); ok && isUnreserved(d) {
				dst = append(dst, d)
				i += 2
				continue
			}
		}
		dst = append(dst, c)
	}
	dst = removeDotSegments(dst)
	return dst, dst
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := h1.Unhex(a)
	y, ok2 := h1.Unhex(b)
	return x<<4 | y, ok1 && ok2
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// removeDotSegments resolves "." and ".." segments and merges repeated
// slashes in place. p starts with '/'.
func removeDotSegments(p []byte) []byte {
	out := p[:0]
	i := 0
	for i < len(p) {
		// p[i] == '/' here; find the segment after it.
		j := i + 1
		for j < len(p) && p[j] != '/' {
			j++
		}
		seg := p[i+1 : j]
		last := j == len(p)
		switch {
		case len(seg) == 0 && !last:
			// "//": merge.
		case string(seg) == ".":
			if last {
				out = append(out, '/')
			}
		case string(seg) == "..":
			k := len(out) - 1
			for k >= 0 && out[k] != '/' {
				k--
			}
			if k < 0 {
				k = 0
			}
			out = out[:k]
			if last {
				out = append(out, '/')
			}
		default:
			out = append(out, '/')
			out = append(out, seg...)
		}
		i = j
	}
	if len(out) == 0 {
		out = append(out, '/')
	}
	return out
}
