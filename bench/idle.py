"""Idle-connection benchmark: what N idle WebSocket connections cost one appserver process (issue 17, target 3).

    python bench/idle.py                         # 100,000 connections, 45 s idle window (root, see README)
    python bench/idle.py --connections 10000 --idle-window 45
    python bench/idle.py --server-path /tmp/idle-base/server   # another checkout's server, same harness

Steps (every one with a deadline; the server and the load generators are
stopped by pid in a ``finally``):

1. Start appserver with SERVER_SPECS["appserver"]'s command line, default
   options otherwise (ping interval 20 s, ping timeout 10 s), only
   ``--max-connections`` and ``--max-connections-per-ip`` raised to N (limits,
   not cost options); smoke-check it; read its RSS, the kernel's TCP buffer
   pages (/proc/net/sockstat) and slab.
2. Open N WebSocket connections from ``--workers`` processes (picows on
   uvloop, idle_worker.py), each socket bound to one of ``--sources`` loopback
   addresses (127.0.0.2, 127.0.0.3, ...) before it connects; wait for the
   server's RSS to settle and read the memory figures again.
3. Idle window (``--idle-window``, default 45 s, at least twice the ping
   interval): the server's CPU per second per connection, the pings the
   clients answered (each one counted), and connections the server dropped.
4. One broadcast: a publisher sends one chat message; every client must receive
   exactly it (no loss, no duplicate); the delivery time is from the send to the
   last receipt (one system-wide monotonic clock).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chatmsg  # noqa: E402
import procstat  # noqa: E402
from loadgen import PublisherListener, smoke_check  # noqa: E402
from servers import REPO_DIR, SERVER_SPECS, ServerProcess, ServerSpec  # noqa: E402
from workers import WorkerPool  # noqa: E402

try:
    import picows
except ImportError:  # pragma: no cover
    picows = None  # type: ignore[assignment]

PORTS_PER_SOURCE = 20_000  # of the 28,232 in the default ip_local_port_range; leaves room for TIME_WAIT and others
PING_INTERVAL = 20.0  # appserver's default --ping-interval, which this benchmark keeps


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# machine limits and kernel figures
# ---------------------------------------------------------------------------
def read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE (soft and hard, root may go up to fs.nr_open); children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:
        nr_open = read_int("/proc/sys/fs/nr_open") or hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, nr_open), min(need, nr_open)))
        except (ValueError, OSError) as exc:
            log(f"cannot raise RLIMIT_NOFILE to {need}: {exc} (run as root, or ulimit -Hn {need})")
    else:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(need, hard)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def sockstat() -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (mem in pages)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            parts = line.split()[1:]
            return {parts[i]: int(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    return {}


SLAB_CACHES = ("TCP", "sock_inode_cache", "filp", "eventpoll_epi", "dentry")


def slab() -> dict[str, int]:
    """Bytes in the socket-related slab caches (/proc/slabinfo, root only) and /proc/meminfo's Slab."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            f = line.split()
            if f[0] in SLAB_CACHES:
                out[f[0]] = int(f[1]) * int(f[3])  # active objects × object size
    except (OSError, ValueError, IndexError):
        pass
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Slab:"):
            out["Slab"] = int(line.split()[1]) * 1024
    return out


def check_sources(sources: list[str]) -> None:
    for addr in sources:
        with socket.socket() as s:
            s.bind((addr, 0))  # raises if the address is not usable (127.0.0.0/8 is all loopback on Linux)


def _git_state(repo: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "server"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head[:90]}" + (f" (+ uncommitted changes in server/: {len(dirty.splitlines())} files)" if dirty else "")


# ---------------------------------------------------------------------------
# load-generator processes
# ---------------------------------------------------------------------------
class IdlePool(WorkerPool):
    """The idle_worker.py processes of one run (idle.py's, and deflate.py's subscribers)."""

    SCRIPT = Path(__file__).resolve().with_name("idle_worker.py")
    STOP_TIMEOUT = 10.0  # a worker holding tens of thousands of connections takes a while to exit

    async def open(self, url: str, count: int, sources: list[str], concurrency: int, timeout: float,
                   client: str = "picows", deflate: bool = False, subscribe: str | None = None) -> dict[str, Any]:
        shares = self.shares(count)
        # Rotate the source list per worker so the sources fill evenly whatever the shares.
        replies = await self.call_all(
            lambda i: {"cmd": "open", "client": client, "url": url, "count": shares[i],
                       "sources": sources[i % len(sources):] + sources[:i % len(sources)],
                       "concurrency": concurrency, "timeout": timeout, "deflate": deflate,
                       "subscribe": subscribe},
            timeout + 30)
        extensions: dict[str, int] = {}
        for r in replies:
            for k, v in r.get("extensions", {}).items():
                extensions[k] = extensions.get(k, 0) + v
        return {"opened": sum(r["opened"] for r in replies), "errors": [e for r in replies for e in r["errors"]],
                "extensions": extensions}

    async def status(self) -> dict[str, Any]:
        replies = await self.call_all(lambda i: {"cmd": "status"}, 30)
        received: dict[int, int] = {}
        for r in replies:
            for k, v in r["received"].items():
                received[int(k)] = received.get(int(k), 0) + v
        out: dict[str, Any] = {"received": received}
        for key in ("open", "dropped", "pings", "duplicates", "other_frames", "wire_bytes", "payload_bytes"):
            out[key] = sum(int(r[key]) for r in replies)
        firsts = [r["first_ns"] for r in replies if r["first_ns"]]
        out["first_ns"] = min(firsts) if firsts else 0
        out["last_ns"] = max((r["last_ns"] for r in replies), default=0)
        return out

    async def reset(self) -> None:
        await self.call_all(lambda i: {"cmd": "reset"}, 30)


def appserver_spec(connections: int, server_path: Path | None, extra: list[str]) -> ServerSpec:
    """SERVER_SPECS["appserver"] with the two connection limits raised to ``connections`` (+ margin)."""
    base = SERVER_SPECS["appserver"]
    argv = list(base.argv)
    limit = str(connections + 1000)
    for opt in ("--max-connections", "--max-connections-per-ip"):
        argv[argv.index(opt) + 1] = limit
    env = dict(base.env)
    if server_path is not None:
        env["PYTHONPATH"] = str(server_path)
    return dataclasses.replace(base, argv=tuple(argv + extra), env=env)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
async def run_bounded(cfg: argparse.Namespace, res: dict[str, Any], budget: float) -> None:
    """run() under one overall deadline; what was measured before it stays in ``res``."""
    try:
        await asyncio.wait_for(run(cfg, res), budget)
    except TimeoutError:
        res["error"] = f"overall deadline of {budget:.0f} s passed (processes stopped)"


async def run(cfg: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    n = cfg.connections
    res.update({"ping_interval": cfg.ping_interval, "connections": n, "workers": cfg.workers, "sources": cfg.source_list,
                           "idle_window_s": cfg.idle_window, "server_path": str(cfg.server_path or REPO_DIR / "server"),
                           "server_commit": _git_state(Path(cfg.server_path).parent if cfg.server_path else REPO_DIR),
                           "notes": []})
    spec = appserver_spec(n, cfg.server_path, cfg.server_arg or [])
    server = ServerProcess(spec)
    pool: IdlePool | None = None
    pub_transport: Any = None
    try:
        await server.start(30)
        res["server_command"] = " ".join(server.command())
        await smoke_check(server.ws_url, 10)
        pool = await IdlePool.start(cfg.workers)
        # The server's own idle cost with no connection (timers, metrics), subtracted nowhere: shown beside.
        b0, tb0 = procstat.cpu_times(server.pid), time.monotonic()
        await asyncio.sleep(cfg.baseline_window)
        b1, tb1 = procstat.cpu_times(server.pid), time.monotonic()
        res["baseline_cpu_pct"] = 100 * (b1.total - b0.total) / (tb1 - tb0)
        rss0 = await procstat.settled_rss(server.pid, 3, interval=0.5, tolerance=0.002)
        sock0, slab0 = sockstat(), slab()
        res["rss_before_kib"] = rss0 / 1024

        # -- open ---------------------------------------------------------
        log(f"opening {n} connections from {cfg.workers} workers over {len(cfg.source_list)} source addresses")
        t0 = time.monotonic()
        cpu_open0 = procstat.cpu_times(server.pid)
        opened = await pool.open(server.ws_url, n, cfg.source_list, cfg.concurrency, cfg.open_timeout)
        res["open_s"] = time.monotonic() - t0
        cpu_open1 = procstat.cpu_times(server.pid)
        res["opened"] = opened["opened"]
        res["open_errors"] = opened["errors"][:10]
        res["open_server_cpu_us_per_conn"] = (cpu_open1.total - cpu_open0.total) / max(1, opened["opened"]) * 1e6
        log(f"opened {opened['opened']}/{n} in {res['open_s']:.1f} s; errors: {opened['errors'][:3]}")
        if opened["opened"] == 0:
            raise RuntimeError("no connection opened")
        m = opened["opened"]
        rss1 = await procstat.settled_rss(server.pid, 10, interval=0.5, tolerance=0.002)
        sock1, slab1 = sockstat(), slab()
        res["rss_after_kib"] = rss1 / 1024
        res["rss_kib_per_conn"] = (rss1 - rss0) / 1024 / m
        page = os.sysconf("SC_PAGE_SIZE")
        res["sockstat_before"], res["sockstat_after"] = sock0, sock1
        res["tcp_mem_kib"] = {"before": sock0.get("mem", 0) * page / 1024, "after": sock1.get("mem", 0) * page / 1024}
        res["slab_delta_kib"] = {k: (slab1.get(k, 0) - slab0.get(k, 0)) / 1024 for k in slab1}
        res["slab_bytes_per_socket"] = (slab1.get("Slab", 0) - slab0.get("Slab", 0)) / (2 * m)
        log(f"server RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB: {res['rss_kib_per_conn']:.2f} KiB/conn; "
            f"TCP mem {sock0.get('mem')} -> {sock1.get('mem')} pages; "
            f"slab +{(slab1.get('Slab', 0) - slab0.get('Slab', 0)) / 2**20:.1f} MiB (both ends)")

        # -- idle window ---------------------------------------------------
        st0 = await pool.status()
        log(f"idle window {cfg.idle_window:.0f} s")
        machine0, gen0, cpu0, t0 = procstat.machine_times(), pool.cpu_seconds(), procstat.cpu_times(server.pid), \
            time.monotonic()
        end = t0 + cfg.idle_window
        while time.monotonic() < end:
            await asyncio.sleep(min(5.0, max(0.0, end - time.monotonic())))
            if not server.alive():
                raise RuntimeError(f"server died during the idle window\n{server.output_tail()}")
        machine1, gen1, cpu1, t1 = procstat.machine_times(), pool.cpu_seconds(), procstat.cpu_times(server.pid), \
            time.monotonic()
        st1 = await pool.status()
        w = t1 - t0
        res["idle"] = {
            "window_s": w,
            "server_cpu_s": cpu1.total - cpu0.total,
            "server_user_s": cpu1.user - cpu0.user,
            "server_system_s": cpu1.system - cpu0.system,
            "cpu_us_per_s_per_conn": (cpu1.total - cpu0.total) / w / m * 1e6,
            "user_us_per_s_per_conn": (cpu1.user - cpu0.user) / w / m * 1e6,
            "server_cpu_pct": 100 * (cpu1.total - cpu0.total) / w,
            "loadgen_cpu_pct": 100 * (gen1 - gen0) / w,
            "softirq_pct": 100 * (machine1.softirq - machine0.softirq) / w,
            "other_cpu_pct": max(0.0, 100 * ((machine1.busy - machine0.busy) - (cpu1.total - cpu0.total)
                                            - (gen1 - gen0) - (machine1.softirq - machine0.softirq)) / w),
            "pings_answered": st1["pings"] - st0["pings"],
            "pings_expected": m * w / cfg.ping_interval if cfg.ping_interval else 0.0,
            "dropped": st1["dropped"] - st0["dropped"],
            "open_after": st1["open"],
        }
        i = res["idle"]
        log(f"idle: {i['cpu_us_per_s_per_conn']:.3f} µs/s/conn (server {i['server_cpu_pct']:.1f}% CPU), "
            f"{i['pings_answered']} pings answered (~{i['pings_expected']:.0f} expected), {i['dropped']} dropped")

        # -- one broadcast ---------------------------------------------------
        await pool.reset()
        pub_transport, _ = await asyncio.wait_for(
            picows.ws_connect(PublisherListener, server.ws_url, websocket_handshake_timeout=15), 15)
        await asyncio.sleep(0.5)  # its welcome, before we read the CPU
        expected = st1["open"]
        cpu_b0 = procstat.cpu_times(server.pid)
        sent_ns = time.monotonic_ns()
        pub_transport.send(picows.WSMsgType.TEXT, chatmsg.make_envelope(1, sent_ns, cfg.size))
        deadline = time.monotonic() + cfg.broadcast_timeout
        st = await pool.status()
        while st["received"].get(1, 0) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            st = await pool.status()
        cpu_b1 = procstat.cpu_times(server.pid)
        await asyncio.sleep(1.0)  # anything arriving late (a duplicate) is counted too
        st = await pool.status()
        got = st["received"].get(1, 0)
        res["broadcast"] = {
            "expected": expected,
            "delivered": got,
            "lost": expected - got,
            "duplicates": st["duplicates"],
            "other_ids": {k: v for k, v in st["received"].items() if k != 1},
            "dropped_conns": st["dropped"] - st1["dropped"],
            "first_ms": (st["first_ns"] - sent_ns) / 1e6 if st["first_ns"] else None,
            "last_ms": (st["last_ns"] - sent_ns) / 1e6 if st["last_ns"] else None,
            "server_cpu_ms": (cpu_b1.total - cpu_b0.total) * 1e3,
            "server_cpu_us_per_delivery": (cpu_b1.total - cpu_b0.total) / got * 1e6 if got else None,
        }
        b = res["broadcast"]
        log(f"broadcast: {got}/{expected} delivered, last after {b['last_ms']} ms, {b['duplicates']} duplicates, "
            f"{b['dropped_conns']} conns dropped")
        return res
    except Exception as exc:  # noqa: BLE001 - reported with what was measured
        res["error"] = f"{type(exc).__name__}: {exc}"
        log(f"ERROR {res['error']}")
        return res
    finally:
        if pub_transport is not None and not pub_transport.is_disconnected:
            pub_transport.disconnect(graceful=False)
        if pool is not None:
            await pool.stop()  # the workers exit; the kernel closes their sockets
        if server.proc is not None and server.alive():
            res["server_log_tail"] = server.output_tail(1500)
        server.stop()


def render(res: dict[str, Any]) -> str:
    def f(v: Any, d: int = 2) -> str:
        return "–" if v is None else (f"{v:,.{d}f}" if isinstance(v, float) else f"{v:,}")

    lines = ["# Idle connections (issue 17, target 3)", ""]
    lines += [f"- {k}: {v}" for k, v in res.get("context", {}).items()]
    lines += [f"- server: `{res.get('server_command', '?')}` from {res['server_path']} ({res['server_commit']})", ""]
    def row(figure: str, value: str, target: str = "") -> str:
        return f"| {figure} | {value} | {target} |" if target else f"| {figure} | {value} | |"

    if "opened" in res:
        lines += ["| figure | value | target |", "|---|---:|---:|",
                  row("connections opened", f"{f(res['opened'])} / {f(res['connections'])} in {f(res['open_s'], 1)} s"),
                  row("server CPU per opened connection (handshake)", f"{f(res['open_server_cpu_us_per_conn'], 0)} µs")]
    if "rss_kib_per_conn" in res:
        tm = res["tcp_mem_kib"]
        lines += [
            row("server RSS before → after",
                f"{f(res['rss_before_kib'] / 1024, 1)} → {f(res['rss_after_kib'] / 1024, 1)} MiB"),
            row("**server RSS per connection**", f"**{f(res['rss_kib_per_conn'])} KiB**", "≤ 5 KiB"),
            row("kernel TCP buffer memory (sockstat `TCP: mem`, both ends)",
                f"{f(tm['before'], 0)} → {f(tm['after'], 0)} KiB"),
            row("kernel slab growth per socket (2 sockets per connection: both ends are here)",
                f"{f(res['slab_bytes_per_socket'] / 1024)} KiB"),
        ]
    if "idle" in res:
        i = res["idle"]
        window = f"{f(i['window_s'], 0)} s window, pings every {res.get('ping_interval', PING_INTERVAL):g} s"
        lines += [
            row(f"**idle server CPU per connection** ({window})",
                f"**{f(i['cpu_us_per_s_per_conn'], 3)} µs/s** (user {f(i['user_us_per_s_per_conn'], 3)})", "≤ 1 µs/s"),
            row("server CPU during the idle window",
                f"{f(i['server_cpu_pct'], 1)} % of a core (with no connection: {f(res.get('baseline_cpu_pct'), 2)} %)"),
            row("pings answered by the clients in the window",
                f"{f(i['pings_answered'])} (~{f(i['pings_expected'], 0)} expected)"),
            row("connections dropped by the server while idle", f(i["dropped"]), "0"),
            row("load generator / softirq / other CPU in the window",
                " / ".join(f(i[k], 1) for k in ("loadgen_cpu_pct", "softirq_pct", "other_cpu_pct")) + " %"),
        ]
    if "broadcast" in res:
        b = res["broadcast"]
        lines += [
            row("**one broadcast: delivered**",
                f"**{f(b['delivered'])} / {f(b['expected'])}** (lost {f(b['lost'])}, duplicates "
                f"{f(b['duplicates'])}, dropped conns {f(b['dropped_conns'])})", "nothing lost"),
            row("broadcast delivery time: first / last receipt", f"{f(b['first_ms'], 1)} / **{f(b['last_ms'], 1)} ms**"),
            row("server CPU for the broadcast",
                f"{f(b['server_cpu_ms'], 0)} ms ({f(b['server_cpu_us_per_delivery'])} µs per delivery)"),
        ]
    lines.append("")
    if "slab_delta_kib" in res:
        lines.append("Slab growth by cache (KiB, both ends, active objects × size): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in res["slab_delta_kib"].items()))
        lines.append("")
    if res.get("open_errors"):
        lines.append("Open errors (first ones): " + "; ".join(res["open_errors"][:5]))
        lines.append("")
    if res.get("error"):
        lines += [f"**Error:** {res['error']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="N idle WebSocket connections to one appserver (see bench/README.md)")
    p.add_argument("--connections", type=int, default=100_000, help="idle connections N (default 100,000)")
    p.add_argument("--workers", type=int, default=4, help="load-generator processes (default 4)")
    p.add_argument("--sources", type=int, default=0,
                   help=f"loopback source addresses 127.0.0.2... (default: one per {PORTS_PER_SOURCE:,} connections)")
    p.add_argument("--idle-window", type=float, default=45.0,
                   help="seconds of idle CPU measurement; keep ≥ 2 × the 20 s ping interval (default 45)")
    p.add_argument("--baseline-window", type=float, default=5.0,
                   help="seconds of server CPU measured before any connection opens (default 5)")
    p.add_argument("--concurrency", type=int, default=16, help="handshakes in flight per worker (default 16)")
    p.add_argument("--open-timeout", type=float, help="seconds to open all connections (default 60 + N/400)")
    p.add_argument("--broadcast-timeout", type=float, default=120.0,
                   help="seconds the broadcast may take to reach everyone (default 120)")
    p.add_argument("--size", type=int, default=64, help="characters of chat text (default 64)")
    p.add_argument("--server-path", type=Path,
                   help="a checkout's server/ directory to run instead of this one's (on PYTHONPATH)")
    p.add_argument("--server-arg", action="append",
                   help="extra appserver option, repeatable (e.g. --server-arg=--ping-interval=0); "
                        "not for the issue's figures, which use the defaults")
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", dest="json_out", type=Path, help="write the raw figures as JSON")
    cfg = p.parse_args(argv)
    if picows is None:
        print("picows is not installed: pip install -r bench/requirements.txt", file=sys.stderr)
        return 2
    n = cfg.connections
    nsrc = cfg.sources or max(1, math.ceil(n / PORTS_PER_SOURCE))
    cfg.source_list = [f"127.0.0.{2 + i}" for i in range(nsrc)]
    cfg.ping_interval = PING_INTERVAL  # the default, unless an extra option changes it (only for diagnosis)
    for arg in cfg.server_arg or []:
        if arg.startswith("--ping-interval="):
            cfg.ping_interval = float(arg.split("=", 1)[1])
    cfg.open_timeout = cfg.open_timeout or 60 + n / 400
    check_sources(cfg.source_list)
    need = n + 2000
    soft, hard = raise_nofile(need)
    if soft < need:
        print(f"RLIMIT_NOFILE is {soft} < {need}: the server needs one descriptor per connection. Raising the "
              f"hard limit needs CAP_SYS_RESOURCE (root outside a container that drops it): `ulimit -Hn {need}` "
              f"before starting, fs.nr_open ≥ {need}. Here at most --connections {max(0, hard - 2000)} fits.",
              file=sys.stderr)
        return 2
    somaxconn = read_int("/proc/sys/net/core/somaxconn")
    port_range = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    ports = int(port_range[1]) - int(port_range[0]) + 1
    if n / nsrc > ports - 1000:
        print(f"{n / nsrc:,.0f} connections per source address > {ports} ephemeral ports: use more --sources",
              file=sys.stderr)
        return 2
    log(f"RLIMIT_NOFILE {soft}; somaxconn {somaxconn}; ephemeral ports {ports} per source; sources "
        f"{cfg.source_list[0]}..{cfg.source_list[-1]}")
    started = time.monotonic()
    res: dict[str, Any] = {}
    asyncio.run(run_bounded(cfg, res, cfg.open_timeout + cfg.idle_window + cfg.broadcast_timeout + 240))
    res["context"] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z") + f", wall time {time.monotonic() - started:.0f} s",
        "machine": f"{os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        "command": "python bench/idle.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "limits": f"RLIMIT_NOFILE {soft}, net.core.somaxconn {somaxconn}, "
                  f"fs.nr_open {read_int('/proc/sys/fs/nr_open')}, ip_local_port_range {' '.join(port_range)}",
        "load": f"{cfg.workers} picows/uvloop processes, {len(cfg.source_list)} source addresses, "
                f"{cfg.concurrency} handshakes in flight per process",
    }
    report = render(res)
    print(report)
    if cfg.out:
        cfg.out.write_text(report + "\n")
    if cfg.json_out:
        cfg.json_out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return 1 if res.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
