#!/usr/bin/env python3
"""Hot swap under load: time from `PUT /filters/{name}` to the first request served by the new
version (a module never compiled before, and one already compiled), and wrk's p50/p99 while a filter
is swapped every 250 ms against the same run's steady state. Writes benches/results/hot-swap.md.

Usage: benches/hot_swap.py [--weir PATH]   (run benches/setup.sh first)
"""

import argparse
import datetime
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UP, PROXY, ADMIN = 18181, 18180, 18902
# Admin writes always need a token; the bench sets its own.
AUTH = {"Authorization": "Bearer bench-token"}


def build_testbed(feature):
    target = os.path.join(ROOT, "target", "wasm-bench" + ("-" + feature if feature else ""))
    cmd = ["cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "weir-testbed", "--target-dir", target]
    if feature:
        cmd += ["--features", feature]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return os.path.join(target, "wasm32-wasip2", "release", "weir_testbed.wasm")


def request(method, port, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def wait(port):
    for _ in range(500):
        try:
            request("GET", port, "/healthz")
            return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"nothing on {port}")


def build_of(port):
    _, headers, _ = request("GET", port, "/one")
    return {k.lower(): v for k, v in headers.items()}.get("x-testbed-build")


def swap_ms(module, want):
    t0 = time.perf_counter()
    status, _, body = request("PUT", ADMIN, "/filters/edit", body=module, headers=AUTH)
    if status != 200:
        sys.exit(f"swap failed: {status} {body!r}")
    while build_of(PROXY) != want:
        pass
    return (time.perf_counter() - t0) * 1e3


def wrk(seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{PROXY}/one"],
        capture_output=True, text=True, check=True).stdout
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
        lat[pct] = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return lat, reqs, (int(bad.group(1)) if bad else 0), (errors.group(1) if errors else "none")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", default=os.path.join(ROOT, "target", "release", "weir"))
    args = ap.parse_args()
    v1_path, v2_path = build_testbed(None), build_testbed("v2")
    v1, v2 = open(v1_path, "rb").read(), open(v2_path, "rb").read()
    tmp = tempfile.mkdtemp(prefix="weir-swap-")
    up_conf = os.path.join(tmp, "nginx.conf")
    with open(up_conf, "w") as f:
        f.write(f"""daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  server {{ listen 127.0.0.1:{UP}; location / {{ return 200 "ok"; }} }} }}
""")
    cfg = os.path.join(tmp, "weir.yaml")
    with open(cfg, "w") as f:
        f.write(f"""workers: 1
admin: {{ listen: 127.0.0.1:{ADMIN}, token: bench-token }}
filter_cache: {tmp}/cache
listeners: [ {{ name: public, listen: 127.0.0.1:{PROXY} }} ]
clusters: [ {{ name: up, endpoints: [ {{ address: 127.0.0.1:{UP} }} ] }} ]
filters: [ {{ name: edit, module: {v1_path}, config: {{ mode: header-edit }} }} ]
routes: [ {{ name: one, match: {{ path_prefix: / }}, cluster: up, filters: [edit] }} ]
""")
    upstream = subprocess.Popen(["taskset", "-c", "1", "nginx", "-c", up_conf, "-e", f"{tmp}/error.log"])
    weir = subprocess.Popen(["taskset", "-c", "0", args.weir, "run", cfg], stderr=subprocess.DEVNULL,
                            env=dict(os.environ, WEIR_LOG="error"))
    try:
        wait(ADMIN)
        assert build_of(PROXY) == "v1"
        uncached = swap_ms(v2, "v2")          # never compiled: compile + instantiate + swap
        cached = [swap_ms(v1 if i % 2 == 0 else v2, "v1" if i % 2 == 0 else "v2") for i in range(20)]
        cached.sort()
        steady = wrk(8)
        stop = threading.Event()
        swaps = [0]

        def swapper():
            i = 0
            while not stop.is_set():
                status, _, _ = request("PUT", ADMIN, "/filters/edit", body=v1 if i % 2 else v2, headers=AUTH)
                assert status == 200
                swaps[0] += 1
                i += 1
                time.sleep(0.25)

        t = threading.Thread(target=swapper)
        t.start()
        during = wrk(8)
        stop.set()
        t.join()
    finally:
        weir.terminate()
        upstream.terminate()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = f"""# Hot swap of a filter under load

{stamp}; weir release build, one worker pinned on CPU0; nginx upstream and wrk (-t1 -c16, closed loop) on CPU1.

| measurement | value |
|---|---|
| `PUT /filters/edit` → first request served by the new version, module never compiled | {uncached:.1f} ms |
| same, module already compiled (median of 20; min-max) | {cached[len(cached) // 2]:.1f} ms ({cached[0]:.1f}-{cached[-1]:.1f}) |
| steady state: p50 / p99 | {steady[0]['50']:.0f} µs / {steady[0]['99']:.0f} µs ({steady[1]} requests, non-2xx {steady[2]}, socket errors {steady[3]}) |
| swapping every 250 ms ({swaps[0]} swaps): p50 / p99 | {during[0]['50']:.0f} µs / {during[0]['99']:.0f} µs ({during[1]} requests, non-2xx {during[2]}, socket errors {during[3]}) |
"""
    os.makedirs(os.path.join(ROOT, "benches", "results"), exist_ok=True)
    out = os.path.join(ROOT, "benches", "results", "hot-swap.md")
    with open(out, "w") as f:
        f.write(text)
    print(text + f"\nwritten to {out}")


if __name__ == "__main__":
    main()
