"""
Redis high availability with real processes: a primary, its replica and a
Sentinel (all redis-server), two appserver nodes reaching Redis through
C{--backplane redis+sentinel://...}. The primary is killed (SIGKILL) under
a steady publish stream: every acknowledged publish reaches the
subscribers of both nodes, in position order, and the nodes are back in
the cluster without a restart (docs/scaling.md, "High availability").

Every process is started on a free loopback port and stopped by its pid;
every wait is bounded.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from support.redis import RedisServer, free_port, redis_server_path
from support.sentinel import PRIMARY_NAME, SentinelServer
from test_redis_cluster import WS, eventually, sleep

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(redis_server_path() is None,
                       reason="redis-server is not installed (apt-get install redis-server; .ci/run does)"),
]

#: Short liveness bounds so that the test runs in seconds.
FAST = "heartbeat=0.5&ttl=2"


class Topology:
    """
    A primary, a replica of it, and a Sentinel watching them.
    """

    def __init__(self, workdir: Path) -> None:
        self.primary = RedisServer(workdir)
        self.replica = RedisServer(workdir, args=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinel = SentinelServer(workdir, self.primary.port)
        #: A Sentinel address where nothing listens, named first in the
        #: URL: nodes must ask the next one.
        self.dead_sentinel_port = free_port()

    def start(self) -> "Topology":
        self.primary.start()
        self.replica.start()
        self.sentinel.start()
        return self

    def url(self, query: str = FAST) -> str:
        return (f"redis+sentinel://127.0.0.1:{self.dead_sentinel_port},127.0.0.1:{self.sentinel.port}"
                f"/{PRIMARY_NAME}/0?{query}")

    def ready_for_failover(self) -> bool:
        """
        The Sentinel knows the replica and the replica is in sync: a
        failover can happen now.
        """
        master = subprocess.run(["redis-cli", "-p", str(self.sentinel.port), "SENTINEL", "master", PRIMARY_NAME],
                                capture_output=True, timeout=5).stdout.decode().split("\n")
        known = "num-slaves" in master and master[master.index("num-slaves") + 1] == "1"
        return known and b"master_link_status:up" in self.replica.command("INFO", "replication")

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            server.stop()


@pytest.fixture
def topology(tmp_path):
    servers = Topology(tmp_path)
    try:
        yield servers.start()
    finally:
        servers.stop()


async def publish(url: str, channel: str, data: Any) -> dict[str, Any] | None:
    """
    POST /publish; the answer when it was acknowledged with a position,
    else C{None} (refused, failed, or delivered on its node only).
    """
    try:
        response = await treq.post(url + "/publish", json.dumps({"channel": channel, "data": data}).encode(),
                                   persistent=False, timeout=5)
        answer = await response.json()
    except Exception:
        return None
    return answer if response.code == 200 and isinstance(answer.get("pos"), int) else None


async def readiness(site) -> bool:
    try:
        response = await treq.get(site.url("ajax") + "/readyz", persistent=False, timeout=2)
        await response.text()
    except Exception:
        return False
    return response.code == 200


def news(listener: WS) -> list[tuple[int, Any]]:
    """
    The positioned messages on C{news} (those a node delivered to its own
    clients only while it had no primary come without a position).
    """
    return [(m["pos"], m["data"]) for m in listener.of_type("message")
            if m.get("channel") == "news" and "pos" in m]


@pytest_twisted.ensureDeferred
async def test_a_failover_under_a_publish_stream_loses_no_acknowledged_publish(topology, server_process,
                                                                             reactor):
    await eventually(reactor, topology.ready_for_failover, timeout=30, step=0.2)
    a = server_process("--backplane", topology.url(), "--node-id", "a", "--access-log", "false")
    b = server_process("--backplane", topology.url(), "--node-id", "b", "--access-log", "false")
    listeners = []
    try:
        for node in (a, b):
            listener = await WS.open(node.url("ws"), reactor)
            listeners.append(listener)
            listener.send("subscribe", {"channel": "news"})
            await listener.wait_for(reactor, lambda m: m["type"] == "subscribed")

        acknowledged: dict[int, int] = {}       # data -> pos
        counter = 0
        killed_at: float | None = None
        after_kill = 0
        deadline = time.monotonic() + 60
        # A steady stream through both nodes: before the kill, during the
        # failover (answers without a position are not acknowledged), and
        # until 30 publishes were acknowledged by the new primary.
        while after_kill < 30 and time.monotonic() < deadline:
            counter += 1
            answer = await publish((a, b)[counter % 2].url("ajax"), "news", counter)
            if answer is not None:
                acknowledged[counter] = answer["pos"]
                if killed_at is not None:
                    after_kill += 1
            if killed_at is None and counter == 40:
                topology.primary.stop()                 # SIGKILL
                killed_at = time.monotonic()
            await sleep(reactor, 0.02)
        assert after_kill == 30, f"publishes not acknowledged again within 60s ({counter} tried)"
        assert topology.sentinel.primary() == ("127.0.0.1", topology.replica.port)

        # Every acknowledged publish reaches both nodes' subscribers, each
        # once, in position order.
        expected = sorted(acknowledged.items(), key=lambda item: item[1])
        for listener in listeners:
            def has_all(listener: WS = listener) -> bool:
                received = {data for _, data in news(listener)}
                return all(data in received for data in acknowledged)

            await eventually(reactor, has_all, timeout=20)
            received = [(pos, data) for pos, data in news(listener) if data in acknowledged]
            assert [data for _, data in received] == [data for data, _ in expected]
            assert [pos for pos, _ in received] == [pos for _, pos in expected]
            positions = [pos for pos, _ in news(listener)]
            assert positions == sorted(set(positions))

        # Both nodes are back in the cluster, never restarted.
        for node in (a, b):
            await eventually(reactor, lambda node=node: readiness(node), timeout=20)
            assert node.process.poll() is None
            assert f"connected to the Redis primary at 127.0.0.1:{topology.replica.port}" in node.log()
            # No position the old primary handed out can come again.
            assert f"the Redis primary changed to 127.0.0.1:{topology.replica.port}: positions skip" in node.log()
            assert "Traceback" not in node.log()
        print(f"\nfailover: {len(acknowledged)} of {counter} publishes acknowledged, "
              f"{counter - len(acknowledged)} refused or local during the failover")
    finally:
        for listener in listeners:
            listener.close()
        await sleep(reactor, 0.2)


def test_a_node_does_not_start_when_no_sentinel_names_the_primary(server_process, tmp_path):
    sentinel_port = free_port()
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{PRIMARY_NAME}/0"
    with pytest.raises(RuntimeError) as raised:
        server_process("--backplane", url, timeout=20)
    message = str(raised.value)
    assert "exited with 1" in message
    assert (f"cannot use the Redis backplane at {url}: no Sentinel named the primary: "
            f"127.0.0.1:{sentinel_port}: ") in message
    assert "Traceback" not in message


@pytest_twisted.ensureDeferred
async def test_nodes_leave_a_primary_demoted_alive_for_the_new_one(topology, server_process, reactor):
    # SENTINEL FAILOVER: the old primary stays up as a replica; nodes
    # connected to it must not stay there.
    await eventually(reactor, topology.ready_for_failover, timeout=30, step=0.2)
    a = server_process("--backplane", topology.url(), "--node-id", "a", "--access-log", "false")
    b = server_process("--backplane", topology.url(), "--node-id", "b", "--access-log", "false")
    for node in (a, b):
        await eventually(reactor, lambda node=node: readiness(node), timeout=20)
    listener = await WS.open(a.url("ws"), reactor)
    try:
        listener.send("subscribe", {"channel": "news"})
        await listener.wait_for(reactor, lambda m: m["type"] == "subscribed")
        assert await publish(b.url("ajax"), "news", "before") is not None
        subprocess.run(["redis-cli", "-p", str(topology.sentinel.port), "SENTINEL", "FAILOVER", PRIMARY_NAME],
                       capture_output=True, timeout=5, check=True)
        await eventually(reactor, lambda: topology.sentinel.primary() == ("127.0.0.1", topology.replica.port),
                         timeout=20)
        await eventually(reactor, lambda: b"role:slave" in topology.primary.command("INFO", "replication"),
                         timeout=20)

        acknowledged: list[str] = []
        tried = 0

        async def published_through_both() -> bool:
            nonlocal tried
            for node in (a, b):
                tried += 1
                data = f"after {tried}"
                if await publish(node.url("ajax"), "news", data) is not None:
                    acknowledged.append(data)
            return len(acknowledged) >= 4

        # Publishes are acknowledged again, by the new primary, and reach
        # the subscriber in order after what came before.
        await eventually(reactor, published_through_both, timeout=30, step=0.3)
        await eventually(reactor, lambda: all(data in [d for _, d in news(listener)] for data in acknowledged),
                         timeout=15)
        received = [data for _, data in news(listener)]
        assert received[0] == "before"
        assert [data for data in received if data in acknowledged] == acknowledged
        for node in (a, b):
            await eventually(reactor, lambda node=node: readiness(node), timeout=20)
            assert f"connected to the Redis primary at 127.0.0.1:{topology.replica.port}" in node.log()
            assert node.process.poll() is None
    finally:
        listener.close()
        await sleep(reactor, 0.2)
