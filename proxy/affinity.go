package proxy

import (
	"bytes"
	"crypto/hmac"
	crand "crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// maxExcerpt is how much of a failed response's body an error signature
// keeps as an example.
const maxExcerpt = 160

// excerptMax is how much of a failed response's body is kept: what the
// error signature shows, or the pool's tail.body when that is more.
func (x *exchange) excerptMax() int { return max(maxExcerpt, x.cfg.Tail.Body) }

// affinity works out which version the client asks for. While a canary
// takes traffic, a client carries a signed cookie naming (opaquely) the
// version that served it and keeps that version, so a cart never flips; a
// tester may force a version with a header or cookie carrying the force
// secret. A cookie that does not verify — forged, altered, another pool's,
// signed by a retired key — is ignored and the split decides. Without a
// canary, nothing is read or set.
func (x *exchange) affinity(ctx *fasthttp.RequestCtx, p *pool.Pool) {
	if !p.HasCanary() {
		return
	}
	a := &x.cfg.Affinity
	h := &ctx.Request.Header
	if f := &a.ForceHeader; f.Name != "" {
		if v := h.Peek(f.Name); len(v) > 0 {
			x.force(v, f.Secret)
		}
	}
	if f := &a.ForceCookie; !x.forced && f.Name != "" {
		if v := h.Cookie(f.Name); len(v) > 0 {
			x.force(v, f.Secret)
		}
	}
	if x.forced {
		// A tester's request says nothing about how real traffic fares:
		// its outcome is not evidence (see pool.Outcome).
		return
	}
	if a.Cookie == "" || p.CanaryActive() == "" {
		return
	}
	x.canaryOn = true
	x.sharedPeer = sharedAddr(ctx.RemoteAddr())
	if x.s.trustedPeer(ctx.RemoteAddr()) {
		// Behind a proxy baton trusts, the client is the address it
		// forwarded (the last one in X-Forwarded-For).
		x.sharedPeer = true
		if v := h.Peek("X-Forwarded-For"); len(v) > 0 {
			if i := bytes.LastIndexByte(v, ','); i >= 0 {
				v = v[i+1:]
			}
			x.fwdClient = append(x.fwdClient[:0], bytes.TrimSpace(v)...)
		}
	}
	x.aff = x.s.affinityTable(p)
	if v := h.Cookie(a.Cookie); len(v) > 0 {
		x.readCookie(v)
	}
}

// clientAddr returns the address that stands for the client in the
// per-client bounds: an IPv4 address, an IPv6 address's /64 (one host has
// a whole /64 to pick from), or nil when the peer is shared and forwarded
// no address.
func (x *exchange) clientAddr() []byte {
	a := x.clientIP
	if x.sharedPeer {
		a = x.fwdClient
	}
	if len(a) == 0 {
		return nil
	}
	if bytes.IndexByte(a, ':') < 0 {
		return a // IPv4
	}
	if ip, err := netip.ParseAddr(string(a)); err == nil && ip.Is6() && !ip.Is4In6() {
		b := ip.As16()
		clear(b[8:])
		x.addrBuf = append(x.addrBuf[:0], b[:]...)
		return x.addrBuf
	}
	return a
}

// sharedAddr reports whether a peer address is likely shared by many
// clients: loopback, a proxy on the same host.
func sharedAddr(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return !ok || ta.IP.IsLoopback()
}

// force takes "VERSION:SECRET": the version is wanted when the secret is
// the configured one (compared in constant time); otherwise the request is
// an ordinary one.
func (x *exchange) force(v, secret []byte) {
	i := bytes.IndexByte(v, ':')
	if i <= 0 || len(secret) == 0 || subtle.ConstantTimeCompare(bytes.TrimSpace(v[i+1:]), secret) != 1 {
		return
	}
	x.wantVersion, x.forced = append(x.wantVersion[:0], v[:i]...), true
}

// An affinity cookie's value is base64url (no padding) of
//
//	key id (1) | version tag (4) | client id (8) | MAC (12)
//
// The version tag is HMAC(key, pool, version) cut short: opaque to the
// client, and found again only among the pool's current versions. The
// client id is random, given with the first cookie and kept; it lets the
// judge bound what one client counts for. The MAC is HMAC-SHA256(key, pool,
// the first 13 bytes). With affinity.expose_version the value starts with
// "VERSION." (for people reading cookies; only the signed part counts).
const (
	cookieRaw = 25
	cookieB64 = 34 // base64url of 25 bytes, unpadded
	tagLen    = 4
	macLen    = 12
)

// cookieEncoding is strict: one spelling per value.
var cookieEncoding = base64.RawURLEncoding.Strict()

// readCookie verifies an affinity cookie and, when it is good, takes its
// version and client id.
func (x *exchange) readCookie(v []byte) {
	if i := bytes.LastIndexByte(v, '.'); i >= 0 {
		v = v[i+1:]
	}
	raw := &x.cookieRaw // not on the stack: it goes to the MAC through an interface
	if len(v) != cookieB64 {
		return
	}
	if n, err := cookieEncoding.Decode(raw[:], v); err != nil || n != cookieRaw {
		return
	}
	t := x.aff
	e := t.find(raw[0], raw[1:1+tagLen])
	if e == nil {
		return
	}
	mac := x.macOf(t, e.key, raw[:1+tagLen+8])
	if subtle.ConstantTimeCompare(mac[:macLen], raw[1+tagLen+8:cookieRaw]) != 1 {
		return
	}
	x.wantVersion = append(x.wantVersion[:0], e.version...)
	copy(x.clientID[:], raw[1+tagLen:1+tagLen+8])
	x.hasClientID = true
}

// macOf returns HMAC-SHA256(key, pool prefix | b) in the exchange's buffer.
func (x *exchange) macOf(t *affinityTable, k *affinityKey, b []byte) []byte {
	if x.macKey != k {
		x.mac, x.macKey = hmac.New(sha256.New, k.secret), k
	}
	x.mac.Reset()
	x.mac.Write(t.macPrefix)
	x.mac.Write(b)
	x.macBuf = x.mac.Sum(x.macBuf[:0])
	return x.macBuf
}

// setAffinity gives the client a cookie naming the version that served the
// response, when a canary takes traffic and its cookie said something else
// (or nothing, or did not verify).
func (x *exchange) setAffinity(ctx *fasthttp.RequestCtx) {
	if !x.canaryOn || x.b == nil || x.aff == nil {
		return
	}
	v, issued := x.b.CookieVersion()
	if string(x.wantVersion) == v && x.hasClientID {
		return
	}
	t := x.aff
	e := t.signing(v)
	if e == nil {
		return // a version neither stable nor canary (a switch under way)
	}
	a := &x.cfg.Affinity
	// Counted before it is sent: a release asking whether any client may
	// still be pinned to v must never miss a cookie that is out there.
	issued.Issued(x.start.Add(x.ttfb), a.MaxAge)
	x.cookieCount = issued
	if !x.hasClientID {
		binary.LittleEndian.PutUint64(x.clientID[:], rand.Uint64())
	}
	raw := &x.cookieRaw
	raw[0] = e.key.id
	copy(raw[1:], e.tag[:])
	copy(raw[1+tagLen:], x.clientID[:])
	copy(raw[1+tagLen+8:], x.macOf(t, e.key, raw[:1+tagLen+8])[:macLen])

	c := append(x.scratch[:0], a.Cookie...)
	c = append(c, '=')
	if a.ExposeVersion {
		c = append(c, v...)
		c = append(c, '.')
	}
	c = cookieEncoding.AppendEncode(c, raw[:cookieRaw])
	c = append(c, "; Path=/; Max-Age="...)
	c = strconv.AppendInt(c, int64(a.MaxAge/time.Second), 10)
	c = append(c, "; HttpOnly; SameSite=Lax"...)
	if ctx.IsTLS() {
		c = append(c, "; Secure"...)
	}
	x.scratch = c
	ctx.Response.Header.AddBytesKV(setCookie, c)
}

var setCookie = []byte("Set-Cookie")

// AffinityKey is a key that signs affinity cookies. The ID goes into each
// cookie, so that a cookie signed before a rotation still verifies while
// its key is kept.
type AffinityKey struct {
	ID     byte
	Secret []byte
}

type affinityKey struct {
	id     byte
	secret []byte
}

// keyRing is the keys in force: the first signs, every one verifies.
type keyRing struct {
	gen  uint64
	keys []*affinityKey
}

// SetAffinityKeys replaces the keys of affinity cookies: the first signs
// new cookies, all of them verify. With none, the server keeps the ones it
// has.
func (s *Server) SetAffinityKeys(keys []AffinityKey) {
	if len(keys) == 0 {
		return
	}
	r := &keyRing{}
	if old := s.keys.Load(); old != nil {
		if old.same(keys) {
			return // the affinity tables stay as they are
		}
		r.gen = old.gen + 1
	}
	for _, k := range keys {
		r.keys = append(r.keys, &affinityKey{id: k.ID, secret: append([]byte(nil), k.Secret...)})
	}
	s.keys.Store(r)
}

// same reports whether the ring holds exactly keys.
func (r *keyRing) same(keys []AffinityKey) bool {
	if len(r.keys) != len(keys) {
		return false
	}
	for i, k := range keys {
		if r.keys[i].id != k.ID || !bytes.Equal(r.keys[i].secret, k.Secret) {
			return false
		}
	}
	return true
}

// NewAffinityKey returns a fresh random key.
func NewAffinityKey(id byte) AffinityKey {
	k := AffinityKey{ID: id, Secret: make([]byte, 32)}
	_, _ = crand.Read(k.Secret)
	return k
}

// affinityTable is what one pool's cookies are checked against: for each
// key in force and each version the pool serves (stable, canary), the
// version's tag. Built when either changes, read by every request.
type affinityTable struct {
	gen            uint64
	stable, canary string
	macPrefix      []byte
	entries        []affinityEntry
}

type affinityEntry struct {
	key     *affinityKey
	tag     [tagLen]byte
	version string
}

func (t *affinityTable) find(id byte, tag []byte) *affinityEntry {
	for i := range t.entries {
		e := &t.entries[i]
		if e.key.id == id && string(e.tag[:]) == string(tag) {
			return e
		}
	}
	return nil
}

// signing returns the entry of the signing key for version.
func (t *affinityTable) signing(version string) *affinityEntry {
	for i := range t.entries {
		e := &t.entries[i]
		if e.version == version {
			return e // entries start with the signing key's
		}
	}
	return nil
}

// affinityTable returns p's table, rebuilt when the keys or the pool's
// versions changed.
func (s *Server) affinityTable(p *pool.Pool) *affinityTable {
	ring := s.keys.Load()
	stable, cv := p.StableVersion(), p.CanaryActive()
	if v, ok := s.affinity.Load(p); ok {
		t := v.(*affinityTable)
		if t.gen == ring.gen && t.stable == stable && t.canary == cv {
			return t
		}
	}
	t := &affinityTable{gen: ring.gen, stable: stable, canary: cv,
		macPrefix: []byte("baton-affinity\x00" + p.Name() + "\x00")}
	for _, k := range ring.keys {
		for _, v := range []string{stable, cv} {
			if v == "" {
				continue
			}
			m := hmac.New(sha256.New, k.secret)
			m.Write([]byte("baton-version\x00" + p.Name() + "\x00" + v))
			e := affinityEntry{key: k, version: v}
			copy(e.tag[:], m.Sum(nil))
			t.entries = append(t.entries, e)
		}
	}
	s.affinity.Store(p, t)
	return t
}

// noteFailureDetails keeps what an error signature shows of a failed answer:
// the application's error code and the start of the body.
func (x *exchange) noteFailureDetails(ctx *fasthttp.RequestCtx) {
	if name := x.cfg.Judge.ErrorCodeHeader; name != "" {
		if v := ctx.Response.Header.Peek(name); len(v) > 0 {
			x.appCode = append(x.appCode[:0], v[:min(len(v), 64)]...)
		}
	}
	if body := ctx.Response.Body(); len(body) > 0 {
		x.excerpt = append(x.excerpt[:0], body[:min(len(body), x.excerptMax())]...)
	}
}

// clientKey identifies the client for the judge's per-client bounds: its
// address, unless that is loopback or a trusted proxy's (shared by many
// clients), and its affinity cookie's client id.
func (x *exchange) clientKey() canary.ClientKey {
	var k canary.ClientKey
	if a := x.clientAddr(); len(a) > 0 {
		k.Addr = canary.ClientHash(a)
	}
	if x.hasClientID {
		k.Cookie = canary.ClientHash(x.clientID[:])
	}
	return k
}
