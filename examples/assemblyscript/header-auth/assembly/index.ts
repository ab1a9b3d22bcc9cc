// header-auth: an API-key check on one request header (spec: examples/README.md).
//
// Config: { "header": "x-api-key", "keys": { "<key>": "<client name>", ... } }

import {
  Action,
  ConfigReader,
  ConfigResult,
  Filter,
  LocalResponse,
  Phases,
  NoContext,
  Request,
  debugQuote,
  isFramingHeader,
  isHeaderName,
  registerFilter,
} from "@weir/filter";

class HeaderAuth extends Filter {
  header: string = "x-api-key";
  /** API key → client name. */
  keys: Map<string, string> = new Map();

  configure(config: string): ConfigResult {
    const c = ConfigReader.parse(config);
    this.header = c.string("header", "x-api-key");
    if (c.ok && !c.has("keys")) c.fail("config: missing field `keys`");
    const keys = c.stringMap("keys");
    const error = c.finish();
    if (error !== null) return ConfigResult.reject(error);
    if (keys.length == 0) return ConfigResult.reject("keys must hold at least one entry");
    if (!isHeaderName(this.header)) {
      return ConfigResult.reject("header " + debugQuote(this.header) + " is not a header name");
    }
    // The key is removed once checked, and the proxy owns framing headers.
    if (isFramingHeader(this.header)) {
      return ConfigResult.reject("header " + debugQuote(this.header) + " is one the proxy sets");
    }
    for (let i = 0; i < keys.length; i++) this.keys.set(keys[i].name, keys[i].value);
    return ConfigResult.accept(Phases.REQUEST_HEADERS);
  }

  onRequestHeaders(req: Request, ctx: NoContext): Action {
    const key = req.headers.get(this.header);
    if (key === null) {
      return LocalResponse.json(401, '{"error":"missing api key"}')
        .header("www-authenticate", 'ApiKey header="' + this.header + '"')
        .action();
    }
    if (!this.keys.has(key)) {
      return LocalResponse.json(403, '{"error":"invalid api key"}').action();
    }
    // The key is a secret: it does not travel upstream.
    let e = req.headers.remove(this.header);
    if (e === null) e = req.headers.set("x-client", this.keys.get(key));
    if (e !== null) return LocalResponse.text(500, "header-auth: " + e.toString()).action();
    return Action.CONTINUE;
  }
}

registerFilter(new HeaderAuth());
