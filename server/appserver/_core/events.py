"""
What the state reports as it changes (for metrics and logs): one object of
hooks, passed in to the tracker and to every client, so neither knows who
listens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from appserver._core.client import Client
    from appserver._core.envelope import Outgoing

__all__ = ["TrackerEvents"]


class TrackerEvents:
    """
    Hooks called on every state change, for metrics and logs. The base class
    does nothing; the metrics module overrides what it counts.
    """

    def registered(self, client: Client) -> None:
        pass

    def unregistered(self, client: Client) -> None:
        pass

    def fanout(self, stream: str, recipients: int, message: Outgoing) -> None:
        pass

    def slow_consumer(self, client: Client, detail: str) -> None:
        pass

    def recovery(self, client: Client, recovered: bool) -> None:
        pass

    def handler_error(self, message_type: str) -> None:
        pass

    def backplane_latency(self, operation: str, seconds: float) -> None:
        pass

    def backplane_error(self, operation: str) -> None:
        pass

    def message_in(self, client: Client, message_type: str) -> None:
        pass

    def closed(self, client: Client, code: int | None) -> None:
        """
        The transport ended a registered client's connection with this close
        code (C{None}: dropped without one).
        """

    def sent(self, recipients: int, message: Outgoing) -> None:
        """
        A message outside any stream (reply, error, welcome, room presence)
        was handed to C{recipients} clients.
        """

    def delivered(self, client: Client, messages: Iterable[Outgoing]) -> None:
        """
        Queued messages left for a client (a long-poll answer).
        """

    def queue_discarded(self, client: Client, dropped: int, conflated: int) -> None:
        """
        A client's full queue dropped its oldest messages, or conflation
        replaced older messages with the same key.
        """
