"""
The memory backplane: one node, nothing shared.

A broadcast takes its position from the node's own L{StreamLog} and is
delivered at once, inside L{MemoryBackplane.publish}, exactly as a tracker
without any backplane would. The cluster-wide queries are this node's own
answers. Every method that may need other nodes on a clustered backplane
returns a Deferred here too, already fired, so that callers are written
once for both (L{appserver._core.backplane}).

Tests: tests/test_backplane_memory.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable, Iterable

from twisted.internet import defer
from zope.interface import implementer

from appserver._core.backplane import IBackplane, ILocalNode
from appserver._core.client import new_session_secret
from appserver._core.envelope import Outgoing

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.web.resource import Resource
    from twisted.web.server import Request

    from appserver._core.client import Client

__all__ = ["MemoryBackplane"]


@implementer(IBackplane)
class MemoryBackplane:
    """
    One node, all in memory: positions and history in the node's stream
    log, delivery at once. The Deferreds it returns have already fired.

    @ivar node: the node it serves, once attached.
    """

    clustered = False
    node_id = None

    def __init__(self) -> None:
        self.node: ILocalNode | None = None

    def attach(self, node: ILocalNode) -> None:
        self.node = node

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def not_ready(self) -> list[str]:
        return []

    def publish(self, stream: str, envelope: dict[str, Any], key: Hashable | None,
                idempotency_key: str | None = None) -> "Deferred[Outgoing]":
        node = self.node
        assert node is not None
        log = node.stream
        if idempotency_key is not None:
            first = log.idempotent(stream, idempotency_key)
            if first is not None:
                # A retry: the first publish's position, delivered nowhere.
                return defer.succeed(Outgoing.of(envelope, first, key, log.clock()))
        message = log.stamp(envelope, stream, key)
        if idempotency_key is not None and message.pos is not None:
            log.remember(stream, idempotency_key, message.pos)
        node.fan_out(stream, message)
        return defer.succeed(message)

    def send_to_room(self, room: str, envelope: dict[str, Any]) -> int:
        node = self.node
        assert node is not None
        return node.deliver_to_room(room, envelope)

    def send_to_remote(self, client_id: str, envelope: dict[str, Any]) -> bool:
        return False

    def counts_changed(self) -> None:
        return None

    def presence_changed(self, room: str) -> None:
        return None

    def cluster_counts(self) -> "Deferred[dict[str, int]]":
        node = self.node
        assert node is not None
        return defer.succeed(node.count_by_transport())

    def room_members(self, room: str) -> "Deferred[list[str]]":
        node = self.node
        assert node is not None
        return defer.succeed(node.local_room_members(room))

    def room_size(self, room: str) -> "Deferred[int]":
        node = self.node
        assert node is not None
        return defer.succeed(node.local_room_size(room))

    def channel_subscribers(self, channel: str) -> "Deferred[int]":
        node = self.node
        assert node is not None
        return defer.succeed(node.subscriber_count(channel))

    def replay(self, client: "Client", epoch: Any, since: Any, channels: Iterable[str],
               connected_at: int) -> "Deferred[bool]":
        node = self.node
        assert node is not None
        return defer.succeed(node.replay_local(client, epoch, since, channels, connected_at))

    def new_session_secret(self) -> str:
        return new_session_secret()

    def attach_ajax(self, root: "Resource") -> None:
        return None

    def route_session_request(self, resource: "Resource", request: "Request", session_id: str) -> None:
        return None
