package admin_test

import (
	"testing"
	"time"
)

// versionOf returns the named version's entry of GET …/versions.
func versionOf(t *testing.T, body map[string]any, version string) map[string]any {
	t.Helper()
	list, _ := body["versions"].([]any)
	for _, e := range list {
		if m, _ := e.(map[string]any); m["version"] == version {
			return m
		}
	}
	t.Fatalf("version %s is not listed: %v", version, body["versions"])
	return nil
}

// TestAPIVersions: GET /v1/pools/{pool}/versions lists every version
// present with its backends by state, what is in flight and open, and the
// affinity cookies issued for it that are still valid; a version whose
// backends are out of rotation and idle is still present while its
// cookies are; a version never seen is unknown, not gone; an unknown pool
// is 404.
func TestAPIVersions(t *testing.T) {
	f := startAPI(t)
	f.api(t, "GET", "/v1/pools/nope/versions", "").wantError(t, 404, "unknown_pool", []string{`"nope"`})

	body := f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200)
	wantKeys(t, "versions", body, []string{"pool", "at", "stable_version", "affinity_max_age", "versions"}, []string{"canary_version", "counts_unknown_until"})
	v1 := versionOf(t, body, "v1")
	wantKeys(t, "version", v1, []string{"version", "states", "backends", "inflight", "open_connections", "affinity_cookies", "serving", "known", "gone"},
		[]string{"role", "affinity_until", "counts_unknown_until"})
	if v1["role"] != "stable" || v1["states"].(map[string]any)["active"] != float64(3) || v1["affinity_cookies"] != float64(0) ||
		v1["serving"] != true || v1["gone"] != false {
		t.Errorf("v1 before any canary: %v", v1)
	}
	// A version asked for that baton never saw is listed, unknown and not
	// gone: a typo must not release a migration.
	v9 := versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions?version=v9", "").want(t, 200), "v9")
	if v9["known"] != false || v9["gone"] != false {
		t.Errorf("v9, never seen: %v; want known false, gone false", v9)
	}

	// A canary at 20 %: every response to a client without a cookie
	// gives one, for the version that served it.
	f.api(t, "PATCH", "/v1/pools/shop/backends/s3", `{"version": "v2"}`).want(t, 200)
	f.waitHealthy(t, "shop", "s3")
	split := f.send(t, 10, "/")
	body = f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200)
	at, err := time.Parse(time.RFC3339Nano, body["at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	v1, v2 := versionOf(t, body, "v1"), versionOf(t, body, "v2")
	if v1["affinity_cookies"] != float64(split["s1"]+split["s2"]) || v2["affinity_cookies"] != float64(split["s3"]) || split["s3"] != 2 {
		t.Errorf("after %v: v1 has %v cookies, v2 %v; want one per response", split, v1["affinity_cookies"], v2["affinity_cookies"])
	}
	until, err := time.Parse(time.RFC3339, v2["affinity_until"].(string))
	if err != nil || until.Before(at.Add(time.Hour)) || until.After(at.Add(time.Hour+time.Minute)) {
		t.Errorf("v2's cookies valid until %v (%v); want about an hour (affinity.max_age) after %s", v2["affinity_until"], err, at)
	}
	if v2["role"] != "canary" || body["canary_version"] != "v2" || body["affinity_max_age"] != "1h0m0s" {
		t.Errorf("the canary: role %v, canary_version %v, max age %v", v2["role"], body["canary_version"], body["affinity_max_age"])
	}

	// A request in flight on a backend that is draining.
	name, done := f.holdRequest(t)
	f.api(t, "POST", "/v1/pools/shop/backends/"+name+"/drain", "").want(t, 202)
	body = f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200)
	held := "v1"
	if name == "s3" {
		held = "v2"
	}
	hv := versionOf(t, body, held)
	if hv["inflight"] != float64(1) || hv["open_connections"].(float64) < 1 || hv["states"].(map[string]any)["draining"] != float64(1) {
		t.Errorf("%s with a request held on draining %s: %v", held, name, hv)
	}
	var entry map[string]any
	for _, b := range hv["backends"].([]any) {
		if m := b.(map[string]any); m["name"] == name {
			entry = m
		}
	}
	wantKeys(t, "version backend", entry, []string{"name", "state", "healthy", "inflight", "open_connections"}, nil)
	if entry["state"] != "draining" || entry["inflight"] != float64(1) {
		t.Errorf("the draining backend: %v", entry)
	}
	f.releaseHeld()
	if s := <-done; s != 200 {
		t.Fatalf("the held request ended with %d", s)
	}

	// Rolled back: v2's server is out of rotation and idle, but clients
	// still hold v2's cookies: present, not serving, not gone.
	f.api(t, "POST", "/v1/pools/shop/canary/rollback", "").want(t, 200)
	if !pollFor(10*time.Second, func() bool {
		v2 := versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v2")
		return v2["inflight"] == float64(0) && v2["open_connections"] == float64(0) && v2["states"].(map[string]any)["drained"] == float64(1)
	}) {
		t.Fatalf("v2's backend did not drain: %v", versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v2"))
	}
	v2 = versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v2")
	if v2["serving"] != false || v2["gone"] != false || v2["affinity_cookies"] != float64(2) {
		t.Errorf("v2 after its rollback: %v; want not serving, not gone (2 cookies)", v2)
	}
}

// TestAPIRollout: a rollout's record is written only by the holder of the
// pool's lease; a gate that is done is refused when it would start again
// (409 gate_done); bad input is 400 and changes nothing; the pool shows
// the record.
func TestAPIRollout(t *testing.T) {
	f := startAPI(t)
	f.api(t, "GET", "/v1/pools/nope/rollout", "").wantError(t, 404, "unknown_pool", []string{`"nope"`})
	f.api(t, "GET", "/v1/pools/shop/rollout", "").wantError(t, 404, "no_rollout", []string{"shop"})
	begin := `{"holder": "ci", "from": "v1", "to": "v2"}`
	f.api(t, "PUT", "/v1/pools/shop/rollout", begin).wantError(t, 409, "lease_not_held", []string{"shop"})
	f.api(t, "PUT", "/v1/pools/shop/lease", `{"holder": "ci", "ttl": "30s"}`).want(t, 200)
	before := f.stateBytes(t)
	f.api(t, "PUT", "/v1/pools/shop/rollout", `{"holder": "ci", "from": "v1", "to": "v1"}`).wantError(t, 400, "invalid_value", []string{"v1"})
	f.api(t, "PUT", "/v1/pools/shop/rollout", `{"holder": "ci", "to": "v2", "extra": 1}`).wantError(t, 400, "invalid_json", nil)
	f.stateUnchanged(t, "refused rollout records", before)

	rec := f.api(t, "PUT", "/v1/pools/shop/rollout", begin).want(t, 200)
	wantKeys(t, "rollout", rec, []string{"from", "to", "by", "started", "gates"}, nil)
	gate := func(state string) apiResp {
		return f.api(t, "POST", "/v1/pools/shop/rollout/gates/before",
			`{"holder": "ci", "to": "v2", "state": "`+state+`", "command": "migrate expand"}`)
	}
	gate("running").want(t, 200)
	rec = gate("done").want(t, 200)
	if g := rec["gates"].([]any)[0].(map[string]any); g["gate"] != "before" || g["state"] != "done" || g["command"] != "migrate expand" {
		t.Errorf("the gate recorded: %v", g)
	}
	gate("running").wantError(t, 409, "gate_done", []string{"before", "migrate expand", "not run twice"})
	f.api(t, "POST", "/v1/pools/shop/rollout/gates/during", `{"holder": "ci", "to": "v2", "state": "running", "command": "x"}`).
		wantError(t, 400, "invalid_value", []string{"during"})
	f.api(t, "POST", "/v1/pools/shop/rollout/gates/after_gone", `{"holder": "ci", "to": "v3", "state": "running", "command": "x"}`).
		wantError(t, 409, "no_rollout", []string{"v3"})
	f.as(t, tokCIBot, "POST", "/v1/pools/shop/rollout/gates/after_gone", `{"holder": "other", "to": "v2", "state": "running", "command": "x"}`).
		wantError(t, 409, "lease_not_held", []string{"ci"})

	p := f.api(t, "GET", "/v1/pools/shop", "").want(t, 200)
	if ro, _ := p["rollout"].(map[string]any); ro == nil || ro["from"] != "v1" || len(ro["gates"].([]any)) != 1 {
		t.Errorf("the pool shows rollout %v", p["rollout"])
	}
	if st := poolState(f.state(t), "shop"); st == nil || st.Rollout == nil || st.Rollout.Gate("before").State != "done" {
		t.Errorf("the state file does not hold the rollout record")
	}
}

// TestAPIVersionsNameReusedWhileLeaving: a backend removed while a request
// is in flight on it, then added again under the same name with the next
// version, still counts for its old version until that request ends — the
// new backend taking its name must not make the old one's request vanish
// (review item 6).
func TestAPIVersionsNameReusedWhileLeaving(t *testing.T) {
	f := startAPI(t)
	name, done := f.holdRequest(t)
	f.api(t, "DELETE", "/v1/pools/shop/backends/"+name, "").want(t, 202)
	f.api(t, "POST", "/v1/pools/shop/backends", `{"name":"`+name+`","address":"`+f.spare+`","version":"v2"}`).want(t, 201)

	v1 := versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v1")
	removed := false
	for _, b := range v1["backends"].([]any) {
		if m := b.(map[string]any); m["name"] == name && m["state"] == "removed" && m["inflight"] == float64(1) {
			removed = true
		}
	}
	if v1["inflight"] != float64(1) || !removed {
		t.Errorf("v1 with a request held on removed %s, its name taken by a v2 backend: %v; want the removed backend listed with 1 in flight", name, v1)
	}

	f.releaseHeld()
	if s := <-done; s != 200 {
		t.Fatalf("the held request ended with %d", s)
	}
	if !pollFor(10*time.Second, func() bool {
		v1 := versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v1")
		return v1["inflight"] == float64(0) && len(v1["backends"].([]any)) == 2
	}) {
		t.Errorf("the removed backend is still listed once idle: %v", versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v1"))
	}
}

// TestAPIVersionsRelabelKeepsFormer: a backend given another version while
// a request is in flight on it — enabled with --version while draining, or
// PATCHed with a version and an address — still holds its former version
// with that request and the connection it uses until the request ends,
// rather than moving them to the new version (review item 7).
func TestAPIVersionsRelabelKeepsFormer(t *testing.T) {
	for _, how := range []string{"enable", "patch"} {
		t.Run(how, func(t *testing.T) {
			f := startAPI(t)
			name, done := f.holdRequest(t)
			path := "/v1/pools/shop/backends/" + name
			if how == "enable" {
				f.api(t, "POST", path+"/drain", "").want(t, 202)
				f.api(t, "POST", path+"/enable", `{"version":"v2"}`).want(t, 200)
			} else {
				f.api(t, "PATCH", path, `{"version":"v2","address":"`+f.spare+`"}`).want(t, 200)
			}
			body := f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200)
			v1 := versionOf(t, body, "v1")
			var entry map[string]any
			for _, b := range v1["backends"].([]any) {
				if m := b.(map[string]any); m["name"] == name {
					entry = m
				}
			}
			if v1["inflight"] != float64(1) || v1["open_connections"] != float64(1) || entry == nil ||
				entry["state"] != "relabelled" || entry["inflight"] != float64(1) {
				t.Errorf("v1 with a request held on %s, now v2: %v; want %s listed relabelled with the request and its connection", name, v1, name)
			}

			f.releaseHeld()
			if s := <-done; s != 200 {
				t.Fatalf("the held request ended with %d", s)
			}
			if !pollFor(10*time.Second, func() bool {
				v1 := versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v1")
				return v1["inflight"] == float64(0) && v1["open_connections"] == float64(0) && len(v1["backends"].([]any)) == 2
			}) {
				t.Errorf("v1 still held by %s once its request ended: %v", name, versionOf(t, f.api(t, "GET", "/v1/pools/shop/versions", "").want(t, 200), "v1"))
			}
		})
	}
}
