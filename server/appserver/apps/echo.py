"""
The smallest raw endpoint: C{ws://host:9002/echo} sends every frame back,
text or binary, as it came. It is built on the same protocol base class as
the envelope endpoint, so it gets the same size limits, pings and origin
policy, and its clients are counted by the tracker.

    appserver --app appserver.apps.echo:app
"""

from __future__ import annotations

from appserver import App, TrackedProtocol
from appserver.apps.chat import app as chat

__all__ = ["app", "Echo"]

app = App("echo").include(chat)


@app.endpoint("/echo")
class Echo(TrackedProtocol):
    """
    Every message straight back to its sender.
    """

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)
