"""
C{twistd appserver}: command-line options and the service they build.

Every option is described once, in L{appserver._server.settings.OPTION_SPECS}; this
module turns those descriptions into twistd options and the parsed values
into L{Settings}.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
import sys
from pathlib import Path
from typing import Any

import txaio
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from appserver._server.app import load_app
from appserver._server.config import render_toml, resolve_configuration
from appserver._server.logs import use_json_logging_in_twistd, use_text_logging_in_twistd
from appserver._core.tracker import TrackerEvents
from appserver._server.app import App
from appserver._server.settings import Settings
from appserver._version import __version__
from appserver._web.sites import build_sites, open_urls
from appserver._web.static import find_web_directory
from appserver._server.metrics import MetricsEvents
from appserver._server.runtime import build_runtime
from appserver._server.service import AppServerService
from appserver._server.settings import OPTION_SPECS, SettingsError

__all__ = ["Options", "makeService", "build_service", "startup_banner", "REDIS_EXTRA_COMMAND"]

#: What to run when the Redis backplane is asked for without its libraries.
REDIS_EXTRA_COMMAND = 'pip install "appserver[redis]"'


def _describe(spec: Any) -> str:
    """
    An option's help line with its default shown once, at the end: a
    default the help text names in words ("(default: the bundled demo
    pages)") replaces the raw value.
    """
    text = " ".join(spec.help.split())
    named = re.search(r" \(default: ([^)]*)\)", text)
    if named:
        text = text[:named.start()] + text[named.end():]
    if spec.repeatable:
        return text
    shown = named.group(1) if named else "none" if spec.default is None else spec.default
    return f"{text} [default: {shown}]"


def _guide() -> str:
    """
    Where the user guide is on this machine: the checkout's docs/, or the
    copy a pip install puts under C{sys.prefix/share/appserver/docs}.
    """
    for candidate in (Path(__file__).resolve().parents[2] / "docs",
                      Path(sys.prefix) / "share" / "appserver" / "docs"):
        if (candidate / "README.md").is_file():
            return f"User guide: {candidate / 'README.md'}"
    return "User guide: the docs/ folder of appserver's source."


def _missing_redis_libraries() -> list[str]:
    """
    The distributions of appserver's C{redis} extra that are not installed
    (none when appserver runs from a checkout without metadata).
    """
    try:
        requirements = importlib.metadata.requires("appserver") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if re.search(r"""extra\s*==\s*['"]redis['"]""", marker):
            distribution = re.split(r"[\s<>=!~\[(;]", name.strip(), maxsplit=1)[0]
            try:
                importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                missing.append(distribution)
    return missing


def _closest_option(message: str, known: list[str]) -> str:
    """
    getopt's "option --x not recognized", as one line naming the closest
    known option.
    """
    unknown = re.match(r"option (-{1,2}[^ ]+) not recognized", message)
    if not unknown:
        return message
    given = unknown.group(1)
    close = difflib.get_close_matches(given.lstrip("-"), known, n=1, cutoff=0.5)
    if close:
        return f"unknown option {given}; did you mean --{close[0]}?"
    return f"unknown option {given}; --help lists the options"


class Options(usage.Options):
    """
    twistd appserver [options]. Every option is also C{APPSERVER_<NAME>} in
    the environment and C{name} in a C{--config} file.
    """

    synopsis = "[options]"
    longdesc = ("Real-time application server: static pages, JSON/JSONP Ajax with long-poll, and "
                "WebSocket push, sharing one client tracker. Every option can also be set as "
                "APPSERVER_<NAME> in the environment or in a --config file.")
    optParameters = [
        [spec.name, None, None, _describe(spec)]
        for spec in OPTION_SPECS
        if not spec.repeatable and not spec.flag
    ] + [["config", None, None, "TOML file of options. [default: the file named by $APPSERVER_CONFIG, if any]"]]
    optFlags = [["print-config", None, "Print the effective configuration as TOML and exit without starting."]]

    def __init__(self) -> None:
        super().__init__()
        for spec in OPTION_SPECS:
            if spec.repeatable:
                self[spec.name] = []
                self.docs[spec.name] = _describe(spec)

    def opt_allowed_origin(self, origin: str) -> None:
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

    def getUsage(self, width: int | None = None) -> str:
        # The guide's path on a line of its own: wrapped with the text, a
        # path with a hyphen would be cut in two.
        return f"{super().getUsage(width)}{_guide()}\n"

    def parseArgs(self, *arguments: str) -> None:
        if arguments:
            raise usage.UsageError(f"unexpected argument {arguments[0]!r}: appserver takes options only "
                                   f"(--help lists them)")

    def opt_version(self) -> None:
        """
        Print appserver's version and exit.
        """
        from twisted import version as twisted_version
        print(f"appserver {__version__} (Twisted {twisted_version.short()}, "
              f"Python {sys.version.split()[0]})")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse, with an unknown option named along with the closest known
        one. Under twistd (which prints its whole help before a usage
        error) a mistake ends the process with that one line instead.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as error:
            known = [name.rstrip("=") for name in self.longOpt]
            message = _closest_option(str(error), known)
            if getattr(self, "parent", None) is not None:
                raise SystemExit(f"twistd appserver: {message}") from None
            raise usage.UsageError(message) from None

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
        for name in ("html", "js"):
            try:
                find_web_directory(name, getattr(settings, name))
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
        if settings.backplane.startswith(("redis:", "rediss:", "redis+sentinel:", "rediss+sentinel:")):
            missing = _missing_redis_libraries()
            if missing:
                raise usage.UsageError(f"--backplane redis://...: the Redis backplane needs {', '.join(missing)}, "
                                       f"from appserver's redis extra: run {REDIS_EXTRA_COMMAND}")
            # Refused here, as one line, rather than as a traceback out of
            # makeService under twistd (the URL module imports no reactor).
            from appserver._redis.location import parse_redis_url
            try:
                parse_redis_url(settings.backplane)
            except ValueError as error:
                raise usage.UsageError(str(error)) from None
        # Like "python -m": an --app module in the current directory is
        # found (the twistd script alone does not put it on sys.path).
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
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
        else:
            use_text_logging_in_twistd(getattr(self, "parent", None))


def startup_banner(service: AppServerService) -> str:
    """
    The line that tells a person the server is up: which application runs
    and the URLs to open.
    """
    urls = open_urls(service.settings, service.addresses)
    return (f"appserver {__version__} (pid {os.getpid()}) is running {service.settings.app}: open {urls['pages']} "
            f"(Ajax {urls['ajax']}, WebSocket {urls['ws']})")


def makeService(options: Options) -> AppServerService:
    """
    The service twistd runs: start-up mistakes end it with one logged line
    and a non-zero status, and it announces its URLs once listening.
    """
    service = build_service(options.settings, options.app)
    service.exit_on_startup_error = True
    service.freeze_startup_heap = True
    service.banner = lambda: startup_banner(service)
    return service


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
