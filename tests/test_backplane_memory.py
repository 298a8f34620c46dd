"""
The backplane interface and its in-memory implementation: a single node
behaves exactly as a tracker without any backplane (delivery inside the
call, positions from the node's stream log, Deferreds that have fired by
the time the call returns), and the tracker sends what spans nodes through
the backplane (checked with a recording double of a clustered one).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

from appserver._core.backplane import IBackplane, ILocalNode
from appserver._core.client import Client
from appserver._core.envelope import Outgoing
from appserver._core.memory import MemoryBackplane
from appserver._server.runtime import make_backplane
from appserver._server.settings import Settings
from appserver._core.streamlog import GLOBAL_STREAM
from appserver._core.tracker import ClientTracker, TrackerLimits
from support.deferreds import fired


class RecordingClient(Client):
    transport = "websocket"
    __slots__ = ("written",)

    def __init__(self, tracker: ClientTracker) -> None:
        super().__init__(peer="test", limits=tracker.limits, events=tracker.events)
        self.written: list[Outgoing] = []

    def write(self, message: Outgoing) -> None:
        self.written.append(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def types(self) -> list[str]:
        import json
        return [json.loads(m.payload)["type"] for m in self.written]


class RecordingAjaxClient(RecordingClient):
    transport = "ajax"
    __slots__ = ()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_tracker(backplane: Any = None, **limits: Any) -> ClientTracker:
    return ClientTracker(TrackerLimits(**limits), clock=Clock(), epoch="e1", backplane=backplane)


# The interface ---------------------------------------------------------------

def test_memory_backplane_provides_the_interface() -> None:
    tracker = make_tracker()
    verifyObject(IBackplane, tracker.backplane)
    assert isinstance(tracker.backplane, MemoryBackplane)
    assert tracker.backplane.node is tracker


def test_the_tracker_is_the_local_node_a_backplane_sees() -> None:
    verifyObject(ILocalNode, make_tracker())


def test_redis_backplane_implements_the_interface() -> None:
    from appserver._redis.backplane import RedisBackplane
    verifyClass(IBackplane, RedisBackplane)


def test_make_backplane_defaults_to_memory() -> None:
    assert isinstance(make_backplane(Settings(), None), MemoryBackplane)
    assert isinstance(make_backplane(Settings(backplane="memory://"), None), MemoryBackplane)


def test_make_backplane_rejects_an_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        make_backplane(Settings(backplane="kafka://somewhere"), None)


@pytest.mark.parametrize("url, message", [
    ("redis://", "expected redis://host:port/db"),
    ("redis://127.0.0.1:6379/zero", "database number"),
    ("redis://127.0.0.1:6379/0?colour=blue", "unknown parameter"),
    ("redis://127.0.0.1:6379/0?heartbeat=5&ttl=2", "heartbeat < ttl"),
    ("redis://127.0.0.1:6379/0?prefix=no spaces", "prefix"),
])
def test_redis_urls_are_checked(url: str, message: str) -> None:
    from appserver._redis.backplane import parse_redis_url
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_a_redis_url_names_host_port_database_and_bounds() -> None:
    from appserver._redis.backplane import parse_redis_url
    location = parse_redis_url("redis://:s3cret@10.0.0.5:6380/2?prefix=chat&heartbeat=1&ttl=4")
    assert (location.host, location.port, location.db, location.password) == ("10.0.0.5", 6380, 2, "s3cret")
    assert (location.prefix, location.heartbeat, location.ttl) == ("chat", 1.0, 4.0)
    default = parse_redis_url("redis://localhost")
    assert (default.port, default.db, default.prefix, default.heartbeat, default.ttl) == \
        (6379, 0, "appserver", 2.0, 6.0)


def test_a_node_id_must_be_usable_in_a_session_id() -> None:
    from appserver._redis.backplane import RedisBackplane, parse_redis_url
    with pytest.raises(ValueError, match="node-id"):
        RedisBackplane(parse_redis_url("redis://localhost"), "a.b", reactor=None)


# The memory backplane: one node, synchronous ------------------------------------

def test_broadcast_is_positioned_and_delivered_at_once() -> None:
    tracker = make_tracker()
    first, second = RecordingClient(tracker), RecordingClient(tracker)
    tracker.register(first)
    tracker.register(second)
    message = fired(tracker.broadcast("chat", "hello"))
    assert isinstance(message, Outgoing)
    assert message.pos == tracker.position == 1
    assert first.written == [message] and second.written == [message]
    assert [m.pos for m in tracker.stream.history(GLOBAL_STREAM).after(0)] == [1]


def test_cluster_wide_calls_return_deferreds_that_have_fired() -> None:
    tracker = make_tracker()
    client = RecordingClient(tracker)
    tracker.register(client)
    calls = [tracker.broadcast("chat", "hi"), tracker.publish("news", 1), tracker.room_members("lobby"),
             tracker.room_size("lobby"), tracker.cluster_counts(),
             tracker.replay(client, "e1", 0, [], client.connected_at)]
    assert all(isinstance(call, Deferred) and call.called for call in calls)
    assert len(client.written) == 1  # the broadcast was delivered inside the call


def test_publish_reaches_subscribers_only_and_is_kept() -> None:
    tracker = make_tracker()
    subscriber, other = RecordingClient(tracker), RecordingClient(tracker)
    tracker.register(subscriber)
    tracker.register(other)
    tracker.subscribe(subscriber, "news")
    message = fired(tracker.publish("news", {"n": 1}))
    assert subscriber.written == [message] and other.written == []
    assert message.payload == b'{"type":"message","channel":"news","data":{"n":1},"pos":1}'
    assert fired(tracker.publish("empty", 2)).pos == 2  # nobody listens: still positioned


def test_room_notifications_and_members_are_local_and_synchronous() -> None:
    tracker = make_tracker()
    alice, bob = RecordingClient(tracker), RecordingClient(tracker)
    tracker.register(alice)
    tracker.register(bob)
    tracker.join_room(alice, "lobby", "alice")
    tracker.join_room(bob, "lobby", "bob")
    assert fired(tracker.room_members("lobby")) == ["alice", "bob"]
    assert fired(tracker.room_size("lobby")) == 2
    assert alice.types() == ["join", "join"] and bob.types() == ["join"]
    tracker.leave_room(bob, "lobby")
    assert alice.types() == ["join", "join", "leave"]
    assert tracker.send_to_room("lobby", {"type": "note"}) == 1


def test_cluster_counts_are_this_nodes_counts() -> None:
    tracker = make_tracker()
    tracker.register(RecordingClient(tracker))
    tracker.register(RecordingAjaxClient(tracker))
    assert fired(tracker.cluster_counts()) == {"websocket": 1, "ajax": 1, "sse": 0} == tracker.count_by_transport()


def test_send_to_an_unknown_id_is_not_found() -> None:
    tracker = make_tracker()
    assert tracker.send_to("nobody", {"type": "x"}) is False


def test_replay_is_synchronous_and_exact() -> None:
    tracker = make_tracker()
    tracker.broadcast("chat", "one")
    tracker.publish("news", "two")
    tracker.broadcast("chat", "three")
    client = RecordingClient(tracker)
    tracker.register(client)
    tracker.subscribe(client, "news")
    assert fired(tracker.replay(client, "e1", 1, ["news"], client.connected_at)) is True
    assert [m.pos for m in client.written] == [2, 3]
    assert fired(tracker.replay(RecordingClient(tracker), "other-epoch", 0, [], 0)) is False


def test_sessions_get_random_secrets_without_a_home_node() -> None:
    backplane = make_tracker().backplane
    first, second = backplane.new_session_secret(), backplane.new_session_secret()
    assert first != second and "." not in first and len(first) >= 43


# What the tracker hands to a clustered backplane ---------------------------------

@implementer(IBackplane)
class RecordingBackplane(MemoryBackplane):
    """
    A clustered backplane that records instead of talking to other nodes.
    """

    clustered = True
    node_id = "n1"

    def __init__(self) -> None:
        super().__init__()
        self.published: list[tuple[str, dict[str, Any], Any]] = []
        self.room_events: list[tuple[str, dict[str, Any]]] = []
        self.remote: list[tuple[str, dict[str, Any]]] = []
        self.counts_changes = 0
        self.rooms_changed: list[str] = []

    def publish(self, stream: str, envelope: dict[str, Any], key: Any) -> Any:
        self.published.append((stream, envelope, key))
        return Deferred()  # positioned later, as by Redis: never, here

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        self.room_events.append((room, envelope))
        return 0

    def send_to_remote(self, client_id: str, envelope: dict[str, Any]) -> bool:
        self.remote.append((client_id, envelope))
        return True

    def counts_changed(self) -> None:
        self.counts_changes += 1

    def presence_changed(self, room: str) -> None:
        self.rooms_changed.append(room)


def test_a_clustered_publish_is_delivered_when_it_comes_back() -> None:
    backplane = RecordingBackplane()
    tracker = make_tracker(backplane)
    client = RecordingClient(tracker)
    tracker.register(client)
    tracker.subscribe(client, "news")
    tracker.broadcast("chat", "hi", key="k")
    tracker.publish("news", 5)
    assert backplane.published == [("", {"type": "chat", "data": "hi"}, "k"),
                                   ("news", {"type": "message", "channel": "news", "data": 5}, None)]
    assert client.written == [] and tracker.position == 0
    tracker.receive("news", Outgoing(b'{"type":"message","channel":"news","data":5,"pos":7}', 7,
                                     created=tracker.clock()))
    assert [m.pos for m in client.written] == [7]
    assert tracker.position == 7 and [m.pos for m in tracker.stream.history("news").after(0)] == [7]


def test_a_message_without_position_is_delivered_but_not_kept() -> None:
    tracker = make_tracker(RecordingBackplane())
    client = RecordingClient(tracker)
    tracker.register(client)
    tracker.receive(GLOBAL_STREAM, Outgoing(b'{"type":"chat","data":"x"}'))
    assert len(client.written) == 1
    assert GLOBAL_STREAM not in tracker.stream.streams() and tracker.position == 0


def test_membership_changes_are_reported_to_the_backplane() -> None:
    backplane = RecordingBackplane()
    tracker = make_tracker(backplane)
    client = RecordingClient(tracker)
    tracker.register(client)
    tracker.join_room(client, "lobby", "ann")
    tracker.unregister(client)
    assert backplane.counts_changes == 2
    assert backplane.rooms_changed == ["lobby", "lobby"]
    # The last local member left: the other nodes' members are still told.
    assert backplane.room_events == [("lobby", {"type": "join", "data": {"room": "lobby", "username": "ann"}}),
                                     ("lobby", {"type": "leave", "data": {"room": "lobby", "username": "ann"}})]


def test_send_to_a_client_on_another_node_goes_through_the_backplane() -> None:
    backplane = RecordingBackplane()
    tracker = make_tracker(backplane)
    assert tracker.send_to("elsewhere", {"type": "x"}) is True
    assert backplane.remote == [("elsewhere", {"type": "x"})]


def test_resynchronising_stops_local_histories_vouching_for_the_gap() -> None:
    tracker = make_tracker(RecordingBackplane())
    tracker.receive("news", Outgoing(b'{"pos":3}', 3, created=tracker.clock()))
    tracker.stream.resynchronise("e1", 10)
    assert tracker.stream.streams() == [] and tracker.position == 10
    complete, missed = tracker.stream.missed_since(5, ["news"], 10)
    assert not complete and missed == []
    complete, _ = tracker.stream.missed_since(10, ["news"], 10)
    assert complete
