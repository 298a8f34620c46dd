"""
The backplane's two connections to Redis, through txredisapi: one for
commands (scripts, C{PUBLISH}) and one subscribed to the cluster's
channels. L{RedisConnections} keeps them up (reconnecting with backoff,
reloading the scripts, resubscribing) and tells its owner what happens
through L{ConnectionCallbacks}: when both are usable, when one is lost, when
the subscription is back and what arrives on it.

Replies are read and commands written with the backplane's own RESP codec
(L{appserver._redis.resp}) unless hiredis is installed.

Over TLS or through Sentinels every (re)connection goes through
L{RedisEndpoint <appserver._redis.sentinel.RedisEndpoint>}, which finds and
checks the primary each time; a command connection answered C{READONLY}
(its server was demoted while it stayed connected) is dropped so that the
next one finds the new primary. With C{?replicas=N} (the default with
Sentinels) a publish is acknowledged only once C{WAIT} says N replicas
have it, so that a failover keeps it (docs/scaling.md, "High availability").

txredisapi imports the reactor: this module is imported only when
C{--backplane redis://} is used.

Tests: tests/test_redis_cluster.py (a Redis restart, a lost connection);
tests/test_redis_sentinel.py (a failover); tests/test_redis_tls.py; the
codec in tests/test_redis_codec.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Sequence

import txredisapi
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._core.backplane import BackplaneUnavailable
from appserver._redis import scripts
from appserver._redis.keys import KeySpace
from appserver._redis.location import RedisLocation
from appserver._redis.resp import INCOMPLETE, MalformedReply, ReplyParser, encode_command
from appserver._redis.sentinel import RedisEndpoint

__all__ = ["ConnectionCallbacks", "RedisConnections", "CommandFactory", "BusFactory", "CONNECT_TIMEOUT"]

_log = Logger(namespace="appserver.redis")

#: Seconds a connection attempt may take before it counts as failed.
CONNECT_TIMEOUT = 5
#: Seconds a command may wait for its reply before it fails.
REPLY_TIMEOUT = 10
#: Seconds between two attempts to load the scripts after Redis refused one
#: on a connection that stays up: a Redis still loading its data set answers
#: C{LOADING} for a while; a script it cannot compile is refused every time.
SCRIPT_RETRY = 5.0


def _response_error(text: str) -> Exception:
    # The error txredisapi's own parser would give, so that its callers see
    # the same thing with either parser.
    return txredisapi.ResponseError(text[4:] if text.startswith("ERR ") else text)


class _FastReplies:
    """
    Mixed into the backplane's protocols: commands built in one go, and
    replies read with L{ReplyParser} when hiredis is not installed.
    """

    # Provided by the txredisapi protocol this is mixed into.
    replyReceived: Callable[[Any], None]
    transport: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replies = ReplyParser(_response_error)

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # Overrides txredisapi's builder, which costs more than the rest of a publish.
        return encode_command(*args)

    if txredisapi.hiredis is None:
        def dataReceived(self, data: bytes, unpause: bool = False) -> None:
            replies = self._replies
            replies.feed(data)
            while True:
                try:
                    reply = replies.gets()
                except MalformedReply as error:
                    _log.error("Redis sent what is not a reply ({error}): reconnecting", error=error)
                    self.transport.abortConnection()
                    return
                if reply is INCOMPLETE:
                    return
                self.replyReceived(reply)


class _ReportsConnections(txredisapi.RedisFactory):
    """
    A txredisapi factory that says when a connection joins its pool (ready
    for commands) and when one leaves: the two factories share this.
    """

    pool: Any
    up: Callable[[Any], None]
    down: Callable[[Any], None]

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn in self.pool:
            self.up(conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.down(conn)


class _CommandProtocol(_FastReplies, txredisapi.RedisProtocol):
    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, txredisapi.ResponseError) and str(reply).startswith("READONLY"):
            # The server was demoted under this connection (a failover it
            # did not die in): leave it, the next connection finds the
            # primary. The command itself fails as a publish would.
            _log.warn("the Redis server this node writes to became a replica: reconnecting to the primary")
            if self.transport is not None:
                self.transport.loseConnection()
        super().replyReceived(reply)


class CommandFactory(_ReportsConnections):
    """
    The command connection (a pool of one), reconnecting with backoff: soon
    after a blip, then every few seconds.

    @ivar up: called with a connection once it is connected (and selected
        its database); C{down}, when it is lost.
    """

    protocol = _CommandProtocol
    initialDelay = 0.5
    factor = 2.0
    maxDelay = 5.0

    def __init__(self, location: RedisLocation, up: Callable[[Any], None], down: Callable[[Any], None]) -> None:
        super().__init__(f"{location.host}:{location.port}", location.db, 1, isLazy=True,
                         charset=None, password=location.password, replyTimeout=REPLY_TIMEOUT,
                         convertNumbers=False, username=location.username)
        self.up = up
        self.down = down


class _BusProtocol(_FastReplies, txredisapi.SubscriberProtocol):
    factory: "BusFactory"

    def messageReceived(self, pattern: Any, channel: bytes, message: bytes) -> None:
        self.factory.message(channel, message)


class BusFactory(_ReportsConnections, txredisapi.SubscriberFactory):
    """
    The subscriber connection. txredisapi reconnects it but does not
    resubscribe: whoever C{up} calls does, each time.

    @ivar message: called with each message's channel and bytes.
    """

    protocol = _BusProtocol
    initialDelay = 0.5
    factor = 2.0
    maxDelay = 5.0

    def __init__(self, location: RedisLocation, up: Callable[[Any], None], down: Callable[[Any], None],
                 message: Callable[[bytes, bytes], None]) -> None:
        super().__init__(isLazy=True)
        self.charset = None
        self.convertNumbers = False
        self.password = location.password
        self.username = location.username
        self.up = up
        self.down = down
        self.message = message


_POSITION_SKIP = "the position skip after a failover"


@dataclass(frozen=True)
class _Refused:
    """
    Redis answered a script's C{SCRIPT LOAD} (or the position skip) with an
    error: C{what} it refused, and its C{message}.
    """

    what: str
    message: str


def _refusal(failure: Failure, what: str) -> _Refused:
    """
    An error reply from Redis becomes a L{_Refused} result; anything else
    (the connection failed) stays a failure.
    """
    failure.trap(txredisapi.ResponseError)
    return _Refused(what, str(failure.value))


@dataclass(frozen=True)
class ConnectionCallbacks:
    """
    What L{RedisConnections} tells its owner.

    @ivar ready: both connections are usable now (scripts loaded,
        channels subscribed): the owner catches up with what it missed.
    @ivar lost: a connection was lost; it comes back by itself.
    @ivar bus_connected: the subscriber connection is (re)connected: what
        arrives on it from now on is newer than what a catch-up will read,
        so the owner holds it until caught up.
    @ivar bus_message: a message arrived on a channel (channel, bytes).
    @ivar error: a command nobody waited for failed (what it did), for
        the node's metrics.
    """

    ready: Callable[[], None]
    lost: Callable[[], None]
    bus_connected: Callable[[], None]
    bus_message: Callable[[bytes, bytes], None]
    error: Callable[[str], None]


class RedisConnections:
    """
    The command and subscriber connections of one node, kept up.

    @ivar commands: the command connection once it has the scripts, else
        C{None}.
    @ivar subscribed: whether the subscriber connection listens to the
        channels now.
    @ivar refusals: what Redis refused at the last attempt to load the
        scripts on the current connection (C{the backplane's script
        'publish'}) and its message, for readiness: without its scripts a
        node is off the backplane, and must say why rather than look like a
        node whose Redis is down.
    """

    def __init__(self, location: RedisLocation, channels: Sequence[bytes], callbacks: ConnectionCallbacks,
                 reactor: Any) -> None:
        self.location = location
        self.channels = list(channels)
        self.callbacks = callbacks
        self.reactor = reactor
        self.commands: Any = None
        self.subscribed = False
        self._bus: Any = None
        self._factories: list[Any] = []
        # Whether the primary had ?replicas= replicas when last asked: a
        # publish waits for them only then (waiting for replicas that are
        # not there would hold the connection for replica_timeout each time).
        self.replicas_connected = True
        self._replica_check: LoopingCall | None = None
        # The (host, port) the command connection last wrote to.
        self._primary: tuple[str, int] | None = None
        self.refusals: dict[str, str] = {}
        # Refusals already logged (what, message): a retry or a reconnection
        # that meets the same one says nothing more.
        self._refusals_logged: set[tuple[str, str]] = set()
        self._script_retry: Any = None

    @property
    def ready(self) -> bool:
        """
        Whether both connections are usable.
        """
        return self.commands is not None and self.subscribed

    def start(self) -> None:
        """
        Start connecting (and reconnecting whenever a connection is lost).
        """
        location = self.location
        endpoint: Any
        if location.tls is None and not location.sentinels:
            endpoint = HostnameEndpoint(self.reactor, location.host, location.port, timeout=CONNECT_TIMEOUT)
        else:
            endpoint = RedisEndpoint(self.reactor, location, CONNECT_TIMEOUT)
        commands = CommandFactory(self.location, self._commands_up, self._commands_down)
        bus = BusFactory(self.location, self._bus_up, self._bus_down, self.callbacks.bus_message)
        for factory in (commands, bus):
            factory.startConnecting(endpoint)
            self._factories.append(factory)
        if location.replicas:
            self._replica_check = LoopingCall(self._count_replicas)
            self._replica_check.clock = self.reactor
            self._replica_check.start(location.heartbeat, now=False)

    @defer.inlineCallbacks
    def disconnect(self, timeout: float) -> Generator["defer.Deferred[Any]", Any, None]:
        """
        Close both connections and stop reconnecting, waiting at most
        C{timeout} seconds for each (a shutdown must not hang on a Redis
        that is gone).
        """
        if self._replica_check is not None and self._replica_check.running:
            self._replica_check.stop()
        self._cancel_script_retry()
        factories, self._factories = self._factories, []
        for factory in factories:
            try:
                yield factory.disconnect().addTimeout(timeout, self.reactor)
            except Exception:
                pass

    # Commands ---------------------------------------------------------------

    def eval(self, script: scripts.Script, keys: Sequence[Any], args: Sequence[Any]) -> "defer.Deferred[Any]":
        """
        Run a script (loaded on connection) by its SHA1.

        @return: a Deferred failing with L{BackplaneUnavailable} when not
            connected.
        """
        conn = self.commands
        if conn is None:
            return defer.fail(BackplaneUnavailable(f"not connected to Redis at {self.location}"))
        try:
            d: defer.Deferred[Any] = conn.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            if script is scripts.PUBLISH and self.location.replicas:
                if self.replicas_connected:
                    return self._replicated(conn, d)
                self.callbacks.error("replication")
        except Exception:
            return defer.fail()
        return d

    def _replicated(self, conn: Any, published: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
        """
        C{published}'s result once C{location.replicas} replicas have it:
        C{WAIT} right behind the script on the same connection covers the
        script's writes. When too few confirm within C{replica_timeout},
        the publish is acknowledged all the same (it is on the primary,
        and its subscribers have it already), with a warning and an
        error count: a failover now could lose it.
        """
        wanted = self.location.replicas
        waited: defer.Deferred[Any] = conn.execute_command(
            "WAIT", wanted, max(1, round(self.location.replica_timeout * 1000)))

        def confirmed(count: Any, reply: Any) -> Any:
            if int(count) < wanted:
                self.callbacks.error("replication")
                self._replicas_changed(int(count), f"within {self.location.replica_timeout:g}s")
            return reply

        def both(reply: Any) -> "defer.Deferred[Any]":
            return waited.addCallback(confirmed, reply)

        def script_failed(failure: Failure) -> Failure:
            waited.addErrback(lambda _: None)
            return failure

        return published.addCallbacks(both, script_failed)

    def publish(self, channel: bytes, message: bytes) -> bool:
        """
        C{PUBLISH} a message without waiting for Redis; whether it could be
        sent (a failure afterwards is reported like L{in_background}'s).
        """
        conn = self.commands
        if conn is None:
            return False
        try:
            d: defer.Deferred[Any] = conn.execute_command("PUBLISH", channel, message)
        except Exception:
            return False
        self.in_background(d, "PUBLISH")
        return True

    def in_background(self, d: "defer.Deferred[Any]", what: str) -> None:
        """
        Nobody waits for C{d}: a failure is logged and reported to the
        owner (L{ConnectionCallbacks.error}) rather than lost.
        """
        def failed(failure: Failure) -> None:
            self.callbacks.error(what)
            _log.warn("backplane: {what} failed: {error}", what=what, error=failure.value)

        d.addErrback(failed)

    def _skip_positions_after_failover(self, conn: Any, primary: tuple[str, int]) -> "defer.Deferred[Any]":
        """
        Before this node publishes through a new primary: move the
        cluster's position L{scripts.POSITION_GAP} ahead. A message the old
        primary fanned out but never replicated has a position the new
        primary would give again; a node that delivered it would take the
        new message for one it already had. Each node that sees the
        failover does it once; gaps in positions are harmless.
        """
        _log.info("the Redis primary changed to {host}:{port}: positions skip {gap} ahead",
                  host=primary[0], port=primary[1], gap=scripts.POSITION_GAP)
        position_key = KeySpace(self.location.prefix, self.location.db, node_id="").pos
        d: defer.Deferred[Any] = defer.maybeDeferred(
            conn.execute_command,
            "EVAL", "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('INCRBY', KEYS[1], ARGV[1]) end",
            1, position_key, scripts.POSITION_GAP)
        return d

    def _count_replicas(self) -> None:
        """
        Ask the primary (C{ROLE}) how many replicas it has, to know whether
        publishes wait for them (every heartbeat while C{?replicas=} is set).
        """
        conn = self.commands
        if conn is None:
            return
        try:
            d: defer.Deferred[Any] = conn.execute_command("ROLE")
        except Exception:
            return

        def counted(reply: Any) -> None:
            if isinstance(reply, list) and len(reply) >= 3 and reply[0] in (b"master", "master"):
                self._replicas_changed(len(reply[2]), "connected")

        d.addCallbacks(counted, lambda failure: None)

    def _replicas_changed(self, count: int, how: str) -> None:
        wanted = self.location.replicas
        enough = count >= wanted
        if enough == self.replicas_connected:
            return
        self.replicas_connected = enough
        if enough:
            _log.info("the Redis primary has {count} replica(s) again: publishes are acknowledged once "
                      "{wanted} have them", count=count, wanted=wanted)
        else:
            _log.warn("the Redis primary has {count} of the {wanted} replica(s) publishes wait for ({how}): "
                      "publishes are acknowledged without them until they are back, and a failover "
                      "meanwhile could lose them", count=count, wanted=wanted, how=how)

    # What the factories report ----------------------------------------------

    def _commands_up(self, conn: Any) -> None:
        peer = conn.transport.getPeer()
        primary = (getattr(peer, "host", ""), getattr(peer, "port", 0))
        failover = bool(self.location.sentinels) and self._primary is not None and primary != self._primary
        self._primary = primary
        self._prepare(conn, failover)

    def _prepare(self, conn: Any, failover: bool) -> None:
        """
        Load every script into Redis (and after a failover, move positions
        ahead), then use C{conn} for commands. A refusal (a script Redis
        cannot compile, or C{LOADING} after a restart) keeps this node off
        the backplane, loudly (L{_refused}), and is tried again on the same
        connection every L{SCRIPT_RETRY} seconds: nothing else would, since
        the connection itself is fine.
        """
        def load(script: scripts.Script) -> "defer.Deferred[Any]":
            d: defer.Deferred[Any] = defer.maybeDeferred(conn.execute_command, "SCRIPT", "LOAD", script.source)
            return d.addErrback(_refusal, f"the backplane's script {script.name!r}")

        loads = [load(script) for script in scripts.ALL]
        if failover:
            loads.append(self._skip_positions_after_failover(conn, self._primary or ("", 0))
                         .addErrback(_refusal, _POSITION_SKIP))

        def prepared(results: list[Any]) -> None:
            refusals = {r.what: r.message for r in results if isinstance(r, _Refused)}
            if refusals:
                self._refused(conn, refusals, failover)
                return
            self.refusals = {}
            if self._refusals_logged:
                _log.info("Redis accepted the backplane's scripts: joining the cluster")
                self._refusals_logged.clear()
            if conn.connected:
                self.commands = conn
                if self.location.replicas:
                    self._count_replicas()      # a new primary may have none yet
                if self.ready:
                    self.callbacks.ready()

        def failed(failure: Failure) -> None:
            # Not a refusal: the connection failed under the loads, and its
            # loss brings the next one.
            error = failure.value.subFailure.value if isinstance(failure.value, defer.FirstError) \
                else failure.value
            _log.warn("cannot load the backplane's scripts into Redis: {error}", error=error)

        defer.gatherResults(loads, consumeErrors=True).addCallbacks(prepared, failed)

    def _refused(self, conn: Any, refusals: dict[str, str], failover: bool) -> None:
        """
        Redis refused scripts on a live connection: each refusal is logged
        once as an error naming the script and Redis's message (a retry
        meeting the same one stays quiet), readiness names them, and the
        loads are tried again later on the same connection.
        """
        self.refusals = refusals
        for what, message in sorted(refusals.items()):
            if (what, message) not in self._refusals_logged:
                self._refusals_logged.add((what, message))
                _log.error("Redis refused {what}: {error}. This node stays off the backplane (serving its own "
                           "clients only) and tries again every {retry:g}s", what=what, error=message,
                           retry=SCRIPT_RETRY)

        def retry() -> None:
            self._script_retry = None
            if conn.connected and self.commands is None:
                # A position skip that went through is not made twice.
                self._prepare(conn, failover and _POSITION_SKIP in refusals)

        self._cancel_script_retry()
        self._script_retry = self.reactor.callLater(SCRIPT_RETRY, retry)

    def _cancel_script_retry(self) -> None:
        if self._script_retry is not None and self._script_retry.active():
            self._script_retry.cancel()
        self._script_retry = None

    def _commands_down(self, conn: Any) -> None:
        if self.commands is conn:
            self.commands = None
        self.refusals = {}
        self._cancel_script_retry()
        self.callbacks.lost()

    def _bus_up(self, conn: Any) -> None:
        self._bus = conn
        self.callbacks.bus_connected()

        def subscribed(_: object) -> None:
            if self._bus is conn:
                self.subscribed = True
                if self.ready:
                    self.callbacks.ready()

        def failed(failure: Failure) -> None:
            _log.warn("subscribing to the backplane's channels failed: {error}; retrying on reconnect",
                      error=failure.value)
            if conn.transport is not None:
                conn.transport.loseConnection()

        conn.subscribe(self.channels).addCallbacks(subscribed, failed)

    def _bus_down(self, conn: Any) -> None:
        if self._bus is conn:
            self._bus = None
            self.subscribed = False
        self.callbacks.lost()
