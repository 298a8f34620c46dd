"""
The C{appserver} command (and C{python -m appserver}): the server in the
foreground with the options of C{twistd -n appserver}, run from the
directory that holds your application.

It differs from twistd only where a person at a terminal notices: the
current directory is on C{sys.path} (so C{--app myapp:app} finds
C{myapp.py}), a mistake is one line on standard error and a non-zero exit
status (2 for a usage mistake, 1 when the server cannot start), no pid file
is written, and Ctrl-C or SIGTERM stop it gracefully with exit status 0.

It runs on Twisted's asyncio reactor (C{--reactor}, default C{asyncio}), so
handlers can await asyncio libraries; C{twistd -n --reactor=asyncio
appserver} behaves the same.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.logger import ILogObserver, Logger, globalLogBeginner
from twisted.python import usage

from appserver._core.backplane import BackplaneUnavailable
from appserver._server.logs import json_lines_observer, text_observer, without_port_chatter
from appserver._server.service import StartupError
from appserver.tap import Options, build_service, startup_banner

__all__ = ["main", "run"]

#: Exit status of a command-line mistake (as argparse and getopt tools use).
USAGE_ERROR = 2
#: Exit status when the server cannot start (busy port, Redis unreachable).
CANNOT_START = 1

#: The reactors C{--reactor} offers. C{asyncio}: Twisted's asyncio reactor on
#: the standard event loop (the default; docs/performance.md has the
#: figures); C{uvloop}: the same on uvloop's loop (when installed);
#: C{twisted}: Twisted's platform reactor (epoll on Linux), where asyncio
#: libraries cannot be used.
REACTORS = ("asyncio", "uvloop", "twisted")
DEFAULT_REACTOR = "asyncio"


class CommandOptions(Options):
    """
    The options of C{twistd appserver}, and the reactor (which twistd
    chooses with its own C{--reactor}).
    """

    optParameters = Options.optParameters + [
        ["reactor", None, None,
         f"The event loop: asyncio (asyncio libraries usable from handlers), uvloop, or twisted "
         f"(Twisted's own, epoll on Linux; asyncio libraries unusable). [default: {DEFAULT_REACTOR}]"]]

    def postOptions(self) -> None:
        self["reactor"] = self["reactor"] or DEFAULT_REACTOR
        if self["reactor"] not in REACTORS:
            raise usage.UsageError(f"--reactor {self['reactor']}: use one of {', '.join(REACTORS)}")
        super().postOptions()


def _reactor_named(arguments: list[str]) -> str:
    """
    The C{--reactor} among C{arguments}, read before the options are parsed:
    the reactor is installed before anything (the application's module
    included) can import Twisted's default one.
    """
    for index, argument in enumerate(arguments):
        if argument == "--reactor" and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--reactor="):
            return argument.partition("=")[2]
    return DEFAULT_REACTOR


def install_reactor(name: str) -> Any:
    """
    Install the reactor called C{name} (one of L{REACTORS}) and return it;
    the one already installed when something installed one before.

    @raise ValueError: C{uvloop} when it is not installed.
    """
    if "twisted.internet.reactor" in sys.modules or name == "twisted":
        from twisted.internet import reactor
        return reactor
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ValueError("--reactor uvloop: uvloop is not installed; pip install uvloop, "
                             "or use --reactor asyncio") from None
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    # The current loop too: asyncio code started before the reactor runs
    # must find this one.
    asyncio.set_event_loop(loop)
    from twisted.internet import asyncioreactor
    asyncioreactor.install(loop)
    from twisted.internet import reactor
    return reactor


def _error(message: str) -> None:
    sys.stderr.write(f"appserver: {message}\n")
    sys.stderr.flush()


def run(arguments: list[str], reactor: Any = None) -> int:
    """
    Parse C{arguments}, start the server and run the reactor until a
    signal stops it.

    @return: the exit status.
    """
    # The current directory goes on sys.path when the options load --app
    # (appserver.tap.Options.postOptions, the same for twistd).
    if reactor is None and not any(argument in ("--help", "-h", "--version") for argument in arguments):
        name = _reactor_named(arguments)
        if name in REACTORS:
            try:
                reactor = install_reactor(name)
            except ValueError as error:
                _error(str(error))
                return USAGE_ERROR
    options = CommandOptions()
    options.synopsis = "Usage: appserver [options]"
    try:
        options.parseOptions(arguments)
    except usage.UsageError as error:
        _error(str(error))
        return USAGE_ERROR
    if reactor is None:
        reactor = install_reactor(options["reactor"])
    settings = options.settings
    observer: ILogObserver = without_port_chatter(json_lines_observer(sys.stdout)) \
        if settings.log_format == "json" else text_observer(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    try:
        service = build_service(settings, options.app, reactor)
    except ValueError as error:
        _error(str(error))
        return CANNOT_START
    service.banner = lambda: startup_banner(service)
    service.freeze_startup_heap = True
    try:
        service.startService()
    except (StartupError, BackplaneUnavailable) as error:
        _error(str(error))
        return CANNOT_START
    except KeyboardInterrupt:
        # Ctrl-C before the reactor (and its signal handlers) took over:
        # nothing was served yet, so nothing to drain.
        return 0
    # Ctrl-C (SIGINT) and SIGTERM stop the reactor through its own signal
    # handlers; the graceful shutdown runs before it stops.
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()
    if isinstance(reactor, AsyncioSelectorReactor):
        # Twisted's other reactors end with this line; the asyncio reactor
        # does not, and operators (and the tests) look for it.
        Logger(namespace="-").info("Main loop terminated.")
    return 0


def main() -> None:
    """
    The console entry point.
    """
    try:
        code = run(sys.argv[1:])
    except BrokenPipeError:
        # Output piped into a reader that stopped (appserver --help | head):
        # nothing left to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
