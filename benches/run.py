#!/usr/bin/env python3
"""Side-by-side proxy benchmark: Weir against nginx, HAProxy and Caddy, in the same run.

Method (shared/BENCHMARKS.md): the proxy under test is pinned alone on CPU0 with one worker; the
load generator (wrk) and the upstream (nginx `return 200`) share CPU1. Throughput is proxy CPU per
request, read from /proc (utime+stime of the proxy's processes) over the measured window, so a
generator-bound run still gives an honest figure. Peers run alternately, several rounds, and the
median is reported with the min-max range. Results: a markdown table of absolute figures and ratios
to the best peer, written to benches/results/.

Usage: benches/run.py [--quick] [--rounds N] [--seconds S] [--weir PATH]
"""

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
UPSTREAM_PORT = 18081
PROXY_PORT = 18080
ADMIN_PORT = 18901
BODY = "x" * 64


def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def tree_pids(root):
    """root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def rss_kb(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def start(cmd, cpu, env=None, cwd=None):
    return subprocess.Popen(
        ["taskset", "-c", str(cpu)] + cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=5)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass


def nginx_conf(tmp, name, body):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(
            f"""daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; error_log {d}/error.log warn;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests 1000000;
{body}
}}
"""
        )
    return path


PEERS = {}


def peer(name):
    def deco(f):
        PEERS[name] = f
        return f

    return deco


@peer("nginx")
def run_nginx(tmp, weir):
    conf = nginx_conf(
        tmp,
        "nginx-proxy",
        f"""  upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}
  server {{ listen 127.0.0.1:{PROXY_PORT} reuseport backlog=4096;
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }}""",
    )
    return start(["nginx", "-c", conf, "-e", os.path.join(tmp, "nginx-proxy", "error.log")], 0)


@peer("haproxy")
def run_haproxy(tmp, weir):
    path = os.path.join(tmp, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(
            f"""global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{PROXY_PORT}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{UPSTREAM_PORT}
"""
        )
    return start(["haproxy", "-f", path], 0)


@peer("caddy")
def run_caddy(tmp, weir):
    path = os.path.join(tmp, "Caddyfile")
    with open(path, "w") as f:
        f.write(
            f"""{{
  admin off
  auto_https off
  log {{
    output discard
  }}
}}
http://127.0.0.1:{PROXY_PORT} {{
  reverse_proxy 127.0.0.1:{UPSTREAM_PORT}
}}
"""
        )
    env = dict(os.environ, GOMAXPROCS="1", XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp)
    return start(["caddy", "run", "--config", path, "--adapter", "caddyfile"], 0, env=env)


@peer("weir")
def run_weir(tmp, weir):
    path = os.path.join(tmp, "weir.yaml")
    with open(path, "w") as f:
        f.write(
            f"""workers: 1
admin: {{ listen: 127.0.0.1:{ADMIN_PORT} }}
listeners: [ {{ name: public, listen: 127.0.0.1:{PROXY_PORT} }} ]
routes: [ {{ name: all, match: {{ path_prefix: / }}, cluster: up }} ]
clusters: [ {{ name: up, endpoints: [ {{ address: 127.0.0.1:{UPSTREAM_PORT} }} ] }} ]
"""
        )
    return start([weir, "run", path], 0, env=dict(os.environ, WEIR_LOG="error"))


@peer("forwarder")
def run_forwarder(tmp, weir):
    exe = os.path.join(os.path.dirname(weir), "bare-forwarder")
    return start([exe, f"127.0.0.1:{PROXY_PORT}", f"127.0.0.1:{UPSTREAM_PORT}"], 0)


def wrk(url, seconds, conns):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if m:
            v = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
            lat[pct] = v
    return reqs, lat, (int(non2xx.group(1)) if non2xx else 0), (errors.group(1) if errors else "")


def measure(name, proc, seconds, conns):
    wait_port(PROXY_PORT)
    url = f"http://127.0.0.1:{PROXY_PORT}/"
    wrk(url, 1, conns)  # warm-up: pools, caches
    pids = tree_pids(proc.pid) if proc else []
    c0 = cpu_seconds(pids)
    t0 = time.time()
    reqs, lat, bad, errs = wrk(url, seconds, conns)
    wall = time.time() - t0
    c1 = cpu_seconds(pids)
    rss = rss_kb(pids)
    cpu = c1 - c0
    return {
        "name": name,
        "rps": reqs / wall,
        "cpu_us_per_req": (cpu / reqs * 1e6) if proc and reqs else 0.0,
        "req_per_core_s": (reqs / cpu) if proc and cpu > 0 else 0.0,
        "p50_us": lat.get("50", 0.0),
        "p99_us": lat.get("99", 0.0),
        "rss_kb": rss,
        "bad": bad,
        "errors": errs,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a few minutes)")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--seconds", type=int)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--weir", default=os.path.join(ROOT, "target", "release", "weir"))
    ap.add_argument("--peers", default="nginx,haproxy,caddy,forwarder,weir")
    args = ap.parse_args()
    rounds = args.rounds or (3 if args.quick else 5)
    seconds = args.seconds or (5 if args.quick else 15)
    names = [p for p in args.peers.split(",") if p]
    for tool in ["taskset", "wrk", "nginx"] + [n for n in names if n not in ("weir", "forwarder")]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: run benches/setup.sh first")
    for port in (PROXY_PORT, UPSTREAM_PORT, ADMIN_PORT):
        if not free(port):
            sys.exit(f"port {port} is busy")

    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    upstream_conf = nginx_conf(
        tmp,
        "upstream",
        f"""  server {{ listen 127.0.0.1:{UPSTREAM_PORT} reuseport backlog=4096;
    location / {{ return 200 "{BODY}"; }} }}""",
    )
    upstream = start(["nginx", "-c", upstream_conf, "-e", os.path.join(tmp, "upstream", "error.log")], 1)
    wait_port(UPSTREAM_PORT)
    results = {n: [] for n in names + ["direct"]}
    try:
        for r in range(rounds):
            for n in names:
                proc = PEERS[n](tmp, args.weir)
                try:
                    res = measure(n, proc, seconds, args.conns)
                finally:
                    stop(proc)
                    while not free(PROXY_PORT):
                        time.sleep(0.05)
                results[n].append(res)
                print(f"round {r + 1}/{rounds} {n:8} {res['rps']:9.0f} req/s  {res['cpu_us_per_req']:6.1f} us CPU/req  "
                      f"p50 {res['p50_us']:7.0f} us  p99 {res['p99_us']:7.0f} us  rss {res['rss_kb'] / 1024:.1f} MiB"
                      + (f"  non-2xx {res['bad']}" if res["bad"] else "") + (f"  errors {res['errors']}" if res["errors"] else ""),
                      flush=True)
            # Direct to the upstream, for the latency baseline and the generator ceiling.
            res = direct(seconds, args.conns)
            results["direct"].append(res)
            print(f"round {r + 1}/{rounds} direct   {res['rps']:9.0f} req/s  p50 {res['p50_us']:7.0f} us  p99 {res['p99_us']:7.0f} us", flush=True)
    finally:
        stop(upstream)
    report(results, names, rounds, seconds, args)


def direct(seconds, conns):
    url = f"http://127.0.0.1:{UPSTREAM_PORT}/"
    wrk(url, 1, conns)
    t0 = time.time()
    reqs, lat, bad, errs = wrk(url, seconds, conns)
    wall = time.time() - t0
    return {"name": "direct", "rps": reqs / wall, "p50_us": lat.get("50", 0.0), "p99_us": lat.get("99", 0.0)}


def med(rows, key):
    vals = [r[key] for r in rows]
    return statistics.median(vals), min(vals), max(vals)


def version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def report(results, names, rounds, seconds, args):
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Plain HTTP/1.1 L7 proxy, keep-alive, 64-byte body",
        "",
        f"{stamp}; {platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}; "
        f"proxy pinned alone on CPU0 with one worker, wrk -t1 -c{args.conns} and the nginx upstream on CPU1; "
        f"{rounds} rounds x {seconds}s, median (min-max).",
        "",
        "Versions: " + "; ".join([
            version(["nginx", "-v"]), version(["haproxy", "-v"]), version(["caddy", "version"]),
            version([args.weir, "--version"]), version(["wrk", "-v"]),
        ]),
        "",
        "| proxy | req/s | µs CPU / request | requests per core-second | vs best peer | p50 µs | p99 µs | RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    peers = [n for n in names if n not in ("weir", "forwarder")]
    best = max((med(results[n], "req_per_core_s")[0] for n in peers), default=0)
    for n in names:
        rps = med(results[n], "rps")
        cpu = med(results[n], "cpu_us_per_req")
        rcs = med(results[n], "req_per_core_s")
        p50 = med(results[n], "p50_us")
        p99 = med(results[n], "p99_us")
        rss = med(results[n], "rss_kb")
        ratio = f"{rcs[0] / best:.2f}x" if best else "-"
        if n == "forwarder":
            n = "bare hyper forwarder (floor)"
        lines.append(
            f"| {n} | {rps[0]:.0f} ({rps[1]:.0f}-{rps[2]:.0f}) | {cpu[0]:.1f} ({cpu[1]:.1f}-{cpu[2]:.1f}) | "
            f"{rcs[0]:.0f} ({rcs[1]:.0f}-{rcs[2]:.0f}) | {ratio} | {p50[0]:.0f} | {p99[0]:.0f} | {rss[0] / 1024:.1f} |"
        )
    d = results["direct"]
    lines.append(f"| direct (no proxy) | {med(d, 'rps')[0]:.0f} | - | - | - | {med(d, 'p50_us')[0]:.0f} | {med(d, 'p99_us')[0]:.0f} | - |")
    lines += [
        "",
        "Requests per core-second = requests / proxy CPU seconds: the throughput one proxy core delivers, "
        "independent of whether the generator saturated first. Latencies here are closed-loop (wrk) and only "
        "comparable within this run.",
    ]
    text = "\n".join(lines) + "\n"
    out = os.path.join(ROOT, "benches", "results", "plain-http1.md")
    with open(out, "w") as f:
        f.write(text)
    print("\n" + text + f"\nwritten to {out}")


if __name__ == "__main__":
    main()
