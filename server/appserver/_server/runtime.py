"""
Everything the sites of one server share, in one object passed to each.

The L{ClientTracker} is the shared state; the L{Runtime} adds the services
that act on it (dispatcher, origin policy, connection limits) and the
settings, so a site's constructor takes one argument and no site reaches for
a global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from appserver._server.admission import Admission
from appserver._server.app import App
from appserver._server.coroutines import call
from appserver._core.backplane import IBackplane
from appserver._core.memory import MemoryBackplane
from appserver._server.dispatch import Dispatcher
from appserver._server.limits import ConnectionLimiter, TokenBucket
from appserver._server.origins import OriginPolicy
from appserver._server.proxies import TrustedProxies
from appserver._server.settings import Settings
from appserver._core.tracker import ClientTracker, TrackerEvents, TrackerLimits

__all__ = ["Runtime", "build_runtime", "make_backplane"]


@dataclass
class Runtime:
    """
    @ivar site_ports: the port of each site by name (C{static}, C{ajax},
        C{ws} or C{single}), filled in as each starts listening.
    @ivar own_ports: ports this server listens on, filled in as each site
        starts listening (the origin policy needs them, and C{tcp:0}
        endpoints only know theirs then).
    @ivar accepting: cleared at shutdown so new connections and sessions
        are refused while the existing ones are told to go elsewhere.
    @ivar readiness_checks: callables returning the reasons this server
        should not get new clients (empty when ready), or a Deferred of
        them; C{GET /readyz} runs them all (see L{appserver._web.health}).
    @ivar proxies: the C{--trusted-proxy} list, which tells transports the
        client address of a forwarded request.
    """

    settings: Settings
    tracker: ClientTracker
    dispatcher: Dispatcher
    app: App
    reactor: Any
    origins: OriginPolicy
    limiter: ConnectionLimiter
    own_ports: set[int] = field(default_factory=set)
    site_ports: dict[str, int] = field(default_factory=dict)
    accepting: bool = True
    sessions: Any = None
    metrics: Any = None
    readiness_checks: list[Callable[[], Any]] = field(default_factory=list)
    proxies: TrustedProxies = field(default_factory=TrustedProxies)
    admission: Admission = field(init=False)

    def __post_init__(self) -> None:
        self.admission = Admission(self)

    def authenticate(self, info: dict[str, Any]) -> Deferred[dict[str, Any] | None]:
        """
        Run the application's authentication hooks on a new connection.

        @return: a Deferred firing with the attributes to store on the
            client, or C{None} when a hook refused.
        """
        async def run() -> dict[str, Any] | None:
            attributes: dict[str, Any] = {}
            for hook in self.app.authenticators:
                verdict = await call(hook, info, reactor=self.reactor)
                if not verdict:
                    return None
                if isinstance(verdict, dict):
                    attributes.update(verdict)
            return attributes
        return ensureDeferred(run())

    def new_bucket(self) -> TokenBucket | None:
        """
        A rate limiter for one new client, or C{None} when rate limiting is
        off.
        """
        rate = self.settings.rate_limit
        if rate <= 0:
            return None
        return TokenBucket(rate, max(1.0, rate * 2), self.reactor.seconds)


def make_backplane(settings: Settings, reactor: Any) -> IBackplane:
    """
    The backplane named by C{--backplane}: C{memory://} or
    C{redis://host:port/db} (and its TLS and Sentinel forms). The Redis backplane is imported only when
    asked for: its client library imports the reactor, which must not
    happen before C{twistd} has installed the one it was told to use.

    @raise ValueError: the URL names no known backplane.
    """
    url = settings.backplane or "memory://"
    # Not urlsplit: a Sentinel URL's list of hosts is no URL host, and some
    # Python releases refuse it (appserver._redis.location reads it).
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if url in ("memory", "memory://") or scheme == "memory":
        return MemoryBackplane()
    if scheme in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
        try:
            from appserver._redis.backplane import RedisBackplane
        except ModuleNotFoundError as error:
            if (error.name or "appserver").startswith("appserver"):
                raise
            raise ValueError(f"--backplane {scheme}://...: the Redis backplane needs {error.name}, from appserver's "
                             f'redis extra: run pip install "appserver[redis]"') from None
        return RedisBackplane.from_settings(settings, reactor)
    raise ValueError(f"--backplane {url!r}: use memory:// or redis://host:port/db (rediss:// for TLS, "
                     f"redis+sentinel://sentinel:26379/primary-name/db for Sentinel)")


def build_runtime(settings: Settings, app: App, reactor: IReactorTime,
                  events: TrackerEvents | None = None,
                  wall_clock: Callable[[], float] | None = None) -> Runtime:
    """
    Build the shared state and services of one server from its settings.
    """
    tracker = ClientTracker(
        TrackerLimits(
            max_queue_messages=settings.max_queue_messages,
            max_queue_bytes=settings.max_queue_bytes,
            max_channels_per_client=settings.max_channels_per_client,
            max_rooms_per_client=settings.max_rooms_per_client,
            history_size=settings.history_size,
            history_age=settings.history_age,
            history_bytes=settings.history_bytes,
            default_policy=settings.queue_policy,
        ),
        clock=wall_clock or reactor.seconds,
        events=events,
        backplane=make_backplane(settings, reactor),
    )
    for pattern, policy in app.channel_policies:
        tracker.set_policy(pattern, policy)
    own_ports: set[int] = set()

    def ports() -> Iterable[int]:
        return own_ports

    runtime = Runtime(
        settings=settings,
        tracker=tracker,
        dispatcher=Dispatcher(tracker, app, reactor),
        app=app,
        reactor=reactor,
        origins=OriginPolicy(settings.allowed_origin, ports, settings.server_name),
        limiter=ConnectionLimiter(settings.max_connections, settings.max_connections_per_ip),
        own_ports=own_ports,
        proxies=TrustedProxies(settings.trusted_proxy),
    )
    return runtime
