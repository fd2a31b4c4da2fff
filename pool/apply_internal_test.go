package pool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/config"
)

// slowSink is a log destination that takes a while per line (a blocked
// stdout pipe, a slow disk): Apply logs while it holds the pool's lock.
type slowSink struct{}

func (slowSink) Write(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond) // the sink's own slowness, not a wait for a condition
	return len(p), nil
}

// blueGreen is a pool of blue (a1, a2: v1) and green (g1, g2: v2)
// servers, extra appended, with stable the stable version.
func blueGreen(t *testing.T, stable string, extra ...config.Backend) config.Pool {
	t.Helper()
	cfg, err := config.Parse([]byte(`pools:
  - name: shop
    stable_version: v1
    backends:
      - {name: a1, address: "127.0.0.1:1", version: v1}
      - {name: a2, address: "127.0.0.1:2", version: v1}
      - {name: g1, address: "127.0.0.1:3", version: v1}
      - {name: g2, address: "127.0.0.1:4", version: v1}
`), "test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pc := cfg.Pools[0]
	pc.StableVersion = stable
	pc.Backends = append(append([]config.Backend(nil), pc.Backends...), extra...)
	pc.Backends[2].Version, pc.Backends[3].Version = "v2", "v2" // the file allows one version without a canary
	return pc
}

// picker picks from p until stop (or 10 s, or 5 million picks), counting
// picks that found no backend and picks of the backend named never.
type picker struct {
	noBackend, picks, never atomic.Int64
	stop                    chan struct{}
	wg                      sync.WaitGroup
}

func startPicker(p *Pool, never string) *picker {
	k := &picker{stop: make(chan struct{})}
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 5_000_000 && time.Now().Before(deadline); i++ {
			select {
			case <-k.stop:
				return
			default:
			}
			b, err := p.Pick(nil)
			if errors.Is(err, ErrNoBackend) {
				k.noBackend.Add(1)
				continue
			}
			k.picks.Add(1)
			if b.Name() == never {
				k.never.Add(1)
			}
			b.Finish(&Outcome{Class: ClassOK, Status: 200})
		}
	}()
	return k
}

func (k *picker) end() { close(k.stop); k.wg.Wait() }

// TestApplySwitchNeverLeavesNoBackend: a blue/green switch through one
// Apply brings green in before blue goes out, so a request never finds
// no backend — also when logging makes Apply slow, and over many switches
// back and forth. A standby added by an Apply never takes a request.
func TestApplySwitchNeverLeavesNoBackend(t *testing.T) {
	for _, c := range []struct {
		name     string
		log      zerolog.Logger
		switches int
	}{
		{"slow log sink", zerolog.New(slowSink{}), 10},
		{"no logging", zerolog.Nop(), 1000},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := New(blueGreen(t, "v1"), c.log)
			defer p.Close()
			for _, b := range p.Backends() {
				b.health.Store(int32(Up)) // every check passed
			}
			p.Apply(Desired{Config: blueGreen(t, "v1"), Admin: map[string]State{"g1": Drained, "g2": Drained}})
			k := startPicker(p, "s1")
			standby := config.Backend{Name: "s1", Address: "127.0.0.1:5", Version: "v3"}
			for i := range c.switches {
				if i%2 == 0 {
					p.Apply(Desired{Config: blueGreen(t, "v2", standby), Admin: map[string]State{"a1": Draining, "a2": Draining, "s1": Drained},
						Proven: map[string]bool{"g1": true, "g2": true}})
				} else {
					p.Apply(Desired{Config: blueGreen(t, "v1", standby), Admin: map[string]State{"g1": Draining, "g2": Draining, "s1": Drained},
						Proven: map[string]bool{"a1": true, "a2": true}})
				}
			}
			k.end()
			t.Logf("%d switches: %d picks, %d found no backend, %d took the standby", c.switches, k.picks.Load(), k.noBackend.Load(), k.never.Load())
			if k.noBackend.Load() > 0 {
				t.Errorf("%d requests found no backend during %d switches (each a 503)", k.noBackend.Load(), c.switches)
			}
			if k.never.Load() > 0 {
				t.Errorf("the standby took %d requests", k.never.Load())
			}
			if k.picks.Load() == 0 {
				t.Error("no request was picked at all")
			}
		})
	}
}

// TestApplyRollbackNeverServesTheCanaryAsStable: rolling a canary back
// clears the canary and drains its backends in one Apply; stable clients
// never get a rolled-back backend, not even for the moment the pool has
// no canary and the backend is not yet drained.
func TestApplyRollbackNeverServesTheCanaryAsStable(t *testing.T) {
	withCanary := func(share float64) config.Pool {
		pc := blueGreen(t, "v1")
		pc.Canary.Version, pc.Canary.Weight = "v2", share
		return pc
	}
	p := New(withCanary(0), zerolog.Nop())
	defer p.Close()
	for _, b := range p.Backends() {
		b.health.Store(int32(Up))
	}
	stable := make(chan struct{})
	var wrong, picks atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(10 * time.Second)
		for i := 0; i < 5_000_000 && time.Now().Before(deadline); i++ {
			select {
			case <-stable:
				return
			default:
			}
			// A stable client (its cookie names v1) at a 0 % canary.
			b, err := p.PickVersion(nil, []byte("v1"), false)
			if err != nil {
				continue
			}
			picks.Add(1)
			if b.Version() == "v2" {
				wrong.Add(1)
			}
			b.Finish(&Outcome{Class: ClassOK, Status: 200})
		}
	}()
	for range 500 {
		p.Apply(Desired{Config: withCanary(0), Proven: map[string]bool{"g1": true, "g2": true}})              // the canary is back, at 0 %
		p.Apply(Desired{Config: blueGreen(t, "v1"), Admin: map[string]State{"g1": Draining, "g2": Draining}}) // rolled back
	}
	close(stable)
	wg.Wait()
	if wrong.Load() > 0 {
		t.Errorf("stable clients got a rolled-back v2 backend %d times in %d picks", wrong.Load(), picks.Load())
	}
	if picks.Load() == 0 {
		t.Error("no request was picked at all")
	}
}
