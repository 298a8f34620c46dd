"""
The demo page in Chromium through nginx (the configuration of
docs/scaling.md) in front of two nodes on one Redis: a page with WebSockets
and a page without (Ajax, its polls spread over both nodes) count each other
and chat, whichever node each request reaches.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from support.browser import browser, new_page  # noqa: F401  (fixtures)
from support.nginx import NginxServer, nginx_path
from support.redis import RedisServer, free_port, redis_server_path

pytestmark = [
    pytest.mark.browser,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(redis_server_path() is None, reason="redis-server is not installed (apt-get install "
                                                          "redis-server; .ci/run does)"),
    pytest.mark.skipif(nginx_path() is None, reason="nginx is not installed (apt-get install nginx-light; "
                                                    ".ci/run does)"),
]


@pytest.fixture
def balanced(tmp_path, server_process):
    """
    Redis, two single-port nodes and nginx in front; yields the public URL.
    Stopped in reverse order, each by its pid.
    """
    redis = RedisServer(tmp_path).start()
    balancer = NginxServer(tmp_path, port=free_port())
    public = f"http://127.0.0.1:{balancer.port}"
    try:
        nodes = [server_process("--backplane", redis.url, "--node-id", name, "--allowed-origin", public,
                                "--max-connections-per-ip", "0", single_port=True)
                 for name in ("a", "b")]
        balancer.start([node.ports["single"] for node in nodes])
        yield public, nodes
        balancer.stop()
        for node in nodes:
            node.stop()
    finally:
        balancer.stop()
        redis.stop()


def count_text(n: int) -> re.Pattern[str]:
    counted = "There is 1 client" if n == 1 else f"There are {n} clients"
    return re.compile(rf"^{counted} connected as of .+\.$")


def test_demo_page_through_nginx_on_two_nodes(balanced, new_page):
    public, nodes = balanced
    ws = new_page(public + "/")
    ajax = new_page(public + "/", init_script="delete window.WebSocket; delete window.EventSource")
    expect(ws.locator("#status")).to_have_text("connected over websocket")
    expect(ajax.locator("#status")).to_have_text("connected over ajax")

    ajax.click("#update-count")
    expect(ajax.locator("#client_count_div")).to_have_text(count_text(2))

    for page, text in ((ajax, "from the page without WebSocket"), (ws, "from the WebSocket page")):
        page.fill("#textToSend", text)
        page.click("#send")
    for page in (ajax, ws):
        log = page.locator("#content")
        expect(log).to_contain_text(" : from the page without WebSocket")
        expect(log).to_contain_text(" : from the WebSocket page")
    assert ajax.errors == [] and ws.errors == []
    # The balancer spread the page's requests over both nodes.
    assert all("GET /" in node.log() for node in nodes)
