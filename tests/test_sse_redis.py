"""
Event streams across two real appserver nodes on one real redis-server
(docs/scaling.md): a stream lives on one node and its client sends through
the other with the stream's secret (the session routing runs the request
on the stream's home node), a reconnect resumes on either node, and
behind nginx nothing is lost whichever node each request lands on.

Every process (Redis, nodes, nginx) is started on a free loopback port and
stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq

from support.sseclient import StreamClient, open_stream, stream_url
from test_redis_cluster import WS, cluster, counts, eventually, nginx, publish, pytestmark, redis  # noqa: F401  (fixtures, marks)


HEADER = "X-AppServer-Session"


@pytest.fixture
def clients():
    """
    Stream and WebSocket clients dropped at the end of the test, before the
    nodes stop.
    """
    made: list[Any] = []
    yield made.append
    for client in made:
        client.close()


async def post(url: str, secret: str, body: Any = None) -> tuple[int, Any]:
    response = await treq.post(url, json.dumps(body).encode() if body is not None else b"",
                               headers={HEADER: [secret]}, persistent=False)
    return response.code, await response.json()


async def stream_on(reactor: Any, base: str, clients: Any, *channels: str, **headers: str) -> StreamClient:
    client = await open_stream(reactor, stream_url(base, channels), headers or None, timeout=10)
    clients(client)
    assert client.status == 200, client.body
    await client.next_of_type(reactor, "welcome", timeout=10)
    await client.wait_for(reactor, lambda c: c.last_event_id is not None, timeout=10, what="a first id")
    return client


def news(client: StreamClient) -> list[Any]:
    return [m["data"] for m in client.of_type("message") if m["channel"] == "news"]


@pytest_twisted.ensureDeferred
async def test_a_stream_on_one_node_sends_and_disconnects_through_the_other(cluster, redis, reactor, clients):
    a, b = cluster("a"), cluster("b")
    stream = await stream_on(reactor, a.url("ajax"), clients, "news")
    ws = await WS.open(b.url("ws"), reactor)
    clients(ws)
    secret = stream.welcome["session"]
    assert secret.startswith("a.")

    # Sent to b, run on a (the stream's home), heard everywhere.
    assert await post(b.url("ajax") + "/send", secret, {"type": "chat", "data": "via b"}) == (200, {"ok": True})
    heard = await ws.wait_for(reactor, lambda m: m["type"] == "chat")
    assert heard["data"].endswith(" : via b")
    await stream.wait_for(reactor, lambda c: c.of_type("chat"), timeout=10, what="the chat")
    assert await post(b.url("ajax") + "/send", secret, {"type": "subscribe", "data": {"channel": "sport"}}) \
        == (200, {"ok": True})
    await stream.next_of_type(reactor, "subscribed", timeout=10)

    # Publications from both nodes reach the stream once each, in order.
    published = [(await publish((a, b)[i % 2].url("ajax"), "news", i))["pos"] for i in range(20)]
    await stream.wait_for(reactor, lambda c: len(news(c)) == 20, timeout=10, what="twenty messages")
    assert news(stream) == list(range(20))
    assert [m["pos"] for m in stream.of_type("message")] == published

    # Counted once, on every node; a poll with the stream's secret is refused there too.
    for node in (a, b):
        await eventually(reactor, lambda node=node: _sse_count(node, 1))
    response = await treq.get(b.url("ajax") + "/poll", headers={HEADER: [secret]}, persistent=False)
    status, body = response.code, await response.json()
    assert status == 409 and body["error"]["code"] == "not_pollable"

    assert await post(b.url("ajax") + "/disconnect", secret) == (200, {"ok": True})
    await stream.wait_gone(reactor, timeout=10)
    assert stream.comments[-1] == "closed 1000 client disconnected"
    for node in (a, b):
        await eventually(reactor, lambda node=node: _sse_count(node, 0))
    status, body = await post(b.url("ajax") + "/send", secret, {"type": "chat", "data": "too late"})
    assert status == 410 and body["error"]["code"] == "unknown_session"


async def _sse_count(node: Any, expected: int) -> bool:
    answer = await counts(node.url("ajax"))
    return answer["sse"] == expected and answer["client_count"] == expected + answer["websocket"] + answer["ajax"]


@pytest_twisted.ensureDeferred
async def test_a_stream_resumes_on_the_other_node_with_exactly_what_it_missed(cluster, redis, reactor, clients):
    a, b = cluster("a"), cluster("b")
    first = await stream_on(reactor, a.url("ajax"), clients, "news")
    await publish(a.url("ajax"), "news", "seen")
    await first.wait_for(reactor, lambda c: news(c) == ["seen"], timeout=10, what="the first message")
    last = first.last_event_id
    first.close()
    await eventually(reactor, lambda: _sse_count(a, 0))
    for i, node in enumerate((b, a, b)):
        await publish(node.url("ajax"), "news", f"missed {i}")
    await publish(a.url("ajax"), "elsewhere", "not followed")

    assert last is not None
    second = await stream_on(reactor, b.url("ajax"), clients, "news", **{"Last-Event-ID": last})
    await second.next_of_type(reactor, "resumed", timeout=10)
    types = [e["type"] for e in second.envelopes]
    assert types[:5] == ["welcome", "message", "message", "message", "resumed"]
    assert news(second) == ["missed 0", "missed 1", "missed 2"]
    assert second.of_type("resumed")[0]["data"]["recovered"] is True
    await publish(a.url("ajax"), "news", "live")
    await second.wait_for(reactor, lambda c: news(c)[-1:] == ["live"], timeout=10, what="the live message")
    assert news(second) == ["missed 0", "missed 1", "missed 2", "live"]


@pytest_twisted.ensureDeferred
async def test_behind_nginx_a_stream_and_its_sends_spread_over_two_nodes_lose_nothing(cluster, redis, reactor,
                                                                                      clients, nginx):
    a = cluster("a", "--access-log", "true", single_port=True)
    b = cluster("b", "--access-log", "true", single_port=True)
    port = nginx([a.ports["single"], b.ports["single"]])
    base = f"http://127.0.0.1:{port}/ajax"
    stream = await stream_on(reactor, base, clients)
    secret = stream.welcome["session"]

    expected = [f"m{i}" for i in range(30)]
    for text in expected:
        assert await post(base + "/send", secret, {"type": "chat", "data": text}) == (200, {"ok": True})
    await stream.wait_for(reactor, lambda c: len(c.of_type("chat")) == 30, timeout=15, what="thirty chats")
    # Each once, in the order sent (one sender), with growing positions.
    assert [m["data"].rsplit(" : ", 1)[-1] for m in stream.of_type("chat")] == expected
    positions = [m["pos"] for m in stream.of_type("chat")]
    assert positions == sorted(set(positions))
    # The balancer did spread the sends: both nodes took some.
    assert "/ajax/send" in _access(a) and "/ajax/send" in _access(b)


def _access(process: Any) -> str:
    return "\n".join(line for line in process.log().splitlines() if "appserver.access" in line or "POST /" in line)
