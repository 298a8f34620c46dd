"""
The origin policy: the server's own pages by default, anchored patterns when
configured, never a look-alike host.
"""

import pytest

from appserver._server.origins import OriginPolicy, compile_origin_pattern, parse_server_name

PORTS = {9000, 9001, 9002}


def policy(*patterns, server_names=()):
    return OriginPolicy(patterns, lambda: PORTS, server_names)


@pytest.mark.parametrize("origin, host", [
    ("http://127.0.0.1:9000", "127.0.0.1:9001"),
    ("http://localhost:9002", "localhost:9002"),
    ("HTTP://LOCALHOST:9000", "localhost:9001"),
    ("http://[::1]:9000", "[::1]:9001"),
    ("http://192.0.2.10:9000", "192.0.2.10:9002"),
])
def test_the_servers_own_pages_are_allowed(origin, host):
    assert policy().allows(origin, host)


def test_a_name_is_an_own_page_only_when_given_with_server_name():
    # The Host header alone proves nothing: under DNS rebinding the
    # attacker's name points at this server and the page sends it as both.
    assert not policy().allows("http://example.com:9000", "Example.com:9001")
    assert policy(server_names=["Example.com"]).allows("http://example.com:9000", "Example.com:9001")
    assert not policy(server_names=["example.com"]).allows("http://other.example:9000", "other.example:9001")


def test_the_refusal_of_an_unknown_name_on_an_own_port_names_server_name():
    advice = policy().advice("http://rebind.example:9000", "rebind.example:9001")
    assert "--server-name rebind.example" in advice


@pytest.mark.parametrize("name", ["127.0.0.1", "chat example.com", "https://chat.example.com", "-x.example", ""])
def test_a_server_name_must_be_a_host_name(name):
    with pytest.raises(ValueError):
        parse_server_name(name)


@pytest.mark.parametrize("origin, host", [
    ("http://evil.com:9000", "127.0.0.1:9001"),       # another host, own port
    ("http://127.0.0.1:1234", "127.0.0.1:9001"),      # own host, another port
    ("http://127.0.0.1", "127.0.0.1:9001"),           # default port 80 is not ours
    ("null", "127.0.0.1:9001"),
    ("file://", "127.0.0.1:9001"),
    ("ftp://127.0.0.1:9000", "127.0.0.1:9001"),
    ("http://127.0.0.1:9000", None),
    ("http://127.0.0.1:notaport", "127.0.0.1:9001"),
    ("http://127.0.0.1.evil.com:9000", "127.0.0.1:9001"),
])
def test_foreign_origins_are_refused(origin, host):
    assert not policy().allows(origin, host)


def test_a_request_without_origin_is_allowed():
    assert policy().allows(None, "127.0.0.1:9001")


def test_star_allows_every_origin():
    assert policy("*").allows("http://anything.example:1", "127.0.0.1:9001")
    assert policy("*").allows("null", None)


@pytest.mark.parametrize("origin", ["https://a.example.com", "https://a.b.example.com",
                                    "https://a.example.com:443", "HTTPS://A.EXAMPLE.COM"])
def test_a_wildcard_pattern_matches_subdomains(origin):
    assert policy("https://*.example.com").allows(origin, "server:9001")


@pytest.mark.parametrize("origin", ["https://example.com", "https://example.com.evil.net",
                                    "https://evilexample.com", "http://a.example.com",
                                    "https://a.example.com:8443", "https://a.example.com.evil.net"])
def test_a_wildcard_pattern_is_anchored(origin):
    assert not policy("https://*.example.com").allows(origin, "server:9001")


def test_an_exact_origin_with_a_port():
    allowed = policy("http://app.test:8080")
    assert allowed.allows("http://app.test:8080", "server:9001")
    assert not allowed.allows("http://app.test", "server:9001")
    assert not allowed.allows("http://app.test:80801", "server:9001")


def test_a_star_port_allows_any_port():
    assert policy("http://localhost:*").allows("http://localhost:3000", "server:9001")
    assert policy("http://localhost:*").allows("http://localhost", "server:9001")


@pytest.mark.parametrize("pattern", ["example.com", "ftp://example.com", "https://", "https://ex ample.com",
                                     "https://example.com/path"])
def test_a_malformed_pattern_is_refused(pattern):
    with pytest.raises(ValueError):
        compile_origin_pattern(pattern)


def test_own_ports_are_read_each_time():
    ports = set()
    live = OriginPolicy((), lambda: ports)
    assert not live.allows("http://127.0.0.1:9000", "127.0.0.1:9000")
    ports.add(9000)
    assert live.allows("http://127.0.0.1:9000", "127.0.0.1:9000")


def test_the_refusal_advice_names_the_option():
    assert "--allowed-origin https://x.test" in policy().advice("https://x.test")


@pytest.mark.parametrize("origin", ["https://appxexample.com", "https://app-example.com", "https://app.examplexcom"])
def test_the_dots_of_an_exact_origin_match_only_dots(origin):
    assert not policy("https://app.example.com").allows(origin, "server:9001")
