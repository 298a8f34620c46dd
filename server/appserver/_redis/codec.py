"""
The formats of what nodes tell each other through Redis, as bytes: a
positioned publication on the bus, a room or direct message on the control
channel, an entry of a Redis Stream, and a conflation key.

Publications and Stream entries are written by the Lua script
L{appserver._redis.scripts.PUBLISH} (so that positioning, keeping and
fanning out are one atomic step); the encoders here that mirror it are for
tests and tools, and must be changed together with the script. Fields are
separated by newlines: node ids, epochs, positions and stream, room and
client names never contain one, and a JSON key or payload is written by
orjson, which escapes newlines.

Anything malformed is refused with L{MalformedMessage} saying what was
expected: a node must not deliver half of a message, nor crash the bus on one.

Tests: tests/test_redis_codec.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import orjson

__all__ = ["MalformedMessage", "encode_key", "decode_key", "with_position", "Publication", "encode_publication",
           "decode_publication", "Control", "ROOM", "SEND", "GAP", "encode_control", "decode_control", "StreamEntry",
           "decode_stream_entry"]

#: Control operations: deliver to a room's members, to one client; tell a
#: stream's clients they may have missed messages (L{scripts.GAP
#: <appserver._redis.scripts.GAP>} writes it).
ROOM = "room"
SEND = "send"
GAP = "gap"

_NULL = b"null"


class MalformedMessage(ValueError):
    """
    Bytes from Redis that are not in the format this node expects: another
    version of appserver, or another program, shares the prefix.
    """


# Conflation keys -------------------------------------------------------------

def encode_key(key: Hashable | None) -> bytes:
    """
    A conflation key as JSON. A key JSON cannot hold (a tuple of odd
    things, an object) travels as its C{repr}: still equal to itself on
    every node, which is all a key has to be.
    """
    if key is None:
        return _NULL
    try:
        return orjson.dumps(key)
    except TypeError:
        return orjson.dumps(repr(key))


def _hashable(value: Any) -> Hashable:
    # JSON arrays and objects come back as lists and dicts: a key must hash.
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def decode_key(raw: bytes) -> Hashable | None:
    """
    The conflation key L{encode_key} wrote (a JSON array comes back as a
    tuple).

    @raise MalformedMessage: C{raw} is not JSON.
    """
    if raw == _NULL:
        return None
    try:
        return _hashable(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise MalformedMessage(f"a conflation key must be JSON, got {raw[:40]!r}") from None


def with_position(payload: bytes, pos: int) -> bytes:
    """
    The JSON envelope C{payload} (an object) with C{"pos": pos} added as its
    last member, as L{appserver._redis.scripts.PUBLISH} adds it: so the
    envelope is serialised once, before Redis gives it its position.
    """
    return payload[:-1] + b',"pos":%d}' % pos


def _text(raw: bytes, what: str, kind: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedMessage(f"{kind}: the {what} is not UTF-8: {raw[:40]!r}") from None


def _natural(raw: bytes, what: str, kind: str) -> int:
    if not (raw.isdigit() and raw.isascii()):
        raise MalformedMessage(f"{kind}: the {what} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


# Publications on the bus -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class Publication:
    """
    A stream message as Redis positioned it.

    @ivar payload: the JSON envelope, its C{pos} included.
    """

    epoch: str
    pos: int
    stream: str
    key: Hashable | None
    payload: bytes


def encode_publication(epoch: str, pos: int, stream: str, key: Hashable | None, payload: bytes) -> bytes:
    """
    A bus message as L{appserver._redis.scripts.PUBLISH} writes it:
    C{epoch, pos, stream, key JSON, payload}, one per line, the payload
    last (it is the only field that may be long).
    """
    return b"\n".join((epoch.encode(), b"%d" % pos, stream.encode(), encode_key(key), payload))


def decode_publication(raw: bytes) -> Publication:
    """
    Read a bus message.

    @raise MalformedMessage: saying which field is wrong.
    """
    kind = "bus message"
    fields = raw.split(b"\n", 4)
    if len(fields) != 5:
        raise MalformedMessage(f"{kind}: expected 5 newline-separated fields (epoch, position, stream, key, "
                               f"payload), got {len(fields)}: {raw[:60]!r}")
    epoch, pos, stream, key, payload = fields
    if not epoch:
        raise MalformedMessage(f"{kind}: the epoch is empty")
    return Publication(_text(epoch, "epoch", kind), _natural(pos, "position", kind), _text(stream, "stream", kind),
                       decode_key(key), payload)


# Control messages ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Control:
    """
    A message for some clients that needs no position: C{op} L{ROOM} for
    the members of room C{target}, L{SEND} for client C{target}. A node
    ignores an C{op} it does not know (a newer node may send more kinds).

    @ivar origin: the node that sent it, when it says (C{op@origin} on the
        wire): a room message is delivered at once to the sender's own
        members, so the sender skips it when Redis echoes it back.
    """

    op: str
    target: str
    payload: bytes
    origin: str = ""


def encode_control(op: str, target: str, payload: bytes, origin: str = "") -> bytes:
    """
    @param origin: the sending node's id, if its receivers should know it.
    @raise ValueError: C{op} or C{target} contains a newline (the
        separator), C{op} or C{origin} contains C{@}, or C{op} is empty.
    """
    if not op or "\n" in op or "\n" in target or "@" in op or "@" in origin or "\n" in origin:
        raise ValueError(f"a control message's operation and target are one line each: {op!r} {target!r}")
    head = f"{op}@{origin}" if origin else op
    return b"%s\n%s\n%s" % (head.encode(), target.encode(), payload)


def decode_control(raw: bytes) -> Control:
    """
    Read a control message.

    @raise MalformedMessage: saying what is missing.
    """
    kind = "control message"
    fields = raw.split(b"\n", 2)
    if len(fields) != 3 or not fields[0]:
        raise MalformedMessage(f"{kind}: expected an operation, a target and a payload, one per line, "
                               f"got {raw[:60]!r}")
    head, target, payload = fields
    op, _, origin = _text(head, "operation", kind).partition("@")
    return Control(op, _text(target, "target", kind), payload, origin)


# Redis Stream entries --------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StreamEntry:
    """
    One message of a stream's history in Redis.

    @ivar created_ms: when it was published (milliseconds since the Unix
        epoch, by the publishing node's clock).
    """

    pos: int
    payload: bytes
    key: Hashable | None
    created_ms: int


def decode_stream_entry(entry_id: bytes, fields: Sequence[bytes]) -> StreamEntry:
    """
    Read an C{XRANGE} entry: its id C{<pos>-0} and its flat list of fields
    C{p} (payload), C{k} (key JSON) and C{t} (creation, ms).

    @raise MalformedMessage: saying what is wrong.
    """
    kind = "stream entry"
    pos, dash, _ = entry_id.partition(b"-")
    if not dash:
        raise MalformedMessage(f"{kind}: expected an id <position>-0, got {entry_id[:40]!r}")
    if len(fields) % 2:
        raise MalformedMessage(f"{kind}: expected field/value pairs, got {len(fields)} items")
    values = dict(zip(fields[::2], fields[1::2]))
    payload = values.get(b"p")
    if payload is None:
        raise MalformedMessage(f"{kind} {entry_id!r}: no payload field 'p'")
    created = values.get(b"t", b"0")
    return StreamEntry(_natural(pos, "position", kind), payload, decode_key(values.get(b"k", _NULL)),
                       _natural(created, "creation time", kind))
