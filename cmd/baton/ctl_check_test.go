package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/baton-lb/baton/admin/v1"
)

// TestCanaryCheckFollowsTheJudge: once the judge has a verdict, --check
// reports it whatever the error-rate allowance says; before that, the
// error-rate comparison decides.
func TestCanaryCheckFollowsTheJudge(t *testing.T) {
	report := func(verdict string, stableErr, canaryErr float64) v1.CanaryReport {
		return v1.CanaryReport{Pool: "shop", StableVersion: "v1", CanaryVersion: "v2", Verdict: verdict,
			Reason: "new error \"GET /checkout 500\"",
			Versions: []v1.VersionReport{
				{Version: "v1", Role: "stable", Requests: 1000, ErrorRate: stableErr},
				{Version: "v2", Role: "canary", Requests: 100, ErrorRate: canaryErr},
			}}
	}
	args := &ctlArgs{flags: map[string]string{"max-error-rate-increase": "0.9"}}
	cases := []struct {
		name     string
		rep      v1.CanaryReport
		wantCode int // 0: passes
		wantMsg  string
	}{
		{"judge passes a canary the allowance would fail", report("pass", 0, 1), 0, ""},
		{"judge fails a canary the allowance would pass", report("fail", 0, 0), exitFail, `the judge fails canary v2: new error "GET /checkout 500"`},
		{"inconclusive falls back to error rates: within", report("inconclusive", 0.01, 0.5), 0, ""},
		{"inconclusive falls back to error rates: worse", report("inconclusive", 0, 0.95), exitFail, "canary v2 is worse"},
		{"no verdict falls back to error rates", report("", 0, 0), 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkCanary(c.rep, args)
			if c.wantCode == 0 {
				if err != nil {
					t.Fatalf("want a pass, got %v", err)
				}
				return
			}
			var ce *ctlError
			if !errors.As(err, &ce) || ce.code != c.wantCode || !strings.Contains(ce.msg, c.wantMsg) {
				t.Fatalf("want exit %d with %q, got %v", c.wantCode, c.wantMsg, err)
			}
		})
	}
}
