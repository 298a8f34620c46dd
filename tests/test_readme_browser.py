"""
The README's two examples together, as the README says to run them: its
page (saved as C{index.html}, served with C{--html}) in a real Chromium,
talking to its application (C{myapp.py}, run with the C{appserver} command
from its directory). Every call the page makes is answered: the chat, the
request to C{add}, the C{clock} channel the application publishes on, and
the client count.
"""

from __future__ import annotations

import re

import pytest

from support.browser import browser, new_page  # noqa: F401  (fixtures)
from test_command_line import FREE_PORTS, Running, console_script, environment, readme_application, readme_section

pytestmark = pytest.mark.browser


def readme_page() -> str:
    found = re.search(r"```html\n(.*?)```", readme_section("Write your own page"), re.S)
    assert found, "the README's page example is an html block"
    return found.group(1)


def test_the_readmes_page_works_with_the_readmes_application(tmp_path, new_page):
    code, command = readme_application()
    (tmp_path / "myapp.py").write_text(code)
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "index.html").write_text("<!doctype html>\n<meta charset=\"utf-8\">\n<title>mine</title>\n"
                                      + readme_page())
    server = Running([console_script(), *command[1:], "--html", str(pages)], tmp_path, environment(**FREE_PORTS))
    try:
        logged: list[str] = []
        page = new_page()
        page.on("console", lambda message: logged.append(message.text))
        page.goto(server.pages)
        wanted = {
            "chat": re.compile(r"^Message from .+ : hello from websocket$"),
            "add": re.compile(r"^1 \+ 2 = 3$"),
            "clock": re.compile(r"^clock \w{3} \w{3} .+\d{4}$"),
            "count": re.compile(r"^clients connected: 1$"),
        }
        for _ in range(100):
            if all(any(pattern.match(line) for line in logged) for pattern in wanted.values()):
                break
            page.wait_for_timeout(100)
        missing = [name for name, pattern in wanted.items() if not any(pattern.match(line) for line in logged)]
        assert not missing, (missing, logged)
        assert page.errors == []
    finally:
        server.stop()
