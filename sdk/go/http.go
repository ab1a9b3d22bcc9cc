package weir

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// headerMap is the WIT header-map enum.
type headerMap uint8

const (
	requestMap  headerMap = 0
	responseMap headerMap = 1
)

// BodyKind says which body a [Body] is (the WIT body-kind enum).
type BodyKind uint8

const (
	// RequestBody is the request body, on its way upstream.
	RequestBody BodyKind = 0
	// ResponseBody is the response body, on its way downstream.
	ResponseBody BodyKind = 1
)

func (k BodyKind) String() string {
	if k == ResponseBody {
		return "response"
	}
	return "request"
}

// utf8String returns s if it is valid UTF-8, else s with invalid bytes replaced by U+FFFD. WIT
// strings are UTF-8 and the proxy traps on anything else, so the SDK never sends invalid text.
func utf8String(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// Request is the current request: head, headers and properties. Every method is a host call
// acting on the request whose phase is running, so values are always current (another
// filter's change is visible). A *Request is only valid during the phase call it was passed
// to (do not keep it in state).
type Request struct{ _ [0]func() }

// Response is the current response: status and headers, plus read access to the request.
type Response struct{ _ [0]func() }

// Body is the body of a body phase: the current chunk plus any chunks held by an earlier
// [Buffer].
type Body struct{ kind BodyKind }

// LogView is what OnLog sees: the finished request and response, readable, not writable.
type LogView struct{ _ [0]func() }

// The handles are stateless: one of each serves every call without allocating.
var (
	theRequest      Request
	theResponse     Response
	theRequestBody  = Body{kind: RequestBody}
	theResponseBody = Body{kind: ResponseBody}
	theLogView      LogView
)

// Method is the request method (GET).
func (*Request) Method() string { return sysMethod() }

// Path is the path with query, as it will be sent upstream (/v1/users?id=7).
func (*Request) Path() string { return sysPath() }

// SetPath replaces the path (with query) sent upstream. Request phases only: elsewhere it is
// an Unavailable error; a path that does not start with / is Invalid.
func (*Request) SetPath(path string) error { return sysSetPath(utf8String(path)) }

// Authority is the authority (host[:port]) the client asked for.
func (*Request) Authority() string { return sysAuthority() }

// Scheme is http or https, as seen by the client.
func (*Request) Scheme() string { return sysScheme() }

// ClientAddress is the client's address, ip:port.
func (*Request) ClientAddress() string { return sysClientAddress() }

// ClientIP is the client's IP: ClientAddress without the port (and without the brackets of
// an IPv6 address).
func (r *Request) ClientIP() string { return hostOf(r.ClientAddress()) }

// hostOf strips the port from ip:port or [ip6]:port (package net would cost the module
// hundreds of KiB).
func hostOf(addr string) string {
	if strings.HasPrefix(addr, "[") {
		if end := strings.Index(addr, "]"); end > 0 {
			return addr[1:end]
		}
		return addr
	}
	if i := strings.LastIndexByte(addr, ':'); i >= 0 && strings.Count(addr, ":") == 1 {
		return addr[:i]
	}
	return addr
}

// RouteName is the name of the route that matched.
func (*Request) RouteName() string { return sysRouteName() }

// ClusterName is the name of the cluster the route sends to.
func (*Request) ClusterName() string { return sysClusterName() }

// RequestID is the request id (x-request-id).
func (*Request) RequestID() string { return sysRequestID() }

// Header returns the first value of a request header (names are case-insensitive).
func (*Request) Header(name string) (string, bool) { return sysGetHeader(requestMap, utf8String(name)) }

// HeaderValues returns every value of a request header, in order.
func (*Request) HeaderValues(name string) []string {
	return sysGetHeaderAll(requestMap, utf8String(name))
}

// Headers returns all request headers, in order.
func (*Request) Headers() []Header { return sysHeaders(requestMap) }

// SetHeader replaces all values of a request header with one value. Errors: Invalid for a bad
// name or value or for a framing or hop-by-hop header only the proxy sets ([IsFramingHeader]:
// Content-Length, Connection...), Unavailable when the request can no longer change (response
// phases).
func (*Request) SetHeader(name, value string) error {
	return sysSetHeader(requestMap, utf8String(name), utf8String(value))
}

// AppendHeader adds a value to a request header, keeping existing ones. Errors as SetHeader.
func (*Request) AppendHeader(name, value string) error {
	return sysAppendHeader(requestMap, utf8String(name), utf8String(value))
}

// RemoveHeader removes every value of a request header. Errors as SetHeader.
func (*Request) RemoveHeader(name string) error {
	return sysRemoveHeader(requestMap, utf8String(name))
}

// ResponseHeader returns the first value of a header set on the response to come by
// SetResponseHeader (in the response phases, the response's own header).
func (*Request) ResponseHeader(name string) (string, bool) {
	return sysGetHeader(responseMap, utf8String(name))
}

// SetResponseHeader sets a header on the response the client will get, from a request phase,
// whatever it is; response phases then see it. On the upstream's response the name replaces
// that name's values; a local response (this filter's, a later one's, or the proxy's error)
// keeps the headers it sets itself and gets the others. A filter that only adds response
// headers (a rate limit's RateLimit-*) so needs no response phase and no per-request state.
// Errors as SetHeader.
func (*Request) SetResponseHeader(name, value string) error {
	return sysSetHeader(responseMap, utf8String(name), utf8String(value))
}

// AppendResponseHeader adds a value to a header set on the response to come (see
// SetResponseHeader); the upstream's values of that name are still replaced.
func (*Request) AppendResponseHeader(name, value string) error {
	return sysAppendHeader(responseMap, utf8String(name), utf8String(value))
}

// Request is the request this response answers (read-only from response phases: setters
// return Unavailable).
func (*Response) Request() *Request { return &theRequest }

// Status is the response status (0 before a response exists).
func (*Response) Status() int { return int(sysStatus()) }

// SetStatus replaces the response status, 200–599. OnResponseHeaders only.
func (*Response) SetStatus(status int) error {
	if status < 0 || status > 0xffff {
		return hostError(Invalid, fmt.Sprintf("status %d is not in 200..=599", status))
	}
	return sysSetStatus(uint16(status))
}

// Header returns the first value of a response header (names are case-insensitive).
func (*Response) Header(name string) (string, bool) {
	return sysGetHeader(responseMap, utf8String(name))
}

// HeaderValues returns every value of a response header, in order.
func (*Response) HeaderValues(name string) []string {
	return sysGetHeaderAll(responseMap, utf8String(name))
}

// Headers returns all response headers, in order.
func (*Response) Headers() []Header { return sysHeaders(responseMap) }

// SetHeader replaces all values of a response header with one value. OnResponseHeaders only
// (elsewhere Unavailable; from a request phase, Request.SetResponseHeader); Invalid for a bad name or value or for a framing or hop-by-hop
// header only the proxy sets ([IsFramingHeader]).
func (*Response) SetHeader(name, value string) error {
	return sysSetHeader(responseMap, utf8String(name), utf8String(value))
}

// AppendHeader adds a value to a response header, keeping existing ones. Errors as SetHeader.
func (*Response) AppendHeader(name, value string) error {
	return sysAppendHeader(responseMap, utf8String(name), utf8String(value))
}

// RemoveHeader removes every value of a response header. Errors as SetHeader.
func (*Response) RemoveHeader(name string) error {
	return sysRemoveHeader(responseMap, utf8String(name))
}

// Kind says whether this is the request or the response body.
func (b *Body) Kind() BodyKind { return b.kind }

// Bytes returns the bytes held so far, copied out of the host on every call (keep the
// result rather than calling it twice).
func (b *Body) Bytes() ([]byte, error) { return sysBody(b.kind) }

// Set replaces the bytes returned by Bytes with these.
func (b *Body) Set(bytes []byte) error { return sysSetBody(b.kind, bytes) }

// Request is the request (read-only in a response body phase).
func (*Body) Request() *Request { return &theRequest }

// Response is the response head for a response body, nil for a request body.
func (b *Body) Response() *Response {
	if b.kind == ResponseBody {
		return &theResponse
	}
	return nil
}

// Request is the request as it was sent upstream.
func (*LogView) Request() *Request { return &theRequest }

// Response is the response as it was sent downstream.
func (*LogView) Response() *Response { return &theResponse }

// IsHeaderName reports whether name is a valid HTTP field name (an RFC 9110 token), for
// checking header names in a filter's config.
func IsHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// framingHeaders frame a message or belong to one connection (lowercase): only the proxy sets
// them.
var framingHeaders = [...]string{
	"content-length",
	"transfer-encoding",
	"connection",
	"keep-alive",
	"proxy-connection",
	"te",
	"trailer",
	"upgrade",
}

// IsFramingHeader reports whether name (any case) is a framing or hop-by-hop header:
// Content-Length, Transfer-Encoding, Connection, Keep-Alive, Proxy-Connection, TE, Trailer or
// Upgrade. The proxy sets these itself, because a wrong Content-Length would desynchronize a
// keep-alive connection: SetHeader, AppendHeader and RemoveHeader return Invalid for them (on
// the request and the response, in every phase), and a [LocalResponse] loses them. Use it to
// refuse a config that names one for writing.
func IsFramingHeader(name string) bool {
	for _, f := range framingHeaders {
		if asciiEqualFold(name, f) {
			return true
		}
	}
	return false
}

// asciiEqualFold reports whether s equals lower up to ASCII case (lower is lowercase). Unlike
// strings.EqualFold it does not fold non-ASCII letters (the Kelvin sign is not a k).
func asciiEqualFold(s, lower string) bool {
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
