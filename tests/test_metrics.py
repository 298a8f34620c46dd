"""
Prometheus metrics (appserver.metrics): exact values after scripted
activity on a real server, bounded labels, and the /metrics exposition.
"""

from __future__ import annotations

import json

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer

from appserver._server.app import App
from support.wsclient import next_message, open_client, wait_closed, wait_until
from appserver._server.metrics import MetricsEvents
from support.deferreds import fired

TIMEOUT = 5


async def close_client(client, reactor, code=1000):
    # Autobahn's client gives the server 2s to answer a close, then drops
    # the connection (a reset, which loses the close frame: the server
    # counts a 1006). A busy test machine can take that long.
    client.closeHandshakeTimeout = TIMEOUT * 2
    client.sendClose(code)
    await wait_closed(client, reactor, timeout=TIMEOUT * 2)


async def eventually(reactor, condition):
    """
    Wait (bounded) until the server side has caught up with the client side.
    """
    await wait_until(condition, reactor, timeout=TIMEOUT)


def value(server, name, **labels):
    found = server.runtime.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def scrape(server, accept=None):
    headers = {"Accept": [accept]} if accept else None
    response = await treq.get(server.ajax_url + "/metrics", headers=headers, persistent=False)
    return response, await response.text()


def scraped(text, name, **labels):
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


async def ajax_connect(server):
    response = await treq.post(server.ajax_url + "/connect", persistent=False)
    return (await response.json())["session"]


def session_header(session):
    """
    JSON requests carry the session secret in the X-AppServer-Session header.
    """
    return {"X-AppServer-Session": [session]}


# Connections ------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_thousand_connections_open_and_close_exactly(server_factory, reactor):
    server = await server_factory()
    _, before = await scrape(server)
    assert scraped(before, "appserver_clients", transport="websocket") == 0

    # Batches smaller than the listen backlog (50): a refused SYN would
    # only be retried a second later.
    for _ in range(25):
        clients = await defer.gatherResults(
            [defer.ensureDeferred(open_client(server.ws_url, reactor)) for _ in range(40)])
        await defer.gatherResults([defer.ensureDeferred(close_client(c, reactor)) for c in clients])
    await eventually(reactor, lambda: server.tracker.client_count == 0)

    response, text = await scrape(server)
    assert response.code == 200
    assert scraped(text, "appserver_clients", transport="websocket") == 0
    assert scraped(text, "appserver_connections_opened_total", transport="websocket") == 1000
    assert scraped(text, "appserver_connections_closed_total", transport="websocket", code="1000") == 1000, \
        [line for line in text.splitlines() if "closed_total" in line]


@pytest_twisted.ensureDeferred
async def test_connected_clients_gauge_follows_each_transport(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    await ajax_connect(server)
    await ajax_connect(server)
    assert value(server, "appserver_clients", transport="websocket") == 1
    assert value(server, "appserver_clients", transport="ajax") == 2
    assert value(server, "appserver_longpoll_sessions") == 2
    await close_client(client, reactor)
    await eventually(reactor, lambda: value(server, "appserver_clients", transport="websocket") == 0)


@pytest_twisted.ensureDeferred
async def test_close_codes_are_labelled_and_unusual_ones_are_other(server_factory, reactor):
    server = await server_factory()
    first = await open_client(server.ws_url, reactor)
    second = await open_client(server.ws_url, reactor)
    await close_client(first, reactor, code=4321)
    await close_client(second, reactor, code=4001)
    await eventually(reactor, lambda: server.tracker.client_count == 0)
    assert value(server, "appserver_connections_closed_total", transport="websocket", code="other") == 1
    assert value(server, "appserver_connections_closed_total", transport="websocket", code="4001") == 1


@pytest_twisted.ensureDeferred
async def test_ajax_disconnect_counts_a_normal_close(server_factory):
    server = await server_factory()
    session = await ajax_connect(server)
    await treq.post(server.ajax_url + "/disconnect", headers=session_header(session), persistent=False)
    assert value(server, "appserver_connections_opened_total", transport="ajax") == 1
    assert value(server, "appserver_connections_closed_total", transport="ajax", code="1000") == 1
    assert value(server, "appserver_clients", transport="ajax") == 0
    assert value(server, "appserver_longpoll_sessions") == 0


# Messages ---------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_messages_received_by_type_with_unknown_types_as_other(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor)  # welcome
    for envelope in ({"type": "chat", "data": "hi"}, {"type": "ping", "data": 1},
                     {"type": "subscribe", "data": {"channel": "news"}},
                     {"type": "no-such-type-1"}, {"type": "no-such-type-2"}):
        client.sendMessage(json.dumps(envelope).encode())
        await next_message(client, reactor)
    assert value(server, "appserver_messages_received_total", type="chat") == 1
    assert value(server, "appserver_messages_received_total", type="ping") == 1
    assert value(server, "appserver_messages_received_total", type="subscribe") == 1
    assert value(server, "appserver_messages_received_total", type="other") == 2
    assert value(server, "appserver_messages_received_total", type="no-such-type-1") == 0
    await close_client(client, reactor)


@pytest_twisted.ensureDeferred
async def test_channel_fanout_counts_recipients_bytes_and_delivery_time(server_factory, reactor):
    server = await server_factory()
    clients = [await open_client(server.ws_url, reactor) for _ in range(3)]
    for client in clients:
        await next_message(client, reactor)
        client.sendMessage(json.dumps({"type": "subscribe", "data": {"channel": "prices"}}).encode())
        await next_message(client, reactor)
    direct_before = value(server, "appserver_messages_sent_total", kind="direct")

    message = fired(server.tracker.publish("prices", {"eur": 1.1}))
    for client in clients:
        assert (await next_message(client, reactor))["channel"] == "prices"

    assert value(server, "appserver_messages_sent_total", kind="channel") == 3
    assert value(server, "appserver_sent_bytes_total", kind="channel") == 3 * len(message.payload)
    assert value(server, "appserver_fanout_recipients_count") == 1
    assert value(server, "appserver_fanout_recipients_sum") == 3
    assert value(server, "appserver_delivery_seconds_count", stage="fanout") == 1
    assert value(server, "appserver_messages_sent_total", kind="direct") == direct_before
    for client in clients:
        await close_client(client, reactor)


@pytest_twisted.ensureDeferred
async def test_direct_messages_are_counted_once_per_recipient(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    welcome = await next_message(client, reactor)
    assert welcome["type"] == "welcome"
    assert value(server, "appserver_messages_sent_total", kind="direct") == 1
    client.sendMessage(json.dumps({"type": "ping", "data": "x"}).encode())
    await next_message(client, reactor)
    assert value(server, "appserver_messages_sent_total", kind="direct") == 2
    assert value(server, "appserver_sent_bytes_total", kind="direct") > 0
    await close_client(client, reactor)


@pytest_twisted.ensureDeferred
async def test_long_poll_delivery_time_is_measured_when_the_poll_answers(server_factory):
    server = await server_factory()
    session = await ajax_connect(server)
    server.tracker.broadcast("chat", "one")
    server.tracker.broadcast("chat", "two")
    response = await treq.get(server.ajax_url + "/poll", params={"since": "0"}, headers=session_header(session),
                              persistent=False)
    assert len((await response.json())["messages"]) == 3  # welcome + two broadcasts
    # The welcome is not part of a stream and has no publication time.
    assert value(server, "appserver_delivery_seconds_count", stage="poll") == 2


@pytest_twisted.ensureDeferred
async def test_held_polls_are_counted_while_they_wait(server_factory, reactor):
    server = await server_factory(poll_timeout=5.0)
    session = await ajax_connect(server)
    first = await treq.get(server.ajax_url + "/poll", params={"since": "0"}, headers=session_header(session),
                           persistent=False)
    since = str((await first.json())["position"])
    waiting = treq.get(server.ajax_url + "/poll", params={"since": since}, headers=session_header(session),
                       persistent=False)
    await eventually(reactor, lambda: value(server, "appserver_longpoll_waiting") == 1)
    server.tracker.broadcast("chat", "wake up")
    await (await waiting).json()
    assert value(server, "appserver_longpoll_waiting") == 0


# Queues -----------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_full_queue_drops_are_counted(server_factory):
    server = await server_factory(max_queue_messages=3, queue_policy="drop-oldest")
    await ajax_connect(server)  # its welcome waits in the queue: nobody polls
    for number in range(5):
        server.tracker.broadcast("chat", number)
    # 6 messages into a queue of 3.
    assert value(server, "appserver_queue_dropped_total", transport="ajax") == 3
    assert value(server, "appserver_slow_consumer_disconnects_total", transport="ajax") == 0


@pytest_twisted.ensureDeferred
async def test_conflated_messages_are_counted(server_factory):
    server = await server_factory(queue_policy="conflate")
    await ajax_connect(server)
    for price in (1, 2, 3, 4):
        server.tracker.broadcast("price", price, key="EURUSD")
    assert value(server, "appserver_queue_conflated_total", transport="ajax") == 3


@pytest_twisted.ensureDeferred
async def test_slow_consumer_disconnects_are_counted_with_close_code_4000(server_factory):
    server = await server_factory(max_queue_messages=2, queue_policy="disconnect")
    await ajax_connect(server)
    for number in range(3):
        server.tracker.broadcast("chat", number)
    assert value(server, "appserver_slow_consumer_disconnects_total", transport="ajax") == 1
    assert value(server, "appserver_connections_closed_total", transport="ajax", code="4000") == 1
    assert value(server, "appserver_clients", transport="ajax") == 0


# Recovery and handler errors --------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_recoveries_are_counted_ok_and_failed(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor)
    tracker = server.tracker
    client.sendMessage(json.dumps({"type": "resume", "data": {"epoch": tracker.epoch, "since": 0}}).encode())
    assert (await next_message(client, reactor))["data"]["recovered"] is True
    client.sendMessage(json.dumps({"type": "resume", "data": {"epoch": "another", "since": 0}}).encode())
    assert (await next_message(client, reactor))["data"]["recovered"] is False
    assert value(server, "appserver_recoveries_total", result="ok") == 1
    assert value(server, "appserver_recoveries_total", result="failed") == 1
    await close_client(client, reactor)


@pytest_twisted.ensureDeferred
async def test_handler_errors_are_counted_by_registered_type(server_factory, reactor):
    app = App()

    @app.handler("explode")
    def explode(ctx, data):
        raise RuntimeError("boom")

    server = await server_factory(app=app)
    client = await open_client(server.ws_url, reactor)
    await next_message(client, reactor)
    client.sendMessage(json.dumps({"type": "explode", "id": 1}).encode())
    answer = await next_message(client, reactor)
    assert answer["data"]["code"] == "handler_failed"
    assert value(server, "appserver_handler_errors_total", type="explode") == 1
    assert value(server, "appserver_messages_received_total", type="explode") == 1
    await close_client(client, reactor)


# Exposition -------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_metrics_are_served_as_prometheus_text_with_process_metrics(server_factory):
    server = await server_factory()
    response, text = await scrape(server)
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"appserver_clients", "appserver_connections_opened", "appserver_messages_sent",
            "appserver_fanout_recipients", "appserver_delivery_seconds", "process_cpu_seconds"} <= names
    assert scraped(text, "appserver_accepting") == 1


@pytest_twisted.ensureDeferred
async def test_openmetrics_is_served_when_the_scraper_asks(server_factory):
    server = await server_factory()
    response, text = await scrape(server, accept="application/openmetrics-text; version=1.0.0")
    assert response.headers.getRawHeaders("content-type")[0].startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


@pytest_twisted.ensureDeferred
async def test_each_server_has_its_own_registry(server_factory):
    first = await server_factory()
    second = await server_factory()
    await ajax_connect(first)
    assert first.runtime.metrics.registry is not second.runtime.metrics.registry
    assert value(first, "appserver_clients", transport="ajax") == 1
    assert value(second, "appserver_clients", transport="ajax") == 0


def test_message_type_labels_are_bounded_to_known_types():
    events = MetricsEvents(known_types=["chat"])
    client = type("FakeClient", (), {"transport": "websocket"})()
    for message_type in ("chat", "subscribe", "x1", "x2", "x3"):
        events.message_in(client, message_type)
    values = {sample.labels["type"]: sample.value
              for family in events.registry.collect() if family.name == "appserver_messages_received"
              for sample in family.samples if sample.name.endswith("_total")}
    assert values == {"chat": 1, "subscribe": 1, "other": 3}
