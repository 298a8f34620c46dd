"""
The Python application API: what a user writes to put their own code behind
the messages.

An L{App} only records what the application wants (handlers, Ajax routes,
tasks, raw WebSocket endpoints, channel rules); the service wires it to the
tracker and the sites when it starts. Nothing here touches the reactor, so an
application module can be imported anywhere, tests included.

    from appserver import App

    app = App()

    @app.handler("hello")
    def hello(ctx, data):
        return {"greeting": f"hello {data}"}      # sent back to the caller

    @app.every(1.0)
    def clock(server):
        server.broadcast("clock", time.ctime())
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from appserver._core.envelope import Envelope
from appserver._core.outbound import POLICIES

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.server import Request

    from appserver._core.client import Client
    from appserver._core.tracker import ClientTracker

__all__ = ["App", "Context", "RouteRequest", "HTTPError", "Route", "load_app"]


class HTTPError(Exception):
    """
    Raised by an Ajax route to answer with an error status and a JSON error
    body C{{"error": {"code": code, "message": message}}}.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Context:
    """
    What a message handler gets besides the message's C{data}.

    @ivar client: the client that sent the message.
    @ivar server: the shared L{ClientTracker}: C{server.broadcast},
        C{server.publish}, C{server.send_to}, C{server.send_to_room}.
    @ivar envelope: the whole validated message.
    @ivar reactor: to schedule work (C{ctx.reactor.callLater}).
    """

    client: "Client"
    server: "ClientTracker"
    envelope: Envelope
    reactor: "IReactorTime"

    def send(self, message_type: str, data: Any = None) -> None:
        """
        Send an envelope to the calling client only.
        """
        self.server.send_to(self.client, {"type": message_type, "data": data})


@dataclass
class RouteRequest:
    """
    What an Ajax route handler gets.

    @ivar args: query arguments, first value of each, decoded as UTF-8.
    @ivar body: the decoded JSON body of a POST (C{None} for GET).
    """

    args: dict[str, str]
    body: Any
    server: "ClientTracker"
    request: "Request"
    reactor: "IReactorTime"


@dataclass(frozen=True)
class Route:
    path: str
    handler: Callable[[RouteRequest], Any]
    methods: tuple[str, ...]


@dataclass
class App:
    """
    An application: a set of handlers and tasks, possibly including others
    (L{include}); the server runs exactly one, by default the demo gallery.
    """

    name: str = "app"
    handlers: dict[str, Callable[..., Any]] = field(default_factory=dict)
    routes: dict[str, Route] = field(default_factory=dict)
    startup: list[Callable[..., Any]] = field(default_factory=list)
    shutdown: list[Callable[..., Any]] = field(default_factory=list)
    periodic: list[tuple[float, Callable[..., Any]]] = field(default_factory=list)
    endpoints: dict[str, type] = field(default_factory=dict)
    publish_rules: list[tuple[str, bool | Callable[..., bool]]] = field(default_factory=list)
    channel_policies: list[tuple[str, str]] = field(default_factory=list)
    authenticators: list[Callable[..., Any]] = field(default_factory=list)
    #: Free for the application: the state its handlers and tasks share, kept
    #: on the App rather than in module globals so two servers in one process
    #: (tests) keep theirs apart.
    state: Any = None

    def handler(self, message_type: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """
        Decorator: run C{function(ctx, data)} for every message of this type.
        It may be a plain function, an C{async def}, or return a Deferred;
        a result other than C{None} (or any result, when the request has an
        C{id}) is sent back as a C{reply}. An exception is logged and
        answered with an C{error} envelope.
        """
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self.handlers[message_type] = function
            return function
        return register

    def route(self, path: str, methods: tuple[str, ...] = ("GET",)
              ) -> Callable[[Callable[[RouteRequest], Any]], Callable[[RouteRequest], Any]]:
        """
        Decorator: serve C{function(request)} at C{path} on the Ajax site.
        Its return value is sent as JSON, or JSONP when the query has
        C{callback}; raise L{HTTPError} for an error status.
        """
        if not path.startswith("/") or path.count("/") != 1 or len(path) < 2:
            raise ValueError(f"route path must be a single segment like '/price', not {path!r}")

        def register(function: Callable[[RouteRequest], Any]) -> Callable[[RouteRequest], Any]:
            self.routes[path] = Route(path, function, tuple(m.upper() for m in methods))
            return function
        return register

    def on_startup(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """
        Decorator: call C{function(server, reactor)} when the service starts
        (it may return a Deferred or be C{async}).
        """
        self.startup.append(function)
        return function

    def on_shutdown(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """
        Decorator: call C{function(server, reactor)} when the service stops.
        """
        self.shutdown.append(function)
        return function

    def every(self, seconds: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """
        Decorator: call C{function(server)} every C{seconds} while the
        server runs. A failure is logged and the task keeps running.
        """
        if seconds <= 0:
            raise ValueError("a periodic task needs a positive interval")

        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            self.periodic.append((seconds, function))
            return function
        return register

    def endpoint(self, path: str) -> Callable[[type], type]:
        """
        Class decorator: serve a raw WebSocket protocol (a subclass of
        L{appserver._web.websocket.TrackedProtocol}) at C{path} of the WebSocket
        site. It gets the server's size limits, pings and origin policy and
        is counted as a client.
        """
        if not path.startswith("/") or path.count("/") != 1 or len(path) < 2:
            raise ValueError(f"endpoint path must be a single segment like '/echo', not {path!r}")

        def register(protocol: type) -> type:
            self.endpoints[path] = protocol
            return protocol
        return register

    def allow_publish(self, pattern: str, rule: bool | Callable[..., bool] = True) -> None:
        """
        Decide whether clients may publish on channels matching C{pattern}:
        C{True}, C{False}, or C{rule(client, channel, data) -> bool}. Later
        rules take precedence. Without a matching rule clients may publish
        (chat-style channels); server code may always publish.
        """
        self.publish_rules.insert(0, (pattern, rule))

    def may_publish(self, client: "Client", channel: str, data: Any) -> bool:
        for pattern, rule in self.publish_rules:
            if fnmatch.fnmatchcase(channel, pattern):
                return rule(client, channel, data) if callable(rule) else bool(rule)
        return True

    def channel_policy(self, pattern: str, policy: str) -> None:
        """
        What to do when a slow client's queue is full on channels matching
        C{pattern}: C{disconnect}, C{drop-oldest} or C{conflate} (publish
        with a C{key} to conflate per key).
        """
        if policy not in POLICIES:
            raise ValueError(f"{policy!r} is not a policy; use one of {', '.join(POLICIES)}")
        self.channel_policies.append((pattern, policy))

    def authenticate(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """
        Decorator: C{function(request_info) -> bool | dict} decides whether a
        WebSocket connection or Ajax session may open. C{request_info} has
        C{query} (dict of lists), C{headers} (lowercase names), C{cookies},
        C{peer} and C{origin}. A false result refuses (close 1008 / HTTP
        403); a dict is stored in C{client.attributes}. It may return a
        Deferred.
        """
        self.authenticators.append(function)
        return function

    def include(self, other: "App") -> "App":
        """
        Add another application's handlers, routes, tasks and rules to this
        one (this one's own definitions win on a clash).
        """
        for message_type, function in other.handlers.items():
            self.handlers.setdefault(message_type, function)
        for path, route in other.routes.items():
            self.routes.setdefault(path, route)
        for path, protocol in other.endpoints.items():
            self.endpoints.setdefault(path, protocol)
        self.startup.extend(other.startup)
        self.shutdown.extend(other.shutdown)
        self.periodic.extend(other.periodic)
        self.publish_rules.extend(other.publish_rules)
        self.channel_policies.extend(other.channel_policies)
        self.authenticators.extend(other.authenticators)
        return self


def _import_failure(reference: str, module_name: str, error: ImportError) -> str:
    """
    Why C{--app} could not be imported, naming where Python looked when the
    module itself was not found (the usual mistake: running from another
    directory).
    """
    missing = getattr(error, "name", None)
    top = module_name.split(".")[0]
    if isinstance(error, ModuleNotFoundError) and missing in (module_name, top):
        directory = os.getcwd()
        searched = f"the current directory ({directory}) or the installed packages" \
            if directory in sys.path or "" in sys.path else "the installed packages"
        return (f"--app {reference}: cannot import {module_name!r}: no module {missing!r} in {searched}; "
                f"run from the directory that holds {top}.py, or install it")
    return f"--app {reference}: cannot import {module_name!r}: {error}"


def load_app(reference: str) -> App:
    """
    Import C{"package.module:attribute"} and return the L{App} it names.

    @raise ValueError: with a message saying what is wrong with the
        reference, so twistd can print it.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--app must look like package.module:app, not {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(_import_failure(reference, module_name, error)) from None
    except Exception as error:
        # The module itself is broken (SyntaxError, NameError...): where, in one line.
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        at = f" at {where.filename}:{where.lineno}" if where is not None else ""
        if isinstance(error, SyntaxError) and error.filename:
            at = f" at {error.filename}:{error.lineno}"
        raise ValueError(f"--app {reference}: importing {module_name!r} failed{at}: "
                         f"{type(error).__name__}: {error}") from None
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"--app {reference}: module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(app, App):
        raise ValueError(f"--app {reference}: {attribute!r} is a {type(app).__name__}, not an appserver.App")
    return app
