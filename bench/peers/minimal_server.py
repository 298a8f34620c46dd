"""Minimal asyncio WebSocket fan-out server: the floor for the broadcast benchmark.

Why it exists: it does the least work any Python chat server could do per
broadcast (parse one JSON message, frame the reply once, write the same bytes
to every transport), so the gap between it and a real server is the cost of
that server's features.  The handshake and framing are hand-written (RFC 6455,
server side, no extensions, no fragmentation on input) to keep any library
overhead out of the measurement.

Run: ``python minimal_server.py --port 8080 [--host 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import resource
import signal
import struct

PEER_NAME = "minimal"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_BYTES = 16384
MAX_FRAME_BYTES = 1 << 20

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """Build one unmasked, final server frame (servers never mask)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    """XOR the payload with the 4-byte mask using one big-int operation (fast in CPython)."""
    n = len(data)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Hub:
    """The set of open connections; a broadcast writes one pre-framed buffer to each."""

    def __init__(self) -> None:
        self.clients: set[asyncio.Transport] = set()

    def broadcast(self, payload: bytes) -> None:
        data = frame(OP_TEXT, payload)
        for transport in list(self.clients):
            transport.write(data)


class WsProtocol(asyncio.Protocol):
    """One client: HTTP upgrade first, then a minimal frame parser."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if peername:
            self.peer = f"{peername[0]}:{peername[1]}"

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.hub.clients.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEADER_BYTES:
                    self._abort()
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            del self.buf[: end + 4]
            if not self._handshake(head):
                return
        self._parse_frames()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _handshake(self, head: str) -> bool:
        assert self.transport is not None
        lines = head.split("\r\n")
        key = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-key":
                key = value.strip()
        if not lines[0].startswith("GET ") or key is None:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.upgraded = True
        self.hub.clients.add(self.transport)
        return True

    def _parse_frames(self) -> None:
        buf = self.buf
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            pos = 2
            if n == 126:
                if len(buf) < 4:
                    return
                n = struct.unpack_from("!H", buf, 2)[0]
                pos = 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n = struct.unpack_from("!Q", buf, 2)[0]
                pos = 10
            if not masked or not fin or n > MAX_FRAME_BYTES:
                self._close(1002)
                return
            if len(buf) < pos + 4 + n:
                return
            mask = bytes(buf[pos : pos + 4])
            payload = unmask(mask, bytes(buf[pos + 4 : pos + 4 + n]))
            del buf[: pos + 4 + n]
            self._on_frame(opcode, payload)
            if self.transport is None or self.transport.is_closing():
                return

    def _on_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        if opcode == OP_TEXT:
            self._on_text(payload)
        elif opcode == OP_PING:
            self.transport.write(frame(OP_PONG, payload))
        elif opcode == OP_CLOSE:
            self._close(1000)
        elif opcode not in (OP_PONG, OP_BINARY):
            self._close(1002)

    def _on_text(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "chat" and isinstance(msg.get("data"), str):
            out = json.dumps({"type": "chat", "data": f"Message from {self.peer} : {msg['data']}"})
            self.hub.broadcast(out.encode())

    def _close(self, code: int) -> None:
        assert self.transport is not None
        self.hub.clients.discard(self.transport)
        self.transport.write(frame(OP_CLOSE, struct.pack("!H", code)))
        self.transport.close()


def raise_nofile_limit() -> None:
    """Many connections need many descriptors: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(host: str, port: int) -> None:
    hub = Hub()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: WsProtocol(hub), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{PEER_NAME} listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()
    for transport in list(hub.clients):
        transport.abort()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
