"""
The message board keeps its posts in SQLite through aiosqlite (issue 14
item 4): in Chromium, against the real C{appserver} command on its default
(asyncio) reactor with C{APPSERVER_BOARD_DB} in a temporary directory, a post
survives a restart of the server, both on the page that stayed open (it
reloads the board when it comes back) and on a new one. On another reactor
(C{twistd} without C{--reactor=asyncio}) the page says the board is in
memory only. Every server is stopped by its pid.
"""

from __future__ import annotations

import re
import sqlite3
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)
from support.servers import LOOPBACK, ServerProcess, fixed_ports, free_ports, wait_for_log

pytestmark = pytest.mark.browser

GALLERY = ["--app", "appserver.apps.gallery:app", "--shutdown-timeout", "2"]


class CommandProcess(ServerProcess):
    """
    The C{appserver} command (C{python -m appserver}) on its default
    reactor, asyncio; the sites are given in C{args} or on free ports.
    """

    def command(self) -> list[str]:
        sites = [] if "--static" in self.args else ["--static", LOOPBACK, "--ajax", LOOPBACK, "--ws", LOOPBACK]
        return [sys.executable, "-m", "appserver", *sites, *self.args]


@pytest.fixture
def start_command(tmp_path):
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str]) -> ServerProcess:
        process = CommandProcess(list(args), cwd=tmp_path, env=env)
        started.append(process)
        process.start()
        return process
    yield start
    for process in started:
        process.stop()


def open_board(new_page, server: ServerProcess):
    page = new_page(server.url("static") + "/board.html")
    expect(page.locator("#status")).to_have_text(re.compile(r"^connected over "))
    return page


def test_a_post_survives_a_restart_of_the_server(start_command, new_page, tmp_path):
    database = tmp_path / "data" / "board.sqlite3"
    env = {"APPSERVER_BOARD_DB": str(database),
           # Were the variable ignored, the default would land here, not in $HOME.
           "XDG_DATA_HOME": str(tmp_path / "xdg")}
    sites = fixed_ports(free_ports(3))
    first = start_command(*sites, *GALLERY, env=env)
    assert "message board: posts kept in SQLite at" in wait_for_log(first, "posts kept in SQLite")

    page = open_board(new_page, first)
    expect(page.locator("#board-status")).to_contain_text("empty")
    expect(page.locator("#board-storage")).to_contain_text("SQLite")
    page.fill("#author", "ann")
    page.fill("#text", "written before the restart")
    page.click("#post")
    posts = page.locator("#posts li")
    expect(posts).to_have_count(1)
    expect(posts.first.locator(".text")).to_have_text("written before the restart")
    expect(page.locator("#text")).to_have_value("")          # the server answered: stored

    assert first.terminate(15) == 0, first.log()
    assert "Traceback" not in first.log(), first.log()
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT author, text FROM posts").fetchall() == [("ann", "written before the restart")]
    assert not (tmp_path / "xdg").exists()

    second = start_command(*sites, *GALLERY, env=env)
    # The page that stayed open comes back (the server's new epoch: it
    # loads the board again) and still shows the post, once.
    expect(page.locator("#status")).to_have_text(re.compile(r"^connected over "), timeout=20_000)
    expect(posts).to_have_count(1)
    expect(posts.first.locator(".text")).to_have_text("written before the restart")
    # A new page loads it from the database.
    fresh = open_board(new_page, second)
    expect(fresh.locator("#posts li")).to_have_count(1)
    expect(fresh.locator("#posts li .author")).to_have_text("ann")
    expect(fresh.locator("#posts li .text")).to_have_text("written before the restart")
    expect(fresh.locator("#board-status")).to_contain_text("Board loaded")

    # A post after the restart gets a higher id: newest first on both pages.
    fresh.fill("#author", "bob")
    fresh.fill("#text", "after the restart")
    fresh.click("#post")
    for shown in (fresh, page):
        expect(shown.locator("#posts li .text")).to_have_text(["after the restart", "written before the restart"])
    assert second.terminate(15) == 0, second.log()
    assert "Traceback" not in second.log(), second.log()
    assert not page.errors and not fresh.errors


def test_on_another_reactor_the_page_says_the_board_is_in_memory(server_process, new_page, tmp_path):
    server = server_process("--app", "appserver.apps.gallery:app",
                            env={"APPSERVER_BOARD_DB": str(tmp_path / "unused.sqlite3")})
    page = open_board(new_page, server)
    expect(page.locator("#board-storage")).to_contain_text("memory only")
    page.fill("#author", "ann")
    page.fill("#text", "kept in memory")
    page.click("#post")
    expect(page.locator("#posts li .text")).to_have_text(["kept in memory"])
    assert "posts are kept in memory" in server.log()
    assert not Path(tmp_path / "unused.sqlite3").exists()


