"""
The stream log of one node: its epoch, the last position it handed out or
saw, and the recent history of every stream, kept so that a client that
reconnects gets exactly what it missed.

It is a value below the tracker: the tracker owns who is connected, the
stream log owns what was sent. Both backplanes position messages through it
(L{StreamLog.stamp} on a single node, L{StreamLog.receive} for messages
positioned by Redis), and C{--state-file} saves and restores it
(L{StreamLog.snapshot}, L{StreamLog.restore}). Nothing here delivers a
message: delivery is the tracker's.

What the histories retain is bounded per stream (messages and age) and in
total (C{--history-bytes}): past the total, the oldest messages of all
streams go first, and a stream whose history it emptied is forgotten as a
sweep would.

It also remembers, for the history age, the position of each publish made
with an idempotency key (L{StreamLog.idempotent}, L{StreamLog.remember}), so
that a retry on this node is answered with the first position instead of
being published again: at most L{MAX_IDEMPOTENCY_KEYS} keys, the oldest
forgotten first. They are not part of a snapshot.

Tests: tests/test_streamlog.py (and, through the tracker, tests/test_tracker.py).
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import time
from collections import OrderedDict
from typing import Any, Callable, Container, Hashable, Iterable

import orjson

from appserver._core.envelope import Outgoing, encode
from appserver._core.history import STREAM_OVERHEAD, HistoryBudget, StreamHistory

__all__ = ["StreamLog", "GLOBAL_STREAM", "MAX_IDEMPOTENCY_KEYS", "is_position"]

#: History key of the global broadcast stream (the chat every client gets).
#: Not a valid channel name, so it cannot collide with one.
GLOBAL_STREAM = ""

#: The idempotency keys one node remembers at most (each for the history
#: age): past it, the oldest is forgotten first.
MAX_IDEMPOTENCY_KEYS = 100_000


def is_position(value: Any) -> bool:
    """
    Whether C{value}, as a client sent it, can be a stream position at all:
    a non-negative integer (JSON C{true} is not one, though Python says
    C{True == 1}).
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_key(key: Any) -> Any:
    """
    A conflation key as JSON can keep it: strings and integers survive a
    save and restore; any other key is dropped (the message is then not
    conflated with later ones, which loses nothing).
    """
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return key
    return None


class StreamLog:
    """
    Epoch, position and per-stream history of one node, and their retention.

    Positions are shared by every stream (a channel or the global stream
    L{GLOBAL_STREAM}), so one number tells a client where it stands in all
    of them; each stream keeps its own bounded L{StreamHistory}.

    @ivar clock: the wall clock that dates messages and expires history.
    """

    __slots__ = ("history_size", "history_age", "clock", "_epoch", "_position", "_histories",
                 "_forgotten_after", "budget", "_eviction_order", "_entries", "_idempotent")

    def __init__(self, history_size: int = 1000, history_age: float = 300.0,
                 clock: Callable[[], float] = time.time, epoch: str | None = None,
                 history_bytes: int = 0) -> None:
        """
        @param history_size: messages kept per stream (0 keeps none).
        @param history_age: seconds a message is kept.
        @param epoch: the epoch to start with; by default a random one, so
            that positions from a previous run of the server mean nothing
            here.
        @param history_bytes: what all histories may retain together, in
            bytes (L{HistoryBudget}); 0 for no total limit.
        """
        self.history_size = history_size
        self.history_age = history_age
        self.clock = clock
        self._epoch = epoch or secrets.token_hex(8)
        self._position = 0
        self._histories: dict[str, StreamHistory] = {}
        # A stream without a history (never used, or swept) vouches for
        # nothing at or before this position: its messages may be gone.
        self._forgotten_after = 0
        #: What the histories retain, against C{history_bytes}.
        self.budget = HistoryBudget(history_bytes)
        # Under a total limit: a heap with one entry per history, keyed by a
        # position no later than its oldest message (its complete_after when
        # empty), so the oldest message of all streams is found at the top.
        self._eviction_order: list[tuple[int, int, str, StreamHistory]] = []
        self._entries = itertools.count()
        # (stream, idempotency key) -> (position, when published), oldest first.
        self._idempotent: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()

    # What a client is told ------------------------------------------------

    @property
    def epoch(self) -> str:
        """
        The name of this run of the stream: positions from another epoch
        mean nothing here, so a client presenting one is not recovered.
        """
        return self._epoch

    @property
    def position(self) -> int:
        """
        The last position handed out or seen here.
        """
        return self._position

    # Positioning messages -------------------------------------------------

    def stamp(self, envelope: dict[str, Any], stream: str, key: Hashable | None = None) -> Outgoing:
        """
        Give a message of C{stream} the next position, serialize it once (its
        recipients share the bytes) and keep it for recovery.

        @param key: the conflation key (L{appserver._core.outbound}).
        @return: the message, to be delivered by the caller.
        """
        self._position += 1
        message = Outgoing.of(envelope, self._position, key, self.clock())
        self._history(stream).append(message)
        budget = self.budget
        if budget.used > budget.limit and budget.limit:
            self._evict_over_budget()
        return message

    def receive(self, stream: str, message: Outgoing) -> None:
        """
        Keep a message that was positioned elsewhere (by the Redis backplane,
        for every node of a cluster); the position moves on to it. A message
        without a position (it was sent while Redis was unreachable) cannot
        be recovered, so it is not kept.
        """
        pos = message.pos
        if pos is not None:
            self._history(stream).append(message)
            if pos > self._position:
                self._position = pos
            if self.budget.exceeded:
                self._evict_over_budget()

    # Idempotent publishing ------------------------------------------------

    def idempotent(self, stream: str, key: str) -> int | None:
        """
        The position of the message published on C{stream} with the
        idempotency key C{key} within the history age, if any: a retry of
        that publish is answered with it and published nowhere.
        """
        self._expire_idempotent()
        found = self._idempotent.get((stream, key))
        return None if found is None else found[0]

    def remember(self, stream: str, key: str, position: int) -> None:
        """
        C{position} is the message published on C{stream} with the
        idempotency key C{key}: remembered for the history age, among at
        most L{MAX_IDEMPOTENCY_KEYS} keys.
        """
        remembered = self._idempotent
        remembered[(stream, key)] = (position, self.clock())
        remembered.move_to_end((stream, key))
        while len(remembered) > MAX_IDEMPOTENCY_KEYS:
            remembered.popitem(last=False)

    def _expire_idempotent(self) -> None:
        remembered = self._idempotent
        oldest = self.clock() - self.history_age
        while remembered:
            first = next(iter(remembered.values()))
            if first[1] > oldest:
                break
            remembered.popitem(last=False)

    def _history(self, stream: str) -> StreamHistory:
        history = self._histories.get(stream)
        if history is None:
            # A stream without a history had no message since the last
            # sweep forgot one: it vouches for everything after that.
            history = self._histories[stream] = StreamHistory(
                self.history_size, self.history_age, self.clock, complete_after=self._forgotten_after,
                budget=self.budget)
            self.budget.used += STREAM_OVERHEAD + len(stream)
            if self.budget.limit:
                self._order(stream, history)
        return history

    # The total budget -----------------------------------------------------

    def _order(self, stream: str, history: StreamHistory) -> None:
        """
        Give a history its entry in the eviction order: the position of its
        oldest message, or when it has none, a position no later than its
        next one.
        """
        oldest = history.oldest_position()
        key = history.complete_after if oldest is None else oldest
        heapq.heappush(self._eviction_order, (key, next(self._entries), stream, history))

    def _evict_over_budget(self) -> None:
        """
        Evict the oldest kept messages, whatever their stream, until the
        histories fit the budget. Each eviction raises its history's
        C{complete_after} (the history no longer vouches for that
        position); a history left empty is dropped as L{sweep} drops one,
        so streams cost nothing once their messages are gone.

        Every history has one entry in the order (L{_order}), keyed by a
        position no later than its oldest message: an entry found early,
        because the history's own limits dropped messages meanwhile, is put
        back at its true place.
        """
        budget, order, histories, entries = self.budget, self._eviction_order, self._histories, self._entries
        global_parked = False
        while budget.used > budget.limit and order:
            key, _, stream, history = order[0]
            if histories.get(stream) is not history:
                heapq.heappop(order)        # dropped since (swept, resynchronised)
                continue
            oldest = history.oldest_position()
            if oldest is None:
                if stream != GLOBAL_STREAM:
                    heapq.heappop(order)
                    self._forget(stream, history)
                    continue
                if global_parked:
                    break                   # only the (empty) global stream is left
                # The global stream is always kept; its next message comes
                # after the present position.
                heapq.heapreplace(order, (self._position + 1, next(entries), stream, history))
                global_parked = True
                continue
            if oldest > key:
                heapq.heapreplace(order, (oldest, next(entries), stream, history))
                continue
            history.evict_oldest()
            budget.evicted += 1
            oldest = history.oldest_position()
            heapq.heapreplace(order, (history.complete_after if oldest is None else oldest,
                                      next(entries), stream, history))

    def _forget(self, stream: str, history: StreamHistory) -> None:
        """
        Drop the (empty) history of C{stream}; streams without a history
        vouch only after its last message.
        """
        self._forgotten_after = max(self._forgotten_after, history.complete_after)
        del self._histories[stream]
        self.budget.used -= STREAM_OVERHEAD + len(stream)

    def _reorder(self) -> None:
        """
        Rebuild the eviction order from the histories there are now (after a
        sweep, so that entries of dropped histories do not pile up).
        """
        self._eviction_order = []
        if self.budget.limit:
            for stream, history in self._histories.items():
                self._order(stream, history)

    # When this node may have missed messages ------------------------------

    def resynchronise(self, epoch: str, position: int) -> None:
        """
        Follow the cluster's epoch and position when this node may have
        missed messages (its Redis subscription was down, or Redis lost its
        data): every history is dropped, since none can vouch for anything
        up to C{position}; recovery across the gap then asks the backplane.
        """
        self._epoch = epoch
        self._histories.clear()
        self.budget.used = 0
        self._eviction_order = []
        self._position = position
        self._forgotten_after = position

    def advance_to(self, position: int, complete: bool) -> None:
        """
        Everything up to C{position} reached this node by other means than
        L{stamp} or L{receive}: a catch-up read after a reconnection.

        @param complete: whether the catch-up got every message after this
            node's last position for each stream it has a history of. Then
            those histories still vouch for themselves, and a stream with no
            history here vouches only after C{position} (it was not read).
            Otherwise nothing here can vouch for the gap: as
            L{resynchronise} in the same epoch.
        """
        self._position = max(self._position, position)
        if complete:
            self._forgotten_after = max(self._forgotten_after, self._position)
        else:
            self.resynchronise(self._epoch, self._position)

    # Recovery -------------------------------------------------------------

    def valid_since(self, epoch: Any, since: Any) -> bool:
        """
        Whether a client's C{resume} names a position of this node's stream:
        the same epoch, and a position no later than the last one here
        (a later one was not handed out by this epoch, as far as this node
        knows).
        """
        return epoch == self._epoch and is_position(since) and since <= self._position

    def missed_since(self, since: int, channels: Iterable[str], connected_at: int | None,
                     until: int | None = None) -> tuple[bool, list[Outgoing]]:
        """
        What a client that was at position C{since} missed, as far as this
        node's histories know.

        @param channels: the channels it follows (the global stream always).
        @param connected_at: global messages after this position reached the
            client live on its new connection: not replayed.
        @param until: channel messages after this position are left out.
        @return: whether the histories hold every such message, and those
            they hold, in position order.
        """
        streams: list[tuple[str, int | None]] = [(GLOBAL_STREAM, connected_at)]
        streams.extend((channel, until) for channel in channels)
        recovered = True
        missed: list[Outgoing] = []
        for stream, upto in streams:
            history = self._histories.get(stream)
            if history is None:
                # Never published, or swept after its messages expired.
                if since < self._forgotten_after:
                    recovered = False
                continue
            if not history.covers(since):
                recovered = False
            missed.extend(history.after(since, upto))
        missed.sort(key=_position_of)
        return recovered, missed

    def history(self, stream: str) -> StreamHistory | None:
        """
        The history of one stream, or C{None} when it has none (never used,
        or swept): for reading, the log stays its only writer.
        """
        return self._histories.get(stream)

    def streams(self) -> list[str]:
        """
        The streams with a history here: what a catch-up must read so that
        none of them is left with a gap it would vouch for.
        """
        return list(self._histories)

    # Retention ------------------------------------------------------------

    def sweep(self, active_streams: Container[str]) -> None:
        """
        Drop expired messages, and the histories of streams outside
        C{active_streams} (channels nobody here follows) once all their
        messages have expired, so that a server that saw many short-lived
        channels does not keep a history for each. The global stream is
        always kept.
        """
        for stream in list(self._histories):
            history = self._histories[stream]
            history.expire()
            if not len(history) and stream != GLOBAL_STREAM and stream not in active_streams:
                self._forget(stream, history)
        self._reorder()
        self._expire_idempotent()

    # Saving and restoring (--state-file) ----------------------------------

    def snapshot(self) -> dict[str, Any]:
        """
        The whole log as JSON values, for L{restore} in a later run of the
        server. Conflation keys other than strings and integers are dropped.
        """
        histories = {}
        for stream, history in self._histories.items():
            histories[stream] = {
                "complete_after": history.complete_after,
                "messages": [
                    {"pos": message.pos, "created": message.created, "key": _json_key(message.key),
                     "envelope": orjson.loads(message.payload)}
                    for message in history.after(-1)
                ],
            }
        return {
            "epoch": self._epoch,
            "position": self._position,
            "forgotten_after": self._forgotten_after,
            "histories": histories,
        }

    def restore(self, state: Any) -> None:
        """
        Take the epoch, position and histories of a L{snapshot}. This log's
        own size and age limits apply to the restored histories, so a
        server restarted with smaller limits keeps less. Nothing changes
        when C{state} is refused.

        @raise ValueError: C{state} is not a snapshot (also C{KeyError} or
            C{TypeError} for a missing or mistyped part).
        """
        if not isinstance(state, dict):
            raise ValueError("a stream log snapshot is a JSON object")
        epoch, position = state["epoch"], state["position"]
        if not isinstance(epoch, str) or not epoch or not is_position(position):
            raise ValueError("bad epoch or position")
        forgotten_after = int(state.get("forgotten_after", 0))
        histories: dict[str, StreamHistory] = {}
        budget = HistoryBudget(self.budget.limit)
        budget.evicted = self.budget.evicted
        for stream, saved in state["histories"].items():
            history = StreamHistory(self.history_size, self.history_age, self.clock,
                                    complete_after=int(saved["complete_after"]), budget=budget)
            budget.used += STREAM_OVERHEAD + len(stream)
            for item in saved["messages"]:
                pos = int(item["pos"])
                if pos > position:
                    raise ValueError(f"a message at position {pos} after the saved position {position}")
                history.append(Outgoing(encode(item["envelope"]), pos, item.get("key"), float(item["created"])))
            histories[stream] = history
        self._epoch = epoch
        self._position = position
        self._histories = histories
        self._forgotten_after = forgotten_after
        # The budget applies to what was restored too: a server restarted
        # with a smaller one keeps the newest messages.
        self.budget = budget
        self._reorder()
        if budget.exceeded:
            self._evict_over_budget()


def _position_of(message: Outgoing) -> int:
    return message.pos or 0
