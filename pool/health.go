package pool

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// resetHealthLocked makes the backend unchecked: it gets no traffic until a
// check that begins from now on passes. Called with the pool's lock held.
func (b *Backend) resetHealthLocked() {
	b.healthEpoch.Add(1)
	b.health.Store(int32(Unknown))
	b.kick()
}

// kick asks the backend's health loop for an immediate check.
func (b *Backend) kick() {
	select {
	case b.checkNow <- struct{}{}:
	default:
	}
}

// startHealth runs the backend's check loop until the pool closes or the
// backend leaves it. Called with p.mu held.
func (p *Pool) startHealth(b *Backend) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		p.healthLoop(b)
	}()
}

func (p *Pool) healthLoop(b *Backend) {
	var rise, fall int // passes and failures in a row, since health last changed
	seen := b.Health()
	timer := time.NewTimer(0) // the first check runs at once
	defer timer.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-b.stop:
			return
		case <-b.checkNow:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
		cfg := p.settings().HealthCheck
		epoch := b.healthEpoch.Load()
		ctx, cancel := context.WithTimeout(p.ctx, cfg.Timeout)
		err := b.check(ctx, cfg.Path, cfg.Host, cfg.ExpectStatus)
		cancel()
		if b.healthEpoch.Load() != epoch {
			// Enabled anew, or moved, while it ran: the check spoke of the
			// server before (one being upgraded, say). Check again now.
			timer.Reset(0)
			continue
		}
		if LocalExhaustion(err) {
			// baton has no descriptor to check with: that says nothing
			// about the backend, whose health stays as it was.
			timer.Reset(cfg.Interval)
			continue
		}
		if h := b.Health(); h != seen {
			// Health moved (an outlier ejection, an enable): count afresh.
			seen, rise, fall = h, 0, 0
		}
		switch {
		case err != nil:
			rise, fall = 0, fall+1
		case Nanotime() < b.ejectedUntil.Load():
			rise, fall = 0, 0 // passes during an ejection do not count
		default:
			rise, fall = rise+1, 0
		}
		p.observeCheck(b, epoch, err, rise, fall)
		seen = b.Health()
		timer.Reset(cfg.Interval)
	}
}

// observeCheck moves the backend's health after a check. A backend that was
// never checked needs one pass; a healthy one goes down after fall failures in
// a row; an unhealthy one comes back after rise passes in a row, counted only
// once an outlier ejection has run out.
func (p *Pool) observeCheck(b *Backend, epoch uint64, err error, rise, fall int) {
	cfg := p.settings().HealthCheck
	h := b.Health()
	var next Health
	switch h {
	case Unknown:
		next = Down
		if err == nil {
			next = Up
		}
	case Up:
		next = Up
		if err != nil && fall >= cfg.Fall {
			next = Down
		}
	case Down:
		next = Down
		if err == nil && rise >= cfg.Rise {
			next = Up
		}
	}
	if err != nil {
		b.NoteError("health check: " + err.Error())
	}
	if next == h {
		return
	}
	p.mu.Lock()
	if b.healthEpoch.Load() != epoch || !b.health.CompareAndSwap(int32(h), int32(next)) {
		// Reset meanwhile (under this lock): the check is of the server before.
		p.mu.Unlock()
		return
	}
	if next == Up {
		b.consecutive.Store(0)
		if time.Duration(Nanotime()-b.lastEjected.Load()) > p.cfg.Outlier.MaxEjection {
			b.ejections.Store(0)
		}
	}
	p.rebuildLocked()
	p.mu.Unlock()
	ev := p.log.Info()
	if next == Down {
		ev = p.log.Warn().AnErr("reason", err)
	}
	p.logb(ev, b).Str("health", next.String()).Msg("backend health changed")
}

// ejectOutlier takes a backend that failed n live requests in a row out of
// rotation for an ejection time that doubles with each ejection, unless it is
// the pool's last healthy backend (ejecting that would turn errors into
// certain 503s).
func (p *Pool) ejectOutlier(b *Backend, n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if Health(b.health.Load()) != Up {
		return
	}
	// Another backend must actually be taking traffic (in the current view,
	// so weight 0 does not count) for the ejection not to turn failures
	// into certain 503s.
	if !p.view.Load().servedByOtherThan(b) {
		if n == p.cfg.Outlier.ConsecutiveFailures {
			p.logb(p.log.Warn(), b).Int("failures", n).
				Msg("backend keeps failing but is the pool's last healthy backend; not ejecting it")
		}
		return
	}
	k := b.ejections.Add(1)
	d := p.cfg.Outlier.BaseEjection
	for i := int32(1); i < k && d < p.cfg.Outlier.MaxEjection; i++ {
		d *= 2
	}
	d = min(d, p.cfg.Outlier.MaxEjection)
	now := Nanotime()
	b.ejectedUntil.Store(now + int64(d))
	b.lastEjected.Store(now)
	b.consecutive.Store(0)
	b.health.Store(int32(Down))
	p.rebuildLocked()
	p.logb(p.log.Warn(), b).Int("failures", n).Dur("ejected_for", d).
		Msg("backend ejected after failing requests in a row; it returns once health checks pass")
}

// check runs one active check: a TCP connect, or an HTTP GET of path whose
// status must be expect (or any 2xx/3xx when expect is 0). The connection is
// closed afterwards, so checks never count as pooled connections.
func (b *Backend) check(ctx context.Context, path, host string, expect int) error {
	addr := b.Address()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect: %w", unwrapOp(err))
	}
	defer c.Close()
	if path == "" {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if host == "" {
		host = addr
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host +
		"\r\nUser-Agent: baton-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		return fmt.Errorf("sending check: %w", unwrapOp(err))
	}
	line, err := bufio.NewReaderSize(c, 512).ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading check response: %w", unwrapOp(err))
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return fmt.Errorf("check response is not HTTP: %.40q", line)
	}
	code, err := strconv.Atoi(f[1])
	if err != nil {
		return fmt.Errorf("check response has no status: %.40q", line)
	}
	if expect == 0 && (code < 200 || code > 399) {
		return fmt.Errorf("check got status %d, want 2xx or 3xx", code)
	}
	if expect != 0 && code != expect {
		return fmt.Errorf("check got status %d, want %d", code, expect)
	}
	return nil
}

// unwrapOp drops net.OpError's repetition of the address for shorter
// messages.
func unwrapOp(err error) error {
	if op, ok := err.(*net.OpError); ok && op.Err != nil {
		return op.Err
	}
	return err
}
