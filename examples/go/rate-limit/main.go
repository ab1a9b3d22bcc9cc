// rate-limit: a fixed-window limit per client on the host's shared counters (spec:
// examples/README.md). Needs the KV namespace granted: grants: { kv: [ratelimit] }.
//
// Config: {"limit": N, "window_ms": M, "namespace": "ratelimit", "key_header": "x-client"}.
package main

import (
	"errors"
	"strconv"
	"time"

	weir "github.com/weir-proxy/weir/sdk/go"
)

// Config is the filter's config.
type Config struct {
	// Limit is the number of requests a client may make per window; required, at least 1.
	Limit *uint64 `json:"limit"`
	// WindowMs is the window's length. Default: 60000.
	WindowMs uint64 `json:"window_ms"`
	// Namespace is the KV namespace of the counters. Default: ratelimit.
	Namespace string `json:"namespace"`
	// KeyHeader names the client; without it the client's IP does. Default: x-client.
	KeyHeader string `json:"key_header"`
}

// RateLimit is the configured filter.
type RateLimit struct {
	weir.DefaultFilter
	limit     uint64
	window    time.Duration
	windowMs  uint64
	namespace string
	keyHeader string
}

// remaining is the per-request state: what is left of the client's window.
type remaining struct {
	set  bool
	left uint64
}

// New checks the config and builds the filter.
func New(raw []byte) (weir.Filter, weir.Phases, error) {
	cfg := Config{WindowMs: 60000, Namespace: "ratelimit", KeyHeader: "x-client"}
	if err := weir.DecodeConfig(raw, &cfg); err != nil {
		return nil, 0, err
	}
	switch {
	case cfg.Limit == nil:
		return nil, 0, errors.New("limit is required")
	case *cfg.Limit == 0:
		return nil, 0, errors.New("limit must be at least 1")
	case cfg.WindowMs == 0:
		return nil, 0, errors.New("window_ms must be at least 1")
	}
	return &RateLimit{
		limit:     *cfg.Limit,
		window:    time.Duration(cfg.WindowMs) * time.Millisecond,
		windowMs:  cfg.WindowMs,
		namespace: cfg.Namespace,
		keyHeader: cfg.KeyHeader,
	}, weir.PhaseRequestHeaders | weir.PhaseResponseHeaders, nil
}

func (f *RateLimit) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
	key, ok := req.Header(f.keyHeader)
	if !ok {
		key = req.ClientIP()
	}
	n, err := weir.KV.Increment(f.namespace, key, 1, f.window)
	if err != nil {
		return weir.Respond(weir.Text(500, "rate-limit: "+err.Error()))
	}
	if n < 0 {
		n = 0
	}
	if uint64(n) > f.limit {
		return weir.Respond(weir.Text(429, "rate limited").
			WithHeader("retry-after", strconv.FormatUint((f.windowMs+999)/1000, 10)).
			WithHeader("x-ratelimit-limit", strconv.FormatUint(f.limit, 10)).
			WithHeader("x-ratelimit-remaining", "0"))
	}
	*weir.State[remaining](ctx) = remaining{set: true, left: f.limit - uint64(n)}
	return weir.Continue
}

func (f *RateLimit) OnResponseHeaders(ctx *weir.Context, res *weir.Response) weir.Action {
	st := weir.State[remaining](ctx)
	if !st.set {
		return weir.Continue
	}
	if err := res.SetHeader("x-ratelimit-limit", strconv.FormatUint(f.limit, 10)); err != nil {
		return weir.Respond(weir.Text(500, "rate-limit: "+err.Error()))
	}
	if err := res.SetHeader("x-ratelimit-remaining", strconv.FormatUint(st.left, 10)); err != nil {
		return weir.Respond(weir.Text(500, "rate-limit: "+err.Error()))
	}
	return weir.Continue
}

func init() { weir.Register(New) }

func main() {}
