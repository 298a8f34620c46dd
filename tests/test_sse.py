"""
The event stream transport (C{GET /events}, docs/protocol.md "Event
stream"), read over a real socket by a plain HTTP client that parses the
wire itself (tests/support/sseclient.py): the framing, one JSON envelope
per event with the WebSocket's very bytes, ids that resume exactly with
C{Last-Event-ID}, channel subscriptions from the query, heartbeats, the
session secret for C{/send} and C{/disconnect}, the one admission path
(origins, limits, authentication, shutdown), and the documented answers
to bad input.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from appserver._core.client import SLOW_CONSUMER_CLOSE_CODE
from appserver._core.envelope import Outgoing
from appserver._server.app import App
from appserver._web.eventstream import EventStreams, event_id, frame_event, parse_event_id
from appserver.apps.chat import app as chat_app
from support.servers import LOOPBACK
from support.sseclient import StreamClient, open_stream, stream_url
from support.wsclient import make_runtime, next_message, open_welcomed, sleep, wait_until

HEADER = "X-AppServer-Session"


@pytest.fixture
def streams():
    """
    Stream clients aborted at the end of the test:
    C{client = streams(await open_stream(...))}.
    """
    opened: list[StreamClient] = []

    def track(client: StreamClient) -> StreamClient:
        opened.append(client)
        return client

    yield track
    for client in opened:
        client.close()


async def welcomed(server, reactor, streams, *channels: str, headers: dict[str, str] | None = None,
                   **query: str) -> StreamClient:
    """
    A stream past its welcome and its first id (a position mark, or the
    C{resumed} answer of a resuming stream).
    """
    client = streams(await open_stream(reactor, stream_url(server.ajax_url, channels, **query), headers))
    assert client.status == 200, client.body
    await client.next_of_type(reactor, "welcome")
    await client.wait_for(reactor, lambda c: c.last_event_id is not None, what="a first id")
    return client


async def call(method: str, url: str, secret: str | None = None, body: Any = None,
               headers: dict[str, str] | None = None, params: dict[str, str] | None = None) -> tuple[int, Any]:
    sent = {name: [value] for name, value in (headers or {}).items()}
    if secret is not None:
        sent[HEADER] = [secret]
    data = json.dumps(body).encode() if body is not None else None
    response = await treq.request(method, url, headers=sent or None, data=data, params=params, persistent=False)
    content = await response.content()
    try:
        decoded = json.loads(content) if content else None
    except ValueError:
        decoded = content.decode()
    return response.code, decoded


async def counts(server) -> dict[str, Any]:
    status, body = await call("GET", server.ajax_url + "/get_client_count")
    assert status == 200
    return body


def texts(client: StreamClient, message_type: str = "message") -> list[Any]:
    return [envelope["data"] for envelope in client.of_type(message_type)]


def positioned(client: StreamClient) -> list[int]:
    return [envelope["pos"] for envelope in client.envelopes if "pos" in envelope]


def metric(server, name: str, **labels: str) -> float:
    found = server.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


# Framing -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_stream_is_an_event_stream_that_starts_with_a_retry_hint_and_a_welcome(server_factory, reactor,
                                                                                        streams):
    server = await server_factory()
    client = await welcomed(server, reactor, streams)

    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    retry = client.blocks[0]
    assert retry.fields[0][0] == "retry" and 500 <= int(retry.values("retry")[0]) <= 3000
    welcome_block, mark = client.blocks[1], client.blocks[2]
    welcome = welcome_block.envelope
    assert welcome is not None and welcome["type"] == "welcome" and welcome_block.id is None
    data = welcome["data"]
    tracker = server.tracker
    assert data["transport"] == "sse" and data["epoch"] == tracker.epoch
    assert data["position"] == tracker.position
    assert tracker.get(data["client_id"]) is not None
    assert data["session"] and data["session"] != data["client_id"]
    # The welcome's position as an id alone: a reconnect resumes from it.
    assert mark.fields == [("id", event_id(tracker.epoch, data["position"]))] and mark.data is None


@pytest_twisted.ensureDeferred
async def test_every_envelope_is_one_event_with_the_websocket_bytes_and_an_id_only_when_positioned(
        server_factory, reactor, streams):
    server = await server_factory()
    ws = await open_welcomed(server.ws_url, reactor)
    client = await welcomed(server, reactor, streams)

    await server.tracker.broadcast("chat", "hello <b>both</b> \u2028 \u00e9")
    await next_message(ws, reactor, "chat")
    chat = await client.next_of_type(reactor, "chat")
    block = next(b for b in client.blocks if b.envelope == chat)
    ws_payload = next(payload for payload, _ in ws.raw if b'"chat"' in payload)
    assert block.data == ws_payload.decode("utf-8")
    assert block.id == event_id(server.tracker.epoch, chat["pos"])
    # Not positioned: no id. No block ever names an event type.
    status, _ = await call("POST", server.ajax_url + "/send", client.welcome["session"],
                           {"type": "subscribe", "data": {"channel": "news"}})
    assert status == 200
    subscribed = await client.next_of_type(reactor, "subscribed")
    assert next(b for b in client.blocks if b.envelope == subscribed).id is None
    assert all(name in ("retry", "id", "data", "") for block in client.blocks for name, _ in block.fields)
    assert all(len(block.values("data")) <= 1 for block in client.blocks)
    ws.dropConnection(abort=True)


@pytest_twisted.ensureDeferred
async def test_a_burst_in_one_reactor_turn_is_one_write(server_factory, reactor, streams):
    server = await server_factory()
    first = await welcomed(server, reactor, streams)
    second = await welcomed(server, reactor, streams)
    before = [len(first.chunks), len(second.chunks)]

    for i in range(5):
        server.tracker.broadcast("chat", f"burst {i}")
    for client in (first, second):
        await client.wait_for(reactor, lambda c: len(c.of_type("chat")) == 5, what="five chats")
    assert [len(first.chunks), len(second.chunks)] == [before[0] + 1, before[1] + 1]
    assert first.chunks[-1] == second.chunks[-1] and first.chunks[-1].count(b"data: ") == 5


@pytest_twisted.ensureDeferred
async def test_a_stream_follows_the_channels_of_its_query(server_factory, reactor, streams):
    server = await server_factory()
    client = await welcomed(server, reactor, streams, "news", "sport", "news")
    tracker = server.tracker
    assert tracker.subscriber_count("news") == 1 and tracker.subscriber_count("sport") == 1

    for channel, data in (("news", 1), ("weather", 2), ("sport", 3)):
        await tracker.publish(channel, data)
    await client.wait_for(reactor, lambda c: len(c.of_type("message")) == 2, what="two messages")
    await sleep(reactor, 0.05)
    assert [(m["channel"], m["data"]) for m in client.of_type("message")] == [("news", 1), ("sport", 3)]
    ids = [b.id for b in client.blocks if b.envelope and b.envelope.get("type") == "message"]
    assert ids == [event_id(tracker.epoch, m["pos"]) for m in client.of_type("message")]


@pytest.mark.parametrize("query, code", [
    ({"channel": "bad name"}, "bad_data"),
    ({"channel": ""}, "bad_data"),
    ({"channel": "x" * 129}, "bad_data"),
    ({"channel": ["a", "b", "c"]}, "limit"),
])
@pytest_twisted.ensureDeferred
async def test_bad_channels_are_refused_with_a_json_error_before_any_stream(server_factory, reactor, query, code):
    server = await server_factory(max_channels_per_client=2)
    status, body = await call("GET", server.ajax_url + "/events", params=query)
    assert status == 400 and body["error"]["code"] == code
    assert server.tracker.client_count == 0 and server.runtime.limiter.total == 0


# Resuming ------------------------------------------------------------------------------------


async def missed_while_away(server, reactor, streams) -> tuple[str, list[Any]]:
    """
    A stream on C{news} that saw two messages and went away, and what was
    published while it was away: returns its last event id and the data
    it should get back, in order.
    """
    tracker = server.tracker
    first = await welcomed(server, reactor, streams, "news")
    await tracker.publish("news", "seen 1")
    await tracker.publish("news", "seen 2")
    await first.wait_for(reactor, lambda c: len(c.of_type("message")) == 2, what="two messages")
    last = first.last_event_id
    first.close()
    await wait_until(lambda: tracker.client_count == 0, reactor)
    await tracker.publish("news", "missed 1")
    await tracker.broadcast("chat", "missed chat")
    await tracker.publish("elsewhere", "not followed")
    await tracker.publish("news", "missed 2")
    assert last is not None
    return last, ["missed 1", "missed chat", "missed 2"]


def replayed_then_resumed(client: StreamClient) -> tuple[list[Any], dict[str, Any]]:
    envelopes = client.envelopes
    types = [e["type"] for e in envelopes]
    resumed = types.index("resumed")
    assert types[0] == "welcome"
    return [e["data"] for e in envelopes[1:resumed]], envelopes[resumed]["data"]


@pytest_twisted.ensureDeferred
async def test_last_event_id_replays_exactly_what_was_missed_in_order_then_goes_live(server_factory, reactor,
                                                                                    streams):
    server = await server_factory()
    last, missed = await missed_while_away(server, reactor, streams)

    client = await welcomed(server, reactor, streams, "news", headers={"Last-Event-ID": last})
    replayed, resumed = replayed_then_resumed(client)
    assert replayed == missed
    assert resumed == {"recovered": True, "epoch": server.tracker.epoch, "position": server.tracker.position}
    # The browser's id moves on to the resumed position, and nothing comes twice.
    assert client.last_event_id == event_id(server.tracker.epoch, server.tracker.position)
    await server.tracker.publish("news", "live")
    await client.wait_for(reactor, lambda c: "live" in texts(c), what="the live message")
    assert texts(client) == ["missed 1", "missed 2", "live"]
    assert positioned(client) == sorted(set(positioned(client)))
    welcome_index = next(i for i, b in enumerate(client.blocks) if b.envelope and b.envelope["type"] == "welcome")
    # No id between the welcome and the replay: until "resumed", the
    # browser keeps the id it came with.
    assert client.blocks[welcome_index + 1].id == event_id(server.tracker.epoch, client.of_type("message")[0]["pos"])


@pytest_twisted.ensureDeferred
async def test_the_last_event_id_query_parameter_resumes_and_the_header_wins_over_it(server_factory, reactor,
                                                                                    streams):
    server = await server_factory()
    last, missed = await missed_while_away(server, reactor, streams)

    by_query = await welcomed(server, reactor, streams, "news", lastEventId=last)
    assert replayed_then_resumed(by_query)[0] == missed

    # A reconnecting EventSource sends the URL it was made with (an older
    # lastEventId) and the header with the newest id: the header counts.
    newer = by_query.blocks[next(i for i, b in enumerate(by_query.blocks)
                                 if b.envelope and b.envelope.get("data") == "missed chat")].id
    assert newer is not None
    both = await welcomed(server, reactor, streams, "news", headers={"Last-Event-ID": newer}, lastEventId=last)
    assert replayed_then_resumed(both)[0] == ["missed 2"]


@pytest_twisted.ensureDeferred
async def test_a_resume_from_before_the_history_says_not_recovered(server_factory, reactor, streams):
    server = await server_factory(history_size=2)
    tracker = server.tracker
    first = await welcomed(server, reactor, streams, "news")
    last = first.last_event_id
    first.close()
    for i in range(5):
        await tracker.publish("news", i)

    client = await welcomed(server, reactor, streams, "news", headers={"Last-Event-ID": last})
    replayed, resumed = replayed_then_resumed(client)
    assert resumed["recovered"] is False
    assert replayed == [3, 4]  # what the history still has, in order


@pytest.mark.parametrize("raw", ["garbage", "abc:", ":12", "abc:-1", "abc:1x", "abc:\uff11\uff12",
                                 "e:" + "9" * 200])
@pytest_twisted.ensureDeferred
async def test_a_malformed_last_event_id_is_refused_with_bad_last_event_id(server_factory, reactor, raw):
    server = await server_factory()
    for kind in ("header", "query"):
        if kind == "header":
            status, body = await call("GET", server.ajax_url + "/events",
                                      headers={"Last-Event-ID": raw.encode("utf-8").decode("latin-1")})
        else:
            status, body = await call("GET", server.ajax_url + "/events", params={"lastEventId": raw})
        assert status == 400 and body["error"]["code"] == "bad_last_event_id", (kind, body)
    assert server.tracker.client_count == 0


@pytest.mark.parametrize("forged", ["another-epoch:3", "{epoch}:999999", "{epoch}:0"])
@pytest_twisted.ensureDeferred
async def test_an_id_this_server_never_sent_opens_a_stream_that_says_not_recovered(server_factory, reactor,
                                                                                 streams, forged):
    server = await server_factory()
    tracker = server.tracker
    for i in range(3):
        await tracker.broadcast("chat", f"before {i}")
    client = await welcomed(server, reactor, streams,
                            headers={"Last-Event-ID": forged.format(epoch=tracker.epoch)})
    replayed, resumed = replayed_then_resumed(client)
    if forged.endswith(":0"):
        # A real position of this epoch (the start): everything since.
        assert resumed["recovered"] is True and len(replayed) == 3
    else:
        assert resumed == {"recovered": False, "epoch": tracker.epoch, "position": tracker.position}
        assert replayed == []
    assert client.last_event_id == event_id(tracker.epoch, tracker.position)


# Heartbeat -----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_quiet_stream_gets_a_comment_before_the_heartbeat_interval_passes(server_factory, reactor,
                                                                                 streams):
    server = await server_factory(sse_heartbeat=0.3)
    client = await welcomed(server, reactor, streams)
    await client.wait_for(reactor, lambda c: c.comments.count("") >= 3, timeout=3.0, what="three heartbeats")
    times = client.chunk_times
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    # Ticks at half the interval: never silent longer than the interval
    # (plus the event loop's own lateness on a busy machine).
    assert max(gaps) < 0.3 + 0.2, gaps


def test_the_heartbeat_skips_streams_written_to_since_the_last_tick_and_stops_with_the_last_stream():
    clock = MemoryReactorClock()
    runtime = make_runtime(clock=clock, sse_heartbeat=10.0)
    streams = EventStreams(runtime)
    beats: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name, self.active = name, False

        def heartbeat(self) -> None:
            beats.append(self.name)

    quiet, busy = Fake("quiet"), Fake("busy")
    streams.streams.update({"quiet": quiet, "busy": busy})  # type: ignore[dict-item]
    streams._start_heartbeat()
    busy.active = True
    clock.advance(5.0)
    assert beats == ["quiet"]
    clock.advance(5.0)
    assert beats == ["quiet", "quiet", "busy"]
    streams._stop_heartbeat()
    clock.advance(50.0)
    assert len(beats) == 3 and not clock.getDelayedCalls()


# Counting, sending, ending -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_streams_are_counted_by_transport_and_the_count_returns_to_its_baseline(server_factory, reactor,
                                                                                     streams):
    server = await server_factory()
    baseline = await counts(server)
    assert baseline["sse"] == 0 and baseline["client_count"] == 0
    opened = [await welcomed(server, reactor, streams, "news") for _ in range(3)]
    answer = await counts(server)
    assert (answer["client_count"], answer["sse"], answer["websocket"], answer["ajax"]) == (3, 3, 0, 0)
    assert metric(server, "appserver_clients", transport="sse") == 3
    secrets = [client.welcome["session"] for client in opened]

    opened[0].close()
    opened[1].close()
    status, body = await call("POST", server.ajax_url + "/disconnect", secrets[2])
    assert (status, body) == (200, {"ok": True})
    await wait_until(lambda: server.tracker.client_count == 0, reactor)
    answer = await counts(server)
    assert {k: v for k, v in answer.items() if k != "time"} == {k: v for k, v in baseline.items() if k != "time"}
    assert server.tracker.subscriber_count("news") == 0 and server.runtime.limiter.total == 0
    assert all(server.runtime.sessions.find(secret) is None for secret in secrets)
    assert metric(server, "appserver_clients", transport="sse") == 0
    assert metric(server, "appserver_connections_closed_total", transport="sse", code="1006") == 2
    assert metric(server, "appserver_connections_closed_total", transport="sse", code="1000") == 1


@pytest_twisted.ensureDeferred
async def test_sends_with_the_stream_secret_go_through_the_dispatcher_and_answer_on_the_stream(
        server_factory, reactor, streams):
    server = await server_factory()
    ws = await open_welcomed(server.ws_url, reactor)
    client = await welcomed(server, reactor, streams)
    secret = client.welcome["session"]

    status, body = await call("POST", server.ajax_url + "/send", secret, {"type": "chat", "data": "from sse"})
    assert (status, body) == (200, {"ok": True})
    heard = await next_message(ws, reactor, "chat")
    assert heard["data"].endswith(" : from sse")
    await client.wait_for(reactor, lambda c: any(m["data"] == heard["data"] for m in c.of_type("chat")),
                          what="its own chat")
    status, _ = await call("POST", server.ajax_url + "/send", secret, {"type": "subscribe", "data": {"channel": "late"}})
    await client.next_of_type(reactor, "subscribed")
    await server.tracker.publish("late", "now followed")
    await client.wait_for(reactor, lambda c: texts(c) == ["now followed"], what="the new channel's message")
    status, _ = await call("POST", server.ajax_url + "/send", secret, {"type": "nope"})
    error = await client.next_of_type(reactor, "error")
    assert error["data"]["code"] == "unknown_type"
    ws.dropConnection(abort=True)


@pytest_twisted.ensureDeferred
async def test_disconnect_with_the_stream_secret_ends_the_response(server_factory, reactor, streams):
    server = await server_factory()
    client = await welcomed(server, reactor, streams)
    status, _ = await call("POST", server.ajax_url + "/disconnect", client.welcome["session"])
    assert status == 200
    await client.wait_gone(reactor)
    assert client.ended and client.comments[-1] == "closed 1000 client disconnected"
    assert server.tracker.client_count == 0


@pytest_twisted.ensureDeferred
async def test_a_stream_secret_cannot_poll_and_a_client_id_is_no_secret(server_factory, reactor, streams):
    server = await server_factory()
    client = await welcomed(server, reactor, streams)
    secret, client_id = client.welcome["session"], client.welcome["client_id"]

    status, body = await call("GET", server.ajax_url + "/poll", secret)
    assert status == 409 and body["error"]["code"] == "not_pollable"
    status, body = await call("GET", server.ajax_url + "/poll", params={"session": secret, "callback": "cb"})
    assert status == 200 and '"not_pollable"' in body and '"status":409' in body
    status, body = await call("POST", server.ajax_url + "/send", client_id, {"type": "chat", "data": "x"})
    assert status == 410 and body["error"]["code"] == "unknown_session"
    status, body = await call("POST", server.ajax_url + "/disconnect", client_id)
    assert status == 410 and body["error"]["code"] == "unknown_session"
    status, body = await call("POST", server.ajax_url + "/send", None, {"type": "chat", "data": "x"})
    assert status == 400 and body["error"]["code"] == "missing_session"
    assert server.tracker.client_count == 1 and not client.lost


@pytest_twisted.ensureDeferred
async def test_sends_with_a_stream_secret_are_rate_limited(server_factory, reactor, streams):
    server = await server_factory(rate_limit=1.0)
    client = await welcomed(server, reactor, streams)
    for _ in range(4):
        await call("POST", server.ajax_url + "/send", client.welcome["session"], {"type": "ping"})
    error = await client.next_of_type(reactor, "error")
    assert error["data"]["code"] == "rate_limited"


# One admission path --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_origin_the_server_does_not_allow_is_refused_and_an_allowed_one_may_read(server_factory,
                                                                                        reactor, streams):
    server = await server_factory(allowed_origin=["https://pages.example"])
    refused = streams(await open_stream(reactor, stream_url(server.ajax_url),
                                        {"Origin": "https://evil.example"}))
    await refused.wait_ended(reactor)
    assert refused.status == 403 and refused.json()["error"]["code"] == "origin_refused"
    allowed = streams(await open_stream(reactor, stream_url(server.ajax_url), {"Origin": "https://pages.example"}))
    assert allowed.status == 200
    assert allowed.headers["access-control-allow-origin"] == "https://pages.example"
    await allowed.next_of_type(reactor, "welcome")
    assert server.tracker.client_count == 1


@pytest_twisted.ensureDeferred
async def test_a_preflight_and_a_head_request_open_nothing(server_factory, reactor):
    server = await server_factory(allowed_origin=["https://pages.example"])
    response = await treq.request("OPTIONS", server.ajax_url + "/events", persistent=False, headers={
        "Origin": ["https://pages.example"], "Access-Control-Request-Method": ["GET"],
        "Access-Control-Request-Headers": ["last-event-id"]})
    await response.content()
    assert response.code == 204
    assert "Last-Event-ID" in response.headers.getRawHeaders("access-control-allow-headers")[0]
    response = await treq.head(server.ajax_url + "/events", persistent=False)
    assert response.code == 200 and await response.content() == b""
    assert response.headers.getRawHeaders("content-type") == ["text/event-stream; charset=utf-8"]
    assert server.tracker.client_count == 0 and server.runtime.limiter.total == 0


@pytest.mark.parametrize("refusal", ["shutting_down", "too_many_connections"])
@pytest_twisted.ensureDeferred
async def test_a_refusal_that_passes_is_a_stream_that_says_to_come_back(server_factory, reactor, streams, refusal):
    server = await server_factory(max_connections=1)
    if refusal == "shutting_down":
        server.runtime.accepting = False
    else:
        await welcomed(server, reactor, streams)
    clients = server.tracker.client_count
    refused = streams(await open_stream(reactor, stream_url(server.ajax_url)))
    await refused.wait_ended(reactor)
    # EventSource gives up for good on an error status; on a stream that
    # ends it waits "retry" and comes back, which is what a stopping or
    # full server wants (the next attempt may reach another node).
    assert refused.status == 200 and refused.headers["content-type"].startswith("text/event-stream")
    assert [e["type"] for e in refused.envelopes] == ["reconnect"]
    retry = int(refused.blocks[0].values("retry")[0])
    assert 500 <= retry <= 3000 and refused.envelopes[0]["data"]["after_ms"] == retry
    assert any(comment.startswith(f"503 {refusal}: ") for comment in refused.comments)
    assert server.tracker.client_count == clients


def authenticated_app() -> App:
    app = App("auth").include(chat_app)

    @app.authenticate
    def token(info):
        if info["query"].get("token") != ["good"]:
            return None
        return {"user": "ann"}

    return app


@pytest_twisted.ensureDeferred
async def test_the_application_authenticates_streams_like_every_connection(server_factory, reactor, streams):
    server = await server_factory(app=authenticated_app())
    status, body = await call("GET", server.ajax_url + "/events", params={"token": "bad"})
    assert status == 403 and body["error"]["code"] == "authentication_refused"
    client = await welcomed(server, reactor, streams, token="good")
    assert server.tracker.get(client.welcome["client_id"]).attributes == {"user": "ann"}
    assert server.runtime.limiter.total == 1


@pytest_twisted.ensureDeferred
async def test_a_stream_that_stops_reading_is_closed_as_a_slow_consumer(server_factory, reactor):
    server = await server_factory(max_queue_messages=5)
    tracker = server.tracker
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port("ajax")))
    try:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: tracker.count_by_transport()["sse"] == 1, reactor)
        stream = next(iter(tracker.clients.values()))
        stream.request.channel.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = "x" * 16384
        for _ in range(200):
            tracker.broadcast("chat", big)
            await sleep(reactor, 0)
            if stream.closed:
                break
        await wait_until(lambda: tracker.client_count == 0, reactor)
        assert metric(server, "appserver_slow_consumer_disconnects_total", transport="sse") == 1
        assert metric(server, "appserver_connections_closed_total", transport="sse",
                      code=str(SLOW_CONSUMER_CLOSE_CODE)) == 1
        assert server.runtime.limiter.total == 0
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_a_graceful_shutdown_tells_the_stream_to_reconnect_then_ends_it(server_factory, reactor, streams):
    server = await server_factory()
    client = await welcomed(server, reactor, streams)
    stopping = server.stop()
    await client.wait_gone(reactor)
    await stopping
    assert [e["type"] for e in client.envelopes][-1] == "reconnect"
    assert client.ended and client.comments[-1] == "closed 1001 server shutting down"


# Secrets stay out of logs, URLs stay the same --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_access_log_writes_paths_and_no_log_line_carries_the_secret(server_factory, reactor, streams):
    server = await server_factory(access_log=True)
    with capturedLogs() as events:
        client = await welcomed(server, reactor, streams, "news")
        secret = client.welcome["session"]
        await call("POST", server.ajax_url + "/send", secret, {"type": "chat", "data": "hi"})
        await client.next_of_type(reactor, "chat")
        await call("POST", server.ajax_url + "/disconnect", secret)
        await client.wait_gone(reactor)
        resumed = await welcomed(server, reactor, streams, "news", lastEventId=client.last_event_id)
        resumed.close()
        await wait_until(lambda: server.tracker.client_count == 0, reactor)
    logged = [formatEvent(event) + repr(event) for event in events]
    assert not [line for line in logged if secret in line]
    access = [event for event in events if event.get("log_namespace") == "appserver.access"]
    assert {event["uri"] for event in access} >= {"/events", "/send", "/disconnect"}
    assert all("?" not in event["uri"] for event in access)
    opened = [formatEvent(e) for e in events if e.get("log_namespace") == "appserver.sse"]
    assert any(line.startswith("Event stream open") for line in opened)
    assert any(line.startswith("Event stream closed") and "code=1000" in line for line in opened)


@pytest_twisted.ensureDeferred
async def test_single_port_mode_serves_streams_under_ajax(server_factory, reactor, streams):
    server = await server_factory(listen=LOOPBACK)
    assert server.ajax_url.endswith("/ajax")
    client = await welcomed(server, reactor, streams, "news")
    status, _ = await call("POST", server.ajax_url + "/send", client.welcome["session"],
                           {"type": "chat", "data": "one port"})
    assert status == 200
    chat = await client.next_of_type(reactor, "chat")
    assert chat["data"].endswith(" : one port")


@pytest_twisted.ensureDeferred
async def test_a_restart_with_the_state_file_resumes_a_stream_exactly(server_factory, reactor, streams, tmp_path):
    state = str(tmp_path / "state.json")
    first = await server_factory(state_file=state)
    client = await welcomed(first, reactor, streams, "news")
    await first.tracker.publish("news", "seen")
    await client.wait_for(reactor, lambda c: texts(c) == ["seen"], what="the first message")
    last = client.last_event_id
    client.close()
    await wait_until(lambda: first.tracker.client_count == 0, reactor)
    await first.tracker.publish("news", "before the restart")
    epoch = first.tracker.epoch
    await first.stop()

    second = await server_factory(state_file=state)
    assert second.tracker.epoch == epoch
    await second.tracker.publish("news", "after the restart")
    resumed = await welcomed(second, reactor, streams, "news", headers={"Last-Event-ID": last})
    replayed, answer = replayed_then_resumed(resumed)
    assert replayed == ["before the restart", "after the restart"] and answer["recovered"] is True


# Framing and ids, without a server -----------------------------------------------------------


def test_an_event_has_an_id_only_with_a_position_and_its_json_on_one_data_line():
    assert frame_event(Outgoing(b'{"type":"chat","pos":7}', 7), "ep") == b'id: ep:7\ndata: {"type":"chat","pos":7}\n\n'
    assert frame_event(Outgoing(b'{"type":"reply"}'), "ep") == b'data: {"type":"reply"}\n\n'
    assert frame_event(Outgoing(b"", 9), "ep") == b"id: ep:9\n\n"
    # Any other text keeps its lines, each a data line (the browser joins them).
    assert frame_event(Outgoing(b'{"a":\n1}'), "ep") == b'data: {"a":\ndata: 1}\n\n'


@pytest.mark.parametrize("raw, parsed", [("0123abcd:0", ("0123abcd", 0)), ("a:b:12", ("a:b", 12))])
def test_an_event_id_is_the_epoch_and_the_position(raw, parsed):
    assert parse_event_id(raw) == parsed
    assert event_id(*parsed) == raw


@pytest.mark.parametrize("raw", ["", "12", "ep:", ":1", "ep:1.5", "ep: 1", "ep:+1", "ep:" + "1" * 130])
def test_anything_else_is_not_an_event_id(raw):
    with pytest.raises(ValueError):
        parse_event_id(raw)
