package proxy

import "runtime"

// SetPipeSize makes the pipes made from now on hold size bytes (a page is a
// pipe of one slot) and drops the ones kept for reuse; it returns the way
// back.
func SetPipeSize(size int) (restore func()) {
	old := pipeSize.Load()
	pipeSize.Store(int32(size))
	runtime.GC() // sync.Pool keeps pipes across one collection
	runtime.GC()
	return func() {
		pipeSize.Store(old)
		runtime.GC()
		runtime.GC()
	}
}
