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
	// Refused, when set, says why the change asked for was not made (the
	// API's answer); such an event changed nothing.
	Refused string `json:"refused,omitempty"`
}

// maxEvents bounds each of the audit logs kept in memory (changes, and
// refused requests apart, so that a flood of refusals cannot push changes
// out); every event is also written to baton's log and to the audit file.
const maxEvents = 1000

// recordLocked appends ev to the audit log and writes it to the log and
// the audit file.
func (r *Registry) recordLocked(ev Event) {
	ev.Time = time.Now().UTC()
	ev.Clean()
	if ev.Refused != "" {
		r.refusals = appendEvent(r.refusals, ev)
		r.refusedFile.write(ev, r.log)
	} else {
		r.events = appendEvent(r.events, ev)
		r.auditFile.write(ev, r.log)
	}
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
	if ev.Refused != "" {
		e.Str("refused", ev.Refused).Msg("request refused")
		return
	}
	e.Msg("change applied")
}

func appendEvent(list []Event, ev Event) []Event {
	if len(list) == maxEvents {
		copy(list, list[1:])
		list = list[:maxEvents-1]
	}
	return append(list, ev)
}

// Audit records an event that is not a change made through the registry:
// a refused request (its refusal in Refused), an upgrade of baton itself.
func (r *Registry) Audit(ev Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recordLocked(ev)
}

// Events returns up to limit audit events, newest first (all when limit ≤
// 0): the changes, or with refused the refused requests.
func (r *Registry) Events(limit int, refused bool) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.events
	if refused {
		list = r.refusals
	}
	n := len(list)
	if limit > 0 && limit < n {
		n = limit
	}
	out := make([]Event, 0, n)
	for i := len(list) - 1; i >= 0 && len(out) < n; i-- {
		out = append(out, list[i])
	}
	return out
}
