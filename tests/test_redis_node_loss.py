"""
What a cluster does when a node or Redis itself goes away (issue 18), with
real C{redis-server} and appserver processes on free loopback ports, each
stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import time

import pytest_twisted
import treq

from test_redis_cluster import FAST, Ajax, closing, cluster, eventually, redis, sleep  # noqa: F401 (fixtures)
from test_redis_cluster import pytestmark  # noqa: F401 (redis, slow, skipped without redis-server)

#: The liveness bounds of FAST: a node is dead 2 s after its last
#: heartbeat, and every node looks every 0.5 s.
TTL, HEARTBEAT = 2.0, 0.5


# Dead node, fast answer ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_poll_waiting_through_another_node_gets_410_within_the_ttl_when_the_home_dies(
        cluster, redis, reactor, closing):
    a = cluster("a", query=FAST)
    b = cluster("b", query=FAST)
    ajax = await Ajax([a.url("ajax")]).connect()
    assert ajax.session.startswith("a.")
    await ajax.poll_once()      # the welcome: the next poll waits
    await eventually(reactor, lambda: treq.get(b.url("ajax") + "/readyz", persistent=False)
                     .addCallback(lambda response: response.code == 200))

    waiting = treq.get(b.url("ajax") + "/poll", params={"since": str(ajax.cursor)},
                       headers={"X-AppServer-Session": [ajax.session]}, persistent=False)
    await sleep(reactor, 0.3)       # the poll reached its home and waits there
    killed_at = time.monotonic()
    a.kill()
    response = await waiting.addTimeout(30, reactor)
    elapsed = time.monotonic() - killed_at
    body = await response.json()
    assert response.code == 410, body
    assert body["error"]["code"] == "unknown_session"
    # Within the node TTL and one heartbeat (plus process jitter); before,
    # the poll timeout (5 s) and its 10 s margin.
    assert elapsed < TTL + HEARTBEAT + 1.0, elapsed
