"""
A small Python client that implements the protocol's recovery
(docs/protocol.md, "resume"), as js/appserver.js does, for tests that break
connections on purpose.

It remembers the server epoch and the highest stream position it delivered;
after every reconnect it sends C{resume} and holds the stream messages that
arrive until the C{resumed} answer, then delivers them in position order,
each position at most once. It records everything it was sent (C{received})
apart from what it delivered (C{delivered}), so a test can check the server's
side (nothing sent twice) and the application's side (everything once, in
order) separately.

Two transports: L{RecoveringWebSocket} (Autobahn over a real socket, with
optional client-side pings to notice a silently dead connection) and
L{RecoveringAjax} (the long poll, in JSON or JSONP).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable
from urllib.parse import urlencode, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint

# Autobahn's own timer rounds deadlines down to whole seconds; sub-second
# client pings need the server's precise one.
from appserver._web.websocket import _PreciseTimer

__all__ = ["RecoveringWebSocket", "RecoveringAjax"]


class _Recovery:
    """
    The transport-independent part: epoch, positions, hold-back and
    delivery, reconnect scheduling, and waiting for a condition.

    @ivar delivered: stream envelopes (those with a C{pos}) as the
        application would see them: each position once, in order.
    @ivar received: the C{pos} of every stream envelope as it arrived, on
        every connection (duplicates would show here).
    @ivar resumed: the C{data} of every C{resumed} answer.
    @ivar envelopes: every envelope without a position (welcome, resumed,
        reconnect, errors, replies...).
    @ivar closes: C{(code, reason)} of every connection end.
    @ivar opened: connections that got their C{welcome}.
    """

    def __init__(self, reactor: Any, channels: Iterable[str] = (), reconnect_delay: float = 0.05,
                 auto_reconnect: bool = True) -> None:
        self.reactor = reactor
        self.channels = list(channels)
        self.reconnect_delay = reconnect_delay
        self.auto_reconnect = auto_reconnect
        self.epoch: str | None = None
        self.highest = 0
        self.delivered: list[dict[str, Any]] = []
        self.received: list[int] = []
        self.resumed: list[dict[str, Any]] = []
        self.envelopes: list[dict[str, Any]] = []
        self.closes: list[tuple[Any, Any]] = []
        self.opened = 0
        self.connected = False
        self.stopped = False
        self._held: list[dict[str, Any]] | None = None
        self._waiters: list[defer.Deferred[None]] = []
        self._reconnect_call: Any = None

    # What the application sees ------------------------------------------

    @property
    def positions(self) -> list[int]:
        return [envelope["pos"] for envelope in self.delivered]

    def data(self, message_type: str | None = None) -> list[Any]:
        return [e.get("data") for e in self.delivered if message_type is None or e.get("type") == message_type]

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e.get("type") == message_type]

    # Protocol logic ----------------------------------------------------------

    def _envelope(self, envelope: dict[str, Any]) -> None:
        pos = envelope.get("pos")
        if isinstance(pos, int):
            self.received.append(pos)
            if self._held is not None:
                self._held.append(envelope)
            else:
                self._deliver(envelope)
        else:
            self.envelopes.append(envelope)
            message_type = envelope.get("type")
            if message_type == "welcome":
                self._welcome(envelope.get("data") or {})
            elif message_type == "resumed":
                self._resumed(envelope.get("data") or {})
        self._changed()

    def _deliver(self, envelope: dict[str, Any]) -> None:
        if envelope["pos"] <= self.highest:
            return
        self.highest = envelope["pos"]
        self.delivered.append(envelope)

    def _welcome(self, welcome: dict[str, Any]) -> None:
        resuming = self.epoch is not None
        previous_epoch, since = self.epoch, self.highest
        if not resuming or welcome.get("epoch") != previous_epoch:
            # Another stream of positions: everything after this one is new.
            self.highest = welcome.get("position") or 0
        self.epoch = welcome.get("epoch")
        self.opened += 1
        self.connected = True
        if resuming:
            self._held = []
            self._send({"type": "resume", "data": {"epoch": previous_epoch, "since": since,
                                                    "channels": list(self.channels)}})
        else:
            for channel in self.channels:
                self._send({"type": "subscribe", "data": {"channel": channel}})

    def _resumed(self, data: dict[str, Any]) -> None:
        self.resumed.append(data)
        held, self._held = self._held or [], None
        for envelope in sorted(held, key=lambda e: e["pos"]):
            self._deliver(envelope)

    def _connection_ended(self, code: Any, reason: Any) -> None:
        self.connected = False
        self._held = None
        self.closes.append((code, reason))
        self._changed()
        if not self.stopped and self.auto_reconnect:
            self.schedule_reconnect(self.reconnect_delay)

    def schedule_reconnect(self, delay: float) -> None:
        if self._reconnect_call is not None and self._reconnect_call.active():
            return
        self._reconnect_call = self.reactor.callLater(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._reconnect_call = None
        if not self.stopped and not self.connected:
            self._open()

    def _open(self) -> None:
        raise NotImplementedError

    def _send(self, envelope: dict[str, Any]) -> None:
        raise NotImplementedError

    def send(self, message_type: str, data: Any = None) -> None:
        self._send({"type": message_type, "data": data})

    def reconnect(self) -> None:
        """
        Connect again now (when C{auto_reconnect} is off).
        """
        if not self.connected:
            self._open()

    def _stop(self) -> None:
        self.stopped = True
        if self._reconnect_call is not None and self._reconnect_call.active():
            self._reconnect_call.cancel()

    # Waiting ------------------------------------------------------------

    def _changed(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        """
        Wait until C{predicate()} holds, re-checking after every envelope
        and connection change, at most C{timeout} seconds.
        """
        deadline = self.reactor.seconds() + timeout
        while not predicate():
            remaining = deadline - self.reactor.seconds()
            if remaining <= 0:
                raise AssertionError(f"{what}: not reached within {timeout}s ({self.describe()})")
            waiter: defer.Deferred[None] = defer.Deferred()
            self._waiters.append(waiter)
            try:
                await waiter.addTimeout(min(remaining, 0.1), self.reactor)
            except defer.TimeoutError:
                pass

    def describe(self) -> str:
        return (f"opened={self.opened} connected={self.connected} highest={self.highest} "
                f"delivered={len(self.delivered)} resumed={self.resumed} closes={self.closes}")


# WebSocket -------------------------------------------------------------------------


class _Protocol(WebSocketClientProtocol):
    owner: "RecoveringWebSocket"

    def onOpen(self) -> None:
        self.owner.protocol = self

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if not isBinary:
            self.owner._envelope(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        owner = self.owner
        if owner.protocol is self or owner.protocol is None:
            owner.protocol = None
            owner._connection_ended(code, reason)


class RecoveringWebSocket(_Recovery):
    """
    The WebSocket flavour.

    @param ping_interval: client-side Autobahn pings (0: none), so a
        silently frozen connection is noticed (C{ping_timeout} later) and
        replaced.
    """

    def __init__(self, reactor: Any, url: str, channels: Iterable[str] = (), origin: str | None = None,
                 ping_interval: float = 0.0, ping_timeout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(reactor, channels, **kwargs)
        self.url = url
        self.origin = origin
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.protocol: _Protocol | None = None
        self.attempts = 0

    async def start(self, timeout: float = 5.0) -> "RecoveringWebSocket":
        self._open()
        await self.wait_for(lambda: self.opened >= 1, timeout, "first welcome")
        return self

    def _open(self) -> None:
        self.attempts += 1
        owner = self
        factory = WebSocketClientFactory(self.url, origin=self.origin)
        factory.protocol = type("BoundProtocol", (_Protocol,), {"owner": owner})
        factory.setProtocolOptions(openHandshakeTimeout=5, closeHandshakeTimeout=0.5,
                                   autoPingInterval=self.ping_interval, autoPingTimeout=self.ping_timeout)
        factory._batched_timer = _PreciseTimer()
        parts = urlsplit(self.url)
        endpoint = TCP4ClientEndpoint(self.reactor, parts.hostname, parts.port, timeout=5)

        def failed(failure: Any) -> None:
            # Nobody listening (a server restarting): try again later.
            self._connection_ended(None, failure.getErrorMessage())

        endpoint.connect(factory).addErrback(failed)

    def _send(self, envelope: dict[str, Any]) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.state == protocol.STATE_OPEN:
            protocol.sendMessage(json.dumps(envelope).encode("utf-8"))

    def drop(self) -> None:
        """
        Reset the connection from this side (abort: RST, no close frame).
        """
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()

    async def stop(self) -> None:
        """
        Close for good and wait until the connection is gone.
        """
        self._stop()
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.sendClose(1000)
            try:
                await self.wait_for(lambda: self.protocol is None, 2.0, "close")
            except AssertionError:
                if protocol.transport is not None:
                    protocol.transport.abortConnection()


# Ajax long poll ----------------------------------------------------------------------


class RecoveringAjax(_Recovery):
    """
    The long-poll flavour: C{/connect}, a loop of C{/poll}, C{/send}; JSON
    (with an C{Origin}-less fetch) or JSONP (GET with C{callback}).
    """

    def __init__(self, reactor: Any, base_url: str, channels: Iterable[str] = (), jsonp: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(reactor, channels, **kwargs)
        from twisted.web.client import Agent, HTTPConnectionPool
        import treq.client
        self.base_url = base_url.rstrip("/")
        self.jsonp = jsonp
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        self._http = treq.client.HTTPClient(Agent(reactor, pool=self._pool))
        #: The current session's secret (C{session} in requests) and public client id.
        self.session: str | None = None
        self.client_id: str | None = None
        self.cursor = 0
        self.polling = True
        self.polls = 0
        self.sessions: list[str] = []
        self.client_ids: list[str] = []
        self._poll: defer.Deferred[Any] | None = None
        self._sends: defer.Deferred[Any] = defer.succeed(None)
        self._calls = 0

    async def start(self, timeout: float = 5.0) -> "RecoveringAjax":
        self._open()
        await self.wait_for(lambda: self.opened >= 1, timeout, "first welcome")
        return self

    # HTTP ----------------------------------------------------------------------

    async def _call(self, method: str, path: str, params: dict[str, Any], body: Any = None) -> tuple[int, Any]:
        """
        One request; returns (status, decoded answer). A JSONP answer is
        unwrapped from its callback and its status taken from the object.
        """
        params = dict(params)
        callback = None
        headers: dict[str, list[str]] = {}
        if self.jsonp:
            self._calls += 1
            callback = f"cb{self._calls}"
            params["callback"] = callback
            if body is not None:
                params["msg"] = json.dumps(body)
            method, body = "GET", None
        elif "session" in params:
            # JSON carries the session secret in a header, JSONP in the query.
            headers["X-AppServer-Session"] = [params.pop("session")]
        url = f"{self.base_url}{path}?{urlencode(params)}"
        data = json.dumps(body).encode() if body is not None else None
        if data:
            headers["Content-Type"] = ["text/plain"]
        response = await self._http.request(method, url, data=data, headers=headers or None)
        content = await response.content()
        if callback is not None:
            prefix = f"/**/{callback}(".encode()
            assert content.startswith(prefix) and content.endswith(b");"), content[:200]
            answer = json.loads(content[len(prefix):-2])
            return (answer.get("status", 200) if isinstance(answer, dict) else 200), answer
        return response.code, json.loads(content) if content else None

    # Session ------------------------------------------------------------------

    def _open(self) -> None:
        defer.ensureDeferred(self._connect()).addErrback(self._failed)

    async def _connect(self) -> None:
        status, answer = await self._call("POST", "/connect", {})
        if status != 200:
            self._connection_ended(status, answer)
            return
        self.session = answer["session"]
        self.client_id = answer["client_id"]
        self.sessions.append(self.session)
        self.client_ids.append(self.client_id)
        self.cursor = 0
        self._schedule_poll()

    def _failed(self, failure: Any) -> None:
        if failure.check(defer.CancelledError):
            return
        self.session = None
        self._connection_ended(None, failure.getErrorMessage())

    def _schedule_poll(self) -> None:
        if self.stopped or not self.polling or self.session is None or self._poll is not None:
            return
        session = self.session
        self._poll = defer.ensureDeferred(self._poll_once(session))
        self._poll.addErrback(self._poll_failed, session)

    def _poll_failed(self, failure: Any, session: str) -> None:
        # A poll abandoned on purpose (paused, or the session was replaced)
        # fails however the cancellation caught it: not a lost connection.
        if self.polling and session == self.session:
            self._failed(failure)

    async def _poll_once(self, session: str) -> None:
        try:
            status, answer = await self._call("GET", "/poll", {"session": session, "since": self.cursor})
        finally:
            self._poll = None
        self.polls += 1
        if session != self.session:
            return
        if status != 200:
            # 410: the session expired; connect again and resume.
            self.session = None
            self._connection_ended(status, answer.get("error") if isinstance(answer, dict) else answer)
            return
        self.cursor = answer["position"]
        for envelope in answer["messages"]:
            self._envelope(envelope)
        closed = answer.get("closed")
        if closed:
            self.session = None
            self._connection_ended(closed.get("code"), closed.get("reason"))
            return
        self._schedule_poll()

    def _send(self, envelope: dict[str, Any]) -> None:
        session = self.session

        async def send(_: Any) -> None:
            if session is None:
                return
            status, answer = await self._call("POST", "/send", {"session": session}, envelope)
            self.envelopes.append({"type": "_send_status", "data": status})
        self._sends.addCallback(lambda _: defer.ensureDeferred(send(_))).addErrback(lambda f: None)

    def pause_polling(self) -> None:
        """
        Stop polling (a network outage, a suspended laptop): the waiting
        poll is abandoned, so the session's idle timer runs on the server.
        """
        self.polling = False
        if self._poll is not None:
            self._poll.cancel()

    def resume_polling(self) -> None:
        self.polling = True
        if self.session is None and not self.connected:
            self._open()
        else:
            self._schedule_poll()

    async def disconnect(self) -> None:
        """
        End the session from this side (C{/disconnect}) without stopping:
        with C{auto_reconnect} the next session resumes.
        """
        session, self.session = self.session, None
        if session is not None:
            await self._call("POST", "/disconnect", {"session": session})
            self._connection_ended(1000, "disconnected by the client")

    async def stop(self) -> None:
        self._stop()
        session, self.session = self.session, None
        if self._poll is not None:
            self._poll.cancel()
        if session is not None:
            try:
                await self._call("POST", "/disconnect", {"session": session})
            except Exception:
                pass
        await self._pool.closeCachedConnections()
