"""
A loopback TCP proxy that breaks connections on purpose, for the
reliability tests.

Clients connect to the proxy instead of the server; every byte is forwarded
both ways until the test says otherwise:

  - L{FaultyProxy.reset}: both sides get a TCP reset (RST), as when a NAT
    box or a crashed peer forgets the connection;
  - L{FaultyProxy.freeze}: the proxy stops forwarding and stops reading, and
    sends nothing, no FIN: a silently dropped connection (a laptop that went
    to sleep, a proxy that cut an idle connection). Only timeouts can tell.

Connections opened after a fault work normally, so a client that reconnects
through the proxy gets through.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

__all__ = ["FaultyProxy", "start_proxy"]


class _Half(Protocol):
    """
    One side of a proxied connection; forwards what it reads to its peer.
    """

    def __init__(self, pair: "_Pair") -> None:
        self.pair = pair
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.pair.forward(self, data)

    def connectionLost(self, reason: Any) -> None:
        self.lost = True
        self.pair.half_lost(self)


class _Pair:
    """
    A client connection to the proxy and the proxy's connection to the
    server.
    """

    def __init__(self, proxy: "FaultyProxy") -> None:
        self.proxy = proxy
        self.downstream = _Half(self)   # the client's side
        self.upstream: _Half | None = None  # the server's side, once connected
        self.pending: list[bytes] = []
        self.frozen = False
        self.broken = False

    def forward(self, source: _Half, data: bytes) -> None:
        if self.frozen:
            return
        if source is self.downstream:
            if self.upstream is None or self.upstream.transport is None:
                self.pending.append(data)
            else:
                self.upstream.transport.write(data)
        elif not self.downstream.lost:
            self.downstream.transport.write(data)

    def upstream_connected(self, upstream: _Half) -> None:
        self.upstream = upstream
        pending, self.pending = self.pending, []
        for data in pending:
            upstream.transport.write(data)

    def half_lost(self, half: _Half) -> None:
        """
        A clean end of one side is passed on (a FIN stays a FIN), unless the
        pair is frozen: then the other side hears nothing.
        """
        if self.frozen:
            return
        other = self.upstream if half is self.downstream else self.downstream
        if not self.broken and other is not None and not other.lost and other.transport is not None:
            other.transport.loseConnection()
        if self.downstream.lost and (self.upstream is None or self.upstream.lost):
            self.proxy._forget(self)

    def halves(self) -> list[_Half]:
        return [h for h in (self.downstream, self.upstream) if h is not None and h.transport is not None]

    def reset(self) -> None:
        self.broken = True
        for half in self.halves():
            if not half.lost:
                half.transport.abortConnection()

    def freeze(self) -> None:
        """
        Stop forwarding and stop reading on both sides: the kernel buffers
        fill, nothing is acknowledged at the application level, and no FIN
        or RST is sent.
        """
        self.frozen = True
        for half in self.halves():
            if not half.lost:
                half.transport.pauseProducing()


class _DownstreamFactory(Factory):
    def __init__(self, proxy: "FaultyProxy") -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> _Half:
        pair = _Pair(self.proxy)
        self.proxy.pairs.append(pair)
        self.proxy.accepted += 1
        downstream = pair.downstream
        downstream.factory = self
        self.proxy._connect_upstream(pair)
        return downstream


class FaultyProxy:
    """
    Forwards C{127.0.0.1:port} to C{target_host:target_port}.

    @ivar accepted: connections accepted so far (a reconnecting client adds
        one each time).
    """

    def __init__(self, reactor: Any, target_host: str, target_port: int) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.pairs: list[_Pair] = []
        self.accepted = 0
        self.port: Any = None
        self._frozen: list[_Pair] = []

    @property
    def listening_port(self) -> int:
        return self.port.getHost().port

    def url(self, scheme: str = "ws", path: str = "/") -> str:
        return f"{scheme}://127.0.0.1:{self.listening_port}{path}"

    async def start(self) -> "FaultyProxy":
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1")
        self.port = await endpoint.listen(_DownstreamFactory(self))
        return self

    def _connect_upstream(self, pair: _Pair) -> None:
        endpoint = TCP4ClientEndpoint(self.reactor, self.target_host, self.target_port, timeout=5)
        factory = Factory.forProtocol(lambda: _Half(pair))

        def connected(upstream: _Half) -> None:
            pair.upstream_connected(upstream)
            if pair.downstream.lost or pair.broken:
                upstream.transport.abortConnection()

        def failed(failure: Any) -> None:
            if pair.downstream.transport is not None:
                pair.downstream.transport.abortConnection()

        endpoint.connect(factory).addCallbacks(connected, failed)

    def _forget(self, pair: _Pair) -> None:
        if pair in self.pairs:
            self.pairs.remove(pair)

    def live_pairs(self) -> list[_Pair]:
        return [p for p in self.pairs if not p.frozen and not p.broken and not p.downstream.lost]

    def reset(self) -> int:
        """
        Reset every live connection (RST to both ends); returns how many.
        """
        pairs = self.live_pairs()
        for pair in pairs:
            pair.reset()
        return len(pairs)

    def freeze(self) -> int:
        """
        Silently freeze every live connection; returns how many.
        """
        pairs = self.live_pairs()
        for pair in pairs:
            pair.freeze()
            self._frozen.append(pair)
        return len(pairs)

    async def stop(self) -> None:
        """
        Stop listening and drop whatever is left (frozen pairs included).
        """
        for pair in list(self.pairs) + self._frozen:
            pair.frozen = True
            pair.reset()
        self._frozen.clear()
        if self.port is not None:
            await defer.maybeDeferred(self.port.stopListening)
            self.port = None


async def start_proxy(reactor: Any, target_port: int, target_host: str = "127.0.0.1") -> FaultyProxy:
    """
    A started L{FaultyProxy} in front of C{target_host:target_port}.
    """
    return await FaultyProxy(reactor, target_host, target_port).start()
