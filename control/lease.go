package control

import (
	"github.com/baton-lb/baton/admin/v1"

	"fmt"
	"time"
)

// Lease is a pool's release lock: whoever holds it is releasing the pool
// (baton rollout), and a second release is refused until it ends or the
// lease runs out. It is a lock, not a decision: admin actions are not
// blocked by it, so a person can always step in.
type Lease struct {
	Holder  string
	Expires time.Time
}

// Lease bounds.
const (
	minLeaseTTL     = time.Second
	maxLeaseTTL     = 10 * time.Minute
	maxLeaseHolder  = 200
	leaseTimeFormat = time.RFC3339
)

// TakeLease gives pool's lease to holder for ttl, or renews it when holder
// has it already. It is refused (ErrConflict) while another holder's lease
// runs. The lease is persisted like a decision, so a restart of baton does
// not let a second release in.
func (r *Registry) TakeLease(poolName, holder string, ttl time.Duration, opts ...Opt) (Lease, error) {
	if holder == "" || len(holder) > maxLeaseHolder {
		return Lease{}, fmt.Errorf("%w: holder must be 1..%d characters, got %d", ErrInvalid, maxLeaseHolder, len(holder))
	}
	if ttl < minLeaseTTL || ttl > maxLeaseTTL {
		return Lease{}, fmt.Errorf("%w: ttl must be %s..%s, got %s", ErrInvalid, minLeaseTTL, maxLeaseTTL, ttl)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, err := r.lookupLocked(poolName, ""); err != nil {
		return Lease{}, err
	}
	now := time.Now()
	cur := r.leaseLocked(poolName, now)
	if cur != nil && cur.Holder != holder {
		return Lease{}, conflictf(v1.CodeLeaseHeld, "pool %q is being released by %s (its lease runs until %s); wait until it ends, or until the lease runs out",
			poolName, cur.Holder, cur.Expires.UTC().Format(leaseTimeFormat))
	}
	l := Lease{Holder: holder, Expires: now.Add(ttl).UTC()}
	edit := func(s *State) error {
		c := l
		s.pool(poolName).Lease = &c
		return nil
	}
	if cur != nil { // a renewal: persisted, not an event
		return l, r.persistLocked(edit)
	}
	return l, r.changeLocked(nil, Event{Actor: actorOf(opts), Action: "lease", Pool: poolName, Detail: "taken by " + holder}, edit)
}

// ReleaseLease ends holder's lease on pool. Releasing a lease that is not
// held (or ran out) changes nothing; another holder's is refused.
func (r *Registry) ReleaseLease(poolName, holder string, opts ...Opt) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, err := r.lookupLocked(poolName, ""); err != nil {
		return err
	}
	cur := r.leaseLocked(poolName, time.Now())
	if cur == nil {
		return nil
	}
	if cur.Holder != holder {
		return conflictf(v1.CodeLeaseNotHeld, "pool %q's lease is held by %s, not %s", poolName, cur.Holder, holder)
	}
	return r.changeLocked(nil, Event{Actor: actorOf(opts), Action: "unlease", Pool: poolName, Detail: "released by " + holder},
		func(s *State) error {
			s.pool(poolName).Lease = nil
			return nil
		})
}

// CurrentLease returns pool's running lease, or nil.
func (r *Registry) CurrentLease(poolName string) *Lease {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.leaseLocked(poolName, time.Now())
}

func (r *Registry) leaseLocked(poolName string, now time.Time) *Lease {
	ps := r.state.Pools[poolName]
	if ps == nil || ps.Lease == nil || !now.Before(ps.Lease.Expires) {
		return nil
	}
	l := *ps.Lease
	return &l
}
