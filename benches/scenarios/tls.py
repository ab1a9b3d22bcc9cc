"""Scenario 3: TLS 1.3 termination (HTTP/1.1 inside), self-signed ECDSA P-256 certificate.

Per proxy start, two measurements:
- keep-alive: wrk -t1 -c64 over https (handshakes only at connection start): symmetric crypto and
  record framing per request.
- handshakes: h2load --h1 in rate mode, one request per connection (-n N -c N), new connections
  opened at a fixed rate that every proxy sustains, so CPU per handshake is compared at the same
  offered load. h2load never resumes sessions: each connection is a full handshake (X25519 + ECDSA
  P-256 signature on the proxy's side).
The bare forwarder has no TLS and is left out.
"""

import socket
import ssl

from . import peers
from .common import PROXY_TLS_PORT, fmt_range, fmt_ratio, h2load, header, med, write_result, wrk
from .runner import Entry, failures, run_rounds

NAMES = ["nginx", "haproxy", "caddy", "weir"]
URL = f"https://127.0.0.1:{PROXY_TLS_PORT}/"


def negotiated():
    """What an OpenSSL client with default settings (like wrk) gets: version and cipher suite."""
    c = ssl.create_default_context()
    c.check_hostname = False
    c.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", PROXY_TLS_PORT), timeout=5) as s:
        with c.wrap_socket(s, server_hostname="localhost") as t:
            return f"{t.version()} {t.cipher()[0]}"


def run(ctx, names=None):
    names = names or NAMES
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(2, 8)
    rate = 1000   # new connections per second offered to every proxy (1500 saturates h2load on CPU1)
    per_ms = 50
    n = int(rate * seconds)
    hs_args = ["--h1", "-t1", f"-n{n}", f"-c{n}", f"-r{rate * per_ms // 1000}", f"--rate-period={per_ms}ms"]
    seen = {}

    def check(name):
        def f(proc):
            seen[name] = negotiated()
        return f

    def entry(name):
        return Entry(name, lambda c, nm=name: peers.launch(c, nm, "tls"), [
            ("keepalive", lambda: wrk(URL, ctx.warmup(), 64), lambda: wrk(URL, seconds, 64)),
            ("handshake", lambda: h2load(URL, ["--h1", "-t1", "-n200", "-c200"]), lambda: h2load(URL, hs_args)),
        ], port=PROXY_TLS_PORT, check=check(name))

    res = run_rounds(ctx, [entry(nm) for nm in names], rounds, "tls")

    ext = [nm for nm in names if nm in peers.EXTERNAL]
    rows, best = {}, {}
    for key in ("keepalive", "handshake"):
        b = max(ext, key=lambda nm: med(res[nm][key], "req_per_core_s")[0]) if ext else None
        best[key] = (b, med(res[b][key], "req_per_core_s")[0] if b else 0)
    lines = [header("TLS 1.3 termination", ctx,
                    f"Self-signed ECDSA P-256 certificate, TLS 1.3 only where the proxy allows restricting it; "
                    f"{rounds} rounds."), ""]
    lines += ["## Handshakes (a new connection per request)", "",
              f"h2load {' '.join(hs_args)}: {rate} new connections per second offered to every proxy for "
              f"{seconds} s, one HTTP/1.1 request on each, no session resumption.", "",
              "| proxy | negotiated | connections/s achieved | µs CPU / handshake (+1 request) | handshakes per core-second | vs best peer | failed |",
              "|---|---|---|---|---|---|---|"]
    for nm in names:
        r = res[nm]["handshake"]
        rcs = med(r, "req_per_core_s")
        ratio = rcs[0] / best["handshake"][1] if best["handshake"][1] else 0
        ach = med(r, "rps")
        rows.setdefault(nm, {})["handshake"] = {"req_per_core_s": rcs, "cpu_us_per_req": med(r, "cpu_us_per_req"),
                                                "rps": ach, "ratio": ratio}
        warn = " ⚠ below the offered rate" if ach[0] < 0.9 * rate else ""
        lines.append(f"| {peers.LABELS[nm]} | {seen.get(nm, '?')} | {fmt_range(ach)}{warn} | "
                     f"{fmt_range(med(r, 'cpu_us_per_req'), 1)} | {fmt_range(rcs)} | {fmt_ratio(ratio)} | {failures(r)[0]} |")
    lines += ["", f"Best peer: {peers.LABELS.get(best['handshake'][0], '–')}. The achieved rate is below the offered "
              "one by the run's start-up and tail (h2load's wall time includes them).", "",
              "## Keep-alive requests over TLS", "", f"wrk -t1 -c64 -d{seconds}s over https (OpenSSL default "
              "cipher order, as shown in *negotiated* above).", "",
              "| proxy | req/s | µs CPU / request | requests per core-second | vs best peer | p50 µs | p99 µs | failed |",
              "|---|---|---|---|---|---|---|---|"]
    for nm in names:
        r = res[nm]["keepalive"]
        rcs = med(r, "req_per_core_s")
        ratio = rcs[0] / best["keepalive"][1] if best["keepalive"][1] else 0
        rows[nm]["keepalive"] = {"req_per_core_s": rcs, "cpu_us_per_req": med(r, "cpu_us_per_req"),
                                 "rps": med(r, "rps"), "ratio": ratio}
        lines.append(f"| {peers.LABELS[nm]} | {fmt_range(med(r, 'rps'))} | {fmt_range(med(r, 'cpu_us_per_req'), 1)} | "
                     f"{fmt_range(rcs)} | {fmt_ratio(ratio)} | {med(r, 'p50_us')[0]:.0f} | {med(r, 'p99_us')[0]:.0f} | "
                     f"{failures(r)[0]} |")
    lines += ["", f"Best peer: {peers.LABELS.get(best['keepalive'][0], '–')}.", ""]
    text = "\n".join(lines) + "\n"
    write_result("tls", text, {
        "scenario": "tls", "title": "TLS 1.3 termination", "rows": rows, "negotiated": seen,
        "best_peer": {k: v[0] for k, v in best.items()}, "goals": [],
        "charts": [
            {"label": "TLS 1.3 handshakes", "ratios": {nm: rows[nm]["handshake"]["ratio"] for nm in names}},
            {"label": "TLS 1.3 keep-alive", "ratios": {nm: rows[nm]["keepalive"]["ratio"] for nm in names}},
        ],
        "date": text.splitlines()[2].split(";")[0],
    })
