"""
The bounded outgoing queue every client has.

A client that stops reading must not grow the server's memory: what it has
not taken yet waits here, bounded in messages and bytes, and what happens on
overflow is the policy of the message's channel: disconnect the client, drop
the oldest message, or conflate (keep only the newest message per key, the
right thing for prices and dashboard values).
"""

from __future__ import annotations

from typing import Hashable, Iterator

from appserver._core.envelope import Outgoing

__all__ = ["OutboundQueue", "Overflow", "POLICIES", "DISCONNECT", "DROP_OLDEST", "CONFLATE"]

DISCONNECT = "disconnect"
DROP_OLDEST = "drop-oldest"
CONFLATE = "conflate"
POLICIES = (DISCONNECT, DROP_OLDEST, CONFLATE)


class Overflow(Exception):
    """
    The queue is full and the message's policy is to disconnect the client.
    """


class OutboundQueue:
    """
    Messages waiting for one client, in order, each with a sequence number.

    Entries live in an insertion-ordered dict so that dropping the oldest,
    conflating by key and acknowledging a prefix are all cheap; every insert
    takes the next sequence number and goes to the end (a conflated entry
    moves there too), so the dict's order is always sequence order. The sequence
    number is the Ajax session's cursor: a long poll asks for everything
    after the last sequence number it saw.

    @ivar dropped: messages dropped or conflated away since the last call to
        L{take_dropped}, so the client can be told.
    """

    __slots__ = ("max_messages", "max_bytes", "_entries", "_bytes", "_next_seq", "dropped", "conflated")

    def __init__(self, max_messages: int, max_bytes: int) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._entries: dict[Hashable, tuple[int, Outgoing]] = {}
        self._bytes = 0
        self._next_seq = 1
        self.dropped = 0
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    @property
    def byte_size(self) -> int:
        return self._bytes

    @property
    def last_seq(self) -> int:
        """
        The sequence number of the newest message ever queued (0 if none).
        """
        return self._next_seq - 1

    def push(self, message: Outgoing, policy: str = DISCONNECT) -> None:
        """
        Queue a message, applying C{policy} when the queue is full (or, for
        C{conflate}, whenever an older message with the same key waits).

        @raise Overflow: the queue is full and C{policy} is C{disconnect}.
        """
        size = len(message)
        if policy == CONFLATE and message.key is not None:
            previous = self._entries.pop(("key", message.key), None)
            if previous is not None:
                self._bytes -= len(previous[1])
                self.conflated += 1
        while self._entries and (len(self._entries) >= self.max_messages
                                 or self._bytes + size > self.max_bytes):
            if policy == DISCONNECT:
                raise Overflow(f"outgoing queue full ({len(self._entries)} messages, {self._bytes} bytes)")
            self._drop_oldest()
        seq = self._next_seq
        self._next_seq += 1
        entry_key: Hashable = ("key", message.key) if (policy == CONFLATE and message.key is not None) else seq
        self._entries[entry_key] = (seq, message)
        self._bytes += size

    def _drop_oldest(self) -> None:
        oldest = next(iter(self._entries))
        _, message = self._entries.pop(oldest)
        self._bytes -= len(message)
        self.dropped += 1

    def acknowledge(self, seq: int) -> None:
        """
        Forget every message with a sequence number up to C{seq}: the client
        has them.
        """
        entries = self._entries
        while entries:
            first = next(iter(entries))
            entry_seq, message = entries[first]
            if entry_seq > seq:
                break
            del entries[first]
            self._bytes -= len(message)

    def pending(self, limit: int | None = None) -> list[tuple[int, Outgoing]]:
        """
        The waiting messages in order, without removing them.
        """
        entries = list(self._entries.values())
        return entries if limit is None else entries[:limit]

    def pop_first(self) -> Outgoing:
        """
        Remove and return the oldest waiting message.

        @raise StopIteration: the queue is empty.
        """
        first = next(iter(self._entries))
        _, message = self._entries.pop(first)
        self._bytes -= len(message)
        return message

    def pop_all(self) -> Iterator[Outgoing]:
        """
        Remove and yield every waiting message in order.
        """
        entries = list(self._entries.values())
        self._entries.clear()
        self._bytes = 0
        for _, message in entries:
            yield message

    def take_dropped(self) -> int:
        dropped, self.dropped = self.dropped, 0
        return dropped

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0
