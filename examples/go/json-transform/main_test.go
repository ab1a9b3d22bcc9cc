//go:build !wasip1

package main

import (
	"testing"

	"github.com/weir-proxy/weir/sdk/go/weirtest"
)

const config = `{"remove": ["pw"], "rename": {"n": "name"}, "set": {"v": 2, "added": {"ok": true, "b": [1, "x"]}}}`

func transform(t *testing.T, h *weirtest.Harness, chunks ...string) *weirtest.Result {
	t.Helper()
	var body [][]byte
	for _, c := range chunks {
		body = append(body, []byte(c))
	}
	return h.Serve(weirtest.Post("/").WithBody(body...), nil)
}

func TestEditsMembersAndKeepsTheRest(t *testing.T) {
	h := weirtest.MustNew(t, config)
	out := transform(t, h, `{"n":"Jürgen 😀",  "pw":"x", `, `"v":1, "keep":[1, {"z":null, "a":"\u00fc<>"}]}`)
	if out.Upstream == nil {
		t.Fatalf("%d %s", out.Status, out.Body)
	}
	want := `{"name":"Jürgen 😀","v":2,"keep":[1,{"z":null,"a":"\u00fc<>"}],"added":{"ok":true,"b":[1,"x"]}}`
	if got := string(out.Upstream.ForwardedBody()); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestEmptyBodyPassesUnchanged(t *testing.T) {
	h := weirtest.MustNew(t, config)
	out := transform(t, h)
	if out.Upstream == nil || len(out.Upstream.ForwardedBody()) != 0 {
		t.Fatal(out.Status)
	}
}

func TestNotAnObjectIs400(t *testing.T) {
	h := weirtest.MustNew(t, config)
	for _, body := range []string{`[1, 2]`, `"x"`, `{"a":}`, `{"a":1} x`, `{"a":1`, `nope`} {
		out := transform(t, h, body)
		if out.Status != 400 || string(out.Body) != `{"error":"body must be a JSON object"}` {
			t.Errorf("%s: %d %s", body, out.Status, out.Body)
		}
		if v, _ := out.Header("content-type"); v != "application/json" {
			t.Errorf("%s: content-type %q", body, v)
		}
	}
}

func TestEmptyConfigChangesNothingButSpacing(t *testing.T) {
	h := weirtest.MustNew(t, ``)
	out := transform(t, h, `{ "b": 1, "a": [ 2 ] }`)
	if got := string(out.Upstream.ForwardedBody()); got != `{"b":1,"a":[2]}` {
		t.Fatal(got)
	}
}

func TestBadConfigs(t *testing.T) {
	for _, c := range []string{`{"remove": "pw"}`, `{"set": [1]}`, `{"sett": {}}`} {
		if _, err := weirtest.New(c); err == nil {
			t.Errorf("%s accepted", c)
		}
	}
}
