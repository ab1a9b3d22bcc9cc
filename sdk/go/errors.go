package weir

import "errors"

// ErrorKind says what kind of [HostError] the host returned (the WIT `host-error` cases).
type ErrorKind uint8

const (
	// Denied: the filter's config does not grant this capability (callout target, KV
	// namespace...).
	Denied ErrorKind = iota
	// Unavailable: the call makes no sense now (e.g. response headers during the request
	// phase, request data during configure).
	Unavailable
	// Invalid: an argument was invalid (bad header name or value, negative TTL...).
	Invalid
	// Failed: the operation failed (callout connect error, timeout...).
	Failed
)

// String returns the WIT name: denied, unavailable, invalid or failed.
func (k ErrorKind) String() string {
	switch k {
	case Denied:
		return "denied"
	case Unavailable:
		return "unavailable"
	case Invalid:
		return "invalid"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// HostError is an error returned by a host call. It is an ordinary value the filter decides
// what to do with, never a trap. Its Error text is "kind: message", e.g.
// `denied: kv namespace "sessions" is not granted`.
type HostError struct {
	Kind    ErrorKind
	Message string
}

func (e *HostError) Error() string { return e.Kind.String() + ": " + e.Message }

// ErrorKindOf returns the kind of a *HostError in err's chain.
func ErrorKindOf(err error) (ErrorKind, bool) {
	var he *HostError
	if errors.As(err, &he) {
		return he.Kind, true
	}
	return 0, false
}

func hostError(kind ErrorKind, message string) error {
	return &HostError{Kind: kind, Message: message}
}
