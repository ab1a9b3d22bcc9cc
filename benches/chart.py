#!/usr/bin/env python3
"""Draws benches/results/chart.svg from the scenario JSON files in benches/results/: for each
scenario, horizontal bars of requests per proxy core-second relative to the best external peer
(1.0 = the best of nginx / HAProxy / Caddy in that scenario; for the realistic chain, nginx + Lua).
Plain Python, no plotting library.

Usage: benches/chart.py [RESULTS_DIR]
"""

import json
import os
import sys
from xml.sax.saxutils import escape

ORDER = ["nginx", "haproxy", "caddy", "nginx-lua", "forwarder", "weir"]
NAMES = {"nginx": "nginx", "haproxy": "HAProxy", "caddy": "Caddy", "nginx-lua": "nginx + Lua",
         "forwarder": "bare hyper forwarder", "weir": "Weir"}
COLORS = {"nginx": "#4e8a3e", "haproxy": "#2f6db5", "caddy": "#8e6bbf", "nginx-lua": "#6aa84f",
          "forwarder": "#9a9a9a", "weir": "#d9622b"}
SCENARIOS = ["plain-http1", "http2", "tls", "realistic-chain"]


def groups(results_dir):
    out = []
    for s in SCENARIOS:
        path = os.path.join(results_dir, s + ".json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            data = json.load(f)
        charts = data.get("charts") or ([data["chart"]] if data.get("chart") else [])
        for c in charts:
            ratios = {k: v for k, v in c["ratios"].items() if v}
            if ratios:
                out.append((c["label"], data.get("date", ""), ratios))
    return out


def svg(gs, title="Requests per proxy core-second, relative to the best peer (1.00 = best of nginx / HAProxy / Caddy)"):
    bar_h, gap, group_gap = 16, 4, 26
    left, right, top = 190, 70, 58
    width = 860
    plot_w = width - left - right
    vmax = max([1.25] + [v for _, _, r in gs for v in r.values()])
    vmax = (int(vmax * 4) + 1) / 4  # round up to a quarter
    height = top + sum(group_gap + len(r) * (bar_h + gap) for _, _, r in gs) + 40

    def x(v):
        return left + plot_w * v / vmax

    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
          'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
          f'<rect width="{width}" height="{height}" fill="white"/>',
          f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>',
          f'<text x="{width / 2}" y="40" text-anchor="middle" fill="#555">proxy alone on one core, one worker; '
          'higher is better; median of the rounds</text>']
    # grid
    t = 0.0
    while t <= vmax + 1e-9:
        el.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{height - 30}" stroke="#e4e4e4"/>')
        el.append(f'<text x="{x(t):.1f}" y="{height - 14}" text-anchor="middle" fill="#555">{t:.2f}×</text>')
        t += 0.25
    el.append(f'<line x1="{x(1):.1f}" y1="{top - 6}" x2="{x(1):.1f}" y2="{height - 30}" stroke="#222" '
              'stroke-dasharray="4 3"/>')
    y = top
    for label, date, ratios in gs:
        y += group_gap
        el.append(f'<text x="10" y="{y - 8}" font-weight="bold">{escape(label)}</text>')
        for name in sorted(ratios, key=lambda n: ORDER.index(n) if n in ORDER else 99):
            v = ratios[name]
            el.append(f'<text x="{left - 8}" y="{y + bar_h - 4}" text-anchor="end">{escape(NAMES.get(name, name))}</text>')
            el.append(f'<rect x="{left}" y="{y}" width="{max(x(v) - left, 1):.1f}" height="{bar_h}" '
                      f'fill="{COLORS.get(name, "#777")}"/>')
            el.append(f'<text x="{x(v) + 5:.1f}" y="{y + bar_h - 4}" fill="#222">{v:.2f}×</text>')
            y += bar_h + gap
    el.append("</svg>")
    return "\n".join(el) + "\n"


def main():
    main_for(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))


def main_for(d):
    gs = groups(d)
    if not gs:
        sys.exit("no scenario results to chart")
    out = os.path.join(d, "chart.svg")
    with open(out, "w") as f:
        f.write(svg(gs))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
