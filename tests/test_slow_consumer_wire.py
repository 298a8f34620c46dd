"""
What a slow consumer actually sees on the wire (issue 18, item 7), with a
real server on a loopback socket and a client that stops reading: the 4000
close frame waits behind everything the client did not read, the server
cuts the connection when the close handshake times out, and the client
sees the connection reset (1006), never the 4000. docs/reliability.md must
say so, and why recovery still covers it.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from appserver._core.client import SLOW_CONSUMER_CLOSE_CODE
from support.wsclient import sleep, wait_until
from test_slow_consumer import CLOSE_HANDSHAKE_TIMEOUT, NonReadingClient, parse_frames, server_side, \
    shrink_send_buffer

DOCS = Path(__file__).resolve().parent.parent / "docs"


async def read_to_the_end(client: NonReadingClient, reactor, timeout: float = 5.0) -> tuple[list, str]:
    """
    Read everything the kernel kept; how the connection ended: C{"reset"}
    or C{"eof"} (C{"open"} if neither within C{timeout}).
    """
    frames: list = []
    buffer = client.leftover
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        try:
            chunk = client.sock.recv(1 << 20)
        except BlockingIOError:
            await sleep(reactor, 0.005)
            continue
        except ConnectionResetError:
            return frames, "reset"
        if not chunk:
            return frames, "eof"
        buffer += chunk
        frames.extend(parse_frames(buffer))
    return frames, "open"


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_sees_1006_not_the_4000_close_frame(server_factory, reactor):
    server = await server_factory(max_queue_messages=10, max_queue_bytes=8 * 1024)
    tracker = server.tracker
    slow = NonReadingClient(server.port("ws"))
    try:
        await slow.handshake(reactor)
        await wait_until(lambda: tracker.client_count == 1, reactor)
        slow_client = server_side(tracker, 0)
        slow.send({"type": "subscribe", "data": {"channel": "news"}})
        await wait_until(lambda: tracker.subscriber_count("news") == 1, reactor)
        shrink_send_buffer(slow_client)
        for n in range(2000):
            tracker.publish("news", "w" * 500)
            if slow_client.closed:
                break
            if n % 10 == 9:
                await sleep(reactor, 0)
        assert slow_client.closed, "the queue never overflowed"
        # The server gives up on the close handshake and cuts the connection.
        await wait_until(lambda: tracker.client_count == 0, reactor, timeout=CLOSE_HANDSHAKE_TIMEOUT + 1.5)
        await sleep(reactor, 0.1)
        frames, ending = await read_to_the_end(slow, reactor)
        close_frames = [payload for opcode, payload in frames if opcode == 8]
        assert not any(payload[:2] == SLOW_CONSUMER_CLOSE_CODE.to_bytes(2, "big") for payload in close_frames)
        assert ending in ("reset", "eof") and not close_frames      # what a browser reports as 1006
    finally:
        slow.close()


def test_reliability_doc_says_what_a_slow_consumer_sees_and_why_recovery_covers_it():
    text = " ".join((DOCS / "reliability.md").read_text().split())
    assert "1006" in text and "stops reading" in text
    assert "4000 only" in text
