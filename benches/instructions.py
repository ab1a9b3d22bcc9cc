#!/usr/bin/env python3
"""Instructions per proxied HTTP/1.1 request, counted by callgrind: repeatable on a noisy VM.

Usage: benches/instructions.py WEIR [WEIR ...] [--xff] [--two-endpoints] [--retries-off]
                               [--clients] [--servers] [--tracing] [--filters] [--chain]

For each binary: runs `weir run` under `valgrind --tool=callgrind` (one worker, one route, one
upstream: a tiny raw HTTP server in this script), sends N1 and then, in a second run, N2
keep-alive GETs on one connection, and reports (I(N2) - I(N1)) / (N2 - N1): the instructions
one more request costs, with start-up and shutdown cancelled out. --xff adds a client-sent
X-Forwarded-For (an untrusted peer's, which the proxy replaces). Compare binaries measured in
the same invocation; a wall-clock ratio still needs benches/run.sh. --two-endpoints gives the
cluster two endpoints (the same server on two ports), so the retry machinery is armed (a
one-endpoint cluster never retries); --retries-off sets `retries: { attempts: 1 }` (resilience
on vs off in one binary). --clients measures each binary twice, with the upstream client
`native` (Weir's own HTTP/1.1 client, the default) and `hyper` (hyper-util's pooled client).
--servers does the same for the listener's server: `native` (Weir's own HTTP/1.1 server, the
default) and `hyper` (hyper's server); with both flags, all four pairs. --tracing measures each
binary without `tracing:`, then at sample ratio 0, 0.01 and 1 with OTLP export (to this script's
second upstream, which answers every POST 200): what trace context costs every request, and what
a sampled one adds. --filters measures each binary without filters and with one no-op filter
(the testbed component, `mode: noop`, as `benches/setup.sh` builds it): what a filtered request
costs before any filter logic. Filters are compiled by a first run whose count is thrown away,
into the compiled-filter cache the measured runs load from (valgrind's CPU has its own cache key;
compiling under callgrind sometimes trips its signal handling, so that run is retried).
--chain measures each binary without filters and with the realistic gateway chain of
benches/scenarios/realistic.py (jwt-auth HS256, rate-limit, transform), every request carrying a
valid token: what the whole chain costs per request.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

from scenarios import realistic

N1, N2 = 500, 2500
BODY = b"0" * 64
PROXY_PORT, UPSTREAM_PORT, UPSTREAM_PORT_2 = 18380, 18381, 18382


def upstream(port):
    srv = socket.create_server(("127.0.0.1", port), reuse_port=True)

    def serve(c):
        buf = b""
        while True:
            data = c.recv(65536)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(BODY), BODY))

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def client(n, xff, chain=False):
    req = (b"GET /v1/users/42/profile?x=1 HTTP/1.1\r\nHost: api.example.com\r\n"
           b"User-Agent: bench/1.0\r\nAccept: */*\r\n"
           + (b"X-Forwarded-For: 10.1.2.3\r\n" if xff else b"")
           + (f"Authorization: Bearer {realistic.TOKEN}\r\n".encode() if chain else b"") + b"\r\n")
    s = socket.create_connection(("127.0.0.1", PROXY_PORT))
    buf = b""
    for _ in range(n):
        s.sendall(req)
        while True:
            h = buf.find(b"\r\n\r\n")
            if h >= 0:
                head = buf[:h].decode().lower()
                assert head.startswith("http/1.1 200"), head
                cl = int(re.search(r"content-length: *(\d+)", head).group(1))
                if len(buf) >= h + 4 + cl:
                    buf = buf[h + 4 + cl:]
                    break
            data = s.recv(65536)
            if not data:
                # The proxy died (valgrind can crash while a filter compiles): retried by the caller.
                sys.exit("the proxy closed the connection")
            buf += data
    s.close()


FILTERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench-filters")
TESTBED = os.path.join(FILTERS, "testbed.wasm")


class Filters:
    """`ctx.filter(name)` for realistic.weir_chain: the filters benches/setup.sh built."""

    @staticmethod
    def filter(name):
        return os.path.join(FILTERS, f"{name}.wasm")


def chain_yaml():
    """The realistic HS256 chain's filters, as YAML (JSON is YAML)."""
    return json.dumps(realistic.weir_chain(Filters))


def collected(weir, n, xff, tmp, two, off=False, upstream_client=None, server=None, tracing=None,
              filters=0, chain=False):
    eps = f"{{ address: 127.0.0.1:{UPSTREAM_PORT} }}"
    if two:
        eps += f", {{ address: 127.0.0.1:{UPSTREAM_PORT_2} }}"
    cfg = os.path.join(tmp, "weir.yaml")
    with open(cfg, "w") as f:
        f.write(f"""workers: 1
admin: {{ listen: 127.0.0.1:0 }}
listeners: [ {{ name: public, listen: 127.0.0.1:{PROXY_PORT}{f', server: {server}' if server else ''} }} ]
routes: [ {{ name: api, match: {{ path_prefix: /v1/ }}, cluster: api{f', filters: [ {", ".join(f"f{i}" for i in range(filters))} ]' if filters else ''}{', filters: [ jwt, limit, edit ]' if chain else ''} }} ]
clusters: [ {{ name: api, endpoints: [ {eps} ]{', retries: { attempts: 1 }' if off else ''}{f', client: {upstream_client}' if upstream_client else ''} }} ]
""")
        if filters:
            # Few instance slots: valgrind cannot reserve the default's address space.
            f.write(f"filter_instances: 16\nfilter_cache: {tmp}/filter-cache\nfilters: [ "
                    + ", ".join(f"{{ name: f{i}, module: '{TESTBED}', config: {{ mode: noop }} }}"
                                for i in range(filters)) + " ]\n")
        if chain:
            f.write(f"filter_instances: 16\nfilter_cache: {tmp}/filter-cache\nfilters: {chain_yaml()}\n")
        if tracing is not None:
            f.write(f"tracing: {{ sample_ratio: {tracing}, otlp: {{ endpoint: 'http://127.0.0.1:{UPSTREAM_PORT_2}' }} }}\n")
    err = open(os.path.join(tmp, "err.txt"), "w+")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out",
                          weir, "run", cfg], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 300
    while time.time() < deadline:
        err.seek(0)
        if "weir: ready" in err.read():
            break
        time.sleep(0.2)
    else:
        p.kill()
        sys.exit(f"{weir} did not become ready under valgrind")
    try:
        client(n, xff, chain)
    finally:
        p.terminate()
        p.wait()
    err.seek(0)
    m = re.findall(r"Collected : (\d+)", err.read())
    return int(m[-1])


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    xff = "--xff" in sys.argv
    two = "--two-endpoints" in sys.argv
    off = "--retries-off" in sys.argv
    clients = ["native", "hyper"] if "--clients" in sys.argv else [None]
    servers = ["native", "hyper"] if "--servers" in sys.argv else [None]
    tracings = [None, 0, 0.01, 1] if "--tracing" in sys.argv else [None]
    filterings = [0, 1] if "--filters" in sys.argv else [0]
    chains = [False, True] if "--chain" in sys.argv else [False]
    for flag, f in (("--filters", "testbed"), ("--chain", "jwt_auth")):
        if flag in sys.argv and not os.path.exists(Filters.filter(f)):
            sys.exit(f"{Filters.filter(f)} is missing: run `bash benches/setup.sh` first")
    if not args:
        sys.exit(__doc__)
    for port in (UPSTREAM_PORT, UPSTREAM_PORT_2):
        threading.Thread(target=upstream, args=(port,), daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        for weir in args:
            for srv in servers:
                for c, t, nf, ch in ((c, t, nf, ch) for c in clients for t in tracings
                                     for nf in filterings for ch in chains):
                    if nf or ch:
                        os.makedirs(f"{tmp}/filter-cache", mode=0o700, exist_ok=True)
                        for _ in range(3):
                            try:
                                collected(weir, 1, xff, tmp, two, off, c, srv, t, nf, ch)
                                break
                            except SystemExit:
                                pass
                    a = collected(weir, N1, xff, tmp, two, off, c, srv, t, nf, ch)
                    b = collected(weir, N2, xff, tmp, two, off, c, srv, t, nf, ch)
                    print(f"{weir}: {(b - a) / (N2 - N1):,.0f} instructions per request"
                          f" ({'with' if xff else 'without'} a client X-Forwarded-For"
                          f"{', two endpoints' if two else ''}{', retries off' if off else ''}"
                          f"{f', server: {srv}' if srv else ''}"
                          f"{f', client: {c}' if c else ''}"
                          f"{'' if t is None else f', tracing at ratio {t}'}"
                          f"{f', {nf} no-op filter' if nf else ''}"
                          f"{', the realistic HS256 chain' if ch else ''})")


if __name__ == "__main__":
    main()
