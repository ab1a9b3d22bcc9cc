import assert from "node:assert/strict";
import { test } from "node:test";

import { Harness, Phases, TestRequest } from "@weir/filter/testing";

const WASM = new URL("../build/filter.wasm", import.meta.url);

/** Sends `body` in two chunks; returns the exchange. */
function run(config, body) {
  const h = Harness.load(WASM, config);
  const bytes = Buffer.from(body);
  const half = bytes.length >> 1;
  return h.exchange(TestRequest.post("/"), { body: [bytes.subarray(0, half), bytes.subarray(half)] });
}

test("members are removed, renamed and set, in order", () => {
  const config = { remove: ["pw"], rename: { n: "name" }, set: { v: 2, new: [1] } };
  const out = run(config, '{"n":"Jürgen \\u00e9 😀","pw":"x","v":1,"z":{"b":1}}');
  assert.equal(out.status, 200);
  assert.equal(out.upstream.body.toString(), '{"name":"Jürgen é 😀","v":2,"z":{"b":1},"new":[1]}');
});

test("untouched members keep their order and meaning", () => {
  const body = ' { "b" : "grüße ✓" , "a":[1, 2.50, true, null], "e":"\\"q\\" \\\\ \\n \\t \\u0001 \\ud83d\\ude00 / \\/", "n": {"y":1, "x":{"k":[]}} } ';
  const out = run({}, body);
  const text = out.upstream.body.toString();
  assert.equal(text, '{"b":"grüße ✓","a":[1,2.50,true,null],"e":"\\"q\\" \\\\ \\n \\t \\u0001 😀 / /","n":{"y":1,"x":{"k":[]}}}');
  assert.deepEqual(JSON.parse(text), JSON.parse(body));
});

test("set replaces in place or appends; set values may be any JSON", () => {
  const out = run({ set: { a: { deep: ["ü", null] }, z: "new ✓" } }, '{"a":1,"b":2}');
  assert.equal(out.upstream.body.toString(), '{"a":{"deep":["ü",null]},"b":2,"z":"new ✓"}');
});

test("the request phase buffers every chunk but the last", () => {
  const h = Harness.load(WASM, { remove: ["x"] });
  assert.equal(h.phases, Phases.REQUEST_BODY | Phases.STATELESS);
  const req = TestRequest.post("/");
  assert.equal(h.requestBody(req, '{"x":1,', false).kind, "buffer");
  assert.equal(h.requestBody(req, '"y":', false).kind, "buffer");
  assert.equal(req.forwardedBody.length, 0);
  assert.equal(h.requestBody(req, "2}", true).kind, "continue");
  assert.equal(req.forwardedText, '{"y":2}');
});

test("an empty body passes unchanged", () => {
  const h = Harness.load(WASM, { set: { a: 1 } });
  const out = h.exchange(TestRequest.post("/"), { body: "" });
  assert.equal(out.status, 200);
  assert.equal(out.upstream.body.length, 0);
});

test("a body that is not a JSON object is a 400", () => {
  for (const body of ["[1, 2]", '"s"', "1", "null", "{", '{"a":1}}', "not json", '{"a":"\\ud800"}', Buffer.from([0x7b, 0xff, 0x7d])]) {
    const out = run({}, body);
    assert.equal(out.status, 400, String(body));
    assert.equal(out.respondedBy, "on-request-body");
    assert.deepEqual(out.headers, [["content-type", "application/json"]]);
    assert.equal(out.text, '{"error":"body must be a JSON object"}');
    assert.equal(out.upstream, null);
  }
});

test("a 1 MiB body is transformed", () => {
  const big = "ü😀x".repeat(100_000);
  const body = JSON.stringify({ keep: big, drop: big, list: Array.from({ length: 10_000 }, (_, i) => i) });
  assert.ok(Buffer.byteLength(body) > 1 << 20);
  const out = run({ remove: ["drop"], rename: { keep: "kept" } }, body);
  const got = JSON.parse(out.upstream.body.toString());
  assert.equal(got.kept, big);
  assert.equal(got.drop, undefined);
  assert.equal(got.list.length, 10_000);
});

test("config errors", () => {
  assert.throws(() => Harness.load(WASM, { remove: "x" }), /remove: expected an array of strings/);
  assert.throws(() => Harness.load(WASM, { rename: { a: 1 } }), /rename\.a: expected a string/);
  assert.throws(() => Harness.load(WASM, { set: [] }), /set: expected an object/);
  assert.throws(() => Harness.load(WASM, { add: {} }), /unknown field `add`/);
  assert.doesNotThrow(() => Harness.load(WASM, ""));
});
