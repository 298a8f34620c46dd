"""
A client that stops reading, on a real server over real sockets: it must
not hold back anyone else or grow the server's memory, and its channel's
policy decides what happens to it (close 4000, drop the oldest, or conflate
to the newest value per key).

The non-reading client is a raw socket with a small receive buffer that
completes the WebSocket handshake and then never reads again. The kernel
buffers between it and the server are bounded by the operating system (and
hold megabytes on loopback); tests that need the server's own bound reached
quickly shrink the send buffer of the server's side of that one socket.
What is asserted is the server's own memory for the client: its queue
(C{max_queue_messages}, C{max_queue_bytes}) and the Twisted transport
buffer, which stops growing once the backpressure producer is paused.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct

import orjson
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._core.client import SLOW_CONSUMER_CLOSE_CODE
from support.wsclient import sleep, wait_until
from support.deferreds import fired

#: Twisted pauses a transport's producer past this many buffered bytes.
TRANSPORT_HIGH_WATER = 64 * 1024
#: Autobahn's close handshake timeout set by the server's factory.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


def upgrade_request(port: int, path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    """
    One client-to-server frame (clients must mask).
    """
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    length = len(payload)
    if length < 126:
        header += bytes([0x80 | length])
    elif length < 65536:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        header += bytes([0x80 | 127]) + struct.pack("!Q", length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def parse_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """
    Take every complete server frame (unmasked) off the front of C{buffer}.
    """
    frames = []
    while len(buffer) >= 2:
        opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(buffer) < 4:
                break
            (length,) = struct.unpack("!H", buffer[2:4])
            offset = 4
        elif length == 127:
            if len(buffer) < 10:
                break
            (length,) = struct.unpack("!Q", buffer[2:10])
            offset = 10
        if len(buffer) < offset + length:
            break
        frames.append((opcode, bytes(buffer[offset:offset + length])))
        del buffer[:offset + length]
    return frames


class StreamReader(Protocol):
    """
    A lightweight reading client: handshake, then every text frame's
    envelope, as fast as they come.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.buffer = bytearray()
        self.upgraded = False
        self.envelopes: list[dict] = []
        self.close_code: int | None = None

    def connectionMade(self) -> None:
        self.transport.write(upgrade_request(self.port))

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buffer.startswith(b"HTTP/1.1 101"), bytes(self.buffer[:80])
            del self.buffer[:end + 4]
            self.upgraded = True
        for opcode, payload in parse_frames(self.buffer):
            if opcode == 1:
                self.envelopes.append(orjson.loads(payload))
            elif opcode == 8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else None

    def positions(self, message_type: str) -> list[int]:
        return [e["pos"] for e in self.envelopes if e.get("type") == message_type]


class NonReadingClient:
    """
    A raw socket with a small receive buffer: completes the handshake,
    sends what it is told to, and reads nothing more until L{read_all}.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.leftover = bytearray()

    async def handshake(self, reactor) -> None:
        self.sock.sendall(upgrade_request(self.port))
        received = bytearray()
        for _ in range(500):
            try:
                received += self.sock.recv(65536)
            except BlockingIOError:
                pass
            if b"\r\n\r\n" in received:
                break
            await sleep(reactor, 0.01)
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        self.leftover += rest

    def send(self, envelope: dict) -> None:
        self.sock.sendall(masked_frame(json.dumps(envelope).encode()))

    async def read_all(self, reactor, until, timeout: float = 5.0) -> list[tuple[int, bytes]]:
        """
        Start reading at last: every frame until C{until(frames)} holds.
        """
        frames: list[tuple[int, bytes]] = []
        buffer = self.leftover
        deadline = reactor.seconds() + timeout
        while not until(frames) and reactor.seconds() < deadline:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                await sleep(reactor, 0.005)
                continue
            if not chunk:
                break
            buffer += chunk
            frames.extend(parse_frames(buffer))
        return frames

    def close(self) -> None:
        self.sock.close()


def server_side(tracker, count_before: int):
    """
    The tracker's client for the newest connection.
    """
    return list(tracker.clients.values())[count_before]


def buffered_bytes(transport) -> int:
    """
    What Twisted holds for a TCP transport and has not written to the
    kernel yet.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def shrink_send_buffer(client) -> None:
    client.protocol.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)


class MemoryWatch:
    """
    The largest queue and transport buffer seen for one client.
    """

    def __init__(self, client) -> None:
        self.client = client
        self.transport = client.protocol.transport
        self.queue_messages = self.queue_bytes = self.transport_bytes = 0

    def sample(self) -> None:
        queue = self.client.queue
        if queue is not None:
            self.queue_messages = max(self.queue_messages, len(queue))
            self.queue_bytes = max(self.queue_bytes, queue.byte_size)
        self.transport_bytes = max(self.transport_bytes, buffered_bytes(self.transport))


async def readers(reactor, port: int, count: int) -> list[StreamReader]:
    made = [StreamReader(port) for _ in range(count)]
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await defer.gatherResults([connectProtocol(endpoint, reader) for reader in made])
    return made


def close_all(made: list[StreamReader]) -> None:
    for reader in made:
        if reader.transport is not None:
            reader.transport.abortConnection()


# Disconnect: the default policy -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_non_reading_client_does_not_hold_back_a_hundred_others(server_factory, reactor):
    max_messages, max_bytes = 50, 16 * 1024
    server = await server_factory(max_queue_messages=max_messages, max_queue_bytes=max_bytes)
    tracker, port = server.tracker, server.port("ws")
    slow = NonReadingClient(port)
    await slow.handshake(reactor)
    await wait_until(lambda: tracker.client_count == 1, reactor)
    slow_client = server_side(tracker, 0)
    shrink_send_buffer(slow_client)
    others = await readers(reactor, port, 100)
    await wait_until(lambda: tracker.client_count == 101 and all(r.envelopes for r in others), reactor)
    watch = MemoryWatch(slow_client)
    padding = "x" * 300
    sent, largest_frame = [], 0

    try:
        for n in range(400):
            message = fired(tracker.broadcast("tick", {"n": n, "pad": padding}))
            sent.append(message.pos)
            largest_frame = max(largest_frame, len(message.frame))
            watch.sample()
            if n % 10 == 9:
                await sleep(reactor, 0)    # a stream in bursts of ten
        # A bounded wait, not a speed claim: the readers are never held back.
        await wait_until(lambda: all(len(r.positions("tick")) == len(sent) for r in others), reactor, timeout=5)

        for reader in others:
            assert reader.positions("tick") == sent
        assert slow_client.closed and slow_client.protocol.localCloseCode == SLOW_CONSUMER_CLOSE_CODE
        assert watch.queue_messages <= max_messages and watch.queue_bytes <= max_bytes
        # The transport stops growing at the high-water mark: one frame may
        # cross it, then only the close frame is added.
        assert watch.transport_bytes <= TRANSPORT_HIGH_WATER + largest_frame + 128
    finally:
        slow.close()
        close_all(others)
    await wait_until(lambda: tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_slow_consumer_is_sent_4000_and_dropped_when_the_close_handshake_times_out(
        server_factory, reactor):
    server = await server_factory(max_queue_messages=10, max_queue_bytes=8 * 1024)
    tracker = server.tracker
    slow = NonReadingClient(server.port("ws"))
    try:
        await slow.handshake(reactor)
        await wait_until(lambda: tracker.client_count == 1, reactor)
        slow_client = server_side(tracker, 0)
        slow.send({"type": "join", "data": {"room": "lobby", "username": "slowpoke"}})
        slow.send({"type": "subscribe", "data": {"channel": "news"}})
        await wait_until(lambda: tracker.subscriber_count("news") == 1 and fired(tracker.room_size("lobby")) == 1,
                         reactor)
        shrink_send_buffer(slow_client)
        for n in range(2000):
            tracker.publish("news", "w" * 500)
            if slow_client.closed:
                break
            if n % 10 == 9:
                await sleep(reactor, 0)
        assert slow_client.closed, "the queue never overflowed"
        closed_at = reactor.seconds()

        # The close frame (4000 and its reason) is written even though the
        # client cannot read it...
        protocol = slow_client.protocol
        closing = bytes(protocol.transport._tempDataBuffer[-1])
        assert closing[0] == 0x88 and struct.unpack("!H", closing[2:4])[0] == SLOW_CONSUMER_CLOSE_CODE
        assert b"slow consumer" in closing
        # ...and the server drops the connection when the close handshake times out.
        await wait_until(lambda: tracker.get(slow_client.client_id) is None, reactor,
                         timeout=CLOSE_HANDSHAKE_TIMEOUT + 1.5, step=0.05)
        assert reactor.seconds() - closed_at <= CLOSE_HANDSHAKE_TIMEOUT + 1.5
        assert tracker.client_count == 0
        assert tracker.subscriber_count("news") == 0 and fired(tracker.room_size("lobby")) == 0
        assert server.runtime.limiter.total == 0
    finally:
        slow.close()


@pytest_twisted.ensureDeferred
async def test_the_server_side_memory_of_a_non_reading_client_is_bounded_whatever_the_stream(
        server_factory, reactor):
    """
    No shrinking here: the kernel absorbs what it can (megabytes), then the
    server's own buffers stop at their bounds, with drop-oldest so the
    client is never closed and the stream could go on forever.
    """
    max_messages, max_bytes = 100, 64 * 1024
    server = await server_factory(max_queue_messages=max_messages, max_queue_bytes=max_bytes,
                                  queue_policy="drop-oldest")
    tracker = server.tracker
    slow = NonReadingClient(server.port("ws"))
    try:
        await slow.handshake(reactor)
        await wait_until(lambda: tracker.client_count == 1, reactor)
        slow_client = server_side(tracker, 0)
        watch = MemoryWatch(slow_client)
        payload = "y" * 1024
        largest_frame = 0
        for n in range(20_000):
            message = fired(tracker.broadcast("bulk", payload))
            largest_frame = max(largest_frame, len(message.frame))
            watch.sample()
            if slow_client.queue is not None and slow_client.queue.dropped > 2 * max_messages:
                break
            await sleep(reactor, 0)
        else:
            pytest.fail("the kernel took 20 MB without the server ever queueing")

        assert not slow_client.closed and tracker.client_count == 1
        assert watch.queue_messages <= max_messages and watch.queue_bytes <= max_bytes
        assert watch.transport_bytes <= TRANSPORT_HIGH_WATER + largest_frame
    finally:
        slow.close()
    await wait_until(lambda: tracker.client_count == 0, reactor)


# Conflate and drop-oldest, chosen per channel by the application --------------------------------


def ticker_app(policy: str) -> App:
    app = App("ticker").include(chat_app)
    app.channel_policy("prices", policy)
    return app


@pytest_twisted.ensureDeferred
async def test_a_conflated_channel_keeps_one_message_per_key_and_the_slow_client_gets_the_latest(
        server_factory, reactor):
    server = await server_factory(app=ticker_app("conflate"), max_queue_messages=50, max_queue_bytes=16 * 1024)
    tracker = server.tracker
    slow = NonReadingClient(server.port("ws"))
    try:
        await slow.handshake(reactor)
        await wait_until(lambda: tracker.client_count == 1, reactor)
        slow_client = server_side(tracker, 0)
        slow.send({"type": "subscribe", "data": {"channel": "prices"}})
        await wait_until(lambda: tracker.subscriber_count("prices") == 1, reactor)
        shrink_send_buffer(slow_client)
        symbols = [f"S{i}" for i in range(10)]
        latest: dict[str, int] = {}
        for n in range(3000):
            symbol = symbols[n % len(symbols)]
            tracker.publish("prices", {"symbol": symbol, "n": n, "pad": "z" * 200}, key=symbol)
            latest[symbol] = n
            queue = slow_client.queue
            if queue is not None:
                assert len(queue) <= len(symbols)
            if n % 10 == 9:
                await sleep(reactor, 0)

        queue = slow_client.queue
        assert queue is not None and slow_client.paused, "the stream never backed up"
        queued = [json.loads(message.payload)["data"] for _, message in queue.pending()]
        assert sorted(item["symbol"] for item in queued) == sorted(symbols)    # one per key
        assert all(item["n"] == latest[item["symbol"]] for item in queued)     # the newest one
        assert not slow_client.closed and queue.conflated > 0

        # Reading again, the slow client ends with the current value of every key.
        frames = await slow.read_all(reactor, lambda frames: _last_values(frames) == latest)
        assert _last_values(frames) == latest
        assert tracker.client_count == 1
    finally:
        slow.close()


def _last_values(frames):
    values = {}
    for opcode, payload in frames:
        if opcode == 1:
            envelope = json.loads(payload)
            if envelope.get("channel") == "prices":
                values[envelope["data"]["symbol"]] = envelope["data"]["n"]
    return values


@pytest_twisted.ensureDeferred
async def test_a_drop_oldest_channel_keeps_the_newest_messages_and_the_client(server_factory, reactor):
    max_messages = 20
    server = await server_factory(app=ticker_app("drop-oldest"), max_queue_messages=max_messages,
                                  max_queue_bytes=1024 * 1024)
    tracker = server.tracker
    slow = NonReadingClient(server.port("ws"))
    try:
        await slow.handshake(reactor)
        await wait_until(lambda: tracker.client_count == 1, reactor)
        slow_client = server_side(tracker, 0)
        slow.send({"type": "subscribe", "data": {"channel": "prices"}})
        await wait_until(lambda: tracker.subscriber_count("prices") == 1, reactor)
        shrink_send_buffer(slow_client)
        for n in range(1000):
            tracker.publish("prices", {"n": n, "pad": "z" * 200})
            if n % 10 == 9:
                await sleep(reactor, 0)

        queue = slow_client.queue
        assert queue is not None and len(queue) == max_messages
        assert [json.loads(m.payload)["data"]["n"] for _, m in queue.pending()] == list(range(980, 1000))
        assert queue.dropped > 0 and not slow_client.closed
    finally:
        slow.close()
