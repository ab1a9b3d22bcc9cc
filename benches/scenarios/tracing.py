"""Scenario: what tracing costs on the plain HTTP/1.1 path — Weir without `tracing:`, then with
W3C trace context and OTLP export at sample ratio 0, 0.01 and 1, the same config otherwise.

The OTLP receiver is a small HTTP server (Python's http.server) on the generator's core (CPU1),
as a collector would run elsewhere: it takes every POST to /v1/traces and answers 200, counting
requests and bytes. Weir's CPU per request covers everything tracing costs it: sampling,
`traceparent` on every upstream request, building the sampled requests' spans, and the export
thread's protobuf encoding and POSTs. Spans exported and dropped come from Weir's own metrics
over the measured interval.
"""

import subprocess
import sys
import time
import urllib.request

from . import peers
from .common import PROXY_PORT, fmt_range, fmt_ratio, header, med, weir_counters, write_result, wrk
from .runner import Entry, failures, run_rounds

RECEIVER_PORT = 18431
URL = f"http://127.0.0.1:{PROXY_PORT}/"
RATIOS = ["0", "0.01", "1"]

RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def start_receiver(ctx):
    log = open(ctx.log("otlp-receiver"), "ab")
    p = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c", RECEIVER, str(RECEIVER_PORT)],
                         stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{RECEIVER_PORT}/v1/traces", data=b"", method="POST")
            urllib.request.urlopen(req, timeout=1).read()
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("the OTLP receiver did not start")


def spans():
    """(exported, dropped) spans so far, from Weir's /metrics."""
    return weir_counters("weir_trace_spans_exported_total", "weir_trace_spans_dropped_total")


def run(ctx):
    # The goal (< 3%) is about the size of this machine's round-to-round spread: seven rounds.
    rounds = ctx.rounds(2, 7)
    seconds = ctx.seconds(3, 8)
    receiver = start_receiver(ctx)
    try:
        def load(traced):
            def measure():
                e0, d0 = spans() if traced else (0, 0)
                t0 = time.time()
                res = wrk(URL, seconds, 64)
                res["wall_s"] = time.time() - t0
                # What the requests queued is exported within the flush interval; every row's
                # CPU window has the same shape, traced or not.
                time.sleep(1.2)
                e1, d1 = spans() if traced else (0, 0)
                n = max(res["reqs"], 1)
                res["spans_per_req"] = (e1 - e0) / n
                res["dropped_per_req"] = (d1 - d0) / n
                return res
            return measure

        def entry(name, tracing):
            extra = [f"tracing: {tracing}"] if tracing else []
            return Entry(name, lambda c: peers.run_weir(c, "http", tag=f"weir-tracing-{name}", extra=extra),
                         [("closed", lambda: wrk(URL, ctx.warmup(), 64), load(bool(tracing)))])

        otlp = f"otlp: {{ endpoint: \"http://127.0.0.1:{RECEIVER_PORT}\" }}"
        res = run_rounds(ctx, [entry("off", None)] + [
            entry(f"ratio-{r}", f"{{ sample_ratio: {r}, {otlp} }}") for r in RATIOS
        ], rounds, "tracing")
    finally:
        receiver.kill()
        receiver.wait()
    res = {k: v["closed"] for k, v in res.items()}
    base = med(res["off"], "req_per_core_s")[0]
    # Each round runs every config back to back: a config's cost is the median of its ratio to
    # `off` within a round, which cancels the machine's drift between rounds (as large as the
    # goal itself); the ratio of the medians is shown beside it.
    def paired(k):
        return med([{"r": t["req_per_core_s"] / o["req_per_core_s"]}
                    for t, o in zip(res[k], res["off"]) if o.get("req_per_core_s")], "r")
    lines = [header("Tracing on the plain HTTP/1.1 path", ctx,
                    f"wrk -t1 -c64, {rounds} rounds × {seconds} s; no filters; `tracing:` with OTLP/HTTP export "
                    "to a receiver on CPU1 beside the generator, at each sample ratio, against the same config "
                    "without `tracing:`."), "",
             "| tracing | req/s | µs CPU / request | requests per core-second | vs off (medians) | "
             "vs off (paired by round) | p50 µs | p99 µs | spans exported / request | spans dropped / request | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for k in ["off"] + [f"ratio-{r}" for r in RATIOS]:
        r = res[k]
        rcs = med(r, "req_per_core_s")
        rows[k] = {"cpu_us_per_req": med(r, "cpu_us_per_req"), "req_per_core_s": rcs, "rps": med(r, "rps"),
                   "p50_us": med(r, "p50_us"), "p99_us": med(r, "p99_us"),
                   "spans_per_req": med(r, "spans_per_req"), "dropped_per_req": med(r, "dropped_per_req"),
                   "ratio": rcs[0] / base if base else 0, "paired": paired(k)}
        lines.append(f"| {k} | {fmt_range(rows[k]['rps'])} | {fmt_range(rows[k]['cpu_us_per_req'], 1)} | "
                     f"{fmt_range(rcs)} | {fmt_ratio(rows[k]['ratio'])} | {fmt_range(rows[k]['paired'], 3)} | "
                     f"{rows[k]['p50_us'][0]:.0f} | "
                     f"{rows[k]['p99_us'][0]:.0f} | {rows[k]['spans_per_req'][0]:.3f} | "
                     f"{rows[k]['dropped_per_req'][0]:.3f} | {failures(r)[0]} |")
    cost = {r: 1 - rows[f"ratio-{r}"]["paired"][0] for r in RATIOS}
    lines += ["", "Requests per core-second lost against `off`, median of the per-round ratios "
              "(negative: within noise, faster): " +
              ", ".join(f"ratio {r}: **{cost[r] * 100:.1f}%**" for r in RATIOS) +
              ". Goal: ratio 0.01 costs < 3%. A sampled request here exports 2 spans (server and "
              "upstream try).", ""]
    text = "\n".join(lines) + "\n"
    write_result("tracing", text, {
        "scenario": "tracing", "title": "Tracing cost", "rows": rows,
        "goals": [{"goal": "tracing at ratio 0.01 costs < 3% requests per core-second",
                   "value": f"{cost['0.01'] * 100:.1f}% (µs CPU / request: off "
                            f"{fmt_range(rows['off']['cpu_us_per_req'], 1)}, ratio 0.01 "
                            f"{fmt_range(rows['ratio-0.01']['cpu_us_per_req'], 1)})",
                   "met": cost["0.01"] < 0.03}],
        "date": text.splitlines()[2].split(";")[0],
    })
