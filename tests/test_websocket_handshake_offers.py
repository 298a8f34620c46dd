"""
Browsers offer permessage-deflate in every handshake: the server must accept
the connection (uncompressed: a broadcast is framed once for everyone).
"""

import json

import pytest_twisted
from twisted.internet import defer


@pytest_twisted.ensureDeferred
async def test_a_handshake_offering_compression_opens_uncompressed(server_factory):
    import websockets

    server = await server_factory()

    async def exchange():
        async with websockets.connect(server.ws_url, compression="deflate") as websocket:
            welcome = json.loads(await websocket.recv())
            return welcome["type"], websocket.response.headers.get("Sec-WebSocket-Extensions")

    import asyncio
    from threading import Thread

    result = defer.Deferred()

    def run():
        try:
            outcome = asyncio.run(exchange())
        except Exception as error:
            server.service.reactor.callFromThread(result.errback, error)
        else:
            server.service.reactor.callFromThread(result.callback, outcome)

    Thread(target=run, daemon=True).start()
    kind, extensions = await result.addTimeout(10, server.service.reactor)
    assert kind == "welcome"
    assert extensions is None
