package control_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/baton-lb/baton/control"
	"github.com/baton-lb/baton/internal/testbed"
	"github.com/baton-lb/baton/pool"
)

// startBlueGreen is a pool of two blue servers (v1) under steady load, and
// two green ones (v2) added on standby.
func startBlueGreen(t *testing.T, greenFail map[string]testbed.Failure) (*testbed.Baton, *load, func()) {
	t.Helper()
	blue := testbed.NewBackends(t, testbed.BackendOptions{Version: "v1"}, "b1", "b2")
	b1, b2 := blue[0].Addr(), blue[1].Addr()
	b := testbed.Start(t, fmt.Sprintf(`listen: 127.0.0.1:0
admin: {listen: "off"}
log: {level: info, access: false}
pools:
  - name: shop
    health_check: {interval: 200ms, timeout: 150ms, rise: 1, fall: 2}
    retries: {attempts: 1}
    backends:
      - {name: b1, address: %q, version: v1}
      - {name: b2, address: %q, version: v1}
`, b1, b2))
	b.WaitHealthy(t, "shop", 2)
	for _, g := range testbed.NewBackends(t, testbed.BackendOptions{Version: "v2", Fail: greenFail}, "g1", "g2") {
		if _, err := b.Reg.Add("shop", control.AddSpec{Name: g.Name(), Address: g.Addr(), Version: "v2", Standby: true}); err != nil {
			t.Fatal(err)
		}
	}
	p := b.Pool(t, "shop")
	testbed.Eventually(t, 10*time.Second, func() bool {
		return p.Backend("g1").Health() == pool.Up && p.Backend("g2").Health() == pool.Up
	}, "the standby backends healthy")
	if cv, _ := p.Canary(); cv != "" {
		t.Fatalf("standby v2 backends started canary %s", cv)
	}
	l, _, finish := startLoad(t, b, 4, 60*time.Second)
	return b, l, finish
}

// servedBy sends n requests and counts the backends that answered.
func servedBy(t *testing.T, b *testbed.Baton, n int) map[string]int {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	out := map[string]int{}
	for range n {
		res, err := c.Get(b.URL("/search"))
		if err != nil {
			t.Fatalf("GET /search: %v", err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		name, _, _ := strings.Cut(string(body), " ")
		out[name]++
	}
	return out
}

// TestSwitchBlueGreen: standby servers take no traffic; the switch moves
// every new request to them at once and drains the old ones, with no
// failed request; when the watch ends with the guards quiet, it stays.
func TestSwitchBlueGreen(t *testing.T) {
	b, l, stop := startBlueGreen(t, nil)
	defer stop()
	if got := servedBy(t, b, 20); got["g1"]+got["g2"] != 0 {
		t.Fatalf("standby servers took traffic: %v", got)
	}
	sw, err := b.Reg.Switch("shop", control.SwitchSpec{To: "v2", Watch: 2 * time.Second}, control.By("deployer"))
	if err != nil {
		t.Fatal(err)
	}
	if sw.From != "v1" || strings.Join(sw.New, ",") != "g1,g2" || strings.Join(sw.Old, ",") != "b1,b2" {
		t.Errorf("switch %+v; want v1 → v2, g1 g2 in, b1 b2 out", sw)
	}
	// At once: the very next requests go to green, also those of clients
	// whose affinity cookie names the old version.
	if got := servedBy(t, b, 20); got["g1"]+got["g2"] != 20 {
		t.Errorf("after the switch requests went to %v; want g1 and g2 only", got)
	}
	req, _ := http.NewRequest("GET", b.URL("/search"), nil)
	req.AddCookie(&http.Cookie{Name: "baton_shop", Value: "v1"}) // unsigned: ignored
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if !strings.HasPrefix(string(body), "g") {
		t.Errorf("a client with affinity to v1 got %q after the switch; want green", body)
	}
	p := b.Pool(t, "shop")
	if p.StableVersion() != "v2" {
		t.Errorf("stable version %s after the switch, want v2", p.StableVersion())
	}
	testbed.Eventually(t, 10*time.Second, func() bool {
		_, last := b.Reg.SwitchStatus("shop")
		return last != nil
	}, "the watch to end")
	cur, last := b.Reg.SwitchStatus("shop")
	if cur != nil || last.Outcome != "done" || !strings.Contains(last.Reason, "the guards held") {
		t.Errorf("after the watch: running %+v, last %+v; want done", cur, last)
	}
	for _, n := range []string{"b1", "b2"} {
		if s := p.Backend(n).State(); s != pool.Draining && s != pool.Drained {
			t.Errorf("%s is %s after the switch, want drained", n, s)
		}
	}
	stop()
	if l.failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during the switch: %v", l.failed.Load(), l.sent.Load(), l.failures)
	}
	t.Logf("%d requests, none failed; %s", l.sent.Load(), last.Reason)
}

// TestSwitchBackWhenAGuardFires: v2 fails a third of its checkouts. The
// error guard fires during the watch and the pool switches back to v1 at
// once; v1's servers take the traffic again and v2's are drained.
func TestSwitchBackWhenAGuardFires(t *testing.T) {
	bad := map[string]testbed.Failure{"/checkout": {Every: 3, Status: 500, Code: "SCHEMA_MISMATCH"}}
	b, l, stop := startBlueGreen(t, bad)
	defer stop()
	if _, err := b.Reg.Switch("shop", control.SwitchSpec{To: "v2", Watch: time.Minute}); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 20*time.Second, func() bool {
		_, last := b.Reg.SwitchStatus("shop")
		return last != nil
	}, "the guard to switch back")
	_, last := b.Reg.SwitchStatus("shop")
	if last.Outcome != "switched_back" || !strings.Contains(last.Reason, "v2 answered") || !strings.Contains(last.Reason, "guard 5.0%") {
		t.Errorf("last switch %+v; want switched back by the error guard", last)
	}
	p := b.Pool(t, "shop")
	if p.StableVersion() != "v1" {
		t.Errorf("stable %s after switching back, want v1", p.StableVersion())
	}
	if got := servedBy(t, b, 20); got["b1"]+got["b2"] != 20 {
		t.Errorf("after switching back requests went to %v; want b1 and b2 only", got)
	}
	var back bool
	for _, e := range b.Reg.Events(20, false) {
		back = back || (e.Action == "switch_back" && e.Actor == "judge")
	}
	if !back {
		t.Errorf("no switch_back event by the judge: %+v", b.Reg.Events(5, false))
	}
	stop()
	if l.failed.Load() != 0 {
		t.Errorf("%d requests failed in ways the backends were not told to: %v", l.failed.Load(), l.failures)
	}
}

// TestSwitchRefusals: a switch needs healthy standby servers of the
// version, no canary, and sane settings; a refusal changes nothing.
func TestSwitchRefusals(t *testing.T) {
	b, _, stop := startBlueGreen(t, nil)
	defer stop()
	cases := []struct {
		spec  control.SwitchSpec
		want  error
		words string
	}{
		{control.SwitchSpec{To: "v9"}, control.ErrConflict, "no backend of version v9"},
		{control.SwitchSpec{To: "v1"}, control.ErrConflict, "already the stable version"},
		{control.SwitchSpec{To: "v2", Watch: time.Millisecond}, control.ErrInvalid, "watch"},
		{control.SwitchSpec{To: "v2", MaxErrorRate: 2}, control.ErrInvalid, "max_error_rate"},
		{control.SwitchSpec{To: ""}, control.ErrInvalid, "version"},
	}
	for _, c := range cases {
		_, err := b.Reg.Switch("shop", c.spec)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.words) {
			t.Errorf("Switch(%+v): %v; want %v mentioning %q", c.spec, err, c.want, c.words)
		}
	}
	// An unhealthy standby server blocks the switch, naming it.
	dead := testbed.FreeAddr(t) // nothing listens there: its health checks fail
	if _, err := b.Reg.Add("shop", control.AddSpec{Name: "g3", Address: dead, Version: "v2", Standby: true}); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, func() bool { return b.Pool(t, "shop").Backend("g3").Health() == pool.Down }, "g3 down")
	if _, err := b.Reg.Switch("shop", control.SwitchSpec{To: "v2"}); !errors.Is(err, control.ErrConflict) || !strings.Contains(err.Error(), "g3 (unhealthy") {
		t.Errorf("switch with an unhealthy standby: %v", err)
	}
	if p := b.Pool(t, "shop"); p.StableVersion() != "v1" || p.Backend("b1").State() != pool.Active {
		t.Errorf("a refused switch changed the pool: stable %s, b1 %s", p.StableVersion(), p.Backend("b1").State())
	}
}

// TestSwitchKeptWhenNothingToGoBackTo: when a guard fires but no old
// backend is left healthy (here they were removed), switching back would
// leave nothing in service: the switch stays, and says why.
func TestSwitchKeptWhenNothingToGoBackTo(t *testing.T) {
	bad := map[string]testbed.Failure{"/checkout": {Every: 3, Status: 500, Code: "SCHEMA_MISMATCH"}}
	b, _, stop := startBlueGreen(t, bad)
	defer stop()
	if _, err := b.Reg.Switch("shop", control.SwitchSpec{To: "v2", Watch: time.Minute}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"b1", "b2"} {
		if _, err := b.Reg.Remove("shop", n); err != nil {
			t.Fatal(err)
		}
	}
	testbed.Eventually(t, 20*time.Second, func() bool {
		_, last := b.Reg.SwitchStatus("shop")
		return last != nil
	}, "the guard's outcome")
	_, last := b.Reg.SwitchStatus("shop")
	if last.Outcome != "kept" || !strings.Contains(last.Reason, "no v1 backend was healthy to switch back to") {
		t.Errorf("last switch %+v; want kept, saying no v1 backend was healthy", last)
	}
	p := b.Pool(t, "shop")
	if p.StableVersion() != "v2" || p.Backend("g1").State() != pool.Active {
		t.Errorf("after a kept switch: stable %s, g1 %s; want v2 still serving", p.StableVersion(), p.Backend("g1").State())
	}
}
