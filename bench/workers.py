"""Load-generator processes driven with JSON lines: both ends of that protocol.

Why one module: ``worker.py`` (fan-out) and ``idle_worker.py`` (idle and
deflate phases) hold different connections but speak the same protocol to
their harness (``loadgen.py``, ``idle.py``): one JSON command per stdin line,
exactly one JSON reply per command, in order, carrying ``"re": <command>`` or
``"error"``; ``{"cmd": "exit"}`` or stdin EOF ends the process.  A worker may
also write unprompted events (``{"ev": ...}``) between replies.  Keeping the
harness side (``WorkerProcess``, ``WorkerPool``) and the worker side
(``serve_commands``, ``run_worker_process``) together keeps that contract in
one place.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import resource
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Self

import procstat

Reply = dict[str, Any]


class WorkerError(Exception):
    """A worker died, answered with an error, or missed a deadline."""


# ---------------------------------------------------------------------------
# harness side
# ---------------------------------------------------------------------------
class WorkerProcess:
    """One worker subprocess: commands in, replies out; unprompted events go to ``on_event``."""

    def __init__(self, proc: asyncio.subprocess.Process, on_event: Callable[[Reply], None]) -> None:
        self.proc = proc
        self.on_event = on_event
        self.replies: asyncio.Queue[Reply] = asyncio.Queue()
        self.reader_task = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, script: Path, on_event: Callable[[Reply], None]) -> WorkerProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 26,
            start_new_session=True,  # Ctrl-C reaches the harness only; workers exit on stdin EOF.
        )
        return cls(proc, on_event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                await self.replies.put({"error": f"worker {self.pid} exited"})
                return
            msg = json.loads(line)
            if "ev" in msg:
                self.on_event(msg)
            else:
                await self.replies.put(msg)

    async def call(self, msg: dict[str, Any], timeout: float) -> Reply:
        """Send one command and wait for its reply (commands are answered in order)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        try:
            reply = await asyncio.wait_for(self.replies.get(), timeout)
        except TimeoutError as exc:
            raise WorkerError(f"worker {self.pid}: no reply to {msg['cmd']!r} within {timeout:.0f}s") from exc
        if "error" in reply:
            raise WorkerError(f"worker {self.pid}: {reply['error']}")
        return reply

    async def stop(self, timeout: float) -> None:
        """Ask the worker to exit; kill it by pid if it has not within ``timeout``."""
        try:
            if self.proc.returncode is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"cmd":"exit"}\n')
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            await asyncio.wait_for(self.proc.wait(), timeout)
        except (TimeoutError, ConnectionError, BrokenPipeError):
            pass
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            self.reader_task.cancel()


class WorkerPool:
    """The worker processes of one measurement: start, command all at once, CPU time, stop.

    Subclasses name the script (``SCRIPT``) and add the commands of their
    worker kind; ``on_event`` receives the workers' unprompted events.
    """

    SCRIPT: Path
    STOP_TIMEOUT = 5.0  # seconds a worker gets to exit before it is killed

    def __init__(self) -> None:
        self.workers: list[WorkerProcess] = []

    @classmethod
    async def start(cls, count: int) -> Self:
        pool = cls()
        try:
            for _ in range(count):
                pool.workers.append(await WorkerProcess.start(cls.SCRIPT, pool.on_event))
        except BaseException:
            await pool.stop()
            raise
        return pool

    def on_event(self, event: Reply) -> None:
        """An unprompted event from a worker; ignored unless a subclass handles it."""

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def shares(self, count: int) -> list[int]:
        """``count`` split over the workers as evenly as whole numbers allow (the first ones get the rest)."""
        n = len(self.workers)
        return [count // n + (1 if i < count % n else 0) for i in range(n)]

    async def call_all(self, make_msg: Callable[[int], dict[str, Any]], timeout: float) -> list[Reply]:
        """Send a command to every worker at once (``make_msg(index)``) and gather the replies."""
        return list(await asyncio.gather(*(w.call(make_msg(i), timeout) for i, w in enumerate(self.workers))))

    def cpu_seconds(self) -> float:
        """CPU time the workers have used so far (one that has exited counts nothing)."""
        total = 0.0
        for pid in self.pids:
            try:
                total += procstat.cpu_times(pid).total
            except FileNotFoundError:
                pass
        return total

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop(self.STOP_TIMEOUT) for w in self.workers), return_exceptions=True)


# ---------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------
def emit(obj: dict[str, Any]) -> None:
    """Write one JSON line to the harness (blocking write: the harness always reads)."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve_commands(handlers: dict[str, Callable[[dict[str, Any]], Reply | Awaitable[Reply]]],
                         before_reply: Callable[[], None] | None = None) -> None:
    """Read commands from stdin until 'exit' or EOF; run them one at a time, in order, and answer each.

    ``handlers`` maps a command name to a function of the message that returns
    the reply (or an awaitable of it); an exception becomes an ``error``
    reply.  ``before_reply`` runs just before each reply is written (the
    fan-out worker flushes its pending events there, so they precede it).
    """
    reader = asyncio.StreamReader(limit=1 << 24)
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "exit":
            return
        try:
            handler = handlers.get(cmd)
            if handler is None:
                reply: Reply = {"error": f"unknown command {cmd!r}"}
            else:
                result = handler(msg)
                reply = await result if inspect.isawaitable(result) else result
        except Exception as exc:  # noqa: BLE001 - reported to the harness
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if before_reply is not None:
            before_reply()
        reply["re"] = cmd
        emit(reply)


async def open_all(openers: list[Coroutine[Any, Any, bool]], timeout: float, errors: list[str]) -> int:
    """Run the connection openers (each True once its connection is open) and return how many succeeded.

    Why a deadline for all of them together: ``open`` must answer the harness
    within its own timeout, so the ones still opening then are cancelled and
    counted in ``errors`` instead of holding the reply back.
    """
    tasks = [asyncio.ensure_future(opener) for opener in openers]
    done, not_done = await asyncio.wait(tasks, timeout=timeout)
    for task in not_done:
        task.cancel()
    if not_done:
        errors.append(f"{len(not_done)} connections still opening at the deadline")
        await asyncio.gather(*not_done, return_exceptions=True)
    return sum(1 for t in done if not t.cancelled() and t.exception() is None and t.result())


def lift_nofile_limit() -> int:
    """Lift the soft descriptor limit to the hard one and return it; child processes inherit it.

    Why: every connection is a descriptor, and thousands of them per process
    exceed the usual soft limit of 1024 long before the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def run_worker_process(serve: Callable[[], Awaitable[None]]) -> None:
    """A worker process's entry point: lift the descriptor limit, then run ``serve()`` on uvloop if installed.

    ``serve`` is called inside the running loop, so what it constructs may
    look the loop up.  Why uvloop: the load generator, not the server, is
    the limit in most cells; uvloop makes each client connection cheaper.
    """
    lift_nofile_limit()

    async def main() -> None:
        await serve()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
