"""
Connections broken on purpose, on a real server over real sockets: a TCP
reset in the middle of a stream, a connection that silently stops answering
(no FIN), a gap older than the history, a client from another epoch, and an
Ajax session that expires or is closed. In each case the client reconnects,
sends C{resume} and gets every message it missed exactly once, in order, or
is told C{recovered: false}.

The clients are L{support.recovering_client}'s, which implement the
protocol's resume as js/appserver.js does; the faults come from
L{support.proxy}.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import LoopingCall

from support.proxy import start_proxy
from support.deferreds import fired
from support.recovering_client import RecoveringAjax, RecoveringWebSocket
from support.wsclient import next_message, open_client, wait_until

#: Short liveness settings, so a dead peer is found in well under a second.
PING_INTERVAL = 0.3
PING_TIMEOUT = 0.3
#: Autobahn runs its ping timers in 0.2 s buckets; plus scheduling slack.
DETECTION_MARGIN = 0.6


@pytest.fixture
def proxies(reactor):
    started = []

    async def start(port):
        proxy = await start_proxy(reactor, port)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        pytest_twisted.blockon(defer.ensureDeferred(proxy.stop()))


class Publisher:
    """
    Publishes C{count} numbered messages on a channel, one every
    C{interval} seconds, calling C{on_tick} after each.
    """

    def __init__(self, tracker, channel, count, interval=0.005, on_tick=None):
        self.tracker = tracker
        self.channel = channel
        self.count = count
        self.sent = 0
        self.positions = []
        self.on_tick = on_tick
        self.loop = LoopingCall(self._tick)
        self.interval = interval

    def start(self):
        return self.loop.start(self.interval)

    def _tick(self):
        self.sent += 1
        self.positions.append(fired(self.tracker.publish(self.channel, self.sent)).pos)
        if self.on_tick is not None:
            self.on_tick()
        if self.sent >= self.count:
            self.loop.stop()

    def stop(self):
        if self.loop.running:
            self.loop.stop()


def publish(tracker, channel, values):
    return [fired(tracker.publish(channel, value)).pos for value in values]


# TCP reset ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_reset_mid_stream_is_recovered_exactly_once_in_order_with_the_count_exact(
        server_factory, proxies, clients, reactor):
    # A reset is seen at once by both ends: no pings needed (and none to
    # time out on a busy test machine).
    server = await server_factory()
    tracker = server.tracker
    proxy = await proxies(server.port("ws"))
    client = clients(RecoveringWebSocket(reactor, proxy.url(), channels=["ticks"]))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)

    counts = []
    publisher = Publisher(tracker, "ticks", 300, on_tick=lambda: counts.append(tracker.client_count))
    done = publisher.start()
    await client.wait_for(lambda: len(client.delivered) >= 80, what="80 messages before the reset")
    assert proxy.reset() == 1
    await done
    await client.wait_for(lambda: len(client.delivered) == 300, what="all 300 messages")

    assert client.data("message") == list(range(1, 301))
    assert client.positions == publisher.positions
    assert len(client.received) == len(set(client.received)), "the server sent a message twice"
    assert [r["recovered"] for r in client.resumed] == [True], client.describe()
    assert client.opened == 2 and proxy.accepted == 2
    # The old connection was counted out before the new one came in: never two.
    assert set(counts) <= {0, 1} and 0 in counts
    assert tracker.client_count == 1 and tracker.subscriber_count("ticks") == 1


@pytest_twisted.ensureDeferred
async def test_a_client_side_abort_mid_stream_is_recovered_exactly_once(server_factory, clients, reactor):
    server = await server_factory()
    tracker = server.tracker
    client = clients(RecoveringWebSocket(reactor, server.ws_url, channels=["ticks"]))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)

    publisher = Publisher(tracker, "ticks", 200)
    done = publisher.start()
    await client.wait_for(lambda: len(client.delivered) >= 50, what="50 messages before the abort")
    client.drop()
    await done
    await client.wait_for(lambda: len(client.delivered) == 200, what="all 200 messages")

    assert client.data("message") == list(range(1, 201))
    assert len(client.received) == len(set(client.received))
    assert [r["recovered"] for r in client.resumed] == [True]
    assert tracker.client_count == 1


@pytest_twisted.ensureDeferred
async def test_broadcasts_and_channel_messages_interleaved_are_recovered_in_position_order(
        server_factory, proxies, clients, reactor):
    server = await server_factory()
    tracker = server.tracker
    proxy = await proxies(server.port("ws"))
    client = clients(RecoveringWebSocket(reactor, proxy.url(), channels=["ticks"], auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    tracker.broadcast("chat", "before")
    await client.wait_for(lambda: len(client.delivered) == 1)

    proxy.reset()
    await client.wait_for(lambda: not client.connected, what="the reset seen by the client")
    await wait_until(lambda: tracker.client_count == 0, reactor)
    missed = []
    for n in range(5):
        missed.append(fired(tracker.broadcast("chat", f"missed {n}")).pos)
        missed.append(fired(tracker.publish("ticks", n)).pos)
    client.reconnect()
    await client.wait_for(lambda: client.resumed, what="resumed")
    # Live traffic between the welcome and the end of the replay is held
    # back and delivered after it, in order.
    live = fired(tracker.broadcast("chat", "after")).pos

    await client.wait_for(lambda: client.highest == live)
    assert client.positions[1:] == missed + [live]
    assert client.resumed[0]["recovered"] is True


# Silent drop: no FIN, no RST ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_silently_dropped_connection_is_found_by_pings_and_counted_out_everywhere(
        server_factory, proxies, clients, reactor):
    server = await server_factory(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
    tracker = server.tracker
    proxy = await proxies(server.port("ws"))
    watcher = await open_client(server.ws_url, reactor)
    watcher.sendMessage(b'{"type":"join","data":{"room":"lobby","username":"watcher"}}')
    # Client-side pings slower than the server's: the server must find the
    # dead connection on its own, before the client gives up on it.
    victim = clients(RecoveringWebSocket(reactor, proxy.url(), channels=["ticks"],
                                         ping_interval=0.6, ping_timeout=1.2))
    await victim.start()
    victim.send("join", {"room": "lobby", "username": "victim"})
    await wait_until(lambda: fired(tracker.room_members("lobby")) == ["victim", "watcher"], reactor)
    (old,) = [c for c in tracker.clients.values() if "ticks" in c.channels]

    assert proxy.freeze() == 1
    frozen_at = reactor.seconds()
    await wait_until(lambda: tracker.get(old.client_id) is None, reactor,
                     timeout=PING_INTERVAL + PING_TIMEOUT + DETECTION_MARGIN, step=0.005)
    detected_after = reactor.seconds() - frozen_at

    assert detected_after <= PING_INTERVAL + PING_TIMEOUT + DETECTION_MARGIN
    assert victim.opened == 1, "the client reconnected before the server noticed"
    assert tracker.client_count == 1
    assert tracker.subscriber_count("ticks") == 0 and "ticks" not in tracker.channels
    assert fired(tracker.room_members("lobby")) == ["watcher"]
    leave = await next_message(watcher, reactor, "leave")
    assert leave["data"] == {"room": "lobby", "username": "victim"}
    watcher.sendClose()


@pytest_twisted.ensureDeferred
async def test_after_a_silent_drop_the_client_reconnects_and_recovers(server_factory, proxies, clients, reactor):
    server = await server_factory(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT)
    tracker = server.tracker
    proxy = await proxies(server.port("ws"))
    client = clients(RecoveringWebSocket(reactor, proxy.url(), channels=["ticks"],
                                         ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    before = publish(tracker, "ticks", range(1, 6))
    await client.wait_for(lambda: len(client.delivered) == 5)

    proxy.freeze()
    during = publish(tracker, "ticks", range(6, 11))
    await client.wait_for(lambda: client.opened >= 2 and client.resumed, timeout=3.0,
                          what="reconnected through the proxy and resumed")
    await client.wait_for(lambda: len(client.delivered) == 10)

    assert client.positions == before + during
    assert client.data("message") == list(range(1, 11))
    assert client.resumed[0]["recovered"] is True
    assert len(client.received) == len(set(client.received))
    await wait_until(lambda: tracker.client_count == 1, reactor, timeout=2.0)


# When recovery is impossible -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_gap_longer_than_the_history_is_not_recovered(server_factory, clients, reactor):
    server = await server_factory(history_size=5)
    tracker = server.tracker
    client = clients(RecoveringWebSocket(reactor, server.ws_url, channels=["ticks"], auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    publish(tracker, "ticks", [1])
    await client.wait_for(lambda: len(client.delivered) == 1)

    client.drop()
    await client.wait_for(lambda: not client.connected)
    publish(tracker, "ticks", range(2, 12))     # ten missed, five kept
    client.reconnect()
    await client.wait_for(lambda: client.resumed)

    (resumed,) = client.resumed
    assert resumed["recovered"] is False
    assert resumed["epoch"] == tracker.epoch and resumed["position"] == tracker.position


@pytest_twisted.ensureDeferred
async def test_a_gap_within_the_history_is_recovered(server_factory, clients, reactor):
    server = await server_factory(history_size=10)
    tracker = server.tracker
    client = clients(RecoveringWebSocket(reactor, server.ws_url, channels=["ticks"], auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    client.drop()
    await client.wait_for(lambda: not client.connected)
    publish(tracker, "ticks", range(1, 11))     # exactly the history's size
    client.reconnect()
    await client.wait_for(lambda: client.resumed)

    assert client.resumed[0]["recovered"] is True
    assert client.data("message") == list(range(1, 11))


@pytest_twisted.ensureDeferred
async def test_a_position_from_another_epoch_is_not_recovered_and_the_client_starts_over(
        server_factory, clients, reactor):
    server = await server_factory()
    tracker = server.tracker
    client = clients(RecoveringWebSocket(reactor, server.ws_url, channels=["ticks"], auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    publish(tracker, "ticks", [1, 2])
    await client.wait_for(lambda: len(client.delivered) == 2)

    client.drop()
    await client.wait_for(lambda: not client.connected)
    client.epoch = "an-epoch-of-another-server"
    client.reconnect()
    await client.wait_for(lambda: client.resumed)
    later = publish(tracker, "ticks", [3])

    (resumed,) = client.resumed
    assert resumed["recovered"] is False and resumed["epoch"] == tracker.epoch
    await client.wait_for(lambda: client.highest == later[0])
    assert client.epoch == tracker.epoch
    assert client.data("message") == [1, 2, 3]


# Ajax long poll, JSON and JSONP ----------------------------------------------------------


@pytest.mark.parametrize("jsonp", [False, True], ids=["json", "jsonp"])
@pytest.mark.parametrize("ending", ["expired", "closed"])
@pytest_twisted.ensureDeferred
async def test_an_ajax_client_recovers_what_it_missed_in_a_new_session(
        server_factory, clients, reactor, jsonp, ending):
    server = await server_factory(session_idle_timeout=0.3, poll_timeout=1.0)
    tracker = server.tracker
    client = clients(RecoveringAjax(reactor, server.ajax_url, channels=["ticks"], jsonp=jsonp,
                                    auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    before = publish(tracker, "ticks", [1, 2, 3])
    await client.wait_for(lambda: len(client.delivered) == 3)
    first_session = client.session
    first_client_id = client.client_id

    if ending == "expired":
        client.pause_polling()
        missed = publish(tracker, "ticks", [4, 5])
        missed.append(fired(tracker.broadcast("chat", "while away")).pos)
        await wait_until(lambda: tracker.get(first_client_id) is None, reactor, timeout=2.0)
        client.resume_polling()                   # 410 unknown_session
        await client.wait_for(lambda: not client.connected, what="the expiry seen by the client")
        assert client.closes[-1][0] == 410
    else:
        session = server.runtime.sessions.find(first_session)
        await wait_until(lambda: session.waiting is not None, reactor)
        session.close(1001, "closed by the test")
        await client.wait_for(lambda: not client.connected, what="the close seen by the poll")
        assert client.closes[-1] == (1001, "closed by the test")
        missed = publish(tracker, "ticks", [4, 5])
        missed.append(fired(tracker.broadcast("chat", "while away")).pos)
    assert tracker.client_count == 0

    client.reconnect()
    await client.wait_for(lambda: client.resumed, what="resumed over the new session")
    await client.wait_for(lambda: len(client.delivered) == 6)

    assert client.sessions[1] != first_session
    assert client.positions == before + missed
    assert client.data() == [1, 2, 3, 4, 5, "while away"]
    assert client.resumed[0]["recovered"] is True
    assert len(client.received) == len(set(client.received))
    assert tracker.client_count == 1 and tracker.count_by_transport()["ajax"] == 1


@pytest.mark.parametrize("jsonp", [False, True], ids=["json", "jsonp"])
@pytest_twisted.ensureDeferred
async def test_an_ajax_gap_longer_than_the_history_is_not_recovered(server_factory, clients, reactor, jsonp):
    server = await server_factory(history_size=2, poll_timeout=1.0)
    tracker = server.tracker
    client = clients(RecoveringAjax(reactor, server.ajax_url, channels=["ticks"], jsonp=jsonp,
                                    auto_reconnect=False))
    await client.start()
    await wait_until(lambda: tracker.subscriber_count("ticks") == 1, reactor)
    server.runtime.sessions.find(client.session).close(1001, "closed by the test")
    await client.wait_for(lambda: not client.connected)
    publish(tracker, "ticks", range(5))
    client.reconnect()
    await client.wait_for(lambda: client.resumed)
    assert client.resumed[0]["recovered"] is False
