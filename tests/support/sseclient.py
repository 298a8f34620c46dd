"""
A plain HTTP client that reads an event stream over a real socket, as a
browser's EventSource does, and keeps everything it saw: the status and
headers, each HTTP chunk as it came (to see how many writes a burst took),
and each event block with its fields (C{id}, C{data}, C{retry}, comments).

It parses the wire format itself (HTTP/1.1 chunked encoding, then the
text/event-stream fields of the HTML standard) so the tests check what is
on the wire, not what a library makes of it. Every wait is bounded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

__all__ = ["Block", "StreamClient", "open_stream", "stream_url"]


@dataclass
class Block:
    """
    One blank-line-terminated block of the stream: an event when it has
    data, else an id or retry alone, or comments.
    """

    fields: list[tuple[str, str]] = field(default_factory=list)

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.fields if key == name]

    @property
    def id(self) -> str | None:
        ids = self.values("id")
        return ids[-1] if ids else None

    @property
    def data(self) -> str | None:
        lines = self.values("data")
        return "\n".join(lines) if lines else None

    @property
    def comments(self) -> list[str]:
        return self.values("")

    @property
    def envelope(self) -> dict[str, Any] | None:
        data = self.data
        return json.loads(data) if data is not None else None


class StreamClient(Protocol):
    """
    Sends one GET and records the response as it arrives.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        #: When each chunk arrived (time.monotonic()).
        self.chunk_times: list[float] = []
        self.body = b""
        self.blocks: list[Block] = []
        self.ended = False
        self.lost = False
        self.head_received: defer.Deferred[None] = defer.Deferred()
        self.gone: defer.Deferred[None] = defer.Deferred()
        self._buffer = b""
        self._head_done = False
        self._chunked = False
        self._text = b""
        self._current = Block()

    # Wire -----------------------------------------------------------------

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if not self._head_done:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
            self._head_done = True
            self._buffer = rest
            self.head_received.callback(None)
        if self._chunked:
            self._dechunk()
        else:
            self.body += self._buffer
            self._events(self._buffer)
            self._buffer = b""
            length = self.headers.get("content-length")
            if length is not None and len(self.body) >= int(length):
                self.ended = True

    def _dechunk(self) -> None:
        while not self.ended:
            line, sep, rest = self._buffer.partition(b"\r\n")
            if not sep:
                return
            size = int(line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            chunk, self._buffer = rest[:size], rest[size + 2:]
            if size == 0:
                self.ended = True
                return
            self.chunks.append(chunk)
            self.chunk_times.append(time.monotonic())
            self.body += chunk
            self._events(chunk)

    def _events(self, data: bytes) -> None:
        self._text += data
        while True:
            line, sep, rest = self._text.partition(b"\n")
            if not sep:
                return
            self._text = rest
            text = line.rstrip(b"\r").decode("utf-8")
            if text == "":
                if self._current.fields:
                    self.blocks.append(self._current)
                self._current = Block()
                continue
            name, colon, value = text.partition(":")
            if colon and value.startswith(" "):
                value = value[1:]
            self._current.fields.append((name, value))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if not self.head_received.called:
            self.head_received.errback(reason)
        self.gone.callback(None)

    # What a browser would make of it ---------------------------------------

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        return [envelope for envelope in (block.envelope for block in self.blocks) if envelope is not None]

    def of_type(self, message_type: str) -> list[dict[str, Any]]:
        return [envelope for envelope in self.envelopes if envelope.get("type") == message_type]

    @property
    def last_event_id(self) -> str | None:
        """
        The id an EventSource would send back as C{Last-Event-ID}.
        """
        last = None
        for block in self.blocks:
            if block.id is not None:
                last = block.id
        return last

    @property
    def welcome(self) -> dict[str, Any]:
        return self.of_type("welcome")[0]["data"]

    @property
    def comments(self) -> list[str]:
        return [comment for block in self.blocks for comment in block.comments]

    def json(self) -> Any:
        return json.loads(self.body)

    # Waiting ----------------------------------------------------------------

    async def wait_for(self, reactor: Any, predicate: Callable[["StreamClient"], Any], timeout: float = 5.0,
                       what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate(self)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not met within {timeout}s; blocks: {self.blocks[-10:]}")
            await _sleep(reactor, 0.01)

    async def next_of_type(self, reactor: Any, message_type: str, after: int = 0,
                           timeout: float = 5.0) -> dict[str, Any]:
        found = await self.wait_for(reactor, lambda c: c.of_type(message_type)[after:], timeout,
                                    f"a {message_type!r} envelope")
        return found[0]

    async def wait_gone(self, reactor: Any, timeout: float = 5.0) -> None:
        await self.wait_for(reactor, lambda c: c.lost, timeout, "the connection's end")

    async def wait_ended(self, reactor: Any, timeout: float = 5.0) -> None:
        """
        Wait for the end of the response (its last chunk, or its
        Content-Length).
        """
        await self.wait_for(reactor, lambda c: c.ended, timeout, "the response's end")

    def close(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def stream_url(base: str, channels: tuple[str, ...] = (), **query: str) -> str:
    """
    C{base}/events with C{channel=} repeated and other query parameters.
    """
    pairs = [("channel", channel) for channel in channels] + list(query.items())
    return f"{base}/events" + (f"?{urlencode(pairs)}" if pairs else "")


async def open_stream(reactor: Any, url: str, headers: dict[str, str] | None = None, method: str = "GET",
                      version: str = "HTTP/1.1", timeout: float = 5.0) -> StreamClient:
    """
    Connect, send the request and wait for the response's head.
    """
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} {version}", f"Host: {parts.netloc}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    client = StreamClient(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=timeout)
    await connectProtocol(endpoint, client)
    await client.head_received.addTimeout(timeout, reactor)
    return client
