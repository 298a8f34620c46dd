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
    Counts open connections in total and per IP address, so a flood from
    one address cannot take every slot. Limits of 0 mean no limit.
    """

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: dict[str, int] = {}

    def refusal(self, ip: str) -> str | None:
        """
        Why a new connection from C{ip} must be refused, or C{None}.
        """
        if self.max_total and self.total >= self.max_total:
            return f"server full: {self.max_total} connections (--max-connections)"
        if self.max_per_ip and self.per_ip.get(ip, 0) >= self.max_per_ip:
            return f"too many connections from {ip}: {self.max_per_ip} (--max-connections-per-ip)"
        return None

    def acquire(self, ip: str) -> None:
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1

    def release(self, ip: str) -> None:
        self.total -= 1
        remaining = self.per_ip.get(ip, 0) - 1
        if remaining > 0:
            self.per_ip[ip] = remaining
        else:
            self.per_ip.pop(ip, None)
