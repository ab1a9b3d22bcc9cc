"""Scenario 2a: chains of 0, 1, 2, 4 and 8 no-op wasm filters in Weir.

Each filter is the testbed component (tests/filters/testbed) in mode `noop` (declares only
request-headers and returns Continue), under a distinct name so each is its own (filter, config)
pair with its own instance pool. Same HTTP/1.1 closed-loop load as the plain scenario; the per-filter
cost is the least-squares slope of µs CPU / request against the chain length.
"""

from . import peers
from .common import PROXY_PORT, fmt_range, header, med, write_result, wrk
from .runner import Entry, failures, run_rounds

LENGTHS = [0, 1, 2, 4, 8]
URL = f"http://127.0.0.1:{PROXY_PORT}/"


def noop_filters(ctx, k, prefix="n"):
    return [{"name": f"{prefix}{i + 1}", "module": ctx.filter("testbed"), "config": {"mode": "noop"}} for i in range(k)]


def slope(xs, ys):
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys))
    r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
    return b, a, r2


def run(ctx):
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(2, 8)

    def entry(k):
        fs = noop_filters(ctx, k)
        return Entry(f"chain-{k}",
                     lambda c, fs=fs, k=k: peers.run_weir(c, "http", filters=fs, route_filters=[f["name"] for f in fs],
                                                          tag=f"weir-chain-{k}"),
                     [("closed", lambda: wrk(URL, ctx.warmup(), 64), lambda: wrk(URL, seconds, 64))])

    res = run_rounds(ctx, [entry(k) for k in LENGTHS], rounds, "chains")
    res = {k: res[f"chain-{k}"]["closed"] for k in LENGTHS}
    cpu = {k: med(res[k], "cpu_us_per_req") for k in LENGTHS}
    b, a, r2 = slope(LENGTHS, [cpu[k][0] for k in LENGTHS])
    # Per-round slopes give the spread.
    per_round = []
    for r in range(rounds):
        try:
            per_round.append(slope(LENGTHS, [res[k][r]["cpu_us_per_req"] for k in LENGTHS])[0])
        except IndexError:
            pass
    base = med(res[0], "req_per_core_s")[0]
    lines = [header("Chains of no-op wasm filters in Weir", ctx,
                    f"wrk -t1 -c64, {rounds} rounds × {seconds} s; each filter: the testbed component in mode "
                    "`noop` (request-headers phase only), distinct names, one route."), "",
             "| filters | req/s | µs CPU / request | requests per core-second | vs no filters | p50 µs | p99 µs | RSS MiB | failed |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for k in LENGTHS:
        rcs = med(res[k], "req_per_core_s")
        rows[k] = {"cpu_us_per_req": cpu[k], "req_per_core_s": rcs, "rps": med(res[k], "rps"),
                   "ratio_to_0": rcs[0] / base if base else 0}
        lines.append(f"| {k} | {fmt_range(med(res[k], 'rps'))} | {fmt_range(cpu[k], 1)} | {fmt_range(rcs)} | "
                     f"{rows[k]['ratio_to_0']:.2f}× | {med(res[k], 'p50_us')[0]:.0f} | {med(res[k], 'p99_us')[0]:.0f} | "
                     f"{med(res[k], 'rss_kb')[0] / 1024:.1f} | {failures(res[k])[0]} |")
    spread = f" (per-round slopes {min(per_round):.2f}–{max(per_round):.2f})" if per_round else ""
    lines += ["", f"**Per-filter cost: {b:.2f} µs CPU / request per no-op filter**{spread}; intercept {a:.1f} µs, "
              f"R² {r2:.3f} (least squares over the medians). Goal: ≤ 1 µs.", ""]
    text = "\n".join(lines) + "\n"
    write_result("filter-chains", text, {
        "scenario": "filter-chains", "title": "No-op filter chains", "rows": {str(k): v for k, v in rows.items()},
        "slope_us": b, "intercept_us": a, "r2": r2, "per_round_slopes": per_round,
        "goals": [{"goal": "each no-op filter ≤ 1 µs CPU / request", "value": f"{b:.2f} µs", "met": b <= 1.0}],
        "date": text.splitlines()[2].split(";")[0],
    })
