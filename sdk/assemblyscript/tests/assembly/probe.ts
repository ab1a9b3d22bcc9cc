// The SDK's own test filter: each `scenario` exercises one part of the API and reports what it
// saw (mostly as a JSON local response), so tests/*.test.js can check the whole canonical-ABI
// path, host emulator included.

import {
  Action,
  Body,
  ConfigReader,
  ConfigResult,
  Filter,
  Header,
  HostError,
  JSON,
  JsonValue,
  Level,
  LocalResponse,
  LogView,
  Phases,
  Request,
  Response,
  callout,
  clock,
  encodeUtf8,
  kv,
  log,
  metrics,
  registerFilter,
  span,
  decodeUtf8,
} from "@weir/filter";

class State {
  path: string = "";
  seen: i32 = 0;
}

function str(s: string | null): JsonValue {
  return s === null ? JsonValue.newNull() : JsonValue.newString(s);
}

function err(e: HostError | null): JsonValue {
  return e === null ? JsonValue.newNull() : JsonValue.newString(e.toString());
}

function errText(e: HostError | null): string {
  return e === null ? "ok" : e.toString();
}

/**
 * Tries to write each header in `names` (comma-separated) on both maps, logging every outcome
 * as `<phase> <map> <op> <name>: <error or ok>`.
 */
function tryWrites(phase: string, names: string): void {
  const req = new Request();
  const maps = [req.headers, new Response(req).headers];
  const list = names.split(",");
  for (let m = 0; m < maps.length; m++) {
    const h = maps[m];
    for (let i = 0; i < list.length; i++) {
      const n = list[i];
      const at = phase + " " + m.toString() + " ";
      log.info(at + "set " + n + ": " + errText(h.set(n, "0")));
      log.info(at + "append " + n + ": " + errText(h.append(n, "0")));
      log.info(at + "remove " + n + ": " + errText(h.remove(n)));
    }
  }
}

function json(v: JsonValue): Action {
  return LocalResponse.json(200, v.toString()).action();
}

class Probe extends Filter<State> {
  scenario: string = "";
  value: string = "";

  configure(config: string): ConfigResult {
    const c = ConfigReader.parse(config);
    this.scenario = c.requiredString("scenario");
    this.value = c.string("value", "");
    const error = c.finish();
    if (error !== null) return ConfigResult.reject(error);
    if (this.scenario == "reject") return ConfigResult.reject("probe: rejected as asked, ünïcödé ✓");
    if (this.scenario == "body" || this.scenario == "json") {
      return ConfigResult.accept(Phases.REQUEST_BODY | Phases.RESPONSE_BODY);
    }
    if (this.scenario == "none") return ConfigResult.accept(Phases.NONE);
    if (this.scenario == "stateless") {
      return ConfigResult.accept(Phases.REQUEST_HEADERS | Phases.RESPONSE_HEADERS | Phases.STATELESS);
    }
    return ConfigResult.accept(Phases.ALL);
  }

  onRequestHeaders(req: Request, ctx: State): Action {
    ctx.seen++;
    const s = this.scenario;
    if (s == "span") {
      if (span.sampled()) log.info("span: " + errText(span.setAttribute("enduser.id", "alice")));
      log.info("span event: " + errText(span.addEvent("auth.accepted", [new Header("scope", "ü".repeat(300))])));
      log.info("span proxy key: " + errText(span.setAttribute("http.route", "x")));
      return Action.CONTINUE;
    }
    if (s == "read") {
      const o = JsonValue.newObject();
      o.set("method", str(req.method()));
      o.set("path", str(req.path()));
      o.set("authority", str(req.authority()));
      o.set("scheme", str(req.scheme()));
      o.set("client", str(req.clientAddress()));
      o.set("ip", str(req.clientIp()));
      o.set("route", str(req.routeName()));
      o.set("cluster", str(req.clusterName()));
      o.set("id", str(req.requestId()));
      o.set("name", str(req.headers.get("X-Name")));
      o.set("missing", str(req.headers.get("x-missing")));
      o.set("has", JsonValue.newBool(req.headers.has("x-name")));
      const multi = JsonValue.newArray();
      const all = req.headers.getAll("x-multi");
      for (let i = 0; i < all.length; i++) multi.push(str(all[i]));
      o.set("multi", multi);
      const list = JsonValue.newArray();
      const hs = req.headers.list();
      for (let i = 0; i < hs.length; i++) {
        list.push(JsonValue.newArray().push(str(hs[i].name)).push(str(hs[i].value)));
      }
      o.set("list", list);
      o.set("status", JsonValue.newInteger(<i64>req.headers.getAll("none").length));
      return json(o);
    }
    if (s == "edit") {
      const e1 = req.headers.set("x-set", this.value);
      const e2 = req.headers.append("x-multi", this.value);
      const e3 = req.headers.remove("x-gone");
      const e4 = req.setPath("/edited?q=" + this.value.length.toString());
      const e5 = req.responseHeaders.set("x-from-request", this.value);
      if (e1 || e2 || e3 || e4 || e5) return LocalResponse.text(500, "edit failed").action();
      ctx.path = req.path();
      return Action.CONTINUE;
    }
    if (s == "errors") {
      const o = JsonValue.newObject();
      o.set("setStatus", err(RESPONSE_OF(req).setStatus(201)));
      o.set("badName", err(req.headers.set("bad name", "x")));
      o.set("badValue", err(req.headers.set("x-ok", "a\nb")));
      // Before there is a response: a header to set on the response to come.
      o.set("responseHeader", err(req.responseHeaders.set("x-late", "1")));
      o.set("responseFraming", err(req.responseHeaders.set("content-length", "1")));
      o.set("responseHeaderRead", JsonValue.newString(req.responseHeaders.get("x-late") || "none"));
      o.set("requestHeaderRead", JsonValue.newString(req.headers.get("x-late") || "none"));
      o.set("setPath", err(req.setPath("no-slash")));
      const k = kv.increment("secret", "k", 1);
      o.set("kvDenied", k.ok ? JsonValue.newNull() : err(k.error));
      o.set("kvKind", JsonValue.newInteger(k.ok ? -1 : <i64>k.error!.kind));
      o.set("metric", err(metrics.counterAdd("Bad-Name", [], 1)));
      const c = callout.send("nowhere", "GET", "/", [], new Uint8Array(0), 100);
      o.set("callout", c.ok ? JsonValue.newNull() : err(c.error));
      o.set("status", JsonValue.newInteger(<i64>RESPONSE_OF(req).status()));
      return json(o);
    }
    if (s == "kv") {
      const o = JsonValue.newObject();
      const v1 = kv.set("ns", "k", encodeUtf8("grüße ✓"), 0);
      o.set("v1", JsonValue.newInteger(<i64>v1.value));
      const got = kv.get("ns", "k");
      const entry = got.value!;
      o.set("get", str(decodeUtf8(entry.value)));
      o.set("version", JsonValue.newInteger(<i64>entry.version));
      o.set("absent", JsonValue.newBool(kv.get("ns", "nope").value === null));
      o.set("casStale", JsonValue.newInteger(<i64>kv.compareAndSwap("ns", "k", 0, encodeUtf8("x")).value));
      const v2 = kv.compareAndSwap("ns", "k", entry.version, encodeUtf8("second"), 0).value;
      o.set("casOk", JsonValue.newBool(v2 > entry.version));
      o.set("casNew", JsonValue.newInteger(<i64>kv.compareAndSwap("ns", "fresh", 0, encodeUtf8("1")).value));
      o.set("delete", err(kv.delete("ns", "k")));
      o.set("afterDelete", JsonValue.newBool(kv.get("ns", "k").value === null));
      o.set("inc1", JsonValue.newInteger(kv.increment("ns", "c", 5, 1000).value));
      o.set("inc2", JsonValue.newInteger(kv.increment("ns", "c", -7, 1000).value));
      const b1 = kv.takeTokens("ns", "b", 1, 1000, 2, 1).value;
      const b2 = kv.takeTokens("ns", "b", 1, 1000, 2, 1).value;
      const b3 = kv.takeTokens("ns", "b", 1, 1000, 2, 1).value;
      o.set("b1", JsonValue.newArray().push(JsonValue.newBool(b1.allowed)).push(JsonValue.newInteger(<i64>b1.remaining)));
      o.set("b2", JsonValue.newArray().push(JsonValue.newBool(b2.allowed)).push(JsonValue.newInteger(<i64>b2.remaining)));
      o.set(
        "b3",
        JsonValue.newArray()
          .push(JsonValue.newBool(b3.allowed))
          .push(JsonValue.newInteger(<i64>b3.retryAfterMs))
          .push(JsonValue.newInteger(<i64>b3.resetMs)),
      );
      const bad = kv.takeTokens("ns", "b", 0, 1000, 2, 1);
      o.set("bucketInvalid", err(bad.error));
      o.set("valueOr", JsonValue.newInteger(kv.increment("secret", "x", 1).valueOr(-1)));
      return json(o);
    }
    if (s == "host") {
      const o = JsonValue.newObject();
      o.set("now", JsonValue.newInteger(<i64>clock.nowMs()));
      o.set("mono", JsonValue.newInteger(<i64>clock.monotonicNs()));
      const r = clock.randomBytes(12);
      const rs = JsonValue.newArray();
      for (let i = 0; i < r.length; i++) rs.push(JsonValue.newInteger(<i64>r[i]));
      o.set("random", rs);
      o.set("counter", err(metrics.counterAdd("probe_total", [new Header("route", "r1"), new Header("ü", "x")], 3)));
      o.set("counterOk", err(metrics.counterAdd("probe_total", [new Header("route", "r1")], 3)));
      o.set("gauge", err(metrics.gaugeSet("probe_gauge", [], -42)));
      o.set("histogram", err(metrics.histogramObserve("probe_seconds", [], 0.25)));
      log.info("probe: hello Jürgen 😀");
      log.write(Level.Warn, "probe: warn");
      const mr = Math.random();
      o.set("random01", JsonValue.newBool(mr >= 0 && mr < 1));
      const c = callout.send(
        "auth",
        "POST",
        "/check",
        [new Header("x-token", "tök€n")],
        encodeUtf8("ping ✓"),
        250,
      );
      if (c.ok) {
        const res = c.value;
        o.set("calloutStatus", JsonValue.newInteger(<i64>res.status));
        o.set("calloutHeader", str(res.header("X-Reply")));
        o.set("calloutBody", str(decodeUtf8(res.body)));
      } else {
        o.set("calloutError", err(c.error));
      }
      return json(o);
    }
    if (s == "state" || s == "stateless") {
      if (ctx.path != "") return LocalResponse.text(500, "context reused: " + ctx.path).action();
      ctx.path = req.path();
      return Action.CONTINUE;
    }
    if (s == "framing") {
      const cl = req.headers.get("Content-Length");
      log.info("on-request-headers read content-length=" + (cl === null ? "none" : cl));
      tryWrites("on-request-headers", this.value);
      return Action.CONTINUE;
    }
    if (s == "framing-respond") {
      return LocalResponse.text(403, "no")
        .header("Content-Length", "999")
        .header("connection", "close")
        .header("x-reason", "policy")
        .header("Transfer-Encoding", "chunked")
        .action();
    }
    if (s == "respond") {
      return new LocalResponse(418)
        .header("x-a", "1")
        .header("x-a", "Jürgen")
        .header("content-type", "text/plain; charset=utf-8")
        .text(this.value)
        .action();
    }
    if (s == "status") return Action.status(204);
    if (s == "abort") {
      abort("probe: aborting as asked");
    }
    if (s == "assert") {
      assert(false, "probe: assert failed");
    }
    if (s == "oob") {
      const a = new Array<i32>(1);
      return a[5] == 0 ? Action.CONTINUE : Action.BUFFER;
    }
    if (s == "spin") {
      while (true) clock.monotonicNs();
    }
    if (s == "churn") {
      // Lots of allocation per call: strings, arrays, header lists.
      const hs = req.headers.list();
      let total = 0;
      for (let i = 0; i < hs.length; i++) total += hs[i].value.length;
      const e = req.headers.set("x-churn", total.toString() + " ✓ " + req.path());
      if (e !== null) return LocalResponse.text(500, e.toString()).action();
      return Action.CONTINUE;
    }
    return Action.CONTINUE;
  }

  onRequestBody(body: Body, end: bool, ctx: State): Action {
    if (!end) return Action.BUFFER;
    const s = this.scenario;
    if (s == "framing") tryWrites("on-request-body", this.value);
    if (s == "body") {
      const text = body.text();
      if (!text.ok) return LocalResponse.text(400, text.error!.toString()).action();
      const e = body.setText(text.value + "|seen ✓ " + text.value.length.toString());
      if (e !== null) return LocalResponse.text(500, e.toString()).action();
      return Action.CONTINUE;
    }
    if (s == "json") {
      const text = body.text();
      if (!text.ok) return LocalResponse.text(400, "not utf-8").action();
      const parsed = JSON.parse(text.value);
      if (!parsed.ok) return LocalResponse.text(400, parsed.error!).action();
      body.setText(parsed.value!.toString());
      return Action.CONTINUE;
    }
    return Action.CONTINUE;
  }

  onResponseHeaders(res: Response, ctx: State): Action {
    const s = this.scenario;
    if (s == "framing") {
      const te = res.headers.get("transfer-encoding");
      log.info("on-response-headers read transfer-encoding=" + (te === null ? "none" : te));
      tryWrites("on-response-headers", this.value);
      return Action.CONTINUE;
    }
    if (s == "edit") {
      const e1 = res.setStatus(201);
      const e2 = res.headers.set("x-path", ctx.path);
      const e3 = res.headers.set("x-value", this.value);
      const e4 = res.request.headers.set("x-too-late", "1");
      res.headers.set("x-late-error", e4 === null ? "none" : e4.toString());
      if (e1 || e2 || e3) return LocalResponse.text(500, "edit failed").action();
      return Action.CONTINUE;
    }
    if (s == "state" || s == "stateless") {
      res.headers.set("x-state-path", ctx.path);
      res.headers.set("x-live", this.liveContexts().toString());
      return Action.CONTINUE;
    }
    return Action.CONTINUE;
  }

  onResponseBody(body: Body, end: bool, ctx: State): Action {
    if (!end) return Action.BUFFER;
    if (this.scenario == "framing") tryWrites("on-response-body", this.value);
    if (this.scenario == "body") {
      const bytes = body.bytes().value;
      // Uppercase ASCII, leave the rest alone.
      for (let i = 0; i < bytes.length; i++) {
        const b = bytes[i];
        if (b >= 0x61 && b <= 0x7a) bytes[i] = b - 0x20;
      }
      body.set(bytes);
    }
    return Action.CONTINUE;
  }

  onLog(view: LogView, ctx: State): void {
    if (this.scenario == "span") {
      log.info("span in on-log: " + errText(span.setAttribute("late", "x")) + " " + (span.sampled() ? "sampled" : "closed"));
      return;
    }
    if (this.scenario == "framing") {
      tryWrites("on-log", this.value);
      return;
    }
    if (this.scenario == "framing-respond") {
      const hs = view.response.headers.list();
      const names = new Array<string>();
      for (let i = 0; i < hs.length; i++) names.push(hs[i].name);
      log.info("on-log response headers: " + names.join(","));
      return;
    }
    log.info(
      "probe log: " + view.request.method() + " " + view.request.path() + " -> " + view.response.status().toString() +
        " seen=" + ctx.seen.toString(),
    );
    const e = view.response.headers.set("x-in-log", "1");
    if (e !== null) log.info("probe log: " + e.toString());
  }
}

function RESPONSE_OF(req: Request): Response {
  return new Response(req);
}

registerFilter(new Probe());
