// The AssemblyScript testbed against the host emulator: the same checks as the Rust testbed's
// tests (tests/filters/testbed/src/tests.rs).

import assert from "node:assert/strict";
import { test } from "node:test";

import { CalloutResponse, Emulator, Grants, Harness, HostError, Phases, TestRequest, TestResponse } from "@weir/filter/testing";

const WASM = new URL("../build/filter.wasm", import.meta.url);
const WASM_V2 = new URL("../build/filter-v2.wasm", import.meta.url);
const testbed = (config, host) => Harness.load(WASM, config, { host });

test("noop continues and changes nothing", () => {
  const h = testbed({ mode: "noop" });
  assert.equal(h.phases, Phases.REQUEST_HEADERS | Phases.STATELESS);
  const req = TestRequest.get("/a?b=1").header("x-in", "1");
  assert.equal(h.requestHeaders(req).kind, "continue");
  assert.equal(req.path, "/a?b=1");
  assert.equal(req.headers.length, 1);
  h.done(req);
});

test("header-edit sets and appends in chain order, and names its build", () => {
  const host = new Emulator();
  const first = testbed({ mode: "header-edit", value: "one", tag: "a" }, host);
  const second = testbed({ mode: "header-edit", value: "two", tag: "b" }, host);
  assert.equal(first.phases, Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS | Phases.STATELESS);
  const req = TestRequest.get("/").header("x-testbed", "client").header("x-chain", "client");
  assert.equal(first.requestHeaders(req).kind, "continue");
  assert.equal(second.requestHeaders(req).kind, "continue");
  assert.deepEqual(req.headerValues("x-testbed"), ["two"]);
  assert.deepEqual(req.headerValues("x-chain"), ["client", "a", "b"]);
  assert.deepEqual(req.headerValues("x-testbed-build"), ["v1"]);
  // Response phases run in reverse chain order.
  const res = new TestResponse(200).header("x-chain", "upstream");
  assert.equal(second.responseHeaders(req, res).kind, "continue");
  assert.equal(first.responseHeaders(req, res).kind, "continue");
  assert.deepEqual(res.headerValues("x-testbed"), ["one"]);
  assert.deepEqual(res.headerValues("x-chain"), ["upstream", "b", "a"]);
  assert.deepEqual(res.headerValues("x-testbed-build"), ["v1"]);

  const defaults = testbed({ mode: "header-edit" }).exchange(TestRequest.get("/"));
  assert.equal(defaults.upstream.headers.find(([n]) => n === "x-testbed")[1], "on");
  assert.equal(defaults.headerValue("x-chain"), "testbed");

  const bad = testbed({ mode: "header-edit", value: "a\nb" }).requestHeaders(TestRequest.get("/"));
  assert.equal(bad.response.status, 500);
  assert.match(bad.response.text, /^testbed: invalid: invalid value for header "x-testbed"/);

  // Non-ASCII values pass through untouched.
  const req2 = TestRequest.get("/");
  testbed({ mode: "header-edit", value: "Jürgen 😀", tag: "grüße ✓" }).requestHeaders(req2);
  assert.equal(req2.headerValue("x-testbed"), "Jürgen 😀");
  assert.equal(req2.headerValue("x-chain"), "grüße ✓");

  const v2 = Harness.load(WASM_V2, { mode: "header-edit" });
  const req3 = TestRequest.get("/");
  v2.requestHeaders(req3);
  assert.equal(req3.headerValue("x-testbed-build"), "v2");
});

test("respond answers locally", () => {
  let a = testbed({ mode: "respond", status: 418, body: "teapot" }).requestHeaders(TestRequest.get("/"));
  assert.equal(a.kind, "respond");
  assert.equal(a.response.status, 418);
  assert.deepEqual(a.response.headers, [["content-type", "text/plain; charset=utf-8"]]);
  assert.equal(a.response.text, "teapot");
  a = testbed({ mode: "respond" }).requestHeaders(TestRequest.get("/"));
  assert.equal(a.response.status, 200);
  assert.equal(a.response.body.length, 0);
  assert.throws(() => testbed({ mode: "respond", status: 99 }), /status must be 200-599, got 99/);
  assert.throws(() => testbed({ mode: "respond", status: 70000 }), /status/);
  assert.throws(() => testbed({ mode: "respond", status: 200.5 }), /status/);
});

test("loop never returns (the time budget ends it)", () => {
  const h = testbed({ mode: "loop" });
  h.setTimeBudget(50);
  assert.throws(() => h.requestHeaders(TestRequest.get("/")), /time budget/);
});

test("membomb allocates until it traps", () => {
  const h = testbed({ mode: "membomb", limit_mb: 8 });
  const before = h.memoryBytes();
  assert.throws(() => h.requestHeaders(TestRequest.get("/")), WebAssembly.RuntimeError);
  assert.equal(h.memoryBytes() - before, 8 << 20);
  assert.deepEqual(h.logs(), [{ level: "error", message: "abort: testbed: membomb reached limit_mb = 8" }]);
  assert.doesNotThrow(() => testbed({ mode: "membomb", limit_mb: null }));
  assert.doesNotThrow(() => testbed({ mode: "membomb" }));
});

test("panic traps", () => {
  const h = testbed({ mode: "panic" });
  assert.throws(() => h.requestHeaders(TestRequest.get("/")), WebAssembly.RuntimeError);
  assert.deepEqual(h.logs(), [{ level: "error", message: "abort: testbed: panic mode" }]);
});

test("callout reports the status or the host error", () => {
  const config = { mode: "callout", target: "auth", path: "/check?x=1", timeout_ms: 250 };
  let h = testbed(config);
  h.onCallout((target, req) =>
    target === "auth" ? new CalloutResponse(204) : HostError.failed(`connect ${target}: refused (${req.path})`),
  );
  let req = TestRequest.get("/");
  assert.equal(h.requestHeaders(req).kind, "continue");
  assert.equal(req.headerValue("x-callout"), "204");
  const [target, sent] = h.callouts().at(-1);
  assert.deepEqual([target, sent.method, sent.path, sent.timeoutMs], ["auth", "GET", "/check?x=1", 250]);

  h = testbed({ mode: "callout", target: "127.0.0.1:1" });
  h.onCallout((t, r) => HostError.failed(`connect ${t}: refused (${r.path})`));
  req = TestRequest.get("/");
  h.requestHeaders(req);
  assert.equal(req.headerValue("x-callout"), "failed: connect 127.0.0.1:1: refused (/)");

  // Control characters in an error become spaces (a header cannot carry them).
  h = testbed({ mode: "callout", target: "t" });
  h.onCallout(() => HostError.failed("line1\nline2\u0085x"));
  req = TestRequest.get("/");
  h.requestHeaders(req);
  assert.equal(req.headerValue("x-callout"), "failed: line1 line2 x");

  h = testbed(config);
  h.setGrants(Grants.none());
  req = TestRequest.get("/");
  h.requestHeaders(req);
  assert.match(req.headerValue("x-callout"), /^denied: callout target "auth"/);

  assert.throws(() => testbed({ mode: "callout" }), /missing field `target`/);
  assert.throws(() => testbed({ mode: "callout", target: "" }), /callout: target must not be empty/);
  assert.throws(() => testbed({ mode: "callout", target: "a", path: "x" }), /callout: path must start with \/, got "x"/);
  // The default timeout.
  h = testbed({ mode: "callout", target: "a" });
  h.onCallout(() => new CalloutResponse(200));
  h.requestHeaders(TestRequest.get("/"));
  assert.equal(h.callouts()[0][1].timeoutMs, 1000);
  assert.equal(h.callouts()[0][1].path, "/");
});

test("body-upper buffers then uppercases both bodies", () => {
  const h = testbed({ mode: "body-upper" });
  assert.equal(h.phases, Phases.REQUEST_BODY | Phases.RESPONSE_BODY | Phases.STATELESS);
  const req = TestRequest.post("/echo");
  assert.equal(h.requestHeaders(req).kind, "continue");
  assert.equal(h.requestBody(req, "hello, ", false).kind, "buffer");
  assert.equal(h.requestBody(req, "wörld", false).kind, "buffer");
  assert.equal(req.forwardedBody.length, 0);
  assert.equal(h.requestBody(req, "!", true).kind, "continue");
  assert.equal(req.forwardedText, "HELLO, WöRLD!");
  const res = new TestResponse(200);
  assert.equal(h.responseBody(req, res, "ok", true).kind, "continue");
  assert.equal(res.forwardedText, "OK");

  // 1 MiB in 64 KiB chunks.
  const big = "abc😀".repeat(1 << 18);
  const chunks = [];
  const bytes = Buffer.from(big);
  for (let i = 0; i < bytes.length; i += 65536) chunks.push(bytes.subarray(i, i + 65536));
  const out = h.exchange(TestRequest.post("/"), { body: chunks, responseBody: chunks });
  assert.equal(out.upstream.body.toString(), "ABC😀".repeat(1 << 18));
  assert.equal(out.text, "ABC😀".repeat(1 << 18));
});

test("state is per request and dropped when done", () => {
  const h = testbed({ mode: "state" });
  const a = TestRequest.get("/a");
  const b = TestRequest.get("/b");
  h.requestHeaders(a);
  h.requestHeaders(b);
  const ra = new TestResponse(200);
  const rb = new TestResponse(200);
  assert.equal(h.responseHeaders(b, rb).kind, "continue");
  assert.equal(h.responseHeaders(a, ra).kind, "continue");
  assert.equal(ra.headerValue("x-state-path"), "/a");
  assert.equal(rb.headerValue("x-state-path"), "/b");
  h.done(a);
  h.done(b);
  // A request whose context never saw request-headers has no path (another filter answered).
  const c = TestRequest.get("/c");
  const rc = new TestResponse(403);
  h.responseHeaders(c, rc);
  assert.equal(rc.headerValue("x-state-path"), "<none>");
  // A context that arrives non-empty (it never should) is reported.
  assert.equal(h.requestHeaders(c).kind, "continue");
  const again = h.requestHeaders(c);
  assert.equal(again.response.status, 500);
  assert.equal(again.response.text, "testbed: context reused (held /c)");
  h.done(c);
  // After done, the same id starts fresh.
  assert.equal(h.requestHeaders(c).kind, "continue");
});

test("kv-counter counts across requests and instances", () => {
  const host = new Emulator();
  host.setGrants(Grants.none().kv("hits"));
  const config = { mode: "kv-counter", ns: "hits" };
  const instances = [testbed(config, host), testbed(config, host)];
  for (const [i, expected] of [
    [0, "1"],
    [1, "2"],
    [0, "3"],
  ]) {
    const h = instances[i];
    const req = TestRequest.get("/");
    const res = new TestResponse(200);
    assert.equal(h.requestHeaders(req).kind, "continue");
    assert.equal(h.responseHeaders(req, res).kind, "continue");
    assert.equal(req.headerValue("x-count"), expected);
    assert.equal(res.headerValue("x-count"), expected);
    h.done(req);
  }
  const denied = testbed({ mode: "kv-counter", ns: "other" }, host);
  const req = TestRequest.get("/");
  denied.requestHeaders(req);
  assert.match(req.headerValue("x-count"), /^denied: kv namespace "other"/);
  assert.throws(() => testbed({ mode: "kv-counter" }), /missing field `ns`/);
  assert.throws(() => testbed({ mode: "kv-counter", ns: "" }), /kv-counter: ns must not be empty/);
  // Another key.
  const k = testbed({ mode: "kv-counter", ns: "hits", key: "other" }, host);
  const r2 = TestRequest.get("/");
  k.requestHeaders(r2);
  assert.equal(r2.headerValue("x-count"), "1");
});

test("bad-config rejects unless told not to", () => {
  for (const config of [{ mode: "bad-config" }, { mode: "bad-config", fail: true }]) {
    assert.throws(() => testbed(config), /^ConfigError: testbed: bad-config mode rejects its config \(set "fail": false to accept\)$/);
  }
  const h = testbed({ mode: "bad-config", fail: false });
  assert.equal(h.requestHeaders(TestRequest.get("/")).kind, "continue");
});

test("unknown modes and fields are config errors", () => {
  for (const [config, expected] of [
    [{ mode: "nope" }, "unknown variant `nope`"],
    [{}, "missing field `mode`"],
    [{ mode: "header-edit", valu: "x" }, "unknown field `valu`"],
    [{ mode: "noop", extra: 1 }, "unknown field `extra`"],
    [{ mode: 3 }, "mode: expected a string"],
    [{ mode: "bad-config", fail: "no" }, "fail: expected a boolean"],
  ]) {
    assert.throws(() => testbed(config), (e) => e.message.includes(expected), JSON.stringify(config));
  }
});

test("memory stays flat over many requests", () => {
  const h = testbed({ mode: "header-edit", value: "Jürgen 😀" });
  const run = () => h.exchange(TestRequest.get("/").header("x-chain", "c"));
  for (let i = 0; i < 5000; i++) run();
  const warm = h.memoryBytes();
  for (let i = 0; i < 50_000; i++) run();
  assert.equal(h.memoryBytes(), warm);
});

test("host calls answer as the shared table says (tests/filters/host-calls.json)", async () => {
  const { readFile } = await import("node:fs/promises");
  const table = JSON.parse(await readFile(new URL("../../host-calls.json", import.meta.url), "utf8"));
  const host = new Emulator();
  host.setGrants(Grants.none().kv("granted"));
  const h = testbed({ mode: "host-calls", calls: table.cases }, host);
  const r = h.requestHeaders(TestRequest.get("/calls"));
  assert.equal(r.response.status, 200);
  const answers = r.response.text.split("\n");
  assert.equal(answers.length, table.cases.length, "one answer per call");
  const wrong = table.cases
    .map((c, i) => [c, answers[i]])
    .filter(([c, a]) => c.expect !== a)
    .map(([c, a]) => `${c.call} ${JSON.stringify(c.name ?? "").slice(0, 40)} ns=${JSON.stringify(c.namespace ?? "")} key(${(c.key ?? "").length}) value(${(c.value ?? "").length}) labels=${(c.labels ?? []).length}: got ${JSON.stringify(a)}, the table says ${JSON.stringify(c.expect)}`);
  assert.deepEqual(wrong, [], "the AssemblyScript emulator disagrees with the table");
});
