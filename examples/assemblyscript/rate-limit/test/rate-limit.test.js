import assert from "node:assert/strict";
import { test } from "node:test";

import { Emulator, Grants, Harness, Phases, TestRequest, TestResponse } from "@weir/filter/testing";

const WASM = new URL("../build/filter.wasm", import.meta.url);

test("the limit holds per client and the window resets it", () => {
  const h = Harness.load(WASM, { limit: 2, window_ms: 1500 });
  assert.equal(h.phases, Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS);
  for (const left of ["1", "0"]) {
    const out = h.exchange(TestRequest.get("/").header("x-client", "a"));
    assert.equal(out.status, 200);
    assert.equal(out.headerValue("x-ratelimit-limit"), "2");
    assert.equal(out.headerValue("x-ratelimit-remaining"), left);
  }
  const refused = h.exchange(TestRequest.get("/").header("x-client", "a"));
  assert.equal(refused.respondedBy, "on-request-headers");
  assert.equal(refused.status, 429);
  assert.deepEqual(refused.headers, [
    ["content-type", "text/plain; charset=utf-8"],
    ["retry-after", "2"],
    ["x-ratelimit-limit", "2"],
    ["x-ratelimit-remaining", "0"],
  ]);
  assert.equal(refused.text, "rate limited");
  // Another client has its own window.
  assert.equal(h.exchange(TestRequest.get("/").header("x-client", "Jürgen 😀")).status, 200);
  assert.equal(h.exchange(TestRequest.get("/").client("10.0.0.9:5555")).status, 200);
  h.advance(1600);
  assert.equal(h.exchange(TestRequest.get("/").header("x-client", "a")).headerValue("x-ratelimit-remaining"), "1");
});

test("without the key header, the client IP is the key", () => {
  const host = new Emulator();
  const h = Harness.load(WASM, { limit: 1, key_header: "x-user" }, { host });
  assert.equal(h.exchange(TestRequest.get("/").client("10.1.2.3:1000")).status, 200);
  assert.equal(h.exchange(TestRequest.get("/").client("10.1.2.3:2000")).status, 429);
  assert.equal(h.exchange(TestRequest.get("/").client("[::1]:8080")).status, 200);
  assert.equal(host.kvCounter("ratelimit", "10.1.2.3"), 2n);
  assert.equal(host.kvCounter("ratelimit", "::1"), 1n);
  assert.equal(h.exchange(TestRequest.get("/").client("10.1.2.3:1000").header("x-user", "u")).status, 200);
  // retry-after rounds up; the default window is a minute.
  assert.equal(h.exchange(TestRequest.get("/").client("10.1.2.3:1")).headerValue("retry-after"), "60");
});

test("instances share the counters", () => {
  const host = new Emulator();
  const a = Harness.load(WASM, { limit: 2, namespace: "rl" }, { host });
  const b = Harness.load(WASM, { limit: 2, namespace: "rl" }, { host });
  assert.equal(a.exchange(TestRequest.get("/").header("x-client", "c")).status, 200);
  assert.equal(b.exchange(TestRequest.get("/").header("x-client", "c")).status, 200);
  assert.equal(a.exchange(TestRequest.get("/").header("x-client", "c")).status, 429);
});

test("a host error is a 500", () => {
  const h = Harness.load(WASM, { limit: 5, namespace: "secret" });
  h.setGrants(Grants.none().kv("ratelimit"));
  const out = h.exchange(TestRequest.get("/"));
  assert.equal(out.status, 500);
  assert.match(out.text, /^rate-limit: denied: kv namespace "secret" is not granted/);
});

test("config errors", () => {
  assert.throws(() => Harness.load(WASM, {}), /missing field `limit`/);
  assert.throws(() => Harness.load(WASM, { limit: 0 }), /limit must be at least 1/);
  assert.throws(() => Harness.load(WASM, { limit: 1, window_ms: 0 }), /window_ms must be at least 1/);
  assert.throws(() => Harness.load(WASM, { limit: -1 }), /limit: expected a non-negative integer/);
  assert.throws(() => Harness.load(WASM, { limit: 1, window: 5 }), /unknown field `window`/);
});

test("state is per request", () => {
  const h = Harness.load(WASM, { limit: 10 });
  const a = TestRequest.get("/").header("x-client", "a");
  const b = TestRequest.get("/").header("x-client", "a");
  h.requestHeaders(a);
  h.requestHeaders(b);
  const rb = new TestResponse(200);
  const ra = new TestResponse(200);
  h.responseHeaders(b, rb);
  h.responseHeaders(a, ra);
  assert.equal(ra.headerValue("x-ratelimit-remaining"), "9");
  assert.equal(rb.headerValue("x-ratelimit-remaining"), "8");
  h.done(a);
  h.done(b);
  // A response whose request never went through this filter gets no headers.
  const c = TestRequest.get("/");
  const rc = new TestResponse(502);
  h.responseHeaders(c, rc);
  assert.equal(rc.headerValue("x-ratelimit-limit"), null);
});
