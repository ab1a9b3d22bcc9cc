"""Scenario: a rate limit on shared state — the first-party rate-limit filter with its token buckets
in the embedded store vs in Redis (`state.backend: redis`), the same config otherwise.

Debian's redis-server runs on the generator's core (CPU1) for the whole scenario, as a shared
Redis would run elsewhere: Weir's CPU per request covers its side of every Redis call (encoding,
the socket, the wait scheduled away), Redis's own CPU is reported beside it. The limit (10^6/s,
burst 10^6) never trips, but every request takes a token, as a real limit would. Redis round trips
per request (script calls: the filter only takes tokens) come from `INFO commandstats`,
commands (scripts' own included) from `INFO stats`, both over the measured interval.
"""

import os
import socket
import subprocess
import time

from . import peers
from .common import PROXY_PORT, cpu_seconds, fmt_range, fmt_ratio, header, med, write_result, wrk
from .runner import Entry, failures, run_rounds

REDIS_PORT = 18095
RATE = 1000000
# Token leases in the third run: 0.001 x burst = 1,000 tokens taken ahead per Redis call.
LEASE = 0.001
URL = f"http://127.0.0.1:{PROXY_PORT}/"


def limit_filter(ctx):
    return [{"name": "limit", "module": ctx.filter("rate_limit"),
             "config": {"key": "client_ip", "rate": RATE, "per": "1s", "burst": RATE},
             "grants": {"kv": ["ratelimit"]}}]


def redis_info_text(section):
    """Redis's INFO section (a RESP bulk string: `$LEN\\r\\n` then LEN bytes)."""
    with socket.create_connection(("127.0.0.1", REDIS_PORT), timeout=5) as s:
        s.sendall(b"INFO " + section.encode() + b"\r\n")
        data = b""
        while b"\r\n" not in data:
            data += s.recv(65536)
        head, body = data.split(b"\r\n", 1)
        size = int(head[1:])
        while len(body) < size:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return body.decode(errors="replace")


def redis_info(field):
    """A number from Redis's INFO stats. `total_commands_processed` counts the commands scripts
    run too (a token-bucket script is 5: EVALSHA, TIME, HMGET, HSET, PEXPIRE)."""
    for line in redis_info_text("stats").splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"{field} not in INFO stats")


def redis_round_trips():
    """Script calls (each a round trip for its caller). `INFO commandstats` also counts the
    commands scripts run, so plain commands cannot be told apart; this scenario's filter only
    takes tokens, one script call each, so script calls are its round trips."""
    n = 0
    for line in redis_info_text("commandstats").splitlines():
        name, _, rest = line.partition(":")
        if name in ("cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro", "cmdstat_script|load"):
            n += int(rest.split(",")[0].split("=")[1])
    return n


def start_redis(ctx):
    log = open(ctx.log("redis"), "ab")
    p = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
                          "--save", "", "--appendonly", "no", "--dir", ctx.tmp],
                         stdout=log, stderr=log, start_new_session=True)
    log.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            redis_info("total_commands_processed")
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("redis-server did not start")


def run(ctx):
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(3, 8)
    redis = start_redis(ctx)
    try:
        def load():
            c0, t0, r0 = redis_info("total_commands_processed"), redis_round_trips(), cpu_seconds([redis.pid])
            res = wrk(URL, seconds, 64)
            c1, t1, r1 = redis_info("total_commands_processed"), redis_round_trips(), cpu_seconds([redis.pid])
            n = max(res["reqs"], 1)
            res["redis_cmds_per_req"] = (c1 - c0) / n
            res["redis_trips_per_req"] = (t1 - t0) / n
            res["redis_cpu_us_per_req"] = (r1 - r0) / n * 1e6
            return res

        def entry(name, state):
            return Entry(name, lambda c: peers.run_weir(c, "http", filters=limit_filter(c), route_filters=["limit"],
                                                        tag=f"weir-state-{name}", extra=[f"state: {state}"]),
                         [("closed", lambda: wrk(URL, ctx.warmup(), 64), load)])

        res = run_rounds(ctx, [
            entry("embedded", "{ backend: embedded }"),
            entry("redis", f"{{ backend: redis, url: \"redis://127.0.0.1:{REDIS_PORT}/0\", pool: {{ size: 4 }} }}"),
            entry("redis-leased", f"{{ backend: redis, url: \"redis://127.0.0.1:{REDIS_PORT}/0\", pool: {{ size: 4 }}, "
                                  f"lease: {{ share: {LEASE}, max_age: 1s }} }}"),
        ], rounds, "state")
    finally:
        redis.kill()
        redis.wait()
    res = {k: v["closed"] for k, v in res.items()}
    base = med(res["embedded"], "req_per_core_s")[0]
    base_p50 = med(res["embedded"], "p50_us")[0]
    lines = [header("Rate limit on shared state: embedded vs Redis", ctx,
                    f"wrk -t1 -c64, {rounds} rounds × {seconds} s; the rate-limit filter (every request takes a "
                    f"token, none is refused); Redis {version()} on CPU1 beside the generator."), "",
             "| state | req/s | µs Weir CPU / request | requests per Weir core-second | vs embedded | p50 µs | p99 µs | "
             "Redis round trips / request | Redis commands / request (scripts' own included) | "
             "µs Redis CPU / request | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for k in ("embedded", "redis", "redis-leased"):
        r = res[k]
        rcs = med(r, "req_per_core_s")
        rows[k] = {"cpu_us_per_req": med(r, "cpu_us_per_req"), "req_per_core_s": rcs, "rps": med(r, "rps"),
                   "p50_us": med(r, "p50_us"), "p99_us": med(r, "p99_us"),
                   "redis_cmds_per_req": med(r, "redis_cmds_per_req"),
                   "redis_trips_per_req": med(r, "redis_trips_per_req"),
                   "redis_cpu_us_per_req": med(r, "redis_cpu_us_per_req"),
                   "ratio": rcs[0] / base if base else 0}
        cmds = rows[k]["redis_cmds_per_req"][0] if k != "embedded" else 0
        trips = rows[k]["redis_trips_per_req"][0] if k != "embedded" else 0
        lines.append(f"| {k} | {fmt_range(rows[k]['rps'])} | {fmt_range(rows[k]['cpu_us_per_req'], 1)} | "
                     f"{fmt_range(rcs)} | {fmt_ratio(rows[k]['ratio'])} | {rows[k]['p50_us'][0]:.0f} | "
                     f"{rows[k]['p99_us'][0]:.0f} | {trips:.4f} | {cmds:.2f} | "
                     f"{rows[k]['redis_cpu_us_per_req'][0] if k != 'embedded' else 0:.1f} | {failures(r)[0]} |")
    trips = rows["redis"]["redis_trips_per_req"][0]
    leased = rows["redis-leased"]["redis_trips_per_req"][0]
    added = rows["redis"]["p50_us"][0] - base_p50
    lines += ["", f"Exact (every `take-tokens` one script call): Redis adds **{added:.0f} µs** to p50 at 64 connections "
              f"and costs {rows['redis']['cpu_us_per_req'][0] - rows['embedded']['cpu_us_per_req'][0]:.1f} µs of Weir "
              f"CPU per request; **{trips:.2f} Redis round trips per request** (concurrent calls share connections and "
              f"are pipelined, but each is its own call). With token leases (`lease: {{ share: {LEASE} }}`: "
              f"{int(RATE * LEASE)} tokens taken ahead per call, for at most 1 s): **{leased:.4f} round trips per "
              f"request**, {fmt_ratio(rows['redis-leased']['ratio'])} of embedded; the tolerance is fewer admitted, "
              "never more (README, \"Token leases\").", ""]
    text = "\n".join(lines) + "\n"
    write_result("state", text, {
        "scenario": "state", "title": "Rate limit on shared state", "rows": rows,
        "goals": [{"goal": "a Redis-backed limit costs < 1 Redis round trip per request on average",
                   "value": f"{leased:.4f} round trips / request with token leases ({trips:.2f} exact)",
                   "met": leased < 1.0}],
        "date": text.splitlines()[2].split(";")[0],
    })


def version():
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        return out.split("v=")[1].split()[0]
    except Exception:  # noqa: BLE001
        return "?"
