"""
The outbox of a node that lost Redis (L{appserver._redis.outbox}): bounded
in messages and bytes, oldest first, and it remembers the streams it could
not keep (docs/scaling.md, "Redis lost, and back").
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from appserver._redis.outbox import ENTRY_OVERHEAD, SEEN_ID_COST, Outbox, Pending


def entry(stream: str = "news", payload: bytes = b"{}", seen: frozenset[str] | None = frozenset(),
          waiting: Deferred | None = None) -> Pending:
    return Pending(stream, payload, None, "k", 0.0, seen=seen, waiting=waiting)


def test_entries_come_out_oldest_first_and_free_their_bytes() -> None:
    outbox = Outbox(10, 10_000)
    first, second = entry(payload=b'{"a":1}'), entry(payload=b'{"a":2}')
    assert outbox.offer(first) and outbox.offer(second)
    assert outbox.first() is first
    assert outbox.pop_first() is first and outbox.pop_first() is second
    assert not outbox and outbox.used == 0


def test_past_its_message_bound_it_keeps_nothing_more_and_names_the_stream() -> None:
    outbox = Outbox(2, 10_000)
    assert outbox.offer(entry()) and outbox.offer(entry())
    assert not outbox.offer(entry(stream="sport"))
    assert len(outbox) == 2
    assert outbox.clear_overflow() == {"sport"}
    assert outbox.overflowed == set()


def test_a_snapshot_of_clients_is_paid_for_once_while_it_is_shared() -> None:
    seen = frozenset({"c1", "c2"})
    outbox = Outbox(10, 10_000)
    outbox.offer(entry(seen=seen))
    outbox.offer(entry(seen=seen))
    assert outbox.used == 2 * (ENTRY_OVERHEAD + 2) + 2 * SEEN_ID_COST


def test_past_its_byte_bound_it_refuses_but_a_waiting_publisher_always_fits() -> None:
    outbox = Outbox(10, ENTRY_OVERHEAD + 10)
    assert outbox.offer(entry(payload=b"x" * 10))
    assert not outbox.offer(entry())
    assert outbox.offer(entry(seen=None, waiting=Deferred()))
    assert len(outbox) == 2
