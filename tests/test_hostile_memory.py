"""
Hostile floods that used to grow the server's memory or hold its
descriptors (issue 13, items 4, 6, 7, 8 and 9), each tried as an attacker
would against a real server over real sockets: the attack, the documented
answer, the counts exact afterwards and, for the floods, a bound on the
server's resident memory (RSS of a twistd subprocess, sampled from
/proc/<pid>/status while the attack runs).

  4. a client that floods pings and never reads is owed one pong, not one
     per ping;
  6. a retained message costs its JSON text and MESSAGE_OVERHEAD bytes;
  7. the histories of all streams together stay within --history-bytes,
     the oldest messages going first, and a resume beyond what was evicted
     is told recovered: false;
  8. a request or WebSocket handshake sent a line at a time ends at its
     deadline, and half-open connections count against the per-address
     limit;
  9. every flood at once stays under the bound docs/reliability.md gives
     for the default options.

The numbers the bounds are built from are the documented ones
(docs/reliability.md, "Memory: what one client and the whole server can
hold"), written out here so that a change to them shows in this file too.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import threading
import time
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from appserver import App
from support.wsclient import open_welcomed, sleep, wait_until

TOKEN = "hostile-memory-token"
MiB = 1024 * 1024

#: docs/reliability.md: what keeping one message costs beyond its JSON text
#: (MESSAGE_OVERHEAD, plus the WebSocket header of at most 10 bytes).
MESSAGE_OVERHEAD = 192 + 10
#: docs/reliability.md: the history budget by default (--history-bytes).
DEFAULT_HISTORY_BYTES = 64 * MiB
#: docs/reliability.md: what one client can make the server hold with the
#: defaults: its queue (1 MiB of messages, and 1000 entries of about 200
#: bytes), its transport buffer (64 KiB and one turn's write, at most one
#: message of 1 MiB), one incoming message being assembled (1 MiB), and the
#: connection itself (8 KiB).
PER_CLIENT = 1 * MiB + 1000 * 200 + 64 * 1024 + 1 * MiB + 1 * MiB + 8 * 1024
#: docs/reliability.md: what a connection whose request has not arrived yet
#: can hold: Twisted's 16 KiB of headers, a body kept in memory (100 000
#: bytes; larger ones are spooled to a file) and the channel itself.
PER_OPENING = 16 * 1024 + 100_000 + 8 * 1024
#: Allocator and interpreter noise a real process shows on top (arenas
#: kept, caches, the log lines written meanwhile).
SLACK = 8 * MiB


# The server's memory ------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(field.encode() + b":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def rss(pid: int) -> int:
    return _status(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, quiet: float = 0.4, timeout: float = 60.0) -> None:
    """
    Wait until the server has done what it was given: its CPU time stops
    moving for C{quiet} seconds (at most C{timeout}).
    """
    deadline = time.monotonic() + timeout
    last, since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError(f"the server was still busy after {timeout}s")


class PeakRSS:
    """
    Samples a process's RSS every 20 ms in a thread, for the peak of an
    attack (glibc keeps freed memory, but the peak is what must fit).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def __enter__(self) -> "PeakRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss(self.pid))


# Raw clients ----------------------------------------------------------------------


def upgrade(port: int, path: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """
    A client frame, masked with the all-zero key (any key is valid; this
    one leaves the payload as is, so a flood costs no Python per byte).
    """
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 0x10000:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + b"\0\0\0\0" + payload


def take_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """
    Every complete server frame at the front of C{buffer}, removed from it.
    """
    frames = []
    while len(buffer) >= 2:
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            if len(buffer) < 4:
                break
            (length,), offset = struct.unpack("!H", buffer[2:4]), 4
        elif length == 127:
            if len(buffer) < 10:
                break
            (length,), offset = struct.unpack("!Q", buffer[2:10]), 10
        if len(buffer) < offset + length:
            break
        frames.append((opcode, bytes(buffer[offset:offset + length])))
        del buffer[:offset + length]
    return frames


class RawWebSocket:
    """
    A blocking socket speaking just enough WebSocket to attack: it reads
    only when told to, and can shrink its receive buffer so the server's
    side backs up at once.
    """

    def __init__(self, port: int, receive_buffer: int | None = None) -> None:
        self.sock = socket.socket()
        if receive_buffer is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(upgrade(port))
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        self.buffer = bytearray(rest)

    def send(self, envelope: dict[str, Any]) -> None:
        self.sock.sendall(frame(0x1, json.dumps(envelope).encode()))

    def frames_until(self, done: Callable[[list[tuple[int, bytes]]], bool],
                     timeout: float = 20.0) -> list[tuple[int, bytes]]:
        """
        Read frames until C{done(frames)} or the timeout.
        """
        frames = take_frames(self.buffer)
        deadline = time.monotonic() + timeout
        while not done(frames) and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                break
            if not chunk:
                break
            self.buffer += chunk
            frames.extend(take_frames(self.buffer))
        return frames

    def envelopes_until(self, message_type: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """
        Text envelopes up to and including the first of C{message_type}.
        """
        def done(frames: list[tuple[int, bytes]]) -> bool:
            return any(opcode == 1 and json.loads(payload).get("type") == message_type
                       for opcode, payload in frames[-50:])
        envelopes = [json.loads(payload) for opcode, payload in self.frames_until(done, timeout) if opcode == 1]
        assert envelopes and envelopes[-1]["type"] == message_type, envelopes[-3:]
        return envelopes

    def close(self) -> None:
        self.sock.close()


def publish_all(port: int, bodies: list[bytes], timeout: float = 120.0) -> list[dict[str, Any]]:
    """
    POST /publish each body on one kept-alive connection, as fast as the
    server answers; returns the answers.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    answers = []
    try:
        for body in bodies:
            connection.request("POST", "/publish", body=body, headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            answers.append(answer)
    finally:
        connection.close()
    return answers


def get_json(port: int, path: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        return json.loads(body) if path != "/metrics" else body.decode()
    finally:
        connection.close()


def counted(server: Any) -> dict[str, int]:
    counts = get_json(server.ports["ajax"], "/get_client_count")
    return {name: counts[name] for name in ("client_count", "websocket", "ajax")}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    assert condition(), f"still false after {timeout}s"


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


def channel_message(channel: str, size: int) -> bytes:
    return json.dumps({"channel": channel, "data": "x" * size}).encode()


# 4. Pongs ---------------------------------------------------------------------------

PINGS = 400_000


@pytest.mark.slow
def test_a_client_that_floods_pings_and_never_reads_is_owed_one_pong(server_process):
    server = server_process()
    pid = server.process.pid
    settle(pid)
    before = rss(pid)

    # 400 000 pings of 125 bytes (50 MiB) from a client that never reads:
    # each used to leave a pong in the transport buffer (+61 MiB).
    attacker = RawWebSocket(server.ports["ws"], receive_buffer=4096)
    burst = frame(0x9, b"p" * 125) * 1000
    with PeakRSS(pid) as memory:
        for _ in range(PINGS // 1000):
            attacker.sock.sendall(burst)
        attacker.sock.sendall(frame(0x9, b"the last ping"))
        settle(pid)
    assert memory.peak - before < PER_CLIENT + SLACK, f"+{(memory.peak - before) / MiB:.1f} MiB"

    # The documented answer: reading again, the client gets the pong of its
    # last ping, and no pong per ping.
    frames = attacker.frames_until(lambda frames: (0xA, b"the last ping") in frames[-3:])
    pongs = [payload for opcode, payload in frames if opcode == 0xA]
    assert pongs[-1] == b"the last ping"
    assert len(pongs) < PINGS // 4

    # Everyone else is served, and counted exactly.
    fresh = RawWebSocket(server.ports["ws"])
    assert fresh.envelopes_until("welcome")[-1]["type"] == "welcome"
    assert counted(server) == {"client_count": 2, "websocket": 2, "ajax": 0}
    attacker.close()
    fresh.close()
    wait_for(lambda: counted(server)["client_count"] == 0)


# 6. What a retained message costs -----------------------------------------------------

RETAINED = 1000
#: The JSON of each message is just over 4 KiB: the JSON encoder's buffer
#: for it has 8 KiB, which a history used to keep.
DATA_SIZE = 4150


def test_retained_history_costs_its_json_and_the_documented_overhead(server_process):
    server = server_process("--publish-token", TOKEN)
    pid = server.process.pid
    subscriber = RawWebSocket(server.ports["ws"])
    welcome = subscriber.envelopes_until("welcome")[-1]["data"]
    subscriber.send({"type": "subscribe", "data": {"channel": "kept"}})
    subscriber.envelopes_until("subscribed")
    bodies = [channel_message("kept", DATA_SIZE) for _ in range(RETAINED)]
    # The allocator grows its arenas on the first publishes, once.
    publish_all(server.ports["ajax"], [channel_message("warm-up", DATA_SIZE) for _ in range(200)])
    settle(pid)
    before = rss(pid)

    # The subscriber reads along, so every message is framed for it too.
    received: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: received.extend(
        json.loads(payload) for opcode, payload in subscriber.frames_until(
            lambda frames: sum(opcode == 1 for opcode, _ in frames) >= RETAINED, timeout=60) if opcode == 1))
    reader.start()
    answers = publish_all(server.ports["ajax"], bodies)
    reader.join(70)
    assert len(received) == RETAINED
    settle(pid)
    grown = rss(pid) - before

    size = len(json.dumps({"type": "message", "channel": "kept", "data": "x" * DATA_SIZE, "pos": 1000},
                          separators=(",", ":")))
    documented = RETAINED * (size + MESSAGE_OVERHEAD)
    assert grown < documented * 1.25 + 2 * MiB, \
        f"{grown / RETAINED:.0f} bytes per retained message of {size} (documented {size + MESSAGE_OVERHEAD})"

    # All of them are kept: a client that was away recovers each, once, in order.
    returning = RawWebSocket(server.ports["ws"])
    returning.envelopes_until("welcome")
    returning.send({"type": "resume", "data": {"epoch": welcome["epoch"], "since": welcome["position"],
                                               "channels": ["kept"]}})
    envelopes = returning.envelopes_until("resumed", timeout=30)
    replayed = [envelope["pos"] for envelope in envelopes if envelope["type"] == "message"]
    assert replayed == [answer["pos"] for answer in answers]
    assert envelopes[-1]["data"]["recovered"] is True
    assert counted(server) == {"client_count": 2, "websocket": 2, "ajax": 0}
    subscriber.close()
    returning.close()
    wait_for(lambda: counted(server)["client_count"] == 0)


# 7. A total budget for all histories ----------------------------------------------------

FRESH_CHANNELS = 3000
BUDGET = 4 * MiB


def test_histories_of_all_streams_stay_within_the_budget_oldest_evicted_first(server_process):
    server = server_process("--publish-token", TOKEN, "--history-bytes", str(BUDGET))
    pid = server.process.pid
    watcher = RawWebSocket(server.ports["ws"])
    welcome = watcher.envelopes_until("welcome")[-1]["data"]
    bodies = [channel_message(f"fresh.{n}", 8 * 1024) for n in range(FRESH_CHANNELS)]
    settle(pid)
    before = rss(pid)

    # 3000 messages of 8 KiB on channels nobody follows (24 MiB of JSON):
    # all used to be kept for --history-age.
    with PeakRSS(pid) as memory:
        answers = publish_all(server.ports["ajax"], bodies)
        settle(pid)
    assert memory.peak - before < BUDGET + SLACK, f"+{(memory.peak - before) / MiB:.1f} MiB"

    # The metrics: what is kept, within the budget; what was evicted.
    metrics = get_json(server.ports["ajax"], "/metrics")
    kept_bytes = metric(metrics, "appserver_history_bytes")
    evicted = metric(metrics, "appserver_history_evicted_total")
    # Each kept message costs its JSON, the overhead and its stream's own
    # (1 KiB and its name): the budget is used, not exceeded.
    per_message = 8 * 1024 + 100 + MESSAGE_OVERHEAD + 1024 + 20
    assert BUDGET - 2 * per_message <= kept_bytes <= BUDGET
    assert FRESH_CHANNELS - BUDGET // (8 * 1024) <= evicted <= FRESH_CHANNELS - BUDGET // per_message

    # Oldest first: the first channel's message is gone, and a resume that
    # asks for it is told so; the newest is kept, and recovered exactly.
    first = RawWebSocket(server.ports["ws"])
    first.envelopes_until("welcome")
    first.send({"type": "resume", "data": {"epoch": welcome["epoch"], "since": welcome["position"],
                                           "channels": ["fresh.0"]}})
    envelopes = first.envelopes_until("resumed")
    assert envelopes[-1]["data"]["recovered"] is False
    assert [e for e in envelopes if e["type"] == "message"] == []

    last = RawWebSocket(server.ports["ws"])
    last.envelopes_until("welcome")
    newest = answers[-1]["pos"]
    last.send({"type": "resume", "data": {"epoch": welcome["epoch"], "since": newest - 1,
                                          "channels": [f"fresh.{FRESH_CHANNELS - 1}"]}})
    envelopes = last.envelopes_until("resumed")
    assert [e["pos"] for e in envelopes if e["type"] == "message"] == [newest]
    assert envelopes[-1]["data"]["recovered"] is True

    assert counted(server) == {"client_count": 3, "websocket": 3, "ajax": 0}
    for client in (watcher, first, last):
        client.close()
    wait_for(lambda: counted(server)["client_count"] == 0)


# 8. Deadlines, and half-open connections under the per-address limit -------------------


class TricklingPeer(Protocol):
    """
    Sends its request a few bytes at a time, forever if let, and keeps
    what comes back.
    """

    def __init__(self, request: bytes, reactor: Any, every: float = 0.2, step: int = 4) -> None:
        self.request = request
        self.reactor = reactor
        self.every = every
        self.step = step
        self.sent = 0
        self.received = b""
        self.opened_at = 0.0
        self.lost: defer.Deferred[float] = defer.Deferred()
        self._call: Any = None

    def connectionMade(self) -> None:
        self.opened_at = self.reactor.seconds()
        self._next()

    def _next(self) -> None:
        if self.sent < len(self.request) - 4:      # never the final CRLF CRLF
            self.transport.write(self.request[self.sent:self.sent + self.step])
            self.sent += self.step
        self._call = self.reactor.callLater(self.every, self._next)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self.lost.callback(self.reactor.seconds() - self.opened_at)

    @property
    def status(self) -> int | None:
        return int(self.received.split(b" ", 2)[1]) if self.received.startswith(b"HTTP/1.1 ") else None


async def trickle(reactor: Any, port: int, request: bytes, source: str = "127.0.0.1") -> TricklingPeer:
    peer = TricklingPeer(request, reactor)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0)), peer)
    return peer


class Answered(Protocol):
    """
    Sends a whole request at once and keeps the answer.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


async def answered(reactor: Any, port: int, request: bytes, source: str = "127.0.0.1") -> Answered:
    peer = Answered(request)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, bindAddress=(source, 0)), peer)
    await wait_until(lambda: b"\r\n\r\n" in peer.received, reactor)
    return peer


@pytest_twisted.ensureDeferred
async def test_trickled_requests_end_at_their_deadline_and_count_against_the_address(server_factory, reactor):
    handshake, request = 1.0, 1.5
    server = await server_factory(handshake_timeout=handshake, request_timeout=request,
                                  max_connections_per_ip=3)
    ws, ajax = server.port("ws"), server.port("ajax")
    limiter = server.runtime.limiter

    # Three upgrade requests sent four bytes every 0.2 s from one address:
    # each byte used to restart the timeout, so they stayed open for ever.
    trickling = [await trickle(reactor, ws, upgrade(ws)) for _ in range(2)]
    trickling.append(await trickle(reactor, ajax, b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n"))
    await wait_until(lambda: limiter.opening == 3, reactor)

    # Half-open, they hold the address's places: a fourth connection is
    # refused at once, on any site; another address is served.
    refused = await answered(reactor, ws, upgrade(ws))
    assert refused.received.startswith(b"HTTP/1.1 503 ")
    assert json.loads(refused.received.partition(b"\r\n\r\n")[2])["error"]["code"] == "too_many_connections"
    elsewhere = await answered(reactor, ws, upgrade(ws), source="127.0.0.2")
    assert elsewhere.received.startswith(b"HTTP/1.1 101 ")
    assert server.tracker.client_count == 1

    # Each ends at its deadline, counted from the connection, with 408.
    durations = [await peer.lost.addTimeout(request + 3.0, reactor) for peer in trickling]
    assert all(deadline - 0.1 <= lasted <= deadline + 0.8
               for lasted, deadline in zip(durations, (handshake, handshake, request)))
    assert [peer.status for peer in trickling] == [408, 408, 408]

    # The places are given back: the address connects again, counts exact.
    assert limiter.opening == 0 and limiter.opening_per_ip == {}
    again = await open_welcomed(server.ws_url, reactor)
    assert server.tracker.count_by_transport()["websocket"] == 2 and limiter.total == 2
    again.transport.abortConnection()
    elsewhere.transport.abortConnection()
    await wait_until(lambda: server.tracker.client_count == 0 and limiter.total == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_a_websocket_handshake_gets_only_what_is_left_of_its_deadline(server_factory, reactor):
    app = App()
    deciding: list[defer.Deferred[Any]] = []

    @app.authenticate
    def never_decides(info: dict[str, Any]) -> defer.Deferred[Any]:
        deciding.append(defer.Deferred())
        return deciding[-1]

    server = await server_factory(app=app, handshake_timeout=1.0)
    port = server.port("ws")
    peer = Answered(b"")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
    started = reactor.seconds()
    await sleep(reactor, 0.6)
    # The upgrade arrives late but whole, and the application takes its
    # time: the handshake ends one second after the connection, not one
    # second after the request.
    peer.transport.write(upgrade(port))
    await peer.lost.addTimeout(3.0, reactor)
    assert 0.9 <= reactor.seconds() - started <= 1.3
    assert len(deciding) == 1 and not peer.received.startswith(b"HTTP/1.1 101")
    await wait_until(lambda: server.runtime.limiter.total == 0 and server.runtime.limiter.opening == 0, reactor)


@pytest_twisted.ensureDeferred
async def test_an_open_websocket_is_not_cut_by_the_handshake_deadline(server_factory, reactor):
    server = await server_factory(handshake_timeout=1.0)
    port = server.port("ws")
    peer = Answered(b"")
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
    await sleep(reactor, 0.6)
    peer.transport.write(upgrade(port))
    await wait_until(lambda: peer.received.startswith(b"HTTP/1.1 101"), reactor)
    await sleep(reactor, 0.8)
    assert not peer.lost.called and server.tracker.client_count == 1
    peer.transport.abortConnection()
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


def test_a_long_replay_is_written_as_the_client_reads_and_live_messages_follow_it(server_process):
    server = server_process("--publish-token", TOKEN)
    ws, ajax = server.ports["ws"], server.ports["ajax"]
    watcher = RawWebSocket(ws)
    welcome = watcher.envelopes_until("welcome")[-1]["data"]
    missed = publish_all(ajax, [channel_message("long", 4000) for _ in range(400)])     # 1.6 MB

    # The client resumes and does not read for a while: the server writes up
    # to its transport's high-water mark and waits; live messages queue
    # behind the replay.
    returning = RawWebSocket(ws, receive_buffer=4096)
    returning.envelopes_until("welcome")
    returning.send({"type": "resume", "data": {"epoch": welcome["epoch"], "since": welcome["position"],
                                               "channels": ["long"]}})
    time.sleep(0.3)
    live = publish_all(ajax, [channel_message("long", 10) for _ in range(5)])
    frames = returning.frames_until(lambda frames: sum(opcode == 1 for opcode, _ in frames) >= 406)
    envelopes = [json.loads(payload) for opcode, payload in frames if opcode == 1]

    assert [e["pos"] for e in envelopes if e["type"] == "message"] == [a["pos"] for a in missed + live]
    assert [e["type"] for e in envelopes[399:402]] == ["message", "resumed", "message"]
    assert envelopes[400]["data"]["recovered"] is True
    assert counted(server) == {"client_count": 2, "websocket": 2, "ajax": 0}
    watcher.close()
    returning.close()
    wait_for(lambda: counted(server)["client_count"] == 0)


# 9. Everything at once, under the documented bound ----------------------------------------


@pytest.mark.slow
def test_every_flood_at_once_stays_under_the_documented_bound(server_process):
    server = server_process("--publish-token", TOKEN)
    pid = server.process.pid
    ws, ajax = server.ports["ws"], server.ports["ajax"]
    watcher = RawWebSocket(ws)
    welcome = watcher.envelopes_until("welcome")[-1]["data"]
    settle(pid)
    before = rss(pid)
    clients = 1         # the watcher
    opening = 0
    held: list[Any] = []

    with PeakRSS(pid) as memory:
        # History: 100 MiB on fresh channels, beyond the 64 MiB budget.
        publish_all(ajax, [channel_message(f"flood.{n}", 64 * 1024) for n in range(1600)])

        # Slow consumers: 20 clients subscribed to a busy channel, not reading.
        for _ in range(20):
            slow = RawWebSocket(ws, receive_buffer=4096)
            slow.send({"type": "subscribe", "data": {"channel": "busy"}})
            held.append(slow)
        clients += 20
        time.sleep(0.5)
        publish_all(ajax, [channel_message("busy", 16 * 1024) for _ in range(200)])

        # Replays: 20 clients resume from before the flood, not reading.
        for n in range(20):
            replaying = RawWebSocket(ws, receive_buffer=4096)
            replaying.send({"type": "resume", "data": {
                "epoch": welcome["epoch"], "since": welcome["position"],
                "channels": [f"flood.{m}" for m in range(1600 - 100 * (n % 5) - 100, 1600 - 100 * (n % 5))]}})
            held.append(replaying)
        clients += 20

        # Pings: 100 000 from one client that never reads.
        pinger = RawWebSocket(ws, receive_buffer=4096)
        burst = frame(0x9, b"p" * 125) * 1000
        for _ in range(100):
            pinger.sock.sendall(burst)
        held.append(pinger)
        clients += 1

        # Half-open: 150 connections that send half a request and wait.
        for n in range(150):
            half = socket.create_connection(("127.0.0.1", ws if n % 2 else ajax), timeout=10)
            half.sendall(b"POST /send HTTP/1.1\r\nHost: x\r\nContent-Length: 90000\r\n\r\n" + b"x" * 80_000)
            held.append(half)
        opening += 150
        settle(pid)

    documented = DEFAULT_HISTORY_BYTES + clients * PER_CLIENT + opening * PER_OPENING + SLACK
    grown = memory.peak - before
    assert grown < documented, f"+{grown / MiB:.1f} MiB, documented bound {documented / MiB:.1f} MiB"

    metrics = get_json(ajax, "/metrics")
    assert metric(metrics, "appserver_history_bytes") <= DEFAULT_HISTORY_BYTES
    assert metric(metrics, "appserver_connections_opening") == 150

    # Everyone else is still served, and counted exactly.
    fresh = RawWebSocket(ws)
    fresh.envelopes_until("welcome")
    counts = counted(server)
    assert counts["ajax"] == 0 and counts["websocket"] == counts["client_count"]
    for thing in held:
        thing.close()
    fresh.close()
    watcher.close()
    wait_for(lambda: counted(server)["client_count"] == 0, timeout=20)
    wait_for(lambda: metric(get_json(ajax, "/metrics"), "appserver_connections_opening") == 0)
