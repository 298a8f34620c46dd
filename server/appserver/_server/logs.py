"""
Log output as JSON lines (C{--log-format json}): one object per event, with
the event's structured fields kept as fields, for log shippers that index
them (peer, origin, transport, close code, status...).

twistd decides where logs go before the service exists, from its own
C{--logger} option (a factory of log observers). C{--log-format json} sets
that option from L{appserver.tap.Options.postOptions}, which twistd runs
while parsing the command line, so twistd begins logging with the JSON
observer and no text observer is ever installed. The destination stays
twistd's: standard output under C{-n}, else C{--logfile} (default
C{twistd.log}), rotated on SIGUSR1 as twistd does. An explicit
C{twistd --logger=...} or C{--syslog} wins over C{--log-format}.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from typing import IO, Any, Callable, MutableMapping, cast

import orjson
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogFilterPredicate, ILogObserver, LogEvent,
                            PredicateResult, formatEvent, textFileLogObserver)
from zope.interface import implementer
from twisted.python.logfile import LogFile

__all__ = ["json_line", "json_lines_observer", "twistd_json_observer", "use_json_logging_in_twistd",
           "text_observer", "twistd_text_observer", "use_text_logging_in_twistd", "without_port_chatter",
           "STANDARD_FIELDS"]

#: Keys every line starts with (then C{system} when the event has one, and
#: C{error} and C{failure} when a traceback was logged); an event field with
#: one of these names is left out.
STANDARD_FIELDS = ("time", "level", "namespace", "message")

#: Keys of events from the legacy C{twisted.python.log} API that duplicate
#: what the standard fields already say.
_LEGACY_KEYS = frozenset({"message", "time", "system", "isError", "format", "why", "failure", "printed",
                          "logLevel"})

#: Longest text kept for a field whose value is not JSON (its C{str}).
_MAX_REPR = 512


def _fallback(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_REPR else text[:_MAX_REPR] + "..."


def json_line(event: LogEvent) -> str:
    """
    One event as one line of JSON (with its newline): the standard fields,
    then the event's own fields; values that are not JSON become their
    text. Never raises: a log observer that raises is removed by Twisted.
    """
    record: dict[str, Any] = {}
    try:
        stamp = event.get("log_time")
        record["time"] = (datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="milliseconds")
                          if stamp is not None else None)
        level = event.get("log_level")
        record["level"] = level.name if level is not None else "info"
        record["namespace"] = event.get("log_namespace")
        record["message"] = formatEvent(event)
        system = event.get("log_system")
        if system not in (None, "-"):
            record["system"] = system
        failure = event.get("log_failure")
        if failure is not None:
            record["error"] = failure.getErrorMessage()
            record["failure"] = failure.getTraceback()
        for key, value in event.items():
            if not key.startswith("log_") and key not in _LEGACY_KEYS and key not in record:
                record[key] = value
        return orjson.dumps(record, default=_fallback, option=orjson.OPT_NON_STR_KEYS).decode("utf-8") + "\n"
    except Exception as error:  # pragma: no cover - last resort
        return orjson.dumps({"time": record.get("time"), "level": "error", "namespace": "appserver.logs",
                             "message": f"unloggable event: {error!r}"}).decode("utf-8") + "\n"


def json_lines_observer(stream: IO[str]) -> ILogObserver:
    """
    An observer writing every event to C{stream} as a JSON line.
    """
    return FileLogObserver(stream, json_line)


@implementer(ILogFilterPredicate)
class _NoPortChatter:
    """
    Drops Twisted's own "LoggingSite starting on N" line: appserver already
    says which site listens on which port, and a site announced twice
    reads like two servers.
    """

    def __call__(self, event: LogEvent) -> PredicateResult:
        message: Any = event.get("message")
        if event.get("log_namespace") == "log_legacy" and isinstance(message, tuple) and len(message) == 1 \
                and str(message[0]).startswith("LoggingSite starting on "):
            return PredicateResult.no
        return PredicateResult.maybe


def without_port_chatter(observer: ILogObserver) -> ILogObserver:
    """
    C{observer}, less the port chatter appserver's own lines repeat.
    """
    return FilteringLogObserver(observer, [_NoPortChatter()])


def text_observer(stream: IO[str]) -> ILogObserver:
    """
    Twisted's text lines, without the port chatter.
    """
    return without_port_chatter(textFileLogObserver(stream))


#: Where twistd would have written text logs, recorded while twistd parses
#: its command line: twistd takes C{--logger} as a dotted name and calls it
#: without arguments, so the factory cannot be handed them.
_twistd_destination: tuple[str | None, bool] | None = None


def twistd_json_observer() -> ILogObserver:
    """
    The observer factory twistd calls (C{--logger
    appserver.logs.twistd_json_observer}): JSON lines where twistd itself
    would write text (see C{twisted.scripts._twistd_unix.UnixAppLogger}).
    Used alone, without C{--log-format json}, it writes to standard output.
    """
    return without_port_chatter(_twistd_observer(json_lines_observer))


def twistd_text_observer() -> ILogObserver:
    """
    Like L{twistd_json_observer}, for text lines (L{text_observer}).
    """
    return _twistd_observer(text_observer)


def _twistd_observer(make: Callable[[IO[str]], ILogObserver]) -> ILogObserver:
    logfile, nodaemon = _twistd_destination or (None, True)
    if logfile == "-" and not nodaemon:
        sys.exit("Daemons cannot log to stdout, exiting!")
    if logfile == "-" or (nodaemon and not logfile):
        return make(sys.stdout)
    destination = LogFile.fromFullPath(logfile or "twistd.log")
    try:
        import signal
    except ImportError:  # pragma: no cover
        pass
    else:
        if not signal.getsignal(signal.SIGUSR1):
            def rotate(signal_number: int, frame: Any) -> None:
                from twisted.internet import reactor
                # Every Twisted reactor provides it; the global's static type omits it.
                cast(IReactorFromThreads, reactor).callFromThread(destination.rotate)
            signal.signal(signal.SIGUSR1, rotate)
    return make(destination)


def use_json_logging_in_twistd(twistd_options: MutableMapping[str, Any] | None) -> bool:
    """
    Make twistd log JSON lines, by setting its C{--logger} option; called
    while twistd parses the command line, before it starts logging.

    @param twistd_options: twistd's own options (the C{parent} of the
        subcommand's), or C{None} outside twistd.
    @return: whether JSON logging was arranged (not when outside twistd, or
        when C{--logger} or C{--syslog} was given explicitly).
    """
    return _use_twistd_logger(twistd_options, twistd_json_observer)


def use_text_logging_in_twistd(twistd_options: MutableMapping[str, Any] | None) -> bool:
    """
    Like L{use_json_logging_in_twistd}, for twistd's usual text lines less
    the port chatter (L{text_observer}).
    """
    return _use_twistd_logger(twistd_options, twistd_text_observer)


def _use_twistd_logger(twistd_options: MutableMapping[str, Any] | None,
                       factory: Callable[[], ILogObserver]) -> bool:
    global _twistd_destination
    if twistd_options is None or twistd_options.get("logger") or twistd_options.get("syslog"):
        return False
    _twistd_destination = (twistd_options.get("logfile") or None, bool(twistd_options.get("nodaemon")))
    twistd_options["logger"] = f"{__name__}.{factory.__name__}"
    return True
