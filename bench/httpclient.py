"""A tiny HTTP/1.1 keep-alive client for the long-poll phase.

Why not aiohttp or httpx: a thousand concurrent long polls from one worker
process must cost the load generator as little CPU as possible, and the
benchmark needs nothing but one request at a time on one persistent
connection, Content-Length or chunked bodies, and a timeout.
"""

from __future__ import annotations

import asyncio


class HttpError(Exception):
    """The server answered something this client cannot parse, or closed early."""


class HttpConnection:
    """One persistent connection to host:port; requests are issued one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _ensure_open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        return self._reader, self._writer

    async def request(self, method: str, target: str, body: bytes = b"", headers: str = "") -> tuple[int, bytes]:
        """Send one request and return (status, body); reconnects once if the kept-alive socket died.

        ``headers`` are extra header lines, each ending with CRLF.
        """
        for attempt in (0, 1):
            reader, writer = await self._ensure_open()
            head = (
                f"{method} {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\nContent-Type: application/json\r\n{headers}\r\n"
            ).encode()
            writer.write(head + body)
            try:
                return await self._read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read_response(self, reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked(reader)
        elif "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
            self.close()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailers (normally none) end with an empty line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)

    def close(self) -> None:
        """Drop the socket; the next request opens a new one."""
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None
