"""
Stream history: what a reconnecting client can still be given.
"""

from appserver._core.envelope import Outgoing
from appserver._core.history import StreamHistory


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def stamped(pos, created):
    return Outgoing.of({"type": "chat", "data": pos}, pos=pos, created=created)


def test_messages_after_a_position_are_returned_in_order():
    clock = FakeClock()
    history = StreamHistory(10, 60, clock, complete_after=0)
    for pos in (1, 2, 3):
        history.append(stamped(pos, clock.now))
    assert [m.pos for m in history.after(1)] == [2, 3]
    assert [m.pos for m in history.after(0, until=2)] == [1, 2]


def test_a_full_history_evicts_the_oldest_and_no_longer_covers_it():
    clock = FakeClock()
    history = StreamHistory(2, 60, clock, complete_after=0)
    for pos in (1, 2, 3):
        history.append(stamped(pos, clock.now))
    assert len(history) == 2
    assert history.covers(1) and not history.covers(0)


def test_expired_messages_are_dropped_and_no_longer_covered():
    clock = FakeClock()
    history = StreamHistory(10, 60, clock, complete_after=0)
    history.append(stamped(1, clock.now))
    clock.now += 30
    history.append(stamped(2, clock.now))
    clock.now += 31
    assert not history.covers(0)
    assert history.covers(1)
    assert [m.pos for m in history.after(0)] == [2]


def test_a_history_of_size_zero_keeps_nothing_and_covers_only_the_present():
    clock = FakeClock()
    history = StreamHistory(0, 60, clock, complete_after=0)
    history.append(stamped(4, clock.now))
    assert len(history) == 0
    assert not history.covers(3) and history.covers(4)


def test_a_new_history_covers_from_its_starting_point():
    history = StreamHistory(10, 60, FakeClock(), complete_after=7)
    assert history.covers(7) and not history.covers(6)
