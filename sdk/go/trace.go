package weir

// TraceAPI is the type of [Trace]: the request's trace span. What a filter adds appears on the
// server span Weir exports for the request over OTLP (tracing.otlp in the proxy's config).
//
// Only sampled requests are exported; for the others the calls do nothing and cost next to
// nothing, and Sampled lets a filter skip building what it would add. Names are 1–128 bytes of
// [A-Za-z0-9._-]; attribute keys under the proxy's prefixes (http., url., server., client.,
// network., error., weir.) are Invalid. Values are cut at 512 bytes. A request's span takes at
// most 32 attributes and 32 events (of at most 16 attributes each) from all its filters
// together. In OnLog the span has been exported: the calls are Unavailable there.
type TraceAPI struct{}

// Trace adds to the request's span:
//
//	if weir.Trace.Sampled() {
//		weir.Trace.SetAttribute("enduser.id", sub)
//	}
//	weir.Trace.AddEvent("auth.refused", weir.Label{Name: "reason", Value: "expired"})
var Trace TraceAPI

// Sampled reports whether the current request's trace is exported (and still open to filters).
func (TraceAPI) Sampled() bool { return sysSpanSampled() }

// SetAttribute sets an attribute of the request's span; a key set again gets the new value.
func (TraceAPI) SetAttribute(key, value string) error {
	return sysSpanSetAttribute(utf8String(key), utf8String(value))
}

// AddEvent adds an event, timestamped now, with attributes, to the request's span. The proxy
// adds the filter's name as the event's weir.filter attribute.
func (TraceAPI) AddEvent(name string, attributes ...Label) error {
	return sysSpanAddEvent(utf8String(name), validLabels(attributes))
}
