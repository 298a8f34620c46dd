"""
An application whose handlers, route, task and hooks await asyncio code and
Deferreds, for tests/test_asyncio_apps.py (run in a real server on the
asyncio reactor). What the tests cannot see on the wire (a cancellation) it
writes to the server's log.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from appserver import App, RouteRequest
from appserver.apps.chat import app as chat

app = App("asyncio-test").include(chat)
log = Logger(namespace="asyncio_app")


@app.handler("queued")
async def queued(ctx: Any, data: Any) -> Any:
    """An asyncio queue filled by an asyncio task, and a thread's answer."""
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def producer() -> None:
        for number in range(3):
            await asyncio.sleep(0.01)
            await queue.put(number)
    asyncio.get_running_loop().create_task(producer())
    received = [await queue.get() for _ in range(3)]
    threaded = await asyncio.get_running_loop().run_in_executor(None, lambda: sum(received) * 10)
    return {"received": received, "threaded": threaded}


@app.handler("both")
async def both(ctx: Any, data: Any) -> Any:
    """An asyncio future and a Deferred in one body."""
    future = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, future.set_result, "asyncio")
    first = await future
    second = await deferLater(ctx.reactor, 0.01, lambda: "twisted")
    async with asyncio.timeout(1):
        await asyncio.sleep(0.01)
    return [first, second]


@app.handler("hang")
async def hang(ctx: Any, data: Any) -> Any:
    """Never ends by itself: cancelled when its client goes."""
    log.info("hang {tag} started", tag=data)
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        log.info("hang {tag} cancelled", tag=data)
        raise
    return None


@app.handler("hang_deferred")
async def hang_deferred(ctx: Any, data: Any) -> Any:
    """Waits on a Deferred: cancelled when its client goes too."""
    log.info("hang_deferred {tag} started", tag=data)
    try:
        await deferLater(ctx.reactor, 60, lambda: None)
    except asyncio.CancelledError:
        log.info("hang_deferred {tag} cancelled", tag=data)
        raise
    return None


@app.handler("fail")
async def fail(ctx: Any, data: Any) -> Any:
    await asyncio.sleep(0.01)
    raise ValueError("asyncio handler failed on purpose")


@app.handler("blocking_done")
def blocking_done(ctx: Any, data: Any) -> Any:
    return time.monotonic() > 0


@app.route("/slow")
async def slow(request: RouteRequest) -> Any:
    started = asyncio.get_running_loop().time()
    await asyncio.sleep(0.05)
    return {"slept": asyncio.get_running_loop().time() - started >= 0.04}


@app.every(0.05)
async def ticking(server: Any) -> None:
    """A periodic run that outlives the shutdown's start."""
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        log.info("periodic task cancelled")
        raise


@app.on_startup
async def start_consumer(server: Any, reactor: Any) -> None:
    """A start-up hook that spawns an asyncio task living until shutdown."""
    await asyncio.sleep(0)

    async def consumer() -> None:
        log.info("consumer started")
        try:
            while True:
                await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            log.info("consumer cancelled")
            raise
    asyncio.get_running_loop().create_task(consumer())


@app.on_shutdown
async def closing(server: Any, reactor: Any) -> None:
    await asyncio.sleep(0.01)
    await deferLater(reactor, 0.01, lambda: None)
    log.info("shutdown hook done")
