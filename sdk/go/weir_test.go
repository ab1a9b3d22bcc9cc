//go:build !wasip1

package weir_test

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	weir "github.com/weir-proxy/weir/sdk/go"
	"github.com/weir-proxy/weir/sdk/go/weirtest"
)

// probe is a filter whose behaviour each test sets with closures.
type probe struct {
	weir.DefaultFilter
	reqHeaders func(ctx *weir.Context, req *weir.Request) weir.Action
	reqBody    func(ctx *weir.Context, body *weir.Body, end bool) weir.Action
	resHeaders func(ctx *weir.Context, res *weir.Response) weir.Action
	resBody    func(ctx *weir.Context, body *weir.Body, end bool) weir.Action
	log        func(ctx *weir.Context, view *weir.LogView)
}

func (p *probe) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
	if p.reqHeaders == nil {
		return weir.Continue
	}
	return p.reqHeaders(ctx, req)
}

func (p *probe) OnRequestBody(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
	if p.reqBody == nil {
		return weir.Continue
	}
	return p.reqBody(ctx, body, end)
}

func (p *probe) OnResponseHeaders(ctx *weir.Context, res *weir.Response) weir.Action {
	if p.resHeaders == nil {
		return weir.Continue
	}
	return p.resHeaders(ctx, res)
}

func (p *probe) OnResponseBody(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
	if p.resBody == nil {
		return weir.Continue
	}
	return p.resBody(ctx, body, end)
}

func (p *probe) OnLog(ctx *weir.Context, view *weir.LogView) {
	if p.log != nil {
		p.log(ctx, view)
	}
}

func harness(t *testing.T, p *probe, phases weir.Phases, opts ...weirtest.Option) *weirtest.Harness {
	t.Helper()
	opts = append(opts, weirtest.WithFilter(func([]byte) (weir.Filter, weir.Phases, error) {
		return p, phases, nil
	}))
	h := weirtest.MustNew(t, "", opts...)
	h.Quiet()
	return h
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func kindOf(t *testing.T, err error) weir.ErrorKind {
	t.Helper()
	k, ok := weir.ErrorKindOf(err)
	if !ok {
		t.Fatalf("want a *weir.HostError, got %v", err)
	}
	return k
}

func TestDecodeConfig(t *testing.T) {
	type cfg struct {
		Header string `json:"header"`
	}
	var c cfg
	must(t, weir.DecodeConfig(nil, &c))
	must(t, weir.DecodeConfig([]byte("  \n"), &c))
	must(t, weir.DecodeConfig([]byte(`{"header":"x-a"}`), &c))
	if c.Header != "x-a" {
		t.Fatalf("got %q", c.Header)
	}
	if err := weir.DecodeConfig([]byte(`{"heder":"x"}`), &c); err == nil || !strings.HasPrefix(err.Error(), "config: ") || !strings.Contains(err.Error(), "heder") {
		t.Fatalf("unknown field: %v", err)
	}
	if err := weir.DecodeConfig([]byte(`{} {}`), &c); err == nil {
		t.Fatal("trailing data accepted")
	}
}

func TestConfigErrorsAndPhases(t *testing.T) {
	_, err := weirtest.New(`{}`, weirtest.WithFilter(func([]byte) (weir.Filter, weir.Phases, error) {
		return nil, 0, errors.New("keys: at least one key is required")
	}))
	if err == nil || err.Error() != "keys: at least one key is required" {
		t.Fatalf("got %v", err)
	}
	_, err = weirtest.New(`{}`, weirtest.WithFilter(func([]byte) (weir.Filter, weir.Phases, error) { return nil, 0, nil }))
	if err == nil {
		t.Fatal("nil filter accepted")
	}
	var got string
	h := weirtest.MustNew(t, `{"a":1}`, weirtest.WithFilter(func(c []byte) (weir.Filter, weir.Phases, error) {
		got = string(c)
		return &probe{}, weir.PhaseRequestHeaders | 0xc0, nil
	}))
	if got != `{"a":1}` || h.Phases() != weir.PhaseRequestHeaders {
		t.Fatalf("config %q phases %v", got, h.Phases())
	}
	if s := (weir.PhaseRequestHeaders | weir.PhaseLog).String(); s != "request-headers|log" {
		t.Fatal(s)
	}
}

func TestRequestHeadAndHeaders(t *testing.T) {
	h := harness(t, &probe{reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
		if req.Method() != "POST" || req.Path() != "/a?b=1" || req.Authority() != "api.example" ||
			req.Scheme() != "https" || req.ClientAddress() != "10.0.0.7:5000" || req.ClientIP() != "10.0.0.7" ||
			req.RouteName() != "test-route" || req.ClusterName() != "test-cluster" || req.RequestID() != "rid-1" {
			return weir.Respond(weir.Text(500, "bad head"))
		}
		if v, ok := req.Header("X-Name"); !ok || v != "Jürgen" {
			return weir.Respond(weir.Text(500, "bad x-name "+v))
		}
		if vs := req.HeaderValues("x-multi"); len(vs) != 2 || vs[0] != "1" || vs[1] != "2" {
			return weir.Respond(weir.Text(500, fmt.Sprint(vs)))
		}
		if _, ok := req.Header("x-missing"); ok {
			return weir.Respond(weir.Text(500, "x-missing present"))
		}
		for _, err := range []error{
			req.SetHeader("x-set", "grüße ✓"),
			req.AppendHeader("x-multi", "3"),
			req.RemoveHeader("x-remove"),
			req.SetPath("/rewritten?q=ü"),
		} {
			if err != nil {
				return weir.Respond(weir.Text(500, err.Error()))
			}
		}
		if err := req.SetHeader("bad name", "x"); kindOf(t, err) != weir.Invalid {
			t.Errorf("bad name: %v", err)
		}
		if err := req.SetHeader("x-ctl", "a\nb"); kindOf(t, err) != weir.Invalid {
			t.Errorf("control char: %v", err)
		}
		if err := req.SetPath("relative"); kindOf(t, err) != weir.Invalid {
			t.Errorf("relative path: %v", err)
		}
		// Invalid UTF-8 never reaches the host: it is replaced, as WIT strings must be UTF-8.
		must(t, req.SetHeader("x-bytes", "a\xffb"))
		// No response yet: the response map holds the headers to set on the response to come.
		must(t, req.SetResponseHeader("x-r", "1"))
		must(t, req.AppendResponseHeader("X-R", "2"))
		if v, ok := req.ResponseHeader("x-r"); !ok || v != "1" {
			t.Errorf("response header set in the request phase: %q", v)
		}
		if _, ok := req.Header("x-r"); ok {
			t.Error("a response header landed on the request")
		}
		if err := req.SetResponseHeader("content-length", "1"); kindOf(t, err) != weir.Invalid {
			t.Errorf("framing header on the response to come: %v", err)
		}
		return weir.Continue
	}}, weir.PhaseRequestHeaders)

	req := weirtest.Post("/a?b=1").WithAuthority("api.example").WithScheme("https").
		WithClient("10.0.0.7:5000").WithRequestID("rid-1").
		WithHeader("x-name", "Jürgen").WithHeader("X-Multi", "1").WithHeader("x-multi", "2").
		WithHeader("x-remove", "gone")
	if a := h.RequestHeaders(req); !a.IsContinue() {
		t.Fatalf("action %v: %s", a, a.Response().Body)
	}
	if req.Path() != "/rewritten?q=ü" {
		t.Fatal(req.Path())
	}
	if v, _ := req.Header("x-set"); v != "grüße ✓" {
		t.Fatalf("x-set %q", v)
	}
	if v, _ := req.Header("x-bytes"); v != "a\uFFFDb" {
		t.Fatalf("x-bytes %q", v)
	}
	if vs := req.HeaderValues("x-multi"); strings.Join(vs, ",") != "1,2,3" {
		t.Fatal(vs)
	}
	if _, ok := req.Header("x-remove"); ok {
		t.Fatal("x-remove kept")
	}
	if got := req.ResponseHeadersToSet(); len(got) != 2 || got[0].Value != "1" || got[1].Value != "2" {
		t.Fatal(got)
	}
	// They go on the response, replacing its values of that name, though the filter has no
	// response phase.
	res := weirtest.NewResponse(200).WithHeader("x-r", "upstream").WithHeader("server", "up")
	if a := h.ResponseHeaders(req, res); !a.IsContinue() {
		t.Fatal(a)
	}
	if vs := res.HeaderValues("x-r"); strings.Join(vs, ",") != "1,2" {
		t.Fatal(vs)
	}
	if v, _ := res.Header("server"); v != "up" {
		t.Fatal(v)
	}
}

func TestResponsePhases(t *testing.T) {
	h := harness(t, &probe{
		resHeaders: func(ctx *weir.Context, res *weir.Response) weir.Action {
			if res.Status() != 201 {
				return weir.RespondStatus(500)
			}
			if err := res.Request().SetHeader("x-late", "1"); kindOf(t, err) != weir.Unavailable {
				t.Errorf("request change in response phase: %v", err)
			}
			if v, _ := res.Request().Header("x-in"); v != "1" {
				t.Errorf("request header not readable: %q", v)
			}
			if err := res.SetStatus(42); kindOf(t, err) != weir.Invalid {
				t.Errorf("status 42: %v", err)
			}
			if err := res.SetStatus(70000); kindOf(t, err) != weir.Invalid {
				t.Errorf("status 70000: %v", err)
			}
			must(t, res.SetStatus(202))
			must(t, res.SetHeader("x-out", "ü"))
			hs := res.Headers()
			if len(hs) != 2 || hs[0] != (weir.Header{Name: "server", Value: "up"}) {
				t.Errorf("headers %v", hs)
			}
			return weir.Continue
		},
		log: func(ctx *weir.Context, view *weir.LogView) {
			if err := view.Response().SetHeader("x-a", "b"); kindOf(t, err) != weir.Unavailable {
				t.Errorf("write in log: %v", err)
			}
			weir.Log.Infof("log %d %s", view.Response().Status(), view.Request().Path())
		},
	}, weir.PhaseResponseHeaders|weir.PhaseLog)
	req := weirtest.Get("/x").WithHeader("x-in", "1")
	res := weirtest.NewResponse(201).WithHeader("Server", "up")
	if a := h.ResponseHeaders(req, res); !a.IsContinue() {
		t.Fatal(a)
	}
	if v, _ := res.Header("x-out"); res.Status() != 202 || v != "ü" {
		t.Fatalf("status %d x-out %q", res.Status(), v)
	}
	h.Log(req, res)
	h.Done(req)
	if logs := h.Logs(); len(logs) != 1 || logs[0].Message != "log 202 /x" || logs[0].Level != weir.LevelInfo {
		t.Fatal(logs)
	}
}

func TestBodyBufferingAndServe(t *testing.T) {
	var calls []string
	upper := func(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
		calls = append(calls, fmt.Sprintf("%s end=%v", body.Kind(), end))
		if !end {
			return weir.Buffer
		}
		b, err := body.Bytes()
		if err != nil {
			return weir.Respond(weir.Text(500, err.Error()))
		}
		if err := body.Set(bytes.ToUpper(b)); err != nil {
			return weir.Respond(weir.Text(500, err.Error()))
		}
		return weir.Continue
	}
	h := harness(t, &probe{
		reqBody: upper,
		resBody: func(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
			if body.Response() == nil || body.Response().Status() != 200 {
				return weir.RespondStatus(500)
			}
			if _, err := (&weir.Body{}).Bytes(); kindOf(t, err) != weir.Unavailable {
				t.Errorf("request body in response phase: %v", err)
			}
			return upper(ctx, body, end)
		},
	}, weir.PhaseRequestBody|weir.PhaseResponseBody)

	big := bytes.Repeat([]byte("grüße ✓ abc "), (1<<20)/14+1)
	var chunks [][]byte
	for o := 0; o < len(big); o += 64 << 10 {
		chunks = append(chunks, big[o:min(o+64<<10, len(big))])
	}
	req := weirtest.Post("/upload").WithBody(chunks...)
	out := h.Serve(req, weirtest.NewResponse(200).WithBody([]byte("ok "), []byte("done")))
	if out.Local != nil {
		t.Fatalf("local response %d %s", out.Local.Status, out.Local.Body)
	}
	if !bytes.Equal(out.Upstream.ForwardedBody(), bytes.ToUpper(big)) {
		t.Fatal("request body not uppercased exactly")
	}
	if string(out.Body) != "OK DONE" || out.Status != 200 {
		t.Fatalf("%d %q", out.Status, out.Body)
	}
	if len(calls) != len(chunks)+2 || calls[len(calls)-1] != "response end=true" {
		t.Fatal(calls)
	}
	if h.LiveContexts() != 0 {
		t.Fatal("context leaked")
	}

	// An empty body is one empty chunk with end set.
	calls = nil
	h.Serve(weirtest.Get("/"), nil)
	if strings.Join(calls, ";") != "request end=true;response end=true" {
		t.Fatal(calls)
	}
}

func TestLocalResponses(t *testing.T) {
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			if _, ok := req.Header("x-key"); !ok {
				return weir.Respond(weir.JSON(401, map[string]string{"error": "missing api key"}).
					WithHeader("www-authenticate", `ApiKey header="x-key"`))
			}
			return weir.Continue
		},
		resHeaders: func(ctx *weir.Context, res *weir.Response) weir.Action {
			t.Error("response phase after the filter's own local response")
			return weir.Continue
		},
	}, weir.PhaseRequestHeaders|weir.PhaseResponseHeaders)
	out := h.Serve(weirtest.Get("/"), nil)
	if out.Upstream != nil || out.RespondedIn != "request-headers" || out.Status != 401 ||
		string(out.Body) != `{"error":"missing api key"}` {
		t.Fatalf("%+v", out)
	}
	if v, _ := out.Header("content-type"); v != "application/json" {
		t.Fatal(v)
	}
	a := weir.Respond(weir.Text(429, "slow down").WithHeader("retry-after", "3"))
	if a.String() != "respond(429)" || a.IsContinue() || weir.Buffer.String() != "buffer" || weir.Continue.String() != "continue" {
		t.Fatal(a)
	}
	if v, ok := a.Response().Header("Retry-After"); !ok || v != "3" {
		t.Fatal(v)
	}
	if weir.Respond(nil).Response().Status != 500 || weir.Continue.Response() != nil {
		t.Fatal("nil response")
	}
}

// framing lists the proxy's framing and hop-by-hop headers in assorted cases, apart from the
// SDK's own list so a name dropped there fails here.
var framing = []string{"content-length", "Transfer-Encoding", "CONNECTION", "keep-alive",
	"Proxy-Connection", "TE", "trailer", "Upgrade"}

// refusesFraming checks, in the running phase, that no framing header can be written on
// either map, with the proxy's error.
func refusesFraming(t *testing.T, phase string) {
	t.Helper()
	req, res := &weir.Request{}, &weir.Response{}
	for _, name := range framing {
		want := strings.ToLower(name) + " is a framing or hop-by-hop header: the proxy sets it"
		for i, err := range []error{
			req.SetHeader(name, "0"), req.AppendHeader(name, "0"), req.RemoveHeader(name),
			res.SetHeader(name, "0"), res.AppendHeader(name, "0"), res.RemoveHeader(name),
		} {
			var he *weir.HostError
			if !errors.As(err, &he) || he.Kind != weir.Invalid || he.Message != want {
				t.Errorf("%s: call %d on %s: got %v, want invalid: %s", phase, i, name, err, want)
			}
		}
	}
}

func TestFramingHeadersAreTheProxys(t *testing.T) {
	for _, name := range framing {
		if !weir.IsFramingHeader(name) {
			t.Errorf("IsFramingHeader(%q) = false", name)
		}
	}
	for _, name := range []string{"x-content-length", "upgrade-insecure-requests", "tea", "\u212aeep-alive", ""} {
		if weir.IsFramingHeader(name) {
			t.Errorf("IsFramingHeader(%q) = true", name)
		}
	}

	var phases []string
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			phases = append(phases, "request-headers")
			refusesFraming(t, "request-headers")
			// Reading them stays allowed.
			if v, ok := req.Header("Content-Length"); !ok || v != "4" {
				t.Errorf("content-length unreadable: %q", v)
			}
			return weir.Continue
		},
		reqBody: func(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
			phases = append(phases, "request-body")
			refusesFraming(t, "request-body")
			return weir.Continue
		},
		resHeaders: func(ctx *weir.Context, res *weir.Response) weir.Action {
			phases = append(phases, "response-headers")
			refusesFraming(t, "response-headers")
			if v, ok := res.Header("transfer-encoding"); !ok || v != "chunked" {
				t.Errorf("transfer-encoding unreadable: %q", v)
			}
			return weir.Continue
		},
		resBody: func(ctx *weir.Context, body *weir.Body, end bool) weir.Action {
			phases = append(phases, "response-body")
			refusesFraming(t, "response-body")
			return weir.Continue
		},
		log: func(ctx *weir.Context, view *weir.LogView) {
			phases = append(phases, "log")
			refusesFraming(t, "log")
		},
	}, weir.AllPhases)
	req := weirtest.Post("/").WithHeader("content-length", "4").WithBody([]byte("ping"))
	out := h.Serve(req, weirtest.NewResponse(200).WithHeader("Transfer-Encoding", "chunked").WithBody([]byte("pong")))
	if strings.Join(phases, ",") != "request-headers,request-body,response-headers,response-body,log" {
		t.Fatal(phases)
	}
	if v, _ := out.Upstream.Header("content-length"); v != "4" {
		t.Fatalf("upstream content-length %q", v)
	}
	// Outside a phase the name is checked first, as in the proxy.
	exit := h.Enter()
	refusesFraming(t, "outside a phase")
	exit()
}

func TestLocalResponsesLoseFramingHeaders(t *testing.T) {
	var logged []weir.Header
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			return weir.Respond(weir.Text(403, "no").
				WithHeader("Content-Length", "999").WithHeader("connection", "close").
				WithHeader("x-reason", "policy").WithHeader("transfer-encoding", "chunked"))
		},
		log: func(ctx *weir.Context, view *weir.LogView) { logged = view.Response().Headers() },
	}, weir.PhaseRequestHeaders|weir.PhaseLog)
	out := h.Serve(weirtest.Get("/"), nil)
	want := []weir.Header{
		{Name: "content-type", Value: "text/plain; charset=utf-8"},
		{Name: "x-reason", Value: "policy"},
	}
	if fmt.Sprint(out.Headers) != fmt.Sprint(want) || fmt.Sprint(logged) != fmt.Sprint(want) {
		t.Fatalf("client got %v, log saw %v, want %v", out.Headers, logged, want)
	}
	if string(out.Body) != "no" || out.Status != 403 {
		t.Fatalf("%d %q", out.Status, out.Body)
	}
	// The filter's own response is kept as it built it.
	if v, _ := out.Local.Header("content-length"); v != "999" {
		t.Fatalf("local %v", out.Local.Headers)
	}
}

type calls struct{ n int }

func TestPerRequestState(t *testing.T) {
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			st := weir.State[calls](ctx)
			if st.n != 0 || ctx.Get("path") != nil {
				return weir.Respond(weir.Text(500, "context reused"))
			}
			st.n++
			ctx.Set("path", req.Path())
			return weir.Continue
		},
		resHeaders: func(ctx *weir.Context, res *weir.Response) weir.Action {
			must(t, res.SetHeader("x-path", ctx.Get("path").(string)))
			must(t, res.SetHeader("x-calls", fmt.Sprint(weir.State[calls](ctx).n)))
			ctx.Delete("path")
			return weir.Continue
		},
	}, weir.PhaseRequestHeaders|weir.PhaseResponseHeaders)
	a, b := weirtest.Get("/a"), weirtest.Get("/b")
	h.RequestHeaders(a)
	h.RequestHeaders(b) // interleaved requests keep separate contexts
	if h.LiveContexts() != 2 {
		t.Fatal(h.LiveContexts())
	}
	ra, rb := weirtest.NewResponse(200), weirtest.NewResponse(200)
	h.ResponseHeaders(b, rb)
	h.ResponseHeaders(a, ra)
	if v, _ := ra.Header("x-path"); v != "/a" {
		t.Fatal(v)
	}
	if v, _ := rb.Header("x-path"); v != "/b" {
		t.Fatal(v)
	}
	h.Done(a)
	h.Done(b)
	if h.LiveContexts() != 0 {
		t.Fatal("contexts not freed")
	}
	for i := 0; i < 1000; i++ {
		if out := h.Serve(weirtest.Get("/n"), nil); out.Local != nil {
			t.Fatal(string(out.Local.Body))
		}
	}
	if h.LiveContexts() != 0 {
		t.Fatal("contexts leaked")
	}
}

func TestStatelessKeepsNoContext(t *testing.T) {
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			ctx.Set("path", req.Path())
			return weir.Continue
		},
		resHeaders: func(ctx *weir.Context, res *weir.Response) weir.Action {
			if ctx.Get("path") != nil {
				return weir.Respond(weir.Text(500, "state carried over"))
			}
			return weir.Continue
		},
	}, weir.PhaseRequestHeaders|weir.PhaseResponseHeaders|weir.Stateless)
	if !h.Phases().Has(weir.Stateless) || h.Phases().String() != "request-headers|response-headers|stateless" {
		t.Fatal(h.Phases())
	}
	if out := h.Serve(weirtest.Get("/a"), nil); out.Local != nil {
		t.Fatal(string(out.Local.Body))
	}
	if h.LiveContexts() != 0 {
		t.Fatal("a stateless filter kept a context")
	}
}

func TestKV(t *testing.T) {
	host := weirtest.NewHost()
	defer host.Enter()()
	v1, err := weir.KV.Set("sessions", "abc", []byte("alice"), time.Minute)
	must(t, err)
	e, ok, err := weir.KV.Get("sessions", "abc")
	if err != nil || !ok || string(e.Value) != "alice" || e.Version != v1 {
		t.Fatal(e, ok, err)
	}
	if _, ok, _ := weir.KV.Get("sessions", "nope"); ok {
		t.Fatal("missing key found")
	}
	if _, ok, err := weir.KV.CompareAndSwap("sessions", "abc", 0, []byte("x"), 0); ok || err != nil {
		t.Fatal("cas on existing key with 0")
	}
	v2, ok, err := weir.KV.CompareAndSwap("sessions", "abc", v1, []byte("bob"), 0)
	if !ok || err != nil || v2 <= v1 {
		t.Fatal(v2, ok, err)
	}
	host.Advance(2 * time.Minute)
	if e, ok, _ := weir.KV.Get("sessions", "abc"); !ok || string(e.Value) != "bob" {
		t.Fatal("cas without ttl should not expire", e)
	}
	must(t, weir.KV.Delete("sessions", "abc"))
	if _, ok, _ := weir.KV.Get("sessions", "abc"); ok {
		t.Fatal("deleted key found")
	}
	_, err = weir.KV.Set("s", "k", nil, -time.Second)
	if kindOf(t, err) != weir.Invalid {
		t.Fatal(err)
	}

	for i := int64(1); i <= 3; i++ {
		if n, err := weir.KV.Increment("hits", "/login", 1, time.Second); err != nil || n != i {
			t.Fatal(n, err)
		}
	}
	host.Advance(time.Second)
	if n, _ := weir.KV.Increment("hits", "/login", 1, time.Second); n != 1 {
		t.Fatal("window did not reset", n)
	}

	for i := 0; i < 2; i++ {
		b, err := weir.KV.TakeTokens("rl", "ip", 1, time.Second, 2, 1)
		if err != nil || !b.Allowed || b.Remaining != uint64(1-i) {
			t.Fatal(b, err)
		}
	}
	b, _ := weir.KV.TakeTokens("rl", "ip", 1, time.Second, 2, 1)
	if b.Allowed || b.RetryAfter != time.Second || b.Reset != 2*time.Second {
		t.Fatalf("%+v", b)
	}
	host.Advance(time.Second)
	if b, _ := weir.KV.TakeTokens("rl", "ip", 1, time.Second, 2, 1); !b.Allowed {
		t.Fatalf("not refilled %+v", b)
	}
	if _, err := weir.KV.TakeTokens("rl", "ip", 1, time.Second, 2, 3); kindOf(t, err) != weir.Invalid {
		t.Fatal(err)
	}

	host.SetGrants(weirtest.NoGrants().KV("ok"))
	if _, err := weir.KV.Increment("other", "k", 1, 0); kindOf(t, err) != weir.Denied ||
		!strings.HasPrefix(err.Error(), `denied: kv namespace "other" is not granted`) {
		t.Fatal(err)
	}
	if _, err := weir.KV.Increment("ok", "k", 1, 0); err != nil {
		t.Fatal(err)
	}
	if host.KVCounter("ok", "k") != 1 {
		t.Fatal("KVCounter")
	}
	host.SetKVValue("ok", "seed", []byte("v"))
	if e, ok, _ := weir.KV.Get("ok", "seed"); !ok || string(e.Value) != "v" {
		t.Fatal("seeded value")
	}
}

func TestMetricsClockLog(t *testing.T) {
	host := weirtest.NewHost()
	host.Quiet()
	exit := host.Enter()
	must(t, weir.Metrics.CounterAdd("auth_failures_total", 2, weir.Label{Name: "reason", Value: "expired"}, weir.Label{Name: "a", Value: "b"}))
	must(t, weir.Metrics.CounterAdd("auth_failures_total", 1, weir.Label{Name: "a", Value: "b"}, weir.Label{Name: "reason", Value: "expired"}))
	must(t, weir.Metrics.GaugeSet("keys_loaded", -3))
	must(t, weir.Metrics.HistogramObserve("latency_seconds", 0.25))
	if err := weir.Metrics.CounterAdd("Bad-Name", 1); kindOf(t, err) != weir.Invalid {
		t.Fatal(err)
	}
	if err := weir.Metrics.GaugeSet("auth_failures_total", 1); kindOf(t, err) != weir.Invalid {
		t.Fatal("kind conflict accepted")
	}
	start := weir.Clock.MonotonicNs()
	now := weir.Clock.Now()
	r1 := weir.Clock.RandomBytes(20)
	weir.Log.Warn("grüße")
	exit()

	host.Advance(1500 * time.Millisecond)
	exit = host.Enter()
	if d := weir.Clock.Since(start); d != 1500*time.Millisecond {
		t.Fatal(d)
	}
	if weir.Clock.NowMs() != weirtest.StartMs+1500 || now.UnixMilli() != int64(weirtest.StartMs) {
		t.Fatal(weir.Clock.NowMs(), now)
	}
	exit()
	if host.Counter("auth_failures_total", weir.Label{Name: "a", Value: "b"}, weir.Label{Name: "reason", Value: "expired"}) != 3 {
		t.Fatal("counter")
	}
	if g, ok := host.Gauge("keys_loaded"); !ok || g != -3 {
		t.Fatal(g)
	}
	if hs := host.Histogram("latency_seconds"); len(hs) != 1 || hs[0] != 0.25 {
		t.Fatal(hs)
	}
	if len(r1) != 20 {
		t.Fatal(len(r1))
	}
	other := weirtest.NewHost()
	exit = other.Enter()
	r2 := weir.Clock.RandomBytes(20)
	exit()
	if !bytes.Equal(r1, r2) {
		t.Fatal("random bytes not deterministic per seed")
	}
	if l := host.TakeLogs(); len(l) != 1 || l[0].Level != weir.LevelWarn || l[0].Message != "grüße" || len(host.Logs()) != 0 {
		t.Fatal(l)
	}
}

func TestCallout(t *testing.T) {
	h := harness(t, &probe{reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
		res, err := weir.Callout.Send("auth", weir.CalloutRequest{
			Method: "POST", Path: "/introspect", Headers: []weir.Header{{Name: "authorization", Value: "Bearer t"}},
			Body: []byte("token=t"), Timeout: 200 * time.Millisecond,
		})
		if err != nil {
			return weir.Respond(weir.Text(502, err.Error()))
		}
		v, _ := res.Header("X-User")
		must(t, req.SetHeader("x-user", v))
		return weir.Continue
	}}, weir.PhaseRequestHeaders)

	h.OnCallout(func(target string, req weir.CalloutRequest) (*weir.CalloutResponse, error) {
		if target != "auth" || req.Method != "POST" || req.Path != "/introspect" || string(req.Body) != "token=t" || req.Timeout != 200*time.Millisecond {
			return nil, fmt.Errorf("unexpected %s %+v", target, req)
		}
		// The handler may use the host too.
		if _, err := weir.KV.Increment("seen", "auth", 1, 0); err != nil {
			return nil, err
		}
		return &weir.CalloutResponse{Status: 200, Headers: []weir.Header{{Name: "x-user", Value: "Jürgen"}}}, nil
	})
	req := weirtest.Get("/")
	if a := h.RequestHeaders(req); !a.IsContinue() {
		t.Fatalf("%v %s", a, a.Response().Body)
	}
	if v, _ := req.Header("x-user"); v != "Jürgen" {
		t.Fatal(v)
	}
	if sent := h.Callouts(); len(sent) != 1 || sent[0].Target != "auth" || h.KVCounter("seen", "auth") != 1 {
		t.Fatal(sent)
	}

	h.OnCallout(func(string, weir.CalloutRequest) (*weir.CalloutResponse, error) {
		return nil, &weir.HostError{Kind: weir.Failed, Message: "timeout after 200ms"}
	})
	a := h.RequestHeaders(weirtest.Get("/"))
	if a.Response() == nil || string(a.Response().Body) != "failed: timeout after 200ms" {
		t.Fatal(a)
	}
	h.SetGrants(weirtest.NoGrants().Callout("other"))
	a = h.RequestHeaders(weirtest.Get("/"))
	if a.Response() == nil || !strings.HasPrefix(string(a.Response().Body), `denied: callout target "auth"`) {
		t.Fatal(string(a.Response().Body))
	}
}

func TestPanicIsATrapAndPoisons(t *testing.T) {
	h := harness(t, &probe{reqHeaders: func(*weir.Context, *weir.Request) weir.Action { panic("boom") }}, weir.PhaseRequestHeaders)
	trap := weirtest.CatchTrap(func() { h.RequestHeaders(weirtest.Get("/")) })
	if trap == nil || trap.Value != "boom" {
		t.Fatal(trap)
	}
	trap = weirtest.CatchTrap(func() { h.RequestHeaders(weirtest.Get("/")) })
	if trap == nil || !strings.Contains(fmt.Sprint(trap.Value), "discarded this instance") {
		t.Fatal(trap)
	}
}

func TestTimeBudget(t *testing.T) {
	h := harness(t, &probe{reqHeaders: func(*weir.Context, *weir.Request) weir.Action {
		for {
			weir.Clock.MonotonicNs()
		}
	}}, weir.PhaseRequestHeaders)
	h.SetTimeBudget(20 * time.Millisecond)
	trap := weirtest.CatchTrap(func() { h.RequestHeaders(weirtest.Get("/")) })
	if trap == nil || !strings.Contains(fmt.Sprint(trap.Value), "time budget") {
		t.Fatal(trap)
	}
}

func TestNoHost(t *testing.T) {
	if _, err := weir.KV.Increment("ns", "k", 1, 0); kindOf(t, err) != weir.Unavailable {
		t.Fatal(err)
	}
	if (&weir.Request{}).Path() != "" {
		t.Fatal("path without host")
	}
	host := weirtest.NewHost()
	exit := host.Enter()
	// Request-scoped calls outside a request: as in configure.
	if err := (&weir.Request{}).SetHeader("a", "b"); kindOf(t, err) != weir.Unavailable {
		t.Fatal(err)
	}
	exit()
}

func TestUndeclaredPhasesAreNotCalled(t *testing.T) {
	h := harness(t, &probe{
		reqHeaders: func(*weir.Context, *weir.Request) weir.Action { t.Error("called"); return weir.Continue },
		reqBody:    func(*weir.Context, *weir.Body, bool) weir.Action { t.Error("called"); return weir.Continue },
	}, weir.NoPhases)
	out := h.Serve(weirtest.Post("/").WithBody([]byte("a"), []byte("b")), nil)
	if string(out.Upstream.ForwardedBody()) != "ab" {
		t.Fatal(out.Upstream.ForwardedBody())
	}
}

func TestTraceNotesStayWithTheRequest(t *testing.T) {
	var inLog [2]error
	h := harness(t, &probe{
		reqHeaders: func(ctx *weir.Context, req *weir.Request) weir.Action {
			if weir.Trace.Sampled() {
				must(t, weir.Trace.SetAttribute("enduser.id", "alice"))
			}
			must(t, weir.Trace.AddEvent("auth.accepted", weir.Label{Name: "scope", Value: strings.Repeat("ü", 300)}))
			if err := weir.Trace.SetAttribute("http.route", "x"); kindOf(t, err) != weir.Invalid {
				t.Error("a proxy key accepted:", err)
			}
			return weir.Continue
		},
		log: func(ctx *weir.Context, view *weir.LogView) {
			inLog[0] = weir.Trace.SetAttribute("late", "x")
			inLog[1] = weir.Trace.AddEvent("late")
		},
	}, weir.PhaseRequestHeaders|weir.PhaseLog)

	req := weirtest.Get("/")
	h.RequestHeaders(req)
	h.Log(req, weirtest.NewResponse(200))
	s := req.Span()
	if v, _ := s.Attribute("enduser.id"); v != "alice" || len(s.Attributes) != 1 {
		t.Fatal(s.Attributes)
	}
	if len(s.Events) != 1 || s.Events[0].Name != "auth.accepted" || s.Events[0].AtMs != weirtest.StartMs ||
		len(s.Events[0].Attributes[0].Value) != 512 {
		t.Fatal(s.Events)
	}
	for _, err := range inLog {
		if kindOf(t, err) != weir.Unavailable {
			t.Fatal("the span is exported before on-log:", err)
		}
	}

	// Not sampled: the calls succeed and nothing is kept.
	quiet := weirtest.Get("/").Unsampled()
	h.RequestHeaders(quiet)
	if quiet.Span() != nil {
		t.Fatal(quiet.Span())
	}
}
