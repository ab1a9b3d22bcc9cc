"""Scenario 4a: HTTP/2 downstream, cleartext prior knowledge (h2c), HTTP/1.1 to the upstream.

h2load -t1 -c8 -m8 (64 streams in flight, matching the 64 idle upstream connections each proxy
keeps). nginx `listen ... http2` (cleartext: h2c prior knowledge only), HAProxy `bind ... proto h2`,
Caddy `servers { protocols h1 h2 h2c }`, Weir's http listener (HTTP/1.1 and h2c on one port), and
the bare forwarder (hyper's auto server). The direct baseline is the nginx upstream's own h2c port.
"""

from . import peers
from .common import PROXY_PORT, UPSTREAM_H2C_PORT, fmt_range, fmt_ratio, h2load, header, med, write_result
from .runner import Entry, failures, run_rounds

# The bare forwarder is in since it sets HTTP/1.1 on the upstream request (before 2026-12-02 it
# passed the downstream HTTP/2 version on, and every request was a 502).
NAMES = ["nginx", "haproxy", "caddy", "forwarder", "weir"]


def run(ctx, names=None):
    names = names or NAMES
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(2, 8)
    args = ["-t1", "-c8", "-m8"]

    def entry(name):
        url = f"http://127.0.0.1:{UPSTREAM_H2C_PORT if name == 'direct' else PROXY_PORT}/"
        launch = None if name == "direct" else (lambda c, n=name: peers.launch(c, n, "h2c"))
        return Entry(name, launch, [("h2c", lambda u=url: h2load(u, args + ["-n", "20000"]),
                                     lambda u=url: h2load(u, args + ["-D", str(seconds)]))])

    res = run_rounds(ctx, [entry(n) for n in names + ["direct"]], rounds, "h2c")
    res = {n: v["h2c"] for n, v in res.items()}

    ext = [n for n in names if n in peers.EXTERNAL]
    best_name = max(ext, key=lambda n: med(res[n], "req_per_core_s")[0]) if ext else None
    best = med(res[best_name], "req_per_core_s")[0] if best_name else 0
    direct_rps = med(res["direct"], "rps")[0]
    lines = [header("HTTP/2 downstream (h2c prior knowledge), HTTP/1.1 upstream", ctx,
                    f"h2load {' '.join(args)} -D {seconds} (64 streams in flight), {rounds} rounds after a "
                    "20000-request warm-up; closed loop."), "",
             "| proxy | req/s | µs CPU / request | requests per core-second | vs best peer | mean latency µs | RSS MiB | failed |",
             "|---|---|---|---|---|---|---|---|"]
    rows = {}
    for n in names:
        rcs = med(res[n], "req_per_core_s")
        ratio = rcs[0] / best if best else 0
        rows[n] = {"req_per_core_s": rcs, "cpu_us_per_req": med(res[n], "cpu_us_per_req"),
                   "rps": med(res[n], "rps"), "ratio": ratio, "mean_us": med(res[n], "mean_us")}
        gb = " ⚠ generator-bound?" if rows[n]["rps"][0] > 0.9 * direct_rps else ""
        lines.append(f"| {peers.LABELS[n]} | {fmt_range(rows[n]['rps'])}{gb} | {fmt_range(rows[n]['cpu_us_per_req'], 1)} | "
                     f"{fmt_range(rcs)} | {fmt_ratio(ratio)} | {rows[n]['mean_us'][0]:.0f} | "
                     f"{med(res[n], 'rss_kb')[0] / 1024:.1f} | {failures(res[n])[0]} |")
    d = res["direct"]
    lines.append(f"| direct (nginx upstream's h2c port) | {fmt_range(med(d, 'rps'))} | – | – | – | "
                 f"{med(d, 'mean_us')[0]:.0f} | – | {failures(d)[0]} |")
    lines += ["", f"Best peer: {peers.LABELS.get(best_name, '–')}. h2load reports no percentiles in this mode; "
              "the mean is closed-loop and only comparable within this table. The direct row shares CPU1 with "
              "h2load, so it is a weak ceiling. The bare hyper forwarder is the floor (not a peer).", ""]
    text = "\n".join(lines) + "\n"
    write_result("http2", text, {
        "scenario": "http2", "title": "HTTP/2 downstream (h2c)", "best_peer": best_name, "rows": rows,
        "chart": {"label": "HTTP/2 (h2c) downstream", "ratios": {n: rows[n]["ratio"] for n in names}},
        "date": text.splitlines()[2].split(";")[0], "goals": [],
    })
