"""Load-generator worker: holds many client connections and accounts for every broadcast received.

Why a separate process: a Python event loop saturates one core long before a
server does, so the N subscriber connections are spread over several worker
processes started by ``loadgen.FanoutPool``.  The harness drives a worker with
JSON lines on stdin and reads JSON lines on stdout:

  {"cmd": "open", "transport": "ws"|"longpoll"|"sse", "url": U, "count": n,
   "first_id": i, "concurrency": c, "timeout": s}      -> {"re": "open", "opened": k, "failed": f, "errors": [...]}
  {"cmd": "window", "on": true|false}                  -> {"re": "window"}
  {"cmd": "stats", "last_id": L}                       -> {"re": "stats", "delivered": d, "hist": {...}, "lost": l, ...}
  {"cmd": "close", "timeout": s}                       -> {"re": "close", "open": k}
  {"cmd": "exit"}                                      -> (process exits)

and, unprompted, {"ev": "done", "ids": [...]} when every open connection of
this worker has received the listed message ids (the publisher's closed loop
waits for that from all workers before sending more).

Accounting per connection relies on the order a single publisher imposes: a
connection must receive ids in increasing order; a jump is counted as lost
messages, an id below the expected one as late (out of order or duplicate).
``stats`` closes the books up to ``last_id``: whatever an open connection has
not received by then is lost.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import chatmsg
from httpclient import HttpConnection
from workers import emit, open_all, run_worker_process, serve_commands

try:
    import picows
except ImportError:  # pragma: no cover - reported by the harness at start-up
    picows = None  # type: ignore[assignment]


@dataclass
class Conn:
    """Per-connection receive state: the next message id this connection should see."""

    next_id: int
    open: bool = False


@dataclass
class Accounting:
    """Counters shared by all connections of this worker (hot path: keep attribute access cheap)."""

    n_open: int = 0
    measuring: bool = False
    delivered: int = 0
    gaps: int = 0
    late: int = 0
    dropped: int = 0
    unexpected_frames: int = 0
    hist: dict[int, int] = field(default_factory=dict)
    pending: dict[int, int] = field(default_factory=dict)


class Worker:
    """Owns the connections and the accounting; talks to the harness over stdio."""

    def __init__(self) -> None:
        self.acc = Accounting()
        self.conns: list[Conn] = []
        self.ws_transports: list[Any] = []
        self.poll_tasks: list[asyncio.Task[None]] = []
        self.poll_clients: list[LongPollClient] = []
        self.sse_clients: list[SseProtocol] = []
        self.closing = False
        self._done_batch: list[int] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()

    # -- stdout -----------------------------------------------------------
    def _flush_done(self) -> None:
        self._flush_scheduled = False
        if self._done_batch:
            batch, self._done_batch = self._done_batch, []
            emit({"ev": "done", "ids": batch})

    def _complete(self, msg_id: int) -> None:
        self._done_batch.append(msg_id)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_done)

    # -- hot path ---------------------------------------------------------
    def on_message(self, conn: Conn, msg_id: int, sent_ns: int, now_ns: int) -> None:
        """Account for one received broadcast on one connection."""
        acc = self.acc
        expected = conn.next_id
        if msg_id == expected:
            conn.next_id = msg_id + 1
        elif msg_id > expected:
            acc.gaps += msg_id - expected
            conn.next_id = msg_id + 1
        else:
            acc.late += 1
            return
        pending = acc.pending
        count = pending.get(msg_id, 0) + 1
        if count >= acc.n_open:
            pending.pop(msg_id, None)
            self._complete(msg_id)
        else:
            pending[msg_id] = count
        if acc.measuring:
            acc.delivered += 1
            key = chatmsg.bucket_us((now_ns - sent_ns) // 1000)
            hist = acc.hist
            hist[key] = hist.get(key, 0) + 1

    def on_drop(self, conn: Conn) -> None:
        """A connection closed that we did not close: it no longer counts towards completion."""
        if not conn.open:
            return
        conn.open = False
        if self.closing:
            return
        acc = self.acc
        acc.n_open -= 1
        acc.dropped += 1
        for msg_id, count in list(acc.pending.items()):
            if count >= acc.n_open:
                del acc.pending[msg_id]
                self._complete(msg_id)

    # -- commands ---------------------------------------------------------
    async def cmd_open(self, msg: dict[str, Any]) -> dict[str, Any]:
        count, first_id = int(msg["count"]), int(msg["first_id"])
        sem = asyncio.Semaphore(int(msg.get("concurrency", 32)))
        errors: list[str] = []
        opener = {"ws": self._open_ws, "longpoll": self._open_longpoll, "sse": self._open_sse}[msg["transport"]]

        async def one() -> bool:
            conn = Conn(next_id=first_id)
            async with sem:
                for attempt in range(3):
                    try:
                        await opener(conn, msg["url"])
                        conn.open = True
                        self.conns.append(conn)
                        self.acc.n_open += 1
                        return True
                    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
                        if len(errors) < 5:
                            errors.append(f"{type(exc).__name__}: {exc}")
                        await asyncio.sleep(0.2 * (attempt + 1))
            return False

        opened = await open_all([one() for _ in range(count)], float(msg["timeout"]), errors)
        return {"opened": opened, "failed": count - opened, "errors": errors}

    async def _open_ws(self, conn: Conn, url: str) -> None:
        assert picows is not None, "picows is not installed"
        transport, _ = await picows.ws_connect(
            lambda: WsListener(self, conn),
            url,
            websocket_handshake_timeout=15,
            enable_auto_pong=True,
            max_frame_size=1 << 20,
        )
        self.ws_transports.append(transport)

    async def _open_longpoll(self, conn: Conn, url: str) -> None:
        client = LongPollClient(self, conn, url)
        await client.connect()
        self.poll_clients.append(client)
        self.poll_tasks.append(asyncio.ensure_future(client.poll_forever()))

    async def _open_sse(self, conn: Conn, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
        _, protocol = await self._loop.create_connection(
            lambda: SseProtocol(self, conn, host, port, parsed.path.rstrip("/") + "/events"), host, port)
        try:
            await asyncio.wait_for(protocol.welcomed, 15)
        except BaseException:
            protocol.abort()
            raise
        self.sse_clients.append(protocol)

    def cmd_window(self, msg: dict[str, Any]) -> dict[str, Any]:
        acc = self.acc
        if msg["on"]:
            acc.delivered = 0
            acc.hist = {}
            acc.measuring = True
        else:
            acc.measuring = False
        return {"t": time.monotonic_ns()}

    def cmd_stats(self, msg: dict[str, Any]) -> dict[str, Any]:
        last_id = int(msg["last_id"])
        acc = self.acc
        tail = 0
        for conn in self.conns:
            if conn.open and conn.next_id <= last_id:
                tail += last_id + 1 - conn.next_id
                conn.next_id = last_id + 1
        for msg_id in [m for m in acc.pending if m <= last_id]:
            del acc.pending[msg_id]
        out = {
            "delivered": acc.delivered,
            "hist": acc.hist,
            "lost": acc.gaps + tail,
            "late": acc.late,
            "dropped": acc.dropped,
            "unexpected_frames": acc.unexpected_frames,
            "open": acc.n_open,
        }
        acc.gaps = acc.late = acc.dropped = acc.unexpected_frames = 0
        return out

    async def cmd_close(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.closing = True
        for transport in self.ws_transports:
            if not transport.is_disconnected:
                transport.send_close(picows.WSCloseCode.OK)
                transport.disconnect()
        for client in self.poll_clients:
            client.stop()
        for protocol in self.sse_clients:
            protocol.close()
        waits = [t.wait_disconnected() for t in self.ws_transports]
        waits += [c.disconnect() for c in self.poll_clients]
        waits += [p.closed for p in self.sse_clients if not p.closed.done()]
        if waits:
            await asyncio.wait([asyncio.ensure_future(w) for w in waits], timeout=float(msg["timeout"]))
        for transport in self.ws_transports:
            if not transport.is_disconnected:
                transport.disconnect(graceful=False)
        for task in self.poll_tasks:
            task.cancel()
        still_open = sum(1 for t in self.ws_transports if not t.is_disconnected)
        self.ws_transports.clear()
        for protocol in self.sse_clients:
            protocol.abort()
        self.sse_clients.clear()
        self.poll_clients.clear()
        self.poll_tasks.clear()
        self.conns.clear()
        self.acc = Accounting()
        self.closing = False
        return {"open": still_open}

    async def serve(self) -> None:
        """Answer the harness's commands until 'exit'; 'done' reports written so far precede each reply."""
        await serve_commands({"open": self.cmd_open, "window": self.cmd_window, "stats": self.cmd_stats,
                              "close": self.cmd_close}, before_reply=self._flush_done)

if picows is not None:

    class WsListener(picows.WSListener):
        """picows callbacks for one subscriber connection."""

        def __init__(self, worker: Worker, conn: Conn) -> None:
            super().__init__()
            self.worker = worker
            self.conn = conn

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            msg_type = frame.msg_type
            if msg_type == picows.WSMsgType.TEXT:
                if not frame.fin:
                    self.worker.acc.unexpected_frames += 1
                    return
                parsed = chatmsg.parse_marker(frame.get_payload_as_bytes())
                if parsed is not None:
                    self.worker.on_message(self.conn, parsed[0], parsed[1], time.monotonic_ns())
            elif msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
            elif msg_type != picows.WSMsgType.PONG:
                self.worker.acc.unexpected_frames += 1

        def on_ws_disconnected(self, transport: Any) -> None:
            self.worker.on_drop(self.conn)


class LongPollClient:
    """One Ajax session: POST /connect, then GET /poll in a loop, the session secret in X-AppServer-Session
    (a JSON request never carries it in its URL: docs/protocol.md, "Session secret")."""

    def __init__(self, worker: Worker, conn: Conn, base_url: str) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.worker = worker
        self.conn = conn
        self.prefix = parsed.path.rstrip("/")
        self.http = HttpConnection(parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.session = ""
        self.since = 0
        self.running = True

    async def connect(self) -> None:
        status, body = await self.http.request("POST", f"{self.prefix}/connect")
        if status != 200:
            raise RuntimeError(f"/connect answered {status}: {body[:200]!r}")
        info = json.loads(body)
        self.session = f"X-AppServer-Session: {info['session']}\r\n"
        self.since = 0  # the session's own cursor: its first poll asks since=0 (gets the welcome)

    async def poll_forever(self) -> None:
        worker, conn = self.worker, self.conn
        try:
            while self.running:
                status, body = await self.http.request(
                    "GET", f"{self.prefix}/poll", headers=f"{self.session}X-AppServer-Since: {self.since}\r\n"
                )
                now = time.monotonic_ns()
                if status != 200:
                    raise RuntimeError(f"/poll answered {status}")
                reply = json.loads(body)
                for envelope in reply.get("messages", ()):
                    data = envelope.get("data") if isinstance(envelope, dict) else None
                    if envelope.get("type") == "chat" and isinstance(data, str):
                        parsed = chatmsg.parse_marker_text(data)
                        if parsed is not None:
                            worker.on_message(conn, parsed[0], parsed[1], now)
                self.since = int(reply.get("position", self.since))
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a dead session is a dropped connection
            if self.running:
                worker.on_drop(conn)

    def stop(self) -> None:
        self.running = False

    async def disconnect(self) -> None:
        """Tell the server the session is over on a fresh connection (the old one is mid-poll)."""
        http = HttpConnection(self.http.host, self.http.port)
        try:
            await http.request("POST", f"{self.prefix}/disconnect", headers=self.session)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        finally:
            http.close()
            self.http.close()


class SseProtocol(asyncio.Protocol):
    """One event stream: GET /events over raw HTTP/1.1, read as lines (see docs/protocol.md, "Event stream").

    No SSE or chunked-encoding parser on the hot path: every event is one
    ``data: <envelope>`` line, and the server writes each HTTP chunk as whole
    events, so the chunk-size lines are simply lines that are not ``data:``.
    The chat marker is found in the raw line, as the WebSocket listener does.
    """

    def __init__(self, worker: Worker, conn: Conn, host: str, port: int, path: str) -> None:
        self.worker = worker
        self.conn = conn
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
        self.transport: asyncio.Transport | None = None
        self.head_done = False
        self.buffer = b""
        loop = asyncio.get_running_loop()
        self.welcomed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        if not self.head_done:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            status = buffer[:buffer.find(b"\r\n")]
            if b" 200 " not in status + b" ":
                self._fail(RuntimeError(f"/events answered {status!r}"))
                return
            self.head_done = True
            buffer = buffer[end + 4:]
        last = buffer.rfind(b"\n")
        if last < 0:
            self.buffer = buffer
            return
        self.buffer = buffer[last + 1:]
        now = 0
        worker, conn, parse = self.worker, self.conn, chatmsg.parse_marker
        for line in buffer[:last].split(b"\n"):
            if line.startswith(b"data:"):
                parsed = parse(line)
                if parsed is not None:
                    if not now:
                        now = time.monotonic_ns()
                    worker.on_message(conn, parsed[0], parsed[1], now)
                elif not self.welcomed.done() and b'"welcome"' in line:
                    self.welcomed.set_result(None)

    def _fail(self, error: Exception) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(error)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.welcomed.done():
            self.welcomed.set_exception(ConnectionError("the stream ended before its welcome"))
        if not self.closed.done():
            self.closed.set_result(None)
        self.worker.on_drop(self.conn)

    def close(self) -> None:
        """EventSource.close(): the connection goes, the server counts the stream out."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


if __name__ == "__main__":
    run_worker_process(lambda: Worker().serve())  # Worker() is made inside the running loop
