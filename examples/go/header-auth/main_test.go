//go:build !wasip1

package main

import (
	"testing"

	"github.com/weir-proxy/weir/sdk/go/weirtest"
)

const config = `{"keys": {"k-1": "Jürgen"}}`

func TestAKnownKeyNamesTheClientAndIsRemoved(t *testing.T) {
	h := weirtest.MustNew(t, config)
	out := h.Serve(weirtest.Get("/").WithHeader("x-api-key", "k-1"), nil)
	if out.Upstream == nil {
		t.Fatalf("refused: %d %s", out.Status, out.Body)
	}
	if v, _ := out.Upstream.Header("x-client"); v != "Jürgen" {
		t.Fatalf("x-client %q", v)
	}
	if _, ok := out.Upstream.Header("x-api-key"); ok {
		t.Fatal("the key was forwarded")
	}
}

func TestMissingAndUnknownKeysAreRefused(t *testing.T) {
	h := weirtest.MustNew(t, config)
	out := h.Serve(weirtest.Get("/"), nil)
	if out.Status != 401 || string(out.Body) != `{"error":"missing api key"}` {
		t.Fatalf("%d %s", out.Status, out.Body)
	}
	if v, _ := out.Header("www-authenticate"); v != `ApiKey header="x-api-key"` {
		t.Fatal(v)
	}
	if v, _ := out.Header("content-type"); v != "application/json" {
		t.Fatal(v)
	}
	out = h.Serve(weirtest.Get("/").WithHeader("x-api-key", "nope"), nil)
	if out.Status != 403 || string(out.Body) != `{"error":"invalid api key"}` || out.Upstream != nil {
		t.Fatalf("%d %s", out.Status, out.Body)
	}
}

func TestACustomHeader(t *testing.T) {
	h := weirtest.MustNew(t, `{"header": "X-Key", "keys": {"s": "svc"}}`)
	out := h.Serve(weirtest.Get("/").WithHeader("x-key", "s"), nil)
	if v, _ := out.Upstream.Header("x-client"); v != "svc" {
		t.Fatal(v)
	}
	out = h.Serve(weirtest.Get("/"), nil)
	if v, _ := out.Header("www-authenticate"); v != `ApiKey header="X-Key"` {
		t.Fatal(v)
	}
}

func TestBadConfigs(t *testing.T) {
	for _, c := range []string{`{"keys": {}}`, `{}`, `{"keys": {"a": "b"}, "header": "bad name"}`, `{"keys": {"a": "b"}, "header": "Connection"}`, `{"keys": {"a": "b"}, "hdr": "x"}`} {
		if _, err := weirtest.New(c); err == nil {
			t.Errorf("%s accepted", c)
		}
	}
}
