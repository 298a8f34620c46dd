"""
Hostile input checked at the edge (issue 13, items 1, 2, 3 and 5; issue 12's
duplicate username), each tried as an attacker would against a real server
over real sockets: the attack, the documented answer, and exact counts
afterwards.

  1. a request that went through a proxy never publishes without a token,
     and a --trusted-proxy's X-Forwarded-For names the client for the
     per-IP limit;
  2. JSON nested deeper than MAX_JSON_DEPTH is answered C{bad_json} on every
     transport, with nothing logged as an error;
  3. DNS rebinding: a name the server does not know is not an own page,
     whatever the Host header says, until --server-name names it;
  5. --max-rooms-per-client, answered C{limit};
  and a room refuses a username already present (C{bad_data}).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_twisted
import treq
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, capturedLogs, formatEvent

from appserver import App
from appserver._core.envelope import MAX_JSON_DEPTH
from support.deferreds import fired
from support.wsclient import next_message, open_welcomed, send, sleep, wait_until


# Helpers ---------------------------------------------------------------------


async def expect(client, reactor, message_type, request_id=None):
    message = await next_message(client, reactor)
    assert message.get("type") == message_type, message
    if request_id is not None:
        assert message.get("id") == request_id, message
    return message


async def answer(client, reactor, request_id):
    """
    The answer to the request C{request_id}, which must not be an error.
    """
    message = await next_message(client, reactor)
    assert message.get("id") == request_id and message.get("type") != "error", message
    return message


async def nothing_more(client, reactor, wait=0.15):
    """
    Nothing else arrives (after a marker round trip that proves earlier
    traffic was processed).
    """
    send(client, "ping", "marker")
    assert (await next_message(client, reactor)) == {"type": "pong", "id": None, "data": "marker"}
    await sleep(reactor, wait)
    assert client.messages == []


async def http(method: str, url: str, body: Any = None, raw: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """
    One request; returns the status, the decoded JSON body (or the text)
    and the response headers.
    """
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    response = await treq.request(method, url, data=data, persistent=False,
                                  headers={name: [value] for name, value in (headers or {}).items()})
    content = await response.content()
    try:
        decoded = json.loads(content) if content else None
    except ValueError:
        decoded = content.decode()
    return response.code, decoded, response.headers


def errors_logged(events) -> list[str]:
    return [formatEvent(event) for event in events
            if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("log_failure")]


class RawPeer(Protocol):
    """
    Sends one request as given, keeps what comes back.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data


async def upgrade_status(reactor, port: int, host: str, origin: str | None, headers: dict[str, str] | None = None
                         ) -> int:
    """
    The status of a WebSocket upgrade sent with exactly these Host and
    Origin headers (and C{headers}); the connection is then dropped.
    """
    lines = ["GET / HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}", "Sec-WebSocket-Version: 13"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    peer = RawPeer(("\r\n".join(lines) + "\r\n\r\n").encode())
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
    await wait_until(lambda: b"\r\n" in peer.received, reactor)
    peer.transport.abortConnection()
    return int(peer.received.split(b" ", 2)[1])


def nested(depth: int) -> Any:
    """
    A JSON value C{depth} arrays deep.
    """
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# 1. A proxied request never publishes without a token --------------------------


@pytest.mark.parametrize("header, value", [
    ("X-Forwarded-For", "203.0.113.7"),
    ("Forwarded", "for=203.0.113.7;proto=https"),
    ("X-Real-IP", "203.0.113.7"),
])
@pytest.mark.parametrize("options", [{}, {"trusted_proxy": ["127.0.0.1"]}], ids=["default", "trusted-proxy"])
@pytest_twisted.ensureDeferred
async def test_a_proxied_publish_without_a_token_is_refused(server_factory, reactor, header, value, options):
    # Behind the proxy of docs/deploy.md every request comes from loopback.
    server = await server_factory(**options)
    reader = await open_welcomed(server.ws_url, reactor)
    send(reader, "subscribe", {"channel": "news"}, 1)
    await answer(reader, reactor, 1)

    status, body, _ = await http("POST", server.ajax_url + "/publish", {"channel": "news", "data": "forged"},
                                 headers={header: value})
    assert status == 403 and body["error"]["code"] == "forbidden"
    assert "--publish-token" in body["error"]["message"]

    # A caller on this machine, through no proxy, still may; the reader
    # got that one message and nothing else.
    status, body, _ = await http("POST", server.ajax_url + "/publish", {"channel": "news", "data": "local"})
    assert status == 200 and body["subscribers"] == 1
    message = await expect(reader, reactor, "message")
    assert message["data"] == "local"
    await nothing_more(reader, reactor)


@pytest_twisted.ensureDeferred
async def test_a_trusted_proxy_names_the_client_for_the_per_ip_limit(server_factory, reactor):
    server = await server_factory(trusted_proxy=["127.0.0.1"], max_connections_per_ip=1)
    connect = server.ajax_url + "/connect"
    # nginx appends the address it saw to whatever the client sent.
    first, _, _ = await http("POST", connect, headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    again, body, _ = await http("POST", connect, headers={"X-Forwarded-For": "203.0.113.7"})
    other, _, _ = await http("POST", connect, headers={"X-Forwarded-For": "203.0.113.7, 203.0.113.8"})
    websocket = await upgrade_status(reactor, server.port("ws"), f"127.0.0.1:{server.port('ws')}", None,
                                     {"X-Forwarded-For": "203.0.113.8"})
    assert (first, again, other, websocket) == (200, 503, 200, 503)
    assert body["error"]["code"] == "too_many_connections" and "203.0.113.7" in body["error"]["message"]
    assert server.runtime.limiter.per_ip == {"203.0.113.7": 1, "203.0.113.8": 1}
    assert server.tracker.client_count == 2


@pytest_twisted.ensureDeferred
async def test_without_a_trusted_proxy_forwarding_headers_name_nobody(server_factory, reactor):
    server = await server_factory(max_connections_per_ip=1)
    connect = server.ajax_url + "/connect"
    first, _, _ = await http("POST", connect, headers={"X-Forwarded-For": "203.0.113.7"})
    spoofed, _, _ = await http("POST", connect, headers={"X-Forwarded-For": "203.0.113.8"})
    assert (first, spoofed) == (200, 503)
    assert server.runtime.limiter.per_ip == {"127.0.0.1": 1}


# 2. One nesting limit for every transport ---------------------------------------


@pytest_twisted.ensureDeferred
async def test_json_nested_too_deep_is_bad_json_on_every_transport(server_factory, reactor):
    app = App("deep")

    @app.route("/echo", methods=("POST",))
    def echo(request):
        return request.body

    server = await server_factory(app=app)
    too_deep = nested(300)
    reader = await open_welcomed(server.ws_url, reactor)
    send(reader, "subscribe", {"channel": "deep"}, "s")
    await answer(reader, reactor, "s")

    with capturedLogs() as events:
        # WebSocket: the error answers the request's id.
        send(reader, "ping", too_deep, 1)
        error = await expect(reader, reactor, "error", 1)
        send(reader, "publish", {"channel": "deep", "data": too_deep}, 2)
        error_publish = await expect(reader, reactor, "error", 2)
        # POST /send, JSONP /send?msg=, POST /publish, an application route.
        status, session_body, _ = await http("POST", server.ajax_url + "/connect")
        session = session_body["session"]
        send_status, send_body, _ = await http(
            "POST", server.ajax_url + "/send", {"type": "ping", "data": too_deep},
            headers={"X-AppServer-Session": session})
        query = urlencode({"session": session, "callback": "cb", "msg": json.dumps({"type": "ping", "data": too_deep})})
        _, jsonp, _ = await http("GET", server.ajax_url + "/send?" + query)
        publish_status, publish_body, _ = await http("POST", server.ajax_url + "/publish",
                                                     {"channel": "deep", "data": too_deep})
        route_status, route_body, _ = await http("POST", server.ajax_url + "/echo", too_deep)

    assert error["data"]["code"] == "bad_json" and str(MAX_JSON_DEPTH) in error["data"]["message"]
    assert error_publish["data"]["code"] == "bad_json"
    assert (send_status, send_body["error"]["code"]) == (400, "bad_json")
    assert jsonp.startswith("/**/cb(") and json.loads(jsonp[len("/**/cb("):-2])["error"]["code"] == "bad_json"
    assert (publish_status, publish_body["error"]["code"]) == (400, "bad_json")
    assert (route_status, route_body["error"]["code"]) == (400, "bad_json")
    assert errors_logged(events) == []

    # The limit is exact: the envelope's (or body's) own object is level 1.
    send(reader, "ping", nested(MAX_JSON_DEPTH - 1), 3)
    assert (await answer(reader, reactor, 3))["data"] == nested(MAX_JSON_DEPTH - 1)
    send(reader, "ping", nested(MAX_JSON_DEPTH), 4)
    assert (await expect(reader, reactor, "error", 4))["data"]["code"] == "bad_json"
    status, body, _ = await http("POST", server.ajax_url + "/publish",
                                 {"channel": "deep", "data": nested(MAX_JSON_DEPTH - 1)})
    assert status == 200 and body["subscribers"] == 1
    route_status, route_body, _ = await http("POST", server.ajax_url + "/echo", nested(MAX_JSON_DEPTH))
    assert (route_status, route_body) == (200, nested(MAX_JSON_DEPTH))
    # Of everything sent, the subscriber got the one publication that fit.
    assert (await expect(reader, reactor, "message"))["data"] == nested(MAX_JSON_DEPTH - 1)
    await nothing_more(reader, reactor)
    assert server.tracker.client_count == 2


# 3. DNS rebinding ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_rebound_name_is_not_an_own_page_until_named(server_factory, reactor):
    server = await server_factory()
    static, ajax, ws = server.port("static"), server.port("ajax"), server.port("ws")
    # The attacker's page at rebind.example:<static port>, whose name now
    # resolves to this server, talks to rebind.example:<other ports>.
    origin = f"http://rebind.example:{static}"
    with capturedLogs() as events:
        handshake = await upgrade_status(reactor, ws, f"rebind.example:{ws}", origin)
        connect, body, _ = await http("POST", server.ajax_url + "/connect",
                                      headers={"Origin": origin, "Host": f"rebind.example:{ajax}"})
        _, _, count_headers = await http("GET", server.ajax_url + "/get_client_count",
                                         headers={"Origin": origin, "Host": f"rebind.example:{ajax}"})
    assert (handshake, connect, body["error"]["code"]) == (403, 403, "origin_refused")
    assert count_headers.getRawHeaders(b"access-control-allow-origin") is None
    refusals = [formatEvent(event) for event in events if "--server-name rebind.example" in formatEvent(event)]
    assert len(refusals) == 2 and all(repr(origin) in line for line in refusals)
    assert server.tracker.client_count == 0 and server.runtime.limiter.total == 0

    # The server's own addresses still are own pages.
    assert await upgrade_status(reactor, ws, f"127.0.0.1:{ws}", f"http://127.0.0.1:{static}") == 101
    assert await upgrade_status(reactor, ws, f"localhost:{ws}", f"http://localhost:{static}") == 101


@pytest_twisted.ensureDeferred
async def test_a_server_name_makes_its_pages_own(server_factory, reactor):
    server = await server_factory(server_name=["chat.example"])
    static, ajax, ws = server.port("static"), server.port("ajax"), server.port("ws")
    origin = f"http://chat.example:{static}"
    assert await upgrade_status(reactor, ws, f"chat.example:{ws}", origin) == 101
    connect, _, headers = await http("POST", server.ajax_url + "/connect",
                                     headers={"Origin": origin, "Host": f"chat.example:{ajax}"})
    assert connect == 200 and headers.getRawHeaders(b"access-control-allow-origin") == [origin.encode()]
    await wait_until(lambda: server.tracker.client_count == 1, reactor)


# 5. Rooms per client, and one name per room -----------------------------------


#: --max-rooms-per-client's documented default (docs/reliability.md).
DEFAULT_MAX_ROOMS = 20


@pytest_twisted.ensureDeferred
async def test_rooms_per_client_are_limited_by_default(server_factory, reactor):
    server = await server_factory()
    client = await open_welcomed(server.ws_url, reactor)
    rooms = [f"room{number:02}" for number in range(DEFAULT_MAX_ROOMS)]
    for number, room in enumerate(rooms):
        send(client, "join", {"room": room, "username": "ann"}, number)
        await expect(client, reactor, "join")
        await answer(client, reactor, number)
    send(client, "join", {"room": "one-too-many", "username": "ann"}, "over")
    error = await expect(client, reactor, "error", "over")
    assert error["data"] == {"code": "limit",
                             "message": f"at most {DEFAULT_MAX_ROOMS} rooms per client; leave one first"}
    # Renaming in a room it is in is not a new room.
    send(client, "join", {"room": "room00", "username": "anne"}, "rename")
    await expect(client, reactor, "join")
    await answer(client, reactor, "rename")
    await nothing_more(client, reactor)
    tracker = server.tracker
    assert sorted(tracker.get(client.client_id).rooms) == rooms
    assert sorted(tracker.room_names()) == rooms
    # Leaving one makes room for another.
    send(client, "leave", {"room": "room01"}, "leave")
    await answer(client, reactor, "leave")
    send(client, "join", {"room": "one-too-many", "username": "ann"}, "again")
    await expect(client, reactor, "join")
    await answer(client, reactor, "again")
    assert len(tracker.get(client.client_id).rooms) == DEFAULT_MAX_ROOMS


@pytest_twisted.ensureDeferred
async def test_the_room_limit_is_an_option(server_factory, reactor):
    server = await server_factory(max_rooms_per_client=1)
    client = await open_welcomed(server.ws_url, reactor)
    send(client, "join", {"room": "a", "username": "ann"}, 1)
    await expect(client, reactor, "join")
    await answer(client, reactor, 1)
    send(client, "join", {"room": "b", "username": "ann"}, 2)
    assert (await expect(client, reactor, "error", 2))["data"]["code"] == "limit"
    assert list(server.tracker.get(client.client_id).rooms) == ["a"]


@pytest_twisted.ensureDeferred
async def test_a_room_refuses_a_username_already_present(server_factory, reactor):
    server = await server_factory()
    alice, impostor = [await open_welcomed(server.ws_url, reactor) for _ in range(2)]
    send(alice, "join", {"room": "lobby", "username": "alice"}, 1)
    await expect(alice, reactor, "join")
    await answer(alice, reactor, 1)
    for attempt, name in enumerate(["alice", "Alice", " alice "], start=10):
        send(impostor, "join", {"room": "lobby", "username": name}, attempt)
        error = await expect(impostor, reactor, "error", attempt)
        assert error["data"]["code"] == "bad_data"
        assert error["data"]["message"] == "the username 'alice' is already taken in room 'lobby'; choose another"
    # The impostor joined nothing; alice heard of no one.
    await nothing_more(alice, reactor)
    assert fired(server.tracker.room_members("lobby")) == ["alice"]
    assert server.tracker.get(impostor.client_id).rooms == {}
    # Another name is fine, and alice may change the case of her own.
    send(impostor, "join", {"room": "lobby", "username": "bob"}, 2)
    await expect(impostor, reactor, "join")
    await answer(impostor, reactor, 2)
    assert (await expect(alice, reactor, "join"))["data"]["username"] == "bob"
    send(alice, "join", {"room": "lobby", "username": "Alice"}, 3)
    assert (await expect(alice, reactor, "join"))["data"]["username"] == "Alice"
    await answer(alice, reactor, 3)
    assert fired(server.tracker.room_members("lobby")) == ["Alice", "bob"]
