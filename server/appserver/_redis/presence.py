"""
Who is where, across the cluster: each node shares its client counts and
its room members in its own Redis hash and proves it is alive with a
heartbeat; the cluster's numbers are this node's own plus those of every
node whose heartbeat is recent. A node that stops beating (even kill -9)
drops out within C{ttl} seconds, and the first node to notice announces its
room members' departure.

The decisions (how views merge, what a dead node's hash says) are pure
functions, tested without Redis; L{Presence} runs them against Redis.

Tests: tests/test_redis_decisions.py; tests/test_redis_cluster.py (counts,
rooms and a node killed, on a real Redis).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable, Mapping, Sequence

import orjson
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._redis import scripts

if TYPE_CHECKING:
    from appserver._core.backplane import ILocalNode
    from appserver._redis.connection import RedisConnections
    from appserver._redis.keys import KeySpace

__all__ = ["Presence", "DeadNode", "NODE_HASH_TTL_MS", "COUNTS_FIELD", "room_field_name", "room_field",
           "decode_view", "sum_counts", "sum_subscribers", "merge_members", "decode_reaped", "leave_envelope",
           "SUBSCRIBERS_FIELD"]

_log = Logger(namespace="appserver.redis")

#: How long a node's hash outlives its last heartbeat, so that whoever reaps
#: a dead node can still tell its rooms who left.
NODE_HASH_TTL_MS = 60_000
#: The field of a node's hash holding its clients per transport (JSON).
COUNTS_FIELD = "counts"
#: The field of a node's hash holding its subscribers per channel (JSON),
#: refreshed with every heartbeat and every change of its counts.
SUBSCRIBERS_FIELD = "subscribers"
_ROOM = "r:"


# Decisions -------------------------------------------------------------------

def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json(raw: Any) -> Any:
    # Another node's value: one that does not parse (a newer format, a
    # stranger on the prefix) counts as absent rather than failing the view.
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def room_field_name(room: str) -> str:
    """
    The field of a node's hash holding its members of C{room}.
    """
    return _ROOM + room


def room_field(room: str, members: Sequence[str]) -> tuple[str, bytes]:
    """
    The field and value of a node's hash for its members of C{room}; an
    empty value tells L{scripts.SYNC_NODE} to delete the field (the node
    has no member there any more).
    """
    return room_field_name(room), (orjson.dumps(list(members)) if members else b"")


def decode_view(flat: Sequence[Any]) -> dict[str, bytes]:
    """
    A L{scripts.CLUSTER_VIEW} answer (node, value, node, value...) as a
    dictionary: every other live node, and its value (C{b""} for none).
    """
    return {_text(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def sum_counts(local: Mapping[str, int], view: Mapping[str, bytes]) -> dict[str, int]:
    """
    The cluster's clients per transport: this node's C{local} counts plus
    every other live node's (C{view}, as L{decode_view} gives their
    C{counts} field), and C{nodes}, how many nodes are live.
    """
    totals = dict(local)
    for raw in view.values():
        counts = _json(raw)
        if not isinstance(counts, dict):
            continue
        for transport, count in counts.items():
            if isinstance(count, int) and not isinstance(count, bool):
                totals[transport] = totals.get(transport, 0) + count
    totals["nodes"] = 1 + len(view)
    return totals


def sum_subscribers(local: int, channel: str, view: Mapping[str, bytes]) -> int:
    """
    This node's subscribers of C{channel} plus those the other live nodes
    last shared; a node whose share cannot be read counts none.
    """
    total = local
    for raw in view.values():
        shared = _json(raw)
        if isinstance(shared, dict) and isinstance(shared.get(channel), int):
            total += shared[channel]
    return total


def merge_members(local: Iterable[str], view: Mapping[str, bytes]) -> list[str]:
    """
    A room's members on every live node, sorted: this node's C{local} ones
    and every other node's (C{view} of the room's field).
    """
    names = list(local)
    for raw in view.values():
        members = _json(raw)
        if isinstance(members, list):
            names.extend(name for name in members if isinstance(name, str))
    return sorted(names)


@dataclass(frozen=True)
class DeadNode:
    """
    A node removed for not beating, and the room members it had, as
    (room, username) pairs: their departure is to be announced.
    """

    node: str
    departures: list[tuple[str, str]] = field(default_factory=list)


def decode_reaped(answer: Sequence[Any] | None) -> list[DeadNode]:
    """
    A L{scripts.REAP} answer: for each removed node, its id then pairs of
    room and members (JSON list).
    """
    dead: list[DeadNode] = []
    for entry in answer or ():
        departures: list[tuple[str, str]] = []
        for i in range(1, len(entry) - 1, 2):
            room = _text(entry[i])
            members = _json(entry[i + 1])
            if isinstance(members, list):
                departures.extend((room, name) for name in members if isinstance(name, str))
        dead.append(DeadNode(_text(entry[0]), departures))
    return dead


def leave_envelope(room: str, username: str) -> dict[str, Any]:
    """
    What a room's members get when one of them left (the same as when a
    client leaves on purpose).
    """
    return {"type": "leave", "data": {"room": room, "username": username}}


# Against Redis ---------------------------------------------------------------

class Presence:
    """
    This node's counts and presence in Redis, and the cluster's as read
    from there.

    Changes are sent once per reactor turn however many clients came and
    went, and only the rooms that changed; everything is sent again after
    a reconnection, or when Redis lost this node's hash.

    @ivar live_nodes: the other nodes live as of the last heartbeat or view.
    """

    def __init__(self, keys: "KeySpace", node_id: str, ttl: float, connections: "RedisConnections",
                 reactor: Any, synced: Callable[[], bool],
                 send_to_room: Callable[[str, dict[str, Any]], int],
                 nodes_seen: Callable[[set[str]], None] = lambda live: None) -> None:
        """
        @param ttl: seconds without a heartbeat after which a node is dead.
        @param synced: whether this node has caught up since it last
            connected (before that, what it would share may be stale).
        @param send_to_room: delivers an envelope to a room on every node
            (to announce a dead node's members' departure).
        @param nodes_seen: told the other live nodes each time Redis was
            asked (so requests waiting for a dead node are answered now).
        """
        self.keys = keys
        self.node_id = node_id
        self.ttl_ms = int(ttl * 1000)
        self.ttl = ttl
        self.connections = connections
        self.reactor = reactor
        self.synced = synced
        self.send_to_room = send_to_room
        self.nodes_seen = nodes_seen
        self.node: ILocalNode | None = None
        self.live_nodes: set[str] = set()
        self._pending: Any = None
        self._dirty_rooms: set[str] = set()
        self._full = True
        self._stopping = False

    def attach(self, node: "ILocalNode") -> None:
        self.node = node

    def _node(self) -> "ILocalNode":
        node = self.node
        assert node is not None, "attach() the node first"
        return node

    def stop(self) -> None:
        """
        Send nothing more (the node is leaving).
        """
        self._stopping = True
        if self._pending is not None and self._pending.active():
            self._pending.cancel()

    # This node's share -------------------------------------------------------

    def counts_changed(self) -> None:
        self._schedule()

    def room_changed(self, room: str) -> None:
        self._dirty_rooms.add(room)
        self._schedule()

    def _schedule(self) -> None:
        if self._pending is None and not self._stopping:
            self._pending = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._pending = None
        if self.connections.commands is not None and self.synced():
            self.connections.in_background(self._sync(), "sharing this node's counts and presence")

    def resend_all(self) -> "defer.Deferred[None]":
        """
        Send every count and room again (after a reconnection).
        """
        self._full = True
        return self._sync()

    @defer.inlineCallbacks
    def _sync(self) -> Generator["defer.Deferred[Any]", Any, None]:
        node = self._node()
        full = self._full
        rooms = node.room_names() if full else list(self._dirty_rooms)
        self._dirty_rooms.clear()
        self._full = False
        fields: list[Any] = []
        for room in rooms:
            fields.extend(room_field(room, node.local_room_members(room)))
        try:
            done = yield self.connections.eval(
                scripts.SYNC_NODE, [self.keys.nodes, self.keys.node],
                [self.node_id, NODE_HASH_TTL_MS, 1 if full else 0, orjson.dumps(node.count_by_transport()),
                 SUBSCRIBERS_FIELD,
                 orjson.dumps({name: node.subscriber_count(name) for name in node.channel_names()}), *fields])
        except Exception:
            # Try again with everything next time.
            self._full = True
            raise
        if not done:
            # Our hash is gone (Redis restarted, or we were taken for dead).
            self._full = True
            yield self._sync()

    def heartbeat(self) -> "defer.Deferred[None]":
        """
        Prove this node alive (sending its share), remove dead nodes, and
        refresh L{live_nodes}. Never fails: a failure is logged.
        """
        d = self._sync()
        d.addCallback(lambda _: self._reap())
        d.addCallback(lambda _: self.refresh_live_nodes())

        def failed(failure: Failure) -> None:
            _log.warn("backplane heartbeat failed: {error}", error=failure.value)

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _reap(self) -> Generator["defer.Deferred[Any]", Any, None]:
        answer = yield self.connections.eval(scripts.REAP, [self.keys.nodes], [self.keys.node_prefix, self.ttl_ms])
        for dead in decode_reaped(answer):
            for room, username in dead.departures:
                self.send_to_room(room, leave_envelope(room, username))
            _log.warn("node {node} stopped refreshing its presence for {ttl}s: removed from the cluster "
                      "({left} room members announced as left)", node=dead.node, ttl=self.ttl,
                      left=len(dead.departures))

    @defer.inlineCallbacks
    def leave(self, timeout: float) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Remove this node from the cluster now, rather than when its
        heartbeat expires; waits at most C{timeout} seconds.
        """
        try:
            yield self.connections.eval(scripts.LEAVE, [self.keys.nodes, self.keys.node],
                                        [self.node_id]).addTimeout(timeout, self.reactor)
        except Exception:
            _log.info("could not remove node {node} from Redis at shutdown; it drops out within {ttl}s",
                      node=self.node_id, ttl=self.ttl)

    # The cluster's -----------------------------------------------------------

    def _view(self, field_name: str) -> "defer.Deferred[dict[str, bytes]]":
        d = self.connections.eval(scripts.CLUSTER_VIEW, [self.keys.nodes],
                                  [self.keys.node_prefix, self.ttl_ms, self.node_id, field_name])
        return d.addCallback(decode_view)

    def refresh_live_nodes(self) -> "defer.Deferred[None]":
        def seen(view: dict[str, bytes]) -> None:
            self.live_nodes = set(view)
            self.nodes_seen(self.live_nodes)

        return self._view(COUNTS_FIELD).addCallback(seen)

    def is_live(self, node_id: str) -> "defer.Deferred[bool]":
        """
        Whether a node's heartbeat is recent (from the last heartbeat's
        view, else asking Redis).
        """
        if node_id in self.live_nodes:
            return defer.succeed(True)
        return self.refresh_live_nodes().addCallback(lambda _: node_id in self.live_nodes)

    def cluster_counts(self) -> "defer.Deferred[dict[str, int]]":
        node = self._node()
        if self.connections.commands is None:
            return defer.succeed({**node.count_by_transport(), "nodes": 1})

        def summed(view: dict[str, bytes]) -> dict[str, int]:
            self.live_nodes = set(view)
            self.nodes_seen(self.live_nodes)
            return sum_counts(node.count_by_transport(), view)

        def failed(failure: Failure) -> dict[str, int]:
            _log.warn("reading the cluster's counts failed ({error}): this node's only", error=failure.value)
            return {**node.count_by_transport(), "nodes": 1}

        return self._view(COUNTS_FIELD).addCallbacks(summed, failed)

    def channel_subscribers(self, channel: str) -> "defer.Deferred[int]":
        node = self._node()
        if self.connections.commands is None:
            return defer.succeed(node.subscriber_count(channel))

        def failed(failure: Failure) -> int:
            _log.warn("reading the cluster's subscribers failed ({error}): this node's only", error=failure.value)
            return node.subscriber_count(channel)

        return self._view(SUBSCRIBERS_FIELD).addCallbacks(
            lambda view: sum_subscribers(node.subscriber_count(channel), channel, view), failed)

    def room_members(self, room: str) -> "defer.Deferred[list[str]]":
        node = self._node()
        if self.connections.commands is None:
            return defer.succeed(node.local_room_members(room))

        def merged(view: dict[str, bytes]) -> list[str]:
            return merge_members(node.local_room_members(room), view)

        def failed(failure: Failure) -> list[str]:
            _log.warn("reading room {room!r} from Redis failed ({error}): this node's members only",
                      room=room, error=failure.value)
            return node.local_room_members(room)

        return self._view(room_field_name(room)).addCallbacks(merged, failed)
