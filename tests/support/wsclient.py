"""
Test clients for the core server, in memory and over real sockets.

The only helper module the core suite adds, so it holds four things:

  - L{make_runtime}: a L{Runtime} on a L{MemoryReactorClock}, as the sites
    get it from the service, with the three default ports "listening";
  - L{AjaxStub}: the Ajax site behind C{treq.testing.StubTreq} (a real
    C{Site} and C{Request} in memory, with the server's L{LoggingSite} so
    body limits apply), answering synchronously;
  - L{MemoryWebSocket}: Autobahn clients talking to the WebSocket site
    through C{twisted.test.iosim}, with txaio's timers on the same clock;
  - L{open_client} and friends: an Autobahn client over real sockets with
    bounded waits, for the in-process and twistd servers.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import txaio
from autobahn.twisted.websocket import (WebSocketClientFactory, WebSocketClientProtocol, connectWS)
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from treq.testing import StubTreq

from appserver._server.app import App
from appserver.apps.chat import app as chat_app
from appserver._web.site import LoggingSite
from appserver._server.runtime import Runtime, build_runtime
from appserver._server.settings import Settings

__all__ = ["STATIC_PORT", "AJAX_PORT", "WS_PORT", "SESSION_HEADER", "make_runtime", "resolved", "has_fired",
           "AjaxStub", "Answer", "MemoryWebSocket", "MemoryClient", "RecordingClient", "open_client", "next_message",
           "wait_closed", "wait_until", "sleep", "raw_request"]

STATIC_PORT, AJAX_PORT, WS_PORT = 9000, 9001, 9002

#: The request header that carries an Ajax session's secret (JSON requests).
SESSION_HEADER = "X-AppServer-Session"


def make_runtime(app: App | None = None, clock: MemoryReactorClock | None = None,
                 **settings: Any) -> Runtime:
    """
    A runtime on a fake clock, as if the three sites listened on the
    default ports. C{settings} are L{Settings} attributes.
    """
    clock = clock if clock is not None else MemoryReactorClock()
    runtime = build_runtime(Settings(**settings), app or chat_app, clock)
    runtime.own_ports.update((STATIC_PORT, AJAX_PORT, WS_PORT))
    return runtime


def has_fired(deferred: defer.Deferred[Any]) -> bool:
    """
    Whether a Deferred has a final result (C{called} is also true while it
    waits on an inner Deferred).
    """
    results: list[Any] = []
    deferred.addBoth(lambda result: (results.append(True), result)[1])
    return bool(results)


def resolved(deferred: defer.Deferred[Any]) -> Any:
    """
    The result of a Deferred that must already have fired.
    """
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# Ajax ------------------------------------------------------------------------


class Answer:
    """
    One HTTP answer: status, headers (lower-case names, first value) and
    body bytes.
    """

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def jsonp(self, callback: str) -> Any:
        """
        The object passed to C{callback} by a JSONP body.
        """
        prefix = b"/**/" + callback.encode("ascii") + b"("
        assert self.body.startswith(prefix) and self.body.endswith(b");"), self.body[:200]
        return json.loads(self.body[len(prefix):-2])

    def __repr__(self) -> str:
        return f"<Answer {self.status} {self.body[:120]!r}>"


class AjaxStub:
    """
    The Ajax site of C{runtime} in memory.
    """

    def __init__(self, runtime: Runtime, host: str = f"127.0.0.1:{AJAX_PORT}") -> None:
        from appserver._web.sites import build_ajax_resource
        self.runtime = runtime
        self.clock: MemoryReactorClock = runtime.reactor
        self.root = build_ajax_resource(runtime)
        self.treq = StubTreq(self.root)
        agent = self.treq._agent
        # StubTreq builds a plain Site; the server's own Site bounds bodies.
        site = LoggingSite(self.root, max_body_size=runtime.settings.max_message_size,
                           access_log=False, reactor=agent._memoryReactor)
        agent._serverFactory = site
        self.base = f"http://{host}"
        #: Session secret to client id, for the sessions L{connect} opened.
        self.client_ids: dict[str, str] = {}

    def start(self, method: str, path: str, params: dict[str, Any] | None = None,
              body: bytes | None = None, headers: dict[str, str] | None = None,
              session_in_query: bool = False) -> defer.Deferred[Answer]:
        """
        Send a request; the Deferred fires with an L{Answer} once the
        resource answers (at once, or after L{flush} for a long poll).

        A C{session} in C{params} of a JSON request (no C{callback}) is sent
        in the C{X-AppServer-Session} header, as clients must; with
        C{session_in_query} it stays in the query (the old, refused form).
        """
        url = self.base + path
        params = dict(params or {})
        headers = dict(headers or {})
        if "session" in params and not params.get("callback") and not session_in_query:
            # JSON requests carry the session secret in a header; only
            # JSONP (a script tag) puts it in the query.
            headers.setdefault(SESSION_HEADER, str(params.pop("session")))
        if params:
            url += "?" + urlencode(params)
        request_headers = {name: [value] for name, value in headers.items()}
        deferred = self.treq.request(method, url, data=body, headers=request_headers)

        async def read(response: Any) -> Answer:
            content = await self.treq.content(response)
            found = {name.decode("latin-1").lower(): values[0].decode("latin-1")
                     for name, values in response.headers.getAllRawHeaders()}
            return Answer(response.code, found, content)
        return deferred.addCallback(lambda response: defer.ensureDeferred(read(response)))

    def call(self, method: str, path: str, params: dict[str, Any] | None = None,
             body: bytes | None = None, headers: dict[str, str] | None = None,
             session_in_query: bool = False) -> Answer:
        """
        A request that must be answered at once.
        """
        deferred = self.start(method, path, params, body, headers, session_in_query)
        self.flush()
        return resolved(deferred)

    def flush(self) -> None:
        """
        Run due reactor calls and move every byte between client and site.
        """
        for _ in range(10):
            self.clock.advance(0)
            self.treq.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()

    # Long-poll conveniences.

    def connect(self) -> str:
        """
        Open a session; returns its secret (L{client_id} gives its public
        client id).
        """
        answer = self.call("POST", "/connect")
        assert answer.status == 200, answer
        body = answer.json()
        self.client_ids[body["session"]] = body["client_id"]
        return body["session"]

    def client_id(self, session: str) -> str:
        """
        The public client id of a session opened by L{connect}.
        """
        return self.client_ids[session]

    def send(self, session: str, envelope: Any) -> Answer:
        return self.call("POST", "/send", {"session": session}, json.dumps(envelope).encode())

    def poll(self, session: str, since: int) -> Answer:
        return self.call("GET", "/poll", {"session": session, "since": since})


# WebSocket in memory ---------------------------------------------------------


class RecordingClient(WebSocketClientProtocol):
    """
    Records every envelope and the close; C{deaf} makes it ignore every byte
    (a peer that stopped reading or vanished without a FIN).
    """

    deaf = False
    close_code: Any = None
    close_reason: Any = None
    opened = False

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Any] = []
        self.raw: list[tuple[bytes, bool]] = []

    def onOpen(self) -> None:
        self.opened = True
        opened = getattr(self.factory, "opened", None)
        if opened is not None and not opened.called:
            opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.raw.append((payload, isBinary))
        if not isBinary:
            try:
                self.messages.append(json.loads(payload))
            except ValueError:
                pass
        waiting = getattr(self.factory, "waiting", None)
        if waiting is not None:
            self.factory.waiting = None
            waiting.callback(None)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.close_code = code
        self.close_reason = reason
        closed = getattr(self.factory, "closed", None)
        if closed is not None and not closed.called:
            closed.callback((code, reason))
        opened = getattr(self.factory, "opened", None)
        if opened is not None and not opened.called:
            opened.errback(ConnectionError(f"WebSocket refused or failed: {code} {reason}"))

    def dataReceived(self, data: bytes) -> None:
        if not self.deaf:
            super().dataReceived(data)

    def of_type(self, message_type: str) -> list[Any]:
        return [m for m in self.messages if isinstance(m, dict) and m.get("type") == message_type]


class MemoryClient:
    """
    One in-memory connection: the client protocol, the server protocol and
    the pump between them.
    """

    def __init__(self, client: RecordingClient, server: Any, pump: iosim.IOPump,
                 client_io: iosim.FakeTransport, server_io: iosim.FakeTransport) -> None:
        self.client = client
        self.server = server
        self.pump = pump
        self.client_io = client_io
        self.server_io = server_io

    @property
    def messages(self) -> list[Any]:
        return self.client.messages

    @property
    def protocol(self) -> Any:
        """
        The server's WebSocket protocol (after the upgrade), else the
        HTTP channel.
        """
        return self.server_io.protocol

    def send(self, envelope: Any) -> None:
        self.client.sendMessage(json.dumps(envelope).encode("utf-8"))
        self.pump.flush()

    def send_raw(self, payload: bytes, binary: bool = False) -> None:
        self.client.sendMessage(payload, isBinary=binary)
        self.pump.flush()

    def reset(self) -> None:
        """
        The peer vanishes: the TCP connection ends without a close frame.
        """
        from twisted.internet.error import ConnectionLost
        self.server_io.disconnectReason = ConnectionLost("connection reset by peer")
        self.client_io.disconnectReason = ConnectionLost("connection reset by peer")
        self.client_io.abortConnection()
        self.pump.flush()

    @property
    def disconnected(self) -> bool:
        return bool(self.server_io.disconnected or self.client_io.disconnected)


class MemoryWebSocket:
    """
    The WebSocket site of C{runtime} (a L{LoggingSite} over
    L{build_websocket_resource}), with in-memory Autobahn clients. Sets
    txaio's loop to the runtime's clock until L{close}.
    """

    def __init__(self, runtime: Runtime) -> None:
        from appserver._web.sites import build_websocket_resource
        self.runtime = runtime
        self.clock: MemoryReactorClock = runtime.reactor
        self._previous_loop = txaio.config.loop
        txaio.config.loop = self.clock
        self.site = LoggingSite(build_websocket_resource(runtime),
                                max_body_size=runtime.settings.max_message_size,
                                access_log=False, reactor=self.clock)
        self.clients: list[MemoryClient] = []
        self._next_port = 40000

    def close(self) -> None:
        txaio.config.loop = self._previous_loop

    def connect(self, path: str = "/", origin: str | None = None,
                client_class: type[RecordingClient] = RecordingClient,
                host: str = f"127.0.0.1:{WS_PORT}", peer_host: str = "127.0.0.1",
                flush: bool = True) -> MemoryClient:
        """
        Open a connection and (with C{flush}) run the handshake.
        """
        self._next_port += 1
        client_address = IPv4Address("TCP", peer_host, self._next_port)
        server_address = IPv4Address("TCP", "127.0.0.1", WS_PORT)
        factory = WebSocketClientFactory(f"ws://{host}{path}", origin=origin)
        factory.protocol = client_class
        client = factory.buildProtocol(server_address)
        server = self.site.buildProtocol(client_address)
        server_io = iosim.FakeTransport(server, isServer=True, hostAddress=server_address,
                                        peerAddress=client_address)
        client_io = iosim.FakeTransport(client, isServer=False, hostAddress=client_address,
                                        peerAddress=server_address)
        pump = iosim.connect(server, server_io, client, client_io, greet=flush, clock=self.clock)
        connection = MemoryClient(client, server, pump, client_io, server_io)
        self.clients.append(connection)
        return connection

    def flush(self) -> None:
        for _ in range(3):
            for connection in self.clients:
                connection.pump.flush()

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.flush()


# WebSocket over real sockets -------------------------------------------------


def sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    deferred: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, deferred.callback, None)
    return deferred


async def wait_until(predicate: Any, reactor: Any, timeout: float = 5.0, step: float = 0.01) -> None:
    """
    Wait until C{predicate()} is true, at most C{timeout} seconds.
    """
    deadline = reactor.seconds() + timeout
    for _ in range(int(timeout / step) + 2):
        if predicate():
            return
        if reactor.seconds() > deadline:
            break
        await sleep(reactor, step)
    assert predicate(), f"condition still false after {timeout}s"


async def open_client(url: str, reactor: Any, origin: str | None = None,
                      client_class: type[RecordingClient] = RecordingClient,
                      timeout: float = 5.0) -> RecordingClient:
    """
    Connect an Autobahn client and wait for the open (a refused handshake
    raises).
    """
    factory = WebSocketClientFactory(url, origin=origin)
    factory.protocol = client_class
    factory.setProtocolOptions(openHandshakeTimeout=timeout, closeHandshakeTimeout=2)
    factory.opened = defer.Deferred()
    factory.closed = defer.Deferred()
    factory.waiting = None
    connector = connectWS(factory, timeout=timeout)
    factory.connector = connector
    return await factory.opened.addTimeout(timeout, reactor)


async def next_message(client: RecordingClient, reactor: Any, message_type: str | None = None,
                       timeout: float = 5.0) -> Any:
    """
    The next envelope (of C{message_type}, skipping others), removed from
    the client's list.
    """
    deadline = reactor.seconds() + timeout
    for _ in range(10_000):
        while client.messages:
            message = client.messages.pop(0)
            if message_type is None or message.get("type") == message_type:
                return message
        remaining = deadline - reactor.seconds()
        if remaining <= 0:
            break
        client.factory.waiting = defer.Deferred()
        try:
            await client.factory.waiting.addTimeout(remaining, reactor)
        except defer.TimeoutError:
            break
    raise AssertionError(f"no {message_type or 'message'} within {timeout}s")


async def open_welcomed(url: str, reactor: Any) -> RecordingClient:
    """
    A WebSocket client of the envelope endpoint, past its C{welcome}, with
    C{client_id} set from it.
    """
    client = await open_client(url, reactor)
    welcome = await next_message(client, reactor, "welcome")
    client.client_id = welcome["data"]["client_id"]
    return client


def send(client: RecordingClient, message_type: str, data: Any = None, request_id: Any = None) -> None:
    """
    Send one envelope (with an C{id} when given).
    """
    envelope = {"type": message_type, "data": data}
    if request_id is not None:
        envelope["id"] = request_id
    client.sendMessage(json.dumps(envelope).encode("utf-8"))


async def wait_closed(client: RecordingClient, reactor: Any, timeout: float = 5.0) -> tuple[Any, Any]:
    """
    Wait for the close; returns C{(code, reason)}.
    """
    closed = client.factory.closed
    if closed.called:
        return closed.result
    result = await defer.Deferred.fromCoroutine(_await(closed)).addTimeout(timeout, reactor)
    return result


async def raw_request(reactor: Any, port: int, request: bytes, timeout: float = 5.0,
                      until_close: bool = True) -> bytes:
    """
    Send C{request} byte for byte over a real socket (no client-side
    normalization of the path) and return everything the server answers
    until it closes (send C{Connection: close}). With C{until_close} false,
    a server still waiting after C{timeout} is not an error: what it
    answered so far is returned and the connection aborted.
    """
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    class Peer(Protocol):
        def __init__(self) -> None:
            self.received = b""
            self.done: defer.Deferred[bytes] = defer.Deferred()

        def connectionMade(self) -> None:
            self.transport.write(request)

        def dataReceived(self, data: bytes) -> None:
            self.received += data

        def connectionLost(self, reason: Any) -> None:
            if not self.done.called:
                self.done.callback(self.received)

    peer = Peer()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    await connectProtocol(endpoint, peer)
    try:
        return await peer.done.addTimeout(timeout, reactor)
    except defer.TimeoutError:
        if until_close:
            raise
        return peer.received
    finally:
        if peer.transport is not None and peer.transport.connected:
            peer.transport.abortConnection()


async def _await(deferred: defer.Deferred[Any]) -> Any:
    # A fresh Deferred chained on the close, so a timeout cancels only it.
    waiter: defer.Deferred[Any] = defer.Deferred()
    deferred.addBoth(lambda result: (waiter.callback(result) if not waiter.called else None, result)[1])
    return await waiter
