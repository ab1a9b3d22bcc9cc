// The Filter base class and its registration.

import { Action, ConfigResult, Phases } from "./action";
import {
  Body,
  LOG_VIEW,
  LogView,
  REQUEST,
  REQUEST_BODY,
  RESPONSE,
  RESPONSE_BODY,
  Request,
  Response,
} from "./http";

/** Per-request state for filters that keep none. */
export class NoContext {}

/**
 * The non-generic face of every filter, used by the export glue. Not for direct use: extend
 * `Filter<C>`.
 */
export class FilterBase {
  /** @internal */
  __configure(config: string): ConfigResult {
    return this.__unimplemented();
  }
  /** @internal */
  __requestHeaders(id: u32): Action {
    return Action.CONTINUE;
  }
  /** @internal */
  __requestBody(id: u32, end: bool): Action {
    return Action.CONTINUE;
  }
  /** @internal */
  __responseHeaders(id: u32): Action {
    return Action.CONTINUE;
  }
  /** @internal */
  __responseBody(id: u32, end: bool): Action {
    return Action.CONTINUE;
  }
  /** @internal */
  __log(id: u32): void {}
  /** @internal */
  __done(id: u32): void {}
  /** @internal */
  private __unimplemented(): ConfigResult {
    return ConfigResult.reject("filter: extend Filter<C>, not FilterBase");
  }
}

/**
 * A Weir filter. Extend it, override `configure` (which declares the phases) and the phases the
 * filter takes part in, and register one instance with `registerFilter(new MyFilter())` at the
 * top level of the entry file.
 *
 * `C` is the per-request state: a class with a constructor without arguments. The SDK creates
 * one at the first phase of each request and drops it when the request is over
 * (`context-done`), so state never leaks from one request to another. Use `NoContext` (the
 * default) for none.
 *
 * Phases run in this order for a request: `onRequestHeaders`, `onRequestBody` (per chunk),
 * `onResponseHeaders`, `onResponseBody` (per chunk), `onLog`. Any of the first four may answer
 * the client with `Action.respond(...)`. An instance handles one phase call at a time.
 */
export class Filter<C = NoContext> extends FilterBase {
  private __contexts: Map<u32, C> = new Map<u32, C>();
  private __stateless: bool = false;
  /** The one context of a `NoContext` filter: nothing to store, so nothing to allocate per call. */
  private __none: C | null = null;

  /**
   * Called once per instance, before any phase, with the filter's config as JSON text (the
   * route's override merged over the filter's default; may be empty). Read it (see
   * `ConfigReader`), keep what the phases need in fields, and return
   * `ConfigResult.accept(phases)` or `ConfigResult.reject(message)`.
   *
   * The default rejects every config: a filter must declare its phases.
   */
  configure(config: string): ConfigResult {
    return ConfigResult.reject("filter: override configure(config) to declare the filter's phases");
  }

  /**
   * The request head has arrived. Headers and path may be changed; `Action.respond(...)` answers
   * the client without contacting the upstream. Default: `Action.CONTINUE`.
   */
  onRequestHeaders(req: Request, ctx: C): Action {
    return Action.CONTINUE;
  }

  /**
   * A chunk of the request body; `end` marks the last one. `Action.BUFFER` holds the bytes so
   * the next call sees them plus the next chunk; `body.set(...)` replaces them. Default:
   * `Action.CONTINUE` (the bytes go upstream unchanged).
   */
  onRequestBody(body: Body, end: bool, ctx: C): Action {
    return Action.CONTINUE;
  }

  /**
   * The upstream's response head has arrived (or a local response of a later filter). Status and
   * response headers may be changed; `Action.respond(...)` replaces the response. Default:
   * `Action.CONTINUE`.
   */
  onResponseHeaders(res: Response, ctx: C): Action {
    return Action.CONTINUE;
  }

  /** A chunk of the response body; as `onRequestBody`. Default: `Action.CONTINUE`. */
  onResponseBody(body: Body, end: bool, ctx: C): Action {
    return Action.CONTINUE;
  }

  /** The response is complete: for logging and metrics; heads are readable, not writable. */
  onLog(log: LogView, ctx: C): void {}

  /** How many request contexts are alive (created by a phase, not yet done). */
  liveContexts(): i32 {
    return this.__contexts.size;
  }

  /**
   * @internal The context of request `id`, created on first use; a fresh one every call for a
   * stateless filter, which keeps none.
   */
  private __context(id: u32): C {
    if (this.__stateless) {
      if (idof<C>() != idof<NoContext>()) return instantiate<C>();
      if (this.__none === null) this.__none = instantiate<C>();
      return this.__none!;
    }
    if (this.__contexts.has(id)) return this.__contexts.get(id);
    const ctx = instantiate<C>();
    this.__contexts.set(id, ctx);
    return ctx;
  }

  /** @internal */
  __configure(config: string): ConfigResult {
    let result = this.configure(config);
    // A filter without per-request state needs no contexts and no `context-done`.
    if (result.error === null && idof<C>() == idof<NoContext>()) {
      result = ConfigResult.accept(result.phases | Phases.STATELESS);
    }
    this.__stateless = (result.phases & Phases.STATELESS) != 0;
    return result;
  }
  /** @internal */
  __requestHeaders(id: u32): Action {
    return this.onRequestHeaders(REQUEST, this.__context(id));
  }
  /** @internal */
  __requestBody(id: u32, end: bool): Action {
    return this.onRequestBody(REQUEST_BODY, end, this.__context(id));
  }
  /** @internal */
  __responseHeaders(id: u32): Action {
    return this.onResponseHeaders(RESPONSE, this.__context(id));
  }
  /** @internal */
  __responseBody(id: u32, end: bool): Action {
    return this.onResponseBody(RESPONSE_BODY, end, this.__context(id));
  }
  /** @internal */
  __log(id: u32): void {
    this.onLog(LOG_VIEW, this.__context(id));
  }
  /** @internal */
  __done(id: u32): void {
    this.__contexts.delete(id);
  }
}

let registered: FilterBase | null = null;

/**
 * Registers the module's filter: call it once, at the top level of the entry file, with a fresh
 * instance (`registerFilter(new MyFilter())`). The proxy then calls its `configure` once per
 * instance and its phases per request.
 */
export function registerFilter(filter: FilterBase): void {
  if (registered !== null) abort("registerFilter: a module holds exactly one filter");
  registered = filter;
}

/** @internal The registered filter, or null. */
export function registeredFilter(): FilterBase | null {
  return registered;
}
