"""
The backplane: how the cross-node parts of the L{ClientTracker} work.

A single node needs nothing but its own memory: L{MemoryBackplane} gives a
broadcast its position from the tracker's counter and delivers it at once,
synchronously, exactly as a tracker without any backplane would. Several
nodes share a Redis server through
L{appserver._redis.backplane.RedisBackplane}: positions, history, fan-out,
counts, presence and Ajax sessions then span the nodes (docs/scaling.md).

The tracker keeps every local loop (a fan-out to this node's clients, its
rooms) and asks the backplane only what needs the other nodes. Methods that
may need a round trip to another process return either a plain value (the
memory backplane, always) or a L{Deferred} of it (Redis); callers accept
both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Iterable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface, implementer

from appserver._core.envelope import Outgoing

if TYPE_CHECKING:
    from twisted.web.resource import Resource
    from twisted.web.server import Request

    from appserver._core.client import Client
    from appserver._server.settings import Settings
    from appserver._core.tracker import ClientTracker

__all__ = ["IBackplane", "MemoryBackplane", "BackplaneUnavailable", "make_backplane"]


class BackplaneUnavailable(Exception):
    """
    The backplane cannot be reached (at start-up: the server does not
    start). The message says what was tried and what to check.
    """


class IBackplane(Interface):
    """
    The cross-node half of a L{ClientTracker}.
    """

    clustered = Attribute("True when other nodes may exist (the tracker then never assumes "
                          "it sees every client, room member or message).")
    node_id = Attribute("The name of this node (C{None} for the memory backplane).")

    def attach(tracker: "ClientTracker") -> None:
        """
        Bind to the tracker whose state this backplane extends; called once,
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

    def publish(stream: str, envelope: dict[str, Any], key: Hashable | None) -> "Outgoing | Deferred[Outgoing]":
        """
        Give a stream message (C{stream} is a channel, or the global
        stream C{""}) its position, keep it for recovery and have every
        node deliver it to its subscribers through
        L{ClientTracker.receive}.
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

    def cluster_counts() -> "dict[str, int] | Deferred[dict[str, int]]":
        """
        Clients per transport over every live node (always with the keys
        C{websocket} and C{ajax}); with a C{nodes} key when clustered.
        """

    def room_members(room: str) -> "list[str] | Deferred[list[str]]":
        """
        The sorted display names of the room's members on every live node.
        """

    def room_size(room: str) -> "int | Deferred[int]":
        """
        The number of the room's members on every live node.
        """

    def replay(client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "bool | Deferred[bool]":
        """
        Send a reconnecting client what it missed (L{ClientTracker.replay}).
        """

    def new_session_id() -> str | None:
        """
        The id of a new Ajax session, or C{None} for a random one: a
        clustered backplane names the session's home node in it so any node
        can route the session's requests there.
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


@implementer(IBackplane)
class MemoryBackplane:
    """
    One node, all in memory: positions from the tracker's counter, history
    in the tracker, delivery at once. Everything is synchronous.
    """

    clustered = False
    node_id = None

    def __init__(self) -> None:
        self.tracker: ClientTracker | None = None

    def attach(self, tracker: "ClientTracker") -> None:
        self.tracker = tracker

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def not_ready(self) -> list[str]:
        return []

    def publish(self, stream: str, envelope: dict[str, Any], key: Hashable | None) -> Outgoing:
        tracker = self.tracker
        assert tracker is not None
        message = tracker._stamp(envelope, stream, key)
        tracker.fan_out(stream, message)
        return message

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        tracker = self.tracker
        assert tracker is not None
        return tracker.deliver_to_room(room, envelope)

    def send_to_remote(self, client_id: str, envelope: dict[str, Any]) -> bool:
        return False

    def counts_changed(self) -> None:
        return None

    def presence_changed(self, room: str) -> None:
        return None

    def cluster_counts(self) -> dict[str, int]:
        tracker = self.tracker
        assert tracker is not None
        return tracker.count_by_transport()

    def room_members(self, room: str) -> list[str]:
        tracker = self.tracker
        assert tracker is not None
        return tracker.local_room_members(room)

    def room_size(self, room: str) -> int:
        tracker = self.tracker
        assert tracker is not None
        return len(tracker.rooms.get(room, ()))

    def replay(self, client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> bool:
        tracker = self.tracker
        assert tracker is not None
        return tracker.replay_local(client, epoch, since, channels, connected_at)

    def new_session_id(self) -> None:
        return None

    def attach_ajax(self, root: "Resource") -> None:
        return None

    def route_session_request(self, resource: "Resource", request: "Request", session_id: str) -> None:
        return None


def make_backplane(settings: "Settings", reactor: Any) -> IBackplane:
    """
    The backplane named by C{--backplane}: C{memory://} or
    C{redis://host:port/db}. The Redis client is imported only when asked
    for (it imports the reactor).

    @raise ValueError: the URL names no known backplane.
    """
    url = settings.backplane or "memory://"
    scheme = urlsplit(url).scheme
    if url in ("memory", "memory://") or scheme == "memory":
        return MemoryBackplane()
    if scheme == "redis":
        from appserver._redis.backplane import RedisBackplane
        return RedisBackplane.from_settings(settings, reactor)
    raise ValueError(f"--backplane {url!r}: use memory:// or redis://host:port/db")
