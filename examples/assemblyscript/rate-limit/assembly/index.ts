// rate-limit: a fixed-window limit per client on the host's shared counters (spec:
// examples/README.md). Needs `grants: { kv: [ratelimit] }` (or its configured namespace).
//
// Config: { "limit": N, "window_ms": M, "namespace": "ratelimit", "key_header": "x-client" }

import {
  Action,
  ConfigReader,
  ConfigResult,
  Filter,
  LocalResponse,
  Phases,
  Request,
  Response,
  kv,
  registerFilter,
} from "@weir/filter";

/** Per-request state: what is left of the window, for the response headers. */
class Remaining {
  known: bool = false;
  left: u64 = 0;
}

/** The client's IP: `client-address` without its port (and without brackets for IPv6). */
function clientIp(address: string): string {
  const colon = address.lastIndexOf(":");
  let host = colon >= 0 ? address.substring(0, colon) : address;
  if (host.startsWith("[")) host = host.substring(1);
  if (host.endsWith("]")) host = host.substring(0, host.length - 1);
  return host;
}

class RateLimit extends Filter<Remaining> {
  limit: u64 = 0;
  windowMs: u64 = 60000;
  namespace: string = "ratelimit";
  keyHeader: string = "x-client";

  configure(config: string): ConfigResult {
    const c = ConfigReader.parse(config);
    if (c.ok && !c.has("limit")) c.fail("config: missing field `limit`");
    this.limit = c.u64("limit", 0);
    this.windowMs = c.u64("window_ms", 60000);
    this.namespace = c.string("namespace", "ratelimit");
    this.keyHeader = c.string("key_header", "x-client");
    const error = c.finish();
    if (error !== null) return ConfigResult.reject(error);
    if (this.limit == 0) return ConfigResult.reject("limit must be at least 1");
    if (this.windowMs == 0) return ConfigResult.reject("window_ms must be at least 1");
    return ConfigResult.accept(Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS);
  }

  onRequestHeaders(req: Request, state: Remaining): Action {
    const header = req.headers.get(this.keyHeader);
    const key = header !== null ? header : clientIp(req.clientAddress());
    const r = kv.increment(this.namespace, key, 1, this.windowMs);
    if (!r.ok) return LocalResponse.text(500, "rate-limit: " + r.error!.toString()).action();
    const n: u64 = r.value < 0 ? 0 : <u64>r.value;
    if (n > this.limit) {
      return LocalResponse.text(429, "rate limited")
        .header("retry-after", ((this.windowMs + 999) / 1000).toString())
        .header("x-ratelimit-limit", this.limit.toString())
        .header("x-ratelimit-remaining", "0")
        .action();
    }
    state.known = true;
    state.left = this.limit - n;
    return Action.CONTINUE;
  }

  onResponseHeaders(res: Response, state: Remaining): Action {
    if (!state.known) return Action.CONTINUE;
    let e = res.headers.set("x-ratelimit-limit", this.limit.toString());
    if (e === null) e = res.headers.set("x-ratelimit-remaining", state.left.toString());
    if (e !== null) return LocalResponse.text(500, "rate-limit: " + e.toString()).action();
    return Action.CONTINUE;
  }
}

registerFilter(new RateLimit());
