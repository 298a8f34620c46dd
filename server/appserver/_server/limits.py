"""
Rate and connection limits, as small pure objects with a clock passed in.
"""

from __future__ import annotations

from typing import Callable

__all__ = ["TokenBucket", "ConnectionLimiter"]


class TokenBucket:
    """
    Allows C{rate} events per second on average with bursts up to C{burst}.
    A rate of 0 allows everything.
    """

    __slots__ = ("rate", "burst", "_tokens", "_updated", "_clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class ConnectionLimiter:
    """
    Counts connections in total and per IP address, so a flood from one
    address cannot take every slot. Limits of 0 mean no limit.

    Two kinds of connection are counted, each under the same two limits:
    clients (open WebSockets and Ajax sessions, from admission to close),
    and connections still I{opening}: sockets whose HTTP request or
    WebSocket upgrade has not fully arrived yet. An opening connection
    costs a descriptor and a parser as a client does, so a peer that opens
    sockets and trickles its requests is bounded like one that completes
    them; it is counted apart so that an address at its client limit can
    still send the requests of the Ajax sessions it has.

    @ivar total: clients.
    @ivar per_ip: clients per address.
    @ivar opening: connections still opening.
    @ivar opening_per_ip: connections still opening, per address.
    """

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self.opening = 0
        self.opening_per_ip: dict[str, int] = {}

    def refusal(self, ip: str, opening: bool = False) -> str | None:
        """
        Why a new connection from C{ip} must be refused, or C{None}.

        @param opening: for a connection whose request has not arrived
            yet, rather than a client.
        """
        total, per_ip = (self.opening, self.opening_per_ip) if opening else (self.total, self.per_ip)
        kind = "connections still sending their request" if opening else "connections"
        if self.max_total and total >= self.max_total:
            return f"server full: {self.max_total} {kind} (--max-connections)"
        if self.max_per_ip and per_ip.get(ip, 0) >= self.max_per_ip:
            return f"too many {kind} from {ip}: {self.max_per_ip} (--max-connections-per-ip)"
        return None

    def acquire(self, ip: str, opening: bool = False) -> None:
        """
        Hold a place for a client from C{ip} (C{opening}: for a connection
        whose request has not arrived yet).
        """
        if opening:
            self.opening += 1
            self.opening_per_ip[ip] = self.opening_per_ip.get(ip, 0) + 1
        else:
            self.total += 1
            self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

    def release(self, ip: str, opening: bool = False) -> None:
        """
        Give back a place taken by L{acquire} with the same arguments.
        """
        if opening:
            self.opening -= 1
            per_ip = self.opening_per_ip
        else:
            self.total -= 1
            per_ip = self.per_ip
        remaining = per_ip.get(ip, 0) - 1
        if remaining > 0:
            per_ip[ip] = remaining
        else:
            per_ip.pop(ip, None)
