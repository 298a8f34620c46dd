"""
Envelopes: what a client may send (docs/protocol.md, "Client to server") and
how an outgoing message is serialized once for all its recipients.
"""

import ctypes
import ctypes.util
import gc
import json
import sys

import orjson
import pytest
from autobahn.websocket.protocol import PreparedMessage

from appserver._core.envelope import (MAX_ID_LENGTH, MAX_JSON_DEPTH, MAX_TYPE_LENGTH, Envelope, Outgoing,
                                ProtocolError, error_payload, parse_envelope, parse_json, validate_envelope)


def code_of(raw):
    with pytest.raises(ProtocolError) as caught:
        parse_envelope(raw)
    return caught.value.code


def test_a_full_envelope_is_parsed():
    assert parse_envelope(b'{"type": "chat", "data": "hello", "id": 7}') == Envelope("chat", "hello", 7)


def test_data_and_id_default_to_none():
    assert parse_envelope('{"type": "ping"}') == Envelope("ping", None, None)


def test_a_string_id_is_kept():
    assert parse_envelope('{"type": "ping", "id": "abc"}').id == "abc"


@pytest.mark.parametrize("raw", [b"", b"{", b"nope", b'{"type": "chat",}', b"\xff\xfe", b"NaN",
                                 b'"\\ud800"'])
def test_malformed_json_is_bad_json(raw):
    assert code_of(raw) == "bad_json"


@pytest.mark.parametrize("raw", ["[]", "1", '"chat"', "null", "true", '[{"type": "chat"}]'])
def test_a_value_that_is_not_an_object_is_bad_envelope(raw):
    assert code_of(raw) == "bad_envelope"


@pytest.mark.parametrize("raw", ['{}', '{"data": 1}', '{"type": ""}', '{"type": 5}', '{"type": null}',
                                 '{"type": ["chat"]}',
                                 json.dumps({"type": "x" * (MAX_TYPE_LENGTH + 1)})])
def test_a_missing_empty_long_or_non_string_type_is_bad_envelope(raw):
    assert code_of(raw) == "bad_envelope"


def test_a_type_of_the_maximum_length_is_accepted():
    assert parse_envelope(json.dumps({"type": "x" * MAX_TYPE_LENGTH})).type == "x" * MAX_TYPE_LENGTH


@pytest.mark.parametrize("request_id", [True, False, 1.5, [1], {"a": 1}, "i" * (MAX_ID_LENGTH + 1)])
def test_a_bad_id_is_bad_envelope(request_id):
    assert code_of(json.dumps({"type": "ping", "id": request_id})) == "bad_envelope"


def test_an_id_of_the_maximum_length_is_accepted():
    assert parse_envelope(json.dumps({"type": "ping", "id": "i" * MAX_ID_LENGTH})).id == "i" * MAX_ID_LENGTH


def test_a_bad_type_keeps_a_valid_id_so_the_error_can_be_matched():
    with pytest.raises(ProtocolError) as caught:
        validate_envelope({"type": 3, "id": 9})
    assert caught.value.request_id == 9


def test_error_payload_has_the_documented_shape():
    assert error_payload("bad_data", "why", 4) == {"type": "error", "id": 4,
                                                    "data": {"code": "bad_data", "message": "why"}}


def test_outgoing_adds_the_position_to_the_envelope():
    message = Outgoing.of({"type": "chat", "data": "hi"}, pos=5)
    assert json.loads(message.payload) == {"type": "chat", "data": "hi", "pos": 5}
    assert message.pos == 5 and len(message) == len(message.payload)


def test_outgoing_without_position_has_no_pos_field():
    assert "pos" not in json.loads(Outgoing.of({"type": "welcome"}).payload)


def test_outgoing_frame_is_a_complete_websocket_text_frame_built_once():
    message = Outgoing.of({"type": "chat", "data": "x" * 300})
    frame = message.frame
    assert frame is message.frame
    assert frame == PreparedMessage(message.payload, False, False, True).payloadHybi
    assert frame[0] == 0x81  # FIN + text opcode
    assert frame.endswith(message.payload)


# Nesting depth ------------------------------------------------------------------------------


def deep(depth, kind="list"):
    text = "0"
    for _ in range(depth):
        text = f"[{text}]" if kind == "list" else f'{{"k": {text}}}'
    return text


@pytest.mark.parametrize("kind", ["list", "object"])
def test_an_envelope_may_nest_exactly_max_json_depth_levels(kind):
    # The envelope's own object is the first level.
    parse_envelope(f'{{"type": "ping", "data": {deep(MAX_JSON_DEPTH - 1, kind)}}}')
    with pytest.raises(ProtocolError) as caught:
        parse_envelope(f'{{"type": "ping", "id": 9, "data": {deep(MAX_JSON_DEPTH, kind)}}}')
    assert caught.value.code == "bad_json" and caught.value.request_id == 9


def test_deeper_than_json_itself_allows_is_bad_json_too():
    assert code_of(deep(5000).encode()) == "bad_json"


def test_brackets_inside_strings_are_not_nesting():
    assert parse_json('{"text": "' + "[{" * 100 + '"}') == {"text": "[{" * 100}


def test_a_body_names_itself_in_the_error():
    with pytest.raises(ProtocolError, match=f"the request body nests deeper than {MAX_JSON_DEPTH} levels"):
        parse_json(deep(MAX_JSON_DEPTH + 1).encode(), "request body")


def test_a_bad_id_is_not_echoed_with_a_depth_error():
    with pytest.raises(ProtocolError) as caught:
        parse_envelope(f'{{"type": "ping", "id": true, "data": {deep(MAX_JSON_DEPTH)}}}')
    assert caught.value.request_id is None


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_outgoing_keeps_one_exact_frame_whatever_the_payload_length(length):
    payload = b'"' + b"x" * max(0, length - 2) + b'"' if length >= 2 else b"1" * length
    message = Outgoing(payload)
    assert message.frame == PreparedMessage(payload, False, False, True).payloadHybi
    assert message.payload == payload and len(message) == len(payload)


def _allocated(value: bytes) -> int:
    """
    The bytes malloc really gave an object (glibc only).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        usable = libc.malloc_usable_size
    except (OSError, AttributeError):
        pytest.skip("needs glibc's malloc_usable_size")
    usable.restype, usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    return int(usable(id(value)))


def test_outgoing_does_not_keep_the_encoders_spare_capacity():
    envelope = {"type": "chat", "data": "x" * 4100}
    # The encoder's buffer for these 4 KiB of JSON has room for 16 KiB...
    assert _allocated(orjson.dumps(envelope)) >= 2 * len(orjson.dumps(envelope))
    # ...the message keeps one buffer of its own size, and nothing else big.
    message = Outgoing.of(envelope)
    message.frame                               # as a WebSocket recipient would
    kept = [value for value in gc.get_referents(message) if isinstance(value, bytes)]
    assert kept == [message.frame]
    assert _allocated(message.frame) < len(message.frame) + sys.getsizeof(b"") + 64
