//go:build !wasip1

package main

import (
	"strings"
	"testing"
	"time"

	"github.com/weir-proxy/weir/sdk/go/weirtest"
)

func limiter(t *testing.T, config string) *weirtest.Harness {
	t.Helper()
	h := weirtest.MustNew(t, config)
	h.SetGrants(weirtest.NoGrants().KV("ratelimit")) // as the proxy config would grant
	return h
}

func TestPerClientKeyThenByIP(t *testing.T) {
	h := limiter(t, `{"limit": 2, "window_ms": 60000}`)
	for _, left := range []string{"1", "0"} {
		out := h.Serve(weirtest.Get("/").WithHeader("x-client", "c1"), nil)
		if out.Status != 200 {
			t.Fatalf("%d %s", out.Status, out.Body)
		}
		if v, _ := out.Header("x-ratelimit-remaining"); v != left {
			t.Fatalf("remaining %q, want %s", v, left)
		}
		if v, _ := out.Header("x-ratelimit-limit"); v != "2" {
			t.Fatal(v)
		}
	}
	out := h.Serve(weirtest.Get("/").WithHeader("x-client", "c1"), nil)
	if out.Status != 429 || string(out.Body) != "rate limited" || out.Upstream != nil {
		t.Fatalf("%d %s", out.Status, out.Body)
	}
	for name, want := range map[string]string{
		"retry-after": "60", "x-ratelimit-limit": "2", "x-ratelimit-remaining": "0",
		"content-type": "text/plain; charset=utf-8",
	} {
		if v, _ := out.Header(name); v != want {
			t.Errorf("%s: %q, want %q", name, v, want)
		}
	}
	// Another client, by IP, has its own window.
	out = h.Serve(weirtest.Get("/").WithClient("10.0.0.9:4000"), nil)
	if out.Status != 200 {
		t.Fatal(out.Status)
	}
	if h.KVCounter("ratelimit", "10.0.0.9") != 1 {
		t.Fatal("not counted by IP")
	}
	if h.LiveContexts() != 0 {
		t.Fatal("state not freed")
	}
}

func TestTheWindowResets(t *testing.T) {
	h := limiter(t, `{"limit": 1, "window_ms": 1500}`)
	if out := h.Serve(weirtest.Get("/"), nil); out.Status != 200 {
		t.Fatal(out.Status)
	}
	out := h.Serve(weirtest.Get("/"), nil)
	if v, _ := out.Header("retry-after"); out.Status != 429 || v != "2" {
		t.Fatal(out.Status, v)
	}
	h.Advance(1500 * time.Millisecond)
	if out := h.Serve(weirtest.Get("/"), nil); out.Status != 200 {
		t.Fatal("window did not reset", out.Status)
	}
}

func TestAnUngrantedNamespaceIs500(t *testing.T) {
	h := limiter(t, `{"limit": 1, "namespace": "other"}`)
	out := h.Serve(weirtest.Get("/"), nil)
	if out.Status != 500 || !strings.HasPrefix(string(out.Body), `rate-limit: denied: kv namespace "other"`) {
		t.Fatalf("%d %s", out.Status, out.Body)
	}
}

func TestBadConfigs(t *testing.T) {
	for _, c := range []string{`{}`, `{"limit": 0}`, `{"limit": 1, "window_ms": 0}`, `{"limit": -1}`, `{"limit": 1, "windowms": 5}`} {
		if _, err := weirtest.New(c); err == nil {
			t.Errorf("%s accepted", c)
		}
	}
}
