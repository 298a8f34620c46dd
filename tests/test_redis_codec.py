"""
The Redis backplane's codecs, without a Redis server: RESP on the wire
(appserver._redis.resp) and the messages nodes exchange through Redis
(appserver._redis.codec).
"""

from __future__ import annotations

from typing import Any

import pytest

from appserver._redis.codec import (ROOM, SEND, Control, MalformedMessage, Publication, decode_control, decode_key,
                                    decode_publication, decode_stream_entry, encode_control, encode_key,
                                    encode_publication, with_position)
from appserver._redis.resp import INCOMPLETE, MalformedReply, ReplyError, ReplyParser, encode_command


def parse_all(data: bytes, parser: ReplyParser | None = None) -> list[Any]:
    parser = parser or ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.gets()) is not INCOMPLETE:
        replies.append(reply)
    return replies


def parse_byte_by_byte(data: bytes) -> list[Any]:
    parser = ReplyParser()
    replies = []
    for i in range(len(data)):
        parser.feed(data[i:i + 1])
        while (reply := parser.gets()) is not INCOMPLETE:
            replies.append(reply)
    return replies


# Commands ------------------------------------------------------------------------

def test_a_command_is_an_array_of_bulk_strings() -> None:
    assert encode_command("SET", b"key", "value") == b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n"


def test_command_arguments_may_be_numbers_text_or_bytes() -> None:
    assert encode_command("EXPIRE", 10, 0.5) == b"*3\r\n$6\r\nEXPIRE\r\n$2\r\n10\r\n$3\r\n0.5\r\n"
    assert encode_command("SET", "é", bytearray(b"\r\n")) == b"*3\r\n$3\r\nSET\r\n$2\r\n\xc3\xa9\r\n$2\r\n\r\n\r\n"


def test_an_empty_argument_is_an_empty_bulk_string() -> None:
    assert encode_command("ECHO", b"") == b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"


def test_a_command_is_what_the_parser_reads_back() -> None:
    assert parse_all(encode_command("PUBLISH", b"chan", b"a\nb\r\nc")) == [[b"PUBLISH", b"chan", b"a\nb\r\nc"]]


# Replies, by type ----------------------------------------------------------------

def test_a_simple_string_is_text() -> None:
    assert parse_all(b"+OK\r\n") == ["OK"]


def test_a_bulk_string_stays_bytes() -> None:
    assert parse_all(b"$5\r\nhe\r\no\r\n") == [b"he\r\no"]


def test_an_empty_bulk_string_is_empty_bytes() -> None:
    assert parse_all(b"$0\r\n\r\n") == [b""]


def test_an_integer_is_an_int() -> None:
    assert parse_all(b":42\r\n:-7\r\n:0\r\n") == [42, -7, 0]


def test_nil_bulk_and_nil_array_are_none() -> None:
    assert parse_all(b"$-1\r\n*-1\r\n") == [None, None]


def test_an_empty_array_is_an_empty_list() -> None:
    assert parse_all(b"*0\r\n") == [[]]


def test_an_array_mixes_types() -> None:
    assert parse_all(b"*4\r\n$1\r\na\r\n:1\r\n+OK\r\n$-1\r\n") == [[b"a", 1, "OK", None]]


def test_nested_arrays_keep_their_shape() -> None:
    # As a REPLAY answer: {epoch, pos, floor, {last, gone, exists, {{id, {field, value}}}}}
    data = (b"*4\r\n$1\r\ne\r\n$2\r\n10\r\n$1\r\n0\r\n"
            b"*4\r\n:10\r\n:0\r\n:1\r\n*1\r\n*2\r\n$4\r\n10-0\r\n*2\r\n$1\r\np\r\n$2\r\n{}\r\n")
    assert parse_all(data) == [[b"e", b"10", b"0", [10, 0, 1, [[b"10-0", [b"p", b"{}"]]]]]]


def test_an_error_reply_is_a_value_not_an_exception() -> None:
    [error] = parse_all(b"-WRONGPASS invalid username-password pair\r\n")
    assert isinstance(error, ReplyError)
    assert error.prefix == "WRONGPASS"
    assert str(error) == error.text == "WRONGPASS invalid username-password pair"


def test_an_error_inside_an_array_is_one_element() -> None:
    [reply] = parse_all(b"*2\r\n+OK\r\n-ERR no\r\n")
    assert reply[0] == "OK" and isinstance(reply[1], ReplyError) and reply[1].text == "ERR no"


def test_a_connection_may_make_errors_its_own_way() -> None:
    parser = ReplyParser(error=lambda text: ("error", text))
    assert parse_all(b"-ERR unknown command\r\n", parser) == [("error", "ERR unknown command")]


def test_several_replies_in_one_read_come_out_in_order() -> None:
    assert parse_all(b"+OK\r\n:1\r\n$1\r\nx\r\n") == ["OK", 1, b"x"]


# Replies in pieces ---------------------------------------------------------------

EVERY_TYPE = (b"+OK\r\n-ERR bad\r\n:12\r\n$3\r\nabc\r\n$-1\r\n*-1\r\n*0\r\n"
              b"*2\r\n*2\r\n:1\r\n$2\r\n\r\n\r\n*1\r\n$0\r\n\r\n")


def test_replies_fed_byte_by_byte_are_the_same_as_fed_at_once() -> None:
    at_once = parse_all(EVERY_TYPE)
    assert len(at_once) == 8
    assert [repr(reply) for reply in parse_byte_by_byte(EVERY_TYPE)] == [repr(reply) for reply in at_once]


def test_nothing_is_returned_until_a_reply_is_complete() -> None:
    parser = ReplyParser()
    parser.feed(b"*2\r\n$3\r\nab")
    assert parser.gets() is INCOMPLETE
    parser.feed(b"c\r\n")
    assert parser.gets() is INCOMPLETE
    parser.feed(b":5\r\n")
    assert parser.gets() == [b"abc", 5]
    assert parser.gets() is INCOMPLETE


def test_a_bulk_string_split_inside_its_terminator_waits_for_it() -> None:
    parser = ReplyParser()
    parser.feed(b"$2\r\nab\r")
    assert parser.gets() is INCOMPLETE
    parser.feed(b"\n")
    assert parser.gets() == b"ab"


def test_a_long_stream_of_replies_is_read_through_compaction() -> None:
    parser = ReplyParser()
    chunk = encode_command(b"x" * 1000) * 200
    replies = 0
    for _ in range(3):
        parser.feed(chunk)
        while parser.gets() is not INCOMPLETE:
            replies += 1
    assert replies == 600


# Malformed replies ---------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (b"?what\r\n", "not a RESP2 reply"),
    (b":12a\r\n", "integer"),
    (b"$abc\r\n", "bulk length"),
    (b"$-2\r\n", "bulk length"),
    (b"*-5\r\n", "array length"),
    (b"$2\r\nabcd\r\n", "not followed by CRLF"),
    (b"*1\r\n!\r\n", "not a RESP2 reply"),
])
def test_what_is_not_resp_is_refused_clearly(data: bytes, message: str) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(MalformedReply, match=message):
        parser.gets()


def test_a_line_without_end_is_refused_before_it_fills_memory() -> None:
    parser = ReplyParser()
    parser.feed(b"+" + b"x" * 70_000)
    with pytest.raises(MalformedReply, match="without CRLF"):
        parser.gets()


# Conflation keys -----------------------------------------------------------------

@pytest.mark.parametrize("key", [None, "price", 42, ("a", 1), ("nested", ("b", 2))])
def test_a_conflation_key_survives_the_trip(key: Any) -> None:
    assert decode_key(encode_key(key)) == key


def test_a_key_json_cannot_hold_travels_as_its_repr() -> None:
    key = frozenset({1})
    assert decode_key(encode_key(key)) == repr(key)


def test_a_key_that_is_not_json_is_refused() -> None:
    with pytest.raises(MalformedMessage, match="conflation key must be JSON"):
        decode_key(b"{nope")


# Publications --------------------------------------------------------------------

def test_the_position_is_added_to_the_serialised_envelope() -> None:
    assert with_position(b'{"type":"chat","data":"hi"}', 12) == b'{"type":"chat","data":"hi","pos":12}'


def test_a_publication_survives_the_trip() -> None:
    payload = with_position(b'{"type":"message","data":"a\\nb"}', 7)
    raw = encode_publication("E1", 7, "news", ("k", 1), payload)
    assert raw == b'E1\n7\nnews\n["k",1]\n' + payload
    assert decode_publication(raw) == Publication("E1", 7, "news", ("k", 1), payload)


def test_the_global_stream_is_the_empty_name() -> None:
    publication = decode_publication(encode_publication("E1", 3, "", None, b'{"pos":3}'))
    assert (publication.stream, publication.key) == ("", None)


def test_the_payload_may_contain_newlines() -> None:
    assert decode_publication(b"E\n1\ns\nnull\n{\n}\n").payload == b"{\n}\n"


@pytest.mark.parametrize("raw, message", [
    (b"E1\n7\nnews", "expected 5 newline-separated fields"),
    (b"", "expected 5 newline-separated fields"),
    (b"E1\nseven\nnews\nnull\n{}", "position must be a non-negative integer"),
    (b"E1\n-1\nnews\nnull\n{}", "position must be a non-negative integer"),
    (b"\n7\nnews\nnull\n{}", "epoch is empty"),
    (b"E1\n7\n\xff\nnull\n{}", "stream is not UTF-8"),
    (b"E1\n7\nnews\n{bad\n{}", "conflation key must be JSON"),
])
def test_a_malformed_publication_is_refused_saying_why(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        decode_publication(raw)


# Control messages ----------------------------------------------------------------

@pytest.mark.parametrize("op, target", [(ROOM, "lobby"), (SEND, "client-1")])
def test_a_control_message_survives_the_trip(op: str, target: str) -> None:
    raw = encode_control(op, target, b'{"type":"x"}\n')
    assert raw == op.encode() + b"\n" + target.encode() + b'\n{"type":"x"}\n'
    assert decode_control(raw) == Control(op, target, b'{"type":"x"}\n')


def test_a_room_message_names_its_sending_node_so_that_node_skips_the_echo() -> None:
    raw = encode_control(ROOM, "lobby", b"{}", origin="node-a")
    assert raw == b"room@node-a\nlobby\n{}"
    assert decode_control(raw) == Control(ROOM, "lobby", b"{}", "node-a")
    assert decode_control(b"room\nlobby\n{}").origin == ""


def test_an_unknown_operation_is_read_for_the_receiver_to_ignore() -> None:
    assert decode_control(b"future\nt\n{}").op == "future"


def test_a_target_with_a_newline_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="one line each"):
        encode_control(SEND, "a\nb", b"{}")


@pytest.mark.parametrize("raw", [b"room\nlobby", b"room", b"\nlobby\n{}"])
def test_a_malformed_control_message_is_refused(raw: bytes) -> None:
    with pytest.raises(MalformedMessage, match="expected an operation, a target and a payload"):
        decode_control(raw)


# Stream entries ------------------------------------------------------------------

def test_a_stream_entry_reads_position_payload_key_and_time() -> None:
    entry = decode_stream_entry(b"12-0", [b"p", b'{"pos":12}', b"k", b'"price"', b"t", b"1700000000123"])
    assert (entry.pos, entry.payload, entry.key, entry.created_ms) == (12, b'{"pos":12}', "price", 1700000000123)


def test_a_stream_entry_without_key_or_time_has_none() -> None:
    entry = decode_stream_entry(b"3-0", [b"p", b"{}"])
    assert (entry.key, entry.created_ms) == (None, 0)


@pytest.mark.parametrize("entry_id, fields, message", [
    (b"12", [b"p", b"{}"], "expected an id <position>-0"),
    (b"x-0", [b"p", b"{}"], "position must be a non-negative integer"),
    (b"12-0", [b"p"], "field/value pairs"),
    (b"12-0", [b"k", b"null"], "no payload field"),
    (b"12-0", [b"p", b"{}", b"t", b"soon"], "creation time must be a non-negative integer"),
])
def test_a_malformed_stream_entry_is_refused(entry_id: bytes, fields: list[bytes], message: str) -> None:
    with pytest.raises(MalformedMessage, match=message):
        decode_stream_entry(entry_id, fields)
