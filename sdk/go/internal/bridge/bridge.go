// Package bridge connects the weir package to its native test host (package weirtest) without
// an import cycle and without putting test hooks into weir's public API.
//
// On wasip1 nothing here is used: the filter talks to the proxy through wasm imports. Natively,
// weir routes every host call to Current (installed by weirtest) and registers NewRuntime so
// weirtest can configure and drive filters the way the proxy does. The types are deliberately
// plain (strings, byte slices, numbers) so weir stays the only owner of its public types.
package bridge

// Err is a host error: Kind is 0 denied, 1 unavailable, 2 invalid, 3 failed.
type Err struct {
	Kind    uint8
	Message string
}

// Pair is a (name, value) pair: a header or a metric label.
type Pair = [2]string

// Bucket is the outcome of a token-bucket take.
type Bucket struct {
	Allowed      bool
	Remaining    uint64
	RetryAfterMs uint64
	ResetMs      uint64
}

// CalloutResponse is a callout's answer.
type CalloutResponse struct {
	Status  uint16
	Headers []Pair
	Body    []byte
}

// Host mirrors the WIT imports of filter-world one to one. Header maps and body kinds are the
// WIT enum indices (0 request, 1 response); log levels 0 trace ... 4 error.
type Host interface {
	Method() string
	Path() string
	SetPath(path string) *Err
	Authority() string
	Scheme() string
	ClientAddress() string
	RouteName() string
	ClusterName() string
	RequestID() string
	Status() uint16
	SetStatus(status uint16) *Err

	GetHeader(m uint8, name string) (string, bool)
	GetHeaderAll(m uint8, name string) []string
	SetHeader(m uint8, name, value string) *Err
	AppendHeader(m uint8, name, value string) *Err
	RemoveHeader(m uint8, name string) *Err
	Headers(m uint8) []Pair

	Body(kind uint8) ([]byte, *Err)
	SetBody(kind uint8, bytes []byte) *Err

	Log(level uint8, message string)

	NowMs() uint64
	MonotonicNs() uint64
	RandomBytes(n uint32) []byte

	CounterAdd(name string, labels []Pair, delta uint64) *Err
	GaugeSet(name string, labels []Pair, value int64) *Err
	HistogramObserve(name string, labels []Pair, value float64) *Err

	KVGet(ns, key string) (value []byte, version uint64, found bool, err *Err)
	KVSet(ns, key string, value []byte, ttlMs uint64) (uint64, *Err)
	KVCompareAndSwap(ns, key string, expected uint64, value []byte, ttlMs uint64) (uint64, bool, *Err)
	KVDelete(ns, key string) *Err
	KVIncrement(ns, key string, delta int64, ttlMs uint64) (int64, *Err)
	KVTakeTokens(ns, key string, rate, periodMs, burst, cost uint64) (Bucket, *Err)

	CalloutSend(target, method, path string, headers []Pair, body []byte, timeoutMs uint32) (CalloutResponse, *Err)

	SpanSampled() bool
	SpanSetAttribute(key, value string) *Err
	SpanAddEvent(name string, attributes []Pair) *Err
}

// Current is the host that native host calls go to; nil outside a test host.
var Current Host

// Runtime is one configured filter instance (what one wasm instance is in the proxy). Phase
// methods return a weir.Action as `any`.
type Runtime interface {
	Phases() uint8
	Filter() any
	OnRequestHeaders(ctx uint32) any
	OnRequestBody(ctx uint32, end bool) any
	OnResponseHeaders(ctx uint32) any
	OnResponseBody(ctx uint32, end bool) any
	OnLog(ctx uint32)
	ContextDone(ctx uint32)
	LiveContexts() int
}

// NewRuntime configures a filter instance: configure is a weir.ConfigureFunc, or nil for the
// one registered with weir.Register. Set by package weir (natively only).
var NewRuntime func(configure any, config string) (Runtime, error)
