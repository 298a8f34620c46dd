"""
Drain before exit (issue 18, item 1): on SIGTERM a real C{twistd
appserver} stops accepting, finishes the requests it is processing and
delivers their answers before it closes, so no publish is applied without
its publisher hearing of it.
"""

from __future__ import annotations

import json
import signal
import time

import orjson
import pytest_twisted
import treq
from twisted.web.client import HTTPConnectionPool

from appserver._core.tracker import ClientTracker
from appserver._server.persistence import load_state
from support.wsclient import sleep

PUBLISHERS = 24
SHUTDOWN_TIMEOUT = 3.0


async def publish_until_refused(reactor, url: str, name: str, answered: list[str], refused: list[str],
                                keep_alive: bool) -> None:
    """
    Publish C{name-1}, C{name-2}, ... one after the other (over one kept-alive
    connection, or a new connection each) until the server stops answering
    (bounded: 2000 publishes).
    """
    pool = HTTPConnectionPool(reactor, persistent=keep_alive)
    pool.maxPersistentPerHost = 1
    try:
        for n in range(1, 2001):
            key = f"{name}-{n}"
            try:
                response = await treq.post(url + "/publish", json.dumps({"channel": "news", "data": key}).encode(),
                                           pool=pool)
                await response.content()
            except Exception:
                refused.append(key)
                return
            if response.code != 200:
                refused.append(key)
                return
            answered.append(key)
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_sigterm_under_a_publish_stream_answers_every_publish_it_applied(server_process, reactor, tmp_path):
    state = tmp_path / "state.json"
    process = server_process("--state-file", str(state), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    answered: list[str] = []
    refused: list[str] = []
    from twisted.internet import defer
    streams = defer.gatherResults([defer.ensureDeferred(publish_until_refused(
        reactor, process.url("ajax"), f"p{i}", answered, refused, keep_alive=i % 2 == 0)) for i in range(PUBLISHERS)])
    deadline = time.monotonic() + 10
    while len(answered) < 200 and time.monotonic() < deadline:
        await sleep(reactor, 0.02)
    assert len(answered) >= 200, process.log()

    popen = process.process
    popen.send_signal(signal.SIGTERM)
    started = time.monotonic()
    while popen.poll() is None and time.monotonic() - started < SHUTDOWN_TIMEOUT + 5:
        await sleep(reactor, 0.02)
    await streams
    assert popen.poll() == -signal.SIGTERM, process.log()

    restored = ClientTracker()
    assert load_state(restored, str(state))
    applied = [orjson.loads(m.payload)["data"] for stream in restored.stream.streams()
               for m in restored.stream.history(stream).after(0)]
    unanswered = sorted(set(applied) - set(answered))
    assert not unanswered, f"applied without an answer: {unanswered} (refused: {refused})"
    assert len(refused) == PUBLISHERS


#: An application whose route publishes at once and answers half a second
#: later: a request still being processed when SIGTERM arrives.
SLOW_APP = """
from twisted.internet.task import deferLater
from appserver import App
from appserver.apps.chat import app as chat

app = App()
app.include(chat)

@app.route("/slow", methods=("POST",))
async def slow(request):
    published = await request.server.publish("news", request.body["data"])
    await deferLater(request.reactor, 0.5, lambda: None)
    return {"ok": True, "pos": published.pos}
"""


@pytest_twisted.ensureDeferred
async def test_sigterm_delivers_the_answers_of_requests_still_being_processed(server_process, reactor, tmp_path):
    (tmp_path / "slow_app.py").write_text(SLOW_APP)
    state = tmp_path / "state.json"
    process = server_process("--app", "slow_app:app", "--state-file", str(state),
                             "--shutdown-timeout", str(SHUTDOWN_TIMEOUT))
    from twisted.internet import defer

    async def post(n: int) -> int:
        response = await treq.post(process.url("ajax") + "/slow", json.dumps({"data": n}).encode(),
                                   persistent=False)
        assert (await response.json())["ok"] is True
        return n

    pending = [defer.ensureDeferred(post(n)) for n in range(5)]
    await sleep(reactor, 0.2)      # every request has arrived and published; none is answered
    popen = process.process
    popen.send_signal(signal.SIGTERM)
    results = await defer.DeferredList(pending, consumeErrors=True)
    started = time.monotonic()
    while popen.poll() is None and time.monotonic() - started < SHUTDOWN_TIMEOUT + 5:
        await sleep(reactor, 0.02)
    assert popen.poll() == -signal.SIGTERM, process.log()
    failures = [str(result.value) for ok, result in results if not ok]
    assert not failures, failures
    restored = ClientTracker()
    assert load_state(restored, str(state))
    assert sorted(orjson.loads(m.payload)["data"] for m in restored.stream.history("news").after(0)) == list(range(5))
