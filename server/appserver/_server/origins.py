"""
Which web pages may talk to the server: the origin policy shared by the
WebSocket handshake, Ajax sessions and CORS.

By default only the server's own pages may: an origin whose host is the
host the request was sent to, whose port is one the server listens on, and
whose host is known to be this server: C{localhost}, an IP address (the
address the browser connected to), or a name the operator gave with
C{--server-name}. A name taken from the Host header alone is not enough:
under DNS rebinding an attacker's name resolves to this server, and the
attacker's page then sends its own name as both Origin and Host.

Configured patterns are anchored: C{https://*.example.com} matches
C{https://a.example.com} and C{https://a.b.example.com} but never
C{https://example.com.evil.net}.

Tests: tests/test_origins.py, tests/test_limits_and_origins.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Iterable
from urllib.parse import SplitResult, urlsplit

__all__ = ["OriginPolicy", "compile_origin_pattern", "parse_server_name"]

#: Names that always mean this machine: browsers resolve them to loopback
#: without asking DNS, so no attacker can rebind them.
_LOOPBACK_NAMES = frozenset({"localhost"})

_HOST_NAME = re.compile(r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?)*\.?\Z")

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def compile_origin_pattern(pattern: str) -> re.Pattern[str]:
    """
    Turn C{scheme://host[:port]} with C{*} standing for one or more DNS
    labels (or a whole port) into an anchored regular expression.

    @raise ValueError: the pattern is not of that form.
    """
    lowered = pattern.strip().lower().rstrip("/")
    match = re.fullmatch(r"(https?)://([a-z0-9*.\-\[\]:]+?)(?::(\d+|\*))?", lowered)
    if match is None:
        raise ValueError(f"not an origin pattern: {pattern!r} (use scheme://host[:port], "
                         "e.g. https://*.example.com)")
    scheme, host, port = match.groups()
    host_regex = r"\.".join(
        r"[a-z0-9\-]+(?:\.[a-z0-9\-]+)*" if label == "*" else re.escape(label)
        for label in host.split(".")
    )
    if port is None:
        port_regex = f"(?::{_DEFAULT_PORTS[scheme]})?"
    elif port == "*":
        port_regex = r"(?::\d+)?"
    else:
        port_regex = f":{port}"
    return re.compile(f"{scheme}://{host_regex}{port_regex}")


def parse_server_name(text: str) -> str:
    """
    Validate one C{--server-name}: a DNS name (C{chat.example.com}), as it
    appears in the pages' URLs, without scheme or port.

    @raise ValueError: naming what is accepted.
    """
    name = str(text).strip().lower().rstrip(".")
    if not _HOST_NAME.match(name) or _is_ip(name):
        raise ValueError(f"{text!r} is not a host name (use the name in the pages' URLs, e.g. chat.example.com; "
                         "IP addresses and localhost need no --server-name)")
    return name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class OriginPolicy:
    """
    Decides whether an C{Origin} header is acceptable.

    @param patterns: configured origins (C{--allowed-origin}); C{*} alone
        allows every origin. Empty means the server's own pages only.
    @param own_ports: returns the ports the server listens on now (known
        only once it listens, hence a callable).
    @param server_names: the names the server's pages are served under
        (C{--server-name}), besides C{localhost} and IP addresses.
    """

    def __init__(self, patterns: Iterable[str], own_ports: Callable[[], Iterable[int]],
                 server_names: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self.allow_any = "*" in self.patterns
        self._compiled = [compile_origin_pattern(p) for p in self.patterns if p != "*"]
        self._own_ports = own_ports
        self.server_names = frozenset(parse_server_name(name) for name in server_names)

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        """
        Whether a request carrying C{origin}, sent to C{host_header}, may
        proceed. A request without an Origin header (not from a browser page)
        is allowed: origin checks protect browsers' users, and non-browser
        clients can send any header anyway.
        """
        if origin is None:
            return True
        if self.allow_any:
            return True
        origin = origin.strip().lower()
        if any(pattern.fullmatch(origin) for pattern in self._compiled):
            return True
        return self._is_own_page(origin, host_header)

    def _is_own_page(self, origin: str, host_header: str | None) -> bool:
        parts = self._on_own_port(origin, host_header)
        return parts is not None and self._is_known_host(parts.hostname or "")

    def _on_own_port(self, origin: str, host_header: str | None) -> SplitResult | None:
        """
        The parts of C{origin} when it is a page at the host the request was
        sent to and on one of the server's ports (whether that host is this
        server is another question), else C{None}.
        """
        if origin == "null" or not host_header:
            return None
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = parts.hostname, parts.port
            served = urlsplit("//" + host_header.strip().lower())
            served_host = served.hostname
        except ValueError:
            return None
        if parts.scheme not in ("http", "https") or origin_host is None or origin_host != served_host:
            return None
        if origin_port is None:
            origin_port = _DEFAULT_PORTS[parts.scheme]
        return parts if origin_port in set(self._own_ports()) else None

    def _is_known_host(self, host: str) -> bool:
        """
        Whether C{host} names this server for certain: an IP address (a
        request carrying it as Host reached this server at that address,
        and an address cannot be rebound), C{localhost}, or a
        C{--server-name}.
        """
        host = host.rstrip(".")
        return host in _LOOPBACK_NAMES or host in self.server_names or _is_ip(host)

    def advice(self, origin: str, host_header: str | None = None) -> str:
        """
        What to configure to accept C{origin}: logged with every refusal.
        """
        parts = self._on_own_port(origin.strip().lower(), host_header)
        if parts is not None and parts.hostname is not None and not self._is_known_host(parts.hostname):
            return (f"{parts.hostname!r} is not a name of this server (DNS rebinding?); if it is, start the "
                    f"server with --server-name {parts.hostname}")
        return f"to allow it, start the server with --allowed-origin {origin}"
