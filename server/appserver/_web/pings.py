"""
WebSocket liveness: every connection is pinged each --ping-interval and
dropped when no pong (or any message) comes back within --ping-timeout.

Autobahn's own pings keep two delayed calls per connection, rearmed on each
pong, and build each ping frame anew: an idle connection then costs about
half a kilobyte of timers and a hundred and more microseconds of CPU per
ping. Here one timer serves every connection: connections are spread over
one-second buckets (a timing wheel), each tick pings one bucket with a
frame built once, and checks the bucket pinged one timeout ago for pongs
that did not come.

Tests: tests/test_pings.py; tests/test_websocket_protocol.py and
tests/test_reliability.py (a dead peer is dropped within interval + timeout).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appserver._web.websocket import WebSocketClient

__all__ = ["Pings", "PING_FRAME", "MAX_TICK"]

#: An unmasked ping frame with no payload: the same bytes for everyone.
PING_FRAME = b"\x89\x00"
#: The longest step of the wheel, in seconds: a dead peer is found at most
#: this much later than interval + timeout.
MAX_TICK = 1.0
#: Slack for floating-point time arithmetic.
_EPSILON = 1e-6


class Pings:
    """
    The ping schedule of every WebSocket connection of one server.

    A client's C{ping_sent_at} is when its unanswered ping went out (0 when
    none is outstanding); the transport clears it on a pong or a message.
    """

    def __init__(self, reactor: Any, interval: float, timeout: float) -> None:
        self.reactor = reactor
        self.interval = interval
        self.timeout = timeout
        slots = max(1, math.ceil(interval / MAX_TICK - _EPSILON)) if interval > 0 else 1
        #: Seconds between two ticks; the wheel turns once per interval.
        self.tick = interval / slots if interval > 0 else 0.0
        self._wheel: list[set["WebSocketClient"]] = [set() for _ in range(slots)]
        #: Ticks between a ping and the check for its pong.
        self._timeout_ticks = max(1, math.ceil(timeout / self.tick - _EPSILON)) if interval > 0 else 0
        self._step = 0
        self._started_at: float | None = None
        self._call: Any = None

    @property
    def enabled(self) -> bool:
        return self.interval > 0

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._wheel)

    def add(self, client: "WebSocketClient") -> None:
        """
        Ping C{client} from about one interval from now on.
        """
        if not self.enabled:
            return
        if self._started_at is None:
            self._started_at = self.reactor.seconds()
            self._schedule()
        # The bucket the wheel just left: its turn comes back in an interval.
        client.ping_slot = (self._step - 1) % len(self._wheel)
        self._wheel[client.ping_slot].add(client)

    def remove(self, client: "WebSocketClient") -> None:
        slot = client.ping_slot
        if slot >= 0:
            self._wheel[slot].discard(client)
            client.ping_slot = -1

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _schedule(self) -> None:
        assert self._started_at is not None
        due = self._started_at + (self._step + 1) * self.tick
        self._call = self.reactor.callLater(max(0.0, due - self.reactor.seconds()), self._turn)

    def _turn(self) -> None:
        """
        Run every tick that is due (a busy reactor, or a test clock
        advanced by many seconds at once, may owe several), then wait for
        the next one.
        """
        assert self._started_at is not None
        now = self.reactor.seconds()
        due = math.floor((now - self._started_at) / self.tick + _EPSILON)
        slots = len(self._wheel)
        # More than a whole turn behind: one turn visits every bucket.
        self._step = max(self._step, due - 2 * slots)
        while self._step < due:
            self._step += 1
            self._visit(self._step, now)
        if any(self._wheel):
            self._schedule()
        else:
            # Nobody left to ping: the timer stops until the next add().
            self._call = None
            self._started_at = None
            self._step = 0

    def _visit(self, step: int, now: float) -> None:
        slots = len(self._wheel)
        if self.timeout > 0:
            # The bucket pinged one timeout ago: its pongs are due.
            deadline = now - self.timeout + _EPSILON
            for client in [c for c in self._wheel[(step - self._timeout_ticks) % slots]
                           if 0 < c.ping_sent_at <= deadline]:
                client.ping_timed_out()
        for client in list(self._wheel[step % slots]):
            sent_at = client.ping_sent_at
            if not sent_at:
                client.ping_sent_at = now
                # A control frame: it may go ahead of data frames still
                # waiting for the end of the turn.
                client.send_now(PING_FRAME)
            elif self.timeout > 0 and sent_at <= now - self.timeout + _EPSILON:
                client.ping_timed_out()
