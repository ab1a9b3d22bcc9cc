// What a filter declares (Phases, ConfigResult) and what a phase decides (Action).

import { encodeUtf8 } from "./bytes";

/**
 * The phases a filter takes part in: a bit set, combined with `|`.
 *
 * The host never calls a phase that is not declared and never copies a body into a filter that
 * did not declare a body phase, so declare only what the filter needs.
 */
export enum Phases {
  /** No phase (the filter only sees `context-done`). */
  NONE = 0,
  /** `onRequestHeaders`. */
  REQUEST_HEADERS = 1,
  /** `onRequestBody`. */
  REQUEST_BODY = 2,
  /** `onResponseHeaders`. */
  RESPONSE_HEADERS = 4,
  /** `onResponseBody`. */
  RESPONSE_BODY = 8,
  /** `onLog`. */
  LOG = 16,
  /**
   * Not a phase: the filter keeps no per-request state. The proxy then skips `context-done` (one
   * guest call less per request) and every phase call gets a fresh context. The SDK adds it by
   * itself for a filter whose context is `NoContext`.
   */
  STATELESS = 32,
  /** Every phase. */
  ALL = 31,
}

/** A (name, value) pair: a header, or a metric label. */
export class Header {
  constructor(
    public name: string,
    public value: string,
  ) {}
}

/**
 * A response produced by the filter instead of the upstream's (auth failures, rate limits,
 * CORS preflight answers). Build it, then return `response.action()` (or
 * `Action.respond(response)`).
 *
 * ```ts
 * return new LocalResponse(429).header("retry-after", "3").text("slow down").action();
 * ```
 */
export class LocalResponse {
  /**
   * Headers to send, in order (names are case-insensitive). The proxy drops framing and
   * hop-by-hop headers (`isFramingHeader`) and frames the body itself.
   */
  headers: Array<Header> = [];
  /** The body. */
  body: Uint8Array = new Uint8Array(0);

  /** A response with this status (200–599), no headers and an empty body. */
  constructor(public status: u16) {}

  /** A `text/plain; charset=utf-8` response. */
  static text(status: u16, text: string): LocalResponse {
    return new LocalResponse(status).header("content-type", "text/plain; charset=utf-8").text(text);
  }

  /** An `application/json` response whose body is this JSON text (see `JsonValue.toString`). */
  static json(status: u16, json: string): LocalResponse {
    return new LocalResponse(status).header("content-type", "application/json").text(json);
  }

  /** Adds a header (kept in order; repeat a name to send several values). Returns `this`. */
  header(name: string, value: string): LocalResponse {
    this.headers.push(new Header(name, value));
    return this;
  }

  /** Replaces the body with this text, UTF-8 encoded. Returns `this`. */
  text(text: string): LocalResponse {
    this.body = encodeUtf8(text);
    return this;
  }

  /** Replaces the body with these bytes. Returns `this`. */
  bytes(bytes: Uint8Array): LocalResponse {
    this.body = bytes;
    return this;
  }

  /** The first value of a header (case-insensitive name), or `null`. */
  headerValue(name: string): string | null {
    const wanted = name.toLowerCase();
    for (let i = 0; i < this.headers.length; i++) {
      const h = unchecked(this.headers[i]);
      if (h.name.toLowerCase() == wanted) return h.value;
    }
    return null;
  }

  /** `Action.respond(this)`. */
  action(): Action {
    return Action.respond(this);
  }
}

/** Which case of `Action`. */
export enum ActionKind {
  /** Go on with the next filter, the upstream or the client. */
  Continue = 0,
  /** Answer the client with `response`. */
  Respond = 1,
  /** Body phases only: hold this chunk (see `Action.BUFFER`). */
  Buffer = 2,
}

/** What to do after a phase: a filter's verdict. */
export class Action {
  /** Go on with the next filter, the upstream or the client. */
  static readonly CONTINUE: Action = new Action(ActionKind.Continue, null);

  /**
   * Body phases only: hold this chunk; the next body call sees everything held so far plus the
   * new chunk (bounded by the filter's body buffer limit). Treated as `CONTINUE` in header
   * phases.
   */
  static readonly BUFFER: Action = new Action(ActionKind.Buffer, null);

  private constructor(
    /** Which case this is. */
    public readonly kind: ActionKind,
    /** The local response, for `Respond`. */
    public readonly response: LocalResponse | null,
  ) {}

  /**
   * Stop here and answer the client with this response. From a response phase it replaces the
   * upstream's response (its head, and its body if it has not started to stream).
   */
  static respond(response: LocalResponse): Action {
    return new Action(ActionKind.Respond, response);
  }

  /** Answer with `status`, no headers and an empty body. */
  static status(status: u16): Action {
    return new Action(ActionKind.Respond, new LocalResponse(status));
  }
}

/**
 * What `Filter.configure` returns: the phases the filter takes part in, or why its config is
 * rejected (the message goes to the operator and the proxy refuses the config change).
 */
export class ConfigResult {
  private constructor(
    /** The declared phases (when accepted). */
    public readonly phases: Phases,
    /** The error message, or `null` when accepted. */
    public readonly error: string | null,
  ) {}

  /** Accepts the config and declares these phases (`Phases.A | Phases.B`). */
  static accept(phases: Phases): ConfigResult {
    return new ConfigResult(phases & (Phases.ALL | Phases.STATELESS), null);
  }

  /** Rejects the config: lowercase, no trailing period, say what to fix. */
  static reject(message: string): ConfigResult {
    return new ConfigResult(Phases.NONE, message);
  }
}
