//go:build !wasip1

// Natively (go test), host calls go to the emulator that package weirtest installs in
// bridge.Current. Without one, getters return zero values and everything else fails with
// Unavailable, as the proxy does outside a phase.

package weir

import (
	"fmt"

	"github.com/weir-proxy/weir/sdk/go/internal/bridge"
)

func init() {
	bridge.NewRuntime = func(configure any, config string) (bridge.Runtime, error) {
		fn := registered
		if configure != nil {
			switch c := configure.(type) {
			case ConfigureFunc:
				fn = c
			case func([]byte) (Filter, Phases, error):
				fn = c
			default:
				return nil, fmt.Errorf("weir: not a ConfigureFunc: %T", configure)
			}
		}
		in, err := configureInstance(fn, config)
		if err != nil {
			return nil, err
		}
		return nativeRuntime{in}, nil
	}
}

type nativeRuntime struct{ in *instance }

func (r nativeRuntime) Phases() uint8                          { return uint8(r.in.phases) }
func (r nativeRuntime) Filter() any                            { return r.in.filter }
func (r nativeRuntime) OnRequestHeaders(ctx uint32) any        { return r.in.onRequestHeaders(ctx) }
func (r nativeRuntime) OnRequestBody(ctx uint32, end bool) any { return r.in.onRequestBody(ctx, end) }
func (r nativeRuntime) OnResponseHeaders(ctx uint32) any       { return r.in.onResponseHeaders(ctx) }
func (r nativeRuntime) OnResponseBody(ctx uint32, end bool) any {
	return r.in.onResponseBody(ctx, end)
}
func (r nativeRuntime) OnLog(ctx uint32)       { r.in.onLog(ctx) }
func (r nativeRuntime) ContextDone(ctx uint32) { r.in.contextDone(ctx) }
func (r nativeRuntime) LiveContexts() int      { return len(r.in.contexts) }

const noHost = "no host: host functions work inside a phase run by a weirtest.Harness, " +
	"or after weirtest.Host.Enter"

func errOf(e *bridge.Err) error {
	if e == nil {
		return nil
	}
	return &HostError{Kind: ErrorKind(e.Kind), Message: e.Message}
}

func host() bridge.Host { return bridge.Current }

func sysString(get func(bridge.Host) string) string {
	if h := host(); h != nil {
		return get(h)
	}
	return ""
}

func sysMethod() string        { return sysString(bridge.Host.Method) }
func sysPath() string          { return sysString(bridge.Host.Path) }
func sysAuthority() string     { return sysString(bridge.Host.Authority) }
func sysScheme() string        { return sysString(bridge.Host.Scheme) }
func sysClientAddress() string { return sysString(bridge.Host.ClientAddress) }
func sysRouteName() string     { return sysString(bridge.Host.RouteName) }
func sysClusterName() string   { return sysString(bridge.Host.ClusterName) }
func sysRequestID() string     { return sysString(bridge.Host.RequestID) }

func sysSetPath(path string) error {
	if h := host(); h != nil {
		return errOf(h.SetPath(path))
	}
	return hostError(Unavailable, noHost)
}

func sysStatus() uint16 {
	if h := host(); h != nil {
		return h.Status()
	}
	return 0
}

func sysSetStatus(status uint16) error {
	if h := host(); h != nil {
		return errOf(h.SetStatus(status))
	}
	return hostError(Unavailable, noHost)
}

func sysGetHeader(m headerMap, name string) (string, bool) {
	if h := host(); h != nil {
		return h.GetHeader(uint8(m), name)
	}
	return "", false
}

func sysGetHeaderAll(m headerMap, name string) []string {
	if h := host(); h != nil {
		if v := h.GetHeaderAll(uint8(m), name); v != nil {
			return v
		}
	}
	return []string{}
}

func sysSetHeader(m headerMap, name, value string) error {
	if h := host(); h != nil {
		return errOf(h.SetHeader(uint8(m), name, value))
	}
	return hostError(Unavailable, noHost)
}

func sysAppendHeader(m headerMap, name, value string) error {
	if h := host(); h != nil {
		return errOf(h.AppendHeader(uint8(m), name, value))
	}
	return hostError(Unavailable, noHost)
}

func sysRemoveHeader(m headerMap, name string) error {
	if h := host(); h != nil {
		return errOf(h.RemoveHeader(uint8(m), name))
	}
	return hostError(Unavailable, noHost)
}

func sysHeaders(m headerMap) []Header {
	out := []Header{}
	if h := host(); h != nil {
		for _, p := range h.Headers(uint8(m)) {
			out = append(out, Header{Name: p[0], Value: p[1]})
		}
	}
	return out
}

func sysBody(kind BodyKind) ([]byte, error) {
	if h := host(); h != nil {
		b, err := h.Body(uint8(kind))
		if err != nil {
			return nil, errOf(err)
		}
		return append([]byte{}, b...), nil
	}
	return nil, hostError(Unavailable, noHost)
}

func sysSetBody(kind BodyKind, bytes []byte) error {
	if h := host(); h != nil {
		return errOf(h.SetBody(uint8(kind), append([]byte{}, bytes...)))
	}
	return hostError(Unavailable, noHost)
}

func sysLog(level Level, message string) {
	if h := host(); h != nil {
		h.Log(uint8(level), message)
		return
	}
	fmt.Printf("[weir %s, no host] %s\n", level, message)
}

func sysNowMs() uint64 {
	if h := host(); h != nil {
		return h.NowMs()
	}
	return 1_700_000_000_000
}

func sysMonotonicNs() uint64 {
	if h := host(); h != nil {
		return h.MonotonicNs()
	}
	return 0
}

func sysRandomBytes(n uint32) []byte {
	if h := host(); h != nil {
		return h.RandomBytes(n)
	}
	return make([]byte, n)
}

func pairs(labels []Label) []bridge.Pair {
	out := make([]bridge.Pair, len(labels))
	for i, l := range labels {
		out[i] = bridge.Pair{l.Name, l.Value}
	}
	return out
}

func sysCounterAdd(name string, labels []Label, delta uint64) error {
	if h := host(); h != nil {
		return errOf(h.CounterAdd(name, pairs(labels), delta))
	}
	return hostError(Unavailable, noHost)
}

func sysGaugeSet(name string, labels []Label, value int64) error {
	if h := host(); h != nil {
		return errOf(h.GaugeSet(name, pairs(labels), value))
	}
	return hostError(Unavailable, noHost)
}

func sysHistogramObserve(name string, labels []Label, value float64) error {
	if h := host(); h != nil {
		return errOf(h.HistogramObserve(name, pairs(labels), value))
	}
	return hostError(Unavailable, noHost)
}

func sysKVGet(ns, key string) (Entry, bool, error) {
	if h := host(); h != nil {
		v, version, found, err := h.KVGet(ns, key)
		if err != nil {
			return Entry{}, false, errOf(err)
		}
		if !found {
			return Entry{}, false, nil
		}
		return Entry{Value: append([]byte{}, v...), Version: version}, true, nil
	}
	return Entry{}, false, hostError(Unavailable, noHost)
}

func sysKVSet(ns, key string, value []byte, ttlMs uint64) (uint64, error) {
	if h := host(); h != nil {
		v, err := h.KVSet(ns, key, append([]byte{}, value...), ttlMs)
		return v, errOf(err)
	}
	return 0, hostError(Unavailable, noHost)
}

func sysKVCompareAndSwap(ns, key string, expected uint64, value []byte, ttlMs uint64) (uint64, bool, error) {
	if h := host(); h != nil {
		v, ok, err := h.KVCompareAndSwap(ns, key, expected, append([]byte{}, value...), ttlMs)
		return v, ok, errOf(err)
	}
	return 0, false, hostError(Unavailable, noHost)
}

func sysKVDelete(ns, key string) error {
	if h := host(); h != nil {
		return errOf(h.KVDelete(ns, key))
	}
	return hostError(Unavailable, noHost)
}

func sysKVIncrement(ns, key string, delta int64, ttlMs uint64) (int64, error) {
	if h := host(); h != nil {
		v, err := h.KVIncrement(ns, key, delta, ttlMs)
		return v, errOf(err)
	}
	return 0, hostError(Unavailable, noHost)
}

func sysKVTakeTokens(ns, key string, rate, periodMs, burst, cost uint64) (BucketResult, error) {
	if h := host(); h != nil {
		b, err := h.KVTakeTokens(ns, key, rate, periodMs, burst, cost)
		if err != nil {
			return BucketResult{}, errOf(err)
		}
		return bucketResult(b.Allowed, b.Remaining, b.RetryAfterMs, b.ResetMs), nil
	}
	return BucketResult{}, hostError(Unavailable, noHost)
}

func sysCalloutSend(target, method, path string, headers []Header, body []byte, timeoutMs uint32) (*CalloutResponse, error) {
	if h := host(); h != nil {
		hs := make([]bridge.Pair, len(headers))
		for i, x := range headers {
			hs[i] = bridge.Pair{x.Name, x.Value}
		}
		res, err := h.CalloutSend(target, method, path, hs, append([]byte{}, body...), timeoutMs)
		if err != nil {
			return nil, errOf(err)
		}
		out := &CalloutResponse{Status: int(res.Status), Headers: []Header{}, Body: append([]byte{}, res.Body...)}
		for _, p := range res.Headers {
			out.Headers = append(out.Headers, Header{Name: p[0], Value: p[1]})
		}
		return out, nil
	}
	return nil, hostError(Unavailable, noHost)
}

func sysSpanSampled() bool {
	if h := host(); h != nil {
		return h.SpanSampled()
	}
	return false
}

func sysSpanSetAttribute(key, value string) error {
	if h := host(); h != nil {
		return errOf(h.SpanSetAttribute(key, value))
	}
	return hostError(Unavailable, noHost)
}

func sysSpanAddEvent(name string, attributes []Label) error {
	if h := host(); h != nil {
		return errOf(h.SpanAddEvent(name, pairs(attributes)))
	}
	return hostError(Unavailable, noHost)
}
