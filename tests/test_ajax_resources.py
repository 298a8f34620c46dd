"""
The Ajax site's endpoints (docs/protocol.md, "Ajax transport"): counts,
sessions opened and refused, sends, publishing, and every bad input.
"""

import json

import pytest
from twisted.logger import capturedLogs

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from support.wsclient import STATIC_PORT, AjaxStub, make_runtime

OWN_ORIGIN = f"http://127.0.0.1:{STATIC_PORT}"


@pytest.fixture
def ajax():
    return AjaxStub(make_runtime())


def error(answer, status):
    assert answer.status == status, answer
    return answer.json()["error"]["code"]


# get_client_count --------------------------------------------------------------


def test_client_count_has_the_documented_fields(ajax):
    body = ajax.call("GET", "/get_client_count").json()
    assert set(body) == {"client_count", "websocket", "ajax", "sse", "time"}
    assert body["client_count"] == 0 and isinstance(body["time"], str)


def test_client_count_counts_ajax_sessions(ajax):
    ajax.connect()
    ajax.connect()
    body = ajax.call("GET", "/get_client_count").json()
    assert (body["client_count"], body["ajax"], body["websocket"]) == (2, 2, 0)


def test_client_count_of_a_room(ajax):
    session = ajax.connect()
    ajax.send(session, {"type": "join", "data": {"room": "lobby", "username": "ann"}})
    body = ajax.call("GET", "/get_client_count", {"room": "lobby"}).json()
    assert body["room"] == "lobby" and body["room_count"] == 1
    assert ajax.call("GET", "/get_client_count", {"room": "empty"}).json()["room_count"] == 0


def test_client_count_of_a_bad_room_name_is_400(ajax):
    assert error(ajax.call("GET", "/get_client_count", {"room": "a b"}), 400) == "bad_data"


def test_a_query_argument_that_is_not_utf8_is_400(ajax):
    assert error(ajax.call("GET", "/get_client_count?room=%ff"), 400) == "bad_request"


# connect --------------------------------------------------------------------------


def test_connect_opens_a_session_with_the_documented_fields(ajax):
    body = ajax.call("POST", "/connect").json()
    assert set(body) == {"session", "client_id", "epoch", "position"}
    assert body["session"] != body["client_id"] and body["epoch"] == ajax.runtime.tracker.epoch
    assert ajax.runtime.tracker.get(body["client_id"]).transport == "ajax"
    assert ajax.runtime.tracker.get(body["session"]) is None


def test_connect_by_jsonp(ajax):
    answer = ajax.call("GET", "/connect", {"callback": "cb"})
    assert answer.status == 200 and "session" in answer.jsonp("cb")
    assert ajax.runtime.tracker.client_count == 1


def test_connect_from_the_servers_own_page_gets_cors(ajax):
    answer = ajax.call("POST", "/connect", headers={"Origin": OWN_ORIGIN})
    assert answer.status == 200 and answer.headers["access-control-allow-origin"] == OWN_ORIGIN


def test_connect_from_a_foreign_origin_is_403_and_logged(ajax):
    with capturedLogs() as events:
        answer = ajax.call("POST", "/connect", headers={"Origin": "http://evil.example"})
    assert error(answer, 403) == "origin_refused"
    assert ajax.runtime.tracker.client_count == 0
    assert any("--allowed-origin" in str(e.get("advice", "")) for e in events)


def test_connect_while_shutting_down_is_503(ajax):
    ajax.runtime.accepting = False
    assert error(ajax.call("POST", "/connect"), 503) == "shutting_down"


def test_connect_past_the_per_ip_limit_is_503():
    ajax = AjaxStub(make_runtime(max_connections_per_ip=2))
    ajax.connect()
    session = ajax.connect()
    assert error(ajax.call("POST", "/connect"), 503) == "too_many_connections"
    ajax.call("POST", "/disconnect", {"session": session})
    assert ajax.call("POST", "/connect").status == 200


def test_an_authenticator_refusal_is_403_and_its_attributes_are_kept():
    app = App().include(chat_app)

    @app.authenticate
    def check(info):
        if info["query"].get("token") != ["good"]:
            return False
        return {"user": "ann", "origin_seen": info["origin"]}

    ajax = AjaxStub(make_runtime(app=app))
    assert error(ajax.call("POST", "/connect", {"token": "bad"}), 403) == "authentication_refused"
    assert ajax.runtime.limiter.total == 0
    client_id = ajax.call("POST", "/connect", {"token": "good"}).json()["client_id"]
    assert ajax.runtime.tracker.get(client_id).attributes == {"user": "ann", "origin_seen": None}


def test_an_authenticator_that_crashes_is_a_500_that_opens_nothing():
    app = App().include(chat_app)

    @app.authenticate
    def crash(info):
        raise RuntimeError("auth backend down")

    ajax = AjaxStub(make_runtime(app=app))
    with capturedLogs():
        answer = ajax.call("POST", "/connect")
    assert error(answer, 500) == "internal_error" and b"backend" not in answer.body
    assert ajax.runtime.tracker.client_count == 0 and ajax.runtime.limiter.total == 0


def test_a_caller_that_leaves_while_authentication_is_pending_gets_no_session():
    from twisted.internet import defer
    decisions = []
    app = App().include(chat_app)

    @app.authenticate
    def later(info):
        decisions.append(defer.Deferred())
        return decisions[-1]

    ajax = AjaxStub(make_runtime(app=app))
    ajax.start("POST", "/connect")
    ajax.flush()
    for pump in list(ajax.treq._agent._pumps):
        pump.clientIO.loseConnection()
        pump.flush()
    decisions[0].callback({"user": "ann"})
    ajax.flush()
    assert ajax.runtime.tracker.client_count == 0 and ajax.runtime.limiter.total == 0


# send -----------------------------------------------------------------------------------


def test_send_dispatches_and_the_answer_arrives_by_poll(ajax):
    session = ajax.connect()
    assert ajax.send(session, {"type": "ping", "data": 1, "id": 2}).json() == {"ok": True}
    messages = ajax.poll(session, 0).json()["messages"]
    assert messages[-1] == {"type": "reply", "re": "ping", "id": 2, "data": 1}


def test_send_by_jsonp(ajax):
    session = ajax.connect()
    answer = ajax.call("GET", "/send", {"session": session, "callback": "cb",
                                        "msg": json.dumps({"type": "chat", "data": "hi"})})
    assert answer.jsonp("cb") == {"ok": True}
    assert ajax.poll(session, 0).json()["messages"][-1]["data"].endswith(" : hi")


@pytest.mark.parametrize("body, code", [
    (b"", "bad_json"), (b"   ", "bad_json"), (b"{", "bad_json"), (b"\xff", "bad_json"),
    (b"[]", "bad_envelope"), (b"3", "bad_envelope"), (b'{"data": 1}', "bad_envelope"),
    (b'{"type": "ping", "id": true}', "bad_envelope"),
])
def test_send_with_a_bad_body_is_400_and_the_session_goes_on(ajax, body, code):
    session = ajax.connect()
    assert error(ajax.call("POST", "/send", {"session": session}, body), 400) == code
    assert ajax.send(session, {"type": "ping"}).status == 200


def test_send_of_an_unknown_type_is_accepted_and_answered_with_an_error_envelope(ajax):
    session = ajax.connect()
    assert ajax.send(session, {"type": "nope", "id": 1}).status == 200
    assert ajax.poll(session, 0).json()["messages"][-1]["data"]["code"] == "unknown_type"


@pytest.mark.parametrize("params, code", [
    ({"callback": "cb"}, "bad_envelope"),
    ({"callback": "cb", "msg": "{"}, "bad_json"),
    ({"callback": "cb", "msg": "[]"}, "bad_envelope"),
])
def test_jsonp_send_with_a_bad_msg_is_an_error_through_the_callback(ajax, params, code):
    session = ajax.connect()
    body = ajax.call("GET", "/send", {"session": session, **params}).jsonp("cb")
    assert body["status"] == 400 and body["error"]["code"] == code


def test_send_without_session_is_400(ajax):
    assert error(ajax.call("POST", "/send", body=b'{"type":"ping"}'), 400) == "missing_session"


def test_send_with_an_empty_session_is_400(ajax):
    assert error(ajax.call("POST", "/send", {"session": ""}, b'{"type":"ping"}'), 400) == "missing_session"


def test_send_to_an_unknown_session_is_410(ajax):
    assert error(ajax.call("POST", "/send", {"session": "nope"}, b'{"type":"ping"}'), 410) == "unknown_session"


def test_send_from_a_foreign_origin_is_403(ajax):
    session = ajax.connect()
    answer = ajax.call("POST", "/send", {"session": session}, b'{"type":"chat","data":"x"}',
                       headers={"Origin": "http://evil.example"})
    assert error(answer, 403) == "origin_refused"
    assert ajax.runtime.tracker.position == 0


# disconnect ---------------------------------------------------------------------------


def test_disconnect_counts_the_session_out_and_forgets_it(ajax):
    session = ajax.connect()
    assert ajax.call("POST", "/disconnect", {"session": session}).json() == {"ok": True}
    assert ajax.runtime.tracker.client_count == 0 and ajax.runtime.limiter.total == 0
    assert error(ajax.poll(session, 0), 410) == "unknown_session"
    assert error(ajax.call("POST", "/disconnect", {"session": session}), 410) == "unknown_session"


def test_disconnect_by_jsonp(ajax):
    session = ajax.connect()
    assert ajax.call("GET", "/disconnect", {"session": session, "callback": "cb"}).jsonp("cb") == {"ok": True}
    assert ajax.runtime.tracker.client_count == 0


def test_a_session_leaving_by_disconnect_leaves_its_rooms(ajax):
    ann, bob = ajax.connect(), ajax.connect()
    for session, name in ((ann, "ann"), (bob, "bob")):
        ajax.send(session, {"type": "join", "data": {"room": "lobby", "username": name}})
    ajax.call("POST", "/disconnect", {"session": ann})
    messages = ajax.poll(bob, 0).json()["messages"]
    assert messages[-1] == {"type": "leave", "data": {"room": "lobby", "username": "ann"}}


# publish --------------------------------------------------------------------------------


def test_publish_from_loopback_without_token_reaches_subscribers(ajax):
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "news"}})
    body = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": {"x": 1}}').json()
    assert body["ok"] is True and body["subscribers"] == 1
    assert ajax.poll(session, 0).json()["messages"][-1] == {"type": "message", "channel": "news",
                                                            "data": {"x": 1}, "pos": body["pos"]}


def test_a_web_page_cannot_publish_without_a_token(ajax):
    # Any site, open in a browser on the server's machine, can send a
    # simple cross-origin POST (text/plain, no preflight) from loopback.
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "news"}})
    for origin in ("http://evil.example", "http://127.0.0.1:9000"):
        answer = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": "forged"}',
                           headers={"Origin": origin, "Content-Type": "text/plain"})
        assert answer.status == 403 and answer.json()["error"]["code"] in ("forbidden", "origin_refused"), origin
    assert all(m.get("data") != "forged" for m in ajax.poll(session, 0).json()["messages"])


def test_a_page_from_a_refused_origin_cannot_publish_even_with_the_token():
    ajax = AjaxStub(make_runtime(publish_token="s3cret"))
    answer = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": 1}',
                       headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"})
    assert error(answer, 403) == "origin_refused"


def test_publish_with_a_token_needs_the_bearer_header():
    ajax = AjaxStub(make_runtime(publish_token="s3cret"))
    body = b'{"channel": "news", "data": 1}'
    answer = ajax.call("POST", "/publish", body=body)
    assert error(answer, 401) == "unauthorized" and answer.headers["www-authenticate"].startswith("Bearer")
    assert error(ajax.call("POST", "/publish", body=body, headers={"Authorization": "Bearer wrong"}),
                 401) == "unauthorized"
    assert ajax.call("POST", "/publish", body=body,
                     headers={"Authorization": "Bearer s3cret"}).json()["ok"] is True


@pytest.mark.parametrize("body, code", [
    (b"{", "bad_json"), (b"[]", "bad_data"), (b'{"data": 1}', "bad_data"),
    (b'{"channel": "bad name"}', "bad_data"), (b'{"channel": "a", "key": [1]}', "bad_data"),
])
def test_publish_with_a_bad_body_is_400(ajax, body, code):
    assert error(ajax.call("POST", "/publish", body=body), 400) == code


# idempotent publish ---------------------------------------------------------------------


def _news(ajax, session):
    return [m for m in ajax.poll(session, 0).json()["messages"] if m["type"] == "message"]


def test_publish_retried_with_the_same_idempotency_key_is_delivered_once(ajax):
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "news"}})
    body = b'{"channel": "news", "data": 1, "idempotency_key": "order-1"}'
    first = ajax.call("POST", "/publish", body=body).json()
    again = ajax.call("POST", "/publish", body=body).json()
    # The header form is the same key.
    header = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": 1}',
                       headers={"Idempotency-Key": "order-1"}).json()
    assert first["ok"] and again["pos"] == first["pos"] == header["pos"]
    assert [m["pos"] for m in _news(ajax, session)] == [first["pos"]]
    # A key is per channel: the same key on another channel is another message.
    other = ajax.call("POST", "/publish", body=b'{"channel": "other", "data": 1, "idempotency_key": "order-1"}')
    assert other.json()["pos"] > first["pos"]


def test_publish_with_different_idempotency_keys_is_delivered_each_time(ajax):
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "news"}})
    one = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": 1, "idempotency_key": "a"}').json()
    two = ajax.call("POST", "/publish", body=b'{"channel": "news", "data": 2, "idempotency_key": "b"}').json()
    assert one["pos"] < two["pos"]
    assert [(m["data"], m["pos"]) for m in _news(ajax, session)] == [(1, one["pos"]), (2, two["pos"])]


def test_an_idempotency_key_reused_after_the_history_age_publishes_again():
    now = [1000.0]
    ajax = AjaxStub(make_runtime(history_age=5.0))
    ajax.runtime.tracker.stream.clock = lambda: now[0]
    session = ajax.connect()
    ajax.send(session, {"type": "subscribe", "data": {"channel": "news"}})
    body = b'{"channel": "news", "data": 1, "idempotency_key": "k"}'
    first = ajax.call("POST", "/publish", body=body).json()
    now[0] += 4.0
    assert ajax.call("POST", "/publish", body=body).json()["pos"] == first["pos"]
    now[0] += 1.5       # past the history age of the first publish
    later = ajax.call("POST", "/publish", body=body).json()
    assert later["pos"] > first["pos"]
    assert [m["pos"] for m in _news(ajax, session)] == [first["pos"], later["pos"]]


def test_the_idempotency_key_of_a_client_publish_delivers_once(ajax):
    reader, writer = ajax.connect(), ajax.connect()
    ajax.send(reader, {"type": "subscribe", "data": {"channel": "news"}})
    for _ in range(2):
        ajax.send(writer, {"type": "publish", "data": {"channel": "news", "data": 1, "idempotency_key": "x"}})
    assert [m["data"] for m in _news(ajax, reader)] == [1]
    answer = ajax.send(writer, {"type": "publish", "id": 1, "data": {"channel": "news", "idempotency_key": 5}})
    replies = [m for m in ajax.poll(writer, 0).json()["messages"] if m["type"] == "error"]
    assert answer.status in (200, 202) and replies[-1]["data"]["code"] == "bad_data"


@pytest.mark.parametrize("body, headers", [
    (b'{"channel": "a", "idempotency_key": 1}', {}),
    (b'{"channel": "a", "idempotency_key": ""}', {}),
    (b'{"channel": "a", "idempotency_key": "' + b"k" * 129 + b'"}', {}),
    (b'{"channel": "a"}', {"Idempotency-Key": "k" * 129}),
    (b'{"channel": "a", "idempotency_key": "x"}', {"Idempotency-Key": "y"}),
])
def test_publish_with_a_bad_idempotency_key_is_400(ajax, body, headers):
    assert error(ajax.call("POST", "/publish", body=body, headers=headers), 400) == "bad_data"
