"""
The original demo page (html/index.html) in a real Chromium: client count,
chat between two people, chat text shown as text, and the same page in a
browser without WebSockets (issue 3) chatting with one that has them.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

@pytest.fixture
def server(server_process):
    return server_process("--app", "appserver.apps.gallery:app")


def count_text(n: int) -> re.Pattern[str]:
    counted = "There is 1 client" if n == 1 else f"There are {n} clients"
    return re.compile(rf"^{counted} connected as of .+\.$")


def connected(page, transport: str) -> None:
    expect(page.locator("#status")).to_have_text(f"connected over {transport}")


def say(page, text: str) -> None:
    page.fill("#textToSend", text)
    page.click("#send")


def test_count_goes_from_one_to_two_and_chat_reaches_both(server, new_page):
    first = new_page(server.url("static") + "/")
    connected(first, "websocket")
    first.click("#update-count")
    expect(first.locator("#client_count_div")).to_have_text(count_text(1))

    second = new_page(server.url("static") + "/")
    connected(second, "websocket")
    second.click("#update-count")
    expect(second.locator("#client_count_div")).to_have_text(count_text(2))
    first.click("#update-count")
    expect(first.locator("#client_count_div")).to_have_text(count_text(2))

    say(first, "hello from the first page")
    for page in (first, second):
        expect(page.locator("#content li").last).to_have_text(
            re.compile(r"^Message from tcp4?:127\.0\.0\.1:\d+ : hello from the first page$"))
    assert first.errors == [] and second.errors == []


def test_markup_in_a_message_is_shown_as_text(server, new_page):
    sender = new_page(server.url("static") + "/")
    reader = new_page(server.url("static") + "/")
    connected(sender, "websocket")
    connected(reader, "websocket")
    # Would run if it ever became markup.
    reader.evaluate("window.__pwned = false")
    payload = '<img src=x onerror="window.__pwned = true">'
    say(sender, payload)
    for page in (sender, reader):
        expect(page.locator("#content li").last).to_contain_text(payload)
        expect(page.locator("#content img")).to_have_count(0)
    assert reader.evaluate("window.__pwned") is False


def test_page_without_websocket_chats_with_a_websocket_page(server, new_page):
    ajax = new_page(server.url("static") + "/", init_script="delete window.WebSocket; delete window.EventSource")
    ws = new_page(server.url("static") + "/")
    connected(ajax, "ajax")
    connected(ws, "websocket")

    ajax.click("#update-count")
    expect(ajax.locator("#client_count_div")).to_have_text(count_text(2))

    say(ajax, "from the page without WebSocket")
    say(ws, "from the WebSocket page")
    for page in (ajax, ws):
        log = page.locator("#content")
        expect(log).to_contain_text(" : from the page without WebSocket")
        expect(log).to_contain_text(" : from the WebSocket page")
    assert ajax.evaluate("typeof window.WebSocket") == "undefined"
    assert ajax.errors == [] and ws.errors == []
