package canary

import (
	"fmt"
	"testing"
	"time"
)

// TestClientBounds: in a judge window one client counts for at most its
// limit of a version's requests, by address and by cookie apart; others
// are not affected; a new window starts afresh; no limit, no bound.
func TestClientBounds(t *testing.T) {
	v := NewVersionStats("shop", "v2")
	one := ClientKey{Addr: ClientHash([]byte("203.0.113.9"))}
	for range 100 {
		if !v.Admit(one) {
			t.Fatal("without a window every request is evidence")
		}
	}
	v.NewWindow(10)
	admitted := 0
	for range 100 {
		if v.Admit(one) {
			admitted++
		}
	}
	if admitted != 10 || v.Discarded() != 90 {
		t.Errorf("one address: %d admitted, %d discarded; want 10 and 90", admitted, v.Discarded())
	}
	// The same cookie from many addresses is still one client.
	cookie := ClientHash([]byte("client-id"))
	admitted = 0
	for i := range 50 {
		if v.Admit(ClientKey{Addr: ClientHash([]byte(fmt.Sprintf("198.51.100.%d", i))), Cookie: cookie}) {
			admitted++
		}
	}
	if admitted != 10 {
		t.Errorf("one cookie from 50 addresses: %d admitted, want 10", admitted)
	}
	// Other clients are not held back (in a fresh window, so that none
	// shares a slot with the clients above).
	v.NewWindow(10)
	for i := range 200 {
		if !v.Admit(ClientKey{Addr: ClientHash([]byte(fmt.Sprintf("192.0.2.%d/%d", i%250, i)))}) {
			t.Fatalf("client %d of 200 distinct ones was held back", i)
		}
	}
	v.NewWindow(10)
	if !v.Admit(one) {
		t.Errorf("a new window did not start afresh")
	}
	v.NewWindow(0)
	for range 100 {
		if !v.Admit(one) {
			t.Fatal("with the bound lifted a request was held back")
		}
	}
}

// TestSignatureClientBounds: one client counts for at most one occurrence
// of a rare signature per window (more once the signature is common), and
// its occurrences come from one client, which never fails a release.
func TestSignatureClientBounds(t *testing.T) {
	s := NewSignatures()
	s.NewWindow(0.1)
	f := &Failure{Group: "/checkout", Method: "POST", Status: 500, Class: "server_error"}
	attacker := ClientKey{Cookie: ClientHash([]byte("genuine-canary-cookie"))}
	for range 20 {
		s.Record("v2", f, time.Now(), attacker)
	}
	sig := s.Snapshot()[f.Key()]
	if sig.Counts["v2"] != 1 || sig.Clients["v2"] != 1 || s.Discarded() != 19 {
		t.Errorf("20 failures from one client in a window: counted %d from %d clients, %d discarded; want 1, 1, 19",
			sig.Counts["v2"], sig.Clients["v2"], s.Discarded())
	}
	// The judge does not fail a release on one client's failures.
	j := NewJudge(testJudgeConfig())
	start := time.Unix(0, 0)
	r := j.Evaluate(Input{Now: start.Add(5 * time.Second), Share: 0.01, StepStart: start, CanaryBackends: 1, CanaryHealthy: 1,
		Stable: Side{Requests: 10000}, Canary: Side{Requests: 100, Errors: 5},
		Signatures: []SignatureEvidence{{Key: f.Key(), Canary: 5, CanaryClients: 1}}})
	if r.Verdict == Fail && r.Rule == "signature" {
		t.Errorf("one client's failures failed the release: %s", r.Reason)
	}
	r = NewJudge(testJudgeConfig()).Evaluate(Input{Now: start.Add(5 * time.Second), Share: 0.01, StepStart: start, CanaryBackends: 1, CanaryHealthy: 1,
		Stable: Side{Requests: 10000}, Canary: Side{Requests: 100, Errors: 5},
		Signatures: []SignatureEvidence{{Key: f.Key(), Canary: 5, CanaryClients: 3}}})
	if r.Verdict != Fail || r.Rule != "signature" {
		t.Errorf("the same from three clients: %s/%s; want a signature fail", r.Verdict, r.Rule)
	}
}

// TestErrorsFromFewClientsDoNotFail: one client holding a canary cookie
// chooses where its failures land; errors from fewer than MinErrorClients
// known clients never fail a release by the error rules, from more they do.
func TestErrorsFromFewClientsDoNotFail(t *testing.T) {
	start := time.Unix(0, 0)
	for _, c := range []struct {
		clients int
		fail    bool
	}{{1, false}, {2, false}, {3, true}, {0, true}} {
		r := NewJudge(testJudgeConfig()).Evaluate(Input{Now: start.Add(5 * time.Second), Share: 0.1, StepStart: start,
			CanaryBackends: 1, CanaryHealthy: 1,
			Stable: Side{Requests: 1000}, Canary: Side{Requests: 100, Errors: 60, ErrorClients: c.clients}})
		if failed := r.Verdict == Fail; failed != c.fail {
			t.Errorf("errors from %d clients (0: unknown): %s/%s %q; want fail %v", c.clients, r.Verdict, r.Rule, r.Reason, c.fail)
		}
	}
	v := NewVersionStats("shop", "v2")
	for i := range 20 {
		v.NoteErrorClient(uint64(i%2 + 1))
	}
	v.NoteErrorClient(0)
	if n := v.ErrorClients(); n != 2 {
		t.Errorf("errors from two clients (and one unknown) counted as %d clients", n)
	}
	v.ResetClients()
	if n := v.ErrorClients(); n != 0 {
		t.Errorf("after a reset: %d", n)
	}
}
