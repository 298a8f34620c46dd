"""
Which web pages may talk to the server: the origin policy shared by the
WebSocket handshake, Ajax sessions and CORS.

By default only the server's own pages may: an origin whose host is the
host the request was sent to and whose port is one the server listens on.
Configured patterns are anchored: C{https://*.example.com} matches
C{https://a.example.com} and C{https://a.b.example.com} but never
C{https://example.com.evil.net}.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable
from urllib.parse import urlsplit

__all__ = ["OriginPolicy", "compile_origin_pattern"]

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


class OriginPolicy:
    """
    Decides whether an C{Origin} header is acceptable.

    @param patterns: configured origins (C{--allowed-origin}); C{*} alone
        allows every origin. Empty means the server's own pages only.
    @param own_ports: returns the ports the server listens on now (known
        only once it listens, hence a callable).
    """

    def __init__(self, patterns: Iterable[str], own_ports: Callable[[], Iterable[int]]) -> None:
        self.patterns = tuple(patterns)
        self.allow_any = "*" in self.patterns
        self._compiled = [compile_origin_pattern(p) for p in self.patterns if p != "*"]
        self._own_ports = own_ports

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
        if origin == "null" or not host_header:
            return False
        try:
            parts = urlsplit(origin)
            origin_host, origin_port = parts.hostname, parts.port
            served = urlsplit("//" + host_header.strip().lower())
            served_host = served.hostname
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or origin_host is None or origin_host != served_host:
            return False
        if origin_port is None:
            origin_port = _DEFAULT_PORTS[parts.scheme]
        return origin_port in set(self._own_ports())

    def advice(self, origin: str) -> str:
        """
        What to configure to accept C{origin}: logged with every refusal.
        """
        return f"to allow it, start the server with --allowed-origin {origin}"
