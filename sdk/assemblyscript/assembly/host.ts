// Host capabilities: log, clock, metrics, kv, callout, span (WIT `trace`: AssemblyScript has a
// global `trace` function, so the class is named for what it acts on).
//
// Each is a class of static functions (`kv.increment(...)`, `log.info(...)`): AssemblyScript
// namespaces cannot have a member named `delete`, classes can.

import {
  IMPORT_RET,
  callout_send,
  clock_monotonic_ns,
  clock_now_ms,
  clock_random_bytes,
  freePairs,
  kv_compare_and_swap,
  kv_delete,
  kv_get,
  kv_increment,
  kv_set,
  kv_take_tokens,
  liftBytesAt,
  liftStringAt,
  log_write,
  lowerPairs,
  metrics_counter_add,
  metrics_gauge_set,
  metrics_histogram_observe,
  trace_add_event,
  trace_sampled,
  trace_set_attribute,
  releaseHostMemory,
  strLen,
  strPtr,
} from "./abi";
import { Header } from "./action";
import { HostError, Result, liftHostError, liftUnitResult } from "./errors";

/** Log levels, most verbose first. */
export enum Level {
  Trace = 0,
  Debug = 1,
  Info = 2,
  Warn = 3,
  Error = 4,
}

/** Logging into the proxy's log, tagged with the filter name and request id. */
export class log {
  /** Writes one line at `level`. */
  static write(level: Level, message: string): void {
    log_write(<i32>level, strPtr(message), strLen(message));
  }
  /** Writes one line at `Level.Trace`. */
  static trace(message: string): void {
    log.write(Level.Trace, message);
  }
  /** Writes one line at `Level.Debug`. */
  static debug(message: string): void {
    log.write(Level.Debug, message);
  }
  /** Writes one line at `Level.Info`. */
  static info(message: string): void {
    log.write(Level.Info, message);
  }
  /** Writes one line at `Level.Warn`. */
  static warn(message: string): void {
    log.write(Level.Warn, message);
  }
  /** Writes one line at `Level.Error`. */
  static error(message: string): void {
    log.write(Level.Error, message);
  }
}

/** Time and randomness. */
export class clock {
  /** Wall clock: milliseconds since the UNIX epoch. */
  static nowMs(): u64 {
    return <u64>clock_now_ms();
  }
  /** A monotonic clock in nanoseconds (for measuring durations). */
  static monotonicNs(): u64 {
    return <u64>clock_monotonic_ns();
  }
  /** `len` random bytes from the operating system's CSPRNG (through the host). */
  static randomBytes(len: u32): Uint8Array {
    clock_random_bytes(len, IMPORT_RET);
    const bytes = liftBytesAt(IMPORT_RET);
    releaseHostMemory();
    return bytes;
  }
}

/** Splits (name, value) pairs for lowering. */
function lowerLabels(labels: Array<Header>): usize {
  const names = new Array<string>(labels.length);
  const values = new Array<string>(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const l = unchecked(labels[i]);
    unchecked((names[i] = l.name));
    unchecked((values[i] = l.value));
  }
  return lowerPairs(names, values);
}

/**
 * Metrics, exported on the proxy's `/metrics` with a `filter` label. Names must match
 * `[a-z_][a-z0-9_]*`; labels are (name, value) pairs (`new Header("route", r)`). A bad name is
 * an `invalid` error.
 */
export class metrics {
  /** Adds `delta` to a counter. */
  static counterAdd(name: string, labels: Array<Header>, delta: u64): HostError | null {
    const lp = lowerLabels(labels);
    metrics_counter_add(strPtr(name), strLen(name), lp, <usize>labels.length, <i64>delta, IMPORT_RET);
    freePairs(lp);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
  /** Sets a gauge. */
  static gaugeSet(name: string, labels: Array<Header>, value: i64): HostError | null {
    const lp = lowerLabels(labels);
    metrics_gauge_set(strPtr(name), strLen(name), lp, <usize>labels.length, value, IMPORT_RET);
    freePairs(lp);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
  /** Records a histogram observation, in seconds. */
  static histogramObserve(name: string, labels: Array<Header>, seconds: f64): HostError | null {
    const lp = lowerLabels(labels);
    metrics_histogram_observe(strPtr(name), strLen(name), lp, <usize>labels.length, seconds, IMPORT_RET);
    freePairs(lp);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
}

/**
 * The request's trace span (WIT `trace`): what a filter adds appears on the server span Weir
 * exports for the request over OTLP (`tracing.otlp` in the proxy's config).
 *
 * Only sampled requests are exported; for the others the calls do nothing and cost next to
 * nothing, and `span.sampled()` lets a filter skip building what it would add. Names are 1–128
 * bytes of `[A-Za-z0-9._-]`; attribute keys under the proxy's prefixes (`http.`, `url.`,
 * `server.`, `client.`, `network.`, `error.`, `weir.`) are `invalid`. Values are cut at 512
 * bytes. A request's span takes at most 32 attributes and 32 events (of at most 16 attributes
 * each) from all its filters together. In `onLog` the span has been exported: `unavailable`.
 */
export class span {
  /** Whether the current request's trace is exported (and still open to filters). */
  static sampled(): bool {
    return trace_sampled() != 0;
  }
  /** Sets an attribute of the request's span; a key set again gets the new value. */
  static setAttribute(key: string, value: string): HostError | null {
    trace_set_attribute(strPtr(key), strLen(key), strPtr(value), strLen(value), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
  /**
   * Adds an event, timestamped now, with attributes, to the request's span. The proxy adds the
   * filter's name as the event's `weir.filter` attribute.
   */
  static addEvent(name: string, attributes: Array<Header> = []): HostError | null {
    const ap = lowerLabels(attributes);
    trace_add_event(strPtr(name), strLen(name), ap, <usize>attributes.length, IMPORT_RET);
    freePairs(ap);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
}

/** A stored KV value and its version (never 0). */
export class KvEntry {
  constructor(
    public readonly value: Uint8Array,
    public readonly version: u64,
  ) {}
}

/** The outcome of `kv.takeTokens`. */
export class BucketResult {
  constructor(
    /** Whether the tokens were taken. */
    public readonly allowed: bool,
    /** Tokens left after the call. */
    public readonly remaining: u64,
    /** When not allowed: milliseconds until enough tokens are back (0 when allowed). */
    public readonly retryAfterMs: u64,
    /** Milliseconds until the bucket is full again. */
    public readonly resetMs: u64,
  ) {}
}

/** Reads a `result<u64-like, host-error>` whose payload is at +8. */
function liftU64Result(): Result<u64> {
  let r: Result<u64>;
  if (load<u8>(IMPORT_RET) == 0) r = Result.success<u64>(load<u64>(IMPORT_RET, 8));
  else r = Result.failure<u64>(liftHostError(IMPORT_RET + 8));
  releaseHostMemory();
  return r;
}

/**
 * Shared state across requests, instances and filters, by namespace. Every namespace must be
 * granted in the filter's config (`grants.kv`); another one is a `denied` error. TTLs are in
 * milliseconds, 0 meaning no expiry.
 */
export class kv {
  /** Reads a key: the entry, or `null` if absent. */
  static get(namespace: string, key: string): Result<KvEntry | null> {
    kv_get(strPtr(namespace), strLen(namespace), strPtr(key), strLen(key), IMPORT_RET);
    let r: Result<KvEntry | null>;
    if (load<u8>(IMPORT_RET) == 0) {
      let entry: KvEntry | null = null;
      if (load<u8>(IMPORT_RET, 8) != 0) {
        entry = new KvEntry(liftBytesAt(IMPORT_RET + 16), load<u64>(IMPORT_RET, 24));
      }
      r = Result.success<KvEntry | null>(entry);
    } else {
      r = Result.failure<KvEntry | null>(liftHostError(IMPORT_RET + 8));
    }
    releaseHostMemory();
    return r;
  }

  /** Writes a key, expiring after `ttlMs` (0: never). Returns the new version. */
  static set(namespace: string, key: string, value: Uint8Array, ttlMs: u64 = 0): Result<u64> {
    kv_set(
      strPtr(namespace), strLen(namespace), strPtr(key), strLen(key),
      value.dataStart, <usize>value.byteLength, <i64>ttlMs, IMPORT_RET,
    );
    return liftU64Result();
  }

  /**
   * Writes only if the key's current version is `expected` (0: the key must not exist).
   * Returns the new version, or **0 if the version did not match** (read again and retry).
   */
  static compareAndSwap(namespace: string, key: string, expected: u64, value: Uint8Array, ttlMs: u64 = 0): Result<u64> {
    kv_compare_and_swap(
      strPtr(namespace), strLen(namespace), strPtr(key), strLen(key),
      <i64>expected, value.dataStart, <usize>value.byteLength, <i64>ttlMs, IMPORT_RET,
    );
    let r: Result<u64>;
    if (load<u8>(IMPORT_RET) == 0) {
      r = Result.success<u64>(load<u8>(IMPORT_RET, 8) != 0 ? load<u64>(IMPORT_RET, 16) : 0);
    } else {
      r = Result.failure<u64>(liftHostError(IMPORT_RET + 8));
    }
    releaseHostMemory();
    return r;
  }

  /** Deletes a key (deleting a missing key is not an error). */
  static delete(namespace: string, key: string): HostError | null {
    kv_delete(strPtr(namespace), strLen(namespace), strPtr(key), strLen(key), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }

  /**
   * Adds `delta` to an atomic counter (created at 0) and returns the new value. With `ttlMs` > 0
   * the counter resets that long after it was created (a fixed window).
   */
  static increment(namespace: string, key: string, delta: i64, ttlMs: u64 = 0): Result<i64> {
    kv_increment(strPtr(namespace), strLen(namespace), strPtr(key), strLen(key), delta, <i64>ttlMs, IMPORT_RET);
    let r: Result<i64>;
    if (load<u8>(IMPORT_RET) == 0) r = Result.success<i64>(load<i64>(IMPORT_RET, 8));
    else r = Result.failure<i64>(liftHostError(IMPORT_RET + 8));
    releaseHostMemory();
    return r;
  }

  /**
   * Takes `cost` tokens from the bucket `key` (capacity `burst`, refilled at `rate` tokens per
   * `periodMs`), atomically: the rate-limit primitive. A new bucket starts full.
   */
  static takeTokens(namespace: string, key: string, rate: u64, periodMs: u64, burst: u64, cost: u64 = 1): Result<BucketResult> {
    kv_take_tokens(
      strPtr(namespace), strLen(namespace), strPtr(key), strLen(key),
      <i64>rate, <i64>periodMs, <i64>burst, <i64>cost, IMPORT_RET,
    );
    let r: Result<BucketResult>;
    if (load<u8>(IMPORT_RET) == 0) {
      r = Result.success<BucketResult>(
        new BucketResult(
          load<u8>(IMPORT_RET, 8) != 0,
          load<u64>(IMPORT_RET, 16),
          load<u64>(IMPORT_RET, 24),
          load<u64>(IMPORT_RET, 32),
        ),
      );
    } else {
      r = Result.failure<BucketResult>(liftHostError(IMPORT_RET + 8));
    }
    releaseHostMemory();
    return r;
  }
}

/** An HTTP response from a callout. */
export class CalloutResponse {
  constructor(
    /** HTTP status. */
    public readonly status: u16,
    /** Headers, in order. */
    public readonly headers: Array<Header>,
    /** The whole body. */
    public readonly body: Uint8Array,
  ) {}

  /** The first value of a header (case-insensitive name), or `null`. */
  header(name: string): string | null {
    const wanted = name.toLowerCase();
    for (let i = 0; i < this.headers.length; i++) {
      const h = unchecked(this.headers[i]);
      if (h.name.toLowerCase() == wanted) return h.value;
    }
    return null;
  }
}

/**
 * HTTP callouts: the filter waits for the answer; the proxy keeps serving other requests.
 * Targets must be granted in the filter's config (`grants.callouts`: cluster names or
 * `host:port`); another target is a `denied` error.
 */
export class callout {
  /**
   * Sends a request to `target` and waits for the whole response, at most `timeoutMs`. Connect
   * errors and timeouts are `failed`; a response with any status, 5xx included, is a success.
   */
  static send(
    target: string,
    method: string,
    path: string,
    headers: Array<Header>,
    body: Uint8Array,
    timeoutMs: u32,
  ): Result<CalloutResponse> {
    const hp = lowerLabels(headers);
    callout_send(
      strPtr(target), strLen(target), strPtr(method), strLen(method), strPtr(path), strLen(path),
      hp, <usize>headers.length, body.dataStart, <usize>body.byteLength, timeoutMs, IMPORT_RET,
    );
    freePairs(hp);
    let r: Result<CalloutResponse>;
    if (load<u8>(IMPORT_RET) == 0) {
      const status = load<u16>(IMPORT_RET, 4);
      const hptr = <usize>load<u32>(IMPORT_RET, 8);
      const hlen = <i32>load<u32>(IMPORT_RET, 12);
      const list = new Array<Header>(hlen);
      for (let i = 0; i < hlen; i++) {
        const at = hptr + (<usize>i << 4);
        unchecked((list[i] = new Header(liftStringAt(at), liftStringAt(at + 8))));
      }
      r = Result.success<CalloutResponse>(new CalloutResponse(status, list, liftBytesAt(IMPORT_RET + 16)));
    } else {
      r = Result.failure<CalloutResponse>(liftHostError(IMPORT_RET + 4));
    }
    releaseHostMemory();
    return r;
  }
}
