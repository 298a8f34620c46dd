"""
What a node or a client missed, read back from Redis's Streams.

  - After every (re)connection the node catches up: it makes sure Redis
    has the epoch, then delivers what was published while it was not
    listening (L{Recovery.catch_up}), or follows the cluster's epoch when
    Redis lost its data.
  - A client resuming on this node gets what it missed from this node's
    own histories when they reach back far enough, else from Redis's
    Streams, merged with them (L{Recovery.replay}).

Which entries count, and whether a read was complete, are pure functions
(L{read_replay}, L{after_reconnect}, L{merge_missed}), tested without Redis.

Tests: tests/test_redis_decisions.py; tests/test_redis_cluster.py (resume
across nodes, a Redis restart, catch-up after a lost subscription).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Iterable, Literal, Sequence

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._core.envelope import Outgoing
from appserver._core.streamlog import GLOBAL_STREAM, is_position
from appserver._redis import scripts
from appserver._redis.codec import decode_stream_entry

if TYPE_CHECKING:
    from appserver._core.backplane import ILocalNode
    from appserver._core.client import Client
    from appserver._redis.connection import RedisConnections
    from appserver._redis.keys import KeySpace

__all__ = ["Recovery", "ReplayRead", "read_replay", "after_reconnect", "merge_missed", "catch_up_streams",
           "FOLLOW", "CATCH_UP", "IN_STEP"]

_log = Logger(namespace="appserver.redis")

#: What a node does after reconnecting (L{after_reconnect}).
FOLLOW: Literal["follow"] = "follow"
CATCH_UP: Literal["catch up"] = "catch up"
IN_STEP: Literal["in step"] = "in step"


# Decisions -------------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def after_reconnect(our_epoch: str, our_position: int, epoch: str,
                    position: int) -> Literal["follow", "catch up", "in step"]:
    """
    What a node at C{our_epoch}, C{our_position} does when Redis says the
    cluster is at C{epoch}, C{position}: L{FOLLOW} it when the epoch
    changed or the cluster is behind (Redis lost its data: this node's
    histories vouch for nothing any more), L{CATCH_UP} when the cluster
    is ahead, else nothing (L{IN_STEP}).
    """
    if epoch != our_epoch or position < our_position:
        return FOLLOW
    if position > our_position:
        return CATCH_UP
    return IN_STEP


def catch_up_streams(delivered: Iterable[str], kept: Iterable[str]) -> list[str]:
    """
    The streams a catch-up reads, the global one first: every stream this
    node delivers (C{delivered}: its channels with a subscriber) or keeps
    a history of (C{kept}), since a history left with a gap would vouch for
    what it does not have.
    """
    return [GLOBAL_STREAM, *sorted((set(delivered) | set(kept)) - {GLOBAL_STREAM})]


@dataclass(frozen=True)
class ReplayRead:
    """
    A decoded L{scripts.REPLAY} answer.

    @ivar epoch: the cluster's epoch; C{position}, its last position;
        C{floor}, where Redis's history starts.
    @ivar complete: whether C{messages} is everything after the position
        read from, for every stream read.
    @ivar messages: (stream, message) in position order.
    @ivar kept: whether nothing was trimmed or expired: C{complete} but for
        Redis having lost its data (C{since} before C{floor}).
    """

    epoch: str
    position: int
    floor: int
    complete: bool
    messages: list[tuple[str, Outgoing]]
    kept: bool = True


def read_replay(answer: Sequence[Any], streams: Sequence[str], since: int, upto: int | None,
                horizon_ms: float) -> ReplayRead:
    """
    Decode a L{scripts.REPLAY} answer for C{streams} (in the order they were
    asked for), keeping what a reader that was at C{since} should get.

    @param upto: channel messages after this position are left out (the
        reader gets them live); C{None} for no bound.
    @param horizon_ms: entries created before this time (ms since the Unix
        epoch) have expired: left out, and the read is then incomplete.
    @raise appserver._redis.codec.MalformedMessage: an entry is not as
        L{scripts.PUBLISH} writes them.
    """
    floor = int(answer[2])
    kept = True
    found: list[tuple[str, Outgoing]] = []
    for stream, (last, gone, exists, entries) in zip(streams, answer[3:]):
        if int(last) <= since:
            continue
        if since < int(gone) or not int(exists):
            kept = False
        for entry_id, fields in entries:
            entry = decode_stream_entry(entry_id, fields)
            if upto is not None and stream != GLOBAL_STREAM and entry.pos > upto:
                continue
            if entry.created_ms < horizon_ms:
                kept = False
                continue
            found.append((stream, Outgoing(entry.payload, entry.pos, entry.key, entry.created_ms / 1000)))
    found.sort(key=lambda item: item[1].pos or 0)
    return ReplayRead(_text(answer[0]), int(answer[1]), floor, kept and since >= floor, found, kept)


def merge_missed(remote: Iterable[Outgoing], local: Iterable[Outgoing]) -> list[Outgoing]:
    """
    What a client missed, from Redis (C{remote}) and this node's histories
    (C{local}), once each and in position order; this node's copy wins (it
    may be the one already framed for its clients).
    """
    by_position: dict[int, Outgoing] = {}
    for message in (*remote, *local):
        if message.pos is not None:
            by_position[message.pos] = message
    return [by_position[pos] for pos in sorted(by_position)]


# Against Redis ---------------------------------------------------------------

class Recovery:
    """
    Reading back from Redis's Streams what a node or a client missed.
    """

    def __init__(self, keys: "KeySpace", node_id: str, connections: "RedisConnections",
                 history_age: float) -> None:
        """
        @param history_age: seconds a message is kept for recovery.
        """
        self.keys = keys
        self.node_id = node_id
        self.connections = connections
        self.history_age = history_age
        self.node: ILocalNode | None = None

    def attach(self, node: "ILocalNode") -> None:
        self.node = node

    def _node(self) -> "ILocalNode":
        node = self.node
        assert node is not None, "attach() the node first"
        return node

    def _read(self, since: int, first_upper: str, streams: list[str]) -> "defer.Deferred[Any]":
        """
        Ask Redis for C{streams} after C{since}; the first (global) stream up
        to C{first_upper} (a position, or C{+} for all). The answer is for
        L{_decode}.
        """
        keys = [*self.keys.positions, self.keys.streams, *map(self.keys.stream, streams)]
        return self.connections.eval(scripts.REPLAY, keys, [since, first_upper, *streams])

    def _decode(self, answer: Sequence[Any], streams: list[str], since: int, upto: int | None) -> ReplayRead:
        # The horizon is taken when the answer is read: what expired while
        # it travelled is gone from Redis too.
        node = self._node()
        return read_replay(answer, streams, since, upto, (node.stream.clock() - self.history_age) * 1000)

    # After a reconnection -----------------------------------------------------

    @defer.inlineCallbacks
    def catch_up(self) -> Generator["defer.Deferred[Any]", Any, bool]:
        """
        Make sure Redis has the epoch, then deliver what was published while
        this node was not listening, or follow the cluster when Redis lost
        its data.

        @return: (a Deferred firing with) whether this node's clients may
            have missed messages: the epoch changed, or what this node did
            not hear was trimmed or expired from Redis before it could read
            it. Redis having lost its data alone does not count: every
            publication it had not fanned out failed on its publishing node,
            which publishes it again from its outbox.
        """
        node = self._node()
        answer = yield self.connections.eval(scripts.INIT, self.keys.positions,
                                             [node.stream.epoch, scripts.proposed_start(node.stream.position)])
        epoch, position, floor = _text(answer[0]), int(answer[1]), int(answer[2])
        action = after_reconnect(node.stream.epoch, node.stream.position, epoch, position)
        if action == FOLLOW:
            _log.warn("the backplane is at epoch {epoch} position {position}, this node at {ours} {pos}: "
                      "following it", epoch=epoch, position=position, ours=node.stream.epoch,
                      pos=node.stream.position)
            node.stream.resynchronise(epoch, position)
            return True
        if action == CATCH_UP:
            kept = yield self._catch_up(node.stream.position, position, floor)
            return not kept
        return False

    @defer.inlineCallbacks
    def _catch_up(self, since: int, upto: int, floor: int) -> Generator["defer.Deferred[Any]", Any, bool]:
        node = self._node()
        streams = catch_up_streams(node.channel_names(), node.stream.streams())
        answer = yield self._read(since, "+", streams)
        read = self._decode(answer, streams, since, None)
        for stream, message in read.messages:
            if message.pos is not None and message.pos > node.stream.position:
                node.receive(stream, message)
        # Everything up to `upto` was in Redis when the catch-up started:
        # read here, or of streams this node neither delivers nor keeps.
        # When something this node missed is gone, its histories cannot
        # vouch for the gap, so recovery across it asks Redis (and says no).
        node.stream.advance_to(upto, complete=read.complete and since >= floor)
        _log.info("caught up {count} messages published while node {node} was not listening",
                  count=len(read.messages), node=self.node_id)
        return read.kept

    # A client resuming ---------------------------------------------------------

    def replay(self, client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "defer.Deferred[bool]":
        """
        Send a reconnecting client what it missed (L{IBackplane.replay
        <appserver._core.backplane.IBackplane.replay>}): from this node's
        histories when they reach back to C{since}, else from Redis's.
        """
        node = self._node()
        channels = list(channels)
        if epoch != node.stream.epoch or not is_position(since) or self.connections.commands is None:
            return defer.succeed(node.replay_local(client, epoch, since, channels, connected_at))
        if since <= node.stream.position:
            complete, missed = node.stream.missed_since(since, channels, connected_at)
            if complete:
                # Through the client's own replay, as on one node: bounded
                # by its queue (a WebSocket takes any length as it reads).
                recovered = client.replay(missed, node.limits.default_policy)
                node.events.recovery(client, recovered)
                return defer.succeed(recovered)
        # This node's histories do not reach back to `since`: read Redis's.
        # Meanwhile the client gets no live message of these channels (it
        # would arrive before older ones); it rejoins them when the replay
        # is delivered.
        detached = node.detach_from_channels(client, channels)
        streams = [GLOBAL_STREAM, *channels]
        _log.info("client {client_id} resumes from position {since}, before this node's history: "
                  "reading Redis's", client_id=client.client_id, since=since)
        d = self._read(since, str(connected_at), streams)
        d.addCallback(self._replayed, client, since, streams, connected_at)
        d.addErrback(self._replay_failed, client, epoch, since, channels, connected_at)
        d.addBoth(self._reattach, client, detached)
        return d

    def _replayed(self, answer: Sequence[Any], client: "Client", since: int, streams: list[str],
                  connected_at: int) -> bool:
        node = self._node()
        # Channel messages after this node's position reach the client live.
        read = self._decode(answer, streams, since, node.stream.position)
        if read.epoch != node.stream.epoch or since > read.position:
            node.events.recovery(client, False)
            return False
        _, local = node.stream.missed_since(since, streams[1:], connected_at)
        missed = merge_missed((message for _, message in read.messages), local)
        recovered = read.complete
        if not client.closed:
            recovered = client.replay(list(missed), node.limits.default_policy) and recovered
        node.events.recovery(client, recovered)
        return recovered

    def _replay_failed(self, failure: Failure, client: "Client", epoch: Any, since: int,
                       channels: list[str], connected_at: int) -> bool:
        _log.warn("reading missed messages from Redis failed ({error}): replaying this node's history only",
                  error=failure.value)
        self._node().replay_local(client, epoch, since, channels, connected_at)
        return False

    def _reattach(self, result: Any, client: "Client", detached: list[str]) -> Any:
        self._node().reattach_to_channels(client, detached)
        return result
