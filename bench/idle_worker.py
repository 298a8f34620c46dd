"""Load-generator process for the idle-connection and deflate phases (driven by idle.py).

Why not worker.py: that worker is built for closed-loop throughput; here a
process holds tens of thousands of *idle* connections, so what matters is how
little each costs (a small read buffer, one tiny listener object), that every
server ping is answered and counted, that a connection the server drops is
seen, and that one broadcast reaches every connection exactly once.  It also
speaks to servers through the ``websockets`` library with permessage-deflate,
which picows does not implement.

JSON lines on stdin, one JSON line answered on stdout per command:

  {"cmd": "open", "client": "picows"|"websockets", "url": U, "count": n,
   "sources": ["127.0.0.2", ...], "concurrency": c, "timeout": s,
   "deflate": bool, "subscribe": channel|null} -> {"opened": k, "failed": f, "errors": [...], "extensions": {...}}
  {"cmd": "status"}                          -> {"open": k, "dropped": d, "pings": p, "received": {id: count},
                                                 "duplicates": x, "other_frames": o, "first_ns": t, "last_ns": t,
                                                 "wire_bytes": b, "payload_bytes": b}
  {"cmd": "reset"}                           -> clears the receive counters (not the connections)
  {"cmd": "close", "timeout": s}             -> {"open": k still open after the deadline}
  {"cmd": "exit"}                            -> (process exits)

Connection i binds its socket to ``sources[i % len(sources)]`` (port 0: the
kernel picks an ephemeral port for that address) before connecting, so one
load generator can exceed the ~28k ephemeral ports of a single source address.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import chatmsg
from workers import open_all, run_worker_process, serve_commands

try:
    import picows
except ImportError:  # pragma: no cover - idle.py checks before starting workers
    picows = None  # type: ignore[assignment]


class Counters:
    """Everything this process counts; one instance shared by all connections."""

    def __init__(self) -> None:
        self.n_open = 0
        self.dropped = 0
        self.pings = 0
        self.received: dict[int, int] = {}
        self.duplicates = 0
        self.other_frames = 0
        self.first_ns = 0
        self.last_ns = 0
        self.wire_bytes = 0
        self.payload_bytes = 0
        self.closing = False

    def reset_receive(self) -> None:
        self.received = {}
        self.duplicates = self.other_frames = self.first_ns = self.last_ns = 0
        self.wire_bytes = self.payload_bytes = 0

    def on_chat(self, seen: set[int] | None, payload: bytes) -> set[int] | None:
        """Account for one text frame; ``seen`` is the connection's set of ids (None until its first)."""
        parsed = chatmsg.parse_marker(payload)
        if parsed is None:
            return seen
        now = time.monotonic_ns()
        msg_id = parsed[0]
        if seen is None:
            seen = set()
        if msg_id in seen:
            self.duplicates += 1
            return seen
        seen.add(msg_id)
        self.received[msg_id] = self.received.get(msg_id, 0) + 1
        self.payload_bytes += len(payload)
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        return seen


C = Counters()


def _subscribe_frame(channel: str) -> bytes:
    return json.dumps({"type": "subscribe", "data": {"channel": channel}}).encode()

if picows is not None:

    class IdleListener(picows.WSListener):
        """One idle picows connection: answers pings itself (so they can be counted), records chats."""

        __slots__ = ("seen", "up")

        def __init__(self) -> None:
            super().__init__()
            self.seen: set[int] | None = None
            self.up = False

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            t = frame.msg_type
            if t == picows.WSMsgType.PING:
                C.pings += 1
                transport.send_pong(frame.get_payload_as_bytes())
            elif t == picows.WSMsgType.TEXT:
                # A fin=False text frame would be a fragment: counted apart, never as a chat.
                if frame.fin:
                    self.seen = C.on_chat(self.seen, frame.get_payload_as_bytes())
                else:
                    C.other_frames += 1
            elif t == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            else:
                C.other_frames += 1

        def on_ws_disconnected(self, transport: Any) -> None:
            if self.up:
                self.up = False
                C.n_open -= 1
                if not C.closing:
                    C.dropped += 1


class Worker:
    def __init__(self) -> None:
        self.picows_conns: list[tuple[Any, Any]] = []
        self.ws_conns: list[Any] = []
        self.ws_tasks: list[asyncio.Task[None]] = []
        self.extensions: dict[str, int] = {}

    async def cmd_open(self, msg: dict[str, Any]) -> dict[str, Any]:
        count = int(msg["count"])
        sources = list(msg.get("sources") or ["127.0.0.1"])
        sem = asyncio.Semaphore(int(msg.get("concurrency", 16)))
        errors: list[str] = []
        opener = self._open_picows if msg.get("client", "picows") == "picows" else self._open_websockets
        url, deflate = msg["url"], bool(msg.get("deflate"))
        subscribe = msg.get("subscribe")

        async def one(i: int) -> bool:
            source = sources[i % len(sources)]
            async with sem:
                for attempt in range(3):
                    try:
                        await opener(url, source, deflate, subscribe)
                        return True
                    except Exception as exc:  # noqa: BLE001 - reported, not raised
                        if len(errors) < 5:
                            errors.append(f"{source}: {type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.5 * (attempt + 1))
            return False

        opened = await open_all([one(i) for i in range(count)], float(msg["timeout"]), errors)
        return {"opened": opened, "failed": count - opened, "errors": errors, "extensions": self.extensions}

    async def _open_picows(self, url: str, source: str, deflate: bool, subscribe: str | None) -> None:
        assert picows is not None, "picows is not installed"
        transport, listener = await picows.ws_connect(
            IdleListener, url,
            websocket_handshake_timeout=30,
            enable_auto_pong=False,  # IdleListener answers (and counts) every ping itself
            max_frame_size=1 << 20,
            read_buffer_init_size=2048,  # picows's default 16 KiB per connection would dominate our memory
            local_addr=(source, 0),
        )
        listener.up = True
        C.n_open += 1
        self.picows_conns.append((transport, listener))
        if subscribe:
            transport.send(picows.WSMsgType.TEXT, _subscribe_frame(subscribe))
        ext = "(none)"
        response = getattr(transport, "response", None)
        if response is not None:
            ext = str(response.headers.get("Sec-WebSocket-Extensions", "(none)"))
        self.extensions[ext] = self.extensions.get(ext, 0) + 1

    async def _open_websockets(self, url: str, source: str, deflate: bool, subscribe: str | None) -> None:
        from websockets.asyncio.client import ClientConnection, connect

        class CountingConnection(ClientConnection):
            """Counts the bytes the socket delivers (frames as on the wire, compressed or not)."""

            def data_received(self, data: bytes) -> None:
                C.wire_bytes += len(data)
                super().data_received(data)

        ws = await connect(
            url,
            compression="deflate" if deflate else None,
            create_connection=CountingConnection,
            open_timeout=30,
            ping_interval=None,  # the server pings; websockets answers them automatically
            max_size=1 << 20,
            max_queue=None,
            local_addr=(source, 0),
        )
        C.n_open += 1
        self.ws_conns.append(ws)
        if subscribe:
            await ws.send(_subscribe_frame(subscribe).decode())
        ext = ws.response.headers.get("Sec-WebSocket-Extensions", "(none)") if ws.response else "(none)"
        self.extensions[ext] = self.extensions.get(ext, 0) + 1
        self.ws_tasks.append(asyncio.ensure_future(self._read_websockets(ws)))

    async def _read_websockets(self, ws: Any) -> None:
        seen: set[int] | None = None
        try:
            async for message in ws:
                if isinstance(message, str):
                    message = message.encode()
                seen = C.on_chat(seen, message)
        except Exception:  # noqa: BLE001 - the connection ended abnormally: counted below
            pass
        C.n_open -= 1
        if not C.closing:
            C.dropped += 1

    def cmd_status(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"open": C.n_open, "dropped": C.dropped, "pings": C.pings,
                "received": {str(k): v for k, v in C.received.items()}, "duplicates": C.duplicates,
                "other_frames": C.other_frames, "first_ns": C.first_ns, "last_ns": C.last_ns,
                "wire_bytes": C.wire_bytes, "payload_bytes": C.payload_bytes}

    def cmd_reset(self, msg: dict[str, Any]) -> dict[str, Any]:
        C.reset_receive()
        return {}

    async def cmd_close(self, msg: dict[str, Any]) -> dict[str, Any]:
        timeout = float(msg.get("timeout", 10))
        C.closing = True
        for transport, _ in self.picows_conns:
            if not transport.is_disconnected:
                transport.send_close(picows.WSCloseCode.OK)
                transport.disconnect()
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t, _ in self.picows_conns]
        waits += [asyncio.ensure_future(ws.close()) for ws in self.ws_conns]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        still = 0
        for transport, _ in self.picows_conns:
            if not transport.is_disconnected:
                still += 1
                transport.disconnect(graceful=False)
        for ws in self.ws_conns:
            if ws.transport is not None and not ws.transport.is_closing():
                still += 1
                ws.transport.abort()
        for task in self.ws_tasks:
            task.cancel()
        self.picows_conns.clear()
        self.ws_conns.clear()
        self.ws_tasks.clear()
        return {"open": still}

    async def serve(self) -> None:
        await serve_commands({"open": self.cmd_open, "status": self.cmd_status, "reset": self.cmd_reset,
                              "close": self.cmd_close})


if __name__ == "__main__":
    run_worker_process(lambda: Worker().serve())  # Worker() is made inside the running loop
