"""
Every Python example of docs/api.md and docs/channels.md, run.

Each ```python block of those pages is a complete module whose first line
names it (C{# example: NAME}). This test executes each block as a fresh
module, starts a real in-process server with the C{app} it defines, and
talks to it as the page says a client would (WebSocket, Ajax, JSONP). An
example without an exercise here, or an exercise whose example is gone, fails
the suite: the docs cannot drift from the code.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import types
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from support.wsclient import next_message, open_client, open_welcomed, send, wait_closed, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "docs" / "api.md", ROOT / "docs" / "channels.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NAME = re.compile(r"# example: ([a-z_]+)\s*$")


@dataclass(frozen=True)
class Example:
    page: str
    line: int
    name: str | None
    code: str

    def __str__(self) -> str:
        return f"{self.page}:{self.line}:{self.name}"


def find_examples() -> list[Example]:
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            code = match.group(1)
            line = text.count("\n", 0, match.start()) + 2
            named = NAME.match(code.splitlines()[0]) if code.strip() else None
            found.append(Example(path.name, line, named.group(1) if named else None, code))
    return found


EXAMPLES = find_examples()


def load(example: Example) -> types.ModuleType:
    """
    Execute an example as a module of its own (as C{--app} would import it).
    """
    module = types.ModuleType(f"docs_example_{example.name}")
    module.__file__ = f"{example.page}:{example.line}"
    sys.modules[module.__name__] = module
    try:
        exec(compile(example.code, f"docs/{example.page}:{example.line}", "exec"), module.__dict__)
    except BaseException:
        del sys.modules[module.__name__]
        raise
    return module


# Talking to the server ----------------------------------------------------------


async def connect(url, reactor):
    return await open_welcomed(url, reactor)


async def ask(client, reactor, message_type, data=None, request_id=1):
    """
    Send a request and return its C{reply} or C{error}; other traffic stays
    queued, in order.
    """
    send(client, message_type, data, request_id)
    skipped = []
    try:
        for _ in range(1000):
            message = await next_message(client, reactor)
            if message.get("type") in ("reply", "error") and message.get("id") == request_id:
                return message
            skipped.append(message)
        raise AssertionError("no answer")
    finally:
        client.messages[:0] = skipped      # left for the next next_message()


async def replied(client, reactor, message_type, data=None, request_id=1):
    answer = await ask(client, reactor, message_type, data, request_id)
    assert answer["type"] == "reply", answer
    return answer["data"]


async def error_code(client, reactor, message_type, data=None, request_id=1):
    answer = await ask(client, reactor, message_type, data, request_id)
    assert answer["type"] == "error", answer
    return answer["data"]["code"]


async def subscribe(client, reactor, channel):
    send(client, "subscribe", {"channel": channel}, "s")
    assert (await next_message(client, reactor, "reply"))["id"] == "s"


async def http(method, url, body=None):
    response = await treq.request(method, url, persistent=False,
                                  data=json.dumps(body).encode() if body is not None else None)
    return response.code, await response.content()


# One exercise per example ----------------------------------------------------------

EXERCISES = {}


def exercise(function):
    EXERCISES[function.__name__] = function
    return function


@exercise
async def quickstart(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    assert await replied(client, reactor, "add", {"a": 1, "b": 2}) == 3
    code, body = await http("GET", server.ajax_url + "/time?callback=show")
    assert code == 200 and body.startswith(b"/**/show({\"time\":")
    await subscribe(client, reactor, "clock")
    tick = await next_message(client, reactor, "message", timeout=3)
    assert tick["channel"] == "clock" and isinstance(tick["data"], str)
    send(client, "chat", "still here")
    assert (await next_message(client, reactor, "chat"))["data"].endswith(" : still here")


@exercise
async def handlers(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    assert await replied(client, reactor, "add", {"a": 2, "b": 3}, 1) == 5
    assert await replied(client, reactor, "slow_add", {"a": 2, "b": 3}, 2) == 5
    assert await replied(client, reactor, "cached_add", {"a": 2, "b": 3}, 3) == 5
    send(client, "log", "twelve chars")
    assert (await next_message(client, reactor)) == {"type": "logged", "data": {"length": 12}}
    assert await replied(client, reactor, "log", "x", 4) is None     # asked: acknowledged
    assert client.messages == [{"type": "logged", "data": {"length": 1}}]


@exercise
async def errors(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    assert await replied(client, reactor, "divide", {"a": 1, "b": 4}, 1) == 0.25
    assert await error_code(client, reactor, "divide", "x", 2) == "bad_data"
    from twisted.logger import capturedLogs
    with capturedLogs() as events:
        assert await error_code(client, reactor, "divide", {"a": 1, "b": 0}, 3) == "handler_failed"
    assert any(e.get("log_failure") is not None and e["log_failure"].check(ZeroDivisionError) for e in events)
    assert await error_code(client, reactor, "multiply", None, 4) == "unknown_type"


@exercise
async def notify(module, start, reactor):
    server = await start(app=module.app)
    ann = await connect(server.ws_url, reactor)
    bob = await connect(server.ws_url, reactor)
    assert await replied(ann, reactor, "whisper", {"to": bob.client_id, "text": "psst"}) == "delivered"
    assert (await next_message(bob, reactor, "whisper"))["data"] == {"from": ann.client_id, "text": "psst"}
    assert await error_code(ann, reactor, "whisper", {"to": "nobody", "text": "?"}, 2) == "not_found"
    send(bob, "announce", "tea is ready")
    for client in (ann, bob):
        assert (await next_message(client, reactor, "announcement"))["data"] == "tea is ready"
    send(ann, "status")
    status = (await next_message(ann, reactor, "status"))["data"]
    assert status == {"clients": 2, "you": ann.client_id, "transport": "websocket"}


@exercise
async def routes(module, start, reactor):
    server = await start(app=module.app)
    code, body = await http("GET", server.ajax_url + "/price?symbol=ACME")
    assert (code, json.loads(body)) == (200, {"symbol": "ACME", "price": 120.0})
    code, body = await http("GET", server.ajax_url + "/price?symbol=ACME&callback=f")
    assert body == b'/**/f({"symbol":"ACME","price":120.0});'
    code, body = await http("GET", server.ajax_url + "/price?symbol=NOPE")
    assert code == 404 and json.loads(body)["error"]["code"] == "unknown_symbol"
    watcher = await connect(server.ws_url, reactor)
    await subscribe(watcher, reactor, "orders")
    code, body = await http("POST", server.ajax_url + "/order", {"symbol": "ACME", "qty": 10})
    assert (code, json.loads(body)) == (200, {"accepted": True, "orders": 1})
    assert (await next_message(watcher, reactor, "message"))["data"] == {"symbol": "ACME", "qty": 10}
    code, body = await http("POST", server.ajax_url + "/order", {"symbol": "ACME"})
    assert code == 400 and json.loads(body)["error"]["code"] == "bad_order"
    code, body = await http("GET", server.ajax_url + "/quote")
    assert json.loads(body) == {"quotes": {"ACME": 120.0, "GLOBEX": 48.5}}


@exercise
async def tasks(module, start, reactor):
    server = await start(app=module.app)
    assert module.state["started"] is not None
    client = await connect(server.ws_url, reactor)
    await subscribe(client, reactor, "heartbeat")
    first = await next_message(client, reactor, "message")
    second = await next_message(client, reactor, "message")
    assert second["data"]["tick"] == first["data"]["tick"] + 1
    await server.stop()
    assert module.state["started"] is None       # the shutdown hook ran


@exercise
async def auth(module, start, reactor):
    server = await start(app=module.app)
    ann = await connect(server.ws_url + "?token=t-ann", reactor)
    assert await replied(ann, reactor, "whoami") == "ann"
    with pytest.raises(Exception):
        await open_client(server.ws_url + "?token=forged", reactor, timeout=3)
    code, _ = await http("POST", server.ajax_url + "/connect")
    assert code == 403
    code, body = await http("POST", server.ajax_url + "/connect?token=t-bob")
    assert code == 200 and json.loads(body)["session"]
    assert server.tracker.get(json.loads(body)["client_id"]).attributes["user"] == "bob"


@exercise
async def echo(module, start, reactor):
    server = await start(app=module.app)
    client = await open_client(server.ws_url + "echo", reactor)
    client.sendMessage(b"any text, not an envelope")
    client.sendMessage(b"\x01\x02", isBinary=True)
    await wait_until(lambda: len(client.raw) == 2, reactor)
    assert client.raw == [(b"any text, not an envelope", False), (b"\x01\x02", True)]
    code, body = await http("GET", server.ajax_url + "/get_client_count")
    assert json.loads(body)["client_count"] == 1
    client.sendClose()
    await wait_closed(client, reactor)
    await wait_until(lambda: server.tracker.client_count == 0, reactor)


@exercise
async def compose(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    send(client, "chat", "hello")
    assert (await next_message(client, reactor, "chat"))["data"].endswith(" shouts: HELLO")
    assert await replied(client, reactor, "whisper_count") == 1


@exercise
async def blocking(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    send(client, "hash", "secret", 1)
    # The reactor serves other requests while the thread works.
    send(client, "ping", "meanwhile")
    assert (await next_message(client, reactor, "pong"))["data"] == "meanwhile"
    expected = hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 20_000).hex()
    for _ in range(100):
        message = await next_message(client, reactor)
        if message.get("id") == 1:
            break
    assert message == {"type": "reply", "re": "hash", "id": 1, "data": expected}


@exercise
async def rules(module, start, reactor):
    server = await start(app=module.app)
    client = await connect(server.ws_url, reactor)
    cases = [("news.world", "scoop", False), ("polls.lunch", "yes", True), ("polls.lunch", "maybe", False),
             ("polls.closed", "no", False), ("chat.general", "hi", True)]
    for request_id, (channel, data, allowed) in enumerate(cases):
        answer = await ask(client, reactor, "publish", {"channel": channel, "data": data}, request_id)
        assert (answer["type"] == "reply") is allowed, (channel, data, answer)
        if not allowed:
            assert answer["data"]["code"] == "forbidden"
    server.tracker.publish("news.world", "the server may")


@exercise
async def feed(module, start, reactor):
    server = await start(app=module.app)
    assert server.tracker.policy_for("prices.ACME") == "conflate"
    client = await connect(server.ws_url, reactor)
    await subscribe(client, reactor, "prices.ACME")
    quotes = [(await next_message(client, reactor, "message"))["data"] for _ in range(2)]
    assert all(quote["symbol"] == "ACME" and quote["price"] > 0 for quote in quotes)
    assert await error_code(client, reactor, "publish", {"channel": "prices.ACME", "data": 1}, 9) == "forbidden"


@exercise
async def publisher(module, start, reactor):
    server = await start(publish_token="s3cret")
    reader = await connect(server.ws_url, reactor)
    await subscribe(reader, reactor, "alerts")
    # urllib blocks: run it in a thread, as another program would run it.
    answer = await deferToThread(module.publish, server.ajax_url, "alerts", {"text": "disk full"},
                                 token="s3cret", key="disk")
    assert answer["ok"] is True and answer["subscribers"] == 1
    message = await next_message(reader, reactor, "message")
    assert message["data"] == {"text": "disk full"} and message["pos"] == answer["pos"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        await deferToThread(module.publish, server.ajax_url, "alerts", "x", token="wrong")
    assert refused.value.code == 401
    refused.value.close()


@exercise
async def rooms(module, start, reactor):
    server = await start(app=module.app)
    ann = await connect(server.ws_url, reactor)
    bob = await connect(server.ws_url, reactor)
    send(ann, "join", {"room": "lobby", "username": "ann"})
    await next_message(ann, reactor, "join")
    assert await replied(bob, reactor, "enter_lobby", "bob") == ["ann", "bob"]
    assert (await next_message(ann, reactor, "join"))["data"] == {"room": "lobby", "username": "bob"}
    assert await replied(ann, reactor, "room_chat", {"room": "lobby", "text": "hi bob"}, 2) is None
    for client in (ann, bob):
        assert (await next_message(client, reactor, "room_chat"))["data"] == {
            "room": "lobby", "username": "ann", "text": "hi bob"}
    outsider = await connect(server.ws_url, reactor)
    assert await error_code(outsider, reactor, "room_chat", {"room": "lobby", "text": "let me in"}, 3) == "forbidden"
    assert await error_code(outsider, reactor, "room_chat", "hi", 4) == "bad_data"
    assert await error_code(outsider, reactor, "enter_lobby", "", 5) == "bad_data"


# The tests ------------------------------------------------------------------------


def test_every_python_block_of_the_docs_is_a_named_example():
    assert EXAMPLES, "no Python examples found in the docs"
    unnamed = [str(example) for example in EXAMPLES if example.name is None]
    assert unnamed == [], "each ```python block must start with '# example: NAME'"
    names = [example.name for example in EXAMPLES]
    assert len(names) == len(set(names)), "example names must be unique"


def test_every_example_has_an_exercise_and_every_exercise_an_example():
    assert {example.name for example in EXAMPLES} == set(EXERCISES)


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.name in EXERCISES], ids=str)
@pytest_twisted.ensureDeferred
async def test_example_runs_as_documented(example, server_factory, reactor):
    module = load(example)
    try:
        await EXERCISES[example.name](module, server_factory, reactor)
    finally:
        sys.modules.pop(module.__name__, None)
