"""
What an open, idle WebSocket connection keeps (TrackedProtocol._release_handshake):
Autobahn's per-connection attributes that hold a shared value move to the
class, the handshake's are dropped, and the instance dictionary is rebuilt
small. Over a real socket, with a connection that then still works.
"""

from __future__ import annotations

import json

import pytest_twisted

from appserver._web import websocket

from support.rawws import connect_raw
from support.wsclient import wait_until


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_keeps_only_its_own_state(reactor, server_factory):
    server = await server_factory()
    peer = await connect_raw(reactor, server.port("ws"))
    (client,) = server.tracker.clients.values()
    protocol = client.protocol
    own = vars(protocol)
    for name, shared in {**websocket._SHARED_STATE, **websocket._HANDSHAKE_ONLY}.items():
        assert name not in own, name
        assert getattr(protocol, name) == shared, name
    # About sixty attributes before; what is left is per connection for real.
    assert len(own) <= 20, sorted(own)

    # Still a working connection: a message in, a broadcast out, a clean close.
    server.tracker.broadcast("chat", "after shedding")
    await wait_until(lambda: any(m.get("data") == "after shedding" for m in peer.texts()), reactor)
    peer.send_frame(json.dumps({"type": "ping", "data": 1, "id": 7}).encode(), compressed=False)
    await wait_until(lambda: any(m.get("id") == 7 for m in peer.texts()), reactor)
    peer.send_control(0x8, b"\x03\xe8")
    await peer.closed.addTimeout(5, reactor)
    closes = [payload for first, payload in peer.frames if first & 0x0F == 0x8]
    assert closes and closes[0][:2] == b"\x03\xe8"
    await wait_until(lambda: server.tracker.client_count == 0, reactor)
