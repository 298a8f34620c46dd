"""
The write path of WebSocket connections and event streams, where a
broadcast spends its time, and the end-of-turn batching every transport
uses.

Frames given to a connection during one reactor turn are sent together at
the end of the turn (L{WriteCoalescer}), straight to the socket when nothing
is buffered in front of them (L{send_now}); a connection that stops reading
tells its client through L{Backpressure}. Measured in docs/performance.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from twisted.internet.interfaces import IPushProducer
from twisted.internet.tcp import Server as _TCPServer
from zope.interface import implementer

from appserver._core.envelope import Outgoing
from appserver._web.deflate import deflated_frame

if TYPE_CHECKING:
    from appserver._core.client import Client

__all__ = ["Backpressure", "DIRECT_ARMED", "EndOfTurn", "WriteCoalescer", "has_backlog", "send_now"]

#: L{WriteCoalescer.direct} before the message it lets through is known.
DIRECT_ARMED = object()


class EndOfTurn:
    """
    Calls C{flush()} on everything added during one reactor turn, once, at
    the end of the turn, with a single delayed call for all of them.

    Each transport batches what its clients were given in a turn: WebSocket
    connections send their frames with one system call, Ajax sessions
    answer their waiting poll with one response. The caller keeps its own
    "already added" mark so an item is added once per turn.
    """

    __slots__ = ("reactor", "dirty", "scheduled")

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.dirty: list[Any] = []
        self.scheduled: Any = None

    def add(self, item: Any) -> None:
        self.dirty.append(item)
        if self.scheduled is None:
            self._schedule()

    def at_end_of_turn(self) -> None:
        """
        Make sure L{flush} runs at the end of this turn, even with nothing
        added (what a subclass keeps for one turn is dropped there).
        """
        if self.scheduled is None:
            self._schedule()

    def _schedule(self) -> None:
        self.scheduled = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.scheduled = None
        dirty, self.dirty = self.dirty, []
        for item in dirty:
            item.flush()


class WriteCoalescer(EndOfTurn):
    """
    Sends what each WebSocket connection was given during one reactor turn
    with one system call at the end of the turn.

    A broadcast reaches every client in one loop; several broadcasts in the
    same turn (a burst from a publisher) become one write per connection
    instead of one per message, and a connection whose socket buffer is empty
    is written to directly, skipping the reactor's register-write-unregister
    round trip on the poller (see L{send_now}).
    """

    __slots__ = ("_joined_frames", "_joined", "_deflated", "_last_deflated", "direct")

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        #: While a connection handles the last message of a read (no burst
        #: behind it): L{DIRECT_ARMED}, then the first message fanned out,
        #: which goes straight to every recipient with nothing pending
        #: instead of waiting for the end of the turn; else C{None}.
        self.direct: object | None = None
        self._joined_frames: list[bytes] | None = None
        self._joined = b""
        #: This turn's compressed frames, by window size, then message.
        self._deflated: dict[int, dict[Outgoing, bytes]] = {}
        #: The latest of them (message, window bits, frame): a broadcast asks
        #: for the same one once per recipient.
        self._last_deflated: tuple[Outgoing | None, int, bytes] = (None, 0, b"")

    def _schedule(self) -> None:
        # The turn ends after the reactor has polled once more: Twisted's
        # own reactors run delayed calls before they poll, so a flush
        # scheduled from a read would otherwise run before the next read
        # of a publisher already waiting on its socket. Flushing after that
        # poll takes its messages too (asyncio's loop orders the two this
        # way by itself): with 32 broadcasts in flight, 0.74 -> 0.48-0.55 µs
        # per delivery on the epoll reactor, for one poll of latency.
        self.scheduled = self.reactor.callLater(0, self._after_one_poll)

    def _after_one_poll(self) -> None:
        self.scheduled = self.reactor.callLater(0, self.flush)

    def deflated(self, message: Outgoing, window_bits: int) -> bytes:
        """
        The permessage-deflate frame of C{message} for clients that take
        windows of C{window_bits}: compressed once per turn and shared by
        every such recipient of the turn, not once per client.
        """
        last, last_bits, frame = self._last_deflated
        if last is message and last_bits == window_bits:
            return frame
        cache = self._deflated.get(window_bits)
        if cache is None:
            cache = self._deflated[window_bits] = {}
            self.at_end_of_turn()
        found = cache.get(message)
        if found is None:
            original = message.frame
            found = cache[message] = deflated_frame(original, len(original) - len(message), window_bits)
        self._last_deflated = (message, window_bits, found)
        return found

    def join(self, frames: list[bytes]) -> bytes:
        """
        The frames of one connection as one buffer. Connections that got the
        same broadcasts this turn hold the very same frame objects, so the
        buffer built for the previous connection is reused (the comparison
        is by identity first, element by element) and a burst is copied
        once, not once per connection.
        """
        if len(frames) == 1:
            return frames[0]
        if frames == self._joined_frames:
            return self._joined
        joined = b"".join(frames)
        self._joined_frames, self._joined = frames, joined
        return joined

    def flush(self) -> None:
        super().flush()
        self._joined_frames, self._joined = None, b""
        if self._deflated:
            self._deflated = {}
            self._last_deflated = (None, 0, b"")


@implementer(IPushProducer)
class Backpressure:
    """
    Registered on a connection (a WebSocket's transport, an event stream's
    request) so Twisted tells the client when the peer stops reading (the
    transport buffer passed its high-water mark) and when it drains: the
    client then queues under its bounded queue's policy instead of growing
    the transport's buffer. Twisted may pause more than once per write past
    the mark; L{Client.pause} is idempotent.
    """

    __slots__ = ("client",)

    def __init__(self, client: "Client") -> None:
        self.client = client

    def pauseProducing(self) -> None:
        self.client.pause()

    def resumeProducing(self) -> None:
        self.client.resume()

    def stopProducing(self) -> None:
        self.client.paused = True


def has_backlog(transport: Any) -> TypeGuard[_TCPServer]:
    """
    Whether a plain TCP transport still holds unsent bytes (other transports
    are treated as never behind: they always go through C{write}).

    @return: C{True} only for a plain TCP transport (hence the type guard).
    """
    return type(transport) is _TCPServer and (
        transport.offset != len(transport.dataBuffer) or bool(transport._tempDataLen))


def send_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a connection, straight to its socket when nothing is
    buffered in front of it.

    Twisted's C{transport.write} buffers, registers the socket with the
    poller, and sends on the next turn before unregistering it: two poller
    system calls and a good deal of Python per connection and per turn. When
    the transport's buffer is empty, sending directly keeps the order of
    bytes and skips all that; whatever the kernel does not take (or any
    error) goes through C{transport.write} as usual, so Twisted's buffering,
    backpressure and error handling stay in charge. Only plain TCP
    transports qualify: TLS and others always use C{write}.
    """
    if (type(transport) is _TCPServer and transport.connected and not transport.disconnecting
            and transport.offset == len(transport.dataBuffer) and not transport._tempDataLen):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # transport.write below meets the error and reports it
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
