"""benches/results/README.md: one page with the headline ratios of every scenario, the goals,
what is not measured yet, and links to the per-scenario tables."""

import json
import os

from .common import RESULTS, machine_line, now_stamp


def load(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def link(name):
    d = load(name)
    when = f" ({d.get('date', '?')}, {d.get('mode', '?')} run)" if d else ""
    return f"[{name}.md]({name}.md){when}"


def r3(t):
    return t[0] if isinstance(t, list) else t


def write(ctx, elapsed=None, mode=""):
    plain, h2, tls, l4, chains, real, state, trc, kfk, mem, hot = (load(n) for n in (
        "plain-http1", "http2", "tls", "l4", "filter-chains", "realistic-chain", "state", "tracing", "kafka",
        "memory", "hot-swap"))
    L = ["# Weir side-by-side benchmarks", "",
         f"Summary written {now_stamp()}{f' after a {mode} run of {elapsed / 60:.1f} min' if elapsed else ''}; "
         f"{machine_line()}.", "", "Versions: " + ctx.versions_line(), "",
         "Reproduce: `benches/run.sh` (full, under 30 min) or `benches/run.sh --quick` (under 5 min); "
         "`python3 benches/run.py --only tls,memory` runs some scenarios only (after `benches/setup.sh`). "
         "Each scenario's date is in its own file.", "",
         "![requests per core-second relative to the best peer](chart.svg)", "",
         "## Headline figures", "",
         "| scenario | what is measured | Weir | best peer | Weir vs best peer | details |",
         "|---|---|---|---|---|---|"]

    def best_of(d, key=None):
        rows = d["rows"]
        b = d["best_peer"] if key is None else d["best_peer"][key]
        return b, (rows[b] if key is None else rows[b][key])

    if plain:
        b, br = best_of(plain)
        w = plain["rows"].get("weir")
        f = plain["rows"].get("forwarder")
        if w:
            fw = f" (bare forwarder {f['ratio']:.2f}×)" if f else ""
            L.append(f"| plain HTTP/1.1 keep-alive | µs proxy CPU / request (wrk -c64) | {r3(w['cpu_us_per_req']):.1f} µs | "
                     f"{b} {r3(br['cpu_us_per_req']):.1f} µs | **{w['ratio']:.2f}×** req/core-s{fw} | "
                     + link("plain-http1") + " |")
        lat = plain.get("latency") or {}
        if lat and w:
            rate = sorted(lat, key=int)[len(lat) // 2]
            wl = lat[rate]["weir"]
            ext = {n: v for n, v in lat[rate].items() if n in ("nginx", "haproxy", "caddy") and v["added_p50_us"] > 0}
            bn = min(ext, key=lambda n: ext[n]["added_p50_us"]) if ext else None
            if bn:
                L.append(f"| plain HTTP/1.1, fixed rate | added p50 / p99 over direct at {rate} req/s (oha, open loop) | "
                         f"{wl['added_p50_us']:.0f} / {wl['added_p99_us']:.0f} µs | "
                         f"{bn} {ext[bn]['added_p50_us']:.0f} / {ext[bn]['added_p99_us']:.0f} µs | "
                         f"**{wl['added_p50_vs_best']:.2f}×** added p50 | " + link("plain-http1") + " |")
    if h2:
        b, br = best_of(h2)
        w = h2["rows"].get("weir")
        if w:
            L.append(f"| HTTP/2 downstream (h2c) | µs CPU / request (h2load -c8 -m8) | {r3(w['cpu_us_per_req']):.1f} µs | "
                     f"{b} {r3(br['cpu_us_per_req']):.1f} µs | **{w['ratio']:.2f}×** | " + link("http2") + " |")
    if tls:
        for key, what in (("handshake", "µs CPU / new TLS 1.3 connection (+1 request)"),
                          ("keepalive", "µs CPU / request, keep-alive over TLS 1.3")):
            b, br = best_of(tls, key)
            w = tls["rows"].get("weir", {}).get(key)
            if w:
                L.append(f"| TLS 1.3 {key} | {what} | {r3(w['cpu_us_per_req']):.1f} µs | {b} {r3(br['cpu_us_per_req']):.1f} µs | "
                         f"**{w['ratio']:.2f}×** | " + link("tls") + " |")
    if l4:
        rows = l4["rows"]
        ext = {k: v for k, v in rows.items() if k in ("haproxy-splice", "haproxy", "nginx-stream")}
        w = rows.get("weir")
        if w and ext:
            bb = max(ext, key=lambda k: r3(ext[k]["gbit_per_core_s"]))
            bc = max(ext, key=lambda k: r3(ext[k]["conns_per_core_s"]))
            wb, pb = r3(w["gbit_per_core_s"]), r3(ext[bb]["gbit_per_core_s"])
            wc, pc = r3(w["conns_per_core_s"]), r3(ext[bc]["conns_per_core_s"])
            L.append(f"| L4 TCP bulk | Gbit relayed per proxy core-second | {wb:.1f} | {bb} {pb:.1f} | "
                     f"**{wb / pb if pb else 0:.2f}×** | " + link("l4") + " |")
            L.append(f"| L4 TCP connections | connections per proxy core-second | {wc:.0f} | {bc} {pc:.0f} | "
                     f"**{wc / pc if pc else 0:.2f}×** | " + link("l4") + " |")
    if chains:
        L.append(f"| no-op filter chains 0–8 | µs CPU / request per no-op filter (slope) | **{chains['slope_us']:.2f} µs** "
                 f"per filter | – | – | " + link("filter-chains") + " |")
    if real:
        w, n = real["rows"]["weir-chain"], real["rows"]["nginx-lua"]
        L.append(f"| JWT + rate limit + transform | µs CPU / request, Weir filters vs nginx + Lua | "
                 f"{r3(w['cpu_us_per_req']):.1f} µs (chain {w['chain_cost_us']:.1f}) | nginx + Lua {r3(n['cpu_us_per_req']):.1f} µs "
                 f"(chain {n['chain_cost_us']:.1f}) | **{w['ratio']:.2f}×** | " + link("realistic-chain") + " |")
        for alg in ("rs256", "es256"):
            w, n = real["rows"].get(f"weir-chain-{alg}"), real["rows"].get(f"nginx-lua-{alg}")
            if w and n:
                L.append(f"| the same chain, {alg.upper()} tokens | µs CPU / request, Weir filters vs nginx + Lua | "
                         f"{r3(w['cpu_us_per_req']):.1f} µs (chain {w['chain_cost_us']:.1f}) | nginx + Lua "
                         f"{r3(n['cpu_us_per_req']):.1f} µs (chain {n['chain_cost_us']:.1f}) | **{w['ratio']:.2f}×** | "
                         + link("realistic-chain") + " |")
    if state:
        e, r = state["rows"]["embedded"], state["rows"]["redis"]
        lz = state["rows"].get("redis-leased")
        trips = "redis_trips_per_req" if "redis_trips_per_req" in r else "redis_cmds_per_req"
        leased = (f"; leased {r3(lz['req_per_core_s']):.0f}, {r3(lz[trips]):.4f} round trips"
                  f" ({lz['ratio']:.2f}×)") if lz else ""
        L.append(f"| rate limit on Redis | requests per Weir core-second, Redis vs embedded state; Redis "
                 f"round trips / request | {r3(r['req_per_core_s']):.0f} vs {r3(e['req_per_core_s']):.0f}; "
                 f"{r3(r[trips]):.2f}{leased} | – (no peer here) | **{r['ratio']:.2f}×** exact | "
                 + link("state") + " |")
    if trc:
        rows = trc["rows"]

        # Paired by round where the scenario reports it (older results: the ratio of medians).
        def vs_off(k):
            return rows[k]["paired"][0] if rows[k].get("paired") else rows[k]["ratio"]
        cost = ", ".join(f"{k.removeprefix('ratio-')}: {(1 - vs_off(k)) * 100:.1f}%"
                         for k in rows if k != "off")
        L.append(f"| tracing (OTLP export) | requests per core-second lost to tracing, by sample ratio | {cost} | "
                 f"– (no peer here) | ratio 0.01: **{vs_off('ratio-0.01'):.2f}×** of off | "
                 + link("tracing") + " |")
    if kfk:
        rows = kfk["rows"]
        cost = ", ".join(f"{k}: {(1 - rows[k]['ratio']) * 100:.1f}%" for k in rows if k != "off")
        L.append(f"| access log sinks | requests per core-second lost to the access log, by sink | {cost} | "
                 f"– (no peer here) | Kafka: **{rows['kafka']['ratio']:.2f}×** of off | " + link("kafka") + " |")
    if mem:
        rows = mem["rows"]
        if "weir" in rows:
            others = {k: v for k, v in rows.items() if k in ("nginx", "haproxy", "caddy")}
            bn = min(others, key=lambda k: others[k]["idle_pss_kb"]) if others else None
            w = rows["weir"]
            L.append(f"| memory, idle | RSS after warm-up (PSS) | {w['idle_rss_kb'] / 1024:.1f} MiB "
                     f"({w['idle_pss_kb'] / 1024:.1f}) | " + (f"{bn} {others[bn]['idle_rss_kb'] / 1024:.1f} MiB "
                     f"({others[bn]['idle_pss_kb'] / 1024:.1f})" if bn else "–") + " | – | " + link("memory") + " |")
            bc = min(others, key=lambda k: others[k]["per_conn_bytes"]) if others else None
            L.append(f"| memory, {mem['conns']:,} idle connections | KiB RSS per idle keep-alive connection | "
                     f"{w['per_conn_bytes'] / 1024:.2f} KiB | " + (f"{bc} {others[bc]['per_conn_bytes'] / 1024:.2f} KiB"
                     if bc else "–") + " | – | " + link("memory") + " |")
        inst = mem.get("instances") or {}
        if inst:
            parts = [f"{k}: {v['per_instance_kib']:.0f} KiB" for k, v in inst.items() if v["n"]]
            L.append(f"| memory per filter instance | RSS per (filter, config) pair | {'; '.join(parts)} | – | – | "
                     + link("memory") + " |")
    if hot:
        s = hot.get("swapping", {})
        st = hot.get("steady", {})
        L.append(f"| hot swap under load | `PUT /filters/x` → first request on the new module; p99 steady vs "
                 f"swapping every 250 ms | {hot.get('cached_ms')} ms compiled, {hot.get('uncached_ms')} ms never "
                 f"compiled; p99 {st.get('p99_us')} vs {s.get('p99_us')} µs; {s.get('non2xx', '?')} failed of "
                 f"{s.get('requests', '?')} | – (no peer swaps code under load) | – | " + link("hot-swap") + " |")

    goals = []
    for d in (plain, l4, chains, real, state, trc, mem, hot):
        if d:
            goals += d.get("goals", [])
    L += ["", "## Goals (reported, not asserted)", "", "| goal | measured | met |", "|---|---|---|"]
    for g in goals:
        L.append(f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else '**no**'} |")

    mine = {"README.md", "plain-http1.md", "http2.md", "tls.md", "l4.md", "filter-chains.md", "realistic-chain.md",
            "state.md", "tracing.md", "kafka.md", "memory.md", "hot-swap.md", "analysis.md"}
    others = sorted(f for f in os.listdir(RESULTS) if f.endswith(".md") and f not in mine)
    extra = ["analysis.md"] if os.path.exists(os.path.join(RESULTS, "analysis.md")) else []
    if others or extra:
        L += ["", "Also here: " + ", ".join(f"[{f}]({f})" for f in extra + others) + "."]
    L += ["", "## Not measured yet", "",
          "| scenario | why |", "|---|---|",
          "| WebSocket echo | needs a WebSocket echo upstream and generator in the suite; Weir passes upgrades through |",
          "| HTTP/2 over TLS (ALPN h2) and h2 to the upstream | not yet in the suite (h2c downstream only) |",
          "| Envoy | not installable here (no Debian package, no downloads); never quoted as measured |",
          "", "## Method", "",
          "- **Topology.** The proxy under test alone on CPU0 (`taskset -c 0`), one worker: nginx "
          "`worker_processes 1`, HAProxy `nbthread 1`, Caddy `GOMAXPROCS=1`, Weir `workers: 1`, the bare forwarder "
          "a one-thread tokio runtime. wrk / h2load / oha, the nginx upstream (`return 200`, 64-byte body, "
          "keep-alive) and the driver script on CPU1.",
          "- **Throughput is CPU per request**: utime+stime of the proxy's process tree from `/proc/<pid>/stat` over "
          "the measured window, as µs per request and requests per proxy core-second. Raw req/s is shown but "
          "depends on the generator's core.",
          "- **Alternation.** Every scenario runs its peers and Weir one after the other in each round, rotating the "
          "order each round; figures are the median (min–max) over the rounds. Ratios are to the best external peer "
          "(nginx, HAProxy or Caddy) *in the same run*; absolute figures are not comparable across runs on this "
          "shared VM.",
          "- **Same settings for all**: no access logs, 64 idle keep-alive connections to the upstream (nginx "
          "`keepalive 64`, Caddy `keepalive_idle_conns_per_host 64`, Weir's default `max_idle_per_endpoint: 64`, "
          "HAProxy `http-reuse always`), release builds, a 1 s warm-up before each measurement.",
          "- **Latency** at fixed rates with oha `-q RATE --latency-correction` (open loop, corrected for "
          "coordinated omission), as the *added* latency over the same run's direct-to-upstream path. wrk's "
          "closed-loop percentiles are also shown and are mostly queueing.",
          "- **Bottleneck check**: the direct run must reach clearly more req/s than any proxied run; rows within 10% "
          "of it are marked generator-bound.", ""]
    with open(os.path.join(RESULTS, "README.md"), "w") as f:
        f.write("\n".join(L) + "\n")
