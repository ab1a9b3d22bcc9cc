package weir

import (
	"math"
	"time"
)

// CalloutRequest is an HTTP request a filter sends with [CalloutAPI.Send].
type CalloutRequest struct {
	// Method, e.g. GET (empty means GET).
	Method string
	// Path with query, starting with /  (empty means /).
	Path string
	// Headers, in order.
	Headers []Header
	// Body to send.
	Body []byte
	// Timeout for the whole exchange (0 means 1 s); rounded down to milliseconds.
	Timeout time.Duration
}

// CalloutResponse is the answer to a callout.
type CalloutResponse struct {
	Status  int
	Headers []Header
	Body    []byte
}

// Header returns the first value of a header (case-insensitive name).
func (r *CalloutResponse) Header(name string) (string, bool) { return firstHeader(r.Headers, name) }

// CalloutAPI is the type of [Callout]: HTTP requests to targets granted in the filter's
// config (grants.callouts: cluster names or host:port); another target is a Denied error.
// The filter waits for the answer; the proxy keeps serving other requests.
type CalloutAPI struct{}

// Callout sends HTTP requests: weir.Callout.Send("auth", weir.CalloutRequest{Path: "/check"}).
var Callout CalloutAPI

// DefaultCalloutTimeout is the timeout of a CalloutRequest whose Timeout is 0.
const DefaultCalloutTimeout = time.Second

func validHeaders(headers []Header) []Header {
	for i, h := range headers {
		if utf8String(h.Name) != h.Name || utf8String(h.Value) != h.Value {
			out := append([]Header(nil), headers...)
			for j := i; j < len(out); j++ {
				out[j] = Header{utf8String(out[j].Name), utf8String(out[j].Value)}
			}
			return out
		}
	}
	return headers
}

// Send sends req to target (a granted cluster name or host:port) and waits for the whole
// response. Errors: Denied for a target not granted, Failed for connect errors and
// timeouts. A response with any status, 5xx included, is not an error.
func (CalloutAPI) Send(target string, req CalloutRequest) (*CalloutResponse, error) {
	method, path := req.Method, req.Path
	if method == "" {
		method = "GET"
	}
	if path == "" {
		path = "/"
	}
	timeout := req.Timeout
	if timeout == 0 {
		timeout = DefaultCalloutTimeout
	}
	if timeout < 0 {
		return nil, hostError(Invalid, "callout: negative timeout")
	}
	ms := timeout / time.Millisecond
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	return sysCalloutSend(utf8String(target), utf8String(method), utf8String(path),
		validHeaders(req.Headers), req.Body, uint32(ms))
}
