"""
Several real appserver nodes (twistd subprocesses) on one real redis-server:
what a client sees must be what one server would show (docs/scaling.md).

Every process (Redis, nodes, nginx) is started on a free loopback port and
stopped by its pid; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer

from support.nginx import NginxServer, nginx_path
from support.redis import RedisServer, free_port, redis_server_path
from support.servers import wait_until_ready

pytestmark = [
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(redis_server_path() is None,
                       reason="redis-server is not installed (apt-get install redis-server; .ci/run does)"),
]

#: Short liveness bounds so a dead node drops out quickly in tests; the
#: defaults (2 s / 6 s) work the same way, only slower.
FAST = "?heartbeat=0.5&ttl=2"


# Helpers -------------------------------------------------------------------------


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def eventually(reactor: Any, check: Callable[[], Any], timeout: float = 15.0, step: float = 0.1) -> Any:
    """
    Call C{check} (sync or async) until it returns something true, at most
    C{timeout} seconds; returns that value.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if hasattr(last, "__await__"):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout}s (last: {last!r})")
        await sleep(reactor, step)


class _Recorder(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.client.received.append(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.client.closed = True
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"WebSocket closed before opening: {code} {reason}"))


class WS:
    """
    A WebSocket client that records every envelope.
    """

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.closed = False
        self.protocol: Any = None

    @classmethod
    async def open(cls, url: str, reactor: Any) -> "WS":
        client = cls()
        factory = WebSocketClientFactory(url)
        factory.protocol = _Recorder
        factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=2)
        factory.opened = defer.Deferred()
        factory.client = client
        connectWS(factory, timeout=5)
        client.protocol = await factory.opened.addTimeout(10, reactor)
        await client.wait_for(reactor, lambda m: m["type"] == "welcome")
        return client

    def send(self, message_type: str, data: Any = None, **extra: Any) -> None:
        self.protocol.sendMessage(json.dumps({"type": message_type, "data": data, **extra}).encode())

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == message_type]

    @property
    def welcome(self) -> dict[str, Any]:
        return self.of_type("welcome")[0]["data"]

    async def wait_for(self, reactor: Any, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 10.0) -> dict[str, Any]:
        found = await eventually(reactor, lambda: [m for m in self.received if predicate(m)], timeout)
        return found[0]

    def close(self) -> None:
        if self.protocol is not None and not self.closed:
            self.protocol.dropConnection(abort=True)


class Ajax:
    """
    An Ajax session client whose requests may each go to another base URL
    (another node): C{urls} are used in turn.
    """

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._turn = 0
        self.session: str | None = None
        self.client_id: str | None = None
        self.cursor = 0
        self.received: list[dict[str, Any]] = []
        self.polls = 0
        self._stopped = False
        self._loop: defer.Deferred[None] | None = None
        self._poll: defer.Deferred[Any] | None = None

    def _url(self, path: str) -> str:
        base = self.urls[self._turn % len(self.urls)]
        self._turn += 1
        return base + path

    async def connect(self) -> "Ajax":
        response = await treq.post(self._url("/connect"), b"", persistent=False)
        assert response.code == 200, await response.text()
        answer = await response.json()
        self.session = answer["session"]
        self.client_id = answer["client_id"]
        return self

    def _headers(self) -> dict[str, list[str]]:
        # JSON requests carry the session secret in a header (routed with the request).
        assert self.session is not None
        return {"X-AppServer-Session": [self.session]}

    async def send(self, message_type: str, data: Any = None) -> None:
        response = await treq.post(self._url("/send"), json.dumps({"type": message_type, "data": data}).encode(),
                                   headers=self._headers(), persistent=False)
        assert response.code == 200, await response.text()

    async def poll_once(self) -> None:
        self._poll = treq.get(self._url("/poll"), params={"since": str(self.cursor)}, headers=self._headers(),
                              persistent=False)
        response = await self._poll
        body = await response.json()
        assert response.code == 200, body
        self.polls += 1
        self.received.extend(body["messages"])
        self.cursor = body["position"]

    def start_polling(self, reactor: Any) -> None:
        async def loop() -> None:
            while not self._stopped:
                try:
                    await self.poll_once()
                except Exception:
                    if self._stopped:
                        return
                    await sleep(reactor, 0.2)
        self._loop = defer.ensureDeferred(loop())

    async def stop(self) -> None:
        self._stopped = True
        if self._poll is not None:
            self._poll.cancel()
        if self._loop is not None:
            try:
                await self._loop.addTimeout(10, _reactor())
            except Exception:
                pass

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m["type"] == message_type]

    async def wait_for(self, reactor: Any, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float = 15.0) -> dict[str, Any]:
        found = await eventually(reactor, lambda: [m for m in self.received if predicate(m)], timeout)
        return found[0]


def _reactor() -> Any:
    from twisted.internet import reactor
    return reactor


async def counts(url: str, room: str | None = None) -> dict[str, Any]:
    params = {"room": room} if room else {}
    response = await treq.get(url + "/get_client_count", params=params, persistent=False)
    assert response.code == 200
    return await response.json()


async def publish(url: str, channel: str, data: Any) -> dict[str, Any]:
    response = await treq.post(url + "/publish", json.dumps({"channel": channel, "data": data}).encode(),
                               persistent=False)
    assert response.code == 200, await response.text()
    return await response.json()


async def publish_once(url: str, channel: str, data: Any, idempotency_key: str) -> dict[str, Any]:
    response = await treq.post(url + "/publish", json.dumps({"channel": channel, "data": data}).encode(),
                               headers={"Idempotency-Key": idempotency_key}, persistent=False)
    assert response.code == 200, await response.text()
    return await response.json()


def chats(received: list[dict[str, Any]]) -> list[str]:
    return [m["data"].rsplit(" : ", 1)[-1] for m in received if m["type"] == "chat"]


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(redis, server_process):
    """
    Start nodes on the test's Redis: C{cluster("a", *options)}. Set up after
    Redis, so the nodes stop before it.
    """
    def start(name: str, *args: str, query: str = "", **kwargs: Any):
        node = server_process("--backplane", redis.url + query, "--node-id", name, "--access-log", "false",
                              "--poll-timeout", "5", *args, **kwargs)
        # Listening is not being in the cluster yet: a test that routes or
        # publishes across nodes at once would race the node's connection.
        wait_until_ready(node)
        return node
    return start


@pytest.fixture
def closing():
    """
    Register clients to close at the end of the test.
    """
    clients: list[Any] = []
    yield clients.append
    for client in clients:
        if isinstance(client, WS):
            client.close()
        else:
            pytest_twisted.blockon(defer.ensureDeferred(client.stop()))
    # Let the reactor carry out the aborts before the nodes are stopped
    # (their teardown blocks the reactor).
    pytest_twisted.blockon(sleep(_reactor(), 0.2))


# Two nodes, both transports ------------------------------------------------------


async def websocket_on_a_ajax_on_b(cluster, reactor, closing):
    """
    Two nodes, a WebSocket client on the first and a polling Ajax client on
    the second.
    """
    a = cluster("a")
    b = cluster("b")
    ws = await WS.open(a.url("ws"), reactor)
    closing(ws)
    ajax = await Ajax([b.url("ajax")]).connect()
    closing(ajax)
    ajax.start_polling(reactor)
    return a, b, ws, ajax


@pytest_twisted.ensureDeferred
async def test_websocket_on_one_node_and_ajax_on_another_chat_both_ways(cluster, redis, reactor, closing):
    a, b, ws, ajax = await websocket_on_a_ajax_on_b(cluster, reactor, closing)
    welcome = await ajax.wait_for(reactor, lambda m: m["type"] == "welcome")
    assert welcome["data"]["epoch"] == ws.welcome["epoch"]

    ws.send("chat", "from the websocket")
    await ajax.wait_for(reactor, lambda m: m["type"] == "chat" and m["data"].endswith("from the websocket"))
    await ajax.send("chat", "from ajax")
    await ws.wait_for(reactor, lambda m: m["type"] == "chat" and m["data"].endswith("from ajax"))
    # One order, one position per message, on both nodes.
    ws_chats = [(m["pos"], m["data"]) for m in ws.of_type("chat")]
    await eventually(reactor, lambda: len(ajax.of_type("chat")) == 2)
    assert [(m["pos"], m["data"]) for m in ajax.of_type("chat")] == ws_chats
    assert ws_chats[0][0] < ws_chats[1][0]


@pytest_twisted.ensureDeferred
async def test_channel_messages_cross_nodes_once_each_in_order(cluster, redis, reactor, closing):
    a, b, ws, ajax = await websocket_on_a_ajax_on_b(cluster, reactor, closing)
    ws.send("subscribe", {"channel": "news"})
    await ajax.send("subscribe", {"channel": "news"})
    await ws.wait_for(reactor, lambda m: m["type"] == "subscribed")
    await ajax.wait_for(reactor, lambda m: m["type"] == "subscribed")

    published = []
    for i in range(20):
        published.append((await publish((a, b)[i % 2].url("ajax"), "news", i))["pos"])
    ws.send("publish", {"channel": "news", "data": "from ws"})

    def news(received: list[dict[str, Any]]) -> list[Any]:
        return [m["data"] for m in received if m["type"] == "message" and m["channel"] == "news"]

    expected = list(range(20)) + ["from ws"]
    await eventually(reactor, lambda: news(ws.received) == expected and news(ajax.received) == expected)
    positions = [m["pos"] for m in ws.of_type("message")]
    assert positions == sorted(set(positions)) and positions[:20] == published
    assert [m["pos"] for m in ajax.of_type("message")] == positions


@pytest_twisted.ensureDeferred
async def test_counts_and_presence_are_global(cluster, redis, reactor, closing):
    a, b, ws, ajax = await websocket_on_a_ajax_on_b(cluster, reactor, closing)

    for site in (a, b):
        answer = await eventually(reactor, lambda site=site: _counts_match(site, 2, 1, 1))
        assert answer["nodes"] == 2

    ws.send("join", {"room": "lobby", "username": "wendy"})
    await ws.wait_for(reactor, lambda m: m["type"] == "join")
    await ajax.send("join", {"room": "lobby", "username": "alex"})
    # Each is told of the other's arrival, across nodes.
    await ws.wait_for(reactor, lambda m: m["type"] == "join" and m["data"]["username"] == "alex")
    await ajax.wait_for(reactor, lambda m: m["type"] == "join" and m["data"]["username"] == "alex")

    async def members_seen_by_ws() -> bool:
        ws.send("members", {"room": "lobby"}, id="m")
        reply = await ws.wait_for(reactor, lambda m: m["type"] == "reply" and m["id"] == "m")
        ws.received.remove(reply)
        return reply["data"]["members"] == ["alex", "wendy"]

    await eventually(reactor, members_seen_by_ws)
    await ajax.send("members", {"room": "lobby"})
    members = await ajax.wait_for(reactor, lambda m: m["type"] == "members")
    assert members["data"] == {"room": "lobby", "members": ["alex", "wendy"]}
    room = await eventually(reactor, lambda: _room_count(b, "lobby", 2))
    assert room["room"] == "lobby"

    await ajax.send("leave", {"room": "lobby"})
    await ws.wait_for(reactor, lambda m: m["type"] == "leave" and m["data"]["username"] == "alex")


async def _counts_match(site, total: int, websocket: int, ajax: int) -> Any:
    answer = await counts(site.url("ajax"))
    ok = (answer["client_count"], answer["websocket"], answer["ajax"]) == (total, websocket, ajax)
    return answer if ok else None


async def _room_count(site, room: str, expected: int) -> Any:
    answer = await counts(site.url("ajax"), room)
    return answer if answer.get("room_count") == expected else None


@pytest_twisted.ensureDeferred
async def test_an_ajax_session_works_through_any_node(cluster, redis, reactor, closing):
    a = cluster("a")
    b = cluster("b")
    ajax = await Ajax([a.url("ajax"), b.url("ajax")]).connect()
    closing(ajax)
    assert ajax.session.startswith("a.")
    ajax.start_polling(reactor)
    for i in range(10):
        await ajax.send("chat", f"m{i}")
    await eventually(reactor, lambda: chats(ajax.received) == [f"m{i}" for i in range(10)])
    assert ajax.polls >= 2
    await eventually(reactor, lambda: _counts_match(b, 1, 0, 1))
    # An unknown session is unknown on every node.
    response = await treq.get(b.url("ajax") + "/poll", params={"since": "0"},
                              headers={"X-AppServer-Session": ["a.nosuchsession"]}, persistent=False)
    assert response.code == 410
    assert (await response.json())["error"]["code"] == "unknown_session"
    # The public client id is no credential on any node, routed or not.
    assert ajax.client_id != ajax.session and not ajax.session.endswith(ajax.client_id)
    for node in (a, b):
        for guess in (ajax.client_id, "a." + ajax.client_id):
            response = await treq.post(node.url("ajax") + "/send", b'{"type": "chat", "data": "forged"}',
                                       headers={"X-AppServer-Session": [guess]}, persistent=False)
            assert response.code == 410, await response.text()
            assert (await response.json())["error"]["code"] == "unknown_session"
    # JSONP carries the secret in the query, routed as well.
    response = await treq.get(b.url("ajax") + "/send", params={"session": ajax.session, "callback": "cb",
                                                               "msg": '{"type": "chat", "data": "jsonp"}'},
                              persistent=False)
    text = await response.text()
    assert text.startswith("/**/cb(") and json.loads(text[len("/**/cb("):-2]) == {"ok": True}, text
    await eventually(reactor, lambda: "jsonp" in chats(ajax.received))
    assert "forged" not in chats(ajax.received)


# Failures --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_killed_node_leaves_counts_and_rooms_and_its_clients_recover_elsewhere(
        cluster, redis, reactor, closing):
    a = cluster("a", query=FAST)
    b = cluster("b", query=FAST)
    doomed = await WS.open(a.url("ws"), reactor)
    closing(doomed)
    doomed.send("subscribe", {"channel": "news"})
    doomed.send("join", {"room": "lobby", "username": "doomed"})
    watcher = await WS.open(b.url("ws"), reactor)
    closing(watcher)
    watcher.send("join", {"room": "lobby", "username": "watcher"})
    await watcher.wait_for(reactor, lambda m: m["type"] == "join" and m["data"]["username"] == "watcher")
    await eventually(reactor, lambda: _counts_match(b, 2, 2, 0))
    await publish(b.url("ajax"), "news", "before")
    seen = await doomed.wait_for(reactor, lambda m: m["type"] == "message" and m["data"] == "before")
    epoch, since = doomed.welcome["epoch"], seen["pos"]

    killed_at = time.monotonic()
    a.kill()
    published = [(await publish(b.url("ajax"), "news", f"missed {i}"))["pos"] for i in range(5)]
    watcher.send("chat", "while you were away")
    await watcher.wait_for(reactor, lambda m: m["type"] == "chat")

    # Counts: node a drops out within its liveness bound (ttl 2 s).
    answer = await eventually(reactor, lambda: _counts_match(b, 1, 1, 0), timeout=15)
    assert answer["nodes"] == 1
    assert time.monotonic() - killed_at < 2 + 0.5 + 5  # ttl + heartbeat + generous margin
    # Rooms: the survivors are told the dead node's members left.
    await watcher.wait_for(reactor, lambda m: m["type"] == "leave" and m["data"]["username"] == "doomed",
                           timeout=15)

    # The client comes back on node b (whose own history has everything).
    back = await WS.open(b.url("ws"), reactor)
    closing(back)
    back.send("resume", {"epoch": epoch, "since": since, "channels": ["news"]})
    resumed = await back.wait_for(reactor, lambda m: m["type"] == "resumed")
    assert resumed["data"]["recovered"] is True
    replayed = back.received[1:back.received.index(resumed)]
    assert [m["data"] for m in replayed] == [f"missed {i}" for i in range(5)] + \
        [m["data"] for m in watcher.of_type("chat")]
    assert [m["pos"] for m in replayed] == sorted(m["pos"] for m in replayed)
    assert [m["pos"] for m in replayed if m["type"] == "message"] == published

    # And on a node started after all this, which must read Redis's history.
    c = cluster("c", query=FAST)
    late = await WS.open(c.url("ws"), reactor)
    closing(late)
    late.send("resume", {"epoch": epoch, "since": since, "channels": ["news"]})
    resumed = await late.wait_for(reactor, lambda m: m["type"] == "resumed")
    assert resumed["data"]["recovered"] is True
    assert late.received[1:late.received.index(resumed)] == replayed
    assert "resumes from position" in c.log() and "resumes from position" not in b.log()
    # Live messages flow after the replay, once.
    await publish(c.url("ajax"), "news", "live")
    await late.wait_for(reactor, lambda m: m.get("data") == "live")
    await back.wait_for(reactor, lambda m: m.get("data") == "live")
    assert [m["data"] for m in late.of_type("message")].count("live") == 1


@pytest_twisted.ensureDeferred
async def test_a_resume_with_positions_redis_no_longer_has_is_not_recovered(cluster, redis, reactor,
                                                                             closing):
    a = cluster("a", "--history-size", "3")
    ws = await WS.open(a.url("ws"), reactor)
    closing(ws)
    epoch = ws.welcome["epoch"]
    first = (await publish(a.url("ajax"), "news", 0))["pos"]
    for i in range(1, 6):
        await publish(a.url("ajax"), "news", i)
    b = cluster("b", "--history-size", "3")
    late = await WS.open(b.url("ws"), reactor)
    closing(late)
    late.send("resume", {"epoch": epoch, "since": first, "channels": ["news"]})
    resumed = await late.wait_for(reactor, lambda m: m["type"] == "resumed")
    assert resumed["data"]["recovered"] is False
    # What is still kept is sent all the same, in order.
    assert [m["data"] for m in late.of_type("message")] == [3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_nodes_survive_a_redis_restart_and_resume_cross_node_delivery(cluster, redis, reactor,
                                                                           closing):
    a = cluster("a", query=FAST)
    b = cluster("b", query=FAST)
    on_a = await WS.open(a.url("ws"), reactor)
    closing(on_a)
    on_b = await WS.open(b.url("ws"), reactor)
    closing(on_b)
    on_a.send("chat", "before")
    await on_b.wait_for(reactor, lambda m: m["type"] == "chat" and m["data"].endswith("before"))
    epoch = on_a.welcome["epoch"]

    redis.stop()
    # Local clients are still served: a's chat reaches a's client (without
    # a position: nothing could give it one).
    on_a.send("chat", "during")
    during = await on_a.wait_for(reactor, lambda m: m["type"] == "chat" and m["data"].endswith("during"))
    assert "pos" not in during
    answer = await counts(b.url("ajax"))
    assert answer["client_count"] >= 1
    assert a.process.poll() is None and b.process.poll() is None
    # Not ready while out of the cluster (it still serves its own clients).
    await eventually(reactor, lambda: _readiness(a, 503, "Redis"), timeout=15)

    redis.start()

    async def crosses() -> bool:
        marker = f"after {time.monotonic()}"
        on_a.send("chat", marker)
        await sleep(reactor, 0.3)
        return any(m["type"] == "chat" and m["data"].endswith(marker) and "pos" in m for m in on_b.received)

    await eventually(reactor, crosses, timeout=30, step=0.2)
    # Counts are global again (each node re-sent its own), and positions
    # go on growing under the same epoch.
    await eventually(reactor, lambda: _counts_match(a, 2, 2, 0), timeout=15)
    positions = [m["pos"] for m in on_b.of_type("chat") if "pos" in m]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert b"appserver:epoch" in redis.command("KEYS", "*")
    assert redis.command("GET", "appserver:epoch").strip().decode() == epoch
    assert "lost the Redis backplane" in a.log() and "back on the Redis backplane" in a.log()
    await eventually(reactor, lambda: _readiness(a, 200, "ready"), timeout=15)
    metrics = await (await treq.get(a.url("ajax") + "/metrics", persistent=False)).text()
    assert re.search(r'appserver_backplane_errors_total\{operation="connection"\} [1-9]', metrics)
    assert re.search(r'appserver_backplane_seconds_count\{operation="publish"\} [1-9]', metrics)


async def _readiness(site, status: int, text: str) -> bool:
    response = await treq.get(site.url("ajax") + "/readyz", persistent=False)
    body = await response.text()
    return response.code == status and text in body


@pytest_twisted.ensureDeferred
async def test_a_node_whose_subscription_drops_catches_up_in_order(cluster, redis, reactor, closing):
    a = cluster("a")
    b = cluster("b")
    listener = await WS.open(a.url("ws"), reactor)
    closing(listener)
    listener.send("subscribe", {"channel": "news"})
    await listener.wait_for(reactor, lambda m: m["type"] == "subscribed")
    await publish(b.url("ajax"), "news", "before")
    await listener.wait_for(reactor, lambda m: m.get("data") == "before")

    # Every node's subscription is cut; the command connections stay.
    redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    for i in range(10):
        await publish(b.url("ajax"), "news", i)

    def news() -> list[Any]:
        return [m["data"] for m in listener.of_type("message")]

    await eventually(reactor, lambda: news() == ["before", *range(10)], timeout=20)
    positions = [m["pos"] for m in listener.of_type("message")]
    assert positions == sorted(set(positions))
    await eventually(reactor, lambda: "caught up" in a.log())


def test_a_node_does_not_start_without_its_redis(server_process, tmp_path):
    port = free_port()
    with pytest.raises(RuntimeError) as raised:
        server_process("--backplane", f"redis://127.0.0.1:{port}/0", timeout=20)
    message = str(raised.value)
    assert "exited with 1" in message
    assert f"cannot reach the Redis backplane at redis://127.0.0.1:{port}/0" in message


# Behind nginx --------------------------------------------------------------------------


@pytest.fixture
def nginx(tmp_path):
    if nginx_path() is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does)")
    started: list[NginxServer] = []

    def start(upstreams: list[int]) -> int:
        server = NginxServer(tmp_path)
        started.append(server)
        return server.start(upstreams).port

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest_twisted.ensureDeferred
async def test_behind_nginx_websockets_and_ajax_polls_spread_over_two_nodes_lose_nothing(
        cluster, redis, reactor, closing, nginx):
    a = cluster("a", "--access-log", "true", single_port=True)
    b = cluster("b", "--access-log", "true", single_port=True)
    port = nginx([a.ports["single"], b.ports["single"]])
    base = f"127.0.0.1:{port}"
    websockets = [await WS.open(f"ws://{base}/ws", reactor) for _ in range(4)]
    for ws in websockets:
        closing(ws)
    ajax = await Ajax([f"http://{base}/ajax"]).connect()
    closing(ajax)
    ajax.start_polling(reactor)
    await eventually(reactor, lambda: _counts_match_url(f"http://{base}/ajax", 5, 4, 1))

    expected = []
    for i in range(30):
        if i % 3 == 0:
            await ajax.send("chat", f"c{i}")
        else:
            websockets[i % 4].send("chat", f"c{i}")
            await sleep(reactor, 0.01)
        expected.append(f"c{i}")
    for ws in websockets:
        await eventually(reactor, lambda ws=ws: sorted(chats(ws.received)) == sorted(expected))
    await eventually(reactor, lambda: sorted(chats(ajax.received)) == sorted(expected))
    # One order for everybody, each message once.
    order = [m["pos"] for m in websockets[0].of_type("chat")]
    assert len(set(order)) == 30 and order == sorted(order)
    for client in [*websockets[1:], ajax]:
        assert [m["pos"] for m in client.of_type("chat")] == order
    # The balancer did spread the polls: both nodes answered some.
    assert "/ajax/poll" in _access(a) and "/ajax/poll" in _access(b)


def _access(process) -> str:
    return "\n".join(line for line in process.log().splitlines() if "appserver.access" in line or "GET /" in line)


async def _counts_match_url(url: str, total: int, websocket: int, ajax: int) -> bool:
    answer = await counts(url)
    return (answer["client_count"], answer["websocket"], answer["ajax"]) == (total, websocket, ajax)


@pytest_twisted.ensureDeferred
async def test_a_publish_retried_on_another_node_with_its_idempotency_key_is_delivered_once(
        cluster, redis, reactor, closing):
    a = cluster("a", "--history-age", "2")
    b = cluster("b", "--history-age", "2")
    listeners = []
    for site in (a, b):
        listener = await WS.open(site.url("ws"), reactor)
        closing(listener)
        listener.send("subscribe", {"channel": "news"})
        await listener.wait_for(reactor, lambda m: m["type"] == "subscribed")
        listeners.append(listener)

    first = await publish_once(a.url("ajax"), "news", "once", "retry-me")
    retry = await publish_once(b.url("ajax"), "news", "once", "retry-me")
    assert retry["pos"] == first["pos"]
    other = await publish_once(b.url("ajax"), "news", "another", "another-key")
    assert other["pos"] > first["pos"]

    def news(listener: WS) -> list[Any]:
        return [(m["data"], m["pos"]) for m in listener.of_type("message")]

    expected = [("once", first["pos"]), ("another", other["pos"])]
    await eventually(reactor, lambda: all(news(listener) == expected for listener in listeners))

    # After the history age the key is forgotten: the same key publishes again.
    await sleep(reactor, 2.5)
    later = await publish_once(b.url("ajax"), "news", "once", "retry-me")
    assert later["pos"] > other["pos"]
    expected.append(("once", later["pos"]))
    await eventually(reactor, lambda: all(news(listener) == expected for listener in listeners))
    await sleep(reactor, 0.3)
    assert all(news(listener) == expected for listener in listeners)
