"""Harness side of the load generator: worker processes, the publisher and one measured level.

Why the publisher lives here and not in a worker: the closed loop needs a
global view ("message i reached every subscriber in every worker"), which only
the harness has.  Each worker reports the ids all of its connections received;
when all workers have reported an id, the publisher sends a new message, so
``inflight`` broadcasts are outstanding at any time (closed loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chatmsg
import procstat
from workers import WorkerPool

try:
    import picows
except ImportError:  # pragma: no cover - run.py refuses to start without it
    picows = None  # type: ignore[assignment]


class FanoutPool(WorkerPool):
    """The worker.py processes of one measurement group; routes their 'done' reports to ``done_handler``."""

    SCRIPT = Path(__file__).resolve().with_name("worker.py")

    def __init__(self) -> None:
        super().__init__()
        self.done_handler: Callable[[list[int]], None] = lambda ids: None

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("ev") == "done":
            self.done_handler(event["ids"])

    async def open(self, transport: str, url: str, count: int, first_id: int, concurrency: int,
                   timeout: float) -> tuple[int, list[str]]:
        """Open ``count`` connections spread evenly over the workers; return (opened, errors)."""
        shares = self.shares(count)
        replies = await self.call_all(
            lambda i: {"cmd": "open", "transport": transport, "url": url, "count": shares[i],
                       "first_id": first_id, "concurrency": concurrency, "timeout": timeout},
            timeout + 10,
        )
        errors = [e for r in replies for e in r["errors"]]
        return sum(r["opened"] for r in replies), errors

    async def window(self, on: bool) -> None:
        await self.call_all(lambda i: {"cmd": "window", "on": on}, 10)

    async def stats(self, last_id: int) -> dict[str, Any]:
        replies = await self.call_all(lambda i: {"cmd": "stats", "last_id": last_id}, 10)
        out: dict[str, Any] = {"hist": chatmsg.merge_histograms(r["hist"] for r in replies)}
        for key in ("delivered", "lost", "late", "dropped", "unexpected_frames", "open"):
            out[key] = sum(int(r[key]) for r in replies)
        return out

    async def close(self, timeout: float) -> int:
        replies = await self.call_all(lambda i: {"cmd": "close", "timeout": timeout}, timeout + 10)
        return sum(r["open"] for r in replies)


if picows is not None:

    class PublisherListener(picows.WSListener):
        """A publisher's own connection: it receives its echo too, which is ignored (picows answers pings)."""

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()


@dataclass
class Publisher:
    """Closed-loop sender: keeps ``inflight`` broadcasts outstanding until told to stop.

    A broadcast is complete when every worker has reported it.  A lost message
    must not freeze the loop, so an outstanding broadcast is abandoned (counted
    in ``stalled``; the workers count the loss itself) as soon as a later one
    completes: every connection receives ids in order, and each worker reports
    them in that order, so an earlier id still outstanding then can only be
    missing somewhere.  ``msg_timeout`` is only a safety net for a loop where
    nothing completes any more; it is long because a slow, overloaded server
    is not a lossy one, and abandoning on a short timer would add load
    exactly when the server is behind.
    """

    transport: Any
    n_workers: int
    size: int
    msg_timeout: float
    next_id: int = 1
    inflight: dict[int, int] = field(default_factory=dict)  # id -> sent_ns
    reports: dict[int, int] = field(default_factory=dict)  # id -> workers that reported it
    target: int = 0
    completed: int = 0
    stalled: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    _watchdog: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, n_workers: int, size: int, msg_timeout: float, first_id: int) -> Publisher:
        assert picows is not None
        transport, _ = await picows.ws_connect(PublisherListener, url, websocket_handshake_timeout=15)
        pub = cls(transport=transport, n_workers=n_workers, size=size, msg_timeout=msg_timeout, next_id=first_id)
        pub.idle.set()
        pub._watchdog = asyncio.ensure_future(pub._watch())
        return pub

    def _send(self) -> None:
        msg_id = self.next_id
        self.next_id += 1
        now = time.monotonic_ns()
        self.inflight[msg_id] = now
        self.idle.clear()
        self.transport.send(picows.WSMsgType.TEXT, chatmsg.make_envelope(msg_id, now, self.size))

    def _fill(self) -> None:
        while len(self.inflight) < self.target and not self.transport.is_disconnected:
            self._send()
        if not self.inflight:
            self.idle.set()

    def on_done(self, ids: list[int]) -> None:
        """Called for each worker report; a message completes when all workers reported it."""
        reports, inflight = self.reports, self.inflight
        for msg_id in ids:
            if msg_id not in inflight:
                continue
            count = reports.get(msg_id, 0) + 1
            if count >= self.n_workers:
                reports.pop(msg_id, None)
                del inflight[msg_id]
                self.completed += 1
                for older in [m for m in inflight if m < msg_id]:  # ids were inserted in increasing order
                    del inflight[older]
                    reports.pop(older, None)
                    self.stalled += 1
            else:
                reports[msg_id] = count
        self._fill()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            limit = time.monotonic_ns() - int(self.msg_timeout * 1e9)
            for msg_id in [m for m, t in self.inflight.items() if t < limit]:
                del self.inflight[msg_id]
                self.reports.pop(msg_id, None)
                self.stalled += 1
            self._fill()

    def run(self, inflight: int) -> None:
        self.target = inflight
        self._fill()

    async def drain(self, timeout: float) -> bool:
        """Stop sending and wait for outstanding broadcasts; False if some never completed."""
        self.target = 0
        self._fill()
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def last_id(self) -> int:
        return self.next_id - 1

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.transport.is_disconnected:
            self.transport.send_close(picows.WSCloseCode.OK)
            self.transport.disconnect()
            try:
                await asyncio.wait_for(self.transport.wait_disconnected(), 5)
            except TimeoutError:
                self.transport.disconnect(graceful=False)


async def smoke_check(url: str, timeout: float) -> str:
    """Open one connection, send a chat, return the broadcast text received; raise if none comes.

    Why: a server that starts but speaks another dialect would otherwise show
    up as a stalled benchmark instead of a clear message.
    """
    assert picows is not None
    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    text = chatmsg.make_text(0, time.monotonic_ns(), 32)

    class Listener(picows.WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != picows.WSMsgType.TEXT or got.done():
                return
            try:
                envelope = json.loads(frame.get_payload_as_bytes())
            except ValueError:
                got.set_exception(RuntimeError(f"non-JSON frame {frame.get_payload_as_bytes()[:200]!r}"))
                return
            if isinstance(envelope, dict) and envelope.get("type") == "chat":
                got.set_result(str(envelope.get("data")))

        def on_ws_disconnected(self, transport: Any) -> None:
            if not got.done():
                got.set_exception(RuntimeError("connection closed before the broadcast arrived"))

    transport, _ = await asyncio.wait_for(
        picows.ws_connect(Listener, url, websocket_handshake_timeout=timeout), timeout
    )
    try:
        transport.send(picows.WSMsgType.TEXT, json.dumps({"type": "chat", "data": text}).encode())
        data = await asyncio.wait_for(got, timeout)
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()
    if not (data.startswith("Message from ") and data.endswith(" : " + text)):
        raise RuntimeError(f"unexpected chat text {data[:200]!r}")
    return data


@dataclass(frozen=True)
class LevelResult:
    """Raw figures of one measured window at one in-flight level."""

    inflight: int
    window_s: float
    delivered: int
    broadcasts: int
    server_cpu_s: float
    loadgen_cpu_s: float
    machine_busy_s: float
    softirq_s: float
    p50_us: float | None
    p99_us: float | None
    lost: int
    late: int
    dropped: int
    stalled: int
    drained: bool
    # The user/system split of server_cpu_s (None in --json files written before it was recorded).
    server_user_s: float | None = None
    server_system_s: float | None = None

    @property
    def msgs_per_s(self) -> float:
        return self.delivered / self.window_s if self.window_s else 0.0

    @property
    def cpu_us_per_msg(self) -> float | None:
        return self.server_cpu_s / self.delivered * 1e6 if self.delivered else None

    @property
    def user_us_per_msg(self) -> float | None:
        """Server user-mode CPU per delivered message: our Python/C code (issue 17: ≤ 2.5 µs)."""
        if self.server_user_s is None or not self.delivered:
            return None
        return self.server_user_s / self.delivered * 1e6

    @property
    def system_us_per_msg(self) -> float | None:
        """Server kernel-mode CPU per delivered message: mostly send()/epoll syscalls on its sockets."""
        if self.server_system_s is None or not self.delivered:
            return None
        return self.server_system_s / self.delivered * 1e6

    @property
    def server_cpu_pct(self) -> float:
        return 100.0 * self.server_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def loadgen_cpu_pct(self) -> float:
        return 100.0 * self.loadgen_cpu_s / self.window_s if self.window_s else 0.0

    @property
    def other_cpu_pct(self) -> float:
        """Machine CPU not spent by the server, the load generator or softirq: other processes' noise."""
        other = self.machine_busy_s - self.server_cpu_s - self.loadgen_cpu_s - self.softirq_s
        return max(0.0, 100.0 * other / self.window_s) if self.window_s else 0.0


async def measure_level(server_pid: int, pool: FanoutPool, pub: Publisher, inflight: int,
                        warmup: float, measure: float, drain_timeout: float) -> LevelResult:
    """Warm up, measure one window, drain, and collect the figures for one in-flight level.

    Server CPU is read just before the workers are told to start counting and
    again just before they are told to stop, so the (millisecond) delay of the
    control messages shifts the counted window but does not change its length.
    """
    stalled0 = pub.stalled
    pub.run(inflight)
    await asyncio.sleep(warmup)
    own0 = procstat.cpu_times(os.getpid()).total
    machine0 = procstat.machine_times()
    cpu0, gen0, t0, done0 = procstat.cpu_times(server_pid), pool.cpu_seconds(), time.monotonic(), pub.completed
    await pool.window(True)
    await asyncio.sleep(measure)
    cpu1, gen1, t1, done1 = procstat.cpu_times(server_pid), pool.cpu_seconds(), time.monotonic(), pub.completed
    own1 = procstat.cpu_times(os.getpid()).total
    machine1 = procstat.machine_times()
    await pool.window(False)
    drained = await pub.drain(drain_timeout)
    stats = await pool.stats(pub.last_id)
    hist = stats["hist"]
    return LevelResult(
        inflight=inflight,
        window_s=t1 - t0,
        delivered=stats["delivered"],
        broadcasts=done1 - done0,
        server_cpu_s=cpu1.total - cpu0.total,
        loadgen_cpu_s=(gen1 - gen0) + (own1 - own0),
        machine_busy_s=machine1.busy - machine0.busy,
        softirq_s=machine1.softirq - machine0.softirq,
        p50_us=chatmsg.percentile_us(hist, 0.50),
        p99_us=chatmsg.percentile_us(hist, 0.99),
        lost=stats["lost"],
        late=stats["late"],
        dropped=stats["dropped"],
        stalled=pub.stalled - stalled0,
        drained=drained,
        server_user_s=cpu1.user - cpu0.user,
        server_system_s=cpu1.system - cpu0.system,
    )
