"""
Cluster-wide room and channel semantics (issue 18, item 6), with real
C{redis-server} and appserver processes on free loopback ports, each
stopped by its pid; every wait is bounded: C{send_to_room} reaches members
on every node, C{/publish}'s C{subscribers} counts the cluster, and a
member's own C{join} comes before the reply to its C{join}.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq

from test_redis_cluster import FAST, WS, closing, cluster, eventually, redis  # noqa: F401 (fixtures)
from test_redis_cluster import pytestmark  # noqa: F401 (redis, slow, skipped without redis-server)


async def subscribers_after_publish(url: str) -> int:
    response = await treq.post(url + "/publish", json.dumps({"channel": "news", "data": "x"}).encode(),
                               persistent=False)
    assert response.code == 200, await response.text()
    return (await response.json())["subscribers"]


@pytest_twisted.ensureDeferred
async def test_publish_counts_the_subscribers_of_every_node(cluster, redis, reactor, closing):
    a = cluster("a", query=FAST)
    b = cluster("b", query=FAST)
    for node, count in ((a, 2), (b, 1)):
        for _ in range(count):
            client = await WS.open(node.url("ws"), reactor)
            closing(client)
            client.send("subscribe", {"channel": "news"}, id=1)
            await client.wait_for(reactor, lambda m: m.get("id") == 1)
    # The other node's share arrives with its next heartbeat (0.5 s here).
    assert await eventually(reactor, lambda: _equals(subscribers_after_publish(b.url("ajax")), 3), timeout=5)
    assert await eventually(reactor, lambda: _equals(subscribers_after_publish(a.url("ajax")), 3), timeout=5)


async def _equals(awaitable, expected) -> bool:
    return (await awaitable) == expected


@pytest_twisted.ensureDeferred
async def test_a_members_own_join_comes_before_the_reply_and_reaches_every_node(cluster, redis, reactor,
                                                                                 closing):
    a = cluster("a")
    b = cluster("b")
    watcher = await WS.open(b.url("ws"), reactor)
    closing(watcher)
    watcher.send("join", {"room": "lobby", "username": "watcher"}, id=1)
    await watcher.wait_for(reactor, lambda m: m.get("id") == 1)
    for n in range(5):
        member = await WS.open(a.url("ws"), reactor)
        closing(member)
        member.send("join", {"room": "lobby", "username": f"member{n}"}, id=7)
        reply = await member.wait_for(reactor, lambda m: m.get("id") == 7)
        assert reply["type"] != "error", reply
        own = [m for m in member.received if m["type"] == "join" and m.get("id") is None
               and m["data"]["username"] == f"member{n}"]
        assert own and member.received.index(own[0]) < member.received.index(reply), member.received
        # send_to_room reached the member on the other node.
        await watcher.wait_for(reactor, lambda m, n=n: m["type"] == "join"
                               and m["data"]["username"] == f"member{n}")
