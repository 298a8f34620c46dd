"""
Finding and checking the Redis server a node connects to, on every
connection: L{RedisEndpoint} is the C{IStreamClientEndpoint} the backplane's
connections (and their reconnections) go through when Redis is reached over
TLS or through Sentinels.

With Sentinels (C{redis+sentinel://}) each connection asks them in turn
where the primary is (C{SENTINEL get-master-addr-by-name}), connects there
and asks it C{ROLE}: a server that is not the primary (a demoted old one, or
one being promoted) is left, and the next attempt asks the Sentinels again.
So a node follows a failover with nothing but txredisapi's reconnection:
the old primary's death (or its C{READONLY} answers, see
L{appserver._redis.connection}) drops the connections, and the next one
finds the new primary.

Over TLS (C{rediss://}) the connection is handed to the Redis client only
once the handshake is done and Redis answered, so that a certificate that
does not verify is reported as such (one log line per new reason) rather
than as a connection that opens and drops.

The decisions (what a reply means) are plain functions, shared with the
blocking start-up check (L{appserver._redis.startup}).

Tests: tests/test_redis_sentinel.py, tests/test_redis_tls.py (real
redis-server processes); the decisions in tests/test_redis_decisions.py.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from appserver._redis.location import RedisLocation
from appserver._redis.resp import INCOMPLETE, MalformedReply, ReplyError, ReplyParser, encode_command
from appserver._redis.tls import TLSFilesUnusable, client_creator

__all__ = ["RedisEndpoint", "RedisUnusable", "auth_command", "auth_problem", "sentinel_auth_command",
           "primary_lookup_command", "primary_address", "role_problem"]

_log = Logger(namespace="appserver.redis")

Command = Sequence[Any]


class RedisUnusable(ConnectionError):
    """
    A connection attempt that reached something, but not a usable primary:
    the message says what and is shown to the operator as it is.
    """


# Decisions (no I/O) ---------------------------------------------------------------


def auth_command(location: RedisLocation) -> list[Command]:
    """
    The C{AUTH} a data node needs, if any.
    """
    if location.password is None:
        return []
    return [("AUTH", location.username, location.password) if location.username else ("AUTH", location.password)]


def sentinel_auth_command(location: RedisLocation) -> list[Command]:
    """
    The C{AUTH} a Sentinel needs (C{?sentinel_password=}), if any.
    """
    if location.sentinel_password is None:
        return []
    if location.sentinel_username:
        return [("AUTH", location.sentinel_username, location.sentinel_password)]
    return [("AUTH", location.sentinel_password)]


def primary_lookup_command(location: RedisLocation) -> Command:
    return ("SENTINEL", "get-master-addr-by-name", location.primary_name)


def primary_address(reply: Any) -> tuple[str, int] | None:
    """
    The (host, port) in a C{SENTINEL get-master-addr-by-name} reply, or
    C{None} when this Sentinel does not know the name.

    @raise RedisUnusable: the Sentinel refused (an error reply).
    """
    if isinstance(reply, ReplyError):
        raise RedisUnusable(f"refused: {reply.text}")
    if not isinstance(reply, list) or len(reply) != 2:
        return None
    host, port = reply
    try:
        return _text(host), int(port)
    except (TypeError, ValueError):
        return None


def role_problem(reply: Any) -> str | None:
    """
    What is wrong with a server whose C{ROLE} reply this is, for a node that
    must write to the primary; C{None} when it is the primary.
    """
    if isinstance(reply, ReplyError):
        return f"refused ROLE: {reply.text}"
    if not isinstance(reply, list) or not reply:
        return "did not answer ROLE as Redis does"
    role = _text(reply[0])
    if role == "master":
        return None
    return f"is a {'replica' if role == 'slave' else role}, not the primary"


def auth_problem(replies: Sequence[Any]) -> str | None:
    for reply in replies:
        if isinstance(reply, ReplyError):
            return f"refused the password: {reply.text}"
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# The wire ---------------------------------------------------------------------------


@implementer(IProtocol)
class _Handshake(Protocol):
    """
    A connection's first exchange: send C{commands}, read their replies
    (C{replies} fires with them), then either L{hand_over} the connection to
    the real Redis client or L{close} it.
    """

    transport: Any

    def __init__(self, commands: Sequence[Command], reactor: Any, timeout: float) -> None:
        self.commands = commands
        self.reactor = reactor
        self.timeout = timeout
        self.replies: defer.Deferred[list[Any]] = defer.Deferred(lambda _: self.close())
        self._parser = ReplyParser()
        self._received: list[Any] = []
        self._inner: Any = None
        self._timer: Any = None
        self._lost = False

    def connectionMade(self) -> None:
        self._timer = self.reactor.callLater(self.timeout, self._timed_out)
        self.transport.write(b"".join(encode_command(*command) for command in self.commands))

    def _timed_out(self) -> None:
        self._timer = None
        self._fail(RedisUnusable(f"no answer within {self.timeout:g}s"))
        self.close()

    def _fail(self, error: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.replies.called:
            self.replies.errback(Failure(error))

    def dataReceived(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.dataReceived(data)
            return
        self._parser.feed(data)
        while len(self._received) < len(self.commands):
            try:
                reply = self._parser.gets()
            except MalformedReply as error:
                self._fail(RedisUnusable(f"answered what is not Redis's protocol ({error})"))
                self.close()
                return
            if reply is INCOMPLETE:
                return
            self._received.append(reply)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.replies.called:
            self.replies.callback(self._received)

    def hand_over(self, factory: IProtocolFactory) -> Any:
        """
        Give this connection to a protocol of C{factory}, as if it had just
        been made; that protocol, or C{None} if the connection is gone.
        """
        if self._lost:
            return None
        self._inner = factory.buildProtocol(self.transport.getPeer())
        if self._inner is None:
            self.close()
            return None
        self._inner.makeConnection(self.transport)
        return self._inner

    def close(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionError("lost"))) -> None:
        self._lost = True
        if self._inner is not None:
            self._inner.connectionLost(reason)
            return
        error = reason.value
        detail = _ssl_reason(error) or str(error) or type(error).__name__
        self._fail(RedisUnusable(f"closed the connection ({detail})"))


def _ssl_reason(error: Any) -> str | None:
    """
    The readable part of an OpenSSL error (C{certificate verify failed},
    C{tlsv1 alert unknown ca}...), which otherwise comes as nested tuples.
    """
    try:
        from OpenSSL.SSL import Error as OpenSSLError
    except ImportError:     # pragma: no cover - Twisted's TLS needs pyOpenSSL anyway
        return None
    if not isinstance(error, OpenSSLError):
        return None
    reasons = [entry[2] for entry in (error.args[0] if error.args else []) if isinstance(entry, tuple)]
    return "TLS: " + ", ".join(str(reason) for reason in reasons) if reasons else "TLS handshake failed"


@implementer(IStreamClientEndpoint)
class RedisEndpoint:
    """
    Connects to the Redis server of a location: asks the Sentinels where
    the primary is (if the location has Sentinels), connects over TLS (if
    it says so), checks the server, then hands the connection to the
    protocol the caller asked for.

    @ivar primary: the (host, port) of the last connection made, for logs.
    """

    def __init__(self, reactor: Any, location: RedisLocation, timeout: float) -> None:
        self.reactor = reactor
        self.location = location
        self.timeout = timeout
        self.primary: tuple[str, int] | None = None
        self._last_problem: str | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> "defer.Deferred[Any]":
        return defer.ensureDeferred(self._connect(protocolFactory)).addErrback(self._report)

    async def _connect(self, protocol_factory: IProtocolFactory) -> Any:
        location = self.location
        if location.sentinels:
            host, port = await self.locate_primary()
            checks = [*auth_command(location), ("ROLE",)]
        else:
            host, port = location.host, location.port
            checks = [("PING",)]
        where = f"{host}:{port}"
        handshake = await self._open(host, port, checks, where)
        try:
            replies = await handshake.replies
        except RedisUnusable as error:
            raise RedisUnusable(f"the Redis server at {where} {error}") from None
        problem = auth_problem(replies[:-1]) or (role_problem(replies[-1]) if location.sentinels else None)
        if problem is not None:
            handshake.close()
            raise RedisUnusable(f"the Redis server at {where} {problem}"
                                + ("; asking the Sentinels again" if location.sentinels else ""))
        protocol = handshake.hand_over(protocol_factory)
        if protocol is None:
            raise RedisUnusable(f"the connection to the Redis server at {where} closed during its check")
        if self._last_problem is not None or (location.sentinels and self.primary != (host, port)):
            _log.info("connected to the Redis {role} at {where} ({location})",
                      role="primary" if location.sentinels else "server", where=where, location=str(location))
        self._last_problem = None
        self.primary = (host, port)
        return protocol

    async def _open(self, host: str, port: int, commands: Sequence[Command], where: str) -> _Handshake:
        endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if self.location.tls is not None:
            try:
                endpoint = wrapClientTLS(client_creator(self.location.tls, host), endpoint)
            except TLSFilesUnusable as error:
                raise RedisUnusable(str(error)) from None
        handshake = _Handshake(commands, self.reactor, self.timeout)
        try:
            await endpoint.connect(Factory.forProtocol(lambda: handshake))
        except defer.CancelledError:
            raise
        except Exception as error:
            raise RedisUnusable(f"cannot connect to {where}: {error}") from None
        return handshake

    async def locate_primary(self) -> tuple[str, int]:
        """
        Ask each Sentinel in turn where the primary is; the first answer wins.

        @raise RedisUnusable: none could say (each one's reason in the message).
        """
        location = self.location
        commands = [*sentinel_auth_command(location), primary_lookup_command(location)]
        reasons = []
        for host, port in location.sentinels:
            where = f"{host}:{port}"
            try:
                handshake = await self._open(host, port, commands, where)
                try:
                    replies = await handshake.replies
                finally:
                    handshake.close()
                problem = auth_problem(replies[:-1])
                if problem is not None:
                    raise RedisUnusable(problem)
                address = primary_address(replies[-1])
            except RedisUnusable as error:
                reasons.append(f"{where}: {error}")
                continue
            if address is None:
                reasons.append(f"{where}: knows no primary named {location.primary_name!r}")
                continue
            return address
        raise RedisUnusable(f"no Sentinel of {location} named the primary: {'; '.join(reasons)}")

    def _report(self, failure: Failure) -> Failure:
        # txredisapi retries with backoff and says nothing of why: say it,
        # once per new reason, so that a wrong CA is one clear line, not a
        # line (or a traceback) per attempt.
        if not failure.check(defer.CancelledError):
            problem = str(failure.value) if failure.check(RedisUnusable) else \
                f"cannot connect to Redis ({self.location}): {failure.value}"
            if problem != self._last_problem:
                self._last_problem = problem
                _log.warn("{problem}; retrying with backoff", problem=problem)
        return failure
