"""
The Redis backplane: several appserver nodes behind a load balancer behave
as one server (docs/scaling.md).

  - A broadcast or channel publication is one Lua script: it takes the next
    cluster position, keeps the message in a capped Stream for recovery and
    PUBLISHes it once on the bus channel. Every node, the origin included,
    delivers it to its own clients when it comes back from the bus, so all
    clients on all nodes see one order.
  - Each node shares its counts and room members, and a heartbeat
    (L{appserver._redis.presence}).
  - A client resuming on another node gets what it missed from this node's
    own histories when they reach back far enough, else from Redis's Streams
    (L{appserver._redis.replay}).
  - Ajax sessions live on the node that opened them (their id names it);
    another node routes their requests there over Redis
    (L{appserver._redis.routing}).
  - Redis lost: local clients keep being served (messages published meanwhile
    reach this node's clients at once, without a position, and wait in a
    bounded outbox, L{appserver._redis.outbox}); the connections
    (L{appserver._redis.connection}) come back with backoff, resubscribe,
    and the node catches up what it missed, publishes its outbox in order
    (its own clients do not get those messages twice), tells clients that
    may have missed messages (a live C{gap}), and re-sends its counts and
    presence.

This module composes those parts into L{RedisBackplane}, the
L{IBackplane}, and owns what ties them together: the order of a
reconnection (catch up, then let the bus flow, then flush the outbox, then
share presence) and the bus messages held meanwhile. It is imported only when
C{--backplane redis://} is used (txredisapi imports the reactor).

Tests: tests/test_redis_cluster.py, tests/test_redis_cluster_browser.py,
tests/test_redis_outage.py (real Redis); tests/test_backplane_memory.py (the interface); the parts in
tests/test_redis_codec.py and tests/test_redis_decisions.py.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any, Generator, Hashable, Iterable

import orjson
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appserver._core.backplane import IBackplane, ILocalNode
from appserver._core.envelope import Outgoing, encode
from appserver._core.streamlog import GLOBAL_STREAM
from appserver._redis import scripts
from appserver._redis.codec import (GAP, ROOM, SEND, MalformedMessage, Publication, decode_control,
                                    decode_publication, encode_control, encode_key, with_position)
from appserver._redis.connection import ConnectionCallbacks, RedisConnections
from appserver._redis.keys import NODE_ID_PATTERN, KeySpace, check_node_id, default_node_id
from appserver._redis.location import RedisLocation, parse_redis_url
from appserver._redis.outbox import Outbox, Pending
from appserver._redis.presence import Presence
from appserver._redis.replay import FOLLOW, Recovery, after_reconnect
from appserver._redis.routing import SessionRouter, home_session_secret, session_home
from appserver._redis.startup import blocking_init

if TYPE_CHECKING:
    from twisted.web.resource import Resource
    from twisted.web.server import Request

    from appserver._core.client import Client
    from appserver._server.settings import Settings

__all__ = ["RedisBackplane", "RedisLocation", "parse_redis_url", "NODE_ID_PATTERN", "MAX_HELD", "STOP_TIMEOUT"]

_log = Logger(namespace="appserver.redis")

#: Bus messages held at most while a node catches up after reconnecting.
MAX_HELD = 10_000
#: Seconds a shutdown waits for Redis before going anyway.
STOP_TIMEOUT = 2.0


@implementer(IBackplane)
class RedisBackplane:
    """
    Positions, history, fan-out, counts, presence and Ajax sessions shared by
    every node that names the same Redis (and prefix).

    @ivar connections: the connections to Redis (L{RedisConnections}).
    @ivar presence: counts, rooms and heartbeats (L{Presence}).
    @ivar recovery: catch-up and replay from Redis (L{Recovery}).
    @ivar router: Ajax requests carried to their session's node
        (L{SessionRouter}).
    """

    clustered = True

    def __init__(self, location: RedisLocation, node_id: str, reactor: Any,
                 history_size: int = 1000, history_age: float = 300.0,
                 poll_timeout: float = 25.0, history_bytes: int = 64 * 1024 * 1024) -> None:
        """
        @raise ValueError: C{node_id} cannot name a node (the message is for
            the operator).
        """
        self.location = location
        self.node_id = check_node_id(node_id)
        self.reactor = reactor
        self.history_size = history_size
        self.history_age = history_age
        self.keys = KeySpace(location.prefix, location.db, node_id)
        self.node: ILocalNode | None = None
        self.connections = RedisConnections(
            location, [self.keys.bus, self.keys.control, self.keys.inbox],
            ConnectionCallbacks(ready=self._maybe_resync, lost=self._connection_lost,
                                bus_connected=self._bus_connected, bus_message=self._bus_message,
                                error=self._background_error),
            reactor)
        self.presence = Presence(self.keys, node_id, location.ttl, self.connections, reactor,
                                 synced=lambda: self._synced, send_to_room=self.send_to_room,
                                 nodes_seen=lambda live: self.router.homes_live(live))
        self.recovery = Recovery(self.keys, node_id, self.connections, history_age)
        self.router = SessionRouter(node_id, self._send_to_node, self.presence.is_live, reactor, poll_timeout)
        self._heartbeat: LoopingCall | None = None
        self._stopping = False
        # Bus messages wait here while the node catches up after (re)subscribing.
        self._held: list[Publication] | None = []
        self._syncing = False
        self._synced = False
        self._outage_logged = False
        # What Redis could not position yet: as much as a history holds.
        self.outbox = Outbox(max(1, history_size), history_bytes or 64 * 1024 * 1024)
        self._outbox_keys = f"\x00outbox:{node_id}:{secrets.token_hex(8)}:"
        self._outbox_count = 0
        # Positions of this node's own outbox entries, published late, to
        # whom they were delivered then (L{ILocalNode.receive_echo}).
        self._echoes: dict[int, frozenset[str]] = {}
        self._seen: frozenset[str] | None = None

    @classmethod
    def from_settings(cls, settings: "Settings", reactor: Any) -> "RedisBackplane":
        """
        The backplane C{--backplane redis://...} and C{--node-id} describe.

        @raise ValueError: either is wrong (the message says how).
        """
        location = parse_redis_url(settings.backplane)
        node_id = settings.node_id or default_node_id()
        return cls(location, node_id, reactor, history_size=settings.history_size,
                   history_age=settings.history_age, poll_timeout=settings.poll_timeout,
                   history_bytes=settings.history_bytes)

    # Life cycle -----------------------------------------------------------

    def attach(self, node: ILocalNode) -> None:
        self.node = node
        self.presence.attach(node)
        self.recovery.attach(node)

    def _node(self) -> ILocalNode:
        node = self.node
        assert node is not None, "attach() the node first"
        return node

    def start(self) -> None:
        node = self._node()
        epoch, position, _floor = blocking_init(self.location, self.keys, node.stream.epoch,
                                                scripts.proposed_start(node.stream.position))
        if after_reconnect(node.stream.epoch, node.stream.position, epoch, position) == FOLLOW:
            node.stream.resynchronise(epoch, position)
        _log.info("node {node} joined the Redis backplane at {location} (epoch {epoch}, position {position})",
                  node=self.node_id, location=str(self.location), epoch=epoch, position=node.stream.position)
        self.connections.start()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(self.location.heartbeat, now=False).addErrback(
            lambda failure: _log.failure("backplane heartbeat stopped", failure))

    @defer.inlineCallbacks
    def stop(self) -> Generator["defer.Deferred[Any]", Any, None]:
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.presence.stop()
        self.router.stop()
        # Shutdown must not hang on a Redis that is gone: bounded waits.
        if self.connections.commands is not None:
            yield self.presence.leave(STOP_TIMEOUT)
        yield self.connections.disconnect(STOP_TIMEOUT)
        # Publishers still waiting behind the outbox are answered as during
        # an outage: this node's clients have it, nobody else will.
        while self.outbox:
            entry = self.outbox.pop_first()
            if entry.waiting is not None:
                message = Outgoing(entry.payload, None, entry.key, entry.created)
                self._node().receive(entry.stream, message)
                entry.waiting.callback(message)

    def not_ready(self) -> list[str]:
        """
        Readiness: the reasons this node is not fully part of the cluster
        (it still serves its own clients meanwhile).
        """
        reasons: list[str] = []
        refusals = self.connections.refusals
        if refusals:
            reasons.extend(f"Redis at {self.location} refused {what}: {message}"
                           for what, message in sorted(refusals.items()))
        elif self.connections.commands is None:
            reasons.append(f"not connected to the Redis backplane at {self.location}")
        if not self.connections.subscribed:
            reasons.append("not subscribed to the backplane's channels")
        elif not self._synced:
            reasons.append("catching up with the backplane")
        return reasons

    # Connection state -----------------------------------------------------

    def _connection_lost(self) -> None:
        self._synced = False
        if self.node is not None and not self._stopping:
            self.node.events.backplane_error("connection")
        if self._stopping or self._outage_logged:
            return
        self._outage_logged = True
        _log.warn("lost the Redis backplane at {location}: serving this node's clients only, "
                  "reconnecting with backoff", location=str(self.location))

    def _background_error(self, what: str) -> None:
        if self.node is not None:
            self.node.events.backplane_error(what)

    def _maybe_resync(self) -> None:
        if not self.connections.ready or self._syncing or self._stopping:
            return
        self._syncing = True
        if self._held is None:
            self._held = []
        self._resync().addBoth(self._resynced)

    def _resynced(self, result: object) -> None:
        self._syncing = False
        if isinstance(result, Failure):
            _log.warn("resynchronising with Redis failed: {error}; retrying on the next heartbeat",
                      error=result.value)
            # Keep the bus flowing; the next attempt holds it again.
            self._release_held()
            return
        self._synced = True
        if self._outage_logged:
            self._outage_logged = False
            _log.info("back on the Redis backplane at {location}: resubscribed, caught up, presence resent",
                      location=str(self.location))

    @defer.inlineCallbacks
    def _resync(self) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        After every (re)connection: catch up with what was published while
        this node was not listening, then let the bus flow again (what it
        held is newer), publish what this node could not (its outbox), tell
        clients that may have missed messages, and resend this node's
        counts and presence.
        """
        missed = yield self.recovery.catch_up()
        self._release_held()
        if missed:
            self._notify_gap(GLOBAL_STREAM, self._node().stream.position)
        yield self._flush_outbox()
        yield self.presence.resend_all()
        yield self.presence.refresh_live_nodes()

    def _beat(self) -> "defer.Deferred[None] | None":
        if self.connections.commands is None:
            return None
        if not self._synced:
            self._maybe_resync()
            return None
        return self.presence.heartbeat()

    # The bus --------------------------------------------------------------

    def _bus_connected(self) -> None:
        # What arrives from now on is newer than what the coming catch-up
        # reads (anything held before, it reads again).
        self._held = []

    def _release_held(self) -> None:
        held, self._held = self._held, None
        for publication in held or ():
            self._deliver_held(publication)

    def _deliver_held(self, publication: Publication) -> None:
        try:
            self._deliver_bus(publication)
        except Exception:
            _log.failure("backplane message at position {pos} could not be delivered", pos=publication.pos)

    def _bus_message(self, channel: bytes, message: bytes) -> None:
        keys = self.keys
        try:
            if channel == keys.bus:
                publication = decode_publication(message)
                held = self._held
                if held is None:
                    self._deliver_bus(publication)
                elif len(held) < MAX_HELD:
                    held.append(publication)
                else:
                    # A catch-up that takes this long is not worth the memory:
                    # deliver, and let the catch-up skip what was delivered.
                    self._release_held()
                    self._deliver_bus(publication)
            elif channel == keys.control:
                self._control(message)
            elif channel == keys.inbox:
                self.router.received(message)
        except MalformedMessage as error:
            _log.warn("ignored a backplane message on {channel}: {error}", channel=channel, error=error)
        except Exception:
            _log.failure("backplane message on {channel} could not be handled", channel=channel)

    def _deliver_bus(self, publication: Publication) -> None:
        node = self._node()
        if publication.epoch != node.stream.epoch:
            _log.warn("the backplane's epoch changed to {epoch}: positions start over", epoch=publication.epoch)
            node.stream.resynchronise(publication.epoch, publication.pos - 1)
            self._notify_gap(GLOBAL_STREAM, publication.pos - 1)
        elif publication.pos <= node.stream.position:
            # Already delivered by a catch-up.
            return
        message = Outgoing(publication.payload, publication.pos, publication.key, node.stream.clock())
        seen = self._echoes.pop(publication.pos, None) if self._echoes else None
        if seen is None:
            node.receive(publication.stream, message)
        else:
            node.receive_echo(publication.stream, message, seen)

    def _control(self, raw: bytes) -> None:
        node = self._node()
        control = decode_control(raw)
        if control.op == ROOM:
            if control.origin != self.node_id:     # this node's members had it at once
                node.deliver_to_room(control.target, Outgoing(control.payload))
        elif control.op == SEND:
            node.deliver_to_client(control.target, Outgoing(control.payload))
        elif control.op == GAP:
            self._gap_announced(control.target, control.origin, control.payload)

    # Gaps -----------------------------------------------------------------

    def _gap_announced(self, stream: str, origin: str, raw: bytes) -> None:
        """
        A node could not keep some of what it published during an outage
        (L{scripts.GAP}): this node's histories no longer vouch for the
        past, and its clients of C{stream} are told, except on the
        publishing node, whose clients had those messages.
        """
        try:
            position = int(orjson.loads(raw)["position"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise MalformedMessage(f"gap notice: expected {{\"position\": P}}, got {raw[:60]!r}") from None
        node = self._node()
        node.stream.advance_to(node.stream.position, complete=False)
        if origin != self.node_id:
            self._notify_gap(stream, position)

    def _notify_gap(self, stream: str, position: int) -> None:
        """
        Tell this node's clients of C{stream} (everyone for the global
        stream) at once that they may have missed messages up to
        C{position}: the live form of C{recovered: false} (docs/protocol.md).
        """
        node = self._node()
        data: dict[str, Any] = {"recovered": False, "epoch": node.stream.epoch, "position": position}
        if stream != GLOBAL_STREAM:
            data["channel"] = stream
        _log.warn("telling this node's clients of {stream!r} they may have missed messages up to {position}",
                  stream=stream or "(every client)", position=position)
        node.fan_out(stream, Outgoing.of({"type": "gap", "data": data}))

    # The outbox -----------------------------------------------------------

    def _seen_now(self) -> frozenset[str]:
        # One snapshot shared by consecutive entries while nobody comes or goes.
        seen = self._seen
        if seen is None:
            seen = self._seen = self._node().client_ids()
        return seen

    def _outbox_key(self, idempotency_key: str | None) -> str:
        if idempotency_key is not None:
            return idempotency_key
        self._outbox_count += 1
        return f"{self._outbox_keys}{self._outbox_count}"

    @defer.inlineCallbacks
    def _flush_outbox(self) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Publish the outbox, oldest first, one at a time (so one stream keeps
        one order); then announce the streams it could not keep. A failure
        leaves the rest for the next resynchronisation.
        """
        outbox = self.outbox
        if not outbox and not outbox.overflowed:
            return
        count = len(outbox)
        while outbox and self.connections.commands is not None and not self._stopping:
            entry = outbox.first()
            assert entry is not None
            # Bus messages wait until this entry's position is known: its
            # echo must not reach clients that had it already.
            if self._held is None:
                self._held = []
            try:
                reply = yield self._eval_publish(entry.stream, entry.payload, entry.key, entry.idempotency_key,
                                                 entry.created)
            except Exception:
                self._release_held()
                raise
            outbox.pop_first()
            pos = int(reply[1])
            if entry.seen is not None:
                if pos > self._node().stream.position:
                    self._echoes[pos] = entry.seen
            elif entry.waiting is not None:
                entry.waiting.callback(Outgoing(with_position(entry.payload, pos), pos, entry.key, entry.created))
            self._release_held()
        if outbox:
            return
        if count:
            _log.info("published {count} messages kept while Redis was unreachable", count=count)
        streams = sorted(outbox.clear_overflow())
        if streams:
            keys = self.keys
            yield self.connections.eval(scripts.GAP, [keys.positions[1], keys.streams],
                                        [keys.control, f"{GAP}@{self.node_id}", *streams])

    def _eval_publish(self, stream: str, payload: bytes, key: Hashable | None, idempotency_key: str | None,
                      created: float) -> "defer.Deferred[Any]":
        node = self._node()
        history_size = self.history_size if self.history_age > 0 else 0
        keys = self.keys
        script_keys = [*keys.positions, keys.streams, keys.stream(stream)]
        if idempotency_key is not None:
            script_keys.append(keys.idempotency(stream, idempotency_key))
        return self.connections.eval(
            scripts.PUBLISH, script_keys,
            [node.stream.epoch, scripts.proposed_start(node.stream.position), stream, encode_key(key), payload,
             int(created * 1000), history_size, max(1, int(self.history_age * 1000)), keys.bus])

    def _send_to_node(self, node_id: str, message: bytes) -> bool:
        return self.connections.publish(self.keys.node_channel(node_id), message)

    # Publishing -----------------------------------------------------------

    def publish(self, stream: str, envelope: dict[str, Any], key: Hashable | None,
                idempotency_key: str | None = None) -> "defer.Deferred[Outgoing]":
        """
        Positioned and published by one script (L{scripts.PUBLISH}); with an
        idempotency key, the script answers a retry (from any node, within
        the history age) with the first position and publishes nothing.
        When Redis cannot be reached, the message reaches this node's
        clients at once, without a position, and waits in the outbox to be
        published when Redis is back; while the outbox is not empty, a new
        publication goes behind it (its Deferred fires once it is out).
        """
        node = self._node()
        payload = encode(envelope)
        if self.connections.commands is None:
            return defer.succeed(self._publish_offline(stream, payload, key, idempotency_key))
        created = node.stream.clock()
        if self.outbox:
            waiting: defer.Deferred[Outgoing] = defer.Deferred()
            self.outbox.offer(Pending(stream, payload, key, self._outbox_key(idempotency_key), created,
                                      waiting=waiting))
            return waiting
        sent_at = self.reactor.seconds()
        d = self._eval_publish(stream, payload, key, idempotency_key, created)

        def published(reply: list[Any]) -> Outgoing:
            node.events.backplane_latency("publish", self.reactor.seconds() - sent_at)
            pos = int(reply[1])
            return Outgoing(with_position(payload, pos), pos, key, created)

        def failed(failure: Failure) -> Outgoing:
            node.events.backplane_error("publish")
            _log.warn("publishing on {stream!r} through Redis failed ({error}): delivered on this node, "
                      "published when Redis is back", stream=stream, error=failure.value)
            return self._publish_offline(stream, payload, key, idempotency_key)

        return d.addCallbacks(published, failed)

    def _publish_offline(self, stream: str, payload: bytes, key: Hashable | None,
                         idempotency_key: str | None) -> Outgoing:
        """
        Redis cannot position the message now: this node's clients get it at
        once (without a position), the outbox keeps it for the others.
        """
        node = self._node()
        message = Outgoing(payload, None, key, node.stream.clock())
        seen = self._seen_now()
        node.receive(stream, message)
        full = bool(self.outbox.overflowed)
        if not self.outbox.offer(Pending(stream, payload, key, self._outbox_key(idempotency_key), message.created,
                                         seen=seen)) and not full:
            _log.warn("the outbox is full ({count} messages): what this node publishes now reaches its own "
                      "clients only, and the others will be told they missed messages",
                      count=len(self.outbox))
        return message

    # Rooms and direct messages -------------------------------------------

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        """
        This node's members get it at once (so a member's own C{join}
        comes before the reply to its C{join}), the other nodes' through
        Redis; returns how many members this node reached.
        """
        node = self._node()
        payload = encode(envelope)
        count = node.deliver_to_room(room, Outgoing(payload))
        try:
            message = encode_control(ROOM, room, payload, origin=self.node_id)
        except ValueError:
            return count        # not a room name other nodes could read: this node's members only
        self.connections.publish(self.keys.control, message)
        return count

    def send_to_remote(self, client_id: str, envelope: dict[str, Any]) -> bool:
        try:
            message = encode_control(SEND, client_id, encode(envelope))
        except ValueError:
            return False
        return self.connections.publish(self.keys.control, message)

    # Counts and presence --------------------------------------------------

    def counts_changed(self) -> None:
        self._seen = None
        self.presence.counts_changed()

    def presence_changed(self, room: str) -> None:
        self.presence.room_changed(room)

    def cluster_counts(self) -> "defer.Deferred[dict[str, int]]":
        return self.presence.cluster_counts()

    def room_members(self, room: str) -> "defer.Deferred[list[str]]":
        return self.presence.room_members(room)

    def channel_subscribers(self, channel: str) -> "defer.Deferred[int]":
        return self.presence.channel_subscribers(channel)

    def room_size(self, room: str) -> "defer.Deferred[int]":
        return self.room_members(room).addCallback(len)

    # Recovery -------------------------------------------------------------

    def replay(self, client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "defer.Deferred[bool]":
        return self.recovery.replay(client, epoch, since, channels, connected_at)

    # Ajax sessions --------------------------------------------------------

    def new_session_secret(self) -> str:
        return home_session_secret(self.node_id)

    def attach_ajax(self, root: "Resource") -> None:
        self.router.root = root

    def route_session_request(self, resource: "Resource", request: "Request",
                              session_id: str) -> "bytes | int | None":
        home = session_home(session_id)
        if home is None or home == self.node_id or self.connections.commands is None:
            return None
        return self.router.forward(home, resource, request, session_id)
