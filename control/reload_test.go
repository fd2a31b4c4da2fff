package control_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-lb/baton/config"
	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// rlStream reads a streamed response line by line in the background.
type rlStream struct {
	backend string
	ticks   atomic.Int64
	done    chan struct{}
	err     error  // set before done closes
	ended   bool   // saw "END\n"
	odd     string // an unexpected line
}

func rlOpenStream(t *testing.T, c *http.Client, url string) *rlStream {
	t.Helper()
	res, err := c.Get(url)
	if err != nil {
		t.Fatalf("stream %s: %v", url, err)
	}
	if res.StatusCode != 200 {
		res.Body.Close()
		t.Fatalf("stream %s: status %d", url, res.StatusCode)
	}
	s := &rlStream{backend: res.Header.Get("X-Backend"), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer res.Body.Close()
		br := bufio.NewReader(res.Body)
		for range 10000 {
			line, err := br.ReadString('\n')
			if err == io.EOF && line == "" {
				return
			}
			if err != nil {
				s.err = err
				return
			}
			switch {
			case line == "tick\n" && !s.ended:
				s.ticks.Add(1)
			case line == "END\n" && !s.ended:
				s.ended = true
			default:
				s.odd = line
			}
		}
	}()
	return s
}

// rlMember is one backend line.
type rlMember struct {
	name, addr string
	weight     int
}

// rlSpec is what a config file says, in the terms the test varies.
type rlSpec struct {
	web    []rlMember
	stream []rlMember
	legacy []rlMember // nil: no legacy pool
}

func (s rlSpec) clone() rlSpec {
	return rlSpec{
		web:    append([]rlMember(nil), s.web...),
		stream: append([]rlMember(nil), s.stream...),
		legacy: append([]rlMember(nil), s.legacy...),
	}
}

func (s *rlSpec) setWeight(name string, w int) {
	for i := range s.web {
		if s.web[i].name == name {
			s.web[i].weight = w
		}
	}
}

func (s *rlSpec) weightOf(name string) int {
	for _, m := range s.web {
		if m.name == name {
			return m.weight
		}
	}
	return -1
}

func (s *rlSpec) removeWeb(name string) {
	out := s.web[:0]
	for _, m := range s.web {
		if m.name != name {
			out = append(out, m)
		}
	}
	s.web = out
}

// render writes the spec as YAML. cosmetic > 0 varies comments and spacing
// only: the config it loads to is the same.
func (s rlSpec) render(cosmetic int) string {
	var sb strings.Builder
	sp := ""
	if cosmetic > 0 {
		fmt.Fprintf(&sb, "# rewritten by hand, take %d\n\n", cosmetic)
		sp = " "
	}
	sb.WriteString("listen: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: info, format: json, access: false}\npools:\n")
	pl := func(name, route string, drain string, ms []rlMember) {
		fmt.Fprintf(&sb, "  - name: %s\n", name)
		if route != "" {
			fmt.Fprintf(&sb, "    routes: [{path_prefix: %s}]\n", route)
		}
		if cosmetic > 0 {
			sb.WriteString("    # checks every 250ms\n")
		}
		sb.WriteString("    health_check: {path: /healthz, interval: 250ms, timeout: 240ms, rise: 1, fall: 5}\n")
		fmt.Fprintf(&sb, "    drain_timeout: %s\n    backends:\n", drain)
		for _, m := range ms {
			fmt.Fprintf(&sb, "      - {%sname: %s, address: \"%s\", weight: %d%s}\n", sp, m.name, m.addr, m.weight, sp)
		}
	}
	pl("web", "", "20s", s.web)
	pl("stream", "/stream", "60s", s.stream)
	if s.legacy != nil {
		pl("legacy", "/legacy", "60s", s.legacy)
	}
	return sb.String()
}

// rlInvalid renders the spec broken in one of several ways; the running
// config must stay.
func rlInvalid(s rlSpec, kind int) (string, string) {
	valid := s.render(0)
	switch kind % 6 {
	case 0:
		return "bad YAML (unclosed flow sequence)", valid + "  - {name: broken, backends: [\n"
	case 1:
		return "weight out of range", strings.Replace(valid, "weight: ", "weight: 5000", 1)
	case 2:
		return "unknown key", strings.Replace(valid, "drain_timeout:", "drain_timout:", 1)
	case 3:
		return "duplicate backend name", strings.Replace(valid, "    backends:\n", "    backends:\n      - {name: b1, address: \"127.0.0.1:9\"}\n", 1)
	case 4:
		return "empty file", ""
	default:
		return "health check timeout above interval", strings.Replace(valid, "timeout: 240ms", "timeout: 900ms", 1)
	}
}

func rlNames(bs []*pool.Backend) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = b.Name()
	}
	return out
}

func rlMemberNames(ms []rlMember) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.name
	}
	return out
}

// rlLoad is several keep-alive clients sending GETs and POSTs to baton and
// checking every answer.
type rlLoad struct {
	done, failed atomic.Int64
	exhausted    atomic.Int64 // workers that used up their request or time budget
	mu           sync.Mutex
	failures     []string
	by           map[string]int64 // answers by X-Backend
	stop         chan struct{}
	wg           sync.WaitGroup
}

func rlStartLoad(t *testing.T, base string, workers, perWorker int, valid func(name string) bool) *rlLoad {
	l := &rlLoad{stop: make(chan struct{}), by: map[string]int64{}}
	deadline := time.Now().Add(60 * time.Second)
	for w := range workers {
		tr := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, DisableCompression: true}
		t.Cleanup(tr.CloseIdleConnections)
		c := &http.Client{Transport: tr, Timeout: 15 * time.Second}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			pace := time.NewTicker(2 * time.Millisecond) // pacing, so that the budget lasts the storm
			defer pace.Stop()
			for i := range perWorker {
				select {
				case <-l.stop:
					return
				case <-pace.C:
				}
				if time.Now().After(deadline) {
					l.exhausted.Add(1)
					return
				}
				var req *http.Request
				want := ""
				if i%2 == 0 {
					req, _ = http.NewRequest("GET", fmt.Sprintf("%s/w/%d/%d", base, w, i), nil)
				} else {
					body := fmt.Sprintf("w%d-i%d", w, i)
					want = ":" + body
					req, _ = http.NewRequest("POST", base+"/w/post", strings.NewReader(body))
				}
				res, err := c.Do(req)
				var got []byte
				status, from := 0, ""
				if err == nil {
					got, err = io.ReadAll(res.Body)
					res.Body.Close()
					status, from = res.StatusCode, res.Header.Get("X-Backend")
				}
				ok := err == nil && status == 200 && valid(from) && string(got) == from+want
				l.done.Add(1)
				l.mu.Lock()
				l.by[from]++
				if !ok {
					l.failed.Add(1)
					if len(l.failures) < 20 {
						l.failures = append(l.failures, fmt.Sprintf("%s %s: status %d from %q body %q err %v",
							req.Method, req.URL.Path, status, from, got, err))
					}
				}
				l.mu.Unlock()
			}
			l.exhausted.Add(1)
		}()
	}
	return l
}

func (l *rlLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// TestReloadStormUnderLoad rewrites baton's config file 50 times while
// clients send GETs and POSTs, with reloads driven by control.WatchConfig as
// in production: backends are added, removed and reweighted, a pool with a
// stream in flight goes away, cosmetic rewrites change nothing, and every
// few writes the file is invalid. No client request may fail; invalid files
// are rejected and change nothing; backends that stay keep their identity,
// counters, connections, health and admin state (b3 is drained through it
// all); new backends get traffic only after a health check passed; removed
// ones get no new requests, and what they had in flight — a slow POST and a
// long stream — completes normally.
func TestReloadStormUnderLoad(t *testing.T) {
	// The long backends serve ".../tick" as a stream until streamEnd opens,
	// and hold ".../slow" POSTs until slowRelease opens.
	streamEnd, slowRelease := testbed.NewGate(), testbed.NewGate()
	t.Cleanup(func() {
		streamEnd.Release()
		slowRelease.Release()
	})
	long := testbed.BackendOptions{
		Stream: map[string]*testbed.Gate{"/tick": streamEnd},
		Hold:   map[string]*testbed.Gate{"/slow": slowRelease},
	}

	bs := testbed.NewBackends(t, testbed.BackendOptions{}, "b1", "b2", "b3")
	b1, b2, b3 := bs[0], bs[1], bs[2]
	sick := testbed.NewBackend(t, testbed.BackendOptions{Name: "sick", Unhealthy: true})
	ls := testbed.NewBackends(t, long, "s1", "s2", "L1")
	s1, s2, l1 := ls[0], ls[1], ls[2]
	trans := testbed.NewBackends(t, testbed.BackendOptions{}, "t1", "t2", "t3", "t4", "t5", "t6")
	trans[0].SetHealthy(false) // t1's checks fail until the test lets them pass
	servers := map[string]*testbed.Server{"b1": b1, "b2": b2, "b3": b3, "sick": sick, "s1": s1, "s2": s2, "L1": l1}
	for _, tb := range trans {
		servers[tb.Name()] = tb
	}

	spec := rlSpec{
		web:    []rlMember{{"b1", b1.Addr(), 100}, {"b2", b2.Addr(), 100}, {"b3", b3.Addr(), 100}, {"sick", sick.Addr(), 100}},
		stream: []rlMember{{"s1", s1.Addr(), 100}},
		legacy: []rlMember{{"L1", l1.Addr(), 100}},
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "baton.yaml")
	ctWriteInPlace(t, path, []byte(spec.render(0)))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("initial config: %v", err)
	}
	bt := testbed.StartConfig(t, cfg)
	reg := bt.Reg
	web := reg.Pool("web")
	if !ctPoll(10*time.Second, func() bool {
		for _, n := range []string{"b1", "b2", "b3"} {
			if web.Backend(n).Health() != pool.Up {
				return false
			}
		}
		return web.Backend("sick").Health() == pool.Down &&
			reg.Pool("stream").Backend("s1").Health() == pool.Up && reg.Pool("legacy").Backend("L1").Health() == pool.Up
	}) {
		t.Fatal("backends did not reach their initial health")
	}

	// Drain b3 before the storm; it must stay drained through every reload.
	b3b, err := reg.Drain("web", "b3")
	if err != nil {
		t.Fatalf("drain b3: %v", err)
	}
	{
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := b3b.WaitDrained(ctx)
		cancel()
		if err != nil {
			t.Fatalf("b3 did not drain: %v", err)
		}
		b3.Seal()
	}

	// Long requests in flight: a stream and a slow POST on s1 (pool
	// stream), a stream on L1 (pool legacy).
	sc := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 90 * time.Second}
	t.Cleanup(sc.Transport.(*http.Transport).CloseIdleConnections)
	s1Stream := rlOpenStream(t, sc, bt.URL("/stream/tick"))
	l1Stream := rlOpenStream(t, sc, bt.URL("/legacy/tick"))
	type result struct {
		status int
		body   string
		err    error
	}
	slowDone := make(chan result, 1)
	go func() {
		res, err := sc.Post(bt.URL("/stream/slow"), "text/plain", strings.NewReader("slow-body"))
		if err != nil {
			slowDone <- result{err: err}
			return
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		slowDone <- result{res.StatusCode, string(body), err}
	}()
	streamEnd.Wait(t, 10*time.Second, "the streams to start")
	streamEnd.Wait(t, 10*time.Second, "the second stream to start")
	slowRelease.Wait(t, 10*time.Second, "the slow POST to reach s1")
	if s1Stream.backend != "s1" || l1Stream.backend != "L1" {
		t.Fatalf("streams served by %q and %q, want s1 and L1", s1Stream.backend, l1Stream.backend)
	}
	s1b, l1b := reg.Pool("stream").Backend("s1"), reg.Pool("legacy").Backend("L1")

	// Load. Answers for pool web may come from b1, b2 and the transients.
	validWeb := func(name string) bool {
		switch name {
		case "b1", "b2":
			return true
		}
		return strings.HasPrefix(name, "t") && servers[name] != nil
	}
	load := rlStartLoad(t, "http://"+bt.Addr, 4, 30000, validWeb)
	loadStopped := false
	defer func() {
		if !loadStopped {
			load.finish()
		}
	}()
	if !ctPoll(10*time.Second, func() bool { return load.done.Load() >= 100 }) {
		t.Fatalf("load did not get going: %d requests", load.done.Load())
	}

	// The watcher, as cmd/baton runs it.
	ctx, cancel := context.WithCancel(context.Background())
	watchDone := make(chan error, 1)
	wlog := ctLogger(t)
	go func() {
		watchDone <- control.WatchConfig(ctx, path, wlog, func() { _ = reg.ReloadFile(path) })
	}()
	stopWatch := func() {
		cancel()
		select {
		case err := <-watchDone:
			if err != nil {
				t.Errorf("WatchConfig: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("WatchConfig did not return after cancel")
		}
	}
	watchStopped := false
	defer func() {
		if !watchStopped {
			stopWatch()
		}
	}()
	// Prime it: WatchConfig has no ready signal, so rewrite cosmetically
	// until a reload is counted.
	primed := false
	for i := 1; i <= 10 && !primed; i++ {
		ok0, _, _ := reg.Reloads()
		ctWriteInPlace(t, path, []byte(spec.render(100+i)))
		primed = ctPoll(time.Second, func() bool { ok, _, _ := reg.Reloads(); return ok > ok0 })
	}
	if !primed {
		t.Fatal("the watcher never reloaded while priming")
	}

	core := map[string]*pool.Backend{}
	for _, n := range []string{"b1", "b2", "b3", "sick"} {
		core[n] = web.Backend(n)
	}
	prevReq := map[string]uint64{}
	startReq := map[string]uint64{}
	for n, b := range core {
		prevReq[n] = b.Requests()
		startReq[n] = b.Requests()
	}
	genStart := reg.Generation()
	okStart, failStart, _ := reg.Reloads()
	applied := spec.clone() // what the running config says
	rng := rand.New(rand.NewPCG(1, 2))
	nextTrans := 0
	var live []string // transients in the file, oldest first
	removedObjs := map[string]*pool.Backend{}
	invalidKind := 0
	var invalidWrites, cosmeticWrites, changes int
	doneAtStormStart := load.done.Load()

	for i := range 50 {
		next := applied.clone()
		kind := "change"
		var desc string
		switch {
		case i == 49:
			next.web = []rlMember{{"b1", b1.Addr(), 300}, {"b2", b2.Addr(), 100}, {"b3", b3.Addr(), 100}, {"sick", sick.Addr(), 100}}
			desc = "final: b1 300, b2 100, no transients"
		case i == 0:
			next.setWeight("b1", 200)
			desc = "reweight b1 200"
		case i == 3:
			next.setWeight("b2", 50)
			next.setWeight("b3", 300)
			desc = "reweight b2 50, drained b3 300"
		case i == 4:
			next.stream = append(next.stream, rlMember{"s2", s2.Addr(), 100})
			desc = "add s2 to pool stream"
		case i == 6:
			next.stream = []rlMember{{"s2", s2.Addr(), 100}}
			desc = "remove s1 (stream and slow POST in flight)"
		case i == 9:
			next.legacy = nil
			desc = "remove pool legacy (stream in flight on L1)"
		case i == 2 || i == 7 || i == 11 || (i >= 12 && i%4 == 3):
			kind = "invalid"
		case i == 5 || (i >= 12 && i%7 == 5):
			kind = "cosmetic"
		case (i%3 == 1 || i == 1) && nextTrans < len(trans):
			tb := trans[nextTrans]
			nextTrans++
			next.web = append(next.web, rlMember{tb.Name(), tb.Addr(), 100})
			live = append(live, tb.Name())
			desc = "add " + tb.Name()
		case i%3 == 2 && len(live) > 0:
			desc = "remove " + live[0]
			next.removeWeb(live[0])
			live = live[1:]
		default:
			w1, w2 := 1+rng.IntN(400), 1+rng.IntN(400)
			next.setWeight("b1", w1)
			next.setWeight("b2", w2)
			desc = fmt.Sprintf("reweight b1 %d, b2 %d", w1, w2)
		}
		var content string
		switch kind {
		case "invalid":
			desc, content = rlInvalid(applied, invalidKind)
			invalidKind++
			invalidWrites++
		case "cosmetic":
			desc, content = "cosmetic rewrite (comments, spacing)", applied.render(i)
			cosmeticWrites++
		default:
			content = next.render(0)
		}
		mode := "in place"
		okB, failB, _ := reg.Reloads()
		genB, cfgB := reg.Generation(), reg.Config()
		conns := map[string]*pool.Conns{}
		for n, b := range core {
			conns[n] = b.Conns()
		}
		var leaving *pool.Backend
		if strings.HasPrefix(desc, "remove t") {
			leaving = web.Backend(strings.TrimPrefix(desc, "remove "))
		}
		if i%2 == 0 {
			ctWriteInPlace(t, path, []byte(content))
		} else {
			mode = "by rename"
			ctWriteAtomic(t, path, []byte(content))
		}
		step := fmt.Sprintf("write %d (%s, %s)", i, desc, mode)
		if !ctPoll(5*time.Second, func() bool { ok, fail, _ := reg.Reloads(); return ok+fail > okB+failB }) {
			t.Fatalf("%s: the watcher did not reload within 5s", step)
		}
		ok, fail, _ := reg.Reloads()
		gen := reg.Generation()

		if kind == "invalid" {
			if fail != failB+1 || ok != okB {
				t.Errorf("%s: reloads ok %d→%d, failed %d→%d; want one failure", step, okB, ok, failB, fail)
			}
			if gen != genB || reg.Config() != cfgB {
				t.Errorf("%s: generation %d→%d, config replaced %v; the running config must stay", step, genB, gen, reg.Config() != cfgB)
			}
		} else {
			if ok != okB+1 || fail != failB {
				t.Errorf("%s: reloads ok %d→%d, failed %d→%d; want one success", step, okB, ok, failB, fail)
			}
			wantGen := genB
			if kind == "change" && !reflect.DeepEqual(next, applied) {
				wantGen++
				changes++
			}
			if gen != wantGen {
				t.Errorf("%s: generation %d→%d, want %d", step, genB, gen, wantGen)
			}
			if kind == "cosmetic" && reg.Config() != cfgB {
				t.Errorf("%s: a rewrite that changes nothing replaced the running config", step)
			}
			if kind == "change" {
				applied = next
			}
		}

		// The running config is the last valid file, whatever came after.
		if reg.Pool("web") != web {
			t.Fatalf("%s: pool web was replaced", step)
		}
		if got, want := rlNames(web.Backends()), rlMemberNames(applied.web); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: pool web has %v, want %v", step, got, want)
		}
		for _, m := range applied.web {
			if b := web.Backend(m.name); b != nil && b.Weight() != m.weight {
				t.Errorf("%s: %s weight %d, want %d", step, m.name, b.Weight(), m.weight)
			}
		}
		// The backends that stay keep identity, counters, health, state,
		// and (when their line did not change) their connections.
		for n, b := range core {
			if web.Backend(n) != b {
				t.Errorf("%s: backend %s is a new object", step, n)
			}
			if r := b.Requests(); r < prevReq[n] {
				t.Errorf("%s: %s request counter went from %d to %d", step, n, prevReq[n], r)
			}
			prevReq[n] = b.Requests()
			if applied.weightOf(n) == cfgWeight(cfgB, n) && b.Conns() != conns[n] {
				t.Errorf("%s: %s did not change but its connections were replaced", step, n)
			}
		}
		for _, n := range []string{"b1", "b2"} {
			if h := core[n].Health(); h != pool.Up {
				t.Errorf("%s: %s health %s, want healthy", step, n, h)
			}
			if s := core[n].State(); s != pool.Active {
				t.Errorf("%s: %s state %s, want active", step, n, s)
			}
		}
		if s := core["b3"].State(); s != pool.Drained {
			t.Errorf("%s: b3 state %s, want drained (drained before the storm)", step, s)
		}
		if h := core["sick"].Health(); h != pool.Down {
			t.Errorf("%s: sick health %s, want unhealthy (its checks always fail)", step, h)
		}

		if kind != "change" {
			continue
		}
		switch {
		case desc == "add t1":
			// t1's checks fail: it must get nothing, however long the load
			// runs, until one passes.
			tb := trans[0]
			c0 := tb.Checks()
			if !ctPoll(5*time.Second, func() bool { return tb.Checks() >= c0+2 }) {
				t.Fatalf("%s: t1 was not health-checked", step)
			}
			if h := web.Backend("t1").Health(); h == pool.Up || tb.Hits() != 0 {
				t.Errorf("%s: t1 failing its checks is %s and got %d requests, want none", step, h, tb.Hits())
			}
			tb.SetHealthy(true)
			if !ctPoll(5*time.Second, func() bool { return tb.Hits() > 0 }) {
				t.Errorf("%s: t1 got no requests within 5s of passing its check", step)
			}
		case strings.HasPrefix(desc, "add t"):
			tb := servers[strings.TrimPrefix(desc, "add ")]
			if !ctPoll(5*time.Second, func() bool { return tb.Hits() > 0 }) {
				t.Errorf("%s: %s got no requests within 5s", step, tb.Name())
			}
		case strings.HasPrefix(desc, "remove t"):
			name := strings.TrimPrefix(desc, "remove ")
			if leaving == nil {
				t.Fatalf("%s: %s was not in the pool before", step, name)
			}
			removedObjs[name] = leaving
			wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
			st, err := leaving.WaitDrained(wctx)
			wcancel()
			if err != nil {
				t.Errorf("%s: the removed %s did not go idle: %v (%s)", step, name, err, st)
			}
			servers[name].Seal()
		case desc == "add s2 to pool stream":
			if !ctPoll(5*time.Second, func() bool { return reg.Pool("stream").Backend("s2").Health() == pool.Up }) {
				t.Fatalf("%s: s2 did not become healthy", step)
			}
		case strings.HasPrefix(desc, "remove s1"):
			if reg.Pool("stream").Backend("s1") != nil {
				t.Errorf("%s: s1 is still in pool stream", step)
			}
			if n := s1b.Inflight(); n != 2 {
				t.Errorf("%s: the removed s1 has %d requests in flight, want the stream and the slow POST", step, n)
			}
			s1.Seal()
			for range 5 {
				r, err := sc.Get(bt.URL("/stream/x"))
				if err != nil {
					t.Fatalf("%s: GET /stream/x: %v", step, err)
				}
				_, _ = io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if r.StatusCode != 200 || r.Header.Get("X-Backend") != "s2" {
					t.Errorf("%s: GET /stream/x: %d from %q, want 200 from s2", step, r.StatusCode, r.Header.Get("X-Backend"))
				}
			}
		case strings.HasPrefix(desc, "remove pool legacy"):
			if reg.Pool("legacy") != nil {
				t.Errorf("%s: pool legacy is still there", step)
			}
			l1.Seal()
			r, err := sc.Get(bt.URL("/legacy/x"))
			if err != nil {
				t.Fatalf("%s: GET /legacy/x: %v", step, err)
			}
			_, _ = io.Copy(io.Discard, r.Body)
			r.Body.Close()
			if from := r.Header.Get("X-Backend"); r.StatusCode != 200 || !validWeb(from) {
				t.Errorf("%s: GET /legacy/x after the pool left: %d from %q, want 200 from pool web", step, r.StatusCode, from)
			}
		}
		// The streams flow through every reload.
		for _, s := range []*rlStream{s1Stream, l1Stream} {
			n0 := s.ticks.Load()
			if !ctPoll(5*time.Second, func() bool { return s.ticks.Load() >= n0+3 }) {
				select {
				case <-s.done:
					t.Fatalf("%s: the stream from %s ended (%v) after %d ticks", step, s.backend, s.err, n0)
				default:
				}
				t.Fatalf("%s: the stream from %s stalled at %d ticks", step, s.backend, n0)
			}
		}
	}
	doneAtStormEnd := load.done.Load()
	t.Logf("storm: %d writes (%d changes, %d cosmetic, %d invalid), generation %d→%d; %d requests during it",
		50, changes, cosmeticWrites, invalidWrites, genStart, reg.Generation(), doneAtStormEnd-doneAtStormStart)
	okEnd, failEnd, _ := reg.Reloads()
	if failEnd-failStart != int64(invalidWrites) {
		t.Errorf("%d reloads failed during the storm, want %d (one per invalid file)", failEnd-failStart, invalidWrites)
	}
	if okEnd-okStart != int64(50-invalidWrites) {
		t.Errorf("%d reloads succeeded during the storm, want %d", okEnd-okStart, 50-invalidWrites)
	}
	if got := reg.Generation() - genStart; got != int64(changes) {
		t.Errorf("generation moved by %d, want %d (one per file that changed something)", got, changes)
	}
	if n := load.exhausted.Load(); n != 0 {
		t.Errorf("%d load workers ran out of requests before the storm ended; the test proves less", n)
	}

	// The long requests on removed backends end normally.
	streamEnd.Release()
	slowRelease.Release()
	for _, s := range []*rlStream{s1Stream, l1Stream} {
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the stream from %s did not end", s.backend)
		}
		if s.err != nil || !s.ended || s.odd != "" {
			t.Errorf("the stream from %s after %d ticks: err %v, END seen %v, odd line %q; want a clean end",
				s.backend, s.ticks.Load(), s.err, s.ended, s.odd)
		}
	}
	select {
	case r := <-slowDone:
		if r.err != nil || r.status != 200 || r.body != "s1:slow-body" {
			t.Errorf("the slow POST on the removed s1: status %d body %q err %v; want 200 s1:slow-body", r.status, r.body, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the slow POST on the removed s1 did not finish")
	}
	for _, b := range []*pool.Backend{s1b, l1b} {
		wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, err := b.WaitDrained(wctx)
		wcancel()
		if err != nil {
			t.Errorf("removed %s did not go idle after its long requests ended: %v (%s)", b.Name(), err, st)
		}
	}

	loadStopped = true
	load.finish()
	watchStopped = true
	stopWatch()

	load.mu.Lock()
	for _, f := range load.failures {
		t.Errorf("failed request: %s", f)
	}
	t.Logf("load: %d requests, by backend %v", load.done.Load(), load.by)
	load.mu.Unlock()
	if n := load.failed.Load(); n != 0 {
		t.Errorf("%d of %d client requests failed during the reloads, want none", n, load.done.Load())
	}
	for _, n := range []string{"b1", "b2"} {
		b := core[n]
		if b.Requests() <= startReq[n] {
			t.Errorf("%s counted %d requests before the storm and %d after; it got no traffic?", n, startReq[n], b.Requests())
		}
		// Counted by baton since b1 joined ≥ served by the backend: a reset
		// counter would fall short.
		if got, served := b.Requests(), servers[n].Hits(); got < uint64(served) {
			t.Errorf("%s: baton counts %d requests, the backend served %d; the counter was reset", n, got, served)
		}
	}
	for name, sv := range servers {
		if n := sv.Early(); n != 0 {
			t.Errorf("%s got %d requests before any health check passed", name, n)
		}
		if n := sv.AfterSeal(); n != 0 {
			t.Errorf("%s got %d requests after it was removed or drained", name, n)
		}
	}
	if n := sick.Hits(); n != 0 {
		t.Errorf("the unhealthy backend got %d requests", n)
	}
	for name, b := range removedObjs {
		if s := b.State(); s != pool.Drained {
			t.Errorf("removed %s is %s, want drained", name, s)
		}
	}
	if len(removedObjs) < 3 {
		t.Errorf("only %d transient backends were removed; the schedule is broken", len(removedObjs))
	}
	// The drain of b3 is still on disk.
	if bs := stBackendState(reg.State(), "b3"); bs == nil || (bs.State != pool.Draining && bs.State != pool.Drained) {
		t.Errorf("b3's drain is no longer in the overlay: %+v", bs)
	}

	// Routing follows the last valid file: b1:b2 = 300:100.
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 10 * time.Second}
	defer c.Transport.(*http.Transport).CloseIdleConnections()
	got := map[string]int{}
	for range 400 {
		r, err := c.Get(bt.URL("/w/final"))
		if err != nil {
			t.Fatalf("final GET: %v", err)
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
		got[r.Header.Get("X-Backend")]++
	}
	if got["b1"] < 296 || got["b1"] > 304 || got["b1"]+got["b2"] != 400 {
		t.Errorf("after the storm 400 GETs went %v, want b1 300 and b2 100 (weights 300:100)", got)
	}

	// Rewriting the same bytes and reloading is a no-op.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctWriteInPlace(t, path, data)
	okB, failB, _ := reg.Reloads()
	genB, cfgB := reg.Generation(), reg.Config()
	b1Conns := core["b1"].Conns()
	if err := reg.ReloadFile(path); err != nil {
		t.Fatalf("reloading the same file: %v", err)
	}
	if ok, fail, _ := reg.Reloads(); ok != okB+1 || fail != failB {
		t.Errorf("identical reload: ok %d→%d, failed %d→%d", okB, ok, failB, fail)
	}
	if reg.Generation() != genB || reg.Config() != cfgB || core["b1"].Conns() != b1Conns || web.Backend("b1") != core["b1"] {
		t.Errorf("an identical reload changed something: generation %d→%d", genB, reg.Generation())
	}
}

// cfgWeight returns the weight cfg gives backend name of pool web, or -1.
func cfgWeight(cfg *config.Config, name string) int {
	for _, p := range cfg.Pools {
		if p.Name != "web" {
			continue
		}
		for _, b := range p.Backends {
			if b.Name == name {
				return b.WeightOf()
			}
		}
	}
	return -1
}

// TestReloadLeavesNoGoroutines: backends and whole pools that come and go
// across reloads leave no health loop or housekeeping behind, and Close
// stops the rest.
func TestReloadLeavesNoGoroutines(t *testing.T) {
	addrs := map[string]string{}
	for _, n := range []string{"w1", "w2", "w3", "w4", "w5", "x1", "y1", "y2"} {
		addrs[n] = testbed.NamedBackend(t, n)
	}
	render := func(web []string, extra, tmp bool, tag int) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "# %d\nlisten: 127.0.0.1:0\nadmin: {listen: \"off\"}\nlog: {level: info, format: json, access: false}\npools:\n", tag)
		pl := func(name, route string, ms []string) {
			fmt.Fprintf(&sb, "  - name: %s\n", name)
			if route != "" {
				fmt.Fprintf(&sb, "    routes: [{path_prefix: %s}]\n", route)
			}
			sb.WriteString("    health_check: {interval: 50ms, timeout: 40ms, rise: 1, fall: 3}\n    backends:\n")
			for _, m := range ms {
				fmt.Fprintf(&sb, "      - {name: %s, address: \"%s\"}\n", m, addrs[m])
			}
		}
		pl("web", "", web)
		if extra {
			pl("extra", "/extra", []string{"x1"})
		}
		if tmp {
			pl("tmp", "/tmp", []string{"y1", "y2"})
		}
		return sb.String()
	}
	settle := func(want int) (int, bool) {
		n := 0
		ok := ctPoll(5*time.Second, func() bool { n = runtime.NumGoroutine(); return n <= want })
		return n, ok
	}
	dump := func() string {
		buf := make([]byte, 1<<20)
		n := runtime.Stack(buf, true)
		var out []string
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			if strings.Contains(g, "baton-lb/baton/pool") || strings.Contains(g, "baton-lb/baton/control") {
				out = append(out, g)
			}
		}
		return strings.Join(out, "\n\n")
	}

	base0 := runtime.NumGoroutine()
	dir := t.TempDir()
	path := filepath.Join(dir, "baton.yaml")
	ctWriteInPlace(t, path, []byte(render([]string{"w1", "w2"}, true, false, 0)))
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := control.New(cfg, cfg.StateFile, ctLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			reg.Close()
		}
	}()
	reg.Start()
	if !reg.WaitHealthy(ctxTimeout(t, 10*time.Second)) {
		t.Fatal("pools did not become healthy")
	}
	baseA := runtime.NumGoroutine()
	w1 := reg.Pool("web").Backend("w1")

	for i := range 20 {
		web := []string{"w1", "w2", []string{"w3", "w4", "w5"}[i%3]}
		if i%4 == 0 && web[2] != "w5" {
			web = append(web, "w5")
		}
		ctWriteInPlace(t, path, []byte(render(web, i%2 == 0, i%3 != 0, i+1)))
		if err := reg.ReloadFile(path); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
	}
	ctWriteInPlace(t, path, []byte(render([]string{"w1", "w2"}, true, false, 99)))
	if err := reg.ReloadFile(path); err != nil {
		t.Fatalf("final reload: %v", err)
	}
	if reg.Pool("web").Backend("w1") != w1 {
		t.Errorf("w1 was replaced by the reloads")
	}
	if n, ok := settle(baseA); !ok {
		t.Errorf("%d goroutines after the reloads, %d before with the same config; left behind:\n%s", n, baseA, dump())
	}
	reg.Close()
	closed = true
	if n, ok := settle(base0); !ok {
		t.Errorf("%d goroutines after Close, %d before the registry; left behind:\n%s", n, base0, dump())
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
