"""
The plain EventSource example page (html/events.html, no library) in a real
Chromium against a twistd server: it follows a channel, publishes through
C{/send} with its stream's secret, and resumes without losing or repeating
a message both when the server ends its stream (the browser reconnects by
itself with C{Last-Event-ID}) and when the page opens a new stream with
C{?lastEventId=}.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


@pytest.fixture
def server(server_process):
    return server_process()


def post(url: str, body: dict | None = None, secret: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-AppServer-Session"] = secret
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.loads(answer.read())


def publish(server, channel: str, data: str) -> int:
    return post(server.url("ajax") + "/publish", {"channel": channel, "data": data})["pos"]


def shown(page) -> list[str]:
    """
    The messages the page lists, without its notes.
    """
    return page.locator("#messages li:not(:has(.note)) span:not(.pos)").all_text_contents()


def test_the_page_follows_a_channel_and_resumes_exactly_after_the_server_ends_its_stream(server, new_page):
    page = new_page(server.url("static") + "/events.html?channel=news")
    expect(page.locator("#status")).to_have_text("following news")
    expect(page.locator("#last-id")).to_have_text(re.compile(r"^\S+:\d+$"))

    publish(server, "news", "one")
    publish(server, "elsewhere", "not followed")
    publish(server, "news", "two")
    expect(page.locator("#messages li")).to_have_count(2)
    page.fill("#text", "from the page")
    page.click("#publish")
    expect(page.locator("#messages li")).to_have_count(3)
    assert shown(page) == ["one", "two", "from the page"]

    # The server ends the stream; while the browser waits to reconnect
    # (the retry hint), more is published.
    secret = page.evaluate("window.eventStreamDemo.secret")
    assert post(server.url("ajax") + "/disconnect", secret=secret) == {"ok": True}
    missed = [publish(server, "news", text) for text in ("three", "four")]
    expect(page.locator("#recovery")).to_have_text("resumed: nothing missed")
    expect(page.locator("#status")).to_have_text("following news")
    publish(server, "news", "five")
    expect(page.locator("#messages li:not(:has(.note))")).to_have_count(6)
    assert shown(page) == ["one", "two", "from the page", "three", "four", "five"]
    positions = [int(text.lstrip("#")) for text in page.locator("#messages .pos").all_text_contents()]
    assert positions == sorted(set(positions)) and missed == positions[3:5]
    assert page.evaluate("window.eventStreamDemo.secret") != secret
    assert page.errors == []


def test_a_paused_page_resumes_from_its_last_event_id(server, new_page):
    page = new_page(server.url("static") + "/events.html?channel=news")
    expect(page.locator("#status")).to_have_text("following news")
    publish(server, "news", "before the pause")
    expect(page.locator("#messages li")).to_have_count(1)

    page.click("#pause")
    expect(page.locator("#status")).to_have_text("paused")
    publish(server, "news", "while paused 1")
    publish(server, "news", "while paused 2")
    page.click("#resume")
    expect(page.locator("#recovery")).to_have_text("resumed: nothing missed")
    expect(page.locator("#messages li:not(:has(.note))")).to_have_count(3)
    assert shown(page) == ["before the pause", "while paused 1", "while paused 2"]
    assert page.errors == []


def test_a_bad_channel_name_is_refused_and_the_page_says_so(server, new_page):
    page = new_page(server.url("static") + "/events.html?channel=" + "bad%20name")
    expect(page.locator("#status")).to_have_text("refused; trying again in 5 s")
