package weir

import (
	"encoding/json"
	"fmt"
	"strings"
)

type actionKind uint8

const (
	actionContinue actionKind = iota
	actionRespond
	actionBuffer
)

// Action is what a phase decides: [Continue], [Buffer], or [Respond] with a local response.
// The zero Action is Continue.
type Action struct {
	kind     actionKind
	response *LocalResponse
}

var (
	// Continue goes on with the next filter, the upstream or the client.
	Continue = Action{kind: actionContinue}
	// Buffer (body phases only) holds this chunk: the next body call sees everything held so
	// far plus the new chunk, bounded by the filter's body limit (limits.max_body), over
	// which the request fails. Treated as Continue in header phases.
	Buffer = Action{kind: actionBuffer}
)

// Respond stops here and answers the client with r. From a response phase it replaces the
// upstream's response (its head, and its body if it has not started to stream). A nil r
// answers 500.
func Respond(r *LocalResponse) Action {
	if r == nil {
		r = NewResponse(500)
	}
	return Action{kind: actionRespond, response: r}
}

// RespondStatus answers the client with this status, no headers and an empty body.
func RespondStatus(status int) Action { return Respond(NewResponse(status)) }

// IsContinue reports whether a is Continue.
func (a Action) IsContinue() bool { return a.kind == actionContinue }

// IsBuffer reports whether a is Buffer.
func (a Action) IsBuffer() bool { return a.kind == actionBuffer }

// Response returns the local response of a Respond action, or nil.
func (a Action) Response() *LocalResponse {
	if a.kind != actionRespond {
		return nil
	}
	return a.response
}

// String describes the action: "continue", "buffer" or "respond(401)".
func (a Action) String() string {
	switch a.kind {
	case actionBuffer:
		return "buffer"
	case actionRespond:
		return fmt.Sprintf("respond(%d)", a.response.Status)
	default:
		return "continue"
	}
}

// Header is one header (or any name/value pair): names are case-insensitive.
type Header struct {
	Name  string
	Value string
}

// LocalResponse is a response produced by the filter instead of the upstream's (auth failures,
// rate limits, CORS preflight answers). Build it and return [Respond](r).
type LocalResponse struct {
	// Status is the HTTP status, 200–599 (the proxy answers 500 for anything else).
	Status int
	// Headers to send, in order (repeat a name to send several values). The proxy drops
	// framing and hop-by-hop headers ([IsFramingHeader]) and frames the body itself.
	Headers []Header
	// Body is the body.
	Body []byte
}

// NewResponse makes a response with this status, no headers and an empty body.
func NewResponse(status int) *LocalResponse { return &LocalResponse{Status: status} }

// Text makes a `text/plain; charset=utf-8` response.
func Text(status int, text string) *LocalResponse {
	return NewResponse(status).
		WithHeader("content-type", "text/plain; charset=utf-8").
		WithBody([]byte(text))
}

// JSON makes an `application/json` response with v marshaled (encoding/json) as its body. If
// v cannot be marshaled the response is a 500 saying so.
func JSON(status int, v any) *LocalResponse {
	body, err := json.Marshal(v)
	if err != nil {
		return Text(500, "weir: cannot encode the JSON response: "+err.Error())
	}
	return NewResponse(status).WithHeader("content-type", "application/json").WithBody(body)
}

// WithHeader adds a header and returns r.
func (r *LocalResponse) WithHeader(name, value string) *LocalResponse {
	r.Headers = append(r.Headers, Header{Name: name, Value: value})
	return r
}

// WithBody replaces the body and returns r.
func (r *LocalResponse) WithBody(body []byte) *LocalResponse {
	r.Body = body
	return r
}

// Header returns the first value of a header (case-insensitive name).
func (r *LocalResponse) Header(name string) (string, bool) { return firstHeader(r.Headers, name) }

func firstHeader(headers []Header, name string) (string, bool) {
	for _, h := range headers {
		if strings.EqualFold(h.Name, name) {
			return h.Value, true
		}
	}
	return "", false
}
