"""
Trusted proxies and local requests (appserver._server.proxies): whom a
forwarded request comes from, and when a request counts as made on this
machine. End to end: tests/test_hostile_edges.py.
"""

from __future__ import annotations

import pytest

from appserver._server.proxies import TrustedProxies, is_local, parse_proxy_network


def headers(**values: str):
    found = {name.replace("_", "-").lower(): value for name, value in values.items()}
    return found.get


@pytest.mark.parametrize("text", ["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8", " 192.0.2.1 "])
def test_a_trusted_proxy_is_an_address_or_a_network(text):
    assert parse_proxy_network(text) == text.strip()


@pytest.mark.parametrize("text", ["", "localhost", "10.0.0.0/33", "nginx:80"])
def test_anything_else_is_refused_with_an_example(text):
    with pytest.raises(ValueError, match="10.0.0.0/8"):
        parse_proxy_network(text)


def test_without_trusted_proxies_the_peer_is_the_client():
    assert TrustedProxies().client_address("127.0.0.1", headers(x_forwarded_for="203.0.113.7")) == "127.0.0.1"


def test_a_peer_that_is_not_trusted_is_the_client_whatever_it_says():
    proxies = TrustedProxies(["10.0.0.0/8"])
    assert proxies.client_address("203.0.113.9", headers(x_forwarded_for="198.51.100.1")) == "203.0.113.9"


def test_the_client_is_the_first_untrusted_address_from_the_right():
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    # The client wrote "1.2.3.4" itself; nginx then a load balancer appended.
    forwarded = headers(x_forwarded_for="1.2.3.4, 203.0.113.7, 10.1.2.3")
    assert proxies.client_address("127.0.0.1", forwarded) == "203.0.113.7"


def test_a_trusted_proxy_without_the_header_is_the_client():
    assert TrustedProxies(["127.0.0.1"]).client_address("127.0.0.1", headers()) == "127.0.0.1"


@pytest.mark.parametrize("entry, client", [
    ("[2001:db8::1]:4711", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    ("203.0.113.7:4711", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
])
def test_addresses_are_read_in_their_usual_spellings(entry, client):
    assert TrustedProxies(["127.0.0.1"]).client_address("127.0.0.1", headers(x_forwarded_for=entry)) == client


def test_an_entry_that_is_no_address_stops_the_walk_at_the_last_good_hop():
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    forwarded = headers(x_forwarded_for="unknown, 10.0.0.2")
    assert proxies.client_address("127.0.0.1", forwarded) == "10.0.0.2"


@pytest.mark.parametrize("peer, sent, local", [
    ("127.0.0.1", {}, True),
    ("::1", {}, True),
    ("127.0.0.1", {"x_forwarded_for": "127.0.0.1"}, False),
    ("127.0.0.1", {"forwarded": "for=127.0.0.1"}, False),
    ("127.0.0.1", {"x_real_ip": "127.0.0.1"}, False),
    ("192.0.2.1", {}, False),
    ("not an address", {}, False),
])
def test_local_means_loopback_and_through_no_proxy(peer, sent, local):
    assert is_local(peer, headers(**sent)) is local
