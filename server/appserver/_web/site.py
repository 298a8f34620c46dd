"""
The C{Site} every listening port of the server uses: bounded request bodies
and an access log through twisted.logger, as structured fields (so JSON log
output keeps them) and without query strings (they carry JSONP session
secrets and message bodies).
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["LoggingSite", "LimitedRequest"]


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


def _is_busy(channel: Any) -> bool:
    if not isinstance(channel, http.HTTPChannel):
        return True     # HTTP/2: its streams end by themselves, or are cut at the deadline
    # From its last header to its answer; a request still arriving was not applied.
    return bool(getattr(channel, "_handlingRequest", False))


class LoggingSite(Site):
    """
    A Site whose access log goes through twisted.logger as structured
    fields (so JSON log output keeps them), and whose request bodies are
    bounded.
    """

    requestFactory = LimitedRequest
    #: Set by L{drain} at shutdown.
    draining = False

    def __init__(self, resource: Resource, max_body_size: int | None = None,
                 access_log: bool = True, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log
        # Weak: a connection that became a WebSocket, or ended, leaves no trace.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()

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
