// Package v1 is the admin API's contract: the JSON bodies of the requests
// and responses under /v1, shared by the server (package admin) and its
// clients (admin/client, baton ctl, baton rollout, baton demo), so the
// contract is written once. The server's domain types (package control)
// carry no JSON of their own: the admin edge converts them to these, and
// the state file has its own private records, so the API, the file and
// the domain can each grow a field without changing the others.
package v1

import (
	"fmt"
	"time"
)

// Codes of the 409 refusals (the "code" beside "error"): what a client
// branches on, never the message.
const (
	CodeLeaseHeld           = "lease_held"            // another holder's lease is running
	CodeLeaseNotHeld        = "lease_not_held"        // releasing a lease someone else holds
	CodeNoCanary            = "no_canary"             // promote with no canary
	CodeCanaryRunning       = "canary_running"        // another canary, or a switch while one runs
	CodeSwitchRunning       = "switch_running"        // a switch is being watched
	CodeAlreadyStable       = "already_stable"        // the version is the stable one
	CodeVersionNotRunning   = "version_not_running"   // no backend runs the version
	CodeBackendExists       = "backend_exists"        // a backend of that name is there
	CodeAddressInUse        = "address_in_use"        // another backend has the address
	CodeNotHealthy          = "not_healthy"           // the version's backends are not all healthy
	CodeStateChanged        = "state_changed"         // another baton of the cluster changed the state first
	CodeNotClustered        = "not_clustered"         // a cluster action on a baton alone
	CodeSharedStateReadable = "shared_state_readable" // reset-state of a shared state that reads
	CodeVerdictOvertaken    = "verdict_overtaken"     // the judge's action after a decision changed the pool (logged, not answered)
	CodeNoRollout           = "no_rollout"            // a gate reported for a rollout baton has no record of
	CodeGateDone            = "gate_done"             // a migration gate that ran already: it is not run twice
	CodeVersionPresent      = "version_present"       // the after_gone gate while the version it waits for is not gone
	CodeVersionRetired      = "version_retired"       // a version a rollout's after_gone gate retired, put back in rotation
	CodeRolloutUnfinished   = "rollout_unfinished"    // a new rollout over one whose after_gone gate has not run (replace: true overrides)
)

// Backend is a backend as the API shows it.
type Backend struct {
	Name            string `json:"name"`
	Address         string `json:"address"`
	Version         string `json:"version"`
	Weight          int    `json:"weight"`
	EffectiveWeight int    `json:"effective_weight"`
	State           string `json:"state"`
	Healthy         bool   `json:"healthy"`
	Health          string `json:"health"`
	Inflight        int64  `json:"inflight"`
	OpenConnections int    `json:"open_connections"`
	Requests        uint64 `json:"requests"`
	Errors          uint64 `json:"errors"`
	LastError       string `json:"last_error,omitempty"`
}

// Pool is a pool as the API shows it.
type Pool struct {
	Name          string    `json:"name"`
	StableVersion string    `json:"stable_version"`
	Canary        *Canary   `json:"canary"`
	Backends      []Backend `json:"backends"`
	// Lease: the release under way (baton rollout), if any.
	Lease *Lease `json:"lease,omitempty"`
	// Switch: a blue/green switch being watched; LastSwitch: how the last
	// one ended.
	Switch     *Switch        `json:"switch,omitempty"`
	LastSwitch *SwitchOutcome `json:"last_switch,omitempty"`
	// Rollout: the last release by baton rollout, with its gates.
	Rollout *Rollout `json:"rollout,omitempty"`
}

// Canary is a pool's canary in a pool listing.
type Canary struct {
	Version string  `json:"version"`
	Weight  float64 `json:"weight"`
	Held    bool    `json:"held"`
	Verdict string  `json:"verdict"`
	Reason  string  `json:"reason,omitempty"`
}

// Lease is a release's lock on a pool: who holds it and until when.
type Lease struct {
	Holder  string    `json:"holder"`
	Expires time.Time `json:"expires"`
}

// Switch is a blue/green switch whose guards are being watched.
type Switch struct {
	From         string    `json:"from"`
	To           string    `json:"to"`
	At           time.Time `json:"at"`
	Until        time.Time `json:"until"`
	MaxErrorRate float64   `json:"max_error_rate"`
	Old          []string  `json:"old"` // the From backends the switch drained
	New          []string  `json:"new"` // the To backends it activated
	By           string    `json:"by"`
}

// SwitchOutcome is how the last switch ended: done, switched_back or kept,
// with the guard that fired.
type SwitchOutcome struct {
	From    string    `json:"from"`
	To      string    `json:"to"`
	Outcome string    `json:"outcome"`
	Reason  string    `json:"reason,omitempty"`
	At      time.Time `json:"at"`
}

// Upgraded answers POST /v1/upgrade.
type Upgraded struct {
	Upgraded bool   `json:"upgraded"`
	Message  string `json:"message"`
}

// AddBackend is the body of POST /v1/pools/{pool}/backends.
type AddBackend struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Version string `json:"version,omitempty"`
	Weight  *int   `json:"weight,omitempty"`
	Standby bool   `json:"standby,omitempty"`
}

// PatchBackend is the body of PATCH /v1/pools/{pool}/backends/{name}: nil
// fields stay.
type PatchBackend struct {
	Weight  *int    `json:"weight,omitempty"`
	Version *string `json:"version,omitempty"`
	Address *string `json:"address,omitempty"`
}

// EnableBackend is the optional body of POST …/backends/{name}/enable.
type EnableBackend struct {
	Version string `json:"version,omitempty"`
	Weight  *int   `json:"weight,omitempty"`
}

// SetCanary is the body of PUT /v1/pools/{pool}/canary.
type SetCanary struct {
	Version string   `json:"version"`
	Weight  *float64 `json:"weight"`
}

// StartSwitch is the body of POST /v1/pools/{pool}/switch.
type StartSwitch struct {
	To           string  `json:"to"`
	Watch        string  `json:"watch,omitempty"` // a duration such as 60s
	MaxErrorRate float64 `json:"max_error_rate,omitempty"`
}

// TakeLease is the body of PUT /v1/pools/{pool}/lease.
type TakeLease struct {
	Holder string `json:"holder"`
	TTL    string `json:"ttl"` // a duration such as 30s
}

// Cluster is GET /v1/cluster: the batons sharing decisions through etcd,
// as this one sees them.
type Cluster struct {
	// Clustered is false for a baton alone on its state file; the rest
	// is then empty.
	Clustered bool `json:"clustered"`
	// Instance is the answering baton's name; AppliedRevision the
	// revision of the desired state it runs.
	Instance        string            `json:"instance,omitempty"`
	AppliedRevision int64             `json:"applied_revision"`
	Instances       []ClusterInstance `json:"instances"`
	// JudgeLeader is the instance whose judge acts ("" while none);
	// Leading whether it is the answering one.
	JudgeLeader string `json:"judge_leader"`
	Leading     bool   `json:"leading"`
	// Error says why etcd could not be read (with status 503).
	Error string `json:"error,omitempty"`
	// SharedStateError says why the shared state in etcd cannot be used
	// by the answering baton, which then serves with the last one it
	// applied and refuses decisions (see POST /v1/cluster/reset-state).
	SharedStateError string `json:"shared_state_error,omitempty"`
}

// ClusterReset is the answer to POST /v1/cluster/reset-state: the
// revision of the shared state written.
type ClusterReset struct {
	Revision int64 `json:"revision"`
}

// ClusterInstance is one live baton process of the cluster.
type ClusterInstance struct {
	Name            string    `json:"name"`
	PID             int       `json:"pid"`
	Heartbeat       time.Time `json:"heartbeat"`
	AppliedRevision int64     `json:"applied_revision"`
	Self            bool      `json:"self,omitempty"`
}

// TailRecord is one request of GET /v1/pools/{pool}/tail: an SSE event
// "request" (its id is Seq), or a line of newline-delimited JSON with Type
// "request".
type TailRecord struct {
	Type       string    `json:"type"` // "request"
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	Backend    string    `json:"backend"`
	Version    string    `json:"version"`
	Method     string    `json:"method"`
	Path       string    `json:"path"` // without the query unless tail.keep_query
	Status     int       `json:"status"`
	Outcome    string    `json:"outcome"` // ok, server_error, timeout, reset, client_gone, …
	Failed     bool      `json:"failed"`
	Slow       bool      `json:"slow,omitempty"` // at or over the tail's slow threshold
	DurationMS float64   `json:"duration_ms"`
	TTFBMS     float64   `json:"ttfb_ms"`
	Bytes      int64     `json:"bytes"`
	// Signature is a failure's error signature; SignatureClass its class
	// in the current canary's comparison (new, elevated, known), empty
	// when no canary judges it.
	Signature      string `json:"signature,omitempty"`
	SignatureClass string `json:"signature_class,omitempty"`
	AppCode        string `json:"app_code,omitempty"`
	Body           string `json:"body,omitempty"` // the start of a failed response's body
}

// TailNotice is what a tail says besides requests: "gap" first when
// records after the one asked for are no longer kept (the tail goes on);
// and, ending it, "dropped" when baton stopped sending because the reader
// fell behind, "closing" when baton shuts down, "removed" when the pool
// left the config, "revoked" when its token is no longer accepted;
// "heartbeat" now and then on an idle tail (newline-delimited JSON only;
// SSE gets a comment). SSE sends it as an event of its Type.
type TailNotice struct {
	Type    string    `json:"type"`
	Time    time.Time `json:"time"`
	Message string    `json:"message,omitempty"`
	LastSeq uint64    `json:"last_seq,omitempty"` // the last record sent: resume after it with ?since=
}

// PoolVersions is GET /v1/pools/{pool}/versions: every version present
// in the pool and what still holds it.
type PoolVersions struct {
	Pool          string    `json:"pool"`
	At            time.Time `json:"at"` // when baton looked: compare affinity_until with it
	StableVersion string    `json:"stable_version"`
	CanaryVersion string    `json:"canary_version,omitempty"`
	// AffinityMaxAge is how long a cookie given now pins its client
	// (a duration such as 1h0m0s).
	AffinityMaxAge string `json:"affinity_max_age"`
	// CountsUnknownUntil: this baton could not restore the affinity
	// cookies' counts at its start (see the cascade section of the
	// README), so every version counts as pinned by cookies until then.
	CountsUnknownUntil *time.Time `json:"counts_unknown_until,omitempty"`
	// Clustered: this baton shares decisions with others through etcd,
	// and each counts only its own requests and cookies, so no version is
	// gone by one baton's figures unless ThisInstanceOnly was asked
	// (?this_instance_only=true): ask every instance.
	Clustered        bool              `json:"clustered,omitempty"`
	ThisInstanceOnly bool              `json:"this_instance_only,omitempty"`
	Versions         []VersionPresence `json:"versions"`
}

// VersionPresence is one version of a pool and what still holds it.
type VersionPresence struct {
	Version string `json:"version"`
	Role    string `json:"role,omitempty"` // stable, canary
	// States counts the version's backends by state: active, draining,
	// drained, ejected, removed (removed at runtime, still finishing).
	States   map[string]int   `json:"states"`
	Backends []VersionBackend `json:"backends"`
	Inflight int64            `json:"inflight"`
	// OpenConnections are baton's connections to its backends.
	OpenConnections int `json:"open_connections"`
	// AffinityCookies counts the cookies issued for it that may still be
	// valid (an upper bound); AffinityUntil is when the last expires.
	AffinityCookies int64      `json:"affinity_cookies"`
	AffinityUntil   *time.Time `json:"affinity_until,omitempty"`
	// Serving: a backend in rotation (active) runs it, or a request or a
	// connection to one is still open.
	Serving bool `json:"serving"`
	// Known: baton has seen the version in the pool. A version asked for
	// (?version=) that it never saw is listed with known false and gone
	// false: it cannot tell a typo from a version long gone.
	Known bool `json:"known"`
	// Gone: known, neither stable nor canary, not serving, and no
	// affinity cookie of it can still be valid (nor can the counts be
	// unknown).
	Gone bool `json:"gone"`
	// CountsUnknownUntil: as PoolVersions.CountsUnknownUntil.
	CountsUnknownUntil *time.Time `json:"counts_unknown_until,omitempty"`
	// OthersUncounted: in a cluster, the other batons' requests and
	// cookies are not in these figures, so it is not gone by them.
	OthersUncounted bool `json:"others_uncounted,omitempty"`
}

// VersionBackend is one backend of a version.
type VersionBackend struct {
	Name            string `json:"name"`
	State           string `json:"state"`
	Healthy         bool   `json:"healthy"`
	Inflight        int64  `json:"inflight"`
	OpenConnections int    `json:"open_connections"`
}

// Find returns the named version, or nil when it is not present.
func (pv *PoolVersions) Find(version string) *VersionPresence {
	for i := range pv.Versions {
		if pv.Versions[i].Version == version {
			return &pv.Versions[i]
		}
	}
	return nil
}

// HeldBy says what still holds the version, one phrase each ("web-2
// active (1 in flight, 1 open connection)", "12 affinity cookies valid
// until 10:42:03"), in loc's time; none when it is gone (ignoring
// affinity cookies when asked to). A version baton never saw is held by
// that alone: callers that accept it check Known first.
func (v *VersionPresence) HeldBy(ignoreAffinity bool, loc *time.Location) []string {
	var out []string
	for _, b := range v.Backends {
		if b.State != "active" && b.Inflight == 0 && b.OpenConnections == 0 {
			continue // out of rotation and idle: it holds nothing
		}
		phrase := b.Name + " " + b.State
		if b.State == "active" && !b.Healthy {
			phrase += ", unhealthy"
		}
		if b.Inflight > 0 || b.OpenConnections > 0 {
			phrase += fmt.Sprintf(" (%s in flight, %s)", plural(b.Inflight, "request", "requests"), plural(int64(b.OpenConnections), "open connection", "open connections"))
		}
		out = append(out, phrase)
	}
	if v.Role != "" {
		out = append(out, "it is the pool's "+v.Role+" version")
	}
	if !v.Known {
		out = append(out, "baton has never seen it in this pool")
	}
	if v.OthersUncounted {
		out = append(out, "the other batons of the cluster are not counted by this one (check each with --this-instance-only)")
	}
	if !ignoreAffinity && v.CountsUnknownUntil != nil {
		out = append(out, "affinity cookie counts unknown until "+v.CountsUnknownUntil.In(loc).Format(time.TimeOnly)+" (baton restarted without them)")
	}
	if !ignoreAffinity && v.AffinityCookies > 0 {
		phrase := plural(v.AffinityCookies, "affinity cookie", "affinity cookies")
		if v.AffinityUntil != nil {
			phrase += " valid until " + v.AffinityUntil.In(loc).Format(time.TimeOnly)
		}
		out = append(out, phrase)
	}
	return out
}

func plural(n int64, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Rollout is a pool's release by baton rollout as baton records it: the
// version it replaces and the migration gates it ran.
type Rollout struct {
	From string `json:"from"`
	// Also are the other versions present when it began (servers not yet
	// upgraded by an earlier release, say): the after_gone gate waits
	// for them as for From.
	Also []string `json:"also,omitempty"`
	To   string   `json:"to"`
	// AfterGone: the rollout has an after_gone gate to run.
	AfterGone bool      `json:"after_gone,omitempty"`
	By        string    `json:"by"`
	Started   time.Time `json:"started"`
	Gates     []GateRun `json:"gates"`
}

// GateRun is one migration gate of a rollout: before (expand, before the
// first server is drained) or after_gone (contract, once the old version
// is gone); state running, done or failed.
type GateRun struct {
	Gate    string    `json:"gate"`
	Command string    `json:"command"`
	State   string    `json:"state"`
	At      time.Time `json:"at"`
	Detail  string    `json:"detail,omitempty"`
}

// Gate returns the named gate's run, or nil.
func (r *Rollout) Gate(gate string) *GateRun {
	for i := range r.Gates {
		if r.Gates[i].Gate == gate {
			return &r.Gates[i]
		}
	}
	return nil
}

// BeginRollout is the body of PUT /v1/pools/{pool}/rollout.
type BeginRollout struct {
	Holder string `json:"holder"` // must hold the pool's lease
	From   string `json:"from"`
	To     string `json:"to"`
	// AfterGone: the rollout has an after_gone gate; until it is done
	// another rollout does not replace the record unless Replace.
	AfterGone bool `json:"after_gone,omitempty"`
	Replace   bool `json:"replace,omitempty"`
}

// RecordGate is the body of POST /v1/pools/{pool}/rollout/gates/{gate}.
type RecordGate struct {
	Holder  string `json:"holder"`
	To      string `json:"to"`
	State   string `json:"state"`
	Command string `json:"command"`
	Detail  string `json:"detail,omitempty"`
	// ThisInstanceOnly: in a cluster, the after_gone gate's check judges
	// by this baton's figures alone (the caller has checked the others).
	ThisInstanceOnly bool `json:"this_instance_only,omitempty"`
}
