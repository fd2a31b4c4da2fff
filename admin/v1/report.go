package v1

import "time"

// CanaryReport answers GET /v1/pools/{pool}/canary: the pool's versions
// compared since its canary started (or since baton started, without a
// canary), with the judge's verdict.
type CanaryReport struct {
	Pool          string    `json:"pool"`
	StableVersion string    `json:"stable_version"`
	CanaryVersion string    `json:"canary_version,omitempty"`
	Weight        float64   `json:"weight"`
	Held          bool      `json:"held"`
	Since         time.Time `json:"since"`

	// The judge, while a canary runs.
	Verdict   string     `json:"verdict,omitempty"`
	Rule      string     `json:"rule,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Figures   []Finding  `json:"figures,omitempty"`
	VerdictAt *time.Time `json:"verdict_at,omitempty"`
	// Step is the position of the current share in Steps (1-based; 0: not
	// on a step).
	Step         int       `json:"step"`
	Steps        []float64 `json:"steps"`
	AutoPromote  bool      `json:"auto_promote"`
	AutoRollback bool      `json:"auto_rollback"`
	DryRun       bool      `json:"dry_run"`

	Versions   []VersionReport   `json:"versions"`
	Signatures []SignatureReport `json:"signatures"`
	// Evidence says what the tables could not keep apart.
	Evidence EvidenceReport `json:"evidence"`

	// Previous is the last verdict on the pool's previous canary, once it
	// was promoted or rolled back: why it ended.
	Previous *PreviousCanary `json:"previous,omitempty"`
}

// Finding is one figure behind a verdict: the rule and what it measured.
type Finding struct {
	Rule   string `json:"rule"`
	Detail string `json:"detail"`
}

// VersionReport is one version's figures over the comparison window.
type VersionReport struct {
	Version   string   `json:"version"`
	Role      string   `json:"role"` // stable, canary, rolled_back, or previous (not yet upgraded)
	Requests  uint64   `json:"requests"`
	Errors    uint64   `json:"errors"`
	ErrorRate float64  `json:"error_rate"`
	P50ms     *float64 `json:"p50_ms"`
	P90ms     *float64 `json:"p90_ms"`
	P99ms     *float64 `json:"p99_ms"`
}

// SignatureReport is one kind of failure over the comparison window.
type SignatureReport struct {
	Key string `json:"key"`
	// Class: new (the canary has it, stable never did), elevated (the
	// canary has it significantly more often), known (comparable rates: a
	// caveat of the old version, which never fails a release).
	Class        string            `json:"class"`
	Counts       map[string]uint64 `json:"counts"`
	FailsRelease bool              `json:"fails_release"`
	Example      *Example          `json:"example,omitempty"`
}

// Example is one occurrence of a signature.
type Example struct {
	Time    time.Time `json:"time"`
	Version string    `json:"version"`
	Path    string    `json:"path"`
	Status  int       `json:"status"`
	Body    string    `json:"body,omitempty"`
}

// EvidenceReport is what the current canary's evidence tables had no room
// for: requests of paths past the 16 automatic route groups (counted in
// "other"), failures past the 256 signatures (counted in "other"), and
// what the judge left out for being over one client's share
// (judge.max_client_share).
type EvidenceReport struct {
	RouteGroupsFolded       uint64 `json:"route_groups_folded"`
	SignaturesFolded        uint64 `json:"signatures_folded"`
	ClientDiscardedRequests uint64 `json:"client_discarded_requests"`
	ClientDiscardedFailures uint64 `json:"client_discarded_failures"`
	// In a cluster: the baton processes ("INSTANCE/PROCESS") whose
	// evidence the verdict pooled, and the judge leader that reached it.
	Instances []string `json:"instances,omitempty"`
	JudgedBy  string   `json:"judged_by,omitempty"`
}

// PreviousCanary is how the pool's last canary ended.
type PreviousCanary struct {
	Version string `json:"version"`
	Stable  string `json:"stable,omitempty"` // the stable version it was compared with
	// Outcome is promoted or rolled_back; empty when the canary ended
	// otherwise (its backends drained or removed, or the file changed).
	Outcome string `json:"outcome,omitempty"`
	By      string `json:"by,omitempty"` // who promoted or rolled back: judge, or the token's name
	// The judge's last verdict on it; empty verdict when it had none.
	Verdict    string            `json:"verdict"`
	Rule       string            `json:"rule"`
	Reason     string            `json:"reason"`
	At         time.Time         `json:"at"` // when it ended, or the verdict's time when it ended otherwise
	Signatures []SignatureReport `json:"signatures"`
}
