"""
The Redis connections of the backplane: where Redis is (L{parse_redis_url}),
the blocking check a node makes before it listens (L{blocking_init}), and
the two txredisapi connections (commands; the subscription to the cluster's
channels), which tell their owner when they are usable and when lost.

txredisapi imports the reactor: this module is imported only when
C{--backplane redis://} is used.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi

from appserver._redis import scripts
from appserver._core.backplane import BackplaneUnavailable

if TYPE_CHECKING:
    from appserver._redis.backplane import RedisBackplane

__all__ = ["RedisLocation", "parse_redis_url", "blocking_init", "ReplyReader", "CommandFactory", "BusFactory",
           "configure_backoff"]


class RedisLocation:
    """
    Where the Redis server is and how this cluster names its keys.
    """

    def __init__(self, host: str, port: int, db: int, password: str | None, username: str | None,
                 prefix: str, heartbeat: float, ttl: float) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.password = password
        self.username = username
        self.prefix = prefix
        self.heartbeat = heartbeat
        self.ttl = ttl

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisLocation:
    """
    C{redis://[[user]:password@]host[:port][/db][?prefix=P&heartbeat=S&ttl=S]}.

    @raise ValueError: naming what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ValueError(f"--backplane {url!r}: expected redis://host:port/db")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"--backplane {url!r}: bad port") from None
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise ValueError(f"--backplane {url!r}: the path must be a database number") from None
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"prefix", "heartbeat", "ttl"}
    if unknown:
        raise ValueError(f"--backplane {url!r}: unknown parameter(s) {', '.join(sorted(unknown))} "
                         "(known: prefix, heartbeat, ttl)")
    prefix = query.get("prefix", "appserver")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", prefix):
        raise ValueError(f"--backplane {url!r}: prefix must be 1 to 64 of A-Z a-z 0-9 _ . : -")
    try:
        heartbeat = float(query.get("heartbeat", 2.0))
        ttl = float(query.get("ttl", 3 * heartbeat))
    except ValueError:
        raise ValueError(f"--backplane {url!r}: heartbeat and ttl are seconds") from None
    if not 0 < heartbeat < ttl:
        raise ValueError(f"--backplane {url!r}: need 0 < heartbeat < ttl")
    password = unquote(parts.password) if parts.password else None
    username = unquote(parts.username) if parts.username else None
    return RedisLocation(parts.hostname, port, db, password, username, prefix, heartbeat, ttl)


# Blocking start-up check ----------------------------------------------------

def _resp_command(*args: Any) -> bytes:
    """
    One command in Redis's protocol; arguments are bytes, text or integers.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RespReader:
    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise txredisapi.ResponseError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self.file.read(length + 2)
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            return None if count < 0 else [self.read() for _ in range(count)]
        raise ConnectionError(f"unexpected reply from Redis: {line!r}")


def blocking_init(location: RedisLocation, epoch: str, start: int, timeout: float = 5.0) -> tuple[str, int, int]:
    """
    Before the reactor runs: check Redis answers and read (or set) the
    cluster's epoch and position, so the first client already gets them.

    @raise BackplaneUnavailable: with what was tried and why it failed.
    """
    prefix = location.prefix
    try:
        with socket.create_connection((location.host, location.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            reader = _RespReader(sock)
            if location.password is not None:
                auth = ("AUTH", location.username, location.password) if location.username else \
                    ("AUTH", location.password)
                sock.sendall(_resp_command(*auth))
                reader.read()
            sock.sendall(_resp_command("SELECT", location.db))
            reader.read()
            sock.sendall(_resp_command("INFO", "server"))
            info = reader.read()
            version = re.search(rb"redis_version:(\d+)\.(\d+)", info or b"")
            if version is None or (int(version.group(1)), int(version.group(2))) < (6, 2):
                raise BackplaneUnavailable(f"the Redis server at {location} is older than 6.2; "
                                           "appserver needs Redis 6.2 or later")
            sock.sendall(_resp_command("EVAL", scripts.INIT.source, 3, f"{prefix}:epoch", f"{prefix}:pos",
                                       f"{prefix}:floor", epoch, start))
            found_epoch, position, floor = reader.read()
    except BackplaneUnavailable:
        raise
    except (OSError, ConnectionError) as error:
        raise BackplaneUnavailable(
            f"cannot reach the Redis backplane at {location}: {error}. Start redis-server there, "
            f"or fix --backplane (or use --backplane memory:// for a single node)") from None
    except txredisapi.ResponseError as error:
        raise BackplaneUnavailable(f"the Redis backplane at {location} refused: {error}") from None
    return found_epoch.decode("utf-8") if isinstance(found_epoch, bytes) else str(found_epoch), int(position), int(floor)


# Connections ----------------------------------------------------------------

_INCOMPLETE = object()


class ReplyReader:
    """
    Redis replies from a byte stream, for connections that want bytes back
    (no decoding, no number conversion). txredisapi's pure-Python parser
    spends a reactor turn per bulk string; this one takes what has arrived
    in one go. (With the hiredis package installed, txredisapi uses it and
    this is not needed.)
    """

    __slots__ = ("_buffer", "_at")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._at = 0

    def feed(self, data: bytes) -> None:
        if self._at > 65536 and self._at * 2 > len(self._buffer):
            del self._buffer[:self._at]
            self._at = 0
        self._buffer += data

    def gets(self) -> Any:
        """
        The next complete reply, or L{_INCOMPLETE}.
        """
        try:
            reply, at = self._parse(self._at)
        except IndexError:
            return _INCOMPLETE
        self._at = at
        return reply

    def _parse(self, at: int) -> tuple[Any, int]:
        buffer = self._buffer
        end = buffer.find(b"\r\n", at)
        if end < 0:
            raise IndexError
        kind, line = buffer[at], bytes(buffer[at + 1:end])
        at = end + 2
        if kind == 36:  # $
            length = int(line)
            if length < 0:
                return None, at
            if len(buffer) < at + length + 2:
                raise IndexError
            return bytes(buffer[at:at + length]), at + length + 2
        if kind == 42:  # *
            count = int(line)
            if count < 0:
                return None, at
            items = []
            for _ in range(count):
                item, at = self._parse(at)
                items.append(item)
            return items, at
        if kind == 58:  # :
            return int(line), at
        if kind == 43:  # +
            return line.decode("utf-8", "replace"), at
        if kind == 45:  # -
            text = line.decode("utf-8", "replace")
            return txredisapi.ResponseError(text[4:] if text.startswith("ERR ") else text), at
        raise txredisapi.InvalidResponse(f"unexpected reply from Redis: {bytes(buffer[at - len(line) - 3:at])!r}")


class _FastReplies:
    """
    Mixed into the backplane's protocols: commands built in one go, and
    replies read with L{ReplyReader} when hiredis is not installed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fast_reader = ReplyReader()

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # txredisapi's own builder costs more than the rest of a publish.
        return _resp_command(*args)

    if txredisapi.hiredis is None:
        def dataReceived(self, data: bytes, unpause: bool = False) -> None:
            reader = self._fast_reader
            reader.feed(data)
            while True:
                reply = reader.gets()
                if reply is _INCOMPLETE:
                    return
                self.replyReceived(reply)


class _CommandProtocol(_FastReplies, txredisapi.RedisProtocol):  # type: ignore[misc,valid-type]
    pass


class CommandFactory(txredisapi.RedisFactory):
    """
    One command connection; tells the backplane when it is usable or lost.
    """

    protocol = _CommandProtocol

    def __init__(self, owner: "RedisBackplane", location: RedisLocation) -> None:
        super().__init__(f"{location.host}:{location.port}", location.db, 1, isLazy=True,
                         charset=None, password=location.password, replyTimeout=10,
                         convertNumbers=False, username=location.username)
        self.owner = owner

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.owner._commands_up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.owner._commands_down(conn)


class _BusProtocol(_FastReplies, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.owner._bus_message(channel, message)


class BusFactory(txredisapi.SubscriberFactory):
    """
    The subscriber connection. txredisapi reconnects it but does not
    resubscribe: the backplane does, each time it is up.
    """

    protocol = _BusProtocol

    def __init__(self, owner: "RedisBackplane", location: RedisLocation) -> None:
        super().__init__(isLazy=True)
        self.owner = owner
        self.charset = None
        self.convertNumbers = False
        self.password = location.password
        self.username = location.username

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.owner._bus_up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.owner._bus_down(conn)


def configure_backoff(factory: txredisapi.RedisFactory) -> None:
    # Reconnect soon after a blip, then back off to a few seconds.
    factory.initialDelay = 0.5
    factory.factor = 2.0
    factory.maxDelay = 5.0
