"""
The WebSocket transport: a thin adapter from Autobahn's callbacks to the
tracker and the dispatcher.

L{TrackedProtocol} is the base every WebSocket endpoint shares: origin
policy, connection limits, authentication, size limits and pings (through
the factory's options), registration with the tracker from open to every
kind of end, and backpressure (a client that stops reading gets a bounded
queue, not an ever-growing transport buffer). L{EnvelopeProtocol} adds the
envelope protocol of docs/protocol.md; applications subclass
L{TrackedProtocol} for raw frame protocols.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, cast

import txaio
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflate
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._core.client import Client
from appserver._server.admission import Ticket, Visitor, refused_from
from appserver._server.coroutines import as_deferred, is_async
from appserver._core.outbound import DISCONNECT
from appserver._core.envelope import Outgoing, ProtocolError, error_payload, parse_envelope
from appserver._web.deflate import accept_offer
from appserver._web.pings import Pings
from appserver._web.writes import DIRECT_ARMED, Backpressure, WriteCoalescer

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["TrackedProtocol", "EnvelopeProtocol", "WebSocketClient", "AppServerWebSocketFactory"]

#: A raw endpoint's coroutine that failed (module level: a fixed name).
_log_raw = Logger(namespace="appserver.endpoint")

_STATE_OPEN = WebSocketServerProtocol.STATE_OPEN
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})

#: Autobahn's per-connection attributes that hold the same immutable value
#: on every open, idle connection: the class answers it instead (see
#: TrackedProtocol._release_handshake). Checked against a live connection
#: by tests/test_websocket_memory.py.
_SHARED_STATE: dict[str, Any] = {
    name: None for name in (
        "_perMessageCompress", "trackedTimings", "wasNotCleanReason", "localCloseCode", "localCloseReason",
        "remoteCloseCode", "remoteCloseReason", "openHandshakeTimeoutCall", "closeHandshakeTimeoutCall",
        "autoPingTimeoutCall", "autoPingPending", "autoPingPendingCall", "autoPingPendingSent",
        "websocket_protocol_in_use", "current_frame")
}
_SHARED_STATE.update({
    name: False for name in (
        "triggered", "wasMaxFramePayloadSizeExceeded", "wasMaxMessagePayloadSizeExceeded", "closedByMe",
        "failedByMe", "droppedByMe", "wasClean", "wasServerConnectionDropTimeout", "wasOpenHandshakeTimeout",
        "wasCloseHandshakeTimeout", "wasServingFlashSocketPolicyFile", "inside_message")
})
_SHARED_STATE.update(send_state=0, autoPingPendingSeq=0, data=b"", websocket_version=13)
#: What only the opening handshake uses: dropped once open. The class
#: answers an empty value (a protocol reads the handshake in onConnect).
_HANDSHAKE_ONLY: dict[str, Any] = {
    "http_status_line": "", "http_request_uri": "", "http_request_path": "", "http_request_params": _NO_HEADERS,
    "http_request_host": "", "websocket_protocols": (), "websocket_origin": "", "websocket_extensions": (),
    "_wskey": "", "http_headers": _NO_HEADERS, "http_request_data": b"", "http_response_data": "",
}


class _SendQueue(list):
    """
    The part of C{collections.deque} Autobahn's send queue uses.
    """

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


class WebSocketClient(Client):
    """
    The tracker's view of one WebSocket connection.

    Frames written during a reactor turn wait in C{pending} and go out
    together at the end of the turn (L{WriteCoalescer}). The first frame of
    a turn waits alone, as bytes, and only a second one makes a list: a
    broadcast reaches thousands of clients in one loop, and a list for each
    would be thousands of objects for the garbage collector, alive across
    the collections that run during the loop, so promoted to the old
    generation and counted toward the next full collection, whose pause
    grows with every connection the server holds.

    @ivar transport_paused: whether the transport holds more than its
        high-water mark (the peer is not reading fast enough).
    @ivar backlog: what a replay still has to write, written as the
        transport drains (L{replay}).
    """

    transport = "websocket"
    __slots__ = ("protocol", "coalescer", "pending", "transport_paused", "backlog", "deflate_bits", "tcp",
                 "ping_sent_at", "ping_slot")

    def __init__(self, protocol: "TrackedProtocol", coalescer: WriteCoalescer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol = protocol
        self.coalescer = coalescer
        self.pending: bytes | list[bytes] | None = None
        self.transport_paused = False
        self.backlog: deque[Outgoing] | None = None
        #: The window size of its permessage-deflate, when it negotiated it:
        #: it is written the turn's shared compressed frames.
        self.deflate_bits: int | None = None
        #: Its transport when it is plain TCP, whose buffer can be checked
        #: and bypassed (L{send_now}); C{None} for TLS and others, which
        #: always go through C{write}.
        tcp = protocol.transport
        self.tcp: _TCPServer | None = tcp if type(tcp) is _TCPServer else None
        #: When its unanswered ping went out (0: none is), and its bucket on
        #: the ping wheel (L{Pings}; -1: none).
        self.ping_sent_at = 0.0
        self.ping_slot = -1

    def deliver(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        # Once per recipient of every broadcast: Client.deliver's decision,
        # write's common case and _frame, inlined (every call and attribute
        # counts).
        bits = self.deflate_bits
        frame = message.frame if bits is None else self.coalescer.deflated(message, bits)
        pending = self.pending
        if pending is None:
            if not (self.paused or self.queue or self.closed):
                tcp = self.tcp
                if tcp is None or not (tcp.dataBuffer or tcp._tempDataLen):
                    coalescer = self.coalescer
                    direct = coalescer.direct
                    if direct is not None:
                        if direct is DIRECT_ARMED:
                            coalescer.direct = direct = message
                        if direct is message:
                            # Alone in its read: nothing to wait for.
                            self.send_now(frame)
                            return
                    # Open or closing: flush() checks, once per turn.
                    self.pending = frame
                    coalescer.dirty.append(self)
                    if coalescer.scheduled is None:
                        coalescer.at_end_of_turn()
                    return
        elif not self.queue:
            # Given a frame this turn already (so not paused): the next one
            # joins it.
            if isinstance(pending, bytes):
                self.pending = [pending, frame]
            else:
                pending.append(frame)
            return
        Client.deliver(self, message, policy)

    def _frame(self, message: Outgoing) -> bytes:
        """
        The frame this client is written: the message's own, or the turn's
        shared compressed one (inlined in L{deliver}).
        """
        bits = self.deflate_bits
        return message.frame if bits is None else self.coalescer.deflated(message, bits)

    def write(self, message: Outgoing) -> None:
        frame = self._frame(message)
        pending = self.pending
        if pending is not None:
            if isinstance(pending, bytes):
                self.pending = [pending, frame]
            else:
                pending.append(frame)
            return
        protocol = self.protocol
        if protocol.state != _STATE_OPEN:
            return
        tcp = self.tcp
        if tcp is not None and (tcp.dataBuffer or tcp._tempDataLen):
            # Behind already: Twisted's buffer pauses us at its high-water
            # mark, after which the bounded queue and its policy take over.
            tcp.write(frame)
            return
        # The first frame of the turn waits as it is: no list for the one
        # message a turn usually brings (see the class docstring).
        self.pending = frame
        self.coalescer.add(self)

    def flush(self) -> None:
        """
        Send the frames of this turn now.
        """
        pending = self.pending
        if pending is None:
            return
        self.pending = None
        self.send_now(pending if isinstance(pending, bytes) else self.coalescer.join(pending))

    def send_now(self, data: bytes) -> None:
        """
        Write C{data} while the connection is open, straight to the socket
        when nothing is buffered in front of it (L{appserver._web.writes.send_now},
        inlined: this runs once per recipient of every broadcast).
        """
        protocol = self.protocol
        if protocol.state != _STATE_OPEN:
            return
        tcp = self.tcp
        if tcp is None:
            transport = protocol.transport
            if transport is not None:
                transport.write(data)
            return
        if tcp.connected and not tcp.disconnecting and not tcp.dataBuffer and not tcp._tempDataLen:
            try:
                sent = tcp.socket.send(data)
            except OSError:
                sent = 0  # tcp.write below meets the error (if any) and reports it
            if sent == len(data):
                return
            data = data[sent:]
        tcp.write(data)

    def ping_timed_out(self) -> None:
        """
        No pong, nor anything else, came back in time: the peer is gone.
        """
        self.protocol.onAutoPingTimeout()

    def replay(self, missed: list[Outgoing], policy: str = DISCONNECT) -> bool:
        """
        Write what the client missed as fast as it reads, whatever its
        length: messages go to the transport one by one until it reaches
        its high-water mark, and the rest follows each time it drains
        (L{resume}). Meanwhile live messages wait in the bounded queue,
        behind the replay. The replay is the history's own messages, not
        copies, so a client that stops reading costs its transport buffer
        and the references, however much it missed.

        A client already behind (paused, or with a queue) gets the
        queue's bound instead (L{Client.replay}).
        """
        if not missed or self.closed:
            return True
        if self.paused or self.queue or self.backlog:
            return Client.replay(self, missed, policy)
        self.backlog = deque(missed)
        self.paused = True
        self.flush()        # what this turn gave it goes first
        self._write_backlog()
        return True

    def _write_backlog(self) -> None:
        backlog = self.backlog
        protocol = self.protocol
        transport = protocol.transport
        while backlog and not self.transport_paused and not self.closed and protocol.state == _STATE_OPEN:
            # Not coalesced: Twisted's buffer pauses us, at once, past its
            # high-water mark.
            assert transport is not None
            transport.write(self._frame(backlog.popleft()))
        if backlog and not self.closed and protocol.state == _STATE_OPEN:
            return
        self.backlog = None
        if not self.transport_paused:
            Client.resume(self)

    def pause(self) -> None:
        # Only the transport pauses a client (Backpressure); a replay sets
        # C{paused} itself.
        self.transport_paused = True
        Client.pause(self)

    def resume(self) -> None:
        self.transport_paused = False
        if self.backlog:
            self._write_backlog()
        else:
            Client.resume(self)
        # The pong owed for the latest ping while the peer was not reading.
        protocol = self.protocol
        pong = protocol.owed_pong
        if pong is not None and not self.closed:
            protocol.owed_pong = None
            protocol.sendPong(pong)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        protocol = self.protocol
        if protocol.state == _STATE_OPEN:
            # sendCloseFrame, not sendClose: Autobahn's public method refuses
            # the protocol-level codes (1001, 1008) the server must use.
            # What this turn already gave the client goes out first (see
            # TrackedProtocol.sendData).
            protocol.sendCloseFrame(code, reason.encode("utf-8")[:123] if reason else None, isReply=False)
        else:
            protocol.dropConnection(abort=True)


class RawClient(WebSocketClient):
    """
    A client of an application's raw endpoint: counted, but it speaks its
    own protocol, so envelopes addressed to everyone are not sent to it.
    """

    __slots__ = ()

    def deliver(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        return None


class TrackedProtocol(WebSocketServerProtocol):
    """
    Base of every WebSocket endpoint of the server. Subclasses implement
    C{onMessage}; C{self.client} is the tracker's L{Client}.
    """

    # Not "log": that name is Autobahn's own (txaio, level-filtered) logger,
    # which logs every frame at debug level.
    client_class: type[WebSocketClient] = RawClient
    #: Whether a new client gets the C{welcome} envelope (raw protocols
    #: speak their own protocol).
    welcomes = False
    factory: "AppServerWebSocketFactory"

    client: WebSocketClient | None = None
    # What Autobahn's per-connection state reads as once shed from an open
    # connection (see _release_handshake) is set on the class below, from
    # _SHARED_STATE and _HANDSHAKE_ONLY.
    #: The payload of the latest ping not answered yet because the peer is
    #: not reading (see L{onPing}).
    owed_pong: bytes | None = None
    _ticket: Ticket | None = None
    _admitting: Deferred[Ticket] | None = None

    # Handshake -----------------------------------------------------------

    # Autobahn accepts a Deferred here (its docstring says so); its annotation omits it.
    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:  # type: ignore[override]
        # Both are set on connection (connectionMade), before the handshake.
        transport, peer = self.transport, self.peer
        assert transport is not None and peer is not None
        address = transport.getPeer()
        # Behind a --trusted-proxy, the client is the one it forwards.
        ip = self.factory.runtime.proxies.client_address(getattr(address, "host", peer), request.headers.get)
        visitor = Visitor(transport="websocket", peer=peer, ip=ip,
                          origin=request.headers.get("origin"), host=request.headers.get("host"),
                          path=request.path, query=request.params, headers=dict(request.headers),
                          cookies=_cookies(request.headers.get("cookie", "")))
        admitting = self._admitting = self.factory.runtime.admission.admit(visitor)
        return admitting.addCallbacks(self._admitted, self._refused)

    def _admitted(self, ticket: Ticket) -> None:
        self._admitting = None
        self._ticket = ticket

    def _refused(self, failure: Failure) -> None:
        self._admitting = None
        if failure.check(CancelledError):
            # The peer left while the application decided: open nothing.
            raise ConnectionDeny(403, "connection lost during authentication")
        refused = refused_from(failure)
        raise ConnectionDeny(refused.status, refused.message)

    def onOpen(self) -> None:
        runtime = self.factory.runtime
        ticket = self._ticket
        assert ticket is not None
        client = self.client_class(self, self.factory.coalescer, limits=runtime.tracker.limits,
                                   events=runtime.tracker.events, peer=self.peer, origin=ticket.visitor.origin)
        self.client = client
        client.deflate_bits = self._deflate_window_bits()
        self._watch_backpressure(client)
        self.factory.pings.add(client)
        runtime.admission.open(client, ticket, welcome=self.welcomes)
        self._release_handshake()

    def _deflate_window_bits(self) -> int | None:
        """
        The window this connection's permessage-deflate compresses with, or
        C{None} when it negotiated none (L{appserver._web.deflate}).
        """
        for extension in self.websocket_extensions_in_use:
            if isinstance(extension, PerMessageDeflate):
                return cast(int, extension.server_max_window_bits)
        return None

    def _release_handshake(self) -> None:
        """
        Make an open connection as small as it can be: an idle connection
        should cost as little memory as possible.

          - The handshake's request, response, headers and parameters are
            dropped: what a protocol needs from them it reads in
            C{onConnect}.
          - Autobahn keeps about sixty attributes per connection, most of
            them at the same immutable value on every open connection
            (flags, close codes, timers not running). Those are removed
            from the instance, where the class attributes of
            L{_SHARED_STATE} answer the same value; Autobahn setting one
            later sets it on the instance again, as before.
          - The instance dictionary, which never shrinks by deletion, is
            then rebuilt at its new size.
        """
        state = self.__dict__
        for name in _HANDSHAKE_ONLY:
            state.pop(name, None)
        for name, shared in _SHARED_STATE.items():
            if name in state:
                value = state[name]
                if value is shared or (type(value) is type(shared) and value == shared):
                    del state[name]
        self.__dict__ = dict(state)

    def connectionMade(self) -> None:
        super().connectionMade()
        # Autobahn gives every connection a deque (about 760 bytes) for its
        # chopped and synchronous sends, which appserver never makes; a
        # list-backed queue costs a tenth of that and serves the same calls.
        # Not a deque, but it has every method Autobahn calls on one.
        self.send_queue = _SendQueue()  # type: ignore[assignment]
        self._keep_opening_deadline()

    def _keep_opening_deadline(self) -> None:
        """
        Autobahn's opening-handshake timeout starts now, once the upgrade
        request has arrived; the handshake's deadline started with the
        connection (or the end of the previous answer on it), so only what
        is left of it remains: data never extends it.
        """
        since = self.factory.opening_since
        call = self.openHandshakeTimeoutCall
        if since is None or call is None or not self.openHandshakeTimeout:
            return
        call.cancel()
        left = max(0.0, since + self.openHandshakeTimeout - self.factory.runtime.reactor.seconds())
        self.openHandshakeTimeoutCall = self.factory._batched_timer.call_later(left, self.onOpenHandshakeTimeout)

    def _watch_backpressure(self, client: Client) -> None:
        # Twisted's stream transports are consumers too, which ITransport
        # does not declare; and the connection is open (onOpen).
        transport = cast(IConsumer, self.transport)
        # Behind WebSocketResource the HTTP channel is still the transport's
        # producer; it is done, and only one producer may be registered.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(Backpressure(client), True)

    def onPing(self, payload: bytes) -> None:
        # A pong is owed for every ping, and Autobahn writes it at once,
        # past any bound: a peer that sends pings and never reads would
        # grow the transport buffer without limit. While the peer is not
        # reading (the transport is paused), only the latest ping is owed
        # its pong (RFC 6455 section 5.5.3 allows answering only the most
        # recent one), sent when it reads again (WebSocketClient.resume).
        if self.state != _STATE_OPEN:
            return
        client = self.client
        if client is not None and client.transport_paused:
            self.owed_pong = payload
            return
        self.sendPong(payload)

    def dataReceived(self, data: bytes) -> None:
        # A lone pong (a masked frame of opcode 10 and at most 125 bytes,
        # nothing else buffered): the answer to Pings, read here without
        # Autobahn's frame parser, since every idle connection sends one
        # per interval.
        if (len(data) >= 6 and data[0] == 0x8A and len(data) == 6 + (data[1] & 0x7F) and data[1] & 0x80
                and self.state == _STATE_OPEN and not self.data and self.current_frame is None):
            client = self.client
            if client is not None:
                client.ping_sent_at = 0.0
            return
        super().dataReceived(data)

    def onPong(self, payload: bytes) -> None:
        client = self.client
        if client is not None:
            client.ping_sent_at = 0.0

    def _onMessage(self, payload: bytes, isBinary: bool) -> None:
        client = self.client
        if client is not None:
            # A message proves the peer alive as well as a pong.
            client.ping_sent_at = 0.0
        deflate = self._perMessageCompress
        if deflate is not None and deflate.client_no_context_takeover:
            # Autobahn keeps the message's inflate state until the next
            # message, which makes a new one: an idle client would hold it
            # (its window and zlib's state) for nothing.
            deflate._decompressor = None
        # A raw endpoint's onMessage may be a coroutine awaiting asyncio code
        # or Deferreds: run it like a handler, cancelled if the client goes.
        result: Any = self.onMessage(payload, isBinary)  # type: ignore[func-returns-value]
        if is_async(result):
            self._follow_hook(result)

    def _follow_hook(self, result: Any) -> None:
        runtime = self.factory.runtime
        running = as_deferred(result, runtime.reactor)
        client = self.client
        if client is not None:
            runtime.dispatcher.track(client, running)

        def failed(failure: Failure) -> None:
            if client is not None and client.closed and failure.check(CancelledError, asyncio.CancelledError):
                return  # cancelled because the client went
            _log_raw.failure("{endpoint}.onMessage failed (client {client_id})", failure,
                             endpoint=type(self).__name__, client_id=getattr(client, "client_id", None))
        running.addErrback(failed)

    def sendMessage(self, payload: bytes, isBinary: bool = False, fragmentSize: int | None = None,
                    sync: bool = False, doNotCompress: bool = False) -> None:
        # A raw endpoint's own messages, compressed by Autobahn when
        # permessage-deflate was negotiated.
        super().sendMessage(payload, isBinary, fragmentSize, sync, doNotCompress)
        deflate = self._perMessageCompress
        if deflate is not None and deflate.server_no_context_takeover:
            # A compressor (hundreds of KiB with zlib's defaults) is made for
            # every message anyway; keeping the last one would cost that much
            # per connection.
            deflate._compressor = None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Everything Autobahn writes itself (pongs, close frames, a raw
        # endpoint's sendMessage) goes after what this turn already queued.
        client = self.client
        if client is not None and client.pending is not None:
            client.flush()
        super().sendData(data, sync, chopsize)

    # End, however it happens ----------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        admitting = self._admitting
        if admitting is not None:
            # Still deciding (an authentication hook): stop, and give the
            # place back.
            admitting.cancel()
        try:
            super().connectionLost(reason)
        finally:
            self._forget()

    def _forget(self) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is None:
            return
        client, self.client = self.client, None
        if client is None:
            ticket.release()
            return
        self.factory.pings.remove(client)
        code = self.remoteCloseCode if self.remoteCloseCode is not None else self.localCloseCode
        self.factory.runtime.admission.close(client, ticket, code)


for _name, _value in {**_SHARED_STATE, **_HANDSHAKE_ONLY}.items():
    setattr(TrackedProtocol, _name, _value)


class EnvelopeProtocol(TrackedProtocol):
    """
    The server's own endpoint: JSON envelopes in text frames.
    """

    client_class = WebSocketClient
    welcomes = True

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        client = self.client
        if client is None:
            return
        runtime = self.factory.runtime
        if isBinary:
            runtime.dispatcher.reject(client, "binary_unsupported",
                                      "binary frames are not supported here; send JSON envelopes as text")
            return
        try:
            envelope = parse_envelope(payload)
        except ProtocolError as error:
            runtime.tracker.send_to(client, error_payload(error.code, error.message, error.request_id))
            return
        if self.data:
            # More frames behind this one in the same read (Autobahn's
            # buffer): a burst, whose fan-outs are coalesced.
            runtime.dispatcher.dispatch(client, envelope)
            return
        # The last message of its read: the first message it fans out goes
        # straight to each recipient with nothing pending (one pass, no
        # waiting for the end of the turn); any more are coalesced.
        coalescer = self.factory.coalescer
        coalescer.direct = DIRECT_ARMED
        try:
            runtime.dispatcher.dispatch(client, envelope)
        finally:
            coalescer.direct = None


class _PreciseTimer:
    """
    Stands in for Autobahn's batched timer, which rounds every deadline
    down to a whole second (txaio's C{_BatchedTimer} computes
    C{int(now + delay)}): pings, ping timeouts and close-handshake timeouts
    then fire up to a second early, and a ping timeout under a second can
    fire before any pong could arrive, dropping live connections.
    """

    __slots__ = ()

    def call_later(self, delay: float, function: Any, *args: Any, **kwargs: Any) -> "_TimerCall":
        # txaio binds its API at run time (use_twisted()), so mypy cannot see it.
        return _TimerCall(txaio.call_later(delay, function, *args, **kwargs))  # type: ignore[attr-defined]


class _TimerCall:
    """
    A delayed call whose C{cancel} is harmless once it has run, as the
    batched timer's calls are (Autobahn relies on that).
    """

    __slots__ = ("_call",)

    def __init__(self, call: Any) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


class AppServerWebSocketFactory(WebSocketServerFactory):
    """
    One per endpoint; all share the runtime and the same protocol options.
    """

    def __init__(self, runtime: "Runtime", coalescer: WriteCoalescer | None = None,
                 protocol: type[TrackedProtocol] = EnvelopeProtocol, url: str | None = None,
                 pings: Pings | None = None) -> None:
        # No version in the handshake's Server header, no status page for
        # plain GETs: nothing for a scanner to fingerprint.
        super().__init__(url, server="appserver")
        self._batched_timer = _PreciseTimer()
        #: While a WebSocket resource makes a protocol: when its connection
        #: began to wait for the upgrade request (reactor time).
        self.opening_since: float | None = None
        self.runtime = runtime
        self.coalescer = coalescer or WriteCoalescer(runtime.reactor)
        self.protocol = protocol
        settings = runtime.settings
        #: Every connection's pings and their timeouts (Autobahn's own
        #: are off: they cost two timers per connection).
        self.pings = pings or Pings(runtime.reactor, settings.ping_interval, settings.ping_timeout)
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,
            autoPingInterval=0,
            autoPingTimeout=0,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=5,
            failByDrop=False,
            # Origins are checked in onConnect with anchored patterns and
            # logging; Autobahn's own check stays out of the way.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            tcpNoDelay=True,
            webStatus=False,
            perMessageCompressionAccept=(accept_offer(settings.max_message_size) if settings.permessage_deflate
                                         else _refuse_compression),
        )
        # Autobahn copies each of its ~30 options from the factory into every
        # new protocol instance unless the class already has it; a subclass
        # per factory holding them as class attributes saves that dictionary
        # growth on every connection (memory per idle connection).
        # With nothing left to copy, CONFIG_ATTRS is emptied too: Autobahn
        # pretty-prints the list of copied options for a debug line on every
        # connection, whatever the log level (about 1.7 ms of CPU each).
        # Function-valued options (perMessageCompressionAccept) must stay
        # plain functions, not become methods of the class.
        options: dict[str, Any] = {
            name: staticmethod(value) if callable(value) else value
            for name, value in ((name, getattr(self, name)) for name in protocol.CONFIG_ATTRS)}
        # type() makes a subclass of protocol, which mypy cannot tell from its arguments.
        self.protocol = cast("type[TrackedProtocol]",
                             type(protocol.__name__, (protocol,), {**options, "CONFIG_ATTRS": ()}))


def _refuse_compression(offers: Any) -> None:
    """
    Without --permessage-deflate: every connection goes uncompressed.
    """
    return None


def _cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return cookies

