//go:build !linux

package proxy

import (
	"syscall"

	"github.com/valyala/fasthttp"

	"github.com/baton-lb/baton/pool"
)

// Without splice(2), every response body of known length up to
// maxBufferedResponseBody is read into memory (see splice_linux.go).

type splicer struct{}

// spliceMinBody: see splice_linux.go; here no body is piped.
const spliceMinBody = 16 << 10

func (c *clientConn) spliceTo() syscall.RawConn { return nil }

func (x *exchange) readBodyToPipe(*fasthttp.RequestCtx, *pool.Conn, int) (bool, error) {
	return false, nil
}

func (x *exchange) piped() bool                { return false }
func (x *exchange) pipedLen() int              { return 0 }
func (x *exchange) writePiped() (int64, error) { return 0, nil }
func (x *exchange) dropPipe()                  {}
