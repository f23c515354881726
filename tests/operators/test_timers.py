"""operators/timers.py: the per-shard timer table (deadlines per contact and rule, one heap)."""

from __future__ import annotations

import pickle

import pytest

from operators.contacts import Columns
from operators.timers import NONE, TimerTable

T0 = 1_795_442_400_000


def _table(n_timers: int = 3, capacity: int = 4) -> TimerTable:
    return TimerTable(Columns(capacity), n_timers)


def test_arm_cancel_and_rearm():
    tt = _table()
    assert tt.pending() == 0
    assert tt.next_for(0) == NONE
    tt.arm(0, 1, T0 + 100, "e1")
    assert (tt.deadline(0, 1), tt.event(0, 1), tt.next_for(0), tt.pending()) == (T0 + 100, "e1", T0 + 100, 1)
    # Re-arming replaces both the deadline and the event that armed it.
    tt.arm(0, 1, T0 + 200, "e2")
    assert (tt.deadline(0, 1), tt.event(0, 1), tt.next_for(0), tt.pending()) == (T0 + 200, "e2", T0 + 200, 1)
    tt.cancel(0, 1)
    assert (tt.deadline(0, 1), tt.event(0, 1), tt.next_for(0), tt.pending()) == (NONE, None, NONE, 0)
    tt.cancel(0, 1)  # cancelling a timer that is not pending changes nothing
    assert tt.pending() == 0
    tt.arm(0, 1, T0 + 50, "e3")
    assert (tt.deadline(0, 1), tt.event(0, 1), tt.pending()) == (T0 + 50, "e3", 1)


def test_next_for_is_the_earliest_deadline_of_the_contact():
    tt = _table()
    tt.arm(0, 0, T0 + 300, "a")
    tt.arm(0, 2, T0 + 100, "b")
    tt.arm(1, 1, T0 + 50, "c")  # another contact does not count
    assert tt.next_for(0) == T0 + 100
    tt.cancel(0, 2)
    assert tt.next_for(0) == T0 + 300
    assert tt.next_for(1) == T0 + 50
    assert tt.pending() == 2


def test_due_for_contact_strictly_before_in_deadline_then_rule_order():
    tt = _table()
    tt.arm(0, 0, T0 + 300, "a")
    tt.arm(0, 1, T0 + 100, "b")
    tt.arm(0, 2, T0 + 100, "c")
    tt.arm(1, 0, T0 + 10, "other contact")
    assert tt.due_for_contact(0, T0 + 301) == [(T0 + 100, 1), (T0 + 100, 2), (T0 + 300, 0)]
    # Strictly before `after_ms`: a deadline equal to it is not due.
    assert tt.due_for_contact(0, T0 + 300) == [(T0 + 100, 1), (T0 + 100, 2)]
    assert tt.due_for_contact(0, T0 + 100) == []
    # Querying changes nothing.
    assert tt.pending() == 4


def test_pop_due_strict_and_inclusive():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(1, 0, T0 + 200, "b")
    tt.arm(2, 0, T0 + 300, "c")
    # Strict: deadline < limit.
    assert tt.pop_due(T0 + 100, inclusive=False) == []
    assert tt.pop_due(T0 + 200, inclusive=False) == [(T0 + 100, 0, 0)]
    # Inclusive: deadline <= limit.
    assert tt.pop_due(T0 + 200, inclusive=True) == [(T0 + 200, 1, 0)]
    # Popping does not clear: the caller fires and cancels each timer.
    assert tt.pending() == 3
    assert tt.deadline(0, 0) == T0 + 100
    # A popped timer is not returned again.
    assert tt.pop_due(T0 + 1000, inclusive=True) == [(T0 + 300, 2, 0)]
    assert tt.pop_due(T0 + 1000, inclusive=True) == []


def test_pop_due_orders_by_deadline_then_slot_then_rule():
    tt = _table()
    tt.arm(3, 1, T0 + 5, "a")
    tt.arm(2, 0, T0 + 7, "b")
    tt.arm(1, 2, T0 + 5, "c")
    tt.arm(1, 0, T0 + 5, "d")
    assert tt.pop_due(T0 + 10, inclusive=False) == [
        (T0 + 5, 1, 0), (T0 + 5, 1, 2), (T0 + 5, 3, 1), (T0 + 7, 2, 0)]


def test_cancelled_timers_are_skipped():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(1, 0, T0 + 150, "b")
    tt.cancel(0, 0)
    assert tt.pop_due(T0 + 1000, inclusive=True) == [(T0 + 150, 1, 0)]
    assert tt.heap == []


def test_rearm_to_an_earlier_deadline_leaves_a_stale_entry_that_is_skipped():
    tt = _table()
    tt.arm(0, 0, T0 + 500, "a")
    tt.arm(0, 0, T0 + 100, "b")  # earlier: a new heap entry
    assert len(tt.heap) == 2
    # Only the current deadline is returned; the entry at +500 is stale and dropped.
    assert tt.pop_due(T0 + 1000, inclusive=True) == [(T0 + 100, 0, 0)]
    assert tt.heap == []


def test_rearm_to_a_later_deadline_is_re_pushed_when_the_earlier_entry_pops():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(0, 0, T0 + 500, "b")  # later: no new heap entry
    assert tt.entries() == [(T0 + 100, 0, 0)]
    # The watermark passes +100: the entry is stale, the current deadline +500 is pushed instead.
    assert tt.pop_due(T0 + 200, inclusive=False) == []
    assert tt.entries() == [(T0 + 500, 0, 0)]
    assert tt.pop_due(T0 + 500, inclusive=False) == []
    assert tt.pop_due(T0 + 500, inclusive=True) == [(T0 + 500, 0, 0)]


def test_rearm_later_is_found_in_the_same_pop_when_it_is_due_too():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(0, 0, T0 + 500, "b")
    tt.arm(1, 0, T0 + 300, "c")
    # One pop past both: the re-pushed +500 comes after slot 1's +300.
    assert tt.pop_due(T0 + 600, inclusive=False) == [(T0 + 300, 1, 0), (T0 + 500, 0, 0)]


def test_rearm_to_the_same_deadline_returns_it_once():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.pop_due(T0 + 50, inclusive=False)
    tt.cancel(0, 0)
    tt.arm(0, 0, T0 + 100, "b")
    assert tt.pop_due(T0 + 200, inclusive=False) == [(T0 + 100, 0, 0)]
    assert tt.event(0, 0) == "b"


def test_heap_stays_bounded_under_many_rearms():
    tt = _table()
    # An inactive_for-like timer re-armed 10k times to ever later deadlines while the watermark
    # follows 1 s behind: the heap never holds more than 2 entries.
    sizes = []
    for i in range(10_000):
        tt.arm(0, 0, T0 + i * 10 + 1000, i)
        assert tt.pop_due(T0 + i * 10, inclusive=False) == []
        sizes.append(len(tt.heap))
    assert max(sizes) <= 2
    # Without any pop, re-arms to later deadlines push nothing at all.
    tt2 = _table()
    for i in range(10_000):
        tt2.arm(0, 0, T0 + i, i)
    assert len(tt2.heap) == 1
    # Cancel and re-arm later (a sequence restarted by A after B) pushes nothing either.
    for i in range(10_000):
        tt2.cancel(0, 0)
        tt2.arm(0, 0, T0 + 10_000 + i, i)
    assert len(tt2.heap) == 1
    assert tt2.pop_due(T0 + 20_000, inclusive=False) == [(T0 + 19_999, 0, 0)]


def test_due_between_is_after_exclusive_until_inclusive_and_untouched():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(0, 1, T0 + 200, "b")
    tt.arm(1, 0, T0 + 300, "c")
    tt.arm(2, 2, T0 + 150, "d")
    assert tt.due_between(T0 + 100, T0 + 300) == [(T0 + 150, 2, 2), (T0 + 200, 0, 1), (T0 + 300, 1, 0)]
    assert tt.due_between(T0 + 100, T0 + 299) == [(T0 + 150, 2, 2), (T0 + 200, 0, 1)]
    assert tt.pending() == 4
    assert len(tt.pop_due(T0 + 1000, inclusive=True)) == 4


def test_restore_rebuilds_the_heap_from_the_deadlines():
    tt = _table()
    tt.arm(0, 0, T0 + 100, "a")
    tt.arm(0, 0, T0 + 400, "a2")  # later: the heap keeps the stale +100 entry
    tt.arm(1, 1, T0 + 50, "b")
    cols = tt.columns.snapshot(3)
    # Later changes to the live table do not reach the snapshot.
    tt.arm(2, 0, T0 + 10, "c")
    tt.cancel(1, 1)
    restored_columns = Columns(2)
    other = TimerTable(restored_columns, 3)
    restored_columns.restore(pickle.loads(pickle.dumps(cols)), 3)
    other.restore()
    assert other.entries() == [(T0 + 50, 1, 1), (T0 + 400, 0, 0)]  # one entry per pending timer
    assert other.pending() == 2
    assert other.event(1, 1) == "b"
    assert other.pop_due(T0 + 1000, inclusive=True) == [(T0 + 50, 1, 1), (T0 + 400, 0, 0)]


def test_heap_entries_order_as_deadline_slot_k():
    tt = _table(n_timers=3, capacity=512)
    # Slot 300 and k 2 above their deadline-mates; a deadline before 1970 orders first too.
    tt.arm(300, 2, T0, "a")
    tt.arm(7, 1, T0, "b")
    tt.arm(7, 0, T0, "c")
    tt.arm(511, 0, T0 - 1, "d")
    tt.arm(5, 0, -5, "e")
    assert tt.entries() == [(-5, 5, 0), (T0 - 1, 511, 0), (T0, 7, 0), (T0, 7, 1), (T0, 300, 2)]
    assert tt.pop_due(T0, inclusive=False) == [(-5, 5, 0), (T0 - 1, 511, 0)]
    assert tt.pop_due(T0, inclusive=True) == [(T0, 7, 0), (T0, 7, 1), (T0, 300, 2)]


def test_more_timer_rules_than_a_heap_entry_holds_are_refused():
    with pytest.raises(ValueError, match="at most 256 timer rules"):
        _table(n_timers=257)


def test_a_table_without_timer_rules():
    tt = _table(n_timers=0)
    assert tt.pending() == 0
    assert tt.next_for(0) == NONE
    assert tt.due_for_contact(0, T0) == []
    assert tt.pop_due(T0, inclusive=True) == []


def test_heap_stays_bounded_under_many_rearms_to_earlier_deadlines():
    tt = _table()
    # A falls_below timer whose score is lowered by 10k negative updates: each crossing is a bit
    # earlier than the last, so each re-arm pushes. The heap is rebuilt from the deadlines
    # whenever it doubles past COMPACT_MIN: it never holds more than that many entries here.
    sizes = []
    for i in range(10_000):
        tt.arm(0, 0, T0 + 10_000_000 - i, i)
        sizes.append(len(tt.heap))
    assert tt.pending() == 1
    assert max(sizes) == TimerTable.COMPACT_MIN
    assert tt.deadline(0, 0) == T0 + 10_000_000 - 9_999
    # The rebuilt heap still fires the current deadline exactly once.
    assert tt.pop_due(T0 + 10_000_000, inclusive=False) == [(T0 + 10_000_000 - 9_999, 0, 0)]
