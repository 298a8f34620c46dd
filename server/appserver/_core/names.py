"""
The names clients choose (channels, rooms, display names in rooms): checked
where they enter, so every transport refuses the same names the same way.
"""

from __future__ import annotations

import re
from typing import Any

from appserver._core.envelope import ProtocolError

__all__ = ["validate_channel_name", "validate_room_name", "validate_username", "validate_idempotency_key",
           "MAX_USERNAME_LENGTH", "MAX_IDEMPOTENCY_KEY_LENGTH"]

_NAME = re.compile(r"[A-Za-z0-9_\-.:/@#]{1,128}\Z")
MAX_USERNAME_LENGTH = 64
#: An idempotency key of a publish (docs/channels.md): 1 to this many characters.
MAX_IDEMPOTENCY_KEY_LENGTH = 128


def _validate_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProtocolError("bad_data", f"a {kind} name is 1 to 128 characters among "
                                        "letters, digits and _-.:/@#")
    return name


def validate_channel_name(channel: Any) -> str:
    """
    @raise ProtocolError: C{bad_data}, saying which names are allowed.
    """
    return _validate_name("channel", channel)


def validate_room_name(room: Any) -> str:
    """
    @raise ProtocolError: C{bad_data}, saying which names are allowed.
    """
    return _validate_name("room", room)


def validate_username(username: Any) -> str:
    """
    @raise ProtocolError: C{bad_data} for an empty, too long or control-character name.
    """
    if (not isinstance(username, str) or not username.strip()
            or len(username) > MAX_USERNAME_LENGTH or not username.isprintable()):
        raise ProtocolError("bad_data", f"a username is 1 to {MAX_USERNAME_LENGTH} printable characters")
    return username


def validate_idempotency_key(key: Any) -> str | None:
    """
    The idempotency key of a publish, as its caller sent it: C{None} (no
    key), or a string of 1 to L{MAX_IDEMPOTENCY_KEY_LENGTH} characters.

    @raise ProtocolError: C{bad_data} for anything else.
    """
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ProtocolError("bad_data", f"an idempotency key is a string of 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} "
                                        "characters")
    return key
