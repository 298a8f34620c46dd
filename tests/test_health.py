"""
Liveness and readiness (appserver.health) on a real server: ready while
serving, unavailable with reasons when a site stops listening, during
shutdown, or when a registered check fails.
"""

from __future__ import annotations

import pytest_twisted
import treq
from twisted.internet import task
from twisted.logger import capturedLogs
from twisted.web.client import HTTPConnectionPool


async def get_json(url, pool=None):
    response = await treq.get(url, pool=pool, persistent=pool is not None)
    return response.code, await response.json()


@pytest_twisted.ensureDeferred
async def test_liveness_answers_ok(server_factory):
    server = await server_factory()
    assert await get_json(server.ajax_url + "/healthz") == (200, {"status": "ok"})


@pytest_twisted.ensureDeferred
async def test_liveness_answers_head_without_a_body(server_factory):
    server = await server_factory()
    response = await treq.head(server.ajax_url + "/healthz", persistent=False)
    assert response.code == 200
    assert await response.content() == b""


@pytest_twisted.ensureDeferred
async def test_ready_when_every_site_listens(server_factory):
    server = await server_factory()
    assert await get_json(server.ajax_url + "/readyz") == (200, {"status": "ready"})


@pytest_twisted.ensureDeferred
async def test_health_endpoints_live_under_ajax_in_single_port_mode(server_factory):
    server = await server_factory(listen="tcp:0:interface=127.0.0.1")
    assert await get_json(server.ajax_url + "/healthz") == (200, {"status": "ok"})
    assert await get_json(server.ajax_url + "/readyz") == (200, {"status": "ready"})


@pytest_twisted.ensureDeferred
async def test_not_ready_when_a_site_stopped_listening(server_factory):
    server = await server_factory()
    await server.service.getServiceNamed("ws").stopService()
    code, body = await get_json(server.ajax_url + "/readyz")
    assert code == 503
    assert body["status"] == "unavailable"
    assert body["reasons"] == [f"the ws site is not listening on {server.service.settings.ws}"]


@pytest_twisted.ensureDeferred
async def test_not_ready_during_shutdown_while_liveness_stays_ok(server_factory, reactor):
    from twisted.internet import defer
    from twisted.internet.error import ConnectError
    from appserver import App

    app = App()
    held: defer.Deferred[dict] = defer.Deferred()
    app.route("/hold")(lambda request: held)
    server = await server_factory(app=app, shutdown_timeout=5.0)
    pool = HTTPConnectionPool(reactor, persistent=True)
    try:
        # A kept-alive connection outlives the listening port, as a
        # load balancer's would: it sees the server refuse new work while
        # the shutdown drains a request still being processed.
        assert (await get_json(server.ajax_url + "/readyz", pool))[0] == 200
        holding = treq.get(server.ajax_url + "/hold", persistent=False)
        await task.deferLater(reactor, 0.1, lambda: None)
        stopping = server.stop()
        code, body = await get_json(server.ajax_url + "/readyz", pool)
        assert code == 503
        assert "shutting down: not accepting new clients" in body["reasons"]
        assert await get_json(server.ajax_url + "/healthz", pool) == (200, {"status": "ok"})
        held.callback({"ok": True})
        assert (await (await holding).json()) == {"ok": True}
        await stopping
        # Drained: the idle connection was closed, and nothing listens.
        try:
            await get_json(server.ajax_url + "/readyz", pool)
        except ConnectError:
            pass
        else:
            raise AssertionError("the kept-alive connection outlived the shutdown")
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_a_failing_check_makes_the_server_unavailable(server_factory):
    server = await server_factory()
    server.runtime.readiness_checks.append(lambda: ["backplane unreachable"])
    assert await get_json(server.ajax_url + "/readyz") == (
        503, {"status": "unavailable", "reasons": ["backplane unreachable"]})


@pytest_twisted.ensureDeferred
async def test_an_asynchronous_check_is_awaited(server_factory, reactor):
    server = await server_factory()

    async def slow_but_fine():
        await task.deferLater(reactor, 0.05, lambda: None)
        return []

    def slow_and_failing():
        return task.deferLater(reactor, 0.05, lambda: "backplane: no answer to PING")

    server.runtime.readiness_checks.append(slow_but_fine)
    assert await get_json(server.ajax_url + "/readyz") == (200, {"status": "ready"})
    server.runtime.readiness_checks.append(slow_and_failing)
    assert await get_json(server.ajax_url + "/readyz") == (
        503, {"status": "unavailable", "reasons": ["backplane: no answer to PING"]})


@pytest_twisted.ensureDeferred
async def test_a_check_that_raises_is_a_reason_not_an_error(server_factory):
    server = await server_factory()

    def broken():
        raise RuntimeError("cannot tell")

    server.runtime.readiness_checks.append(broken)
    with capturedLogs() as events:
        code, body = await get_json(server.ajax_url + "/readyz")
    assert code == 503
    assert body["reasons"] == ["readiness check test_a_check_that_raises_is_a_reason_not_an_error.<locals>.broken "
                               "failed: cannot tell"]
    assert any(event.get("log_failure") is not None and event["log_failure"].check(RuntimeError)
               for event in events)
