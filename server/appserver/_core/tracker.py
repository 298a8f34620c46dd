"""
The one shared state of a server: who is connected, on which transport, in
which channels and rooms, and what was recently sent.

Every site (WebSocket, Ajax, the application's own routes) holds the same
L{ClientTracker}, so a count, a channel or a message is the same whichever
way a client came in. It is pure logic: no sockets, no reactor, a clock
passed in; a test can drive it with plain objects.
"""

from __future__ import annotations

import fnmatch
import secrets
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable, Iterable

from appserver._core.bounds import TrackerLimits
from appserver._core.client import Client
from appserver._core.events import TrackerEvents
from appserver._core.names import validate_channel_name, validate_room_name, validate_username
from appserver._core.envelope import Outgoing, ProtocolError
from appserver._core.history import StreamHistory
from appserver._core.outbound import POLICIES

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from appserver._core.backplane import IBackplane

__all__ = ["ClientTracker", "TrackerEvents", "TrackerLimits", "GLOBAL_STREAM"]

#: History key of the global broadcast stream (the chat every client gets).
#: Not a valid channel name, so it cannot collide with one.
GLOBAL_STREAM = ""

class ClientTracker:
    """
    The shared state. Transports call L{register} and L{unregister};
    handlers and background tasks call L{broadcast}, L{publish},
    L{send_to} and the room methods.

    What spans nodes (positions, fan-out to other nodes, counts, presence,
    recovery history) goes through the C{backplane}: with the default
    L{MemoryBackplane} everything is local and synchronous; with Redis,
    L{broadcast}, L{publish}, L{room_members}, L{room_size} and L{replay}
    may return a Deferred (docs/scaling.md).

    @ivar epoch: random for each server start: positions from another epoch
        mean nothing here, so a client presenting one is not recovered.
    @ivar position: the last position handed out.
    """

    def __init__(self, limits: TrackerLimits | None = None,
                 clock: Callable[[], float] = time.time,
                 events: TrackerEvents | None = None,
                 epoch: str | None = None, backplane: "IBackplane | None" = None) -> None:
        self.limits = limits or TrackerLimits()
        self.clock = clock
        self.events = events or TrackerEvents()
        self.epoch = epoch or secrets.token_hex(8)
        self.position = 0
        self.clients: dict[str, Client] = {}
        self.counts: dict[str, int] = {}
        self.channels: dict[str, dict[Client, None]] = {}
        self.rooms: dict[str, dict[Client, str]] = {}
        self.histories: dict[str, StreamHistory] = {}
        self._policies: list[tuple[str, str]] = []
        # Histories deleted by sweep() could vouch for nothing at or before this.
        self._forgotten_after = 0
        if backplane is None:
            from appserver._core.backplane import MemoryBackplane
            backplane = MemoryBackplane()
        self.backplane = backplane
        backplane.attach(self)

    # Membership ---------------------------------------------------------

    def register(self, client: Client) -> None:
        """
        Count a client in. Registering twice is harmless.
        """
        if client.client_id in self.clients:
            return
        self.clients[client.client_id] = client
        client.connected_at = self.position
        self.counts[client.transport] = self.counts.get(client.transport, 0) + 1
        self.backplane.counts_changed()
        self.events.registered(client)

    def unregister(self, client: Client) -> None:
        """
        Count a client out and remove it from every channel and room (the
        rooms' members are told it left). Safe to call on every path that
        ends a connection: only the first call does anything.
        """
        if self.clients.get(client.client_id) is not client:
            return
        del self.clients[client.client_id]
        self.counts[client.transport] -= 1
        for channel in list(client.channels):
            self._remove_subscriber(client, channel)
        for room in list(client.rooms):
            self.leave_room(client, room)
        if client.queue is not None:
            client.queue.clear()
        self.backplane.counts_changed()
        self.events.unregistered(client)

    def __len__(self) -> int:
        return len(self.clients)

    @property
    def client_count(self) -> int:
        return len(self.clients)

    def count_by_transport(self) -> dict[str, int]:
        """
        The number of clients per transport, with both built-in transports
        always present.
        """
        counts = {"websocket": 0, "ajax": 0}
        counts.update(self.counts)
        return counts

    def cluster_counts(self) -> "dict[str, int] | Deferred[dict[str, int]]":
        """
        L{count_by_transport} over every node of the cluster (this node's
        alone with the memory backplane).
        """
        return self.backplane.cluster_counts()

    def get(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    # Positions and history ----------------------------------------------

    def next_position(self) -> int:
        self.position += 1
        return self.position

    def _history(self, stream: str) -> StreamHistory:
        history = self.histories.get(stream)
        if history is None:
            # A stream without a history had no message since the last
            # sweep forgot one: it vouches for everything after that.
            history = self.histories[stream] = StreamHistory(
                self.limits.history_size, self.limits.history_age, self.clock,
                complete_after=self._forgotten_after)
        return history

    def _stamp(self, envelope: dict[str, Any], stream: str, key: Hashable | None) -> Outgoing:
        """
        Give a stream message its position, serialize it once and keep it in
        the stream's history.
        """
        history = self._history(stream)
        message = Outgoing.of(envelope, self.next_position(), key, self.clock())
        history.append(message)
        return message

    # Sending ------------------------------------------------------------

    def broadcast(self, message_type: str, data: Any, key: Hashable | None = None) -> Outgoing:
        """
        Send C{{"type": message_type, "data": data}} to every client, with a
        position in the global stream (recoverable after a reconnect).

        @return: the message (with the Redis backplane, a Deferred firing
            with it once Redis has given it its position).
        """
        return self.backplane.publish(GLOBAL_STREAM, {"type": message_type, "data": data}, key)

    def publish(self, channel: str, data: Any, key: Hashable | None = None) -> Outgoing:
        """
        Send C{{"type": "message", "channel": channel, "data": data}} to the
        channel's subscribers, under the channel's overflow policy.

        @return: as L{broadcast}.
        """
        validate_channel_name(channel)
        return self.backplane.publish(channel, {"type": "message", "channel": channel, "data": data}, key)

    def fan_out(self, stream: str, message: Outgoing) -> None:
        """
        Deliver a positioned message to this node's clients of C{stream}:
        everyone for the global stream, else the channel's subscribers.
        """
        if stream == GLOBAL_STREAM:
            count = _deliver_each(self.clients.values(), message, self.limits.default_policy)
        else:
            subscribers = self.channels.get(stream)
            if not subscribers:
                return
            count = _deliver_each(subscribers, message, self.policy_for(stream))
        self.events.fanout(stream, count, message)

    def receive(self, stream: str, message: Outgoing) -> None:
        """
        A message positioned elsewhere (by the Redis backplane) arrived:
        keep it in this node's history and deliver it here. A message
        without a position (Redis was unreachable) is only delivered.
        """
        pos = message.pos
        if pos is not None:
            self._history(stream).append(message)
            if pos > self.position:
                self.position = pos
        self.fan_out(stream, message)

    def resynchronise(self, epoch: str, position: int) -> None:
        """
        This node may have missed messages (its Redis subscription was down,
        or Redis lost its data): its histories can no longer vouch for
        anything up to C{position}, so recovery asks the backplane.
        """
        self.epoch = epoch
        self.histories.clear()
        self.position = position
        self._forgotten_after = position

    def send_to(self, client: Client | str, envelope: dict[str, Any]) -> bool:
        """
        Send one envelope to one client (no position: it is not part of any
        stream). Returns whether the client was found.
        """
        if isinstance(client, str):
            found = self.clients.get(client)
            if found is None:
                return self.backplane.send_to_remote(client, envelope)
            client = found
        message = Outgoing.of(envelope)
        client.deliver(message, self.limits.default_policy)
        self.events.sent(1, message)
        return True

    def welcome(self, client: Client) -> None:
        """
        The first envelope of every connection or Ajax session: who the
        client is and where the stream stands, for a later C{resume}.
        """
        self.send_to(client, {"type": "welcome", "data": {
            "client_id": client.client_id, "epoch": self.epoch,
            "position": client.connected_at, "transport": client.transport}})

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        """
        Send one envelope to every member of a room; returns how many (on
        this node, with a clustered backplane).
        """
        return self.backplane.send_to_room(room, envelope)

    def deliver_to_room(self, room: str, envelope: dict[str, Any] | Outgoing) -> int:
        """
        Send one envelope to this node's members of a room; returns how many.
        """
        members = self.rooms.get(room)
        if not members:
            return 0
        message = envelope if isinstance(envelope, Outgoing) else Outgoing.of(envelope)
        count = _deliver_each(members, message, self.limits.default_policy)
        self.events.sent(count, message)
        return count

    # Channels -----------------------------------------------------------

    def set_policy(self, pattern: str, policy: str) -> None:
        """
        Set the overflow policy of channels matching a glob pattern; later
        calls take precedence over earlier ones.
        """
        if policy not in POLICIES:
            raise ValueError(f"{policy!r} is not a policy; use one of {', '.join(POLICIES)}")
        self._policies.insert(0, (pattern, policy))

    def policy_for(self, channel: str) -> str:
        for pattern, policy in self._policies:
            if fnmatch.fnmatchcase(channel, pattern):
                return policy
        return self.limits.default_policy

    def subscribe(self, client: Client, channel: str) -> None:
        """
        @raise ProtocolError: C{bad_data} for a bad name, C{limit} past
            the per-client channel limit.
        """
        validate_channel_name(channel)
        if channel in client.channels:
            return
        if len(client.channels) >= self.limits.max_channels_per_client:
            raise ProtocolError("limit", f"at most {self.limits.max_channels_per_client} channels per client; "
                                         "unsubscribe from one first")
        client.channels.add(channel)
        self.channels.setdefault(channel, {})[client] = None

    def unsubscribe(self, client: Client, channel: str) -> None:
        if channel in client.channels:
            self._remove_subscriber(client, channel)

    def _remove_subscriber(self, client: Client, channel: str) -> None:
        client.channels.discard(channel)
        subscribers = self.channels.get(channel)
        if subscribers is not None:
            subscribers.pop(client, None)
            if not subscribers:
                del self.channels[channel]

    def subscriber_count(self, channel: str) -> int:
        return len(self.channels.get(channel, ()))

    # Rooms --------------------------------------------------------------

    def join_room(self, client: Client, room: str, username: str) -> None:
        """
        Enter a room; every member, the newcomer included, is told.
        Joining again under another name renames the member.
        """
        validate_room_name(room)
        validate_username(username)
        members = self.rooms.setdefault(room, {})
        if client.rooms.get(room) == username:
            return
        if room in client.rooms:
            self.leave_room(client, room)
            members = self.rooms.setdefault(room, {})
        members[client] = username
        client.rooms[room] = username
        self.backplane.presence_changed(room)
        self.send_to_room(room, {"type": "join", "data": {"room": room, "username": username}})

    def leave_room(self, client: Client, room: str) -> bool:
        """
        Leave a room; the remaining members are told. Returns whether the
        client was a member.
        """
        username = client.rooms.pop(room, None)
        members = self.rooms.get(room)
        if username is None or members is None:
            return False
        members.pop(client, None)
        if not members:
            del self.rooms[room]
        self.backplane.presence_changed(room)
        if members or self.backplane.clustered:
            self.send_to_room(room, {"type": "leave", "data": {"room": room, "username": username}})
        return True

    def room_members(self, room: str) -> "list[str] | Deferred[list[str]]":
        """
        The sorted names of the room's members (on every node: with Redis, a
        Deferred).
        """
        return self.backplane.room_members(room)

    def local_room_members(self, room: str) -> list[str]:
        return sorted(self.rooms.get(room, {}).values())

    def room_size(self, room: str) -> "int | Deferred[int]":
        return self.backplane.room_size(room)

    # Recovery -----------------------------------------------------------

    def replay(self, client: Client, epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "bool | Deferred[bool]":
        """
        Send a reconnecting client what it missed since position C{since}:
        global broadcasts up to C{connected_at} (later ones reached it live)
        and messages of C{channels}, in position order.

        @return: whether the replay is complete (C{recovered}). C{False}
            when the epoch is another server's, or a history no longer
            reaches back to C{since}: the application must reload its state.
            With Redis, a Deferred when this node's own history does not
            reach back far enough and Redis's is read.
        """
        return self.backplane.replay(client, epoch, since, channels, connected_at)

    def replay_local(self, client: Client, epoch: Any, since: Any, channels: Iterable[str],
                     connected_at: int) -> bool:
        """
        L{replay} from this node's own histories.
        """
        if (epoch != self.epoch or isinstance(since, bool) or not isinstance(since, int)
                or since < 0 or since > self.position):
            self.events.recovery(client, False)
            return False
        recovered, missed = self.missed_since(since, channels, connected_at)
        policy = self.limits.default_policy
        for message in missed:
            client.deliver(message, policy)
        self.events.recovery(client, recovered)
        return recovered

    def missed_since(self, since: int, channels: Iterable[str], connected_at: int | None,
                     until: int | None = None) -> tuple[bool, list[Outgoing]]:
        """
        What this node's histories hold after C{since}: global messages up
        to C{connected_at}, channel messages up to C{until}, in position
        order, and whether that is everything.
        """
        streams: list[tuple[str, int | None]] = [(GLOBAL_STREAM, connected_at)]
        streams.extend((channel, until) for channel in channels)
        recovered = True
        missed: list[Outgoing] = []
        for stream, upto in streams:
            history = self.histories.get(stream)
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

    def sweep(self) -> None:
        """
        Drop expired history and the histories of channels nobody follows
        and whose messages have all expired.
        """
        for stream in list(self.histories):
            history = self.histories[stream]
            history.expire()
            if not len(history) and stream not in self.channels and stream != GLOBAL_STREAM:
                self._forgotten_after = max(self._forgotten_after, history.complete_after)
                del self.histories[stream]


def _deliver_each(recipients: Iterable[Client], message: Outgoing, policy: str) -> int:
    """
    Deliver one message to each recipient (a snapshot: a delivery may close
    a client and change the collection); returns how many.
    """
    clients = list(recipients)
    for client in clients:
        client.deliver(message, policy)
    return len(clients)


def _position_of(message: Outgoing) -> int:
    return message.pos or 0
