"""
permessage-deflate (appserver._web.deflate, --permessage-deflate): what is
negotiated (on by default), that every recipient of a broadcast shares one compressed frame,
that small messages go uncompressed, and that a compression bomb closes its
connection with 1009 instead of growing memory.

Real sockets on 127.0.0.1: a raw client that reads the frames as they come
off the wire, so the compressed bit and the sizes are checked, not inferred.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib

import pytest_twisted

from appserver._core.envelope import Outgoing
from appserver._web.deflate import CLIENT_WINDOW_BITS, deflated_frame
from appserver._web.writes import WriteCoalescer

from support.rawws import RawClient, connect_raw
from support.wsclient import wait_until

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"
#: A chat text that compresses well, as a JSON ticker would.
TICKER = json.dumps([{"symbol": f"S{i % 7}", "bid": 101.25, "ask": 101.27, "size": 300} for i in range(12)])


async def connect(reactor, server, offer: str | None) -> RawClient:
    return await connect_raw(reactor, server.port("ws"), offer)


@pytest_twisted.ensureDeferred
async def test_browser_offer_is_accepted_with_a_bounded_client_window(reactor, server_factory):
    server = await server_factory(permessage_deflate=True)
    client = await connect(reactor, server, BROWSER_OFFER)
    extensions = client.headers["sec-websocket-extensions"]
    assert extensions.startswith("permessage-deflate")
    assert f"client_max_window_bits={CLIENT_WINDOW_BITS}" in extensions
    assert "client_no_context_takeover" in extensions
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_an_offer_that_cannot_bound_the_window_goes_uncompressed(reactor, server_factory):
    server = await server_factory(permessage_deflate=True)
    client = await connect(reactor, server, "permessage-deflate")
    assert "sec-websocket-extensions" not in client.headers
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_on_by_default_and_off_when_disabled(reactor, server_factory):
    server = await server_factory()
    client = await connect(reactor, server, BROWSER_OFFER)
    assert client.headers["sec-websocket-extensions"].startswith("permessage-deflate")
    client.transport.loseConnection()
    server = await server_factory(permessage_deflate=False)
    client = await connect(reactor, server, BROWSER_OFFER)
    assert "sec-websocket-extensions" not in client.headers
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_broadcast_is_compressed_once_and_small_messages_are_not(reactor, server_factory):
    server = await server_factory(permessage_deflate=True)
    compressed = [await connect(reactor, server, BROWSER_OFFER) for _ in range(3)]
    plain = await connect(reactor, server, None)
    tracker = server.tracker
    await wait_until(lambda: len(tracker.clients) == 4, reactor)

    tracker.broadcast("chat", TICKER)
    clients = [tracker.clients[c] for c in tracker.clients]
    deflating = [c for c in clients if c.deflate_bits is not None]
    assert len(deflating) == 3
    # Before the end of the turn: every compressing recipient holds the very
    # same compressed frame (compressed once), the plain one the plain frame.
    assert deflating[0].pending is deflating[1].pending is deflating[2].pending
    tracker.broadcast("chat", "hi")

    await wait_until(lambda: all(len(c.texts()) >= 3 for c in compressed + [plain]), reactor)
    for client in compressed:
        data_frames = [first for first, _ in client.frames if first & 0x0F == 0x1]
        # welcome (small, plain), the ticker (compressed), "hi" (small, plain)
        assert [bool(first & 0x40) for first in data_frames[-2:]] == [True, False]
        assert [m["data"] for m in client.texts()[-2:]] == [TICKER, "hi"]
        wire = len(client.frames[-2][1])
        assert wire < len(TICKER) / 2, wire
    assert not any(first & 0x40 for first, _ in plain.frames)
    assert [m["data"] for m in plain.texts()[-2:]] == [TICKER, "hi"]
    for client in compressed + [plain]:
        client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_compressed_messages_from_the_client_are_read(reactor, server_factory):
    server = await server_factory(permessage_deflate=True)
    client = await connect(reactor, server, BROWSER_OFFER)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -CLIENT_WINDOW_BITS)
    text = json.dumps({"type": "chat", "data": "x" * 500}).encode()
    body = compressor.compress(text) + compressor.flush(zlib.Z_SYNC_FLUSH)
    client.send_frame(body[:-4], compressed=True)
    await wait_until(lambda: any(m.get("type") == "chat" for m in client.texts()), reactor)
    chat = [m for m in client.texts() if m.get("type") == "chat"][0]
    assert chat["data"].endswith("x" * 500)
    # The inflate state is not kept between messages.
    (protocol_,) = [c.protocol for c in server.tracker.clients.values()]
    assert protocol_._perMessageCompress._decompressor is None
    client.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_a_compression_bomb_closes_with_1009_and_others_carry_on(reactor, server_factory):
    server = await server_factory(permessage_deflate=True, max_message_size=64 * 1024)
    bystander = await connect(reactor, server, BROWSER_OFFER)
    client = await connect(reactor, server, BROWSER_OFFER)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -CLIENT_WINDOW_BITS)
    # 50 MB of spaces inside a JSON string: about 50 KB compressed.
    bomb = compressor.compress(b'{"type":"chat","data":"' + b" " * 50_000_000 + b'"}')
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 65_535
    client.send_frame(bomb[:-4], compressed=True)
    await client.closed.addTimeout(10, reactor)
    closes = [payload for first, payload in client.frames if first & 0x0F == 0x8]
    assert closes and struct.unpack("!H", closes[0][:2])[0] == 1009
    server.tracker.broadcast("chat", "still here")
    await wait_until(lambda: any(m.get("data") == "still here" for m in bystander.texts()), reactor)
    bystander.transport.loseConnection()


def test_deflated_frame_round_trips_and_keeps_small_or_incompressible_payloads_plain():
    message = Outgoing(json.dumps({"type": "chat", "data": TICKER}).encode())
    frame = deflated_frame(message.frame, len(message.frame) - len(message), 15)
    assert frame[0] == 0xC1
    length = frame[1] & 0x7F
    body = frame[4:] if length == 126 else frame[2:]
    assert zlib.decompressobj(-15).decompress(body + b"\x00\x00\xff\xff") == message.payload

    small = Outgoing(b'{"type":"chat","data":"hi"}')
    assert deflated_frame(small.frame, len(small.frame) - len(small), 15) is small.frame
    noise = Outgoing(os.urandom(600))  # what compression cannot shrink
    assert deflated_frame(noise.frame, len(noise.frame) - len(noise), 15) is noise.frame


def test_the_coalescer_compresses_each_message_once_per_turn_and_window():
    from twisted.internet.task import Clock
    clock = Clock()
    coalescer = WriteCoalescer(clock)
    first = Outgoing(json.dumps({"type": "chat", "data": TICKER}).encode())
    second = Outgoing(json.dumps({"type": "chat", "data": TICKER + "!"}).encode())
    a = coalescer.deflated(first, 15)
    assert coalescer.deflated(second, 15) is not a
    assert coalescer.deflated(first, 15) is a
    assert coalescer.deflated(first, 12) is not a
    clock.advance(0)
    # A new turn compresses again: nothing is kept past it.
    assert coalescer.deflated(first, 15) is not a
    clock.advance(0)
    assert not coalescer._deflated
