"""
Bounded per-stream history, kept so a client that reconnects gets exactly
what it missed.

A history can vouch for a position only if it has dropped nothing newer than
that position: C{covers(since)} is the test that decides between
C{recovered: true} (replay what was missed) and C{recovered: false} (tell the
application to reload its state).

One history per stream; L{appserver._core.streamlog.StreamLog} owns them
all, with the positions they share, and a L{HistoryBudget} bounds what they
retain together.

Tests: tests/test_history.py.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

from appserver._core.envelope import Outgoing

__all__ = ["StreamHistory", "HistoryBudget", "MESSAGE_OVERHEAD", "STREAM_OVERHEAD", "retained_size"]

#: What keeping one message costs beyond its WebSocket frame: the message
#: object, its position and date, its slot in the history, and the
#: allocator's rounding (measured with tracemalloc on CPython 3.11: about
#: 165 bytes requested, rounded up; docs/reliability.md).
MESSAGE_OVERHEAD = 192

#: What a stream's history costs before its first message: the history,
#: its deque's first block and its entry in the stream log (about 840
#: bytes measured), and the stream's name, counted apart.
STREAM_OVERHEAD = 1024


def retained_size(message: Outgoing) -> int:
    """
    What keeping C{message} in a history costs, in bytes: its frame (JSON
    text and WebSocket header, one exact-size buffer) and
    L{MESSAGE_OVERHEAD}.
    """
    return len(message.frame) + MESSAGE_OVERHEAD


class HistoryBudget:
    """
    What all the histories of one stream log retain, in bytes, against
    their total limit (C{--history-bytes}).

    Each history adds to and takes from C{used} as it keeps and evicts
    messages; the stream log evicts the oldest messages of all streams while
    C{used} is over C{limit}.

    @ivar limit: the most they may retain together; 0 for no limit.
    @ivar used: what they retain now: L{retained_size} of every kept
        message, and L{STREAM_OVERHEAD} plus the name of every stream with a
        history.
    @ivar evicted: messages evicted so far to stay under C{limit} (not
        those that the per-stream size and age limits drop).
    """

    __slots__ = ("limit", "used", "evicted")

    def __init__(self, limit: int = 0) -> None:
        self.limit = limit
        self.used = 0
        self.evicted = 0

    @property
    def exceeded(self) -> bool:
        return bool(self.limit) and self.used > self.limit


class StreamHistory:
    """
    The last messages of one stream (a channel or the global broadcast),
    bounded by count and by age.

    @ivar complete_after: every message of this stream with a position above
        this one is still here (or was never sent).
    @ivar budget: the budget its messages count against, shared with the
        other histories of its stream log.
    """

    __slots__ = ("max_messages", "max_age", "_clock", "_messages", "complete_after", "budget")

    def __init__(self, max_messages: int, max_age: float, clock: Callable[[], float],
                 complete_after: int, budget: HistoryBudget | None = None) -> None:
        self.max_messages = max_messages
        self.max_age = max_age
        self._clock = clock
        self._messages: deque[Outgoing] = deque()
        self.complete_after = complete_after
        self.budget = budget if budget is not None else HistoryBudget()

    def __len__(self) -> int:
        return len(self._messages)

    def append(self, message: Outgoing) -> None:
        if self.max_messages == 0:
            self.complete_after = message.pos or self.complete_after
            return
        messages = self._messages
        messages.append(message)
        if len(messages) > self.max_messages:
            # A full history (the steady state of a busy stream): the
            # oldest makes room, in one update of the budget.
            evicted = messages.popleft()
            self.budget.used += len(message.frame) - len(evicted.frame)
            pos = evicted.pos
            if pos is not None and pos > self.complete_after:
                self.complete_after = pos
            while len(messages) > self.max_messages:
                self._evict()
        else:
            self.budget.used += len(message.frame) + MESSAGE_OVERHEAD     # retained_size, inline
        self.expire()

    def _evict(self) -> None:
        evicted = self._messages.popleft()
        self.budget.used -= len(evicted.frame) + MESSAGE_OVERHEAD
        if evicted.pos is not None:
            self.complete_after = max(self.complete_after, evicted.pos)

    def oldest_position(self) -> int | None:
        """
        The position of the oldest message kept, or C{None} when empty.
        """
        messages = self._messages
        return (messages[0].pos or 0) if messages else None

    def evict_oldest(self) -> None:
        """
        Drop the oldest message kept (the total budget needs room); this
        history then no longer covers its position.
        """
        if self._messages:
            self._evict()

    def expire(self) -> None:
        """
        Drop messages older than C{max_age}.
        """
        horizon = self._clock() - self.max_age
        messages = self._messages
        while messages and messages[0].created < horizon:
            self._evict()

    def covers(self, since: int) -> bool:
        """
        Whether every message after position C{since} is still available.
        """
        self.expire()
        return since >= self.complete_after

    def after(self, since: int, until: int | None = None) -> Iterable[Outgoing]:
        """
        The kept messages with C{since < pos <= until}, oldest first.
        """
        for message in self._messages:
            pos = message.pos or 0
            if pos > since and (until is None or pos <= until):
                yield message
