"""
Browsers offer permessage-deflate in every handshake: the server accepts it
(on by default, see tests/test_permessage_deflate.py), and with
--permessage-deflate false opens the connection uncompressed.
"""

import json

import pytest
import pytest_twisted
from twisted.internet import defer


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("enabled", [True, False])
async def test_a_handshake_offering_compression_opens_with_or_without_it(server_factory, enabled):
    import websockets

    server = await server_factory(permessage_deflate=enabled)

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
    if enabled:
        assert extensions.startswith("permessage-deflate")
    else:
        assert extensions is None
