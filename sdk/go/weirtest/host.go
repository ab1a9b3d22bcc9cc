//go:build !wasip1

package weirtest

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	weir "github.com/weir-proxy/weir/sdk/go"
	"github.com/weir-proxy/weir/sdk/go/internal/bridge"
)

// StartMs is where the fake wall clock starts: 2023-11-14T22:13:20Z.
const StartMs uint64 = 1_700_000_000_000

// Grants says which capabilities the emulated host grants. The zero value, like [AllGrants],
// grants everything; the proxy grants nothing by default, so use [NoGrants] plus what the
// filter's config would grant to test like production.
type Grants struct {
	restricted bool
	kv         map[string]bool
	callouts   map[string]bool
}

// AllGrants grants every KV namespace and callout target (the emulator's default).
func AllGrants() Grants { return Grants{} }

// NoGrants grants nothing; add grants with KV and Callout.
func NoGrants() Grants {
	return Grants{restricted: true, kv: map[string]bool{}, callouts: map[string]bool{}}
}

func (g Grants) clone() Grants {
	out := Grants{restricted: true, kv: map[string]bool{}, callouts: map[string]bool{}}
	for k := range g.kv {
		out.kv[k] = true
	}
	for k := range g.callouts {
		out.callouts[k] = true
	}
	return out
}

// KV returns g plus a KV namespace. On AllGrants it restricts grants to what is listed.
func (g Grants) KV(namespace string) Grants {
	out := g.clone()
	out.kv[namespace] = true
	return out
}

// Callout returns g plus a callout target (cluster name or host:port). On AllGrants it
// restricts grants to what is listed.
func (g Grants) Callout(target string) Grants {
	out := g.clone()
	out.callouts[target] = true
	return out
}

// AllowsKV reports whether a namespace is granted.
func (g Grants) AllowsKV(namespace string) bool { return !g.restricted || g.kv[namespace] }

// AllowsCallout reports whether a callout target is granted.
func (g Grants) AllowsCallout(target string) bool { return !g.restricted || g.callouts[target] }

// LogLine is a log line a filter wrote.
type LogLine struct {
	Level   weir.Level
	Message string
}

// SentCallout is a callout as the filter sent it.
type SentCallout struct {
	Target  string
	Request weir.CalloutRequest
}

// CalloutHandler answers callouts: (target, request) → response or error. An error that is a
// *weir.HostError reaches the filter as is; any other error as a Failed host error.
type CalloutHandler func(target string, req weir.CalloutRequest) (*weir.CalloutResponse, error)

type phase uint8

const (
	outside phase = iota
	phaseRequestHeaders
	phaseRequestBody
	phaseResponseHeaders
	phaseResponseBody
	phaseLog
)

func (p phase) String() string {
	return [...]string{"outside a phase", "on-request-headers", "on-request-body",
		"on-response-headers", "on-response-body", "on-log"}[p]
}

type requestHead struct {
	method, path, authority, scheme, client, route, cluster, requestID string
	headers                                                            []weir.Header
	span                                                               *Span // nil: not sampled
	// responseHeaders are the headers the request phases set on the response to come (the
	// response map before there is a response): each name replaces that name's values in it.
	responseHeaders []weir.Header
}

// setResponseHeaders puts the headers the request phases set (pending) on a response's: each
// name in pending replaces that name's values, as the proxy does with the upstream's response.
func setResponseHeaders(hs []weir.Header, pending []weir.Header) []weir.Header {
	for _, p := range pending {
		hs = without(hs, p.Name)
	}
	return append(hs, pending...)
}

// beforeResponse says whether the phase runs before there is a response.
func (h *Host) beforeResponse() bool {
	return h.scope.phase == phaseRequestHeaders || h.scope.phase == phaseRequestBody
}

type responseHead struct {
	status  int
	headers []weir.Header
}

type bodyScope struct {
	kind  weir.BodyKind
	bytes []byte
}

// scope is what the running phase can see.
type scope struct {
	phase    phase
	request  *requestHead
	response *responseHead
	body     *bodyScope
	deadline time.Time
	budget   time.Duration
}

type kvKey struct{ ns, key string }

type stored struct {
	value     []byte
	version   uint64
	expiresAt uint64 // 0: never
}

type counter struct {
	value     int64
	expiresAt uint64
}

// bucket holds tokens scaled by period_ms ("token-milliseconds") so refill is exact.
type bucket struct {
	scaledHi, scaledLo uint64 // a 128-bit value
	lastMs             uint64
}

type metricKind uint8

const (
	kindCounter metricKind = iota
	kindGauge
	kindHistogram
)

func (k metricKind) String() string { return [...]string{"counter", "gauge", "histogram"}[k] }

type metric struct {
	kind    metricKind
	counter uint64
	gauge   int64
	hist    []float64
}

// Host is the emulated proxy: header maps and bodies of the running phase, a fake clock the
// test moves, KV with versions, TTLs, counters and token buckets, recorded metrics and logs,
// callouts answered by a handler, and capability grants. A [Harness] embeds its Host, so
// h.Advance, h.Logs and h.OnCallout work on the harness directly. Several harnesses may share
// one Host (filters chained, or instances of one filter).
//
// How it differs from the proxy:
//   - time stands still unless the test calls Advance; randomness is a seeded generator;
//   - grants default to everything (see [Grants]);
//   - header names are stored lowercase, as the proxy's HTTP stack does;
//   - request heads change only in request phases, response heads only in
//     OnResponseHeaders, bodies only in their body phase (else Unavailable, as the WIT says);
//   - a panic in a phase propagates to the test and poisons the harness (a trap discards the
//     instance in the proxy); the time budget (SetTimeBudget) is checked at host calls only,
//     and memory is not capped;
//   - KV counters and token buckets live beside values under the same keys without sharing
//     them: Get does not see a counter; Delete removes all three.
type Host struct {
	mu       sync.Mutex
	scope    scope
	budget   time.Duration
	nowMs    uint64
	monoNs   uint64
	rng      uint64
	grants   Grants
	version  uint64
	values   map[kvKey]*stored
	counters map[kvKey]*counter
	buckets  map[kvKey]*bucket
	metrics  map[string]*metric
	logs     []LogLine
	sent     []SentCallout
	handler  CalloutHandler
	quiet    bool
}

// NewHost returns a fresh host: empty KV, no metrics or logs, everything granted, the clock
// at StartMs.
func NewHost() *Host {
	return &Host{
		nowMs:    StartMs,
		monoNs:   1_000_000_000,
		rng:      0x9E3779B97F4A7C15,
		values:   map[kvKey]*stored{},
		counters: map[kvKey]*counter{},
		buckets:  map[kvKey]*bucket{},
		metrics:  map[string]*metric{},
	}
}

// current serializes phases and Enter across harnesses: bridge.Current is process-wide, so
// parallel tests take turns (phase calls are short).
var current sync.Mutex

// Enter makes h the host of host calls until the returned function is called, outside any
// request (request-scoped calls see no request, as in configure): for unit-testing a filter's
// helpers that use KV, metrics, etc. Do not run harness phases (or Enter again) before
// calling the returned function, and do not call New: they enter the host themselves.
func (h *Host) Enter() (exit func()) {
	current.Lock()
	prev := bridge.Current
	bridge.Current = emulated{h}
	var once sync.Once
	return func() {
		once.Do(func() {
			bridge.Current = prev
			current.Unlock()
		})
	}
}

// SetGrants sets the capabilities granted from now on.
func (h *Host) SetGrants(g Grants) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.grants = g
}

// OnCallout answers callouts with fn. Without a handler a granted callout fails with Failed.
// The handler may use host functions (e.g. read KV); it may not send a callout.
func (h *Host) OnCallout(fn CalloutHandler) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.handler = fn
}

// Callouts returns every callout that passed the grant and argument checks, in order.
func (h *Host) Callouts() []SentCallout {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]SentCallout(nil), h.sent...)
}

// Advance moves both clocks forward.
func (h *Host) Advance(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d < 0 {
		return
	}
	h.nowMs += uint64(d / time.Millisecond)
	h.monoNs += uint64(d)
}

// NowMs is the fake wall clock, in milliseconds since the UNIX epoch.
func (h *Host) NowMs() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.nowMs
}

// SetNowMs sets the fake wall clock (the monotonic clock is left alone).
func (h *Host) SetNowMs(ms uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nowMs = ms
}

// SeedRandom reseeds the generator behind weir.Clock.RandomBytes.
func (h *Host) SeedRandom(seed uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.rng = seed ^ 0x9E3779B97F4A7C15 | 1
}

// SetTimeBudget emulates the proxy's per-phase time budget: a host call made after a phase
// has run this long panics, as the proxy would trap. 0 (the default) disables it.
func (h *Host) SetTimeBudget(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.budget = d
}

// Quiet stops the host from echoing log lines to stdout (they are still recorded).
func (h *Host) Quiet() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.quiet = true
}

// Logs returns the log lines written so far.
func (h *Host) Logs() []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]LogLine(nil), h.logs...)
}

// TakeLogs returns and forgets the log lines written so far.
func (h *Host) TakeLogs() []LogLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.logs
	h.logs = nil
	return out
}

func metricKey(name string, labels []weir.Label) string {
	ls := append([]weir.Label(nil), labels...)
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Name != ls[j].Name {
			return ls[i].Name < ls[j].Name
		}
		return ls[i].Value < ls[j].Value
	})
	var b strings.Builder
	b.WriteString(name)
	for _, l := range ls {
		fmt.Fprintf(&b, "\x00%s\x00%s", l.Name, l.Value)
	}
	return b.String()
}

func (h *Host) metric(name string, labels []weir.Label) *metric {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.metrics[metricKey(name, labels)]
}

// Counter returns a counter's value (0 if never added to). Label order does not matter.
func (h *Host) Counter(name string, labels ...weir.Label) uint64 {
	if m := h.metric(name, labels); m != nil && m.kind == kindCounter {
		return m.counter
	}
	return 0
}

// Gauge returns a gauge's value, and whether it was set.
func (h *Host) Gauge(name string, labels ...weir.Label) (int64, bool) {
	if m := h.metric(name, labels); m != nil && m.kind == kindGauge {
		return m.gauge, true
	}
	return 0, false
}

// Histogram returns a histogram's observations, in order.
func (h *Host) Histogram(name string, labels ...weir.Label) []float64 {
	if m := h.metric(name, labels); m != nil && m.kind == kindHistogram {
		return append([]float64(nil), m.hist...)
	}
	return nil
}

// KVValue reads a stored value directly (no grants check): its bytes and whether it exists.
func (h *Host) KVValue(namespace, key string) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.liveValue(kvKey{namespace, key}); s != nil {
		return append([]byte(nil), s.value...), true
	}
	return nil, false
}

// SetKVValue stores a value directly (no grants check, no expiry), e.g. to seed a test.
func (h *Host) SetKVValue(namespace, key string, value []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.version++
	h.values[kvKey{namespace, key}] = &stored{value: append([]byte(nil), value...), version: h.version}
}

// KVCounter reads a counter directly (0 if absent or expired).
func (h *Host) KVCounter(namespace, key string) int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c := h.counters[kvKey{namespace, key}]; c != nil && !expired(c.expiresAt, h.nowMs) {
		return c.value
	}
	return 0
}

func expired(at, now uint64) bool { return at != 0 && now >= at }

func expiry(now, ttlMs uint64) uint64 {
	if ttlMs == 0 {
		return 0
	}
	if now > math.MaxUint64-ttlMs {
		return math.MaxUint64
	}
	return now + ttlMs
}

func (h *Host) liveValue(k kvKey) *stored {
	s := h.values[k]
	if s != nil && expired(s.expiresAt, h.nowMs) {
		delete(h.values, k)
		return nil
	}
	return s
}

// emulated is the bridge.Host over a Host (kept apart so Host's method set stays the test API).
type emulated struct{ h *Host }

var _ bridge.Host = emulated{}

func errf(kind weir.ErrorKind, format string, args ...any) *bridge.Err {
	return &bridge.Err{Kind: uint8(kind), Message: fmt.Sprintf(format, args...)}
}

// lock takes the host's lock and enforces the emulated time budget (every host call passes
// here).
func (e emulated) lock() *Host {
	h := e.h
	h.mu.Lock()
	if !h.scope.deadline.IsZero() && time.Now().After(h.scope.deadline) {
		p, b := h.scope.phase, h.scope.budget
		h.mu.Unlock()
		panic(fmt.Sprintf("weirtest: %s exceeded its time budget of %v (in the proxy this traps: epoch deadline)", p, b))
	}
	return h
}

func (e emulated) req(get func(*requestHead) string) string {
	h := e.lock()
	defer h.mu.Unlock()
	if h.scope.request == nil {
		return ""
	}
	return get(h.scope.request)
}

func (e emulated) Method() string { return e.req(func(r *requestHead) string { return r.method }) }
func (e emulated) Path() string   { return e.req(func(r *requestHead) string { return r.path }) }
func (e emulated) Authority() string {
	return e.req(func(r *requestHead) string { return r.authority })
}
func (e emulated) Scheme() string { return e.req(func(r *requestHead) string { return r.scheme }) }
func (e emulated) ClientAddress() string {
	return e.req(func(r *requestHead) string { return r.client })
}
func (e emulated) RouteName() string { return e.req(func(r *requestHead) string { return r.route }) }
func (e emulated) ClusterName() string {
	return e.req(func(r *requestHead) string { return r.cluster })
}
func (e emulated) RequestID() string {
	return e.req(func(r *requestHead) string { return r.requestID })
}

func (h *Host) requestMut(what string) (*requestHead, *bridge.Err) {
	p := h.scope.phase
	if (p == phaseRequestHeaders || p == phaseRequestBody) && h.scope.request != nil {
		return h.scope.request, nil
	}
	return nil, errf(weir.Unavailable, "%s: the request can only change in the request phases (now %s)", what, p)
}

func (h *Host) responseMut(what string) (*responseHead, *bridge.Err) {
	p := h.scope.phase
	if p == phaseResponseHeaders && h.scope.response != nil {
		return h.scope.response, nil
	}
	return nil, errf(weir.Unavailable, "%s: the response head can only change in on-response-headers (now %s)", what, p)
}

func (e emulated) SetPath(path string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if !strings.HasPrefix(path, "/") || strings.ContainsFunc(path, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errf(weir.Invalid, "invalid path %q: it must start with / and contain no spaces or control characters", path)
	}
	r, err := h.requestMut("set-path")
	if err != nil {
		return err
	}
	r.path = path
	return nil
}

func (e emulated) Status() uint16 {
	h := e.lock()
	defer h.mu.Unlock()
	if h.scope.response == nil {
		return 0
	}
	return uint16(h.scope.response.status)
}

func (e emulated) SetStatus(status uint16) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if status < 200 || status > 599 {
		return errf(weir.Invalid, "status %d is not in 200..=599", status)
	}
	r, err := h.responseMut("set-status")
	if err != nil {
		return err
	}
	r.status = int(status)
	return nil
}

func isTokenChar(c rune) bool {
	return c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		strings.ContainsRune("!#$%&'*+-.^_`|~", c))
}

func checkHeader(name string, value *string) *bridge.Err {
	if name == "" || strings.ContainsFunc(name, func(r rune) bool { return !isTokenChar(r) }) {
		return errf(weir.Invalid, "invalid header name %q", name)
	}
	if value != nil {
		for i := 0; i < len(*value); i++ {
			if b := (*value)[i]; (b < 0x20 && b != '\t') || b == 0x7f {
				return errf(weir.Invalid, "invalid value for header %q: control characters are not allowed", name)
			}
		}
	}
	return nil
}

// checkWritable checks a header a filter changes as the proxy does, in the same order: a
// valid name, not a framing or hop-by-hop header, then a valid value.
func checkWritable(name string, value *string) *bridge.Err {
	if err := checkHeader(name, nil); err != nil {
		return err
	}
	if weir.IsFramingHeader(name) {
		return errf(weir.Invalid, "%s is a framing or hop-by-hop header: the proxy sets it", strings.ToLower(name))
	}
	return checkHeader(name, value)
}

func (h *Host) headers(m uint8) *[]weir.Header {
	if m == 0 && h.scope.request != nil {
		return &h.scope.request.headers
	}
	if m == 1 && h.beforeResponse() && h.scope.request != nil {
		return &h.scope.request.responseHeaders
	}
	if m == 1 && h.scope.response != nil {
		return &h.scope.response.headers
	}
	return nil
}

func (h *Host) headersMut(m uint8, what string) (*[]weir.Header, *bridge.Err) {
	if m == 0 {
		r, err := h.requestMut(what)
		if err != nil {
			return nil, err
		}
		return &r.headers, nil
	}
	if h.beforeResponse() {
		r, err := h.requestMut(what)
		if err != nil {
			return nil, err
		}
		return &r.responseHeaders, nil
	}
	r, err := h.responseMut(what)
	if err != nil {
		return nil, err
	}
	return &r.headers, nil
}

func (e emulated) GetHeader(m uint8, name string) (string, bool) {
	h := e.lock()
	defer h.mu.Unlock()
	if hs := h.headers(m); hs != nil {
		return first(*hs, name)
	}
	return "", false
}

func (e emulated) GetHeaderAll(m uint8, name string) []string {
	h := e.lock()
	defer h.mu.Unlock()
	out := []string{}
	if hs := h.headers(m); hs != nil {
		out = append(out, all(*hs, name)...)
	}
	return out
}

func without(hs []weir.Header, name string) []weir.Header {
	out := hs[:0]
	for _, x := range hs {
		if !strings.EqualFold(x.Name, name) {
			out = append(out, x)
		}
	}
	return out
}

func (e emulated) SetHeader(m uint8, name, value string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := checkWritable(name, &value); err != nil {
		return err
	}
	hs, err := h.headersMut(m, "set-header")
	if err != nil {
		return err
	}
	*hs = append(without(*hs, name), weir.Header{Name: strings.ToLower(name), Value: value})
	return nil
}

func (e emulated) AppendHeader(m uint8, name, value string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := checkWritable(name, &value); err != nil {
		return err
	}
	hs, err := h.headersMut(m, "append-header")
	if err != nil {
		return err
	}
	*hs = append(*hs, weir.Header{Name: strings.ToLower(name), Value: value})
	return nil
}

func (e emulated) RemoveHeader(m uint8, name string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := checkWritable(name, nil); err != nil {
		return err
	}
	hs, err := h.headersMut(m, "remove-header")
	if err != nil {
		return err
	}
	*hs = without(*hs, name)
	return nil
}

func (e emulated) Headers(m uint8) []bridge.Pair {
	h := e.lock()
	defer h.mu.Unlock()
	out := []bridge.Pair{}
	if hs := h.headers(m); hs != nil {
		for _, x := range *hs {
			out = append(out, bridge.Pair{x.Name, x.Value})
		}
	}
	return out
}

func (e emulated) Body(kind uint8) ([]byte, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if b := h.scope.body; b != nil && uint8(b.kind) == kind {
		return append([]byte{}, b.bytes...), nil
	}
	return nil, errf(weir.Unavailable, "the %s body is only readable in its body phase (now %s)", weir.BodyKind(kind), h.scope.phase)
}

func (e emulated) SetBody(kind uint8, bytes []byte) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if b := h.scope.body; b != nil && uint8(b.kind) == kind {
		b.bytes = append([]byte{}, bytes...)
		return nil
	}
	return errf(weir.Unavailable, "the %s body can only change in its body phase (now %s)", weir.BodyKind(kind), h.scope.phase)
}

func (e emulated) Log(level uint8, message string) {
	h := e.lock()
	defer h.mu.Unlock()
	if !h.quiet {
		// Shown by `go test` for failing tests (and with -v), which is when it helps.
		fmt.Printf("[weir %s] %s\n", weir.Level(level), message)
	}
	h.logs = append(h.logs, LogLine{Level: weir.Level(level), Message: message})
}

func (e emulated) NowMs() uint64 {
	h := e.lock()
	defer h.mu.Unlock()
	return h.nowMs
}

func (e emulated) MonotonicNs() uint64 {
	h := e.lock()
	defer h.mu.Unlock()
	return h.monoNs
}

func (e emulated) RandomBytes(n uint32) []byte {
	h := e.lock()
	defer h.mu.Unlock()
	if n > 1<<16 {
		n = 1 << 16 // as the proxy
	}
	out := make([]byte, 0, n)
	for uint32(len(out)) < n {
		// xorshift64*: deterministic, seedable, good enough for tests.
		x := h.rng
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		h.rng = x
		w := x * 0x2545F4914F6CDD1D
		for i := 0; i < 8 && uint32(len(out)) < n; i++ {
			out = append(out, byte(w>>(8*i)))
		}
	}
	return out
}

func isMetricName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		if !(c == '_' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func isLabelName(name string) bool {
	if name == "" {
		return false
	}
	for i, c := range name {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

func (e emulated) record(name string, labels []bridge.Pair, kind metricKind, update func(*metric)) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if !isMetricName(name) {
		return errf(weir.Invalid, "invalid metric name %q: use [a-z_][a-z0-9_]*", name)
	}
	if len(name) > maxMetricNameBytes {
		return errf(weir.Invalid, "metric name of %d bytes is longer than %d", len(name), maxMetricNameBytes)
	}
	if slices.Contains(hostMetrics, name) {
		return errf(weir.Invalid, "metric name %q is taken by the host's weir_filter_%s", name, name)
	}
	if len(labels) > maxLabels {
		return errf(weir.Invalid, "metric %q: %d labels, at most %d", name, len(labels), maxLabels)
	}
	ls := make([]weir.Label, len(labels))
	for i, l := range labels {
		if !isLabelName(l[0]) || len(l[0]) > maxLabelNameBytes {
			return errf(weir.Invalid, "metric %q: invalid label name %q", name, l[0])
		}
		if slices.Contains(reservedLabels, l[0]) || strings.HasPrefix(l[0], "__") {
			return errf(weir.Invalid, "metric %q: label name %q is reserved (filter, le, quantile and __*)", name, l[0])
		}
		if len(l[1]) > maxLabelValueBytes {
			return errf(weir.Invalid, "metric %q: value of label %q is %d bytes, at most %d", name, l[0], len(l[1]), maxLabelValueBytes)
		}
		for _, o := range labels[:i] {
			if o[0] == l[0] {
				return errf(weir.Invalid, "metric %q: label %q given twice", name, l[0])
			}
		}
		ls[i] = weir.Label{Name: l[0], Value: l[1]}
	}
	prefix := name + "\x00"
	for k, m := range h.metrics {
		if (k == name || strings.HasPrefix(k, prefix)) && m.kind != kind {
			return errf(weir.Invalid, "metric %q is a %s, not a %s", name, m.kind, kind)
		}
	}
	key := metricKey(name, ls)
	m := h.metrics[key]
	if m == nil {
		m = &metric{kind: kind}
		h.metrics[key] = m
	}
	update(m)
	return nil
}

func (e emulated) CounterAdd(name string, labels []bridge.Pair, delta uint64) *bridge.Err {
	return e.record(name, labels, kindCounter, func(m *metric) {
		if m.counter > math.MaxUint64-delta {
			m.counter = math.MaxUint64
		} else {
			m.counter += delta
		}
	})
}

func (e emulated) GaugeSet(name string, labels []bridge.Pair, value int64) *bridge.Err {
	return e.record(name, labels, kindGauge, func(m *metric) { m.gauge = value })
}

func (e emulated) HistogramObserve(name string, labels []bridge.Pair, value float64) *bridge.Err {
	if math.IsNaN(value) || math.IsInf(value, 0) {
		return errf(weir.Invalid, "histogram %q: observation must be finite, got %v", name, value)
	}
	return e.record(name, labels, kindHistogram, func(m *metric) { m.hist = append(m.hist, value) })
}

// The host's bounds (host/filters/src/series.rs and kv.rs), kept equal by the shared host-call
// table (tests/filters/host-calls.json), which runs here and in the real proxy.
const (
	maxMetricNameBytes = 128
	maxLabels          = 16
	maxLabelNameBytes  = 128
	maxLabelValueBytes = 256
	maxKVKeyBytes      = 1 << 10
	maxKVValueBytes    = 64 << 10
)

var (
	reservedLabels = []string{"filter", "le", "quantile"}
	hostMetrics    = []string{"calls_total", "call_duration_seconds", "call_duration_seconds_bucket",
		"call_duration_seconds_sum", "call_duration_seconds_count", "failures_total",
		"budget_breaches_total", "limit_rejections_total"}
)

// checkWrite bounds what a write may store: a key of at most 1 KiB, a value of at most 64 KiB.
func checkWrite(key string, value []byte) *bridge.Err {
	if len(key) > maxKVKeyBytes {
		return errf(weir.Invalid, "key of %d bytes is longer than the limit of %d bytes", len(key), maxKVKeyBytes)
	}
	if len(value) > maxKVValueBytes {
		return errf(weir.Invalid, "value of %d bytes is larger than the limit of %d bytes", len(value), maxKVValueBytes)
	}
	return nil
}

// checkKV: the namespace must be granted (an empty one never is, as in the proxy).
func (h *Host) checkKV(ns string) *bridge.Err {
	if ns == "" || !h.grants.AllowsKV(ns) {
		return errf(weir.Denied, "kv namespace %q is not granted (add it to the filter's grants.kv)", ns)
	}
	return nil
}

func (e emulated) KVGet(ns, key string) ([]byte, uint64, bool, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return nil, 0, false, err
	}
	s := h.liveValue(kvKey{ns, key})
	if s == nil {
		return nil, 0, false, nil
	}
	return append([]byte{}, s.value...), s.version, true, nil
}

func (e emulated) KVSet(ns, key string, value []byte, ttlMs uint64) (uint64, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return 0, err
	}
	if err := checkWrite(key, value); err != nil {
		return 0, err
	}
	h.version++
	h.values[kvKey{ns, key}] = &stored{value: append([]byte{}, value...), version: h.version, expiresAt: expiry(h.nowMs, ttlMs)}
	return h.version, nil
}

func (e emulated) KVCompareAndSwap(ns, key string, expected uint64, value []byte, ttlMs uint64) (uint64, bool, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return 0, false, err
	}
	if err := checkWrite(key, value); err != nil {
		return 0, false, err
	}
	k := kvKey{ns, key}
	var cur uint64
	if s := h.liveValue(k); s != nil {
		cur = s.version
	}
	if cur != expected {
		return 0, false, nil
	}
	h.version++
	h.values[k] = &stored{value: append([]byte{}, value...), version: h.version, expiresAt: expiry(h.nowMs, ttlMs)}
	return h.version, true, nil
}

func (e emulated) KVDelete(ns, key string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return err
	}
	k := kvKey{ns, key}
	delete(h.values, k)
	delete(h.counters, k)
	delete(h.buckets, k)
	return nil
}

func (e emulated) KVIncrement(ns, key string, delta int64, ttlMs uint64) (int64, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return 0, err
	}
	if err := checkWrite(key, nil); err != nil {
		return 0, err
	}
	k := kvKey{ns, key}
	c := h.counters[k]
	if c == nil || expired(c.expiresAt, h.nowMs) {
		// Fixed window: a new one starts with this increment.
		c = &counter{expiresAt: expiry(h.nowMs, ttlMs)}
		h.counters[k] = c
	}
	// Saturating, as the proxy's counters are.
	sum := c.value + delta
	if delta > 0 && sum < c.value {
		sum = math.MaxInt64
	} else if delta < 0 && sum > c.value {
		sum = math.MinInt64
	}
	c.value = sum
	return sum, nil
}

// 128-bit helpers for the token bucket.
type u128 struct{ hi, lo uint64 }

func mul64(a, b uint64) u128    { hi, lo := bits.Mul64(a, b); return u128{hi, lo} }
func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }
func (a u128) add(b u128) u128 {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, _ := bits.Add64(a.hi, b.hi, c)
	return u128{hi, lo}
}
func (a u128) sub(b u128) u128 {
	lo, br := bits.Sub64(a.lo, b.lo, 0)
	hi, _ := bits.Sub64(a.hi, b.hi, br)
	return u128{hi, lo}
}
func minU128(a, b u128) u128 {
	if a.less(b) {
		return a
	}
	return b
}
func (a u128) div(d uint64) uint64 { // saturating
	if a.hi >= d {
		return math.MaxUint64
	}
	q, _ := bits.Div64(a.hi, a.lo, d)
	return q
}
func (a u128) ceilDiv(d uint64) uint64 {
	if a.hi >= d {
		return math.MaxUint64
	}
	q, r := bits.Div64(a.hi, a.lo, d)
	if r != 0 {
		q++
	}
	return q
}

func (e emulated) KVTakeTokens(ns, key string, rate, periodMs, burst, cost uint64) (bridge.Bucket, *bridge.Err) {
	h := e.lock()
	defer h.mu.Unlock()
	if err := h.checkKV(ns); err != nil {
		return bridge.Bucket{}, err
	}
	if err := checkWrite(key, nil); err != nil {
		return bridge.Bucket{}, err
	}
	if rate == 0 || periodMs == 0 || burst == 0 {
		return bridge.Bucket{}, errf(weir.Invalid, "token bucket %s/%s: rate, period and burst must be positive (got rate %d, period %d ms, burst %d)", ns, key, rate, periodMs, burst)
	}
	if cost > burst {
		return bridge.Bucket{}, errf(weir.Invalid, "token bucket %s/%s: cost %d exceeds burst %d, it could never pass", ns, key, cost, burst)
	}
	now := h.nowMs
	full := mul64(burst, periodMs)
	k := kvKey{ns, key}
	b := h.buckets[k]
	if b == nil {
		b = &bucket{scaledHi: full.hi, scaledLo: full.lo, lastMs: now}
		h.buckets[k] = b
	}
	scaled := u128{b.scaledHi, b.scaledLo}
	var elapsed uint64
	if now > b.lastMs {
		elapsed = now - b.lastMs
	}
	scaled = minU128(full, scaled.add(mul64(elapsed, rate)))
	b.lastMs = now
	need := mul64(cost, periodMs)
	allowed := !scaled.less(need)
	if allowed {
		scaled = scaled.sub(need)
	}
	b.scaledHi, b.scaledLo = scaled.hi, scaled.lo
	var retry uint64
	if !allowed {
		retry = need.sub(scaled).ceilDiv(rate)
	}
	return bridge.Bucket{
		Allowed:      allowed,
		Remaining:    scaled.div(periodMs),
		RetryAfterMs: retry,
		ResetMs:      full.sub(scaled).ceilDiv(rate),
	}, nil
}

func (e emulated) CalloutSend(target, method, path string, headers []bridge.Pair, body []byte, timeoutMs uint32) (bridge.CalloutResponse, *bridge.Err) {
	req := weir.CalloutRequest{
		Method:  method,
		Path:    path,
		Headers: []weir.Header{},
		Body:    append([]byte{}, body...),
		Timeout: time.Duration(timeoutMs) * time.Millisecond,
	}
	for _, p := range headers {
		req.Headers = append(req.Headers, weir.Header{Name: p[0], Value: p[1]})
	}
	h := e.lock()
	if !h.grants.AllowsCallout(target) {
		h.mu.Unlock()
		return bridge.CalloutResponse{}, errf(weir.Denied, "callout target %q is not granted (add it to the filter's grants.callouts)", target)
	}
	if method == "" || strings.ContainsFunc(method, func(r rune) bool { return !isTokenChar(r) }) {
		h.mu.Unlock()
		return bridge.CalloutResponse{}, errf(weir.Invalid, "invalid callout method %q", method)
	}
	if !strings.HasPrefix(path, "/") {
		h.mu.Unlock()
		return bridge.CalloutResponse{}, errf(weir.Invalid, "invalid callout path %q: it must start with /", path)
	}
	for _, p := range headers {
		v := p[1]
		if err := checkHeader(p[0], &v); err != nil {
			h.mu.Unlock()
			return bridge.CalloutResponse{}, err
		}
	}
	h.sent = append(h.sent, SentCallout{Target: target, Request: req})
	handler := h.handler
	h.mu.Unlock()
	// The host is not locked while the handler runs, so it may use host functions too.
	if handler == nil {
		return bridge.CalloutResponse{}, errf(weir.Failed, "callout to %q: no handler registered (Host.OnCallout)", target)
	}
	res, err := handler(target, req)
	if err != nil {
		if kind, ok := weir.ErrorKindOf(err); ok {
			var msg string
			if he, ok := err.(*weir.HostError); ok {
				msg = he.Message
			} else {
				msg = err.Error()
			}
			return bridge.CalloutResponse{}, &bridge.Err{Kind: uint8(kind), Message: msg}
		}
		return bridge.CalloutResponse{}, errf(weir.Failed, "callout to %q: %v", target, err)
	}
	if res == nil {
		return bridge.CalloutResponse{}, errf(weir.Failed, "callout to %q: the handler returned no response", target)
	}
	out := bridge.CalloutResponse{Status: uint16(res.Status), Headers: []bridge.Pair{}, Body: append([]byte{}, res.Body...)}
	for _, x := range res.Headers {
		out.Headers = append(out.Headers, bridge.Pair{x.Name, x.Value})
	}
	return out, nil
}

func first(hs []weir.Header, name string) (string, bool) {
	for _, x := range hs {
		if strings.EqualFold(x.Name, name) {
			return x.Value, true
		}
	}
	return "", false
}

func all(hs []weir.Header, name string) []string {
	out := []string{}
	for _, x := range hs {
		if strings.EqualFold(x.Name, name) {
			out = append(out, x.Value)
		}
	}
	return out
}

// The trace interface's bounds, as the proxy has them (wit/filter.wit, interface trace).
const (
	maxSpanAttributes  = 32
	maxSpanEvents      = 32
	maxEventAttributes = 16
	maxSpanNameBytes   = 128
	maxSpanValueBytes  = 512
)

var reservedSpanPrefixes = []string{"http.", "url.", "server.", "client.", "network.", "error.", "weir."}

func checkSpanName(what, name string) *bridge.Err {
	ok := name != "" && len(name) <= maxSpanNameBytes
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
	}
	if !ok {
		return errf(weir.Invalid, "%s %q: 1 to %d bytes of [A-Za-z0-9._-]", what, cutUTF8(name, 64), maxSpanNameBytes)
	}
	return nil
}

func checkSpanKey(key string) *bridge.Err {
	if err := checkSpanName("span attribute", key); err != nil {
		return err
	}
	for _, p := range reservedSpanPrefixes {
		if strings.HasPrefix(key, p) {
			return errf(weir.Invalid, "span attribute %q: keys under %q are the proxy's", key, p)
		}
	}
	return nil
}

// cutUTF8 cuts s to at most max bytes, at a character boundary.
func cutUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	end := max
	for end > 0 && !utf8.RuneStart(s[end]) {
		end--
	}
	return s[:end]
}

// span is the request's span when it can take notes: nil when not sampled; Unavailable outside
// the phases that can add to it (the proxy exports the span before on-log).
func (h *Host) span() (*Span, *bridge.Err) {
	p := h.scope.phase
	if p == outside || p == phaseLog {
		return nil, errf(weir.Unavailable, "no open span %s: the proxy exports it before on-log", p)
	}
	if h.scope.request == nil {
		return nil, nil
	}
	return h.scope.request.span, nil
}

func (e emulated) SpanSampled() bool {
	h := e.lock()
	defer h.mu.Unlock()
	s, err := h.span()
	return err == nil && s != nil
}

func (e emulated) SpanSetAttribute(key, value string) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := checkSpanKey(key); err != nil {
		return err
	}
	s, err := h.span()
	if err != nil || s == nil {
		return err
	}
	value = cutUTF8(value, maxSpanValueBytes)
	for i := range s.Attributes {
		if s.Attributes[i].Name == key {
			s.Attributes[i].Value = value
			return nil
		}
	}
	if len(s.Attributes) >= maxSpanAttributes {
		return errf(weir.Invalid, "a request's span takes at most %d attributes from filters", maxSpanAttributes)
	}
	s.Attributes = append(s.Attributes, weir.Label{Name: key, Value: value})
	return nil
}

func (e emulated) SpanAddEvent(name string, attributes []bridge.Pair) *bridge.Err {
	h := e.lock()
	defer h.mu.Unlock()
	if err := checkSpanName("span event", name); err != nil {
		return err
	}
	if len(attributes) > maxEventAttributes {
		return errf(weir.Invalid, "a span event carries at most %d attributes", maxEventAttributes)
	}
	for _, a := range attributes {
		if err := checkSpanKey(a[0]); err != nil {
			return err
		}
	}
	s, err := h.span()
	if err != nil || s == nil {
		return err
	}
	if len(s.Events) >= maxSpanEvents {
		return errf(weir.Invalid, "a request's span takes at most %d events from filters", maxSpanEvents)
	}
	ev := SpanEvent{Name: name, AtMs: h.nowMs, Attributes: []weir.Label{}}
	for _, a := range attributes {
		ev.Attributes = append(ev.Attributes, weir.Label{Name: a[0], Value: cutUTF8(a[1], maxSpanValueBytes)})
	}
	s.Events = append(s.Events, ev)
	return nil
}
