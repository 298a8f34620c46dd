"""
Churn over real sockets, in process: 2000 connect/disconnect cycles, mixed
WebSocket and Ajax, clean closes and aborts, in concurrent batches. The
count must come back to its baseline exactly, after every batch.
"""

import json

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.web.client import Agent, HTTPConnectionPool

from support.wsclient import next_message, open_client, wait_closed, wait_until

CYCLES = 2000
BATCH = 40  # under the listen backlog (50): a larger burst waits for SYN retries


async def websocket_cycle(server, reactor, abort, before_welcome):
    client = await open_client(server.ws_url, reactor)
    if not before_welcome:
        await next_message(client, reactor, "welcome")
    if abort:
        client.transport.abortConnection()
    else:
        client.sendClose()
        await wait_closed(client, reactor)


async def ajax_cycle(server, http, jsonp):
    if jsonp:
        response = await http.get(server.ajax_url + "/connect", params={"callback": "cb"})
        body = await response.content()
        session = json.loads(body[len(b"/**/cb("):-2])["session"]
        response = await http.get(server.ajax_url + "/disconnect", params={"session": session, "callback": "cb"})
    else:
        response = await http.post(server.ajax_url + "/connect")
        session = json.loads(await response.content())["session"]
        response = await http.post(server.ajax_url + "/disconnect", headers={"X-AppServer-Session": [session]})
    assert response.code == 200
    await response.content()


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_two_thousand_mixed_cycles_return_the_count_to_baseline(server_factory, reactor):
    server = await server_factory(rate_limit=0, max_connections_per_ip=0, access_log=False)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 20
    http = HTTPClient(Agent(reactor, pool=pool))
    baseline = server.tracker.client_count
    kinds = {"ws-close": 0, "ws-abort": 0, "ws-abort-early": 0, "ajax": 0, "ajax-jsonp": 0}
    try:
        for start in range(0, CYCLES, BATCH):
            cycles = []
            for index in range(start, start + BATCH):
                kind = index % 5
                if kind == 0:
                    kinds["ws-close"] += 1
                    cycles.append(websocket_cycle(server, reactor, abort=False, before_welcome=False))
                elif kind == 1:
                    kinds["ws-abort"] += 1
                    cycles.append(websocket_cycle(server, reactor, abort=True, before_welcome=False))
                elif kind == 2:
                    kinds["ws-abort-early"] += 1
                    cycles.append(websocket_cycle(server, reactor, abort=True, before_welcome=True))
                elif kind == 3:
                    kinds["ajax"] += 1
                    cycles.append(ajax_cycle(server, http, jsonp=False))
                else:
                    kinds["ajax-jsonp"] += 1
                    cycles.append(ajax_cycle(server, http, jsonp=True))
            await defer.gatherResults([defer.ensureDeferred(cycle) for cycle in cycles],
                                      consumeErrors=True).addTimeout(30, reactor)
            await wait_until(lambda: server.tracker.client_count == baseline, reactor, timeout=10)
        assert sum(kinds.values()) == CYCLES
        await wait_until(lambda: server.runtime.limiter.total == 0, reactor, timeout=10)
        assert len(server.runtime.sessions) == 0
        assert server.tracker.count_by_transport() == {"websocket": 0, "ajax": 0, "sse": 0}
        response = await http.get(server.ajax_url + "/get_client_count")
        assert json.loads(await response.content())["client_count"] == baseline
    finally:
        await pool.closeCachedConnections()
