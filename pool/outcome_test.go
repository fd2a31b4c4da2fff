package pool_test

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/baton-lb/baton/canary"
	"github.com/baton-lb/baton/pool"
)

// TestOutcomeDecidesEvidenceOnce: one Outcome per request, recorded by
// Backend.Finish, decides everything the request leaves behind — the
// backend's record, its version's evidence and the error signatures —
// by one rule, whichever way the proxy got there (answer, retry, panic).
func TestOutcomeDecidesEvidenceOnce(t *testing.T) {
	type want struct {
		requests, errors, noAnswer uint64 // the version's evidence
		backendErrors              uint64 // the backend's own record
		signature                  string // "" for none
	}
	cases := []struct {
		name string
		o    pool.Outcome
		want want
	}{
		{"an answer", pool.Outcome{Class: pool.ClassOK, Status: 200}, want{1, 0, 0, 0, ""}},
		{"a client error answer", pool.Outcome{Class: pool.ClassOK, Status: 404}, want{1, 0, 0, 0, ""}},
		{"a server error", pool.Outcome{Class: pool.ClassServerError, Status: 500, Method: []byte("POST"), Target: []byte("/checkout?card=1")},
			want{1, 1, 0, 1, "POST /checkout 500 server_error"}},
		{"a reset before the answer (also a retried attempt)", pool.Outcome{Class: pool.ClassReset, Method: []byte("GET"), Target: []byte("/checkout")},
			want{1, 1, 1, 1, "GET /checkout 502 reset"}},
		{"a connect failure", pool.Outcome{Class: pool.ClassConnectFailed, Method: []byte("GET"), Target: []byte("/checkout")},
			want{1, 1, 1, 1, "GET /checkout 502 connect_failed"}},
		{"a forced version's server error", pool.Outcome{Class: pool.ClassServerError, Status: 500, Forced: true}, want{0, 0, 0, 1, ""}},
		{"a client gone before the answer", pool.Outcome{Class: pool.ClassClientGone}, want{0, 0, 0, 0, ""}},
		{"a client gone mid-body", pool.Outcome{Class: pool.ClassClientGone, Status: 200}, want{1, 0, 0, 0, ""}},
		{"baton's connection cap", pool.Outcome{Class: pool.ClassPoolFull}, want{0, 0, 0, 0, ""}},
		{"baton's own panic", pool.Outcome{Class: pool.ClassInternal}, want{0, 0, 0, 0, ""}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := pool.New(evidencePool(t, "v2"), zerolog.Nop())
			defer p.Close()
			b := p.Backend("b")
			o := c.o
			if o.Target != nil {
				o.Group = p.Groups().Index([]byte("/checkout")) // what the proxy looks up
			}
			b.Finish(&o)
			vs := b.Stats()
			got := want{vs.Requests(), vs.Errors(), vs.NoAnswer(), b.Errors(), ""}
			for key := range p.Signatures().Snapshot() {
				got.signature = key
			}
			if got != c.want {
				t.Errorf("recorded %+v, want %+v", got, c.want)
			}
			if b.Requests() != 1 {
				t.Errorf("the backend counts %d requests, want 1", b.Requests())
			}
		})
	}

	// A judged client over its share of the window is not evidence, and
	// neither are its failures; the backend's record still counts them.
	p := pool.New(evidencePool(t, "v2"), zerolog.Nop())
	defer p.Close()
	b := p.Backend("b")
	b.Stats().NewWindow(2)
	client := canary.ClientKey{Addr: 42}
	group := p.Groups().Index([]byte("/checkout"))
	for range 3 {
		b.Finish(&pool.Outcome{Class: pool.ClassServerError, Status: 500, Group: group, Judged: true, Client: client,
			Method: []byte("GET"), Target: []byte("/checkout")})
	}
	if vs := b.Stats(); vs.Requests() != 2 || vs.Errors() != 2 || vs.Discarded() != 1 {
		t.Errorf("one client's 3 requests with a bound of 2: evidence %d requests, %d errors, %d discarded; want 2, 2, 1",
			vs.Requests(), vs.Errors(), vs.Discarded())
	}
	if n := p.Signatures().Snapshot()["GET /checkout 500 server_error"].Counts["v2"]; n != 2 {
		t.Errorf("the signature counts %d, want the 2 admitted", n)
	}
	if b.Errors() != 3 {
		t.Errorf("the backend's record counts %d errors, want 3", b.Errors())
	}
}
