"""
The ping wheel (appserver._web.pings): one timer for every connection's
pings, each connection pinged once per interval and dropped one timeout after
an unanswered ping; and, over real sockets, the frames a peer sees and the
pong read without Autobahn's parser.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from appserver._web.pings import MAX_TICK, PING_FRAME, Pings

from support.rawws import connect_raw
from support.wsclient import sleep, wait_until


class Peer:
    """
    What the wheel needs of a client, recording what it was asked to do.
    """

    def __init__(self, clock: Clock, answers: bool = True) -> None:
        self.clock = clock
        self.answers = answers
        self.ping_sent_at = 0.0
        self.ping_slot = -1
        self.pinged_at: list[float] = []
        self.timed_out_at: float | None = None

    def send_now(self, frame: bytes) -> None:
        assert frame == PING_FRAME
        self.pinged_at.append(self.clock.seconds())
        if self.answers:
            # The pong arrives a moment later.
            self.clock.callLater(0.01, self.pong)

    def pong(self) -> None:
        self.ping_sent_at = 0.0

    def ping_timed_out(self) -> None:
        # A real client is dropped at once: only the first call counts.
        if self.timed_out_at is None:
            self.timed_out_at = self.clock.seconds()


def run(clock: Clock, seconds: float, step: float = 0.05) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)


def test_each_connection_is_pinged_once_per_interval_starting_one_interval_in():
    clock = Clock()
    pings = Pings(clock, interval=20.0, timeout=10.0)
    clock.advance(3.3)
    peer = Peer(clock)
    pings.add(peer)
    run(clock, 100)
    first = peer.pinged_at[0] - 3.3
    assert 20.0 - MAX_TICK <= first <= 20.0 + MAX_TICK
    gaps = [b - a for a, b in zip(peer.pinged_at, peer.pinged_at[1:])]
    assert len(peer.pinged_at) == 5 and all(abs(gap - 20.0) < 0.06 for gap in gaps), peer.pinged_at
    assert peer.timed_out_at is None


def test_an_unanswered_ping_times_out_one_timeout_later():
    clock = Clock()
    pings = Pings(clock, interval=20.0, timeout=10.0)
    peer = Peer(clock, answers=False)
    pings.add(peer)
    run(clock, 45)
    (sent,) = peer.pinged_at
    assert peer.timed_out_at is not None
    assert 10.0 <= peer.timed_out_at - sent <= 10.0 + MAX_TICK + 0.06


def test_pings_are_spread_over_the_interval():
    clock = Clock()
    pings = Pings(clock, interval=20.0, timeout=10.0)
    peers = []
    for _ in range(2000):
        peer = Peer(clock)
        pings.add(peer)
        peers.append(peer)
        clock.advance(0.01)
    run(clock, 40, step=0.5)
    per_tick: dict[int, int] = {}
    for peer in peers:
        for at in peer.pinged_at:
            per_tick[int(at)] = per_tick.get(int(at), 0) + 1
    # 2000 connections opened over 20 s: about 100 pings a second, never
    # everyone at once.
    assert max(per_tick.values()) <= 200
    # Added over 20 s, watched 40 s more: two or three pings each.
    assert all(len(peer.pinged_at) in (2, 3) for peer in peers)


def test_a_clock_jump_pings_each_once_and_finds_the_dead():
    clock = Clock()
    pings = Pings(clock, interval=20.0, timeout=10.0)
    alive, dead = Peer(clock), Peer(clock, answers=False)
    pings.add(alive)
    pings.add(dead)
    clock.advance(21)       # one jump: every tick due runs, at the jump's time
    assert len(alive.pinged_at) == len(dead.pinged_at) == 1
    clock.advance(0.02)     # the pong
    clock.advance(11)
    assert dead.timed_out_at is not None and alive.timed_out_at is None


def test_the_timer_stops_when_nobody_is_left_and_starts_again():
    clock = Clock()
    pings = Pings(clock, interval=2.0, timeout=1.0)
    peer = Peer(clock)
    pings.add(peer)
    assert clock.getDelayedCalls()
    pings.remove(peer)
    run(clock, 3)
    assert not clock.getDelayedCalls() and len(pings) == 0
    pings.add(peer)
    run(clock, 3)
    assert len(peer.pinged_at) == 1


def test_interval_zero_pings_nobody():
    clock = Clock()
    pings = Pings(clock, interval=0.0, timeout=10.0)
    peer = Peer(clock)
    pings.add(peer)
    run(clock, 5)
    assert not peer.pinged_at and not clock.getDelayedCalls()


def test_timeout_zero_never_drops():
    clock = Clock()
    pings = Pings(clock, interval=1.0, timeout=0.0)
    peer = Peer(clock, answers=False)
    pings.add(peer)
    run(clock, 10)
    assert len(peer.pinged_at) == 1 and peer.timed_out_at is None


# Over real sockets ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_peer_answering_pings_stays_and_a_silent_one_is_dropped(reactor, server_factory):
    server = await server_factory(ping_interval=0.3, ping_timeout=0.3)
    peer = await connect_raw(reactor, server.port("ws"))
    answered = 0
    deadline = reactor.seconds() + 1.5
    for _ in range(300):
        if reactor.seconds() >= deadline:
            break
        pings = [frame for frame in peer.frames if frame[0] == 0x89]
        while answered < len(pings):
            assert pings[answered] == (0x89, b"")
            peer.send_pong()
            answered += 1
        await sleep(reactor, 0.02)
    assert answered >= 3
    assert server.tracker.client_count == 1
    (client,) = server.tracker.clients.values()
    assert client.ping_sent_at == 0.0 or reactor.seconds() - client.ping_sent_at < 0.3

    # Now silent: gone within interval + timeout (+ one tick, + slack).
    silent_since = reactor.seconds()
    await peer.closed.addTimeout(3, reactor)
    assert reactor.seconds() - silent_since <= 0.3 + 0.3 + 0.3 + 0.5
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_pong_split_across_reads_or_with_a_message_goes_through_autobahn(reactor, server_factory):
    server = await server_factory(ping_interval=0.2, ping_timeout=5.0)
    peer = await connect_raw(reactor, server.port("ws"))
    await wait_until(lambda: any(frame[0] == 0x89 for frame in peer.frames), reactor)
    (client,) = server.tracker.clients.values()
    assert client.ping_sent_at > 0
    # A pong written in two pieces: not the fast path, still counted.
    mask = b"\x01\x02\x03\x04"
    peer.transport.write(b"\x8a\x80")
    await sleep(reactor, 0.02)
    peer.transport.write(mask)
    await wait_until(lambda: client.ping_sent_at == 0.0, reactor)
    # A message proves the peer alive too.
    await wait_until(lambda: client.ping_sent_at > 0, reactor)
    payload = b'{"type":"ping","data":1,"id":1}'
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    peer.transport.write(bytes((0x81, 0x80 | len(payload))) + mask + masked)
    await wait_until(lambda: client.ping_sent_at == 0.0, reactor)
    peer.transport.loseConnection()
