"""
Where the Redis server is, and how this cluster names itself there: the
C{--backplane redis://...} URL, checked once at start-up so that a typo is
refused with what to write instead rather than found later as a node that
cannot reach its cluster.

Tests: tests/test_redis_decisions.py, tests/test_backplane_memory.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisLocation", "parse_redis_url", "DEFAULT_PORT", "DEFAULT_PREFIX", "DEFAULT_HEARTBEAT"]

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "appserver"
#: Seconds between heartbeats; a node is dead after C{ttl} (three beats by
#: default) without one.
DEFAULT_HEARTBEAT = 2.0

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_KNOWN = ("prefix", "heartbeat", "ttl")
_EXAMPLE = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisLocation:
    """
    Where the Redis server is and how this cluster names its keys.

    @ivar prefix: the start of every key and channel name: clusters with
        different prefixes share a Redis without seeing each other.
    @ivar heartbeat: seconds between two heartbeats of a node.
    @ivar ttl: seconds after which a node without a heartbeat is dead.
    """

    host: str
    port: int
    db: int
    password: str | None = field(repr=False)
    username: str | None
    prefix: str
    heartbeat: float
    ttl: float

    def __str__(self) -> str:
        # What log lines and error messages show: never the password.
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisLocation:
    """
    Read C{redis://[[user]:password@]host[:port][/db][?prefix=P&heartbeat=S&ttl=S]}.

    @raise ValueError: naming what is wrong and what to write instead (the
        message is shown to the operator as it is).
    """
    def refuse(problem: str) -> ValueError:
        return ValueError(f"--backplane {url!r}: {problem}")

    parts = urlsplit(url)
    if parts.scheme != "redis":
        hint = " (TLS is not supported: reach Redis through a tunnel)" if parts.scheme == "rediss" else ""
        raise refuse(f"expected redis://host:port/db, for example {_EXAMPLE}{hint}")
    if not parts.hostname:
        raise refuse(f"expected redis://host:port/db with a host, for example {_EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port is None:
        port = DEFAULT_PORT
    elif not 0 < port < 65536:
        raise refuse(f"bad port: the port is a number from 1 to 65535, as in redis://{parts.hostname}:6379/0")
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise refuse(f"the path must be a database number (0 unless Redis has more), "
                     f"as in redis://{parts.hostname}:{port}/0")
    db = int(path) if path else 0
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - set(_KNOWN)
    if unknown:
        raise refuse(f"unknown parameter(s) {', '.join(sorted(unknown))} (known: {', '.join(_KNOWN)})")
    prefix = query.get("prefix", DEFAULT_PREFIX)
    if not _PREFIX.match(prefix):
        raise refuse("prefix must be 1 to 64 of A-Z a-z 0-9 _ . : -, as in ?prefix=chat")
    try:
        heartbeat = float(query.get("heartbeat", DEFAULT_HEARTBEAT))
        ttl = float(query.get("ttl", 3 * heartbeat))
    except ValueError:
        raise refuse("heartbeat and ttl are seconds, as in ?heartbeat=2&ttl=6") from None
    if not (math.isfinite(heartbeat) and math.isfinite(ttl) and 0 < heartbeat < ttl):
        raise refuse(f"need 0 < heartbeat < ttl (got heartbeat={heartbeat:g}, ttl={ttl:g}), "
                     "as in ?heartbeat=2&ttl=6")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return RedisLocation(parts.hostname, port, db, password, username, prefix, heartbeat, ttl)
