// The AssemblyScript build of Weir's test filter: the same config, modes and behaviour as the
// Rust testbed (tests/filters/testbed/src/lib.rs, whose doc table is the spec), so end-to-end
// tests can run one table of checks against both.
//
// | `mode` | phases | behaviour |
// |---|---|---|
// | `noop` | request-headers | returns `CONTINUE` |
// | `header-edit` | request-headers, response-headers | sets `x-testbed: <value>` and appends `x-chain: <tag>`, on the request and on the response (plus `x-testbed-build: v1`/`v2`) |
// | `respond` | request-headers | answers `status` (default 200) with `body` (default empty), `content-type: text/plain; charset=utf-8` |
// | `loop` | request-headers | never returns (the proxy's time budget must end it) |
// | `membomb` | request-headers | grows memory 1 MiB at a time, touching every page, until growing fails, then traps; `limit_mb` stops (and traps) earlier, for tests |
// | `panic` | request-headers | aborts (a trap) |
// | `callout` | request-headers | `GET path` (default `/`) to `target`, `timeout_ms` (default 1000); request header `x-callout` gets the status, or `kind: message` of the host error |
// | `body-upper` | request-body, response-body | buffers each body to its end and uppercases ASCII |
// | `state` | request-headers, response-headers | keeps the request path in the per-request context and returns it as response header `x-state-path`; answers 500 if a context ever arrives non-empty |
// | `kv-counter` | request-headers, response-headers | increments counter `key` (default `requests`) in KV namespace `ns`; `x-count` (request and response) gets the new value, or `kind: message` of the host error |
// | `host-calls` | request-headers | makes each call of `calls` (the shared table `tests/filters/host-calls.json`) and answers 200 with one line per call: `ok`, `ok <value>`, or the host error's kind |
// | `bad-config` | request-headers | rejects the config unless `"fail": false` (then as `noop`) |
//
// Unknown modes and unknown fields are config errors. A host error the mode does not report in a
// header becomes a `500` local response with body `testbed: <error>`.
//
// Build with `npm run build` (→ build/filter.wasm, `x-testbed-build: v1`) and
// `npm run build:v2` (→ build/filter-v2.wasm, `v2`: a different module for hot-swap tests).

import {
  Action,
  Body,
  ConfigReader,
  ConfigResult,
  Filter,
  Hash,
  Header,
  HmacKey,
  HostError,
  JsonValue,
  MAX_CRYPTO_KEYS,
  LocalResponse,
  Phases,
  Request,
  Response,
  Result,
  SignatureAlgorithm,
  VerifyingKey,
  callout,
  clock,
  crypto,
  debugQuote,
  kv,
  metrics,
  registerFilter,
  span,
} from "@weir/filter";

/** Which build this is (`x-testbed-build`): `npm run build:v2` defines TESTBED_V2. */
const BUILD: string = isDefined(TESTBED_V2) ? "v2" : "v1";

const MODES = [
  "noop",
  "header-edit",
  "respond",
  "loop",
  "membomb",
  "panic",
  "callout",
  "body-upper",
  "state",
  "kv-counter",
  "bad-config",
  "host-calls",
];

/** A string member of a JSON object, or "" when absent or not a string. */
function field(v: JsonValue, key: string): string {
  const f = v.get(key);
  if (f === null) return "";
  const s = f.asString();
  return s !== null ? s : "";
}

function parseF64(text: string): f64 {
  if (text == "inf") return Infinity;
  if (text == "-inf") return -Infinity;
  return parseFloat(text);
}

function utf8(s: string): Uint8Array {
  return Uint8Array.wrap(String.UTF8.encode(s));
}

function hexOf(b: Uint8Array): string {
  let s = "";
  for (let i = 0; i < b.length; i++) {
    const x = <i32>b[i];
    s += (x < 16 ? "0" : "") + x.toString(16);
  }
  return s;
}

function unhex(s: string): Uint8Array {
  const out = new Uint8Array(s.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = <u8>I32.parseInt(s.substr(i << 1, 2), 16);
  return out;
}

const SIGNATURES = [
  "rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512",
  "rsa-pss-sha256", "rsa-pss-sha384", "rsa-pss-sha512",
  "ecdsa-p256-sha256", "ecdsa-p384-sha384", "ed25519",
];

function okOr<T>(r: Result<T>, f: (v: T) => string): string {
  if (!r.ok) return (<HostError>r.error).kindName();
  return "ok " + f(r.value);
}

/** The `crypto.*` calls of the shared table. */
function cryptoCall(c: JsonValue): string {
  const call = field(c, "call");
  const alg = field(c, "alg");
  const value = utf8(field(c, "value"));
  const key = field(c, "key");
  const signature = unhex(field(c, "signature"));
  const hash = alg == "sha384" ? Hash.Sha384 : alg == "sha512" ? Hash.Sha512 : Hash.Sha256;
  if (call == "crypto.digest") return "ok " + hexOf(crypto.digest(hash, value));
  if (call == "crypto.equal") return "ok " + (crypto.constantTimeEqual(utf8(field(c, "name")), value) ? "true" : "false");
  if (call == "crypto.hmac" || call == "crypto.hmac-verify") {
    const r = HmacKey.create(hash, utf8(key));
    if (!r.ok) return (<HostError>r.error).kindName();
    const k = r.value;
    const out = call == "crypto.hmac" ? hexOf(k.sign(value)) : k.verify(value, signature) ? "true" : "false";
    k.close();
    return "ok " + out;
  }
  if (call == "crypto.verify") {
    const s = <SignatureAlgorithm>max(0, SIGNATURES.indexOf(alg));
    const form = field(c, "name");
    let r: Result<VerifyingKey>;
    if (form == "spki") r = VerifyingKey.fromSpki(s, unhex(key));
    else if (form == "rsa") {
      const at = key.indexOf(":");
      r = VerifyingKey.fromRsaComponents(s, unhex(key.substring(0, at)), unhex(key.substring(at + 1)));
    } else r = VerifyingKey.fromRaw(s, unhex(key));
    if (!r.ok) return (<HostError>r.error).kindName();
    const k = r.value;
    const ok = k.verify(value, signature);
    k.close();
    return "ok " + (ok ? "true" : "false");
  }
  if (call == "crypto.key-limit") {
    // Keys are made until one is refused, then all closed: how many the bound allowed.
    const keys = new Array<HmacKey>();
    while (keys.length <= MAX_CRYPTO_KEYS) {
      const r = HmacKey.create(hash, utf8("k"));
      if (!r.ok) break;
      keys.push(r.value);
    }
    for (let i = 0; i < keys.length; i++) keys[i].close();
    return "ok " + keys.length.toString();
  }
  return "unknown call " + debugQuote(call);
}

/**
 * One call of the shared host-call table (tests/filters/host-calls.json), run alike by the real
 * proxy and by each SDK's emulator: `ok`, `ok <value>`, or the host error's kind.
 */
function hostCall(c: JsonValue, req: Request): string {
  const call = field(c, "call");
  const name = field(c, "name");
  const value = field(c, "value");
  const ns = field(c, "namespace");
  const key = field(c, "key");
  const labels = new Array<Header>();
  const ls = c.get("labels");
  if (ls !== null) {
    for (let i = 0; i < ls.items.length; i++) {
      const pair = ls.items[i].items;
      const k = pair.length > 0 ? pair[0].asString() : null;
      const v = pair.length > 1 ? pair[1].asString() : null;
      labels.push(new Header(k !== null ? k : "", v !== null ? v : ""));
    }
  }
  let error: HostError | null = null;
  let out = "";
  if (call == "metrics.counter-add") {
    error = metrics.counterAdd(name, labels, value.length > 0 ? U64.parseInt(value) : 1);
  } else if (call == "metrics.gauge-set") {
    error = metrics.gaugeSet(name, labels, value.length > 0 ? I64.parseInt(value) : 0);
  } else if (call == "metrics.histogram-observe") {
    error = metrics.histogramObserve(name, labels, parseF64(value));
  } else if (call == "kv.set") {
    const r = kv.set(ns, key, utf8(value), 0);
    if (!r.ok) error = r.error;
  } else if (call == "kv.get") {
    const r = kv.get(ns, key);
    if (!r.ok) error = r.error;
    else {
      const e = r.value;
      out = e === null ? "none" : String.UTF8.decodeUnsafe(e.value.dataStart, <usize>e.value.length);
    }
  } else if (call == "kv.increment") {
    const r = kv.increment(ns, key, value.length > 0 ? I64.parseInt(value) : 1, 0);
    if (!r.ok) error = r.error;
    else out = r.value.toString();
  } else if (call == "http.set-header") {
    error = req.headers.set(name, value);
  } else if (call == "http.append-header") {
    error = req.headers.append(name, value);
  } else if (call == "http.remove-header") {
    error = req.headers.remove(name);
  } else if (call == "http.set-response-header") {
    error = req.responseHeaders.set(name, value);
  } else if (call == "http.append-response-header") {
    error = req.responseHeaders.append(name, value);
  } else if (call == "http.response-header") {
    const v = req.responseHeaders.get(name);
    out = v === null ? "none" : v;
  } else if (call == "trace.sampled") {
    out = span.sampled() ? "true" : "false";
  } else if (call == "trace.set-attribute") {
    error = span.setAttribute(name, value);
  } else if (call == "trace.add-event") {
    error = span.addEvent(name, labels);
  } else if (call.startsWith("crypto.")) {
    return cryptoCall(c);
  } else {
    return "unknown call " + debugQuote(call);
  }
  if (error !== null) return error.kindName();
  return out.length > 0 ? "ok " + out : "ok";
}

/** Per-request state. */
class Context {
  /** `state`: the path seen at request-headers. */
  path: string | null = null;
  /** `kv-counter`: what went into the request's `x-count`. */
  count: string | null = null;
}

/** A host error as a 500 local response: the testbed never hides one. */
function fail(e: HostError): Action {
  return LocalResponse.text(500, "testbed: " + e.toString()).action();
}

/** `CONTINUE`, or the host error as a 500. */
function orFail(e: HostError | null): Action {
  return e === null ? Action.CONTINUE : fail(e);
}

/** Whether `c` is a Unicode control character (general category Cc), as Rust's `is_control`. */
function isControl(c: i32): bool {
  return c < 0x20 || (c >= 0x7f && c <= 0x9f);
}

/** A host error as a header value: control characters, which a header cannot carry, become spaces. */
function errorValue(e: HostError): string {
  const s = e.toString();
  let out = "";
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    if (isControl(s.charCodeAt(i))) {
      out += s.substring(start, i) + " ";
      start = i + 1;
    }
  }
  return out + s.substring(start);
}

/** `body-upper`: hold the body until its end, then uppercase its ASCII letters. */
function upper(body: Body, end: bool): Action {
  if (!end) return Action.BUFFER;
  const r = body.bytes();
  if (!r.ok) return fail(r.error!);
  const bytes = r.value;
  // Raw loads and stores: no managed reference in the loop, so no per-byte GC bookkeeping.
  const first = bytes.dataStart;
  const last = first + <usize>bytes.length;
  for (let p = first; p < last; p++) {
    const b = load<u8>(p);
    if (b >= 0x61 && b <= 0x7a) store<u8>(p, b - 0x20);
  }
  return orFail(body.set(bytes));
}

/** Never returns: the clock import is opaque to the optimizer, so the loop stays. */
function spin(): void {
  while (true) clock.monotonicNs();
}

/**
 * Grows memory 1 MiB (16 pages) at a time and writes every byte, until growing fails or
 * `limitMb` MiB are held; both end in a trap (with the reason in the proxy log).
 */
function membomb(limitMb: i64): void {
  let held: i64 = 0;
  while (true) {
    if (limitMb >= 0 && held >= limitMb) abort("testbed: membomb reached limit_mb = " + held.toString());
    const before = memory.grow(16);
    if (before < 0) abort("testbed: membomb: allocation failed after " + held.toString() + " MiB");
    memory.fill(<usize>before << 16, 0xa5, 1 << 20);
    held++;
  }
}

class Testbed extends Filter<Context> {
  mode: string = "";
  value: string = "on";
  tag: string = "testbed";
  status: u16 = 200;
  body: string = "";
  limitMb: i64 = -1;
  target: string = "";
  path: string = "/";
  timeoutMs: u32 = 1000;
  ns: string = "";
  key: string = "requests";
  calls: Array<JsonValue> = new Array<JsonValue>();

  configure(config: string): ConfigResult {
    const c = ConfigReader.parse(config);
    const mode = c.requiredString("mode");
    if (c.ok && !MODES.includes(mode)) {
      c.fail("config: unknown variant `" + mode + "`, expected one of `" + MODES.join("`, `") + "`");
    }
    this.mode = mode;
    let phases = Phases.REQUEST_HEADERS;
    let fails = false;
    if (mode == "header-edit") {
      this.value = c.string("value", "on");
      this.tag = c.string("tag", "testbed");
      phases = Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS;
    } else if (mode == "respond") {
      this.status = <u16>c.u64("status", 200, 0, 65535);
      this.body = c.string("body", "");
    } else if (mode == "membomb") {
      this.limitMb = c.has("limit_mb") ? <i64>c.u64("limit_mb", 0, 0, <u64>i64.MAX_VALUE) : -1;
    } else if (mode == "callout") {
      this.target = c.requiredString("target");
      this.path = c.string("path", "/");
      const t = c.u64("timeout_ms", 1000);
      this.timeoutMs = t > <u64>u32.MAX_VALUE ? u32.MAX_VALUE : <u32>t;
    } else if (mode == "body-upper") {
      phases = Phases.REQUEST_BODY | Phases.RESPONSE_BODY;
    } else if (mode == "state") {
      phases = Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS;
    } else if (mode == "kv-counter") {
      this.ns = c.requiredString("ns");
      this.key = c.string("key", "requests");
      phases = Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS;
    } else if (mode == "bad-config") {
      fails = c.bool("fail", true);
    } else if (mode == "host-calls") {
      const calls = c.value("calls");
      if (calls === null || !calls.isArray()) c.fail("config: missing field `calls`");
      else this.calls = calls.items;
    }
    const error = c.finish();
    if (error !== null) return ConfigResult.reject(error);

    if (fails) {
      return ConfigResult.reject('testbed: bad-config mode rejects its config (set "fail": false to accept)');
    }
    if (mode == "respond" && (this.status < 200 || this.status > 599)) {
      return ConfigResult.reject("respond: status must be 200-599, got " + this.status.toString());
    }
    if (mode == "callout") {
      if (this.target.length == 0) return ConfigResult.reject("callout: target must not be empty");
      if (!this.path.startsWith("/")) {
        return ConfigResult.reject("callout: path must start with /, got " + debugQuote(this.path));
      }
    }
    if (mode == "kv-counter" && this.ns.length == 0) return ConfigResult.reject("kv-counter: ns must not be empty");
    // Only state and kv-counter keep something per request.
    if (mode != "state" && mode != "kv-counter") phases |= Phases.STATELESS;
    return ConfigResult.accept(phases);
  }

  onRequestHeaders(req: Request, ctx: Context): Action {
    const mode = this.mode;
    if (mode == "header-edit") {
      let e = req.headers.set("x-testbed", this.value);
      if (e === null) e = req.headers.append("x-chain", this.tag);
      if (e === null) e = req.headers.set("x-testbed-build", BUILD);
      return orFail(e);
    }
    if (mode == "respond") return LocalResponse.text(this.status, this.body).action();
    if (mode == "host-calls") {
      const lines = new Array<string>();
      for (let i = 0; i < this.calls.length; i++) lines.push(hostCall(this.calls[i], req));
      return LocalResponse.text(200, lines.join("\n")).action();
    }
    if (mode == "loop") spin();
    if (mode == "membomb") membomb(this.limitMb);
    if (mode == "panic") abort("testbed: panic mode");
    if (mode == "callout") {
      const r = callout.send(this.target, "GET", this.path, [], new Uint8Array(0), this.timeoutMs);
      const outcome = r.ok ? r.value.status.toString() : errorValue(r.error!);
      return orFail(req.headers.set("x-callout", outcome));
    }
    if (mode == "state") {
      const old = ctx.path;
      if (old !== null) return LocalResponse.text(500, "testbed: context reused (held " + old + ")").action();
      ctx.path = req.path();
      return Action.CONTINUE;
    }
    if (mode == "kv-counter") {
      const r = kv.increment(this.ns, this.key, 1, 0);
      const count = r.ok ? r.value.toString() : errorValue(r.error!);
      const action = orFail(req.headers.set("x-count", count));
      ctx.count = count;
      return action;
    }
    return Action.CONTINUE;
  }

  onRequestBody(body: Body, end: bool, ctx: Context): Action {
    return this.mode == "body-upper" ? upper(body, end) : Action.CONTINUE;
  }

  onResponseHeaders(res: Response, ctx: Context): Action {
    const mode = this.mode;
    if (mode == "header-edit") {
      let e = res.headers.set("x-testbed", this.value);
      if (e === null) e = res.headers.append("x-chain", this.tag);
      if (e === null) e = res.headers.set("x-testbed-build", BUILD);
      return orFail(e);
    }
    if (mode == "state") {
      const path = ctx.path;
      return orFail(res.headers.set("x-state-path", path !== null ? path : "<none>"));
    }
    if (mode == "kv-counter") {
      const count = ctx.count;
      return count !== null ? orFail(res.headers.set("x-count", count)) : Action.CONTINUE;
    }
    return Action.CONTINUE;
  }

  onResponseBody(body: Body, end: bool, ctx: Context): Action {
    return this.mode == "body-upper" ? upper(body, end) : Action.CONTINUE;
  }
}

registerFilter(new Testbed());
