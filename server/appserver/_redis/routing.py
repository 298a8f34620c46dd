"""
Ajax sessions through any node: a session lives on the node that opened it
(its home, named in the session id); a request for it that reaches another
node is carried to the home over Redis, run there by the very same Ajax
resource as a local request, and its answer carried back.

So a session's queue, cursor and waiting poll stay in one place, with the
one implementation of docs/protocol.md, and no load balancer stickiness is
needed. The cost is two PUBLISHes per routed request.

The router knows Redis only through the two callables it is given (send
bytes to a node's channel; ask whether a node is live), so it is the same
whatever carries the messages.

Tests: tests/test_redis_decisions.py (session ids and their home);
tests/test_redis_cluster.py (Ajax sessions through another node).
"""

from __future__ import annotations

import io
import itertools
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from appserver._core.client import new_session_secret, session_digest
from appserver._redis.keys import NODE_ID_PATTERN

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall
    from twisted.web.resource import Resource
    from twisted.web.server import Request

__all__ = ["SessionRouter", "RoutedRequest", "home_session_secret", "session_home"]

#: Request headers a routed request leaves behind: they carry credentials
#: (the session secret, cookies, authorization) that Redis must not see.
_HEADERS_KEPT_HERE = frozenset({b"x-appserver-session", b"cookie", b"authorization"})

_log = Logger(namespace="appserver.redis")

#: Seconds a routed request other than a poll may take at its home node.
ROUTE_TIMEOUT = 10.0
#: Extra seconds given to a routed poll beyond the poll timeout.
POLL_MARGIN = 10.0


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def home_session_secret(node_id: str) -> str:
    """
    The secret of a new Ajax session opened on node C{node_id}: the node id,
    a dot, then the random secret (L{new_session_secret}), so that any node
    can tell where the session lives (L{session_home}).
    """
    return f"{node_id}.{new_session_secret()}"


def session_home(session_id: str) -> str | None:
    """
    The node a session lives on, as its id names it, or C{None} when the id
    names none (a session of a single node, or not a session id at all).
    """
    home, dot, _ = session_id.partition(".")
    if not dot or not NODE_ID_PATTERN.match(home):
        return None
    return home


class _Waiting(NamedTuple):
    # A request forwarded from here, until its home answers.
    request: "Request"
    resource: Any
    home: str
    timer: "IDelayedCall"


class RoutedRequest:
    """
    The home node's stand-in for a request received by another node: what
    the Ajax resources read of a request, and a record of what they write.
    """

    clientproto = b"HTTP/1.1"

    def __init__(self, method: bytes, path: bytes, args: dict[bytes, list[bytes]],
                 headers: dict[bytes, bytes], body: bytes, too_large: bool, peer: str,
                 done: Any, session_digest: bytes = b"") -> None:
        #: The SHA-256 of the session secret the request presented (the
        #: secret itself stays on the node that received it).
        self.session_digest = session_digest
        self.method = method
        self.path = self.uri = path
        self.args = args
        self.prepath: list[bytes] = [path.strip(b"/").split(b"/")[-1]]
        self.postpath: list[bytes] = []
        self.content = io.BytesIO(body)
        self.too_large = too_large
        self.peer = peer
        self._headers = headers
        self.code = 200
        self.response_headers: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self.finished = False
        self._lost = False
        self._done = done
        self._watchers: list[Deferred[None]] = []

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.response_headers[name] = value

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code

    def getClientAddress(self) -> Any:
        return self.peer

    def isSecure(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        if not self.finished and not self._lost:
            self._body.append(data)

    def finish(self) -> None:
        if self.finished or self._lost:
            return
        self.finished = True
        self._done(self, b"".join(self._body))
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.callback(None)

    def notifyFinish(self) -> Deferred[None]:
        watcher: Deferred[None] = Deferred()
        if self.finished:
            watcher.callback(None)
        elif self._lost:
            watcher.errback(Failure(ConnectionDone("the client went away")))
        else:
            self._watchers.append(watcher)
        return watcher

    def connection_lost(self) -> None:
        """
        The node that received the request says its client went away.
        """
        if self.finished or self._lost:
            return
        self._lost = True
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.errback(Failure(ConnectionDone("the client went away")))


class SessionRouter:
    """
    Both halves of routing: L{forward} on the node that received a request,
    L{received} for what comes over this node's Redis channel (requests to
    run here, answers to requests forwarded from here).

    @ivar root: the Ajax site's resource tree, which runs requests routed
        here (L{appserver._core.backplane.IBackplane.attach_ajax}).
    """

    def __init__(self, node_id: str, send: Callable[[str, bytes], bool],
                 is_live: "Callable[[str], Deferred[bool]]", reactor: Any, poll_timeout: float) -> None:
        """
        @param send: sends bytes to a node's channel; whether they could be sent.
        @param is_live: whether a node's heartbeat is recent.
        @param poll_timeout: seconds a poll waits at its home node (a routed
            poll may take that long).
        """
        self.node_id = node_id
        self.send = send
        self.is_live = is_live
        self.reactor = reactor
        self.poll_timeout = poll_timeout
        self.root: Resource | None = None
        self._ids = itertools.count(1)
        # Requests forwarded from here, waiting for their answer.
        self._waiting: dict[int, _Waiting] = {}
        # Requests run here for another node, by (node, id).
        self._running: dict[tuple[str, int], RoutedRequest] = {}

    def stop(self) -> None:
        """
        Forget the requests forwarded from here (the node is stopping).
        """
        for request_id in list(self._waiting):
            timer = self._waiting.pop(request_id).timer
            if timer.active():
                timer.cancel()

    # The receiving node ----------------------------------------------------

    def forward(self, home: str, resource: Any, request: "Request", secret: str) -> int:
        """
        Carry C{request} to the session's C{home} node; answer it when the
        home answers, or with C{unknown_session} when the home is gone.
        """
        lost = False

        def gone(failure: Failure) -> None:
            nonlocal lost
            lost = True

        request.notifyFinish().addErrback(gone)

        def decided(live: bool) -> None:
            if lost:
                return
            if not live:
                self._answer_error(resource, request, 410, "unknown_session",
                                   "this session's node is gone: call /connect again, then resume")
                return
            self._send(home, resource, request, secret)

        def failed(failure: Failure) -> None:
            if not lost:
                self._answer_error(resource, request, 503, "backplane_unavailable",
                                   "the session's node cannot be reached now; retry")

        self.is_live(home).addCallbacks(decided, failed)
        return NOT_DONE_YET

    def _send(self, home: str, resource: Any, request: "Request", secret: str) -> None:
        request_id = next(self._ids)
        name = request.prepath[-1] if request.prepath else b""
        body = request.content.read() if request.content is not None else b""
        address = request.getClientAddress()
        # Redis carries no credential in clear: the session goes as the
        # digest its home keeps, and the headers that carry secrets stay here.
        message = orjson.dumps({
            "op": "request", "id": request_id, "from": self.node_id,
            "path": _latin1(name), "method": _latin1(request.method),
            "args": {_latin1(k): [_latin1(v) for v in values] for k, values in request.args.items()
                     if k != b"session"},
            "headers": {_latin1(k).lower(): _latin1(b",".join(v))
                        for k, v in request.requestHeaders.getAllRawHeaders()
                        if k.lower() not in _HEADERS_KEPT_HERE},
            "session_digest": session_digest(secret).hex(),
            "body": _latin1(body),
            "too_large": bool(getattr(request, "too_large", False)),
            "peer": f"tcp:{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}",
        })
        if not self.send(home, message):
            self._answer_error(resource, request, 503, "backplane_unavailable",
                               "the session's node cannot be reached now; retry")
            return
        timeout = self.poll_timeout + POLL_MARGIN if name == b"poll" else ROUTE_TIMEOUT
        timer = self.reactor.callLater(timeout, self._timed_out, request_id)
        self._waiting[request_id] = _Waiting(request, resource, home, timer)
        request.notifyFinish().addErrback(lambda _: self._client_gone(request_id))

    def homes_live(self, live: set[str]) -> None:
        """
        The other nodes live now, as Redis just said: a request waiting
        for a home that is not among them is answered 410 at once, within
        the node TTL of that node's death, instead of at its own timeout
        (a routed poll waits the poll timeout and a margin).
        """
        for request_id, entry in list(self._waiting.items()):
            if entry.home in live or entry.home == self.node_id:
                continue
            del self._waiting[request_id]
            if entry.timer.active():
                entry.timer.cancel()
            self._answer_error(entry.resource, entry.request, 410, "unknown_session",
                               "this session's node is gone: call /connect again, then resume")

    def _timed_out(self, request_id: int) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is None:
            return
        _log.warn("node {home} did not answer a routed Ajax request in time", home=entry.home)
        self._answer_error(entry.resource, entry.request, 410, "unknown_session",
                           "this session's node does not answer: call /connect again, then resume")

    def _client_gone(self, request_id: int) -> None:
        entry = self._waiting.pop(request_id, None)
        if entry is None:
            return
        if entry.timer.active():
            entry.timer.cancel()
        self.send(entry.home, orjson.dumps({"op": "gone", "id": request_id, "from": self.node_id}))

    def _answer_error(self, resource: Any, request: "Request", status: int, code: str, message: str) -> None:
        # Callers know the client is still there (a request whose client
        # went away is no longer waiting); it may have been answered.
        if request.finished:
            return
        request.write(resource.routed_error(request, status, code, message))
        request.finish()

    def _answered(self, answer: dict[str, Any]) -> None:
        entry = self._waiting.pop(answer["id"], None)
        if entry is None:
            return
        if entry.timer.active():
            entry.timer.cancel()
        request = entry.request
        if request.finished:
            return
        request.setResponseCode(answer["code"])
        for name, value in answer["headers"]:
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.write(answer["body"].encode("latin-1"))
        request.finish()

    # The home node -------------------------------------------------------

    def received(self, raw: bytes) -> None:
        """
        A message on this node's channel: a request to run here, the answer
        to one forwarded from here, or news that a forwarded request's
        client went away.
        """
        message = orjson.loads(raw)
        op = message.get("op")
        if op == "request":
            self._run(message)
        elif op == "answer":
            self._answered(message)
        elif op == "gone":
            running = self._running.pop((message["from"], message["id"]), None)
            if running is not None:
                running.connection_lost()

    def _run(self, message: dict[str, Any]) -> None:
        origin, request_id = message["from"], message["id"]
        root = self.root
        resource = root.getStaticEntity(message["path"].encode("latin-1")) if root is not None else None

        def done(request: RoutedRequest, body: bytes) -> None:
            self._running.pop((origin, request_id), None)
            self.send(origin, orjson.dumps({
                "op": "answer", "id": request_id, "code": request.code,
                "headers": [[_latin1(k), _latin1(v)] for k, v in request.response_headers.items()],
                "body": _latin1(body),
            }))

        request = RoutedRequest(
            message["method"].encode("latin-1"), b"/" + message["path"].encode("latin-1"),
            {k.encode("latin-1"): [v.encode("latin-1") for v in values] for k, values in message["args"].items()},
            {k.encode("latin-1"): v.encode("latin-1") for k, v in message["headers"].items()},
            message["body"].encode("latin-1"), message["too_large"], message.get("peer", "?"), done,
            bytes.fromhex(message.get("session_digest", "")))
        if resource is None:
            request.setResponseCode(404)
            request.write(b'{"error":{"code":"not_found","message":"no such endpoint"}}')
            request.finish()
            return
        self._running[(origin, request_id)] = request
        try:
            body = resource.render(request)
        except Exception:
            _log.failure("routed Ajax request for {path} failed", path=message["path"])
            request.setResponseCode(500)
            body = b'{"error":{"code":"internal_error","message":"the server failed; the error was logged"}}'
        if body is not NOT_DONE_YET and not request.finished:
            request.write(body)
            request.finish()
