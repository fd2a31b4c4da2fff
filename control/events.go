package control

import "time"

// Event is one change, for the audit log: who asked, what, and when.
type Event struct {
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	Pool    string    `json:"pool,omitempty"`
	Backend string    `json:"backend,omitempty"`
	Detail  string    `json:"detail,omitempty"`
}

// maxEvents bounds the audit log kept in memory; every event is also
// written to baton's log.
const maxEvents = 1000

// recordLocked appends ev to the audit log and writes it to the log.
func (r *Registry) recordLocked(ev Event) {
	ev.Time = time.Now().UTC()
	if len(r.events) == maxEvents {
		copy(r.events, r.events[1:])
		r.events = r.events[:maxEvents-1]
	}
	r.events = append(r.events, ev)
	e := r.log.Info().Str("actor", ev.Actor).Str("action", ev.Action)
	if ev.Pool != "" {
		e = e.Str("pool", ev.Pool)
	}
	if ev.Backend != "" {
		e = e.Str("backend", ev.Backend)
	}
	if ev.Detail != "" {
		e = e.Str("detail", ev.Detail)
	}
	e.Msg("change applied")
}

// Events returns up to limit audit events, newest first (all when limit ≤ 0).
func (r *Registry) Events(limit int) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := len(r.events)
	if limit > 0 && limit < n {
		n = limit
	}
	out := make([]Event, 0, n)
	for i := len(r.events) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, r.events[i])
	}
	return out
}
