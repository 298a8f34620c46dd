"""
The Redis backplane: several appserver nodes behind a load balancer behave
as one server (docs/scaling.md).

  - A broadcast or channel publication is one Lua script: it takes the next
    cluster position, keeps the message in a capped Stream for recovery and
    PUBLISHes it once on the bus channel. Every node, the origin included,
    delivers it to its own clients when it comes back from the bus, so all
    clients on all nodes see one order.
  - Each node keeps its counts and room members in a hash and its heartbeat
    in a sorted set; another node's numbers count while its heartbeat is
    younger than C{ttl} seconds. A node that stops (even kill -9) drops out
    within that bound, and the first node to notice announces its members'
    departure.
  - A client resuming on another node gets what it missed from this node's
    own histories when they reach back far enough, else from Redis's Streams.
  - Ajax sessions live on the node that opened them (their id names it);
    another node routes their requests there over Redis (L{SessionRouter}).
  - Redis lost: local clients keep being served (messages published meanwhile
    reach this node's clients only, without a position); the connections come
    back with backoff, resubscribe, and the node catches up what it missed,
    re-sends its counts and presence.

The connections themselves are in L{appserver._redis.connection}; the Lua
scripts in L{appserver._redis.scripts}. This module is imported only when
C{--backplane redis://} is used (txredisapi imports the reactor).
"""

from __future__ import annotations

import re
import secrets
import socket
from typing import TYPE_CHECKING, Any, Hashable, Iterable

import orjson
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appserver._redis import scripts
from appserver._core.backplane import BackplaneUnavailable, IBackplane, ILocalNode
from appserver._core.client import new_session_secret
from appserver._core.envelope import Outgoing, encode
from appserver._redis.connection import (BusFactory, CommandFactory, RedisLocation, blocking_init, configure_backoff,
                               parse_redis_url)
from appserver._redis.routing import SessionRouter
from appserver._core.streamlog import GLOBAL_STREAM, is_position

if TYPE_CHECKING:
    from twisted.web.resource import Resource
    from twisted.web.server import Request

    from appserver._core.client import Client
    from appserver._server.settings import Settings

__all__ = ["RedisBackplane", "RedisLocation", "parse_redis_url", "NODE_ID_PATTERN"]

NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")

#: Positions restart this far above what the proposing node has seen when
#: Redis comes back without its data, so that a message in flight at the time
#: cannot share a position with a new one.
POSITION_GAP = 1000
#: How long a node's hash outlives its last heartbeat, so that whoever reaps
#: a dead node can still tell its rooms who left.
NODE_HASH_TTL_MS = 60_000
#: Bus messages held at most while a node catches up after reconnecting.
MAX_HELD = 10_000
#: Seconds a shutdown waits for Redis before going anyway.
STOP_TIMEOUT = 2.0


def _encode_key(key: Hashable | None) -> bytes:
    if key is None:
        return b"null"
    try:
        return orjson.dumps(key)
    except TypeError:
        return orjson.dumps(repr(key))


def _decode_key(raw: bytes) -> Hashable | None:
    if raw == b"null":
        return None
    return _hashable(orjson.loads(raw))


def _hashable(value: Any) -> Hashable:
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)



@implementer(IBackplane)
class RedisBackplane:
    """
    Positions, history, fan-out, counts, presence and Ajax sessions shared by
    every node that names the same Redis (and prefix).
    """

    clustered = True
    log = Logger()

    def __init__(self, location: RedisLocation, node_id: str, reactor: Any,
                 history_size: int = 1000, history_age: float = 300.0,
                 poll_timeout: float = 25.0) -> None:
        if not NODE_ID_PATTERN.match(node_id):
            raise ValueError(f"--node-id {node_id!r}: use 1 to 64 of A-Z a-z 0-9 _ -")
        self.location = location
        self.node_id = node_id
        self.reactor = reactor
        self.history_size = history_size
        self.history_age = history_age
        prefix = location.prefix
        self.prefix = prefix
        self.k_epoch = f"{prefix}:epoch"
        self.k_pos = f"{prefix}:pos"
        self.k_floor = f"{prefix}:floor"
        self.k_streams = f"{prefix}:streams"
        self.k_nodes = f"{prefix}:nodes"
        self.node_prefix = f"{prefix}:node:"
        self.k_node = self.node_prefix + node_id
        # Pub/sub channels are not per database: the database number is part
        # of their names so two clusters on one Redis stay apart.
        channels = f"{prefix}@{location.db}"
        self.c_bus = f"{channels}:bus".encode()
        self.c_ctl = f"{channels}:ctl".encode()
        self.c_self = self.node_channel(node_id)
        self.node: ILocalNode | None = None
        self.router = SessionRouter(self, reactor, poll_timeout)
        self._commands: Any = None
        self._bus: Any = None
        self._subscribed = False
        self._factories: list[Any] = []
        self._heartbeat: LoopingCall | None = None
        self._stopping = False
        # Bus messages wait here while the node catches up after (re)subscribing.
        self._held: list[bytes] | None = []
        self._syncing = False
        self._synced = False
        self._outage_logged = False
        self._presence_call: Any = None
        self._dirty_rooms: set[str] = set()
        self._full_sync_needed = True
        #: Live nodes (other than this one) as of the last heartbeat.
        self.live_nodes: set[str] = set()

    @classmethod
    def from_settings(cls, settings: "Settings", reactor: Any) -> "RedisBackplane":
        location = parse_redis_url(settings.backplane)
        node_id = settings.node_id or _default_node_id()
        return cls(location, node_id, reactor, history_size=settings.history_size,
                   history_age=settings.history_age, poll_timeout=settings.poll_timeout)

    def node_channel(self, node_id: str) -> bytes:
        return f"{self.prefix}@{self.location.db}:to:{node_id}".encode()

    # Life cycle -----------------------------------------------------------

    def attach(self, node: ILocalNode) -> None:
        self.node = node

    def start(self) -> None:
        node = self.node
        assert node is not None
        start = node.stream.position + POSITION_GAP if node.stream.position else 0
        epoch, position, _floor = blocking_init(self.location, node.stream.epoch, start)
        if epoch != node.stream.epoch or position < node.stream.position:
            node.stream.resynchronise(epoch, position)
        self.log.info("node {node} joined the Redis backplane at {location} (epoch {epoch}, position {position})",
                      node=self.node_id, location=str(self.location), epoch=epoch, position=node.stream.position)
        endpoint = HostnameEndpoint(self.reactor, self.location.host, self.location.port, timeout=5)
        commands = CommandFactory(self, self.location)
        bus = BusFactory(self, self.location)
        for factory in (commands, bus):
            configure_backoff(factory)
            factory.startConnecting(endpoint)
            self._factories.append(factory)
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.location.heartbeat, now=False).addErrback(
            lambda failure: self.log.failure("backplane heartbeat stopped", failure))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._presence_call is not None and self._presence_call.active():
            self._presence_call.cancel()
        self.router.stop()
        # Shutdown must not hang on a Redis that is gone: bounded waits.
        if self._commands is not None:
            try:
                yield self._eval(scripts.LEAVE, [self.k_nodes, self.k_node], [self.node_id]).addTimeout(
                    STOP_TIMEOUT, self.reactor)
            except Exception:
                self.log.info("could not remove node {node} from Redis at shutdown; it drops out within {ttl}s",
                              node=self.node_id, ttl=self.location.ttl)
        factories, self._factories = self._factories, []
        for factory in factories:
            try:
                yield factory.disconnect().addTimeout(STOP_TIMEOUT, self.reactor)
            except Exception:
                pass

    # Connection state -----------------------------------------------------

    def _commands_up(self, conn: Any) -> None:
        def loaded(_: Any) -> None:
            if conn.connected:
                self._commands = conn
                self._maybe_resync()

        loads = [conn.execute_command("SCRIPT", "LOAD", script.source) for script in scripts.ALL]
        defer.gatherResults(loads, consumeErrors=True).addCallbacks(
            loaded, lambda failure: self.log.warn("cannot load the backplane's scripts into Redis: {error}",
                                                  error=failure.value))

    def _commands_down(self, conn: Any) -> None:
        if self._commands is conn:
            self._commands = None
        self._connection_lost()

    def _bus_up(self, conn: Any) -> None:
        self._bus = conn
        self._held = []

        def subscribed(_: Any) -> None:
            if self._bus is conn:
                self._subscribed = True
                self._maybe_resync()

        def failed(failure: Failure) -> None:
            self.log.warn("subscribing to the backplane's channels failed: {error}; retrying on reconnect",
                          error=failure.value)
            if conn.transport is not None:
                conn.transport.loseConnection()

        conn.subscribe([self.c_bus, self.c_ctl, self.c_self]).addCallbacks(subscribed, failed)

    def _bus_down(self, conn: Any) -> None:
        if self._bus is conn:
            self._bus = None
            self._subscribed = False
        self._connection_lost()

    def _connection_lost(self) -> None:
        self._synced = False
        if self.node is not None and not self._stopping:
            self.node.events.backplane_error("connection")
        if self._stopping or self._outage_logged:
            return
        self._outage_logged = True
        self.log.warn("lost the Redis backplane at {location}: serving this node's clients only, "
                      "reconnecting with backoff", location=str(self.location))

    def _maybe_resync(self) -> None:
        if self._commands is None or not self._subscribed or self._syncing or self._stopping:
            return
        self._syncing = True
        if self._held is None:
            self._held = []
        self._resync().addBoth(self._resynced)

    def _resynced(self, result: Any) -> None:
        self._syncing = False
        if isinstance(result, Failure):
            self.log.warn("resynchronising with Redis failed: {error}; retrying on the next heartbeat",
                          error=result.value)
            # Keep the bus flowing; the next attempt holds it again.
            self._release_held()
            return
        self._synced = True
        if self._outage_logged:
            self._outage_logged = False
            self.log.info("back on the Redis backplane at {location}: resubscribed, caught up, presence resent",
                          location=str(self.location))

    @defer.inlineCallbacks
    def _resync(self) -> Any:
        """
        After every (re)connection: make sure Redis has the epoch, deliver
        what was published while this node was not listening, then let the
        bus flow again and resend this node's counts and presence.
        """
        node = self.node
        assert node is not None
        start = node.stream.position + POSITION_GAP if node.stream.position else 0
        epoch, position, floor = yield self._eval(
            scripts.INIT, [self.k_epoch, self.k_pos, self.k_floor], [node.stream.epoch, start])
        epoch, position, floor = _text(epoch), int(position), int(floor)
        if epoch != node.stream.epoch or position < node.stream.position:
            self.log.warn("the backplane is at epoch {epoch} position {position}, this node at {ours} {pos}: "
                          "following it", epoch=epoch, position=position, ours=node.stream.epoch,
                          pos=node.stream.position)
            node.stream.resynchronise(epoch, position)
        elif position > node.stream.position:
            yield self._catch_up(node.stream.position, position, floor)
        self._release_held()
        self._full_sync_needed = True
        yield self._sync_presence()
        yield self._refresh_live_nodes()

    @defer.inlineCallbacks
    def _catch_up(self, since: int, upto: int, floor: int) -> Any:
        node = self.node
        assert node is not None
        # Every stream this node delivers or keeps a history of: a history
        # left with a gap would vouch for what it does not have.
        streams = [GLOBAL_STREAM, *(set(node.channel_names()) | set(node.stream.streams())) - {GLOBAL_STREAM}]
        result = yield self._replay_read(since, "+", streams)
        recovered, messages = self._entries(result, streams, since, None)
        for stream, message in messages:
            if message.pos is not None and message.pos > node.stream.position:
                node.receive(stream, message)
        # Everything up to `upto` was in Redis when the catch-up started:
        # read here, or of streams this node neither delivers nor keeps.
        # When something this node missed is gone, its histories cannot
        # vouch for the gap, so recovery across it asks Redis (and says no).
        node.stream.advance_to(upto, complete=recovered and since >= floor)
        self.log.info("caught up {count} messages published while node {node} was not listening",
                      count=len(messages), node=self.node_id)

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for message in held or ():
            self._deliver_bus(message)

    # Redis calls ----------------------------------------------------------

    def _eval(self, script: scripts.Script, keys: list[Any], args: list[Any]) -> "defer.Deferred[Any]":
        conn = self._commands
        if conn is None:
            return defer.fail(BackplaneUnavailable(f"not connected to Redis at {self.location}"))
        try:
            return conn.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except Exception:
            return defer.fail()

    def _fire_and_forget(self, d: "defer.Deferred[Any]", what: str) -> None:
        def failed(failure: Failure) -> None:
            if self.node is not None:
                self.node.events.backplane_error(what)
            self.log.warn("backplane: {what} failed: {error}", what=what, error=failure.value)
        d.addErrback(failed)

    def not_ready(self) -> list[str]:
        """
        Readiness: the reasons this node is not fully part of the cluster
        (it still serves its own clients meanwhile).
        """
        reasons = []
        if self._commands is None:
            reasons.append(f"not connected to the Redis backplane at {self.location}")
        if not self._subscribed:
            reasons.append("not subscribed to the backplane's channels")
        elif not self._synced:
            reasons.append("catching up with the backplane")
        return reasons

    def publish_raw(self, channel: bytes, message: bytes) -> bool:
        """
        PUBLISH on a backplane channel; whether it could be sent.
        """
        conn = self._commands
        if conn is None:
            return False
        try:
            d = conn.execute_command("PUBLISH", channel, message)
        except Exception:
            return False
        self._fire_and_forget(d, "PUBLISH")
        return True

    # Publishing -----------------------------------------------------------

    def stream_key(self, stream: str) -> str:
        return f"{self.prefix}:s:{stream}" if stream else f"{self.prefix}:global"

    def publish(self, stream: str, envelope: dict[str, Any], key: Hashable | None) -> "defer.Deferred[Outgoing]":
        node = self.node
        assert node is not None
        payload = encode(envelope)
        if self._commands is None:
            return defer.succeed(self._deliver_locally(stream, payload, key))
        raw_key = _encode_key(key)
        history_size = self.history_size if self.history_age > 0 else 0
        created = node.stream.clock()
        sent_at = self.reactor.seconds()
        start = node.stream.position + POSITION_GAP if node.stream.position else 0
        d = self._eval(scripts.PUBLISH,
                       [self.k_epoch, self.k_pos, self.k_floor, self.k_streams, self.stream_key(stream)],
                       [node.stream.epoch, start, stream, raw_key, payload, int(created * 1000), history_size,
                        max(1, int(self.history_age * 1000)), self.c_bus])

        def published(reply: list[Any]) -> Outgoing:
            node.events.backplane_latency("publish", self.reactor.seconds() - sent_at)
            pos = int(reply[1])
            return Outgoing(payload[:-1] + b',"pos":%d}' % pos, pos, key, created)

        def failed(failure: Failure) -> Outgoing:
            node.events.backplane_error("publish")
            self.log.warn("publishing on {stream!r} through Redis failed ({error}): delivered on this node only",
                          stream=stream, error=failure.value)
            return self._deliver_locally(stream, payload, key)

        return d.addCallbacks(published, failed)

    def _deliver_locally(self, stream: str, payload: bytes, key: Hashable | None) -> Outgoing:
        node = self.node
        assert node is not None
        message = Outgoing(payload, None, key, node.stream.clock())
        node.receive(stream, message)
        return message

    # The bus --------------------------------------------------------------

    def _bus_message(self, channel: bytes, message: bytes) -> None:
        try:
            if channel == self.c_bus:
                held = self._held
                if held is None:
                    self._deliver_bus(message)
                elif len(held) < MAX_HELD:
                    held.append(message)
                else:
                    # A catch-up that takes this long is not worth the memory:
                    # deliver, and let the catch-up skip what was delivered.
                    self._release_held()
                    self._deliver_bus(message)
            elif channel == self.c_ctl:
                self._control(message)
            elif channel == self.c_self:
                self.router.received(message)
        except Exception:
            self.log.failure("backplane message on {channel} could not be handled", channel=channel)

    def _deliver_bus(self, raw: bytes) -> None:
        node = self.node
        assert node is not None
        epoch, pos_text, stream, key, payload = raw.split(b"\n", 4)
        pos = int(pos_text)
        if epoch.decode() != node.stream.epoch:
            self.log.warn("the backplane's epoch changed to {epoch}: positions start over", epoch=epoch.decode())
            node.stream.resynchronise(epoch.decode(), pos - 1)
        elif pos <= node.stream.position:
            # Already delivered by a catch-up.
            return
        node.receive(stream.decode(), Outgoing(payload, pos, _decode_key(key), node.stream.clock()))

    def _control(self, raw: bytes) -> None:
        node = self.node
        assert node is not None
        op, target, payload = raw.split(b"\n", 2)
        if op == b"room":
            node.deliver_to_room(target.decode(), Outgoing(payload))
        elif op == b"send":
            node.deliver_to_client(target.decode(), Outgoing(payload))

    # Rooms and direct messages -------------------------------------------

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        node = self.node
        assert node is not None
        payload = encode(envelope)
        if not self.publish_raw(self.c_ctl, b"room\n%s\n%s" % (room.encode(), payload)):
            return node.deliver_to_room(room, Outgoing(payload))
        return node.local_room_size(room)

    def send_to_remote(self, client_id: str, envelope: dict[str, Any]) -> bool:
        if "\n" in client_id:
            return False
        return self.publish_raw(self.c_ctl, b"send\n%s\n%s" % (client_id.encode(), encode(envelope)))

    # Counts and presence --------------------------------------------------

    def counts_changed(self) -> None:
        self._schedule_presence()

    def presence_changed(self, room: str) -> None:
        self._dirty_rooms.add(room)
        self._schedule_presence()

    def _schedule_presence(self) -> None:
        if self._presence_call is None and not self._stopping:
            # Once per reactor turn, however many clients came and went.
            self._presence_call = self.reactor.callLater(0, self._flush_presence)

    def _flush_presence(self) -> None:
        self._presence_call = None
        if self._commands is not None and self._synced:
            self._fire_and_forget(self._sync_presence(), "sharing this node's counts and presence")

    def _room_field(self, room: str) -> tuple[str, bytes]:
        node = self.node
        assert node is not None
        members = node.local_room_members(room)
        return "r:" + room, (orjson.dumps(members) if members else b"")

    @defer.inlineCallbacks
    def _sync_presence(self) -> Any:
        node = self.node
        assert node is not None
        full = self._full_sync_needed
        rooms = node.room_names() if full else list(self._dirty_rooms)
        self._dirty_rooms.clear()
        self._full_sync_needed = False
        fields: list[Any] = []
        for room in rooms:
            fields.extend(self._room_field(room))
        try:
            done = yield self._eval(scripts.SYNC_NODE, [self.k_nodes, self.k_node],
                                    [self.node_id, NODE_HASH_TTL_MS, 1 if full else 0,
                                     orjson.dumps(node.count_by_transport()), *fields])
        except Exception:
            # Try again with everything next time.
            self._full_sync_needed = True
            raise
        if not done:
            # Our hash is gone (Redis restarted, or we were taken for dead).
            self._full_sync_needed = True
            yield self._sync_presence()

    def _beat(self) -> Any:
        if self._commands is None:
            return None
        if not self._synced:
            self._maybe_resync()
            return None
        d = self._sync_presence()
        d.addCallback(lambda _: self._reap())
        d.addCallback(lambda _: self._refresh_live_nodes())
        d.addErrback(lambda failure: self.log.warn("backplane heartbeat failed: {error}", error=failure.value))
        return d

    @defer.inlineCallbacks
    def _reap(self) -> Any:
        dead = yield self._eval(scripts.REAP, [self.k_nodes], [self.node_prefix, int(self.location.ttl * 1000)])
        for entry in dead or ():
            node = _text(entry[0])
            left = 0
            for i in range(1, len(entry) - 1, 2):
                room = _text(entry[i])
                for username in orjson.loads(entry[i + 1]):
                    left += 1
                    self.send_to_room(room, {"type": "leave", "data": {"room": room, "username": username}})
            self.log.warn("node {node} stopped refreshing its presence for {ttl}s: removed from the cluster "
                          "({left} room members announced as left)", node=node, ttl=self.location.ttl, left=left)

    @defer.inlineCallbacks
    def _refresh_live_nodes(self) -> Any:
        view = yield self._view("counts")
        self.live_nodes = set(view)

    def _view(self, field: str) -> "defer.Deferred[dict[str, bytes]]":
        d = self._eval(scripts.CLUSTER_VIEW, [self.k_nodes],
                       [self.node_prefix, int(self.location.ttl * 1000), self.node_id, field])
        return d.addCallback(lambda flat: {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)})

    def cluster_counts(self) -> "defer.Deferred[dict[str, int]]":
        node = self.node
        assert node is not None
        if self._commands is None:
            return defer.succeed({**node.count_by_transport(), "nodes": 1})

        def summed(view: dict[str, bytes]) -> dict[str, int]:
            self.live_nodes = set(view)
            totals = dict(node.count_by_transport())
            for raw in view.values():
                if raw:
                    for transport, count in orjson.loads(raw).items():
                        totals[transport] = totals.get(transport, 0) + int(count)
            totals["nodes"] = 1 + len(view)
            return totals

        def failed(failure: Failure) -> dict[str, int]:
            self.log.warn("reading the cluster's counts failed ({error}): this node's only", error=failure.value)
            return {**node.count_by_transport(), "nodes": 1}

        return self._view("counts").addCallbacks(summed, failed)

    def room_members(self, room: str) -> "defer.Deferred[list[str]]":
        node = self.node
        assert node is not None
        if self._commands is None:
            return defer.succeed(node.local_room_members(room))

        def merged(view: dict[str, bytes]) -> list[str]:
            names = node.local_room_members(room)
            for raw in view.values():
                if raw:
                    names.extend(orjson.loads(raw))
            return sorted(names)

        def failed(failure: Failure) -> list[str]:
            self.log.warn("reading room {room!r} from Redis failed ({error}): this node's members only",
                          room=room, error=failure.value)
            return node.local_room_members(room)

        return self._view("r:" + room).addCallbacks(merged, failed)

    def room_size(self, room: str) -> "defer.Deferred[int]":
        return self.room_members(room).addCallback(len)

    # Recovery -------------------------------------------------------------

    def replay(self, client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "defer.Deferred[bool]":
        node = self.node
        assert node is not None
        channels = list(channels)
        if epoch != node.stream.epoch or not is_position(since) or self._commands is None:
            return defer.succeed(node.replay_local(client, epoch, since, channels, connected_at))
        if since <= node.stream.position:
            complete, missed = node.stream.missed_since(since, channels, connected_at)
            if complete:
                policy = node.limits.default_policy
                for message in missed:
                    client.deliver(message, policy)
                node.events.recovery(client, True)
                return defer.succeed(True)
        # This node's histories do not reach back to `since`: read Redis's.
        # Meanwhile the client gets no live message of these channels (it
        # would arrive before older ones); it rejoins them when the replay
        # is delivered.
        detached = node.detach_from_channels(client, channels)
        streams = [GLOBAL_STREAM, *channels]
        self.log.info("client {client_id} resumes from position {since}, before this node's history: "
                      "reading Redis's", client_id=client.client_id, since=since)
        d = self._replay_read(since, str(connected_at), streams)
        d.addCallback(self._replayed, client, since, streams, connected_at)
        d.addErrback(self._replay_failed, client, epoch, since, channels, connected_at)
        d.addBoth(self._reattach, client, detached)
        return d

    def _replay_read(self, since: int, first_upper: str, streams: list[str]) -> "defer.Deferred[Any]":
        keys = [self.k_epoch, self.k_pos, self.k_floor, self.k_streams, *map(self.stream_key, streams)]
        return self._eval(scripts.REPLAY, keys, [since, first_upper, *streams])

    def _entries(self, result: list[Any], streams: list[str], since: int,
                 upto: int | None) -> tuple[bool, list[tuple[str, Outgoing]]]:
        """
        Decode a REPLAY answer: whether it is complete after C{since}, and its
        unexpired messages (channel ones up to C{upto}) in position order.
        """
        node = self.node
        assert node is not None
        recovered = since >= int(result[2])
        horizon_ms = (node.stream.clock() - self.history_age) * 1000
        found: list[tuple[str, Outgoing]] = []
        for stream, (last, gone, exists, entries) in zip(streams, result[3:]):
            if int(last) <= since:
                continue
            if since < int(gone) or not exists:
                recovered = False
            for entry_id, fields in entries:
                pos = int(entry_id.split(b"-", 1)[0])
                if upto is not None and stream != GLOBAL_STREAM and pos > upto:
                    continue
                values = dict(zip(fields[::2], fields[1::2]))
                created_ms = int(values.get(b"t", 0))
                if created_ms < horizon_ms:
                    recovered = False
                    continue
                found.append((stream, Outgoing(values[b"p"], pos, _decode_key(values.get(b"k", b"null")),
                                               created_ms / 1000)))
        found.sort(key=lambda item: item[1].pos or 0)
        return recovered, found

    def _replayed(self, result: list[Any], client: "Client", since: int, streams: list[str],
                  connected_at: int) -> bool:
        node = self.node
        assert node is not None
        epoch, cluster_position = _text(result[0]), int(result[1])
        if epoch != node.stream.epoch or since > cluster_position:
            node.events.recovery(client, False)
            return False
        recovered, found = self._entries(result, streams, since, node.stream.position)
        by_position = {message.pos: message for _, message in found}
        _, local = node.stream.missed_since(since, streams[1:], connected_at)
        for message in local:
            by_position[message.pos] = message
        policy = node.limits.default_policy
        if not client.closed:
            for pos in sorted(by_position):
                client.deliver(by_position[pos], policy)
        node.events.recovery(client, recovered)
        return recovered

    def _replay_failed(self, failure: Failure, client: "Client", epoch: Any, since: int,
                       channels: list[str], connected_at: int) -> bool:
        self.log.warn("reading missed messages from Redis failed ({error}): replaying this node's history only",
                      error=failure.value)
        node = self.node
        assert node is not None
        node.replay_local(client, epoch, since, channels, connected_at)
        return False

    def _reattach(self, result: Any, client: "Client", detached: list[str]) -> Any:
        node = self.node
        assert node is not None
        node.reattach_to_channels(client, detached)
        return result

    # Ajax sessions --------------------------------------------------------

    def new_session_secret(self) -> str:
        return f"{self.node_id}.{new_session_secret()}"

    def attach_ajax(self, root: "Resource") -> None:
        self.router.root = root

    def route_session_request(self, resource: Any, request: "Request", session_id: str) -> "bytes | int | None":
        home, dot, _ = session_id.partition(".")
        if not dot or home == self.node_id or not NODE_ID_PATTERN.match(home) or self._commands is None:
            return None
        return self.router.forward(home, resource, request)

    def is_live(self, node_id: str) -> "defer.Deferred[bool]":
        """
        Whether a node's heartbeat is recent (from the last heartbeat's
        view, else asking Redis).
        """
        if node_id in self.live_nodes:
            return defer.succeed(True)
        return self._refresh_live_nodes().addCallback(lambda _: node_id in self.live_nodes)


def _default_node_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"

