//go:build wasip1

// cabi_realloc and the arenas behind it.
//
// The host obtains memory in the filter through cabi_realloc whenever it passes data in: the
// results of imports (a header, a body, a callout response) and the configure argument. It
// calls cabi_realloc while it is lowering values, in the middle of a wasmimport call, where
// the Go runtime must not run: an allocation could start the GC, which calls clock imports
// (the component model forbids leaving the instance there) or switches goroutines. So
// cabi_realloc is a //go:nosplit bump allocator that only reads and writes plain integers:
// no Go allocation, no runtime call, no bounds check, no write barrier. When the request does
// not fit, it executes `unreachable` (an explicit trap; the proxy discards the instance).
//
// The host arena is a static 2 MiB array, or, after SetArenaSize asks for more, a []byte that
// ordinary Go code allocated (never cabi_realloc); it is referenced from a global while in use,
// and Go's GC does not move objects. Everything the host writes there is copied into Go values
// right after the call that produced it, so the arena is reset before every import call that
// returns memory and at the start of every export (configure first copies its argument):
// it only ever holds one call's data. Hence memory stays flat however many requests an
// instance serves, and one call can use all of it: the arena size is the largest single
// transfer (a whole buffered body), not a budget per request.
//
// The WASI preview1 adapter (linked when the module is componentized) allocates its stack
// and state once, during _initialize, before any Go code could allocate an arena: it gets
// cabi_realloc_adapter, a small static arena that is never reset.

package weir

import (
	"runtime/debug"
	"unsafe"
)

func trap() // trap_wasip1_wasm.s: `unreachable`

// staticArena is the default host arena: static data, so it neither costs the Go heap nor
// counts in the GC's pacing (a heap buffer is live data, and the GC lets the heap grow to
// twice its live data). uint64 elements make it 8-aligned.
var staticArena [DefaultArenaSize / 8]uint64

var (
	hostArena     []byte  // the arena in use; written by Go code only
	hostArenaBase uintptr // its address, for cabi_realloc
	hostArenaCap  uintptr
	hostArenaUsed uintptr
)

// adapterArenaSize: the preview1 adapter takes one 64 KiB page for its stack plus its state
// (a few KiB), once per instance.
const adapterArenaSize = 256 << 10

var adapterArena [adapterArenaSize / 8]uint64 // uint64 elements: 8-aligned
var adapterArenaUsed uintptr

func init() {
	debug.SetMemoryLimit(DefaultMemoryLimit)
	useArena(unsafe.Slice((*byte)(unsafe.Pointer(&staticArena)), DefaultArenaSize))
}

func useArena(buf []byte) {
	hostArena = buf
	hostArenaBase = uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	hostArenaCap = uintptr(len(buf))
	hostArenaUsed = 0
}

func setArenaSize(n int) {
	old := int64(0)
	if hostArenaBase != uintptr(unsafe.Pointer(&staticArena)) {
		old = int64(hostArenaCap) // a heap arena, replaced below
	}
	grown := int64(0)
	if n <= DefaultArenaSize {
		useArena(unsafe.Slice((*byte)(unsafe.Pointer(&staticArena)), n))
	} else {
		useArena(make([]byte, n)) // a large object: page-aligned
		grown = int64(n)
	}
	// A heap arena is live data: give the heap the same headroom above it as before.
	if limit := debug.SetMemoryLimit(-1); limit < 1<<62 {
		debug.SetMemoryLimit(limit - old + grown)
	}
}

// bump allocates size bytes aligned to align from the arena at base (capacity bytes, used so
// far in *used). It calls nothing but the trap.
//
//go:nosplit
func bump(base, capacity uintptr, used *uintptr, align, size uint32) uint32 {
	a := uintptr(align)
	if a == 0 {
		a = 1
	}
	if a&(a-1) != 0 || base == 0 {
		trap()
	}
	start := (base + *used + a - 1) &^ (a - 1)
	end := start + uintptr(size)
	if end > base+capacity || end < start {
		trap() // full: an explicit trap, never a corrupted heap
	}
	*used = end - base
	return uint32(start)
}

//go:wasmexport cabi_realloc
//go:nosplit
func cabiRealloc(old, oldSize, align, size uint32) uint32 {
	if old != 0 && size <= oldSize {
		return old
	}
	p := bump(hostArenaBase, hostArenaCap, &hostArenaUsed, align, size)
	if old != 0 && oldSize > 0 {
		// The canonical ABI only asks for fresh memory; copy anyway, as a realloc should.
		// Both blocks are in the arena: address them from its base (no uintptr→pointer).
		base := unsafe.Pointer(unsafe.SliceData(hostArena))
		src := unsafe.Add(base, uintptr(old)-hostArenaBase)
		dst := unsafe.Add(base, uintptr(p)-hostArenaBase)
		for i := uintptr(0); i < uintptr(oldSize); i++ {
			*(*byte)(unsafe.Add(dst, i)) = *(*byte)(unsafe.Add(src, i))
		}
	}
	return p
}

//go:wasmexport cabi_realloc_adapter
//go:nosplit
func cabiReallocAdapter(old, oldSize, align, size uint32) uint32 {
	if old != 0 {
		trap() // the adapter only allocates
	}
	return bump(uintptr(unsafe.Pointer(&adapterArena)), adapterArenaSize, &adapterArenaUsed, align, size)
}

// resetArena frees everything in the host arena. Call it only when nothing in it is needed.
func resetArena() { hostArenaUsed = 0 }

// arenaPtr turns an address the host got from cabi_realloc into a pointer, checking that
// [p, p+n) lies in the arena (anything else is a host bug: trap).
func arenaPtr(p, n uint32) unsafe.Pointer {
	if uintptr(p) < hostArenaBase || uintptr(p)+uintptr(n) > hostArenaBase+hostArenaCap {
		trap()
	}
	return unsafe.Add(unsafe.Pointer(unsafe.SliceData(hostArena)), uintptr(p)-hostArenaBase)
}
