"""
Every page of the demo gallery in a real Chromium, against
C{twistd appserver --app appserver.apps.gallery:app}: two browser contexts
(two people) wherever the demo is shared.
"""

from __future__ import annotations

import json
import re
import urllib.request

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

DEMOS = ["clock", "ticker", "rooms", "board", "editor", "countdown", "dashboard"]
NUMBER = re.compile(r"^\d+$")


@pytest.fixture
def server(server_process):
    return server_process("--app", "appserver.apps.gallery:app")


def page_of(server, new_page, demo: str, **options):
    page = new_page(f"{server.url('static')}/{demo}.html", **options)
    expect(page.locator("#status")).to_have_text(re.compile(r"^connected over (websocket|ajax)$"))
    return page


def client_count(server) -> dict:
    with urllib.request.urlopen(server.url("ajax") + "/get_client_count", timeout=5) as answer:
        return json.load(answer)


def test_gallery_links_every_demo(server, new_page):
    page = new_page(server.url("static") + "/gallery.html")
    for demo in DEMOS:
        card = page.locator(f"#card-{demo}")
        expect(card).to_have_attribute("href", f"/{demo}.html")
        expect(card.locator("h2")).not_to_be_empty()
        expect(card.locator("p").first).not_to_be_empty()
    page.click("#card-clock")
    expect(page).to_have_url(re.compile(r"/clock\.html$"))
    expect(page.locator("#clock")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))


def test_index_links_to_the_gallery(server, new_page):
    page = new_page(server.url("static") + "/")
    page.click("header nav >> text=Demo gallery")
    expect(page.locator("#card-ticker")).to_be_visible()


def test_clock_ticks_every_second(server, new_page):
    page = page_of(server, new_page, "clock")
    clock = page.locator("#clock")
    expect(clock).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    first = clock.text_content()
    expect(clock).not_to_have_text(first)           # the next push, about a second later
    expect(page.locator("#ticks")).to_have_text(re.compile(r"^([2-9]|\d\d+) pushes received$"))
    assert page.errors == []


def test_ticker_updates_chosen_symbols_in_both_pages(server, new_page):
    first = page_of(server, new_page, "ticker")
    second = page_of(server, new_page, "ticker")
    for page in (first, second):
        expect(page.locator("#quotes tbody tr")).to_have_count(4)
        price = page.locator("#row-ACME .price")
        expect(price).to_have_text(re.compile(r"^[\d,]+\.\d\d$"))
        before = price.text_content()
        expect(price).not_to_have_text(before)       # random walk: a new price arrives
        expect(page.locator("#row-ACME .volume")).to_have_text(re.compile(r"^[\d,. \u202f\u00a0]+$"))
        expect(page.locator("#row-ACME .change")).to_have_class(re.compile(r"\b(up|down)\b"))

    # Unticking a symbol unsubscribes this page only.
    first.uncheck("#follow-GLOBEX")
    expect(first.locator("#row-GLOBEX")).to_have_count(0)
    expect(first.locator("#quotes tbody tr")).to_have_count(3)
    globex = second.locator("#row-GLOBEX .price")
    before = globex.text_content()
    expect(globex).not_to_have_text(before)
    # Read-only channels: a page cannot publish fake prices.
    refused = first.evaluate("""() => new Promise((resolve) => {
        const client = AppServer.connect();
        client.on("open", () => client.request("publish", {channel: "prices.ACME", data: {price: 1}})
            .then(() => resolve("accepted"), (error) => { client.close(); resolve(error.code); }));
    })""")
    assert refused == "forbidden"
    assert first.errors == [] and second.errors == []


def test_rooms_presence_members_and_chat(server, new_page):
    ann = page_of(server, new_page, "rooms")
    bob = page_of(server, new_page, "rooms")

    def join(page, name):
        page.fill("#room", "lobby")
        page.fill("#username", name)
        page.click("#join")
        expect(page.locator("#joined")).to_have_text(f"In room lobby as {name}.")

    join(ann, "ann")
    expect(ann.locator("#members li")).to_have_text(["ann"])
    join(bob, "bob")
    expect(ann.locator("#room-log")).to_contain_text("bob joined.")
    expect(ann.locator("#members li")).to_have_text(["ann", "bob"])
    expect(bob.locator("#members li")).to_have_text(["ann", "bob"])
    assert client_count(server)["client_count"] == 2
    with urllib.request.urlopen(server.url("ajax") + "/get_client_count?room=lobby", timeout=5) as answer:
        assert json.load(answer)["room_count"] == 2

    bob.fill("#text", "<b>hi</b> ann")
    bob.click("#say")
    for page in (ann, bob):
        line = page.locator("#room-log li").last
        expect(line).to_have_text("bob<b>hi</b> ann")
        expect(line.locator(".who")).to_have_text("bob")
        expect(page.locator("#room-log b")).to_have_count(0)

    # Closing the tab says no goodbye: the server still tells the room.
    bob.context.close()
    expect(ann.locator("#room-log")).to_contain_text("bob left.")
    expect(ann.locator("#members li")).to_have_text(["ann"])
    expect(ann.locator("#member-count")).to_have_text("(1)")
    assert ann.errors == []


def test_board_is_shared_newest_first_and_loaded_by_new_pages(server, new_page):
    first = page_of(server, new_page, "board")
    second = page_of(server, new_page, "board")
    expect(first.locator("#board-status")).to_contain_text("empty")

    def post(page, author, text):
        page.fill("#author", author)
        page.fill("#text", text)
        page.click("#post")

    post(first, "ann", "first post")
    post(second, "bob", "second <i>post</i>")
    for page in (first, second):
        expect(page.locator("#posts li .text")).to_have_text(["second <i>post</i>", "first post"])
        expect(page.locator("#posts li .author")).to_have_text(["bob", "ann"])
        expect(page.locator("#posts i")).to_have_count(0)

    late = page_of(server, new_page, "board")
    expect(late.locator("#posts li .text")).to_have_text(["second <i>post</i>", "first post"])
    expect(late.locator("#post-count")).to_have_text("(2)")
    post(late, "cy", "third post")
    expect(first.locator("#posts li .text").first).to_have_text("third post")
    assert first.errors == [] and second.errors == [] and late.errors == []


def test_editor_edits_appear_in_the_other_page(server, new_page):
    first = page_of(server, new_page, "editor")
    second = page_of(server, new_page, "editor")
    for page in (first, second):
        expect(page.locator("#shared")).to_be_enabled()

    first.fill("#shared", "Hello from the first tab")
    expect(second.locator("#shared")).to_have_value("Hello from the first tab")
    second.fill("#shared", "Hello from the first tab\nand the second")
    expect(first.locator("#shared")).to_have_value("Hello from the first tab\nand the second")
    expect(first.locator("#editor-status")).to_contain_text("edited in another page")

    # Keystrokes one by one also converge.
    second.locator("#shared").press("End")
    second.locator("#shared").type("!!", delay=20)
    expect(first.locator("#shared")).to_have_value("Hello from the first tab\nand the second!!")

    late = page_of(server, new_page, "editor")
    expect(late.locator("#shared")).to_have_value("Hello from the first tab\nand the second!!")
    assert first.errors == [] and second.errors == [] and late.errors == []


def test_countdown_counts_down_for_its_own_page_only(server, new_page):
    runner = page_of(server, new_page, "countdown")
    bystander = page_of(server, new_page, "countdown")
    runner.fill("#seconds", "4")
    runner.click("#start")
    remaining = runner.locator("#remaining")
    expect(remaining).to_have_text("4")
    expect(remaining).to_have_text("3")
    expect(bystander.locator("#remaining")).to_have_text("–")     # nothing pushed to the other page
    # The other page is served meanwhile: its own, shorter countdown ends first.
    bystander.fill("#seconds", "1")
    bystander.click("#start")
    expect(bystander.locator("#remaining")).to_have_text("Done!")
    assert remaining.text_content() in ("3", "2", "1")
    expect(remaining).to_have_text("Done!")
    expect(runner.locator("#countdown-status")).to_have_text("Finished.")
    expect(runner.locator("#progress")).to_have_js_property("value", 1)
    assert runner.errors == [] and bystander.errors == []


def test_dashboard_push_and_polling_refresh(server, new_page):
    page = page_of(server, new_page, "dashboard")
    push = page.locator("#push-counter")
    expect(push).to_have_text(NUMBER)
    first_push = push.text_content()
    expect(push).not_to_have_text(first_push)
    expect(page.locator("#push-transport")).to_have_text("websocket")

    poll = page.locator("#poll-counter")
    expect(poll).to_have_text(NUMBER)
    first_poll = poll.text_content()
    expect(poll).not_to_have_text(first_poll)       # the next fetch, 2 s later
    expect(page.locator("#poll-meta")).to_have_text(re.compile(r"^fetched at \d\d:\d\d:\d\d · \d+ fetches$"))
    assert int(poll.text_content()) > int(first_poll)
    # The polling client holds no connection: only the push client counts.
    assert client_count(server)["client_count"] == 1
    assert page.errors == []


def test_dashboard_push_falls_back_to_ajax_without_websocket(server, new_page):
    page = page_of(server, new_page, "dashboard", init_script="delete window.WebSocket; delete window.EventSource")
    expect(page.locator("#push-transport")).to_have_text("ajax")
    push = page.locator("#push-counter")
    expect(push).to_have_text(NUMBER)
    first_push = push.text_content()
    expect(push).not_to_have_text(first_push)
    expect(page.locator("#poll-counter")).to_have_text(NUMBER)
    assert page.errors == []
