"""Broadcast fan-out benchmark: appserver against peer servers measured in the same run.

A benchmark, not a test: it prints a Markdown table (and writes it with
--out), and it is bounded in time (every phase has a deadline, and a global
time budget skips what would not fit).  See bench/README.md for what each
number means.

    python bench/run.py                      # full run, about 10 minutes
    python bench/run.py --quick              # under 2 minutes
    python bench/run.py --servers ws-node,minimal --clients 100,1000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import deflate as deflate_mod  # noqa: E402
import procstat  # noqa: E402
from loadgen import FanoutPool, Publisher, measure_level, smoke_check  # noqa: E402
from report import NOISY_OTHER_CPU_PCT, GroupResult, render_markdown  # noqa: E402
from servers import REFERENCE_SERVERS, SERVER_SPECS, ServerProcess, ServerSpec, ServerStartError  # noqa: E402
from workers import lift_nofile_limit  # noqa: E402

SERVER_START_TIMEOUT = 20.0
SMOKE_TIMEOUT = 10.0
CLOSE_TIMEOUT = 15.0
DRAIN_TIMEOUT = 30.0  # normally over in milliseconds; long so that slow is not reported as lost
MSG_TIMEOUT = 30.0
QUIET_MAX_WAIT = 5.0
QUIET_MAX_BUSY_CORES = 0.3
NOISY_RETRIES_PER_GROUP = 2


@dataclass(frozen=True)
class Settings:
    """Everything one benchmark run needs, resolved from the command line."""

    servers: tuple[str, ...]
    clients: tuple[int, ...]
    inflight: tuple[int, ...]
    runs: int
    warmup: float
    measure: float
    workers: int
    size: int
    concurrency: int
    longpoll: bool
    longpoll_clients: int
    sse: bool
    sse_clients: int
    time_budget: float
    out: Path | None
    json_out: Path | None
    render: Path | None
    deflate: argparse.Namespace | None = None  # the deflate phase's options (deflate.py), when --deflate


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description="Broadcast fan-out benchmark (see bench/README.md).")
    parser.add_argument("--servers", default=",".join(SERVER_SPECS),
                        help=f"comma-separated, from: {', '.join(SERVER_SPECS)} (default: all)")
    parser.add_argument("--clients", type=_int_list, help="subscriber counts N (default 100,1000,5000)")
    parser.add_argument("--big", action="store_true", help="also measure N=10000")
    parser.add_argument("--inflight", type=_int_list, help="broadcasts in flight, closed loop (default 1,8,32)")
    parser.add_argument("--runs", type=int, help="runs per cell; the report shows medians (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="N=100,1000, in flight 1,32, one run, short windows: under 2 minutes")
    parser.add_argument("--warmup", type=float, help="seconds of load before each measured window (default 1)")
    parser.add_argument("--measure", type=float, help="seconds in each measured window (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--size", type=int, default=64, help="characters of chat text per message (default 64)")
    parser.add_argument("--connect-concurrency", type=int, default=32,
                        help="handshakes in progress per worker while opening connections (default 32)")
    parser.add_argument("--longpoll", action="store_true", help="also run the Ajax long-poll phase (appserver)")
    parser.add_argument("--longpoll-clients", type=int, default=1000, help="polling clients (default 1000)")
    parser.add_argument("--sse", action="store_true", help="also run the event stream (SSE) phase (appserver)")
    parser.add_argument("--sse-clients", type=int, default=1000, help="event stream clients (default 1000)")
    parser.add_argument("--deflate", action="store_true",
                        help="also run the permessage-deflate phase (appserver; deflate.py, options below)")
    deflate_group = parser.add_argument_group("permessage-deflate phase (--deflate)")
    deflate_mod.add_arguments(deflate_group)  # type: ignore[arg-type]
    parser.add_argument("--time-budget", type=float,
                        help="seconds; groups that would start later are skipped (default 600, quick 110)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--json", dest="json_out", type=Path, help="write raw per-run figures as JSON")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="measure nothing: print (and --out) the report of a file written by --json")
    args = parser.parse_args(argv)

    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    unknown = [s for s in servers if s not in SERVER_SPECS]
    if unknown:
        parser.error(f"unknown server(s) {unknown}; known: {list(SERVER_SPECS)}")
    quick = args.quick
    clients = args.clients or ((100, 1000) if quick else (100, 1000, 5000))
    if args.big and 10000 not in clients:
        clients = (*clients, 10000)
    if args.workers < 1 or any(n < args.workers for n in clients):
        parser.error("need at least one worker and at least one client per worker")
    return Settings(
        servers=servers,
        clients=clients,
        inflight=args.inflight or ((1, 32) if quick else (1, 8, 32)),
        runs=args.runs or (1 if quick else 3),
        warmup=args.warmup if args.warmup is not None else (0.5 if quick else 1.0),
        measure=args.measure if args.measure is not None else (1.0 if quick else 2.0),
        workers=args.workers,
        size=args.size,
        concurrency=args.connect_concurrency,
        longpoll=args.longpoll,
        longpoll_clients=args.longpoll_clients,
        sse=args.sse,
        sse_clients=args.sse_clients,
        time_budget=args.time_budget if args.time_budget is not None else (110.0 if quick else 600.0),
        out=args.out,
        json_out=args.json_out,
        render=args.render,
        deflate=argparse.Namespace(server_path=None, **{k: v for k, v in vars(args).items()
                                                        if k.startswith("deflate_") or k == "quotes"})
        if args.deflate else None,
    )


class QuietGate:
    """Waits (bounded) until other processes leave the machine nearly idle.

    Why: this 2-core machine is shared with other work (test suites,
    browsers); a window measured while something else is busy skews every
    figure in it.  When the machine stayed busy through the last wait, the
    next wait is short: waiting out a long test suite would only burn the
    time budget.
    """

    def __init__(self, max_wait: float, max_busy_cores: float) -> None:
        self.max_wait = max_wait
        self.max_busy_cores = max_busy_cores
        self.persistently_busy = False

    async def wait(self) -> bool:
        """Return True once the machine is quiet, False if it is still busy at the deadline."""
        max_wait = 1.0 if self.persistently_busy else self.max_wait
        deadline = time.monotonic() + max_wait
        waited = False
        while True:
            m0 = procstat.machine_times()
            await asyncio.sleep(0.5)
            m1 = procstat.machine_times()
            elapsed = m1.total - m0.total
            busy = (m1.busy - m0.busy) / elapsed * (os.cpu_count() or 1) if elapsed > 0 else 0.0
            quiet = busy < self.max_busy_cores
            if quiet or time.monotonic() >= deadline:
                if waited:
                    log(f"  machine {'quiet' if quiet else 'still busy'} after waiting: "
                        f"{busy:.2f} cores used by other processes")
                self.persistently_busy = not quiet
                return quiet
            if not waited:
                log(f"  machine busy ({busy:.2f} cores used by other processes): waiting up to {max_wait:.0f} s")
                waited = True


def log(msg: str) -> None:
    """Progress goes to stderr so stdout carries only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run_group(spec: ServerSpec, result: GroupResult, cfg: Settings, gate: QuietGate) -> GroupResult:
    """Start one server, open ``result.clients`` idle connections (memory), then measure every in-flight level.

    Fills ``result`` as it goes, so a cancelled group keeps what it measured.
    Raises ServerStartError when the server cannot be started or fails the
    smoke check (the caller then skips that server); any other failure is
    recorded in the result's ``error``.
    """
    transport, clients = result.transport, result.clients
    server = ServerProcess(spec)
    pool: FanoutPool | None = None
    pub: Publisher | None = None
    try:
        try:
            await server.start(SERVER_START_TIMEOUT)
            await smoke_check(server.ws_url, SMOKE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any start failure means: skip this server
            tail = server.output_tail()
            raise ServerStartError(f"{type(exc).__name__}: {exc}\n--- server output ---\n{tail}") from exc
        pool = await FanoutPool.start(cfg.workers)
        rss0 = await procstat.settled_rss(server.pid, 1.0)
        url = server.ws_url if transport == "ws" else server.ajax_url
        open_timeout = 30.0 + clients / 100.0
        t0 = time.monotonic()
        opened, errors = await pool.open(transport, url, clients, first_id=1,
                                         concurrency=cfg.concurrency, timeout=open_timeout)
        result.open_s = time.monotonic() - t0
        if opened < clients:
            result.error = f"opened {opened}/{clients} connections; first errors: {errors[:3]}"
            return result
        rss1 = await procstat.settled_rss(server.pid)
        result.mem_per_conn_bytes = (rss1 - rss0) / clients
        pub = await asyncio.wait_for(
            Publisher.connect(server.ws_url, len(pool.workers), cfg.size, MSG_TIMEOUT, first_id=1), SMOKE_TIMEOUT
        )
        pool.done_handler = pub.on_done
        retries = NOISY_RETRIES_PER_GROUP
        for k in cfg.inflight:
            level_deadline = cfg.warmup + cfg.measure + DRAIN_TIMEOUT + 20.0
            level = await asyncio.wait_for(
                measure_level(server.pid, pool, pub, k, cfg.warmup, cfg.measure, DRAIN_TIMEOUT), level_deadline
            )
            while level.other_cpu_pct > NOISY_OTHER_CPU_PCT and retries > 0:
                # Another process took CPU during the window: once it has gone, measure this level
                # again and keep the quieter window.
                retries -= 1
                log(f"  other processes used {level.other_cpu_pct:.0f}% CPU during the window")
                if not await gate.wait():
                    break
                log("  measuring again")
                again = await asyncio.wait_for(
                    measure_level(server.pid, pool, pub, k, cfg.warmup, cfg.measure, DRAIN_TIMEOUT), level_deadline
                )
                quiet = again if again.other_cpu_pct < level.other_cpu_pct else level
                # Losses count whichever window is kept: a lost message is never noise.
                level = dataclasses.replace(quiet, lost=again.lost + level.lost, dropped=again.dropped + level.dropped,
                                            stalled=again.stalled + level.stalled)
            result.levels.append(level)
            log(f"  {spec.name:<10} {transport:<8} N={clients:<5} k={k:<3} {level.msgs_per_s:>10,.0f} msg/s "
                f"{(level.cpu_us_per_msg or 0):7.2f} µs/msg (usr {(level.user_us_per_msg or 0):.2f} "
                f"sys {(level.system_us_per_msg or 0):.2f})  srv {level.server_cpu_pct:3.0f}%  "
                f"gen {level.loadgen_cpu_pct:3.0f}%  sirq {100 * level.softirq_s / level.window_s:3.0f}%  "
                f"other {level.other_cpu_pct:3.0f}%  p99 {(level.p99_us or 0) / 1000:7.2f} ms  lost {level.lost}")
            if not server.alive():
                result.error = f"server died\n{server.output_tail()}"
                break
        return result
    except ServerStartError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed group is reported, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    finally:
        if pub is not None:
            await pub.close()
        if pool is not None:
            try:
                await pool.close(CLOSE_TIMEOUT)
            except Exception:  # noqa: BLE001 - the workers are stopped below anyway
                pass
            await pool.stop()
        server.stop()


def context_lines(cfg: Settings, elapsed: float) -> list[str]:
    """What the reader needs to judge the numbers: machine, versions, settings."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = "absent"
    if shutil.which("node"):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    versions = [f"Python {platform.python_version()}", f"Node {node}"]
    for mod in ("picows", "websockets", "twisted", "autobahn", "uvloop"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except (ImportError, AttributeError):
            pass
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}, wall time {elapsed:.0f} s",
        f"machine: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}",
        "versions: " + ", ".join(versions),
        f"command: `python bench/run.py {' '.join(sys.argv[1:])}`".replace("`python bench/run.py `",
                                                                             "`python bench/run.py`"),
        f"settings: N={','.join(map(str, cfg.clients))}, in flight={','.join(map(str, cfg.inflight))}, "
        f"runs={cfg.runs}, warm-up {cfg.warmup:g} s, window {cfg.measure:g} s, {cfg.workers} worker processes, "
        f"{cfg.size}-character chat text",
    ]


async def main_async(cfg: Settings) -> int:
    started = time.monotonic()
    deadline = started + cfg.time_budget
    groups: list[GroupResult] = []
    broken: dict[str, str] = {}
    notes: list[str] = []
    plan: list[tuple[int, int, str, str]] = []
    for run in range(cfg.runs):
        for n in cfg.clients:
            plan += [(run, n, name, "ws") for name in cfg.servers]
        if cfg.longpoll:
            plan += [(run, cfg.longpoll_clients, name, "longpoll")
                     for name in cfg.servers if SERVER_SPECS[name].longpoll]
        if cfg.sse:
            # The servers with an Ajax site (long poll) have the event stream on it too.
            plan += [(run, cfg.sse_clients, name, "sse")
                     for name in cfg.servers if SERVER_SPECS[name].longpoll]
    skipped = 0
    gate = QuietGate(QUIET_MAX_WAIT, QUIET_MAX_BUSY_CORES)
    interrupted = False
    current: asyncio.Future[GroupResult] | None = None

    def on_signal() -> None:
        # Cancel the running group so its finally blocks stop the server and
        # workers by pid; the report of what was measured is still printed.
        nonlocal interrupted
        interrupted = True
        if current is not None:
            current.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    for run, n, name, transport in plan:
        if interrupted:
            break
        if name in broken:
            continue
        if time.monotonic() > deadline:
            skipped += 1
            continue
        log(f"run {run + 1}/{cfg.runs}: {name} {transport} N={n}")
        await gate.wait()
        result = GroupResult(server=name, transport=transport, clients=n, run=run)
        current = asyncio.ensure_future(run_group(SERVER_SPECS[name], result, cfg, gate))
        try:
            groups.append(await current)
        except asyncio.CancelledError:
            result.error = "interrupted"
            groups.append(result)
            log("interrupted: servers and workers stopped")
            break
        except ServerStartError as exc:
            broken[name] = str(exc)
            log(f"SKIPPING {name}: cannot start or smoke-check it:\n{exc}")
            continue
        finally:
            current = None
        if groups[-1].error:
            log(f"  {name} N={n}: {groups[-1].error}")
    if interrupted:
        notes.append("run interrupted by a signal: partial results")
    if skipped:
        notes.append(f"time budget ({cfg.time_budget:.0f} s) exhausted: {skipped} groups skipped; "
                     "cells show how many runs they got")
    for name, why in broken.items():
        first_line = why.splitlines()[0] if why else ""
        notes.append(f"{name} skipped: {first_line} (full server output printed on stderr)")
    notes.append("lost = broadcasts a connection never received (must be 0); CPU ×X = server CPU per delivered "
                 "message divided by X's, median of per-run ratios")

    deflate_text = ""
    if cfg.deflate is not None and not interrupted:
        if "appserver" in broken:
            notes.append("deflate phase skipped: appserver could not be started")
        else:
            results, deflate_notes = await deflate_mod.run_phase(cfg.deflate)
            deflate_text = deflate_mod.render(results, deflate_notes, cfg.deflate)

    servers_done = [s for s in cfg.servers if s not in broken]
    report = render_markdown(groups, servers_done, REFERENCE_SERVERS,
                             context_lines(cfg, time.monotonic() - started), notes)
    if deflate_text:
        report = report.rstrip("\n") + "\n\n" + deflate_text
    print(report)
    if cfg.out:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(report + "\n")
        log(f"wrote {cfg.out}")
    if cfg.json_out:
        cfg.json_out.write_text(json.dumps([g.to_json() for g in groups], indent=1) + "\n")
        log(f"wrote {cfg.json_out}")
    return 0 if groups else 1


def render_saved(cfg: Settings, path: Path) -> int:
    """Re-render a saved --json file (for instance after changing the report layout)."""
    groups = [GroupResult.from_json(obj) for obj in json.loads(path.read_text())]
    servers = list(dict.fromkeys(g.server for g in groups))
    header = [f"re-rendered from `{path}` (settings as when it was measured)"]
    report = render_markdown(groups, servers, REFERENCE_SERVERS, header, [])
    print(report)
    if cfg.out:
        cfg.out.write_text(report + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.render:
        return render_saved(cfg, cfg.render)
    if importlib.util.find_spec("picows") is None:
        print("picows is not installed: pip install -r bench/requirements.txt", file=sys.stderr)
        return 2
    hard = lift_nofile_limit()
    need = max((*cfg.clients, cfg.longpoll_clients if cfg.longpoll else 0, cfg.sse_clients if cfg.sse else 0)) + 100
    if hard < need:
        print(f"RLIMIT_NOFILE hard limit {hard} < {need} needed by the server: raise it (ulimit -Hn)",
              file=sys.stderr)
        return 2
    return asyncio.run(main_async(cfg))


if __name__ == "__main__":
    sys.exit(main())
