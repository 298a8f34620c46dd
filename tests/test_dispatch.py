"""
The dispatcher: from a validated envelope to exactly one answer (when one
was asked for), whatever the handler does.
"""

import json

import pytest
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs

from appserver._server.app import App
from appserver.apps.chat import MAX_CHAT_LENGTH
from appserver.apps.chat import app as chat_app
from appserver._core.client import Client
from appserver._server.dispatch import RATE_LIMIT_CLOSE_AFTER, RATE_LIMIT_CLOSE_CODE, Dispatcher
from appserver._core.envelope import Envelope, ProtocolError
from appserver._server.limits import TokenBucket
from appserver._core.tracker import ClientTracker, TrackerEvents, TrackerLimits
from support.deferreds import fired


class FakeClient(Client):
    transport = "websocket"
    __slots__ = ("sent", "closes")

    def __init__(self, tracker, peer="tcp4:127.0.0.1:5000"):
        super().__init__(peer, limits=tracker.limits, events=tracker.events)
        self.sent = []
        self.closes = []

    def write(self, message):
        self.sent.append(json.loads(message.payload))

    def close(self, code=1000, reason=""):
        self.closes.append(code)


class Counting(TrackerEvents):
    def __init__(self):
        self.handler_errors = []

    def handler_error(self, message_type):
        self.handler_errors.append(message_type)


@pytest.fixture
def reactor():
    return MemoryReactorClock()


@pytest.fixture
def app():
    return App("test").include(chat_app)


@pytest.fixture
def tracker():
    return ClientTracker(TrackerLimits(max_channels_per_client=2), clock=lambda: 0.0, events=Counting(),
                         epoch="e1")


@pytest.fixture
def dispatcher(tracker, app, reactor):
    return Dispatcher(tracker, app, reactor)


@pytest.fixture
def client(tracker):
    client = FakeClient(tracker)
    tracker.register(client)
    return client


def send(dispatcher, client, message_type, data=None, request_id=None):
    client.sent.clear()
    dispatcher.dispatch(client, Envelope(message_type, data, request_id))
    return client.sent


def only(sent):
    assert len(sent) == 1, sent
    return sent[0]


def error_code(sent):
    answer = only(sent)
    assert answer["type"] == "error", answer
    return answer["data"]["code"]


# Application handlers --------------------------------------------------------------


def test_an_unknown_type_is_answered_with_unknown_type_and_the_id(dispatcher, client):
    answer = only(send(dispatcher, client, "nope", None, 3))
    assert answer["id"] == 3 and answer["data"]["code"] == "unknown_type"


def test_a_handler_result_is_sent_back_as_a_reply(dispatcher, client, app):
    app.handler("double")(lambda ctx, data: data * 2)
    assert only(send(dispatcher, client, "double", 21)) == {"type": "reply", "re": "double", "id": None,
                                                              "data": 42}


def test_a_handler_returning_none_without_id_sends_nothing(dispatcher, client, app):
    app.handler("quiet")(lambda ctx, data: None)
    assert send(dispatcher, client, "quiet") == []


def test_a_handler_returning_none_with_an_id_is_acknowledged(dispatcher, client, app):
    app.handler("quiet")(lambda ctx, data: None)
    assert only(send(dispatcher, client, "quiet", None, "r1")) == {"type": "reply", "re": "quiet", "id": "r1",
                                                                    "data": None}


def test_a_handler_raising_a_protocol_error_answers_with_its_code(dispatcher, client, app):
    def refuse(ctx, data):
        raise ProtocolError("forbidden", "no")
    app.handler("refuse")(refuse)
    assert error_code(send(dispatcher, client, "refuse", None, 1)) == "forbidden"


def test_a_handler_that_crashes_answers_handler_failed_and_logs_the_traceback(dispatcher, client, app, tracker):
    def crash(ctx, data):
        raise ZeroDivisionError("boom")
    app.handler("crash")(crash)
    with capturedLogs() as events:
        sent = send(dispatcher, client, "crash", None, 5)
    assert error_code(sent) == "handler_failed" and sent[0]["id"] == 5
    assert "boom" not in json.dumps(sent)
    assert any(e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError) for e in events)
    assert tracker.events.handler_errors == ["crash"]


def test_an_async_handler_replies_when_it_finishes(dispatcher, client, app):
    waiting = defer.Deferred()

    async def slow(ctx, data):
        return await waiting
    app.handler("slow")(slow)
    assert send(dispatcher, client, "slow", None, 1) == []
    waiting.callback("done")
    assert only(client.sent) == {"type": "reply", "re": "slow", "id": 1, "data": "done"}


def test_a_failing_deferred_answers_handler_failed(dispatcher, client, app):
    app.handler("fails")(lambda ctx, data: defer.fail(RuntimeError("x")))
    with capturedLogs():
        assert error_code(send(dispatcher, client, "fails", None, 1)) == "handler_failed"


def test_a_deferred_failing_with_a_protocol_error_answers_its_code(dispatcher, client, app):
    app.handler("fails")(lambda ctx, data: defer.fail(ProtocolError("bad_data", "x")))
    assert error_code(send(dispatcher, client, "fails", None, 1)) == "bad_data"


def test_a_result_that_cannot_be_serialized_answers_handler_failed(dispatcher, client, app):
    app.handler("weird")(lambda ctx, data: {1, 2})
    with capturedLogs():
        assert error_code(send(dispatcher, client, "weird", None, 1)) == "handler_failed"


def test_an_async_result_that_cannot_be_serialized_answers_handler_failed(dispatcher, client, app):
    app.handler("weird")(lambda ctx, data: defer.succeed(object()))
    with capturedLogs():
        assert error_code(send(dispatcher, client, "weird", None, 1)) == "handler_failed"


def test_the_context_sends_to_the_caller_only(dispatcher, client, app, tracker):
    other = FakeClient(tracker)
    tracker.register(other)
    app.handler("hello")(lambda ctx, data: ctx.send("hi", data))
    assert only(send(dispatcher, client, "hello", 1)) == {"type": "hi", "data": 1}
    assert other.sent == []


# Chat ----------------------------------------------------------------------------------


def test_chat_broadcasts_the_demo_text_to_everyone_sender_included(dispatcher, client, tracker):
    other = FakeClient(tracker, "tcp4:10.0.0.2:1")
    tracker.register(other)
    message = only(send(dispatcher, client, "chat", "hello"))
    assert message == {"type": "chat", "data": "Message from tcp4:127.0.0.1:5000 : hello", "pos": 1}
    assert other.sent == [message]


@pytest.mark.parametrize("data", [None, 5, ["a"], {"text": "a"}, "x" * (MAX_CHAT_LENGTH + 1)])
def test_chat_with_wrong_data_is_bad_data(dispatcher, client, data):
    assert error_code(send(dispatcher, client, "chat", data)) == "bad_data"


# Built-ins -------------------------------------------------------------------------------


def test_subscribe_and_unsubscribe_requests_are_answered_by_a_reply_with_the_id(dispatcher, client, tracker):
    assert only(send(dispatcher, client, "subscribe", {"channel": "news"}, 1)) == {
        "type": "reply", "re": "subscribe", "id": 1, "data": {"channel": "news"}}
    assert tracker.subscriber_count("news") == 1
    assert only(send(dispatcher, client, "unsubscribe", {"channel": "news"}, 2)) == {
        "type": "reply", "re": "unsubscribe", "id": 2, "data": {"channel": "news"}}
    assert tracker.subscriber_count("news") == 0


def test_subscribe_and_unsubscribe_without_an_id_are_acknowledged_with_their_own_type(dispatcher, client):
    assert only(send(dispatcher, client, "subscribe", {"channel": "news"})) == {
        "type": "subscribed", "id": None, "data": {"channel": "news"}}
    assert only(send(dispatcher, client, "unsubscribe", {"channel": "news"})) == {
        "type": "unsubscribed", "id": None, "data": {"channel": "news"}}


@pytest.mark.parametrize("message_type", ["subscribe", "unsubscribe", "publish", "join", "leave", "members",
                                          "resume"])
@pytest.mark.parametrize("data", [None, "news", 3, [], {}, {"channel": 5, "room": 5}])
def test_builtins_with_the_wrong_data_shape_are_bad_data(dispatcher, client, message_type, data):
    assert error_code(send(dispatcher, client, message_type, data, 1)) == "bad_data"


def test_subscribing_past_the_channel_limit_is_limit(dispatcher, client):
    send(dispatcher, client, "subscribe", {"channel": "a"})
    send(dispatcher, client, "subscribe", {"channel": "b"})
    assert error_code(send(dispatcher, client, "subscribe", {"channel": "c"})) == "limit"


def test_publish_delivers_to_subscribers_and_replies_when_asked(dispatcher, client):
    send(dispatcher, client, "subscribe", {"channel": "news"})
    sent = send(dispatcher, client, "publish", {"channel": "news", "data": "x"}, 9)
    assert sent == [{"type": "message", "channel": "news", "data": "x", "pos": 1},
                    {"type": "reply", "re": "publish", "id": 9, "data": None}]


def test_publish_on_a_channel_the_app_forbids_is_forbidden(dispatcher, client, app, tracker):
    app.allow_publish("prices.*", False)
    assert error_code(send(dispatcher, client, "publish", {"channel": "prices.eur", "data": 1})) == "forbidden"
    assert tracker.position == 0


def test_publish_rules_may_be_callables(dispatcher, client, app):
    app.allow_publish("room.*", lambda c, channel, data: data == "ok")
    assert error_code(send(dispatcher, client, "publish", {"channel": "room.a", "data": "no"})) == "forbidden"
    assert send(dispatcher, client, "publish", {"channel": "room.a", "data": "ok"}) == []


def test_join_leave_and_members(dispatcher, client, tracker):
    sent = send(dispatcher, client, "join", {"room": "lobby", "username": "ann"}, 1)
    assert sent == [{"type": "join", "data": {"room": "lobby", "username": "ann"}},
                    {"type": "reply", "re": "join", "id": 1, "data": None}]
    assert only(send(dispatcher, client, "members", {"room": "lobby"})) == {
        "type": "members", "id": None, "data": {"room": "lobby", "members": ["ann"]}}
    assert only(send(dispatcher, client, "members", {"room": "lobby"}, 4)) == {
        "type": "reply", "re": "members", "id": 4, "data": {"room": "lobby", "members": ["ann"]}}
    assert only(send(dispatcher, client, "leave", {"room": "lobby"}, 2)) == {
        "type": "reply", "re": "leave", "id": 2, "data": None}
    assert fired(tracker.room_size("lobby")) == 0


def test_leaving_a_room_one_is_not_in_is_bad_data(dispatcher, client):
    assert error_code(send(dispatcher, client, "leave", {"room": "lobby"})) == "bad_data"


def test_join_with_a_bad_username_is_bad_data(dispatcher, client):
    assert error_code(send(dispatcher, client, "join", {"room": "lobby", "username": ""})) == "bad_data"


def test_ping_is_answered_with_pong_and_the_same_data(dispatcher, client):
    assert only(send(dispatcher, client, "ping", {"t": 1})) == {"type": "pong", "id": None, "data": {"t": 1}}


def test_a_ping_request_is_answered_by_a_reply_with_the_same_data(dispatcher, client):
    assert only(send(dispatcher, client, "ping", {"t": 1}, 7)) == {"type": "reply", "re": "ping", "id": 7,
                                                                   "data": {"t": 1}}


def test_resume_subscribes_replays_and_answers_resumed(dispatcher, client, tracker):
    tracker.publish("news", "missed")
    sent = send(dispatcher, client, "resume", {"epoch": "e1", "since": 0, "channels": ["news"]}, 1)
    assert sent[0]["data"] == "missed"
    assert sent[-1] == {"type": "reply", "re": "resume", "id": 1,
                        "data": {"recovered": True, "epoch": "e1", "position": tracker.position}}
    assert client.channels == {"news"}


def test_resume_from_another_epoch_is_not_recovered(dispatcher, client):
    answer = only(send(dispatcher, client, "resume", {"epoch": "old", "since": 3}))
    assert answer["type"] == "resumed" and answer["data"]["recovered"] is False


@pytest.mark.parametrize("channels", ["news", {"news": 1}, [5], ["bad name"]])
def test_resume_with_bad_channels_is_bad_data(dispatcher, client, channels):
    assert error_code(send(dispatcher, client, "resume", {"epoch": "e1", "since": 0, "channels": channels})) \
        == "bad_data"


def test_a_ping_whose_data_cannot_be_echoed_answers_an_error(dispatcher, client):
    deep = []
    for _ in range(300):
        deep = [deep]
    with capturedLogs():
        assert only(send(dispatcher, client, "ping", deep, 1))["type"] == "error"


# Rate limit ------------------------------------------------------------------------------


def test_a_client_over_its_rate_gets_rate_limited_errors(dispatcher, client):
    now = [0.0]
    client.bucket = TokenBucket(1, 2, lambda: now[0])
    send(dispatcher, client, "ping")
    send(dispatcher, client, "ping")
    assert error_code(send(dispatcher, client, "ping", None, 3)) == "rate_limited"
    now[0] += 1
    assert only(send(dispatcher, client, "ping"))["type"] == "pong"


def test_a_client_that_keeps_sending_while_limited_is_closed_with_4001(dispatcher, client):
    client.bucket = TokenBucket(1, 1, lambda: 0.0)
    send(dispatcher, client, "ping")
    for _ in range(RATE_LIMIT_CLOSE_AFTER):
        send(dispatcher, client, "ping")
    assert client.closes == [RATE_LIMIT_CLOSE_CODE]
