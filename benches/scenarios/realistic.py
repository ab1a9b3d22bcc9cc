"""Scenario 2b: a realistic gateway chain — JWT verification, a per-client-IP rate limit, a header
transform — in Weir (the first-party jwt-auth, rate-limit and transform filters) against the same
logic in nginx + Lua (benches/lua/weir_bench_chain.lua), with HS256, RS256 (RSA-2048) and ES256
(P-256) tokens. Reference rows in the same run: both proxies with no logic at all, so each proxy's
cost of the chain is visible too, and ring's own time for one RS256 / ES256 verification on the
proxy's core (benches/src/verify_bench.rs), the floor for jwt-auth's cost per request.

Every request carries a valid token; the limit (10^6/s, burst 10^6) never trips, but every request
still takes a token from its bucket, as a real limit would. The RSA and EC keys are made by OpenSSL
for each run.
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import subprocess
import time

from . import peers
from .common import ADMIN_PORT, PROXY_PORT, fmt_range, fmt_ratio, header, med, write_result, wrk
from .runner import Entry, failures, run_rounds

SECRET = "weir-bench-secret-0123456789abcdef-not-for-production"
ISSUER = "https://id.example.com"
AUDIENCE = "orders"
RATE = 1000000
URL = f"http://127.0.0.1:{PROXY_PORT}/orders"


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


ALGS = ("HS256", "RS256", "ES256")



def openssl_keys(tmp):
    """An RSA-2048 key (RS256) and a P-256 key (ES256) made by OpenSSL for this run: the private
    key's path (to sign), the public key as PEM (the configs) and as SPKI DER (verify-bench)."""
    keys = {}
    for alg, args in (("RS256", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                      ("ES256", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"])):
        priv = os.path.join(tmp, f"jwt-{alg}.key")
        der = os.path.join(tmp, f"jwt-{alg}.spki.der")
        subprocess.run(["openssl", "genpkey", *args, "-out", priv], check=True, capture_output=True)
        subprocess.run(["openssl", "pkey", "-in", priv, "-pubout", "-outform", "DER", "-out", der],
                       check=True, capture_output=True)
        pem = subprocess.run(["openssl", "pkey", "-in", priv, "-pubout"], check=True, capture_output=True).stdout
        keys[alg] = {"priv": priv, "der": der, "pem": pem.decode()}
    return keys


def der_to_rs(der, size):
    """An ECDSA-Sig-Value (DER SEQUENCE of r, s) as JWS's fixed r || s."""
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 2, "not a DER INTEGER"
        n = der[i + 1]
        out += der[i + 2:i + 2 + n].lstrip(b"\0").rjust(size, b"\0")
        i += 2 + n
    return out


def make_token(alg="HS256", keys=None, secret=SECRET, tamper=False, **claims):
    head = b64url(json.dumps({"alg": alg, "typ": "JWT"}, separators=(",", ":")).encode())
    body = {"sub": "alice", "email": "alice@example.com", "iss": ISSUER, "aud": AUDIENCE,
            "exp": int(time.time()) + 86400 * 365, "iat": int(time.time())}
    body.update(claims)
    pay = b64url(json.dumps(body, separators=(",", ":")).encode())
    data = f"{head}.{pay}".encode()
    if alg == "HS256":
        sig = hmac.new(secret.encode(), data, hashlib.sha256).digest()
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", keys[alg]["priv"]], input=data,
                             check=True, capture_output=True).stdout
        if alg == "ES256":
            sig = der_to_rs(sig, 32)
    if tamper:
        sig = bytes([sig[0] ^ 1]) + sig[1:]
    return f"{head}.{pay}.{b64url(sig)}"


# The HS256 token other scenarios send (memory.py).
TOKEN = make_token()


def jwt_key(alg, keys):
    if alg == "HS256":
        return {"kid": "bench", "alg": "HS256", "secret": SECRET}
    return {"kid": "bench", "alg": alg, "public_key_pem": keys[alg]["pem"]}


def lua_chain(alg, keys):
    c = dict(LUA_CHAIN, alg=alg)
    if alg != "HS256":
        c["public_key_pem"] = keys[alg]["pem"]
    return c


def weir_chain(ctx, alg="HS256", keys=None):
    return [
        {"name": "jwt", "module": ctx.filter("jwt_auth"),
         "config": {"keys": [jwt_key(alg, keys)], "issuer": ISSUER,
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


def check_chain(name, alg, keys):
    """Both implementations must behave alike before their figures mean anything."""
    token = make_token(alg, keys)

    def f(proc):
        st, h = get({"Authorization": f"Bearer {token}", "x-debug": "1"})
        problems = []
        if st != 200:
            problems.append(f"valid token: status {st}")
        for k, v in (("x-seen-user", "alice"), ("x-seen-bench", "1"), ("x-transformed", "yes")):
            if h.get(k) != v:
                problems.append(f"valid token: {k} = {h.get(k)!r}, want {v!r}")
        if "ratelimit-limit" not in h or "ratelimit-remaining" not in h:
            problems.append("valid token: no RateLimit-* headers")
        for what, hdrs in (("no token", {}),
                           ("bad signature", {"Authorization": f"Bearer {make_token(alg, keys, tamper=True)}"}),
                           ("expired", {"Authorization": f"Bearer {make_token(alg, keys, exp=int(time.time()) - 3600)}"}),
                           ("wrong audience", {"Authorization": f"Bearer {make_token(alg, keys, aud='billing')}"})):
            st, h = get(hdrs)
            if st != 401 or "www-authenticate" not in h:
                problems.append(f"{what}: status {st}, www-authenticate {h.get('www-authenticate')!r}")
        if problems:
            raise RuntimeError(f"{name}: the chain does not behave as specified: " + "; ".join(problems))
        print(f"[realistic] {name} {alg}: chain checked (valid → 200 with x-user-id, x-bench, RateLimit-*, "
              "x-transformed; missing/bad/expired/wrong-aud → 401)", flush=True)
    return f


def jwt_calls():
    """(seconds, calls) of the jwt filter's phase calls so far, from Weir's /metrics."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if 'filter="jwt"' not in line:
            continue
        if line.startswith("weir_filter_call_duration_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("weir_filter_call_duration_seconds_count"):
            count += float(line.split()[-1])
    return total, count


def with_jwt_time(load):
    """`load`, plus the mean time of jwt-auth's phase call over it (µs), as `jwt_call_us`."""
    def run():
        s0, n0 = jwt_calls()
        res = load()
        s1, n1 = jwt_calls()
        res["jwt_call_us"] = (s1 - s0) / (n1 - n0) * 1e6 if n1 > n0 else None
        return res
    return run


def verify_floor(ctx, alg, keys, token):
    """ring's µs for one verification of `token` on the proxy's core (CPU0, idle between rounds)."""
    exe = os.path.join(os.path.dirname(ctx.forwarder), "verify-bench")
    out = subprocess.run(["taskset", "-c", "0", exe, alg, keys[alg]["der"], token, "1000"],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def run(ctx):
    rounds = ctx.rounds(2, 3)
    seconds = ctx.seconds(2, 8)
    keys = openssl_keys(ctx.tmp)
    tokens = {alg: make_token(alg, keys) for alg in ALGS}
    hdrs = {alg: [f"Authorization: Bearer {tokens[alg]}", "x-debug: 1"] for alg in ALGS}
    chain = weir_chain(ctx)
    launch = {
        "nginx": (lambda c: peers.run_nginx(c, "http"), "HS256"),
        "weir": (lambda c: peers.run_weir(c, "http"), "HS256"),
    }
    names = ["nginx", "weir"]
    for alg in ALGS:
        sfx = "" if alg == "HS256" else "-" + alg.lower()
        chain_a = weir_chain(ctx, alg, keys)
        launch[f"nginx-lua{sfx}"] = (lambda c, a=alg: peers.run_nginx_lua(c, lua_chain(a, keys)), alg)
        launch[f"weir-chain{sfx}"] = (lambda c, ch=chain_a, t=f"weir-chain{sfx}": peers.run_weir(
            c, "http", filters=ch, route_filters=["jwt", "limit", "edit"], tag=t), alg)
        names += [f"nginx-lua{sfx}", f"weir-chain{sfx}"]
        if alg != "HS256":
            # jwt-auth alone: its cost per request against ring's verification alone.
            launch[f"weir-jwt{sfx}"] = (lambda c, f=chain_a[0], t=f"weir-only-jwt{sfx}": peers.run_weir(
                c, "http", filters=[f], route_filters=["jwt"], tag=t), alg)
            names.append(f"weir-jwt{sfx}")
    if not ctx.quick:
        # Where Weir's cost goes: each filter of the HS256 chain alone.
        for f in chain:
            launch[f"weir-{f['name']}"] = (lambda c, f=f: peers.run_weir(c, "http", filters=[f], route_filters=[f["name"]],
                                                                          tag=f"weir-only-{f['name']}"), "HS256")
            names.append(f"weir-{f['name']}")
    checks = {}
    for alg in ALGS:
        sfx = "" if alg == "HS256" else "-" + alg.lower()
        checks[f"nginx-lua{sfx}"] = check_chain("nginx + Lua", alg, keys)
        checks[f"weir-chain{sfx}"] = check_chain("Weir", alg, keys)
    entries = []
    for n in names:
        start, alg = launch[n]
        h = hdrs[alg]
        load = lambda h=h: wrk(URL, seconds, 64, h)
        if n.startswith("weir-chain") or n.startswith("weir-jwt"):
            load = with_jwt_time(load)
        entries.append(Entry(n, start, [("closed", lambda h=h: wrk(URL, ctx.warmup(), 64, h), load)],
                             check=checks.get(n)))
    res = run_rounds(ctx, entries, rounds, "realistic")
    res = {n: v["closed"] for n, v in res.items()}
    floor = {alg: verify_floor(ctx, alg, keys, tokens[alg]) for alg in ("RS256", "ES256")}

    labels = {"nginx": "nginx, no logic (reference)", "nginx-lua": "nginx + Lua chain (HS256)",
              "weir": "Weir, no filters (reference)", "weir-chain": "**Weir + jwt-auth, rate-limit, transform (HS256)**",
              "nginx-lua-rs256": "nginx + Lua chain (RS256)", "weir-chain-rs256": "**Weir chain (RS256)**",
              "weir-jwt-rs256": "Weir + jwt-auth only (RS256)",
              "nginx-lua-es256": "nginx + Lua chain (ES256)", "weir-chain-es256": "**Weir chain (ES256)**",
              "weir-jwt-es256": "Weir + jwt-auth only (ES256)",
              "weir-jwt": "Weir + jwt-auth only (HS256)", "weir-limit": "Weir + rate-limit only", "weir-edit": "Weir + transform only"}
    peer_of = {n: ("nginx-lua" + ("" if launch[n][1] == "HS256" else "-" + launch[n][1].lower())) for n in names}
    lines = [header("Realistic chain: JWT verify (HS256, RS256, ES256) + rate limit + header transform", ctx,
                    f"wrk -t1 -c64 with a valid bearer token of the row's algorithm on every request, "
                    f"{rounds} rounds × {seconds} s."), "",
             "| proxy | req/s | µs CPU / request | requests per core-second | vs nginx + Lua (same algorithm) | cost of the chain µs / request | p50 µs | p99 µs | RSS MiB | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for n in names:
        rcs = med(res[n], "req_per_core_s")
        cpu = med(res[n], "cpu_us_per_req")
        base = med(res[peer_of[n]], "req_per_core_s")[0]
        ref = "nginx" if n.startswith("nginx-lua") else ("weir" if n.startswith("weir-") else None)
        cost = cpu[0] - med(res[ref], "cpu_us_per_req")[0] if ref else None
        rows[n] = {"req_per_core_s": rcs, "cpu_us_per_req": cpu, "rps": med(res[n], "rps"),
                   "ratio": rcs[0] / base if base else 0, "chain_cost_us": cost,
                   "jwt_call_us": med(res[n], "jwt_call_us")[0] or None}
        lines.append(f"| {labels[n]} | {fmt_range(med(res[n], 'rps'))} | {fmt_range(cpu, 1)} | {fmt_range(rcs)} | "
                     f"{fmt_ratio(rows[n]['ratio'])} | {'–' if cost is None else f'{cost:.1f}'} | "
                     f"{med(res[n], 'p50_us')[0]:.0f} | {med(res[n], 'p99_us')[0]:.0f} | "
                     f"{med(res[n], 'rss_kb')[0] / 1024:.1f} | {failures(res[n])[0]} |")
    r = rows["weir-chain"]["ratio"]
    # Verification in place: jwt-auth's phase call with an RS256/ES256 token minus with an HS256 one
    # (the same parsing and claims; HMAC's own cost, under a µs, is not subtracted), in the chain.
    call = {a: rows[f"weir-chain{'' if a == 'HS256' else '-' + a.lower()}"]["jwt_call_us"] for a in ALGS}
    in_place = {a: call[a] - call["HS256"] for a in floor}
    jwt_vs_ring = {a: in_place[a] / floor[a] for a in floor}
    lines += ["", "Native floor: ring verifies one signature in "
              + ", ".join(f"{floor[a]:.1f} µs ({a})" for a in floor)
              + " on the proxy's core, in a loop (benches/src/verify_bench.rs, the key parsed once). In the proxy, "
              "jwt-auth's phase call (`weir_filter_call_duration_seconds`, mean, in the chain) takes "
              + ", ".join(f"{call[a]:.1f} µs ({a})" for a in ALGS)
              + ": the verification in place (that minus HS256's) is "
              + ", ".join(f"{in_place[a]:.1f} µs, {jwt_vs_ring[a]:.2f}× ring's ({a})" for a in floor)
              + ". The *cost of the chain* column subtracts the reference row, which ran at a far higher "
              "request rate: a slow chain also pays more of the data path per request (fewer requests per "
              "wake-up), for nginx + Lua as for Weir.", "",
              "What is the same: the signature (HMAC-SHA256 compared in constant time; RSASSA-PKCS1-v1_5 "
              "SHA-256 with a 2048-bit key; ECDSA P-256 SHA-256 with JWS r || s), `alg`/`crit` checks, "
              "`exp` (required) / `nbf` with 30 s leeway, `iss`, `aud`, `sub` → `x-user-id` (cleared first), a "
              "token bucket per client IP per route with 429 and `RateLimit-*` response headers, `x-bench` set, "
              "`x-debug` removed, `x-transformed: yes` on the response; both are checked to answer 401 with "
              "`WWW-Authenticate` for a missing, badly signed, expired or wrong-audience token before measuring.", "",
              "What differs: nginx + Lua verifies with OpenSSL's libcrypto through LuaJIT's FFI (`HMAC`, "
              "`EVP_DigestVerify` with the key parsed once: what lua-resty-hmac and lua-resty-openssl do; neither "
              "is packaged in Debian), while Weir's jwt-auth verifies through the proxy's crypto host calls (ring, "
              "native code; the filter carries no crypto); the Lua bucket is GCRA over a `lua_shared_dict` (one "
              "number per key, get-then-set, atomic only because there is one worker) while Weir's lives in the "
              "host's KV (`take_tokens`); Weir also supports JWKS, discovery and `kid` selection, which this token "
              "does not exercise; nginx adds no `x-forwarded-*`/`via`/`x-request-id` headers while Weir does on "
              "every route (in both reference rows too).", ""]
    text = "\n".join(lines) + "\n"
    goals = [{"goal": "realistic chain ≥ 1.5× nginx + Lua's throughput (requests per core-second)",
              "value": f"{r:.2f}× (RS256 {rows['weir-chain-rs256']['ratio']:.2f}×, ES256 {rows['weir-chain-es256']['ratio']:.2f}×)",
              "met": r >= 1.5}]
    goals += [{"goal": f"jwt-auth {a} verification in place within 1.2× of native ring's",
               "value": f"{jwt_vs_ring[a]:.2f}× ({in_place[a]:.1f} vs {floor[a]:.1f} µs)",
               "met": jwt_vs_ring[a] <= 1.2} for a in ("RS256",)]
    write_result("realistic-chain", text, {
        "scenario": "realistic-chain", "title": "Realistic chain (JWT + rate limit + transform)", "rows": rows,
        "verify_floor_us": floor, "jwt_call_us": call, "goals": goals,
        "chart": {"label": "JWT + rate limit + transform (1.00 = nginx + Lua)", "ratios": {"nginx-lua": 1.0,
                                                                       "weir": rows["weir-chain"]["ratio"]}},
        "date": text.splitlines()[2].split(";")[0],
    })
