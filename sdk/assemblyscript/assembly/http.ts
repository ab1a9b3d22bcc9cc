// The current request and response, as a phase sees them.
//
// These are handles: every method is a host call acting on the request whose phase is running,
// so values are always current (another filter's change is visible) and nothing is copied until
// asked for.

import {
  IMPORT_RET,
  http_append_header,
  http_authority,
  http_body,
  http_client_address,
  http_cluster_name,
  http_get_header,
  http_get_header_all,
  http_headers,
  http_method,
  http_path,
  http_remove_header,
  http_request_id,
  http_route_name,
  http_scheme,
  http_set_body,
  http_set_header,
  http_set_path,
  http_set_status,
  http_status,
  liftBytesAt,
  liftStringAt,
  liftStringListAt,
  releaseHostMemory,
  strLen,
  strPtr,
} from "./abi";
import { Header } from "./action";
import { decodeUtf8, encodeUtf8 } from "./bytes";
import { HostError, HostErrorKind, Result, liftHostError, liftUnitResult } from "./errors";

/** Calls a `() -> string` import and lifts its result. */
function hostString(f: (ret: usize) => void): string {
  f(IMPORT_RET);
  const s = liftStringAt(IMPORT_RET);
  releaseHostMemory();
  return s;
}

// The WIT `header-map` cases.
const MAP_REQUEST: i32 = 0;
const MAP_RESPONSE: i32 = 1;

/**
 * One header map (the request's or the response's). Names are case-insensitive; the proxy
 * stores them lowercase.
 */
export class Headers {
  constructor(private readonly map: i32) {}

  /** The first value of a header, or `null` if absent. */
  get(name: string): string | null {
    http_get_header(this.map, strPtr(name), strLen(name), IMPORT_RET);
    let value: string | null = null;
    if (load<u8>(IMPORT_RET) != 0) value = liftStringAt(IMPORT_RET + 4);
    releaseHostMemory();
    return value;
  }

  /** Whether the header is present. */
  has(name: string): bool {
    return this.get(name) !== null;
  }

  /** Every value of a header, in order (empty if absent). */
  getAll(name: string): Array<string> {
    http_get_header_all(this.map, strPtr(name), strLen(name), IMPORT_RET);
    const values = liftStringListAt(IMPORT_RET);
    releaseHostMemory();
    return values;
  }

  /** All headers, in order, as (name, value) pairs. */
  list(): Array<Header> {
    http_headers(this.map, IMPORT_RET);
    const ptr = <usize>load<u32>(IMPORT_RET);
    const len = <i32>load<u32>(IMPORT_RET, 4);
    const out = new Array<Header>(len);
    for (let i = 0; i < len; i++) {
      const at = ptr + (<usize>i << 4);
      unchecked((out[i] = new Header(liftStringAt(at), liftStringAt(at + 8))));
    }
    releaseHostMemory();
    return out;
  }

  /**
   * Replaces all values of a header with one value. `null` on success; `invalid` for a bad name
   * or value or for a framing or hop-by-hop header only the proxy sets (`isFramingHeader`:
   * `content-length`, `connection`...), `unavailable` when these headers can no longer change.
   */
  set(name: string, value: string): HostError | null {
    http_set_header(this.map, strPtr(name), strLen(name), strPtr(value), strLen(value), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }

  /** Adds a value, keeping existing ones. Errors as `set`. */
  append(name: string, value: string): HostError | null {
    http_append_header(this.map, strPtr(name), strLen(name), strPtr(value), strLen(value), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }

  /** Removes every value of a header. Errors as `set`. */
  remove(name: string): HostError | null {
    http_remove_header(this.map, strPtr(name), strLen(name), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
}

/**
 * The current request: head, headers and properties. Passed to `onRequestHeaders`; later phases
 * reach it as `res.request`, `body.request`, `log.request`.
 */
export class Request {
  /** The request headers, as they will be sent upstream. */
  readonly headers: Headers = new Headers(MAP_REQUEST);
  /**
   * Headers to set on the response the client will get, from a request phase, whatever it is;
   * response phases then see them. On the upstream's response each name set here replaces that
   * name's values; a local response (this filter's, a later one's, or the proxy's error) keeps
   * the headers it sets itself and gets the others. A filter that only adds response headers (a
   * rate limit's `RateLimit-*`) so needs no response phase and no per-request state. (In the
   * response phases this is the response's own headers.)
   */
  readonly responseHeaders: Headers = new Headers(MAP_RESPONSE);

  /** Request method (`GET`). */
  method(): string {
    return hostString((ret: usize): void => http_method(ret));
  }

  /** Request path with query, as it will be sent upstream (`/v1/users?id=7`). */
  path(): string {
    return hostString((ret: usize): void => http_path(ret));
  }

  /**
   * Replaces the path (with query) sent upstream. Request phases only: `unavailable` elsewhere,
   * `invalid` for a path that does not start with `/`.
   */
  setPath(path: string): HostError | null {
    http_set_path(strPtr(path), strLen(path), IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }

  /** The authority (`host[:port]`) the client asked for. */
  authority(): string {
    return hostString((ret: usize): void => http_authority(ret));
  }

  /** `http` or `https`, as seen by the client. */
  scheme(): string {
    return hostString((ret: usize): void => http_scheme(ret));
  }

  /** The client's address, `ip:port` (`[v6]:port` for IPv6). */
  clientAddress(): string {
    return hostString((ret: usize): void => http_client_address(ret));
  }

  /** The client's IP: `clientAddress()` without the port (and without IPv6 brackets). */
  clientIp(): string {
    const addr = this.clientAddress();
    if (addr.startsWith("[")) {
      const end = addr.indexOf("]");
      return end > 0 ? addr.substring(1, end) : addr;
    }
    const colon = addr.lastIndexOf(":");
    return colon >= 0 ? addr.substring(0, colon) : addr;
  }

  /** Name of the route that matched. */
  routeName(): string {
    return hostString((ret: usize): void => http_route_name(ret));
  }

  /** Name of the cluster the route sends to. */
  clusterName(): string {
    return hostString((ret: usize): void => http_cluster_name(ret));
  }

  /** The request id (`x-request-id`). */
  requestId(): string {
    return hostString((ret: usize): void => http_request_id(ret));
  }
}

/** The current response: status and headers, plus read access to the request. */
export class Response {
  /** The response headers, as they will be sent downstream (from the response phases; in the
   * request phases, `req.responseHeaders`). */
  readonly headers: Headers = new Headers(MAP_RESPONSE);

  constructor(
    /** The request this response answers. */
    public readonly request: Request,
  ) {}

  /** Response status; 0 before a response exists. */
  status(): u16 {
    return <u16>http_status();
  }

  /**
   * Replaces the response status. Response-headers phase only: `unavailable` elsewhere,
   * `invalid` outside 100–599.
   */
  setStatus(status: u16): HostError | null {
    http_set_status(<i32>status, IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }
}

/** Which body a `Body` is. */
export enum BodyKind {
  /** The request body, on its way upstream. */
  Request = 0,
  /** The response body, on its way downstream. */
  Response = 1,
}

/**
 * The body bytes of a body phase: the current chunk plus any chunks held by an earlier
 * `Action.BUFFER`.
 */
export class Body {
  constructor(
    /** Whether this is the request or the response body. */
    public readonly kind: BodyKind,
    /** The request (its head is read-only in the response phases). */
    public readonly request: Request,
    /** The response head, for a response body; `null` for a request body. */
    public readonly response: Response | null,
  ) {}

  /** The bytes held so far (copied out of the host on every call: keep the result). */
  bytes(): Result<Uint8Array> {
    http_body(<i32>this.kind, IMPORT_RET);
    let result: Result<Uint8Array>;
    if (load<u8>(IMPORT_RET) == 0) {
      result = Result.success<Uint8Array>(liftBytesAt(IMPORT_RET + 4));
    } else {
      result = Result.failure<Uint8Array>(liftHostError(IMPORT_RET + 4));
    }
    releaseHostMemory();
    return result;
  }

  /** The bytes as UTF-8 text; an `invalid` error if they are not well-formed UTF-8. */
  text(): Result<string> {
    const bytes = this.bytes();
    if (!bytes.ok) return Result.failure<string>(bytes.error!);
    const text = decodeUtf8(bytes.value);
    if (text === null) {
      return Result.failure<string>(new HostError(HostErrorKind.Invalid, "body is not valid UTF-8"));
    }
    return Result.success<string>(text);
  }

  /** Replaces the bytes returned by `bytes()` with these. */
  set(bytes: Uint8Array): HostError | null {
    http_set_body(<i32>this.kind, bytes.dataStart, <usize>bytes.byteLength, IMPORT_RET);
    const e = liftUnitResult();
    releaseHostMemory();
    return e;
  }

  /** Replaces the body with this text, UTF-8 encoded. */
  setText(text: string): HostError | null {
    return this.set(encodeUtf8(text));
  }
}

/** What `onLog` sees: the finished request and response, readable but not writable. */
export class LogView {
  constructor(
    /** The request as it was sent upstream. */
    public readonly request: Request,
    /** The response as it was sent downstream. */
    public readonly response: Response,
  ) {}
}

// The handles the dispatcher passes to phases (stateless, so shared).
export const REQUEST = new Request();
export const RESPONSE = new Response(REQUEST);
export const REQUEST_BODY = new Body(BodyKind.Request, REQUEST, null);
export const RESPONSE_BODY = new Body(BodyKind.Response, REQUEST, RESPONSE);
export const LOG_VIEW = new LogView(REQUEST, RESPONSE);
