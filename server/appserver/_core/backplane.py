"""
The backplane: how the cross-node parts of the L{ClientTracker} work, as
interfaces only.

A backplane (L{IBackplane}) extends one node to a cluster: it positions the
node's stream messages and has every node deliver them, shares counts and
presence, and reads recovery history the node no longer has. It sees its
node only through L{ILocalNode}, which the tracker provides: what to
deliver locally, what the node counts, and its L{StreamLog}. So neither
backplane imports the tracker, and the tracker imports only the memory
backplane, its default.

A single node needs nothing but its own memory:
L{appserver._core.memory.MemoryBackplane}. Several nodes share a Redis
server through L{appserver._redis.backplane.RedisBackplane}: positions,
history, fan-out, counts, presence and Ajax sessions then span the nodes
(docs/scaling.md). L{appserver._server.runtime.make_backplane} picks one
from the settings.

One return convention: a method that may need other nodes (L{publish
<IBackplane.publish>}, L{cluster_counts <IBackplane.cluster_counts>},
L{room_members <IBackplane.room_members>}, L{room_size
<IBackplane.room_size>}, L{replay <IBackplane.replay>}) always returns a
L{Deferred}, already fired on the memory backplane, so callers never test
which kind they got. The memory backplane still delivers inside the call:
what a handler sends after a C{publish} or C{replay} reaches the client
after what they delivered.

Tests: tests/test_backplane_memory.py, tests/test_redis_cluster.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Container, Hashable, Iterable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.web.resource import Resource
    from twisted.web.server import Request

    from appserver._core.client import Client
    from appserver._core.envelope import Outgoing

__all__ = ["IBackplane", "ILocalNode", "BackplaneUnavailable"]


class BackplaneUnavailable(Exception):
    """
    The backplane cannot be reached (at start-up: the server does not
    start). The message says what was tried and what to check.
    """


class ILocalNode(Interface):
    """
    What a backplane may ask of the node it serves (the L{ClientTracker}):
    local delivery, local membership, and the node's stream log. Every
    query here is about this node only and answers at once.
    """

    stream = Attribute("The node's L{appserver._core.streamlog.StreamLog}: its epoch, position and "
                       "histories, which a clustered backplane keeps in step with the cluster.")
    limits = Attribute("The node's L{appserver._core.bounds.TrackerLimits} (the default overflow policy "
                       "of a direct delivery).")
    events = Attribute("The node's L{appserver._core.events.TrackerEvents}, for recovery and backplane "
                       "metrics.")

    def fan_out(stream: str, message: "Outgoing") -> None:
        """
        Deliver a positioned message to this node's clients of C{stream}
        (everyone for the global stream), without keeping it: the caller
        has put it in the stream log.
        """

    def receive(stream: str, message: "Outgoing") -> None:
        """
        A message positioned elsewhere arrived: keep it in the stream log
        (when it has a position) and deliver it here.
        """

    def receive_echo(stream: str, message: "Outgoing", seen: "Container[str]") -> None:
        """
        A message this node delivered without a position while Redis was
        unreachable came back positioned: keep it in the stream log, and
        deliver it only to the clients not in C{seen} (those that did not
        get it then), so that none gets it twice.
        """

    def client_ids() -> "frozenset[str]":
        """
        The ids of this node's clients now (who got a message delivered
        without a position, for L{receive_echo}).
        """

    def deliver_to_room(room: str, envelope: "dict[str, Any] | Outgoing") -> int:
        """
        Deliver to this node's members of a room; returns how many.
        """

    def deliver_to_client(client_id: str, message: "Outgoing") -> bool:
        """
        Deliver to one client if it is on this node; returns whether it is.
        """

    def count_by_transport() -> dict[str, int]:
        """
        This node's clients per transport (always with C{websocket},
        C{ajax} and C{sse}).
        """

    def local_room_members(room: str) -> list[str]:
        """
        The sorted display names of this node's members of a room.
        """

    def local_room_size(room: str) -> int:
        """
        The number of this node's members of a room.
        """

    def channel_names() -> list[str]:
        """
        The channels with a subscriber on this node.
        """

    def subscriber_count(channel: str) -> int:
        """
        The channel's subscribers on this node.
        """

    def room_names() -> list[str]:
        """
        The rooms with a member on this node.
        """

    def replay_local(client: "Client", epoch: Any, since: Any, channels: Iterable[str],
                     connected_at: int) -> bool:
        """
        Send a reconnecting client what it missed from this node's own
        histories; returns whether that was everything.
        """

    def detach_from_channels(client: "Client", channels: Iterable[str]) -> list[str]:
        """
        Stop delivering live messages of C{channels} to C{client} while it
        stays subscribed (a replay read from elsewhere must reach it
        first); returns the channels it was detached from.
        """

    def reattach_to_channels(client: "Client", channels: Iterable[str]) -> None:
        """
        Undo L{detach_from_channels} for the channels the client is still
        subscribed to (nothing when it has closed meanwhile).
        """


class IBackplane(Interface):
    """
    The cross-node half of a L{ClientTracker}.
    """

    clustered = Attribute("True when other nodes may exist (the tracker then never assumes "
                          "it sees every client, room member or message).")
    node_id = Attribute("The name of this node (C{None} for the memory backplane).")

    def attach(node: ILocalNode) -> None:
        """
        Bind to the node whose state this backplane extends; called once,
        by the tracker's constructor.
        """

    def start() -> None:
        """
        Connect before the server listens.

        @raise BackplaneUnavailable: the backplane cannot be reached; the
            message is meant for the operator.
        """

    def stop() -> "Deferred[None] | None":
        """
        Leave the cluster (remove this node's counts and presence) and
        disconnect.
        """

    def publish(stream: str, envelope: dict[str, Any], key: Hashable | None,
                idempotency_key: str | None = None) -> "Deferred[Outgoing]":
        """
        Give a stream message (C{stream} is a channel, or the global
        stream C{""}) its position, keep it for recovery and have every
        node deliver it to its subscribers (L{ILocalNode.receive}, or
        L{ILocalNode.fan_out} on a single node, before returning).

        @param idempotency_key: when given, a publish on C{stream} with the
            same key within the history age, on any node, is not published
            again: the Deferred fires with a message at the first one's
            position (docs/channels.md).

        @return: a Deferred firing with the positioned message.
        """

    def send_to_room(room: str, envelope: dict[str, Any]) -> int:
        """
        Deliver an envelope to every member of a room on every node; returns
        how many members this node has (the others are not known at once).
        """

    def send_to_remote(client_id: str, envelope: dict[str, Any]) -> bool:
        """
        Deliver an envelope to a client this node does not have; returns
        whether it was handed on (C{False}: nowhere to look).
        """

    def counts_changed() -> None:
        """
        A client came or went: this node's counts are to be shared.
        """

    def presence_changed(room: str) -> None:
        """
        This node's members of C{room} changed: its presence is to be shared.
        """

    def cluster_counts() -> "Deferred[dict[str, int]]":
        """
        Clients per transport over every live node (always with the keys
        C{websocket}, C{ajax} and C{sse}); with a C{nodes} key when clustered.
        """

    def room_members(room: str) -> "Deferred[list[str]]":
        """
        The sorted display names of the room's members on every live node.
        """

    def room_size(room: str) -> "Deferred[int]":
        """
        The number of the room's members on every live node.
        """

    def channel_subscribers(channel: str) -> "Deferred[int]":
        """
        The channel's subscribers on every live node: this node's now, the
        others' as of their last heartbeat.
        """

    def replay(client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "Deferred[bool]":
        """
        Send a reconnecting client what it missed (L{ClientTracker.replay});
        the Deferred fires with whether that was everything.
        """

    def new_session_secret() -> str:
        """
        The secret of a new Ajax session (see L{appserver._core.client.new_session_secret}): at least
        256 random bits; a clustered backplane prefixes the session's home
        node so any node can route the session's requests there.
        """

    def attach_ajax(root: "Resource") -> None:
        """
        The Ajax site's resource tree, to serve session requests other nodes
        route here.
        """

    def not_ready() -> list[str]:
        """
        Readiness (C{/readyz}): why this node is not fully part of the
        cluster now, or nothing.
        """

    def route_session_request(resource: "Resource", request: "Request", session_id: str) -> "bytes | int | None":
        """
        Called by an Ajax session endpoint (C{resource}) for a session this
        node does not have: C{None} when the session is nowhere to be found
        (the caller answers C{unknown_session}), else the answer
        (C{NOT_DONE_YET} while the session's home node handles it). Errors
        are written with C{resource.routed_error(request, status, code,
        message)}.
        """
