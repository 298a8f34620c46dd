"""
What a node published while Redis could not position it, kept (bounded)
until Redis is back, so that the other nodes' clients get it late rather
than never (docs/scaling.md, "Redis lost, and back").

An entry is either I{already delivered} to this node's own clients (it was
published while Redis was unreachable: they got it at once, without a
position) and remembers which clients those were, so that none of them gets
it twice when its positioned copy comes back; or I{waiting} (published while
the outbox was being flushed: it goes out behind the older entries, so one
stream keeps one order) with the Deferred its publisher waits on.

Past its bounds (messages and bytes) the outbox keeps nothing more: it
remembers the streams it could not keep, and the backplane then tells every
node's clients of those streams that they may have missed messages (a live
C{gap}) and marks the gap in Redis so that no C{resume} across it says
C{recovered: true}.

Tests: tests/test_redis_outbox.py (the bounds), tests/test_redis_outage.py
(real Redis killed under a publish stream).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Hashable

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from appserver._core.envelope import Outgoing

__all__ = ["Outbox", "Pending", "ENTRY_OVERHEAD", "SEEN_ID_COST"]

#: Bytes an entry costs besides its payload (the entry, its key, the deque slot).
ENTRY_OVERHEAD = 256
#: Bytes counted per client id of a snapshot of this node's clients.
SEEN_ID_COST = 96


@dataclass(slots=True)
class Pending:
    """
    One publication Redis has not positioned yet.

    @ivar seen: the ids of this node's clients when it was delivered to them
        without a position (they must not get it again), or C{None} when it
        was not delivered yet (C{waiting} then fires with its position).
    @ivar idempotency_key: the publisher's, or one of the outbox's own, so
        that a flush whose answer was lost is not published twice.
    """

    stream: str
    payload: bytes
    key: Hashable | None
    idempotency_key: str
    created: float
    seen: frozenset[str] | None = None
    waiting: "Deferred[Outgoing] | None" = None
    cost: int = 0


@dataclass
class Outbox:
    """
    Publications waiting for Redis, oldest first, within C{max_messages}
    and C{max_bytes}.

    @ivar overflowed: the streams that had a publication the outbox could
        not keep since the last L{clear_overflow}.
    """

    max_messages: int
    max_bytes: int
    entries: deque[Pending] = field(default_factory=deque)
    used: int = 0
    overflowed: set[str] = field(default_factory=set)
    _last_seen: frozenset[str] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def offer(self, entry: Pending) -> bool:
        """
        Keep C{entry} behind the others if it fits; else remember its stream
        as overflowed. An entry whose snapshot of clients is not the previous
        entry's pays for it (consecutive entries share one while nobody
        connects). A waiting entry always fits: its publisher holds it and
        was not answered yet, so it is bounded by the publishers.
        """
        cost = ENTRY_OVERHEAD + len(entry.payload)
        if entry.seen is not None and entry.seen is not self._last_seen:
            cost += SEEN_ID_COST * len(entry.seen)
        if entry.waiting is None and (len(self.entries) >= self.max_messages or self.used + cost > self.max_bytes):
            self.overflowed.add(entry.stream)
            return False
        if entry.seen is not None:
            self._last_seen = entry.seen
        entry.cost = cost
        self.entries.append(entry)
        self.used += cost
        return True

    def first(self) -> Pending | None:
        return self.entries[0] if self.entries else None

    def pop_first(self) -> Pending:
        entry = self.entries.popleft()
        self.used -= entry.cost
        if not self.entries:
            self._last_seen = None
        return entry

    def clear_overflow(self) -> set[str]:
        """
        The overflowed streams, forgotten here (the caller announces them).
        """
        streams, self.overflowed = self.overflowed, set()
        return streams
