"""
Property tests (Hypothesis, derandomized so every run is the same): no input
makes an exception escape, and every answer is a valid envelope or a
documented HTTP error.
"""

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._core.envelope import ProtocolError, parse_envelope
from support.wsclient import SESSION_HEADER, AjaxStub, MemoryWebSocket, make_runtime

ERROR_CODES = {"bad_json", "bad_envelope", "unknown_type", "bad_data", "binary_unsupported", "rate_limited",
               "forbidden", "limit", "handler_failed"}
SERVER_TYPES = {"welcome", "chat", "message", "join", "leave", "reply", "error", "subscribed",
                "unsubscribed", "members", "resumed", "pong", "reconnect"}
BUILTIN_TYPES = ["chat", "subscribe", "unsubscribe", "publish", "join", "leave", "members", "resume", "ping",
                 "echo", "crash"]

FUZZ = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)

names = st.sampled_from(["news", "lobby", "a", "", "bad name", "x" * 129]) | st.text(max_size=12)

shaped_data = st.fixed_dictionaries({}, optional={
    "channel": names, "room": names, "username": names, "data": json_values,
    "epoch": st.text(max_size=8) | st.integers(), "since": st.integers(-3, 50) | json_values,
    "channels": st.lists(names, max_size=3) | json_values,
})

envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(BUILTIN_TYPES) | st.text(max_size=70)},
    optional={"data": shaped_data | json_values,
              "id": st.integers(-(2 ** 64), 2 ** 64) | st.text(max_size=70) | json_values})

frames = (envelopes.map(lambda value: json.dumps(value).encode())
          | json_values.map(lambda value: json.dumps(value).encode())
          | st.binary(max_size=60))


def fuzz_app():
    app = App("fuzz").include(chat_app)
    app.handler("echo")(lambda ctx, data: data)

    def crash(ctx, data):
        raise RuntimeError("handler bug")
    app.handler("crash")(crash)
    app.allow_publish("a", False)
    return app


def check_answer(payload, request_id_allowed):
    answer = json.loads(payload)
    assert isinstance(answer, dict) and answer.get("type") in SERVER_TYPES, answer
    if answer["type"] == "error":
        assert answer["data"]["code"] in ERROR_CODES, answer
        assert isinstance(answer["data"]["message"], str)
        assert answer["id"] is None or answer["id"] in request_id_allowed
    return answer


@FUZZ
@given(frames=st.lists(frames, min_size=1, max_size=8))
def test_no_frame_breaks_the_websocket_protocol(frames):
    from twisted.logger import capturedLogs
    harness = MemoryWebSocket(make_runtime(app=fuzz_app(), rate_limit=0, max_channels_per_client=2))
    try:
        connection = harness.connect()
        with capturedLogs():
            for frame in frames:
                if connection.disconnected:
                    break
                connection.send_raw(frame)
        ids = set()
        for frame in frames:
            try:
                ids.add(parse_envelope(frame).id)
            except ProtocolError as error:
                ids.add(error.request_id)
            except Exception:
                pass
        for payload, binary in connection.client.raw:
            assert not binary
            check_answer(payload, ids)
        if connection.disconnected:
            # Only a text frame that is not UTF-8 may end the connection.
            assert connection.client.close_code == 1007
            assert harness.runtime.tracker.client_count == 0
        else:
            assert harness.runtime.tracker.client_count == 1
            connection.send({"type": "ping", "data": "alive"})
            assert connection.messages[-1]["data"] == "alive"
    finally:
        harness.close()


@FUZZ
@given(envelope=envelopes)
def test_an_acknowledged_request_gets_exactly_one_answer_with_its_id(envelope):
    from twisted.logger import capturedLogs
    harness = MemoryWebSocket(make_runtime(app=fuzz_app(), rate_limit=0))
    try:
        connection = harness.connect()
        del connection.client.raw[:]
        frame = json.dumps({**envelope, "id": "the-id"}).encode()
        with capturedLogs():
            connection.send_raw(frame)
        answers = [check_answer(payload, {"the-id"}) for payload, _ in connection.client.raw]
        addressed = [a for a in answers if a.get("id") == "the-id"]
        assert len(addressed) == 1, answers
    finally:
        harness.close()


callbacks = st.sampled_from(["cb", "jQuery3_1", "a.b", "$", "", "1a", "a..b", "alert(1)", "x" * 129]) \
    | st.text(max_size=20)
sinces = st.sampled_from(["0", "1", "-1", "", "abc", "1e3", "99999999999999999999"]) | st.text(max_size=6) \
    | st.integers(-5, 5).map(str)
messages = envelopes.map(json.dumps) | st.text(max_size=30)


@FUZZ
@given(path=st.sampled_from(["/poll", "/send", "/disconnect", "/connect", "/get_client_count"]),
       callback=st.none() | callbacks, session=st.none() | st.sampled_from(["valid", "", "nope"]) | st.text(max_size=8),
       since=st.none() | sinces, msg=st.none() | messages, room=st.none() | names)
def test_no_query_breaks_the_ajax_site(path, callback, session, since, msg, room):
    from twisted.logger import capturedLogs
    ajax = AjaxStub(make_runtime(app=fuzz_app(), rate_limit=0, poll_timeout=5.0))
    real = ajax.connect()
    ajax.poll(real, 0)
    params = {"callback": callback, "session": real if session == "valid" else session, "since": since,
              "msg": msg, "room": room}
    headers = {}
    if not callback and params["session"] is not None:
        # JSON requests carry the session in a header; only JSONP in the query.
        headers[SESSION_HEADER] = quote(params.pop("session"), safe='')
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items() if value is not None)
    with capturedLogs():
        pending = ajax.start("GET", path + ("?" + query if query else ""), headers=headers)
        ajax.advance(5.0)
    from support.wsclient import resolved
    answer = resolved(pending)
    assert answer.status in (200, 400, 405, 410, 413, 503), answer
    assert answer.headers["x-content-type-options"] == "nosniff"
    if answer.headers["content-type"].startswith("application/javascript"):
        assert answer.status == 200 and answer.body.startswith(b"/**/")
        body = answer.jsonp(answer.body[4:answer.body.index(b"(")].decode())
    else:
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        body = answer.json()
    assert isinstance(body, dict)
    if answer.status != 200 or "error" in body:
        assert set(body["error"]) == {"code", "message"}
        assert body.get("status", answer.status) in (400, 405, 410, 413, 503)


@FUZZ
@given(body=st.binary(max_size=80) | envelopes.map(lambda e: json.dumps(e).encode())
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_no_body_breaks_ajax_send(body):
    from twisted.logger import capturedLogs
    ajax = AjaxStub(make_runtime(app=fuzz_app(), rate_limit=0))
    session = ajax.connect()
    with capturedLogs():
        answer = ajax.call("POST", "/send", {"session": session}, body)
    assert answer.status in (200, 400), answer
    assert answer.json() == {"ok": True} or answer.json()["error"]["code"] in ("bad_json", "bad_envelope")
    try:
        request_ids = {parse_envelope(body).id}
    except ProtocolError:
        request_ids = set()
    for message in ajax.poll(session, 0).json()["messages"]:
        check_answer(json.dumps(message), request_ids)
