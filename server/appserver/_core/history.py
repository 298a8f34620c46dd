"""
Bounded per-stream history, kept so a client that reconnects gets exactly
what it missed.

A history can vouch for a position only if it has dropped nothing newer than
that position: C{covers(since)} is the test that decides between
C{recovered: true} (replay what was missed) and C{recovered: false} (tell the
application to reload its state).

One history per stream; L{appserver._core.streamlog.StreamLog} owns them
all, with the positions they share.

Tests: tests/test_history.py.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Iterable

from appserver._core.envelope import Outgoing

__all__ = ["StreamHistory"]


class StreamHistory:
    """
    The last messages of one stream (a channel or the global broadcast),
    bounded by count and by age.

    @ivar complete_after: every message of this stream with a position above
        this one is still here (or was never sent).
    """

    __slots__ = ("max_messages", "max_age", "_clock", "_messages", "complete_after")

    def __init__(self, max_messages: int, max_age: float, clock: Callable[[], float],
                 complete_after: int) -> None:
        self.max_messages = max_messages
        self.max_age = max_age
        self._clock = clock
        self._messages: deque[Outgoing] = deque()
        self.complete_after = complete_after

    def __len__(self) -> int:
        return len(self._messages)

    def append(self, message: Outgoing) -> None:
        if self.max_messages == 0:
            self.complete_after = message.pos or self.complete_after
            return
        self._messages.append(message)
        while len(self._messages) > self.max_messages:
            self._evict()
        self.expire()

    def _evict(self) -> None:
        evicted = self._messages.popleft()
        if evicted.pos is not None:
            self.complete_after = max(self.complete_after, evicted.pos)

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
