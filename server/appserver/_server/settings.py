"""
Every tunable of the server in one immutable value.

The command line, the environment and a configuration file all end up as one
L{Settings}; everything else receives the value it needs from it, so a test
can build a server with any combination of options without touching argv.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from appserver._server.origins import compile_origin_pattern, parse_server_name
from appserver._server.proxies import parse_proxy_network

__all__ = ["Settings", "SettingsError", "OPTION_SPECS", "OptionSpec", "parse_size"]


class SettingsError(ValueError):
    """
    An option has a value the server cannot use; the message names the option
    and says what would be accepted.
    """


def parse_size(text: str) -> int:
    """
    Parse a byte size such as C{1048576}, C{64KiB}, C{1MiB} or C{2MB}.

    @raise ValueError: the text is not a non-negative size.
    """
    units = {
        "": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024,
        "m": 1024 ** 2, "mb": 1000 ** 2, "mib": 1024 ** 2,
        "g": 1024 ** 3, "gb": 1000 ** 3, "gib": 1024 ** 3,
    }
    stripped = str(text).strip().lower()
    number = stripped.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = stripped[len(number):].strip()
    if unit not in units or not number.strip():
        raise ValueError(f"not a size: {text!r} (use bytes, or a suffix KiB/MiB/GiB)")
    value = int(float(number) * units[unit])
    if value < 0:
        raise ValueError(f"a size cannot be negative: {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError(f"must be zero or more, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be zero or more, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {text!r}")
    return value


def _boolean(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _text(text: str) -> str:
    return str(text)


def _optional_text(text: str | None) -> str | None:
    if text is None or str(text) == "":
        return None
    return str(text)


def _origin_pattern(text: str) -> str:
    text = str(text)
    if text != "*":
        compile_origin_pattern(text)
    return text


def _policy(text: str) -> str:
    if text not in ("disconnect", "drop-oldest", "conflate"):
        raise ValueError(f"{text!r} is not a policy (use disconnect, drop-oldest or conflate)")
    return text


@dataclass(frozen=True)
class OptionSpec:
    """
    One configurable option: its name on the command line (C{--name}), in
    the configuration file (C{name} with underscores) and in the environment
    (C{APPSERVER_NAME}), with the parser that validates it.
    """

    name: str
    default: Any
    parse: Callable[[Any], Any]
    help: str
    repeatable: bool = False
    flag: bool = False

    @property
    def attribute(self) -> str:
        return self.name.replace("-", "_")

    @property
    def environment_variable(self) -> str:
        return "APPSERVER_" + self.attribute.upper()


OPTION_SPECS: tuple[OptionSpec, ...] = (
    OptionSpec("static", "tcp:9000", _text, "Endpoint of the static file site (html/ at /, js/ at /js/)."),
    OptionSpec("ajax", "tcp:9001", _text, "Endpoint of the Ajax (JSON/JSONP and long-poll) site."),
    OptionSpec("ws", "tcp:9002", _text, "Endpoint of the WebSocket site."),
    OptionSpec("listen", None, _optional_text,
               "Single-port mode: serve static files at /, Ajax at /ajax/ and the WebSocket at /ws "
               "on this one endpoint instead of the three above."),
    OptionSpec("html", None, _optional_text, "Directory of the pages served at / (default: the bundled demo pages)."),
    OptionSpec("js", None, _optional_text, "Directory served at /js/ (default: the bundled browser client)."),
    OptionSpec("app", "appserver.apps.gallery:app", _text,
               "The application to run, as module:attribute; the demo gallery runs every demo page, the "
               "chat included."),
    OptionSpec("max-message-size", 1024 * 1024, parse_size,
               "Largest WebSocket message or Ajax body accepted, in bytes; larger closes with 1009 / answers 413."),
    OptionSpec("max-queue-bytes", 1024 * 1024, parse_size,
               "Per-client outgoing queue bound in bytes, applied when the client stops reading."),
    OptionSpec("max-queue-messages", 1000, _positive_int, "Per-client outgoing queue bound in messages."),
    OptionSpec("queue-policy", "disconnect", _policy,
               "What happens when a client's queue is full, for channels without their own policy: "
               "disconnect (close 4000), drop-oldest, or conflate."),
    OptionSpec("ping-interval", 20.0, _non_negative_float, "Seconds between server WebSocket pings (0 disables)."),
    OptionSpec("ping-timeout", 10.0, _non_negative_float,
               "Seconds to wait for a pong before the connection is dropped as dead."),
    OptionSpec("permessage-deflate", True, _boolean,
               "Compress WebSocket messages for clients that offer permessage-deflate (browsers do): each "
               "broadcast is compressed once and shared; small messages go uncompressed."),
    OptionSpec("handshake-timeout", 10.0, _non_negative_float,
               "Seconds a WebSocket opening handshake may take in all, from the connection to the open "
               "WebSocket (request, authentication and answer); not restarted by data (0 disables)."),
    OptionSpec("request-timeout", 30.0, _non_negative_float,
               "Seconds an HTTP request may take to arrive in full (headers and body) on every site, counted "
               "from the connection or the end of the previous answer; not restarted by data (0 disables)."),
    OptionSpec("allowed-origin", (), _origin_pattern,
               "Origin allowed to open WebSockets, Ajax sessions and CORS calls: an exact origin or an anchored "
               "pattern like https://*.example.com; repeatable. Default: the server's own pages only. "
               "Use * to allow any origin.", repeatable=True),
    OptionSpec("server-name", (), parse_server_name,
               "A host name this server's pages are served under (chat.example.com), so that pages at that "
               "name on one of the server's ports count as its own; repeatable. Without it only localhost and "
               "IP addresses do: the Host header alone is never trusted (DNS rebinding).", repeatable=True),
    OptionSpec("trusted-proxy", (), parse_proxy_network,
               "Address or network (127.0.0.1, 10.0.0.0/8) of a reverse proxy whose X-Forwarded-For header "
               "names the client, for the per-IP limits; repeatable. Default: none, every peer is the client.",
               repeatable=True),
    OptionSpec("rate-limit", 50.0, _non_negative_float,
               "Messages per second each connection may send (token bucket, burst of twice this; 0 disables)."),
    OptionSpec("max-connections", 10000, _non_negative_int, "Total concurrent clients (0 = no limit)."),
    OptionSpec("max-connections-per-ip", 200, _non_negative_int, "Concurrent clients per IP address (0 = no limit)."),
    OptionSpec("max-channels-per-client", 100, _positive_int, "Channels one client may subscribe to."),
    OptionSpec("max-rooms-per-client", 20, _positive_int, "Rooms one client may be a member of."),
    OptionSpec("poll-timeout", 25.0, _non_negative_float, "Seconds a long poll waits before answering empty."),
    OptionSpec("session-idle-timeout", 60.0, _non_negative_float,
               "Seconds an Ajax session may go without polling before it expires."),
    OptionSpec("sse-heartbeat", 15.0, _non_negative_float,
               "Longest silence of an event stream (GET /events): a quiet stream gets a comment line at least "
               "this often, so proxies do not cut it (0 disables)."),
    OptionSpec("history-size", 1000, _non_negative_int, "Messages kept per channel for recovery after a reconnect."),
    OptionSpec("history-age", 300.0, _non_negative_float, "Seconds a message is kept for recovery."),
    OptionSpec("history-bytes", 64 * 1024 * 1024, parse_size,
               "What the histories of all channels may keep together, in bytes; past it the oldest messages of "
               "all channels are evicted first (0 = no limit)."),
    OptionSpec("publish-token", None, _optional_text,
               "Token required by POST /publish (Authorization: Bearer ...). Without one, /publish "
               "only accepts requests from a loopback address that carry no forwarding header "
               "(X-Forwarded-For, Forwarded, X-Real-IP): never through a proxy."),
    OptionSpec("shutdown-timeout", 5.0, _non_negative_float,
               "Seconds a graceful shutdown (SIGTERM) may take before connections are cut."),
    OptionSpec("state-file", None, _optional_text,
               "JSON file where a graceful shutdown saves the epoch, position and histories, read back (and "
               "deleted) at start, so clients recover across a restart. Without it a restart is a new epoch."),
    OptionSpec("backplane", "memory://", _text,
               "Cross-node state: memory:// (single node), redis://host:port/db, rediss://... (TLS, "
               "?ca=/path), or redis+sentinel://sentinel:26379[,sentinel2...]/primary-name/db (Sentinel; "
               "rediss+sentinel:// for TLS). See docs/scaling.md."),
    OptionSpec("node-id", None, _optional_text, "Name of this node in a cluster (default: random)."),
    OptionSpec("log-format", "text", _text, "Log output: text or json (one JSON object per line)."),
    OptionSpec("access-log", True, _boolean, "Write an access log line for each HTTP request."),
)

_SPECS_BY_ATTRIBUTE = {spec.attribute: spec for spec in OPTION_SPECS}


@dataclass(frozen=True)
class Settings:
    """
    The effective configuration of one server.

    Build it with L{Settings.from_mapping} so every value goes through the
    same validation whatever its source.
    """

    static: str = "tcp:9000"
    ajax: str = "tcp:9001"
    ws: str = "tcp:9002"
    listen: str | None = None
    html: str | None = None
    js: str | None = None
    app: str = "appserver.apps.gallery:app"
    max_message_size: int = 1024 * 1024
    max_queue_bytes: int = 1024 * 1024
    max_queue_messages: int = 1000
    queue_policy: str = "disconnect"
    ping_interval: float = 20.0
    ping_timeout: float = 10.0
    permessage_deflate: bool = True
    handshake_timeout: float = 10.0
    request_timeout: float = 30.0
    allowed_origin: tuple[str, ...] = ()
    server_name: tuple[str, ...] = ()
    trusted_proxy: tuple[str, ...] = ()
    rate_limit: float = 50.0
    max_connections: int = 10000
    max_connections_per_ip: int = 200
    max_channels_per_client: int = 100
    max_rooms_per_client: int = 20
    poll_timeout: float = 25.0
    session_idle_timeout: float = 60.0
    sse_heartbeat: float = 15.0
    history_size: int = 1000
    history_age: float = 300.0
    history_bytes: int = 64 * 1024 * 1024
    publish_token: str | None = None
    shutdown_timeout: float = 5.0
    state_file: str | None = None
    backplane: str = "memory://"
    node_id: str | None = None
    log_format: str = "text"
    access_log: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> "Settings":
        """
        Validate raw option values (strings from argv, the environment or a
        file, or already-typed values) into L{Settings}.

        @raise SettingsError: naming the first unknown option or bad value.
        """
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            attribute = key.replace("-", "_")
            spec = _SPECS_BY_ATTRIBUTE.get(attribute)
            if spec is None:
                raise SettingsError(f"unknown option {key!r}; known options: "
                                    + ", ".join(s.name for s in OPTION_SPECS))
            if raw is None:
                parsed[attribute] = spec.default
                continue
            try:
                if spec.repeatable:
                    items = [raw] if isinstance(raw, str) else list(raw)
                    parsed[attribute] = tuple(spec.parse(item) for item in items)
                else:
                    parsed[attribute] = spec.parse(raw)
            except (TypeError, ValueError) as error:
                raise SettingsError(f"bad value for {spec.name}: {error}") from None
        settings = cls(**parsed)
        settings.check()
        return settings

    def check(self) -> None:
        """
        Reject combinations no single option can see.
        """
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"bad value for log-format: {self.log_format!r} (use text or json)")
        if self.max_message_size < 1:
            raise SettingsError("bad value for max-message-size: must be at least 1 byte")

    def as_dict(self) -> dict[str, Any]:
        """
        The settings as plain values, named as on the command line.
        """
        return {
            spec.name: getattr(self, spec.attribute)
            for spec in OPTION_SPECS
        }

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)
