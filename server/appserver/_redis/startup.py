"""
The check a node makes before it listens: Redis answers, is recent enough,
and gives (or takes) the cluster's epoch and position, so that the first
client already gets them and a node without its Redis does not start.

It runs before the reactor does, so it is blocking: a plain socket and the
backplane's own RESP codec (L{appserver._redis.resp}), no client library.
With Sentinels it finds the primary as every later connection does (the
same decisions, from L{appserver._redis.sentinel}); with TLS it verifies
the same certificates (L{appserver._redis.tls}).

Tests: tests/test_redis_cluster.py (a node does not start without its Redis);
tests/test_redis_sentinel.py, tests/test_redis_tls.py.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any, Sequence

from appserver._core.backplane import BackplaneUnavailable
from appserver._redis import scripts
from appserver._redis.resp import INCOMPLETE, ReplyError, ReplyParser, encode_command
from appserver._redis.sentinel import (RedisUnusable, auth_command, auth_problem, primary_address,
                                       primary_lookup_command, role_problem, sentinel_auth_command)
from appserver._redis.tls import TLSFilesUnusable, ssl_context

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
        with _open_primary(location, parser, timeout) as sock:
            _call(sock, parser, "SELECT", location.db)
            version = _version(_call(sock, parser, "INFO", "server"))
            if version is None or version < MINIMUM_VERSION:
                raise BackplaneUnavailable(f"the Redis server at {location} is older than 6.2; "
                                           "appserver needs Redis 6.2 or later")
            try:
                found_epoch, position, floor = _call(sock, parser, "EVAL", scripts.INIT.source, 3,
                                                     *keys.positions, epoch, start)
            except ReplyError as error:
                raise BackplaneUnavailable(f"the Redis backplane at {location} refused the backplane's script "
                                           f"{scripts.INIT.name!r}: {error}") from None
    except BackplaneUnavailable:
        raise
    except (RedisUnusable, TLSFilesUnusable) as error:
        raise BackplaneUnavailable(f"cannot use the Redis backplane at {location}: {error}") from None
    except ssl.SSLError as error:
        raise BackplaneUnavailable(
            f"cannot reach the Redis backplane at {location}: TLS: {error.reason or error}. Check that "
            f"?ca= names the authority that signed Redis's certificate and that the certificate names the "
            f"host (or IP address) this node connects to") from None
    except OSError as error:
        raise BackplaneUnavailable(
            f"cannot reach the Redis backplane at {location}: {error}. Start redis-server there, "
            f"or fix --backplane (or use --backplane memory:// for a single node)") from None
    except ReplyError as error:
        raise BackplaneUnavailable(f"the Redis backplane at {location} refused: {error}") from None
    text = found_epoch.decode("utf-8") if isinstance(found_epoch, bytes) else str(found_epoch)
    return text, int(position), int(floor)


def _connect(location: RedisLocation, host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    if location.tls is None:
        return sock
    try:
        return ssl_context(location.tls).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def _call_all(sock: socket.socket, parser: ReplyParser, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """
    Send C{commands} at once and return their replies, errors included.
    """
    sock.sendall(b"".join(encode_command(*command) for command in commands))
    replies: list[Any] = []
    while len(replies) < len(commands):
        reply = parser.gets()
        if reply is INCOMPLETE:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            parser.feed(data)
        else:
            replies.append(reply)
    return replies


def _open_primary(location: RedisLocation, parser: ReplyParser, timeout: float) -> socket.socket:
    """
    A connection to the primary, authenticated: the server itself, or the
    one the Sentinels name that says it is the primary (asked again for
    C{timeout} seconds while a failover is under way).

    @raise RedisUnusable: the server refused the password, or no Sentinel
        named a primary that is one.
    """
    if not location.sentinels:
        sock = _connect(location, location.host, location.port, timeout)
        problem = auth_problem(_call_all(sock, parser, auth_command(location)))
        if problem is not None:
            sock.close()
            raise RedisUnusable(f"the Redis server {problem}")
        return sock
    deadline = time.monotonic() + timeout
    while True:
        host, port = _ask_sentinels(location, timeout)
        sock = _connect(location, host, port, timeout)
        replies = _call_all(sock, parser, [*auth_command(location), ("ROLE",)])
        problem = auth_problem(replies[:-1]) or role_problem(replies[-1])
        if problem is None:
            return sock
        sock.close()
        if time.monotonic() > deadline:
            raise RedisUnusable(f"the Redis server at {host}:{port} that the Sentinels name {problem}")
        time.sleep(0.5)


def _ask_sentinels(location: RedisLocation, timeout: float) -> tuple[str, int]:
    reasons = []
    commands = [*sentinel_auth_command(location), primary_lookup_command(location)]
    for host, port in location.sentinels:
        try:
            with _connect(location, host, port, timeout) as sock:
                replies = _call_all(sock, ReplyParser(), commands)
            problem = auth_problem(replies[:-1])
            if problem is not None:
                raise RedisUnusable(problem)
            address = primary_address(replies[-1])
        except (OSError, RedisUnusable) as error:
            reasons.append(f"{host}:{port}: {error}")
            continue
        if address is None:
            reasons.append(f"{host}:{port}: knows no primary named {location.primary_name!r}")
            continue
        return address
    raise RedisUnusable(f"no Sentinel named the primary: {'; '.join(reasons)}")
