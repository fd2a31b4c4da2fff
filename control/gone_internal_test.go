package control

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/pool"
)

// TestGoneBackendsExpire: a dropped backend's admin state is given back
// only within goneKeep; after it, the backend starts afresh.
func TestGoneBackendsExpire(t *testing.T) {
	cfg := &config.Config{Pools: []config.Pool{{Name: "web", Backends: []config.Backend{{Name: "b1", Address: "127.0.0.1:1"}}}}}
	g := &goneBackends{}
	g.add("web", "b1", &BackendState{State: pool.Drained})
	g.by["web\x00b1"] = goneBackend{state: pool.Drained, at: time.Now().Add(-goneKeep - time.Second)}
	st := &State{Format: stateFormat}
	if g.restore(st, cfg, zerolog.Nop()) || len(st.Pools) != 0 || len(g.by) != 0 {
		t.Errorf("a backend back after %s got its old state: %+v, remembered %v", goneKeep, st.Pools, g.by)
	}
	g.add("web", "b1", &BackendState{State: pool.Ejected})
	if !g.restore(st, cfg, zerolog.Nop()) || st.Pools["web"].Backends["b1"].State != pool.Ejected {
		t.Errorf("a backend back at once did not keep its state: %+v", st.Pools)
	}
}
