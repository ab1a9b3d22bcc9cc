"""Scenario 2b: a realistic gateway chain — JWT (HS256) verification, a per-client-IP rate limit,
a header transform — in Weir (the first-party jwt-auth, rate-limit and transform filters) against the
same logic in nginx + Lua (benches/lua/weir_bench_chain.lua). Reference rows in the same run: both
proxies with no logic at all, so each proxy's cost of the chain is visible too.

Every request carries a valid token; the limit (10^6/s, burst 10^6) never trips, but every request
still takes a token from its bucket, as a real limit would.
"""

import base64
import hashlib
import hmac
import http.client
import json
import time

from . import peers
from .common import PROXY_PORT, fmt_range, fmt_ratio, header, med, write_result, wrk
from .runner import Entry, failures, run_rounds

SECRET = "weir-bench-secret-0123456789abcdef-not-for-production"
ISSUER = "https://id.example.com"
AUDIENCE = "orders"
RATE = 1000000
URL = f"http://127.0.0.1:{PROXY_PORT}/orders"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_token(secret=SECRET, **claims):
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = {"sub": "alice", "email": "alice@example.com", "iss": ISSUER, "aud": AUDIENCE,
            "exp": int(time.time()) + 86400 * 365, "iat": int(time.time())}
    body.update(claims)
    pay = b64url(json.dumps(body, separators=(",", ":")).encode())
    sig = b64url(hmac.new(secret.encode(), f"{head}.{pay}".encode(), hashlib.sha256).digest())
    return f"{head}.{pay}.{sig}"


TOKEN = make_token()


def weir_chain(ctx):
    return [
        {"name": "jwt", "module": ctx.filter("jwt_auth"),
         "config": {"keys": [{"kid": "bench", "alg": "HS256", "secret": SECRET}], "issuer": ISSUER,
                    "audiences": [AUDIENCE], "forward_claims": {"sub": "x-user-id"}}},
        {"name": "limit", "module": ctx.filter("rate_limit"),
         "config": {"key": "client_ip", "rate": RATE, "per": "1s", "burst": RATE}, "grants": {"kv": ["ratelimit"]}},
        {"name": "edit", "module": ctx.filter("transform"),
         "config": {"request": {"set": {"x-bench": "1"}, "remove": ["x-debug"]},
                    "response": {"set": {"x-transformed": "yes"}}}},
    ]


LUA_CHAIN = {"secret": SECRET, "issuer": ISSUER, "audience": AUDIENCE, "rate": RATE, "burst": RATE,
             "route": "all", "leeway": 30}


def get(headers):
    c = http.client.HTTPConnection("127.0.0.1", PROXY_PORT, timeout=10)
    c.request("GET", "/orders", headers=headers)
    r = c.getresponse()
    r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def check_chain(name):
    """Both implementations must behave alike before their figures mean anything."""
    def f(proc):
        st, h = get({"Authorization": f"Bearer {TOKEN}", "x-debug": "1"})
        problems = []
        if st != 200:
            problems.append(f"valid token: status {st}")
        for k, v in (("x-seen-user", "alice"), ("x-seen-bench", "1"), ("x-transformed", "yes")):
            if h.get(k) != v:
                problems.append(f"valid token: {k} = {h.get(k)!r}, want {v!r}")
        if "ratelimit-limit" not in h or "ratelimit-remaining" not in h:
            problems.append("valid token: no RateLimit-* headers")
        for what, hdrs in (("no token", {}),
                           ("bad signature", {"Authorization": f"Bearer {make_token(secret=SECRET + 'x')}"}),
                           ("expired", {"Authorization": f"Bearer {make_token(exp=int(time.time()) - 3600)}"}),
                           ("wrong audience", {"Authorization": f"Bearer {make_token(aud='billing')}"})):
            st, h = get(hdrs)
            if st != 401 or "www-authenticate" not in h:
                problems.append(f"{what}: status {st}, www-authenticate {h.get('www-authenticate')!r}")
        if problems:
            raise RuntimeError(f"{name}: the chain does not behave as specified: " + "; ".join(problems))
        print(f"[realistic] {name}: chain checked (valid → 200 with x-user-id, x-bench, RateLimit-*, "
              "x-transformed; missing/bad/expired/wrong-aud → 401)", flush=True)
    return f


def run(ctx):
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(2, 8)
    hdrs = [f"Authorization: Bearer {TOKEN}", "x-debug: 1"]
    chain = weir_chain(ctx)
    launch = {
        "nginx": lambda c: peers.run_nginx(c, "http"),
        "nginx-lua": lambda c: peers.run_nginx_lua(c, LUA_CHAIN),
        "weir": lambda c: peers.run_weir(c, "http"),
        "weir-chain": lambda c: peers.run_weir(c, "http", filters=chain, route_filters=["jwt", "limit", "edit"],
                                               tag="weir-chain"),
    }
    names = ["nginx", "nginx-lua", "weir", "weir-chain"]
    if not ctx.quick:
        # Where Weir's cost goes: each filter of the chain alone.
        for f in chain:
            launch[f"weir-{f['name']}"] = (lambda c, f=f: peers.run_weir(c, "http", filters=[f], route_filters=[f["name"]],
                                                                          tag=f"weir-only-{f['name']}"))
            names.append(f"weir-{f['name']}")
    checks = {"nginx-lua": check_chain("nginx + Lua"), "weir-chain": check_chain("Weir")}
    entries = [Entry(n, launch[n], [("closed", lambda: wrk(URL, ctx.warmup(), 64, hdrs), lambda: wrk(URL, seconds, 64, hdrs))],
                     check=checks.get(n)) for n in names]
    res = run_rounds(ctx, entries, rounds, "realistic")
    res = {n: v["closed"] for n, v in res.items()}

    labels = {"nginx": "nginx, no logic (reference)", "nginx-lua": "nginx + Lua chain",
              "weir": "Weir, no filters (reference)", "weir-chain": "**Weir + jwt-auth, rate-limit, transform**",
              "weir-jwt": "Weir + jwt-auth only", "weir-limit": "Weir + rate-limit only", "weir-edit": "Weir + transform only"}
    base = med(res["nginx-lua"], "req_per_core_s")[0]
    lines = [header("Realistic chain: JWT HS256 verify + rate limit + header transform", ctx,
                    f"wrk -t1 -c64 with a valid HS256 bearer token on every request, {rounds} rounds × {seconds} s."), "",
             "| proxy | req/s | µs CPU / request | requests per core-second | vs nginx + Lua | cost of the chain µs / request | p50 µs | p99 µs | RSS MiB | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for n in names:
        rcs = med(res[n], "req_per_core_s")
        cpu = med(res[n], "cpu_us_per_req")
        ref = "nginx" if n == "nginx-lua" else ("weir" if n.startswith("weir-") else None)
        cost = cpu[0] - med(res[ref], "cpu_us_per_req")[0] if ref else None
        rows[n] = {"req_per_core_s": rcs, "cpu_us_per_req": cpu, "rps": med(res[n], "rps"),
                   "ratio": rcs[0] / base if base else 0, "chain_cost_us": cost}
        lines.append(f"| {labels[n]} | {fmt_range(med(res[n], 'rps'))} | {fmt_range(cpu, 1)} | {fmt_range(rcs)} | "
                     f"{fmt_ratio(rows[n]['ratio'])} | {'–' if cost is None else f'{cost:.1f}'} | "
                     f"{med(res[n], 'p50_us')[0]:.0f} | {med(res[n], 'p99_us')[0]:.0f} | "
                     f"{med(res[n], 'rss_kb')[0] / 1024:.1f} | {failures(res[n])[0]} |")
    r = rows["weir-chain"]["ratio"]
    lines += ["", "What is the same: HS256 signature (HMAC-SHA256, constant-time compare), `alg`/`crit` checks, "
              "`exp` (required) / `nbf` with 30 s leeway, `iss`, `aud`, `sub` → `x-user-id` (cleared first), a "
              "token bucket per client IP per route with 429 and `RateLimit-*` response headers, `x-bench` set, "
              "`x-debug` removed, `x-transformed: yes` on the response; both are checked to answer 401 with "
              "`WWW-Authenticate` for a missing, badly signed, expired or wrong-audience token before measuring.", "",
              "What differs: nginx + Lua computes the HMAC with OpenSSL's libcrypto through LuaJIT's FFI (what "
              "lua-resty-hmac does; that library is not packaged in Debian) while Weir's filter uses RustCrypto "
              "inside the wasm sandbox; the Lua bucket is GCRA over a `lua_shared_dict` (one number per key, "
              "get-then-set, atomic only because there is one worker) while Weir's lives in the host's KV "
              "(`take_tokens`); Weir also supports RS256/ES256, JWKS and `kid` selection, which this token does not "
              "exercise; nginx adds no `x-forwarded-*`/`via`/`x-request-id` headers while Weir does on every route "
              "(in both reference rows too).", ""]
    text = "\n".join(lines) + "\n"
    write_result("realistic-chain", text, {
        "scenario": "realistic-chain", "title": "Realistic chain (JWT + rate limit + transform)", "rows": rows,
        "goals": [{"goal": "realistic chain ≥ 1.5× nginx + Lua's throughput (requests per core-second)",
                   "value": f"{r:.2f}×", "met": r >= 1.5}],
        "chart": {"label": "JWT + rate limit + transform (1.00 = nginx + Lua)", "ratios": {"nginx-lua": 1.0 if base else 0,
                                                                       "weir": rows["weir-chain"]["ratio"]}},
        "date": text.splitlines()[2].split(";")[0],
    })
