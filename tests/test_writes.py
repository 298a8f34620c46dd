"""
The WebSocket write path: per-turn coalescing, and the direct send that only
plain TCP transports with an empty buffer get.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from appserver._web.writes import WriteCoalescer, has_backlog, send_now


class Flushable:
    def __init__(self):
        self.flushes = 0

    def flush(self):
        self.flushes += 1


def test_clients_added_in_one_turn_are_flushed_once_at_its_end():
    clock = Clock()
    coalescer = WriteCoalescer(clock)
    first, second = Flushable(), Flushable()
    coalescer.add(first)
    coalescer.add(second)
    assert (first.flushes, second.flushes) == (0, 0)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert (first.flushes, second.flushes) == (1, 1)
    assert clock.getDelayedCalls() == []


def test_a_client_added_after_a_flush_gets_a_new_turn():
    clock = Clock()
    coalescer = WriteCoalescer(clock)
    client = Flushable()
    coalescer.add(client)
    clock.advance(0)
    coalescer.add(client)
    clock.advance(0)
    assert client.flushes == 2


def test_transports_other_than_plain_tcp_always_use_write():
    transport = StringTransport()
    send_now(transport, b"frame-1")
    send_now(transport, b"frame-2")
    assert transport.value() == b"frame-1frame-2"


def test_transports_other_than_plain_tcp_are_never_reported_behind():
    transport = StringTransport()
    transport.write(b"x" * 100_000)
    assert not has_backlog(transport)


def test_connections_given_the_same_frames_share_one_joined_buffer():
    coalescer = WriteCoalescer(Clock())
    first, second = b"frame-1", b"frame-2"
    joined = coalescer.join([first, second])
    assert joined == b"frame-1frame-2"
    assert coalescer.join([first, second]) is joined


def test_different_frames_are_joined_anew():
    coalescer = WriteCoalescer(Clock())
    coalescer.join([b"a", b"b"])
    assert coalescer.join([b"a", b"c"]) == b"ac"
    assert coalescer.join([b"only"]) == b"only"
