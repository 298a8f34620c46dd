"""
The bounded outgoing queue and its overflow policies.
"""

import pytest

from appserver._core.envelope import Outgoing
from appserver._core.outbound import CONFLATE, DISCONNECT, DROP_OLDEST, OutboundQueue, Overflow


def message(text, key=None):
    return Outgoing(text.encode(), key=key)


def texts(queue):
    return [entry.payload.decode() for _, entry in queue.pending()]


def test_messages_wait_in_order_with_growing_sequence_numbers():
    queue = OutboundQueue(10, 1000)
    for text in "abc":
        queue.push(message(text))
    assert [seq for seq, _ in queue.pending()] == [1, 2, 3]
    assert texts(queue) == ["a", "b", "c"]
    assert queue.last_seq == 3 and len(queue) == 3 and queue.byte_size == 3


def test_disconnect_policy_raises_overflow_when_the_message_bound_is_reached():
    queue = OutboundQueue(2, 1000)
    queue.push(message("a"))
    queue.push(message("b"))
    with pytest.raises(Overflow):
        queue.push(message("c"), DISCONNECT)
    assert texts(queue) == ["a", "b"]


def test_disconnect_policy_raises_overflow_when_the_byte_bound_would_be_passed():
    queue = OutboundQueue(100, 10)
    queue.push(message("12345678"))
    with pytest.raises(Overflow):
        queue.push(message("123"), DISCONNECT)


def test_a_single_message_larger_than_the_byte_bound_still_queues_when_empty():
    queue = OutboundQueue(100, 4)
    queue.push(message("123456"))
    assert texts(queue) == ["123456"]


def test_drop_oldest_keeps_the_newest_messages_and_counts_the_dropped():
    queue = OutboundQueue(3, 1000)
    for text in "abcde":
        queue.push(message(text), DROP_OLDEST)
    assert texts(queue) == ["c", "d", "e"]
    assert queue.take_dropped() == 2
    assert queue.take_dropped() == 0


def test_drop_oldest_respects_the_byte_bound():
    queue = OutboundQueue(100, 6)
    for text in ("aaa", "bbb", "ccc"):
        queue.push(message(text), DROP_OLDEST)
    assert texts(queue) == ["bbb", "ccc"] and queue.byte_size == 6


def test_conflate_keeps_only_the_newest_message_per_key_at_the_end():
    queue = OutboundQueue(10, 1000)
    queue.push(message("price=1", key="EUR"), CONFLATE)
    queue.push(message("other", key="USD"), CONFLATE)
    queue.push(message("price=2", key="EUR"), CONFLATE)
    assert texts(queue) == ["other", "price=2"]
    assert [seq for seq, _ in queue.pending()] == [2, 3]
    assert queue.conflated == 1 and queue.byte_size == len("other") + len("price=2")


def test_conflate_without_a_key_queues_every_message():
    queue = OutboundQueue(10, 1000)
    queue.push(message("a"), CONFLATE)
    queue.push(message("a"), CONFLATE)
    assert len(queue) == 2


def test_conflate_drops_the_oldest_when_full_of_distinct_keys():
    queue = OutboundQueue(2, 1000)
    for key in ("a", "b", "c"):
        queue.push(message(key, key=key), CONFLATE)
    assert texts(queue) == ["b", "c"] and queue.dropped == 1


def test_acknowledge_forgets_a_prefix_of_sequence_numbers():
    queue = OutboundQueue(10, 1000)
    for text in "abcd":
        queue.push(message(text))
    queue.acknowledge(2)
    assert texts(queue) == ["c", "d"] and queue.byte_size == 2
    queue.acknowledge(2)
    assert texts(queue) == ["c", "d"]
    queue.acknowledge(99)
    assert not queue and queue.byte_size == 0 and queue.last_seq == 4


def test_pop_first_and_pop_all_empty_the_queue_in_order():
    queue = OutboundQueue(10, 1000)
    for text in "abc":
        queue.push(message(text))
    assert queue.pop_first().payload == b"a"
    assert [m.payload for m in queue.pop_all()] == [b"b", b"c"]
    assert not queue and queue.byte_size == 0


def test_clear_keeps_the_sequence_counter():
    queue = OutboundQueue(10, 1000)
    queue.push(message("a"))
    queue.clear()
    queue.push(message("b"))
    assert queue.pending()[0][0] == 2
