// Package control is the live registry: it turns a loaded config into running
// pools and a routing table, and is the one place where changes to them are
// applied.
package control

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
	"github.com/baton-lb/baton/proxy"
)

// Registry holds the running pools and the routing table built from the
// current config.
//
// It is safe for concurrent use; changes are serialised on mu.
type Registry struct {
	log zerolog.Logger

	mu    sync.Mutex // protects cfg, pools, table
	cfg   *config.Config
	pools map[string]*pool.Pool
	table *proxy.Table
}

// New builds pools and the routing table for cfg. Nothing runs until Start.
func New(cfg *config.Config, log zerolog.Logger) (*Registry, error) {
	r := &Registry{log: log, cfg: cfg, pools: make(map[string]*pool.Pool)}
	for _, pc := range cfg.Pools {
		r.pools[pc.Name] = pool.New(pc, log)
	}
	t, err := proxy.BuildTable(cfg, r.pools)
	if err != nil {
		return nil, err
	}
	r.table = t
	return r, nil
}

// Table returns the routing table for the current config.
func (r *Registry) Table() *proxy.Table {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.table
}

// Pool returns the named pool, or nil.
func (r *Registry) Pool(name string) *pool.Pool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pools[name]
}

// Backend returns the named backend of the named pool.
func (r *Registry) Backend(poolName, name string) (*pool.Backend, error) {
	p := r.Pool(poolName)
	if p == nil {
		return nil, fmt.Errorf("unknown pool %q", poolName)
	}
	b := p.Backend(name)
	if b == nil {
		return nil, fmt.Errorf("%w %q in pool %q", pool.ErrUnknownBackend, name, poolName)
	}
	return b, nil
}

// Start begins health checking and housekeeping in every pool.
func (r *Registry) Start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pools {
		p.Start()
	}
}

// Close stops every pool's background work and closes backend connections.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pools {
		p.Close()
	}
}

// WaitHealthy waits until every pool has a backend that takes requests, or
// ctx ends. It reports whether all pools are ready.
func (r *Registry) WaitHealthy(ctx context.Context) bool {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		ready := true
		r.mu.Lock()
		for _, p := range r.pools {
			if !p.HasAvailable() {
				ready = false
				break
			}
		}
		r.mu.Unlock()
		if ready {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
