"""
Who a request comes from when a reverse proxy stands in front of the
server, and whether it came from this machine.

A proxy (nginx in docs/deploy.md) connects from its own address, usually
loopback, and says in C{X-Forwarded-For} whom it forwards. Anybody can
send that header, so it is read only from the proxies the operator names
with C{--trusted-proxy}; from anybody else the TCP peer is the client.

Being I{local} (allowed to C{POST /publish} without a token) is stricter
still: the TCP peer is a loopback address and the request carries no
forwarding header at all, trusted or not. A request that went through a
proxy came from somewhere else, whatever the proxy says.

Tests: tests/test_proxies.py.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Iterable

__all__ = ["FORWARDING_HEADERS", "HeaderReader", "TrustedProxies", "parse_proxy_network", "is_forwarded",
           "is_local"]

#: Headers by which a proxy names the client it forwards. A request with
#: any of them never counts as local.
FORWARDING_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Reads one request header by its lower-case name (C{None} when absent).
HeaderReader = Callable[[str], "str | None"]


def parse_proxy_network(text: str) -> str:
    """
    Validate one C{--trusted-proxy} value: an IP address (C{127.0.0.1},
    C{::1}) or a network (C{10.0.0.0/8}).

    @raise ValueError: naming what is accepted.
    """
    try:
        ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (use e.g. 127.0.0.1 or 10.0.0.0/8)") from None
    return str(text).strip()


def _address(text: str) -> _Address | None:
    """
    An IP address from a header entry or a peer: C{1.2.3.4}, C{::1},
    C{[::1]:443}, C{1.2.3.4:5678}, C{::ffff:1.2.3.4}; C{None} when it is
    none of these.
    """
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_forwarded(header: HeaderReader) -> bool:
    """
    Whether the request says it was forwarded by a proxy.
    """
    return any(header(name) is not None for name in FORWARDING_HEADERS)


def is_local(peer: str, header: HeaderReader) -> bool:
    """
    Whether the request was made on this machine: from a loopback address
    and through no proxy (no forwarding header).
    """
    address = _address(peer)
    return address is not None and address.is_loopback and not is_forwarded(header)


class TrustedProxies:
    """
    The proxies named by C{--trusted-proxy}, and the client address of a
    request they forwarded.
    """

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(network, strict=False) for network in networks)

    def trusts(self, address: str) -> bool:
        """
        Whether C{address} is one of the trusted proxies.
        """
        parsed = _address(address)
        return parsed is not None and any(parsed in network for network in self.networks)

    def client_address(self, peer: str, header: HeaderReader) -> str:
        """
        The address of the client that sent the request: the TCP peer,
        unless the peer is a trusted proxy that sent C{X-Forwarded-For}.
        Then the list is read from the right (each proxy appends the
        address it saw) and the first address that is not a trusted proxy
        is the client; entries further left were written by the client
        itself and prove nothing.
        """
        if not self.networks or not self.trusts(peer):
            return peer
        forwarded = header("x-forwarded-for")
        if not forwarded:
            return peer
        client = peer
        for entry in reversed(forwarded.split(",")):
            address = _address(entry)
            if address is None:
                # Not an address: whatever wrote it cannot be trusted
                # further; the last good hop is the client.
                break
            client = str(address)
            if not any(address in network for network in self.networks):
                break
        return client
