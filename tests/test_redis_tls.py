"""
TLS to Redis with real processes: a TLS-only redis-server with
certificates made for the test (tests/support/certificates.py), appserver
nodes reaching it with C{--backplane rediss://...?ca=...}: they deliver
across nodes; a certificate the node's CA did not sign is refused with one
clear line, at start-up and on every later connection, never a traceback
(docs/scaling.md, "TLS").

Every process is started on a free loopback port and stopped by its pid;
every wait is bounded.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs

from appserver._redis.location import parse_redis_url
from appserver._redis.sentinel import RedisEndpoint, RedisUnusable
from support.certificates import make_certificates
from support.redis import RedisServer, redis_server_path
from test_redis_cluster import WS, eventually

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(redis_server_path() is None,
                       reason="redis-server is not installed (apt-get install redis-server; .ci/run does)"),
]


@pytest.fixture
def certificates(tmp_path):
    return make_certificates(tmp_path)


@pytest.fixture
def tls_redis(tmp_path, certificates):
    server = RedisServer(tmp_path, tls=certificates).start()
    try:
        yield server
    finally:
        server.stop()


async def ready(node) -> bool:
    # Bounded: a node that stopped answering fails the test, never hangs it.
    try:
        response = await treq.get(node.url("ajax") + "/readyz", persistent=False, timeout=2)
        await response.text()
    except Exception:
        return False
    return response.code == 200


@pytest_twisted.ensureDeferred
async def test_nodes_over_tls_deliver_across_nodes(tls_redis, server_process, reactor):
    url = tls_redis.url + "&heartbeat=0.5&ttl=2"
    assert url.startswith("rediss://")
    a = server_process("--backplane", url, "--node-id", "a", "--access-log", "false")
    b = server_process("--backplane", url, "--node-id", "b", "--access-log", "false")
    listener = await WS.open(a.url("ws"), reactor)
    try:
        listener.send("subscribe", {"channel": "news"})
        await listener.wait_for(reactor, lambda m: m["type"] == "subscribed")
        response = await treq.post(b.url("ajax") + "/publish",
                                   json.dumps({"channel": "news", "data": "over TLS"}).encode(), persistent=False)
        answer = await response.json()
        assert isinstance(answer["pos"], int), answer
        message = await listener.wait_for(reactor, lambda m: m.get("data") == "over TLS")
        assert message["pos"] == answer["pos"]
        for node in (a, b):
            await eventually(reactor, lambda node=node: ready(node), timeout=15)
            assert "Traceback" not in node.log()
        # The URL in logs names neither the CA path's contents nor a password.
        assert f"rediss://127.0.0.1:{tls_redis.port}/0" in a.log()
    finally:
        listener.close()


@pytest_twisted.ensureDeferred
async def test_a_client_certificate_is_presented_when_redis_asks_for_one(tmp_path, certificates,
                                                                        server_process, reactor):
    redis = RedisServer(tmp_path, tls=certificates, args=["--tls-auth-clients", "yes"]).start()
    try:
        # The test's server certificate is also good for client authentication.
        files = f"&cert={certificates.server_cert}&key={certificates.server_key}"
        node = server_process("--backplane", redis.url + files, "--node-id", "a", "--access-log", "false")
        await eventually(reactor, lambda: ready(node), timeout=15)
        with pytest.raises(RuntimeError) as raised:
            server_process("--backplane", redis.url, "--node-id", "b", timeout=20)
        assert "cannot reach the Redis backplane" in str(raised.value)
    finally:
        redis.stop()


def test_a_node_does_not_start_when_its_ca_did_not_sign_redis_certificate(tls_redis, certificates,
                                                                           server_process):
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ca={certificates.other_ca}"
    with pytest.raises(RuntimeError) as raised:
        server_process("--backplane", url, timeout=20)
    message = str(raised.value)
    assert "exited with 1" in message
    assert f"cannot reach the Redis backplane at rediss://127.0.0.1:{tls_redis.port}/0: TLS: " \
           "CERTIFICATE_VERIFY_FAILED" in message
    assert "?ca= names the authority that signed Redis's certificate" in message
    assert "Traceback" not in message


@pytest_twisted.ensureDeferred
async def test_a_later_connection_refused_by_the_ca_says_so_once_not_per_attempt(tls_redis, certificates,
                                                                                reactor):
    # What a running node's reconnections meet when Redis's certificate
    # changes to one its CA did not sign.
    location = parse_redis_url(f"rediss://127.0.0.1:{tls_redis.port}/0?ca={certificates.other_ca}")
    endpoint = RedisEndpoint(reactor, location, timeout=5)
    errors = []
    with capturedLogs() as events:
        for _ in range(3):
            try:
                await endpoint.connect(Factory.forProtocol(Protocol))
            except RedisUnusable as error:
                errors.append(str(error))
    assert len(errors) == 3
    assert errors[0].startswith(f"the Redis server at 127.0.0.1:{tls_redis.port} closed the connection (TLS: ")
    assert "certificate verify failed" in errors[0]
    warnings = [event for event in events if event.get("log_namespace") == "appserver.redis"]
    assert len(warnings) == 1
    assert "certificate verify failed" in warnings[0]["problem"]
    assert not any(event.get("log_failure") for event in events)

    # The right CA: connected, and the Redis client gets a working connection.
    good = RedisEndpoint(reactor, parse_redis_url(tls_redis.url), timeout=5)

    class Echo(Protocol):
        def __init__(self) -> None:
            self.received = b""

        def dataReceived(self, data: bytes) -> None:
            self.received += data

    protocol = await good.connect(Factory.forProtocol(Echo))
    protocol.transport.write(b"PING\r\n")
    await eventually(reactor, lambda: protocol.received == b"+PONG\r\n", timeout=5)
    protocol.transport.loseConnection()
