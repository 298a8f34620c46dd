"""
The resource trees of the server's sites and the C{Site} each listens with.

Three sites by default (static pages, Ajax, WebSocket), each on its own
port; with C{--listen} one port serves the static tree with the Ajax tree
under C{/ajax} and the WebSocket tree under C{/ws}. Every tree is built
from the one runtime, so all sites share one tracker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.resource import Resource
from twisted.web.server import Request

from appserver._web.ajax import (AjaxRoot, AppRoute, ClientCount, Connect, Disconnect, Poll, Publish, Send)
from appserver._web.eventstream import Events, EventStreams
from appserver._web.health import mount_operations_resources
from appserver._web.jsonweb import JSONErrorPage
from appserver._web.longpoll import SessionRegistry
from appserver._web.site import LoggingSite
from appserver._web.static import build_static_resource
from appserver._web.websocket import AppServerWebSocketFactory
from appserver._web.pings import Pings
from appserver._web.writes import WriteCoalescer

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime
    from appserver._server.settings import Settings

__all__ = ["SiteSpec", "build_sites", "build_ajax_resource", "build_websocket_resource", "client_urls", "open_urls"]


@dataclass(frozen=True)
class SiteSpec:
    """
    One listening port to open: its name (for logs and C{ports}), its
    endpoint description and the site to serve there.
    """

    name: str
    description: str
    site: LoggingSite


def build_sites(runtime: "Runtime") -> list[SiteSpec]:
    """
    The sites of the server, as C{--listen} or C{--static/--ajax/--ws} ask.
    """
    settings = runtime.settings
    ajax = build_ajax_resource(runtime)
    ws = build_websocket_resource(runtime)
    static = build_static_resource(runtime, lambda request: client_urls(runtime, request))
    if settings.listen:
        static.putChild(b"ajax", ajax)
        static.putChild(b"ws", ws)
        return [SiteSpec("single", settings.listen, _site(runtime, static, websocket=True))]
    return [SiteSpec("static", settings.static, _site(runtime, static)),
            SiteSpec("ajax", settings.ajax, _site(runtime, ajax)),
            SiteSpec("ws", settings.ws, _site(runtime, ws, websocket=True))]


def _site(runtime: "Runtime", resource: Resource, websocket: bool = False) -> LoggingSite:
    settings = runtime.settings
    # Every request must arrive within a total deadline, counted under the
    # connection limits meanwhile (DeadlineChannel). A site that serves
    # only WebSockets expects nothing but upgrade requests: the handshake's
    # own deadline. On a single port, pages and Ajax requests get theirs,
    # and an upgrade must still be open within --handshake-timeout.
    only_websockets = websocket and not settings.listen
    deadline = settings.handshake_timeout if only_websockets else settings.request_timeout
    # The channel's idle timeout still closes connections that go quiet (a
    # minute by default, the handshake's on a site of WebSockets only).
    extra = {"timeout": settings.handshake_timeout} if only_websockets and settings.handshake_timeout else {}
    site = LoggingSite(resource, max_body_size=settings.max_message_size, access_log=settings.access_log,
                       request_timeout=deadline, limiter=runtime.limiter, trusts=runtime.proxies.trusts,
                       **extra)
    site.noisy = False
    return site


def build_ajax_resource(runtime: "Runtime") -> Resource:
    """
    The Ajax site's resource tree (also mounted at C{/ajax} in single-port
    mode). Creates the runtime's session registry.
    """
    if runtime.sessions is None:
        runtime.sessions = SessionRegistry(runtime)
    root = AjaxRoot()
    runtime.tracker.backplane.attach_ajax(root)
    for path, route in runtime.app.routes.items():
        root.putChild(path.lstrip("/").encode("ascii"), AppRoute(runtime, route))
    root.putChild(b"get_client_count", ClientCount(runtime))
    root.putChild(b"connect", Connect(runtime))
    root.putChild(b"send", Send(runtime))
    root.putChild(b"poll", Poll(runtime))
    root.putChild(b"disconnect", Disconnect(runtime))
    root.putChild(b"events", Events(runtime, EventStreams(runtime)))
    root.putChild(b"publish", Publish(runtime))
    mount_operations_resources(root, runtime)
    return root


class _TakeoverResource(WebSocketResource):
    """
    Autobahn's resource, minus the HTTP channel's idle timeout: once the
    connection is a WebSocket, pings and their timeout govern it. The
    opening handshake keeps the deadline the connection started with: the
    WebSocket protocol, made and connected within C{render}, reads when the
    channel began to wait for this request (L{DeadlineChannel}).
    """

    _factory: AppServerWebSocketFactory

    def render(self, request: Any) -> bytes:
        channel = request.channel
        self._factory.opening_since = getattr(channel, "awaiting_since", None)
        try:
            result: bytes = super().render(request)
        finally:
            self._factory.opening_since = None
        if channel.transport is None:
            channel.setTimeout(None)
        return result


class _WebSocketRoot(Resource):
    """
    The WebSocket site's tree: the envelope endpoint at the root, the
    application's raw endpoints one segment below.
    """

    def __init__(self, main: WebSocketResource, endpoints: Mapping[bytes, WebSocketResource]) -> None:
        super().__init__()
        self.main = main
        self.endpoints = endpoints

    def getChild(self, name: bytes, request: Any) -> Any:
        if name == b"":
            return self.main
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            return endpoint
        return JSONErrorPage(404, "not_found", "no WebSocket endpoint at this path")

    def render(self, request: Any) -> bytes:
        result: bytes = self.main.render(request)
        return result


def build_websocket_resource(runtime: "Runtime") -> Resource:
    """
    The resource tree of the WebSocket site (also mounted at C{/ws} in
    single-port mode).
    """
    coalescer = WriteCoalescer(runtime.reactor)
    settings = runtime.settings
    pings = Pings(runtime.reactor, settings.ping_interval, settings.ping_timeout)
    main = _TakeoverResource(AppServerWebSocketFactory(runtime, coalescer, pings=pings))
    endpoints = {
        path.lstrip("/").encode("ascii"): _TakeoverResource(
            AppServerWebSocketFactory(runtime, coalescer, protocol, pings=pings))
        for path, protocol in runtime.app.endpoints.items()
    }
    return _WebSocketRoot(main, endpoints)


def open_urls(settings: "Settings", addresses: Mapping[str, IPv4Address | IPv6Address]) -> dict[str, str]:
    """
    The URLs a person on this machine opens to reach the running sites
    (C{pages}, C{ajax}, C{ws}), from the addresses they listen on: a site
    listening on every interface is reached through the loopback address.
    """
    def base(name: str, plain: str, secure: str) -> str:
        address = addresses[name]
        host = address.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        description = settings.listen if name == "single" else getattr(settings, name)
        scheme = secure if (description or "").startswith("ssl:") else plain
        return f"{scheme}://{host}:{address.port}"

    if "single" in addresses:
        root = base("single", "http", "https")
        return {"pages": root + "/", "ajax": root + "/ajax", "ws": base("single", "ws", "wss") + "/ws"}
    return {"pages": base("static", "http", "https") + "/", "ajax": base("ajax", "http", "https"),
            "ws": base("ws", "ws", "wss") + "/"}


def client_urls(runtime: "Runtime", request: Request) -> dict[str, str]:
    """
    Where a page loaded through C{request} finds the Ajax and WebSocket
    sites: same host name, this server's ports.
    """
    # Behind a TLS-terminating proxy the request is plain HTTP, but the
    # page was https: its WebSocket must be wss (docs/deploy.md).
    forwarded = (request.getHeader(b"x-forwarded-proto") or b"").split(b",")[0].strip().lower()
    secure = request.isSecure() or forwarded == b"https"
    host_header = (request.getHeader(b"host") or b"localhost").decode("latin-1")
    hostname = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
    ports = runtime.site_ports
    if "single" in ports:
        http = f"{'https' if secure else 'http'}://{host_header}"
        return {"wsUrl": f"{'wss' if secure else 'ws'}://{host_header}/ws", "ajaxUrl": f"{http}/ajax"}
    settings = runtime.settings
    ws_secure = settings.ws.startswith("ssl:")
    ajax_secure = settings.ajax.startswith("ssl:")
    return {
        "wsUrl": f"{'wss' if ws_secure else 'ws'}://{hostname}:{ports.get('ws', 9002)}/",
        "ajaxUrl": f"{'https' if ajax_secure else 'http'}://{hostname}:{ports.get('ajax', 9001)}",
    }
