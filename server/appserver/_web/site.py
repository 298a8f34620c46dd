"""
The C{Site} every listening port of the server uses: bounded request bodies,
a total deadline for each request to arrive, connections counted under the
connection limits while their request arrives, and an access log through
twisted.logger, as structured fields (so JSON log output keeps them) and
without query strings (they carry JSONP session secrets and message
bodies).

Tests: tests/test_hostile_memory.py (deadlines and half-open connections),
tests/test_limits_and_origins.py.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Callable, cast

import orjson
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from appserver._server.limits import ConnectionLimiter

__all__ = ["LoggingSite", "LimitedRequest", "DeadlineChannel"]


class LimitedRequest(Request):
    """
    A request that stops buffering its body past the site's size limit and
    marks itself C{too_large}, so an oversized upload costs no memory and
    gets a 413.
    """

    too_large = False
    _received = 0

    def handleContentChunk(self, data: bytes) -> None:
        # Site.buildProtocol sets the channel's site; HTTPChannel does not declare it.
        limit = getattr(self.channel.site, "max_body_size", None)  # type: ignore[attr-defined]
        self._received += len(data)
        if limit is not None and self._received > limit:
            if not self.too_large:
                self.too_large = True
                # gotLength() made the body's file before the first chunk.
                assert self.content is not None
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)


# Module level: a Logger class attribute takes its class's name as namespace.
_access_log = Logger(namespace="appserver.access")
_connections_log = Logger(namespace="appserver.connections")


def _error_response(status: bytes, code: str, message: str) -> bytes:
    """
    A complete HTTP/1.1 answer with the server's JSON error body, that
    closes the connection: for a connection refused or timed out before
    any resource saw its request.
    """
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode("ascii") + b"\r\n\r\n" + body)


class DeadlineChannel(HTTPChannel):
    """
    An HTTP channel that gives every request a total deadline to arrive,
    and counts the connection under the connection limits while it does.

    Twisted's own timeout is an idle timeout: each byte restarts it, so a
    peer that sends a header line every few seconds holds the connection
    (and a descriptor) for ever. Here the deadline starts when the channel
    begins to wait for a request (the connection is made, or the previous
    answer is done) and stops when the request, headers and body, has
    arrived; data does not restart it. Past it, a peer that sent part of a
    request gets 408 C{request_timeout}, and the connection is closed.

    From the connection to the end of its first request, and from the
    first byte of each later request to its end, the connection holds an
    I{opening} place under the site's L{ConnectionLimiter}: half-open
    sockets are bounded per address and in total by the same limits as
    clients (counted apart from them, so an address at its client limit
    can still poll its Ajax sessions). A connection refused there is
    answered 503 C{too_many_connections} at once, before its request, and
    closed: refusing must cost less than serving.
    Connections from a trusted proxy (C{--trusted-proxy}) are not counted:
    the clients behind it are, when their requests name them.

    A WebSocket upgrade ends the request when it arrives; the rest of the
    opening handshake is Autobahn's, bounded by what is left of the
    deadline (L{appserver._web.websocket.TrackedProtocol}).

    @ivar awaiting_since: when the channel began to wait for the request
        it is receiving (reactor time), or C{None}.
    """

    site: "LoggingSite"
    #: Seconds a connection closed here may take to send its last answer
    #: before it is cut.
    closing_grace = 5.0

    awaiting_since: float | None = None
    _deadline: IDelayedCall | None = None
    _cut: IDelayedCall | None = None
    _partial = False
    _peer_ip: str | None = None
    _holding = False
    _refused = False

    def connectionMade(self) -> None:
        super().connectionMade()
        site = self.site
        if site.limiter is not None:
            host = getattr(self.transport.getPeer(), "host", None) if self.transport is not None else None
            if isinstance(host, str) and not site.trusts(host):
                self._peer_ip = host
        if self._hold_place():
            self._await_request()

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return      # the answer is written; whatever follows is not read
        if not self._handlingRequest:
            self._partial = True
            if not self._holding and not self._hold_place():
                return
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        self._release_place()
        self._partial = False
        super().allContentReceived()

    def requestDone(self, request: Request) -> None:
        # Before the base class hands over pipelined data, which may hold a
        # whole request already (and end this deadline at once).
        if self.persistent:
            self._await_request()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._stop_deadline()
        self._release_place()
        cut, self._cut = self._cut, None
        if cut is not None and cut.active():
            cut.cancel()
        super().connectionLost(reason)

    def _close(self, grace: float) -> None:
        """
        Close after what was written, and cut the connection if that takes
        longer than C{grace} seconds (a peer that does not read).
        """
        self.setTimeout(None)
        if self._cut is None:
            self._cut = self.callLater(grace, self._abort)

    def _abort(self) -> None:
        self._cut = None
        if self.transport is not None:
            # Every stream transport can abort; ITransport does not say so.
            cast(ITCPTransport, self.transport).abortConnection()

    # The deadline ----------------------------------------------------------

    def _await_request(self) -> None:
        self._partial = False
        timeout = self.site.request_timeout
        self.awaiting_since = self.site.reactor.seconds()
        if timeout:
            self._stop_deadline()
            self._deadline = self.callLater(timeout, self._deadline_passed)

    def _stop_deadline(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _deadline_passed(self) -> None:
        self._deadline = None
        transport = self.transport
        if transport is None:
            return      # the connection became a WebSocket meanwhile
        timeout = self.site.request_timeout
        if self._partial:
            _connections_log.info("closing {peer}: its request did not arrive within {timeout} s",
                                  peer=str(transport.getPeer()), timeout=timeout)
            transport.write(_error_response(
                b"408 Request Timeout", "request_timeout",
                f"the request did not arrive within {timeout:g} s; send it at once"))
        # Idle between requests: closed without an answer, as any idle
        # keep-alive connection (a client resends on a new connection).
        self._close(self.closing_grace)
        self.loseConnection()

    # Places under the connection limits ----------------------------------

    def _hold_place(self) -> bool:
        """
        Hold an opening place for this connection; C{False} when it is
        refused (and answered).
        """
        ip = self._peer_ip
        if ip is None:
            return True
        limiter = self.site.limiter
        assert limiter is not None
        refusal = limiter.refusal(ip, opening=True)
        if refusal is not None:
            self._refuse(ip, refusal)
            return False
        limiter.acquire(ip, opening=True)
        self._holding = True
        return True

    def _release_place(self) -> None:
        if self._holding:
            self._holding = False
            limiter = self.site.limiter
            assert limiter is not None and self._peer_ip is not None
            limiter.release(self._peer_ip, opening=True)

    def _refuse(self, ip: str, refusal: str) -> None:
        self._refused = True
        self._stop_deadline()
        _connections_log.warn("refused connection from {ip}: {refusal}", ip=ip, refusal=refusal)
        transport = self.transport
        assert transport is not None
        transport.write(_error_response(b"503 Service Unavailable", "too_many_connections", refusal))
        # Closing with unread request bytes would reset the connection and
        # lose the answer: close the writing side, and cut the rest soon.
        lose_write = getattr(transport, "loseWriteConnection", None)
        if lose_write is not None:
            lose_write()
        else:
            transport.loseConnection()
        self._close(1.0)


def _is_busy(channel: Any) -> bool:
    if not isinstance(channel, http.HTTPChannel):
        return True     # HTTP/2: its streams end by themselves, or are cut at the deadline
    # From its last header to its answer; a request still arriving was not applied.
    return bool(getattr(channel, "_handlingRequest", False))


class LoggingSite(Site):
    """
    A Site whose access log goes through twisted.logger as structured
    fields (so JSON log output keeps them), whose request bodies are
    bounded, and whose requests have a total deadline to arrive while they
    count under the connection limits (L{DeadlineChannel}).

    @ivar request_timeout: seconds a request may take to arrive (0: no
        deadline).
    @ivar limiter: the connection limits a connection counts under while
        its request arrives (C{None}: not counted).
    @ivar trusts: whether an address is a trusted proxy's.
    """

    requestFactory = LimitedRequest
    #: Set by L{drain} at shutdown.
    draining = False

    def __init__(self, resource: Resource, max_body_size: int | None = None,
                 access_log: bool = True, request_timeout: float = 0.0,
                 limiter: "ConnectionLimiter | None" = None,
                 trusts: Callable[[str], bool] = lambda address: False, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log
        # Weak: a connection that became a WebSocket, or ended, leaves no trace.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.request_timeout = request_timeout
        self.limiter = limiter
        self.trusts = trusts

    def protocol(self) -> _GenericHTTPChannelProtocol:
        # HTTPFactory's default, with this module's channel: the wrapper is
        # what switches to HTTP/2 when TLS negotiates it.
        return _GenericHTTPChannelProtocol(DeadlineChannel())

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            self._connections.add(protocol)
        return protocol

    # Drain before exit ------------------------------------------------------

    def drain(self) -> None:
        """
        Graceful shutdown, once the port stopped listening: from now on
        the service waits for L{busy_connections} to answer, then closes
        the idle ones (L{close_idle_connections}). A kept-alive connection
        stays usable meanwhile, so a load balancer's health checks see
        the server refuse new work rather than a closed connection.
        """
        self.draining = True

    def busy_connections(self) -> int:
        """
        The HTTP connections processing a request (not yet answered).
        """
        return sum(1 for channel in self._open_channels() if _is_busy(channel))

    def close_idle_connections(self) -> None:
        """
        Close every HTTP connection that is not processing a request. A
        request arriving on one just now was not read, so it was not
        applied: the client may send it again elsewhere.
        """
        for channel in self._open_channels():
            if not _is_busy(channel):
                channel.loseConnection()

    def open_connections(self) -> int:
        """
        The HTTP connections still open (WebSockets are the tracker's
        clients, not counted here).
        """
        return len(self._open_channels())

    def abort_connections(self) -> None:
        """
        Cut the HTTP connections still open: the shutdown deadline passed.
        """
        for channel in self._open_channels():
            abort = getattr(channel.transport, "abortConnection", None)
            if abort is not None:
                abort()

    def _open_channels(self) -> list[Any]:
        channels = []
        for protocol in list(self._connections):
            channel = getattr(protocol, "_channel", protocol)
            transport = getattr(channel, "transport", None)
            # A WebSocket upgrade takes the transport from the HTTP channel.
            if transport is not None and not getattr(transport, "disconnected", False):
                channels.append(channel)
        return channels

    def log(self, request: http.Request) -> None:
        if not self.access_log:
            return
        _access_log.info(
            '{client} "{method} {uri} {protocol}" {code} {length}',
            client=request.getClientAddress().host if hasattr(request.getClientAddress(), "host") else "-",
            method=request.method.decode("latin-1"),
            # The path only: query strings carry session ids and JSONP message bodies.
            uri=request.path.decode("latin-1")[:512],
            protocol=request.clientproto.decode("latin-1"),
            code=request.code,
            length=request.sentLength or "-",
        )
