"""
The demo pages as a person sees them, in a real Chromium: every page usable
on a 390 px wide phone without sideways scrolling, no console error (no
favicon 404), a readable header status, a styled 404 page, the client count
in good English, a refused room join explained next to the form, and, on a
server running another application, demo pages that say what they need
instead of waiting forever.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser

PAGES = ["index.html", "gallery.html", "clock.html", "ticker.html", "rooms.html", "board.html", "editor.html",
         "countdown.html", "dashboard.html"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def gallery(server_process):
    return server_process("--app", "appserver.apps.gallery:app")


def phone_page(browser, url: str):
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url)
    return context, page, errors


def overflowing(page) -> list[str]:
    """
    Elements reaching past the right edge of the viewport, and the page's
    scroll width when wider than the viewport.
    """
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth;
        const wide = [...document.querySelectorAll("body *")]
            .filter((e) => e.getBoundingClientRect().right > width + 0.5)
            .map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : ""));
        if (document.documentElement.scrollWidth > width) { wide.push("scrollWidth " + document.documentElement.scrollWidth); }
        return wide;
    }""")


@pytest.mark.parametrize("name", PAGES)
def test_every_demo_page_fits_a_390_px_phone_without_errors(browser, gallery, name):
    context, page, errors = phone_page(browser, gallery.url("static") + "/" + name)
    try:
        if name != "gallery.html":                  # the gallery's index holds no connection
            expect(page.locator("#status")).to_have_text(re.compile("^connected over "))
        if name == "ticker.html":
            expect(page.locator("#row-ACME .price")).not_to_have_text("…")
        assert overflowing(page) == []
        assert errors == []
    finally:
        context.close()


def _luminance(rgb: str) -> float:
    def channel(value: str) -> float:
        c = int(value) / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = re.findall(r"\d+", rgb)[:3]
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def test_the_header_status_text_is_readable(browser, gallery):
    context, page, _ = phone_page(browser, gallery.url("static") + "/")
    try:
        colors = page.evaluate("""() => [getComputedStyle(document.getElementById("status")).color,
                                        getComputedStyle(document.querySelector("header")).backgroundColor]""")
        light, dark = sorted((_luminance(color) for color in colors), reverse=True)
        assert (light + 0.05) / (dark + 0.05) >= 4.5, colors
    finally:
        context.close()


def test_the_404_page_is_styled_and_leads_back(browser, gallery):
    context, page, _ = phone_page(browser, gallery.url("static") + "/no-such-page.html")
    try:
        expect(page.locator("h1")).to_have_text("404: page not found")
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") != "rgba(0, 0, 0, 0)"
        assert overflowing(page) == []
        page.click("text=the start page")
        expect(page.locator("#update-count")).to_be_visible()
    finally:
        context.close()


def test_one_client_is_counted_in_the_singular(gallery, new_page):
    page = new_page(gallery.url("static") + "/")
    expect(page.locator("#status")).to_have_text("connected over websocket")
    page.click("#update-count")
    expect(page.locator("#client_count_div")).to_have_text(re.compile(r"^There is 1 client connected as of .+\.$"))


def test_a_refused_join_is_explained_next_to_the_form(gallery, new_page):
    page = new_page(gallery.url("static") + "/rooms.html")
    expect(page.locator("#status")).to_have_text("connected over websocket")
    page.fill("#username", "zero\u200bwidth")        # not printable: the server refuses the name
    page.click("#join")
    expect(page.locator("#joined")).to_have_text(re.compile(r"^Could not join lobby: .*username"))
    expect(page.locator("#joined")).to_have_class(re.compile(r"\brefused\b"))
    expect(page.locator("#leave")).to_be_disabled()


@pytest.mark.parametrize("name", ["board.html", "ticker.html", "clock.html"])
def test_a_demo_on_a_server_without_the_gallery_says_what_it_needs(server_process, new_page, name):
    server = server_process("--app", "appserver.apps.chat:app")
    page = new_page(server.url("static") + "/" + name)
    note = page.locator("#needs-gallery")
    expect(note).to_contain_text("needs the gallery application", timeout=15_000)
    expect(note).to_contain_text("--app appserver.apps.gallery:app")


def test_a_name_already_in_the_room_is_refused_on_the_page(gallery, new_page):
    first = new_page(gallery.url("static") + "/rooms.html")
    second = new_page(gallery.url("static") + "/rooms.html")
    for page in (first, second):
        expect(page.locator("#status")).to_have_text("connected over websocket")
        page.fill("#username", "alice")
    first.click("#join")
    expect(first.locator("#joined")).to_have_text("In room lobby as alice.")
    second.click("#join")
    expect(second.locator("#joined")).to_have_text(re.compile(r"^Could not join lobby: .*'alice' is already taken"))
    expect(second.locator("#leave")).to_be_disabled()
    # The first page still holds the name, alone in the room.
    expect(first.locator("#members li")).to_have_count(1)
    expect(first.locator("#joined")).to_have_text("In room lobby as alice.")
