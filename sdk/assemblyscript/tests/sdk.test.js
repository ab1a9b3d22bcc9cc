// The SDK's own tests: tests/assembly/probe.ts, built by tests/build.js, run in the host
// emulator. They check the canonical-ABI glue end to end (UTF-16 strings both ways, return
// areas, cabi_realloc/cabi_post), every host capability, traps, and memory use over many calls.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  AbiError,
  CalloutResponse,
  ConfigError,
  Emulator,
  Grants,
  Harness,
  HostError,
  Phases,
  TestRequest,
  TestResponse,
} from "@weir/filter/testing";

const WASM = new URL("./build/probe.wasm", import.meta.url);
const probe = (scenario, extra = {}) => Harness.load(WASM, { scenario, ...extra });

test("the module is what the componentizer expects", () => {
  const mod = new WebAssembly.Module(readFileSync(WASM));
  const enc = WebAssembly.Module.customSections(mod, "weir:string-encoding");
  assert.equal(enc.length, 1);
  assert.equal(Buffer.from(enc[0]).toString(), "utf16");
  const exports = WebAssembly.Module.exports(mod).map((e) => e.name).sort();
  assert.deepEqual(exports, [
    "_initialize",
    "cabi_post_weir:filter/filter@0.1.0#configure",
    "cabi_post_weir:filter/filter@0.1.0#on-request-body",
    "cabi_post_weir:filter/filter@0.1.0#on-request-headers",
    "cabi_post_weir:filter/filter@0.1.0#on-response-body",
    "cabi_post_weir:filter/filter@0.1.0#on-response-headers",
    "cabi_realloc",
    "memory",
    "weir:filter/filter@0.1.0#configure",
    "weir:filter/filter@0.1.0#context-done",
    "weir:filter/filter@0.1.0#on-log",
    "weir:filter/filter@0.1.0#on-request-body",
    "weir:filter/filter@0.1.0#on-request-headers",
    "weir:filter/filter@0.1.0#on-response-body",
    "weir:filter/filter@0.1.0#on-response-headers",
  ]);
  for (const imp of WebAssembly.Module.imports(mod)) {
    assert.match(imp.module, /^weir:filter\/(http|log|clock|metrics|kv|callout|trace|crypto)@0\.1\.0$/, `${imp.module}.${imp.name}`);
  }
});

test("configure: phases, rejections and strict config reading", () => {
  assert.equal(probe("read").phases, Phases.ALL);
  assert.equal(probe("body").phases, Phases.REQUEST_BODY | Phases.RESPONSE_BODY);
  assert.throws(() => probe("reject"), (e) => e instanceof ConfigError && e.message === "probe: rejected as asked, ünïcödé ✓");
  assert.throws(() => probe("read", { extra: true }), /config: unknown field `extra`/);
  assert.throws(() => probe("read", { value: 7 }), /config: value: expected a string, got number/);
  assert.throws(() => Harness.load(WASM, "{"), /config: invalid JSON/);
  assert.throws(() => Harness.load(WASM, "[1]"), /config: expected a JSON object, got array/);
  assert.throws(() => Harness.load(WASM, ""), /config: missing field `scenario`/);
  assert.throws(() => Harness.load(WASM, "   "), /config: missing field `scenario`/);
});

test("request properties and headers are read exactly, non-ASCII included", () => {
  const h = probe("read");
  const req = TestRequest.get("/a?b=ü")
    .header("X-Name", "Jürgen 😀")
    .header("x-multi", "1")
    .header("x-multi", "grüße ✓")
    .client("[::1]:5000")
    .authority("api.example.com:8443")
    .scheme("https")
    .route("r")
    .cluster("c")
    .requestId("id-😀");
  const a = h.requestHeaders(req);
  assert.equal(a.kind, "respond");
  assert.equal(a.response.headerValue("content-type"), "application/json");
  assert.deepEqual(JSON.parse(a.response.text), {
    method: "GET",
    path: "/a?b=ü",
    authority: "api.example.com:8443",
    scheme: "https",
    client: "[::1]:5000",
    ip: "::1",
    route: "r",
    cluster: "c",
    id: "id-😀",
    name: "Jürgen 😀",
    missing: null,
    has: true,
    multi: ["1", "grüße ✓"],
    list: [
      ["x-name", "Jürgen 😀"],
      ["x-multi", "1"],
      ["x-multi", "grüße ✓"],
    ],
    status: 0,
  });
  h.done(req);
});

test("headers, path and status are edited, non-ASCII values round-trip", () => {
  for (const value of ["Jürgen", "grüße ✓", "😀", "a😀b€c", ""]) {
    const h = probe("edit", { value });
    const req = TestRequest.get("/orig").header("x-gone", "1").header("x-multi", "first");
    const res = new TestResponse(200).header("x-from-request", "upstream");
    const out = h.exchange(req, { response: res });
    assert.equal(out.upstream.path, `/edited?q=${value.length}`);
    // Set on the response from the request phase: it replaces the upstream's value.
    assert.deepEqual(out.headerValues("x-from-request"), [value]);
    assert.equal(req.headerValue("x-set"), value);
    assert.deepEqual(req.headerValues("x-multi"), ["first", value]);
    assert.equal(req.headerValue("x-gone"), null);
    assert.equal(out.status, 201);
    assert.equal(out.headerValue("x-path"), `/edited?q=${value.length}`);
    assert.equal(out.headerValue("x-value"), value);
    assert.match(out.headerValue("x-late-error"), /^unavailable: set-header: the request can only change in the request phases/);
  }
});

test("host errors are values with their kind and message", () => {
  const h = probe("errors");
  h.setGrants(Grants.none());
  const r = JSON.parse(h.requestHeaders(TestRequest.get("/")).response.text);
  assert.match(r.setStatus, /^unavailable: set-status: /);
  assert.equal(r.badName, 'invalid: invalid header name "bad name"');
  assert.match(r.badValue, /^invalid: invalid value for header "x-ok"/);
  assert.equal(r.responseHeader, null);
  assert.match(r.responseFraming, /^invalid: content-length is a framing or hop-by-hop header/);
  assert.equal(r.responseHeaderRead, "1");
  assert.equal(r.requestHeaderRead, "none");
  // The filter's local response keeps its own headers and gets the one set on the response.
  const out = probe("errors").exchange(TestRequest.get("/"));
  assert.equal(out.respondedBy, "on-request-headers");
  assert.equal(out.headerValue("x-late"), "1");
  assert.match(r.setPath, /^invalid: invalid path "no-slash"/);
  assert.match(r.kvDenied, /^denied: kv namespace "secret" is not granted/);
  assert.equal(r.kvKind, 0);
  assert.match(r.metric, /^invalid: invalid metric name "Bad-Name"/);
  assert.match(r.callout, /^denied: callout target "nowhere" is not granted/);
  assert.equal(r.status, 0);
});

test("kv: values, versions, compare-and-swap, delete, counters, token buckets", () => {
  const h = probe("kv");
  h.setGrants(Grants.none().kv("ns"));
  const r = JSON.parse(h.requestHeaders(TestRequest.get("/")).response.text);
  assert.deepEqual(r, {
    v1: 1,
    get: "grüße ✓",
    version: 1,
    absent: true,
    casStale: 0,
    casOk: true,
    casNew: 3,
    delete: null,
    afterDelete: true,
    inc1: 5,
    inc2: -2,
    b1: [true, 1],
    b2: [true, 0],
    b3: [false, 1000, 2000],
    bucketInvalid: "invalid: token bucket ns/b: rate, period and burst must be positive (got rate 0, period 1000 ms, burst 2)",
    valueOr: -1,
  });
  assert.equal(h.host.kvCounter("ns", "c"), -2n);
  h.advance(1000);
  assert.equal(h.host.kvCounter("ns", "c"), null, "the counter's window ended");
});

test("clock, metrics, log, Math.random and callouts", () => {
  const h = probe("host");
  h.host.seedRandom(7);
  h.onCallout((target, req) => {
    assert.equal(target, "auth");
    return new CalloutResponse(202, [["x-reply", "ökay 😀"]], `pong ✓ ${req.body.toString()}`);
  });
  const r = JSON.parse(h.requestHeaders(TestRequest.get("/")).response.text);
  assert.equal(r.now, 1_700_000_000_000);
  assert.equal(r.mono, 1_000_000_000);
  assert.equal(r.random.length, 12);
  const seeded = new Emulator();
  seeded.seedRandom(7);
  assert.deepEqual(r.random, [...seeded.randomBytes(12)]);
  assert.match(r.counter, /invalid label name "ü"/);
  assert.equal(r.counterOk, null);
  assert.equal(r.gauge, null);
  assert.equal(r.histogram, null);
  assert.equal(r.random01, true);
  assert.equal(r.calloutStatus, 202);
  assert.equal(r.calloutHeader, "ökay 😀");
  assert.equal(r.calloutBody, "pong ✓ ping ✓");
  assert.equal(h.counter("probe_total", [["route", "r1"]]), 3n);
  assert.equal(h.gauge("probe_gauge"), -42n);
  assert.deepEqual(h.histogram("probe_seconds"), [0.25]);
  assert.deepEqual(h.logs(), [
    { level: "info", message: "probe: hello Jürgen 😀" },
    { level: "warn", message: "probe: warn" },
  ]);
  const [[target, sent]] = h.callouts();
  assert.equal(target, "auth");
  assert.equal(sent.method, "POST");
  assert.equal(sent.path, "/check");
  assert.deepEqual(sent.headers, [["x-token", "tök€n"]]);
  assert.equal(sent.body.toString(), "ping ✓");
  assert.equal(sent.timeoutMs, 250);
});

test("callout failures reach the filter as host errors", () => {
  const h = probe("host");
  h.onCallout(() => HostError.failed("connect refused"));
  const r = JSON.parse(h.requestHeaders(TestRequest.get("/")).response.text);
  assert.equal(r.calloutError, "failed: connect refused");
});

test("bodies: buffering, replacement, non-ASCII text", () => {
  const h = probe("body");
  const out = h.exchange(TestRequest.post("/"), { body: ["grü", "ße ✓ ", "😀"], responseBody: ["abc ", "é", "z"] });
  assert.equal(out.upstream.body.toString(), "grüße ✓ 😀|seen ✓ 10");
  assert.equal(out.text, "ABC éZ");

  // A chunk boundary inside a multi-byte character is fine: the filter sees whole buffers.
  const bytes = Buffer.from("ü😀", "utf8");
  const split = h.exchange(TestRequest.post("/"), { body: [bytes.subarray(0, 1), bytes.subarray(1, 3), bytes.subarray(3)] });
  assert.equal(split.upstream.body.toString(), "ü😀|seen ✓ 3");

  // Invalid UTF-8 is reported by Body.text().
  const bad = h.exchange(TestRequest.post("/"), { body: Buffer.from([0x61, 0xff]) });
  assert.equal(bad.status, 400);
  assert.equal(bad.text, "invalid: body is not valid UTF-8");

  // An empty body.
  assert.equal(h.exchange(TestRequest.post("/"), { body: "" }).upstream.body.toString(), "|seen ✓ 0");
});

test("a 1 MiB body goes through a body filter, repeatedly, in bounded memory", () => {
  const h = probe("body");
  const mib = "x".repeat(1 << 20);
  let peak = 0;
  for (let i = 0; i < 12; i++) {
    const chunks = [];
    for (let k = 0; k < 16; k++) chunks.push(mib.slice(k << 16, (k + 1) << 16));
    const out = h.exchange(TestRequest.post("/"), { body: chunks, responseBody: mib });
    assert.equal(out.upstream.body.length, (1 << 20) + "|seen ✓ 1048576".length + 2);
    assert.ok(out.upstream.body.toString().endsWith("|seen ✓ 1048576"));
    assert.equal(out.body.length, 1 << 20);
    assert.equal(out.body[0], 0x58);
    if (i === 3) peak = h.memoryBytes();
  }
  assert.equal(h.memoryBytes(), peak, "memory grew after the first requests");
  assert.ok(peak <= 64 << 20, `memory ${peak} bytes for 1 MiB bodies`);
});

test("JSON: parse and serialize keep meaning, escapes and surrogate pairs included", () => {
  const h = probe("json");
  const run = (text) => h.exchange(TestRequest.post("/"), { body: text });
  const ok = (input, expected) => {
    const out = run(input);
    assert.equal(out.status, 200, `${input}: ${out.text}`);
    assert.equal(out.upstream.body.toString(), expected);
  };
  ok(' { "a" : 1 , "b":[ true,false,null, 1.50, -0, 2e10, 1E-3 ] } ', '{"a":1,"b":[true,false,null,1.50,-0,2e10,1E-3]}');
  ok('{"s":"grüße ✓ 😀"}', '{"s":"grüße ✓ 😀"}');
  ok('{"e":"\\u00fc\\ud83d\\ude00\\n\\t\\"\\\\\\/\\b\\f\\r\\u0001"}', '{"e":"ü😀\\n\\t\\"\\\\/\\b\\f\\r\\u0001"}');
  ok('{"big":123456789012345678901234567890}', '{"big":123456789012345678901234567890}');
  ok('{"dup":1,"x":2,"dup":3}', '{"dup":1,"x":2,"dup":3}');
  ok('"just a string"', '"just a string"');
  ok("[[[[[]]]]]", "[[[[[]]]]]");
  for (const bad of ['{"a":1', '{"a":01}', '{"a":"\\ud83d"}', '{"a":"\\ude00x"}', '{"a":"\\x"}', "{'a':1}", '{"a":1}x', "", '{"a":"\u0001"}', "[1,]", "-", "1.", "1e"]) {
    assert.equal(run(bad).status, 400, `accepted ${JSON.stringify(bad)}`);
  }
  assert.equal(run("[".repeat(300) + "]".repeat(300)).status, 400, "nesting is bounded");
  // Round trip of every escaped control character.
  let all = "";
  for (let c = 0; c < 0x20; c++) all += String.fromCharCode(c);
  const out = run(JSON.stringify({ all }));
  assert.equal(JSON.parse(out.upstream.body.toString()).all, all);
});

test("per-request state lives from the first phase to context-done", () => {
  const h = probe("state");
  const a = TestRequest.get("/a");
  const b = TestRequest.get("/b");
  assert.equal(h.requestHeaders(a).kind, "continue");
  assert.equal(h.requestHeaders(b).kind, "continue");
  const ra = new TestResponse(200);
  h.responseHeaders(a, ra);
  assert.equal(ra.headerValue("x-state-path"), "/a");
  assert.equal(ra.headerValue("x-live"), "2");
  h.log(a, ra);
  h.done(a);
  const rb = new TestResponse(200);
  h.responseHeaders(b, rb);
  assert.equal(rb.headerValue("x-state-path"), "/b");
  assert.equal(rb.headerValue("x-live"), "1");
  h.done(b);
  // Many requests later, nothing is left.
  for (let i = 0; i < 1000; i++) h.exchange(TestRequest.get(`/${i}`));
  const last = h.exchange(TestRequest.get("/last"));
  assert.equal(last.headerValue("x-live"), "1");
});

test("a stateless filter keeps no context and gets a fresh one every call", () => {
  const h = probe("stateless");
  assert.equal(h.phases, Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS | Phases.STATELESS);
  const a = TestRequest.get("/a");
  assert.equal(h.requestHeaders(a).kind, "continue");
  const ra = new TestResponse(200);
  h.responseHeaders(a, ra);
  assert.equal(ra.headerValue("x-state-path"), "");
  assert.equal(ra.headerValue("x-live"), "0");
});

test("local responses keep header order, repeats and non-ASCII", () => {
  const h = probe("respond", { value: "grüße ✓ 😀" });
  const out = h.exchange(TestRequest.get("/"));
  assert.equal(out.respondedBy, "on-request-headers");
  assert.equal(out.status, 418);
  assert.deepEqual(out.headers, [
    ["x-a", "1"],
    ["x-a", "Jürgen"],
    ["content-type", "text/plain; charset=utf-8"],
  ]);
  assert.equal(out.text, "grüße ✓ 😀");
  assert.equal(out.upstream, null);
  const s = probe("status").requestHeaders(TestRequest.get("/"));
  assert.equal(s.response.status, 204);
  assert.deepEqual(s.response.headers, []);
  assert.equal(s.response.body.length, 0);
});

test("framing and hop-by-hop headers are the proxy's: writes are invalid in every phase, on both maps", () => {
  // Apart from the emulator's own list, in assorted cases, so a name dropped there fails here.
  const names = ["Content-Length", "transfer-encoding", "CONNECTION", "keep-alive", "Proxy-Connection", "TE", "trailer", "Upgrade"];
  const h = probe("framing", { value: names.join(",") });
  const req = TestRequest.post("/").header("content-length", "4");
  const upstream = new TestResponse(200).header("Transfer-Encoding", "chunked");
  const out = h.exchange(req, { body: "ping", response: upstream, responseBody: "pong" });
  const expected = [];
  for (const phase of ["on-request-headers", "on-request-body", "on-response-headers", "on-response-body", "on-log"]) {
    // Reading them stays allowed.
    if (phase === "on-request-headers") expected.push("on-request-headers read content-length=4");
    if (phase === "on-response-headers") expected.push("on-response-headers read transfer-encoding=chunked");
    for (const map of [0, 1]) {
      for (const name of names) {
        const refused = `invalid: ${name.toLowerCase()} is a framing or hop-by-hop header: the proxy sets it`;
        for (const op of ["set", "append", "remove"]) expected.push(`${phase} ${map} ${op} ${name}: ${refused}`);
      }
    }
  }
  assert.deepEqual(
    h.logs().map((l) => l.message),
    expected,
  );
  assert.deepEqual(out.upstream.headers, [["content-length", "4"]]);
  assert.deepEqual(out.headers, [["transfer-encoding", "chunked"]]);
  assert.equal(out.text, "pong");
});

test("a local response loses its framing and hop-by-hop headers, as in the proxy", () => {
  const h = probe("framing-respond");
  const out = h.exchange(TestRequest.get("/"));
  assert.equal(out.status, 403);
  assert.deepEqual(out.headers, [
    ["content-type", "text/plain; charset=utf-8"],
    ["x-reason", "policy"],
  ]);
  assert.equal(out.text, "no");
  assert.deepEqual(
    h.logs().map((l) => l.message),
    ["on-log response headers: content-type,x-reason"],
  );
  // The action itself is the filter's, as it built it.
  const a = probe("framing-respond").requestHeaders(TestRequest.get("/"));
  assert.deepEqual(
    a.response.headers.map(([n]) => n),
    ["content-type", "Content-Length", "connection", "x-reason", "Transfer-Encoding"],
  );
});

test("on-log sees the finished exchange, read-only", () => {
  const h = probe("state");
  h.exchange(TestRequest.post("/logged"), { response: new TestResponse(503) });
  const lines = h.logs().map((l) => l.message);
  assert.deepEqual(lines, [
    "probe log: POST /logged -> 503 seen=1",
    "probe log: unavailable: set-header: the response head can only change in on-response-headers (now on-log)",
  ]);
});

test("what a filter adds to the trace span stays with its request, until on-log", () => {
  const h = probe("span");
  const req = TestRequest.get("/");
  h.exchange(req, { response: new TestResponse(200) });
  assert.deepEqual(req.span.attributes, [["enduser.id", "alice"]]);
  assert.equal(req.span.events.length, 1);
  const [ev] = req.span.events;
  assert.equal(ev.name, "auth.accepted");
  assert.equal(ev.atMs, 1_700_000_000_000);
  assert.equal(ev.attributes[0][1], "ü".repeat(256), "a value is cut at 512 UTF-8 bytes, on a character boundary");
  const lines = h.logs().map((l) => l.message);
  assert.equal(lines[0], "span: ok");
  assert.equal(lines[1], "span event: ok");
  assert.match(lines[2], /^span proxy key: invalid: span attribute "http.route"/);
  assert.match(lines[3], /^span in on-log: unavailable: .* closed$/);
  // Not sampled: the calls succeed and nothing is kept.
  const quiet = TestRequest.get("/").unsampled();
  h.requestHeaders(quiet);
  assert.equal(quiet.span, null);
  assert.equal(h.logs().filter((l) => l.message === "span: ok").length, 1, "sampled() is false");
});

test("undeclared phases are not called", () => {
  const h = probe("none");
  const out = h.exchange(TestRequest.post("/"), { body: "abc", responseBody: "def" });
  assert.equal(out.upstream.body.toString(), "abc");
  assert.equal(out.text, "def");
});

test("traps: abort, assert and out-of-bounds access trap with their message in the log", () => {
  for (const [scenario, message] of [
    ["abort", /^abort: probe: aborting as asked$/],
    ["assert", /^abort: probe: assert failed at tests\/assembly\/probe\.ts:\d+:\d+$/],
    ["oob", /^abort: Index out of range at ~lib\/array\.ts:\d+:\d+$/],
  ]) {
    const h = probe(scenario);
    assert.throws(() => h.requestHeaders(TestRequest.get("/")), WebAssembly.RuntimeError);
    assert.equal(h.logs().length, 1);
    assert.equal(h.logs()[0].level, "error");
    assert.match(h.logs()[0].message, message);
    // The instance is gone, as in the proxy.
    assert.throws(() => h.requestHeaders(TestRequest.get("/")), /an earlier call trapped/);
  }
});

test("a loop is stopped by the emulated time budget at its next host call", () => {
  const h = probe("spin");
  h.setTimeBudget(50);
  const t0 = performance.now();
  assert.throws(() => h.requestHeaders(TestRequest.get("/")), /exceeded its time budget of 50 ms/);
  assert.ok(performance.now() - t0 < 5000);
});

test("the emulator rejects ABI violations", () => {
  // A hand-made module that passes an odd (unaligned) UTF-16 pointer.
  const h = probe("read");
  assert.throws(() => h.readString(1, 1), AbiError);
  assert.throws(() => h.readString(0, 1 << 30), AbiError);
});

test("100k calls through one instance keep memory flat", () => {
  const h = probe("churn");
  const headers = [
    ["x-a", "Jürgen"],
    ["x-b", "grüße ✓"],
    ["x-c", "😀".repeat(20)],
    ["x-d", "v".repeat(200)],
  ];
  const once = (i) => {
    const req = TestRequest.get(`/p/${i}`);
    for (const [n, v] of headers) req.header(n, v);
    const a = h.requestHeaders(req);
    h.done(req);
    return [a, req];
  };
  for (let i = 0; i < 10_000; i++) once(i);
  const warm = h.memoryBytes();
  let last;
  for (let i = 0; i < 100_000; i++) last = once(i);
  const [a, req] = last;
  assert.equal(a.kind, "continue");
  assert.equal(req.headerValue("x-churn"), `${6 + 7 + 40 + 200} ✓ /p/99999`);
  assert.equal(h.memoryBytes(), warm, `memory grew from ${warm} to ${h.memoryBytes()} bytes`);
  assert.ok(warm <= 2 << 20, `memory ${warm} bytes`);
});

test("the README's complete filter works as its test says", () => {
  const h = Harness.load(new URL("./build/readme.wasm", import.meta.url), { header: "x-user" });
  h.setGrants(Grants.none().kv("hits"));
  assert.equal(h.exchange(TestRequest.get("/")).status, 401);
  const out = h.exchange(TestRequest.get("/").header("x-user", "Jürgen"));
  assert.equal(out.headerValue("x-visits"), "1");
  assert.equal(h.exchange(TestRequest.get("/").header("x-user", "Jürgen")).headerValue("x-visits"), "2");
  h.setGrants(Grants.none());
  assert.equal(h.exchange(TestRequest.get("/").header("x-user", "x")).status, 500);
  assert.match(h.logs()[0].message, /^count-clients: denied: kv namespace "hits"/);
});
