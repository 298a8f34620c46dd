"""
The shared state: membership and counts, channels, rooms, overflow policies,
recovery after a reconnect, and the history sweep. Driven with plain
objects: no sockets, no reactor.
"""

import json

import pytest

from appserver._core.client import SLOW_CONSUMER_CLOSE_CODE, Client
from appserver._core.envelope import Outgoing, ProtocolError
from appserver._core.tracker import ClientTracker, TrackerEvents, TrackerLimits
from appserver._core.names import validate_channel_name, validate_room_name, validate_username
from support.deferreds import fired


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeClient(Client):
    """
    Records what it is sent; a close unregisters it as a transport would.
    """

    transport = "websocket"
    __slots__ = ("sent", "closes", "owner")

    def __init__(self, tracker, name="peer", transport=None):
        super().__init__(name, limits=tracker.limits, events=tracker.events)
        self.owner = tracker
        self.sent = []
        self.closes = []
        if transport:
            self.transport = transport

    def write(self, message):
        self.sent.append(json.loads(message.payload))

    def close(self, code=1000, reason=""):
        self.closes.append(code)
        self.closed = True
        self.owner.unregister(self)

    def types(self):
        return [m["type"] for m in self.sent]


class AjaxFake(FakeClient):
    transport = "ajax"
    __slots__ = ()


class RecordingEvents(TrackerEvents):
    def __init__(self):
        self.calls = []

    def registered(self, client):
        self.calls.append(("registered", client))

    def unregistered(self, client):
        self.calls.append(("unregistered", client))

    def slow_consumer(self, client, detail):
        self.calls.append(("slow_consumer", client))

    def recovery(self, client, recovered):
        self.calls.append(("recovery", recovered))


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def tracker(clock):
    return ClientTracker(TrackerLimits(max_queue_messages=3, max_queue_bytes=10_000,
                                       max_channels_per_client=2, history_size=5, history_age=60),
                         clock=clock, epoch="epoch-1")


def joined(tracker, *clients):
    for client in clients:
        tracker.register(client)
    return clients


# Membership ----------------------------------------------------------------


def test_register_counts_by_transport_and_twice_is_harmless(tracker):
    ws, ajax = FakeClient(tracker), AjaxFake(tracker)
    joined(tracker, ws, ajax)
    tracker.register(ws)
    assert tracker.client_count == 2 and len(tracker) == 2
    assert tracker.count_by_transport() == {"websocket": 1, "ajax": 1, "sse": 0}


def test_unregister_counts_out_once(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.unregister(client)
    tracker.unregister(client)
    assert tracker.client_count == 0
    assert tracker.count_by_transport() == {"websocket": 0, "ajax": 0, "sse": 0}


def test_count_by_transport_always_lists_every_builtin_transport(tracker):
    assert tracker.count_by_transport() == {"websocket": 0, "ajax": 0, "sse": 0}


def test_unregister_of_a_stale_client_with_a_reused_id_does_nothing(tracker):
    first = FakeClient(tracker)
    tracker.register(first)
    impostor = FakeClient(tracker)
    impostor.client_id = first.client_id
    tracker.unregister(impostor)
    assert tracker.get(first.client_id) is first


def test_events_hear_of_registration_and_unregistration(clock):
    events = RecordingEvents()
    tracker = ClientTracker(clock=clock, events=events)
    client = FakeClient(tracker)
    tracker.register(client)
    tracker.unregister(client)
    assert events.calls == [("registered", client), ("unregistered", client)]


# Sending ---------------------------------------------------------------------


def test_broadcast_reaches_every_client_with_growing_positions(tracker):
    a, b = joined(tracker, FakeClient(tracker), AjaxFake(tracker))
    first = fired(tracker.broadcast("chat", "one"))
    second = fired(tracker.broadcast("chat", "two"))
    assert second.pos > first.pos
    for client in (a, b):
        assert client.sent == [{"type": "chat", "data": "one", "pos": first.pos},
                               {"type": "chat", "data": "two", "pos": second.pos}]


def test_send_to_reaches_one_client_by_object_or_id_without_position(tracker):
    a, b = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    assert tracker.send_to(a, {"type": "hello"})
    assert tracker.send_to(b.client_id, {"type": "hello"})
    assert a.sent == [{"type": "hello"}] and b.sent == [{"type": "hello"}]


def test_send_to_an_unknown_id_reports_it(tracker):
    assert tracker.send_to("nobody", {"type": "hello"}) is False


def test_a_closed_client_gets_nothing(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    client.closed = True
    tracker.send_to(client, {"type": "hello"})
    assert client.sent == []


def test_a_paused_client_queues_and_gets_everything_in_order_on_resume(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    client.pause()
    tracker.broadcast("chat", 1)
    tracker.broadcast("chat", 2)
    assert client.sent == []
    client.resume()
    assert [m["data"] for m in client.sent] == [1, 2]
    tracker.broadcast("chat", 3)
    assert [m["data"] for m in client.sent] == [1, 2, 3]


# Channels ----------------------------------------------------------------------


def test_publish_reaches_only_the_channel_subscribers(tracker):
    a, b = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    tracker.subscribe(a, "news")
    message = fired(tracker.publish("news", {"headline": "x"}))
    assert a.sent == [{"type": "message", "channel": "news", "data": {"headline": "x"}, "pos": message.pos}]
    assert b.sent == []


def test_unsubscribe_stops_delivery_and_forgets_an_empty_channel(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "news")
    assert tracker.subscriber_count("news") == 1
    tracker.unsubscribe(client, "news")
    tracker.publish("news", 1)
    assert client.sent == [] and "news" not in tracker.channels and tracker.subscriber_count("news") == 0


def test_subscribing_twice_counts_once(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "news")
    tracker.subscribe(client, "news")
    assert tracker.subscriber_count("news") == 1 and client.channels == {"news"}


def test_the_channel_limit_is_enforced_with_a_limit_error(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "a")
    tracker.subscribe(client, "b")
    with pytest.raises(ProtocolError) as caught:
        tracker.subscribe(client, "c")
    assert caught.value.code == "limit"
    assert client.channels == {"a", "b"}


def test_unregister_removes_the_client_from_its_channels(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "news")
    tracker.unregister(client)
    assert tracker.subscriber_count("news") == 0 and "news" not in tracker.channels


@pytest.mark.parametrize("name", ["news", "a", "prices:EUR/USD", "user@host#1", "a-b_c.d", "x" * 128])
def test_valid_channel_and_room_names(name):
    assert validate_channel_name(name) == name
    assert validate_room_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "a b", "caf\u00e9", "a\nb", "new\x00s", None, 5, ["a"], "*"])
def test_invalid_channel_and_room_names_are_bad_data(name):
    for validate in (validate_channel_name, validate_room_name):
        with pytest.raises(ProtocolError) as caught:
            validate(name)
        assert caught.value.code == "bad_data"


def test_publish_refuses_an_invalid_channel_name(tracker):
    with pytest.raises(ProtocolError):
        tracker.publish("bad name", 1)


@pytest.mark.parametrize("username", ["", "   ", "u" * 65, "a\tb", "a\x00", None, 3])
def test_invalid_usernames_are_bad_data(username):
    with pytest.raises(ProtocolError) as caught:
        validate_username(username)
    assert caught.value.code == "bad_data"


@pytest.mark.parametrize("username", ["ann", "Zo\u00eb", "u" * 64, "two words"])
def test_valid_usernames(username):
    assert validate_username(username) == username


# Overflow policies -------------------------------------------------------------


def test_disconnect_policy_closes_a_slow_consumer_with_4000(clock):
    events = RecordingEvents()
    tracker = ClientTracker(TrackerLimits(max_queue_messages=2), clock=clock, events=events)
    (client,) = joined(tracker, FakeClient(tracker))
    client.pause()
    for n in range(3):
        tracker.broadcast("chat", n)
    assert client.closes == [SLOW_CONSUMER_CLOSE_CODE]
    assert ("slow_consumer", client) in events.calls
    assert tracker.client_count == 0


def test_drop_oldest_policy_keeps_the_client_and_the_newest_messages(tracker):
    tracker.set_policy("ticks.*", "drop-oldest")
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "ticks.a")
    client.pause()
    for n in range(5):
        tracker.publish("ticks.a", n)
    client.resume()
    assert client.closes == []
    assert [m["data"] for m in client.sent] == [2, 3, 4]


def test_conflate_policy_keeps_the_newest_message_per_key(tracker):
    tracker.set_policy("prices", "conflate")
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "prices")
    client.pause()
    for n in range(10):
        tracker.publish("prices", {"EUR": n}, key="EUR")
        tracker.publish("prices", {"USD": n}, key="USD")
    client.resume()
    assert client.closes == []
    assert [m["data"] for m in client.sent] == [{"EUR": 9}, {"USD": 9}]


def test_later_policies_take_precedence(tracker):
    tracker.set_policy("*", "drop-oldest")
    tracker.set_policy("prices.*", "conflate")
    assert tracker.policy_for("prices.eur") == "conflate"
    assert tracker.policy_for("news") == "drop-oldest"


def test_an_unknown_policy_is_refused(tracker):
    with pytest.raises(ValueError):
        tracker.set_policy("*", "explode")


def test_channels_without_a_policy_use_the_default(tracker):
    assert tracker.policy_for("anything") == "disconnect"


# Rooms -------------------------------------------------------------------------


def test_join_tells_every_member_including_the_newcomer(tracker):
    ann, bob = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    tracker.join_room(ann, "lobby", "ann")
    tracker.join_room(bob, "lobby", "bob")
    joins = [m for m in ann.sent if m["type"] == "join"]
    assert joins == [{"type": "join", "data": {"room": "lobby", "username": "ann"}},
                     {"type": "join", "data": {"room": "lobby", "username": "bob"}}]
    assert bob.sent == [{"type": "join", "data": {"room": "lobby", "username": "bob"}}]
    assert fired(tracker.room_members("lobby")) == ["ann", "bob"] and fired(tracker.room_size("lobby")) == 2


def test_joining_again_under_the_same_name_changes_nothing(tracker):
    (ann,) = joined(tracker, FakeClient(tracker))
    tracker.join_room(ann, "lobby", "ann")
    tracker.join_room(ann, "lobby", "ann")
    assert len(ann.sent) == 1 and fired(tracker.room_size("lobby")) == 1


def test_joining_under_another_name_renames_the_member(tracker):
    ann, bob = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    tracker.join_room(bob, "lobby", "bob")
    tracker.join_room(ann, "lobby", "ann")
    tracker.join_room(ann, "lobby", "anna")
    assert fired(tracker.room_members("lobby")) == ["anna", "bob"]
    assert {"type": "leave", "data": {"room": "lobby", "username": "ann"}} in bob.sent
    assert {"type": "join", "data": {"room": "lobby", "username": "anna"}} in bob.sent


def test_leave_tells_the_remaining_members(tracker):
    ann, bob = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    tracker.join_room(ann, "lobby", "ann")
    tracker.join_room(bob, "lobby", "bob")
    assert tracker.leave_room(ann, "lobby") is True
    assert bob.sent[-1] == {"type": "leave", "data": {"room": "lobby", "username": "ann"}}
    assert ann.sent[-1]["type"] == "join"
    assert fired(tracker.room_members("lobby")) == ["bob"]


def test_the_last_member_leaving_removes_the_room(tracker):
    (ann,) = joined(tracker, FakeClient(tracker))
    tracker.join_room(ann, "lobby", "ann")
    tracker.leave_room(ann, "lobby")
    assert "lobby" not in tracker.rooms and fired(tracker.room_size("lobby")) == 0


def test_leaving_a_room_one_is_not_in_reports_it(tracker):
    (ann,) = joined(tracker, FakeClient(tracker))
    assert tracker.leave_room(ann, "lobby") is False


def test_a_disconnect_without_goodbye_sends_leave_to_the_rest(tracker):
    ann, bob, eve = joined(tracker, FakeClient(tracker), FakeClient(tracker), FakeClient(tracker))
    for client, name in ((ann, "ann"), (bob, "bob"), (eve, "eve")):
        tracker.join_room(client, "lobby", name)
    tracker.unregister(ann)
    leave = {"type": "leave", "data": {"room": "lobby", "username": "ann"}}
    assert bob.sent[-1] == leave and eve.sent[-1] == leave
    assert fired(tracker.room_members("lobby")) == ["bob", "eve"]


def test_join_validates_room_and_username(tracker):
    (ann,) = joined(tracker, FakeClient(tracker))
    with pytest.raises(ProtocolError):
        tracker.join_room(ann, "bad room", "ann")
    with pytest.raises(ProtocolError):
        tracker.join_room(ann, "lobby", "")
    assert ann.rooms == {} and "lobby" not in tracker.rooms


# Recovery ------------------------------------------------------------------------


def reconnect(tracker):
    client = FakeClient(tracker)
    tracker.register(client)
    return client


def test_replay_sends_missed_broadcasts_and_channel_messages_in_order(tracker):
    watcher = reconnect(tracker)
    tracker.subscribe(watcher, "news")
    since = tracker.position
    tracker.broadcast("chat", "b1")
    tracker.publish("news", "n1")
    tracker.broadcast("chat", "b2")
    tracker.publish("other", "o1")
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, ["news"], client.connected_at)) is True
    assert [m["data"] for m in client.sent] == ["b1", "n1", "b2"]
    positions = [m["pos"] for m in client.sent]
    assert positions == sorted(positions)


def test_replay_skips_broadcasts_that_arrived_live_after_connecting(tracker):
    tracker.broadcast("chat", "missed")
    since = 0
    client = reconnect(tracker)
    tracker.broadcast("chat", "live")
    client.sent.clear()
    assert fired(tracker.replay(client, "epoch-1", since, [], client.connected_at)) is True
    assert [m["data"] for m in client.sent] == ["missed"]


def test_replay_with_nothing_missed_is_recovered(tracker):
    tracker.broadcast("chat", 1)
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", tracker.position, [], client.connected_at)) is True
    assert client.sent == []


def test_replay_is_not_recovered_when_the_history_was_exceeded(clock):
    tracker = ClientTracker(TrackerLimits(history_size=5, history_age=60), clock=clock, epoch="epoch-1")
    since = tracker.position
    for n in range(6):
        tracker.broadcast("chat", n)
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, [], client.connected_at)) is False
    assert [m["data"] for m in client.sent] == [1, 2, 3, 4, 5]


def test_a_replay_longer_than_the_clients_queue_sends_the_newest_and_is_not_recovered(tracker):
    since = tracker.position
    for n in range(5):  # history_size is 5, max_queue_messages 3
        tracker.broadcast("chat", n)
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, [], client.connected_at)) is False
    assert [m["data"] for m in client.sent] == [2, 3, 4]


def test_a_replay_is_bounded_by_the_queue_bytes_too(clock):
    tracker = ClientTracker(TrackerLimits(max_queue_bytes=250, history_size=10, history_age=60),
                            clock=clock, epoch="epoch-1")
    since = tracker.position
    for n in range(4):
        tracker.broadcast("chat", str(n) * 100)     # about 140 bytes each
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, [], client.connected_at)) is False
    assert [m["data"][0] for m in client.sent] == ["3"]


def test_replay_is_not_recovered_when_the_history_expired(tracker, clock):
    since = tracker.position
    tracker.broadcast("chat", 1)
    clock.now += 61
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, [], client.connected_at)) is False


@pytest.mark.parametrize("epoch, since", [("another-epoch", 0), (None, 0), ("epoch-1", -1),
                                          ("epoch-1", 999), ("epoch-1", "0"), ("epoch-1", True),
                                          ("epoch-1", 1.0), ("epoch-1", None)])
def test_replay_from_another_epoch_or_a_bad_position_is_not_recovered(tracker, epoch, since):
    tracker.broadcast("chat", 1)
    events = RecordingEvents()
    tracker.events = events
    client = reconnect(tracker)
    assert fired(tracker.replay(client, epoch, since, [], client.connected_at)) is False
    assert client.sent == [] and events.calls[-1] == ("recovery", False)


def test_resume_recovers_a_channel_whose_first_message_came_while_away(tracker):
    quiet = reconnect(tracker)
    tracker.subscribe(quiet, "quiet")
    tracker.broadcast("chat", "before")
    since = tracker.position
    tracker.unregister(quiet)
    tracker.broadcast("chat", "while away")
    tracker.publish("quiet", "first ever")
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, ["quiet"], client.connected_at)) is True
    assert [m["data"] for m in client.sent] == ["while away", "first ever"]


def test_sweep_drops_expired_histories_of_unfollowed_channels(tracker, clock):
    tracker.publish("gone", 1)
    tracker.publish("kept", 1)
    follower = reconnect(tracker)
    tracker.subscribe(follower, "kept")
    clock.now += 61
    tracker.sweep()
    assert "gone" not in tracker.stream.streams()
    assert "kept" in tracker.stream.streams()


def test_a_swept_channel_cannot_vouch_for_older_positions(tracker, clock):
    since = tracker.position
    tracker.publish("gone", 1)
    clock.now += 61
    tracker.sweep()
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, ["gone"], client.connected_at)) is False


def test_a_swept_channel_vouches_for_positions_after_it(tracker, clock):
    tracker.publish("gone", 1)
    clock.now += 61
    tracker.sweep()
    since = tracker.position
    client = reconnect(tracker)
    assert fired(tracker.replay(client, "epoch-1", since, ["gone"], client.connected_at)) is True


def test_replay_reports_recovery_events(tracker):
    events = RecordingEvents()
    tracker.events = events
    client = reconnect(tracker)
    tracker.replay(client, "epoch-1", 0, [], client.connected_at)
    assert events.calls[-1] == ("recovery", True)


# The stream log and what a backplane may ask of the node ---------------------------


def test_epoch_and_position_are_the_stream_logs_and_read_only(tracker):
    fired(tracker.broadcast("chat", 1))
    assert (tracker.epoch, tracker.position) == (tracker.stream.epoch, tracker.stream.position) == ("epoch-1", 1)
    with pytest.raises(AttributeError):
        tracker.position = 5


def test_an_existing_stream_log_brings_its_own_epoch(tracker):
    with pytest.raises(ValueError):
        ClientTracker(stream=tracker.stream, epoch="another")
    assert ClientTracker(stream=tracker.stream).epoch == "epoch-1"


def test_a_detached_client_gets_no_live_channel_message_until_reattached(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "news")
    assert tracker.detach_from_channels(client, ["news", "other"]) == ["news"]
    tracker.publish("news", "while detached")
    assert client.sent == [] and client.channels == {"news"}
    tracker.reattach_to_channels(client, ["news"])
    tracker.publish("news", "after")
    assert [m["data"] for m in client.sent] == ["after"]


def test_a_client_that_closed_while_detached_is_not_reattached(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    tracker.subscribe(client, "news")
    tracker.detach_from_channels(client, ["news"])
    client.closed = True
    tracker.reattach_to_channels(client, ["news"])
    assert tracker.subscriber_count("news") == 0


def test_local_queries_answer_with_plain_values(tracker):
    ann, bob = joined(tracker, FakeClient(tracker), FakeClient(tracker))
    tracker.subscribe(ann, "news")
    tracker.join_room(ann, "lobby", "ann")
    tracker.join_room(bob, "lobby", "bob")
    assert tracker.local_room_members("lobby") == ["ann", "bob"] and tracker.local_room_size("lobby") == 2
    assert tracker.channel_names() == ["news"] and tracker.room_names() == ["lobby"]


def test_a_direct_message_from_another_node_reaches_a_local_client_only(tracker):
    (client,) = joined(tracker, FakeClient(tracker))
    assert tracker.deliver_to_client(client.client_id, Outgoing.of({"type": "hello"})) is True
    assert tracker.deliver_to_client("elsewhere", Outgoing.of({"type": "hello"})) is False
    assert client.sent == [{"type": "hello"}]
