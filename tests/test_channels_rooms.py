"""
Channels and rooms end to end on a real in-process server: subscribe,
unsubscribe and publish with their limits and errors, the application's
publish rules, rooms with presence (also when a member vanishes), room
counts, the HTTP publish endpoint and its token, and all of it over the
Ajax transport as well as WebSocket.
"""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
import treq

from appserver import App
from appserver.apps.chat import app as chat_app
from support.wsclient import next_message, open_welcomed, send, sleep, wait_until
from support.deferreds import fired

# Helpers ---------------------------------------------------------------------


async def connect(server, reactor):
    return await open_welcomed(server.ws_url, reactor)


async def expect_type(client, reactor, message_type, request_id=None):
    """
    The next envelope must be of C{message_type} (and C{request_id}).
    """
    message = await next_message(client, reactor)
    assert message.get("type") == message_type, message
    if request_id is not None:
        assert message.get("id") == request_id, message
    return message


async def subscribe(client, reactor, channel):
    send(client, "subscribe", {"channel": channel}, f"sub-{channel}")
    # A request (it has an id) is answered by a reply, whatever its type.
    return await expect_type(client, reactor, "reply", f"sub-{channel}")


async def nothing_more(client, reactor, wait=0.15):
    """
    Nothing arrives for a short while (after a marker round trip that
    proves earlier traffic has been processed).
    """
    send(client, "ping", "marker")
    assert (await next_message(client, reactor))["type"] == "pong"
    await sleep(reactor, wait)
    assert client.messages == []


def the_client(server, client):
    return server.tracker.get(client.client_id)


async def post_publish(server, body, token=None, url=None):
    headers = {"Authorization": [f"Bearer {token}"]} if token is not None else {}
    response = await treq.post((url or server.ajax_url) + "/publish", data=json.dumps(body).encode(),
                               headers=headers, persistent=False)
    return response.code, await response.json()


class AjaxSession:
    """
    A long-poll client over real sockets.
    """

    def __init__(self, server, session):
        self.server = server
        self.session = session
        #: JSON requests carry the session secret in this header.
        self.headers = {"X-AppServer-Session": [session]}
        self.since = 0
        self.messages = []

    @classmethod
    async def open(cls, server):
        response = await treq.post(server.ajax_url + "/connect", persistent=False)
        return cls(server, (await response.json())["session"])

    async def send(self, message_type, data=None, request_id=None):
        envelope = {"type": message_type, "data": data}
        if request_id is not None:
            envelope["id"] = request_id
        response = await treq.post(f"{self.server.ajax_url}/send", headers=self.headers,
                                   data=json.dumps(envelope).encode(), persistent=False)
        assert (await response.json()) == {"ok": True}

    async def next(self, message_type, timeout=5.0):
        """
        The next message of C{message_type}, polling as needed.
        """
        from twisted.internet import reactor
        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            while self.messages:
                message = self.messages.pop(0)
                if message.get("type") == message_type:
                    return message
            url = f"{self.server.ajax_url}/poll?since={self.since}"
            answer = await (await treq.get(url, headers=self.headers, persistent=False)).json()
            self.messages += answer["messages"]
            self.since = answer["position"]
        raise AssertionError(f"no {message_type} within {timeout}s")


# Channels --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_subscribers_receive_publications_and_others_do_not(server_factory, reactor):
    server = await server_factory()
    reader, publisher, bystander = [await connect(server, reactor) for _ in range(3)]
    await subscribe(reader, reactor, "news")
    send(publisher, "publish", {"channel": "news", "data": {"headline": "hi"}}, 1)
    assert (await expect_type(publisher, reactor, "reply", 1))["data"] is None
    message = await expect_type(reader, reactor, "message")
    assert message["channel"] == "news" and message["data"] == {"headline": "hi"}
    assert isinstance(message["pos"], int)
    await nothing_more(publisher, reactor)   # publishing does not subscribe
    await nothing_more(bystander, reactor)


@pytest_twisted.ensureDeferred
async def test_a_client_holds_many_channels_and_unsubscribes_from_one(server_factory, reactor):
    server = await server_factory()
    reader, publisher = await connect(server, reactor), await connect(server, reactor)
    for channel in ("a", "b", "c"):
        await subscribe(reader, reactor, channel)
    assert the_client(server, reader).channels == {"a", "b", "c"}
    send(reader, "unsubscribe", {"channel": "b"}, 2)
    assert (await expect_type(reader, reactor, "reply", 2))["data"] == {"channel": "b"}
    for channel in ("a", "b", "c"):
        send(publisher, "publish", {"channel": channel, "data": channel})
    received = [await expect_type(reader, reactor, "message") for _ in range(2)]
    assert [m["channel"] for m in received] == ["a", "c"]
    await nothing_more(reader, reactor)
    assert server.tracker.subscriber_count("b") == 0


@pytest_twisted.ensureDeferred
async def test_subscribing_twice_delivers_once(server_factory, reactor):
    server = await server_factory()
    reader = await connect(server, reactor)
    await subscribe(reader, reactor, "news")
    await subscribe(reader, reactor, "news")
    server.tracker.publish("news", 1)
    await expect_type(reader, reactor, "message")
    await nothing_more(reader, reactor)


@pytest_twisted.ensureDeferred
async def test_the_channel_limit_per_client_is_enforced_with_a_clear_error(server_factory, reactor):
    server = await server_factory(max_channels_per_client=2)
    client = await connect(server, reactor)
    await subscribe(client, reactor, "one")
    await subscribe(client, reactor, "two")
    send(client, "subscribe", {"channel": "three"}, 3)
    error = await expect_type(client, reactor, "error", 3)
    assert error["data"]["code"] == "limit"
    assert "at most 2 channels" in error["data"]["message"]
    # Freeing one makes room again; the connection was never in doubt.
    send(client, "unsubscribe", {"channel": "one"}, 4)
    await expect_type(client, reactor, "reply", 4)
    await subscribe(client, reactor, "three")


@pytest.mark.parametrize("channel", ["", "has space", "x" * 129, "naïve", 42, None, ["a"]])
@pytest_twisted.ensureDeferred
async def test_a_bad_channel_name_is_bad_data(server_factory, reactor, channel):
    server = await server_factory()
    client = await connect(server, reactor)
    for request_id, message_type in enumerate(("subscribe", "unsubscribe", "publish")):
        send(client, message_type, {"channel": channel, "data": 1}, request_id)
        error = await expect_type(client, reactor, "error", request_id)
        assert error["data"]["code"] == "bad_data"
        assert "channel name" in error["data"]["message"]
    assert the_client(server, client).channels == set()


@pytest.mark.parametrize("data", [None, "news", {"name": "news"}])
@pytest_twisted.ensureDeferred
async def test_a_subscribe_without_a_channel_field_is_bad_data(server_factory, reactor, data):
    server = await server_factory()
    client = await connect(server, reactor)
    send(client, "subscribe", data, 1)
    assert (await expect_type(client, reactor, "error", 1))["data"]["code"] == "bad_data"


@pytest_twisted.ensureDeferred
async def test_a_dead_client_leaves_every_channel_and_room(server_factory, reactor):
    server = await server_factory()
    doomed, survivor = await connect(server, reactor), await connect(server, reactor)
    for channel in ("a", "b", "c"):
        await subscribe(doomed, reactor, channel)
    send(doomed, "join", {"room": "lobby", "username": "doomed"}, 1)
    await expect_type(doomed, reactor, "join")
    await expect_type(doomed, reactor, "reply", 1)
    assert server.tracker.subscriber_count("a") == 1
    doomed.transport.abortConnection()         # no close frame, no goodbye
    await wait_until(lambda: server.tracker.client_count == 1, reactor)
    assert server.tracker.channels == {}
    assert server.tracker.rooms == {}
    # Publishing to the emptied channels is harmless.
    server.tracker.publish("a", "anyone?")
    await nothing_more(survivor, reactor)


# Publish permissions -----------------------------------------------------------


def with_rules() -> App:
    app = App("rules").include(chat_app)
    app.allow_publish("prices.*", False)                          # read-only feed
    app.allow_publish("prices.open", True)                        # later rules win
    app.allow_publish("votes", lambda client, channel, data: data in ("yes", "no"))
    return app


@pytest.mark.parametrize("channel, data, allowed", [
    ("chat.general", "anything", True),      # no rule: chat-style channels are open
    ("prices.ACME", 1.5, False),
    ("prices.open", 1.5, True),
    ("votes", "yes", True),
    ("votes", "maybe", False),
])
@pytest_twisted.ensureDeferred
async def test_the_application_decides_who_may_publish(server_factory, reactor, channel, data, allowed):
    server = await server_factory(app=with_rules())
    reader, writer = await connect(server, reactor), await connect(server, reactor)
    await subscribe(reader, reactor, channel)
    send(writer, "publish", {"channel": channel, "data": data}, 1)
    result = await next_message(writer, reactor)
    if allowed:
        assert result["type"] == "reply"
        assert (await expect_type(reader, reactor, "message"))["data"] == data
    else:
        assert result["type"] == "error" and result["data"]["code"] == "forbidden"
        assert channel in result["data"]["message"]
        await nothing_more(reader, reactor)


@pytest_twisted.ensureDeferred
async def test_server_code_may_publish_on_a_read_only_channel(server_factory, reactor):
    server = await server_factory(app=with_rules())
    reader = await connect(server, reactor)
    await subscribe(reader, reactor, "prices.ACME")
    server.tracker.publish("prices.ACME", 101.5, key="ACME")
    assert (await expect_type(reader, reactor, "message"))["data"] == 101.5
    code, body = await post_publish(server, {"channel": "prices.ACME", "data": 102})
    assert code == 200 and body["subscribers"] == 1
    assert (await expect_type(reader, reactor, "message"))["data"] == 102


@pytest_twisted.ensureDeferred
async def test_channel_policies_of_the_app_reach_the_tracker(server_factory):
    app = App("policies")
    app.channel_policy("prices.*", "conflate")
    app.channel_policy("log.*", "drop-oldest")
    server = await server_factory(app=app)
    assert server.tracker.policy_for("prices.ACME") == "conflate"
    assert server.tracker.policy_for("log.web") == "drop-oldest"
    assert server.tracker.policy_for("chat") == "disconnect"
    with pytest.raises(ValueError):
        app.channel_policy("x", "ignore")


# Rooms -------------------------------------------------------------------------


async def join(client, reactor, room, username, request_id="j"):
    send(client, "join", {"room": room, "username": username}, request_id)
    notice = await expect_type(client, reactor, "join")
    assert notice["data"] == {"room": room, "username": username}
    await expect_type(client, reactor, "reply", request_id)


@pytest_twisted.ensureDeferred
async def test_every_member_sees_joins_and_leaves(server_factory, reactor):
    server = await server_factory()
    ann, bob, outsider = [await connect(server, reactor) for _ in range(3)]
    await join(ann, reactor, "lobby", "ann")
    await join(bob, reactor, "lobby", "bob")
    assert (await expect_type(ann, reactor, "join"))["data"] == {"room": "lobby", "username": "bob"}
    send(bob, "leave", {"room": "lobby"}, 2)
    assert (await expect_type(bob, reactor, "reply", 2))["data"] is None
    assert (await expect_type(ann, reactor, "leave"))["data"] == {"room": "lobby", "username": "bob"}
    await nothing_more(outsider, reactor)
    await nothing_more(bob, reactor)         # a leaver is not told of its own leave


@pytest_twisted.ensureDeferred
async def test_members_lists_the_room(server_factory, reactor):
    server = await server_factory()
    ann, bob = await connect(server, reactor), await connect(server, reactor)
    await join(ann, reactor, "lobby", "ann")
    await join(bob, reactor, "lobby", "bob")
    await expect_type(ann, reactor, "join")
    send(ann, "members", {"room": "lobby"}, 5)
    assert (await expect_type(ann, reactor, "reply", 5))["data"] == {"room": "lobby", "members": ["ann", "bob"]}
    send(bob, "members", {"room": "lobby"})
    assert (await expect_type(bob, reactor, "members"))["data"] == {"room": "lobby", "members": ["ann", "bob"]}
    send(bob, "members", {"room": "empty"}, 6)
    assert (await expect_type(bob, reactor, "reply", 6))["data"]["members"] == []


@pytest_twisted.ensureDeferred
async def test_a_member_that_vanishes_is_announced_as_leaving(server_factory, reactor):
    server = await server_factory()
    ann, bob = await connect(server, reactor), await connect(server, reactor)
    await join(ann, reactor, "lobby", "ann")
    await join(bob, reactor, "lobby", "bob")
    await expect_type(ann, reactor, "join")
    bob.transport.abortConnection()          # TCP reset: no close frame, no leave
    assert (await expect_type(ann, reactor, "leave"))["data"] == {"room": "lobby", "username": "bob"}
    assert fired(server.tracker.room_members("lobby")) == ["ann"]


@pytest_twisted.ensureDeferred
async def test_room_messages_from_server_code_reach_members_only(server_factory, reactor):
    server = await server_factory()
    ann, outsider = await connect(server, reactor), await connect(server, reactor)
    await join(ann, reactor, "lobby", "ann")
    assert server.tracker.send_to_room("lobby", {"type": "announcement", "data": "tea"}) == 1
    assert (await expect_type(ann, reactor, "announcement"))["data"] == "tea"
    await nothing_more(outsider, reactor)


@pytest.mark.parametrize("data, code", [
    ({"room": "lobby"}, "bad_data"),                              # no username
    ({"room": "bad room", "username": "ann"}, "bad_data"),
    ({"room": "lobby", "username": ""}, "bad_data"),
    ({"room": "lobby", "username": "x" * 65}, "bad_data"),
    ({"room": "lobby", "username": "bell\x07"}, "bad_data"),
])
@pytest_twisted.ensureDeferred
async def test_a_bad_join_is_refused(server_factory, reactor, data, code):
    server = await server_factory()
    client = await connect(server, reactor)
    send(client, "join", data, 1)
    assert (await expect_type(client, reactor, "error", 1))["data"]["code"] == code
    assert server.tracker.rooms == {}


@pytest_twisted.ensureDeferred
async def test_leaving_a_room_one_is_not_in_is_bad_data(server_factory, reactor):
    server = await server_factory()
    client = await connect(server, reactor)
    send(client, "leave", {"room": "lobby"}, 1)
    error = await expect_type(client, reactor, "error", 1)
    assert error["data"]["code"] == "bad_data" and "not a member" in error["data"]["message"]


@pytest_twisted.ensureDeferred
async def test_get_client_count_reports_a_room_size(server_factory, reactor):
    server = await server_factory()
    ann, bob, _ = [await connect(server, reactor) for _ in range(3)]
    await join(ann, reactor, "lobby", "ann")
    await join(bob, reactor, "lobby", "bob")
    response = await treq.get(server.ajax_url + "/get_client_count?room=lobby", persistent=False)
    counts = await response.json()
    assert counts["client_count"] == 3 and counts["room"] == "lobby" and counts["room_count"] == 2
    response = await treq.get(server.ajax_url + "/get_client_count?room=elsewhere&callback=cb",
                              persistent=False)
    body = await response.content()
    assert json.loads(body[len(b"/**/cb("):-2])["room_count"] == 0
    response = await treq.get(server.ajax_url + "/get_client_count?room=bad%20room", persistent=False)
    assert response.code == 400 and (await response.json())["error"]["code"] == "bad_data"


# HTTP publish ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_publish_with_the_right_token_reaches_subscribers(server_factory, reactor):
    server = await server_factory(publish_token="s3cret")
    reader = await connect(server, reactor)
    await subscribe(reader, reactor, "alerts")
    code, body = await post_publish(server, {"channel": "alerts", "data": {"level": "high"}}, token="s3cret")
    assert code == 200 and body["ok"] is True and body["subscribers"] == 1 and isinstance(body["pos"], int)
    message = await expect_type(reader, reactor, "message")
    assert message == {"type": "message", "channel": "alerts", "data": {"level": "high"}, "pos": body["pos"]}


@pytest.mark.parametrize("token", [None, "wrong", ""])
@pytest_twisted.ensureDeferred
async def test_publish_without_the_right_token_is_refused_even_from_loopback(server_factory, reactor, token):
    server = await server_factory(publish_token="s3cret")
    reader = await connect(server, reactor)
    await subscribe(reader, reactor, "alerts")
    code, body = await post_publish(server, {"channel": "alerts", "data": 1}, token=token)
    assert code == 401 and body["error"]["code"] == "unauthorized"
    await nothing_more(reader, reactor)


@pytest_twisted.ensureDeferred
async def test_publish_without_a_token_configured_is_open_to_loopback(server_factory, reactor):
    server = await server_factory()
    reader = await connect(server, reactor)
    await subscribe(reader, reactor, "alerts")
    code, body = await post_publish(server, {"channel": "alerts", "data": "from a cron job"})
    assert code == 200 and body["subscribers"] == 1
    assert (await expect_type(reader, reactor, "message"))["data"] == "from a cron job"


def test_publish_without_a_token_configured_is_refused_to_other_hosts():
    """
    Run through Twisted's request fake with a remote client address: the
    test sends no traffic beyond loopback.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.test.requesthelper import DummyRequest

    from appserver._web.sites import build_ajax_resource
    from appserver.apps.chat import app as chat_app
    from appserver._server.runtime import build_runtime
    from appserver._server.settings import Settings

    runtime = build_runtime(Settings(), chat_app, MemoryReactorClock())
    publish = build_ajax_resource(runtime).children[b"publish"]
    request = DummyRequest([])
    request.method = b"POST"
    request.client = IPv4Address("TCP", "203.0.113.7", 40000)
    request.content = io.BytesIO(b'{"channel": "alerts", "data": 1}')
    body = json.loads(publish.render(request))
    assert request.responseCode == 403 and "publish-token" in body["error"]["message"]


@pytest.mark.parametrize("body", [{"data": 1}, {"channel": "bad name", "data": 1}, ["alerts"],
                                  {"channel": "alerts", "key": [1]}])
@pytest_twisted.ensureDeferred
async def test_a_bad_publish_body_is_400(server_factory, body):
    server = await server_factory()
    code, answer = await post_publish(server, body)
    assert code == 400 and answer["error"]["code"] == "bad_data"


# Over Ajax -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_channels_work_over_the_ajax_transport_both_ways(server_factory, reactor):
    server = await server_factory()
    ajax = await AjaxSession.open(server)
    websocket = await connect(server, reactor)
    await ajax.send("subscribe", {"channel": "news"}, 1)
    assert (await ajax.next("reply"))["data"] == {"channel": "news"}
    await subscribe(websocket, reactor, "news")

    send(websocket, "publish", {"channel": "news", "data": "from websocket"})
    assert (await ajax.next("message"))["data"] == "from websocket"
    assert (await expect_type(websocket, reactor, "message"))["data"] == "from websocket"

    await ajax.send("publish", {"channel": "news", "data": "from ajax"})
    assert (await expect_type(websocket, reactor, "message"))["data"] == "from ajax"
    assert (await ajax.next("message"))["data"] == "from ajax"

    await ajax.send("unsubscribe", {"channel": "news"}, 2)
    await ajax.next("reply")
    assert server.tracker.subscriber_count("news") == 1


@pytest_twisted.ensureDeferred
async def test_rooms_work_over_the_ajax_transport(server_factory, reactor):
    server = await server_factory()
    ajax = await AjaxSession.open(server)
    websocket = await connect(server, reactor)
    await join(websocket, reactor, "lobby", "ws-user")
    await ajax.send("join", {"room": "lobby", "username": "ajax-user"})
    assert (await ajax.next("join"))["data"]["username"] == "ajax-user"
    assert (await expect_type(websocket, reactor, "join"))["data"]["username"] == "ajax-user"
    await ajax.send("members", {"room": "lobby"}, 1)
    assert (await ajax.next("reply"))["data"]["members"] == ["ajax-user", "ws-user"]
    response = await treq.post(f"{server.ajax_url}/disconnect", headers=ajax.headers, persistent=False)
    await response.content()
    assert (await expect_type(websocket, reactor, "leave"))["data"]["username"] == "ajax-user"
