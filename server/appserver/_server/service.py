"""
The twistd service: one runtime (one tracker) and the sites that share it,
the application's tasks, and a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import random
from typing import Any, Callable, Protocol

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from appserver._core.backplane import BackplaneUnavailable
from appserver._server.coroutines import TaskScope, asyncio_loop, call, spawn_scope
from appserver._server.persistence import load_state, save_state
from appserver._server.runtime import Runtime

__all__ = ["AppServerService", "SiteService", "StartupError", "SITE_OPTIONS"]

#: Module level with a fixed name: a class attribute would be named after
#: its (private) module.
_log = Logger(namespace="appserver.service")

#: Clients told to reconnect at shutdown spread their returns over this many
#: milliseconds, so a restarted server is not hit by all of them at once.
RECONNECT_SPREAD_MS = (500, 3000)


#: Twisted's default listen backlog is 50: a burst of reconnects after a
#: restart would wait for SYN retries. Used when the endpoint names none.
DEFAULT_BACKLOG = 1024


#: The command-line option that sets each site's endpoint.
SITE_OPTIONS = {"static": "--static", "ajax": "--ajax", "ws": "--ws", "single": "--listen"}


class StartupError(Exception):
    """
    The server cannot start. The message is one line for the operator: what
    failed and which option to change. The C{appserver} command and
    C{twistd appserver} print it instead of a traceback.
    """


def _listen_failure(name: str, description: str, error: BaseException | None) -> StartupError:
    """
    Why a site could not listen, and the option that moves it.
    """
    option = SITE_OPTIONS.get(name, f"--{name}")
    cause = getattr(error, "socketError", None) or error
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        reason = "the address is already in use (another appserver, or another program, listens there)"
    elif code == errno.EACCES:
        reason = "permission denied (ports below 1024 need privileges)"
    elif code == errno.EADDRNOTAVAIL:
        reason = "this machine has no such address"
    else:
        reason = str(getattr(cause, "strerror", None) or cause)
    parts = description.split(":")
    example = f"tcp:{int(parts[1]) + 100}" if len(parts) > 1 and parts[1].isdigit() and parts[1] != "0" \
        else "tcp:0"
    return StartupError(f"the {name} site cannot listen on {description}: {reason}; "
                        f"pass {option} with another endpoint (for example {option} {example})")


def with_default_backlog(description: str) -> str:
    """
    Add C{backlog=DEFAULT_BACKLOG} to a C{tcp:} or C{ssl:} endpoint string
    that does not set one.
    """
    kind = description.split(":", 1)[0]
    if kind in ("tcp", "ssl", "tcp6") and "backlog=" not in description:
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


class _DrainingSite(Protocol):
    """
    What the graceful shutdown asks of a site (L{appserver._web.site.LoggingSite}).
    """

    def drain(self) -> None: ...

    def busy_connections(self) -> int: ...

    def close_idle_connections(self) -> None: ...

    def open_connections(self) -> int: ...

    def abort_connections(self) -> None: ...


def _freeze_startup_heap() -> None:
    """
    Collect start-up's garbage, then freeze what is left (see
    L{AppServerService.freeze_startup_heap}).
    """
    gc.collect()
    gc.freeze()
    _log.debug("{count} start-up objects left the garbage collector's generations", count=gc.get_freeze_count())


class SiteService(Service):
    """
    Listens on one endpoint with one site; knows its port once listening.
    """

    #: Always set: C{__init__} names the service.
    name: str

    def __init__(self, name: str, description: str, site: Any, reactor: Any,
                 on_listening: Callable[[str, IListeningPort], None]) -> None:
        self.setName(name)
        self.description = description
        self.site = site
        self.reactor = reactor
        self.on_listening = on_listening
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        endpoint = serverFromString(self.reactor, with_default_backlog(self.description))
        outcome: list[Any] = []
        endpoint.listen(self.site).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"the {self.name} site did not start listening on {self.description} at start-up")
        result = outcome[0]
        if isinstance(result, Failure):
            raise _listen_failure(self.name, self.description, result.value)
        self.port = result
        self.on_listening(self.name, result)

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class AppServerService(MultiService):
    """
    The whole server: the runtime's life cycle (state file, backplane, the
    application's tasks and hooks, graceful shutdown) around one
    L{SiteService} per listening port. L{appserver.tap.build_service}
    builds it.

    @ivar ports: the port each site listens on, by site name, once started.
    @ivar addresses: the address each site listens on, by site name.
    @ivar banner: when set, what to log once every site listens (the
        command line sets it: which application runs and the URLs to open).
    @ivar exit_on_startup_error: under twistd, turn a L{StartupError} into
        one logged line and exit status 1 instead of a traceback.
    @ivar freeze_startup_heap: the process is the server's own (twistd or
        the C{appserver} command): once it serves, move what start-up
        loaded (modules, the application, the sites) out of the garbage
        collector's generations (L{gc.freeze}). They live as long as the
        process anyway, and a full collection, which stops every
        connection while it runs, then scans only what connections and
        messages allocate. Off when the service is embedded (tests), where
        it would keep the host's objects from ever being collected.
    """

    banner: Callable[[], str] | None = None
    exit_on_startup_error = False
    freeze_startup_heap = False

    def __init__(self, runtime: Runtime) -> None:
        super().__init__()
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.settings = runtime.settings
        self.app = runtime.app
        self.ports: dict[str, int] = runtime.site_ports
        self.addresses: dict[str, IPv4Address | IPv6Address] = {}
        self._tasks: list[LoopingCall] = []
        #: Periodic tasks' runs and start-up hooks not finished yet.
        self._running: set[defer.Deferred[Any]] = set()
        #: The asyncio tasks start-up hooks created (their consumers,
        #: listeners...): cancelled and awaited at shutdown.
        self._spawned = TaskScope()
        self._stopping = False
        self.runtime.readiness_checks.extend([self._sites_not_listening, runtime.tracker.backplane.not_ready])

    def add_site(self, name: str, description: str, site: Any) -> None:
        """
        Listen on C{description} with C{site} while the service runs.
        """
        SiteService(name, description, site, self.reactor, self._listening).setServiceParent(self)

    def _listening(self, name: str, port: IListeningPort) -> None:
        address = port.getHost()
        # Sites listen on TCP endpoints (tcp:, tcp6:, ssl:), whose address has a port.
        assert isinstance(address, (IPv4Address, IPv6Address))
        number = address.port
        self.addresses[name] = address
        self.ports[name] = number
        self.runtime.own_ports.add(number)
        _log.info("appserver {site} site listening on port {port}", site=name, port=number)

    def _sites_not_listening(self) -> list[str]:
        """
        Readiness: every site must be listening.
        """
        return [f"the {site.name} site is not listening on {site.description}"
                for site in self if isinstance(site, SiteService)
                and (site.port is None or not getattr(site.port, "connected", True))]

    # Life cycle -----------------------------------------------------------

    def startService(self) -> None:
        """
        Start everything, or fail with a L{StartupError} saying what to
        change.
        """
        try:
            self._start()
        except (StartupError, BackplaneUnavailable) as error:
            if not self.exit_on_startup_error:
                raise
            _log.critical("appserver cannot start: {reason}", reason=str(error))
            raise SystemExit(1) from None
        if self.banner is not None:
            # Once the reactor runs: serving, and Ctrl-C handled by then.
            self.reactor.callWhenRunning(self._announce)
        if self.freeze_startup_heap:
            # Once running, before the first connection is accepted: what
            # connections allocate must stay collectable (a frozen object is
            # never collected, even when it becomes garbage).
            self.reactor.callWhenRunning(_freeze_startup_heap)

    def _announce(self) -> None:
        if self.banner is not None and self.running:
            _log.info("{banner}", banner=self.banner())

    def _start(self) -> None:
        state_file = self._state_file()
        if state_file:
            # Before listening: the first client must already see the old epoch.
            load_state(self.runtime.tracker, state_file)
        # Before listening too: a Redis backplane that cannot be reached stops
        # the start (BackplaneUnavailable says what to fix).
        self.runtime.tracker.backplane.start()
        super().startService()
        tracker = self.runtime.tracker
        for seconds, function in self.app.periodic:
            self._start_task(seconds, function)
        self._start_task(30.0, lambda _: tracker.sweep(), name="history sweep")
        loop = asyncio_loop(self.reactor)
        if loop is not None and self.app.startup:
            self._spawned.install(loop)
        for hook in self.app.startup:
            started = spawn_scope(self._spawned, lambda: call(hook, tracker, self.reactor, reactor=self.reactor))
            self._keep(started).addErrback(self._startup_hook_failed, hook)

    def _startup_hook_failed(self, failure: Failure, hook: Callable[..., Any]) -> None:
        """
        Log a startup hook's failure; the server starts anyway.
        """
        if self._stopping and failure.check(defer.CancelledError, asyncio.CancelledError):
            return  # still running at shutdown, and cancelled
        _log.failure("startup hook {hook} failed", failure, hook=getattr(hook, "__name__", hook))

    def _keep(self, running: defer.Deferred[Any]) -> defer.Deferred[Any]:
        """
        Remember C{running} (a task's run, a start-up hook) until it ends,
        to cancel it at shutdown.
        """
        if running.called:
            return running
        self._running.add(running)

        def ended(outcome: Any) -> Any:
            self._running.discard(running)
            return outcome
        return running.addBoth(ended)

    def _start_task(self, seconds: float, function: Callable[[Any], Any], name: str | None = None) -> None:
        tracker = self.runtime.tracker
        label = name or getattr(function, "__name__", repr(function))

        def failed(failure: Failure) -> None:
            if self._stopping and failure.check(defer.CancelledError, asyncio.CancelledError):
                return  # cancelled by the shutdown
            _log.failure("periodic task {task} failed; it keeps running", failure, task=label)

        def run() -> Any:
            # The next run waits for this one (LoopingCall), whatever its kind.
            return self._keep(call(function, tracker, reactor=self.reactor)).addErrback(failed)

        loop = LoopingCall(run)
        loop.clock = self.reactor
        loop.start(seconds, now=False).addErrback(
            lambda failure: _log.failure("periodic task {task} stopped", failure, task=label))
        self._tasks.append(loop)

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Graceful shutdown: refuse newcomers, tell every client to reconnect
        after a jittered delay, close WebSockets with 1001, answer pending
        polls, stop listening, drain (answer every request being processed,
        close idle connections), and give connections C{shutdown-timeout}
        seconds to go before cutting the rest.
        """
        runtime = self.runtime
        runtime.accepting = False
        self._stopping = True
        for loop in self._tasks:
            if loop.running:
                loop.stop()
        self._tasks.clear()
        yield self._cancel_tasks()
        tracker = runtime.tracker
        clients = list(tracker.clients.values())
        if clients:
            _log.info("shutting down: telling {count} clients to reconnect", count=len(clients))
        for client in clients:
            after_ms = random.randint(*RECONNECT_SPREAD_MS)
            tracker.send_to(client, {"type": "reconnect", "data": {"after_ms": after_ms}})
        for client in clients:
            if client.transport != "ajax":
                client.close(1001, "server shutting down")
        if runtime.sessions is not None:
            # A waiting poll is answered with its reconnect envelope and the close.
            runtime.sessions.close_all(1001, "server shutting down")
        yield super().stopService()
        # Drain: the requests being processed are answered before the exit
        # (a publish applied must reach its publisher); then idle
        # connections close, after their last answer was written.
        sites: list[_DrainingSite] = [child.site for child in self
                                      if isinstance(child, SiteService) and hasattr(child.site, "drain")]
        for site in sites:
            site.drain()
        deadline = self.reactor.seconds() + self.settings.shutdown_timeout
        while (tracker.client_count or any(site.busy_connections() for site in sites)) \
                and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.05, lambda: None)
        for site in sites:
            site.close_idle_connections()
        while any(site.open_connections() for site in sites) and self.reactor.seconds() < deadline:
            yield deferLater(self.reactor, 0.05, lambda: None)
        for site in sites:
            if site.open_connections():
                _log.warn("shutdown: cutting {count} HTTP connections still open after {timeout} s",
                          count=site.open_connections(), timeout=self.settings.shutdown_timeout)
                site.abort_connections()
        for client in list(tracker.clients.values()):
            protocol = getattr(client, "protocol", None)
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
        for hook in self.app.shutdown:
            try:
                yield call(hook, tracker, self.reactor, reactor=self.reactor)
            except Exception:
                _log.failure("shutdown hook {hook} failed", hook=getattr(hook, "__name__", hook))
        state_file = self._state_file()
        if state_file:
            save_state(tracker, state_file)
        yield tracker.backplane.stop()

    def _cancel_tasks(self) -> defer.Deferred[Any]:
        """
        Cancel the periodic tasks' runs, the start-up hooks still running
        and the asyncio tasks they spawned, and wait for them to end, at
        most C{shutdown-timeout} seconds (a coroutine that ignores its
        cancellation is left behind with a warning).
        """
        ending = [running.addErrback(lambda failure: None) for running in list(self._running)]
        for running in list(self._running):
            running.cancel()
        ending.extend(self._spawned.cancel_all())
        if not ending:
            return defer.succeed(None)
        everything = defer.DeferredList(ending, consumeErrors=True)
        timeout = self.settings.shutdown_timeout

        def late() -> None:
            _log.warn("shutdown: {count} application tasks still running {timeout} s after their cancellation",
                      count=len(self._running) + len(self._spawned.tasks), timeout=timeout)
            waited.cancel()
        waited: defer.Deferred[Any] = defer.Deferred()
        timer = self.reactor.callLater(timeout, late)

        def done(result: Any) -> None:
            if timer.active():
                timer.cancel()
            if not waited.called:
                waited.callback(None)
        everything.addBoth(done)
        return waited.addErrback(lambda failure: None)

    def _state_file(self) -> str | None:
        """
        The C{--state-file} to use: none with a clustered backplane, which
        keeps epoch, positions and histories itself.
        """
        path = self.settings.state_file
        if path and self.runtime.tracker.backplane.clustered:
            _log.warn("--state-file {path} is ignored: the {backplane} backplane keeps the stream",
                          path=path, backplane=self.settings.backplane)
            return None
        return path
