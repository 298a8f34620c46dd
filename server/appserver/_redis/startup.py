"""
The check a node makes before it listens: Redis answers, is recent enough,
and gives (or takes) the cluster's epoch and position, so that the first
client already gets them and a node without its Redis does not start.

It runs before the reactor does, so it is blocking: a plain socket and the
backplane's own RESP codec (L{appserver._redis.resp}), no client library.

Tests: tests/test_redis_cluster.py (a node does not start without its Redis).
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Any

from appserver._core.backplane import BackplaneUnavailable
from appserver._redis import scripts
from appserver._redis.resp import INCOMPLETE, ReplyError, ReplyParser, encode_command

if TYPE_CHECKING:
    from appserver._redis.keys import KeySpace
    from appserver._redis.location import RedisLocation

__all__ = ["blocking_init", "MINIMUM_VERSION"]

#: The oldest Redis the backplane supports (docs/scaling.md): an older one
#: is refused at start-up rather than failing on some later command.
MINIMUM_VERSION = (6, 2)


def _call(sock: socket.socket, parser: ReplyParser, *command: Any) -> Any:
    """
    Send one command and wait for its reply.

    @raise ReplyError: Redis refused the command.
    @raise ConnectionError: Redis closed the connection.
    """
    sock.sendall(encode_command(*command))
    while True:
        reply = parser.gets()
        if reply is not INCOMPLETE:
            break
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("Redis closed the connection")
        parser.feed(data)
    if isinstance(reply, ReplyError):
        raise reply
    return reply


def _version(info: Any) -> tuple[int, int] | None:
    found = re.search(rb"redis_version:(\d+)\.(\d+)", info if isinstance(info, bytes) else b"")
    return None if found is None else (int(found.group(1)), int(found.group(2)))


def blocking_init(location: RedisLocation, keys: KeySpace, epoch: str, start: int,
                  timeout: float = 5.0) -> tuple[str, int, int]:
    """
    Before the reactor runs: check Redis answers and read (or set) the
    cluster's epoch and position.

    @param keys: the cluster's names in that Redis.
    @param epoch: this node's epoch, which Redis takes if it has none.
    @param start: the position Redis starts from then
        (L{scripts.proposed_start}).
    @return: the cluster's epoch, last position and history floor.
    @raise BackplaneUnavailable: with what was tried and why it failed.
    """
    parser = ReplyParser()
    try:
        with socket.create_connection((location.host, location.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if location.password is not None:
                credentials = (location.username, location.password) if location.username else (location.password,)
                _call(sock, parser, "AUTH", *credentials)
            _call(sock, parser, "SELECT", location.db)
            version = _version(_call(sock, parser, "INFO", "server"))
            if version is None or version < MINIMUM_VERSION:
                raise BackplaneUnavailable(f"the Redis server at {location} is older than 6.2; "
                                           "appserver needs Redis 6.2 or later")
            found_epoch, position, floor = _call(sock, parser, "EVAL", scripts.INIT.source, 3, *keys.positions,
                                                 epoch, start)
    except BackplaneUnavailable:
        raise
    except OSError as error:
        raise BackplaneUnavailable(
            f"cannot reach the Redis backplane at {location}: {error}. Start redis-server there, "
            f"or fix --backplane (or use --backplane memory:// for a single node)") from None
    except ReplyError as error:
        raise BackplaneUnavailable(f"the Redis backplane at {location} refused: {error}") from None
    text = found_epoch.decode("utf-8") if isinstance(found_epoch, bytes) else str(found_epoch)
    return text, int(position), int(floor)
