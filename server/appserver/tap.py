"""
C{twistd appserver}: command-line options and the service they build.

Every option is described once, in L{appserver._server.settings.OPTION_SPECS}; this
module turns those descriptions into twistd options and the parsed values
into L{Settings}.
"""

from __future__ import annotations

import os
import sys

import txaio
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from appserver._server.app import load_app
from appserver._server.config import render_toml, resolve_configuration
from appserver._server.logs import use_json_logging_in_twistd
from appserver._core.tracker import TrackerEvents
from appserver._server.app import App
from appserver._server.settings import Settings
from appserver._web.sites import build_sites
from appserver._server.metrics import MetricsEvents
from appserver._server.runtime import build_runtime
from appserver._server.service import AppServerService
from appserver._server.settings import OPTION_SPECS, SettingsError

__all__ = ["Options", "makeService", "build_service"]


def _describe(spec: Any) -> str:
    if spec.repeatable:
        return f"{spec.help}"
    default = spec.default
    shown = "none" if default is None else default
    return f"{spec.help} [default: {shown}]"


class Options(usage.Options):
    """
    twistd appserver [options]. Every option is also C{APPSERVER_<NAME>} in
    the environment and C{name} in a C{--config} file.
    """

    synopsis = "[options]"
    longdesc = ("Real-time application server: static pages, JSON/JSONP Ajax with long-poll, and "
                "WebSocket push, sharing one client tracker. See README.md and docs/.")
    optParameters = [
        [spec.name, None, None, _describe(spec)]
        for spec in OPTION_SPECS
        if not spec.repeatable and not spec.flag
    ] + [["config", None, None, "TOML file of options (default: the file named by $APPSERVER_CONFIG, if any)."]]
    optFlags = [["print-config", None, "Print the effective configuration as TOML and exit without starting."]]

    def __init__(self) -> None:
        super().__init__()
        for spec in OPTION_SPECS:
            if spec.repeatable:
                self[spec.name] = []

    def opt_allowed_origin(self, origin: str) -> None:
        """
        Origin allowed to open WebSockets, Ajax sessions and CORS calls: an
        exact origin or an anchored pattern like https://*.example.com;
        repeatable. Default: the server's own pages only. * allows any.
        """
        self["allowed-origin"].append(origin)

    def opt_server_name(self, name: str) -> None:
        """
        A host name the server's own pages are served under (besides
        localhost and IP addresses), e.g. chat.example.com; repeatable.
        """
        self["server-name"].append(name)

    def opt_trusted_proxy(self, address: str) -> None:
        """
        Address or network (127.0.0.1, 10.0.0.0/8) of a reverse proxy whose
        X-Forwarded-For names the client; repeatable.
        """
        self["trusted-proxy"].append(address)

    def postOptions(self) -> None:
        values: dict[str, Any] = {}
        for spec in OPTION_SPECS:
            value = self.get(spec.name)
            if spec.repeatable:
                if value:
                    values[spec.name] = list(value)
            elif value is not None:
                values[spec.name] = value
        try:
            resolved = resolve_configuration(values, os.environ, self["config"])
        except SettingsError as error:
            raise usage.UsageError(str(error)) from None
        settings = resolved.settings
        for name in ("listen",) if settings.listen else ("static", "ajax", "ws"):
            description = getattr(settings, name)
            try:
                # Parsing only: an endpoint keeps its reactor for later and
                # twistd may not have installed the real one yet.
                serverFromString(None, description)
            except Exception as error:  # also unreadable or bad TLS key/certificate files
                raise usage.UsageError(f"--{name} {description!r} (from {resolved.sources[name]}) is not a valid "
                                       f"endpoint (e.g. tcp:9000, tcp:9000:interface=127.0.0.1, "
                                       f"ssl:9443:privateKey=key.pem:certKey=cert.pem): {error}") from None
        try:
            self.app = load_app(settings.app)
        except ValueError as error:
            raise usage.UsageError(str(error)) from None
        self.settings = settings
        if self["print-config"]:
            sys.stdout.write(render_toml(resolved))
            raise SystemExit(0)
        if settings.log_format == "json":
            use_json_logging_in_twistd(getattr(self, "parent", None))


def makeService(options: Options) -> AppServerService:
    return build_service(options.settings, options.app)


def build_service(settings: Settings, app: App, reactor: Any = None,
                  events: TrackerEvents | None = None) -> AppServerService:
    """
    The whole server as one service: the runtime (one tracker shared by
    every site), then one listening service per site.

    @param events: what observes the tracker; Prometheus metrics by default.
    """
    if reactor is None:
        from twisted.internet import reactor
    # Autobahn logs every frame at debug level, and twistd shows every
    # level: keep its chatter out of production logs.
    # txaio binds its API at run time (use_twisted()), so mypy cannot see it.
    txaio.set_global_log_level("info")  # type: ignore[attr-defined]
    if events is None:
        events = MetricsEvents(process_metrics=True)
    runtime = build_runtime(settings, app, reactor, events=events)
    if isinstance(events, MetricsEvents):
        events.bind(runtime)
    service = AppServerService(runtime)
    for spec in build_sites(runtime):
        service.add_site(spec.name, spec.description, spec.site)
    return service
