"""
The real service on real sockets: the three sites answer and share one tracker.
"""

import json

import pytest_twisted
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer


class _Recorder(WebSocketClientProtocol):
    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.factory.messages.append(json.loads(payload))
        waiting, self.factory.waiting = self.factory.waiting, None
        if waiting is not None:
            waiting.callback(None)


async def open_client(url):
    factory = WebSocketClientFactory(url)
    factory.protocol = _Recorder
    factory.opened = defer.Deferred()
    factory.messages = []
    factory.waiting = None
    connectWS(factory)
    protocol = await factory.opened
    return protocol


async def next_message(protocol, reactor, timeout=5):
    factory = protocol.factory
    if not factory.messages:
        factory.waiting = defer.Deferred().addTimeout(timeout, reactor)
        await factory.waiting
    return factory.messages.pop(0)


@pytest_twisted.ensureDeferred
async def test_websocket_chat_is_counted_by_the_ajax_site(server_factory, reactor):
    server = await server_factory()
    client = await open_client(server.ws_url)
    welcome = await next_message(client, reactor)
    assert welcome["type"] == "welcome"
    response = await treq.get(server.ajax_url + "/get_client_count", persistent=False)
    assert (await response.json())["client_count"] == 1
    client.sendMessage(json.dumps({"type": "chat", "data": "hello"}).encode())
    chat = await next_message(client, reactor)
    assert chat["type"] == "chat" and chat["data"].endswith(" : hello")
    client.sendClose()
    for _ in range(100):
        if server.tracker.client_count == 0:
            break
        await defer.Deferred(lambda d: None).addTimeout(0.02, reactor).addErrback(lambda f: None)
    assert server.tracker.client_count == 0
