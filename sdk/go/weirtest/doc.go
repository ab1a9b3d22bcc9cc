//go:build !wasip1

// Package weirtest runs Weir filters natively, in plain `go test`: no proxy, no wasm.
//
// A [Harness] configures a filter (the one registered with weir.Register, or one given
// [WithFilter]) through the same code the wasm module runs, then drives its phases the way
// the proxy does: only declared phases, a [weir.Context] per [Request], [weir.Buffer]ed body
// bytes held and prepended to the next chunk, context-done at the end. Every host call goes to
// a [Host]: header maps and bodies of the running phase, a fake clock the test advances, KV
// with versions, TTLs, counters and token buckets, recorded metrics and logs, callouts
// answered by a handler, and capability grants so denials can be tested.
//
//	func TestTag(t *testing.T) {
//		h := weirtest.MustNew(t, `{"value": "1"}`)
//		out := h.Serve(weirtest.Get("/").WithClient("10.0.0.1:5000"), weirtest.NewResponse(200))
//		if v, _ := out.Upstream.Header("x-tag"); v != "1" {
//			t.Fatalf("x-tag %q", v)
//		}
//		if h.LiveContexts() != 0 {
//			t.Fatal("per-request state leaked")
//		}
//	}
//
// Host calls reach the emulator through a process-wide hook, so phase calls of harnesses in
// parallel tests take turns (they are short). The package does not exist in the wasip1 build:
// give test files `//go:build !wasip1`.
package weirtest
