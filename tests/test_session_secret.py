"""
The Ajax session credential (docs/protocol.md): C{/connect} answers a secret
that only its caller learns, unrelated to the public client id. JSON
requests carry it in the C{X-AppServer-Session} header, JSONP requests in
C{session=} (a script tag cannot send headers). Anyone who learns a client
id (applications show them to everyone) cannot act as that session, and the
secret never reaches the logs or the metrics. Real sockets throughout.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.logger import capturedLogs, formatEvent

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from support.wsclient import next_message, open_client, wait_closed, wait_until

HEADER = "X-AppServer-Session"


def announcing_app() -> App:
    """
    The chat plus a C{signed} message that shows everyone its sender's
    client id, as applications may (the client id is public).
    """
    app = App("announce").include(chat_app)

    @app.handler("signed")
    def signed(ctx, text):
        ctx.server.broadcast("signed", {"from": ctx.client.client_id, "text": text})

    return app


async def call(method: str, url: str, params: dict[str, Any] | None = None, secret: str | None = None,
               body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """
    One request; returns (status, decoded JSON body, response). With
    C{secret} the session goes in the header.
    """
    sent = {name: [value] for name, value in (headers or {}).items()}
    if secret is not None:
        sent[HEADER] = [secret]
    data = json.dumps(body).encode() if body is not None else None
    response = await treq.request(method, url, params=params, headers=sent or None, data=data, persistent=False)
    content = await response.content()
    return response.code, (json.loads(content) if content else None), response


def unwrap(content: bytes | str, callback: str) -> Any:
    """
    The object a JSONP body passes to C{callback}.
    """
    text = content.decode() if isinstance(content, bytes) else content
    prefix = f"/**/{callback}("
    assert text.startswith(prefix) and text.endswith(");"), text[:200]
    return json.loads(text[len(prefix):-2])


async def jsonp(url: str, params: dict[str, Any], callback: str = "cb") -> Any:
    response = await treq.get(url, params={**params, "callback": callback}, persistent=False)
    assert response.code == 200
    return unwrap(await response.content(), callback)


async def connect(server) -> dict[str, Any]:
    status, body, _ = await call("POST", server.ajax_url + "/connect")
    assert status == 200, body
    return body


class Poller:
    """
    An Ajax session's own polls (with its secret in the header).
    """

    def __init__(self, server, secret: str) -> None:
        self.server = server
        self.secret = secret
        self.since = 0
        self.messages: list[dict[str, Any]] = []

    async def poll(self) -> dict[str, Any]:
        status, body, _ = await call("GET", self.server.ajax_url + "/poll", {"since": str(self.since)},
                                     secret=self.secret)
        assert status == 200, body
        self.messages += body["messages"]
        self.since = body["position"]
        return body

    async def until(self, predicate, reactor, timeout: float = 5.0) -> dict[str, Any]:
        """
        Poll until a received message satisfies C{predicate}; returns it.
        """
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            found = [m for m in self.messages if predicate(m)]
            if found:
                return found[0]
            await self.poll()
        raise AssertionError(f"no such message within {timeout}s: {self.messages}")


def signed_texts(messages: list[dict[str, Any]], sender: str | None = None) -> list[str]:
    return [m["data"]["text"] for m in messages
            if m.get("type") == "signed" and (sender is None or m["data"]["from"] == sender)]


# The attack from the bug report ------------------------------------------------------------------


@pytest.mark.parametrize("attacker", ["websocket", "ajax"])
@pytest_twisted.ensureDeferred
async def test_a_client_id_learned_from_the_server_does_not_let_anyone_act_as_that_session(
        server_factory, reactor, attacker):
    server = await server_factory(app=announcing_app(), poll_timeout=1.0)
    ajax_url = server.ajax_url
    tracker = server.tracker

    # The attacker: a WebSocket client, or an Ajax client with a session of its own.
    if attacker == "websocket":
        mallory = await open_client(server.ws_url, reactor)
        await next_message(mallory, reactor, "welcome")
        mallory_poller = None
    else:
        mallory = None
        mallory_poller = Poller(server, (await connect(server))["session"])
        await mallory_poller.poll()

    # A, the victim, opens an Ajax session and says something the app signs with its client id.
    alice = await connect(server)
    secret, client_id = alice["session"], alice["client_id"]
    alice_poller = Poller(server, secret)
    welcome = await alice_poller.until(lambda m: m["type"] == "welcome", reactor)
    assert welcome["data"]["client_id"] == client_id
    status, body, _ = await call("POST", ajax_url + "/send", secret=secret,
                                 body={"type": "signed", "data": "hello from alice"})
    assert (status, body) == (200, {"ok": True})

    # The attacker learns A's client id from what the server shows everyone.
    if mallory is not None:
        shown = await next_message(mallory, reactor, "signed")
    else:
        shown = await mallory_poller.until(lambda m: m["type"] == "signed", reactor)
    assert shown["data"] == {"from": client_id, "text": "hello from alice"}
    learned = shown["data"]["from"]
    counts_before = (tracker.client_count, tracker.count_by_transport())

    forged = {"type": "signed", "data": "forged"}
    # JSON, the learned id in the header: unknown, like an expired session.
    for method, path, params, body in (("POST", "/send", None, forged),
                                       ("GET", "/poll", {"since": "0"}, None),
                                       ("GET", "/poll", {"since": "1"}, None),
                                       ("POST", "/disconnect", None, None)):
        status, answer, _ = await call(method, ajax_url + path, params, secret=learned, body=body)
        assert (status, answer["error"]["code"]) == (410, "unknown_session"), (path, answer)
    # JSON, the learned id in the query (the old form): no session at all.
    for method, path, params, body in (("POST", "/send", {"session": learned}, forged),
                                       ("GET", "/poll", {"session": learned, "since": "0"}, None),
                                       ("POST", "/disconnect", {"session": learned}, None)):
        status, answer, _ = await call(method, ajax_url + path, params, body=body)
        assert (status, answer["error"]["code"]) == (400, "missing_session"), (path, answer)
    # JSON, the learned id in both places: the header decides.
    status, answer, _ = await call("POST", ajax_url + "/send", {"session": learned}, secret=learned, body=forged)
    assert (status, answer["error"]["code"]) == (410, "unknown_session")
    # JSONP, the learned id in the query: unknown, through the callback.
    for path, params in (("/send", {"msg": json.dumps(forged)}), ("/poll", {"since": "0"}),
                         ("/poll", {"since": "1"}), ("/disconnect", {})):
        answer = await jsonp(ajax_url + path, {"session": learned, **params})
        assert (answer["status"], answer["error"]["code"]) == (410, "unknown_session"), (path, answer)
    # The attacker's own session does not lend its rights to another client id.
    if mallory_poller is not None:
        status, answer, _ = await call("POST", ajax_url + "/send", {"session": mallory_poller.secret},
                                       secret=learned, body=forged)
        assert (status, answer["error"]["code"]) == (410, "unknown_session")

    # Nothing happened to A: still counted, still the same client.
    assert (tracker.client_count, tracker.count_by_transport()) == counts_before
    assert tracker.get(client_id) is not None and tracker.get(client_id).transport == "ajax"

    # A's session keeps working: its next poll gets its messages, its sends go out as A.
    await alice_poller.until(lambda m: m["type"] == "signed", reactor)
    status, body, _ = await call("POST", ajax_url + "/send", secret=secret,
                                 body={"type": "signed", "data": "still alice"})
    assert (status, body) == (200, {"ok": True})
    await alice_poller.until(lambda m: m["type"] == "signed" and m["data"]["text"] == "still alice", reactor)
    assert signed_texts(alice_poller.messages) == ["hello from alice", "still alice"]
    if mallory is not None:
        again = await next_message(mallory, reactor, "signed")
        assert again["data"] == {"from": client_id, "text": "still alice"}
        assert not mallory.of_type("signed")
    else:
        await mallory_poller.until(lambda m: m["type"] == "signed" and m["data"]["text"] == "still alice",
                                   reactor)
        assert signed_texts(mallory_poller.messages) == ["hello from alice", "still alice"]
    assert "forged" not in json.dumps(alice_poller.messages)

    # Only A's secret ends A's session.
    status, body, _ = await call("POST", ajax_url + "/disconnect", secret=secret)
    assert (status, body) == (200, {"ok": True})
    await wait_until(lambda: tracker.get(client_id) is None, reactor)
    if mallory is not None:
        mallory.sendClose()
        await wait_closed(mallory, reactor)
    else:
        await call("POST", ajax_url + "/disconnect", secret=mallory_poller.secret)


# Where the secret goes ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_json_request_with_the_secret_only_in_the_query_is_400_naming_the_header(
        server_factory, reactor):
    server = await server_factory()
    ajax_url = server.ajax_url
    session = await connect(server)
    secret = session["session"]

    for method, path, params, body in (("POST", "/send", {}, {"type": "ping", "data": 1}),
                                       ("GET", "/poll", {"since": "0"}, None),
                                       ("POST", "/disconnect", {}, None)):
        status, answer, _ = await call(method, ajax_url + path, {**params, "session": secret}, body=body)
        assert status == 400 and answer["error"]["code"] == "missing_session", (path, answer)
        assert HEADER in answer["error"]["message"]

    # None of those did anything: the session is open, nothing was sent.
    assert server.tracker.get(session["client_id"]) is not None
    poller = Poller(server, secret)
    await poller.poll()
    assert [m["type"] for m in poller.messages] == ["welcome"]
    # The same requests with the header work.
    status, body, _ = await call("POST", ajax_url + "/send", secret=secret, body={"type": "ping", "data": 1})
    assert (status, body) == (200, {"ok": True})
    pong = await poller.until(lambda m: m["type"] == "pong", reactor)
    assert pong["data"] == 1
    status, body, _ = await call("POST", ajax_url + "/disconnect", secret=secret)
    assert (status, body) == (200, {"ok": True})
    assert server.tracker.client_count == 0


@pytest_twisted.ensureDeferred
async def test_the_secret_never_reaches_the_logs_or_the_metrics(server_factory, reactor):
    server = await server_factory(access_log=True, poll_timeout=1.0)
    ajax_url = server.ajax_url
    secrets_seen = []
    with capturedLogs() as events:
        # A JSONP session: the secret is in every query.
        connected = await jsonp(ajax_url + "/connect", {}, "c1")
        secret = connected["session"]
        secrets_seen.append(secret)
        welcome = await jsonp(ajax_url + "/poll", {"session": secret, "since": "0"}, "c2")
        assert welcome["messages"][0]["type"] == "welcome"
        sent = await jsonp(ajax_url + "/send", {"session": secret,
                                                "msg": json.dumps({"type": "chat", "data": "hello"})}, "c3")
        assert sent == {"ok": True}
        polled = await jsonp(ajax_url + "/poll", {"session": secret, "since": str(welcome["position"])}, "c4")
        assert polled["messages"][0]["data"].endswith(" : hello")

        # A JSON session alongside, the secret in the header.
        json_session = await connect(server)
        secrets_seen.append(json_session["session"])
        status, _, _ = await call("POST", ajax_url + "/send", secret=json_session["session"],
                                  body={"type": "chat", "data": "json"})
        assert status == 200

        # The metrics while both sessions are open.
        response = await treq.get(ajax_url + "/metrics", persistent=False)
        assert response.code == 200
        metrics_open = await response.text()

        # A wrong secret is not logged either (the attempt is).
        wrong = secret[::-1]
        answer = await jsonp(ajax_url + "/poll", {"session": wrong, "since": "0"}, "c5")
        assert answer["error"]["code"] == "unknown_session"

        gone = await jsonp(ajax_url + "/disconnect", {"session": secret}, "c6")
        assert gone == {"ok": True}
        status, _, _ = await call("POST", ajax_url + "/disconnect", secret=json_session["session"])
        assert status == 200
        await wait_until(lambda: server.tracker.client_count == 0, reactor)
        await wait_until(lambda: any(event.get("uri") == "/disconnect" for event in events), reactor)
        response = await treq.get(ajax_url + "/metrics", persistent=False)
        metrics_closed = await response.text()

    # The capture saw the session's requests (the check is not vacuous).
    access = [event for event in events if event.get("log_namespace") == "appserver.access"]
    assert {"/connect", "/poll", "/send", "/disconnect"} <= {event["uri"] for event in access}
    assert any(connected["client_id"] in formatEvent(event) or connected["client_id"] in repr(event)
               for event in events), "no event mentions the session at all"
    for event in events:
        text = formatEvent(event) + "\n" + repr(event)
        for value in secrets_seen + [wrong]:
            assert value not in text, text
    assert "appserver" in metrics_open
    for value in secrets_seen:
        assert value not in metrics_open and value not in metrics_closed


@pytest_twisted.ensureDeferred
async def test_the_cors_preflight_allows_the_session_header(server_factory, reactor):
    server = await server_factory()
    origin = f"http://127.0.0.1:{server.port('static')}"
    for path, method in (("/poll", "GET"), ("/send", "POST"), ("/disconnect", "POST")):
        status, _, response = await call("OPTIONS", server.ajax_url + path, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": HEADER.lower()})
        assert status == 204, path
        (allowed,) = response.headers.getRawHeaders("access-control-allow-headers")
        assert HEADER.lower() in {name.strip().lower() for name in allowed.split(",")}, (path, allowed)
        assert response.headers.getRawHeaders("access-control-allow-origin") == [origin]

    # The request the preflight allowed works from that origin.
    session = await connect(server)
    status, body, response = await call("GET", server.ajax_url + "/poll", {"since": "0"},
                                        secret=session["session"], headers={"Origin": origin})
    assert status == 200 and body["messages"][0]["type"] == "welcome"
    assert response.headers.getRawHeaders("access-control-allow-origin") == [origin]
    await call("POST", server.ajax_url + "/disconnect", secret=session["session"])


@pytest_twisted.ensureDeferred
async def test_the_secret_and_the_client_id_are_unrelated(server_factory, reactor):
    server = await server_factory()
    first, second = await connect(server), await connect(server)
    for session in (first, second):
        secret, client_id = session["session"], session["client_id"]
        assert secret != client_id
        assert not secret.startswith(client_id) and not client_id.startswith(secret)
        assert client_id not in secret and secret not in client_id
        assert len(secret) >= 43  # 256 random bits, URL-safe base64
        assert server.tracker.get(client_id) is not None and server.tracker.get(secret) is None
        # What the session itself is shown (its welcome) does not carry the secret.
        poller = Poller(server, secret)
        await poller.poll()
        assert poller.messages[0]["data"]["client_id"] == client_id
        assert secret not in json.dumps(poller.messages)
    assert first["session"] != second["session"] and first["client_id"] != second["client_id"]
    # Each secret is its own session's only.
    status, body, _ = await call("POST", server.ajax_url + "/send", secret=second["session"],
                                 body={"type": "ping", "data": "second"})
    assert (status, body) == (200, {"ok": True})
    for session in (first, second):
        await call("POST", server.ajax_url + "/disconnect", secret=session["session"])
    await wait_until(lambda: server.tracker.client_count == 0, reactor)
