package proxy

import (
	"bytes"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// maxExcerpt is how much of a failed response's body an error signature
// keeps as an example.
const maxExcerpt = 160

// affinity works out which version the client asks for. While a canary takes
// traffic, a client carries a cookie naming the version that served it and
// keeps that version (so a cart never flips); a tester may force a version
// with a header or cookie. Without a canary, nothing is read or set.
func (x *exchange) affinity(ctx *fasthttp.RequestCtx, p *pool.Pool) {
	if !p.HasCanary() {
		return
	}
	a := &x.cfg.Affinity
	h := &ctx.Request.Header
	if a.ForceHeader != "" {
		if v := h.Peek(a.ForceHeader); len(v) > 0 {
			x.wantVersion, x.forced = append(x.wantVersion[:0], v...), true
		}
	}
	if !x.forced && a.ForceCookie != "" {
		if v := h.Cookie(a.ForceCookie); len(v) > 0 {
			x.wantVersion, x.forced = append(x.wantVersion[:0], v...), true
		}
	}
	if x.forced {
		// A tester's request says nothing about how real traffic fares.
		x.group = pool.NotEvidence
		return
	}
	if a.Cookie == "" || p.CanaryActive() == "" {
		return
	}
	x.canaryOn = true
	if v := h.Cookie(a.Cookie); len(v) > 0 {
		x.wantVersion = append(x.wantVersion[:0], v...)
	}
}

// setAffinity names the version that served the response in the client's
// cookie, when a canary takes traffic and the cookie says something else.
func (x *exchange) setAffinity(ctx *fasthttp.RequestCtx) {
	if !x.canaryOn || x.b == nil {
		return
	}
	v := x.b.Version()
	if string(x.wantVersion) == v {
		return
	}
	a := &x.cfg.Affinity
	c := append(x.scratch[:0], a.Cookie...)
	c = append(c, '=')
	c = append(c, v...)
	c = append(c, "; Path=/; Max-Age="...)
	c = strconv.AppendInt(c, int64(a.MaxAge/time.Second), 10)
	c = append(c, "; HttpOnly; SameSite=Lax"...)
	x.scratch = c
	ctx.Response.Header.AddBytesKV(setCookie, c)
}

var setCookie = []byte("Set-Cookie")

// noteFailureDetails keeps what an error signature shows of a failed answer:
// the application's error code and the start of the body.
func (x *exchange) noteFailureDetails(ctx *fasthttp.RequestCtx) {
	if name := x.cfg.Judge.ErrorCodeHeader; name != "" {
		if v := ctx.Response.Header.Peek(name); len(v) > 0 {
			x.appCode = append(x.appCode[:0], v[:min(len(v), 64)]...)
		}
	}
	if body := ctx.Response.Body(); len(body) > 0 {
		x.excerpt = append(x.excerpt[:0], body[:min(len(body), maxExcerpt)]...)
	}
}

// recordFailure adds a failed request to its pool's error signatures.
// Failures are rare next to requests; this allocates.
func (x *exchange) recordFailure(b *pool.Backend, status int) {
	if x.pool == nil || x.group == pool.NotEvidence {
		return
	}
	f := canary.Failure{
		Group:   x.pool.Groups().Name(x.group),
		Method:  string(x.method),
		Status:  status,
		Class:   x.class.String(),
		AppCode: string(x.appCode),
		Path:    string(examplePath(x.target)),
		Body:    printable(x.excerpt),
	}
	x.pool.Signatures().Record(b.Version(), &f, time.Now())
}

// examplePath is the path a signature's example shows: without the query,
// which may carry tokens or personal data, and at most 200 bytes.
func examplePath(target []byte) []byte {
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	return target[:min(len(target), 200)]
}

// printable keeps an excerpt readable in JSON and logs.
func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		switch {
		case c == '\n' || c == '\r' || c == '\t':
			out = append(out, ' ')
		case c >= 0x20 && c < 0x7f:
			out = append(out, c)
		default:
			out = append(out, '?')
		}
	}
	return string(out)
}
