//go:build wasip1

// The canonical-ABI glue of the core module (see sdk/ABI.md): lifting what the host wrote into
// the arena (arena_wasip1.go), the seven filter exports, their post-return functions, and
// lowering of results.
//
// Results of exports (configure's result, a phase's action) are written to a static return
// area; the Go values they point to (local-response headers and body) stay reachable from a
// global until the host calls the matching cabi_post_* (Go's GC does not move objects).
// A panic in an export is logged (error level, with its stack) and becomes a trap.

package weir

import (
	"fmt"
	"runtime/debug"
	"unsafe"
)

// liftString copies a string (ptr, len) the host wrote into the arena.
func liftString(p, n uint32) string {
	if n == 0 {
		return ""
	}
	return string(unsafe.Slice((*byte)(arenaPtr(p, n)), n))
}

// liftBytes copies a list<u8> the host wrote into the arena.
func liftBytes(p, n uint32) []byte {
	out := make([]byte, n)
	if n > 0 {
		copy(out, unsafe.Slice((*byte)(arenaPtr(p, n)), n))
	}
	return out
}

// load32 reads a u32 the host wrote into the arena at p.
func load32(p uint32) uint32 { return *(*uint32)(arenaPtr(p, 4)) }

// liftStrings copies a list<string>.
func liftStrings(p, n uint32) []string {
	out := make([]string, n)
	for i := uint32(0); i < n; i++ {
		e := p + 8*i
		out[i] = liftString(load32(e), load32(e+4))
	}
	return out
}

// liftHeaders copies a list<tuple<string, string>>.
func liftHeaders(p, n uint32) []Header {
	out := make([]Header, n)
	for i := uint32(0); i < n; i++ {
		e := p + 16*i
		out[i] = Header{
			Name:  liftString(load32(e), load32(e+4)),
			Value: liftString(load32(e+8), load32(e+12)),
		}
	}
	return out
}

// addr is the linear-memory address of Go memory (for the host to read during a call).
func addr(p unsafe.Pointer) uint32 { return uint32(uintptr(p)) }

func stringAddr(s string) uint32 { return addr(unsafe.Pointer(unsafe.StringData(s))) }

func bytesAddr(b []byte) uint32 { return addr(unsafe.Pointer(unsafe.SliceData(b))) }

// lowerPairs lays out a list<tuple<string, string>> for the host: four u32 per pair
// (name ptr, name len, value ptr, value len) pointing at the Go strings, which the caller
// keeps alive for the call.
func lowerPairs(n int, pair func(i int) (string, string)) []uint32 {
	out := make([]uint32, 4*n)
	for i := 0; i < n; i++ {
		name, value := pair(i)
		out[4*i] = stringAddr(name)
		out[4*i+1] = uint32(len(name))
		out[4*i+2] = stringAddr(value)
		out[4*i+3] = uint32(len(value))
	}
	return out
}

func slicePtr(s []uint32) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(s)) }

// ---- exports ----

// current is the configured filter of this instance.
var current *instance

// exportRet is the return area of configure and of the phases (the largest result, an action,
// is 24 bytes: tag, status, headers ptr/len, body ptr/len).
var exportRet [6]uint32

// keep holds what exportRet points to until the host calls cabi_post_*.
var keep struct {
	response *LocalResponse
	headers  []Header
	pairs    []uint32
	message  string
}

func retAddr() uint32 { return addr(unsafe.Pointer(&exportRet)) }

// guard turns a panic into a trap, after logging it (with its stack) at error level: the
// proxy then discards the instance and applies the filter's failure policy. Deferred by
// every export.
func guard() {
	if r := recover(); r != nil {
		resetArena()
		sysLog(LevelError, utf8String(fmt.Sprintf("panic: %v\n\n%s", r, debug.Stack())))
		trap()
	}
}

//go:wasmexport weir:filter/filter@0.1.0#configure
func exportConfigure(p, n uint32) uint32 {
	config := liftString(p, n) // copy first: the argument lives in the arena
	resetArena()
	defer guard()
	exportRet = [6]uint32{}
	in, err := configureInstance(registered, config)
	if err != nil {
		keep.message = utf8String(err.Error())
		exportRet[0] = 1
		exportRet[1] = stringAddr(keep.message)
		exportRet[2] = uint32(len(keep.message))
		return retAddr()
	}
	current = in
	exportRet[1] = uint32(in.phases)
	return retAddr()
}

// lowerAction writes a variant action into the return area: tag u8 at 0, then a
// local-response record at 4 (status u16, headers list, body list).
func lowerAction(a Action) uint32 {
	exportRet = [6]uint32{}
	switch a.kind {
	case actionBuffer:
		exportRet[0] = 2
	case actionRespond:
		r := a.response
		status := uint32(0) // the proxy answers 500 for a status outside 200..=599
		if r.Status >= 0 && r.Status <= 0xffff {
			status = uint32(r.Status)
		}
		keep.response = r
		keep.headers = validHeaders(r.Headers)
		hs := keep.headers
		keep.pairs = lowerPairs(len(hs), func(i int) (string, string) { return hs[i].Name, hs[i].Value })
		exportRet[0] = 1
		exportRet[1] = status
		exportRet[2] = addr(slicePtr(keep.pairs))
		exportRet[3] = uint32(len(hs))
		exportRet[4] = bytesAddr(r.Body)
		exportRet[5] = uint32(len(r.Body))
	}
	return retAddr()
}

func instanceOrTrap() *instance {
	if current == nil {
		panic("weir: a phase was called before configure succeeded")
	}
	return current
}

//go:wasmexport weir:filter/filter@0.1.0#on-request-headers
func exportOnRequestHeaders(ctx uint32) uint32 {
	resetArena()
	defer guard()
	return lowerAction(instanceOrTrap().onRequestHeaders(ctx))
}

//go:wasmexport weir:filter/filter@0.1.0#on-request-body
func exportOnRequestBody(ctx, end uint32) uint32 {
	resetArena()
	defer guard()
	return lowerAction(instanceOrTrap().onRequestBody(ctx, end != 0))
}

//go:wasmexport weir:filter/filter@0.1.0#on-response-headers
func exportOnResponseHeaders(ctx uint32) uint32 {
	resetArena()
	defer guard()
	return lowerAction(instanceOrTrap().onResponseHeaders(ctx))
}

//go:wasmexport weir:filter/filter@0.1.0#on-response-body
func exportOnResponseBody(ctx, end uint32) uint32 {
	resetArena()
	defer guard()
	return lowerAction(instanceOrTrap().onResponseBody(ctx, end != 0))
}

//go:wasmexport weir:filter/filter@0.1.0#on-log
func exportOnLog(ctx uint32) {
	resetArena()
	defer guard()
	instanceOrTrap().onLog(ctx)
}

//go:wasmexport weir:filter/filter@0.1.0#context-done
func exportContextDone(ctx uint32) {
	resetArena()
	defer guard()
	if current != nil {
		current.contextDone(ctx)
	}
}

// postReturn releases what the last export's result pointed to.
func postReturn() {
	keep.response = nil
	keep.headers = nil
	keep.pairs = nil
	keep.message = ""
	resetArena()
}

//go:wasmexport cabi_post_weir:filter/filter@0.1.0#configure
func postConfigure(uint32) { postReturn() }

//go:wasmexport cabi_post_weir:filter/filter@0.1.0#on-request-headers
func postOnRequestHeaders(uint32) { postReturn() }

//go:wasmexport cabi_post_weir:filter/filter@0.1.0#on-request-body
func postOnRequestBody(uint32) { postReturn() }

//go:wasmexport cabi_post_weir:filter/filter@0.1.0#on-response-headers
func postOnResponseHeaders(uint32) { postReturn() }

//go:wasmexport cabi_post_weir:filter/filter@0.1.0#on-response-body
func postOnResponseBody(uint32) { postReturn() }
