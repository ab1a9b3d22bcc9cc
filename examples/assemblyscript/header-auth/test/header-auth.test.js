import assert from "node:assert/strict";
import { test } from "node:test";

import { Harness, Phases, TestRequest } from "@weir/filter/testing";

const WASM = new URL("../build/filter.wasm", import.meta.url);
const load = (config = { keys: { "k-1": "Jürgen", "k-2": "grüße ✓ 😀" } }) => Harness.load(WASM, config);

test("a known key names the client and is removed", () => {
  const h = load();
  assert.equal(h.phases, Phases.REQUEST_HEADERS | Phases.STATELESS);
  for (const [key, client] of [
    ["k-1", "Jürgen"],
    ["k-2", "grüße ✓ 😀"],
  ]) {
    const out = h.exchange(TestRequest.get("/").header("x-api-key", key));
    assert.equal(out.respondedBy, null);
    assert.equal(out.upstream.headers.find(([n]) => n === "x-client")[1], client);
    assert.equal(out.upstream.headers.find(([n]) => n === "x-api-key"), undefined);
  }
});

test("a missing key is a 401, an unknown one a 403", () => {
  const h = load();
  const missing = h.requestHeaders(TestRequest.get("/"));
  assert.equal(missing.response.status, 401);
  assert.deepEqual(missing.response.headers, [
    ["content-type", "application/json"],
    ["www-authenticate", 'ApiKey header="x-api-key"'],
  ]);
  assert.equal(missing.response.text, '{"error":"missing api key"}');
  const unknown = h.requestHeaders(TestRequest.get("/").header("x-api-key", "nope"));
  assert.equal(unknown.response.status, 403);
  assert.deepEqual(unknown.response.headers, [["content-type", "application/json"]]);
  assert.equal(unknown.response.text, '{"error":"invalid api key"}');
});

test("the header is configurable", () => {
  const h = load({ header: "x-token", keys: { t: "svc" } });
  const req = TestRequest.get("/").header("X-Token", "t");
  assert.equal(h.requestHeaders(req).kind, "continue");
  assert.equal(req.headerValue("x-client"), "svc");
  assert.equal(req.headerValue("x-token"), null);
  const missing = h.requestHeaders(TestRequest.get("/").header("x-api-key", "t"));
  assert.equal(missing.response.headerValue("www-authenticate"), 'ApiKey header="x-token"');
});

test("config errors", () => {
  assert.throws(() => load({ keys: {} }), /keys must hold at least one entry/);
  assert.throws(() => load({}), /missing field `keys`/);
  assert.throws(() => load(""), /missing field `keys`/);
  assert.throws(() => load({ keys: { a: 1 } }), /keys\.a: expected a string/);
  assert.throws(() => load({ keys: { a: "b" }, header: "bad name" }), /header "bad name" is not a header name/);
  assert.throws(() => load({ keys: { a: "b" }, header: "Connection" }), /header "Connection" is one the proxy sets/);
  assert.throws(() => load({ keys: { a: "b" }, extra: 1 }), /unknown field `extra`/);
});
