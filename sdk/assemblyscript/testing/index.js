// @weir/filter/testing: run a filter's compiled core module in Node, against an emulated host.
//
// The module is instantiated as the proxy would after componentizing it: every import of
// wit/filter.wit is implemented here in JavaScript per the canonical ABI (UTF-16 strings, memory
// from the guest's `cabi_realloc`, results through return pointers, `cabi_post_*` after each
// export), `_initialize` runs first, then `configure`, then phases in the proxy's order.
//
//   import { Harness, TestRequest, TestResponse } from "@weir/filter/testing";
//   const h = Harness.load("build/filter.wasm", { keys: { k1: "alice" } });
//   const req = TestRequest.get("/orders").header("x-api-key", "k1");
//   assert.equal(h.requestHeaders(req).kind, "continue");
//   h.done(req);
//
// No dependencies beyond Node (>= 20).

import * as nodeCrypto from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { performance } from "node:perf_hooks";

// ---------------------------------------------------------------------------------------------
// Shared definitions

/** Phase bits, as `configure` declares them. */
export const Phases = Object.freeze({
  NONE: 0,
  REQUEST_HEADERS: 1,
  REQUEST_BODY: 2,
  RESPONSE_HEADERS: 4,
  RESPONSE_BODY: 8,
  LOG: 16,
  STATELESS: 32,
  ALL: 31,
});

const LEVELS = ["trace", "debug", "info", "warn", "error"];
const ERROR_KINDS = ["denied", "unavailable", "invalid", "failed"];

/** The proxy's crypto bounds (WIT `crypto`). */
const CRYPTO = Object.freeze({ maxKeys: 256, maxKeyBytes: 16 << 10, minRsaBits: 2048, maxRsaBits: 8192 });
const HASHES = ["sha256", "sha384", "sha512"];
// Signature algorithms in WIT enum order: [family, hash, padding].
const SIGNATURES = [
  ["rsa", "sha256", "pkcs1"], ["rsa", "sha384", "pkcs1"], ["rsa", "sha512", "pkcs1"],
  ["rsa", "sha256", "pss"], ["rsa", "sha384", "pss"], ["rsa", "sha512", "pss"],
  ["P-256", "sha256"], ["P-384", "sha384"], ["ed25519", null],
];

function hashName(alg) {
  if (alg < 0 || alg >= HASHES.length) throw new AbiError(`invalid hash-algorithm ${alg}`);
  return HASHES[alg];
}

function sigFamily(alg) {
  if (alg < 0 || alg >= SIGNATURES.length) throw new AbiError(`invalid signature-algorithm ${alg}`);
  return SIGNATURES[alg][0];
}

function keyMaterial(what, bytes) {
  if (bytes.length === 0) throw HostError.invalid(`${what} is empty`);
  if (bytes.length > CRYPTO.maxKeyBytes) throw HostError.invalid(`${what} is ${bytes.length} bytes; at most ${CRYPTO.maxKeyBytes}`);
}

function stripZeros(b) {
  let i = 0;
  while (i < b.length && b[i] === 0) i++;
  return b.subarray(i);
}

function b64url(b) {
  return Buffer.from(b).toString("base64url");
}

/** Refuses a key whose type, curve or size does not fit `alg`, as the proxy does. */
function checkKeyFits(alg, key, exponent) {
  const family = sigFamily(alg);
  const type = key.asymmetricKeyType;
  const details = key.asymmetricKeyDetails || {};
  if (family === "rsa") {
    if (type !== "rsa") throw HostError.invalid("the algorithm needs an RSA key");
    const bits = details.modulusLength;
    if (bits < CRYPTO.minRsaBits || bits > CRYPTO.maxRsaBits) {
      throw HostError.invalid(`the RSA key has ${bits} bits; ${CRYPTO.minRsaBits} to ${CRYPTO.maxRsaBits} are accepted`);
    }
    const e = exponent !== undefined ? BigInt("0x" + (Buffer.from(exponent).toString("hex") || "0")) : details.publicExponent;
    if (e % 2n === 0n || e < 3n || e >= 1n << 33n) {
      throw HostError.invalid("the RSA exponent must be odd, at least 3 and at most 33 bits");
    }
  } else if (family === "ed25519") {
    if (type !== "ed25519") throw HostError.invalid("Ed25519 needs an Ed25519 key");
  } else {
    const curve = family === "P-256" ? "prime256v1" : "secp384r1";
    if (type !== "ec" || details.namedCurve !== curve) throw HostError.invalid("the algorithm needs an EC key on its curve");
  }
}

function verifySignature({ alg, key }, msg, sig) {
  const [family, hash, padding] = SIGNATURES[alg];
  try {
    if (family === "ed25519") return nodeCrypto.verify(null, msg, key, sig);
    if (family === "rsa") {
      const opts = padding === "pss"
        ? { key, padding: nodeCrypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: nodeCrypto.constants.RSA_PSS_SALTLEN_DIGEST }
        : { key, padding: nodeCrypto.constants.RSA_PKCS1_PADDING };
      return sig.length === Math.ceil(details(key).modulusLength / 8) && nodeCrypto.verify(hash, msg, opts, sig);
    }
    const size = family === "P-256" ? 32 : 48;
    return sig.length === 2 * size && nodeCrypto.verify(hash, msg, { key, dsaEncoding: "ieee-p1363" }, sig);
  } catch {
    return false;
  }
}

function details(key) {
  return key.asymmetricKeyDetails || {};
}

/** The 2023-11-14T22:13:20Z start of the fake wall clock (as the Rust SDK's emulator). */
export const START_MS = 1_700_000_000_000;

/** An error a host call returns to the filter (the WIT `host-error`). */

// The host's bounds (host/filters/src/series.rs and kv.rs), kept equal by the shared host-call
// table (tests/filters/host-calls.json), which runs here and in the real proxy.
const MAX_METRIC_NAME_BYTES = 128;
const MAX_LABELS = 16;
const MAX_LABEL_NAME_BYTES = 128;
const MAX_LABEL_VALUE_BYTES = 256;
const RESERVED_LABELS = ["filter", "le", "quantile"];
const HOST_METRICS = [
  "calls_total",
  "call_duration_seconds",
  "call_duration_seconds_bucket",
  "call_duration_seconds_sum",
  "call_duration_seconds_count",
  "failures_total",
  "budget_breaches_total",
  "limit_rejections_total",
];
const MAX_KV_KEY_BYTES = 1024;
const MAX_KV_VALUE_BYTES = 64 * 1024;

/** What a KV write may store: a key of at most 1 KiB, a value of at most 64 KiB. */
function checkWrite(key, value) {
  const keyBytes = Buffer.byteLength(key, "utf8");
  if (keyBytes > MAX_KV_KEY_BYTES) {
    throw HostError.invalid(`key of ${keyBytes} bytes is longer than the limit of ${MAX_KV_KEY_BYTES} bytes`);
  }
  if (value.length > MAX_KV_VALUE_BYTES) {
    throw HostError.invalid(`value of ${value.length} bytes is larger than the limit of ${MAX_KV_VALUE_BYTES} bytes`);
  }
}

export class HostError extends Error {
  /**
   * @param {"denied"|"unavailable"|"invalid"|"failed"} kind
   * @param {string} message
   */
  constructor(kind, message) {
    super(`${kind}: ${message}`);
    if (!ERROR_KINDS.includes(kind)) throw new TypeError(`unknown host error kind ${kind}`);
    this.kind = kind;
    this.detail = message;
  }
  static denied(m) {
    return new HostError("denied", m);
  }
  static unavailable(m) {
    return new HostError("unavailable", m);
  }
  static invalid(m) {
    return new HostError("invalid", m);
  }
  static failed(m) {
    return new HostError("failed", m);
  }
}

/** The filter rejected its config (the WIT `config-error`). */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "ConfigError";
  }
}

/** A guest broke the canonical ABI (in the proxy: a trap). */
export class AbiError extends Error {
  constructor(message) {
    super(`canonical ABI violation: ${message}`);
    this.name = "AbiError";
  }
}

const utf8 = new TextEncoder();

/** @param {string|Uint8Array|ArrayBuffer|undefined|null} b */
function toBytes(b) {
  if (b === undefined || b === null) return Buffer.alloc(0);
  if (typeof b === "string") return Buffer.from(b, "utf8");
  if (b instanceof ArrayBuffer) return Buffer.from(new Uint8Array(b));
  if (ArrayBuffer.isView(b)) return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  throw new TypeError("expected a string or bytes");
}

function lower(name) {
  return name.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

function first(headers, name) {
  const n = lower(name);
  const h = headers.find(([k]) => lower(k) === n);
  return h ? h[1] : null;
}

function all(headers, name) {
  const n = lower(name);
  return headers.filter(([k]) => lower(k) === n).map(([, v]) => v);
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function checkHeader(name, value) {
  if (!TOKEN.test(name)) throw HostError.invalid(`invalid header name ${JSON.stringify(name)}`);
  if (value !== undefined) {
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if ((c < 0x20 && c !== 0x09) || c === 0x7f) {
        throw HostError.invalid(`invalid value for header ${JSON.stringify(name)}: control characters are not allowed`);
      }
    }
  }
}

/**
 * Headers that frame a message or belong to one connection (lowercase). Only the proxy sets
 * them: set-header, append-header and remove-header answer `invalid` for these, and a local
 * response loses them, because a wrong Content-Length would desynchronize a keep-alive
 * connection.
 */
const FRAMING_HEADERS = Object.freeze([
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
]);

function isFramingHeader(name) {
  return FRAMING_HEADERS.includes(lower(name));
}

/** Checks a header a filter changes as the proxy does, in its order: name, framing, value. */
function checkWritable(name, value) {
  checkHeader(name);
  if (isFramingHeader(name)) throw HostError.invalid(`${lower(name)} is a framing or hop-by-hop header: the proxy sets it`);
  checkHeader(name, value);
}

// ---------------------------------------------------------------------------------------------
// Requests and responses as a test builds them

let nextContext = 1;

/** The trace interface's bounds, as the proxy has them (wit/filter.wit, interface trace). */
const SPAN = { attributes: 32, events: 32, eventAttributes: 16, nameBytes: 128, valueBytes: 512 };
const SPAN_RESERVED = ["http.", "url.", "server.", "client.", "network.", "error.", "weir."];

function checkSpanName(what, name) {
  if (name.length === 0 || name.length > SPAN.nameBytes || !/^[A-Za-z0-9._-]+$/.test(name)) {
    throw HostError.invalid(`${what} ${JSON.stringify(cutUtf8(name, 64))}: 1 to ${SPAN.nameBytes} bytes of [A-Za-z0-9._-]`);
  }
}

function checkSpanKey(key) {
  checkSpanName("span attribute", key);
  const p = SPAN_RESERVED.find((p) => key.startsWith(p));
  if (p) throw HostError.invalid(`span attribute ${JSON.stringify(key)}: keys under ${JSON.stringify(p)} are the proxy's`);
}

/** `s` cut to at most `max` UTF-8 bytes, at a character boundary. */
function cutUtf8(s, max) {
  const b = Buffer.from(s, "utf8");
  if (b.length <= max) return s;
  let end = max;
  while (end > 0 && (b[end] & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString("utf8");
}

/**
 * Puts the headers the request phases set (`pending`) on a response's `headers` (in place), as
 * the proxy does: with `replace` (the upstream's response) each name replaces that name's
 * values; without (a local response) names the response sets itself are kept.
 */
function setResponseHeaders(headers, pending, replace) {
  const names = new Set(pending.map(([n]) => lower(n)));
  const own = new Set(headers.map(([n]) => lower(n)));
  const kept = replace ? headers.filter(([n]) => !names.has(lower(n))) : headers;
  const added = replace ? pending : pending.filter(([n]) => !own.has(lower(n)));
  headers.splice(0, headers.length, ...kept, ...added);
}

/** What a test request and a test response share: a head with headers, and the body bytes. */
class TestMessage {
  constructor(head) {
    this.head = head;
    this.held = Buffer.alloc(0);
    this.forwarded = Buffer.alloc(0);
  }
  /** Adds a header (name stored lowercase). Returns `this`. */
  header(name, value) {
    this.head.headers.push([lower(name), String(value)]);
    return this;
  }
  /** All headers, in order, as [name, value]. */
  get headers() {
    return this.head.headers;
  }
  /** The first value of a header (case-insensitive), or null. */
  headerValue(name) {
    return first(this.head.headers, name);
  }
  /** Every value of a header, in order. */
  headerValues(name) {
    return all(this.head.headers, name);
  }
  /** The body bytes forwarded so far (after the filter's changes): upstream for a request,
   * downstream for a response. */
  get forwardedBody() {
    return this.forwarded;
  }
  get forwardedText() {
    return this.forwarded.toString("utf8");
  }
}

/**
 * A request as the proxy would present it. Build it, pass it to the harness, then look at what
 * the filter changed. Defaults: authority `localhost`, scheme `http`, client `127.0.0.1:40000`,
 * route `test-route`, cluster `test-cluster`, request id `test-<context id>`.
 */
export class TestRequest extends TestMessage {
  constructor(method = "GET", path = "/") {
    const contextId = nextContext++;
    super({
      method,
      path,
      authority: "localhost",
      scheme: "http",
      client: "127.0.0.1:40000",
      route: "test-route",
      cluster: "test-cluster",
      requestId: `test-${contextId}`,
      headers: [],
      span: { attributes: [], events: [] },
      responseHeaders: [],
    });
    this.contextId = contextId;
  }
  /**
   * The headers the request phases set on the response to come, in order, as [name, value]:
   * the proxy puts them on whatever response the client gets (on the upstream's, each name
   * replaces that name's values; a local response keeps the headers it sets itself).
   * `responseHeaders` and `exchange` put them on their response.
   */
  get responseHeadersToSet() {
    return this.head.responseHeaders;
  }
  /**
   * Makes the request's trace not sampled: `span.sampled()` is false and what filters add is
   * dropped. Requests are sampled by default. Returns `this`.
   */
  unsampled() {
    this.head.span = null;
    return this;
  }
  /**
   * What filters added to the request's trace span (`span` of @weir/filter), or null when not
   * sampled: `{ attributes: [[key, value]...], events: [{ name, atMs, attributes }...] }`,
   * kept under the proxy's rules (names checked, the proxy's keys refused, values cut, counts
   * bounded). The proxy adds `weir.filter` to each event; the emulator does not.
   */
  get span() {
    return this.head.span;
  }
  static get(path = "/") {
    return new TestRequest("GET", path);
  }
  static post(path = "/") {
    return new TestRequest("POST", path);
  }
  authority(v) {
    this.head.authority = v;
    return this;
  }
  scheme(v) {
    this.head.scheme = v;
    return this;
  }
  /** Sets the client address (`ip:port`). */
  client(v) {
    this.head.client = v;
    return this;
  }
  route(v) {
    this.head.route = v;
    return this;
  }
  cluster(v) {
    this.head.cluster = v;
    return this;
  }
  requestId(v) {
    this.head.requestId = v;
    return this;
  }
  get method() {
    return this.head.method;
  }
  /** The path as it would go upstream. */
  get path() {
    return this.head.path;
  }
}

/** A response as the upstream would send it. */
export class TestResponse extends TestMessage {
  constructor(status = 200) {
    super({ status, headers: [] });
  }
  get status() {
    return this.head.status;
  }
}

/** A local response, as a filter returned it. */
export class LocalResponse {
  constructor(status, headers, body) {
    this.status = status;
    /** @type {[string, string][]} */
    this.headers = headers;
    /** @type {Buffer} */
    this.body = body;
  }
  headerValue(name) {
    return first(this.headers, name);
  }
  headerValues(name) {
    return all(this.headers, name);
  }
  get text() {
    return this.body.toString("utf8");
  }
}

/** What a phase decided: `kind` is "continue", "respond" (with `response`) or "buffer". */
export class Action {
  constructor(kind, response = null) {
    this.kind = kind;
    /** @type {LocalResponse|null} */
    this.response = response;
  }
  get isContinue() {
    return this.kind === "continue";
  }
  get isRespond() {
    return this.kind === "respond";
  }
  get isBuffer() {
    return this.kind === "buffer";
  }
}

const CONTINUE = new Action("continue");
Action.CONTINUE = CONTINUE;

/** An HTTP response for a callout handler to return. */
export class CalloutResponse {
  constructor(status = 200, headers = [], body = "") {
    this.status = status;
    this.headers = headers;
    this.body = toBytes(body);
  }
  header(name, value) {
    this.headers.push([name, value]);
    return this;
  }
}

// ---------------------------------------------------------------------------------------------
// The emulated host

/** Which capabilities the emulated host grants. Everything by default (the proxy: nothing). */
export class Grants {
  constructor(kv = null, callouts = null) {
    this.kvSet = kv;
    this.calloutSet = callouts;
  }
  static all() {
    return new Grants(null, null);
  }
  static none() {
    return new Grants(new Set(), new Set());
  }
  /** Grants a KV namespace (restricting KV to the namespaces listed). */
  kv(namespace) {
    return new Grants(new Set([...(this.kvSet || []), namespace]), this.calloutSet);
  }
  /** Grants a callout target (restricting callouts to the targets listed). */
  callout(target) {
    return new Grants(this.kvSet, new Set([...(this.calloutSet || []), target]));
  }
  allowsKv(ns) {
    return this.kvSet === null || this.kvSet.has(ns);
  }
  allowsCallout(t) {
    return this.calloutSet === null || this.calloutSet.has(t);
  }
}

const U64 = (1n << 64n) - 1n;
const I64_MAX = (1n << 63n) - 1n;
const I64_MIN = -(1n << 63n);

function metricKey(name, labels) {
  const sorted = [...labels].map(([n, v]) => [n, v]).sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1));
  return JSON.stringify([name, sorted]);
}

/**
 * The emulated host: KV, metrics, logs, clock, randomness, callouts and grants. Several
 * harnesses may share one (shared KV and clock, like instances of one proxy).
 */
export class Emulator {
  constructor() {
    this.grants = Grants.all();
    this.nowMsValue = BigInt(START_MS);
    this.monotonicNsValue = 1_000_000_000n;
    this.rng = 0x9e3779b97f4a7c15n;
    this.timeBudgetMs = null;
    /** @type {{level: string, message: string}[]} */
    this.logLines = [];
    /** @type {[string, object][]} */
    this.sentCallouts = [];
    this.calloutHandler = null;
    this.metrics = new Map();
    this.kvLastVersion = 0n;
    this.kvValues = new Map();
    this.kvCounters = new Map();
    this.kvBuckets = new Map();
    this.printLogs = !!process.env.WEIR_FILTER_LOG;
  }

  /** Sets the capabilities granted from now on. */
  setGrants(grants) {
    this.grants = grants;
  }
  /**
   * Answers callouts with `handler(target, request)`, which returns a `CalloutResponse` (or any
   * `{status, headers, body}`) or throws/returns a `HostError`.
   */
  onCallout(handler) {
    this.calloutHandler = handler;
  }
  /** Every callout sent so far, as [target, {method, path, headers, body, timeoutMs}]. */
  callouts() {
    return this.sentCallouts;
  }
  /** Moves both clocks forward by `ms` milliseconds. */
  advance(ms) {
    this.nowMsValue += BigInt(ms);
    this.monotonicNsValue += BigInt(ms) * 1_000_000n;
  }
  get nowMs() {
    return Number(this.nowMsValue);
  }
  setNowMs(ms) {
    this.nowMsValue = BigInt(ms);
  }
  /** Reseeds the generator behind `clock.randomBytes` (same sequence as the Rust emulator). */
  seedRandom(seed) {
    this.rng = ((BigInt(seed) ^ 0x9e3779b97f4a7c15n) | 1n) & U64;
  }
  /**
   * Emulates the proxy's per-phase time budget: a host call made after a phase has run this
   * long throws (a trap). `null` disables it (the default). Checked at host calls only.
   */
  setTimeBudget(ms) {
    this.timeBudgetMs = ms;
  }
  /** Log lines written so far: [{level, message}]. */
  logs() {
    return this.logLines;
  }
  /** Removes and returns the log lines. */
  takeLogs() {
    const l = this.logLines;
    this.logLines = [];
    return l;
  }
  /** A counter's value (0 if never added to). Label order does not matter. */
  counter(name, labels = []) {
    const m = this.metrics.get(metricKey(name, labels));
    return m && m.kind === "counter" ? m.value : 0n;
  }
  /** A gauge's value, or null. */
  gauge(name, labels = []) {
    const m = this.metrics.get(metricKey(name, labels));
    return m && m.kind === "gauge" ? m.value : null;
  }
  /** A histogram's observations. */
  histogram(name, labels = []) {
    const m = this.metrics.get(metricKey(name, labels));
    return m && m.kind === "histogram" ? m.value : [];
  }
  /** A KV value as the filter would read it (Buffer), or null. */
  kvValue(namespace, key) {
    const s = this.liveValue(namespace, key);
    return s ? s.value : null;
  }
  /** A KV counter's value, or null. */
  kvCounter(namespace, key) {
    const c = this.kvCounters.get(JSON.stringify([namespace, key]));
    return c && !(c.expiresAt !== null && this.nowMsValue >= c.expiresAt) ? c.value : null;
  }

  // --- host functions (called by the import glue; throw HostError for error results) ---

  log(level, message) {
    this.logLines.push({ level, message });
    if (this.printLogs) process.stderr.write(`[weir-filter ${level}] ${message}\n`);
  }

  randomBytes(len) {
    const out = Buffer.alloc(len);
    let i = 0;
    while (i < len) {
      let x = this.rng;
      x ^= x >> 12n;
      x ^= (x << 25n) & U64;
      x ^= x >> 27n;
      this.rng = x;
      let word = (x * 0x2545f4914f6cdd1dn) & U64;
      for (let k = 0; k < 8 && i < len; k++, i++) {
        out[i] = Number(word & 0xffn);
        word >>= 8n;
      }
    }
    return out;
  }

  /** The namespace must be granted (an empty one never is, as in the proxy). */
  checkKv(ns) {
    if (ns === "" || !this.grants.allowsKv(ns)) {
      throw HostError.denied(`kv namespace ${JSON.stringify(ns)} is not granted (add it to the filter's grants.kv)`);
    }
  }

  liveValue(ns, key) {
    const k = JSON.stringify([ns, key]);
    const s = this.kvValues.get(k);
    if (s && s.expiresAt !== null && this.nowMsValue >= s.expiresAt) {
      this.kvValues.delete(k);
      return null;
    }
    return s || null;
  }

  expiry(ttlMs) {
    return ttlMs > 0n ? this.nowMsValue + ttlMs : null;
  }

  kvGet(ns, key) {
    this.checkKv(ns);
    const s = this.liveValue(ns, key);
    return s ? { value: s.value, version: s.version } : null;
  }

  kvSet(ns, key, value, ttlMs) {
    this.checkKv(ns);
    checkWrite(key, value);
    const version = ++this.kvLastVersion;
    this.kvValues.set(JSON.stringify([ns, key]), { value: Buffer.from(value), version, expiresAt: this.expiry(ttlMs) });
    return version;
  }

  kvCompareAndSwap(ns, key, expected, value, ttlMs) {
    this.checkKv(ns);
    checkWrite(key, value);
    const s = this.liveValue(ns, key);
    const current = s ? s.version : 0n;
    if (current !== expected) return null;
    return this.kvSet(ns, key, value, ttlMs);
  }

  kvDelete(ns, key) {
    this.checkKv(ns);
    const k = JSON.stringify([ns, key]);
    this.kvValues.delete(k);
    this.kvCounters.delete(k);
    this.kvBuckets.delete(k);
  }

  kvIncrement(ns, key, delta, ttlMs) {
    this.checkKv(ns);
    checkWrite(key, []);
    const k = JSON.stringify([ns, key]);
    let c = this.kvCounters.get(k);
    if (!c || (c.expiresAt !== null && this.nowMsValue >= c.expiresAt)) {
      // Fixed window: a new one starts with this increment.
      c = { value: 0n, expiresAt: this.expiry(ttlMs) };
      this.kvCounters.set(k, c);
    }
    // Saturating, as the proxy's counters are.
    let next = c.value + delta;
    if (next > I64_MAX) next = I64_MAX;
    if (next < I64_MIN) next = I64_MIN;
    c.value = next;
    return next;
  }

  kvTakeTokens(ns, key, rate, periodMs, burst, cost) {
    this.checkKv(ns);
    checkWrite(key, []);
    if (rate === 0n || periodMs === 0n || burst === 0n) {
      throw HostError.invalid(
        `token bucket ${ns}/${key}: rate, period and burst must be positive (got rate ${rate}, period ${periodMs} ms, burst ${burst})`,
      );
    }
    if (cost > burst) {
      throw HostError.invalid(`token bucket ${ns}/${key}: cost ${cost} exceeds burst ${burst}, it could never pass`);
    }
    const k = JSON.stringify([ns, key]);
    const full = burst * periodMs;
    let b = this.kvBuckets.get(k);
    if (!b) {
      b = { scaled: full, lastMs: this.nowMsValue };
      this.kvBuckets.set(k, b);
    }
    const elapsed = this.nowMsValue > b.lastMs ? this.nowMsValue - b.lastMs : 0n;
    b.scaled = b.scaled + elapsed * rate < full ? b.scaled + elapsed * rate : full;
    b.lastMs = this.nowMsValue;
    const need = cost * periodMs;
    const allowed = b.scaled >= need;
    if (allowed) b.scaled -= need;
    const ceil = (n, d) => (n + d - 1n) / d;
    return {
      allowed,
      remaining: b.scaled / periodMs,
      retryAfterMs: allowed ? 0n : ceil(need - b.scaled, rate),
      resetMs: ceil(full - b.scaled, rate),
    };
  }

  recordMetric(name, labels, kind, update) {
    const q = JSON.stringify;
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw HostError.invalid(`invalid metric name ${q(name)}: use [a-z_][a-z0-9_]*`);
    if (name.length > MAX_METRIC_NAME_BYTES) {
      throw HostError.invalid(`metric name of ${name.length} bytes is longer than ${MAX_METRIC_NAME_BYTES}`);
    }
    if (HOST_METRICS.includes(name)) throw HostError.invalid(`metric name ${q(name)} is taken by the host's weir_filter_${name}`);
    if (labels.length > MAX_LABELS) throw HostError.invalid(`metric ${q(name)}: ${labels.length} labels, at most ${MAX_LABELS}`);
    const seen = new Set();
    for (const [label, value] of labels) {
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(label) || label.length > MAX_LABEL_NAME_BYTES) {
        throw HostError.invalid(`metric ${q(name)}: invalid label name ${q(label)}`);
      }
      if (RESERVED_LABELS.includes(label) || label.startsWith("__")) {
        throw HostError.invalid(`metric ${q(name)}: label name ${q(label)} is reserved (filter, le, quantile and __*)`);
      }
      if (Buffer.byteLength(value, "utf8") > MAX_LABEL_VALUE_BYTES) {
        throw HostError.invalid(`metric ${q(name)}: value of label ${q(label)} is over ${MAX_LABEL_VALUE_BYTES} bytes`);
      }
      if (seen.has(label)) throw HostError.invalid(`metric ${JSON.stringify(name)}: label ${JSON.stringify(label)} given twice`);
      seen.add(label);
    }
    for (const [k, m] of this.metrics) {
      if (JSON.parse(k)[0] === name && m.kind !== kind) {
        throw HostError.invalid(`metric ${JSON.stringify(name)} is a ${m.kind}, not a ${kind}`);
      }
    }
    const key = metricKey(name, labels);
    const m = this.metrics.get(key) || { kind, value: kind === "counter" ? 0n : kind === "gauge" ? 0n : [] };
    update(m);
    this.metrics.set(key, m);
  }

  calloutSend(target, method, path, headers, body, timeoutMs) {
    if (!this.grants.allowsCallout(target)) {
      throw HostError.denied(`callout target ${JSON.stringify(target)} is not granted (add it to the filter's grants.callouts)`);
    }
    if (!TOKEN.test(method)) throw HostError.invalid(`invalid callout method ${JSON.stringify(method)}`);
    if (!path.startsWith("/")) throw HostError.invalid(`invalid callout path ${JSON.stringify(path)}: it must start with /`);
    for (const [n, v] of headers) checkHeader(n, v);
    const request = { method, path, headers, body, timeoutMs };
    this.sentCallouts.push([target, request]);
    if (!this.calloutHandler) {
      throw HostError.failed(`callout to ${JSON.stringify(target)}: no handler registered (h.onCallout)`);
    }
    const res = this.calloutHandler(target, request);
    if (res instanceof HostError) throw res;
    return { status: res.status ?? 200, headers: res.headers ?? [], body: toBytes(res.body) };
  }
}

// ---------------------------------------------------------------------------------------------
// The canonical-ABI bridge

const REQUIRED_EXPORTS = [
  "memory",
  "_initialize",
  "cabi_realloc",
  "weir:filter/filter@0.1.0#configure",
  "weir:filter/filter@0.1.0#on-request-headers",
  "weir:filter/filter@0.1.0#on-request-body",
  "weir:filter/filter@0.1.0#on-response-headers",
  "weir:filter/filter@0.1.0#on-response-body",
  "weir:filter/filter@0.1.0#on-log",
  "weir:filter/filter@0.1.0#context-done",
  "cabi_post_weir:filter/filter@0.1.0#configure",
  "cabi_post_weir:filter/filter@0.1.0#on-request-headers",
  "cabi_post_weir:filter/filter@0.1.0#on-request-body",
  "cabi_post_weir:filter/filter@0.1.0#on-response-headers",
  "cabi_post_weir:filter/filter@0.1.0#on-response-body",
];

const moduleCache = new Map();

function compile(wasm) {
  if (wasm instanceof WebAssembly.Module) return wasm;
  if (wasm instanceof URL || typeof wasm === "string") {
    const path = wasm instanceof URL ? fileURLToPath(wasm) : wasm;
    if (!moduleCache.has(path)) moduleCache.set(path, new WebAssembly.Module(readFileSync(path)));
    return moduleCache.get(path);
  }
  return new WebAssembly.Module(toBytes(wasm));
}

/** Checks what the componentizer would: names, imports, and the string encoding. */
function checkModule(mod) {
  const problems = [];
  const sections = WebAssembly.Module.customSections(mod, "weir:string-encoding");
  const enc = sections.length ? Buffer.from(sections[0]).toString("latin1") : null;
  if (enc !== "utf16") {
    problems.push(`custom section weir:string-encoding is ${enc === null ? "missing" : JSON.stringify(enc)}, expected "utf16" (build with the @weir/filter transform)`);
  }
  const names = new Set(WebAssembly.Module.exports(mod).map((e) => e.name));
  for (const n of REQUIRED_EXPORTS) if (!names.has(n)) problems.push(`missing export ${n}`);
  for (const imp of WebAssembly.Module.imports(mod)) {
    if (!/^weir:filter\/(http|log|clock|metrics|kv|callout|trace|crypto)@0\.1\.0$/.test(imp.module)) {
      problems.push(`import ${imp.module}.${imp.name} is not provided by the proxy`);
    }
  }
  if (problems.length) throw new Error(`not a Weir filter module:\n  - ${problems.join("\n  - ")}`);
}

/**
 * One instance of a filter module, configured, driven like the proxy drives it. Phase methods
 * skip phases the filter did not declare (returning `continue` and passing bodies through). A
 * trap (or an ABI violation) propagates as an exception and poisons the harness, as the proxy
 * discards a trapped instance.
 */
export class Harness {
  /**
   * Instantiates and configures a filter module.
   * @param {string|URL|Uint8Array|WebAssembly.Module} wasm the built module (`build/filter.wasm`)
   * @param {object|string} [config] the config: an object (serialized as JSON) or the exact text
   * @param {{host?: Emulator}} [options] `host`: share an emulator between harnesses
   * @throws {ConfigError} when the filter rejects its config
   */
  static load(wasm, config = "", options = {}) {
    const h = new Harness(wasm, options.host || new Emulator());
    h.configure(typeof config === "string" ? config : JSON.stringify(config));
    return h;
  }

  constructor(wasm, host) {
    const mod = compile(wasm);
    checkModule(mod);
    /** The emulated host (KV, metrics, logs, clock, callouts, grants). */
    this.host = host;
    this.scope = null; // what the running phase can see
    this.poisoned = false;
    // Crypto key handles of this instance (the proxy's resource table): handle → key.
    this.keys = new Map();
    this.nextKey = 1;
    this.phases = 0;
    this.calls = 0;
    this.instance = new WebAssembly.Instance(mod, this.imports());
    this.x = this.instance.exports;
    this.guard(() => this.x._initialize());
  }

  // --- memory access ---

  view() {
    return new DataView(this.x.memory.buffer);
  }

  check(ptr, size, align, what) {
    if (ptr % align !== 0) throw new AbiError(`${what}: pointer ${ptr} is not ${align}-aligned`);
    if (ptr + size > this.x.memory.buffer.byteLength) throw new AbiError(`${what}: ${size} bytes at ${ptr} are out of bounds`);
  }

  readString(ptr, len, what = "string") {
    this.check(ptr, len * 2, 2, what);
    const units = new Uint16Array(this.x.memory.buffer, ptr, len);
    let s = "";
    for (let i = 0; i < len; i += 8192) s += String.fromCharCode.apply(null, units.subarray(i, Math.min(len, i + 8192)));
    // The proxy converts to UTF-8 and traps on lone surrogates.
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) {
          i++;
          continue;
        }
        throw new AbiError(`${what}: invalid UTF-16 (lone surrogate at ${i})`);
      }
      if (c >= 0xdc00 && c <= 0xdfff) throw new AbiError(`${what}: invalid UTF-16 (lone surrogate at ${i})`);
    }
    return s;
  }

  readBytes(ptr, len, what = "list<u8>") {
    this.check(ptr, len, 1, what);
    return Buffer.from(new Uint8Array(this.x.memory.buffer, ptr, len));
  }

  readPairs(ptr, len, what) {
    this.check(ptr, len * 16, 4, what);
    const out = [];
    for (let i = 0; i < len; i++) {
      const dv = this.view();
      const at = ptr + i * 16;
      out.push([
        this.readString(dv.getUint32(at, true), dv.getUint32(at + 4, true), what),
        this.readString(dv.getUint32(at + 8, true), dv.getUint32(at + 12, true), what),
      ]);
    }
    return out;
  }

  realloc(oldPtr, oldSize, align, size) {
    const ptr = this.x.cabi_realloc(oldPtr, oldSize, align, size) >>> 0;
    this.check(ptr, size, align, "cabi_realloc result");
    return ptr;
  }

  // Lowers a host string as wasmtime does for a UTF-16 guest: allocate 2 bytes per UTF-8 byte,
  // write the code units, then shrink with a second realloc call.
  writeString(s) {
    const worst = Buffer.byteLength(s, "utf8") * 2;
    let ptr = this.realloc(0, 0, 2, worst);
    const units = new Uint16Array(this.x.memory.buffer, ptr, s.length);
    for (let i = 0; i < s.length; i++) units[i] = s.charCodeAt(i);
    if (s.length * 2 < worst) ptr = this.realloc(ptr, worst, 2, s.length * 2);
    return [ptr, s.length];
  }

  writeBytes(bytes) {
    const ptr = this.realloc(0, 0, 1, bytes.length);
    new Uint8Array(this.x.memory.buffer, ptr, bytes.length).set(bytes);
    return [ptr, bytes.length];
  }

  writeStringList(list) {
    const ptr = this.realloc(0, 0, 4, list.length * 8);
    list.forEach((s, i) => {
      const [p, l] = this.writeString(s);
      const dv = this.view();
      dv.setUint32(ptr + i * 8, p, true);
      dv.setUint32(ptr + i * 8 + 4, l, true);
    });
    return [ptr, list.length];
  }

  writePairs(pairs) {
    const ptr = this.realloc(0, 0, 4, pairs.length * 16);
    pairs.forEach(([n, v], i) => {
      const [np, nl] = this.writeString(n);
      const [vp, vl] = this.writeString(v);
      const dv = this.view();
      dv.setUint32(ptr + i * 16, np, true);
      dv.setUint32(ptr + i * 16 + 4, nl, true);
      dv.setUint32(ptr + i * 16 + 8, vp, true);
      dv.setUint32(ptr + i * 16 + 12, vl, true);
    });
    return [ptr, pairs.length];
  }

  /** Stores (ptr, len) at `at`. */
  putPtrLen(at, [p, l]) {
    const dv = this.view();
    dv.setUint32(at, p, true);
    dv.setUint32(at + 4, l, true);
  }

  /** Writes a `host-error` at `at` (case u8, string at +4). */
  putError(at, e) {
    const s = this.writeString(e.detail);
    this.view().setUint8(at, ERROR_KINDS.indexOf(e.kind));
    this.putPtrLen(at + 4, s);
  }

  // --- crypto (WIT `crypto`), on Node's OpenSSL under the proxy's rules ---

  /** Stores a key under a new handle, within the per-instance bound. */
  keepKey(key) {
    if (this.keys.size >= CRYPTO.maxKeys) {
      throw HostError.invalid(`an instance holds at most ${CRYPTO.maxKeys} keys; drop keys it no longer uses`);
    }
    const handle = this.nextKey++;
    this.keys.set(handle, key);
    return handle;
  }

  key(handle, kind) {
    const k = this.keys.get(handle);
    if (!k || k.kind !== kind) throw new AbiError(`unknown ${kind} handle ${handle}`);
    return k;
  }

  dropKey(handle, kind) {
    this.key(handle, kind);
    this.keys.delete(handle);
  }

  // --- the imports ---

  imports() {
    const h = this;
    const host = () => h.host;
    const enter = (what) => {
      // The emulated epoch deadline: checked at every host call.
      const s = h.scope;
      if (s && s.deadline !== null && performance.now() > s.deadline) {
        throw new Error(`weir filter emulator: ${s.phase} exceeded its time budget of ${host().timeBudgetMs} ms (in the proxy this traps: epoch deadline) [${what}]`);
      }
    };
    // A function returning `result<T, host-error>` through `ret`: payload at `off`.
    const result = (ret, size, align, off, what, f, put) => {
      h.check(ret, size, align, `${what} return area`);
      let value;
      try {
        value = f();
      } catch (e) {
        if (!(e instanceof HostError)) throw e;
        h.putError(ret + off, e);
        h.view().setUint8(ret, 1);
        return;
      }
      if (put) put(ret + off, value);
      h.view().setUint8(ret, 0);
    };
    const unit = (ret, what, f) => result(ret, 16, 4, 4, what, f, null);
    const str = (p, l, what) => h.readString(p, l, what);
    const reqOr = (f, fallback) => (h.scope && h.scope.request ? f(h.scope.request) : fallback);
    // Before there is a response (the request phases), the response map is the headers to set
    // on the response to come.
    const beforeResponse = (s) => s.phase === "on-request-headers" || s.phase === "on-request-body";
    const headerMap = (map) => {
      const s = h.scope;
      if (!s) return null;
      if (map === 0) return s.request ? s.request.headers : null;
      if (map === 1 && beforeResponse(s)) return s.request ? s.request.responseHeaders : null;
      if (map === 1) return s.response ? s.response.headers : null;
      throw new AbiError(`invalid header-map ${map}`);
    };
    const mutableRequest = (what) => {
      const s = h.scope;
      if (s && s.request && (s.phase === "on-request-headers" || s.phase === "on-request-body")) return s.request;
      throw HostError.unavailable(`${what}: the request can only change in the request phases (now ${s ? s.phase : "outside a phase"})`);
    };
    const mutableResponse = (what) => {
      const s = h.scope;
      if (s && s.response && s.phase === "on-response-headers") return s.response;
      throw HostError.unavailable(`${what}: the response head can only change in on-response-headers (now ${s ? s.phase : "outside a phase"})`);
    };
    const mutableHeaders = (map, what) => {
      if (map === 0) return mutableRequest(what).headers;
      if (map === 1 && h.scope && beforeResponse(h.scope)) return mutableRequest(what).responseHeaders;
      if (map === 1) return mutableResponse(what).headers;
      throw new AbiError(`invalid header-map ${map}`);
    };
    const stringGetter = (what, f) => (ret) => {
      enter(what);
      h.check(ret, 8, 4, `${what} return area`);
      h.putPtrLen(ret, h.writeString(reqOr(f, "")));
    };
    const level = (l) => {
      if (l < 0 || l > 4) throw new AbiError(`invalid level ${l}`);
      return LEVELS[l];
    };
    const bodyKind = (k) => {
      if (k !== 0 && k !== 1) throw new AbiError(`invalid body-kind ${k}`);
      return k;
    };
    const u64 = (v) => BigInt.asUintN(64, v);
    const s64 = (v) => BigInt.asIntN(64, v);
    const pairsParam = (p, l, what) => h.readPairs(p, l, what);
    // The request's span when it can take notes: null when not sampled; unavailable outside the
    // phases that can add to it (the proxy exports the span before on-log).
    const openSpan = () => {
      const s = h.scope;
      if (!s || s.phase === "on-log") {
        throw HostError.unavailable(`no open span ${s ? s.phase : "outside a phase"}: the proxy exports it before on-log`);
      }
      return s.request ? s.request.span : null;
    };

    // A `result<own<verifying-key>, host-error>`: the key `make` returns, checked against the
    // algorithm as the proxy does, under a new handle.
    const madeKey = (ret, what, alg, make, exponent) => {
      result(ret, 12, 4, 4, `crypto.verifying-key.${what}`, () => {
        const key = make();
        checkKeyFits(alg, key, exponent);
        return h.keepKey({ kind: "verify", alg, key });
      }, (at, handle) => h.view().setUint32(at, handle, true));
    };

    return {
      "weir:filter/http@0.1.0": {
        method: stringGetter("method", (r) => r.method),
        path: stringGetter("path", (r) => r.path),
        "set-path": (p, l, ret) => {
          enter("set-path");
          const path = str(p, l, "set-path");
          unit(ret, "set-path", () => {
            if (!path.startsWith("/") || /[\x00-\x20\x7f]/.test(path)) {
              throw HostError.invalid(`invalid path ${JSON.stringify(path)}: it must start with / and contain no spaces or control characters`);
            }
            mutableRequest("set-path").path = path;
          });
        },
        authority: stringGetter("authority", (r) => r.authority),
        scheme: stringGetter("scheme", (r) => r.scheme),
        "client-address": stringGetter("client-address", (r) => r.client),
        "route-name": stringGetter("route-name", (r) => r.route),
        "cluster-name": stringGetter("cluster-name", (r) => r.cluster),
        "request-id": stringGetter("request-id", (r) => r.requestId),
        status: () => {
          enter("status");
          return h.scope && h.scope.response ? h.scope.response.status : 0;
        },
        "set-status": (status, ret) => {
          enter("set-status");
          unit(ret, "set-status", () => {
            if (status < 100 || status > 599) throw HostError.invalid(`invalid status ${status}: use 100-599`);
            mutableResponse("set-status").status = status;
          });
        },
        "get-header": (map, p, l, ret) => {
          enter("get-header");
          const name = str(p, l, "get-header name");
          h.check(ret, 12, 4, "get-header return area");
          const headers = headerMap(map);
          const v = headers ? first(headers, name) : null;
          if (v === null) {
            h.view().setUint8(ret, 0);
          } else {
            h.putPtrLen(ret + 4, h.writeString(v));
            h.view().setUint8(ret, 1);
          }
        },
        "get-header-all": (map, p, l, ret) => {
          enter("get-header-all");
          const name = str(p, l, "get-header-all name");
          h.check(ret, 8, 4, "get-header-all return area");
          const headers = headerMap(map);
          h.putPtrLen(ret, h.writeStringList(headers ? all(headers, name) : []));
        },
        "set-header": (map, np, nl, vp, vl, ret) => {
          enter("set-header");
          const name = str(np, nl, "set-header name");
          const value = str(vp, vl, "set-header value");
          unit(ret, "set-header", () => {
            checkWritable(name, value);
            const headers = mutableHeaders(map, "set-header");
            const n = lower(name);
            const kept = headers.filter(([k]) => lower(k) !== n);
            headers.length = 0;
            headers.push(...kept, [n, value]);
          });
        },
        "append-header": (map, np, nl, vp, vl, ret) => {
          enter("append-header");
          const name = str(np, nl, "append-header name");
          const value = str(vp, vl, "append-header value");
          unit(ret, "append-header", () => {
            checkWritable(name, value);
            mutableHeaders(map, "append-header").push([lower(name), value]);
          });
        },
        "remove-header": (map, np, nl, ret) => {
          enter("remove-header");
          const name = str(np, nl, "remove-header name");
          unit(ret, "remove-header", () => {
            checkWritable(name);
            const headers = mutableHeaders(map, "remove-header");
            const n = lower(name);
            const kept = headers.filter(([k]) => lower(k) !== n);
            headers.length = 0;
            headers.push(...kept);
          });
        },
        headers: (map, ret) => {
          enter("headers");
          h.check(ret, 8, 4, "headers return area");
          const headers = headerMap(map);
          h.putPtrLen(ret, h.writePairs(headers || []));
        },
        body: (kind, ret) => {
          enter("body");
          bodyKind(kind);
          result(ret, 16, 4, 4, "body", () => {
            const s = h.scope;
            if (s && s.body && s.body.kind === kind) return s.body.bytes;
            throw HostError.unavailable(
              `the ${kind ? "response" : "request"} body is only readable in its body phase (now ${s ? s.phase : "outside a phase"})`,
            );
          }, (at, bytes) => h.putPtrLen(at, h.writeBytes(bytes)));
        },
        "set-body": (kind, p, l, ret) => {
          enter("set-body");
          bodyKind(kind);
          const bytes = h.readBytes(p, l, "set-body bytes");
          unit(ret, "set-body", () => {
            const s = h.scope;
            if (s && s.body && s.body.kind === kind) {
              s.body.bytes = bytes;
              return;
            }
            throw HostError.unavailable(
              `the ${kind ? "response" : "request"} body can only change in its body phase (now ${s ? s.phase : "outside a phase"})`,
            );
          });
        },
      },
      "weir:filter/log@0.1.0": {
        write: (l, p, n) => {
          enter("log");
          host().log(level(l), str(p, n, "log message"));
        },
      },
      "weir:filter/clock@0.1.0": {
        "now-ms": () => {
          enter("now-ms");
          return s64(host().nowMsValue);
        },
        "monotonic-ns": () => {
          enter("monotonic-ns");
          return s64(host().monotonicNsValue);
        },
        "random-bytes": (len, ret) => {
          enter("random-bytes");
          h.check(ret, 8, 4, "random-bytes return area");
          h.putPtrLen(ret, h.writeBytes(host().randomBytes(len >>> 0)));
        },
      },
      "weir:filter/metrics@0.1.0": {
        "counter-add": (np, nl, lp, ll, delta, ret) => {
          enter("counter-add");
          const name = str(np, nl, "metric name");
          const labels = pairsParam(lp, ll, "metric labels");
          unit(ret, "counter-add", () =>
            host().recordMetric(name, labels, "counter", (m) => {
              m.value = m.value + u64(delta) > U64 ? U64 : m.value + u64(delta);
            }),
          );
        },
        "gauge-set": (np, nl, lp, ll, value, ret) => {
          enter("gauge-set");
          const name = str(np, nl, "metric name");
          const labels = pairsParam(lp, ll, "metric labels");
          unit(ret, "gauge-set", () =>
            host().recordMetric(name, labels, "gauge", (m) => {
              m.value = s64(value);
            }),
          );
        },
        "histogram-observe": (np, nl, lp, ll, value, ret) => {
          enter("histogram-observe");
          const name = str(np, nl, "metric name");
          const labels = pairsParam(lp, ll, "metric labels");
          unit(ret, "histogram-observe", () => {
            if (!Number.isFinite(value)) throw HostError.invalid(`histogram ${JSON.stringify(name)}: observation must be finite, got ${value}`);
            host().recordMetric(name, labels, "histogram", (m) => m.value.push(value));
          });
        },
      },
      "weir:filter/kv@0.1.0": {
        get: (nsp, nsl, kp, kl, ret) => {
          enter("kv.get");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          result(ret, 32, 8, 8, "kv.get", () => host().kvGet(ns, key), (at, entry) => {
            if (entry === null) {
              h.view().setUint8(at, 0);
              return;
            }
            h.putPtrLen(at + 8, h.writeBytes(entry.value));
            const dv = h.view();
            dv.setBigUint64(at + 16, entry.version, true);
            dv.setUint8(at, 1);
          });
        },
        set: (nsp, nsl, kp, kl, vp, vl, ttl, ret) => {
          enter("kv.set");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          const value = h.readBytes(vp, vl, "kv value");
          result(ret, 24, 8, 8, "kv.set", () => host().kvSet(ns, key, value, u64(ttl)), (at, v) => h.view().setBigUint64(at, v, true));
        },
        "compare-and-swap": (nsp, nsl, kp, kl, expected, vp, vl, ttl, ret) => {
          enter("kv.compare-and-swap");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          const value = h.readBytes(vp, vl, "kv value");
          result(ret, 24, 8, 8, "kv.compare-and-swap", () => host().kvCompareAndSwap(ns, key, u64(expected), value, u64(ttl)), (at, v) => {
            const dv = h.view();
            if (v === null) {
              dv.setUint8(at, 0);
            } else {
              dv.setUint8(at, 1);
              dv.setBigUint64(at + 8, v, true);
            }
          });
        },
        delete: (nsp, nsl, kp, kl, ret) => {
          enter("kv.delete");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          unit(ret, "kv.delete", () => host().kvDelete(ns, key));
        },
        increment: (nsp, nsl, kp, kl, delta, ttl, ret) => {
          enter("kv.increment");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          result(ret, 24, 8, 8, "kv.increment", () => host().kvIncrement(ns, key, s64(delta), u64(ttl)), (at, v) =>
            h.view().setBigInt64(at, v, true),
          );
        },
        "take-tokens": (nsp, nsl, kp, kl, rate, period, burst, cost, ret) => {
          enter("kv.take-tokens");
          const ns = str(nsp, nsl, "kv namespace");
          const key = str(kp, kl, "kv key");
          result(
            ret, 40, 8, 8, "kv.take-tokens",
            () => host().kvTakeTokens(ns, key, u64(rate), u64(period), u64(burst), u64(cost)),
            (at, r) => {
              const dv = h.view();
              dv.setUint8(at, r.allowed ? 1 : 0);
              dv.setBigUint64(at + 8, r.remaining, true);
              dv.setBigUint64(at + 16, r.retryAfterMs, true);
              dv.setBigUint64(at + 24, r.resetMs, true);
            },
          );
        },
      },
      "weir:filter/trace@0.1.0": {
        sampled: () => {
          enter("trace.sampled");
          try {
            return openSpan() ? 1 : 0;
          } catch (e) {
            if (e instanceof HostError) return 0;
            throw e;
          }
        },
        "set-attribute": (kp, kl, vp, vl, ret) => {
          enter("trace.set-attribute");
          const key = str(kp, kl, "span attribute key");
          const value = str(vp, vl, "span attribute value");
          unit(ret, "trace.set-attribute", () => {
            checkSpanKey(key);
            const span = openSpan();
            if (!span) return;
            const v = cutUtf8(value, SPAN.valueBytes);
            const kept = span.attributes.find(([k]) => k === key);
            if (kept) {
              kept[1] = v;
              return;
            }
            if (span.attributes.length >= SPAN.attributes) {
              throw HostError.invalid(`a request's span takes at most ${SPAN.attributes} attributes from filters`);
            }
            span.attributes.push([key, v]);
          });
        },
        "add-event": (np, nl, ap, al, ret) => {
          enter("trace.add-event");
          const name = str(np, nl, "span event name");
          const attributes = pairsParam(ap, al, "span event attributes");
          unit(ret, "trace.add-event", () => {
            checkSpanName("span event", name);
            if (attributes.length > SPAN.eventAttributes) {
              throw HostError.invalid(`a span event carries at most ${SPAN.eventAttributes} attributes`);
            }
            for (const [k] of attributes) checkSpanKey(k);
            const span = openSpan();
            if (!span) return;
            if (span.events.length >= SPAN.events) {
              throw HostError.invalid(`a request's span takes at most ${SPAN.events} events from filters`);
            }
            span.events.push({ name, atMs: host().nowMs, attributes: attributes.map(([k, v]) => [k, cutUtf8(v, SPAN.valueBytes)]) });
          });
        },
      },
      "weir:filter/crypto@0.1.0": {
        digest: (alg, p, l, ret) => {
          enter("crypto.digest");
          const data = h.readBytes(p, l, "digest data");
          h.check(ret, 8, 4, "crypto.digest return area");
          h.putPtrLen(ret, h.writeBytes(nodeCrypto.createHash(hashName(alg)).update(data).digest()));
        },
        "constant-time-equal": (ap, al, bp, bl) => {
          enter("crypto.constant-time-equal");
          const a = h.readBytes(ap, al, "a");
          const b = h.readBytes(bp, bl, "b");
          return a.length === b.length && nodeCrypto.timingSafeEqual(a, b) ? 1 : 0;
        },
        "[static]hmac-key.create": (alg, p, l, ret) => {
          enter("crypto.hmac-key.create");
          const secret = h.readBytes(p, l, "hmac secret");
          const hash = hashName(alg);
          result(ret, 12, 4, 4, "crypto.hmac-key.create", () => {
            keyMaterial("the HMAC secret", secret);
            return h.keepKey({ kind: "hmac", hash, secret: Buffer.from(secret) });
          }, (at, handle) => h.view().setUint32(at, handle, true));
        },
        "[method]hmac-key.sign": (k, p, l, ret) => {
          enter("crypto.hmac-key.sign");
          const key = h.key(k, "hmac");
          const msg = h.readBytes(p, l, "message");
          h.check(ret, 8, 4, "crypto.hmac-key.sign return area");
          h.putPtrLen(ret, h.writeBytes(nodeCrypto.createHmac(key.hash, key.secret).update(msg).digest()));
        },
        "[method]hmac-key.verify": (k, mp, ml, tp, tl) => {
          enter("crypto.hmac-key.verify");
          const key = h.key(k, "hmac");
          const tag = nodeCrypto.createHmac(key.hash, key.secret).update(h.readBytes(mp, ml, "message")).digest();
          const given = h.readBytes(tp, tl, "tag");
          return given.length === tag.length && nodeCrypto.timingSafeEqual(given, tag) ? 1 : 0;
        },
        "[resource-drop]hmac-key": (k) => h.dropKey(k, "hmac"),
        "[static]verifying-key.from-spki": (alg, p, l, ret) => {
          enter("crypto.verifying-key.from-spki");
          const der = h.readBytes(p, l, "spki");
          madeKey(ret, "from-spki", alg, () => {
            keyMaterial("the key", der);
            let key;
            try {
              key = nodeCrypto.createPublicKey({ key: Buffer.from(der), format: "der", type: "spki" });
            } catch {
              throw HostError.invalid("the key is not DER SubjectPublicKeyInfo");
            }
            return key;
          });
        },
        "[static]verifying-key.from-rsa-components": (alg, np, nl, ep, el, ret) => {
          enter("crypto.verifying-key.from-rsa-components");
          const n = h.readBytes(np, nl, "modulus");
          const e = h.readBytes(ep, el, "exponent");
          madeKey(ret, "from-rsa-components", alg, () => {
            if (sigFamily(alg) !== "rsa") throw HostError.invalid("the algorithm does not take an RSA key");
            keyMaterial("the modulus", n);
            keyMaterial("the exponent", e);
            const jwk = { kty: "RSA", n: b64url(stripZeros(n)), e: b64url(stripZeros(e)) };
            try {
              return nodeCrypto.createPublicKey({ key: jwk, format: "jwk" });
            } catch {
              throw HostError.invalid("not an RSA key");
            }
          }, stripZeros(e));
        },
        "[static]verifying-key.from-raw": (alg, p, l, ret) => {
          enter("crypto.verifying-key.from-raw");
          const raw = h.readBytes(p, l, "key");
          madeKey(ret, "from-raw", alg, () => {
            const family = sigFamily(alg);
            if (family === "rsa") throw HostError.invalid("an RSA key is made from SubjectPublicKeyInfo or its modulus and exponent");
            if (family === "ed25519") {
              if (raw.length !== 32) throw HostError.invalid("an Ed25519 key is 32 bytes");
              return nodeCrypto.createPublicKey({ key: { kty: "OKP", crv: "Ed25519", x: b64url(raw) }, format: "jwk" });
            }
            const size = family === "P-256" ? 32 : 48;
            if (raw.length !== 1 + 2 * size || raw[0] !== 4) {
              throw HostError.invalid(`needs an uncompressed point of ${1 + 2 * size} bytes (0x04 || x || y)`);
            }
            const jwk = { kty: "EC", crv: family, x: b64url(raw.subarray(1, 1 + size)), y: b64url(raw.subarray(1 + size)) };
            try {
              return nodeCrypto.createPublicKey({ key: jwk, format: "jwk" });
            } catch {
              throw HostError.invalid("the point is not on the curve");
            }
          });
        },
        "[method]verifying-key.verify": (k, mp, ml, sp, sl) => {
          enter("crypto.verifying-key.verify");
          const key = h.key(k, "verify");
          const msg = h.readBytes(mp, ml, "message");
          const sig = h.readBytes(sp, sl, "signature");
          return verifySignature(key, msg, sig) ? 1 : 0;
        },
        "[resource-drop]verifying-key": (k) => h.dropKey(k, "verify"),
      },
      "weir:filter/callout@0.1.0": {
        send: (tp, tl, mp, ml, pp, pl, hp, hl, bp, bl, timeout, ret) => {
          enter("callout.send");
          const target = str(tp, tl, "callout target");
          const method = str(mp, ml, "callout method");
          const path = str(pp, pl, "callout path");
          const headers = pairsParam(hp, hl, "callout headers");
          const body = h.readBytes(bp, bl, "callout body");
          result(ret, 24, 4, 4, "callout.send", () => host().calloutSend(target, method, path, headers, body, timeout >>> 0), (at, res) => {
            const hs = h.writePairs(res.headers);
            const bs = h.writeBytes(res.body);
            const dv = h.view();
            dv.setUint16(at, res.status, true);
            h.putPtrLen(at + 4, hs);
            h.putPtrLen(at + 12, bs);
          });
        },
      },
    };
  }

  // --- export calls ---

  guard(f) {
    if (this.poisoned) {
      throw new Error("weir filter harness: an earlier call trapped: the proxy would have discarded this instance; load a new Harness");
    }
    this.poisoned = true;
    const out = f();
    this.poisoned = false;
    return out;
  }

  configure(config) {
    const ret = this.guard(() => {
      const [p, l] = this.writeString(config);
      return this.x["weir:filter/filter@0.1.0#configure"](p, l) >>> 0;
    });
    this.check(ret, 12, 4, "configure return area");
    const dv = this.view();
    const tag = dv.getUint8(ret);
    let error = null;
    if (tag === 0) {
      const bits = dv.getUint8(ret + 4);
      if (bits & ~63) throw new AbiError(`configure: invalid phases flags ${bits}`);
      this.phases = bits;
    } else if (tag === 1) {
      error = this.readString(dv.getUint32(ret + 4, true), dv.getUint32(ret + 8, true), "config-error message");
    } else {
      throw new AbiError(`configure: invalid result discriminant ${tag}`);
    }
    this.guard(() => this.x["cabi_post_weir:filter/filter@0.1.0#configure"](ret));
    if (error !== null) throw new ConfigError(error);
  }

  /** Runs one phase export with `scope` installed; returns the decoded action (or undefined). */
  run(exportName, scope, args, returnsAction) {
    scope.deadline = this.host.timeBudgetMs === null ? null : performance.now() + this.host.timeBudgetMs;
    this.scope = scope;
    try {
      const ret = this.guard(() => this.x[`weir:filter/filter@0.1.0#${exportName}`](...args));
      this.calls++;
      if (!returnsAction) return undefined;
      return this.guard(() => {
        const action = this.readAction(ret >>> 0, exportName);
        this.x[`cabi_post_weir:filter/filter@0.1.0#${exportName}`](ret);
        return action;
      });
    } finally {
      this.scope = null;
    }
  }

  readAction(ret, what) {
    this.check(ret, 24, 4, `${what} return area`);
    const dv = this.view();
    const tag = dv.getUint8(ret);
    if (tag === 0) return CONTINUE;
    if (tag === 2) return new Action("buffer");
    if (tag !== 1) throw new AbiError(`${what}: invalid action discriminant ${tag}`);
    const status = dv.getUint16(ret + 4, true);
    const headers = this.readPairs(dv.getUint32(ret + 8, true), dv.getUint32(ret + 12, true), `${what} local-response headers`);
    const body = this.readBytes(dv.getUint32(ret + 16, true), dv.getUint32(ret + 20, true), `${what} local-response body`);
    return new Action("respond", new LocalResponse(status, headers, body));
  }

  declared(bit) {
    return (this.phases & bit) !== 0;
  }

  /** `on-request-headers` for `req`; afterwards `req` shows the filter's changes. */
  requestHeaders(req) {
    if (!this.declared(Phases.REQUEST_HEADERS)) return CONTINUE;
    return this.run("on-request-headers", { phase: "on-request-headers", request: req.head }, [req.contextId], true);
  }

  /**
   * `on-request-body` with one chunk of `req`'s body. Bytes held by an earlier `buffer` come
   * first; after `continue` (or `buffer` on the last chunk) the bytes, as the filter left them,
   * join `req.forwardedBody`.
   */
  requestBody(req, chunk, end) {
    chunk = toBytes(chunk);
    if (!this.declared(Phases.REQUEST_BODY)) {
      req.forwarded = Buffer.concat([req.forwarded, chunk]);
      return CONTINUE;
    }
    const body = { kind: 0, bytes: Buffer.concat([req.held, chunk]) };
    req.held = Buffer.alloc(0);
    const action = this.run("on-request-body", { phase: "on-request-body", request: req.head, body }, [req.contextId, end ? 1 : 0], true);
    settle(action, end, body.bytes, req);
    return action;
  }

  /**
   * `on-response-headers` for `req`'s response `res`; afterwards `res` shows the changes.
   * First the headers the request phases set on the response (`req.responseHeadersToSet`) are
   * put on `res`, each name replacing its values, whether or not the filter has this phase.
   */
  responseHeaders(req, res) {
    setResponseHeaders(res.head.headers, req.head.responseHeaders, true);
    req.head.responseHeaders = [];
    if (!this.declared(Phases.RESPONSE_HEADERS)) return CONTINUE;
    return this.run(
      "on-response-headers",
      { phase: "on-response-headers", request: req.head, response: res.head },
      [req.contextId],
      true,
    );
  }

  /** `on-response-body` with one chunk of `res`'s body; as `requestBody`. */
  responseBody(req, res, chunk, end) {
    chunk = toBytes(chunk);
    if (!this.declared(Phases.RESPONSE_BODY)) {
      res.forwarded = Buffer.concat([res.forwarded, chunk]);
      return CONTINUE;
    }
    const body = { kind: 1, bytes: Buffer.concat([res.held, chunk]) };
    res.held = Buffer.alloc(0);
    const action = this.run(
      "on-response-body",
      { phase: "on-response-body", request: req.head, response: res.head, body },
      [req.contextId, end ? 1 : 0],
      true,
    );
    settle(action, end, body.bytes, res);
    return action;
  }

  /** `on-log` for a finished exchange (heads readable, not writable). */
  log(req, res) {
    if (!this.declared(Phases.LOG)) return;
    this.run("on-log", { phase: "on-log", request: structuredClone(req.head), response: structuredClone(res.head) }, [req.contextId], false);
  }

  /** `context-done`: the request is over. The proxy calls it once per request, whatever the phases. */
  done(req) {
    this.run("context-done", { phase: "context-done", request: null, response: null }, [req.contextId], false);
  }

  /**
   * Drives a whole request through every phase, as the proxy does for a route with this one
   * filter: request headers, request body chunks (with buffering), the upstream, response
   * headers, response body chunks, log, context-done. A local response stops the request
   * phases and replaces the upstream's response; as in the proxy, its framing and hop-by-hop
   * headers (`content-length`, `connection`...) are dropped (the action a phase method returns
   * keeps them, as the filter built it).
   *
   * @param {TestRequest} req
   * @param {object} [options]
   * @param {string|Uint8Array|Array<string|Uint8Array>} [options.body] request body chunks
   *   (omit for a request without a body)
   * @param {TestResponse|((upstream: object) => TestResponse)} [options.response] the
   *   upstream's response (default: 200, no headers)
   * @param {string|Uint8Array|Array<string|Uint8Array>} [options.responseBody] its body chunks
   * @returns {{status: number, headers: [string, string][], body: Buffer, text: string,
   *   headerValue: (n: string) => string|null, respondedBy: string|null,
   *   upstream: {method: string, path: string, headers: [string, string][], body: Buffer}|null,
   *   request: TestRequest, response: TestResponse|null}}
   */
  exchange(req, options = {}) {
    const chunks = (b) => (b === undefined ? null : Array.isArray(b) ? b.map(toBytes) : [toBytes(b)]);
    const out = { respondedBy: null, upstream: null, request: req, response: null };
    const finish = (status, headers, body) => {
      Object.assign(out, {
        status,
        headers,
        body,
        text: body.toString("utf8"),
        headerValue: (n) => first(headers, n),
        headerValues: (n) => all(headers, n),
      });
      return out;
    };
    const local = (phase, action) => {
      out.respondedBy = phase;
      const r = action.response;
      const res = new TestResponse(r.status);
      // The proxy frames a local response itself: the filter's framing headers are dropped.
      res.head.headers = r.headers.filter(([n]) => !isFramingHeader(n)).map(([n, v]) => [lower(n), v]);
      // It keeps its own headers and gets the others the request phases set on the response.
      setResponseHeaders(res.head.headers, req.head.responseHeaders, false);
      req.head.responseHeaders = [];
      res.forwarded = r.body;
      this.log(req, res);
      this.done(req);
      return finish(r.status, res.head.headers, r.body);
    };
    {
      let a = this.requestHeaders(req);
      if (a.isRespond) return local("on-request-headers", a);
      const body = chunks(options.body);
      if (body) {
        const list = body.length ? body : [Buffer.alloc(0)];
        for (let i = 0; i < list.length; i++) {
          a = this.requestBody(req, list[i], i === list.length - 1);
          if (a.isRespond) return local("on-request-body", a);
        }
      }
      out.upstream = { method: req.head.method, path: req.head.path, headers: structuredClone(req.head.headers), body: req.forwarded };
      let res = options.response ?? new TestResponse(200);
      if (typeof res === "function") res = res(out.upstream);
      out.response = res;
      a = this.responseHeaders(req, res);
      if (a.isRespond) return local("on-response-headers", a);
      const rbody = chunks(options.responseBody);
      if (rbody) {
        const list = rbody.length ? rbody : [Buffer.alloc(0)];
        for (let i = 0; i < list.length; i++) {
          a = this.responseBody(req, res, list[i], i === list.length - 1);
          if (a.isRespond) return local("on-response-body", a);
        }
      }
      this.log(req, res);
      this.done(req);
      return finish(res.head.status, res.head.headers, res.forwarded);
    }
  }

  /** The module's linear memory size in bytes (to check that it stays flat). */
  memoryBytes() {
    return this.x.memory.buffer.byteLength;
  }

  // Emulator shortcuts, as the Rust harness derefs to its emulator.
  logs() {
    return this.host.logs();
  }
  takeLogs() {
    return this.host.takeLogs();
  }
  advance(ms) {
    this.host.advance(ms);
  }
  setGrants(g) {
    this.host.setGrants(g);
  }
  onCallout(f) {
    this.host.onCallout(f);
  }
  callouts() {
    return this.host.callouts();
  }
  counter(name, labels) {
    return this.host.counter(name, labels);
  }
  gauge(name, labels) {
    return this.host.gauge(name, labels);
  }
  histogram(name, labels) {
    return this.host.histogram(name, labels);
  }
  setTimeBudget(ms) {
    this.host.setTimeBudget(ms);
  }
}

function settle(action, end, bytes, msg) {
  if (action.kind === "buffer" && !end) msg.held = bytes;
  else if (action.kind === "continue" || action.kind === "buffer") msg.forwarded = Buffer.concat([msg.forwarded, bytes]);
  // A local response replaces the rest of this body.
}
