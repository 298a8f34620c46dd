"""
Where the Redis server is, and how this cluster names itself there: the
C{--backplane} URL, checked once at start-up so that a typo is refused with
what to write instead rather than found later as a node that cannot reach
its cluster.

Four forms (docs/scaling.md, "High availability" and "TLS"):

  - C{redis://[[user]:password@]host[:port][/db]}: one Redis server;
  - C{rediss://...}: the same over TLS;
  - C{redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/primary[/db]}:
    the primary that the Sentinels at those addresses (port 26379 unless
    given) know as C{primary}, looked up again on every connection;
  - C{rediss+sentinel://...}: the same, Sentinels and data nodes over TLS.

The user and password are the data node's; Sentinels that ask for one of
their own get C{?sentinel_username=&sentinel_password=}.

Tests: tests/test_redis_decisions.py, tests/test_backplane_memory.py.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

__all__ = ["RedisLocation", "TLSFiles", "parse_redis_url", "masked_url", "DEFAULT_PORT", "DEFAULT_SENTINEL_PORT",
           "DEFAULT_PREFIX", "DEFAULT_HEARTBEAT", "DEFAULT_REPLICA_TIMEOUT", "SCHEMES"]

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PREFIX = "appserver"
#: Seconds between heartbeats; a node is dead after C{ttl} (three beats by
#: default) without one.
DEFAULT_HEARTBEAT = 2.0
#: Seconds a publish waits for its replicas (C{?replicas=N}) before it is
#: acknowledged anyway, with a warning.
DEFAULT_REPLICA_TIMEOUT = 1.0

#: The URL schemes of a Redis backplane.
SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
# What Sentinel's own configuration accepts in practice, and nothing a path
# or a log line would need quoting for.
_PRIMARY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_COMMON = ("prefix", "heartbeat", "ttl", "replicas", "replica_timeout")
_TLS = ("ca", "cert", "key")
_SENTINEL = ("sentinel_username", "sentinel_password")
_EXAMPLE = "redis://127.0.0.1:6379/0"
_SENTINEL_EXAMPLE = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0"


@dataclass(frozen=True)
class TLSFiles:
    """
    How to talk TLS to Redis: certificates are always verified, against
    C{ca} or else the system's trusted authorities.

    @ivar ca: a PEM file of the authorities that sign Redis's certificates.
    @ivar cert: a PEM certificate this node presents (Redis's
        C{tls-auth-clients yes}); C{key}, its private key.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class RedisLocation:
    """
    Where the Redis server is and how this cluster names its keys.

    @ivar host: the Redis server; with Sentinels, the first Sentinel (the
        primary's address is asked for on every connection).
    @ivar prefix: the start of every key and channel name: clusters with
        different prefixes share a Redis without seeing each other.
    @ivar heartbeat: seconds between two heartbeats of a node.
    @ivar ttl: seconds after which a node without a heartbeat is dead.
    @ivar tls: how to talk TLS, or C{None} for plain TCP.
    @ivar sentinels: (host, port) of each Sentinel, asked in this order;
        empty for a single server.
    @ivar primary_name: the primary's name in the Sentinels' configuration.
    @ivar replicas: a publish is acknowledged once this many replicas have
        it (C{WAIT}), or after C{replica_timeout} seconds with a warning.
    """

    host: str
    port: int
    db: int
    password: str | None = field(repr=False)
    username: str | None
    prefix: str
    heartbeat: float
    ttl: float
    tls: TLSFiles | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    primary_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    replicas: int = 0
    replica_timeout: float = DEFAULT_REPLICA_TIMEOUT

    @property
    def scheme(self) -> str:
        return ("rediss" if self.tls else "redis") + ("+sentinel" if self.sentinels else "")

    def __str__(self) -> str:
        # What log lines and error messages show: never a password.
        if self.sentinels:
            hosts = ",".join(f"{_bracketed(host)}:{port}" for host, port in self.sentinels)
            return f"{self.scheme}://{hosts}/{self.primary_name}/{self.db}"
        return f"{self.scheme}://{_bracketed(self.host)}:{self.port}/{self.db}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split(url: str) -> SplitResult:
    """
    C{urlsplit}, except for a Sentinel list: several hosts, some of them
    IPv6 in brackets, are not one URL host, and Python's own checks of a
    bracketed host differ between its patch releases (Debian's 3.11.2
    refuses any text before the bracket). The list is cut out by hand and
    checked by L{_sentinels}; the rest of the URL is split as usual.
    """
    scheme, separator, rest = url.partition("://")
    if not (separator and scheme.lower().endswith("+sentinel")):
        return urlsplit(url)
    end = next((index for index, character in enumerate(rest) if character in "/?#"), len(rest))
    return urlsplit(f"{scheme}://sentinels{rest[end:]}")._replace(netloc=rest[:end])


def parse_redis_url(url: str) -> RedisLocation:
    """
    Read a C{--backplane} URL of one of the four forms in this module's
    docstring, with the query parameters C{prefix}, C{heartbeat}, C{ttl},
    C{replicas}, C{replica_timeout}; C{ca}, C{cert}, C{key} with TLS;
    C{sentinel_username}, C{sentinel_password} with Sentinels.

    @raise ValueError: naming what is wrong and what to write instead (the
        message is shown to the operator as it is).
    """
    def refuse(problem: str) -> ValueError:
        # The operator reads this on the console and in logs: no password.
        return ValueError(f"--backplane {masked_url(url)!r}: {problem}")

    try:
        parts = _split(url)
    except ValueError as error:                 # an unclosed [IPv6 bracket
        raise refuse(f"not a URL ({error}): expected redis://host:port/db, for example {_EXAMPLE}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise refuse(f"expected redis://host:port/db, for example {_EXAMPLE} (or rediss:// for TLS, "
                     f"redis+sentinel://sentinel:26379/primary-name/db for a Sentinel-managed primary)")
    tls = scheme.startswith("rediss")
    sentinel = scheme.endswith("+sentinel")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, password = _credentials(userinfo)

    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    known = _COMMON + (_TLS if tls else ()) + (_SENTINEL if sentinel else ())
    unknown = set(query) - set(known)
    if unknown & set(_TLS):
        raise refuse(f"?{', ?'.join(sorted(unknown & set(_TLS)))} need TLS: write rediss:// "
                     f"(or rediss+sentinel://) instead of {scheme}://")
    if unknown & set(_SENTINEL):
        raise refuse(f"?{', ?'.join(sorted(unknown & set(_SENTINEL)))} are for Sentinels: write "
                     f"{scheme}+sentinel://sentinel:26379/primary-name/db")
    if unknown:
        raise refuse(f"unknown parameter(s) {', '.join(sorted(unknown))} (known: {', '.join(known)})")

    path = [segment for segment in parts.path.split("/") if segment]
    if sentinel:
        sentinels = _sentinels(hostlist, refuse)
        host, port = sentinels[0]
        if not path or not _PRIMARY_NAME.match(path[0]):
            raise refuse(f"the path names the primary as the Sentinels know it (1 to 64 of A-Z a-z 0-9 _ . -), "
                         f"then the database: {scheme}://{hostlist}/mymaster/0")
        primary_name: str | None = path.pop(0)
        where = f"{scheme}://{hostlist}/{primary_name}"
    else:
        sentinels = []
        primary_name = None
        host, port = _server(parts, refuse)
        where = f"{scheme}://{_bracketed(host)}:{port}"
    if len(path) > 1 or (path and not (path[0].isascii() and path[0].isdigit())):
        raise refuse(f"the path must be a database number (0 unless Redis has more), as in {where}/0")
    db = int(path[0]) if path else 0

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
    replicas_text = query.get("replicas", "1" if sentinel else "0")
    if not (replicas_text.isascii() and replicas_text.isdigit() and int(replicas_text) <= 100):
        raise refuse("replicas is how many replicas must have a publish before it is acknowledged, "
                     "0 to 100, as in ?replicas=1")
    try:
        replica_timeout = float(query.get("replica_timeout", DEFAULT_REPLICA_TIMEOUT))
    except ValueError:
        replica_timeout = math.nan
    if not (math.isfinite(replica_timeout) and 0.001 <= replica_timeout <= 60):
        raise refuse("replica_timeout is the seconds a publish waits for its replicas, "
                     "0.001 to 60, as in ?replica_timeout=1")

    tls_files = None
    if tls:
        tls_files = TLSFiles(*(query.get(name) for name in _TLS))
        if (tls_files.cert is None) != (tls_files.key is None):
            raise refuse("a client certificate needs both ?cert=/path/cert.pem and ?key=/path/key.pem")
        for name in _TLS:
            path_name = query.get(name)
            if path_name is not None and not (os.path.isfile(path_name) and os.access(path_name, os.R_OK)):
                raise refuse(f"?{name}={path_name}: no readable file there; name a PEM file this user can read")
    sentinel_username, sentinel_password = (query.get(name) for name in _SENTINEL)
    return RedisLocation(host, port, db, password, username, prefix, heartbeat, ttl, tls=tls_files,
                         sentinels=tuple(sentinels), primary_name=primary_name,
                         sentinel_username=sentinel_username, sentinel_password=sentinel_password,
                         replicas=int(replicas_text), replica_timeout=replica_timeout)


def masked_url(url: str) -> str:
    """
    C{url} as an error message or a log line may show it: the data node's
    password and C{?sentinel_password=} replaced by C{****}. Plain string
    work, so that it also masks what L{parse_redis_url} refuses to parse.
    """
    scheme, separator, rest = url.partition("://")
    if separator:
        end = next((i for i, character in enumerate(rest) if character in "/?#"), len(rest))
        userinfo, at, hosts = rest[:end].rpartition("@")
        user, colon, secret = userinfo.partition(":")
        if at and colon and secret:
            rest = f"{user}:****@{hosts}{rest[end:]}"
        url = f"{scheme}{separator}{rest}"
    return re.sub(r"([?&]sentinel_password=)[^&#]*", r"\1****", url)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, secret = userinfo.partition(":")
    return (unquote(user) or None), (unquote(secret) if colon and secret else None)


def _server(parts: object, refuse: Callable[[str], ValueError]) -> tuple[str, int]:
    hostname = getattr(parts, "hostname", None)
    if not hostname:
        raise refuse(f"expected redis://host:port/db with a host, for example {_EXAMPLE}")
    try:
        port = getattr(parts, "port")
    except ValueError:
        port = 0
    if port is None:
        port = DEFAULT_PORT
    elif not 0 < port < 65536:
        raise refuse(f"bad port: the port is a number from 1 to 65535, as in redis://{hostname}:6379/0")
    return hostname, port


def _sentinels(hostlist: str, refuse: Callable[[str], ValueError]) -> list[tuple[str, int]]:
    """
    C{host[:port],host[:port]...} (IPv6 addresses in brackets).
    """
    found: list[tuple[str, int]] = []
    for entry in hostlist.split(","):
        entry = entry.strip()
        bracketed = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(.*))?", entry)
        if bracketed:
            host, port_text = bracketed.group(1), bracketed.group(2)
        else:
            host, _, port_text = entry.partition(":")
            port_text = port_text if ":" in entry else None
        if not host or not re.fullmatch(r"[A-Za-z0-9_.:-]+", host):
            raise refuse(f"each Sentinel is host[:port], separated by commas, as in {_SENTINEL_EXAMPLE}")
        if port_text is None:
            port = DEFAULT_SENTINEL_PORT
        elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:
            port = int(port_text)
        else:
            raise refuse(f"bad Sentinel port {port_text!r}: a number from 1 to 65535, as in "
                         f"{_bracketed(host)}:26379")
        found.append((host.lower(), port))
    return found
