"""Scenario: what the access log costs on the plain HTTP/1.1 path — Weir without an access log,
then with a file (on tmpfs-like /tmp), with Kafka alone, and with both, the same config
otherwise.

The Kafka broker is tansu (built by scripts/lib.sh `need_kafka` into .tools/bin) on the
generator's core (CPU1), as a broker would run elsewhere; the topic has 3 partitions. Weir's
CPU per request covers all the sink costs it: formatting the line, the queue, and the producer
thread's batching, LZ4 compression and Produce requests. Lines sent and dropped come from
Weir's own metrics over the measured interval.
"""

import os
import socket
import subprocess
import time

from . import peers
from .common import PROXY_PORT, ROOT, fmt_range, fmt_ratio, header, med, weir_counters, write_result, wrk
from .runner import Entry, failures, run_rounds

BROKER_PORT = 18492
URL = f"http://127.0.0.1:{PROXY_PORT}/"
TANSU = os.path.join(ROOT, ".tools", "bin", "tansu")


def start_broker(ctx):
    url = f"tcp://127.0.0.1:{BROKER_PORT}"
    log = open(ctx.log("tansu"), "ab")
    p = subprocess.Popen(["taskset", "-c", "1", TANSU, "broker", "--listener-url", url,
                          "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                         stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", BROKER_PORT), timeout=1).close()
            subprocess.run([TANSU, "topic", "create", "--broker", url, "--partitions", "3", "weir-access"],
                           check=True, capture_output=True, timeout=20)
            return p
        except (OSError, subprocess.SubprocessError):
            time.sleep(0.1)
    p.kill()
    raise RuntimeError("the tansu broker did not start")


def lines():
    """(sent, dropped) Kafka lines so far, from Weir's /metrics."""
    return weir_counters("weir_access_log_kafka_sent_total", "weir_access_log_kafka_dropped_total")


def run(ctx):
    if not os.access(TANSU, os.X_OK):
        raise RuntimeError(f"{TANSU} is missing: run benches/setup.sh (it builds the broker)")
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(3, 8)
    broker = start_broker(ctx)
    log_file = os.path.join(ctx.tmp, "access.log")
    kafka = f"kafka: {{ brokers: [ \"127.0.0.1:{BROKER_PORT}\" ], topic: weir-access }}"
    sinks = {
        "off": None,
        "file": f"access_log: {{ path: \"{log_file}\" }}",
        "kafka": f"access_log: {{ {kafka} }}",
        "file+kafka": f"access_log: {{ path: \"{log_file}\", {kafka} }}",
    }
    try:
        def load(to_kafka):
            def measure():
                s0, d0 = lines() if to_kafka else (0, 0)
                t0 = time.time()
                res = wrk(URL, seconds, 64)
                res["wall_s"] = time.time() - t0
                # What the requests queued is sent within the linger.
                time.sleep(0.5 if to_kafka else 0)
                s1, d1 = lines() if to_kafka else (0, 0)
                n = max(res["reqs"], 1)
                res["sent_per_req"] = (s1 - s0) / n
                res["dropped_per_req"] = (d1 - d0) / n
                if os.path.exists(log_file):
                    os.truncate(log_file, 0)
                return res
            return measure

        def entry(name, sink):
            extra = [sink] if sink else []
            return Entry(name, lambda c: peers.run_weir(c, "http", tag=f"weir-log-{name}", extra=extra),
                         [("closed", lambda: wrk(URL, ctx.warmup(), 64), load("kafka" in name))])

        res = run_rounds(ctx, [entry(k, v) for k, v in sinks.items()], rounds, "kafka")
    finally:
        broker.kill()
        broker.wait()
    res = {k: v["closed"] for k, v in res.items()}
    base = med(res["off"], "req_per_core_s")[0]
    out = [header("Access log sinks on the plain HTTP/1.1 path", ctx,
                  f"wrk -t1 -c64, {rounds} rounds × {seconds} s; no filters; the access log to a file, to Kafka "
                  "(tansu on CPU1 beside the generator, 3 partitions, LZ4, acks 1), or both, against the same "
                  "config without an access log."), "",
           "| access log | req/s | µs CPU / request | requests per core-second | vs off | p50 µs | p99 µs | "
           "Kafka lines sent / request | dropped / request | failed |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for k in sinks:
        r = res[k]
        rcs = med(r, "req_per_core_s")
        rows[k] = {"cpu_us_per_req": med(r, "cpu_us_per_req"), "req_per_core_s": rcs, "rps": med(r, "rps"),
                   "p50_us": med(r, "p50_us"), "p99_us": med(r, "p99_us"),
                   "sent_per_req": med(r, "sent_per_req"), "dropped_per_req": med(r, "dropped_per_req"),
                   "ratio": rcs[0] / base if base else 0}
        out.append(f"| {k} | {fmt_range(rows[k]['rps'])} | {fmt_range(rows[k]['cpu_us_per_req'], 1)} | "
                   f"{fmt_range(rcs)} | {fmt_ratio(rows[k]['ratio'])} | {rows[k]['p50_us'][0]:.0f} | "
                   f"{rows[k]['p99_us'][0]:.0f} | {rows[k]['sent_per_req'][0]:.3f} | "
                   f"{rows[k]['dropped_per_req'][0]:.3f} | {failures(r)[0]} |")
    cost = {k: 1 - rows[k]["ratio"] for k in sinks if k != "off"}
    out += ["", "Requests per core-second lost against `off` (negative: within noise, faster): " +
            ", ".join(f"{k}: **{v * 100:.1f}%**" for k, v in cost.items()) + ".", ""]
    text = "\n".join(out) + "\n"
    write_result("kafka", text, {
        "scenario": "kafka", "title": "Access log sinks", "rows": rows,
        "goals": [],
        "date": text.splitlines()[2].split(";")[0],
    })
