"""
The stream log: positions, per-stream history, what a reconnecting client
missed, retention, and the snapshot kept across a graceful restart. Driven
with a fake clock and plain envelopes: no tracker, no clients.
"""

import json

import pytest

from appserver._core.envelope import Outgoing
from appserver._core.history import MESSAGE_OVERHEAD, STREAM_OVERHEAD, retained_size
from appserver._core.streamlog import GLOBAL_STREAM, StreamLog, is_position


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def log(clock):
    return StreamLog(history_size=5, history_age=60, clock=clock, epoch="e1")


def kept(log, stream):
    return [json.loads(m.payload)["data"] for m in log.history(stream).after(0)]


def elsewhere(pos, data, clock):
    return Outgoing.of({"type": "message", "data": data}, pos, created=clock())


# Positioning ----------------------------------------------------------------------


def test_a_new_log_takes_a_random_epoch_and_starts_at_zero():
    first, second = StreamLog(), StreamLog()
    assert first.epoch != second.epoch and first.position == second.position == 0


def test_stamp_positions_serializes_once_and_keeps(log):
    first = log.stamp({"type": "chat", "data": "a"}, GLOBAL_STREAM)
    second = log.stamp({"type": "message", "channel": "news", "data": "b"}, "news", key="k")
    assert (first.pos, second.pos, log.position) == (1, 2, 2)
    assert first.payload == b'{"type":"chat","data":"a","pos":1}'
    assert second.key == "k" and second.created == 1000.0
    assert kept(log, GLOBAL_STREAM) == ["a"] and kept(log, "news") == ["b"]


def test_receive_keeps_a_message_positioned_elsewhere_and_moves_on(log, clock):
    log.receive("news", elsewhere(7, "x", clock))
    assert log.position == 7 and kept(log, "news") == ["x"]
    log.receive("news", elsewhere(5, "late", clock))
    assert log.position == 7


def test_receive_does_not_keep_a_message_without_position(log):
    log.receive(GLOBAL_STREAM, Outgoing(b'{"type":"chat","data":"x"}'))
    assert log.streams() == [] and log.position == 0


def test_the_epoch_and_position_are_read_only(log):
    with pytest.raises(AttributeError):
        log.position = 3
    with pytest.raises(AttributeError):
        log.epoch = "other"


# Recovery ---------------------------------------------------------------------------


def test_missed_since_gives_global_and_channel_messages_in_position_order(log):
    log.stamp({"type": "chat", "data": "b1"}, GLOBAL_STREAM)
    log.stamp({"type": "message", "data": "n1"}, "news")
    log.stamp({"type": "chat", "data": "b2"}, GLOBAL_STREAM)
    log.stamp({"type": "message", "data": "o1"}, "other")
    complete, missed = log.missed_since(0, ["news"], connected_at=3)
    assert complete and [m.pos for m in missed] == [1, 2, 3]


def test_missed_since_leaves_out_what_arrived_live(log):
    for n in range(1, 5):
        log.stamp({"type": "chat", "data": n}, GLOBAL_STREAM)
        log.stamp({"type": "message", "data": n}, "news")
    complete, missed = log.missed_since(2, ["news"], connected_at=4, until=6)
    assert complete and [m.pos for m in missed] == [3, 4, 6]


def test_missed_since_is_incomplete_past_the_history_size(log):
    for n in range(6):
        log.stamp({"type": "chat", "data": n}, GLOBAL_STREAM)
    complete, missed = log.missed_since(0, [], connected_at=None)
    assert not complete and [m.pos for m in missed] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("epoch, since, valid", [
    ("e1", 0, True), ("e1", 2, True), ("e1", 3, False), ("e1", -1, False), ("e2", 0, False),
    ("e1", True, False), ("e1", "1", False), ("e1", 1.0, False), ("e1", None, False),
])
def test_valid_since_names_a_position_of_this_epoch_handed_out_here(log, epoch, since, valid):
    log.stamp({"type": "chat"}, GLOBAL_STREAM)
    log.stamp({"type": "chat"}, GLOBAL_STREAM)
    assert log.valid_since(epoch, since) is valid


def test_is_position_accepts_non_negative_integers_only():
    assert is_position(0) and is_position(10**12)
    assert not any(is_position(value) for value in (-1, True, False, 1.0, "1", None))


def test_resynchronise_forgets_every_history_and_vouches_only_after_the_new_position(log, clock):
    log.receive("news", elsewhere(3, "x", clock))
    log.resynchronise("e2", 10)
    assert (log.epoch, log.position, log.streams()) == ("e2", 10, [])
    assert not log.missed_since(5, ["news"], 10)[0]
    assert log.missed_since(10, ["news"], 10)[0]


def test_a_complete_catch_up_keeps_the_histories(log, clock):
    log.receive("news", elsewhere(3, "x", clock))
    log.advance_to(10, complete=True)
    assert log.position == 10 and log.streams() == ["news"]
    assert log.history("news").covers(2) and [m.pos for m in log.missed_since(2, ["news"], None)[1]] == [3]
    # A stream with no history here (the global one, too) was not read: it
    # vouches from 10 on.
    assert not log.missed_since(5, ["quiet"], None)[0] and log.missed_since(10, ["quiet"], None)[0]


def test_an_incomplete_catch_up_vouches_for_nothing_before_it(log, clock):
    log.receive("news", elsewhere(3, "x", clock))
    log.advance_to(10, complete=False)
    assert (log.epoch, log.position, log.streams()) == ("e1", 10, [])
    assert not log.missed_since(2, ["news"], None)[0]


def test_advance_to_never_moves_the_position_back(log, clock):
    log.receive("news", elsewhere(12, "x", clock))
    log.advance_to(10, complete=True)
    assert log.position == 12


# Retention ------------------------------------------------------------------------


def test_sweep_drops_expired_histories_of_inactive_streams_only(log, clock):
    for stream in (GLOBAL_STREAM, "gone", "kept"):
        log.stamp({"type": "chat"}, stream)
    clock.now += 61
    log.sweep({"kept"})
    assert sorted(log.streams()) == [GLOBAL_STREAM, "kept"]


def test_a_swept_stream_cannot_vouch_for_positions_before_it(log, clock):
    log.stamp({"type": "message"}, "gone")
    clock.now += 61
    log.sweep(())
    assert not log.missed_since(0, ["gone"], None)[0]
    assert log.missed_since(1, ["gone"], None)[0]


def test_sweep_keeps_a_stream_with_unexpired_messages(log):
    log.stamp({"type": "message"}, "recent")
    log.sweep(())
    assert log.streams() == ["recent"]


# Snapshot and restore -----------------------------------------------------------------


def filled(clock):
    log = StreamLog(history_size=5, history_age=60, clock=clock, epoch="e1")
    log.stamp({"type": "chat", "data": "hello"}, GLOBAL_STREAM)
    log.stamp({"type": "message", "channel": "news", "data": 1}, "news", key="k")
    log.stamp({"type": "message", "channel": "news", "data": 2}, "news", key=7)
    log.stamp({"type": "message", "channel": "gone", "data": 3}, "gone")
    return log


def test_a_snapshot_is_json_with_the_state_file_keys(clock):
    state = filled(clock).snapshot()
    assert list(state) == ["epoch", "position", "forgotten_after", "histories"]
    assert list(state["histories"]["news"]) == ["complete_after", "messages"]
    assert state["histories"]["news"]["messages"][0] == {
        "pos": 2, "created": 1000.0, "key": "k",
        "envelope": {"type": "message", "channel": "news", "data": 1, "pos": 2}}
    assert json.loads(json.dumps(state)) == state


def test_restore_round_trips_a_snapshot(clock):
    saved = filled(clock)
    clock.now += 61
    saved.sweep(())  # forgets "gone": forgotten_after moves on
    clock.now -= 61
    saved.stamp({"type": "chat", "data": "later"}, GLOBAL_STREAM)
    restored = StreamLog(history_size=5, history_age=60, clock=clock)
    restored.restore(json.loads(json.dumps(saved.snapshot())))
    assert restored.snapshot() == saved.snapshot()
    assert (restored.epoch, restored.position) == ("e1", 5)
    for stream in saved.streams():
        assert [(m.pos, m.payload, m.key) for m in restored.history(stream).after(0)] == \
            [(m.pos, m.payload, m.key) for m in saved.history(stream).after(0)]
    assert restored.missed_since(0, ["gone"], None)[0] is False
    assert restored.stamp({"type": "chat"}, GLOBAL_STREAM).pos == 6


def test_restore_applies_this_logs_own_limits(clock):
    smaller = StreamLog(history_size=1, history_age=60, clock=clock)
    smaller.restore(filled(clock).snapshot())
    assert [m.pos for m in smaller.history("news").after(0)] == [3]
    assert not smaller.history("news").covers(1) and smaller.history("news").covers(2)


@pytest.mark.parametrize("state", [
    [], {}, {"epoch": "", "position": 1, "histories": {}}, {"epoch": "e9", "position": True, "histories": {}},
    {"epoch": "e9", "position": 1, "histories": {"news": {"complete_after": 0, "messages": [
        {"pos": 2, "created": 1000.0, "key": None, "envelope": {"type": "x"}}]}}},
])
def test_a_bad_snapshot_is_refused_and_changes_nothing(clock, state):
    log = filled(clock)
    before = log.snapshot()
    with pytest.raises((ValueError, KeyError, TypeError)):
        log.restore(state)
    assert log.snapshot() == before


# The total budget (--history-bytes) ----------------------------------------------------


def accounted(log):
    """
    What the log's budget should say, recomputed from what it holds.
    """
    return sum(STREAM_OVERHEAD + len(stream) + sum(retained_size(m) for m in log.history(stream).after(-1))
               for stream in log.streams())


def sized(n):
    """
    An envelope whose message (with its position) costs about n bytes in a history.
    """
    return {"type": "message", "data": "x" * (n - MESSAGE_OVERHEAD - 40)}


def budgeted(clock, limit, size=10, age=60):
    return StreamLog(history_size=size, history_age=age, clock=clock, epoch="e1", history_bytes=limit)


def test_the_budget_counts_every_kept_message_and_stream_exactly(clock):
    log = budgeted(clock, 0)
    for n in range(30):
        log.stamp(sized(300 + n), f"s{n % 4}")
    log.receive("elsewhere", elsewhere(99, "x", clock))
    assert log.budget.used == accounted(log) > 0
    clock.now += 61
    log.sweep(())
    assert log.streams() == [] and log.budget.used == 0


def test_past_the_budget_the_oldest_messages_of_all_streams_go_first(clock):
    log = budgeted(clock, 4 * (STREAM_OVERHEAD + 2) + 6 * 1000)
    for n in range(12):
        log.stamp(sized(1000), f"s{n % 3}")          # positions 1..12 over s0, s1, s2
    kept = sorted(m.pos for stream in log.streams() for m in log.history(stream).after(-1))
    assert log.budget.used <= log.budget.limit and log.budget.used == accounted(log)
    assert kept == list(range(12 - len(kept) + 1, 13)) and len(kept) >= 5
    assert log.budget.evicted == 12 - len(kept)


def test_an_evicted_message_is_not_vouched_for_and_what_is_kept_still_is(clock):
    log = budgeted(clock, 2 * (STREAM_OVERHEAD + 4) + 3 * 1000)
    for n in range(1, 7):
        log.stamp(sized(1000), "news" if n % 2 else "other")
    oldest_kept = min(m.pos for s in log.streams() for m in log.history(s).after(-1))
    assert oldest_kept > 1
    assert log.missed_since(0, ["news", "other"], None)[0] is False
    complete, missed = log.missed_since(oldest_kept - 1, ["news", "other"], None)
    assert complete and [m.pos for m in missed] == list(range(oldest_kept, 7))


def test_a_stream_emptied_by_the_budget_is_forgotten_and_vouches_only_after_its_last(clock):
    log = budgeted(clock, STREAM_OVERHEAD + 2 * 1000 + 2 * (STREAM_OVERHEAD + 7))
    log.stamp(sized(1000), "fresh.1")
    log.stamp(sized(1000), "fresh.2")
    log.stamp(sized(1000), "fresh.3")                 # fresh.1 loses its message, then its history
    assert log.history("fresh.1") is None and log.budget.used == accounted(log)
    assert log.missed_since(0, ["fresh.1"], None)[0] is False
    assert log.missed_since(1, ["fresh.1"], None)[0] is True
    # Published again, it starts over from there, exactly.
    again = log.stamp(sized(10), "fresh.1")
    assert log.missed_since(1, ["fresh.1"], None) == (True, [again])


def test_the_global_stream_is_never_forgotten_by_the_budget(clock):
    log = budgeted(clock, STREAM_OVERHEAD + 1500)
    log.stamp(sized(1000), GLOBAL_STREAM)
    log.stamp(sized(1000), GLOBAL_STREAM)             # over: the first goes
    assert [m.pos for m in log.history(GLOBAL_STREAM).after(-1)] == [2]
    log.stamp(sized(5000), GLOBAL_STREAM)             # alone over the budget: nothing fits
    assert log.streams() == [GLOBAL_STREAM] and len(log.history(GLOBAL_STREAM)) == 0
    assert log.missed_since(2, [], None)[0] is False and log.missed_since(3, [], None)[0] is True
    log.stamp(sized(1000), GLOBAL_STREAM)
    assert [m.pos for m in log.history(GLOBAL_STREAM).after(-1)] == [4]


def test_per_stream_limits_still_apply_under_the_budget(clock):
    log = budgeted(clock, 10 * 1024 * 1024, size=3)
    for n in range(5):
        log.stamp(sized(500), "news")
    assert [m.pos for m in log.history("news").after(-1)] == [3, 4, 5]
    assert log.budget.used == accounted(log) and log.budget.evicted == 0
    clock.now += 61
    log.stamp(sized(500), "news")
    assert [m.pos for m in log.history("news").after(-1)] == [6] and log.budget.used == accounted(log)


def test_messages_dropped_by_their_own_stream_do_not_confuse_the_eviction_order(clock):
    cost = retained_size(StreamLog(clock=clock).stamp(sized(1000), "s1"))
    log = budgeted(clock, 3 * (STREAM_OVERHEAD + 2) + 4 * cost, size=2)
    for stream in ("s2", "s1", "s2", "s1", "s2"):     # positions 1 to 5; s2 drops 1 itself
        log.stamp(sized(1000), stream)
    assert [m.pos for m in log.history("s2").after(-1)] == [3, 5]
    log.stamp(sized(1000), "s3")                      # 6: one too many; the oldest kept is 2, not 3
    assert [[m.pos for m in log.history(s).after(-1)] for s in ("s1", "s2", "s3")] == [[4], [3, 5], [6]]
    assert log.budget.used <= log.budget.limit and log.budget.used == accounted(log)
    assert log.budget.evicted == 1


def test_restore_keeps_the_newest_that_fit_a_smaller_budget(clock):
    saved = StreamLog(history_size=10, history_age=60, clock=clock, epoch="e1")
    for n in range(8):
        saved.stamp(sized(1000), f"s{n % 2}")
    smaller = budgeted(clock, 3 * (STREAM_OVERHEAD + 2) + 3 * 1000)
    smaller.restore(json.loads(json.dumps(saved.snapshot())))
    kept = sorted(m.pos for s in smaller.streams() for m in smaller.history(s).after(-1))
    assert kept and kept == list(range(9 - len(kept), 9))
    assert smaller.budget.used <= smaller.budget.limit and smaller.budget.used == accounted(smaller)
    assert smaller.missed_since(kept[0] - 1, ["s0", "s1"], None)[0] is True
    assert smaller.missed_since(kept[0] - 2, ["s0", "s1"], None)[0] is False


def test_resynchronise_empties_the_budget(clock):
    log = budgeted(clock, 1024 * 1024)
    log.stamp(sized(1000), "news")
    log.resynchronise("e2", 10)
    assert log.budget.used == 0 == accounted(log)
    log.stamp(sized(1000), "news")
    assert log.budget.used == accounted(log)


def test_sweeping_many_short_lived_streams_keeps_the_eviction_order_small(clock):
    log = budgeted(clock, 64 * 1024 * 1024)
    for n in range(500):
        log.stamp(sized(300), f"short.{n}")
    clock.now += 61
    log.sweep(())
    assert log.streams() == [GLOBAL_STREAM] or log.streams() == []
    assert len(log._eviction_order) <= 1


def test_idempotency_keys_are_forgotten_after_the_history_age_and_past_their_bound(monkeypatch):
    from appserver._core import streamlog
    now = [100.0]
    log = StreamLog(history_age=10.0, clock=lambda: now[0])
    log.remember("news", "a", 1)
    assert log.idempotent("news", "a") == 1 and log.idempotent("other", "a") is None
    now[0] += 10.0
    assert log.idempotent("news", "a") is None
    monkeypatch.setattr(streamlog, "MAX_IDEMPOTENCY_KEYS", 2)
    for pos, key in enumerate("bcd", 2):
        log.remember("news", key, pos)
    assert [log.idempotent("news", key) for key in "bcd"] == [None, 3, 4]
