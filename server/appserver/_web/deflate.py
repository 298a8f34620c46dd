"""
permessage-deflate (RFC 7692) for WebSocket clients, with --permessage-deflate:
what the server accepts of a browser's offer, and broadcasts compressed once
per message instead of once per client.

Negotiation is safe by construction:
  - the server compresses every message on its own (no context takeover in
    its direction), so one compressed frame is valid for every client and
    the server keeps no compressor per connection;
  - it asks the client for no context takeover and a small window
    (L{CLIENT_WINDOW_BITS}), and accepts only offers that allow it, so the
    inflate state a client can make the server hold is bounded, and it is
    dropped after each message (see C{TrackedProtocol._onMessage});
  - a compressed message counts against --max-message-size after
    decompression (Autobahn stops inflating past the limit and closes with
    1009): a compression bomb costs at most that much memory.

Messages too small to gain are sent uncompressed (RFC 7692 lets the sender
choose per message), as is any message that compression would not shrink.
Measured in docs/performance.md.
"""

from __future__ import annotations

import zlib
from typing import Any, Sequence

from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept

__all__ = ["CLIENT_WINDOW_BITS", "MIN_COMPRESSED_SIZE", "accept_offer", "deflated_frame", "server_window_bits"]

#: The window the server asks clients to compress with (1 KiB): the inflate
#: state a client makes the server hold while a message arrives.
CLIENT_WINDOW_BITS = 10
#: The server's largest window, when the client sets no lower one. Every
#: message is compressed on its own, so a message needs no window larger
#: than itself: each is compressed with the smallest window that holds it
#: (at least zlib's 512 bytes), which compresses it as well and makes the
#: compressor a tenth as costly to set up (a 32 KiB window with zlib's
#: default memory level costs about 60 µs per message, mostly clearing
#: 256 KiB of state).
SERVER_WINDOW_BITS = 15
_MIN_WINDOW_BITS = 9
#: Payloads shorter than this go uncompressed: a deflate block's own
#: overhead leaves them little gain (a 95-byte chat line saves 9 bytes).
MIN_COMPRESSED_SIZE = 128
#: zlib's memory level: a smaller hash table than its default (8), the
#: same output for messages of this size, and a cheaper set-up.
_MEM_LEVEL = 6
_LEVEL = 6
#: The four bytes Z_SYNC_FLUSH ends with, which RFC 7692 strips.
_SYNC_TAIL = b"\x00\x00\xff\xff"


def accept_offer(max_message_size: int) -> Any:
    """
    The factory's C{perMessageCompressionAccept}: accept the first
    permessage-deflate offer that lets the server bound the client's
    window, else none (the connection goes on uncompressed).
    """
    def accept(offers: Sequence[Any]) -> PerMessageDeflateOfferAccept | None:
        for offer in offers:
            if isinstance(offer, PerMessageDeflateOffer) and offer.accept_max_window_bits:
                return PerMessageDeflateOfferAccept(
                    offer,
                    request_no_context_takeover=offer.accept_no_context_takeover,
                    request_max_window_bits=CLIENT_WINDOW_BITS,
                    no_context_takeover=True,
                    window_bits=server_window_bits(offer.request_max_window_bits),
                    max_message_size=max_message_size)
        return None
    return accept


def server_window_bits(requested: int) -> int:
    """
    The window the server compresses with for a client that asked for
    C{requested} bits at most (0: it did not ask).
    """
    return min(SERVER_WINDOW_BITS, requested) if requested else SERVER_WINDOW_BITS


def deflated_frame(frame: bytes, payload_offset: int, window_bits: int) -> bytes:
    """
    The compressed WebSocket text frame of a message (RSV1 set), or the
    plain C{frame} when compression would not shrink it.

    @param frame: the message's uncompressed text frame.
    @param payload_offset: where its payload starts (after the header).
    """
    size = len(frame) - payload_offset
    if size < MIN_COMPRESSED_SIZE:
        return frame
    bits = min(window_bits, max(_MIN_WINDOW_BITS, (size - 1).bit_length()))
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -bits, _MEM_LEVEL)
    body = compressor.compress(memoryview(frame)[payload_offset:]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if body.endswith(_SYNC_TAIL):
        body = body[:-4]
    length = len(body)
    if length + 2 >= size:
        return frame
    # FIN, RSV1 (compressed), text; the server's frames are not masked.
    if length < 126:
        header = bytes((0xC1, length))
    elif length < 1 << 16:
        header = bytes((0xC1, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0xC1, 127)) + length.to_bytes(8, "big")
    return header + body
