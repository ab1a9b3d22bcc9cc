"""Scenario 1: plain L7 proxy, HTTP/1.1 keep-alive, 64-byte body.

Closed loop (wrk -t1 -c64) for CPU per request and the saturation point; then, when oha is
installed, open loop at fixed rates (10/50/80% of the weakest peer's closed-loop max) with
latency correction, for the latency each proxy adds over the same run's direct path.
"""

from . import peers
from .common import (DIRECT_CPU0_PORT, PROXY_PORT, UPSTREAM_PORT, fmt_range, fmt_ratio, header, med, oha, oha_path,
                     write_result, wrk)
from .runner import Entry, failures, run_rounds

NAMES = ["nginx", "haproxy", "caddy", "forwarder", "weir"]
URL = f"http://127.0.0.1:{PROXY_PORT}/"
DIRECT = f"http://127.0.0.1:{UPSTREAM_PORT}/"
DIRECT_CPU0 = f"http://127.0.0.1:{DIRECT_CPU0_PORT}/"


def run(ctx, names=None):
    names = names or NAMES
    rounds = ctx.rounds(2, 5)
    seconds = ctx.seconds(3, 8)
    conns = 64

    def entry(name):
        url = DIRECT if name == "direct" else URL
        launch = None if name == "direct" else (lambda c, n=name: peers.launch(c, n, "http"))
        return Entry(name, launch, [("closed", lambda u=url: wrk(u, ctx.warmup(), conns),
                                     lambda u=url: wrk(u, seconds, conns))])

    closed = run_rounds(ctx, [entry(n) for n in names + ["direct"]], rounds, "plain")
    closed = {n: v["closed"] for n, v in closed.items()}

    # Fixed-rate latency (open loop) at fractions of the weakest external peer's max.
    fixed, rates = {}, []
    if oha_path():
        ext = [n for n in names if n in peers.EXTERNAL] or names
        weakest = min(med(closed[n], "rps")[0] for n in ext)
        fractions = (0.5,) if ctx.quick else (0.1, 0.5, 0.8)
        rates = [max(100, int(weakest * f)) for f in fractions]
        lat_rounds = ctx.rounds(1, 3)
        lat_seconds = ctx.seconds(3, 6)

        def lat_entry(name):
            if name == "direct":
                url, port, launch = DIRECT_CPU0, DIRECT_CPU0_PORT, peers.start_direct_cpu0
            else:
                url, port, launch = URL, PROXY_PORT, (lambda c, n=name: peers.launch(c, n, "http"))
            steps = [(f"q{rate}", (lambda u=url: wrk(u, ctx.warmup(), conns)) if i == 0 else None,
                      lambda u=url, q=rate: oha(u, q, lat_seconds, conns))
                     for i, rate in enumerate(rates)]
            return Entry(name, launch, steps, port=port)

        fixed = run_rounds(ctx, [lat_entry(n) for n in names + ["direct"]], lat_rounds, "plain-latency")

    report(ctx, names, closed, fixed, rates, rounds, seconds, conns)


def report(ctx, names, closed, fixed, rates, rounds, seconds, conns):
    ext = [n for n in names if n in peers.EXTERNAL]
    best_name = max(ext, key=lambda n: med(closed[n], "req_per_core_s")[0]) if ext else None
    best = med(closed[best_name], "req_per_core_s")[0] if best_name else 0
    direct_rps = med(closed["direct"], "rps")[0]
    lines = [header("Plain HTTP/1.1 L7 proxy, keep-alive, 64-byte body", ctx,
                    f"Closed loop: wrk -t1 -c{conns}, {rounds} rounds × {seconds} s after a 1 s warm-up."), ""]
    lines += [
        "| proxy | req/s | µs CPU / request | requests per core-second | vs best peer | p50 µs (closed loop) | p99 µs (closed loop) | RSS MiB under load | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for n in names:
        rcs = med(closed[n], "req_per_core_s")
        ratio = rcs[0] / best if best else 0
        bad, errs = failures(closed[n])
        rows[n] = {"req_per_core_s": rcs, "cpu_us_per_req": med(closed[n], "cpu_us_per_req"),
                   "rps": med(closed[n], "rps"), "ratio": ratio, "rss_kb": med(closed[n], "rss_kb"),
                   "p50_us": med(closed[n], "p50_us"), "p99_us": med(closed[n], "p99_us")}
        gen_bound = " ⚠ generator-bound?" if med(closed[n], "rps")[0] > 0.9 * direct_rps else ""
        lines.append(
            f"| {peers.LABELS[n]} | {fmt_range(rows[n]['rps'])}{gen_bound} | {fmt_range(rows[n]['cpu_us_per_req'], 1)} | "
            f"{fmt_range(rcs)} | {fmt_ratio(ratio)} | {rows[n]['p50_us'][0]:.0f} | {rows[n]['p99_us'][0]:.0f} | "
            f"{rows[n]['rss_kb'][0] / 1024:.1f} | {bad}{' ' + '; '.join(errs) if errs else ''} |")
    d = closed["direct"]
    lines.append(f"| direct (no proxy) | {fmt_range(med(d, 'rps'))} | – | – | – | {med(d, 'p50_us')[0]:.0f} | "
                 f"{med(d, 'p99_us')[0]:.0f} | – | {failures(d)[0]} |")
    lines += ["", f"Best peer: {peers.LABELS.get(best_name, '–')}. Requests per core-second = requests / proxy CPU "
              "seconds: what one proxy core delivers, whether or not the generator saturated first. A row whose "
              "req/s comes within 10% of the direct run's is marked generator-bound: its req/s says little, its "
              "CPU per request still holds.", ""]

    latency = {}
    if fixed:
        lines += [f"## Added latency at fixed rates (oha, open loop, `--latency-correction`, -c{conns})", "",
                  "Rates are fractions of the weakest external peer's closed-loop max. Added = proxied minus the "
                  "same run's direct figure (medians over rounds). The direct row is a copy of the upstream running "
                  "on CPU0, where the proxies run: with the upstream on the generator's core, direct requests queue "
                  "behind the generator itself and come out slower than proxied ones. p99 on these VMs is dominated "
                  "by scheduler ticks: compare it only within a rate.", "",
                  "| rate req/s | proxy | p50 µs | p99 µs | p99.9 µs | added p50 µs | added p99 µs | added p50 vs best peer's | µs CPU / request | failed |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for rate in rates:
            key = f"q{rate}"
            dp50 = med(fixed["direct"][key], "p50_us")[0]
            dp99 = med(fixed["direct"][key], "p99_us")[0]
            added = {n: med(fixed[n][key], "p50_us")[0] - dp50 for n in names}
            ext_added = [added[n] for n in ext if added[n] > 0]
            best_added = min(ext_added) if ext_added else 0
            latency[rate] = {}
            for n in names + ["direct"]:
                rows_ = fixed[n][key]
                p50, p99, p999 = med(rows_, "p50_us")[0], med(rows_, "p99_us")[0], med(rows_, "p999_us")[0]
                a50 = p50 - dp50 if n != "direct" else 0
                a99 = p99 - dp99 if n != "direct" else 0
                rel = (a50 / best_added) if (n != "direct" and best_added) else 0
                cpu = med(rows_, "cpu_us_per_req")[0] if n != "direct" else 0
                latency[rate][n] = {"p50_us": p50, "p99_us": p99, "p999_us": p999, "added_p50_us": a50,
                                    "added_p99_us": a99, "added_p50_vs_best": rel}
                lines.append(
                    f"| {rate} | {peers.LABELS[n]} | {p50:.0f} | {p99:.0f} | {p999:.0f} | "
                    f"{'–' if n == 'direct' else f'{a50:.0f}'} | {'–' if n == 'direct' else f'{a99:.0f}'} | "
                    f"{fmt_ratio(rel) if n != 'direct' else '–'} | {f'{cpu:.1f}' if cpu else '–'} | {failures(rows_)[0]} |")
        lines.append("")
    else:
        lines += ["Fixed-rate latency: oha is not installed (benches/setup.sh installs it into target/tools), so "
                  "the only latencies here are wrk's closed-loop figures above, which mostly reflect queueing "
                  "at 64 connections.", ""]

    goals = []
    if "weir" in rows and best:
        goals.append({"goal": "Weir plain L7 ≥ 1.10× best peer (requests per core-second)",
                      "value": f"{rows['weir']['ratio']:.2f}×", "met": rows["weir"]["ratio"] >= 1.10})
    if "weir" in rows and "forwarder" in rows:
        r = rows["weir"]["req_per_core_s"][0] / rows["forwarder"]["req_per_core_s"][0]
        goals.append({"goal": "Weir ≥ 0.9× the bare hyper forwarder", "value": f"{r:.2f}×", "met": r >= 0.9})
    if latency:
        mid = rates[len(rates) // 2]
        rel = latency[mid].get("weir", {}).get("added_p50_vs_best", 0)
        goals.append({"goal": f"Weir added p50 ≤ 0.8× best peer's (at {mid} req/s, oha open loop)",
                      "value": f"{rel:.2f}× ({latency[mid]['weir']['added_p50_us']:.0f} µs)", "met": rel <= 0.8})
    elif "weir" in rows:
        dp50 = med(closed["direct"], "p50_us")[0]
        a = {n: rows[n]["p50_us"][0] - dp50 for n in names}
        ba = min((a[n] for n in ext if a[n] > 0), default=0)
        rel = a["weir"] / ba if ba else 0
        goals.append({"goal": "Weir added p50 ≤ 0.8× best peer's (wrk closed loop: no oha)",
                      "value": f"{rel:.2f}×", "met": rel <= 0.8})
    text = "\n".join(lines) + "\n"
    write_result("plain-http1", text, {
        "scenario": "plain-http1", "title": "Plain HTTP/1.1 keep-alive", "best_peer": best_name,
        "rows": rows, "latency": {str(k): v for k, v in latency.items()}, "goals": goals,
        "chart": {"label": "HTTP/1.1 keep-alive", "ratios": {n: rows[n]["ratio"] for n in names}},
        "date": text.splitlines()[2].split(";")[0],
    })
