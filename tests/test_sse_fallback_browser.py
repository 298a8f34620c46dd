"""
The client library's transport order in a real Chromium (issue 15, item 6):
the demo chat (html/index.html) in a browser without C{window.WebSocket}
talks over the event stream (C{sse}) with a WebSocket page, both ways; with
C{EventSource} also removed it falls back to Ajax long polling.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

NO_WEBSOCKET = "delete window.WebSocket"
NO_WEBSOCKET_NO_EVENTSOURCE = "delete window.WebSocket; delete window.EventSource"


@pytest.fixture
def server(server_process):
    return server_process("--app", "appserver.apps.gallery:app")


def connected(page, transport: str) -> None:
    expect(page.locator("#status")).to_have_text(f"connected over {transport}")


def say(page, text: str) -> None:
    page.fill("#textToSend", text)
    page.click("#send")


def counts(server) -> dict:
    with urllib.request.urlopen(server.url("ajax") + "/get_client_count", timeout=5) as answer:
        return json.loads(answer.read())


def chat_both_ways(fallback, ws) -> None:
    say(fallback, "from the page without WebSocket")
    say(ws, "from the WebSocket page")
    for page in (fallback, ws):
        log = page.locator("#content")
        expect(log).to_contain_text(" : from the page without WebSocket")
        expect(log).to_contain_text(" : from the WebSocket page")


def test_page_without_websocket_chats_over_the_event_stream_with_a_websocket_page(server, new_page):
    sse = new_page(server.url("static") + "/", init_script=NO_WEBSOCKET)
    ws = new_page(server.url("static") + "/")
    connected(sse, "sse")
    connected(ws, "websocket")
    assert sse.evaluate("typeof window.WebSocket") == "undefined"
    answer = counts(server)
    assert (answer["client_count"], answer["websocket"], answer["sse"], answer["ajax"]) == (2, 1, 1, 0)

    chat_both_ways(sse, ws)
    # Each side's messages arrive once, in the same order on both pages.
    texts = [page.locator("#content li").all_text_contents() for page in (sse, ws)]
    assert texts[0] == texts[1] and len(texts[0]) == 2
    assert sse.errors == [] and ws.errors == []


# Without WebSocket, and with the page's EventSource wrapped so the test can
# read each stream's secret (the client keeps it to itself).
WATCHED_EVENTSOURCE = NO_WEBSOCKET + """;
(function () {
  var Native = window.EventSource;
  window.__streams = [];
  window.EventSource = function (url) {
    var source = new Native(url);
    var entry = {url: url, secrets: []};
    window.__streams.push(entry);
    source.addEventListener("message", function (event) {
      var envelope = JSON.parse(event.data);
      if (envelope.type === "welcome") { entry.secrets.push(envelope.data.session); }
    });
    return source;
  };
})();
"""


def post(url: str, secret: str) -> dict:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={
        "Content-Type": "application/json", "X-AppServer-Session": secret})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def test_a_stream_the_server_ends_comes_back_by_itself_and_misses_nothing(server, new_page):
    sse = new_page(server.url("static") + "/", init_script=WATCHED_EVENTSOURCE)
    ws = new_page(server.url("static") + "/")
    connected(sse, "sse")
    connected(ws, "websocket")
    say(ws, "before")
    expect(sse.locator("#content li")).to_have_count(1)
    secret = sse.evaluate("window.__streams[0].secrets[0]")

    # The server ends the stream; the browser reconnects by itself (the same
    # EventSource, with Last-Event-ID) while the other page goes on talking.
    assert post(server.url("ajax") + "/disconnect", secret) == {"ok": True}
    say(ws, "while the stream was down")
    connected(sse, "sse")
    expect(sse.locator("#content li")).to_have_count(2)
    assert sse.evaluate("window.__streams.length") == 1, "the browser's own reconnect, no new EventSource"
    secrets = sse.evaluate("window.__streams[0].secrets")
    assert len(secrets) == 2 and secrets[1] != secret, "a new stream has a new secret"
    # And the page still sends, with the new secret.
    chat_both_ways(sse, ws)
    texts = sse.locator("#content li").all_text_contents()
    said = [text.split(" : ", 1)[1] for text in texts]
    assert said[:2] == ["before", "while the stream was down"]
    assert sorted(said[2:]) == ["from the WebSocket page", "from the page without WebSocket"]
    assert sse.errors == [] and ws.errors == []


def test_without_websocket_and_eventsource_the_page_falls_back_to_long_polling(server, new_page):
    ajax = new_page(server.url("static") + "/", init_script=NO_WEBSOCKET_NO_EVENTSOURCE)
    ws = new_page(server.url("static") + "/")
    connected(ajax, "ajax")
    connected(ws, "websocket")
    assert ajax.evaluate("typeof window.EventSource") == "undefined"
    answer = counts(server)
    assert (answer["websocket"], answer["sse"], answer["ajax"]) == (1, 0, 1)
    chat_both_ways(ajax, ws)
    assert ajax.errors == [] and ws.errors == []
