// The canonical-ABI glue: the host's imports as core wasm functions, `cabi_realloc`, and the
// helpers that lower AssemblyScript values into host calls and lift results out of memory.
//
// Strings are UTF-16 on both sides (the module carries the `weir:string-encoding` = `utf16`
// custom section, added by the SDK's transform): a string passes as (pointer, length in code
// units), and the host writes returned strings as UTF-16 into memory it gets from
// `cabi_realloc`. See sdk/ABI.md.
//
// Nothing here is part of the public API.

// ---------------------------------------------------------------------------------------------
// Imports: one declaration per WIT function, flattened as the canonical ABI says. Results that
// flatten to more than one value come back through a trailing return pointer.

// weir:filter/http
@external("weir:filter/http@0.1.0", "method")
export declare function http_method(ret: usize): void;
@external("weir:filter/http@0.1.0", "path")
export declare function http_path(ret: usize): void;
@external("weir:filter/http@0.1.0", "set-path")
export declare function http_set_path(ptr: usize, len: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "authority")
export declare function http_authority(ret: usize): void;
@external("weir:filter/http@0.1.0", "scheme")
export declare function http_scheme(ret: usize): void;
@external("weir:filter/http@0.1.0", "client-address")
export declare function http_client_address(ret: usize): void;
@external("weir:filter/http@0.1.0", "route-name")
export declare function http_route_name(ret: usize): void;
@external("weir:filter/http@0.1.0", "cluster-name")
export declare function http_cluster_name(ret: usize): void;
@external("weir:filter/http@0.1.0", "request-id")
export declare function http_request_id(ret: usize): void;
@external("weir:filter/http@0.1.0", "status")
export declare function http_status(): i32;
@external("weir:filter/http@0.1.0", "set-status")
export declare function http_set_status(status: i32, ret: usize): void;
@external("weir:filter/http@0.1.0", "get-header")
export declare function http_get_header(map: i32, ptr: usize, len: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "get-header-all")
export declare function http_get_header_all(map: i32, ptr: usize, len: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "set-header")
export declare function http_set_header(map: i32, np: usize, nl: usize, vp: usize, vl: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "append-header")
export declare function http_append_header(map: i32, np: usize, nl: usize, vp: usize, vl: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "remove-header")
export declare function http_remove_header(map: i32, np: usize, nl: usize, ret: usize): void;
@external("weir:filter/http@0.1.0", "headers")
export declare function http_headers(map: i32, ret: usize): void;
@external("weir:filter/http@0.1.0", "body")
export declare function http_body(kind: i32, ret: usize): void;
@external("weir:filter/http@0.1.0", "set-body")
export declare function http_set_body(kind: i32, ptr: usize, len: usize, ret: usize): void;

// weir:filter/log
@external("weir:filter/log@0.1.0", "write")
export declare function log_write(level: i32, ptr: usize, len: usize): void;

// weir:filter/clock
@external("weir:filter/clock@0.1.0", "now-ms")
export declare function clock_now_ms(): i64;
@external("weir:filter/clock@0.1.0", "monotonic-ns")
export declare function clock_monotonic_ns(): i64;
@external("weir:filter/clock@0.1.0", "random-bytes")
export declare function clock_random_bytes(len: u32, ret: usize): void;

// weir:filter/metrics
@external("weir:filter/metrics@0.1.0", "counter-add")
export declare function metrics_counter_add(np: usize, nl: usize, lp: usize, ll: usize, delta: i64, ret: usize): void;
@external("weir:filter/metrics@0.1.0", "gauge-set")
export declare function metrics_gauge_set(np: usize, nl: usize, lp: usize, ll: usize, value: i64, ret: usize): void;
@external("weir:filter/metrics@0.1.0", "histogram-observe")
export declare function metrics_histogram_observe(np: usize, nl: usize, lp: usize, ll: usize, value: f64, ret: usize): void;

// weir:filter/trace
@external("weir:filter/trace@0.1.0", "sampled")
export declare function trace_sampled(): i32;
@external("weir:filter/trace@0.1.0", "set-attribute")
export declare function trace_set_attribute(kp: usize, kl: usize, vp: usize, vl: usize, ret: usize): void;
@external("weir:filter/trace@0.1.0", "add-event")
export declare function trace_add_event(np: usize, nl: usize, ap: usize, al: usize, ret: usize): void;

// weir:filter/crypto (resources are i32 handles; see sdk/ABI.md)
@external("weir:filter/crypto@0.1.0", "digest")
export declare function crypto_digest(alg: i32, p: usize, l: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "constant-time-equal")
export declare function crypto_constant_time_equal(ap: usize, al: usize, bp: usize, bl: usize): i32;
@external("weir:filter/crypto@0.1.0", "[static]hmac-key.create")
export declare function crypto_hmac_create(alg: i32, p: usize, l: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "[method]hmac-key.sign")
export declare function crypto_hmac_sign(key: i32, p: usize, l: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "[method]hmac-key.verify")
export declare function crypto_hmac_verify(key: i32, mp: usize, ml: usize, tp: usize, tl: usize): i32;
@external("weir:filter/crypto@0.1.0", "[resource-drop]hmac-key")
export declare function crypto_hmac_drop(key: i32): void;
@external("weir:filter/crypto@0.1.0", "[static]verifying-key.from-spki")
export declare function crypto_key_from_spki(alg: i32, p: usize, l: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "[static]verifying-key.from-rsa-components")
export declare function crypto_key_from_rsa(alg: i32, np: usize, nl: usize, ep: usize, el: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "[static]verifying-key.from-raw")
export declare function crypto_key_from_raw(alg: i32, p: usize, l: usize, ret: usize): void;
@external("weir:filter/crypto@0.1.0", "[method]verifying-key.verify")
export declare function crypto_key_verify(key: i32, mp: usize, ml: usize, sp: usize, sl: usize): i32;
@external("weir:filter/crypto@0.1.0", "[resource-drop]verifying-key")
export declare function crypto_key_drop(key: i32): void;

// weir:filter/kv
@external("weir:filter/kv@0.1.0", "get")
export declare function kv_get(nsp: usize, nsl: usize, kp: usize, kl: usize, ret: usize): void;
@external("weir:filter/kv@0.1.0", "set")
export declare function kv_set(nsp: usize, nsl: usize, kp: usize, kl: usize, vp: usize, vl: usize, ttl: i64, ret: usize): void;
@external("weir:filter/kv@0.1.0", "compare-and-swap")
export declare function kv_compare_and_swap(nsp: usize, nsl: usize, kp: usize, kl: usize, expected: i64, vp: usize, vl: usize, ttl: i64, ret: usize): void;
@external("weir:filter/kv@0.1.0", "delete")
export declare function kv_delete(nsp: usize, nsl: usize, kp: usize, kl: usize, ret: usize): void;
@external("weir:filter/kv@0.1.0", "increment")
export declare function kv_increment(nsp: usize, nsl: usize, kp: usize, kl: usize, delta: i64, ttl: i64, ret: usize): void;
@external("weir:filter/kv@0.1.0", "take-tokens")
export declare function kv_take_tokens(nsp: usize, nsl: usize, kp: usize, kl: usize, rate: i64, period: i64, burst: i64, cost: i64, ret: usize): void;

// weir:filter/callout
@external("weir:filter/callout@0.1.0", "send")
export declare function callout_send(
  tp: usize, tl: usize, mp: usize, ml: usize, pp: usize, pl: usize,
  hp: usize, hl: usize, bp: usize, bl: usize, timeout: u32, ret: usize,
): void;

// ---------------------------------------------------------------------------------------------
// Return areas. Host calls never nest, so one area serves every import; it is sized and aligned
// for the largest result (`result<bucket-result, host-error>`: 40 bytes, align 8).

export const IMPORT_RET: usize = memory.data(48, 8);

// ---------------------------------------------------------------------------------------------
// cabi_realloc: the memory the host writes strings and lists into.
//
// It is unmanaged memory from the runtime's allocator (`heap.alloc`): it never runs the garbage
// collector or any other code, and traps explicitly when it cannot allocate. Every block handed
// out is recorded; the SDK copies a host call's results into managed objects and then frees
// them all (`releaseHostMemory`), so nothing the host wrote outlives the call.

const MAX_ALLOC: usize = (1 << 30) - 64;

let pendingPtr: usize = 0; // unmanaged array of block pointers
let pendingLen: usize = 0;
let pendingCap: usize = 0;

function track(ptr: usize): void {
  if (pendingLen == pendingCap) {
    const cap = pendingCap ? pendingCap << 1 : 16;
    pendingPtr = pendingPtr ? heap.realloc(pendingPtr, cap << 2) : heap.alloc(cap << 2);
    pendingCap = cap;
  }
  store<usize>(pendingPtr + (pendingLen << 2), ptr);
  pendingLen++;
}

function retrack(oldPtr: usize, newPtr: usize): void {
  for (let i: usize = 0; i < pendingLen; i++) {
    const at = pendingPtr + (i << 2);
    if (load<usize>(at) == oldPtr) {
      store<usize>(at, newPtr);
      return;
    }
  }
  // The host may only reallocate what it got from us.
  unreachable();
}

/** `cabi_realloc(old_ptr, old_size, align, new_size)`, exported under that name. */
export function cabi_realloc(oldPtr: usize, oldSize: usize, align: usize, newSize: usize): usize {
  // The allocator aligns every block to 16 bytes; the WIT never asks for more than 8.
  if (align > 16 || newSize > MAX_ALLOC) unreachable();
  if (oldPtr == 0) {
    const ptr = heap.alloc(newSize);
    track(ptr);
    return ptr;
  }
  const ptr = heap.realloc(oldPtr, newSize);
  retrack(oldPtr, ptr);
  return ptr;
}

/** Frees every block the host obtained through `cabi_realloc` since the last release. */
export function releaseHostMemory(): void {
  for (let i: usize = 0; i < pendingLen; i++) {
    heap.free(load<usize>(pendingPtr + (i << 2)));
  }
  pendingLen = 0;
}

/** How many host-written blocks are alive (0 between calls; for tests of the SDK itself). */
export function pendingHostBlocks(): i32 {
  return <i32>pendingLen;
}

// ---------------------------------------------------------------------------------------------
// Lifting: memory → AssemblyScript values (copies; the caller releases host memory afterwards).

// @ts-ignore: decorator
@inline export function strPtr(s: string): usize {
  return changetype<usize>(s);
}

// @ts-ignore: decorator
@inline export function strLen(s: string): usize {
  return <usize>s.length;
}

// Bytes copied out of host memory since the last full collection (see `collectIfBusy`).
let lifted: usize = 0;

/** Bytes that big (or more) lifted from the host make the next export end in a full collection. */
const COLLECT_AFTER: usize = 256 << 10;

/**
 * Runs a full garbage collection if much host data came in since the last one. The incremental
 * collector would reclaim it too, but only after a whole cycle; collecting right after a phase
 * that handled a large body keeps the instance's memory close to one request's working set
 * (memory is capped per instance, and the allocator grows memory by doubling).
 */
export function collectIfBusy(): void {
  if (lifted >= COLLECT_AFTER) {
    lifted = 0;
    __collect();
  }
}

/** A UTF-16 string of `len` code units at `ptr`. */
export function liftString(ptr: usize, len: usize): string {
  if (len == 0) return "";
  lifted += len << 1;
  return String.UTF16.decodeUnsafe(ptr, len << 1);
}

/** The `string` stored at `at` as (ptr, len). */
export function liftStringAt(at: usize): string {
  return liftString(load<u32>(at), load<u32>(at, 4));
}

/** The `list<u8>` stored at `at` as (ptr, len). */
export function liftBytesAt(at: usize): Uint8Array {
  const ptr = <usize>load<u32>(at);
  const len = <i32>load<u32>(at, 4);
  if (len == 0) return new Uint8Array(0);
  // A buffer without the zero fill `new Uint8Array(len)` would do: it is overwritten at once.
  const buf = changetype<ArrayBuffer>(__new(<usize>len, idof<ArrayBuffer>()));
  memory.copy(changetype<usize>(buf), ptr, <usize>len);
  lifted += <usize>len;
  return Uint8Array.wrap(buf);
}

/** The `list<string>` stored at `at`. */
export function liftStringListAt(at: usize): Array<string> {
  const ptr = <usize>load<u32>(at);
  const len = <i32>load<u32>(at, 4);
  const out = new Array<string>(len);
  for (let i = 0; i < len; i++) {
    unchecked((out[i] = liftStringAt(ptr + (<usize>i << 3))));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Lowering `list<tuple<string, string>>`: an unmanaged array of (ptr, len, ptr, len) pointing at
// the strings' own UTF-16 data. The caller frees it with `heap.free` after the call; the strings
// stay alive through the caller's references.

/** Lowers (names[i], values[i]) pairs; returns 0 for an empty list. */
export function lowerPairs(names: Array<string>, values: Array<string>): usize {
  const n = names.length;
  if (n == 0) return 0;
  const ptr = heap.alloc(<usize>n << 4);
  for (let i = 0; i < n; i++) {
    const at = ptr + (<usize>i << 4);
    const name = unchecked(names[i]);
    const value = unchecked(values[i]);
    store<u32>(at, changetype<usize>(name));
    store<u32>(at, name.length, 4);
    store<u32>(at, changetype<usize>(value), 8);
    store<u32>(at, value.length, 12);
  }
  return ptr;
}

/** Frees what `lowerPairs` returned. */
export function freePairs(ptr: usize): void {
  if (ptr) heap.free(ptr);
}
