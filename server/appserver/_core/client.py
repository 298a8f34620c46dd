"""
What the tracker knows of one connected client, whatever its transport.

Transports subclass L{Client} and implement L{Client.write} (hand bytes to
the peer now) and L{Client.close}; the delivery logic here decides between
writing at once and queueing, so that every transport gets the same bounded
queue and the same overflow policies.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from appserver._core.bounds import TrackerLimits
from appserver._core.envelope import Outgoing
from appserver._core.events import TrackerEvents
from appserver._core.outbound import DISCONNECT, OutboundQueue, Overflow


__all__ = ["Client", "new_client_id", "SLOW_CONSUMER_CLOSE_CODE", "session_digest"]

#: WebSocket close code (and Ajax error) for a client whose queue overflowed
#: on a channel with the C{disconnect} policy.
SLOW_CONSUMER_CLOSE_CODE = 4000


_DEFAULT_LIMITS = TrackerLimits()
_NO_EVENTS = TrackerEvents()


def new_client_id() -> str:
    """
    A client's public identifier: unique, random, and safe to show anyone
    (applications put it in what other clients see); it is never a
    credential.
    """
    return secrets.token_urlsafe(18)


def session_digest(secret: str) -> bytes:
    """
    What the server keeps of a session secret, and all that crosses the
    backplane: its SHA-256.
    """
    return hashlib.sha256(secret.encode("utf-8")).digest()


def new_session_secret() -> str:
    """
    The credential of a session (256 random bits), given only to its
    owner; nothing another client sees is derived from it.
    """
    return secrets.token_urlsafe(32)


class Client:
    """
    One client: its identity, its subscriptions and its outgoing queue.

    @ivar transport: C{"websocket"} or C{"ajax"}: the breakdown reported by
        C{/get_client_count}.
    @ivar channels: the channels it is subscribed to.
    @ivar rooms: room name to the display name it joined with.
    @ivar attributes: free for the application (for example the user
        authenticated by an C{authenticate} hook).
    """

    transport = "unknown"

    __slots__ = ("client_id", "peer", "origin", "channels", "rooms", "attributes",
                 "queue", "paused", "limits", "events", "closed", "connected_at", "bucket",
                 "rejected_in_a_row", "__weakref__")

    def __init__(self, peer: str, origin: str | None = None, client_id: str | None = None,
                 limits: TrackerLimits | None = None, events: TrackerEvents | None = None) -> None:
        self.client_id = client_id or new_client_id()
        self.peer = peer
        self.origin = origin
        #: The bounds of its queue (the tracker's, usually).
        self.limits = limits or _DEFAULT_LIMITS
        #: Told when the queue overflows or discards.
        self.events = events or _NO_EVENTS
        self.channels: set[str] = set()
        self.rooms: dict[str, str] = {}
        self.attributes: dict[str, Any] = {}
        self.queue: OutboundQueue | None = None
        self.paused = False
        self.closed = False
        #: The stream position when the client connected: broadcasts after it
        #: reached the client live, so recovery replays only up to it.
        self.connected_at = 0
        #: Per-client rate limit (a TokenBucket) or None for no limit.
        self.bucket: Any = None
        self.rejected_in_a_row = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.client_id[:8]} {self.peer}>"

    # Delivery -----------------------------------------------------------

    def deliver(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        """
        Send a message now if the client is keeping up, else queue it under
        C{policy}. Never raises: a client that overflows a C{disconnect}
        queue is closed with L{SLOW_CONSUMER_CLOSE_CODE}.
        """
        if self.closed:
            return
        if not self.paused and not self.queue:
            self.write(message)
            return
        self._enqueue(message, policy)

    def replay(self, missed: list[Outgoing], policy: str = DISCONNECT) -> bool:
        """
        Deliver what the client missed, in order: at most what its queue
        may hold (C{max_queue_messages}, C{max_queue_bytes}), the newest
        messages when more were missed. A replay is written in one turn, past
        the transport's high-water mark, so it gets the queue's bound rather
        than none; a client further behind is better served by reloading
        its state than by the server holding its backlog.

        @return: whether every message was delivered; C{False} when the
            oldest were left out (the client is told C{recovered: false}).
        """
        limits = self.limits
        kept, size = len(missed), 0
        while kept:
            size += len(missed[kept - 1])
            taken = len(missed) - kept
            # As the queue, which takes one message of any size when empty.
            if taken and (size > limits.max_queue_bytes or taken >= limits.max_queue_messages):
                break
            kept -= 1
        for message in missed[kept:]:
            self.deliver(message, policy)
        return kept == 0

    def _enqueue(self, message: Outgoing, policy: str) -> None:
        queue = self.queue
        if queue is None:
            limits = self.limits
            queue = self.queue = OutboundQueue(limits.max_queue_messages, limits.max_queue_bytes)
        dropped, conflated = queue.dropped, queue.conflated
        try:
            queue.push(message, policy)
        except Overflow as overflow:
            self.events.slow_consumer(self, str(overflow))
            self.close(SLOW_CONSUMER_CLOSE_CODE, "slow consumer: outgoing queue overflowed")
            return
        if queue.dropped != dropped or queue.conflated != conflated:
            self.events.queue_discarded(self, queue.dropped - dropped, queue.conflated - conflated)

    def pause(self) -> None:
        """
        The peer is not reading: queue from now on.
        """
        self.paused = True

    def resume(self) -> None:
        """
        The peer is reading again: flush what waited, in order.
        """
        self.paused = False
        queue = self.queue
        while queue and not self.paused and not self.closed:
            self.write(queue.pop_first())

    def write(self, message: Outgoing) -> None:
        """
        Hand one message to the transport now.
        """
        raise NotImplementedError

    def close(self, code: int = 1000, reason: str = "") -> None:
        """
        End the connection; the transport unregisters the client when it is
        gone.
        """
        raise NotImplementedError
