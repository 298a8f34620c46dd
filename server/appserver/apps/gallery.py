"""
The server side of the demo gallery (C{html/gallery.html}): one application
that includes the chat and adds every demo, each a few lines on the public
L{App} API. It is the default C{--app}: C{appserver} (and C{make run}) runs
it.

The demos' state (prices, the board, the editor's text, the dashboard's
counter) lives in a L{GalleryState} made by L{build_app}, not in module
globals, so two servers in one process (tests) never share it.

    demo         page               server side here
    clock        clock.html         task publishing on channel C{clock}
    ticker       ticker.html        task random-walking C{prices.<SYM>}, conflated, read-only
    chat rooms   rooms.html         built-in join/leave/members + handler C{room_chat}
    board        board.html         handlers C{board_load}, C{board_post}; channel C{board}
    editor       editor.html        handlers C{editor_load}, C{editor_update}; channel C{editor}
    countdown    countdown.html     one C{async def} handler C{countdown} per page
    dashboard    dashboard.html     task on channel C{dashboard}, Ajax route C{/dashboard_state}
"""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import deferLater

from appserver import App, ClientTracker, Context, ProtocolError, RouteRequest, validate_room_name
from appserver.apps.chat import app as chat_app

__all__ = ["app", "build_app", "GalleryState", "Quote", "SYMBOLS", "MAX_POSTS", "MAX_POST_LENGTH",
           "MAX_EDITOR_LENGTH", "MAX_COUNTDOWN"]

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
    posts: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_POSTS))
    next_post: int = 1
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


def build_app(seed: int | None = None) -> App:
    """
    A fresh gallery application with its own L{GalleryState}.

    @param seed: seeds the ticker's random walk (tests); C{None} for a
        different walk on every start.
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

    @app.handler("board_load")
    def board_load(ctx: Context, data: Any) -> dict[str, Any]:
        """
        The whole board, newest first.
        """
        return {"posts": list(reversed(state.posts))}

    @app.handler("board_post")
    def board_post(ctx: Context, data: Any) -> dict[str, Any]:
        """
        C{{"author": A, "text": T}}: kept (the oldest falls off past
        L{MAX_POSTS}) and published on C{board}.
        """
        post = {"id": state.next_post,
                "author": _text(data, "author", MAX_AUTHOR_LENGTH),
                "text": _text(data, "text", MAX_POST_LENGTH),
                "time": time.time()}
        state.next_post += 1
        state.posts.append(post)
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
