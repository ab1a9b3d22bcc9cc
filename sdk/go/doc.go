// Package weir is the Go SDK for Weir proxy filters: an idiomatic API over the
// weir:filter@0.1.0 WIT contract (wit/filter.wit), the canonical-ABI glue that makes a Go
// module a filter the proxy can load, and (package weirtest) an emulated proxy so filters are
// unit-tested with plain `go test`.
//
// # A filter
//
// A filter is a type implementing [Filter] (embed [DefaultFilter] and override the phases you
// use), registered from an init function with a configure function that decodes the config
// and declares the phases:
//
//	type addHeader struct {
//		weir.DefaultFilter
//		Name  string `json:"name"`
//		Value string `json:"value"`
//	}
//
//	func (f *addHeader) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
//		if err := req.SetHeader(f.Name, f.Value); err != nil {
//			return weir.Respond(weir.Text(500, err.Error()))
//		}
//		return weir.Continue
//	}
//
//	func init() {
//		weir.Register(func(config []byte) (weir.Filter, weir.Phases, error) {
//			f := &addHeader{}
//			if err := weir.DecodeConfig(config, f); err != nil {
//				return nil, 0, err
//			}
//			return f, weir.PhaseRequestHeaders, nil
//		})
//	}
//
//	func main() {}
//
// Build it with `weir filter build DIR -o f.wasm` (which runs
// `GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared` and turns the core module into a
// component), or load the core module directly: the proxy componentizes it at load time.
//
// # How the proxy drives a filter
//
//   - configure runs once per instance with the filter's JSON config; the function given to
//     [Register] returns the filter and its [Phases], or an error that rejects the config.
//   - Each request has a context id. The SDK creates a [Context] at the first phase call for
//     an id and drops it at context-done: per-request state ([State], [Context.Set]) never
//     outlives its request.
//   - An instance runs one phase call at a time: no locking. Filters must not block (no
//     sleeps, channels or goroutines waiting on each other): a blocked Go program stalls the
//     proxy's thread. Host calls (KV, callouts) are the way to wait.
//   - Host calls return errors as values: a *[HostError] with a [ErrorKind]. A panic is a
//     trap: the SDK logs it (message and stack, error level) and traps; the proxy discards the
//     instance and applies the filter's failure policy.
//
// # Host capabilities
//
// [Log], [Clock], [Metrics], [KV] (shared state, counters, token buckets) and [Callout] (HTTP
// requests to granted targets). KV namespaces and callout targets are denied unless the
// filter's config in the proxy grants them.
//
// # Memory
//
// See [DefaultArenaSize], [SetArenaSize] and [DefaultMemoryLimit]: what the host passes in is
// copied through a fixed-size arena (2 MiB by default: a buffered body must fit), and the Go
// heap is kept compact so an instance fits the proxy's default 16 MiB.
package weir
