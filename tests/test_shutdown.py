"""
Graceful shutdown and restart, with a real C{twistd appserver} process and
SIGTERM: clients are told to reconnect and closed with 1001, pending polls
are answered with C{closed}, the process exits within its bounded shutdown
time, and after a restart on the same ports clients come back. Without a
state file the restarted node is a new epoch (C{recovered: false}); with
C{--state-file} it keeps its epoch, positions and histories, and returning
clients recover exactly what they missed, also what was published before
the restart.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest
import pytest_twisted
import treq

from appserver._server.persistence import load_state, save_state
from appserver._core.tracker import ClientTracker, TrackerLimits
from support.servers import fixed_ports, free_ports
from support.deferreds import fired
from support.recovering_client import RecoveringAjax, RecoveringWebSocket
from support.wsclient import has_fired, next_message, open_client, sleep, wait_closed

SHUTDOWN_TIMEOUT = 2.0
#: Python start-up and teardown of the twistd process on top of the
#: shutdown itself.
PROCESS_MARGIN = 3.0




async def sigterm(reactor, process, timeout: float = SHUTDOWN_TIMEOUT + PROCESS_MARGIN) -> tuple[int | None, float]:
    """
    SIGTERM without blocking the reactor (the test's clients must keep
    running); returns the exit code and how long the exit took.
    """
    popen = process.process
    started = time.monotonic()
    popen.send_signal(signal.SIGTERM)
    while popen.poll() is None and time.monotonic() - started < timeout:
        await sleep(reactor, 0.02)
    return popen.poll(), time.monotonic() - started


def exited_gracefully(process, code: int | None) -> bool:
    """
    twistd stops the reactor on SIGTERM, runs the services' shutdown, then
    re-raises the signal so the exit status tells how it ended.
    """
    return code == -signal.SIGTERM and "Server Shut Down." in process.log()


async def publish(process, channel: str, data) -> dict:
    body = json.dumps({"channel": channel, "data": data}).encode()
    response = await treq.post(process.url("ajax") + "/publish", body, persistent=False)
    assert response.code == 200, await response.text()
    return await response.json()


# SIGTERM ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_sigterm_tells_websocket_clients_to_reconnect_then_closes_1001_and_exits_in_time(
        server_process, reactor):
    process = server_process("--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    client = await open_client(process.url("ws"), reactor)
    await next_message(client, reactor, "welcome")

    code, elapsed = await sigterm(reactor, process)
    reconnect = await next_message(client, reactor, "reconnect")
    close_code, _ = await wait_closed(client, reactor)

    assert 500 <= reconnect["data"]["after_ms"] <= 3000
    assert close_code == 1001
    assert exited_gracefully(process, code) and elapsed < SHUTDOWN_TIMEOUT + PROCESS_MARGIN
    assert "shutting down: telling 1 clients to reconnect" in process.log()


@pytest_twisted.ensureDeferred
async def test_sigterm_answers_a_pending_poll_with_the_reconnect_and_closed(server_process, reactor):
    process = server_process("--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    base = process.url("ajax")
    connected = await (await treq.post(base + "/connect", persistent=False)).json()
    session = {"X-AppServer-Session": [connected["session"]]}
    first = await (await treq.get(f"{base}/poll?since=0", headers=session, persistent=False)).json()
    pending = treq.get(f"{base}/poll?since={first['position']}", headers=session, persistent=False)
    await sleep(reactor, 0.2)       # the poll is waiting on the server
    assert not has_fired(pending)

    code, elapsed = await sigterm(reactor, process)
    answer = await (await pending).json()

    assert answer["closed"] == {"code": 1001, "reason": "server shutting down"}
    assert [m["type"] for m in answer["messages"]] == ["reconnect"]
    assert exited_gracefully(process, code) and elapsed < SHUTDOWN_TIMEOUT + PROCESS_MARGIN


@pytest_twisted.ensureDeferred
async def test_shutdown_is_bounded_even_when_a_client_never_answers_the_close(server_process, reactor):
    process = server_process("--shutdown-timeout", "1")
    port = process.ports["ws"]
    deaf = socket.create_connection(("127.0.0.1", port))
    try:
        deaf.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        deaf.settimeout(5)
        assert deaf.recv(12) == b"HTTP/1.1 101"
        # From now on it reads nothing and never answers the close frame.
        code, elapsed = await sigterm(reactor, process)
    finally:
        deaf.close()
    assert exited_gracefully(process, code)
    # Cut after the shutdown timeout (1 s), not the 5 s close handshake timeout.
    assert elapsed < 1 + PROCESS_MARGIN - 0.5


# Restart ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_without_a_state_file_a_restarted_node_is_a_new_epoch_and_says_not_recovered(
        server_process, clients, reactor):
    ports = free_ports(3)
    first = server_process(*fixed_ports(ports), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    client = clients(RecoveringWebSocket(reactor, first.url("ws"), channels=["news"], auto_reconnect=False))
    await client.start()
    await client.wait_for(lambda: client.of_type("subscribed"))
    for n in (1, 2, 3):
        await publish(first, "news", n)
    await client.wait_for(lambda: len(client.delivered) == 3)
    old_epoch = client.epoch

    code, _ = await sigterm(reactor, first)
    await client.wait_for(lambda: not client.connected)
    assert exited_gracefully(first, code) and client.closes[-1][0] == 1001 and client.of_type("reconnect")

    second = server_process(*fixed_ports(ports))
    assert second.ports == first.ports
    await publish(second, "news", 4)        # missed, and not recoverable
    client.reconnect()
    await client.wait_for(lambda: client.resumed, what="resumed by the new node")
    await publish(second, "news", 5)
    await client.wait_for(lambda: client.data("message")[-1:] == [5])

    (resumed,) = client.resumed
    assert resumed["recovered"] is False and resumed["epoch"] != old_epoch
    assert client.data("message") == [1, 2, 3, 5]


@pytest_twisted.ensureDeferred
async def test_with_a_state_file_clients_recover_exactly_what_they_missed_across_the_restart(
        server_process, clients, reactor, tmp_path):
    ports = free_ports(3)
    state = tmp_path / "state.json"
    options = [*fixed_ports(ports), "--state-file", str(state), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    first = server_process(*options)
    stayed = clients(RecoveringWebSocket(reactor, first.url("ws"), channels=["news"], auto_reconnect=False))
    left = clients(RecoveringAjax(reactor, first.url("ajax"), channels=["news"], auto_reconnect=False))
    await stayed.start()
    await left.start()
    for client in (stayed, left):
        await client.wait_for(lambda: client.of_type("subscribed"))
    before = [await publish(first, "news", n) for n in (1, 2)]
    await left.wait_for(lambda: len(left.delivered) == 2)
    await stayed.wait_for(lambda: len(stayed.delivered) == 2)

    # One client goes away before the restart and misses messages 3 and 4
    # and a chat line.
    await left.disconnect()
    assert not left.connected
    missed = [await publish(first, "news", n) for n in (3, 4)]
    stayed.send("chat", "said before the restart")
    await stayed.wait_for(lambda: len(stayed.delivered) == 5)

    code, _ = await sigterm(reactor, first)
    await stayed.wait_for(lambda: not stayed.connected)
    assert exited_gracefully(first, code) and state.exists()
    assert stayed.closes[-1][0] == 1001

    second = server_process(*options)
    assert not state.exists(), "the state file must be consumed at start"
    after = await publish(second, "news", 5)
    assert after["pos"] == missed[-1]["pos"] + 2     # positions go on (the chat line took one)
    stayed.reconnect()
    left.reconnect()
    await stayed.wait_for(lambda: stayed.resumed and len(stayed.delivered) == 6, what="stayed recovered")
    await left.wait_for(lambda: left.resumed and len(left.delivered) == 6, what="left recovered")

    expected_positions = [p["pos"] for p in before + missed] + [missed[-1]["pos"] + 1, after["pos"]]
    for client in (stayed, left):
        assert [r["recovered"] for r in client.resumed] == [True]
        assert client.positions == expected_positions
        data = client.data()
        assert data[:4] == [1, 2, 3, 4] and data[5] == 5
        assert data[4].startswith("Message from ") and data[4].endswith(" : said before the restart")
        assert len(client.received) == len(set(client.received))
    assert stayed.epoch == left.epoch == stayed.resumed[0]["epoch"]


# The state file itself --------------------------------------------------------------------------


def tracker_with_history(**limits) -> ClientTracker:
    tracker = ClientTracker(TrackerLimits(**limits), clock=lambda: 1000.0)
    tracker.broadcast("chat", "hello")
    tracker.publish("news", {"n": 1}, key="k")
    tracker.publish("news", {"n": 2})
    return tracker


def test_a_saved_state_restores_epoch_position_and_histories(tmp_path):
    saved = tracker_with_history()
    path = str(tmp_path / "state.json")
    assert save_state(saved, path)

    restored = ClientTracker(TrackerLimits(), clock=lambda: 1001.0)
    assert load_state(restored, path)

    assert restored.epoch == saved.epoch and restored.position == saved.position == 3
    for stream in ("", "news"):
        before = [(m.pos, m.payload, m.key) for m in saved.stream.history(stream).after(0)]
        after = [(m.pos, m.payload, m.key) for m in restored.stream.history(stream).after(0)]
        assert after == before
    assert fired(restored.publish("news", 3)).pos == 4


def test_the_state_file_is_deleted_once_read_so_a_crash_afterwards_starts_a_new_epoch(tmp_path):
    saved = tracker_with_history()
    path = tmp_path / "state.json"
    save_state(saved, str(path))
    load_state(ClientTracker(), str(path))
    assert not path.exists()
    after_crash = ClientTracker()
    assert not load_state(after_crash, str(path))
    assert after_crash.epoch != saved.epoch and after_crash.position == 0


def test_a_restored_history_still_obeys_the_size_and_age_limits(tmp_path):
    saved = tracker_with_history()
    path = str(tmp_path / "state.json")
    save_state(saved, path)
    smaller = ClientTracker(TrackerLimits(history_size=1), clock=lambda: 1000.0)
    load_state(smaller, path)
    assert [m.pos for m in smaller.stream.history("news").after(0)] == [3]
    assert not smaller.stream.history("news").covers(1) and smaller.stream.history("news").covers(2)

    later = ClientTracker(TrackerLimits(history_age=10), clock=lambda: 2000.0)
    save_state(saved, path)
    load_state(later, path)
    assert all(len(later.stream.history(stream)) == 0 for stream in later.stream.streams())
    assert not later.stream.history("news").covers(0)


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 99}', b'{"version": 1, "epoch": ""}', b"[]"])
def test_an_unreadable_state_file_is_ignored_and_the_node_takes_a_new_epoch(tmp_path, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    tracker = ClientTracker()
    epoch = tracker.epoch
    assert not load_state(tracker, str(path))
    assert tracker.epoch == epoch and tracker.position == 0 and tracker.stream.streams() == []


def test_saving_into_a_missing_directory_fails_without_raising(tmp_path):
    assert not save_state(tracker_with_history(), str(tmp_path / "missing" / "state.json"))


def test_the_state_file_is_json_a_person_can_read(tmp_path):
    path = tmp_path / "state.json"
    save_state(tracker_with_history(), str(path))
    state = json.loads(Path(path).read_text())
    assert state["version"] == 1 and state["position"] == 3
    assert state["histories"]["news"]["messages"][0]["envelope"] == {
        "type": "message", "channel": "news", "data": {"n": 1}, "pos": 2}
