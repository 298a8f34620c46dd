"""
The WebSocket transport in memory (iosim, every timer on a fake clock):
the envelope protocol and its bad inputs, close codes, registration from open
to every kind of end, origin policy, limits, authentication, backpressure,
and raw application endpoints.
"""

import json

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.logger import capturedLogs
from twisted.test import iosim

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._core.envelope import MAX_TYPE_LENGTH
from appserver.apps.echo import app as echo_app
from support.wsclient import STATIC_PORT, WS_PORT, MemoryWebSocket, make_runtime

OWN_ORIGIN = f"http://127.0.0.1:{STATIC_PORT}"


@pytest.fixture
def harness_factory():
    made = []

    def make(app=None, **settings):
        settings.setdefault("ping_interval", 20.0)
        settings.setdefault("ping_timeout", 10.0)
        settings.setdefault("handshake_timeout", 10.0)
        harness = MemoryWebSocket(make_runtime(app=app, **settings))
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def ws(harness_factory):
    return harness_factory()


def count(harness):
    return harness.runtime.tracker.client_count


def is_open(connection):
    return connection.protocol.state == WebSocketServerProtocol.STATE_OPEN


def last_error(connection):
    message = connection.messages[-1]
    assert message["type"] == "error", message
    return message


class RawPeer(Protocol):
    """
    Sends bytes as they are and records what comes back.
    """

    def __init__(self, request):
        self.request = request
        self.received = b""
        self.lost = False

    def connectionMade(self):
        if self.request:
            self.transport.write(self.request)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.lost = True


def raw_connect(harness, request):
    server = harness.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    peer = RawPeer(request)
    server_io = iosim.FakeTransport(server, isServer=True, hostAddress=IPv4Address("TCP", "127.0.0.1", WS_PORT),
                                    peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
    client_io = iosim.FakeTransport(peer, isServer=False)
    pump = iosim.connect(server, server_io, peer, client_io, clock=harness.clock)
    return peer, pump, client_io


# Open ------------------------------------------------------------------------------------


def test_open_registers_and_sends_a_welcome(ws):
    connection = ws.connect()
    assert count(ws) == 1 and ws.runtime.tracker.count_by_transport()["websocket"] == 1
    (welcome,) = connection.messages
    assert welcome["type"] == "welcome"
    assert welcome["data"]["transport"] == "websocket" and welcome["data"]["epoch"] == ws.runtime.tracker.epoch
    assert ws.runtime.tracker.get(welcome["data"]["client_id"]) is not None


def test_two_clients_see_each_others_chat(ws):
    ann, bob = ws.connect(), ws.connect()
    ann.send({"type": "chat", "data": "hi bob"})
    ws.flush()
    for connection in (ann, bob):
        assert connection.messages[-1]["type"] == "chat"
        assert connection.messages[-1]["data"].endswith(" : hi bob")


# Bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload, code", [
    (b"{", "bad_json"),
    (b"not json", "bad_json"),
    (b"", "bad_json"),
    (b"[1, 2]", "bad_envelope"),
    (b'"chat"', "bad_envelope"),
    (b"{}", "bad_envelope"),
    (json.dumps({"type": "x" * (MAX_TYPE_LENGTH + 1)}).encode(), "bad_envelope"),
    (b'{"type": "ping", "id": 1.5}', "bad_envelope"),
    (b'{"type": "ping", "id": [1]}', "bad_envelope"),
    (b'{"type": "nope"}', "unknown_type"),
    (b'{"type": "chat", "data": 42}', "bad_data"),
    (b'{"type": "subscribe", "data": "news"}', "bad_data"),
])
def test_bad_input_is_answered_with_an_error_and_the_connection_stays_open(ws, payload, code):
    connection = ws.connect()
    connection.send_raw(payload)
    assert last_error(connection)["data"]["code"] == code
    assert is_open(connection) and count(ws) == 1
    connection.send({"type": "ping", "data": "still here"})
    assert connection.messages[-1] == {"type": "pong", "id": None, "data": "still here"}


def test_an_error_carries_the_request_id(ws):
    connection = ws.connect()
    connection.send({"type": "nope", "id": "req-1"})
    assert last_error(connection)["id"] == "req-1"
    connection.send({"type": 5, "id": 8})
    assert last_error(connection)["id"] == 8


def test_a_binary_frame_is_binary_unsupported(ws):
    connection = ws.connect()
    connection.send_raw(b"\x00\x01", binary=True)
    assert last_error(connection)["data"]["code"] == "binary_unsupported"
    assert is_open(connection)


def test_invalid_utf8_closes_with_1007_and_unregisters(ws):
    connection = ws.connect()
    connection.send_raw(b'{"type": "chat", "data": "\xff\xfe"}')
    assert connection.client.close_code == 1007
    assert count(ws) == 0


def test_a_message_over_the_size_limit_closes_with_1009_and_unregisters(harness_factory):
    ws = harness_factory(max_message_size=1024)
    connection = ws.connect()
    connection.send({"type": "chat", "data": "x" * 2000})
    assert connection.client.close_code == 1009
    assert connection.client.close_reason
    assert count(ws) == 0


def test_a_message_at_the_size_limit_is_accepted(harness_factory):
    ws = harness_factory(max_message_size=1024)
    connection = ws.connect()
    prefix = b'{"type": "ping", "data": "'
    connection.send_raw(prefix + b"x" * (1024 - len(prefix) - 2) + b'"}')
    assert connection.messages[-1]["type"] == "pong"


# Every end unregisters ------------------------------------------------------------------------


def test_a_clean_close_unregisters(ws):
    connection = ws.connect()
    connection.client.sendClose(1000)
    connection.pump.flush()
    assert connection.client.close_code == 1000
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_tcp_reset_unregisters(ws):
    connection = ws.connect()
    connection.reset()
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_reset_of_a_room_member_tells_the_others(ws):
    ann, bob = ws.connect(), ws.connect()
    ann.send({"type": "join", "data": {"room": "lobby", "username": "ann"}})
    bob.send({"type": "join", "data": {"room": "lobby", "username": "bob"}})
    ann.reset()
    ws.flush()
    assert bob.messages[-1] == {"type": "leave", "data": {"room": "lobby", "username": "ann"}}


def test_counts_are_exact_over_mixed_ends(ws):
    connections = [ws.connect() for _ in range(12)]
    assert count(ws) == 12
    for index, connection in enumerate(connections):
        if index % 3 == 0:
            connection.reset()
        elif index % 3 == 1:
            connection.client.sendClose(1000)
            connection.pump.flush()
        else:
            connection.send_raw(b"\xff")
        assert count(ws) == 11 - index
    assert ws.runtime.limiter.total == 0


def test_a_request_that_is_not_a_websocket_upgrade_fails_the_handshake_and_registers_nothing(ws):
    peer, pump, _ = raw_connect(ws, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9002\r\n\r\n")
    pump.flush()
    assert peer.received.startswith(b"HTTP/1.1 ") and not peer.received.startswith(b"HTTP/1.1 101")
    assert peer.lost
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_garbage_instead_of_a_handshake_registers_nothing(ws):
    peer, pump, _ = raw_connect(ws, b"\x16\x03\x01garbage\r\n\r\n")
    pump.flush()
    assert peer.lost
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_bad_websocket_version_fails_the_handshake(ws):
    request = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9002\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 7\r\n\r\n")
    peer, pump, _ = raw_connect(ws, request)
    pump.flush()
    assert not peer.received.startswith(b"HTTP/1.1 101")
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def stalled_app():
    """
    An application whose authentication never decides: the handshake hangs.
    """
    app = App("stalled").include(chat_app)
    app.authenticate(lambda info: defer.Deferred())
    return app


def test_a_handshake_timeout_releases_everything(harness_factory):
    ws = harness_factory(app=stalled_app(), handshake_timeout=5.0)
    connection = ws.connect()
    assert ws.runtime.limiter.total == 1 and count(ws) == 0
    ws.advance(5.1)
    assert connection.disconnected
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_peer_vanishing_during_the_handshake_releases_its_slot(harness_factory):
    ws = harness_factory(app=stalled_app())
    connection = ws.connect()
    connection.reset()
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_peer_that_leaves_while_authentication_is_pending_is_never_registered(harness_factory):
    decisions = []
    app = App("slow-auth").include(chat_app)

    @app.authenticate
    def later(info):
        decisions.append(defer.Deferred())
        return decisions[-1]

    ws = harness_factory(app=app)
    connection = ws.connect()
    connection.reset()
    decisions[0].callback({"user": "ann"})
    ws.flush()
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_ping_timeout_drops_a_dead_peer_and_unregisters(harness_factory):
    ws = harness_factory(ping_interval=20.0, ping_timeout=10.0)
    connection = ws.connect()
    connection.client.deaf = True
    ws.advance(20.5)
    assert count(ws) == 1
    ws.advance(10.5)
    assert connection.disconnected
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


def test_a_peer_answering_pings_stays_open(harness_factory):
    ws = harness_factory(ping_interval=20.0, ping_timeout=10.0)
    connection = ws.connect()
    for _ in range(10):
        ws.advance(7)
    assert is_open(connection) and count(ws) == 1


# Origins and limits ------------------------------------------------------------------------------


def test_a_foreign_origin_is_refused_with_403_at_the_handshake_and_logged(ws):
    with capturedLogs() as events:
        connection = ws.connect(origin="http://evil.example")
    assert "403" in str(connection.client.close_reason)
    assert count(ws) == 0 and ws.runtime.limiter.total == 0
    assert any("--allowed-origin http://evil.example" in str(e.get("advice", "")) for e in events)


def test_the_servers_own_origin_and_no_origin_are_accepted(ws):
    ws.connect(origin=OWN_ORIGIN)
    ws.connect()
    assert count(ws) == 2


def test_a_configured_origin_pattern_is_accepted(harness_factory):
    ws = harness_factory(allowed_origin=("https://*.example.com",))
    ws.connect(origin="https://app.example.com")
    ws.connect(origin="https://example.com.evil.net")
    assert count(ws) == 1


def test_connections_past_the_per_ip_limit_are_refused_until_one_leaves(harness_factory):
    ws = harness_factory(max_connections_per_ip=2)
    first, _ = ws.connect(), ws.connect()
    refused = ws.connect()
    assert "503" in str(refused.client.close_reason) and count(ws) == 2
    other_address = ws.connect(peer_host="127.0.0.2")
    assert other_address.client.opened and count(ws) == 3
    first.reset()
    assert ws.connect().client.opened and count(ws) == 3
    assert ws.runtime.limiter.total == 3


def test_connections_past_the_total_limit_are_refused(harness_factory):
    ws = harness_factory(max_connections=1)
    ws.connect()
    refused = ws.connect(peer_host="127.0.0.9")
    assert "503" in str(refused.client.close_reason) and count(ws) == 1


def test_a_server_shutting_down_refuses_new_connections(ws):
    ws.runtime.accepting = False
    connection = ws.connect()
    assert "503" in str(connection.client.close_reason) and count(ws) == 0


def test_authentication_refusal_is_403_and_releases_the_slot(harness_factory):
    app = App("auth").include(chat_app)
    app.authenticate(lambda info: {"user": "ann"} if info["query"].get("token") == ["good"] else None)
    ws = harness_factory(app=app)
    refused = ws.connect(path="/?token=bad")
    assert "403" in str(refused.client.close_reason)
    assert count(ws) == 0 and ws.runtime.limiter.total == 0
    ws.connect(path="/?token=good")
    (client,) = ws.runtime.tracker.clients.values()
    assert client.attributes == {"user": "ann"}


def test_an_authenticator_that_crashes_refuses_and_releases_the_slot(harness_factory):
    app = App("crashing-auth").include(chat_app)

    @app.authenticate
    def crash(info):
        raise RuntimeError("auth backend down")

    ws = harness_factory(app=app)
    with capturedLogs():
        connection = ws.connect()
    assert not connection.client.opened and connection.disconnected
    assert count(ws) == 0 and ws.runtime.limiter.total == 0


# Backpressure ------------------------------------------------------------------------------------


def test_a_client_that_stops_reading_gets_a_queue_and_everything_when_it_reads_again(ws):
    connection = ws.connect()
    producer = connection.server_io.producer
    producer.pauseProducing()
    producer.pauseProducing()  # called once per write past the high-water mark: idempotent
    for n in range(5):
        ws.runtime.tracker.broadcast("chat", n)
    ws.flush()
    assert [m["type"] for m in connection.messages] == ["welcome"]
    producer.resumeProducing()
    ws.flush()
    assert [m["data"] for m in connection.messages[1:]] == [0, 1, 2, 3, 4]


def test_a_slow_consumer_past_its_queue_is_closed_with_4000(harness_factory):
    ws = harness_factory(max_queue_messages=3)
    connection, other = ws.connect(), ws.connect()
    connection.server_io.producer.pauseProducing()
    for n in range(4):
        ws.runtime.tracker.broadcast("chat", n)
    ws.flush()
    assert connection.client.close_code == 4000
    assert count(ws) == 1 and is_open(other)


def test_a_client_sending_too_fast_is_told_then_closed_with_4001(harness_factory):
    ws = harness_factory(rate_limit=1.0)
    connection = ws.connect()
    for _ in range(3):
        connection.send({"type": "ping"})
    assert last_error(connection)["data"]["code"] == "rate_limited"
    for _ in range(60):
        if connection.disconnected:
            break
        connection.send({"type": "ping"})
    assert connection.client.close_code == 4001 and count(ws) == 0


# Recovery over the WebSocket ------------------------------------------------------------------------


def test_a_reconnecting_client_resumes_with_what_it_missed(ws):
    first = ws.connect()
    epoch = first.messages[0]["data"]["epoch"]
    first.send({"type": "subscribe", "data": {"channel": "news"}})
    ws.runtime.tracker.publish("news", "seen")
    ws.flush()
    since = first.messages[-1]["pos"]
    first.reset()
    ws.runtime.tracker.publish("news", "missed")
    ws.runtime.tracker.broadcast("chat", "missed too")
    second = ws.connect()
    second.send({"type": "resume", "data": {"epoch": epoch, "since": since, "channels": ["news"]}, "id": 1})
    replayed = [m["data"] for m in second.messages[1:-1]]
    assert replayed == ["missed", "missed too"]
    # A resume with an id is a request: its answer is a reply (protocol.md, Requests).
    assert second.messages[-1]["type"] == "reply" and second.messages[-1]["re"] == "resume"
    assert second.messages[-1]["data"]["recovered"] is True


# Raw endpoints ------------------------------------------------------------------------------------------


def test_a_raw_endpoint_is_counted_and_speaks_its_own_protocol(harness_factory):
    ws = harness_factory(app=echo_app)
    raw = ws.connect(path="/echo")
    envelope = ws.connect()
    assert count(ws) == 2
    raw.send_raw(b"hello")
    assert raw.client.raw == [(b"hello", False)]
    envelope.send({"type": "chat", "data": "to everyone"})
    ws.flush()
    assert raw.client.raw == [(b"hello", False)]  # envelopes for everyone are not sent to it
    raw.client.sendClose(1000)
    raw.pump.flush()
    assert count(ws) == 1


def test_an_unknown_websocket_path_is_a_404(harness_factory):
    ws = harness_factory(app=echo_app)
    peer, pump, _ = raw_connect(ws, b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1:9002\r\n\r\n")
    pump.flush()
    assert peer.received.startswith(b"HTTP/1.1 404")
    assert count(ws) == 0
