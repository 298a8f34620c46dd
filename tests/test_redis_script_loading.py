"""
A script Redis refuses to load is never silent
(L{appserver._redis.connection.RedisConnections}): without its scripts a
node is off the backplane, so the refusal is logged once as an error
naming the script and Redis's message, readiness says so, and the load is
tried again on the same connection (a Redis still loading its data set
answers C{LOADING} for a while). Once with a fake connection and a clock,
once with a real redis-server and a deliberately broken script.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import txredisapi
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from appserver._redis import scripts
from appserver._redis.backplane import RedisBackplane
from appserver._redis.connection import SCRIPT_RETRY, ConnectionCallbacks, RedisConnections
from appserver._redis.location import parse_redis_url
from support.redis import RedisServer, redis_server_path
from test_redis_cluster import eventually

COMPILE_ERROR = "Error compiling script (new function): user_script:3: unexpected symbol near ')'"


class _Transport:
    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 6379)


class FakeCommandConnection:
    """
    A command connection whose Redis refuses one script's C{SCRIPT LOAD}
    with C{refusal} (or nothing once C{refusal} is C{None}).
    """

    def __init__(self, refused: scripts.Script, refusal: str | None) -> None:
        self.refused = refused
        self.refusal = refusal
        self.connected = 1
        self.transport = _Transport()
        self.loads = 0

    def execute_command(self, *command: Any) -> "defer.Deferred[Any]":
        if command[:2] == ("SCRIPT", "LOAD"):
            self.loads += 1
            if command[2] == self.refused.source and self.refusal is not None:
                return defer.fail(txredisapi.ResponseError(self.refusal))
            return defer.succeed(b"sha")
        return defer.succeed(None)


def connections(reactor: Any, ready: list[bool]) -> RedisConnections:
    callbacks = ConnectionCallbacks(ready=lambda: ready.append(True), lost=lambda: None,
                                    bus_connected=lambda: None, bus_message=lambda channel, message: None,
                                    error=lambda what: None)
    return RedisConnections(parse_redis_url("redis://127.0.0.1:6379/0"), [b"bus"], callbacks, reactor)


def errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event.get("log_level") == LogLevel.error]


def test_a_refused_script_is_logged_once_as_an_error_naming_it_and_redis_message() -> None:
    clock = Clock()
    ready: list[bool] = []
    redis = connections(clock, ready)
    redis.subscribed = True
    conn = FakeCommandConnection(scripts.PUBLISH, COMPILE_ERROR)
    with capturedLogs() as events:
        redis._commands_up(conn)
        clock.advance(SCRIPT_RETRY)             # tried again: the same refusal says nothing more
        clock.advance(SCRIPT_RETRY)
    assert conn.loads == 3 * len(scripts.ALL)
    [error] = errors(events)
    assert error["what"] == "the backplane's script 'publish'" and error["error"] == COMPILE_ERROR
    assert redis.refusals == {"the backplane's script 'publish'": COMPILE_ERROR}
    assert redis.commands is None and not ready


def test_the_node_joins_once_redis_accepts_the_scripts_on_a_later_attempt() -> None:
    clock = Clock()
    ready: list[bool] = []
    redis = connections(clock, ready)
    redis.subscribed = True
    conn = FakeCommandConnection(scripts.INIT, "LOADING Redis is loading the dataset in memory")
    with capturedLogs() as events:
        redis._commands_up(conn)
        assert redis.commands is None
        conn.refusal = None                     # Redis finished loading its data set
        clock.advance(SCRIPT_RETRY)
    assert redis.commands is conn and ready == [True]
    assert redis.refusals == {}
    assert len(errors(events)) == 1
    assert any("accepted the backplane's scripts" in str(event.get("log_format")) for event in events)


def test_a_lost_connection_stops_the_retries() -> None:
    clock = Clock()
    redis = connections(clock, [])
    conn = FakeCommandConnection(scripts.REPLAY, COMPILE_ERROR)
    with capturedLogs():
        redis._commands_up(conn)
        redis._commands_down(conn)
        loads = conn.loads
        clock.advance(SCRIPT_RETRY * 3)
    assert conn.loads == loads
    assert redis.refusals == {} and not clock.getDelayedCalls()


def test_readiness_names_the_refused_script_instead_of_a_missing_connection() -> None:
    clock = Clock()
    backplane = RedisBackplane(parse_redis_url("redis://127.0.0.1:6379/0"), "a", clock)
    with capturedLogs():
        backplane.connections._commands_up(FakeCommandConnection(scripts.GAP, COMPILE_ERROR))
    reasons = backplane.not_ready()
    assert (f"Redis at redis://127.0.0.1:6379/0 refused the backplane's script 'gap': {COMPILE_ERROR}"
            in reasons)
    assert not [reason for reason in reasons if reason.startswith("not connected")]


@pytest.mark.redis
@pytest.mark.skipif(redis_server_path() is None,
                    reason="redis-server is not installed (apt-get install redis-server; .ci/run does)")
@pytest_twisted.ensureDeferred
async def test_a_real_redis_refusing_a_broken_script_is_reported(tmp_path, monkeypatch, reactor) -> None:
    server = RedisServer(tmp_path).start()
    broken = scripts.Script("broken", "local x = (\nreturn x")
    monkeypatch.setattr(scripts, "ALL", (*scripts.ALL, broken))
    ready: list[bool] = []
    redis = connections(reactor, ready)
    redis.location = parse_redis_url(server.url)
    try:
        with capturedLogs() as events:
            redis.start()
            await eventually(reactor, lambda: redis.refusals and redis.subscribed, timeout=10)
        [(what, message)] = redis.refusals.items()
        assert what == "the backplane's script 'broken'"
        assert message.startswith("Error compiling script") and "user_script:2" in message
        [error] = errors(events)
        assert error["what"] == what and error["error"] == message
        assert redis.commands is None and not ready
    finally:
        await redis.disconnect(5)
        server.stop()
