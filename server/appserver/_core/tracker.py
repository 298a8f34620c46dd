"""
The one shared state of a server: who is connected, on which transport, and
in which channels and rooms.

Every site (WebSocket, Ajax, the application's own routes) holds the same
L{ClientTracker}, so a count, a channel or a message is the same whichever
way a client came in. What was sent (epoch, positions, history) is its
L{StreamLog}; what spans nodes is its backplane, which sees the tracker only
as an L{ILocalNode}. It is pure logic: no sockets, no reactor, a clock
passed in; a test can drive it with plain objects.

Tests: tests/test_tracker.py, tests/test_channels_rooms.py.
"""

from __future__ import annotations

import fnmatch
import time
from typing import TYPE_CHECKING, Any, Callable, Container, Hashable, Iterable, Mapping

from zope.interface import implementer

from appserver._core.backplane import ILocalNode
from appserver._core.bounds import TrackerLimits
from appserver._core.client import Client
from appserver._core.events import TrackerEvents
from appserver._core.memory import MemoryBackplane
from appserver._core.names import (validate_channel_name, validate_idempotency_key, validate_room_name,
                                   validate_username)
from appserver._core.envelope import Outgoing, ProtocolError
from appserver._core.outbound import POLICIES
from appserver._core.streamlog import GLOBAL_STREAM, StreamLog

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from appserver._core.backplane import IBackplane

__all__ = ["ClientTracker", "TrackerEvents", "TrackerLimits", "GLOBAL_STREAM"]


@implementer(ILocalNode)
class ClientTracker:
    """
    The shared state. Transports call L{register} and L{unregister};
    handlers and background tasks call L{broadcast}, L{publish},
    L{send_to} and the room methods.

    What spans nodes (positions, fan-out to other nodes, counts, presence,
    recovery history) goes through the C{backplane}. Whatever the backplane,
    the calls that may need other nodes (L{broadcast}, L{publish},
    L{room_members}, L{room_size}, L{cluster_counts}, L{replay}) return a
    Deferred: already fired with the default L{MemoryBackplane}, which has
    also delivered by then; later with Redis (docs/scaling.md). The
    questions about this node alone (L{count_by_transport},
    L{local_room_members}, L{local_room_size}, L{subscriber_count},
    L{client_count}) answer with plain values.

    @ivar stream: the L{StreamLog}: epoch, positions and history.
    """

    def __init__(self, limits: TrackerLimits | None = None,
                 clock: Callable[[], float] = time.time,
                 events: TrackerEvents | None = None,
                 epoch: str | None = None, backplane: "IBackplane | None" = None,
                 stream: StreamLog | None = None) -> None:
        """
        @param clock: the wall clock that dates messages.
        @param epoch: the epoch of a new stream log (by default a random
            one).
        @param backplane: by default a L{MemoryBackplane}: a single node.
        @param stream: an existing stream log, which brings its own epoch,
            clock and history limits; by default a new one from C{limits}.
        @raise ValueError: both C{epoch} and C{stream} were given.
        """
        self.limits = limits or TrackerLimits()
        self.clock = clock
        self.events = events or TrackerEvents()
        if stream is None:
            stream = StreamLog(self.limits.history_size, self.limits.history_age, clock, epoch,
                               history_bytes=self.limits.history_bytes)
        elif epoch is not None:
            raise ValueError("an existing stream log has its epoch already")
        self.stream = stream
        self.clients: dict[str, Client] = {}
        self.counts: dict[str, int] = {}
        self.channels: dict[str, dict[Client, None]] = {}
        self.rooms: dict[str, dict[Client, str]] = {}
        self._policies: list[tuple[str, str]] = []
        if backplane is None:
            backplane = MemoryBackplane()
        self.backplane = backplane
        backplane.attach(self)

    @property
    def epoch(self) -> str:
        """
        The stream's epoch (L{StreamLog.epoch}), told to every client in its
        C{welcome}.
        """
        return self.stream.epoch

    @property
    def position(self) -> int:
        """
        The stream's last position (L{StreamLog.position}).
        """
        return self.stream.position

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
        """
        This node's clients (L{cluster_counts} for the whole cluster).
        """
        return len(self.clients)

    def count_by_transport(self) -> dict[str, int]:
        """
        The number of clients per transport, with every built-in transport
        (C{websocket}, C{ajax}, C{sse}) always present.
        """
        counts = {"websocket": 0, "ajax": 0, "sse": 0}
        counts.update(self.counts)
        return counts

    def cluster_counts(self) -> "Deferred[dict[str, int]]":
        """
        L{count_by_transport} over every node of the cluster (this node's
        alone with the memory backplane), with a C{nodes} key when
        clustered.
        """
        return self.backplane.cluster_counts()

    def get(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    # Sending ------------------------------------------------------------

    def broadcast(self, message_type: str, data: Any, key: Hashable | None = None) -> "Deferred[Outgoing]":
        """
        Send C{{"type": message_type, "data": data}} to every client, with a
        position in the global stream (recoverable after a reconnect).

        @return: a Deferred firing with the positioned message: at once with
            the memory backplane (the clients of this node have it by then),
            once Redis has given it its position with Redis.
        """
        return self.backplane.publish(GLOBAL_STREAM, {"type": message_type, "data": data}, key)

    def publish(self, channel: str, data: Any, key: Hashable | None = None,
                idempotency_key: str | None = None) -> "Deferred[Outgoing]":
        """
        Send C{{"type": "message", "channel": channel, "data": data}} to the
        channel's subscribers, under the channel's overflow policy.

        @param idempotency_key: a publish on C{channel} with the same key
            within the history age (on any node) is not published again;
            the Deferred fires with the first one's position.
        @return: as L{broadcast}.
        @raise ProtocolError: C{bad_data} for a bad channel name or
            idempotency key.
        """
        validate_channel_name(channel)
        envelope = {"type": "message", "channel": channel, "data": data}
        if idempotency_key is None:
            return self.backplane.publish(channel, envelope, key)
        return self.backplane.publish(channel, envelope, key, validate_idempotency_key(idempotency_key))

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
        keep it in this node's stream log and deliver it here. A message
        without a position (Redis was unreachable) is only delivered.
        """
        self.stream.receive(stream, message)
        self.fan_out(stream, message)

    def receive_echo(self, stream: str, message: Outgoing, seen: Container[str]) -> None:
        """
        A message this node delivered without a position during a Redis
        outage came back positioned (the backplane published it late): keep
        it, and deliver it to the clients that did not have it then.
        """
        self.stream.receive(stream, message)
        if stream == GLOBAL_STREAM:
            recipients: Iterable[Client] = self.clients.values()
            policy = self.limits.default_policy
        else:
            recipients = self.channels.get(stream, ())
            policy = self.policy_for(stream)
        count = _deliver_each([c for c in recipients if c.client_id not in seen], message, policy)
        self.events.fanout(stream, count, message)

    def client_ids(self) -> frozenset[str]:
        """
        The ids of this node's clients now.
        """
        return frozenset(self.clients)

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

    def deliver_to_client(self, client_id: str, message: Outgoing) -> bool:
        """
        Deliver an already serialized message to a client of this node (a
        direct message handed on by another node); returns whether the
        client is here.
        """
        client = self.clients.get(client_id)
        if client is None:
            return False
        client.deliver(message, self.limits.default_policy)
        self.events.sent(1, message)
        return True

    def welcome(self, client: Client, extra: Mapping[str, Any] | None = None) -> None:
        """
        The first envelope of every connection or Ajax session: who the
        client is and where the stream stands, for a later C{resume}.

        @param extra: fields for this client alone, added to the envelope's
            data (an event stream's session secret).
        """
        data = {"client_id": client.client_id, "epoch": self.epoch,
                "position": client.connected_at, "transport": client.transport}
        if extra:
            data.update(extra)
        self.send_to(client, {"type": "welcome", "data": data})

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
        """
        The channel's subscribers on this node.
        """
        return len(self.channels.get(channel, ()))

    def channel_subscribers(self, channel: str) -> "Deferred[int]":
        """
        The channel's subscribers on every node (a Deferred, already fired
        with the memory backplane; with Redis, the other nodes' as of their
        last heartbeat).
        """
        return self.backplane.channel_subscribers(channel)

    def channel_names(self) -> list[str]:
        """
        The channels with a subscriber on this node.
        """
        return list(self.channels)

    def detach_from_channels(self, client: Client, channels: Iterable[str]) -> list[str]:
        """
        Stop live delivery of C{channels} to C{client}, which stays
        subscribed: messages it missed are being read from elsewhere, and a
        live one must not overtake them. Returns the channels it was
        detached from, for L{reattach_to_channels}.
        """
        detached = []
        for channel in channels:
            subscribers = self.channels.get(channel)
            if subscribers is not None and client in subscribers:
                del subscribers[client]
                detached.append(channel)
        return detached

    def reattach_to_channels(self, client: Client, channels: Iterable[str]) -> None:
        """
        Resume live delivery of the C{channels} that L{detach_from_channels}
        stopped, for those the client is still subscribed to; nothing for a
        client that has closed meanwhile.
        """
        if client.closed:
            return
        for channel in channels:
            if channel in client.channels:
                self.channels.setdefault(channel, {})[client] = None

    # Rooms --------------------------------------------------------------

    def join_room(self, client: Client, room: str, username: str) -> None:
        """
        Enter a room; every member, the newcomer included, is told.
        Joining again under another name renames the member.

        @raise ProtocolError: C{bad_data} for a bad name or a username
            another member already has (compared without case and
            surrounding spaces; with a cross-node backplane, among this
            node's members only), C{limit} past the per-client room limit.
        """
        validate_room_name(room)
        validate_username(username)
        if client.rooms.get(room) == username:
            return
        wanted = username.strip().casefold()
        # As long as the join's own fan-out to every member: no index needed.
        for member, name in self.rooms.get(room, {}).items():
            if member is not client and name.strip().casefold() == wanted:
                raise ProtocolError("bad_data", f"the username {name!r} is already taken in room {room!r}; "
                                                "choose another")
        if room not in client.rooms and len(client.rooms) >= self.limits.max_rooms_per_client:
            raise ProtocolError("limit", f"at most {self.limits.max_rooms_per_client} rooms per client; "
                                         "leave one first")
        if room in client.rooms:
            # A rename: leave under the old name (which may empty the room) first.
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

    def room_members(self, room: str) -> "Deferred[list[str]]":
        """
        The sorted names of the room's members on every node (a Deferred,
        already fired with the memory backplane).
        """
        return self.backplane.room_members(room)

    def local_room_members(self, room: str) -> list[str]:
        """
        The sorted names of this node's members of the room.
        """
        return sorted(self.rooms.get(room, {}).values())

    def room_size(self, room: str) -> "Deferred[int]":
        """
        The number of the room's members on every node (as L{room_members}).
        """
        return self.backplane.room_size(room)

    def local_room_size(self, room: str) -> int:
        """
        The number of this node's members of the room.
        """
        return len(self.rooms.get(room, ()))

    def room_names(self) -> list[str]:
        """
        The rooms with a member on this node.
        """
        return list(self.rooms)

    # Recovery -----------------------------------------------------------

    def replay(self, client: Client, epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "Deferred[bool]":
        """
        Send a reconnecting client what it missed since position C{since}:
        global broadcasts up to C{connected_at} (later ones reached it live)
        and messages of C{channels}, in position order.

        @return: a Deferred firing with whether the replay is complete
            (C{recovered}). C{False} when the epoch is another server's, or
            a history no longer reaches back to C{since}: the application
            must reload its state. With the memory backplane it has fired,
            and the messages are delivered, when this returns; with Redis it
            fires later when this node's own history does not reach back
            far enough and Redis's is read.
        """
        return self.backplane.replay(client, epoch, since, channels, connected_at)

    def replay_local(self, client: Client, epoch: Any, since: Any, channels: Iterable[str],
                     connected_at: int) -> bool:
        """
        L{replay} from this node's own histories, at once.
        """
        if not self.stream.valid_since(epoch, since):
            self.events.recovery(client, False)
            return False
        recovered, missed = self.stream.missed_since(since, channels, connected_at)
        # The client's transport decides how (Client.replay): a WebSocket
        # takes any length as it reads; elsewhere at most one queue, and a
        # longer gap is not recovered.
        recovered = client.replay(missed, self.limits.default_policy) and recovered
        self.events.recovery(client, recovered)
        return recovered

    def sweep(self) -> None:
        """
        Drop expired history, and the histories of channels nobody here
        follows once their messages have all expired (L{StreamLog.sweep}).
        """
        self.stream.sweep(self.channels)


def _deliver_each(recipients: Iterable[Client], message: Outgoing, policy: str) -> int:
    """
    Deliver one message to each recipient (a snapshot: a delivery may close
    a client and change the collection); returns how many.
    """
    clients = list(recipients)
    for client in clients:
        client.deliver(message, policy)
    return len(clients)

