//go:build !wasip1

package weirtest

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	weir "github.com/weir-proxy/weir/sdk/go"
	"github.com/weir-proxy/weir/sdk/go/internal/bridge"
)

var nextContext atomic.Uint32

// Request is a request as the proxy would present it to a filter. Build it, pass it to a
// harness, then look at what the filter changed (what the upstream would receive).
//
// Defaults: authority localhost, scheme http, client 127.0.0.1:40000, route test-route,
// cluster test-cluster, request id test-<context id>.
type Request struct {
	context   uint32
	head      requestHead
	chunks    [][]byte
	forwarded []byte
	held      []byte
}

// NewRequest makes a request with this method and path (with query). Each request gets its
// own context id.
func NewRequest(method, path string) *Request {
	id := nextContext.Add(1)
	return &Request{
		context: id,
		head: requestHead{
			method: method, path: path, authority: "localhost", scheme: "http",
			client: "127.0.0.1:40000", route: "test-route", cluster: "test-cluster",
			requestID: fmt.Sprintf("test-%d", id), headers: []weir.Header{},
			span: &Span{},
		},
	}
}

// Span is what filters added to a request's trace span through weir.Trace: the emulator keeps
// it with the Request, under the proxy's rules (names checked, the proxy's keys refused, values
// cut, counts bounded).
type Span struct {
	// Attributes, in the order first set.
	Attributes []weir.Label
	// Events, in order.
	Events []SpanEvent
}

// SpanEvent is an event a filter added to a request's span.
type SpanEvent struct {
	Name string
	// AtMs is when, on the emulator's wall clock (ms since the UNIX epoch).
	AtMs uint64
	// Attributes (the proxy adds weir.filter; the emulator does not).
	Attributes []weir.Label
}

// Attribute returns an attribute's value.
func (s *Span) Attribute(key string) (string, bool) {
	for _, a := range s.Attributes {
		if a.Name == key {
			return a.Value, true
		}
	}
	return "", false
}

// Unsampled makes the request's trace not sampled: weir.Trace.Sampled is false and what
// filters add is dropped. Requests are sampled by default.
func (r *Request) Unsampled() *Request { r.head.span = nil; return r }

// Span returns what filters added to the request's span so far (nil when not sampled).
func (r *Request) Span() *Span { return r.head.span }

// Get makes a GET request.
func Get(path string) *Request { return NewRequest("GET", path) }

// Post makes a POST request.
func Post(path string) *Request { return NewRequest("POST", path) }

// WithHeader adds a header (name stored lowercase) and returns r.
func (r *Request) WithHeader(name, value string) *Request {
	r.head.headers = append(r.head.headers, weir.Header{Name: strings.ToLower(name), Value: value})
	return r
}

// WithAuthority sets the authority (host[:port]).
func (r *Request) WithAuthority(a string) *Request { r.head.authority = a; return r }

// WithScheme sets the scheme (http or https).
func (r *Request) WithScheme(s string) *Request { r.head.scheme = s; return r }

// WithClient sets the client address (ip:port).
func (r *Request) WithClient(addr string) *Request { r.head.client = addr; return r }

// WithRoute sets the matched route's name.
func (r *Request) WithRoute(name string) *Request { r.head.route = name; return r }

// WithCluster sets the cluster's name.
func (r *Request) WithCluster(name string) *Request { r.head.cluster = name; return r }

// WithRequestID sets the request id.
func (r *Request) WithRequestID(id string) *Request { r.head.requestID = id; return r }

// WithBody sets the body [Harness.Serve] sends, as chunks (one chunk per argument).
func (r *Request) WithBody(chunks ...[]byte) *Request { r.chunks = chunks; return r }

// ContextID is the context id the harness uses for this request.
func (r *Request) ContextID() uint32 { return r.context }

// Method is the method.
func (r *Request) Method() string { return r.head.method }

// Path is the path (with query) as it would go upstream.
func (r *Request) Path() string { return r.head.path }

// Header returns the first value of a header (case-insensitive), as it would go upstream.
func (r *Request) Header(name string) (string, bool) { return first(r.head.headers, name) }

// HeaderValues returns every value of a header, in order.
func (r *Request) HeaderValues(name string) []string { return all(r.head.headers, name) }

// Headers returns all headers, in order.
func (r *Request) Headers() []weir.Header { return append([]weir.Header(nil), r.head.headers...) }

// ForwardedBody is the body forwarded upstream so far (after the filter's changes; bytes it
// is buffering are not included).
func (r *Request) ForwardedBody() []byte { return r.forwarded }

// ResponseHeadersToSet returns the headers the request phases set on the response to come, in
// order: the proxy puts them on whatever response the client gets (on the upstream's, each
// name replaces that name's values; a local response keeps the headers it sets itself).
// ResponseHeaders puts them on its response.
func (r *Request) ResponseHeadersToSet() []weir.Header {
	return append([]weir.Header(nil), r.head.responseHeaders...)
}

// Response is a response as the upstream would send it. Build it, pass it to the harness's
// response phases, then look at what the filter changed.
type Response struct {
	head      responseHead
	chunks    [][]byte
	forwarded []byte
	held      []byte
}

// NewResponse makes a response with this status and no headers.
func NewResponse(status int) *Response {
	return &Response{head: responseHead{status: status, headers: []weir.Header{}}}
}

// WithHeader adds a header (name stored lowercase) and returns r.
func (r *Response) WithHeader(name, value string) *Response {
	r.head.headers = append(r.head.headers, weir.Header{Name: strings.ToLower(name), Value: value})
	return r
}

// WithBody sets the body [Harness.Serve] returns from the upstream, as chunks.
func (r *Response) WithBody(chunks ...[]byte) *Response { r.chunks = chunks; return r }

// Status is the status as it would go downstream.
func (r *Response) Status() int { return r.head.status }

// Header returns the first value of a header (case-insensitive), as it would go downstream.
func (r *Response) Header(name string) (string, bool) { return first(r.head.headers, name) }

// HeaderValues returns every value of a header, in order.
func (r *Response) HeaderValues(name string) []string { return all(r.head.headers, name) }

// Headers returns all headers, in order.
func (r *Response) Headers() []weir.Header { return append([]weir.Header(nil), r.head.headers...) }

// ForwardedBody is the body forwarded downstream so far (see Request.ForwardedBody).
func (r *Response) ForwardedBody() []byte { return r.forwarded }

// Option configures New.
type Option func(*options)

type options struct {
	host      *Host
	configure weir.ConfigureFunc
}

// WithHost runs the filter on an existing Host, so several harnesses (filters, or instances
// of one filter) share KV, metrics, logs and the clock.
func WithHost(h *Host) Option { return func(o *options) { o.host = h } }

// WithFilter tests this configure function instead of the one registered with
// weir.Register.
func WithFilter(configure weir.ConfigureFunc) Option {
	return func(o *options) { o.configure = configure }
}

// Harness is a configured filter instance driven the way the proxy drives it: it calls only
// declared phases, creates a context per [Request], holds [weir.Buffer]ed body bytes and
// forwards the rest. It embeds its [Host].
//
// A panicking phase propagates the panic and poisons the harness, as a trap discards the
// instance in the proxy (see [CatchTrap]).
type Harness struct {
	*Host
	rt       bridge.Runtime
	poisoned bool
}

// New configures the filter registered with weir.Register (or the one given WithFilter) on a
// fresh Host (or the one given WithHost) with this config JSON (as the proxy passes it; ""
// is an empty config), as the proxy's configure does.
func New(config string, opts ...Option) (*Harness, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.host == nil {
		o.host = NewHost()
	}
	var configure any
	if o.configure != nil {
		configure = o.configure
	}
	var rt bridge.Runtime
	var err error
	func() {
		exit := o.host.Enter()
		defer exit()
		o.host.mu.Lock()
		o.host.scope = scope{}
		o.host.mu.Unlock()
		rt, err = bridge.NewRuntime(configure, config)
	}()
	if err != nil {
		return nil, err
	}
	return &Harness{Host: o.host, rt: rt}, nil
}

// MustNew is New that fails the test on a config error.
func MustNew(t testing.TB, config string, opts ...Option) *Harness {
	t.Helper()
	h, err := New(config, opts...)
	if err != nil {
		t.Fatalf("weirtest: configure: %v", err)
	}
	return h
}

// Filter is the configured filter (for type assertions in tests).
func (h *Harness) Filter() weir.Filter { return h.rt.Filter().(weir.Filter) }

// Phases are the phases the filter declared.
func (h *Harness) Phases() weir.Phases { return weir.Phases(h.rt.Phases()) }

// LiveContexts is how many request contexts are alive (created by a phase, not yet Done).
func (h *Harness) LiveContexts() int { return h.rt.LiveContexts() }

// run runs one phase call with sc installed and returns the scope as the filter left it.
func (h *Harness) run(p phase, sc scope, call func(bridge.Runtime) any) (out any, after scope) {
	if h.poisoned {
		panic("weirtest: an earlier phase panicked (a trap): the proxy would have discarded this instance; create a new Harness")
	}
	exit := h.Host.Enter()
	defer exit()
	h.Host.mu.Lock()
	sc.phase = p
	if h.Host.budget > 0 {
		sc.deadline = time.Now().Add(h.Host.budget)
		sc.budget = h.Host.budget
	}
	h.Host.scope = sc
	h.Host.mu.Unlock()
	defer func() {
		// Also after a panic: the next phase, or Enter, must not see this request.
		h.Host.mu.Lock()
		after = h.Host.scope
		h.Host.scope = scope{}
		h.Host.mu.Unlock()
	}()
	h.poisoned = true
	out = call(h.rt)
	h.poisoned = false
	return out, scope{}
}

func action(v any) weir.Action {
	if a, ok := v.(weir.Action); ok {
		return a
	}
	return weir.Continue
}

func (r *Request) headCopy() *requestHead {
	c := r.head
	c.headers = append([]weir.Header{}, r.head.headers...)
	c.responseHeaders = append([]weir.Header{}, r.head.responseHeaders...)
	return &c
}

func (r *Response) headCopy() *responseHead {
	c := r.head
	c.headers = append([]weir.Header{}, r.head.headers...)
	return &c
}

// RequestHeaders runs on-request-headers for req; afterwards req shows the filter's changes.
func (h *Harness) RequestHeaders(req *Request) weir.Action {
	if !h.Phases().Has(weir.PhaseRequestHeaders) {
		return weir.Continue
	}
	a, sc := h.run(phaseRequestHeaders, scope{request: req.headCopy()}, func(rt bridge.Runtime) any {
		return rt.OnRequestHeaders(req.context)
	})
	req.head = *sc.request
	return action(a)
}

// RequestBody runs on-request-body with one chunk of req's body. Bytes held by an earlier
// Buffer come first; after Continue (or Buffer on the last chunk) the bytes, as the filter
// left them, join req.ForwardedBody.
func (h *Harness) RequestBody(req *Request, chunk []byte, end bool) weir.Action {
	if !h.Phases().Has(weir.PhaseRequestBody) {
		req.forwarded = append(req.forwarded, chunk...)
		return weir.Continue
	}
	bytes := append(req.held, chunk...)
	req.held = nil
	a, sc := h.run(phaseRequestBody, scope{request: req.headCopy(), body: &bodyScope{kind: weir.RequestBody, bytes: bytes}},
		func(rt bridge.Runtime) any { return rt.OnRequestBody(req.context, end) })
	req.head = *sc.request
	act := action(a)
	settle(act, end, sc.body.bytes, &req.held, &req.forwarded)
	return act
}

// ResponseHeaders runs on-response-headers for req's response res; afterwards res shows the
// filter's changes (the request is read-only here).
//
// First the headers the request phases set on the response (Request.ResponseHeadersToSet) are
// put on res, each name replacing res's values, whether or not the filter has this phase, as
// the proxy does with the upstream's response.
func (h *Harness) ResponseHeaders(req *Request, res *Response) weir.Action {
	res.head.headers = setResponseHeaders(res.head.headers, req.head.responseHeaders)
	req.head.responseHeaders = nil
	if !h.Phases().Has(weir.PhaseResponseHeaders) {
		return weir.Continue
	}
	a, sc := h.run(phaseResponseHeaders, scope{request: req.headCopy(), response: res.headCopy()},
		func(rt bridge.Runtime) any { return rt.OnResponseHeaders(req.context) })
	req.head = *sc.request
	res.head = *sc.response
	return action(a)
}

// ResponseBody runs on-response-body with one chunk of res's body; as RequestBody.
func (h *Harness) ResponseBody(req *Request, res *Response, chunk []byte, end bool) weir.Action {
	if !h.Phases().Has(weir.PhaseResponseBody) {
		res.forwarded = append(res.forwarded, chunk...)
		return weir.Continue
	}
	bytes := append(res.held, chunk...)
	res.held = nil
	a, sc := h.run(phaseResponseBody, scope{request: req.headCopy(), response: res.headCopy(),
		body: &bodyScope{kind: weir.ResponseBody, bytes: bytes}},
		func(rt bridge.Runtime) any { return rt.OnResponseBody(req.context, end) })
	req.head = *sc.request
	res.head = *sc.response
	act := action(a)
	settle(act, end, sc.body.bytes, &res.held, &res.forwarded)
	return act
}

// Log runs on-log for a finished exchange (heads readable, not writable).
func (h *Harness) Log(req *Request, res *Response) {
	if !h.Phases().Has(weir.PhaseLog) {
		return
	}
	h.run(phaseLog, scope{request: req.headCopy(), response: res.headCopy()},
		func(rt bridge.Runtime) any { rt.OnLog(req.context); return nil })
}

// Done runs context-done: the request is over and its context is dropped. The proxy calls it
// once per request, whatever the phases.
func (h *Harness) Done(req *Request) {
	h.run(outside, scope{}, func(rt bridge.Runtime) any { rt.ContextDone(req.context); return nil })
}

// settle sends body bytes after a body phase: held for the next call, or forwarded.
func settle(a weir.Action, end bool, bytes []byte, held, forwarded *[]byte) {
	switch {
	case a.IsBuffer() && !end:
		*held = bytes
	case a.IsContinue() || a.IsBuffer():
		*forwarded = append(*forwarded, bytes...)
	default:
		// A local response replaces the rest of this body.
	}
}

// Result is the outcome of [Harness.Serve]: what the upstream received and what the client
// got.
type Result struct {
	// Upstream is the request as it went upstream (path, headers, ForwardedBody), nil if the
	// filter answered before the request reached the upstream.
	Upstream *Request
	// Local is the filter's local response as it built it, if it answered; RespondedIn names
	// the phase ("request-headers", "request-body", "response-headers", "response-body").
	Local       *weir.LocalResponse
	RespondedIn string
	// Status, Headers and Body are the response as the client receives it (from a local
	// response, its headers without the framing ones the proxy drops: see weir.IsFramingHeader).
	Status  int
	Headers []weir.Header
	Body    []byte
}

// Header returns the first value of a response header the client receives.
func (r *Result) Header(name string) (string, bool) { return first(r.Headers, name) }

// HeaderValues returns every value of a response header the client receives.
func (r *Result) HeaderValues(name string) []string { return all(r.Headers, name) }

// sent is a local response's headers as the proxy sends them: without framing and hop-by-hop
// headers, which the proxy sets itself from the body.
func sent(headers []weir.Header) []weir.Header {
	out := []weir.Header{}
	for _, x := range headers {
		if !weir.IsFramingHeader(x.Name) {
			out = append(out, x)
		}
	}
	return out
}

func chunksOrEnd(chunks [][]byte) [][]byte {
	if len(chunks) == 0 {
		return [][]byte{{}} // an empty body is one empty chunk with end set, as in the proxy
	}
	return chunks
}

// Serve runs a whole exchange the way the proxy does with this filter alone on the route:
// request headers, request body chunks (req.WithBody; an empty body is one empty last
// chunk), then upstream's response (nil: 200 with no headers and no body) through response
// headers and response body chunks, then log and context-done. A local response ends the
// phases that would have followed (the filter's own response phases do not see it).
func (h *Harness) Serve(req *Request, upstream *Response) *Result {
	res := &Result{}
	defer h.Done(req)
	local := func(a weir.Action, in string) *Result {
		lr := a.Response()
		res.Local, res.RespondedIn = lr, in
		res.Status, res.Headers, res.Body = lr.Status, sent(lr.Headers), lr.Body
		logRes := NewResponse(lr.Status)
		logRes.head.headers = sent(lr.Headers)
		h.Log(req, logRes)
		return res
	}
	if a := h.RequestHeaders(req); a.Response() != nil {
		return local(a, "request-headers")
	}
	chunks := chunksOrEnd(req.chunks)
	for i, c := range chunks {
		if a := h.RequestBody(req, c, i == len(chunks)-1); a.Response() != nil {
			return local(a, "request-body")
		}
	}
	res.Upstream = req
	if upstream == nil {
		upstream = NewResponse(200)
	}
	if a := h.ResponseHeaders(req, upstream); a.Response() != nil {
		return local(a, "response-headers")
	}
	chunks = chunksOrEnd(upstream.chunks)
	for i, c := range chunks {
		if a := h.ResponseBody(req, upstream, c, i == len(chunks)-1); a.Response() != nil {
			return local(a, "response-body")
		}
	}
	h.Log(req, upstream)
	res.Status, res.Headers, res.Body = upstream.Status(), upstream.Headers(), upstream.ForwardedBody()
	return res
}

// Trap is what CatchTrap returns: the value a phase panicked with.
type Trap struct{ Value any }

func (t *Trap) Error() string { return fmt.Sprintf("trap: panic: %v", t.Value) }

// CatchTrap runs f and returns the panic it raised (a trap, in the proxy) as a *Trap, or nil:
//
//	trap := weirtest.CatchTrap(func() { h.RequestHeaders(req) })
func CatchTrap(f func()) (trap *Trap) {
	defer func() {
		if v := recover(); v != nil {
			trap = &Trap{Value: v}
		}
	}()
	f()
	return nil
}
