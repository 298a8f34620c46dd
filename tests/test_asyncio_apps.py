"""
Application code awaiting asyncio libraries, in a real server on Twisted's
asyncio reactor: the C{appserver} command (its default reactor) and
C{twistd --reactor=asyncio appserver}. Handlers, routes, periodic tasks and
hooks may await asyncio futures and Deferreds in one body; a client's
running handlers are cancelled when it goes; tasks are cancelled and
awaited at shutdown. Every process is stopped by its pid.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq

from support.servers import LOOPBACK, ServerProcess, wait_for_log
from twisted.logger import capturedLogs

from appserver import App
from support.wsclient import next_message, open_client, send, wait_closed

TESTS = Path(__file__).resolve().parent
APP = ["--app", "support.asyncio_app:app"]


class CommandProcess(ServerProcess):
    """
    The C{appserver} command (C{python -m appserver}) in a subprocess, on
    its default reactor.
    """

    def command(self) -> list[str]:
        return [sys.executable, "-m", "appserver", "--static", LOOPBACK, "--ajax", LOOPBACK,
                "--ws", LOOPBACK, *self.args]


class AsyncioTwistd(ServerProcess):
    """
    C{twistd -n --reactor=asyncio appserver}, as the docs tell.
    """

    def command(self) -> list[str]:
        command = super().command()
        return command[:3] + ["--reactor=asyncio"] + command[3:]


@pytest.fixture
def start_server(tmp_path):
    started: list[ServerProcess] = []

    def start(kind: type[ServerProcess] = CommandProcess, *args: str) -> ServerProcess:
        env = {"PYTHONPATH": f"{TESTS}:{__import__('os').environ.get('PYTHONPATH', '')}"}
        process = kind([*APP, "--shutdown-timeout", "3", *args], cwd=tmp_path, env=env)
        started.append(process)
        process.start()
        return process
    yield start
    for process in started:
        process.stop()


async def logged(process: ServerProcess, text: str, reactor, timeout: float = 10.0) -> str:
    """
    L{wait_for_log} for tests on the reactor, which keeps running meanwhile.
    """
    from twisted.internet.task import deferLater
    for _ in range(int(timeout / 0.05)):
        log = process.log()
        if text in log:
            return log
        await deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{text!r} not in the log within {timeout}s:\n{process.log()}")


async def ask(client, reactor, message_type, data=None, request_id=1):
    send(client, message_type, data, request_id)
    return await next_message(client, reactor, "reply" if message_type != "fail" else "error", timeout=10)


@pytest.fixture(params=[CommandProcess, AsyncioTwistd], ids=["appserver-command", "twistd-asyncio"])
def server_kind(request):
    return request.param


@pytest_twisted.ensureDeferred
async def test_handler_awaits_an_asyncio_queue_a_task_and_run_in_executor(start_server, server_kind, reactor):
    server = start_server(server_kind)
    client = await open_client(server.url("ws"), reactor)
    reply = await ask(client, reactor, "queued")
    assert reply["data"] == {"received": [0, 1, 2], "threaded": 30}
    client.sendClose()


@pytest_twisted.ensureDeferred
async def test_handler_awaits_an_asyncio_future_and_a_deferred_in_one_body(start_server, reactor):
    server = start_server()
    client = await open_client(server.url("ws"), reactor)
    reply = await ask(client, reactor, "both")
    assert reply["data"] == ["asyncio", "twisted"]
    client.sendClose()


@pytest_twisted.ensureDeferred
async def test_route_awaits_asyncio_sleep(start_server, reactor):
    server = start_server()
    response = await treq.get(server.url("ajax") + "/slow", persistent=False)
    assert response.code == 200
    assert await response.json() == {"slept": True}


@pytest_twisted.ensureDeferred
async def test_failing_asyncio_handler_answers_handler_failed_and_logs_one_traceback(start_server, reactor):
    server = start_server()
    client = await open_client(server.url("ws"), reactor)
    error = await ask(client, reactor, "fail")
    assert error["data"]["code"] == "handler_failed"
    assert "Traceback" not in str(error)
    log = await logged(server, "asyncio handler failed on purpose", reactor)
    assert log.count("ValueError: asyncio handler failed on purpose") == 1
    client.sendClose()


@pytest_twisted.ensureDeferred
async def test_disconnecting_cancels_the_clients_running_handlers(start_server, reactor):
    server = start_server()
    client = await open_client(server.url("ws"), reactor)
    send(client, "hang", "a", 1)
    send(client, "hang_deferred", "b", 2)
    await logged(server, "hang_deferred b started", reactor)
    client.sendClose()
    await wait_closed(client, reactor)
    await logged(server, "hang a cancelled", reactor)
    log = await logged(server, "hang_deferred b cancelled", reactor)
    assert "Traceback" not in log


def test_shutdown_cancels_and_awaits_periodic_and_startup_spawned_tasks(start_server):
    server = start_server()
    wait_for_log(server, "consumer started")
    time.sleep(0.2)  # a periodic run is under way
    started = time.monotonic()
    assert server.terminate(timeout=15) == 0
    assert time.monotonic() - started < 3.0
    log = server.log()
    assert "periodic task cancelled" in log
    assert "consumer cancelled" in log
    assert "shutdown hook done" in log
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_on_another_reactor_asyncio_code_fails_with_the_fix_named_once(server_factory, reactor):
    """
    The in-process server runs on the test's own (non-asyncio) reactor:
    Deferreds work there, asyncio code gets an error naming the fix.
    """
    import asyncio

    from twisted.internet.task import deferLater

    app = App()

    @app.handler("twisted_only")
    async def twisted_only(ctx, data):
        return await deferLater(ctx.reactor, 0.01, lambda: "fine")

    @app.handler("needs_asyncio")
    async def needs_asyncio(ctx, data):
        await asyncio.sleep(0.01)

    server = await server_factory(app=app)
    client = await open_client(server.ws_url, reactor)
    send(client, "twisted_only", None, 1)
    assert (await next_message(client, reactor, "reply"))["data"] == "fine"
    with capturedLogs() as events:
        send(client, "needs_asyncio", None, 2)
        error = await next_message(client, reactor, "error")
    assert error["data"]["code"] == "handler_failed"
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1
    assert "twistd --reactor=asyncio appserver" in str(failures[0]["log_failure"].value)
    client.sendClose()
