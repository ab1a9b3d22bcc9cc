// The test filter for Weir's end-to-end tests, in Go: the same config, modes and behaviour as
// the Rust testbed (tests/filters/testbed), so the same checks run against both.
//
// | mode | phases | behaviour |
// |---|---|---|
// | noop | request-headers | returns Continue |
// | header-edit | request-headers, response-headers | sets `x-testbed: <value>` (default on), appends `x-chain: <tag>` (default testbed) and sets `x-testbed-build: v1`, on the request and on the response |
// | respond | request-headers | answers `status` (default 200) with `body` (default empty), `content-type: text/plain; charset=utf-8` |
// | loop | request-headers | never returns (the proxy's time budget must end it) |
// | membomb | request-headers | allocates and touches 1 MiB chunks until allocation fails, then traps; `limit_mb` stops (and panics) earlier, for native tests |
// | panic | request-headers | panics (a trap) |
// | host-calls | request-headers | makes each call of `calls` (the shared table tests/filters/host-calls.json) and answers 200 with one line per call: `ok`, `ok <value>`, or the host error's kind |
// | callout | request-headers | `GET path` (default /) to `target`, `timeout_ms` (default 1000); request header `x-callout` gets the status, or `kind: message` of the host error |
// | body-upper | request-body, response-body | buffers each body to its end and uppercases ASCII |
// | state | request-headers, response-headers | keeps the request path in the per-request context and returns it as response header `x-state-path`; answers 500 if a context ever arrives non-empty |
// | kv-counter | request-headers, response-headers | increments counter `key` (default requests) in KV namespace `ns`; `x-count` (request and response) gets the new value, or `kind: message` of the host error |
// | bad-config | request-headers | rejects the config unless `"fail": false` (then as noop) |
//
// Unknown modes and unknown fields are config errors. A host error the mode does not report
// in a header becomes a 500 local response with body `testbed: <error>`.
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o testbed-go.wasm .
package main

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	weir "github.com/weir-proxy/weir/sdk/go"
)

// Config is the testbed's config: {"mode": "...", ...mode fields}. Every mode decodes into
// its own struct (with a Mode field for the tag), strictly, so a field of another mode is
// an unknown field.
type Config struct {
	Mode string

	Value, Tag string     // header-edit
	Status     int        // respond
	Body       string     // respond
	LimitMB    *int64     // membomb
	Target     string     // callout
	Path       string     // callout
	TimeoutMs  uint64     // callout
	NS, Key    string     // kv-counter
	Fail       bool       // bad-config
	Calls      []HostCall // host-calls
}

// HostCall is one call of the shared host-call table (tests/filters/host-calls.json), run alike
// by the real proxy and by each SDK's emulator so they can be held to one answer.
type HostCall struct {
	Call      string      `json:"call"`
	Name      string      `json:"name"`
	Labels    [][2]string `json:"labels"`
	Value     string      `json:"value"`
	Namespace string      `json:"namespace"`
	Key       string      `json:"key"`
	Alg       string      `json:"alg"`
	Signature string      `json:"signature"`
	Expect    string      `json:"expect"`
}

var hashes = map[string]weir.Hash{"sha256": weir.SHA256, "sha384": weir.SHA384, "sha512": weir.SHA512}

var signatures = map[string]weir.SignatureAlgorithm{
	"rsa-pkcs1-sha256": weir.RsaPkcs1Sha256, "rsa-pkcs1-sha384": weir.RsaPkcs1Sha384,
	"rsa-pkcs1-sha512": weir.RsaPkcs1Sha512, "rsa-pss-sha256": weir.RsaPssSha256,
	"rsa-pss-sha384": weir.RsaPssSha384, "rsa-pss-sha512": weir.RsaPssSha512,
	"ecdsa-p256-sha256": weir.EcdsaP256Sha256, "ecdsa-p384-sha384": weir.EcdsaP384Sha384,
	"ed25519": weir.Ed25519,
}

func unhex(s string) []byte {
	b, _ := hex.DecodeString(s)
	return b
}

// crypto makes the crypto.* calls.
func (c HostCall) crypto() (string, error) {
	h := hashes[c.Alg]
	switch c.Call {
	case "crypto.digest":
		return hex.EncodeToString(weir.Crypto.Digest(h, []byte(c.Value))), nil
	case "crypto.hmac", "crypto.hmac-verify":
		k, err := weir.Crypto.NewHmacKey(h, []byte(c.Key))
		if err != nil {
			return "", err
		}
		defer k.Close()
		if c.Call == "crypto.hmac" {
			return hex.EncodeToString(k.Sign([]byte(c.Value))), nil
		}
		return strconv.FormatBool(k.Verify([]byte(c.Value), unhex(c.Signature))), nil
	case "crypto.equal":
		return strconv.FormatBool(weir.Crypto.ConstantTimeEqual([]byte(c.Name), []byte(c.Value))), nil
	case "crypto.verify":
		alg := signatures[c.Alg]
		var k *weir.VerifyingKey
		var err error
		switch c.Name {
		case "spki":
			k, err = weir.Crypto.VerifyingKeyFromSPKI(alg, unhex(c.Key))
		case "rsa":
			n, e, _ := strings.Cut(c.Key, ":")
			k, err = weir.Crypto.VerifyingKeyFromRSAComponents(alg, unhex(n), unhex(e))
		default:
			k, err = weir.Crypto.VerifyingKeyFromRaw(alg, unhex(c.Key))
		}
		if err != nil {
			return "", err
		}
		defer k.Close()
		return strconv.FormatBool(k.Verify([]byte(c.Value), unhex(c.Signature))), nil
	}
	// crypto.key-limit: keys are made until one is refused, then all closed.
	var keys []*weir.HmacKey
	for len(keys) <= weir.MaxCryptoKeys {
		k, err := weir.Crypto.NewHmacKey(h, []byte("k"))
		if err != nil {
			break
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		k.Close()
	}
	return strconv.Itoa(len(keys)), nil
}

// Run makes the call: "ok", "ok <value>", or the host error's kind.
func (c HostCall) Run(req *weir.Request) string {
	labels := make([]weir.Label, len(c.Labels))
	for i, l := range c.Labels {
		labels[i] = weir.Label{Name: l[0], Value: l[1]}
	}
	var out string
	var err error
	switch c.Call {
	case "metrics.counter-add":
		delta, perr := strconv.ParseUint(c.Value, 10, 64)
		if perr != nil {
			delta = 1
		}
		err = weir.Metrics.CounterAdd(c.Name, delta, labels...)
	case "metrics.gauge-set":
		v, _ := strconv.ParseInt(c.Value, 10, 64)
		err = weir.Metrics.GaugeSet(c.Name, v, labels...)
	case "metrics.histogram-observe":
		v, perr := strconv.ParseFloat(c.Value, 64)
		if perr != nil && !strings.EqualFold(c.Value, "inf") && !strings.EqualFold(c.Value, "-inf") {
			v = math.NaN()
		}
		err = weir.Metrics.HistogramObserve(c.Name, v, labels...)
	case "kv.set":
		_, err = weir.KV.Set(c.Namespace, c.Key, []byte(c.Value), 0)
	case "kv.get":
		var e weir.Entry
		var found bool
		e, found, err = weir.KV.Get(c.Namespace, c.Key)
		out = "none"
		if found {
			out = string(e.Value)
		}
	case "kv.increment":
		delta, perr := strconv.ParseInt(c.Value, 10, 64)
		if perr != nil {
			delta = 1
		}
		var n int64
		n, err = weir.KV.Increment(c.Namespace, c.Key, delta, 0)
		out = strconv.FormatInt(n, 10)
	case "http.set-header":
		err = req.SetHeader(c.Name, c.Value)
	case "http.append-header":
		err = req.AppendHeader(c.Name, c.Value)
	case "http.remove-header":
		err = req.RemoveHeader(c.Name)
	case "http.set-response-header":
		err = req.SetResponseHeader(c.Name, c.Value)
	case "http.append-response-header":
		err = req.AppendResponseHeader(c.Name, c.Value)
	case "http.response-header":
		v, ok := req.ResponseHeader(c.Name)
		if !ok {
			v = "none"
		}
		out = v
	case "trace.sampled":
		out = strconv.FormatBool(weir.Trace.Sampled())
	case "trace.set-attribute":
		err = weir.Trace.SetAttribute(c.Name, c.Value)
	case "trace.add-event":
		err = weir.Trace.AddEvent(c.Name, labels...)
	case "crypto.digest", "crypto.hmac", "crypto.hmac-verify", "crypto.equal", "crypto.verify", "crypto.key-limit":
		out, err = c.crypto()
	default:
		return fmt.Sprintf("unknown call %q", c.Call)
	}
	if err != nil {
		if kind, ok := weir.ErrorKindOf(err); ok {
			return kind.String()
		}
		return err.Error()
	}
	if out == "" {
		return "ok"
	}
	return "ok " + out
}

type (
	noFields   struct{ Mode string }
	headerEdit struct {
		Mode  string
		Value *string `json:"value"`
		Tag   *string `json:"tag"`
	}
	respond struct {
		Mode   string
		Status *int    `json:"status"`
		Body   *string `json:"body"`
	}
	membomb struct {
		Mode    string
		LimitMB *int64 `json:"limit_mb"`
	}
	callout struct {
		Mode      string
		Target    *string `json:"target"`
		Path      *string `json:"path"`
		TimeoutMs *uint64 `json:"timeout_ms"`
	}
	kvCounter struct {
		Mode string
		NS   *string `json:"ns"`
		Key  *string `json:"key"`
	}
	badConfig struct {
		Mode string
		Fail *bool `json:"fail"`
	}
	hostCalls struct {
		Mode  string
		Calls *[]HostCall `json:"calls"`
	}
)

func or[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// ParseConfig decodes and validates the config.
func ParseConfig(raw []byte) (Config, error) {
	var tag struct {
		Mode *string `json:"mode"`
	}
	if err := json.Unmarshal(orEmpty(raw), &tag); err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	if tag.Mode == nil {
		return Config{}, errors.New("config: missing field `mode`")
	}
	c := Config{Mode: *tag.Mode}
	var err error
	switch c.Mode {
	case "noop", "loop", "panic", "body-upper", "state":
		err = weir.DecodeConfig(raw, &noFields{})
	case "header-edit":
		var m headerEdit
		err = weir.DecodeConfig(raw, &m)
		c.Value, c.Tag = or(m.Value, "on"), or(m.Tag, "testbed")
	case "respond":
		var m respond
		err = weir.DecodeConfig(raw, &m)
		c.Status, c.Body = or(m.Status, 200), or(m.Body, "")
		if err == nil && (c.Status < 200 || c.Status > 599) {
			return c, fmt.Errorf("respond: status must be 200-599, got %d", c.Status)
		}
	case "membomb":
		var m membomb
		err = weir.DecodeConfig(raw, &m)
		c.LimitMB = m.LimitMB
	case "callout":
		var m callout
		err = weir.DecodeConfig(raw, &m)
		if err == nil && m.Target == nil {
			return c, errors.New("config: missing field `target`")
		}
		c.Target, c.Path, c.TimeoutMs = or(m.Target, ""), or(m.Path, "/"), or(m.TimeoutMs, 1000)
		if err == nil && c.Target == "" {
			return c, errors.New("callout: target must not be empty")
		}
		if err == nil && !strings.HasPrefix(c.Path, "/") {
			return c, fmt.Errorf("callout: path must start with /, got %q", c.Path)
		}
	case "kv-counter":
		var m kvCounter
		err = weir.DecodeConfig(raw, &m)
		if err == nil && m.NS == nil {
			return c, errors.New("config: missing field `ns`")
		}
		c.NS, c.Key = or(m.NS, ""), or(m.Key, "requests")
		if err == nil && c.NS == "" {
			return c, errors.New("kv-counter: ns must not be empty")
		}
	case "host-calls":
		var m hostCalls
		err = weir.DecodeConfig(raw, &m)
		if err == nil && m.Calls == nil {
			return c, errors.New("config: missing field `calls`")
		}
		if m.Calls != nil {
			c.Calls = *m.Calls
		}
	case "bad-config":
		var m badConfig
		err = weir.DecodeConfig(raw, &m)
		c.Fail = or(m.Fail, true)
		if err == nil && c.Fail {
			return c, errors.New(`testbed: bad-config mode rejects its config (set "fail": false to accept)`)
		}
	default:
		return c, fmt.Errorf("config: unknown mode %q (expected noop, header-edit, host-calls, respond, loop, membomb, panic, callout, body-upper, state, kv-counter or bad-config)", c.Mode)
	}
	return c, err
}

func orEmpty(raw []byte) []byte {
	if strings.TrimSpace(string(raw)) == "" {
		return []byte("{}")
	}
	return raw
}

// Phases are the phases a mode takes part in; only state and kv-counter keep something per
// request, the other modes are stateless.
func (c Config) Phases() weir.Phases {
	switch c.Mode {
	case "state", "kv-counter":
		return weir.PhaseRequestHeaders | weir.PhaseResponseHeaders
	case "header-edit":
		return weir.PhaseRequestHeaders | weir.PhaseResponseHeaders | weir.Stateless
	case "body-upper":
		return weir.PhaseRequestBody | weir.PhaseResponseBody | weir.Stateless
	}
	return weir.PhaseRequestHeaders | weir.Stateless
}

// Testbed is the filter.
type Testbed struct {
	weir.DefaultFilter
	cfg Config
}

// reqState is the per-request state.
type reqState struct {
	path  *string // state: the path seen at request-headers
	count *string // kv-counter: what went into the request's x-count
}

// fail answers a host error as a 500: the testbed never hides one.
func fail(err error) weir.Action {
	return weir.Respond(weir.Text(500, "testbed: "+err.Error()))
}

func orFail(err error) weir.Action {
	if err != nil {
		return fail(err)
	}
	return weir.Continue
}

// errorValue is a host error as a header value (control characters become spaces).
func errorValue(err error) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, err.Error())
}

type headerSetter interface {
	SetHeader(name, value string) error
	AppendHeader(name, value string) error
}

func (t *Testbed) edit(h headerSetter) weir.Action {
	if err := h.SetHeader("x-testbed", t.cfg.Value); err != nil {
		return fail(err)
	}
	if err := h.AppendHeader("x-chain", t.cfg.Tag); err != nil {
		return fail(err)
	}
	return orFail(h.SetHeader("x-testbed-build", Build))
}

// spin never returns; the clock call keeps the loop observable (natively, the emulator's time
// budget panics at a host call; in the proxy the epoch deadline traps).
func spin() {
	for {
		weir.Clock.MonotonicNs()
	}
}

var hoard [][]byte

// bomb allocates and touches 1 MiB chunks, keeping them, until allocation fails (in the
// proxy: the memory limit traps) or limitMB is reached (a panic).
func bomb(limitMB *int64) {
	const chunk = 1 << 20
	for {
		held := int64(len(hoard))
		if limitMB != nil && held >= *limitMB {
			panic(fmt.Sprintf("testbed: membomb reached limit_mb = %d", held))
		}
		b := make([]byte, chunk)
		// Writing every byte makes the pages real, not just reserved (doubling copies: fast
		// enough that the memory limit, not the time budget, ends it).
		b[0] = 0xA5
		for filled := 1; filled < len(b); filled *= 2 {
			copy(b[filled:], b[:filled])
		}
		hoard = append(hoard, b)
	}
}

func upper(body *weir.Body, end bool) weir.Action {
	if !end {
		return weir.Buffer
	}
	b, err := body.Bytes()
	if err != nil {
		return fail(err)
	}
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
	}
	return orFail(body.Set(b))
}

func (t *Testbed) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
	switch t.cfg.Mode {
	case "header-edit":
		return t.edit(req)
	case "host-calls":
		lines := make([]string, len(t.cfg.Calls))
		for i, c := range t.cfg.Calls {
			lines[i] = c.Run(req)
		}
		return weir.Respond(weir.Text(200, strings.Join(lines, "\n")))
	case "respond":
		return weir.Respond(weir.Text(t.cfg.Status, t.cfg.Body))
	case "loop":
		spin()
	case "membomb":
		bomb(t.cfg.LimitMB)
	case "panic":
		panic("testbed: panic mode")
	case "callout":
		timeout := time.Duration(t.cfg.TimeoutMs) * time.Millisecond
		if t.cfg.TimeoutMs == 0 {
			timeout = time.Nanosecond // 0 ms, not the SDK's default
		}
		var outcome string
		res, err := weir.Callout.Send(t.cfg.Target, weir.CalloutRequest{Method: "GET", Path: t.cfg.Path, Timeout: timeout})
		if err != nil {
			outcome = errorValue(err)
		} else {
			outcome = strconv.Itoa(res.Status)
		}
		return orFail(req.SetHeader("x-callout", outcome))
	case "state":
		st := weir.State[reqState](ctx)
		if st.path != nil {
			return weir.Respond(weir.Text(500, "testbed: context reused (held "+*st.path+")"))
		}
		p := req.Path()
		st.path = &p
	case "kv-counter":
		st := weir.State[reqState](ctx)
		var count string
		if n, err := weir.KV.Increment(t.cfg.NS, t.cfg.Key, 1, 0); err != nil {
			count = errorValue(err)
		} else {
			count = strconv.FormatInt(n, 10)
		}
		a := orFail(req.SetHeader("x-count", count))
		st.count = &count
		return a
	}
	return weir.Continue
}

func (t *Testbed) OnRequestBody(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
	if t.cfg.Mode == "body-upper" {
		return upper(body, end)
	}
	return weir.Continue
}

func (t *Testbed) OnResponseHeaders(ctx *weir.Context, res *weir.Response) weir.Action {
	switch t.cfg.Mode {
	case "header-edit":
		return t.edit(res)
	case "state":
		path := "<none>"
		if p := weir.State[reqState](ctx).path; p != nil {
			path = *p
		}
		return orFail(res.SetHeader("x-state-path", path))
	case "kv-counter":
		if c := weir.State[reqState](ctx).count; c != nil {
			return orFail(res.SetHeader("x-count", *c))
		}
	}
	return weir.Continue
}

func (t *Testbed) OnResponseBody(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
	if t.cfg.Mode == "body-upper" {
		return upper(body, end)
	}
	return weir.Continue
}

func init() {
	weir.Register(func(config []byte) (weir.Filter, weir.Phases, error) {
		cfg, err := ParseConfig(config)
		if err != nil {
			return nil, 0, err
		}
		return &Testbed{cfg: cfg}, cfg.Phases(), nil
	})
}

func main() {}
