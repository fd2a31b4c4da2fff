package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-lb/baton/internal/testbed"
)

// slowShop is a seeded backend answering as name and version: GET
// /search takes about median (log-normal), POST /checkout answers at once.
func slowShop(t *testing.T, name, version string, median time.Duration, rng *rand.Rand) *testbed.Server {
	var mu sync.Mutex // protects rng
	return testbed.NewBackend(t, testbed.BackendOptions{Name: name, Version: version, Delay: func(path string) time.Duration {
		if path != "/search" {
			return 0
		}
		mu.Lock()
		defer mu.Unlock()
		return time.Duration(float64(median) * math.Exp(0.25*rng.NormFloat64()))
	}})
}

// paceLoad sends rate requests per second to each host (80 % GET /search,
// 20 % POST /checkout, no cookies: every request a new visitor) until ctx
// ends, and counts the answers that were not 200.
func paceLoad(ctx context.Context, addr string, hosts []string, rate int) (*sync.WaitGroup, *atomic.Int64, *atomic.Int64) {
	var wg sync.WaitGroup
	var sent, bad atomic.Int64
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	jobs := make(chan *http.Request, 256)
	for range 48 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for req := range jobs {
				res, err := client.Do(req)
				sent.Add(1)
				if err != nil {
					if ctx.Err() == nil {
						bad.Add(1)
					}
					continue
				}
				res.Body.Close()
				if res.StatusCode != 200 {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(jobs)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		// Bounded: at most two minutes of load.
		for i := 0; i < 12000 && ctx.Err() == nil; i++ {
			<-tick.C
			for _, h := range hosts {
				for k := range rate / 100 {
					path, method := "/search", "GET"
					if (i+k)%5 == 4 {
						path, method = "/checkout", "POST"
					}
					req, _ := http.NewRequestWithContext(ctx, method, "http://"+addr+path, strings.NewReader("{}"))
					req.Host = h
					select {
					case jobs <- req:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	}()
	return &wg, &sent, &bad
}

// TestGrossRegressionRolledBackInSeconds: under steady load (300
// requests/s per pool), a canary at 10 % whose /search is three times
// slower is failed and, with auto_rollback, out of traffic within 15 s of
// such traffic (450 canary requests; the wall clock may run longer on a
// busy machine) — in 10 of 10 seeded runs, with the judge's defaults.
// An identical canary beside it, judged as long, never fails.
func TestGrossRegressionRolledBackInSeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("ten releases under load")
	}
	var took []time.Duration
	for run := range 10 {
		seed := uint64(run + 1)
		backend := func(name string, n uint64) string {
			return slowShop(t, name, "v1", 22*time.Millisecond, rand.New(rand.NewPCG(seed, n))).Addr()
		}
		var pools strings.Builder
		canaries := map[string]*testbed.Server{}
		for _, pool := range []struct {
			name   string
			canary time.Duration
		}{{"slow", 66 * time.Millisecond}, {"same", 22 * time.Millisecond}} {
			v2 := slowShop(t, "d", "v2", pool.canary, rand.New(rand.NewPCG(seed, 9)))
			canaries[pool.name] = v2
			fmt.Fprintf(&pools, `  - name: %s
    routes: [{host: %s.test}]
    stable_version: v1
    health_check: {interval: 200ms, timeout: 150ms, rise: 1}
    canary: {version: v2, weight: 0, auto_rollback: true}
    backends:
      - {name: a, address: %q, version: v1}
      - {name: b, address: %q, version: v1}
      - {name: c, address: %q, version: v1}
      - {name: d, address: %q, version: v2}
`, pool.name, pool.name, backend("a", 1), backend("b", 2), backend("c", 3), v2.Addr())
		}
		plain, adminAddr := freeAddr(t), freeAddr(t)
		cfg := writeFile(t, "baton.yaml", fmt.Sprintf("listen: %s\nadmin: {listen: %s}\nlog: {format: json, access: false}\npools:\n%s",
			plain, adminAddr, pools.String()))
		p := startBinary(t, "serve", "-c", cfg)
		a := &adminClient{t: t, base: "http://" + adminAddr, c: &http.Client{Timeout: 10 * time.Second}}
		waitServing(t, p, a, "slow", "a", "b", "c", "d")
		waitServing(t, p, a, "same", "a", "b", "c", "d")

		ctx, stop := context.WithTimeout(context.Background(), 40*time.Second)
		wg, sent, bad := paceLoad(ctx, plain, []string{"slow.test", "same.test"}, 300)
		// Steady load first, then both canaries start together.
		if !poll(10*time.Second, func() bool { return sent.Load() >= 300 }) {
			t.Fatalf("run %d: the load did not start", run)
		}
		start := time.Now()
		for _, name := range []string{"slow", "same"} {
			a.must("PUT", "/v1/pools/"+name+"/canary", `{"version": "v2", "weight": 10}`, 200, nil)
		}
		canaryOf := func(name string) (version, verdict, reason string) {
			var rep struct {
				CanaryVersion string `json:"canary_version"`
				Verdict       string `json:"verdict"`
				Reason        string `json:"reason"`
				Previous      *struct {
					Verdict, Rule, Reason string
				} `json:"previous"`
			}
			_, data, err := a.do("GET", "/v1/pools/"+name+"/canary", "")
			if err == nil && json.Unmarshal(data, &rep) == nil {
				if rep.CanaryVersion == "" && rep.Previous != nil {
					return "", rep.Previous.Verdict, rep.Previous.Rule + ": " + rep.Previous.Reason
				}
				return rep.CanaryVersion, rep.Verdict, rep.Reason
			}
			return "?", "", ""
		}
		var sameFailed string
		var reason string
		// How soon is counted in the canary's own requests: at 10 % of
		// 300 requests/s it serves 30 a second, so 15 s are 450 requests.
		// That holds on a machine too busy to keep the pace; the wall
		// clock only bounds the wait.
		rolledBack := poll(30*time.Second, func() bool {
			if v, verdict, why := canaryOf("same"); v != "v2" || verdict == "fail" {
				sameFailed = fmt.Sprintf("%s %s %s", v, verdict, why)
			}
			v, _, why := canaryOf("slow")
			reason = why
			return v == ""
		})
		elapsed := time.Since(start)
		canaryServed := canaries["slow"].Hits()
		// Out of traffic: once its requests in flight are done (the drain
		// ends), 300 more requests through baton reach it not once.
		var servedAfter, servedLater int64
		if rolledBack {
			poll(5*time.Second, func() bool {
				pj, err := a.pool("slow")
				d := findBackend(pj, "d")
				return err == nil && d != nil && d.State == "drained"
			})
			servedAfter = canaries["slow"].Hits()
			n0 := sent.Load()
			poll(10*time.Second, func() bool { return sent.Load() >= n0+300 })
			servedLater = canaries["slow"].Hits()
		}
		if v, verdict, why := canaryOf("same"); v != "v2" || verdict == "fail" {
			sameFailed = fmt.Sprintf("%s %s %s", v, verdict, why)
		}
		stop()
		wg.Wait()
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		p.waitExit(t, 15*time.Second)
		const maxCanaryRequests = 450 // 15 s at 10 % of 300 requests/s
		switch {
		case !rolledBack:
			t.Errorf("run %d: the 3× slower canary was still in traffic %s after it started, having served %d requests: %s",
				run, elapsed.Round(time.Millisecond), canaries["slow"].Hits(), reason)
		case !strings.HasPrefix(reason, "latency"):
			t.Errorf("run %d: rolled back for %q; want a latency rule", run, reason)
		case canaryServed > maxCanaryRequests:
			t.Errorf("run %d: rolled back only after the canary served %d requests (%s); want at most %d, 15 s at 10 %% of 300 requests/s",
				run, canaryServed, elapsed.Round(time.Millisecond), maxCanaryRequests)
		default:
			took = append(took, elapsed)
			t.Logf("run %d: rolled back %s after it started, the canary having served %d requests (%d requests in all, %d not 200): %s",
				run, elapsed.Round(time.Millisecond), canaryServed, sent.Load(), bad.Load(), reason)
		}
		if servedLater != servedAfter {
			t.Errorf("run %d: the rolled-back canary served %d more requests", run, servedLater-servedAfter)
		}
		if sameFailed != "" {
			t.Errorf("run %d: the identical canary did not stay: %s", run, sameFailed)
		}
	}
	t.Logf("3× slower /search at 10 %% of 300 requests/s: rolled back in %d of 10 runs, after %v", len(took), took)
}
