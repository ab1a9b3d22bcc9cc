"""Shared machinery for the side-by-side benchmarks (see shared/BENCHMARKS.md for the method).

Topology: the proxy under test runs alone on CPU0 (taskset -c 0, one worker); the load generator,
the upstream and this script run on CPU1. Throughput is proxy CPU per request, read from
/proc/<pid>/stat (utime+stime of the proxy's whole process tree) over the measured window.
"""

import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import time
import urllib.request

BENCHES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHES)
RESULTS = os.path.join(BENCHES, "results")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Ports (hot_swap.py uses 18180, 18181 and 18902).
PROXY_PORT = 18080
PROXY_TLS_PORT = 18443
UPSTREAM_PORT = 18081      # nginx `return 200`, HTTP/1.1 keep-alive: what every proxy forwards to
UPSTREAM_H2C_PORT = 18082  # the same upstream over h2c prior knowledge: the direct baseline for h2
DIRECT_CPU0_PORT = 18083   # a second copy of the upstream on CPU0: the direct baseline for latency
ADMIN_PORT = 18901
BODY = "x" * 64


# ---------------------------------------------------------------- processes and /proc

def pin_self_to_cpu1():
    """This script is part of the generator side: keep it off the proxy's core."""
    try:
        os.sched_setaffinity(0, {1})
    except OSError:
        pass


def raise_nofile(n=65536):
    """10k idle connections need more than the default 20000 fds across client and proxy (root
    may raise the hard limit); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (n, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
            return
        except (ValueError, OSError):
            continue


def free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def wait_http(url, timeout=60.0, want=200):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == want:
                    return
                last = r.status
        except Exception as e:  # noqa: BLE001 - anything means "not yet"
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready: {last}")


def tree_pids(root):
    """root and all its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        ppid = int(st.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLK_TCK


def memory_kb(pids):
    """(RSS, PSS) in KiB summed over the processes. PSS splits shared pages between the
    processes that map them, so a master+worker pair is not counted twice."""
    rss = pss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss, pss


class Proc:
    """A started server: its Popen, and how to stop it."""

    def __init__(self, popen, name, ready=None):
        self.popen = popen
        self.name = name
        self.ready = ready  # a URL that answers 200 once the server is up, or None

    @property
    def pid(self):
        return self.popen.pid

    def pids(self):
        return tree_pids(self.popen.pid)

    def cpu(self):
        return cpu_seconds(self.pids())

    def alive(self):
        return self.popen.poll() is None


def start(cmd, cpu, name, env=None, cwd=None, log=None, ready=None):
    out = open(log, "ab") if log else subprocess.DEVNULL
    p = subprocess.Popen(
        ["taskset", "-c", str(cpu)] + cmd,
        stdout=out,
        stderr=out,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    if log:
        out.close()
    return Proc(p, name, ready)


def stop(proc, ports=()):
    if proc is None:
        return
    try:
        os.killpg(proc.popen.pid, signal.SIGTERM)
        proc.popen.wait(timeout=5)
    except Exception:  # noqa: BLE001
        try:
            os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
    deadline = time.time() + 10
    for port in ports:
        while not free(port) and time.time() < deadline:
            time.sleep(0.05)


def wait_ready(proc, port):
    wait_port(port)
    if proc.ready:
        wait_http(proc.ready)
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited at start")


# ---------------------------------------------------------------- load generators

def _lat_us(value, unit):
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]


def wrk(url, seconds, conns=64, headers=(), cpu=1):
    """Closed loop: wrk -t1 -cN. Returns dict(reqs, p50_us, p99_us, bad, errors)."""
    cmd = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        cmd += ["-H", h]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    reqs = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.M)
        if m:
            lat[pct] = _lat_us(m.group(1), m.group(2))
    return {
        "reqs": reqs,
        "p50_us": lat.get("50", 0.0),
        "p99_us": lat.get("99", 0.0),
        "bad": int(non2xx.group(1)) if non2xx else 0,
        "errors": errors.group(1).strip() if errors else "",
    }


def h2load(url, args, cpu=1, timeout=600):
    """h2load; returns dict(reqs, succeeded, failed, errored, rps, mean_us, bad)."""
    cmd = ["taskset", "-c", str(cpu), "h2load"] + list(args) + [url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    if not m:
        raise RuntimeError("h2load output not understood:\n" + out[-2000:])
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    rps = re.search(r"finished in ([\d.]+)(s|ms), ([\d.]+) req/s", out)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    return {
        "reqs": int(m.group(4)),
        "succeeded": int(m.group(4)),
        "failed": int(m.group(5)),
        "errored": int(m.group(6)),
        "bad": (int(codes.group(3)) + int(codes.group(4))) if codes else 0,
        "wall_s": float(rps.group(1)) / (1000 if rps.group(2) == "ms" else 1) if rps else 0.0,
        "rps": float(rps.group(3)) if rps else 0.0,
        "mean_us": _lat_us(mean.group(1), mean.group(2)) if mean else 0.0,
    }


def oha_path():
    local = os.path.join(ROOT, "target", "tools", "bin", "oha")
    if os.access(local, os.X_OK):
        return local
    return shutil.which("oha")


def oha(url, rate, seconds, conns=64, cpu=1):
    """Open loop at a fixed rate, corrected for coordinated omission:
    oha -q RATE --latency-correction. Returns dict(reqs, p50_us, p99_us, p999_us, ok, errors)."""
    exe = oha_path()
    cmd = ["taskset", "-c", str(cpu), exe, "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
           "-q", str(int(rate)), "--latency-correction", "-c", str(conns), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout)
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {}) or {}
    ok = sum(int(v) for k, v in codes.items() if str(k).startswith("2"))
    total = sum(int(v) for v in codes.values())
    # Requests still in flight when -z ends are reported as "aborted due to deadline": not failures.
    errors = sum(int(v) for k, v in (data.get("errorDistribution") or {}).items() if "deadline" not in k)

    def us(key):
        v = pct.get(key)
        return float(v) * 1e6 if v is not None else 0.0

    return {
        "reqs": total,
        "ok": ok,
        "bad": total - ok,
        "errors": errors,
        "rps": float(data.get("summary", {}).get("requestsPerSec") or 0.0),
        "p50_us": us("p50"),
        "p99_us": us("p99"),
        "p999_us": us("p99.9"),
    }


def measured(proc, run):
    """Runs `run()` (a load generator call) and adds the proxy's CPU over it."""
    pids = proc.pids() if proc else []
    c0 = cpu_seconds(pids)
    t0 = time.time()
    res = run()
    wall = time.time() - t0
    cpu = cpu_seconds(pids) - c0
    n = res["reqs"]
    # A load that waits after its generator (to read what was exported, say) reports the
    # generator's own time: req/s is over that, CPU over the whole window.
    res["wall_s"] = res.get("wall_s") or wall
    res["rps"] = n / res["wall_s"] if res["wall_s"] > 0 else 0.0
    if proc:
        res["cpu_s"] = cpu
        res["cpu_us_per_req"] = cpu / n * 1e6 if n else 0.0
        res["req_per_core_s"] = n / cpu if cpu > 0 else 0.0
        res["rss_kb"], res["pss_kb"] = memory_kb(pids)
    return res


# ---------------------------------------------------------------- statistics and output

def weir_counters(exact, summed):
    """(value of the series named `exact`, sum of every series of the family `summed`) from
    Weir's /metrics: a counter and its dropped-by-reason family, say."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}/metrics", timeout=5).read().decode()
    one = total = 0.0
    for line in text.splitlines():
        if line.startswith(exact + " "):
            one = float(line.split()[-1])
        elif line.startswith(summed + "{"):
            total += float(line.split()[-1])
    return one, total


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return (0.0, 0.0, 0.0)
    return statistics.median(vals), min(vals), max(vals)


def fmt_range(t, digits=0):
    m, lo, hi = t
    return f"{m:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def fmt_ratio(x):
    return f"{x:.2f}×" if x else "–"


def version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (p.stdout + p.stderr).strip().splitlines()
        return lines[0].strip() if lines else "?"
    except Exception:  # noqa: BLE001
        return "?"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def machine_line():
    return (f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"{platform.freedesktop_os_release().get('PRETTY_NAME', '?') if hasattr(platform, 'freedesktop_os_release') else '?'}")


def now_stamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


RUN_MODE = {"mode": "full"}  # set by run.py: "quick" or "full", recorded with each scenario's results


def write_result(name, markdown, data):
    """results/<name>.md (for people) and results/<name>.json (for the summary and the chart)."""
    data = dict(data, mode=RUN_MODE["mode"])
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name + ".md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(RESULTS, name + ".json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    print(f"\n{markdown}\nwritten to benches/results/{name}.md", flush=True)


def header(title, ctx, extra):
    return "\n".join([
        f"# {title}",
        "",
        f"{now_stamp()}; {machine_line()}.",
        "",
        "Method (see [README](README.md#method)): the proxy alone on CPU0 with one worker; the load generator, the nginx "
        "upstream (`return 200`, 64-byte body, keep-alive) and the driver on CPU1; µs of proxy CPU per request from "
        "`/proc/<pid>/stat` (utime+stime of the proxy's process tree) over the measured window; peers alternate "
        f"within each round; median (min–max) over the rounds. {extra}",
        "",
        "Versions: " + ctx.versions_line(),
        "",
    ])
