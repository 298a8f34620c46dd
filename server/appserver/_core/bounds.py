"""
The bounds of the shared state, as one value: per-client queues and
channels, per-stream history. Settings fill it in; the tracker, its clients
and the stream history read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrackerLimits"]


@dataclass(frozen=True)
class TrackerLimits:
    """
    The per-client bounds the tracker enforces.
    """

    max_queue_messages: int = 1000
    max_queue_bytes: int = 1024 * 1024
    max_channels_per_client: int = 100
    max_rooms_per_client: int = 20
    history_size: int = 1000
    history_age: float = 300.0
    #: What all streams' histories may retain together, in bytes (0: no limit).
    history_bytes: int = 64 * 1024 * 1024
    default_policy: str = "disconnect"
