// A filter that calls every host function, for abi_test.go: built for wasip1, its imports
// and exports are checked against the canonical-ABI signatures of wit/filter.wit.

package main

import (
	"fmt"
	"strings"
	"time"

	weir "github.com/weir-proxy/weir/sdk/go"
)

type f struct{ weir.DefaultFilter }

func (f) OnRequestHeaders(ctx *weir.Context, req *weir.Request) weir.Action {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	add("head %s %s %s %s %s %s %s %s ip=%s", req.Method(), req.Path(), req.Authority(), req.Scheme(), req.ClientAddress(), req.RouteName(), req.ClusterName(), req.RequestID(), req.ClientIP())
	v, ok := req.Header("x-a")
	add("get x-a %q %v", v, ok)
	_, ok = req.Header("x-none")
	add("get x-none %v", ok)
	add("all x-m %q", req.HeaderValues("x-m"))
	add("all none %q", req.HeaderValues("x-none"))
	add("headers %q", req.Headers())
	add("setpath %v", req.SetPath("/new?ü=1"))
	add("setpath bad %v", req.SetPath("bad"))
	add("path %s", req.Path())
	add("set bad %v", req.SetHeader("bad name", "x"))
	add("append %v", req.AppendHeader("x-m", "3"))
	add("remove %v", req.RemoveHeader("x-a"))
	add("status %d", (&weir.Response{}).Status())
	add("setstatus %v", (&weir.Response{}).SetStatus(201))
	_, err := (&weir.Body{}).Bytes()
	add("body %v", err)
	add("set body %v", (&weir.Body{}).Set([]byte("x")))
	add("now>0 %v mono>0 %v", weir.Clock.NowMs() > 1_600_000_000_000, weir.Clock.MonotonicNs() > 0)
	add("rand %d", len(weir.Clock.RandomBytes(33)))
	add("counter %v", weir.Metrics.CounterAdd("c_total", 7, weir.Label{Name: "a", Value: "ü"}, weir.Label{Name: "b", Value: "2"}))
	add("gauge %v", weir.Metrics.GaugeSet("g", -5))
	add("hist %v", weir.Metrics.HistogramObserve("h", 0.125))
	add("badmetric %v", weir.Metrics.CounterAdd("Bad", 1))
	ver, err := weir.KV.Set("ns", "k", []byte("vä"), time.Second)
	add("kvset %d %v", ver, err)
	e, ok, err := weir.KV.Get("ns", "k")
	add("kvget %q %d %v %v", e.Value, e.Version, ok, err)
	_, ok, err = weir.KV.Get("ns", "missing")
	add("kvget missing %v %v", ok, err)
	_, ok, err = weir.KV.CompareAndSwap("ns", "k", 999, []byte("x"), 0)
	add("cas wrong %v %v", ok, err)
	nv, ok, err := weir.KV.CompareAndSwap("ns", "k", ver, []byte("y"), 0)
	add("cas right %d %v %v", nv, ok, err)
	add("del %v", weir.KV.Delete("ns", "k"))
	n, err := weir.KV.Increment("ns", "ctr", -3, 0)
	add("incr %d %v", n, err)
	b, err := weir.KV.TakeTokens("ns", "tb", 1, time.Second, 5, 2)
	add("tokens %+v %v", b, err)
	b, err = weir.KV.TakeTokens("ns", "tb", 1, time.Second, 5, 4)
	add("tokens2 %+v %v", b, err)
	_, err = weir.KV.Increment("secret", "x", 1, 0)
	add("denied %v", err)
	_, _, err = weir.KV.Get("secret", "x")
	add("denied get %v", err)
	_, err = weir.KV.Set("secret", "x", nil, 0)
	add("denied set %v", err)
	_, err = weir.KV.TakeTokens("secret", "x", 1, time.Second, 1, 1)
	add("denied tokens %v", err)
	res, err := weir.Callout.Send("auth", weir.CalloutRequest{Method: "POST", Path: "/c", Headers: []weir.Header{{Name: "h1", Value: "ü"}}, Body: []byte("body✓"), Timeout: 1500 * time.Millisecond})
	if err != nil {
		add("callout err %v", err)
	} else {
		add("callout %d %q %q", res.Status, res.Headers, res.Body)
	}
	_, err = weir.Callout.Send("fail", weir.CalloutRequest{})
	add("callout fail %v", err)
	add("sampled %v", weir.Trace.Sampled())
	add("attr %v", weir.Trace.SetAttribute("enduser.id", "ü"))
	add("event %v", weir.Trace.AddEvent("auth.refused", weir.Label{Name: "reason", Value: "x"}))
	weir.Log.Debugf("debug %s", "ü")
	return weir.Respond(weir.Text(299, strings.Join(out, "\n")).WithHeader("x-r1", "ü").WithHeader("x-r2", ""))
}

func (f) OnResponseHeaders(ctx *weir.Context, res *weir.Response) weir.Action {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	add("status %d", res.Status())
	add("set 42 %v", res.SetStatus(42))
	add("set 202 %v", res.SetStatus(202))
	add("status %d", res.Status())
	add("res headers %q", res.Headers())
	add("req header %v", res.Request().SetHeader("a", "b"))
	add("set %v", res.SetHeader("x-out", "grüße"))
	return weir.Respond(weir.NewResponse(200).WithBody([]byte(strings.Join(out, "\n"))))
}

func init() {
	weir.Register(func([]byte) (weir.Filter, weir.Phases, error) {
		return f{}, weir.PhaseRequestHeaders | weir.PhaseResponseHeaders, nil
	})
}
func main() {}
