package weir

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Filter is a Weir filter: one method per phase. Embed [DefaultFilter] to get a default
// (continue, do nothing) for every phase and implement only the phases you declare.
//
// The proxy calls a phase only if [Register]'s configure function declared it in [Phases], and
// copies a body into the filter only for a declared body phase. Phases of one request run in
// this order: OnRequestHeaders, OnRequestBody (per chunk), OnResponseHeaders, OnResponseBody
// (per chunk), OnLog. Any of the first four may answer the client with [Respond]; the request
// phases that would have followed are then skipped.
//
// An instance handles one phase call at a time (no locking needed), but it serves many
// requests: keep per-request data in the [Context], not in the Filter.
type Filter interface {
	// OnRequestHeaders runs when the request head has arrived. Headers and path may be
	// changed; [Respond] answers the client without contacting the upstream.
	OnRequestHeaders(ctx *Context, req *Request) Action
	// OnRequestBody runs for each chunk of the request body; end marks the last one (an empty
	// body is one empty chunk with end set). [Buffer] holds the bytes so the next call sees
	// them plus the next chunk; body.Set replaces them.
	OnRequestBody(ctx *Context, body *Body, end bool) Action
	// OnResponseHeaders runs when the upstream's response head (or a later filter's local
	// response) has arrived. Status and response headers may be changed; [Respond] replaces
	// the response.
	OnResponseHeaders(ctx *Context, res *Response) Action
	// OnResponseBody runs for each chunk of the response body, as OnRequestBody.
	OnResponseBody(ctx *Context, body *Body, end bool) Action
	// OnLog runs when the response is complete: for logging and metrics. Heads are
	// readable, not writable.
	OnLog(ctx *Context, view *LogView)
}

// DefaultFilter implements every [Filter] method as "continue / do nothing". Embed it in your
// filter type and override the phases you declare:
//
//	type tagger struct{ weir.DefaultFilter }
//
//	func (tagger) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action { ... }
type DefaultFilter struct{}

// OnRequestHeaders returns [Continue].
func (DefaultFilter) OnRequestHeaders(*Context, *Request) Action { return Continue }

// OnRequestBody returns [Continue] (the bytes go upstream unchanged).
func (DefaultFilter) OnRequestBody(*Context, *Body, bool) Action { return Continue }

// OnResponseHeaders returns [Continue].
func (DefaultFilter) OnResponseHeaders(*Context, *Response) Action { return Continue }

// OnResponseBody returns [Continue].
func (DefaultFilter) OnResponseBody(*Context, *Body, bool) Action { return Continue }

// OnLog does nothing.
func (DefaultFilter) OnLog(*Context, *LogView) {}

// Phases is the set of phases a filter takes part in (the WIT `phases` flags). Combine with |.
type Phases uint8

// The phases. The values are the WIT flag bits.
const (
	PhaseRequestHeaders  Phases = 1 << 0
	PhaseRequestBody     Phases = 1 << 1
	PhaseResponseHeaders Phases = 1 << 2
	PhaseResponseBody    Phases = 1 << 3
	PhaseLog             Phases = 1 << 4

	// Stateless is not a phase: the filter keeps no per-request state. The proxy then skips
	// context-done (one guest call less per request), and every phase call gets an empty
	// *Context (valid during that call only), so State, Set and Get do not carry over
	// between phases.
	Stateless Phases = 1 << 5

	// NoPhases declares no phase: the filter only sees context-done.
	NoPhases Phases = 0
	// AllPhases declares every phase.
	AllPhases Phases = 0x1f
)

// Has reports whether every phase of p is in s.
func (s Phases) Has(p Phases) bool { return s&p == p }

// String lists the phases, e.g. "request-headers|response-headers".
func (s Phases) String() string {
	names := []string{"request-headers", "request-body", "response-headers", "response-body", "log", "stateless"}
	var parts []string
	for i, n := range names {
		if s&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "|")
}

// ConfigureFunc builds a filter from its config: the JSON text the proxy passes (the route's
// override merged over the filter's default; possibly empty). It returns the filter, the
// phases it takes part in, or an error that rejects the config (its text goes to the operator:
// say what to fix). It runs once per instance, before any phase.
type ConfigureFunc func(config []byte) (Filter, Phases, error)

var registered ConfigureFunc

// Register sets the function that configures this module's filter. Call it exactly once, from
// an init function of package main:
//
//	func init() {
//		weir.Register(func(config []byte) (weir.Filter, weir.Phases, error) {
//			var cfg Config
//			if err := weir.DecodeConfig(config, &cfg); err != nil {
//				return nil, 0, err
//			}
//			return &myFilter{cfg: cfg}, weir.PhaseRequestHeaders, nil
//		})
//	}
//
// It must be init, not main: the module is a WASI reactor, whose main function never runs.
// Register panics if called twice or with nil.
func Register(configure ConfigureFunc) {
	if configure == nil {
		panic("weir.Register: nil ConfigureFunc")
	}
	if registered != nil {
		panic("weir.Register: called twice (one filter per module)")
	}
	registered = configure
}

// DecodeConfig decodes the config JSON into v (a pointer, usually to a struct with json tags)
// strictly: unknown fields and trailing data are errors, so a mistyped key is reported instead
// of ignored. An empty or blank config reads as {}. Errors start with "config: ".
func DecodeConfig(config []byte, v any) error {
	if len(bytes.TrimSpace(config)) == 0 {
		config = []byte("{}")
	}
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("config: unexpected data after the JSON value")
	}
	return nil
}
