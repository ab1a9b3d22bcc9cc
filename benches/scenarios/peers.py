"""How each proxy is configured and started, per mode.

Modes: `http` (HTTP/1.1 keep-alive on PROXY_PORT), `h2c` (HTTP/2 prior knowledge on PROXY_PORT),
`tls` (TLS 1.3 termination, HTTP/1.1 inside, on PROXY_TLS_PORT). Every proxy forwards to the same
nginx upstream over HTTP/1.1 with a keep-alive pool of 64 idle connections, runs one worker pinned
on CPU0, and writes no access log.
"""

import glob
import os
import resource
import subprocess

from .common import (ADMIN_PORT, BODY, DIRECT_CPU0_PORT, PROXY_PORT, PROXY_TLS_PORT, ROOT, UPSTREAM_H2C_PORT,
                     UPSTREAM_PORT, start, version)

LUA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lua")


class Ctx:
    """What every scenario needs: the temp dir, the binaries, the certificate, the filters."""

    def __init__(self, tmp, weir, quick, rounds=None, seconds=None):
        self.tmp = tmp
        self.weir = weir
        self.forwarder = os.path.join(os.path.dirname(weir), "bare-forwarder")
        self.filters_dir = os.path.join(ROOT, "target", "bench-filters")
        self.filter_cache = os.path.join(ROOT, "target", "bench-filter-cache")
        self.quick = quick
        self.rounds_override = rounds
        self.seconds_override = seconds
        self.cert, self.key, self.combined = make_cert(tmp)
        self._versions = None

    def rounds(self, quick, full):
        return self.rounds_override or (quick if self.quick else full)

    def seconds(self, quick, full):
        return self.seconds_override or (quick if self.quick else full)

    def warmup(self):
        return 1

    def filter(self, name):
        return os.path.join(self.filters_dir, name + ".wasm")

    def log(self, name):
        return os.path.join(self.tmp, name + ".log")

    def versions(self):
        if self._versions is None:
            from .common import oha_path
            lua = glob.glob("/usr/share/doc/libnginx-mod-http-lua/changelog.Debian.gz")
            lua_v = version(["dpkg-query", "-W", "-f", "${Version}", "libnginx-mod-http-lua"]) if lua else "not installed"
            oha = oha_path()
            self._versions = {
                "weir": version([self.weir, "--version"]),
                "nginx": version(["nginx", "-v"]).replace("nginx version: ", ""),
                "libnginx-mod-http-lua": lua_v,
                "haproxy": version(["haproxy", "-v"]).split(" - ")[0],
                "caddy": version(["caddy", "version"]),
                "wrk": version(["wrk", "-v"]).split(" Copyright")[0],
                "h2load": version(["h2load", "--version"]),
                "oha": version([oha, "--version"]) if oha else "not installed",
                "openssl": version(["openssl", "version"]),
            }
        return self._versions

    def versions_line(self):
        return "; ".join(f"{k} {v}" for k, v in self.versions().items())


def make_cert(tmp):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 / localhost (the common modern choice;
    every peer serves the same key)."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    combined = os.path.join(tmp, "combined.pem")
    with open(combined, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, combined


def fd_hard_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def haproxy_maxconn(conns):
    """HAProxy reserves two fds per connection (client and server side) plus a few, and refuses to
    start when maxconn does not fit under the fd hard limit (20,000 here, and not raisable without
    CAP_SYS_RESOURCE)."""
    return min(conns, (fd_hard_limit() - 100) // 2)


# ---------------------------------------------------------------- nginx (also the upstream)

def nginx_conf(tmp, name, body, conns=4096, modules=(), main_extra=""):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "nginx.conf")
    loads = "".join(f"load_module {m};\n" for m in modules)
    with open(path, "w") as f:
        f.write(
            f"""{loads}daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log warn;
worker_rlimit_nofile {min(2 * conns + 1024, fd_hard_limit())};
{main_extra}
events {{ worker_connections {conns}; }}
http {{ access_log off; error_log {d}/error.log warn;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  keepalive_requests 1000000;
{body}
}}
"""
        )
    return path, d


def start_nginx(tmp, name, body, cpu, conns=4096, modules=()):
    conf, d = nginx_conf(tmp, name, body, conns, modules)
    return start(["nginx", "-c", conf, "-e", os.path.join(d, "error.log")], cpu, name,
                 log=os.path.join(d, "stderr.log"))


def start_upstream(ctx):
    """The upstream on CPU1: `return 200` with a 64-byte body, HTTP/1.1 on UPSTREAM_PORT and h2c
    (prior knowledge) on UPSTREAM_H2C_PORT. It echoes two request headers so the realistic-chain
    scenario can check what the filters sent."""
    body = f"""  server {{ listen 127.0.0.1:{UPSTREAM_PORT} reuseport backlog=4096; listen 127.0.0.1:{UPSTREAM_H2C_PORT} http2;
    location / {{ add_header x-seen-user $http_x_user_id; add_header x-seen-bench $http_x_bench; return 200 "{BODY}"; }} }}"""
    return start_nginx(ctx.tmp, "upstream", body, 1, conns=16384)


def start_direct_cpu0(ctx):
    """The same upstream, but on CPU0 (where a proxy would run): the direct-path baseline for
    latency. With the upstream on the generator's own core, every direct request would wait for a
    context switch on CPU1 that the proxied path partly avoids, making "added latency" negative."""
    body = f"""  server {{ listen 127.0.0.1:{DIRECT_CPU0_PORT} reuseport backlog=4096;
    location / {{ return 200 "{BODY}"; }} }}"""
    return start_nginx(ctx.tmp, "direct-cpu0", body, 0)


NGINX_UPSTREAM = f"upstream up {{ server 127.0.0.1:{UPSTREAM_PORT}; keepalive 64; }}"
NGINX_PROXY = 'proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";'


def nginx_listen(ctx, mode):
    if mode == "http":
        return f"listen 127.0.0.1:{PROXY_PORT} reuseport backlog=4096;"
    if mode == "h2c":
        return f"listen 127.0.0.1:{PROXY_PORT} http2 reuseport backlog=4096;"
    if mode == "tls":
        return (f"listen 127.0.0.1:{PROXY_TLS_PORT} ssl reuseport backlog=4096; ssl_certificate {ctx.cert}; "
                f"ssl_certificate_key {ctx.key}; ssl_protocols TLSv1.3;")
    raise ValueError(mode)


def run_nginx(ctx, mode, conns=4096):
    body = f"""  {NGINX_UPSTREAM}
  server {{ {nginx_listen(ctx, mode)}
    location / {{ {NGINX_PROXY} }} }}"""
    return start_nginx(ctx.tmp, f"nginx-{mode}", body, 0, conns)


def lua_modules():
    mods = []
    for m in ("ndk_http_module.so", "ngx_http_lua_module.so"):
        found = [p for p in (f"/usr/share/nginx/modules/{m}", f"/usr/lib/nginx/modules/{m}") if os.path.exists(p)]
        if not found:
            raise RuntimeError(f"{m} not found: install libnginx-mod-http-lua (benches/setup.sh)")
        mods.append(found[0])
    return mods


def run_nginx_lua(ctx, chain):
    """nginx + Lua (libnginx-mod-http-lua, the engine under OpenResty, APISIX and Kong) running the
    realistic chain in benches/lua/weir_bench_chain.lua; `chain` holds its settings."""
    cfg = ", ".join(f'{k} = {lua_literal(v)}' for k, v in sorted(chain.items()))
    body = f"""  lua_package_path "{LUA_DIR}/?.lua;/usr/share/lua/5.1/?.lua;;";
  lua_package_cpath "/usr/lib/x86_64-linux-gnu/lua/5.1/?.so;;";
  lua_shared_dict ratelimit 16m;
  init_by_lua_block {{ require("weir_bench_chain").configure({{ {cfg} }}) }}
  {NGINX_UPSTREAM}
  server {{ {nginx_listen(ctx, "http")}
    location / {{
      access_by_lua_block {{ require("weir_bench_chain").access() }}
      header_filter_by_lua_block {{ require("weir_bench_chain").header_filter() }}
      {NGINX_PROXY} }} }}"""
    return start_nginx(ctx.tmp, "nginx-lua", body, 0, modules=lua_modules())


def lua_literal(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    # Newlines escaped too: a PEM key is several lines, and a Lua "..." string is one.
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ---------------------------------------------------------------- HAProxy

def run_haproxy(ctx, mode, conns=4096):
    if mode == "http":
        bind = f"bind 127.0.0.1:{PROXY_PORT}"
    elif mode == "h2c":
        bind = f"bind 127.0.0.1:{PROXY_PORT} proto h2"
    elif mode == "tls":
        bind = f"bind 127.0.0.1:{PROXY_TLS_PORT} ssl crt {ctx.combined} ssl-min-ver TLSv1.3 alpn http/1.1"
    else:
        raise ValueError(mode)
    conns = haproxy_maxconn(conns)
    path = os.path.join(ctx.tmp, f"haproxy-{mode}.cfg")
    with open(path, "w") as f:
        f.write(
            f"""global
  nbthread 1
  maxconn {conns}
defaults
  mode http
  maxconn {conns}
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  {bind}
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:{UPSTREAM_PORT}
"""
        )
    return start(["haproxy", "-f", path], 0, f"haproxy-{mode}", log=ctx.log(f"haproxy-{mode}"))


# ---------------------------------------------------------------- Caddy

def run_caddy(ctx, mode, conns=4096):
    proto = "\n  servers {\n    protocols h1 h2 h2c\n  }" if mode == "h2c" else ""
    proxy = (f"reverse_proxy 127.0.0.1:{UPSTREAM_PORT} {{\n    transport http {{\n"
             f"      keepalive_idle_conns_per_host 64\n    }}\n  }}")
    if mode in ("http", "h2c"):
        site = f"http://127.0.0.1:{PROXY_PORT} {{\n  {proxy}\n}}"
    elif mode == "tls":
        site = (f"https://127.0.0.1:{PROXY_TLS_PORT} {{\n  tls {ctx.cert} {ctx.key} {{\n    protocols tls1.3\n  }}\n"
                f"  {proxy}\n}}")
    else:
        raise ValueError(mode)
    path = os.path.join(ctx.tmp, f"Caddyfile-{mode}")
    with open(path, "w") as f:
        f.write(f"{{\n  admin off\n  auto_https off\n  log {{\n    output discard\n  }}{proto}\n}}\n{site}\n")
    env = dict(os.environ, GOMAXPROCS="1", XDG_DATA_HOME=ctx.tmp, XDG_CONFIG_HOME=ctx.tmp)
    return start(["caddy", "run", "--config", path, "--adapter", "caddyfile"], 0, f"caddy-{mode}", env=env,
                 log=ctx.log(f"caddy-{mode}"))


# ---------------------------------------------------------------- Weir and the bare forwarder

def weir_yaml(ctx, mode="http", filters=(), route_filters=(), conns=None, extra=()):
    """A Weir config: one listener, one route to the upstream, optional filters.
    `filters`: list of dicts {name, module, config, grants?}; `route_filters`: names, in order;
    `extra`: more top-level lines (`state: ...`)."""
    lines = [
        "workers: 1",
        f"admin: {{ listen: 127.0.0.1:{ADMIN_PORT} }}",
        "drain_timeout: 1s",
        f"filter_cache: {ctx.filter_cache}",
        *extra,
    ]
    if conns:
        lines.append(f"limits: {{ max_connections: {conns} }}")
    if mode in ("http", "h2c"):
        lines.append(f"listeners: [ {{ name: public, listen: 127.0.0.1:{PROXY_PORT}, protocol: http }} ]")
    elif mode == "tls":
        lines.append(f"listeners: [ {{ name: secure, listen: 127.0.0.1:{PROXY_TLS_PORT}, protocol: https, "
                     f"tls: {{ certificates: [ {{ cert: {ctx.cert}, key: {ctx.key} }} ] }} }} ]")
    else:
        raise ValueError(mode)
    lines.append(f"clusters: [ {{ name: up, endpoints: [ {{ address: 127.0.0.1:{UPSTREAM_PORT} }} ] }} ]")
    if filters:
        lines.append("filters:")
        for f in filters:
            lines.append(f"  - name: {f['name']}")
            lines.append(f"    module: {f['module']}")
            lines.append(f"    config: {to_flow(f.get('config', {}))}")
            if f.get("grants"):
                lines.append(f"    grants: {to_flow(f['grants'])}")
    rf = f", filters: [ {', '.join(route_filters)} ]" if route_filters else ""
    lines.append(f"routes: [ {{ name: all, match: {{ path_prefix: / }}, cluster: up{rf} }} ]")
    return "\n".join(lines) + "\n"


def to_flow(v):
    """A Python value as YAML flow text (JSON is YAML)."""
    import json
    return json.dumps(v)


def run_weir(ctx, mode="http", conns=None, filters=(), route_filters=(), tag=None, extra=()):
    tag = tag or f"weir-{mode}"
    path = os.path.join(ctx.tmp, f"{tag}.yaml")
    with open(path, "w") as f:
        f.write(weir_yaml(ctx, mode, filters, route_filters, conns, extra))
    return start([ctx.weir, "run", path], 0, tag, env=dict(os.environ, WEIR_LOG="error"),
                 log=ctx.log(tag), ready=f"http://127.0.0.1:{ADMIN_PORT}/ready")


def run_forwarder(ctx, mode, conns=None):
    if mode not in ("http", "h2c"):
        raise ValueError(mode)
    return start([ctx.forwarder, f"127.0.0.1:{PROXY_PORT}", f"127.0.0.1:{UPSTREAM_PORT}"], 0,
                 f"forwarder-{mode}", log=ctx.log(f"forwarder-{mode}"))


PEERS = {
    "nginx": run_nginx,
    "haproxy": run_haproxy,
    "caddy": run_caddy,
    "forwarder": run_forwarder,
    "weir": run_weir,
}

# Peers as opposed to Weir itself and its internal floor: the "best peer" is the best of these.
EXTERNAL = ("nginx", "haproxy", "caddy")

LABELS = {
    "nginx": "nginx",
    "haproxy": "HAProxy",
    "caddy": "Caddy",
    "forwarder": "bare hyper forwarder (floor)",
    "weir": "**Weir**",
    "direct": "direct (no proxy)",
    "nginx-lua": "nginx + Lua",
}


def launch(ctx, name, mode, conns=None):
    if name == "weir":
        return run_weir(ctx, mode, conns=conns)
    if conns:
        return PEERS[name](ctx, mode, conns=conns)
    return PEERS[name](ctx, mode)
