"""
What the Redis backplane decides without asking Redis: reading its URL,
naming keys and nodes, merging the cluster's presence, reaping dead nodes,
and filtering what a replay read back. Pure functions, no server.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from appserver._core.envelope import Outgoing
from appserver._redis.keys import KeySpace, check_node_id, default_node_id
from appserver._redis.location import TLSFiles, masked_url, parse_redis_url
from appserver._redis.presence import (DeadNode, decode_reaped, decode_view, leave_envelope, merge_members,
                                       room_field, sum_counts)
from appserver._redis.replay import (CATCH_UP, FOLLOW, IN_STEP, after_reconnect, catch_up_streams, merge_missed,
                                     read_replay)
from appserver._redis.routing import home_session_secret, session_home
from appserver._redis.scripts import POSITION_GAP, proposed_start

# The URL -------------------------------------------------------------------------


def test_a_full_url_names_everything() -> None:
    location = parse_redis_url("redis://app:p%40ss@Redis.local:6380/3?prefix=chat&heartbeat=0.5&ttl=2")
    assert (location.host, location.port, location.db) == ("redis.local", 6380, 3)
    assert (location.username, location.password) == ("app", "p@ss")
    assert (location.prefix, location.heartbeat, location.ttl) == ("chat", 0.5, 2.0)


def test_the_ttl_defaults_to_three_heartbeats() -> None:
    assert parse_redis_url("redis://h?heartbeat=1").ttl == 3.0


def test_the_password_is_never_shown() -> None:
    location = parse_redis_url("redis://:secret@h:6379/0")
    assert "secret" not in str(location) and "secret" not in repr(location)
    assert str(location) == "redis://h:6379/0"


@pytest.mark.parametrize("url, says", [
    ("redis://", "with a host, for example redis://127.0.0.1:6379/0"),
    ("http://h:6379/0", "expected redis://host:port/db, for example redis://127.0.0.1:6379/0"),
    ("http://h:6379/0", "or rediss:// for TLS, redis+sentinel://sentinel:26379/primary-name/db"),
    ("redis://h:99999/0", "the port is a number from 1 to 65535, as in redis://h:6379/0"),
    ("redis://h:port/0", "the port is a number from 1 to 65535"),
    ("redis://h:0/0", "the port is a number from 1 to 65535"),
    ("redis://h:6379/zero", "database number (0 unless Redis has more), as in redis://h:6379/0"),
    ("redis://h:6379/-1", "database number"),
    ("redis://h/0?colour=blue&size=2", "unknown parameter(s) colour, size (known: prefix, heartbeat, ttl, replicas, "
                                       "replica_timeout)"),
    ("redis://h/0?prefix=no spaces", "prefix must be 1 to 64 of A-Z a-z 0-9 _ . : -, as in ?prefix=chat"),
    ("redis://h/0?heartbeat=fast", "heartbeat and ttl are seconds, as in ?heartbeat=2&ttl=6"),
    ("redis://h/0?heartbeat=5&ttl=2", "need 0 < heartbeat < ttl (got heartbeat=5, ttl=2), as in ?heartbeat=2&ttl=6"),
    ("redis://h/0?heartbeat=0", "need 0 < heartbeat < ttl"),
    ("redis://h/0?ttl=inf", "need 0 < heartbeat < ttl"),
])
def test_a_wrong_url_is_refused_with_what_to_write_instead(url: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    assert str(raised.value).startswith(f"--backplane {url!r}: ")
    assert says in str(raised.value)


def test_tls_verifies_against_the_system_authorities_unless_given_a_ca(tmp_path) -> None:
    assert parse_redis_url("rediss://h:6380/0").tls == TLSFiles()
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "cert.pem", "key.pem"))
    for path in (ca, cert, key):
        path.write_text("PEM")
    location = parse_redis_url(f"rediss://:pw@h:6380/1?ca={ca}&cert={cert}&key={key}")
    assert location.tls == TLSFiles(str(ca), str(cert), str(key))
    assert str(location) == "rediss://h:6380/1"
    assert parse_redis_url("redis://h").tls is None


def test_a_sentinel_url_names_the_sentinels_the_primary_and_the_database() -> None:
    location = parse_redis_url("redis+sentinel://app:p%40ss@s1,S2:26380,[::1]:26381/main.0/2"
                               "?sentinel_password=s%21&sentinel_username=watcher&prefix=chat")
    assert location.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (location.primary_name, location.db, location.prefix) == ("main.0", 2, "chat")
    assert (location.username, location.password) == ("app", "p@ss")
    assert (location.sentinel_username, location.sentinel_password) == ("watcher", "s!")
    assert location.tls is None
    assert str(location) == "redis+sentinel://s1:26379,s2:26380,[::1]:26381/main.0/2"


def test_a_sentinel_url_shows_no_password_of_either_kind() -> None:
    location = parse_redis_url("rediss+sentinel://:secret1@s1/m?sentinel_password=secret2")
    assert "secret" not in str(location) and "secret" not in repr(location)
    assert str(location) == "rediss+sentinel://s1:26379/m/0"


def test_publishes_wait_for_one_replica_with_sentinels_and_none_without() -> None:
    assert parse_redis_url("redis+sentinel://s/m").replicas == 1
    assert parse_redis_url("redis://h").replicas == 0
    location = parse_redis_url("redis://h?replicas=2&replica_timeout=0.25")
    assert (location.replicas, location.replica_timeout) == (2, 0.25)
    assert parse_redis_url("redis+sentinel://s/m?replicas=0").replicas == 0


@pytest.mark.parametrize("url, shown", [
    ("redis://u:hunter2@h:0/0", "--backplane 'redis://u:****@h:0/0': "),
    ("redis://:hunter2@h/0?colour=blue", "--backplane 'redis://:****@h/0?colour=blue': "),
    ("redis+sentinel://:hunter2@s1/m/0?sentinel_password=s3cret&bogus=1",
     "--backplane 'redis+sentinel://:****@s1/m/0?sentinel_password=****&bogus=1': "),
    ("redis://:hunter2@[::1/0", "--backplane 'redis://:****@[::1/0': not a URL (Invalid IPv6 URL): "),
])
def test_a_refused_url_is_shown_without_its_passwords(url: str, shown: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    message = str(raised.value)
    assert message.startswith(shown) and "\n" not in message
    assert "hunter2" not in message and "s3cret" not in message


def test_a_bad_ipv6_sentinel_port_is_refused_with_the_address_in_brackets() -> None:
    with pytest.raises(ValueError, match=r"as in \[::1\]:26379"):
        parse_redis_url("redis+sentinel://[::1]:x/m")


def test_print_config_hides_the_sentinel_password_too() -> None:
    from appserver._server.config import render_toml, resolve_configuration
    url = "redis+sentinel://:hunter2@s1,s2:26380/m/0?prefix=chat&sentinel_password=s3cret&ttl=9"
    output = render_toml(resolve_configuration({"backplane": url}, {}))
    assert "hunter2" not in output and "s3cret" not in output
    assert 'backplane = "redis+sentinel://:****@s1,s2:26380/m/0?prefix=chat&sentinel_password=****&ttl=9"' in output


@pytest.mark.parametrize("url, says", [
    ("rediss://h/0?ca=/no/such/ca.pem", "?ca=/no/such/ca.pem: no readable file there; name a PEM file"),
    ("redis://h/0?ca=/etc/hostname", "?ca need TLS: write rediss:// (or rediss+sentinel://) instead of redis://"),
    ("rediss://h/0?cert=/etc/hostname", "needs both ?cert=/path/cert.pem and ?key=/path/key.pem"),
    ("rediss://h/0?key=/etc/hostname", "needs both ?cert=/path/cert.pem and ?key=/path/key.pem"),
    ("redis://h/0?sentinel_password=x", "are for Sentinels: write redis+sentinel://sentinel:26379/primary-name/db"),
    ("redis+sentinel://s1:26379", "the path names the primary as the Sentinels know it"),
    ("redis+sentinel://s1/my%20master/0", "then the database: redis+sentinel://s1/mymaster/0"),
    ("redis+sentinel://s1/m/zero", "database number (0 unless Redis has more), as in redis+sentinel://s1/m/0"),
    ("redis+sentinel://s1/m/0/1", "database number"),
    ("redis+sentinel:///m/0", "each Sentinel is host[:port], separated by commas, as in redis+sentinel://"),
    ("redis+sentinel://s1,,s2/m/0", "each Sentinel is host[:port]"),
    ("redis+sentinel://s1:port/m", "bad Sentinel port 'port': a number from 1 to 65535, as in s1:26379"),
    ("redis+sentinel://s1:70000/m", "bad Sentinel port '70000'"),
    ("rediss+sentinel://s1/m?colour=red", "(known: prefix, heartbeat, ttl, replicas, replica_timeout, ca, cert, "
                                          "key, sentinel_username, sentinel_password)"),
    ("redis://h/0?replicas=-1", "replicas is how many replicas must have a publish before it is acknowledged"),
    ("redis://h/0?replicas=many", "0 to 100, as in ?replicas=1"),
    ("redis://h/0?replica_timeout=0", "replica_timeout is the seconds a publish waits for its replicas"),
    ("redis://h/0?replica_timeout=soon", "0.001 to 60, as in ?replica_timeout=1"),
])
def test_a_wrong_tls_or_sentinel_url_is_refused_with_what_to_write_instead(url: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_redis_url(url)
    message = str(raised.value)
    assert message.startswith(f"--backplane {masked_url(url)!r}: ") and "\n" not in message
    assert says in message


# Names ---------------------------------------------------------------------------


def test_keys_and_channels_are_under_the_prefix_and_database() -> None:
    keys = KeySpace("chat", 2, "web-1")
    assert keys.positions == ["chat:epoch", "chat:pos", "chat:floor"]
    assert (keys.streams, keys.nodes, keys.node) == ("chat:streams", "chat:nodes", "chat:node:web-1")
    assert (keys.stream(""), keys.stream("news")) == ("chat:global", "chat:s:news")
    assert (keys.bus, keys.control, keys.inbox) == (b"chat@2:bus", b"chat@2:ctl", b"chat@2:to:web-1")
    assert keys.node_channel("web-2") == b"chat@2:to:web-2"


@pytest.mark.parametrize("node_id", ["a.b", "", "x" * 65, "with space"])
def test_a_node_id_that_cannot_name_a_session_home_is_refused(node_id: str) -> None:
    with pytest.raises(ValueError, match="--node-id .*: use 1 to 64 of A-Z a-z 0-9 _ -"):
        check_node_id(node_id)


def test_default_node_ids_are_valid_and_distinct() -> None:
    first, second = default_node_id(), default_node_id()
    assert check_node_id(first) == first and first != second


def test_a_session_secret_names_its_home_node() -> None:
    secret = home_session_secret("web-1")
    assert secret.startswith("web-1.") and len(secret) > 40
    assert session_home(secret) == "web-1"


@pytest.mark.parametrize("session_id", ["nodotatall", "bad name.secret", ".secret", "a/b.secret"])
def test_a_session_id_without_a_valid_home_has_none(session_id: str) -> None:
    assert session_home(session_id) is None


def test_a_node_that_saw_nothing_proposes_position_zero() -> None:
    assert proposed_start(0) == 0
    assert proposed_start(41) == 41 + POSITION_GAP


# Presence ------------------------------------------------------------------------


def test_a_room_field_holds_its_members_or_nothing_to_delete_it() -> None:
    assert room_field("lobby", ["ann", "bob"]) == ("r:lobby", b'["ann","bob"]')
    assert room_field("lobby", []) == ("r:lobby", b"")


def test_a_view_pairs_nodes_with_their_values() -> None:
    assert decode_view([b"a", b"1", b"b", b""]) == {"a": b"1", "b": b""}
    assert decode_view([]) == {}


def test_cluster_counts_add_every_live_node_to_this_one() -> None:
    view = {"b": orjson.dumps({"websocket": 2, "ajax": 1}), "c": orjson.dumps({"websocket": 1, "sse": 4})}
    assert sum_counts({"websocket": 1, "ajax": 0}, view) == {"websocket": 4, "ajax": 1, "sse": 4, "nodes": 3}


def test_a_live_node_without_counts_still_counts_as_a_node() -> None:
    assert sum_counts({"websocket": 1, "ajax": 0}, {"b": b""}) == {"websocket": 1, "ajax": 0, "nodes": 2}


def test_counts_a_node_wrote_in_another_format_are_left_out() -> None:
    view = {"b": b"not json", "c": b"[1, 2]", "d": orjson.dumps({"websocket": "many", "ajax": True, "sse": 2})}
    assert sum_counts({"websocket": 1}, view) == {"websocket": 1, "sse": 2, "nodes": 4}


def test_room_members_merge_sorted_over_nodes() -> None:
    view = {"b": orjson.dumps(["zoe", "al"]), "c": b"", "d": orjson.dumps(["bo"])}
    assert merge_members(["cy"], view) == ["al", "bo", "cy", "zoe"]


def test_the_same_name_on_two_nodes_is_two_members() -> None:
    assert merge_members(["sam"], {"b": orjson.dumps(["sam"])}) == ["sam", "sam"]


def test_room_members_in_another_format_are_left_out() -> None:
    assert merge_members(["ann"], {"b": b"{}", "c": orjson.dumps(["bob", 7]), "d": b"nope"}) == ["ann", "bob"]


def test_a_reaped_node_lists_every_member_of_every_room() -> None:
    answer = [[b"web-2", b"lobby", b'["ann","bob"]', b"games", b'["cy"]'], [b"web-3"]]
    assert decode_reaped(answer) == [
        DeadNode("web-2", [("lobby", "ann"), ("lobby", "bob"), ("games", "cy")]),
        DeadNode("web-3", []),
    ]


def test_nothing_reaped_is_no_dead_node() -> None:
    assert decode_reaped(None) == [] and decode_reaped([]) == []


def test_a_dead_nodes_unreadable_room_announces_nobody() -> None:
    assert decode_reaped([[b"web-2", b"lobby", b"garbage", b"games", b'["cy"]']]) == \
        [DeadNode("web-2", [("games", "cy")])]


def test_a_dead_nodes_members_leave_as_if_they_left() -> None:
    assert leave_envelope("lobby", "ann") == {"type": "leave", "data": {"room": "lobby", "username": "ann"}}


# After a reconnection ------------------------------------------------------------


@pytest.mark.parametrize("ours, theirs, action", [
    (("E", 10), ("E", 10), IN_STEP),
    (("E", 10), ("E", 15), CATCH_UP),
    (("E", 10), ("E", 5), FOLLOW),
    (("E", 10), ("F", 15), FOLLOW),
    (("E", 0), ("F", 0), FOLLOW),
])
def test_a_reconnected_node_catches_up_follows_or_does_nothing(ours: tuple[str, int], theirs: tuple[str, int],
                                                                action: str) -> None:
    assert after_reconnect(*ours, *theirs) == action


def test_a_catch_up_reads_the_global_stream_first_and_every_other_once() -> None:
    assert catch_up_streams(["news", "sport"], ["", "news", "old"]) == ["", "news", "old", "sport"]


# Replay reads --------------------------------------------------------------------

NOW_MS = 1_000_000_000


def entry(pos: int, created_ms: int = NOW_MS, key: bytes = b"null") -> list[Any]:
    return [b"%d-0" % pos, [b"p", b'{"pos":%d}' % pos, b"k", key, b"t", b"%d" % created_ms]]


def answer(*streams: tuple[int, int, int, list[Any]], epoch: bytes = b"E", position: int = 20,
           floor: int = 0) -> list[Any]:
    return [epoch, b"%d" % position, b"%d" % floor, *[list(stream) for stream in streams]]


def positions(messages: list[tuple[str, Outgoing]]) -> list[tuple[str, int | None]]:
    return [(stream, message.pos) for stream, message in messages]


def test_a_replay_read_merges_streams_in_position_order() -> None:
    read = read_replay(answer((12, 0, 1, [entry(8), entry(12)]), (11, 0, 1, [entry(9), entry(11)])),
                       ["", "news"], since=5, upto=None, horizon_ms=0)
    assert (read.epoch, read.position, read.floor, read.complete) == ("E", 20, 0, True)
    assert positions(read.messages) == [("", 8), ("news", 9), ("news", 11), ("", 12)]


def test_a_replayed_message_keeps_its_key_and_creation_time() -> None:
    read = read_replay(answer((8, 0, 1, [entry(8, NOW_MS + 500, b'"price"')])), [""], since=5, upto=None,
                       horizon_ms=0)
    [(_, message)] = read.messages
    assert (message.payload, message.key, message.created) == (b'{"pos":8}', "price", NOW_MS / 1000 + 0.5)


def test_a_stream_with_nothing_after_since_is_skipped_even_if_gone() -> None:
    read = read_replay(answer((4, 9, 0, [])), ["news"], since=5, upto=None, horizon_ms=0)
    assert read.complete and read.messages == []


def test_a_read_from_before_the_floor_is_incomplete() -> None:
    assert not read_replay(answer(floor=6), [], since=5, upto=None, horizon_ms=0).complete


def test_a_read_from_before_what_a_stream_trimmed_is_incomplete() -> None:
    read = read_replay(answer((12, 7, 1, [entry(8), entry(12)])), ["news"], since=5, upto=None, horizon_ms=0)
    assert not read.complete and positions(read.messages) == [("news", 8), ("news", 12)]


def test_an_expired_stream_makes_the_read_incomplete() -> None:
    assert not read_replay(answer((12, 0, 0, [])), ["news"], since=5, upto=None, horizon_ms=0).complete


def test_entries_older_than_the_horizon_are_left_out_and_make_it_incomplete() -> None:
    read = read_replay(answer((12, 0, 1, [entry(8, NOW_MS - 10), entry(12)])), ["news"], since=5, upto=None,
                       horizon_ms=NOW_MS - 1)
    assert not read.complete and positions(read.messages) == [("news", 12)]


def test_channel_messages_after_upto_are_left_for_live_delivery_but_global_ones_kept() -> None:
    read = read_replay(answer((14, 0, 1, [entry(14)]), (15, 0, 1, [entry(9), entry(15)])), ["", "news"],
                       since=5, upto=10, horizon_ms=0)
    assert read.complete and positions(read.messages) == [("news", 9), ("", 14)]


def test_a_malformed_entry_fails_the_read() -> None:
    from appserver._redis.codec import MalformedMessage
    with pytest.raises(MalformedMessage):
        read_replay(answer((8, 0, 1, [[b"8-0", [b"k", b"null"]]])), [""], since=5, upto=None, horizon_ms=0)


def test_missed_messages_merge_once_each_in_order_this_nodes_copy_winning() -> None:
    remote = [Outgoing(b"r7", 7), Outgoing(b"r9", 9)]
    local = [Outgoing(b"l8", 8), Outgoing(b"l9", 9), Outgoing(b"unpositioned", None)]
    assert [message.payload for message in merge_missed(remote, local)] == [b"r7", b"l8", b"l9"]


def test_a_routed_request_carries_the_session_digest_never_the_secret():
    import io

    from twisted.internet import defer, task
    from twisted.web.resource import Resource
    from twisted.web.test.requesthelper import DummyRequest

    from appserver._core.client import session_digest
    from appserver._redis.routing import SessionRouter

    sent: list[bytes] = []
    router = SessionRouter("a", lambda node, message: sent.append(message) or True,
                           lambda node: defer.succeed(True), task.Clock(), 25.0)
    secret = "b.S3cr3t-value-nobody-else-knows"
    request = DummyRequest([b"poll"])
    request.prepath = [b"poll"]
    request.content = io.BytesIO(b"")
    request.args = {b"session": [secret.encode()], b"callback": [b"cb"], b"since": [b"0"]}
    request.requestHeaders.setRawHeaders(b"X-AppServer-Session", [secret.encode()])
    request.requestHeaders.setRawHeaders(b"Cookie", [b"sid=private"])
    request.requestHeaders.setRawHeaders(b"Authorization", [b"Bearer private"])
    router.forward("b", Resource(), request, secret)
    assert len(sent) == 1
    message = orjson.loads(sent[0])
    assert secret.encode() not in sent[0] and b"private" not in sent[0]
    assert bytes.fromhex(message["session_digest"]) == session_digest(secret)
    assert message["args"] == {"callback": ["cb"], "since": ["0"]}
