"""Runs a set of entries (proxies, or Weir configs) alternately for several rounds."""

import time

from .common import PROXY_PORT, measured, stop, wait_ready


class Entry:
    """One thing measured per round.

    launch: ctx -> Proc, or None for a direct (no proxy) run.
    steps: list of (key, warm, load): after the proxy is up, for each step `warm()` runs unmeasured
      and `load()` (a generator call returning a dict with `reqs`) is measured against the proxy's
      CPU. Several steps share one proxy start (e.g. TLS keep-alive then handshakes).
    """

    def __init__(self, name, launch, steps, port=PROXY_PORT, check=None):
        self.name = name
        self.launch = launch
        self.steps = steps
        self.port = port
        self.check = check  # optional: called once the proxy is up, before the first round's load


def rotate(seq, k):
    k %= max(len(seq), 1)
    return seq[k:] + seq[:k]


def run_rounds(ctx, entries, rounds, title):
    """Returns {entry name: {step key: [result per round]}}. The entry order rotates each round so
    slow drift of the machine does not always hit the same proxy."""
    results = {e.name: {k: [] for k, _, _ in e.steps} for e in entries}
    checked = set()
    for r in range(rounds):
        for e in rotate(list(entries), r):
            proc = e.launch(ctx) if e.launch else None
            try:
                if proc:
                    wait_ready(proc, e.port)
                if e.check and e.name not in checked:
                    e.check(proc)
                    checked.add(e.name)
                for key, warm, load in e.steps:
                    if warm:
                        warm()
                    res = measured(proc, load)
                    results[e.name][key].append(res)
                    print(f"[{title}] round {r + 1}/{rounds} {e.name:10} {key:10} {line(res)}", flush=True)
            finally:
                stop(proc, (e.port,))
            time.sleep(0.05)
    return results


def line(res):
    s = f"{res.get('rps', 0):9.0f} req/s"
    if "cpu_us_per_req" in res:
        s += f"  {res['cpu_us_per_req']:6.1f} µs CPU/req  {res['req_per_core_s']:8.0f} req/core-s"
    if res.get("p50_us"):
        s += f"  p50 {res['p50_us']:7.0f} µs  p99 {res.get('p99_us', 0):7.0f} µs"
    if res.get("mean_us"):
        s += f"  mean {res['mean_us']:7.0f} µs"
    if res.get("bad"):
        s += f"  non-2xx {res['bad']}"
    if res.get("errors"):
        s += f"  errors {res['errors']}"
    if res.get("failed") or res.get("errored"):
        s += f"  failed {res.get('failed', 0)} errored {res.get('errored', 0)}"
    return s


def failures(rows):
    """Total non-2xx + failed + errored over a list of results, and socket error strings."""
    n = sum(int(r.get("bad", 0)) + int(r.get("failed", 0)) + int(r.get("errored", 0)) for r in rows)
    errs = [r["errors"] for r in rows if r.get("errors") and r["errors"] != 0]
    return n, errs
