// Package sockio reads and writes a connection's non-blocking socket with
// raw system calls, under the connection's own RawConn (which keeps its
// deadlines, its lock against a concurrent Close, and the wait for
// readiness in Go's netpoller).
//
// Why: net.Conn's Read and Write enter the system call through the Go
// scheduler (entersyscall), because a system call may block. A socket in
// non-blocking mode never does; but while a thread is inside one, the
// scheduler counts its P as blocked, and with one P (GOMAXPROCS=1, as when
// baton is held to one core) the runtime's monitor hands the P to another
// thread when it sees the same system call twice. Under load that is
// thousands of thread switches a second, each a futex wake and two context
// switches on the one core, for system calls that were about to return. A
// raw system call keeps the P: no hand-off, no scheduler bookkeeping per
// call. Blocking is still done by the netpoller, as before.
//
// Linux only: the calls are made by number, as Linux numbers them (other
// systems lack some, or reach them through libc, deprecated for this).
// Elsewhere New returns nil and callers use the net.Conn itself.
package sockio
