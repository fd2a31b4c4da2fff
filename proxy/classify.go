package proxy

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/baton-lb/baton/internal/h1"
	"github.com/baton-lb/baton/pool"
)

// Class names how a request ended. The same value feeds the response status,
// the access log, the backend's record and, later, metrics and the judge.
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
	}
	return 0
}

// Result returns what the class means for the backend's record.
func (c Class) Result() pool.Result {
	switch c {
	case ClassOK:
		return pool.ResultOK
	case ClassServerError:
		return pool.ResultError
	case ClassGatewayStatus, ClassReset, ClassTimeout, ClassBadResponse:
		return pool.ResultGatewayFailure
	case ClassConnectFailed, ClassConnectTimeout:
		return pool.ResultNotSent
	}
	return pool.ResultClientGone // the client's or baton's doing, not the backend's
}

// backendsFault reports whether a failure of this class says something
// about the backend (its record, its error signatures, outlier detection).
func (c Class) backendsFault() bool {
	return c != ClassOK && c != ClassClientGone && c != ClassClientError && c != ClassNoResources
}

// Stage is how far a request got with one backend when it failed.
type stage uint8

const (
	stageConnect  stage = iota // getting a connection
	stageSend                  // writing the request
	stageResponse              // waiting for or reading the response head
	stageBody                  // reading the response body
)

// errClient marks a failure on the client's side of the exchange.
type clientError struct {
	err     error
	gone    bool // the client closed or reset (499), as opposed to a malformed body (400)
	timeout bool // the client stalled past its body timeout (408)
}

func (e *clientError) Error() string { return "client: " + e.err.Error() }
func (e *clientError) Unwrap() error { return e.err }

// errBodyTooLarge: a chunked request body grew past the limit.
var errBodyTooLarge = errors.New("request body is larger than the configured maximum")

// classify is the one place that turns an outcome into a class. err is the
// failure (nil when the backend answered) and status the backend's status.
func classify(err error, st stage, status int) Class {
	if err == nil {
		switch {
		case status == 502 || status == 503 || status == 504:
			return ClassGatewayStatus
		case status >= 500:
			return ClassServerError
		}
		return ClassOK
	}
	var ce *clientError
	if errors.As(err, &ce) {
		if ce.gone {
			return ClassClientGone
		}
		return ClassClientError // malformed, oversized or stalled: answered 400/408/413
	}
	switch {
	case pool.LocalExhaustion(err):
		return ClassNoResources
	case errors.Is(err, pool.ErrNoBackend):
		return ClassNoBackend
	case errors.Is(err, pool.ErrPoolFull), errors.Is(err, pool.ErrClosing):
		return ClassPoolFull
	}
	var bre *h1.BadResponseError
	if errors.As(err, &bre) || errors.Is(err, h1.ErrHeadTooLarge) || errors.Is(err, h1.ErrTooManyInterim) {
		return ClassBadResponse
	}
	if isTimeout(err) {
		if st == stageConnect {
			return ClassConnectTimeout
		}
		return ClassTimeout
	}
	if st == stageConnect {
		return ClassConnectFailed
	}
	return ClassReset
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isClosedByPeer reports an EOF or reset: what the keep-alive race and a
// dying backend look like.
func isClosedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, h1.ErrNoResponse) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.Is(err, h1.ErrTruncatedHead)
}
