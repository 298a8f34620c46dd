"""
The Ajax long-poll transport (issue 3) on a fake clock: sessions, polls that
wait and answer, acknowledgement by C{since}, expiry, overflow, JSONP, and
bad input.
"""

import json

import pytest

from support.wsclient import AjaxStub, has_fired, make_runtime, resolved

POLL_TIMEOUT = 25.0
IDLE_TIMEOUT = 60.0


def stub(**settings):
    settings.setdefault("poll_timeout", POLL_TIMEOUT)
    settings.setdefault("session_idle_timeout", IDLE_TIMEOUT)
    return AjaxStub(make_runtime(**settings))


@pytest.fixture
def ajax():
    return stub()


def drain(ajax, session, since=0):
    """
    Poll until nothing waits; returns (messages, position).
    """
    answer = ajax.poll(session, since).json()
    return answer["messages"], answer["position"]


def chat(ajax, text):
    ajax.runtime.tracker.broadcast("chat", text)


# The first poll ------------------------------------------------------------------


def test_connect_queues_a_welcome_that_the_first_poll_returns_at_once(ajax):
    session = ajax.connect()
    answer = ajax.poll(session, 0)
    assert answer.status == 200
    body = answer.json()
    assert body["position"] == 1
    (welcome,) = body["messages"]
    assert welcome["type"] == "welcome"
    assert welcome["data"]["client_id"] == ajax.client_id(session) and welcome["data"]["transport"] == "ajax"
    assert welcome["data"]["client_id"] != session
    assert welcome["data"]["epoch"] == ajax.runtime.tracker.epoch


def test_a_poll_with_nothing_queued_waits_then_answers_empty_at_the_poll_timeout(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": position})
    ajax.advance(POLL_TIMEOUT - 1)
    assert not has_fired(pending)
    ajax.advance(1)
    assert resolved(pending).json() == {"messages": [], "position": position}


def test_a_waiting_poll_is_answered_when_a_message_arrives(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": position})
    ajax.flush()
    assert not has_fired(pending)
    chat(ajax, "hello")
    ajax.flush()
    body = resolved(pending).json()
    assert [(m["type"], m["data"]) for m in body["messages"]] == [("chat", "hello")]
    assert body["position"] == position + 1


def test_a_burst_goes_out_in_one_answer(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": position})
    for n in range(5):
        chat(ajax, n)
    ajax.flush()
    assert [m["data"] for m in resolved(pending).json()["messages"]] == [0, 1, 2, 3, 4]


def test_stream_messages_carry_their_position(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    chat(ajax, "x")
    (message,) = ajax.poll(session, position).json()["messages"]
    assert message["pos"] == ajax.runtime.tracker.position


def test_a_second_poll_ends_the_first_empty(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    first = ajax.start("GET", "/poll", {"session": session, "since": position})
    ajax.flush()
    second = ajax.start("GET", "/poll", {"session": session, "since": position})
    ajax.flush()
    assert resolved(first).json() == {"messages": [], "position": position}
    assert not has_fired(second)
    chat(ajax, "x")
    ajax.flush()
    assert len(resolved(second).json()["messages"]) == 1


def test_an_empty_answer_never_acknowledges_a_message_it_did_not_carry(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    first = ajax.start("GET", "/poll", {"session": session, "since": position})
    chat(ajax, "in flight")  # queued; the answer is due on the next reactor turn
    second = ajax.start("GET", "/poll", {"session": session, "since": position})
    ajax.flush()
    first_body = resolved(first).json()
    second_body = resolved(second).json()
    delivered = first_body["messages"] + second_body["messages"]
    assert [m["data"] for m in delivered] == ["in flight"]
    # Whichever answer the client keeps, polling from its position loses nothing.
    for body in (first_body, second_body):
        if not body["messages"]:
            assert body["position"] == position


# Acknowledgement -------------------------------------------------------------------


def test_repeating_a_poll_with_the_same_since_gets_the_same_messages(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    chat(ajax, "a")
    chat(ajax, "b")
    first = ajax.poll(session, position).json()
    again = ajax.poll(session, position).json()
    assert first == again and len(first["messages"]) == 2


def test_since_acknowledges_so_the_next_poll_has_only_new_messages(ajax):
    session = ajax.connect()
    _, position = drain(ajax, session)
    chat(ajax, "a")
    body = ajax.poll(session, position).json()
    chat(ajax, "b")
    assert [m["data"] for m in ajax.poll(session, body["position"]).json()["messages"]] == ["b"]


def test_no_duplicates_and_no_gaps_over_many_polls(ajax):
    session = ajax.connect()
    _, since = drain(ajax, session)
    received = []
    sent = 0
    for round_number in range(200):
        for _ in range(round_number % 4):
            chat(ajax, sent)
            sent += 1
        if round_number % 7 == 3:
            # An answer lost on the way (or a poll the next one replaces).
            ajax.start("GET", "/poll", {"session": session, "since": since})
        pending = ajax.start("GET", "/poll", {"session": session, "since": since})
        if round_number % 4 == 0:
            chat(ajax, sent)  # arrives while the poll waits
            sent += 1
        ajax.flush()
        if not has_fired(pending):
            ajax.advance(POLL_TIMEOUT)
        body = resolved(pending).json()
        received.extend(m["data"] for m in body["messages"])
        since = body["position"]
    assert received == list(range(sent))
    assert sent > 300


def test_since_in_the_header_acknowledges_like_the_query(ajax):
    session = ajax.connect()
    first = ajax.poll(session, 0).json()
    ajax.runtime.tracker.broadcast("chat", "news")
    answer = ajax.call("GET", "/poll", {"session": session}, headers={"X-AppServer-Since": str(first["position"])})
    assert [m["data"] for m in answer.json()["messages"]] == ["news"]


def test_a_malformed_since_header_is_bad_since(ajax):
    session = ajax.connect()
    for since in ("2", "-1", "abc"):
        answer = ajax.call("GET", "/poll", {"session": session}, headers={"X-AppServer-Since": since})
        assert answer.status == 400 and answer.json()["error"]["code"] == "bad_since", since


def test_a_since_past_the_last_message_or_malformed_is_bad_since(ajax):
    session = ajax.connect()
    for since in ("2", "-1", "abc", "1.5", "", "99999999999999999999999"):
        answer = ajax.call("GET", "/poll", {"session": session, "since": since})
        if since == "":
            assert answer.status == 200  # an empty since is since=0
            continue
        assert answer.status == 400 and answer.json()["error"]["code"] == "bad_since", since


def test_poll_without_session_is_400(ajax):
    answer = ajax.call("GET", "/poll", {"since": 0})
    assert answer.status == 400 and answer.json()["error"]["code"] == "missing_session"


def test_poll_of_an_unknown_session_is_410(ajax):
    answer = ajax.call("GET", "/poll", {"session": "nope", "since": 0})
    assert answer.status == 410 and answer.json()["error"]["code"] == "unknown_session"


def test_poll_with_a_bad_callback_is_a_json_400(ajax):
    session = ajax.connect()
    answer = ajax.call("GET", "/poll", {"session": session, "since": 0, "callback": "alert(1)"})
    assert answer.status == 400 and answer.json()["error"]["code"] == "bad_callback"
    assert ajax.poll(session, 0).json()["messages"][0]["type"] == "welcome"


# Expiry ------------------------------------------------------------------------------


def test_a_session_that_stops_polling_expires_and_is_counted_out(ajax):
    session = ajax.connect()
    drain(ajax, session)
    assert ajax.runtime.tracker.client_count == 1
    ajax.advance(IDLE_TIMEOUT - 1)
    assert ajax.runtime.tracker.client_count == 1
    ajax.advance(1)
    assert ajax.runtime.tracker.client_count == 0 and ajax.runtime.limiter.total == 0
    answer = ajax.poll(session, 0)
    assert answer.status == 410 and answer.json()["error"]["code"] == "unknown_session"
    assert ajax.send(session, {"type": "ping"}).status == 410


def test_a_session_that_never_polls_expires(ajax):
    ajax.connect()
    ajax.advance(IDLE_TIMEOUT)
    assert ajax.runtime.tracker.client_count == 0


def test_a_session_that_keeps_polling_never_expires(ajax):
    session = ajax.connect()
    _, since = drain(ajax, session)
    for _ in range(20):  # 20 poll timeouts: more than 8 idle timeouts
        pending = ajax.start("GET", "/poll", {"session": session, "since": since})
        ajax.advance(POLL_TIMEOUT)
        since = resolved(pending).json()["position"]
    assert ajax.runtime.tracker.client_count == 1


def test_sending_keeps_an_idle_session_alive(ajax):
    session = ajax.connect()
    drain(ajax, session)
    ajax.advance(IDLE_TIMEOUT - 10)
    ajax.send(session, {"type": "chat", "data": "still here"})
    ajax.advance(IDLE_TIMEOUT - 10)
    assert ajax.runtime.tracker.client_count == 1


def test_a_waiting_poll_holds_the_session_even_past_the_idle_timeout():
    ajax = stub(poll_timeout=30.0, session_idle_timeout=10.0)
    session = ajax.connect()
    _, since = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": since})
    ajax.advance(20)
    assert ajax.runtime.tracker.client_count == 1 and not has_fired(pending)


def test_a_poll_that_replaced_another_also_holds_the_session():
    ajax = stub(poll_timeout=30.0, session_idle_timeout=10.0)
    session = ajax.connect()
    _, since = drain(ajax, session)
    ajax.start("GET", "/poll", {"session": session, "since": since})
    second = ajax.start("GET", "/poll", {"session": session, "since": since})
    ajax.advance(20)
    assert ajax.runtime.tracker.client_count == 1 and not has_fired(second)


def test_a_poll_whose_connection_drops_lets_the_session_expire(ajax):
    session = ajax.connect()
    _, since = drain(ajax, session)
    ajax.start("GET", "/poll", {"session": session, "since": since})
    ajax.flush()
    for pump in list(ajax.treq._agent._pumps):
        pump.clientIO.loseConnection()
        pump.flush()
    session_object = ajax.runtime.sessions.find(session)
    assert session_object.waiting is None
    ajax.advance(IDLE_TIMEOUT)
    assert ajax.runtime.tracker.client_count == 0


def test_expiry_of_a_room_member_tells_the_others(ajax):
    ann, bob = ajax.connect(), ajax.connect()
    ajax.send(ann, {"type": "join", "data": {"room": "lobby", "username": "ann"}})
    ajax.send(bob, {"type": "join", "data": {"room": "lobby", "username": "bob"}})
    _, since = drain(ajax, bob)
    pending = ajax.start("GET", "/poll", {"session": bob, "since": since})
    ajax.advance(IDLE_TIMEOUT)  # bob's poll answers empty at 25s; ann never polled
    assert resolved(pending).json()["messages"] == []
    body = ajax.poll(bob, since).json()
    assert body["messages"] == [{"type": "leave", "data": {"room": "lobby", "username": "ann"}}]


# Overflow ------------------------------------------------------------------------------


def test_overflow_with_drop_oldest_is_reported_as_dropped():
    ajax = stub(max_queue_messages=3, queue_policy="drop-oldest")
    session = ajax.connect()
    _, since = drain(ajax, session)
    for n in range(10):
        chat(ajax, n)
    body = ajax.poll(session, since).json()
    assert [m["data"] for m in body["messages"]] == [7, 8, 9]
    assert body["dropped"] == 8  # the welcome (delivered, never acknowledged) and 7 chats
    pending = ajax.start("GET", "/poll", {"session": session, "since": body["position"]})
    chat(ajax, 10)
    ajax.flush()
    assert resolved(pending).json() == {"messages": [{"type": "chat", "data": 10, "pos": 11}], "position": 12}


def test_overflow_with_disconnect_closes_the_session_and_tells_a_waiting_poll():
    ajax = stub(max_queue_messages=3)
    session = ajax.connect()
    _, since = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": since})
    for n in range(5):
        chat(ajax, n)
    ajax.flush()
    body = resolved(pending).json()
    assert body["closed"]["code"] == 4000
    assert ajax.runtime.tracker.client_count == 0
    assert ajax.poll(session, since).status == 410


def test_overflow_with_disconnect_closes_a_session_that_was_not_polling():
    ajax = stub(max_queue_messages=3)
    session = ajax.connect()
    for n in range(5):
        chat(ajax, n)
    assert ajax.runtime.tracker.client_count == 0
    assert ajax.poll(session, 0).status == 410


def test_conflated_channels_keep_the_newest_value_per_key():
    ajax = stub(max_queue_messages=100)
    ajax.runtime.tracker.set_policy("prices", "conflate")
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "prices"}})
    _, since = drain(ajax, session)
    for n in range(50):
        ajax.runtime.tracker.publish("prices", n, key="EUR")
    assert [m["data"] for m in ajax.poll(session, since).json()["messages"]] == [49]


# Disconnect and shutdown ------------------------------------------------------------------


def test_disconnect_answers_a_waiting_poll_with_the_close(ajax):
    session = ajax.connect()
    _, since = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": since})
    ajax.call("POST", "/disconnect", {"session": session})
    body = resolved(pending).json()
    assert body["closed"] == {"code": 1000, "reason": "client disconnected"}


def test_closing_every_session_answers_every_waiting_poll(ajax):
    sessions = [ajax.connect() for _ in range(3)]
    pendings = []
    for session in sessions:
        _, since = drain(ajax, session)
        pendings.append(ajax.start("GET", "/poll", {"session": session, "since": since}))
    ajax.runtime.sessions.close_all(1001, "server shutting down")
    ajax.flush()
    assert [resolved(p).json()["closed"]["code"] for p in pendings] == [1001, 1001, 1001]
    assert ajax.runtime.tracker.client_count == 0


# JSONP ---------------------------------------------------------------------------------------


def test_the_whole_session_works_over_jsonp(ajax):
    session = ajax.call("GET", "/connect", {"callback": "c1"}).jsonp("c1")["session"]
    welcome = ajax.call("GET", "/poll", {"session": session, "since": 0, "callback": "c2"}).jsonp("c2")
    assert welcome["messages"][0]["type"] == "welcome"
    since = welcome["position"]
    pending = ajax.start("GET", "/poll", {"session": session, "since": since, "callback": "App.onPoll"})
    sent = ajax.call("GET", "/send", {"session": session, "callback": "c3",
                                      "msg": json.dumps({"type": "chat", "data": "hi"})})
    assert sent.jsonp("c3") == {"ok": True}
    ajax.flush()
    answer = resolved(pending)
    assert answer.headers["content-type"] == "application/javascript; charset=utf-8"
    assert answer.jsonp("App.onPoll")["messages"][0]["data"].endswith(" : hi")
    gone = ajax.call("GET", "/disconnect", {"session": session, "callback": "c4"})
    assert gone.jsonp("c4") == {"ok": True}
    assert ajax.runtime.tracker.client_count == 0


def test_a_jsonp_poll_that_times_out_answers_through_its_callback(ajax):
    session = ajax.connect()
    _, since = drain(ajax, session)
    pending = ajax.start("GET", "/poll", {"session": session, "since": since, "callback": "cb"})
    ajax.advance(POLL_TIMEOUT)
    assert resolved(pending).jsonp("cb") == {"messages": [], "position": since}


def test_jsonp_errors_of_the_session_endpoints_come_through_the_callback(ajax):
    for path, params in (("/poll", {"since": "x"}), ("/send", {"msg": "{}"}), ("/disconnect", {})):
        body = ajax.call("GET", path, {"session": "gone", "callback": "cb", **params}).jsonp("cb")
        assert body["status"] in (400, 410) and "error" in body


# Recovery ------------------------------------------------------------------------------------


def test_an_ajax_client_that_reconnects_resumes_what_it_missed(ajax):
    first = ajax.connect()
    welcome, _ = drain(ajax, first)
    epoch = welcome[0]["data"]["epoch"]
    ajax.send(first, {"type": "subscribe", "data": {"channel": "news"}})
    ajax.runtime.tracker.publish("news", "seen")
    messages, _ = drain(ajax, first)
    since = messages[-1]["pos"]
    ajax.call("POST", "/disconnect", {"session": first})
    ajax.runtime.tracker.publish("news", "missed")
    chat(ajax, "missed too")
    second = ajax.connect()
    ajax.send(second, {"type": "resume", "data": {"epoch": epoch, "since": since, "channels": ["news"]}})
    messages, _ = drain(ajax, second)
    assert [m["type"] for m in messages] == ["welcome", "message", "chat", "resumed"]
    assert [m["data"] for m in messages[1:3]] == ["missed", "missed too"]
    assert messages[-1]["data"]["recovered"] is True
