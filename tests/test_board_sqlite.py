"""
The message board's SQLite store (L{SqliteBoard}, aiosqlite) on a plain
asyncio loop: bounded to MAX_POSTS, newest first, ids that only grow, posts
kept across a close and a reopen; a database that cannot be opened falls
back to memory. The default path and its environment variable. The browser
test with a real server restart is tests/test_board_sqlite_browser.py.
"""

from __future__ import annotations

import asyncio

from appserver.apps.gallery import MAX_POSTS, SqliteBoard, board_database_path


def test_posts_are_bounded_newest_first_and_kept_across_a_reopen(tmp_path):
    path = str(tmp_path / "nested" / "board.sqlite3")

    async def scenario() -> None:
        board = SqliteBoard(path)
        await board.open()
        assert board.storage == "sqlite"
        for number in range(1, MAX_POSTS + 6):
            await board.add("ann", f"post {number}")
        await board.close()

        again = SqliteBoard(path)
        await again.open()
        posts = await again.recent()
        assert len(posts) == MAX_POSTS
        assert [p["text"] for p in posts[:2]] == [f"post {MAX_POSTS + 5}", f"post {MAX_POSTS + 4}"]
        assert posts[-1]["text"] == "post 6"
        newest = await again.add("bob", "after the reopen")
        assert newest["id"] == MAX_POSTS + 6 and newest["author"] == "bob"
        assert (await again.recent())[0] == newest
        await again.close()
        await again.close()                    # idempotent

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_database_that_cannot_be_opened_falls_back_to_memory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    async def scenario() -> None:
        board = SqliteBoard(str(blocker / "board.sqlite3"))
        await board.open()
        assert board.storage == "memory"
        await board.add("ann", "hello")
        assert [p["text"] for p in await board.recent()] == ["hello"]
        await board.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_database_path_comes_from_the_environment_or_the_user_data_directory(tmp_path):
    assert board_database_path({"APPSERVER_BOARD_DB": "/srv/board.db"}) == "/srv/board.db"
    assert board_database_path({"XDG_DATA_HOME": str(tmp_path)}) == str(tmp_path / "appserver" / "board.sqlite3")
    assert board_database_path({}).endswith("/.local/share/appserver/board.sqlite3")
