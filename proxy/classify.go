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
func classify(err error, st stage, status int) pool.Class {
	if err == nil {
		switch {
		case status == 502 || status == 503 || status == 504:
			return pool.ClassGatewayStatus
		case status >= 500:
			return pool.ClassServerError
		}
		return pool.ClassOK
	}
	var ce *clientError
	if errors.As(err, &ce) {
		if ce.gone {
			return pool.ClassClientGone
		}
		return pool.ClassClientError // malformed, oversized or stalled: answered 400/408/413
	}
	switch {
	case pool.LocalExhaustion(err):
		return pool.ClassNoResources
	case errors.Is(err, pool.ErrNoBackend):
		return pool.ClassNoBackend
	case errors.Is(err, pool.ErrPoolFull), errors.Is(err, pool.ErrClosing):
		return pool.ClassPoolFull
	}
	var bre *h1.BadResponseError
	if errors.As(err, &bre) || errors.Is(err, h1.ErrHeadTooLarge) || errors.Is(err, h1.ErrTooManyInterim) {
		return pool.ClassBadResponse
	}
	if isTimeout(err) {
		if st == stageConnect {
			return pool.ClassConnectTimeout
		}
		return pool.ClassTimeout
	}
	if st == stageConnect {
		return pool.ClassConnectFailed
	}
	return pool.ClassReset
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
