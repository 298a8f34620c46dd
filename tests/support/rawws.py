"""
A raw WebSocket client over a real socket: it writes the handshake and the
frames it is told to, and records every frame the server sends as it came
off the wire (the compressed bit, control frames, sizes), which a WebSocket
library would hide.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint

from support.wsclient import wait_until


class RawClient(protocol.Protocol):
    """
    Sends a handshake with the given extension offer, then collects frames
    as (first byte, payload) without interpreting them.
    """

    def __init__(self, offer: str | None) -> None:
        self.offer = offer
        self.buffer = b""
        self.headers: dict[str, str] | None = None
        self.frames: list[tuple[int, bytes]] = []
        self.closed = defer.Deferred()

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        extension = f"Sec-WebSocket-Extensions: {self.offer}\r\n" if self.offer else ""
        assert self.transport is not None
        self.transport.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self.headers is None:
            head, found, rest = self.buffer.partition(b"\r\n\r\n")
            if not found:
                return
            lines = head.decode().split("\r\n")[1:]
            self.headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
            self.buffer = rest
        while len(self.buffer) >= 2:
            first, second = self.buffer[0], self.buffer[1] & 0x7F
            offset = 2
            if second == 126:
                (second,), offset = struct.unpack("!H", self.buffer[2:4]), 4
            elif second == 127:
                (second,), offset = struct.unpack("!Q", self.buffer[2:10]), 10
            if len(self.buffer) < offset + second:
                return
            self.frames.append((first, self.buffer[offset:offset + second]))
            self.buffer = self.buffer[offset + second:]

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)

    def send_frame(self, payload: bytes, compressed: bool) -> None:
        mask = os.urandom(4)
        first = 0xC1 if compressed else 0x81
        length = len(payload)
        header = bytes((first, 0x80 | 126)) + struct.pack("!H", length) if length >= 126 \
            else bytes((first, 0x80 | length))
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        assert self.transport is not None
        self.transport.write(header + mask + masked)

    def send_pong(self, payload: bytes = b"") -> None:
        """
        Answer a ping: one masked pong frame, written alone.
        """
        self.send_control(0xA, payload)

    def send_control(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        assert self.transport is not None
        self.transport.write(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)

    def texts(self) -> list[dict]:
        """
        The data frames, inflated when compressed, as JSON.
        """
        out = []
        for first, payload in self.frames:
            if first & 0x0F != 0x1:
                continue
            if first & 0x40:
                payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
            out.append(json.loads(payload))
        return out


async def connect_raw(reactor: Any, port: int, offer: str | None = None) -> RawClient:
    """
    Connect to a WebSocket port on 127.0.0.1 and wait for the first frame.
    """
    client = RawClient(offer)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await endpoint.connect(protocol.Factory.forProtocol(lambda: client))
    await wait_until(lambda: client.headers is not None and client.frames, reactor)
    return client
