"""
Server-Sent Events: C{GET /events} on the Ajax site holds one response open
and writes every envelope to it as one event, for browsers where a
WebSocket does not get through, and for pages that follow a channel with a
plain C{EventSource} and no library (docs/protocol.md, "Event stream").

An event's C{data:} is the envelope exactly as a WebSocket client gets it;
an event that moves the client's place in the stream carries an C{id:}
(L{event_id}: the epoch and the position) which the browser sends back as
C{Last-Event-ID} when it reconnects, and the server then replays what was
missed through the same path as the C{resume} envelope
(L{appserver._server.dispatch.Dispatcher.resume}). The stream's
C{welcome} carries a session secret for it alone: the client sends with
C{POST /send} and that secret, through any node, like an Ajax session
(L{appserver._web.longpoll.SessionRegistry}).

Admission, limits, the rate limit, the bounded queue and its policies, and
the graceful shutdown are every transport's; this module adds the framing,
the heartbeat, the end-of-turn writes and the backpressure of an HTTP
response.

Tests: tests/test_sse.py, tests/test_sse_redis.py, tests/test_sse_browser.py.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request

from appserver._core.client import SLOW_CONSUMER_CLOSE_CODE, Client
from appserver._core.envelope import Outgoing, ProtocolError, encode
from appserver._core.names import validate_channel_name
from appserver._core.outbound import DISCONNECT
from appserver._server.admission import Ticket, refused_from
from appserver._server.app import HTTPError
from appserver._server.service import RECONNECT_SPREAD_MS
from appserver._web.ajax import visitor_from_request
from appserver._web.jsonweb import JSONResource, Rendered, query_arg, set_cors
from appserver._web.writes import Backpressure, WriteCoalescer, has_backlog, send_now

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["EventStream", "EventStreams", "Events", "event_id", "parse_event_id", "frame_event",
           "LAST_EVENT_ID_QUERY", "MAX_EVENT_ID_LENGTH", "HEARTBEAT"]

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.sse")

#: The query parameter that stands for the C{Last-Event-ID} header, for
#: clients that cannot set it (a new C{EventSource} resuming a stream an
#: earlier one followed; the name is the EventSource polyfills' own).
LAST_EVENT_ID_QUERY = "lastEventId"
#: The longest id a client may present: an epoch and a position are far
#: shorter.
MAX_EVENT_ID_LENGTH = 128
#: A comment line: ignored by the browser, enough for a proxy to see
#: traffic.
HEARTBEAT = b":\n\n"

_HEADERS = ((b"Content-Type", b"text/event-stream; charset=utf-8"),
            (b"Cache-Control", b"no-cache"),
            # nginx buffers a proxied response unless told not to.
            (b"X-Accel-Buffering", b"no"),
            (b"X-Content-Type-Options", b"nosniff"))


def event_id(epoch: str, position: int) -> str:
    """
    The id of an event at C{position} of C{epoch}: the token a client
    presents as C{Last-Event-ID} to resume after it.
    """
    return f"{epoch}:{position}"


def parse_event_id(raw: str) -> tuple[str, int]:
    """
    The epoch and position of an L{event_id}.

    @raise ValueError: C{raw} is not one (empty epoch, a position that is
        not a decimal number, too long).
    """
    epoch, colon, position = raw.rpartition(":")
    if (len(raw) > MAX_EVENT_ID_LENGTH or not colon or not epoch or not position.isascii()
            or not position.isdigit()):
        raise ValueError(f"not an event id: {raw[:MAX_EVENT_ID_LENGTH]!r}")
    return epoch, int(position)


def frame_event(message: Outgoing, epoch: str) -> bytes:
    """
    One message as one event: an C{id:} line when it has a position, then
    its JSON in one C{data:} line (no C{event:} field, so
    C{EventSource.onmessage} sees every envelope). A message without a
    payload is a position mark: an C{id:} alone, which moves the browser's
    last event id and dispatches nothing.
    """
    payload = message.payload
    position = message.pos
    head = b"" if position is None else b"id: " + event_id(epoch, position).encode("utf-8") + b"\n"
    if not payload:
        return head + b"\n"
    if b"\n" in payload or b"\r" in payload:
        # Compact JSON has no line breaks; any other text keeps its lines.
        return head + b"".join(b"data: " + line + b"\n" for line in payload.splitlines()) + b"\n"
    return head + b"data: " + payload + b"\n\n"


class _StreamWrites(WriteCoalescer):
    """
    The end-of-turn writes of event streams: each stream's events of one
    reactor turn in one HTTP chunk, the chunk built once for every stream
    given the same events (as L{WriteCoalescer} does for WebSocket frames).
    """

    __slots__ = ()

    def join(self, frames: list[bytes]) -> bytes:
        if frames == self._joined_frames:
            return self._joined
        body = b"".join(frames)
        chunk = b"%x\r\n%b\r\n" % (len(body), body)
        self._joined_frames, self._joined = frames, chunk
        return chunk


class EventStream(Client):
    """
    One event stream: a client whose messages are written to an open HTTP
    response.

    Events given to it during a reactor turn wait in C{pending} and are
    written together at the end of the turn, as one HTTP chunk written
    straight to the socket when nothing is buffered in front of it.
    """

    transport = "sse"
    __slots__ = ("streams", "request", "ticket", "pending", "active", "_socket")

    def __init__(self, streams: "EventStreams", request: Request, ticket: Ticket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.streams = streams
        self.request = request
        #: Its admission: the place it holds under the connection limits.
        self.ticket = ticket
        self.pending: bytes | list[bytes] | None = None
        #: Whether something was written since the last heartbeat tick.
        self.active = False
        # The connection's transport when events may bypass Request.write
        # (an HTTP/1.1 chunked response): set once the headers are out.
        self._socket: Any = None

    def start(self, preamble: bytes) -> None:
        """
        Send the response's headers with C{preamble}, and watch the
        connection's backpressure.
        """
        request = self.request
        request.write(preamble)
        channel = request.channel
        if request.chunked and isinstance(channel, HTTPChannel):
            self._socket = channel.transport
        request.registerProducer(Backpressure(self), True)

    # Delivery -------------------------------------------------------------

    def deliver(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        # The hot path of a burst: a stream already given an event this
        # turn (so open, not paused, nothing queued) takes the next one.
        pending = self.pending
        if pending is not None and not self.queue:
            if isinstance(pending, bytes):
                self.pending = [pending, self.streams.event(message)]
            else:
                pending.append(self.streams.event(message))
            return
        Client.deliver(self, message, policy)

    def write(self, message: Outgoing) -> None:
        event = self.streams.event(message)
        pending = self.pending
        if pending is not None:
            if isinstance(pending, bytes):
                self.pending = [pending, event]
            else:
                pending.append(event)
            return
        if has_backlog(self._socket):
            # Behind already: Twisted's buffer pauses the stream at its
            # high-water mark, after which the bounded queue takes over.
            self._send([event])
            return
        # One event waits as it is, not in a list of its own: see
        # WebSocketClient (a list per stream per turn feeds the collector).
        self.pending = event
        self.streams.writes.add(self)

    def mark(self, position: int) -> None:
        """
        Tell the browser it has everything up to C{position}: an C{id:}
        alone, in order with the messages, so that a reconnect resumes
        after it.
        """
        self.deliver(Outgoing(b"", position))

    def flush(self) -> None:
        """
        Write the events of this turn now.
        """
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        self._send([pending] if isinstance(pending, bytes) else pending)

    def heartbeat(self) -> None:
        """
        Write a comment line, unless the stream is busy or backed up (then
        data flows, or the peer is not reading anyway).
        """
        if not self.paused and self.pending is None and not self.queue:
            self._send([HEARTBEAT])

    def _send(self, events: list[bytes]) -> None:
        self.active = True
        request = self.request
        if request.finished or request._disconnected:
            return
        socket = self._socket
        if socket is not None:
            chunk = self.streams.writes.join(events)
            request.sentLength += len(chunk)
            send_now(socket, chunk)
        else:
            request.write(b"".join(events))

    # End ------------------------------------------------------------------

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        End the stream: what this turn gave it goes out first (a shutdown's
        C{reconnect} envelope), then a comment with the code and the
        reason, and the response ends. The browser reconnects by itself
        and resumes after its last event id (the page may call
        C{EventSource.close()} to stop).
        """
        if self.closed:
            return
        self.flush()
        self.streams.ended(self, code)
        request = self.request
        if request.finished or request._disconnected:
            return
        line = f": closed {code} {reason}".replace("\r", " ").replace("\n", " ")
        self._send([line.encode("utf-8") + b"\n\n"])
        channel = request.channel
        request.unregisterProducer()
        request.finish()
        if code == SLOW_CONSUMER_CLOSE_CODE and channel.transport is not None:
            # It does not read: what it has not taken would wait for the
            # connection's idle timeout. Free it now. (Twisted's stream
            # transports can abort, which ITransport does not declare.)
            cast(ITCPTransport, channel.transport).abortConnection()
        else:
            # The reconnect takes a new connection, to whichever node.
            channel.loseConnection()


class EventStreams:
    """
    The open event streams of one server: opening them, their end-of-turn
    writes, and the heartbeat that runs while any is open.
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.writes = _StreamWrites(self.reactor)
        #: By public client id.
        self.streams: dict[str, EventStream] = {}
        self._heartbeat: LoopingCall | None = None
        self._framed: Outgoing | None = None
        self._event = b""

    def __len__(self) -> int:
        return len(self.streams)

    def event(self, message: Outgoing) -> bytes:
        """
        C{message} as an event, framed once for all the streams it goes to
        (a fan-out hands one message to every stream in a row).
        """
        if message is not self._framed:
            self._event = frame_event(message, self.runtime.tracker.epoch)
            self._framed = message
        return self._event

    def open(self, request: Request, ticket: Ticket, channels: list[str],
             resume: tuple[str, int] | None) -> EventStream:
        """
        Open an admitted stream: the response's headers and a C{retry:}
        hint, then the C{welcome} (with the stream's session secret), the
        subscriptions, and either a position mark or the replay of what a
        resuming client missed.
        """
        runtime = self.runtime
        tracker = runtime.tracker
        visitor = ticket.visitor
        stream = EventStream(self, request, ticket, limits=tracker.limits, events=tracker.events,
                             peer=visitor.peer, origin=visitor.origin)
        start_response(request, runtime)
        stream.start(retry_hint())
        secret = runtime.sessions.issue(stream)
        self.streams[stream.client_id] = stream
        self._start_heartbeat()
        request.notifyFinish().addBoth(lambda _: self.ended(stream, None))
        runtime.admission.open(stream, ticket, welcome_extra={"session": secret})
        if resume is None:
            for channel in channels:
                tracker.subscribe(stream, channel)
            stream.mark(stream.connected_at)
        else:
            epoch, since = resume
            runtime.dispatcher.resume(stream, epoch, since, channels).addCallback(self._resumed, stream)
        return stream

    @staticmethod
    def _resumed(resumed: dict[str, Any] | None, stream: EventStream) -> None:
        # Everything up to the position in "resumed" has been handed over.
        if resumed is not None and not stream.closed:
            stream.mark(resumed["position"])

    def ended(self, stream: EventStream, code: int | None) -> None:
        """
        The stream is over (closed here with C{code}, or C{None}: its client
        went away, an event stream has no close handshake): count it out.
        Only the first call does anything.
        """
        if self.streams.get(stream.client_id) is not stream:
            return
        del self.streams[stream.client_id]
        if not self.streams:
            self._stop_heartbeat()
        stream.closed = True
        stream.pending = None
        self.runtime.sessions.revoke(stream)
        self.runtime.admission.close(stream, stream.ticket, code)

    # Heartbeat ------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        interval = self.runtime.settings.sse_heartbeat
        if self._heartbeat is not None or interval <= 0:
            return
        loop = self._heartbeat = LoopingCall(self._beat)
        loop.clock = self.reactor
        # A stream written to since the previous tick is left alone: ticks
        # at half the interval keep every silence shorter than the interval.
        loop.start(interval / 2, now=False).addErrback(
            lambda failure: _log.failure("event stream heartbeat stopped", failure))

    def _stop_heartbeat(self) -> None:
        loop, self._heartbeat = self._heartbeat, None
        if loop is not None and loop.running:
            loop.stop()

    def _beat(self) -> None:
        for stream in list(self.streams.values()):
            if not stream.active:
                stream.heartbeat()
            stream.active = False


def retry_hint() -> bytes:
    """
    The C{retry:} field that starts every stream: how long the browser
    waits before reconnecting, spread like the shutdown's C{reconnect}
    delays so that a restarted server is not hit by every stream at once.
    """
    return b"retry: %d\n\n" % random.randint(*RECONNECT_SPREAD_MS)


def start_response(request: Request, runtime: "Runtime") -> None:
    """
    The status and headers of a stream (C{200}, C{text/event-stream}, no
    caching or proxy buffering, CORS for allowed origins).
    """
    request.setResponseCode(200)
    for name, value in _HEADERS:
        request.setHeader(name, value)
    set_cors(request, runtime)


class Events(JSONResource):
    """
    C{GET /events[?channel=C...][&lastEventId=ID]}: open an event stream
    (docs/protocol.md). Bad input is answered before the stream starts,
    with a JSON error like every Ajax endpoint's.
    """

    methods = (b"GET",)
    # The origin is checked by admission, as for every transport.
    check_origin = False
    allowed_headers = JSONResource.allowed_headers + b", Last-Event-ID"

    def __init__(self, runtime: "Runtime", streams: EventStreams) -> None:
        super().__init__(runtime)
        self.streams = streams

    def handle(self, request: Request) -> Any:
        channels = self._channels(request)
        resume = _resume_point(request)
        if request.method == b"HEAD":
            start_response(request, self.runtime)
            return Rendered(b"")
        admitting = self.runtime.admission.admit(visitor_from_request(request, self.runtime.proxies, "sse"))
        # The client left while the application decided: give the place back.
        request.notifyFinish().addErrback(lambda _: admitting.cancel())
        admitting.addCallbacks(lambda ticket: self._admitted(ticket, request, channels, resume),
                               lambda failure: self._refused(failure, request))
        admitting.addErrback(lambda failure: self._failed(failure, request))
        return NOT_DONE_YET

    def _channels(self, request: Request) -> list[str]:
        """
        The channels of the query, checked as a C{subscribe} would be.

        @raise HTTPError: 400 C{bad_data} for a bad name, C{limit} for too
            many.
        """
        channels: list[str] = []
        for raw in request.args.get(b"channel", []):
            try:
                channel = validate_channel_name(raw.decode("utf-8"))
            except (UnicodeDecodeError, ProtocolError):
                shown = raw[:130].decode("utf-8", "replace")
                raise HTTPError(400, "bad_data", f"channel={shown!r}: a channel name is 1 to 128 characters "
                                                 "among letters, digits and _-.:/@#") from None
            if channel not in channels:
                channels.append(channel)
        limit = self.runtime.tracker.limits.max_channels_per_client
        if len(channels) > limit:
            raise HTTPError(400, "limit", f"at most {limit} channels per client")
        return channels

    def _admitted(self, ticket: Ticket, request: Request, channels: list[str],
                  resume: tuple[str, int] | None) -> None:
        if request._disconnected:
            ticket.release()
            return
        self.streams.open(request, ticket, channels, resume)

    def _refused(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError) or request._disconnected:
            return
        refused = refused_from(failure)
        if refused.status == 503:
            # A browser's EventSource gives up for good on an error status:
            # for a refusal that passes (a shutdown, the limits), a stream
            # that says to come back, which EventSource does by itself.
            start_response(request, self.runtime)
            after = random.randint(*RECONNECT_SPREAD_MS)
            request.write(b"retry: %d\n\n: %d %s: %s\n\ndata: %s\n\n" % (
                after, refused.status, refused.code.encode("utf-8"), refused.message.encode("utf-8"),
                encode({"type": "reconnect", "data": {"after_ms": after}})))
        else:
            request.write(self._error(request, None, refused.status, refused.code, refused.message))
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        _log.failure("opening an event stream failed", failure)
        if request.finished or request._disconnected:
            return
        if not request.startedWriting:
            request.write(self._error(request, None, 500, "internal_error", "the server failed; the error was logged"))
        request.finish()


def _resume_point(request: Request) -> tuple[str, int] | None:
    """
    Where a reconnecting client resumes: its C{Last-Event-ID} header (sent
    by the browser on every reconnect, so newer than anything in the URL),
    else the L{LAST_EVENT_ID_QUERY} query parameter; C{None} for a new
    stream.

    @raise HTTPError: 400 C{bad_last_event_id} for something that is not an
        id this server writes.
    """
    header = request.getHeader(b"last-event-id")
    raw = header.decode("latin-1") if header is not None else query_arg(request, LAST_EVENT_ID_QUERY)
    if raw is None or not raw.strip():
        return None
    try:
        return parse_event_id(raw.strip())
    except ValueError:
        raise HTTPError(400, "bad_last_event_id",
                        "Last-Event-ID (or lastEventId=) must be the id of an event this server sent "
                        "(EPOCH:POSITION)") from None
