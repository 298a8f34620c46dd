"""
Logs (appserver.logs): --log-format json gives one parseable JSON object per
line under twistd, connection and access lines carry their fields, and no
message body is ever logged.
"""

from __future__ import annotations

import json
import signal
import time
from urllib.parse import quote

import pytest
import pytest_twisted
import treq
from twisted.internet import task
from twisted.logger import LogLevel, Logger, LogPublisher, formatEvent
from twisted.python.failure import Failure

from appserver._server import logs
from appserver._server.logs import json_line, json_lines_observer, twistd_json_observer, use_json_logging_in_twistd
from support.wsclient import next_message, open_client, wait_closed

TIMEOUT = 5
SECRET = "do-not-log-this-body"


async def wait_for_log(process, reactor, text):
    deadline = time.monotonic() + TIMEOUT
    while text not in process.log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never logged:\n{process.log()}")
        await task.deferLater(reactor, 0.02, lambda: None)


def parsed_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one(events, prefix):
    found = [event for event in events if event["message"].startswith(prefix)]
    assert len(found) == 1, f"{prefix!r}: {found}"
    return found[0]


# twistd -n appserver --log-format json ----------------------------------------

@pytest_twisted.ensureDeferred
async def test_json_log_lines_carry_connection_fields_and_no_bodies(server_process, reactor):
    process = server_process("--log-format", "json")
    origin = process.url("static")
    ajax = process.url("ajax")

    client = await open_client(process.url("ws"), reactor, origin=origin)
    await next_message(client, reactor, "welcome")
    client.sendMessage(json.dumps({"type": "chat", "data": SECRET}).encode())
    await next_message(client, reactor, "chat")
    client.closeHandshakeTimeout = TIMEOUT  # the server is busy starting up: give it time to answer
    client.sendClose(1000)
    assert (await wait_closed(client, reactor, timeout=TIMEOUT))[0] == 1000

    connected = await (await treq.post(ajax + "/connect", headers={"Origin": [origin]}, persistent=False)).json()
    session = connected["session"]
    message = quote(json.dumps({"type": "chat", "data": SECRET}))
    sent = await treq.get(f"{ajax}/send?session={session}&callback=cb&msg={message}", persistent=False)
    assert (await sent.text()).startswith("/**/cb(")
    await treq.post(f"{ajax}/disconnect", headers={"Origin": [origin], "X-AppServer-Session": [session]},
                    persistent=False)
    await wait_for_log(process, reactor, "WebSocket closed")
    await wait_for_log(process, reactor, "Ajax session closed")
    await wait_for_log(process, reactor, '"uri":"/disconnect"')
    process.stop()

    text = process.log()
    events = parsed_lines(text)  # every line is JSON
    for event in events:
        assert {"time", "level", "namespace", "message"} <= set(event)
    assert SECRET not in text
    assert session not in text  # the Ajax session's secret is a credential

    opened = one(events, "WebSocket open")
    assert opened["transport"] == "websocket" and opened["origin"] == origin
    assert opened["peer"].startswith("tcp4:127.0.0.1:")
    closed = one(events, "WebSocket closed")
    assert (closed["transport"], closed["code"], closed["origin"], closed["peer"]) == \
        ("websocket", 1000, origin, opened["peer"])
    assert closed["client_id"] == opened["client_id"]

    session_open = one(events, "Ajax session open")
    assert (session_open["transport"], session_open["origin"]) == ("ajax", origin)
    assert session_open["peer"].startswith("tcp4:127.0.0.1:")
    session_closed = one(events, "Ajax session closed")
    assert (session_closed["transport"], session_closed["code"]) == ("ajax", 1000)

    access = [event for event in events if {"method", "uri", "code", "client"} <= set(event)]
    send_line = next(event for event in access if event["uri"] == "/send")
    assert (send_line["method"], send_line["code"], send_line["client"]) == ("GET", 200, "127.0.0.1")
    assert all("?" not in event["uri"] for event in access)


def test_the_json_format_can_come_from_the_environment(server_process):
    process = server_process(env={"APPSERVER_LOG_FORMAT": "json"})
    process.stop()
    events = parsed_lines(process.log())
    assert any(event["message"].startswith("appserver ajax site listening on port") for event in events)


def test_text_stays_the_default(server_process):
    process = server_process()
    process.stop()
    first = process.log().splitlines()[0]
    with pytest.raises(ValueError):
        json.loads(first)


# The observer -----------------------------------------------------------------

def _event(**fields):
    events = []
    publisher = LogPublisher(events.append)
    log = Logger(namespace="appserver.test", observer=publisher)
    log.info(fields.pop("format", "hello {who}"), **fields)
    return events[0]


def test_a_line_has_the_standard_fields_then_the_event_fields():
    record = json.loads(json_line(_event(who="world", peer="tcp:1.2.3.4:5", code=1000)))
    assert list(record)[:4] == ["time", "level", "namespace", "message"]
    assert record["message"] == "hello world"
    assert record["level"] == "info" and record["namespace"] == "appserver.test"
    assert (record["who"], record["peer"], record["code"]) == ("world", "tcp:1.2.3.4:5", 1000)
    assert record["time"].endswith("+00:00")


def test_values_that_are_not_json_become_text():
    record = json.loads(json_line(_event(who=object(), blob=b"\x00\x01", many={1, 2})))
    assert record["who"].startswith("<object object at")
    assert isinstance(record["blob"], str) and isinstance(record["many"], str)


def test_a_failure_is_logged_with_its_traceback():
    events = []
    log = Logger(namespace="appserver.test", observer=LogPublisher(events.append))
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("handler for {message_type!r} failed", Failure(), message_type="chat")
    record = json.loads(json_line(events[0]))
    assert record["level"] == "critical"
    assert record["message"] == "handler for 'chat' failed"
    assert record["error"] == "division by zero"
    assert "ZeroDivisionError" in record["failure"]


def test_the_observer_writes_one_line_per_event(tmp_path):
    path = tmp_path / "out.log"
    with open(path, "w") as stream:
        observer = json_lines_observer(stream)
        observer(_event(who="a"))
        observer(_event(who="b"))
    assert [json.loads(line)["who"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_an_explicit_twistd_logger_or_syslog_wins():
    assert use_json_logging_in_twistd({"logger": "my.observer"}) is False
    assert use_json_logging_in_twistd({"logger": None, "syslog": True}) is False
    assert use_json_logging_in_twistd(None) is False


def test_twistd_gets_a_logger_name_it_can_import(monkeypatch, tmp_path):
    from twisted.python.reflect import namedAny
    monkeypatch.setattr(logs, "_twistd_destination", None)
    options = {"logger": None, "logfile": str(tmp_path / "twistd.log"), "nodaemon": True}
    assert use_json_logging_in_twistd(options) is True
    factory = namedAny(options["logger"])
    assert factory is twistd_json_observer
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        observer = factory()  # installs twistd's SIGUSR1 log rotation, like twistd
        observer(_event(who="file"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert json.loads((tmp_path / "twistd.log").read_text())["who"] == "file"


def test_formatting_matches_the_text_log():
    event = _event(format="WebSocket closed {client_id} code={code}", client_id="abc", code=1001)
    assert json.loads(json_line(event))["message"] == formatEvent(event) == "WebSocket closed abc code=1001"
    assert event["log_level"] is LogLevel.info
