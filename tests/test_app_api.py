"""
The application API (L{appserver.App}) end to end: custom applications on a
real in-process server, driven by real WebSocket clients (Autobahn) and
Ajax calls (treq) over loopback sockets.

Handlers (plain, C{async def}, Deferred-returning, failing), replies and
their C{id}, Ajax routes (JSON, JSONP, L{HTTPError}), periodic tasks,
startup hooks, raw WebSocket endpoints, and C{include}.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs

from appserver import App, Context, HTTPError, ProtocolError
from appserver._server.app import load_app
from appserver.apps.chat import app as chat_app
from appserver.apps.echo import app as echo_app
from support.wsclient import next_message, open_client, send, sleep, wait_closed, wait_until

# Helpers ---------------------------------------------------------------------


async def connect(server, reactor, path=""):
    """
    A WebSocket client of the envelope endpoint, past its C{welcome}.
    """
    client = await open_client(server.ws_url + path, reactor)
    welcome = await next_message(client, reactor, "welcome")
    assert welcome["data"]["transport"] == "websocket"
    client.client_id = welcome["data"]["client_id"]
    return client


async def answer(client, reactor, request_id, timeout=5.0):
    """
    The C{reply} or C{error} carrying C{request_id}, skipping other traffic.
    """
    deadline = reactor.seconds() + timeout
    while True:
        message = await next_message(client, reactor, timeout=max(0.01, deadline - reactor.seconds()))
        if message.get("type") in ("reply", "error") and message.get("id") == request_id:
            return message


async def ask(client, reactor, message_type, data=None, request_id=1):
    send(client, message_type, data, request_id)
    return await answer(client, reactor, request_id)


async def get(url, **kwargs):
    response = await treq.get(url, persistent=False, **kwargs)
    return response.code, await response.content()


def failures(events):
    return [event for event in events if event.get("log_failure") is not None]


# Handlers --------------------------------------------------------------------


def calculator() -> App:
    app = App("calculator")

    @app.handler("add")
    def add(ctx, data):
        return data["a"] + data["b"]

    @app.handler("note")
    def note(ctx, data):
        return None

    @app.handler("slow_add")
    async def slow_add(ctx, data):
        await deferLater(ctx.reactor, 0.05, lambda: None)
        return data["a"] + data["b"]

    @app.handler("deferred_add")
    def deferred_add(ctx, data):
        return deferLater(ctx.reactor, 0.01, lambda: data["a"] + data["b"])

    @app.handler("crash")
    def crash(ctx, data):
        raise ZeroDivisionError("the handler's own bug")

    @app.handler("async_crash")
    async def async_crash(ctx, data):
        await deferLater(ctx.reactor, 0.01, lambda: None)
        raise KeyError("missing")

    @app.handler("deferred_crash")
    def deferred_crash(ctx, data):
        def fail():
            raise RuntimeError("failed later")
        return deferLater(ctx.reactor, 0.01, fail)

    @app.handler("refuse")
    def refuse(ctx, data):
        raise ProtocolError("bad_data", "numbers only, please")

    return app


@pytest_twisted.ensureDeferred
async def test_a_plain_handler_result_is_sent_back_as_a_reply(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    send(client, "add", {"a": 2, "b": 3})
    reply = await next_message(client, reactor)
    assert reply == {"type": "reply", "re": "add", "id": None, "data": 5}


@pytest_twisted.ensureDeferred
async def test_a_reply_carries_the_request_id(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    assert await ask(client, reactor, "add", {"a": 1, "b": 1}, "req-7") == {
        "type": "reply", "re": "add", "id": "req-7", "data": 2}


@pytest_twisted.ensureDeferred
async def test_a_handler_returning_none_replies_only_when_asked(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    send(client, "note", "no answer wanted")
    reply = await ask(client, reactor, "note", "answer wanted", 9)
    assert reply == {"type": "reply", "re": "note", "id": 9, "data": None}
    assert client.messages == []       # nothing was sent for the first note


@pytest_twisted.ensureDeferred
async def test_an_async_def_handler_replies_when_it_finishes(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    assert (await ask(client, reactor, "slow_add", {"a": 20, "b": 22}))["data"] == 42


@pytest_twisted.ensureDeferred
async def test_a_deferred_returning_handler_replies_with_the_result(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    assert (await ask(client, reactor, "deferred_add", {"a": 1, "b": 2}))["data"] == 3


@pytest_twisted.ensureDeferred
async def test_a_slow_async_handler_blocks_no_other_client(server_factory, reactor):
    app = App("waiter")

    @app.handler("wait")
    async def wait(ctx, seconds):
        await deferLater(ctx.reactor, seconds, lambda: None)
        return seconds

    server = await server_factory(app=app.include(calculator()))
    slow = await connect(server, reactor)
    quick = await connect(server, reactor)
    send(slow, "wait", 1.0, 1)
    started = reactor.seconds()
    assert (await ask(quick, reactor, "add", {"a": 1, "b": 1}))["data"] == 2
    assert reactor.seconds() - started < 0.5
    assert (await answer(slow, reactor, 1))["data"] == 1.0


@pytest.mark.parametrize("message_type, logged", [
    ("crash", ZeroDivisionError), ("async_crash", KeyError), ("deferred_crash", RuntimeError)])
@pytest_twisted.ensureDeferred
async def test_a_failing_handler_is_logged_and_answered_and_the_connection_stays_open(
        server_factory, reactor, message_type, logged):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    with capturedLogs() as events:
        error = await ask(client, reactor, message_type, None, 5)
    assert error["type"] == "error" and error["id"] == 5
    assert error["data"]["code"] == "handler_failed"
    assert "Traceback" not in error["data"]["message"]          # never sent to the client
    [failure] = failures(events)
    assert failure["log_failure"].check(logged)
    assert failure["message_type"] == message_type
    assert failure["log_failure"].getTracebackObject() is not None or failure["log_failure"].frames
    # Same connection, next request: still served.
    assert (await ask(client, reactor, "add", {"a": 1, "b": 2}, 6))["data"] == 3
    assert server.tracker.client_count == 1


@pytest_twisted.ensureDeferred
async def test_a_protocol_error_from_a_handler_is_answered_with_its_code(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    error = await ask(client, reactor, "refuse", "x", 3)
    assert error == {"type": "error", "id": 3, "data": {"code": "bad_data", "message": "numbers only, please"}}


@pytest_twisted.ensureDeferred
async def test_an_unknown_type_is_answered_with_unknown_type(server_factory, reactor):
    server = await server_factory(app=calculator())
    client = await connect(server, reactor)
    assert (await ask(client, reactor, "divide", 1, 4))["data"]["code"] == "unknown_type"


@pytest_twisted.ensureDeferred
async def test_a_handler_pushes_to_the_caller_a_client_a_channel_a_room_and_everyone(server_factory, reactor):
    app = App("pusher")

    @app.handler("push")
    def push(ctx: Context, data):
        ctx.send("to_caller", 1)
        ctx.server.send_to(data["client_id"], {"type": "to_client", "data": 2})
        ctx.server.publish("news", 3)
        ctx.server.send_to_room("lobby", {"type": "to_room", "data": 4})
        ctx.server.broadcast("to_all", 5)

    server = await server_factory(app=app)
    caller = await connect(server, reactor)
    other = await connect(server, reactor)
    send(other, "subscribe", {"channel": "news"}, 1)
    assert (await next_message(other, reactor, "reply"))["id"] == 1
    send(other, "join", {"room": "lobby", "username": "other"}, 2)
    assert (await answer(other, reactor, 2))["type"] == "reply"
    send(caller, "push", {"client_id": other.client_id})
    assert (await next_message(caller, reactor, "to_caller"))["data"] == 1
    assert (await next_message(caller, reactor, "to_all"))["data"] == 5
    received = [await next_message(other, reactor) for _ in range(4)]
    assert [(m["type"], m["data"]) for m in received] == [
        ("to_client", 2), ("message", 3), ("to_room", 4), ("to_all", 5)]
    assert received[1]["channel"] == "news"
    assert caller.messages == []       # neither subscribed nor in the room


# Ajax routes ---------------------------------------------------------------


def with_routes() -> App:
    app = App("routes")

    @app.route("/price")
    def price(request):
        symbol = request.args.get("symbol", "ACME")
        if symbol == "NONE":
            raise HTTPError(404, "unknown_symbol", f"no symbol {symbol}")
        return {"symbol": symbol, "price": 12.5, "clients": request.server.client_count}

    @app.route("/order", methods=("POST",))
    def order(request):
        if not isinstance(request.body, dict) or "qty" not in request.body:
            raise HTTPError(400, "bad_order", 'the body must be {"qty": N}')
        return {"accepted": request.body["qty"]}

    @app.route("/later")
    async def later(request):
        await deferLater(request.reactor, 0.01, lambda: None)
        return {"waited": True}

    @app.route("/broken")
    def broken(request):
        raise ValueError("route bug")

    return app


@pytest_twisted.ensureDeferred
async def test_a_route_answers_json(server_factory):
    server = await server_factory(app=with_routes())
    response = await treq.get(server.ajax_url + "/price?symbol=GLOBEX", persistent=False)
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("application/json")
    assert await response.json() == {"symbol": "GLOBEX", "price": 12.5, "clients": 0}


@pytest_twisted.ensureDeferred
async def test_a_route_answers_jsonp_with_a_callback(server_factory):
    server = await server_factory(app=with_routes())
    response = await treq.get(server.ajax_url + "/price?callback=jQuery123_456&_=1700000000", persistent=False)
    body = await response.content()
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("application/javascript")
    assert body.startswith(b"/**/jQuery123_456(") and body.endswith(b");")
    assert json.loads(body[len(b"/**/jQuery123_456("):-2]) == {"symbol": "ACME", "price": 12.5, "clients": 0}


@pytest_twisted.ensureDeferred
async def test_an_http_error_from_a_route_sets_the_status_and_a_json_error(server_factory):
    server = await server_factory(app=with_routes())
    code, body = await get(server.ajax_url + "/price?symbol=NONE")
    assert code == 404
    assert json.loads(body) == {"error": {"code": "unknown_symbol", "message": "no symbol NONE"}}
    # JSONP callers see the error inside the callback, with the status.
    code, body = await get(server.ajax_url + "/price?symbol=NONE&callback=cb")
    assert code == 200
    assert json.loads(body[len(b"/**/cb("):-2])["status"] == 404


@pytest_twisted.ensureDeferred
async def test_a_post_route_gets_the_json_body(server_factory):
    server = await server_factory(app=with_routes())
    response = await treq.post(server.ajax_url + "/order", json={"qty": 3}, persistent=False)
    assert (response.code, await response.json()) == (200, {"accepted": 3})
    response = await treq.post(server.ajax_url + "/order", json=[1], persistent=False)
    assert response.code == 400 and (await response.json())["error"]["code"] == "bad_order"
    response = await treq.get(server.ajax_url + "/order", persistent=False)
    assert response.code == 405
    await response.content()


@pytest_twisted.ensureDeferred
async def test_an_async_route_answers_when_done(server_factory):
    server = await server_factory(app=with_routes())
    code, body = await get(server.ajax_url + "/later")
    assert (code, json.loads(body)) == (200, {"waited": True})


@pytest_twisted.ensureDeferred
async def test_a_crashing_route_is_a_logged_500_without_details(server_factory):
    server = await server_factory(app=with_routes())
    with capturedLogs() as events:
        code, body = await get(server.ajax_url + "/broken")
    assert code == 500
    assert json.loads(body)["error"]["code"] == "internal_error"
    assert b"route bug" not in body
    assert any(event["log_failure"].check(ValueError) for event in failures(events))


def test_a_route_path_must_be_one_segment():
    app = App()
    for bad in ("price", "/a/b", "/"):
        with pytest.raises(ValueError):
            app.route(bad)


# Tasks and startup -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_periodic_task_runs_repeatedly_and_survives_an_exception(server_factory, reactor):
    app = App("ticker")
    calls = []

    @app.every(0.02)
    def tick(server):
        calls.append(server)
        if len(calls) == 1:
            raise RuntimeError("first tick fails")
        server.publish("ticks", len(calls))

    with capturedLogs() as events:
        server = await server_factory(app=app)
        await wait_until(lambda: len(calls) >= 4, reactor)
    assert all(tracker is server.tracker for tracker in calls)
    [failure] = [e for e in failures(events) if e["log_failure"].check(RuntimeError)]
    assert failure["task"] == "tick"


@pytest_twisted.ensureDeferred
async def test_an_async_periodic_task_that_fails_keeps_running(server_factory, reactor):
    app = App("async-ticker")
    calls = []

    @app.every(0.02)
    async def tick(server):
        calls.append(1)
        await sleep(reactor, 0.001)
        if len(calls) == 2:
            raise RuntimeError("second tick fails")

    with capturedLogs() as events:
        await server_factory(app=app)
        await wait_until(lambda: len(calls) >= 4, reactor)
    assert len([e for e in failures(events) if e["log_failure"].check(RuntimeError)]) == 1


@pytest_twisted.ensureDeferred
async def test_a_periodic_task_pushes_to_subscribers(server_factory, reactor):
    app = App("clock")
    ticks = iter(range(1, 1000))

    @app.every(0.02)
    def clock(server):
        server.publish("clock", next(ticks))

    server = await server_factory(app=app)
    client = await connect(server, reactor)
    send(client, "subscribe", {"channel": "clock"})
    await next_message(client, reactor, "subscribed")
    first = await next_message(client, reactor, "message")
    second = await next_message(client, reactor, "message")
    assert first["channel"] == "clock" and second["data"] > first["data"]


def test_a_periodic_task_needs_a_positive_interval():
    with pytest.raises(ValueError):
        App().every(0)


@pytest_twisted.ensureDeferred
async def test_startup_hooks_get_the_server_and_the_reactor(server_factory, reactor):
    app = App("boot")
    seen = []

    @app.on_startup
    def plain(server, hook_reactor):
        seen.append(("plain", server, hook_reactor))

    @app.on_startup
    async def later(server, hook_reactor):
        await deferLater(hook_reactor, 0.01, lambda: None)
        seen.append(("async", server, hook_reactor))

    @app.on_startup
    def broken(server, hook_reactor):
        raise RuntimeError("startup bug")

    with capturedLogs() as events:
        server = await server_factory(app=app)
        await wait_until(lambda: len(seen) == 2, reactor)
    assert seen == [("plain", server.tracker, reactor), ("async", server.tracker, reactor)]
    assert any(e["log_failure"].check(RuntimeError) for e in failures(events))
    # The server still serves after a failing hook.
    code, _ = await get(server.ajax_url + "/get_client_count")
    assert code == 200


# Raw endpoints ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_raw_endpoint_echoes_text_and_binary_frames(server_factory, reactor):
    server = await server_factory(app=echo_app)
    echo = await open_client(server.ws_url + "echo", reactor)
    echo.sendMessage(b"not an envelope {", isBinary=False)
    echo.sendMessage(b"\x00\xff\x10", isBinary=True)
    await wait_until(lambda: len(echo.raw) == 2, reactor)
    assert echo.raw == [(b"not an envelope {", False), (b"\x00\xff\x10", True)]


@pytest_twisted.ensureDeferred
async def test_a_raw_endpoint_client_is_counted_but_gets_no_envelopes(server_factory, reactor):
    server = await server_factory(app=echo_app)
    echo = await open_client(server.ws_url + "echo", reactor)
    chatter = await connect(server, reactor)
    await wait_until(lambda: server.tracker.client_count == 2, reactor)
    code, body = await get(server.ajax_url + "/get_client_count")
    assert json.loads(body)["websocket"] == 2
    send(chatter, "chat", "hello")
    await next_message(chatter, reactor, "chat")
    echo.sendMessage(b"ping")
    await wait_until(lambda: echo.raw, reactor)
    assert echo.raw == [(b"ping", False)]    # no welcome, no chat broadcast
    echo.sendClose()
    await wait_closed(echo, reactor)
    await wait_until(lambda: server.tracker.client_count == 1, reactor)


@pytest_twisted.ensureDeferred
async def test_a_raw_endpoint_gets_the_server_size_limit(server_factory, reactor):
    server = await server_factory(app=echo_app, max_message_size=1024)
    echo = await open_client(server.ws_url + "echo", reactor)
    echo.sendMessage(b"x" * 2048)
    code, _ = await wait_closed(echo, reactor)
    assert code == 1009


@pytest_twisted.ensureDeferred
async def test_an_unknown_websocket_path_is_refused(server_factory, reactor):
    server = await server_factory(app=echo_app)
    with pytest.raises(Exception):
        await open_client(server.ws_url + "nothing", reactor, timeout=2.0)


def test_an_endpoint_path_must_be_one_segment():
    with pytest.raises(ValueError):
        App().endpoint("/a/b")


# Composition and loading ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_include_adds_handlers_and_the_including_app_wins(server_factory, reactor):
    base = calculator()
    app = App("mine")

    @app.handler("add")
    def add_as_text(ctx, data):
        return f"{data['a']}+{data['b']}"

    app.include(base).include(chat_app)
    server = await server_factory(app=app)
    client = await connect(server, reactor)
    assert (await ask(client, reactor, "add", {"a": 1, "b": 2}, 1))["data"] == "1+2"
    assert (await ask(client, reactor, "slow_add", {"a": 1, "b": 2}, 2))["data"] == 3
    send(client, "chat", "included chat")
    assert (await next_message(client, reactor, "chat"))["data"].endswith(" : included chat")


@pytest_twisted.ensureDeferred
async def test_the_default_app_is_the_chat(server_factory, reactor):
    server = await server_factory()
    first = await connect(server, reactor)
    second = await connect(server, reactor)
    send(first, "chat", "hi")
    for client in (first, second):
        message = await next_message(client, reactor, "chat")
        assert message["data"].startswith("Message from tcp") and message["data"].endswith(" : hi")
        assert isinstance(message["pos"], int)


@pytest_twisted.ensureDeferred
async def test_handlers_work_over_the_ajax_transport(server_factory):
    server = await server_factory(app=calculator())
    connected = await (await treq.post(server.ajax_url + "/connect", persistent=False)).json()
    session = {"X-AppServer-Session": connected["session"]}
    response = await treq.post(server.ajax_url + "/send", headers=session, persistent=False,
                               data=json.dumps({"type": "slow_add", "data": {"a": 4, "b": 5}, "id": 1}).encode())
    assert (await response.json()) == {"ok": True}
    response = await treq.post(server.ajax_url + "/send", headers=session, persistent=False,
                               data=json.dumps({"type": "crash", "id": 2}).encode())
    await response.content()
    messages, since = [], 0
    for _ in range(20):
        answer_ = await (await treq.get(server.ajax_url + f"/poll?since={since}", headers=session,
                                        persistent=False)).json()
        messages += answer_["messages"]
        since = answer_["position"]
        if len([m for m in messages if m.get("id") in (1, 2)]) == 2:
            break
    by_id = {m["id"]: m for m in messages if m.get("id") is not None}
    assert by_id[1] == {"type": "reply", "re": "slow_add", "id": 1, "data": 9}
    assert by_id[2]["type"] == "error" and by_id[2]["data"]["code"] == "handler_failed"


@pytest.mark.parametrize("reference, complaint", [
    ("appserver.apps.chat", "must look like"),
    ("no_such_module_xyz:app", "cannot import"),
    ("appserver.apps.chat:nope", "has no attribute"),
    ("appserver.apps.chat:MAX_CHAT_LENGTH", "not an appserver.App"),
])
def test_load_app_says_what_is_wrong(reference, complaint):
    with pytest.raises(ValueError, match=complaint):
        load_app(reference)


def test_load_app_finds_the_gallery():
    assert "board_post" in load_app("appserver.apps.gallery:app").handlers


# The gallery's server side (appserver.apps.gallery) --------------------------


@pytest_twisted.ensureDeferred
async def test_gallery_countdown_pushes_to_its_caller_only_once_a_second(server_factory, reactor):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    runner, bystander = await connect(server, reactor), await connect(server, reactor)
    started = reactor.seconds()
    send(runner, "countdown", {"seconds": 2}, 1)
    pushed = [await next_message(runner, reactor, "countdown") for _ in range(3)]
    assert [m["data"]["remaining"] for m in pushed] == [2, 1, 0]
    assert 1.8 <= reactor.seconds() - started < 4
    done = await answer(runner, reactor, 1)
    assert done["data"] == {"run": pushed[0]["data"]["run"], "finished": True}
    assert bystander.messages == []


@pytest_twisted.ensureDeferred
async def test_gallery_countdown_restarted_replaces_the_running_one(server_factory, reactor):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    client = await connect(server, reactor)
    send(client, "countdown", {"seconds": 5}, 1)
    first = await next_message(client, reactor, "countdown")
    send(client, "countdown", {"seconds": 1}, 2)
    second = await next_message(client, reactor, "countdown")
    assert second["data"]["run"] != first["data"]["run"] and second["data"]["remaining"] == 1
    assert (await answer(client, reactor, 1))["data"]["finished"] is False
    assert (await answer(client, reactor, 2))["data"]["finished"] is True


@pytest_twisted.ensureDeferred
async def test_gallery_countdown_ends_quietly_when_its_client_goes(server_factory, reactor):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    client = await connect(server, reactor)
    with capturedLogs() as events:
        send(client, "countdown", {"seconds": 2}, 1)
        await next_message(client, reactor, "countdown")
        client.transport.abortConnection()
        await wait_until(lambda: server.tracker.client_count == 0, reactor)
        await sleep(reactor, 1.2)              # past the next step of the loop
    assert failures(events) == []


@pytest.mark.parametrize("data", [{"seconds": 0}, {"seconds": 61}, {"seconds": "5"}, {"seconds": True}, "x"])
@pytest_twisted.ensureDeferred
async def test_gallery_countdown_refuses_a_bad_duration(server_factory, reactor, data):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    client = await connect(server, reactor)
    assert (await ask(client, reactor, "countdown", data, 1))["data"]["code"] == "bad_data"


@pytest_twisted.ensureDeferred
async def test_gallery_board_keeps_the_latest_posts_newest_first(server_factory, reactor):
    from appserver.apps.gallery import MAX_POSTS, build_app
    server = await server_factory(app=build_app(seed=1), rate_limit=0)
    reader, writer = await connect(server, reactor), await connect(server, reactor)
    send(reader, "subscribe", {"channel": "board"}, "s")
    await next_message(reader, reactor, "reply")
    for number in range(1, MAX_POSTS + 6):
        send(writer, "board_post", {"author": "ann", "text": f"post {number}"}, number)
    last = await answer(writer, reactor, MAX_POSTS + 5)
    assert last["data"] == {"id": MAX_POSTS + 5}
    live = await next_message(reader, reactor, "message")
    assert live["channel"] == "board" and live["data"]["text"] == "post 1"
    board = (await ask(writer, reactor, "board_load", None, "load"))["data"]["posts"]
    assert len(board) == MAX_POSTS
    assert [p["text"] for p in board[:2]] == [f"post {MAX_POSTS + 5}", f"post {MAX_POSTS + 4}"]
    assert board[-1]["text"] == "post 6"
    for bad in ({"author": "ann", "text": ""}, {"author": "", "text": "x"}, {"author": "ann", "text": "x" * 501}):
        assert (await ask(writer, reactor, "board_post", bad, "bad"))["data"]["code"] == "bad_data"
    # Only the server writes the board channel.
    error = await ask(writer, reactor, "publish", {"channel": "board", "data": {"text": "fake"}}, "p")
    assert error["data"]["code"] == "forbidden"


@pytest_twisted.ensureDeferred
async def test_gallery_editor_versions_and_publishes_the_text(server_factory, reactor):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    first, second = await connect(server, reactor), await connect(server, reactor)
    assert (await ask(second, reactor, "editor_load"))["data"] == {"text": "", "version": 0}
    send(second, "subscribe", {"channel": "editor"}, "s")
    await next_message(second, reactor, "reply")
    assert (await ask(first, reactor, "editor_update", {"text": "hello"}, 2))["data"] == {"version": 1}
    published = await next_message(second, reactor, "message")
    assert published["data"] == {"text": "hello", "version": 1, "author": first.client_id}
    assert (await ask(second, reactor, "editor_load", None, 3))["data"] == {"text": "hello", "version": 1}
    assert (await ask(first, reactor, "editor_update", {"text": 5}, 4))["data"]["code"] == "bad_data"


@pytest_twisted.ensureDeferred
async def test_gallery_room_chat_needs_membership_and_uses_the_joined_name(server_factory, reactor):
    from appserver.apps.gallery import build_app
    server = await server_factory(app=build_app(seed=1))
    ann, outsider = await connect(server, reactor), await connect(server, reactor)
    send(ann, "join", {"room": "lobby", "username": "ann"}, 1)
    await answer(ann, reactor, 1)
    send(ann, "room_chat", {"room": "lobby", "text": "hi"})
    assert (await next_message(ann, reactor, "room_chat"))["data"] == {"room": "lobby", "username": "ann",
                                                                       "text": "hi"}
    error = await ask(outsider, reactor, "room_chat", {"room": "lobby", "text": "hi"}, 2)
    assert error["data"]["code"] == "forbidden"
    assert outsider.messages == []


@pytest_twisted.ensureDeferred
async def test_gallery_ticker_is_read_only_conflated_and_has_a_snapshot(server_factory, reactor):
    from appserver.apps.gallery import SYMBOLS, build_app
    server = await server_factory(app=build_app(seed=1))
    client = await connect(server, reactor)
    assert server.tracker.policy_for("prices.ACME") == "conflate"
    snapshot = (await ask(client, reactor, "ticker_snapshot"))["data"]["quotes"]
    assert [q["symbol"] for q in snapshot] == list(SYMBOLS)
    send(client, "subscribe", {"channel": "prices.ACME"}, "s")
    await next_message(client, reactor, "reply")
    quote = (await next_message(client, reactor, "message", timeout=3))["data"]
    assert quote["symbol"] == "ACME" and quote["price"] > 0 and quote["volume"] > 0
    assert set(quote) == {"symbol", "price", "change", "change_pct", "volume", "time"}
    error = await ask(client, reactor, "publish", {"channel": "prices.ACME", "data": {"price": 1}}, 2)
    assert error["data"]["code"] == "forbidden"


@pytest_twisted.ensureDeferred
async def test_gallery_dashboard_pushes_and_serves_the_same_counter(server_factory, reactor):
    from appserver.apps.gallery import build_app
    app = build_app(seed=1)
    server = await server_factory(app=app)
    client = await connect(server, reactor)
    send(client, "subscribe", {"channel": "dashboard"}, "s")
    await next_message(client, reactor, "reply")
    pushed = (await next_message(client, reactor, "message", timeout=3))["data"]
    assert pushed["counter"] >= 1
    code, body = await get(server.ajax_url + "/dashboard_state?callback=cb")
    polled = json.loads(body[len(b"/**/cb("):-2])
    assert polled["counter"] >= pushed["counter"] and polled["counter"] == app.state.counter
