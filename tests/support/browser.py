"""
Playwright fixtures for the real-browser tests: Debian's Chromium, headless,
one browser per test module and fresh contexts (separate cookie jars and
storage, like two people) per test.

Playwright's sync API runs its own event loop in a greenlet: it must never
run inside the Twisted reactor of a pytest-twisted test. Browser tests
therefore talk to a server in a subprocess (the C{server_process} fixture)
and are plain synchronous functions marked C{@pytest.mark.browser}.

Use from a test module::

    from support.browser import browser, new_page  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import pytest

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "TIMEOUT_MS", "browser", "new_page", "launch"]

CHROMIUM = os.environ.get("APPSERVER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
#: Default bound of every Playwright wait (expect, click, goto), in ms.
TIMEOUT_MS = 10_000


def launch(playwright: Any) -> Any:
    """
    Start headless Chromium; skip the test when it is not installed (never
    C{playwright install}: it downloads, and fails offline).
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """
    One Chromium for the whole test module.
    """
    sync_api = pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import expect
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """
    C{new_page(url, init_script=None)}: a page in a context of its own,
    loaded at C{url}; every context is closed at the end of the test.
    Console errors and uncaught exceptions are collected in
    C{page.errors} so tests can assert the page ran cleanly.
    """
    contexts: list[Any] = []

    def open_page(url: str | None = None, init_script: str | None = None) -> Any:
        context = browser.new_context()
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        if init_script is not None:
            context.add_init_script(init_script)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        if url is not None:
            page.goto(url)
        return page

    yield open_page
    for context in contexts:
        try:
            context.close()
        except Exception:
            pass  # already closed by the test
