"""
Every limit and origin rule exceeded on purpose, against a real server over
real sockets: message size (1009), rate (C{rate_limited}, then 4001),
connections in total and per address (503 at the handshake and at
C{/connect}), handshake timeouts (a silent or half-sent request is dropped),
origins (own pages by default, anchored patterns when configured, refusals
logged with the exact value to allow), and the application's authentication
hook (403, or attributes on the client).
"""

from __future__ import annotations

import base64
import json
import os
import socket
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import pytest_twisted
import treq
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs, formatEvent

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._server.dispatch import RATE_LIMIT_CLOSE_AFTER, RATE_LIMIT_CLOSE_CODE
from support.wsclient import next_message, open_client, sleep, wait_closed, wait_until


class HandshakePeer(Protocol):
    """
    Sends bytes as given and keeps what comes back.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)

    @property
    def status(self) -> int | None:
        if b"\r\n" not in self.received:
            return None
        return int(self.received.split(b" ", 2)[1])


def upgrade(port: int, path: str = "/", origin: str | None = None, cookie: str | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if cookie is not None:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def handshake(reactor, port: int, request: bytes, source: str = "127.0.0.1") -> HandshakePeer:
    """
    Send one upgrade request; wait for the status line and headers.
    """
    peer = HandshakePeer(request)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0))
    await connectProtocol(endpoint, peer)
    await wait_until(lambda: b"\r\n\r\n" in peer.received or peer.lost.called, reactor)
    return peer


async def handshake_status(reactor, port: int, **kwargs) -> int | None:
    peer = await handshake(reactor, port, upgrade(port, **kwargs))
    peer.transport.abortConnection()
    return peer.status


SESSION_HEADER = "X-AppServer-Session"


def session_in_header(url: str, headers: dict | None) -> tuple[str, dict | None]:
    """
    A JSON request (no C{callback=}) carries the session secret in the
    X-AppServer-Session header, not in the query: move it there.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {name for name, _ in query}
    if "session" not in names or "callback" in names:
        return url, headers
    headers = dict(headers or {})
    headers[SESSION_HEADER] = [value for name, value in query if name == "session"][0]
    rest = urlencode([(name, value) for name, value in query if name != "session"])
    return urlunsplit(parts._replace(query=rest)), headers


async def ajax(method: str, url: str, **kwargs):
    url, headers = session_in_header(url, kwargs.pop("headers", None))
    if headers is not None:
        kwargs["headers"] = headers
    response = await treq.request(method, url, persistent=False, **kwargs)
    body = await response.content()
    return response, (json.loads(body) if body else None)


# Message size ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_websocket_message_over_the_size_limit_is_closed_with_1009(server_factory, reactor):
    server = await server_factory(max_message_size=1000)
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor, "welcome")
    client.sendMessage(json.dumps({"type": "chat", "data": "x" * 2000}).encode())
    code, _ = await wait_closed(client, reactor)
    assert code == 1009
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_an_ajax_send_over_the_size_limit_is_413(server_factory):
    server = await server_factory(max_message_size=1000)
    _, connected = await ajax("POST", server.ajax_url + "/connect")
    response, body = await ajax("POST", server.ajax_url + f"/send?session={connected['session']}",
                                data=json.dumps({"type": "chat", "data": "x" * 2000}).encode())
    assert response.code == 413 and body["error"]["code"] == "too_large"


# Rate limit -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_client_over_the_rate_limit_gets_rate_limited_then_4001(server_factory, reactor):
    server = await server_factory(rate_limit=5)     # a burst of 10, then 5 per second
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor, "welcome")
    for n in range(RATE_LIMIT_CLOSE_AFTER + 20):
        client.sendMessage(json.dumps({"type": "ping", "data": n}).encode())
    code, reason = await wait_closed(client, reactor)

    pongs = client.of_type("pong")
    errors = [m["data"]["code"] for m in client.of_type("error")]
    assert 10 <= len(pongs) <= 12
    assert errors and set(errors) == {"rate_limited"}
    assert len(errors) == RATE_LIMIT_CLOSE_AFTER - 1
    assert code == RATE_LIMIT_CLOSE_CODE and "rate limit" in reason
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_an_ajax_session_over_the_rate_limit_gets_rate_limited_errors(server_factory, reactor):
    server = await server_factory(rate_limit=2)     # a burst of 4
    _, connected = await ajax("POST", server.ajax_url + "/connect")
    session = connected["session"]
    for n in range(8):
        await ajax("POST", server.ajax_url + f"/send?session={session}",
                   data=json.dumps({"type": "ping", "data": n}).encode())
    _, answer = await ajax("GET", server.ajax_url + f"/poll?session={session}&since=0")
    kinds = [m["type"] for m in answer["messages"]]
    assert kinds.count("pong") in (4, 5)
    assert kinds.count("error") >= 3
    assert {m["data"]["code"] for m in answer["messages"] if m["type"] == "error"} == {"rate_limited"}


# Connection limits ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_past_the_total_connection_limit_websockets_and_sessions_get_503(server_factory, reactor):
    server = await server_factory(max_connections=2)
    first = await open_client(server.ws_url, reactor)
    response, connected = await ajax("POST", server.ajax_url + "/connect")
    assert response.code == 200 and server.tracker.client_count == 2

    assert await handshake_status(reactor, server.port("ws")) == 503
    response, body = await ajax("POST", server.ajax_url + "/connect")
    assert response.code == 503 and "--max-connections" in body["error"]["message"]
    assert server.tracker.client_count == 2

    first.sendClose()
    await wait_until(lambda: server.tracker.client_count == 1, reactor)
    second = await open_client(server.ws_url, reactor)
    assert server.tracker.client_count == 2
    second.sendClose()
    await ajax("POST", server.ajax_url + f"/disconnect?session={connected['session']}")
    await wait_until(lambda: server.runtime.limiter.total == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_past_the_per_address_limit_only_that_address_is_refused(server_factory, reactor):
    server = await server_factory(max_connections_per_ip=2)
    port = server.port("ws")
    held = [await handshake(reactor, port, upgrade(port)) for _ in range(2)]
    assert [peer.status for peer in held] == [101, 101]

    refused = await handshake(reactor, port, upgrade(port))
    response, body = await ajax("POST", server.ajax_url + "/connect")
    other = await handshake(reactor, port, upgrade(port), source="127.0.0.2")

    assert refused.status == 503
    assert response.code == 503 and "--max-connections-per-ip" in body["error"]["message"]
    assert other.status == 101
    assert server.tracker.client_count == 3
    for peer in held + [refused, other]:
        peer.transport.abortConnection()
    await wait_until(lambda: server.runtime.limiter.total == 0 and server.tracker.client_count == 0, reactor)


# Handshake timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("request_bytes", [
    b"",
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
], ids=["nothing", "half a request"])
@pytest_twisted.ensureDeferred
async def test_a_connection_that_does_not_complete_its_handshake_is_dropped(server_factory, reactor, request_bytes):
    timeout = 0.5
    server = await server_factory(handshake_timeout=timeout)
    peer = HandshakePeer(request_bytes)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port("ws"))
    await connectProtocol(endpoint, peer)
    opened = reactor.seconds()
    await peer.lost.addTimeout(timeout + 2.0, reactor)
    assert reactor.seconds() - opened <= timeout + 1.0
    assert peer.status is None or peer.status >= 400
    assert server.tracker.client_count == 0 and server.runtime.limiter.total == 0


@pytest_twisted.ensureDeferred
async def test_a_slow_but_complete_handshake_within_the_timeout_is_accepted(server_factory, reactor):
    server = await server_factory(handshake_timeout=1.0)
    port = server.port("ws")
    request = upgrade(port)
    peer = HandshakePeer(request[:20])
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
    await sleep(reactor, 0.3)
    peer.transport.write(request[20:])
    await wait_until(lambda: peer.status is not None, reactor)
    assert peer.status == 101
    peer.transport.abortConnection()


# Origins ----------------------------------------------------------------------------------------


def own_origin(server) -> str:
    return f"http://127.0.0.1:{server.port('static')}"


@pytest_twisted.ensureDeferred
async def test_by_default_the_servers_own_pages_may_connect(server_factory, reactor):
    server = await server_factory()
    for site in ("static", "ajax", "ws"):
        origin = f"http://127.0.0.1:{server.port(site)}"
        assert await handshake_status(reactor, server.port("ws"), origin=origin) == 101
        response, _ = await ajax("POST", server.ajax_url + "/connect", headers={"Origin": origin})
        assert response.code == 200


@pytest.mark.parametrize("origin", [
    "http://evil.example:1234",
    "http://127.0.0.1:1",                 # own host, another port
    "null",
])
@pytest_twisted.ensureDeferred
async def test_by_default_other_origins_are_refused_and_logged_with_the_advice(server_factory, reactor, origin):
    server = await server_factory()
    with capturedLogs() as events:
        status = await handshake_status(reactor, server.port("ws"), origin=origin)
        response, body = await ajax("POST", server.ajax_url + "/connect", headers={"Origin": origin})
    assert status == 403
    assert response.code == 403 and body["error"]["code"] == "origin_refused"
    lines = [formatEvent(event) for event in events]
    advice = f"--allowed-origin {origin}"
    websocket_lines = [line for line in lines if "WebSocket" in line and advice in line]
    ajax_lines = [line for line in lines if "/connect" in line and advice in line]
    assert websocket_lines and repr(origin) in websocket_lines[0]
    assert ajax_lines and repr(origin) in ajax_lines[0]
    assert server.tracker.client_count == 0


@pytest.mark.parametrize("origin, allowed", [
    ("https://a.example.com", True),
    ("https://a.b.example.com", True),
    ("https://example.com.evil.net", False),
    ("http://a.example.com", False),
    ("https://a.example.com.evil.net", False),
    ("https://evilexample.com", False),
])
@pytest_twisted.ensureDeferred
async def test_a_wildcard_origin_is_anchored_on_every_transport(server_factory, reactor, origin, allowed):
    server = await server_factory(allowed_origin=["https://*.example.com"])
    status = await handshake_status(reactor, server.port("ws"), origin=origin)
    connect, _ = await ajax("POST", server.ajax_url + "/connect", headers={"Origin": origin})
    cors, _ = await ajax("GET", server.ajax_url + "/get_client_count", headers={"Origin": origin})
    preflight, _ = await ajax("OPTIONS", server.ajax_url + "/send", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST"})

    assert status == (101 if allowed else 403)
    assert connect.code == (200 if allowed else 403)
    expected = [origin.encode()] if allowed else None
    assert cors.headers.getRawHeaders(b"access-control-allow-origin") == expected
    assert preflight.code == (204 if allowed else 403)


@pytest_twisted.ensureDeferred
async def test_configured_origins_keep_the_servers_own_pages(server_factory, reactor):
    server = await server_factory(allowed_origin=["https://*.example.com"])
    assert await handshake_status(reactor, server.port("ws"), origin=own_origin(server)) == 101


# Authentication hook ---------------------------------------------------------------------------


def authenticating_app() -> App:
    app = App("auth").include(chat_app)

    @app.authenticate
    def check(info):
        token = (info["query"].get("token") or [None])[0] or info["cookies"].get("token")
        if token == "s3cret":
            return {"user": "ann", "via": info["path"]}
        return False

    return app


@pytest.mark.parametrize("credentials", [{}, {"path": "/?token=wrong"}, {"cookie": "token=wrong"}],
                         ids=["none", "bad token", "bad cookie"])
@pytest_twisted.ensureDeferred
async def test_a_refusing_authentication_hook_is_403_on_both_transports(server_factory, reactor, credentials):
    server = await server_factory(app=authenticating_app())
    status = await handshake_status(reactor, server.port("ws"), **credentials)
    query = credentials.get("path", "/")[1:]
    headers = {"Cookie": credentials["cookie"]} if "cookie" in credentials else {}
    response, body = await ajax("POST", server.ajax_url + "/connect" + query, headers=headers)
    assert status == 403
    assert response.code == 403 and body["error"]["code"] == "authentication_refused"
    assert server.tracker.client_count == 0 and server.runtime.limiter.total == 0


@pytest.mark.parametrize("credentials", [{"path": "/?token=s3cret"}, {"cookie": "token=s3cret"}],
                         ids=["token", "cookie"])
@pytest_twisted.ensureDeferred
async def test_an_accepting_authentication_hook_stores_its_attributes_on_the_client(
        server_factory, reactor, credentials):
    server = await server_factory(app=authenticating_app())
    tracker = server.tracker
    peer = await handshake(reactor, server.port("ws"), upgrade(server.port("ws"), **credentials))
    assert peer.status == 101
    await wait_until(lambda: tracker.client_count == 1, reactor)
    (websocket,) = tracker.clients.values()
    assert websocket.attributes == {"user": "ann", "via": "/"}

    query = credentials.get("path", "/")[1:]
    headers = {"Cookie": credentials["cookie"]} if "cookie" in credentials else {}
    response, body = await ajax("POST", server.ajax_url + "/connect" + query, headers=headers)
    assert response.code == 200
    assert tracker.get(body["client_id"]).attributes == {"user": "ann", "via": "/connect"}
    peer.transport.abortConnection()
    await ajax("POST", server.ajax_url + f"/disconnect?session={body['session']}")
    await wait_until(lambda: tracker.client_count == 0, reactor)


def test_source_address_127_0_0_2_is_usable():
    """
    The per-address test connects from 127.0.0.2; Linux routes all of
    127/8 to loopback.
    """
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.2", 0))
    finally:
        probe.close()
