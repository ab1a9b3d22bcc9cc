package weir

// Memory of a Go filter in the proxy.
//
// An instance's linear memory holds Go's static data (about 5.3 MiB, including the SDK's 2 MiB
// host arena: the buffer into which the host writes everything it passes to the filter, see
// arena_wasip1.go) and what the Go runtime manages (the heap, goroutine stacks, metadata).
// The proxy caps the total with the filter's limits.memory (default 16 MiB); growing past the
// cap traps.

// DefaultArenaSize is the host arena's size unless SetArenaSize changes it: the most bytes one
// host call can pass into the filter. 2 MiB covers the proxy's default body limit
// (limits.max_body: 1MiB held by Buffer, plus the chunk that arrives on top of it) with room
// to spare.
const DefaultArenaSize = 2 << 20

// DefaultMemoryLimit is the Go runtime's soft memory limit in a filter
// (runtime/debug.SetMemoryLimit), set when the module starts. It does not include the static
// data (nor the default arena). Go's heap grows in 4 MiB steps and lets garbage grow as large
// as the live data before collecting; an ordinary filter settles far below the limit (an
// instance measured about 10 MiB in all, also handling 1 MiB bodies), but one whose live
// data grows makes the GC collect harder near the limit instead of growing past the proxy's
// default limits.memory of 16 MiB. A filter with more live data, and a raised
// limits.memory, calls debug.SetMemoryLimit itself in its init function.
const DefaultMemoryLimit = 8 << 20

// minArenaSize keeps SetArenaSize from making an arena too small for ordinary header calls.
const minArenaSize = 64 << 10

// SetArenaSize sets the host arena's size in bytes (at least 64 KiB): the largest single thing
// the host can pass into the filter, which for a body filter is the whole buffered body
// (limits.max_body plus one chunk) and for a callout the whole response. A bigger transfer
// traps (the proxy then applies the filter's failure policy). Up to DefaultArenaSize it uses
// the static arena; beyond, a heap buffer of that size, which also raises the soft memory
// limit by as much (and the GC lets the heap grow to about twice its live data: raise
// limits.memory by about three times the size). Raise it together with limits.max_body; call
// it from an init function (or configure). Natively it does nothing.
func SetArenaSize(bytes int) {
	if bytes < minArenaSize {
		bytes = minArenaSize
	}
	setArenaSize((bytes + 7) &^ 7)
}
