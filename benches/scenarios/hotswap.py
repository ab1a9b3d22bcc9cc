"""Scenario 6: hot reload under load — runs benches/hot_swap.py (which writes
results/hot-swap.md) and extracts its figures for the summary."""

import json
import os
import re
import subprocess
import sys

from .common import BENCHES, RESULTS


def run(ctx):
    script = os.path.join(BENCHES, "hot_swap.py")
    subprocess.run([sys.executable, script, "--weir", ctx.weir], check=True)
    with open(os.path.join(RESULTS, "hot-swap.md")) as f:
        text = f.read()
    data = {"scenario": "hot-swap", "title": "Hot swap of a filter under load", "goals": [],
            "mode": "same in quick and full"}
    m = re.search(r"never compiled \| ([\d.]+) ms", text)
    data["uncached_ms"] = float(m.group(1)) if m else None
    m = re.search(r"already compiled \(median of 20; min-max\) \| ([\d.]+) ms", text)
    data["cached_ms"] = float(m.group(1)) if m else None
    m = re.search(r"steady state: p50 / p99 \| (\d+) µs / (\d+) µs \((\d+) requests, non-2xx (\d+), socket errors ([^)]*)\)", text)
    if m:
        data["steady"] = {"p50_us": int(m.group(1)), "p99_us": int(m.group(2)), "requests": int(m.group(3)),
                          "non2xx": int(m.group(4)), "socket_errors": m.group(5)}
    m = re.search(r"swapping every 250 ms \((\d+) swaps\): p50 / p99 \| (\d+) µs / (\d+) µs \((\d+) requests, "
                  r"non-2xx (\d+), socket errors ([^)]*)\)", text)
    if m:
        data["swapping"] = {"swaps": int(m.group(1)), "p50_us": int(m.group(2)), "p99_us": int(m.group(3)),
                            "requests": int(m.group(4)), "non2xx": int(m.group(5)), "socket_errors": m.group(6)}
        failed = int(m.group(5)) + (0 if m.group(6).strip() == "none" else 1)
        data["goals"].append({"goal": "hot swap under load: 0 failed requests",
                              "value": f"{m.group(5)} non-2xx, socket errors {m.group(6)}", "met": failed == 0})
    m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d UTC)", text, re.M)
    data["date"] = m.group(1) if m else "?"
    with open(os.path.join(RESULTS, "hot-swap.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
