"""
The C{appserver} command (and C{python -m appserver}): the server in the
foreground with the options of C{twistd -n appserver}, run from the
directory that holds your application.

It differs from twistd only where a person at a terminal notices: the
current directory is on C{sys.path} (so C{--app myapp:app} finds
C{myapp.py}), a mistake is one line on standard error and a non-zero exit
status (2 for a usage mistake, 1 when the server cannot start), no pid file
is written, and Ctrl-C or SIGTERM stop it gracefully with exit status 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.logger import ILogObserver, globalLogBeginner
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


def _error(message: str) -> None:
    sys.stderr.write(f"appserver: {message}\n")
    sys.stderr.flush()


def run(arguments: list[str], reactor: Any = None) -> int:
    """
    Parse C{arguments}, start the server and run the reactor until a
    signal stops it.

    @return: the exit status.
    """
    directory = os.getcwd()
    if directory not in sys.path:
        sys.path.insert(0, directory)
    options = Options()
    options.synopsis = "Usage: appserver [options]"
    try:
        options.parseOptions(arguments)
    except usage.UsageError as error:
        _error(str(error))
        return USAGE_ERROR
    if reactor is None:
        from twisted.internet import reactor
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
