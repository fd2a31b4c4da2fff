//go:build !linux

package sockio

import (
	"net"
	"syscall"
)

// IO is never made off Linux (see the package comment): New returns nil.
type IO struct{}

// New returns nil: callers read and write c itself.
func New(net.Conn) *IO { return nil }

// The methods below exist for callers to compile; an IO never exists to
// call them on.

func (s *IO) RawConn() syscall.RawConn        { return nil }
func (s *IO) Read([]byte) (int, error)        { panic("sockio: no IO off Linux") }
func (s *IO) Write([]byte) (int, error)       { panic("sockio: no IO off Linux") }
func (s *IO) Write2(_, _ []byte) (int, error) { panic("sockio: no IO off Linux") }
func (s *IO) CapReads(int)                    {}
