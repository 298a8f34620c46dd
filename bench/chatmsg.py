"""The benchmark's chat text and the latency histogram, shared by the harness and the workers.

Why a marker inside the text: every server wraps the text differently
("Message from <peer> : TEXT", extra fields, different JSON spacing), so the
receivers do not parse JSON on the hot path; they find ``~B~<id>~<ns>~`` in the
raw frame.  Frames without the marker (welcome envelopes, replies) are ignored.
The timestamp is ``time.monotonic_ns()``, which on Linux is one system-wide
clock, so a receive time in another process can be subtracted from it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

MARKER = "~B~"
MARKER_BYTES = MARKER.encode()
SIGNIFICANT_BITS = 7  # histogram buckets are within 1/64 of the true value


def make_text(msg_id: int, sent_ns: int, size: int) -> str:
    """Return the chat TEXT for one broadcast, padded with 'x' up to ``size`` characters."""
    core = f"{MARKER}{msg_id}~{sent_ns}~"
    return core + "x" * max(0, size - len(core))


def make_envelope(msg_id: int, sent_ns: int, size: int) -> bytes:
    """Return the client-to-server JSON envelope carrying one benchmark text."""
    return json.dumps({"type": "chat", "data": make_text(msg_id, sent_ns, size)}).encode()


def parse_marker(payload: bytes) -> tuple[int, int] | None:
    """Find ``~B~id~ns~`` in a received frame; return (id, sent_ns) or None if absent."""
    i = payload.find(MARKER_BYTES)
    if i < 0:
        return None
    i += 3
    j = payload.find(b"~", i)
    k = payload.find(b"~", j + 1)
    if j < 0 or k < 0:
        return None
    return int(payload[i:j]), int(payload[j + 1 : k])


def parse_marker_text(text: str) -> tuple[int, int] | None:
    """Same as :func:`parse_marker` for an already decoded string (long-poll bodies)."""
    i = text.find(MARKER)
    if i < 0:
        return None
    i += 3
    j = text.find("~", i)
    k = text.find("~", j + 1)
    if j < 0 or k < 0:
        return None
    return int(text[i:j]), int(text[j + 1 : k])


def bucket_us(latency_us: int) -> int:
    """Round a latency down to SIGNIFICANT_BITS significant bits (an HDR-style bucket)."""
    shift = latency_us.bit_length() - SIGNIFICANT_BITS
    if shift > 0:
        return latency_us >> shift << shift
    return latency_us


def merge_histograms(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """Add bucket counts of several histograms (JSON turns keys into strings: accept both)."""
    out: dict[int, int] = {}
    for hist in hists:
        for key, count in hist.items():
            k = int(key)
            out[k] = out.get(k, 0) + int(count)
    return out


def percentile_us(hist: Mapping[int, int], fraction: float) -> float | None:
    """Return the latency (µs) below which ``fraction`` of the samples fall, or None if empty."""
    total = sum(hist.values())
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for key in sorted(hist):
        seen += hist[key]
        if seen >= rank:
            return float(key)
    return float(max(hist))
