"""
A Redis outage is never silent (docs/scaling.md, "Redis lost, and back"):
two real appserver nodes on a real redis-server that is killed (kill -9)
and restarted on the same port under a publish stream.

  - What the publishing node could not hand to Redis waits in its outbox
    and is published, in order, when Redis is back: the other node's
    clients (WebSocket, event stream, Ajax long poll) get every message
    once, in order, positioned; the publishing node's own clients, which
    had them at once, do not get them twice.
  - Past the outbox's bound (--history-size), the other node's clients are
    told at once with a live C{gap} (docs/protocol.md), and a later resume
    across the outage is not C{recovered: true}.

Every process is started on a free loopback port and stopped by its pid;
every wait is bounded.
"""

from __future__ import annotations

import time
from typing import Any

import pytest_twisted

from support.sseclient import open_stream, stream_url
from test_redis_cluster import (FAST, WS, Ajax, cluster, closing, eventually, publish, pytestmark,  # noqa: F401
                                redis, sleep)


class _Closed:
    """
    An event stream for the C{closing} fixture (which stops what is not a
    WebSocket).
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    async def stop(self) -> None:
        self.stream.close()


def news(received: list[dict[str, Any]]) -> list[Any]:
    return [m["data"] for m in received if m["type"] == "message" and m["channel"] == "news"]


async def subscribed_ws(url: str, reactor: Any, closing: Any) -> WS:
    client = await WS.open(url, reactor)
    closing(client)
    client.send("subscribe", {"channel": "news"})
    await client.wait_for(reactor, lambda m: m["type"] == "subscribed")
    return client


async def publish_until(reactor: Any, url: str, start: int, done: Any, limit: float) -> int:
    """
    Publish 0, 1, 2... on C{news} one after the other (each answered before
    the next) until C{done()} or C{limit} seconds; returns how many.
    """
    deadline = time.monotonic() + limit
    i = start
    while not done() and time.monotonic() < deadline:
        await publish(url, "news", i)
        i += 1
        await sleep(reactor, 0.01)
    return i


@pytest_twisted.ensureDeferred
async def test_publications_made_during_a_redis_outage_reach_every_node_once_in_order(
        cluster, redis, reactor, closing):
    a = cluster("a", query=FAST)
    b = cluster("b", query=FAST)
    on_a = await subscribed_ws(a.url("ws"), reactor, closing)
    on_b = await subscribed_ws(b.url("ws"), reactor, closing)
    stream = await open_stream(reactor, stream_url(b.url("ajax"), ("news",)), None, timeout=10)
    closing(_Closed(stream))
    await stream.next_of_type(reactor, "welcome", timeout=10)
    ajax = await Ajax([b.url("ajax")]).connect()
    closing(ajax)
    ajax.start_polling(reactor)
    await ajax.send("subscribe", {"channel": "news"})
    await ajax.wait_for(reactor, lambda m: m["type"] == "subscribed")

    sent = await publish_until(reactor, a.url("ajax"), 0, lambda: False, 1.0)
    await on_b.wait_for(reactor, lambda m: m.get("data") == sent - 1)
    before = max(m["pos"] for m in on_b.of_type("message"))
    epoch = on_b.welcome["epoch"]

    redis.stop()                                            # kill -9
    outage_started = sent
    sent = await publish_until(reactor, a.url("ajax"), sent, lambda: False, 2.0)
    assert sent - outage_started > 20
    redis.start()                                           # same port, empty
    # Go on publishing through the reconnection and its backoff.
    sent = await publish_until(reactor, a.url("ajax"), sent,
                               lambda: "back on the Redis backplane" in a.log()
                               and "back on the Redis backplane" in b.log(), 30.0)
    sent = await publish_until(reactor, a.url("ajax"), sent, lambda: False, 0.5)
    expected = list(range(sent))

    await eventually(reactor, lambda: news(on_b.received) == expected, timeout=20)
    await eventually(reactor, lambda: news(stream.envelopes) == expected, timeout=20)
    await eventually(reactor, lambda: news(ajax.received) == expected, timeout=20)
    await eventually(reactor, lambda: news(on_a.received) == expected, timeout=20)
    await sleep(reactor, 1.0)                               # nothing more comes (no duplicate)
    for received in (on_b.received, stream.envelopes, ajax.received, on_a.received):
        assert news(received) == expected
    # The other node's clients got them positioned, in one order, under
    # the same epoch; none was told of a gap: nothing was missed.
    for received in (on_b.received, stream.envelopes, ajax.received):
        positions = [m["pos"] for m in received if m["type"] == "message"]
        assert positions == sorted(set(positions))
        assert not [m for m in received if m["type"] == "gap"]
    assert not [m for m in on_a.received if m["type"] == "gap"]
    assert on_b.welcome["epoch"] == epoch
    assert "published" in a.log() and "messages kept while Redis was unreachable" in a.log()

    # A client that resumes from before the outage is never told
    # recovered: true over what it does not get.
    late = await WS.open(b.url("ws"), reactor)
    closing(late)
    late.send("resume", {"epoch": epoch, "since": before, "channels": ["news"]})
    resumed = await late.wait_for(reactor, lambda m: m["type"] == "resumed")
    if resumed["data"]["recovered"]:
        assert news(late.received) == [m["data"] for m in on_b.of_type("message") if m["pos"] > before]


@pytest_twisted.ensureDeferred
async def test_an_outbox_that_overflowed_tells_the_other_nodes_clients_at_once(cluster, redis, reactor, closing):
    a = cluster("a", "--history-size", "5", query=FAST)
    b = cluster("b", "--history-size", "5", query=FAST)
    on_a = await subscribed_ws(a.url("ws"), reactor, closing)
    on_b = await subscribed_ws(b.url("ws"), reactor, closing)
    stream = await open_stream(reactor, stream_url(b.url("ajax"), ("news",)), None, timeout=10)
    closing(_Closed(stream))
    await stream.next_of_type(reactor, "welcome", timeout=10)
    await publish(a.url("ajax"), "news", "before")
    await on_b.wait_for(reactor, lambda m: m.get("data") == "before")
    before = on_b.of_type("message")[0]["pos"]
    epoch = on_b.welcome["epoch"]

    redis.stop()
    for i in range(12):
        await publish(a.url("ajax"), "news", i)
    await on_a.wait_for(reactor, lambda m: m.get("data") == 11)
    redis.start()

    # Within the heartbeat bound of both nodes being back (each reconnects
    # on its own backoff): a live notice, on every transport, after the
    # messages a's outbox could keep.
    await eventually(reactor, lambda: "back on the Redis backplane" in a.log()
                     and "back on the Redis backplane" in b.log(), timeout=20, step=0.05)
    back = time.monotonic()
    gap = await on_b.wait_for(reactor, lambda m: m["type"] == "gap", timeout=10)
    assert time.monotonic() - back < 2 + 0.5                 # ttl + heartbeat of FAST
    # For the channel (the outbox's announcement), or for every client (b's
    # own catch-up found the gap first): either way before it is too late.
    assert gap["data"]["recovered"] is False and gap["data"].get("channel", "news") == "news"
    assert gap["data"]["epoch"] == epoch
    await stream.wait_for(reactor, lambda c: c.of_type("gap"), timeout=10, what="the gap notice")
    assert news(on_b.received)[:6] == ["before", 0, 1, 2, 3, 4]
    # The publishing node's clients had every message, once, and no notice.
    assert news(on_a.received) == ["before", *range(12)]
    assert not on_a.of_type("gap")

    late = await WS.open(b.url("ws"), reactor)
    closing(late)
    late.send("resume", {"epoch": epoch, "since": before, "channels": ["news"]})
    resumed = await late.wait_for(reactor, lambda m: m["type"] == "resumed")
    assert resumed["data"]["recovered"] is False
