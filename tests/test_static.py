"""
The static site over real sockets: pages, the browser client, jQuery, the
config script, and no way out of the web root (requests sent byte for byte,
so no client normalizes the path first).
"""

import json
from pathlib import Path

import pytest
import pytest_twisted

from support.wsclient import raw_request

ROOT = Path(__file__).resolve().parent.parent


def parse(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


async def get(server, reactor, path, method="GET", host=None):
    port = server.port("single") if "single" in server.service.ports else server.port("static")
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host or f'127.0.0.1:{port}'}\r\n"
               f"Connection: close\r\n\r\n").encode("latin-1")
    return parse(await raw_request(reactor, port, request))


@pytest_twisted.ensureDeferred
async def test_the_index_page_is_served_at_the_root(server_factory, reactor):
    server = await server_factory()
    for path in ("/", "/index.html"):
        status, headers, body = await get(server, reactor, path)
        assert status == 200
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["cache-control"] == "no-cache"
        assert b"<html" in body.lower()


@pytest_twisted.ensureDeferred
async def test_jquery_is_served_under_vendor(server_factory, reactor):
    server = await server_factory()
    status, headers, body = await get(server, reactor, "/vendor/jquery.min.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"].startswith("public")
    assert b"jQuery v3.7" in body[:200]


@pytest_twisted.ensureDeferred
async def test_the_browser_client_is_served_under_js(server_factory, reactor):
    if not (ROOT / "js" / "appserver.js").exists():
        pytest.skip("js/appserver.js is not written yet")
    server = await server_factory()
    status, headers, body = await get(server, reactor, "/js/appserver.js")
    assert status == 200 and headers["content-type"] == "text/javascript; charset=utf-8"
    assert body == (ROOT / "js" / "appserver.js").read_bytes()


@pytest_twisted.ensureDeferred
async def test_the_config_script_points_at_the_real_ports_on_the_pages_host(server_factory, reactor):
    server = await server_factory()
    status, headers, body = await get(server, reactor, "/appserver-config.js",
                                      host=f"localhost:{server.port('static')}")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    prefix, suffix = b"window.AppServerConfig = ", b";\n"
    assert body.startswith(prefix) and body.endswith(suffix)
    config = json.loads(body[len(prefix):-len(suffix)])
    assert config == {"wsUrl": f"ws://localhost:{server.port('ws')}/",
                      "ajaxUrl": f"http://localhost:{server.port('ajax')}"}


TRAVERSALS = [
    "/../setup.cfg",
    "/%2e%2e/setup.cfg",
    "/%2E%2E/setup.cfg",
    "/%2e%2e%2fsetup.cfg",
    "/js/../../setup.cfg",
    "/js/%2e%2e/%2e%2e/setup.cfg",
    "/js/..%2f..%2fsetup.cfg",
    "/js/x%2f..%2f..%2fsetup.cfg",
    "/vendor/../../../../etc/passwd",
    "/vendor/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/.git/config",
    "/%2egit/config",
    "/js/.hidden",
    "/..%5c..%5csetup.cfg",
    "/js/%00",
    "/index.html%00.js",
    "//etc/passwd",
    "/etc/passwd",
    "/nope.html",
]


@pytest_twisted.ensureDeferred
async def test_traversal_attempts_get_a_404_that_names_no_path(server_factory, reactor):
    server = await server_factory()
    for path in TRAVERSALS:
        status, headers, body = await get(server, reactor, path)
        assert status == 404, (path, status, body[:200])
        assert str(ROOT).encode() not in body and b"/work" not in body and b"[metadata]" not in body, path
        assert b"root:" not in body and b"Traceback" not in body, path


@pytest_twisted.ensureDeferred
async def test_directories_are_never_listed(server_factory, reactor):
    server = await server_factory()
    for path in ("/js/", "/vendor/"):
        status, _, body = await get(server, reactor, path)
        assert status == 404, path
        assert b"jquery" not in body.lower() and b"appserver.js" not in body


@pytest_twisted.ensureDeferred
async def test_head_answers_headers_only(server_factory, reactor):
    server = await server_factory()
    status, headers, body = await get(server, reactor, "/index.html", method="HEAD")
    assert status == 200 and body == b""


@pytest.mark.filterwarnings("ignore::DeprecationWarning:twisted.web.server")
@pytest_twisted.ensureDeferred
async def test_post_to_a_page_is_405(server_factory, reactor):
    server = await server_factory()
    status, headers, _ = await get(server, reactor, "/index.html", method="POST")
    assert status == 405


@pytest_twisted.ensureDeferred
async def test_only_the_browser_client_is_served_under_js(server_factory, reactor):
    server = await server_factory()
    status, _, body = await get(server, reactor, "/js/src/index.js")
    assert status == 200 and b"export" in body
    for path in ("/js/package.json", "/js/package-lock.json", "/js/build.mjs", "/js/appserver.d.ts",
                 "/js/README.md", "/js/node_modules/", "/js/node_modules/rollup/package.json", "/js/"):
        status, _, body = await get(server, reactor, path)
        assert status == 404, path
        assert b"/js" not in body and b"node_modules" not in body
