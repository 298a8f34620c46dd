"""
Envelopes: the one message format of every transport.

Incoming envelopes are validated here, where they enter, so handlers only ever
see well-formed ones; outgoing messages are serialized once into an
L{Outgoing} that every recipient shares, whatever its transport.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Hashable

import orjson

__all__ = [
    "Envelope",
    "ProtocolError",
    "Outgoing",
    "parse_envelope",
    "validate_envelope",
    "parse_json",
    "MAX_JSON_DEPTH",
    "encode",
    "error_payload",
    "MAX_TYPE_LENGTH",
    "MAX_ID_LENGTH",
]

MAX_TYPE_LENGTH = 64
MAX_ID_LENGTH = 64

#: How deep incoming JSON may nest (the envelope's own object counts as one
#: level). orjson reads 1024 levels but writes only 255: a value accepted
#: deeper than the server can write back fails later, in a handler or a
#: reply. 32 is deeper than any real document, and leaves the server's own
#: wrappers (envelope, reply, poll answer) far below what it can write.
MAX_JSON_DEPTH = 32

_CONTAINERS = (dict, list)


class ProtocolError(Exception):
    """
    A client sent something the server cannot act on.

    The C{code} is one of the documented error codes (docs/protocol.md) and
    the message tells the client what to send instead. The connection stays
    open: a protocol error answers one request, it does not end a session.
    """

    def __init__(self, code: str, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Envelope:
    """
    A validated client message: C{type} names the handler, C{data} is any
    JSON value, C{id} (when not C{None}) asks for exactly one reply.
    """

    type: str
    data: Any = None
    id: int | str | None = None


def encode(value: Any) -> bytes:
    """
    Serialize to compact UTF-8 JSON.
    """
    return orjson.dumps(value)


def validate_envelope(value: Any) -> Envelope:
    """
    Check an already-decoded JSON value is an envelope.

    @raise ProtocolError: with code C{bad_envelope}.
    """
    if not isinstance(value, dict):
        raise ProtocolError("bad_envelope", "a message must be a JSON object like "
                                            '{"type": "chat", "data": "hello"}')
    request_id = value.get("id")
    if request_id is not None:
        if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
            raise ProtocolError("bad_envelope", '"id" must be an integer or a string')
        if isinstance(request_id, str) and len(request_id) > MAX_ID_LENGTH:
            raise ProtocolError("bad_envelope", f'"id" must be at most {MAX_ID_LENGTH} characters')
    message_type = value.get("type")
    if not isinstance(message_type, str) or not 0 < len(message_type) <= MAX_TYPE_LENGTH:
        raise ProtocolError("bad_envelope",
                            f'"type" must be a string of 1 to {MAX_TYPE_LENGTH} characters',
                            request_id)
    return Envelope(message_type, value.get("data"), request_id)


def _too_deep(value: Any, limit: int) -> bool:
    """
    Whether C{value} nests more than C{limit} containers deep, one level at
    a time (no recursion, so any depth is safe to measure).
    """
    level = [value] if type(value) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for node in level:
            below.extend([child for child in (node.values() if type(node) is dict else node)
                          if type(child) in _CONTAINERS])
        level = below
    return False


def parse_json(raw: bytes | str, what: str = "message") -> Any:
    """
    Decode JSON text that came from a client: valid, and nested at most
    L{MAX_JSON_DEPTH} levels deep.

    @param what: how the error message names the text (C{message},
        C{request body}).
    @raise ProtocolError: with code C{bad_json}; for a too deep object
        carrying a usable C{id}, with that id, so the request is answered.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError("bad_json", f"the {what} is not valid JSON") from None
    # Nesting needs an opening bracket per level: most texts have too few
    # to be worth walking.
    if isinstance(raw, str):
        brackets = raw.count("[") + raw.count("{")
    else:
        brackets = raw.count(b"[") + raw.count(b"{")
    if brackets > MAX_JSON_DEPTH and _too_deep(value, MAX_JSON_DEPTH):
        request_id = value.get("id") if isinstance(value, dict) else None
        if isinstance(request_id, bool) or not isinstance(request_id, (int, str)) or (
                isinstance(request_id, str) and len(request_id) > MAX_ID_LENGTH):
            request_id = None
        raise ProtocolError("bad_json", f"the {what} nests deeper than {MAX_JSON_DEPTH} levels; "
                                        "send flatter JSON", request_id)
    return value


def parse_envelope(raw: bytes | str) -> Envelope:
    """
    Decode and validate one envelope from JSON text.

    @raise ProtocolError: with code C{bad_json} or C{bad_envelope}.
    """
    return validate_envelope(parse_json(raw))


def error_payload(code: str, message: str, request_id: Any = None) -> dict[str, Any]:
    """
    The body of an C{error} envelope.
    """
    return {"type": "error", "id": request_id, "data": {"code": code, "message": message}}


#: The first two bytes of an unmasked, unfragmented WebSocket text frame
#: whose payload is shorter than 126 bytes, by payload length (RFC 6455
#: section 5.2); longer payloads add a 16- or 64-bit length.
_SHORT_HEADERS = tuple(bytes((0x81, length)) for length in range(126))
_MEDIUM_HEADER = struct.Struct("!BBH")
_LONG_HEADER = struct.Struct("!BBQ")


def _text_frame(payload: bytes) -> bytes:
    """
    The complete unmasked WebSocket text frame (FIN set, no extension bits)
    carrying C{payload}, as one exact-size buffer.
    """
    length = len(payload)
    if length < 126:
        return _SHORT_HEADERS[length] + payload
    if length < 0x10000:
        return _MEDIUM_HEADER.pack(0x81, 126, length) + payload
    return _LONG_HEADER.pack(0x81, 127, length) + payload


def _header_length(frame: bytes) -> int:
    marker = frame[1] & 0x7F
    return 2 if marker < 126 else 4 if marker == 126 else 10


class Outgoing:
    """
    One server message, serialized once and shared by all its recipients.

    C{pos} is its position in the server's stream (or C{None} for a message
    addressed to one client that needs none) and C{key} the conflation key:
    a queue that conflates keeps only the newest message per key.

    The message is kept as one buffer of exactly its size: C{frame}, the
    complete WebSocket text frame, which every WebSocket recipient is
    written as is, and whose tail is the JSON C{payload}. Histories keep
    messages for minutes, so a message must cost what it carries: the JSON
    encoder's own buffer has spare capacity (up to four times the text for
    4 KiB of JSON), and a payload kept next to its frame would cost it
    twice (docs/reliability.md gives the per-message overhead).
    """

    __slots__ = ("pos", "frame", "key", "created")

    def __init__(self, payload: bytes, pos: int | None = None, key: Hashable | None = None,
                 created: float = 0.0) -> None:
        length = len(payload)
        #: The WebSocket text frame carrying the JSON payload (L{_text_frame},
        #: its common case inline: every message passes here).
        self.frame = (_SHORT_HEADERS[length] + payload) if length < 126 else _text_frame(payload)
        self.pos = pos
        self.key = key
        self.created = created

    @classmethod
    def of(cls, envelope: dict[str, Any], pos: int | None = None, key: Hashable | None = None,
           created: float = 0.0) -> "Outgoing":
        """
        Serialize an envelope dictionary, adding C{pos} to it when given.
        """
        if pos is not None:
            envelope = {**envelope, "pos": pos}
        return cls(orjson.dumps(envelope), pos, key, created)

    @property
    def payload(self) -> bytes:
        """
        The JSON text (a copy taken from the frame: for the long-poll
        answers, the state file and Redis, not for WebSocket writes).
        """
        frame = self.frame
        return frame[_header_length(frame):]

    def __len__(self) -> int:
        """
        The size of the JSON payload, in bytes (what queue bounds count).
        """
        frame = self.frame
        return len(frame) - _header_length(frame)

    def __repr__(self) -> str:
        return f"<Outgoing pos={self.pos} {self.payload[:60]!r}>"
