"""Scenario: the L4 half. Plain TCP relaying, measured two ways against HAProxy `mode tcp` (with
and without splice) and nginx `stream`:

- bulk: `tcp-bench push` writes 64 KiB buffers over N connections through the proxy into a
  discarding upstream; Gbit/s per proxy core-second = bytes relayed / proxy CPU seconds.
- connections: `tcp-bench cps` loops connect, one byte each way, close; connections per proxy
  core-second = connections / proxy CPU seconds.

Every proxy runs one worker on CPU0 with two listeners: PROXY_PORT → the sink, CPS_PORT →
the pong upstream; tcp-bench (generator and upstreams) runs on CPU1.
"""

import json
import os
import subprocess

from . import peers
from .common import ADMIN_PORT, PROXY_PORT, fmt_range, fmt_ratio, header, med, start, write_result
from .runner import Entry, run_rounds

SINK_PORT = 18084
PONG_PORT = 18085
CPS_PORT = 18086

NAMES = ["haproxy-splice", "haproxy", "nginx-stream", "weir", "weir-copy"]
EXTERNAL = ("haproxy-splice", "haproxy", "nginx-stream")
LABELS = {
    "haproxy-splice": "HAProxy mode tcp, splice",
    "haproxy": "HAProxy mode tcp, no splice",
    "nginx-stream": "nginx stream",
    "weir": "**Weir** tcp, splice",
    "weir-copy": "**Weir** tcp, splice: false",
}


def tool(ctx):
    return os.path.join(os.path.dirname(ctx.weir), "tcp-bench")


def run_weir(ctx, splice):
    tag = "weir-l4" if splice else "weir-l4-copy"
    path = os.path.join(ctx.tmp, f"{tag}.yaml")
    s = "" if splice else ", splice: false"
    with open(path, "w") as f:
        f.write(f"""workers: 1
admin: {{ listen: 127.0.0.1:{ADMIN_PORT} }}
drain_timeout: 1s
limits: {{ max_connections: 4096 }}
listeners:
  - {{ name: bulk, listen: 127.0.0.1:{PROXY_PORT}, protocol: tcp, cluster: sink{s} }}
  - {{ name: cps, listen: 127.0.0.1:{CPS_PORT}, protocol: tcp, cluster: pong{s} }}
clusters:
  - {{ name: sink, endpoints: [ {{ address: 127.0.0.1:{SINK_PORT} }} ] }}
  - {{ name: pong, endpoints: [ {{ address: 127.0.0.1:{PONG_PORT} }} ] }}
""")
    return start([ctx.weir, "run", path], 0, tag, env=dict(os.environ, WEIR_LOG="error"),
                 log=ctx.log(tag), ready=f"http://127.0.0.1:{ADMIN_PORT}/ready")


def run_haproxy(ctx, splice):
    tag = "haproxy-l4-splice" if splice else "haproxy-l4"
    path = os.path.join(ctx.tmp, f"{tag}.cfg")
    opt = "  option splice-request\n  option splice-response\n" if splice else ""
    conns = peers.haproxy_maxconn(4096)
    with open(path, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn {conns}
defaults
  mode tcp
  maxconn {conns}
  timeout connect 5s
  timeout client 60s
  timeout server 60s
{opt}listen bulk
  bind 127.0.0.1:{PROXY_PORT}
  server s1 127.0.0.1:{SINK_PORT}
listen cps
  bind 127.0.0.1:{CPS_PORT}
  server s1 127.0.0.1:{PONG_PORT}
""")
    return start(["haproxy", "-f", path], 0, tag, log=ctx.log(tag))


def stream_module():
    for p in ("/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so"):
        if os.path.exists(p):
            return p
    raise RuntimeError("ngx_stream_module.so not found: install libnginx-mod-stream (benches/setup.sh)")


def run_nginx_stream(ctx):
    d = os.path.join(ctx.tmp, "nginx-stream")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(f"""load_module {stream_module()};
daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
worker_rlimit_nofile {min(2 * 4096 + 1024, peers.fd_hard_limit())};
events {{ worker_connections 4096; }}
stream {{
  server {{ listen 127.0.0.1:{PROXY_PORT} reuseport backlog=4096; proxy_pass 127.0.0.1:{SINK_PORT}; }}
  server {{ listen 127.0.0.1:{CPS_PORT} reuseport backlog=4096; proxy_pass 127.0.0.1:{PONG_PORT}; }}
}}
""")
    return start(["nginx", "-c", path, "-e", os.path.join(d, "error.log")], 0, "nginx-stream",
                 log=os.path.join(d, "stderr.log"))


LAUNCH = {
    "haproxy-splice": lambda c: run_haproxy(c, True),
    "haproxy": lambda c: run_haproxy(c, False),
    "nginx-stream": run_nginx_stream,
    "weir": lambda c: run_weir(c, True),
    "weir-copy": lambda c: run_weir(c, False),
}


def tcp_bench(ctx, mode, port, conns, seconds):
    out = subprocess.run(["taskset", "-c", "1", tool(ctx), mode, f"127.0.0.1:{port}", str(conns), str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    r = json.loads(out)
    n = r["bytes"] if mode == "push" else r["conns"]
    return {"reqs": n, "errors": r["errors"]}


def start_upstreams(ctx):
    return start([tool(ctx), "serve", f"127.0.0.1:{SINK_PORT}", f"127.0.0.1:{PONG_PORT}"], 1, "tcp-bench-serve",
                 log=ctx.log("tcp-bench-serve"))


def run(ctx):
    from .common import stop, wait_port
    rounds = ctx.rounds(2, 5)
    seconds = ctx.seconds(3, 8)
    bulk_conns, cps_conns = 8, 32
    ups = start_upstreams(ctx)
    try:
        wait_port(SINK_PORT)
        wait_port(PONG_PORT)

        def entry(name):
            return Entry(name, LAUNCH[name], [
                ("bulk", lambda: tcp_bench(ctx, "push", PROXY_PORT, bulk_conns, 1),
                 lambda: tcp_bench(ctx, "push", PROXY_PORT, bulk_conns, seconds)),
                ("cps", lambda: tcp_bench(ctx, "cps", CPS_PORT, cps_conns, 1),
                 lambda: tcp_bench(ctx, "cps", CPS_PORT, cps_conns, seconds)),
            ])

        res = run_rounds(ctx, [entry(n) for n in NAMES], rounds, "l4")
    finally:
        stop(ups)
    report(ctx, res, rounds, seconds, bulk_conns, cps_conns)


def report(ctx, res, rounds, seconds, bulk_conns, cps_conns):
    rows = {}
    for n in NAMES:
        b, c = res[n]["bulk"], res[n]["cps"]
        gbps = [r["reqs"] * 8 / r["wall_s"] / 1e9 for r in b]
        per_core = [r["reqs"] * 8 / r["cpu_s"] / 1e9 if r.get("cpu_s") else 0 for r in b]
        cps = [r["reqs"] / r["wall_s"] for r in c]
        cps_core = [r["req_per_core_s"] for r in c]
        errs = sum(int(r.get("errors") or 0) for r in b + c)

        def m(v):
            return med([{"v": x} for x in v], "v")
        rows[n] = {"gbps": m(gbps), "gbit_per_core_s": m(per_core), "cps": m(cps),
                   "conns_per_core_s": m(cps_core), "errors": errs}
    best_bulk = max(rows[n]["gbit_per_core_s"][0] for n in EXTERNAL)
    best_cps = max(rows[n]["conns_per_core_s"][0] for n in EXTERNAL)
    splice = rows["haproxy-splice"]["gbit_per_core_s"][0]
    lines = [header("L4 TCP relay: bulk throughput and connections", ctx,
                    f"Bulk: tcp-bench push, {bulk_conns} connections writing 64 KiB buffers into a discarding "
                    f"upstream; connections: tcp-bench cps, {cps_conns} loops of connect, 1 byte each way, close. "
                    f"{rounds} rounds × {seconds} s after a 1 s warm-up."), "",
             "| proxy | Gbit/s | Gbit per proxy core-second | vs HAProxy splice | vs best peer | "
             "connections/s | connections per core-second | vs best peer | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in NAMES:
        r = rows[n]
        lines.append(
            f"| {LABELS[n]} | {fmt_range(r['gbps'], 1)} | {fmt_range(r['gbit_per_core_s'], 1)} | "
            f"{fmt_ratio(r['gbit_per_core_s'][0] / splice if splice else 0)} | "
            f"{fmt_ratio(r['gbit_per_core_s'][0] / best_bulk if best_bulk else 0)} | {fmt_range(r['cps'])} | "
            f"{fmt_range(r['conns_per_core_s'])} | "
            f"{fmt_ratio(r['conns_per_core_s'][0] / best_cps if best_cps else 0)} | {r['errors']} |")
    lines += ["", "Per proxy core-second: bytes (or connections) divided by the proxy's CPU seconds over the "
              "window, so a generator that saturates first does not flatter anyone. Bulk Gbit/s is what the "
              "generator pushed; on one 2-core VM the generator and the sink share CPU1.", ""]
    w = rows["weir"]["gbit_per_core_s"][0] / splice if splice else 0
    goals = [{"goal": "Weir L4 bulk ≥ 0.9× HAProxy with splice (Gbit per core-second)",
              "value": f"{w:.2f}×", "met": w >= 0.9}]
    text = "\n".join(lines) + "\n"
    write_result("l4", text, {
        "scenario": "l4", "title": "L4 TCP relay", "rows": rows, "goals": goals,
        "chart": {"label": "L4 bulk (Gbit/core-s)", "ratios": {n: rows[n]["gbit_per_core_s"][0] / best_bulk
                                                               if best_bulk else 0 for n in NAMES}},
        "date": text.splitlines()[2].split(";")[0],
    })

