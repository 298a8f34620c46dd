"""
The whole server over real loopback sockets, in process: the three sites
share one tracker, counts follow every connection exactly, Ajax and
WebSocket clients talk to each other, and no bad input stops the server.
Every wait is bounded.
"""

import json

import pytest_twisted
import treq

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._web.websocket import TrackedProtocol
from support.wsclient import SESSION_HEADER, next_message, open_client, raw_request, wait_closed, wait_until


def _session_header(params):
    """
    JSON requests carry the session secret in the X-AppServer-Session
    header; only JSONP (with callback=) puts it in the query.
    """
    if "session" in params and not params.get("callback"):
        return {SESSION_HEADER: [str(params.pop("session"))]}
    return None


async def get_json(url, **params):
    headers = _session_header(params)
    response = await treq.get(url, params=params or None, headers=headers, persistent=False)
    return response.code, json.loads(await response.content())


async def post_json(url, body=b"", **params):
    headers = _session_header(params)
    response = await treq.post(url, data=body, params=params or None, headers=headers, persistent=False)
    return response.code, json.loads(await response.content())


async def count(server):
    _, body = await get_json(server.ajax_url + "/get_client_count")
    return body["client_count"]


@pytest_twisted.ensureDeferred
async def test_json_and_jsonp_counts_include_a_connected_websocket(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor, "welcome")
    status, body = await get_json(server.ajax_url + "/get_client_count")
    assert status == 200 and (body["client_count"], body["websocket"], body["ajax"]) == (1, 1, 0)
    response = await treq.get(server.ajax_url + "/get_client_count", params={"callback": "cb"},
                              persistent=False)
    text = await response.content()
    assert response.headers.getRawHeaders("content-type") == ["application/javascript; charset=utf-8"]
    assert text.startswith(b"/**/cb(") and json.loads(text[len(b"/**/cb("):-2])["client_count"] == 1
    client.sendClose()
    await wait_closed(client, reactor)


@pytest_twisted.ensureDeferred
async def test_two_websocket_clients_see_each_others_chat(server_factory, reactor):
    server = await server_factory()
    ann = await open_client(server.ws_url, reactor)
    bob = await open_client(server.ws_url, reactor)
    for client in (ann, bob):
        await next_message(client, reactor, "welcome")
    ann.sendMessage(json.dumps({"type": "chat", "data": "hi bob"}).encode())
    bob.sendMessage(json.dumps({"type": "chat", "data": "hi ann"}).encode())
    for client in (ann, bob):
        texts = {(await next_message(client, reactor, "chat"))["data"].rsplit(" : ", 1)[1] for _ in range(2)}
        assert texts == {"hi bob", "hi ann"}
    for client in (ann, bob):
        client.sendClose()
        await wait_closed(client, reactor)


@pytest_twisted.ensureDeferred
async def test_the_count_follows_connects_closes_and_aborts_exactly(server_factory, reactor):
    server = await server_factory()
    clients = []
    for expected in range(1, 7):
        clients.append(await open_client(server.ws_url, reactor))
        await wait_until(lambda: server.tracker.client_count == expected, reactor)
        assert await count(server) == expected
    remaining = len(clients)
    for index, client in enumerate(clients):
        if index % 2:
            client.transport.abortConnection()
        else:
            client.sendClose()
        remaining -= 1
        await wait_until(lambda: server.tracker.client_count == remaining, reactor)
        assert await count(server) == remaining
    await wait_until(lambda: server.runtime.limiter.total == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_an_ajax_client_and_a_websocket_client_chat_both_ways(server_factory, reactor):
    server = await server_factory()
    ws = await open_client(server.ws_url, reactor)
    await next_message(ws, reactor, "welcome")
    status, connected = await post_json(server.ajax_url + "/connect")
    assert status == 200
    session = connected["session"]
    _, first = await get_json(server.ajax_url + "/poll", session=session, since=0)
    assert first["messages"][0]["type"] == "welcome"
    since = first["position"]
    assert server.tracker.count_by_transport() == {"websocket": 1, "ajax": 1, "sse": 0}

    ws.sendMessage(json.dumps({"type": "chat", "data": "from ws"}).encode())
    _, polled = await get_json(server.ajax_url + "/poll", session=session, since=since)
    assert polled["messages"][0]["data"].endswith(" : from ws")
    since = polled["position"]
    assert (await next_message(ws, reactor, "chat"))["data"].endswith(" : from ws")

    status, sent = await post_json(server.ajax_url + "/send", json.dumps({"type": "chat", "data": "from ajax"}).encode(),
                                   session=session)
    assert (status, sent) == (200, {"ok": True})
    assert (await next_message(ws, reactor, "chat"))["data"].endswith(" : from ajax")
    _, polled = await get_json(server.ajax_url + "/poll", session=session, since=since)
    assert polled["messages"][0]["data"].endswith(" : from ajax")

    await post_json(server.ajax_url + "/disconnect", session=session)
    ws.sendClose()
    await wait_closed(ws, reactor)
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_long_poll_over_a_socket_is_answered_by_a_websocket_chat(server_factory, reactor):
    server = await server_factory(poll_timeout=10.0)
    _, connected = await post_json(server.ajax_url + "/connect")
    session = connected["session"]
    _, first = await get_json(server.ajax_url + "/poll", session=session, since=0)
    waiting = get_json(server.ajax_url + "/poll", session=session, since=first["position"])
    from twisted.internet import defer
    waiting = defer.ensureDeferred(waiting)
    await wait_until(lambda: server.runtime.sessions.find(session).waiting is not None, reactor)
    ws = await open_client(server.ws_url, reactor)
    ws.sendMessage(json.dumps({"type": "chat", "data": "wake up"}).encode())
    _, answer = await waiting.addTimeout(5, reactor)
    assert answer["messages"][0]["data"].endswith(" : wake up")
    ws.sendClose()
    await wait_closed(ws, reactor)


@pytest_twisted.ensureDeferred
async def test_the_server_survives_every_bad_input_and_keeps_serving(server_factory, reactor):
    server = await server_factory(max_message_size=4096)
    victim = await open_client(server.ws_url, reactor)
    await next_message(victim, reactor, "welcome")
    for payload in (b"{", b"[]", b"{}", b'{"type": "nope"}', b'{"type": "chat", "data": 1}',
                    b'{"type": "subscribe", "data": {"channel": "bad name"}}', b"\x00" * 10):
        victim.sendMessage(payload)
        assert (await next_message(victim, reactor))["type"] == "error"
    victim.sendMessage(b"\x01\x02", isBinary=True)
    assert (await next_message(victim, reactor))["data"]["code"] == "binary_unsupported"

    for payload, code in ((b'{"type": "chat", "data": "\xff"}', 1007),
                          (json.dumps({"type": "chat", "data": "x" * 5000}).encode(), 1009)):
        doomed = await open_client(server.ws_url, reactor)
        doomed.sendMessage(payload)
        assert (await wait_closed(doomed, reactor))[0] == code

    garbage = [b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40,
               b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
               b"NOT HTTP AT ALL\r\n\r\n",
               b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
               b"POST /send?session=x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{",
               b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"]
    # Concurrently; a server still waiting for more (an incomplete body) is cut after 0.5 s.
    from twisted.internet import defer
    await defer.gatherResults([
        defer.ensureDeferred(raw_request(reactor, server.port(site), request + b"\r\n", timeout=0.5,
                                         until_close=False))
        for site in ("static", "ajax", "ws") for request in garbage])

    for path, params in (("/poll", {"session": "x", "since": "y"}), ("/send", {"session": "x", "msg": "{"}),
                         ("/connect", {"callback": "alert(1)"}), ("/poll", {"since": "0"}),
                         ("/nope", {})):
        response = await treq.get(server.ajax_url + path, params=params, headers=_session_header(params),
                                  persistent=False)
        body = await response.content()
        assert response.code in (400, 404, 405, 410), (path, response.code, body)
        assert "code" in json.loads(body)["error"]
    response = await treq.post(server.ajax_url + "/connect", data=b"x" * 10000, persistent=False)
    assert response.code == 413
    await response.content()

    victim.sendMessage(json.dumps({"type": "chat", "data": "still alive"}).encode())
    assert (await next_message(victim, reactor, "chat"))["data"].endswith(" : still alive")
    assert server.tracker.client_count == 1
    victim.sendClose()
    await wait_closed(victim, reactor)
    await wait_until(lambda: server.tracker.client_count == 0 and server.runtime.limiter.total == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_foreign_origin_is_refused_at_the_handshake(server_factory, reactor):
    server = await server_factory()
    try:
        await open_client(server.ws_url, reactor, origin="http://evil.example")
    except ConnectionError as refused:
        assert "403" in str(refused)
    else:
        raise AssertionError("a foreign origin was accepted")
    own = await open_client(server.ws_url, reactor, origin=f"http://127.0.0.1:{server.port('static')}")
    assert server.tracker.client_count == 1
    own.sendClose()
    await wait_closed(own, reactor)


@pytest_twisted.ensureDeferred
async def test_single_port_mode_serves_all_three_sites(server_factory, reactor):
    server = await server_factory(listen="tcp:0:interface=127.0.0.1")
    assert set(server.service.ports) == {"single"}
    client = await open_client(server.ws_url, reactor)
    assert server.ws_url.endswith("/ws")
    await next_message(client, reactor, "welcome")
    status, body = await get_json(server.ajax_url + "/get_client_count")
    assert server.ajax_url.endswith("/ajax") and status == 200 and body["client_count"] == 1
    response = await treq.get(server.static_url + "/", persistent=False)
    assert response.code == 200 and b"<html" in (await response.content()).lower()
    response = await treq.get(server.static_url + "/appserver-config.js", persistent=False)
    port = server.port("single")
    assert json.loads((await response.content()).split(b" = ", 1)[1].rstrip(b";\n")) == {
        "wsUrl": f"ws://127.0.0.1:{port}/ws", "ajaxUrl": f"http://127.0.0.1:{port}/ajax"}
    client.sendClose()
    await wait_closed(client, reactor)


@pytest_twisted.ensureDeferred
async def test_a_raw_app_endpoint_is_counted(server_factory, reactor):
    app = App("echo").include(chat_app)

    @app.endpoint("/echo")
    class Echo(TrackedProtocol):
        def onMessage(self, payload, isBinary):
            self.sendMessage(payload, isBinary)

    server = await server_factory(app=app)
    echo = await open_client(server.ws_url + "echo", reactor)
    await wait_until(lambda: server.tracker.client_count == 1, reactor)
    assert await count(server) == 1
    echo.sendMessage(b"ping me")
    from support.wsclient import sleep
    for _ in range(200):
        if echo.raw:
            break
        await sleep(reactor, 0.01)
    assert echo.raw == [(b"ping me", False)]
    echo.transport.abortConnection()
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_graceful_stop_tells_clients_to_reconnect_and_closes_with_1001(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor, "welcome")
    stopping = server.stop()
    reconnect = await next_message(client, reactor, "reconnect")
    assert 500 <= reconnect["data"]["after_ms"] <= 3000
    assert (await wait_closed(client, reactor))[0] == 1001
    await stopping
    assert server.tracker.client_count == 0
