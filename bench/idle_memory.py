"""Where the memory of an idle WebSocket connection goes, inside a real appserver (issue 17, target 3).

    python bench/idle_memory.py                      # 2000 connections, top 25 sites
    python bench/idle_memory.py --connections 5000 --top 40 --out /tmp/mem.md

Why in-process: RSS says how much, not where.  This script runs the real
server in its own process as the tests do (``appserver.tap.build_service``
with the chat app and SERVER_SPECS["appserver"]'s options, Twisted's epoll
reactor as twistd uses, real sockets on 127.0.0.1), warms it up with a few
connections, lets an ``idle_worker.py`` subprocess (picows) open N idle
connections once untraced (RSS per connection) and, after closing them, once
more under ``tracemalloc``, and reports what is still allocated per
connection:

- by allocation site (file:line of the allocating frame), with bytes and
  blocks per connection;
- by the innermost appserver frame of the allocating traceback ("which of
  our lines made the library allocate this"), and by package;
- ``sys.getsizeof`` of the objects every connection owns: the protocol
  instance and its ``__dict__`` attribute by attribute, the ``tcp.Server``
  transport, the tracker's client, the admission ticket, DelayedCalls (the
  autoping timer), buffers; an object shared by several connections is
  counted once.

tracemalloc sees Python's allocators only (not the kernel's socket buffers,
nor malloc calls made by C libraries directly, nor allocator fragmentation),
so its total per connection is below the RSS figure; both are printed.
Bounded: every wait has a deadline, the worker is stopped by its pid.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import procstat  # noqa: E402

LOOPBACK = "tcp:0:interface=127.0.0.1"


class WorkerPipe:
    """idle_worker.py driven with blocking JSON lines (from a thread, never the reactor's)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(BENCH / "idle_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.lock = threading.Lock()

    def call(self, msg: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()
            # The reply comes within the command's own timeout (the worker enforces it); a dead worker gives EOF.
            timer = threading.Timer(timeout, self.kill)
            timer.start()
            try:
                line = self.proc.stdout.readline()
            finally:
                timer.cancel()
        if not line:
            raise RuntimeError("worker exited (or was killed at the deadline)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def stop(self) -> None:
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"cmd":"exit"}\n')
                self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
        self.proc.wait(5)


# ---------------------------------------------------------------------------
# object sizes
# ---------------------------------------------------------------------------
def _attrs(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    d = getattr(obj, "__dict__", None)
    if isinstance(d, dict):
        out.update(d)
    for cls in type(obj).__mro__:
        for name in getattr(cls, "__slots__", ()) or ():
            if name in ("__dict__", "__weakref__") or name in out:
                continue
            try:
                out[name] = getattr(obj, name)
            except AttributeError:
                pass
    return out


def _shallow(value: Any, seen: set[int]) -> int:
    """getsizeof of ``value`` plus, for containers and byte buffers, of their direct items (counted once)."""
    if id(value) in seen or value is None or isinstance(value, (bool, int, float)) and -5 <= value <= 256:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    items: Any = ()
    if isinstance(value, dict):
        items = list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "deque":
        items = list(value)
    for item in items:
        if id(item) not in seen and not isinstance(item, type):
            if isinstance(item, (str, bytes, bytearray, int, float, tuple, list, dict)):
                seen.add(id(item))
                size += sys.getsizeof(item)
    return size


def attribute_table(objs: list[Any], seen: set[int]) -> list[tuple[str, str, float, int]]:
    """For the objects of one kind: (attribute, value type, bytes per object, objects having it), sorted by bytes.

    Values already counted (shared by several objects, or counted in an
    earlier table) are not counted again.
    """
    sizes: dict[str, int] = defaultdict(int)
    types: dict[str, set[str]] = defaultdict(set)
    having: dict[str, int] = defaultdict(int)
    for obj in objs:
        for name, value in _attrs(obj).items():
            having[name] += 1
            types[name].add(type(value).__name__)
            sizes[name] += _shallow(value, seen)
    n = max(1, len(objs))
    rows = [(name, "/".join(sorted(types[name])), sizes[name] / n, having[name]) for name in sizes]
    return sorted(rows, key=lambda r: -r[2])


def _timers(value: Any) -> list[Any]:
    """A DelayedCall, or a wrapper holding one (appserver's _TimerCall keeps it in ``_call``): both objects."""
    name = type(value).__name__
    if name == "DelayedCall":
        return [value]
    inner = getattr(value, "_call", None)
    if inner is not None and type(inner).__name__ == "DelayedCall":
        return [value, inner]
    return []


def object_report(n: int, proto_cls: type) -> tuple[list[str], dict[str, Any]]:
    """Per-kind tables; each object is counted once, in the first table that owns it (protocol last)."""
    gc.collect()
    protos = [o for o in gc.get_objects() if isinstance(o, proto_cls)]
    out: dict[str, Any] = {"protocols": len(protos)}
    if not protos:
        return ["no protocol instance found"], out
    seen: set[int] = set()
    sections: dict[str, list[str]] = {}

    def one_kind(title: str, objs: list[Any], owned: bool = False) -> None:
        objs = [o for o in objs if o is not None and (owned or id(o) not in seen)]
        if not objs:
            return
        own = 0
        d_sizes = []
        for o in objs:
            seen.add(id(o))
            own += sys.getsizeof(o)
            d = getattr(o, "__dict__", None)
            if isinstance(d, dict):
                own += sys.getsizeof(d)
                d_sizes.append(sys.getsizeof(d))
                seen.add(id(d))
        rows = attribute_table(objs, seen)
        per = own / len(objs)
        attrs_total = sum(r[2] for r in rows)
        type_names = sorted({type(o).__module__ + "." + type(o).__qualname__ for o in objs})
        out[title] = {"objects": len(objs), "types": type_names, "self_and_dict_bytes": per,
                      "attribute_bytes": attrs_total, "total_bytes_per_conn": (own + attrs_total * len(objs)) / n,
                      "attributes": [{"name": r[0], "type": r[1], "bytes": r[2], "having": r[3]} for r in rows]}
        lines = [f"### {title}: {len(objs)} × {', '.join(type_names)}", "",
                 f"getsizeof(object) + getsizeof(__dict__) = {per:,.0f} B per object"
                 + (f" (the __dict__ alone: {sum(d_sizes) / len(d_sizes):,.0f} B, "
                    f"{sum(len(o.__dict__) for o in objs if hasattr(o, '__dict__')) / len(d_sizes):.0f} entries)"
                    if d_sizes else " (__slots__)")
                 + f"; attribute values owned (not counted in another table): {attrs_total:,.0f} B per object; "
                 f"**{out[title]['total_bytes_per_conn']:,.0f} B per connection in all**.", "",
                 "| attribute | type | bytes per object | objects having it |", "|---|---|---:|---:|"]
        for name, typ, size, having in rows[:25]:
            if size >= 1:
                lines.append(f"| `{name}` | {typ} | {size:,.0f} | {having} |")
        lines.append("")
        sections[title] = lines

    # The protocols have their own table (last); objects shared by every connection (the factory, the
    # runtime, ...) are nobody's: mark both first.
    seen.update(id(p) for p in protos)
    for shared in {id(getattr(p, "factory", None)) for p in protos}:
        seen.add(shared)
    for p in protos:
        for attr in ("factory",):
            v = getattr(p, attr, None)
            if v is not None:
                seen.add(id(v))
    ticket_attr = next((a for a in ("_ticket", "ticket") if hasattr(protos[0], a)), None)
    kinds: list[tuple[str, list[Any]]] = [
        ("transport (tcp.Server)", [getattr(p, "transport", None) for p in protos]),
        ("tracker client", [getattr(p, "client", None) for p in protos]),
    ]
    if ticket_attr:
        kinds.append(("admission ticket", [getattr(p, ticket_attr, None) for p in protos]))
    kinds.append(("transport.producer (backpressure)",
                  [getattr(getattr(p, "transport", None), "producer", None) for p in protos]))
    timers: list[Any] = []
    for p in protos:
        for value in _attrs(p).values():
            timers.extend(_timers(value))
    kinds.append(("timers held by the protocol (autoping, timeouts): DelayedCall and wrappers", timers))
    for title, objs in kinds:
        one_kind(title, objs)
    one_kind("protocol", protos, owned=True)
    # Other per-connection objects the protocol holds (Deferreds, TrafficStats, validators...) are in its table.
    order = ["protocol"] + [t for t, _ in kinds]
    lines: list[str] = []
    total = sum(out[t]["total_bytes_per_conn"] for t in order if t in out)
    lines += [f"Objects reachable from the protocol, each counted once: **{total:,.0f} B per connection** "
              f"(one level of container items; compare the tracemalloc total above).", ""]
    for t in order:
        lines += sections.get(t, [])
    out["objects_bytes_per_conn"] = total
    return lines, out


# ---------------------------------------------------------------------------
# tracemalloc
# ---------------------------------------------------------------------------
def _pkg(filename: str) -> str:
    f = filename.replace("\\", "/")
    for key in ("/appserver/", "/autobahn/", "/twisted/", "/txaio/", "/zope/", "/hyperlink/", "/attr/"):
        if key in f:
            return key.strip("/")
    if "site-packages" in f:
        return f.split("site-packages/")[1].split("/")[0]
    return "stdlib/other"


def _short(filename: str) -> str:
    f = filename.replace("\\", "/")
    for key in ("site-packages/", "/server/"):
        if key in f:
            return f.split(key, 1)[1]
    return f.rsplit("/lib/python", 1)[-1] if "/lib/python" in f else f


def tracemalloc_report(snapshot: tracemalloc.Snapshot, n: int, top: int) -> tuple[list[str], dict[str, Any]]:
    snapshot = snapshot.filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, threading.__file__),
    ])
    by_line = snapshot.statistics("lineno")
    # For each allocating line, the caller that allocated most through it (first frame in another file).
    callers: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for s in snapshot.statistics("traceback"):
        top_frame = s.traceback[-1]  # tracemalloc orders a traceback from the oldest frame to the most recent
        caller = next((f"{_short(fr.filename)}:{fr.lineno}" for fr in reversed(s.traceback)
                       if fr.filename != top_frame.filename), "")
        callers[(top_frame.filename, top_frame.lineno)][caller] += s.size
    total = sum(s.size for s in by_line)
    lines = [f"tracemalloc: {total / n:,.0f} B per connection still allocated "
             f"({sum(s.count for s in by_line) / n:,.1f} blocks), over {len(by_line)} sites.", "",
             f"### Top {top} allocation sites (the allocating line)", "",
             "| # | site | code | called from | bytes per conn | blocks per conn | share |",
             "|---:|---|---|---|---:|---:|---:|"]
    import linecache
    rows = []
    for i, s in enumerate(by_line[:top], 1):
        fr = s.traceback[0]
        code = linecache.getline(fr.filename, fr.lineno).strip().replace("|", "\\|")[:70]
        by_caller = callers.get((fr.filename, fr.lineno), {})
        caller = max(by_caller, key=by_caller.get) if by_caller else ""
        lines.append(f"| {i} | `{_short(fr.filename)}:{fr.lineno}` | `{code}` | `{caller}` | {s.size / n:,.0f} "
                     f"| {s.count / n:,.2f} | {100 * s.size / total:.1f}% |")
        rows.append({"site": f"{_short(fr.filename)}:{fr.lineno}", "code": code, "bytes_per_conn": s.size / n,
                     "blocks_per_conn": s.count / n})
    lines.append("")

    # Innermost appserver frame of each traceback: which of our lines caused the allocation.
    ours: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    pkgs: dict[str, int] = defaultdict(int)
    for s in snapshot.statistics("traceback"):
        pkgs[_pkg(s.traceback[-1].filename)] += s.size
        key = "(no appserver frame: reactor/library code)"
        for fr in reversed(s.traceback):  # most recent call first
            if "/appserver/" in fr.filename.replace("\\", "/"):
                key = f"{_short(fr.filename)}:{fr.lineno}"
                break
        ours[key][0] += s.size
        ours[key][1] += s.count
    lines += ["### By the innermost appserver frame of the allocating traceback", "",
              "| appserver line | code | bytes per conn | blocks per conn |", "|---|---|---:|---:|"]
    for key, (size, count) in sorted(ours.items(), key=lambda kv: -kv[1][0])[:top]:
        code = ""
        if ":" in key and not key.startswith("("):
            path, lineno = key.rsplit(":", 1)
            full = REPO / "server" / path
            code = linecache.getline(str(full), int(lineno)).strip().replace("|", "\\|")[:70]
        lines.append(f"| `{key}` | `{code}` | {size / n:,.0f} | {count / n:,.2f} |")
    lines += ["", "### By package (allocating frame)", "", "| package | bytes per conn |", "|---|---:|"]
    for pkg, size in sorted(pkgs.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {pkg} | {size / n:,.0f} |")
    lines.append("")
    return lines, {"tracemalloc_bytes_per_conn": total / n, "top_sites": rows,
                   "by_appserver_line": {k: v[0] / n for k, v in ours.items()},
                   "by_package": {k: v / n for k, v in pkgs.items()}}


# ---------------------------------------------------------------------------
# the run (on the reactor thread; the worker is called from a thread)
# ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Memory per idle WebSocket connection, by allocation site")
    p.add_argument("--connections", type=int, default=2000, help="idle connections (default 2000)")
    p.add_argument("--top", type=int, default=25, help="allocation sites listed (default 25)")
    p.add_argument("--frames", type=int, default=12, help="tracemalloc traceback depth (default 12)")
    p.add_argument("--server-path", type=Path, help="a checkout's server/ directory instead of this one's")
    p.add_argument("--timeout", type=float, default=300, help="overall deadline in seconds (default 300)")
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", dest="json_out", type=Path, help="write the figures as JSON")
    cfg = p.parse_args(argv)
    n = cfg.connections
    sys.path.insert(0, str(cfg.server_path or REPO / "server"))

    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import reactor, threads
    from twisted.logger import globalLogBeginner, textFileLogObserver

    import appserver
    from appserver._server.settings import Settings
    from appserver._web import websocket as ws_module
    from appserver.apps.chat import app as chat_app
    from appserver.tap import build_service

    # twistd logs as text to its output; without an observer Twisted would keep every event in memory.
    devnull = open(os.devnull, "w")  # noqa: SIM115 - open until the process ends
    globalLogBeginner.beginLoggingTo([textFileLogObserver(devnull)], redirectStandardIO=False)

    # SERVER_SPECS["appserver"]'s options (the connection limits raised to N: limits, not costs).
    settings = Settings.from_mapping({"app": "appserver.apps.chat:app", "static": LOOPBACK, "ajax": LOOPBACK,
                                      "ws": LOOPBACK, "max_connections": n + 1000,
                                      "max_connections_per_ip": n + 1000, "rate_limit": 0})
    service = build_service(settings, chat_app, reactor=reactor)
    worker = WorkerPipe()
    result: dict[str, Any] = {"connections": n, "appserver": str(Path(appserver.__file__).parent)}
    report: list[str] = []

    def sleep(seconds: float) -> Any:
        from twisted.internet.task import deferLater
        return deferLater(reactor, seconds, lambda: None)

    async def run() -> None:
        service.startService()
        for _ in range(100):
            if "ws" in service.ports:
                break
            await sleep(0.05)
        url = f"ws://127.0.0.1:{service.ports['ws']}/"
        # Warm-up: lazily built structures, interned strings, the thread pool used to talk to the worker.
        r = await threads.deferToThread(worker.call, {"cmd": "open", "url": url, "count": 50,
                                                      "sources": ["127.0.0.2"], "concurrency": 16,
                                                      "timeout": 30}, 60)
        if r["opened"] != 50:
            raise RuntimeError(f"warm-up opened {r['opened']}/50: {r['errors']}")
        await threads.deferToThread(worker.call, {"cmd": "close", "timeout": 10}, 30)
        await sleep(1.0)
        # Pass 1, without tracemalloc (which slows the handshakes and adds its own memory): RSS per connection.
        gc.collect()
        rss_a = procstat.rss_bytes(os.getpid())
        r = await threads.deferToThread(worker.call, {"cmd": "open", "url": url, "count": n,
                                                      "sources": ["127.0.0.2"], "concurrency": 16,
                                                      "timeout": 60 + n / 100}, 120 + n / 100)
        await sleep(2.0)
        gc.collect()
        result["rss_kib_per_conn"] = (procstat.rss_bytes(os.getpid()) - rss_a) / 1024 / max(1, r["opened"])
        await threads.deferToThread(worker.call, {"cmd": "close", "timeout": 20}, 40)
        await sleep(2.0)
        # Pass 2: the same connections again, traced.
        gc.collect()
        rss0 = procstat.rss_bytes(os.getpid())
        tracemalloc.start(cfg.frames)
        t0 = time.monotonic()
        r = await threads.deferToThread(worker.call, {"cmd": "open", "url": url, "count": n,
                                                      "sources": ["127.0.0.2"], "concurrency": 16,
                                                      "timeout": 60 + n / 100}, 120 + n / 100)
        opened = r["opened"]
        result["opened"], result["open_s"] = opened, time.monotonic() - t0
        await sleep(2.0)  # the last handshakes' tails (admission, welcome) and a few autopings
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
        traced, _ = tracemalloc.get_traced_memory()
        overhead = tracemalloc.get_tracemalloc_memory()
        rss1 = procstat.rss_bytes(os.getpid())
        tracemalloc.stop()
        result["rss_kib_per_conn_traced_pass"] = (rss1 - rss0 - overhead) / 1024 / opened
        result["traced_kib_per_conn"] = traced / 1024 / opened
        report.extend([
            "# Memory per idle WebSocket connection (in-process appserver, tracemalloc)", "",
            f"- {opened} idle connections opened in {result['open_s']:.1f} s (picows client in another process), "
            f"appserver from {result['appserver']}",
            f"- RSS growth per connection (first pass, untraced, fresh process): "
            f"{result['rss_kib_per_conn']:.2f} KiB; target ≤ 5 KiB (bench/idle.py measures it in twistd)",
            f"- traced by tracemalloc (Python allocators only): {result['traced_kib_per_conn']:.2f} KiB per connection",
            ""])
        lines, figures = tracemalloc_report(snapshot, opened, cfg.top)
        result.update(figures)
        report.extend(["## Allocation sites", ""] + lines)
        proto_cls = getattr(ws_module, "TrackedProtocol", None)
        if proto_cls is None:
            from autobahn.twisted.websocket import WebSocketServerProtocol as proto_cls  # type: ignore[no-redef]
        obj_lines, obj_figures = object_report(opened, proto_cls)
        result["objects"] = obj_figures
        report.extend(["## Objects each connection owns (sys.getsizeof)", ""] + obj_lines)
        await threads.deferToThread(worker.call, {"cmd": "close", "timeout": 20}, 40)

    def done(outcome: Any) -> None:
        from twisted.python.failure import Failure
        if isinstance(outcome, Failure):
            result["error"] = outcome.getErrorMessage()
            report.append(f"**Error:** {outcome.getTraceback()}")
        if reactor.running:
            reactor.stop()

    from twisted.internet.defer import Deferred, ensureDeferred

    def start() -> None:
        d: Deferred[None] = ensureDeferred(run())
        d.addTimeout(cfg.timeout, reactor)
        d.addBoth(done)

    reactor.callWhenRunning(start)
    try:
        reactor.run(installSignalHandlers=True)
    finally:
        worker.stop()
    text = "\n".join(report)
    print(text)
    if cfg.out:
        cfg.out.write_text(text + "\n")
    if cfg.json_out:
        cfg.json_out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
