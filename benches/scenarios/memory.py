"""Scenario 7: memory. Per proxy: RSS and PSS idle (after start and after a short warm-up), then
with 10,000 idle keep-alive connections that have each sent one request (a plain-Python client on
CPU1), and the cost per connection. Then Weir's cost per filter instance: RSS with 32 no-op filters
(and with 8 jwt-auth filters) on one route against none, after a request has gone through them.

Every proxy gets a connection limit of 12,000 here (HAProxy: as many as fit under the fd hard limit) (nginx worker_connections, HAProxy maxconn, Weir
limits.max_connections; Caddy and the forwarder have none), the same config for idle and loaded.
"""

import errno
import selectors
import socket
import time

from . import peers
from .chains import noop_filters
from .common import PROXY_PORT, header, memory_kb, write_result, wrk
from .common import stop, wait_ready
from .realistic import SECRET, TOKEN

NAMES = ["nginx", "haproxy", "caddy", "forwarder", "weir"]
LIMIT = 12000
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def open_idle(n, port=PROXY_PORT, batch=256, timeout=60.0):
    """Opens n connections, sends one request on each and reads its response; returns the open
    sockets (kept alive, idle). Connects at most `batch` at a time so no listen queue overflows."""
    sel = selectors.DefaultSelector()
    done, pending, opened, failed = [], 0, 0, 0
    deadline = time.time() + timeout

    def connect():
        s = socket.socket()
        s.setblocking(False)
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            return False
        sel.register(s, selectors.EVENT_WRITE, {"state": "connect", "buf": b""})
        return True

    while (opened < n or pending) and time.time() < deadline:
        while opened < n and pending < batch:
            if connect():
                pending += 1
            else:
                failed += 1
            opened += 1
        for key, ev in sel.select(timeout=1.0):
            s, st = key.fileobj, key.data
            if st["state"] == "connect":
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    failed += 1
                    continue
                s.send(REQUEST)
                st["state"] = "read"
                sel.modify(s, selectors.EVENT_READ, st)
            else:
                try:
                    chunk = s.recv(4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(s)
                    s.close()
                    pending -= 1
                    failed += 1
                    continue
                st["buf"] += chunk
                head, sep, body = st["buf"].partition(b"\r\n\r\n")
                if sep:
                    clen = 0
                    for line in head.split(b"\r\n")[1:]:
                        k, _, v = line.partition(b":")
                        if k.strip().lower() == b"content-length":
                            clen = int(v.strip())
                    if len(body) >= clen:
                        sel.unregister(s)
                        pending -= 1
                        if head.startswith(b"HTTP/1.1 200"):
                            done.append(s)
                        else:
                            s.close()
                            failed += 1
    sel.close()
    return done, failed


def settle_rss(proc, wait=1.0):
    time.sleep(wait)
    return memory_kb(proc.pids())


def run(ctx, names=None):
    names = names or NAMES
    conns = 10000
    rows = {}
    for name in names:
        proc = peers.launch(ctx, name, "http", conns=LIMIT)
        try:
            wait_ready(proc, PROXY_PORT)
            start = settle_rss(proc, 0.3)
            wrk(f"http://127.0.0.1:{PROXY_PORT}/", 1, 16)
            warm = settle_rss(proc, 0.5)
            want = min(conns, peers.haproxy_maxconn(LIMIT) - 50) if name == "haproxy" else conns
            socks, failed = open_idle(want)
            loaded = settle_rss(proc, 0.5)
            for s in socks:
                s.close()
            per = (loaded[0] - warm[0]) * 1024 / max(len(socks), 1)
            per_pss = (loaded[1] - warm[1]) * 1024 / max(len(socks), 1)
            rows[name] = {"start_rss_kb": start[0], "start_pss_kb": start[1], "idle_rss_kb": warm[0],
                          "idle_pss_kb": warm[1], "loaded_rss_kb": loaded[0], "loaded_pss_kb": loaded[1],
                          "conns": len(socks), "failed": failed, "per_conn_bytes": per, "per_conn_pss_bytes": per_pss}
            print(f"[memory] {name:10} start {start[0] / 1024:6.1f} MiB  idle {warm[0] / 1024:6.1f} MiB  "
                  f"{len(socks)} conns {loaded[0] / 1024:7.1f} MiB ({per / 1024:.2f} KiB/conn, {failed} failed)", flush=True)
        finally:
            stop(proc, (PROXY_PORT,))
        time.sleep(0.2)

    # Weir: per filter instance.
    variants = [("none", []), ("32 no-op", noop_filters(ctx, 32)),
                ("8 jwt-auth", [{"name": f"jwt{i + 1}", "module": ctx.filter("jwt_auth"),
                                 "config": {"keys": [{"kid": "bench", "alg": "HS256", "secret": SECRET}]}}
                                for i in range(8)])]
    inst = {}
    if "weir" in names:
        for label, fs in variants:
            proc = peers.run_weir(ctx, "http", filters=fs, route_filters=[f["name"] for f in fs],
                                  tag=f"weir-mem-{len(fs)}")
            try:
                wait_ready(proc, PROXY_PORT)
                # Requests through the whole chain (a valid token for the jwt-auth variant).
                wrk(f"http://127.0.0.1:{PROXY_PORT}/", 1, 4, [f"Authorization: Bearer {TOKEN}"])
                inst[label] = {"n": len(fs), "rss_kb": settle_rss(proc, 0.5)[0]}
            finally:
                stop(proc, (PROXY_PORT,))
        base = inst["none"]["rss_kb"]
        for label, v in inst.items():
            v["per_instance_kib"] = (v["rss_kb"] - base) / v["n"] if v["n"] else 0.0
            print(f"[memory] weir {label:10} {v['rss_kb'] / 1024:6.1f} MiB  {v['per_instance_kib']:.0f} KiB / instance", flush=True)

    lines = [header("Memory", ctx, f"RSS = resident set summed over the proxy's processes; PSS = proportional set "
                                   "(shared pages split among the processes mapping them: the fair figure for "
                                   "nginx's master + worker). Connection limits sized for 12,000 (HAProxy: see below), the same "
                                   "config for the idle and the loaded figures."), "",
             f"| proxy | RSS at start MiB | RSS idle after warm-up MiB | PSS idle MiB | with {conns:,} idle keep-alive connections: RSS MiB | PSS MiB | per connection KiB (RSS) | connections failed |",
             "|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = rows[n]
        lines.append(f"| {peers.LABELS[n]} | {r['start_rss_kb'] / 1024:.1f} | {r['idle_rss_kb'] / 1024:.1f} | "
                     f"{r['idle_pss_kb'] / 1024:.1f} | {r['loaded_rss_kb'] / 1024:.1f} | {r['loaded_pss_kb'] / 1024:.1f} | "
                     f"{r['per_conn_bytes'] / 1024:.2f} | {r['failed']} |")
    note = ("Each connection sent one `GET /` and read the 200 before the measurement; they stay open and idle "
            "(client: a single-threaded Python selector loop on CPU1).")
    if "haproxy" in rows:
        note += (f" HAProxy holds {rows['haproxy']['conns']:,} connections, not {conns:,}: it reserves two fds per "
                 "connection (client and server side) and refuses a maxconn that does not fit under this machine's "
                 "20,000-fd hard limit (not raisable here: no CAP_SYS_RESOURCE); its per-connection figure is "
                 "comparable.")
    lines += ["", note, ""]
    if inst:
        lines += ["## Weir: memory per filter instance", "",
                  "Each (filter, config) pair starts with one instance; distinct filter names make distinct pairs "
                  "(the module is compiled once and shared). RSS after a request went through the route.", "",
                  "| filters on the route | RSS MiB | per instance KiB |", "|---|---|---|"]
        for label, v in inst.items():
            per = f"{v['per_instance_kib']:.0f}" if v["n"] else "–"
            lines.append(f"| {label} | {v['rss_kb'] / 1024:.1f} | {per} |")
        lines.append("")
    goals = []
    if "weir" in rows:
        w = rows["weir"]["idle_rss_kb"] / 1024
        goals.append({"goal": "Weir idle RSS ≤ 8 MB", "value": f"{w:.1f} MiB (after warm-up; "
                      f"{rows['weir']['start_rss_kb'] / 1024:.1f} MiB at start)", "met": w <= 8 * 1e6 / 2 ** 20})
    text = "\n".join(lines) + "\n"
    write_result("memory", text, {"scenario": "memory", "title": "Memory", "rows": rows, "instances": inst,
                                  "conns": conns, "goals": goals, "date": text.splitlines()[2].split(";")[0]})
