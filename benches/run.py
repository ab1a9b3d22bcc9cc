#!/usr/bin/env python3
"""Side-by-side proxy benchmarks: Weir against nginx, HAProxy, Caddy (and nginx + Lua for the
programmable scenario), peers alternating in the same run. See benches/results/README.md#method.

Scenarios (benches/scenarios/), each writing benches/results/<name>.md and .json:
  plain     plain HTTP/1.1 keep-alive: CPU / request, req per core-second, added latency at fixed rates
  http2     HTTP/2 downstream (h2c prior knowledge)
  tls       TLS 1.3 termination: handshakes and keep-alive requests per core-second
  chains    0/1/2/4/8 no-op wasm filters in Weir: the per-filter slope
  realistic JWT (HS256, RS256, ES256) + rate limit + header transform: Weir filters vs nginx + Lua
  state     the rate-limit filter on the embedded store vs on Redis (state.backend: redis)
  tracing   trace context + OTLP export at sample ratio 0, 0.01 and 1 vs no tracing
  kafka     the access log to a file, to Kafka (tansu), and both vs no access log
  memory    RSS idle, with 10k idle keep-alive connections, per filter instance
  hotswap   hot swap of a filter under load (benches/hot_swap.py)
then benches/results/README.md (summary, goals) and benches/results/chart.svg.

Usage: benches/run.py [--quick] [--only a,b] [--skip a,b] [--rounds N] [--seconds S] [--weir PATH]
(run benches/setup.sh first, or use benches/run.sh which does both)
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import chart  # noqa: E402
from scenarios import chains, h2, hotswap, kafka, l4, memory, plain, realistic, state, summary, tls, tracing  # noqa: E402
from scenarios.common import (ADMIN_PORT, DIRECT_CPU0_PORT, PROXY_PORT, PROXY_TLS_PORT, RESULTS, ROOT, RUN_MODE, UPSTREAM_H2C_PORT,  # noqa: E402
                              UPSTREAM_PORT, free, oha_path, pin_self_to_cpu1, raise_nofile, stop, wait_port)
from scenarios.peers import Ctx, start_upstream  # noqa: E402

SCENARIOS = ["plain", "http2", "tls", "l4", "chains", "realistic", "state", "tracing", "kafka", "memory", "hotswap"]


def preflight(args, todo):
    tools = ["taskset", "wrk", "nginx", "openssl"]
    if {"plain", "http2", "tls", "memory"} & set(todo):
        tools += ["haproxy", "caddy"]
    if "l4" in todo:
        tools += ["haproxy"]
    if "state" in todo:
        tools += ["redis-server"]
    if {"http2", "tls"} & set(todo):
        tools += ["h2load"]
    for t in tools:
        if not shutil.which(t):
            sys.exit(f"missing {t}: run benches/setup.sh first")
    exes = [args.weir]
    if {"plain", "http2", "memory"} & set(todo):
        exes.append(os.path.join(os.path.dirname(args.weir), "bare-forwarder"))
    if "l4" in todo:
        exes.append(os.path.join(os.path.dirname(args.weir), "tcp-bench"))
    if "realistic" in todo:
        exes.append(os.path.join(os.path.dirname(args.weir), "verify-bench"))
    for e in exes:
        if not os.access(e, os.X_OK):
            sys.exit(f"missing {e}: run benches/setup.sh first")
    wasm = os.path.join(ROOT, "target", "bench-filters")
    need = []
    if {"chains", "memory"} & set(todo):
        need.append("testbed")
    if {"realistic", "memory"} & set(todo):
        need += ["jwt_auth"]
    if "realistic" in todo:
        need += ["rate_limit", "transform"]
    if "state" in todo:
        need += ["rate_limit"]
    for w in need:
        if not os.path.exists(os.path.join(wasm, w + ".wasm")):
            sys.exit(f"missing {wasm}/{w}.wasm: run benches/setup.sh first")
    for port in (PROXY_PORT, PROXY_TLS_PORT, UPSTREAM_PORT, UPSTREAM_H2C_PORT, DIRECT_CPU0_PORT, ADMIN_PORT):
        if not free(port):
            sys.exit(f"port {port} is busy")
    if os.cpu_count() < 2:
        sys.exit("needs at least 2 CPUs (proxy on CPU0, generator on CPU1)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (under 5 minutes)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--skip", default="", help="comma-separated scenarios to leave out")
    ap.add_argument("--rounds", type=int, help="override every scenario's number of rounds")
    ap.add_argument("--seconds", type=int, help="override every measurement's duration")
    ap.add_argument("--peers", help="plain scenario only: comma-separated subset of nginx,haproxy,caddy,forwarder,weir")
    ap.add_argument("--weir", default=os.path.join(ROOT, "target", "release", "weir"))
    args = ap.parse_args()
    todo = [s for s in (args.only.split(",") if args.only else SCENARIOS) if s and s not in args.skip.split(",")]
    for s in todo:
        if s not in SCENARIOS:
            sys.exit(f"unknown scenario {s}; known: {', '.join(SCENARIOS)}")
    preflight(args, todo)
    pin_self_to_cpu1()
    raise_nofile()
    RUN_MODE["mode"] = "quick" if args.quick else "full"
    if not oha_path():
        print("note: oha not installed: no fixed-rate latency (benches/setup.sh installs it into target/tools)")

    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    ctx = Ctx(tmp, args.weir, args.quick, args.rounds, args.seconds)
    print("versions: " + ctx.versions_line(), flush=True)
    os.makedirs(RESULTS, exist_ok=True)
    upstream = None
    timings = {}
    failed = []
    try:
        if any(s != "hotswap" for s in todo):
            upstream = start_upstream(ctx)
            wait_port(UPSTREAM_PORT)
        for s in todo:
            ts = time.time()
            print(f"\n==> {s}", flush=True)
            try:
                run_one(s, ctx, args)
            except Exception:  # noqa: BLE001 - one broken scenario must not lose the others
                traceback.print_exc()
                failed.append(s)
            timings[s] = time.time() - ts
            print(f"==> {s}: {timings[s]:.0f} s", flush=True)
    finally:
        stop(upstream)
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.time() - t0
    summary.write(ctx, elapsed, "quick" if args.quick else "full")
    try:
        chart.main_for(RESULTS)
    except SystemExit as e:
        print(e)
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"total {elapsed / 60:.1f} min; summary: benches/results/README.md, chart: benches/results/chart.svg")
    if failed:
        sys.exit(f"failed scenarios: {', '.join(failed)} (see above)")


def run_one(s, ctx, args):
    if s == "plain":
        plain.run(ctx, args.peers.split(",") if args.peers else None)
    elif s == "http2":
        h2.run(ctx)
    elif s == "tls":
        tls.run(ctx)
    elif s == "l4":
        l4.run(ctx)
    elif s == "chains":
        chains.run(ctx)
    elif s == "realistic":
        realistic.run(ctx)
    elif s == "state":
        state.run(ctx)
    elif s == "tracing":
        tracing.run(ctx)
    elif s == "kafka":
        kafka.run(ctx)
    elif s == "memory":
        memory.run(ctx)
    elif s == "hotswap":
        hotswap.run(ctx)


if __name__ == "__main__":
    main()
