"""
The server side of the demo gallery (C{html/gallery.html}): one application
that includes the chat and adds every demo, each a few lines on the public
L{App} API. It is the default C{--app}: C{appserver} (and C{make run}) runs
it.

The demos' state (prices, the board, the editor's text, the dashboard's
counter) lives in a L{GalleryState} made by L{build_app}, not in module
globals, so two servers in one process (tests) never share it.

The message board is the gallery's asyncio library demo: on Twisted's
asyncio reactor (the C{appserver} command's default, or C{twistd
--reactor=asyncio}) its posts live in SQLite through C{aiosqlite}
(L{SqliteBoard}), so they survive a restart. The database is
C{build_app(board_path=...)}, else the environment variable
C{APPSERVER_BOARD_DB}, else C{board.sqlite3} in the per-user data directory
(C{$XDG_DATA_HOME/appserver/}, by default C{~/.local/share/appserver/}); see
L{board_database_path}. On another reactor (C{twistd} without
C{--reactor=asyncio}, the in-process test fixture) no asyncio loop runs, so
the board keeps its posts in memory (L{MemoryBoard}), says so in the log and
on the page, and loses them at exit.

    demo         page               server side here
    clock        clock.html         task publishing on channel C{clock}
    ticker       ticker.html        task random-walking C{prices.<SYM>}, conflated, read-only
    chat rooms   rooms.html         built-in join/leave/members + handler C{room_chat}
    board        board.html         handlers C{board_load}, C{board_post}; channel C{board}; SQLite (aiosqlite)
    editor       editor.html        handlers C{editor_load}, C{editor_update}; channel C{editor}
    countdown    countdown.html     one C{async def} handler C{countdown} per page
    dashboard    dashboard.html     task on channel C{dashboard}, Ajax route C{/dashboard_state}
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.task import deferLater
from twisted.logger import Logger

from appserver import App, ClientTracker, Context, ProtocolError, RouteRequest, validate_room_name
from appserver.apps.chat import app as chat_app

if TYPE_CHECKING:
    import aiosqlite

__all__ = ["app", "build_app", "GalleryState", "Quote", "SYMBOLS", "MAX_POSTS", "MAX_POST_LENGTH",
           "MAX_EDITOR_LENGTH", "MAX_COUNTDOWN", "MemoryBoard", "SqliteBoard", "board_database_path",
           "BOARD_DB_ENVIRONMENT_VARIABLE"]

_log = Logger(namespace="appserver.apps.gallery")

#: The ticker's symbols and their opening prices.
SYMBOLS = {"ACME": 120.0, "GLOBEX": 48.5, "INITECH": 12.25, "UMBRELLA": 310.0}
#: The board keeps this many posts, dropping the oldest.
MAX_POSTS = 100
MAX_POST_LENGTH = 500
MAX_AUTHOR_LENGTH = 40
MAX_ROOM_CHAT_LENGTH = 1000
#: The shared editor holds at most this many characters.
MAX_EDITOR_LENGTH = 20_000
#: The longest countdown a page may ask for, in seconds.
MAX_COUNTDOWN = 60
#: Where the board's SQLite database is, when C{build_app} is not told.
BOARD_DB_ENVIRONMENT_VARIABLE = "APPSERVER_BOARD_DB"


def board_database_path(environ: dict[str, str] | None = None) -> str:
    """
    The board's database: C{$APPSERVER_BOARD_DB} if set (C{:memory:} is
    SQLite's own throw-away database), else C{board.sqlite3} in the per-user
    data directory, C{$XDG_DATA_HOME/appserver/} (by default
    C{~/.local/share/appserver/}).
    """
    environ = dict(os.environ) if environ is None else environ
    chosen = environ.get(BOARD_DB_ENVIRONMENT_VARIABLE)
    if chosen:
        return chosen
    data_home = environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data_home) / "appserver" / "board.sqlite3")


@dataclass
class Quote:
    """
    One symbol's state: what a C{prices.<SYM>} message carries.
    """

    symbol: str
    price: float
    open: float
    change: float = 0.0
    volume: int = 0

    def as_data(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "price": round(self.price, 2),
            "change": round(self.change, 2),
            "change_pct": round((self.price - self.open) / self.open * 100, 2),
            "volume": self.volume,
            "time": time.time(),
        }


@dataclass
class GalleryState:
    """
    Everything the demos remember, for one server.
    """

    random: random.Random = field(default_factory=random.Random)
    quotes: dict[str, Quote] = field(default_factory=lambda: {
        symbol: Quote(symbol, price, price) for symbol, price in SYMBOLS.items()})
    board: "MemoryBoard | SqliteBoard" = field(default_factory=lambda: MemoryBoard())
    editor_text: str = ""
    editor_version: int = 0
    counter: int = 0

    def tick(self) -> list[Quote]:
        """
        Move every price one random step (a multiplicative walk, so a price
        never goes negative) and add some volume.
        """
        for quote in self.quotes.values():
            step = quote.price * self.random.gauss(0, 0.004)
            new_price = max(0.01, quote.price + step)
            quote.change = new_price - quote.price
            quote.price = new_price
            quote.volume += self.random.randint(1, 50) * 100
        return list(self.quotes.values())


class MemoryBoard:
    """
    The board's posts in memory, the latest L{MAX_POSTS}: the store when no
    asyncio loop runs (another reactor than asyncio), lost at exit.
    """

    storage = "memory"

    def __init__(self) -> None:
        self.posts: deque[dict[str, Any]] = deque(maxlen=MAX_POSTS)
        self.next_id = 1

    async def recent(self) -> list[dict[str, Any]]:
        """
        The posts kept, newest first.
        """
        return list(reversed(self.posts))

    async def add(self, author: str, text: str) -> dict[str, Any]:
        """
        Keep a post (the oldest falls off past L{MAX_POSTS}) and give it with
        its id and time.
        """
        post = {"id": self.next_id, "author": author, "text": text, "time": time.time()}
        self.next_id += 1
        self.posts.append(post)
        return post


class SqliteBoard:
    """
    The board's posts in an SQLite database through C{aiosqlite}, an
    asyncio library: every query runs in aiosqlite's own thread and is
    awaited, so the reactor never blocks on the disk. Needs a running
    asyncio loop (Twisted's asyncio reactor).

    Made at start-up and opened by L{open} (a start-up hook); handlers
    called before it is open wait for it. When the database cannot be
    opened the error is logged once and the board falls back to a
    L{MemoryBoard}. L{close} at shutdown.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self._opened = asyncio.Event()
        self._lock = asyncio.Lock()
        self._fallback: MemoryBoard | None = None
        self._closed = False

    @property
    def storage(self) -> str:
        return "memory" if self._fallback is not None else "sqlite"

    async def open(self) -> None:
        """
        Connect and create the table if needed. Never raises: a failure is
        logged and the board keeps its posts in memory.
        """
        try:
            try:
                import aiosqlite
            except ImportError:
                _log.error("message board: aiosqlite is not installed (pip install aiosqlite); "
                           "posts are kept in memory and lost at exit")
                self._fallback = MemoryBoard()
                return
            try:
                if self.path != ":memory:" and not self.path.startswith("file:"):
                    # A blocking call, however short: to a thread, never in the loop.
                    directory = Path(self.path).expanduser().parent
                    await asyncio.get_running_loop().run_in_executor(
                        None, lambda: directory.mkdir(parents=True, exist_ok=True))
                db = await aiosqlite.connect(self.path)
                try:
                    await db.execute("CREATE TABLE IF NOT EXISTS posts ("
                                     "id INTEGER PRIMARY KEY AUTOINCREMENT, author TEXT NOT NULL, "
                                     "text TEXT NOT NULL, time REAL NOT NULL)")
                    await db.commit()
                except BaseException:
                    await db.close()
                    raise
            except (OSError, aiosqlite.Error) as error:
                _log.error("message board: cannot open the database {path} ({error}); posts are kept in "
                           "memory and lost at exit. Set {variable} to a writable file.",
                           path=self.path, error=error, variable=BOARD_DB_ENVIRONMENT_VARIABLE)
                self._fallback = MemoryBoard()
                return
            if self._closed:
                await db.close()
                return
            self._db = db
            _log.info("message board: posts kept in SQLite at {path}", path=self.path)
        finally:
            self._opened.set()

    async def _ready(self) -> "aiosqlite.Connection | MemoryBoard":
        await self._opened.wait()
        if self._fallback is not None:
            return self._fallback
        if self._db is None:
            raise RuntimeError("the message board's database is closed")
        return self._db

    async def recent(self) -> list[dict[str, Any]]:
        """
        The latest L{MAX_POSTS} posts, newest first.
        """
        db = await self._ready()
        if isinstance(db, MemoryBoard):
            return await db.recent()
        async with db.execute("SELECT id, author, text, time FROM posts ORDER BY id DESC LIMIT ?",
                              (MAX_POSTS,)) as cursor:
            rows = await cursor.fetchall()
        return [{"id": row[0], "author": row[1], "text": row[2], "time": row[3]} for row in rows]

    async def add(self, author: str, text: str) -> dict[str, Any]:
        """
        Store a post and drop those past the latest L{MAX_POSTS}, in one
        transaction. Shielded: a caller cancelled meanwhile (its client
        went away) does not leave the write half done.
        """
        db = await self._ready()
        if isinstance(db, MemoryBoard):
            return await db.add(author, text)
        return await asyncio.shield(self._insert(db, author, text))

    async def _insert(self, db: "aiosqlite.Connection", author: str, text: str) -> dict[str, Any]:
        async with self._lock:
            if self._db is not db:
                raise RuntimeError("the message board's database is closed")
            post: dict[str, Any] = {"author": author, "text": text, "time": time.time()}
            try:
                cursor = await db.execute("INSERT INTO posts (author, text, time) VALUES (?, ?, ?)",
                                          (author, text, post["time"]))
                post["id"] = cursor.lastrowid
                await cursor.close()
                # Ids only grow (AUTOINCREMENT): the latest MAX_POSTS are the highest.
                await db.execute("DELETE FROM posts WHERE id <= ?", (post["id"] - MAX_POSTS,))
                await db.commit()
            except BaseException:
                await db.rollback()
                raise
            return {"id": post["id"], "author": author, "text": text, "time": post["time"]}

    async def close(self) -> None:
        """
        Close the connection (after a write in progress); idempotent.
        """
        self._closed = True
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                await db.close()


def _on_asyncio_reactor(reactor: Any) -> bool:
    """
    Whether C{reactor} is Twisted's asyncio reactor, so asyncio libraries
    can be awaited.
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    return isinstance(reactor, AsyncioSelectorReactor)


def _text(data: Any, name: str, limit: int, required: bool = True) -> str:
    """
    A string field of a handler's C{data}, validated where it enters.

    @raise ProtocolError: C{bad_data}, naming the field and its bounds.
    """
    if not isinstance(data, dict):
        raise ProtocolError("bad_data", f'"data" must be an object with "{name}"')
    value = data.get(name, "")
    if not isinstance(value, str) or len(value) > limit or (required and not value.strip()):
        raise ProtocolError("bad_data", f'"{name}" must be a string of 1 to {limit} characters')
    return value


def build_app(seed: int | None = None, board_path: str | None = None) -> App:
    """
    A fresh gallery application with its own L{GalleryState}.

    @param seed: seeds the ticker's random walk (tests); C{None} for a
        different walk on every start.
    @param board_path: the message board's SQLite database (on the asyncio
        reactor); C{None} for L{board_database_path}, read at start-up.
    """
    state = GalleryState(random=random.Random(seed))
    app = App("gallery").include(chat_app)

    # Clients only read these channels; the server publishes on them.
    for channel in ("clock", "prices.*", "board", "editor", "dashboard"):
        app.allow_publish(channel, False)

    # Clock -------------------------------------------------------------------

    @app.every(1.0)
    def clock(server: ClientTracker) -> None:
        now = time.time()
        server.publish("clock", {"time": time.strftime("%H:%M:%S", time.localtime(now)),
                                 "date": time.strftime("%A %d %B %Y", time.localtime(now)),
                                 "epoch": now})

    # Live ticker ---------------------------------------------------------------

    # A slow client keeps only the latest price of each symbol.
    app.channel_policy("prices.*", "conflate")

    @app.every(0.5)
    def ticker(server: ClientTracker) -> None:
        for quote in state.tick():
            server.publish(f"prices.{quote.symbol}", quote.as_data(), key=quote.symbol)

    @app.handler("ticker_snapshot")
    def ticker_snapshot(ctx: Context, data: Any) -> dict[str, Any]:
        """
        The current quote of every symbol, so a page fills its table at once.
        """
        return {"quotes": [quote.as_data() for quote in state.quotes.values()]}

    # Chat rooms ----------------------------------------------------------------

    @app.handler("room_chat")
    def room_chat(ctx: Context, data: Any) -> None:
        """
        C{{"room": R, "text": T}}: sent to the room's members only, under the
        name the sender joined with.
        """
        room = validate_room_name(data.get("room") if isinstance(data, dict) else None)
        text = _text(data, "text", MAX_ROOM_CHAT_LENGTH)
        username = ctx.client.rooms.get(room)
        if username is None:
            raise ProtocolError("forbidden", f"join room {room!r} before chatting in it")
        ctx.server.send_to_room(room, {"type": "room_chat",
                                       "data": {"room": room, "username": username, "text": text}})

    # Message board -------------------------------------------------------------

    @app.on_startup
    def open_board(server: ClientTracker, reactor: Any) -> Any:
        """
        On the asyncio reactor, move the board to SQLite: the store is in
        place at once (handlers wait for it to open), the opening runs as an
        asyncio Task. Elsewhere the board stays in memory, and says so.
        """
        if not _on_asyncio_reactor(reactor):
            _log.warn("message board: posts are kept in memory and lost at exit; SQLite needs Twisted's "
                      "asyncio reactor (the appserver command's default, or twistd --reactor=asyncio)")
            return None
        board = SqliteBoard(board_path or board_database_path())
        state.board = board
        return board.open()

    @app.on_shutdown
    async def close_board(server: ClientTracker, reactor: Any) -> None:
        board = state.board
        if isinstance(board, SqliteBoard):
            await board.close()

    @app.handler("board_load")
    async def board_load(ctx: Context, data: Any) -> dict[str, Any]:
        """
        The whole board, newest first, and where it is kept (C{sqlite}, or
        C{memory} when posts are lost at exit).
        """
        board = state.board
        posts = await board.recent()
        return {"posts": posts, "storage": board.storage}

    @app.handler("board_post")
    async def board_post(ctx: Context, data: Any) -> dict[str, Any]:
        """
        C{{"author": A, "text": T}}: kept (the oldest falls off past
        L{MAX_POSTS}) and published on C{board}.
        """
        author = _text(data, "author", MAX_AUTHOR_LENGTH)
        text = _text(data, "text", MAX_POST_LENGTH)
        post = await state.board.add(author, text)
        ctx.server.publish("board", post)
        return {"id": post["id"]}

    # Collaborative editor -----------------------------------------------------

    @app.handler("editor_load")
    def editor_load(ctx: Context, data: Any) -> dict[str, Any]:
        return {"text": state.editor_text, "version": state.editor_version}

    @app.handler("editor_update")
    def editor_update(ctx: Context, data: Any) -> dict[str, Any]:
        """
        C{{"text": T}}: the whole text, last writer wins. Published on
        C{editor} with a version that only grows, so a page can ignore a
        late message and its own echo (C{author} is the sender's client id).
        """
        text = _text(data, "text", MAX_EDITOR_LENGTH, required=False)
        state.editor_text = text
        state.editor_version += 1
        ctx.server.publish("editor", {"text": text, "version": state.editor_version,
                                      "author": ctx.client.client_id})
        return {"version": state.editor_version}

    # Countdown -----------------------------------------------------------------

    @app.handler("countdown")
    async def countdown(ctx: Context, data: Any) -> dict[str, Any]:
        """
        C{{"seconds": N}}: push C{countdown} envelopes N, N-1, ... 0 to the
        caller, one a second. Waiting is C{deferLater}, so the reactor
        serves every other page meanwhile. A new countdown on the same page
        replaces the running one; the loop ends when the client goes away.
        """
        seconds = data.get("seconds", 10) if isinstance(data, dict) else None
        if isinstance(seconds, bool) or not isinstance(seconds, int) or not 1 <= seconds <= MAX_COUNTDOWN:
            raise ProtocolError("bad_data", f'"seconds" must be an integer from 1 to {MAX_COUNTDOWN}')
        client, server = ctx.client, ctx.server
        run = secrets.token_hex(4)
        client.attributes["countdown"] = run

        def still_wanted() -> bool:
            return (server.get(client.client_id) is client and not client.closed
                    and client.attributes.get("countdown") == run)

        for remaining in range(seconds, -1, -1):
            if not still_wanted():
                return {"run": run, "finished": False}
            ctx.send("countdown", {"run": run, "remaining": remaining, "total": seconds})
            if remaining:
                await deferLater(ctx.reactor, 1.0, lambda: None)
        return {"run": run, "finished": True}

    # Dashboard (issue 3) -------------------------------------------------------

    def dashboard_state() -> dict[str, Any]:
        return {"counter": state.counter, "time": time.strftime("%H:%M:%S")}

    @app.every(1.0)
    def dashboard(server: ClientTracker) -> None:
        state.counter += 1
        server.publish("dashboard", dashboard_state())

    @app.route("/dashboard_state")
    def dashboard_route(request: RouteRequest) -> dict[str, Any]:
        """
        The same state for pages that poll (C{reloadInterval}) instead of
        holding a connection.
        """
        return dashboard_state()

    app.state = state
    return app


app = build_app()
