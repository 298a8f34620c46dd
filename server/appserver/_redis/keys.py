"""
The names a cluster uses in Redis: its keys (laid out in
L{appserver._redis.scripts}), its pub/sub channels, and the node ids they
are built from. One place, so that every part of the backplane, and every
node, agrees on them.

Tests: tests/test_redis_decisions.py.
"""

from __future__ import annotations

import re
import secrets
import socket

__all__ = ["KeySpace", "NODE_ID_PATTERN", "check_node_id", "default_node_id"]

#: A node id: it is part of key and channel names and the prefix of the
#: node's Ajax session secrets (up to the first dot), so no dot.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def check_node_id(node_id: str) -> str:
    """
    @raise ValueError: for the operator, saying which ids are allowed.
    """
    if not NODE_ID_PATTERN.match(node_id):
        raise ValueError(f"--node-id {node_id!r}: use 1 to 64 of A-Z a-z 0-9 _ - (for example web-1)")
    return node_id


def default_node_id() -> str:
    """
    A node id when none is given: the host name (readable in logs) and a
    random suffix, so that two processes on one host never share one.
    """
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


class KeySpace:
    """
    The key and channel names of one cluster (C{prefix}, database C{db}) as
    seen from one node (C{node_id}).

    Pub/sub channels are not per database in Redis: the database number is
    part of their names so that two clusters on one Redis stay apart.

    @ivar epoch: the cluster's epoch; C{pos}, its last position; C{floor},
        where Redis's history starts; C{streams}, the hash of every
        stream's last and oldest-forgotten positions.
    @ivar nodes: the heartbeats (a sorted set); C{node_prefix} + a node id,
        that node's counts and presence; C{node}, this node's.
    @ivar bus: the channel of positioned publications; C{control}, of room
        and direct messages; C{inbox}, this node's own channel (routed Ajax
        requests and their answers).
    """

    def __init__(self, prefix: str, db: int, node_id: str) -> None:
        self.prefix = prefix
        self.db = db
        self.epoch = f"{prefix}:epoch"
        self.pos = f"{prefix}:pos"
        self.floor = f"{prefix}:floor"
        self.streams = f"{prefix}:streams"
        self.nodes = f"{prefix}:nodes"
        self.node_prefix = f"{prefix}:node:"
        self.node = self.node_prefix + node_id
        self.bus = self._channel("bus")
        self.control = self._channel("ctl")
        self.inbox = self.node_channel(node_id)

    def _channel(self, name: str) -> bytes:
        return f"{self.prefix}@{self.db}:{name}".encode()

    def node_channel(self, node_id: str) -> bytes:
        """
        The channel a node reads its routed Ajax requests and answers on.
        """
        return self._channel(f"to:{node_id}")

    def stream(self, stream: str) -> str:
        """
        The Redis Stream keeping the recent history of a stream (C{""} is
        the global stream).
        """
        return f"{self.prefix}:s:{stream}" if stream else f"{self.prefix}:global"

    def idempotency(self, stream: str, key: str) -> str:
        """
        The key keeping the position of the publish on C{stream} with the
        idempotency key C{key} (the stream's length keeps stream and key
        apart whatever characters they hold).
        """
        return f"{self.prefix}:i:{len(stream)}:{stream}:{key}"

    @property
    def positions(self) -> list[str]:
        """
        The keys of L{appserver._redis.scripts.INIT}: epoch, position, floor.
        """
        return [self.epoch, self.pos, self.floor]
