package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/admin/v1"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/pool"
)

// maxWait bounds ?wait= so a forgotten script does not hold a request open
// for days.
const maxWait = time.Hour

// api serves /v1: the contract deploy scripts rely on.
type api struct {
	ctl    *control.Registry
	log    zerolog.Logger
	tokens *TokenSet // nil: no token needed (loopback only, enforced by config)
	// upgrade hands the listeners to a new baton process (nil: not
	// available, as under baton demo).
	upgrade func(actor string) error
	// readTimeout and writeTimeout are the admin server's; a request that
	// waits (?wait=, an upgrade) gets its wait on top (0: no timeouts).
	readTimeout, writeTimeout time.Duration
	// stop is closed when baton shuts down: live tails end (nil: never).
	stop <-chan struct{}
	// tails counts the open tails; maxTails bounds them (0: 16).
	tails    atomic.Int64
	maxTails int
}

// upgradeWait is the longest an upgrade request waits for the new process.
const upgradeWait = time.Minute

// extendDeadlines gives a request that waits on purpose (?wait=, an
// upgrade) its wait on top of the server's read and write timeouts. The
// read deadline matters too: net/http cancels a request whose connection's
// read deadline passes while its handler runs.
func (a *api) extendDeadlines(w http.ResponseWriter, r *http.Request) {
	if a.readTimeout <= 0 && a.writeTimeout <= 0 {
		return
	}
	var extra time.Duration
	switch {
	case r.URL.Path == "/v1/upgrade":
		extra = upgradeWait
	case r.Pattern == "/v1/pools/{pool}/backends/{name}/drain" || r.Pattern == "/v1/pools/{pool}/backends/{name}" && r.Method == http.MethodDelete:
		// Only the routes that wait: ?wait= elsewhere must not hold a
		// connection past the timeouts.
		if d, err := waitParam(r); err == nil {
			extra = d
		}
	}
	if extra == 0 {
		return
	}
	rc := http.NewResponseController(w)
	now := time.Now()
	if a.readTimeout > 0 {
		_ = rc.SetReadDeadline(now.Add(extra + a.readTimeout))
	}
	if a.writeTimeout > 0 {
		_ = rc.SetWriteDeadline(now.Add(extra + a.writeTimeout))
	}
}

// apiError is an error with the status and code the API answers with.
type apiError struct {
	status int
	code   string
	msg    string
	extra  map[string]any
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

// asAPIError maps the control package's errors to statuses and codes.
func asAPIError(err error) *apiError {
	var ae *apiError
	var ce *control.Conflict
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.As(err, &ce):
		return &apiError{status: 409, code: ce.Code, msg: strings.TrimPrefix(err.Error(), control.ErrConflict.Error()+": ")}
	case errors.Is(err, control.ErrUnknownPool):
		return &apiError{status: 404, code: "unknown_pool", msg: err.Error()}
	case errors.Is(err, pool.ErrUnknownBackend):
		return &apiError{status: 404, code: "unknown_backend", msg: err.Error()}
	case errors.Is(err, control.ErrInvalid):
		return &apiError{status: 400, code: "invalid_value", msg: strings.TrimPrefix(err.Error(), control.ErrInvalid.Error()+": ")}
	case errors.Is(err, control.ErrConflict):
		return &apiError{status: 409, code: "conflict", msg: strings.TrimPrefix(err.Error(), control.ErrConflict.Error()+": ")}
	case errors.Is(err, control.ErrSharedStateUnusable):
		return &apiError{status: 503, code: "shared_state_unusable", msg: err.Error()}
	case errors.Is(err, control.ErrClusterOutcomeUnknown):
		return &apiError{status: 503, code: "cluster_outcome_unknown", msg: err.Error()}
	case errors.Is(err, control.ErrClusterUnavailable):
		return &apiError{status: 503, code: "cluster_unavailable", msg: err.Error()}
	case errors.Is(err, control.ErrUpgrading):
		return &apiError{status: 503, code: "upgrading", msg: err.Error()}
	case errors.Is(err, control.ErrPersist):
		return &apiError{status: 500, code: "persist_failed", msg: err.Error()}
	}
	return &apiError{status: 500, code: "internal", msg: err.Error()}
}

// handlerFunc answers with a status and a JSON body, or an error.
type handlerFunc func(r *http.Request, actor string) (int, any, error)

// route registers path with a handler per method. Every /v1 route checks the
// token first, answers a wrong method with 405 and errors as
// {"error", "code"}.
func (a *api) route(mux *http.ServeMux, path string, methods map[string]handlerFunc) {
	allow := make([]string, 0, len(methods))
	for m := range methods {
		allow = append(allow, m)
	}
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		actor, ok := a.authenticate(r)
		if !ok {
			e := errorf(401, "unauthorized", "a valid token is required: send Authorization: Bearer TOKEN")
			if p := a.tokens.Problem(); p != "" {
				e.msg = "no token is accepted until the token file loads again: " + p
			}
			a.audit(r, "unauthenticated", e)
			w.Header().Set("WWW-Authenticate", `Bearer realm="baton"`)
			writeError(w, e)
			return
		}
		if len(methods) == 0 {
			writeError(w, errorf(404, "not_found", "no API route %s", r.URL.Path))
			return
		}
		h := methods[r.Method]
		if h == nil {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, errorf(405, "method_not_allowed", "%s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allow, ", ")))
			return
		}
		if e := needJSON(r); e != nil {
			a.audit(r, actor, e)
			writeError(w, e)
			return
		}
		a.extendDeadlines(w, r)
		status, body, err := h(r, actor)
		if err != nil {
			ae := asAPIError(err)
			if ae.code == v1.CodeStateChanged {
				// The state as it is now, to decide again on.
				if p := a.ctl.Pool(r.PathValue("pool")); p != nil {
					ae.extra = map[string]any{"pool": a.poolJSON(p)}
				}
			}
			if ae.status >= 500 {
				a.log.Error().Err(err).Str("path", r.URL.Path).Msg("admin API request failed")
			}
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				a.audit(r, actor, ae) // a refused change: who asked, and why not
			}
			writeError(w, ae)
			return
		}
		if st, ok := body.(streamer); ok {
			st.serve(w, r)
			return
		}
		writeJSON(w, status, body)
	})
}

// authenticate returns the name of the request's token. Tokens are compared
// as SHA-256 digests in constant time.
func (a *api) authenticate(r *http.Request) (string, bool) {
	return a.authenticateHeader(r.Header.Get("Authorization"))
}

// authenticateHeader is authenticate for an Authorization header's value.
func (a *api) authenticateHeader(h string) (string, bool) {
	if a.tokens == nil {
		return "anonymous", true
	}
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(h[len(prefix):])))
	name, found := "", 0
	for _, t := range a.tokens.Load() {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			name, found = t.Name, 1
		}
	}
	return name, found == 1
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(body)
}

func writeError(w http.ResponseWriter, e *apiError) {
	body := map[string]any{"error": e.msg, "code": e.code}
	for k, v := range e.extra {
		body[k] = v
	}
	writeJSON(w, e.status, body)
}

// decode reads a JSON body strictly: unknown fields and trailing data are
// errors that name the problem.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errorf(400, "invalid_json", "the request needs a JSON body")
		}
		return errorf(400, "invalid_json", "the JSON body is not valid: %v", err)
	}
	if dec.More() {
		return errorf(400, "invalid_json", "the JSON body has data after its end")
	}
	return nil
}

// waitParam parses ?wait=DURATION (0 when absent).
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 || d > maxWait {
		return 0, errorf(400, "invalid_wait", "wait must be a duration such as 30s, above 0 and at most %s, got %q", maxWait, v)
	}
	return d, nil
}

// backendJSON is b as the API shows it.
func backendJSON(b *pool.Backend) v1.Backend {
	j := v1.Backend{
		Name: b.Name(), Address: b.Address(), Version: b.Version(), Weight: b.Weight(),
		State: b.State().String(), Healthy: b.Health() == pool.Up, Health: b.Health().String(),
		Inflight: b.Inflight(), OpenConnections: b.OpenConns(), Requests: b.Requests(), Errors: b.Errors(),
		LastError: b.LastError(),
	}
	if b.State() == pool.Active && j.Healthy {
		j.EffectiveWeight = j.Weight
	}
	return j
}

// poolJSON is p as the API shows it.
func (a *api) poolJSON(p *pool.Pool) v1.Pool {
	j := v1.Pool{Name: p.Name(), StableVersion: p.StableVersion(), Backends: []v1.Backend{}, Lease: leaseJSON(a.ctl.CurrentLease(p.Name()))}
	sw, last := a.ctl.SwitchStatus(p.Name())
	j.Switch, j.LastSwitch = switchJSON(sw), switchOutcomeJSON(last)
	j.Rollout = rolloutJSON(a.ctl.Rollout(p.Name()))
	if v, w := p.Canary(); v != "" {
		j.Canary = &v1.Canary{Version: v, Weight: w, Held: a.ctl.Held(p.Name()), Verdict: "inconclusive",
			Reason: "the judge has not looked at this canary yet"}
		if verdict, reason := a.ctl.Verdict(p.Name()); verdict != "" {
			j.Canary.Verdict, j.Canary.Reason = verdict, reason
		}
	}
	for _, b := range p.Backends() {
		j.Backends = append(j.Backends, backendJSON(b))
	}
	return j
}

func leaseJSON(l *control.Lease) *v1.Lease {
	if l == nil {
		return nil
	}
	return &v1.Lease{Holder: l.Holder, Expires: l.Expires}
}

func switchJSON(sw *control.SwitchState) *v1.Switch {
	if sw == nil {
		return nil
	}
	return &v1.Switch{From: sw.From, To: sw.To, At: sw.At, Until: sw.Until, MaxErrorRate: sw.MaxErrorRate,
		Old: sw.Old, New: sw.New, By: sw.By}
}

func switchOutcomeJSON(o *control.SwitchOutcome) *v1.SwitchOutcome {
	if o == nil {
		return nil
	}
	return &v1.SwitchOutcome{From: o.From, To: o.To, Outcome: o.Outcome, Reason: o.Reason, At: o.At}
}

func rolloutJSON(rr *control.RolloutRecord) *v1.Rollout {
	if rr == nil {
		return nil
	}
	out := &v1.Rollout{From: rr.From, Also: rr.Also, To: rr.To, AfterGone: rr.AfterGone, By: rr.By, Started: rr.Started, Gates: []v1.GateRun{}}
	for _, g := range rr.Gates {
		out.Gates = append(out.Gates, v1.GateRun{Gate: g.Gate, Command: g.Command, State: g.State, At: g.At, Detail: g.Detail})
	}
	return out
}

// versionsJSON is what holds each version of a pool, as the API shows it.
func versionsJSON(pv *control.PoolVersions) v1.PoolVersions {
	out := v1.PoolVersions{Pool: pv.Pool, At: pv.At, StableVersion: pv.StableVersion, CanaryVersion: pv.CanaryVersion,
		AffinityMaxAge: pv.AffinityMaxAge.String(), Versions: []v1.VersionPresence{},
		Clustered: pv.Clustered, ThisInstanceOnly: pv.ThisInstanceOnly}
	if !pv.CountsUnknownUntil.IsZero() {
		u := pv.CountsUnknownUntil
		out.CountsUnknownUntil = &u
	}
	for _, v := range pv.Versions {
		j := v1.VersionPresence{Version: v.Version, Role: v.Role, States: map[string]int{}, Backends: []v1.VersionBackend{},
			Inflight: v.Inflight, OpenConnections: v.Conns, AffinityCookies: v.Cookies.Count(),
			Serving: v.Serving(), Gone: v.Gone(false), Known: v.Known, OthersUncounted: v.OthersUncounted}
		if !v.CountsUnknownUntil.IsZero() {
			u := v.CountsUnknownUntil
			j.CountsUnknownUntil = &u
		}
		if !v.Cookies.Until.IsZero() {
			u := v.Cookies.Until
			j.AffinityUntil = &u
		}
		for _, b := range v.Backends {
			j.States[b.State]++
			j.Backends = append(j.Backends, v1.VersionBackend{Name: b.Name, State: b.State, Healthy: b.Healthy,
				Inflight: b.Inflight, OpenConnections: b.Conns})
		}
		out.Versions = append(out.Versions, j)
	}
	return out
}

func (a *api) register(mux *http.ServeMux) {
	a.route(mux, "/v1/pools", map[string]handlerFunc{"GET": a.listPools})
	a.route(mux, "/v1/pools/{pool}", map[string]handlerFunc{"GET": a.getPool})
	a.route(mux, "/v1/pools/{pool}/backends", map[string]handlerFunc{"POST": a.addBackend})
	a.route(mux, "/v1/pools/{pool}/backends/{name}", map[string]handlerFunc{
		"GET": a.getBackend, "PATCH": a.patchBackend, "DELETE": a.deleteBackend})
	a.route(mux, "/v1/pools/{pool}/backends/{name}/history", map[string]handlerFunc{"GET": a.getBackendHistory})
	a.route(mux, "/v1/pools/{pool}/backends/{name}/drain", map[string]handlerFunc{"POST": a.drain})
	a.route(mux, "/v1/pools/{pool}/backends/{name}/enable", map[string]handlerFunc{"POST": a.enable})
	a.route(mux, "/v1/pools/{pool}/backends/{name}/eject", map[string]handlerFunc{"POST": a.eject})
	a.route(mux, "/v1/pools/{pool}/canary", map[string]handlerFunc{"GET": a.getCanary, "PUT": a.putCanary})
	a.route(mux, "/v1/pools/{pool}/switch", map[string]handlerFunc{"POST": a.switchVersion})
	a.route(mux, "/v1/pools/{pool}/lease", map[string]handlerFunc{"PUT": a.takeLease, "DELETE": a.releaseLease})
	a.route(mux, "/v1/pools/{pool}/history", map[string]handlerFunc{"GET": a.getHistory})
	a.route(mux, "/v1/pools/{pool}/tail", map[string]handlerFunc{"GET": a.getTail})
	a.route(mux, "/v1/pools/{pool}/versions", map[string]handlerFunc{"GET": a.getVersions})
	a.route(mux, "/v1/pools/{pool}/rollout", map[string]handlerFunc{"GET": a.getRollout, "PUT": a.beginRollout})
	a.route(mux, "/v1/pools/{pool}/rollout/gates/{gate}", map[string]handlerFunc{"POST": a.recordGate})
	a.route(mux, "/v1/pools/{pool}/canary/promote", map[string]handlerFunc{"POST": a.promote})
	a.route(mux, "/v1/pools/{pool}/canary/rollback", map[string]handlerFunc{"POST": a.rollback})
	a.route(mux, "/v1/pools/{pool}/canary/hold", map[string]handlerFunc{"POST": a.hold(true)})
	a.route(mux, "/v1/pools/{pool}/canary/resume", map[string]handlerFunc{"POST": a.hold(false)})
	a.route(mux, "/v1/events", map[string]handlerFunc{"GET": a.events})
	a.route(mux, "/v1/cluster", map[string]handlerFunc{"GET": a.getCluster})
	a.route(mux, "/v1/cluster/reset-state", map[string]handlerFunc{"POST": a.resetSharedState})
	a.route(mux, "/v1/upgrade", map[string]handlerFunc{"POST": a.upgradeBaton})
	a.route(mux, "/v1/", map[string]handlerFunc{})
}

func (a *api) pool(r *http.Request) (*pool.Pool, error) {
	name := r.PathValue("pool")
	p := a.ctl.Pool(name)
	if p == nil {
		return nil, fmt.Errorf("%w %q", control.ErrUnknownPool, name)
	}
	return p, nil
}

func (a *api) listPools(r *http.Request, _ string) (int, any, error) {
	out := []v1.Pool{}
	for _, p := range a.ctl.Pools() {
		out = append(out, a.poolJSON(p))
	}
	return 200, out, nil
}

func (a *api) getPool(r *http.Request, _ string) (int, any, error) {
	p, err := a.pool(r)
	if err != nil {
		return 0, nil, err
	}
	return 200, a.poolJSON(p), nil
}

func (a *api) getBackend(r *http.Request, _ string) (int, any, error) {
	b, err := a.ctl.Backend(r.PathValue("pool"), r.PathValue("name"))
	if err != nil {
		return 0, nil, err
	}
	return 200, backendJSON(b), nil
}

func (a *api) addBackend(r *http.Request, actor string) (int, any, error) {
	var body v1.AddBackend
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	_, missing := a.ctl.Backend(r.PathValue("pool"), body.Name)
	b, err := a.ctl.Add(r.PathValue("pool"), control.AddSpec{Name: body.Name, Address: body.Address, Version: body.Version,
		Weight: body.Weight, Standby: body.Standby}, control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	if missing == nil {
		return 200, backendJSON(b), nil // the same add again: it holds
	}
	return 201, backendJSON(b), nil
}

func (a *api) patchBackend(r *http.Request, actor string) (int, any, error) {
	var body v1.PatchBackend
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	if body.Weight == nil && body.Version == nil && body.Address == nil {
		return 0, nil, errorf(400, "invalid_value", "nothing to change: give weight, version or address")
	}
	b, err := a.ctl.Patch(r.PathValue("pool"), r.PathValue("name"), control.PatchSpec{Weight: body.Weight, Version: body.Version, Address: body.Address}, control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, backendJSON(b), nil
}

// waitIdle waits for a draining or removed backend to be idle, up to d. It
// answers 200 when idle and 504 with what is still open otherwise.
//
// In a cluster, idle means idle on every live instance: it then waits for
// each other instance to have applied the decision (revision rev) and to
// report the backend idle, and the 504 names those still busy.
func (a *api) waitIdle(r *http.Request, b *pool.Backend, rev int64, d time.Duration, what string) (int, any, error) {
	ctx, cancel := context.WithTimeout(r.Context(), d)
	defer cancel()
	st, err := b.WaitDrained(ctx)
	if errors.Is(err, pool.ErrDrainCancelled) {
		return 0, nil, &apiError{status: 409, code: "drain_cancelled",
			msg: fmt.Sprintf("%s of %s was cancelled: the backend is %s now", what, b.Name(), b.State())}
	}
	if err != nil {
		return 0, nil, &apiError{status: 504, code: "wait_timeout",
			msg:   fmt.Sprintf("%s of %s is still waiting after %s: %s; it stays in force", what, b.Name(), d, st),
			extra: map[string]any{"inflight": st.Inflight, "open_connections": st.Conns}}
	}
	if !a.ctl.Clustered() {
		return 200, backendJSON(b), nil
	}
	busy, err := a.waitElsewhere(ctx, b, rev)
	if err != nil {
		msg := fmt.Sprintf("%s of %s is done here but still waiting after %s on other instances: %s; it stays in force", what, b.Name(), d, strings.Join(busy, ", "))
		if len(busy) == 0 {
			msg = fmt.Sprintf("%s of %s is done here, but after %s the other instances' load could not be read: %v; it stays in force", what, b.Name(), d, err)
		}
		return 0, nil, &apiError{status: 504, code: "wait_timeout", msg: msg,
			extra: map[string]any{"inflight": 0, "open_connections": 0, "busy_instances": busy}}
	}
	return 200, backendJSON(b), nil
}

// waitElsewhere polls the other instances' reports until none is busy
// with b, or ctx ends; it returns those still busy then, and ctx's error
// (or the last one reading etcd).
func (a *api) waitElsewhere(ctx context.Context, b *pool.Backend, rev int64) ([]string, error) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var last error
	var busy []string
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		now, err := a.ctl.BusyElsewhere(qctx, b.Pool().Name(), b.Name(), rev)
		cancel()
		if err == nil && len(now) == 0 {
			return nil, nil
		}
		if err != nil {
			last = err
		} else {
			busy, last = now, nil
		}
		select {
		case <-ctx.Done():
			if last != nil && len(busy) == 0 {
				return nil, last
			}
			return busy, ctx.Err()
		case <-t.C:
		}
	}
}

func (a *api) getCluster(r *http.Request, _ string) (int, any, error) {
	out := v1.Cluster{Clustered: a.ctl.Clustered(), Instances: []v1.ClusterInstance{}}
	st, err := a.ctl.Cluster(r.Context())
	if st == nil {
		return 200, out, nil
	}
	out.Instance, out.AppliedRevision, out.JudgeLeader, out.Leading = st.Instance, st.Applied, st.JudgeLeader, st.Leading
	out.SharedStateError = st.Unreadable
	for _, in := range st.Instances {
		out.Instances = append(out.Instances, v1.ClusterInstance{Name: in.Name, PID: in.PID, Heartbeat: in.Heartbeat,
			AppliedRevision: in.Applied, Self: in.Self})
	}
	if err != nil {
		out.Error = err.Error()
		return 503, out, nil
	}
	return 200, out, nil
}

func (a *api) resetSharedState(r *http.Request, actor string) (int, any, error) {
	rev, err := a.ctl.ResetSharedState(control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, v1.ClusterReset{Revision: rev}, nil
}

func (a *api) drain(r *http.Request, actor string) (int, any, error) {
	wait, err := waitParam(r)
	if err != nil {
		return 0, nil, err
	}
	b, err := a.ctl.Drain(r.PathValue("pool"), r.PathValue("name"), control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	rev := a.ctl.SharedRevision()
	if wait == 0 {
		if b.State() == pool.Drained {
			return 200, backendJSON(b), nil
		}
		return 202, backendJSON(b), nil
	}
	return a.waitIdle(r, b, rev, wait, "the drain")
}

func (a *api) deleteBackend(r *http.Request, actor string) (int, any, error) {
	wait, err := waitParam(r)
	if err != nil {
		return 0, nil, err
	}
	b, err := a.ctl.Remove(r.PathValue("pool"), r.PathValue("name"), control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	rev := a.ctl.SharedRevision()
	if wait == 0 {
		return 202, backendJSON(b), nil
	}
	return a.waitIdle(r, b, rev, wait, "the removal")
}

func (a *api) enable(r *http.Request, actor string) (int, any, error) {
	var body v1.EnableBackend
	if r.ContentLength != 0 {
		if err := decode(r, &body); err != nil {
			return 0, nil, err
		}
	}
	b, err := a.ctl.Enable(r.PathValue("pool"), r.PathValue("name"), control.EnableSpec{Version: body.Version, Weight: body.Weight}, control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, backendJSON(b), nil
}

func (a *api) eject(r *http.Request, actor string) (int, any, error) {
	b, err := a.ctl.Eject(r.PathValue("pool"), r.PathValue("name"), control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, backendJSON(b), nil
}

func (a *api) getCanary(r *http.Request, _ string) (int, any, error) {
	rep, err := a.ctl.Canary(r.PathValue("pool"))
	if err != nil {
		return 0, nil, err
	}
	return 200, rep, nil
}

func (a *api) getBackendHistory(r *http.Request, _ string) (int, any, error) {
	h, err := a.ctl.BackendHistory(r.PathValue("pool"), r.PathValue("name"))
	if err != nil {
		return 0, nil, err
	}
	return 200, h, nil
}

func (a *api) getHistory(r *http.Request, _ string) (int, any, error) {
	h, err := a.ctl.History(r.PathValue("pool"))
	if err != nil {
		return 0, nil, err
	}
	return 200, h, nil
}

func (a *api) getVersions(r *http.Request, _ string) (int, any, error) {
	// ?version=V (repeatable) lists V even when absent, with whether
	// baton ever saw it: a client asks about the version it waits for.
	versions := a.ctl.Versions
	switch v := r.URL.Query().Get("this_instance_only"); v {
	case "", "false":
	case "true":
		versions = a.ctl.VersionsHere
	default:
		return 0, nil, errorf(400, "invalid_parameter", "this_instance_only must be true or false, got %q", v)
	}
	pv, err := versions(r.PathValue("pool"), r.URL.Query()["version"]...)
	if err != nil {
		return 0, nil, err
	}
	return 200, versionsJSON(pv), nil
}

func (a *api) getRollout(r *http.Request, _ string) (int, any, error) {
	if _, err := a.pool(r); err != nil {
		return 0, nil, err
	}
	rr := a.ctl.Rollout(r.PathValue("pool"))
	if rr == nil {
		return 0, nil, errorf(404, "no_rollout", "pool %s has no rollout recorded", r.PathValue("pool"))
	}
	return 200, rolloutJSON(rr), nil
}

func (a *api) beginRollout(r *http.Request, actor string) (int, any, error) {
	var body v1.BeginRollout
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	opts := []control.Opt{control.By(actor)}
	if body.AfterGone {
		opts = append(opts, control.WithAfterGone())
	}
	if body.Replace {
		opts = append(opts, control.ReplaceUnfinished())
	}
	rec, err := a.ctl.BeginRollout(r.PathValue("pool"), body.Holder, body.From, body.To, opts...)
	if err != nil {
		return 0, nil, err
	}
	return 200, rolloutJSON(&rec), nil
}

func (a *api) recordGate(r *http.Request, actor string) (int, any, error) {
	var body v1.RecordGate
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	rec, err := a.ctl.RecordGate(r.PathValue("pool"), control.GateSpec{Holder: body.Holder, To: body.To, Gate: r.PathValue("gate"),
		State: body.State, Command: body.Command, Detail: body.Detail, ThisInstanceOnly: body.ThisInstanceOnly}, control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, rolloutJSON(&rec), nil
}

func (a *api) switchVersion(r *http.Request, actor string) (int, any, error) {
	var body v1.StartSwitch
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	spec := control.SwitchSpec{To: body.To, MaxErrorRate: body.MaxErrorRate}
	if body.Watch != "" {
		d, err := time.ParseDuration(body.Watch)
		if err != nil {
			return 0, nil, errorf(400, "invalid_value", "watch must be a duration such as 60s, got %q", body.Watch)
		}
		spec.Watch = d
	}
	if _, err := a.ctl.Switch(r.PathValue("pool"), spec, control.By(actor)); err != nil {
		return 0, nil, err
	}
	p, err := a.pool(r)
	if err != nil {
		return 0, nil, err
	}
	return 200, a.poolJSON(p), nil
}

// upgradeBaton starts the baton binary again (a new version, installed at
// the same path) and hands it the listening sockets; it answers once the new
// process serves, or with why it did not start (this one keeps serving).
func (a *api) upgradeBaton(r *http.Request, actor string) (int, any, error) {
	if a.upgrade == nil {
		return 0, nil, errorf(409, "conflict", "this baton cannot hand over its sockets (it was not started by baton serve)")
	}
	a.log.Info().Str("actor", actor).Msg("upgrade of baton asked for")
	if err := a.upgrade(actor); err != nil {
		if errors.Is(err, control.ErrUpgrading) {
			return 0, nil, err
		}
		return 0, nil, errorf(500, "upgrade_failed", "%v", err)
	}
	return 200, v1.Upgraded{Upgraded: true,
		Message: "a new baton process serves the listeners; this one finishes its requests in flight and exits"}, nil
}

func (a *api) takeLease(r *http.Request, actor string) (int, any, error) {
	var body v1.TakeLease
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	ttl, err := time.ParseDuration(body.TTL)
	if err != nil {
		return 0, nil, errorf(400, "invalid_value", "ttl must be a duration such as 30s, got %q", body.TTL)
	}
	l, err := a.ctl.TakeLease(r.PathValue("pool"), body.Holder, ttl, control.By(actor))
	if err != nil {
		return 0, nil, err
	}
	return 200, leaseJSON(&l), nil
}

func (a *api) releaseLease(r *http.Request, actor string) (int, any, error) {
	holder := r.URL.Query().Get("holder")
	if holder == "" {
		return 0, nil, errorf(400, "invalid_value", "give the lease's holder: ?holder=NAME")
	}
	if err := a.ctl.ReleaseLease(r.PathValue("pool"), holder, control.By(actor)); err != nil {
		return 0, nil, err
	}
	return 200, map[string]any{}, nil
}

func (a *api) putCanary(r *http.Request, actor string) (int, any, error) {
	var body v1.SetCanary
	if err := decode(r, &body); err != nil {
		return 0, nil, err
	}
	if body.Version == "" || body.Weight == nil {
		return 0, nil, errorf(400, "invalid_value", "give both version and weight (percent, 0-100)")
	}
	if err := a.ctl.SetCanary(r.PathValue("pool"), body.Version, *body.Weight, control.By(actor)); err != nil {
		return 0, nil, err
	}
	return a.getCanary(r, actor)
}

func (a *api) promote(r *http.Request, actor string) (int, any, error) {
	if err := a.ctl.Promote(r.PathValue("pool"), control.By(actor)); err != nil {
		return 0, nil, err
	}
	return a.getCanary(r, actor)
}

func (a *api) rollback(r *http.Request, actor string) (int, any, error) {
	if err := a.ctl.Rollback(r.PathValue("pool"), control.By(actor)); err != nil {
		return 0, nil, err
	}
	return a.getCanary(r, actor)
}

func (a *api) hold(on bool) handlerFunc {
	return func(r *http.Request, actor string) (int, any, error) {
		if err := a.ctl.Hold(r.PathValue("pool"), on, control.By(actor)); err != nil {
			return 0, nil, err
		}
		return a.getCanary(r, actor)
	}
}

func (a *api) events(r *http.Request, _ string) (int, any, error) {
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return 0, nil, errorf(400, "invalid_value", "limit must be 1..1000, got %q", v)
		}
		limit = n
	}
	var refused bool
	switch v := r.URL.Query().Get("refused"); v {
	case "", "false":
	case "true":
		refused = true
	default:
		return 0, nil, errorf(400, "invalid_value", "refused must be true or false, got %q", v)
	}
	return 200, a.ctl.Events(limit, refused), nil
}
