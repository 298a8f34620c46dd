"""
The C{Site} every listening port of the server uses: bounded request bodies
and an access log through twisted.logger, as structured fields (so JSON log
output keeps them) and without query strings (they carry JSONP session
secrets and message bodies).
"""

from __future__ import annotations

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


class LoggingSite(Site):
    """
    A Site whose access log goes through twisted.logger as structured
    fields (so JSON log output keeps them), and whose request bodies are
    bounded.
    """

    requestFactory = LimitedRequest

    def __init__(self, resource: Resource, max_body_size: int | None = None,
                 access_log: bool = True, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_size = max_body_size
        self.access_log = access_log

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
