"""
The original demo's chat, written as an application on the public API: the
smallest example of a handler, included by the default C{--app} (the demo
gallery) and by the README's own application.
"""

from __future__ import annotations

from typing import Any

from appserver import App, Context, ProtocolError

__all__ = ["app", "MAX_CHAT_LENGTH"]

MAX_CHAT_LENGTH = 10_000

app = App("chat")


@app.handler("chat")
def chat(ctx: Context, text: Any) -> None:
    """
    Broadcast C{"Message from <peer> : <text>"} to every client, sender
    included: the exact shape the original demo's page expects.
    """
    if not isinstance(text, str):
        raise ProtocolError("bad_data", 'chat "data" must be a string')
    if len(text) > MAX_CHAT_LENGTH:
        raise ProtocolError("bad_data", f"a chat message is at most {MAX_CHAT_LENGTH} characters")
    ctx.server.broadcast("chat", f"Message from {ctx.client.peer} : {text}")
