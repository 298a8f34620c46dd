"""
Redis's wire protocol (RESP2), the one copy of it in the backplane: commands
out (L{encode_command}) and replies in (L{ReplyParser}), for both the
blocking start-up check (L{appserver._redis.startup}) and the txredisapi
connections (L{appserver._redis.connection}).

The connections have their own codec because txredisapi's pure-Python one
spends a reactor turn per bulk string and builds a command in more time
than the rest of a publish takes. Nothing here touches a socket or the
reactor, so it is tested byte by byte without a server.

Tests: tests/test_redis_codec.py.
"""

from __future__ import annotations

from typing import Any, Callable, Final

__all__ = ["encode_command", "ReplyParser", "ReplyError", "MalformedReply", "INCOMPLETE"]

#: What L{ReplyParser.gets} returns while the next reply has not fully
#: arrived (C{None} is a reply: Redis's nil).
INCOMPLETE: Final = object()

#: Bytes of consumed input kept before the buffer is compacted: compacting
#: after every reply would copy the rest of a large read again and again.
_COMPACT_AFTER = 65536


class ReplyError(Exception):
    """
    An error reply (C{-ERR ...}, C{-WRONGPASS ...}): Redis refused one
    command, the connection is still good. A parser returns it as a value
    (an error may also be one element of an array); the caller raises it.

    @ivar text: the whole line, prefix included, as Redis wrote it (the
        prefix is what tells errors apart: C{NOSCRIPT}, C{WRONGPASS}...).
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def prefix(self) -> str:
        """
        The error's kind: the first word of its text (C{ERR}, C{NOSCRIPT}...).
        """
        return self.text.partition(" ")[0]


class MalformedReply(ValueError):
    """
    Bytes that are not RESP2: whatever sent them is not a Redis server (or
    the stream lost bytes). The connection cannot be read any further.
    """


def encode_command(*args: bytes | bytearray | memoryview | str | int | float) -> bytes:
    """
    One command as Redis reads it: an array of bulk strings. Text is sent
    as UTF-8 and numbers as their decimal text, which is how Redis reads
    arguments anyway, so callers pass what they have.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, (bytearray, memoryview)):
            data = bytes(arg)
        else:
            data = str(arg).encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _integer(line: bytes, what: str) -> int:
    # On every reply: int() alone is the fast path (it also takes " 12" or
    # "+12", which no Redis sends and which would do no harm).
    try:
        return int(line)
    except ValueError:
        raise MalformedReply(f"RESP {what} must be a decimal integer, got {line[:40]!r}") from None


class ReplyParser:
    """
    Replies from a byte stream that arrives in pieces of any size: L{feed}
    what was read, then call L{gets} until it answers L{INCOMPLETE}.

    Replies come back as Python values: a bulk string as C{bytes} (never
    decoded: payloads are JSON bytes, handed on as they are), a simple
    string as C{str}, an integer as C{int}, an array as a C{list}, nil (bulk
    or array) as C{None}, and an error reply as the value C{error(text)}
    returns (a L{ReplyError} unless the connection wants its client
    library's own error class).

    @ivar error: builds the value of an error reply from its text.
    """

    __slots__ = ("_buffer", "_at", "error")

    def __init__(self, error: Callable[[str], Any] = ReplyError) -> None:
        self._buffer = bytearray()
        self._at = 0
        self.error = error

    def feed(self, data: bytes) -> None:
        """
        Add bytes read from the connection.
        """
        if self._at > _COMPACT_AFTER and self._at * 2 > len(self._buffer):
            del self._buffer[:self._at]
            self._at = 0
        self._buffer += data

    def gets(self) -> Any:
        """
        The next complete reply, or L{INCOMPLETE} (nothing is consumed
        then: the reply is read again from its start once more has come).

        @raise MalformedReply: the input is not RESP2.
        """
        try:
            reply, at = self._parse(self._at)
        except IndexError:
            return INCOMPLETE
        self._at = at
        return reply

    def _parse(self, at: int) -> tuple[Any, int]:
        # IndexError means "not all here yet": gets() turns it into INCOMPLETE.
        buffer = self._buffer
        end = buffer.find(b"\r\n", at)
        if end < 0:
            if len(buffer) - at > _COMPACT_AFTER:
                raise MalformedReply(f"RESP line longer than {_COMPACT_AFTER} bytes without CRLF")
            raise IndexError
        kind, line = buffer[at], bytes(buffer[at + 1:end])
        at = end + 2
        if kind == 36:  # $
            length = _integer(line, "bulk length")
            if length == -1:
                return None, at
            if length < 0:
                raise MalformedReply(f"RESP bulk length must be -1 or more, got {length}")
            end = at + length
            if len(buffer) < end + 2:
                raise IndexError
            if buffer[end] != 13 or buffer[end + 1] != 10:
                raise MalformedReply(f"RESP bulk string of {length} bytes not followed by CRLF")
            return bytes(buffer[at:end]), end + 2
        if kind == 42:  # *
            count = _integer(line, "array length")
            if count == -1:
                return None, at
            if count < 0:
                raise MalformedReply(f"RESP array length must be -1 or more, got {count}")
            items = []
            for _ in range(count):
                item, at = self._parse(at)
                items.append(item)
            return items, at
        if kind == 58:  # :
            return _integer(line, "integer"), at
        if kind == 43:  # +
            return line.decode("utf-8", "replace"), at
        if kind == 45:  # -
            return self.error(line.decode("utf-8", "replace")), at
        raise MalformedReply(f"not a RESP2 reply (type byte {bytes([kind])!r}): "
                             f"{bytes(buffer[at - len(line) - 3:at])[:60]!r}")
