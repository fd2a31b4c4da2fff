package pool

import (
	"bytes"
	"time"

	"github.com/baton-lb/baton/canary"
)

// Class names how a request to a backend ended. The proxy's classifier
// produces it; the same value decides the answer's status, the backend's
// record, outlier detection and what the judge learns from the request.
type Class uint8

const (
	ClassOK             Class = iota // a response below 500 from the backend
	ClassServerError                 // the backend answered 500, 501, 505…
	ClassGatewayStatus               // the backend itself answered 502, 503 or 504
	ClassConnectFailed               // refused, unreachable: never reached the backend
	ClassConnectTimeout              // the TCP connect timed out
	ClassPoolFull                    // the backend's connection cap was reached
	ClassReset                       // reset or closed before or during the response
	ClassTimeout                     // response header or body inactivity timeout
	ClassBadResponse                 // a response baton will not pass on
	ClassNoBackend                   // nothing to send the request to
	ClassClientGone                  // the client went away
	ClassClientError                 // the client sent a malformed or oversized body
	ClassNoResources                 // baton itself ran out of descriptors or memory
	ClassInternal                    // baton failed while serving it (a bug): not the backend's doing
)

var classNames = [...]string{
	ClassOK:             "ok",
	ClassServerError:    "server_error",
	ClassGatewayStatus:  "gateway_status",
	ClassConnectFailed:  "connect_failed",
	ClassConnectTimeout: "connect_timeout",
	ClassPoolFull:       "pool_full",
	ClassReset:          "reset",
	ClassTimeout:        "timeout",
	ClassBadResponse:    "bad_response",
	ClassNoBackend:      "no_backend",
	ClassClientGone:     "client_gone",
	ClassClientError:    "client_error",
	ClassNoResources:    "no_resources",
	ClassInternal:       "internal",
}

func (c Class) String() string { return classNames[c] }

// Status returns the status baton answers with for a failure of this class,
// or 0 for classes where the backend's own status stands.
func (c Class) Status() int {
	switch c {
	case ClassConnectFailed, ClassReset, ClassBadResponse:
		return 502
	case ClassConnectTimeout, ClassTimeout:
		return 504
	case ClassPoolFull, ClassNoBackend, ClassNoResources:
		return 503
	case ClassClientGone:
		return 499 // logged only: nobody is left to read it
	case ClassClientError:
		return 400
	case ClassInternal:
		return 500
	}
	return 0
}

// BackendsFault reports whether a failure of this class says something
// about the backend, so its last error is worth noting: every failure but
// the client's and baton's own.
func (c Class) BackendsFault() bool {
	switch c {
	case ClassOK, ClassClientGone, ClassClientError, ClassNoResources, ClassInternal:
		return false
	}
	return true
}

// Failed reports whether the backend failed the request: its record counts
// an error and, when the request is evidence, so does its version's.
func (c Class) Failed() bool {
	switch c {
	case ClassServerError, ClassGatewayStatus, ClassConnectFailed, ClassConnectTimeout,
		ClassReset, ClassTimeout, ClassBadResponse:
		return true
	}
	return false
}

// gatewayFailure reports a failure that counts towards outlier ejection:
// the backend gave no usable answer.
func (c Class) gatewayFailure() bool { return c.Failed() && c != ClassServerError }

// Outcome is how one request to a backend ended: the one value the proxy
// fills in and Backend.Finish records. Its slices are read during Finish
// only (they may alias the proxy's buffers).
type Outcome struct {
	Class  Class
	Status int           // the backend's status; 0 when it gave none
	TTFB   time.Duration // from the request's start to the backend's response head
	Group  int           // the request's route group (canary.Groups index)
	// Forced: a tester forced the version; such a request says nothing
	// about how real traffic fares and is never evidence.
	Forced bool
	// Judged: a canary is being judged and Client identifies the request's
	// client, whose share of a version's evidence is bounded.
	Judged bool
	Client canary.ClientKey

	// What an error signature records of a failure.
	Method, Target, AppCode, Excerpt []byte

	// What the live tail shows besides.
	Start time.Time // when the request began
	Sent  int       // the status the client got; 499 when it went away first
	Bytes int64     // response body bytes sent to the client
}

// Finish ends a request picked from this backend and records its outcome,
// once: the backend's counts and record, outlier detection, and — when
// the request is evidence — its version's statistics and error
// signatures. Every successful Pick is followed by exactly one Finish.
//
// A request is evidence unless its version was forced, it ended by the
// client's or baton's doing before the backend answered, or its client is
// over its share of the version's requests in this judge window.
func (b *Backend) Finish(o *Outcome) {
	cls := o.Status / 100
	if cls > 5 || cls < 0 {
		cls = 0
	}
	b.counts.Load().ByClass[cls].Add(1)
	failed := o.Class.Failed()
	var evidence *canary.VersionStats
	if !o.Forced && (failed || o.Status != 0) {
		vs := b.stats.Load()
		if !o.Judged || vs.Admit(o.Client) {
			vs.Record(o.Group, failed, o.Status == 0, o.TTFB)
			evidence = vs
		}
	}
	// The client saw a failure: the backend's, or baton's own 5xx.
	shown := failed || o.Sent >= 500
	if shown || b.pool.tail.tailing() {
		b.note(o, failed, shown, evidence)
	}
	b.requests.Add(1)
	if o.Status != 0 {
		b.latency.Observe(o.TTFB)
	}
	switch {
	case o.Class == ClassOK:
		if b.consecutive.Load() != 0 {
			b.consecutive.Store(0)
		}
	case !failed:
		// The client's or baton's doing: nothing about the backend.
	case !o.Class.gatewayFailure():
		b.errors.Add(1)
		if b.consecutive.Load() != 0 {
			b.consecutive.Store(0)
		}
	default:
		b.errors.Add(1)
		n := b.consecutive.Add(1)
		// Checked at every lim-th failure in a row: a refused ejection (the
		// last healthy backend) is not retried under the pool's lock on
		// every failing request.
		if lim := b.pool.settings().Outlier.ConsecutiveFailures; lim > 0 && int(n)%lim == 0 {
			b.pool.ejectOutlier(b, int(n))
		}
	}
	b.inflight.Add(-1)
}

// note records what is kept of a request beyond the counts: a failure's
// error signature when the request is evidence (vs not nil), and the
// live tail's record. It runs for failures, and for every request while a
// tail is attached; failures are rare next to requests, and this
// allocates.
func (b *Backend) note(o *Outcome, failed, shown bool, vs *canary.VersionStats) {
	sig := ""
	if shown {
		f := b.failure(o)
		sig = f.Key()
		if failed && vs != nil {
			var k canary.ClientKey
			if o.Judged {
				k = o.Client
			}
			b.pool.Signatures().Record(b.spec.Load().version, &f, time.Now(), k)
			vs.NoteErrorClient(k.ID())
		}
	}
	b.tailRecord(o, shown, sig)
}

// failure is what an error signature records of a failed request.
func (b *Backend) failure(o *Outcome) canary.Failure {
	status := o.Status
	if status == 0 {
		status = o.Class.Status() // what the client got, or would have
	}
	return canary.Failure{
		Group:   b.pool.Groups().Name(o.Group),
		Method:  string(o.Method),
		Status:  status,
		Class:   o.Class.String(),
		AppCode: string(o.AppCode),
		Path:    string(examplePath(o.Target)),
		Body:    printable(o.Excerpt[:min(len(o.Excerpt), maxSignatureExcerpt)]),
	}
}

// maxSignatureExcerpt is how much of a failed response's body an error
// signature keeps as its example; the tail may show more (tail.body).
const maxSignatureExcerpt = 160

// examplePath is the path a signature's example shows: without the query,
// which may carry tokens or personal data, and at most 200 bytes.
func examplePath(target []byte) []byte {
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	return target[:min(len(target), 200)]
}

// printable keeps an excerpt readable in JSON and logs.
func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		switch {
		case c == '\n' || c == '\r' || c == '\t':
			out = append(out, ' ')
		case c >= 0x20 && c < 0x7f:
			out = append(out, c)
		default:
			out = append(out, '?')
		}
	}
	return string(out)
}
