// The module's exports: `weir:filter/filter@0.1.0#...`, their `cabi_post_...` and
// `cabi_realloc`.
//
// The SDK's transform adds this file as an extra entry, so these functions become module
// exports whatever the filter's own entry file exports, then renames them to the WIT names
// (AssemblyScript identifiers cannot contain `:`, `/`, `@`, `#` or `-`).

import { collectIfBusy, liftString, releaseHostMemory } from "./abi";
import { Action, ActionKind, ConfigResult, LocalResponse } from "./action";
import { FilterBase, registeredFilter } from "./filter";

export { cabi_realloc } from "./abi";

// The asc options point abort/trace/seed here (asconfig.json `use`): make sure it is parsed
// whatever the filter imports.
import "./runtime";

// The export return area: big enough for `result<phases, config-error>` (12 bytes) and
// `action` (24 bytes), align 4.
const RET: usize = memory.data(32, 8);

// What a returned value points into, kept alive until the host calls cabi_post (or the next
// export call, whichever comes first).
let retainedResponse: LocalResponse | null = null;
let retainedText: string | null = null;
let retainedHeaders: usize = 0;

function release(): void {
  retainedResponse = null;
  retainedText = null;
  if (retainedHeaders) {
    heap.free(retainedHeaders);
    retainedHeaders = 0;
  }
}

function filter(): FilterBase {
  const f = registeredFilter();
  if (f === null) abort("no filter registered: call registerFilter(new MyFilter()) at the top level of the entry file");
  return f!;
}

function writeAction(action: Action): usize {
  release();
  if (action.kind == ActionKind.Respond) {
    const response = action.response!;
    store<u8>(RET, 1);
    store<u16>(RET, response.status, 4);
    const headers = response.headers;
    const n = headers.length;
    let list: usize = 0;
    if (n) {
      list = heap.alloc(<usize>n << 4);
      for (let i = 0; i < n; i++) {
        const h = unchecked(headers[i]);
        const at = list + (<usize>i << 4);
        store<u32>(at, changetype<usize>(h.name));
        store<u32>(at, h.name.length, 4);
        store<u32>(at, changetype<usize>(h.value), 8);
        store<u32>(at, h.value.length, 12);
      }
    }
    store<u32>(RET, list, 8);
    store<u32>(RET, n, 12);
    store<u32>(RET, response.body.dataStart, 16);
    store<u32>(RET, response.body.byteLength, 20);
    retainedResponse = response;
    retainedHeaders = list;
  } else {
    store<u8>(RET, <u8>action.kind);
  }
  return RET;
}

/** `configure: func(config: string) -> result<phases, config-error>` */
export function __weir_configure(ptr: usize, len: usize): usize {
  release();
  const config = liftString(ptr, len);
  releaseHostMemory();
  let result: ConfigResult;
  const f = registeredFilter();
  if (f === null) {
    result = ConfigResult.reject(
      "no filter registered: call registerFilter(new MyFilter()) at the top level of the entry file",
    );
  } else {
    result = f.__configure(config);
  }
  const error = result.error;
  if (error === null) {
    store<u8>(RET, 0);
    store<u8>(RET, <u8>result.phases, 4);
  } else {
    store<u8>(RET, 1);
    store<u32>(RET, changetype<usize>(error), 4);
    store<u32>(RET, error.length, 8);
    retainedText = error;
  }
  collectIfBusy();
  return RET;
}

/** `on-request-headers: func(context: u32) -> action` */
export function __weir_on_request_headers(context: u32): usize {
  release();
  const ret = writeAction(filter().__requestHeaders(context));
  collectIfBusy();
  return ret;
}

/** `on-request-body: func(context: u32, end: bool) -> action` */
export function __weir_on_request_body(context: u32, end: i32): usize {
  release();
  const ret = writeAction(filter().__requestBody(context, end != 0));
  collectIfBusy();
  return ret;
}

/** `on-response-headers: func(context: u32) -> action` */
export function __weir_on_response_headers(context: u32): usize {
  release();
  const ret = writeAction(filter().__responseHeaders(context));
  collectIfBusy();
  return ret;
}

/** `on-response-body: func(context: u32, end: bool) -> action` */
export function __weir_on_response_body(context: u32, end: i32): usize {
  release();
  const ret = writeAction(filter().__responseBody(context, end != 0));
  collectIfBusy();
  return ret;
}

/** `on-log: func(context: u32)` */
export function __weir_on_log(context: u32): void {
  release();
  filter().__log(context);
  collectIfBusy();
}

/** `context-done: func(context: u32)` */
export function __weir_context_done(context: u32): void {
  release();
  filter().__done(context);
  collectIfBusy();
}

/** `cabi_post_...` of `configure` and the four phases: frees what the result pointed into. */
export function __weir_post_return(ret: usize): void {
  release();
}
