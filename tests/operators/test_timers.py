"""operators/timers.py: the per-shard timer table (pending timers per contact, the block bounds that find
due ones, the event arena)."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from typing import Any

import numpy as np
import pytest

from engine.summaries import HEADER as SUMMARY_HEADER
from engine.summaries import pack_parts
from engine.testing import arena_record, kept_record
from operators import timers
from operators.contacts import Columns
from operators.timers import BLOCK, DUE_MIN, FREE, NEVER, NONE, SHARE_FROM, TimerTable
from rules.model import MAX_TIMER_TRIGGERS

T0 = 1_795_442_400_000
CLOCK = T0 - 10**9  # the contacts' clock in these tests: deadlines from then on to 49.7 days later fit in a row


def _summary(payload: bytes, properties: bytes = b"") -> bytes:
    """A packed summary carrying `payload` as its traits (never shared) and `properties`."""
    return pack_parts(0, b"", b"", properties, payload, 0)


def _payload(summary: bytes) -> bytes:
    assert summary[1] == 0  # given back with its properties in place
    return summary[SUMMARY_HEADER + int.from_bytes(summary[8:12], "little"):]


class _Table:
    """A TimerTable driven as the shard kernel drives it: room made before each arm, the arming
    event's bytes appended to the arena, `size` = the contact slots in use."""

    def __init__(self, n_timers: int = 3, capacity: int = 4) -> None:
        self.columns = Columns(capacity)
        self.columns.add("clock", np.int64, CLOCK)  # every contact's clock: the rows hold deadlines after it
        self.t = TimerTable(self.columns, n_timers)
        self.size = 0
        self.fired_events: list[bytes] = []  # the events of the timers `fire_due` fired, in order
        self.largest_due = 0  # the due buffer's largest size while `fire_due` ran

    def store(self, event: bytes, properties: bytes = b"") -> int:
        """Append an event (the summary of `_summary(event, properties)`) to the arena; its record's reference."""
        summary = _summary(event, properties)
        self.t.reserve(len(summary), self.size)
        return int(timers.store_event(self.t.arrays(), np.frombuffer(summary, np.uint8), 0))

    def _contact(self, slot: int) -> None:
        """Slots up to `slot` are in use (the kernels take only slots the shard's index gave out)."""
        self.size = max(self.size, slot + 1)
        self.columns.ensure(self.size)

    def arm(self, slot: int, k: int, deadline: int, event: bytes, stored: int | None = None,
            properties: bytes = b"") -> None:
        """Arm timer k of `slot`, keeping `event` (or the event already stored at `stored`)."""
        self._contact(slot)
        offset = self.store(event, properties) if stored is None else stored
        self.t.reserve(0, self.size)
        self.t.make_spill_room(1)
        timers.arm(self.t.arrays(), slot, k, deadline, offset)

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(columns, timers) as the shard snapshots them: the timers first (a snapshot compacts the arena,
        which moves the rows' references), the rows' deadlines as times."""
        kept = self.t.snapshot(self.size)
        columns = self.columns.snapshot(self.size)
        del columns["timer_due_in"]
        columns["timer_deadline"] = self.t.deadlines(self.size)
        return columns, kept

    @classmethod
    def restored(cls, columns: dict[str, np.ndarray], kept: dict[str, Any], size: int, n_timers: int = 3,
                 capacity: int = 4) -> _Table:
        """A table restored from `snapshot()`'s parts, for `size` contacts."""
        tt = cls(n_timers, capacity)
        tt.size = size
        columns = dict(columns)
        deadlines = columns.pop("timer_deadline")
        tt.columns.restore(columns, size)
        tt.t.restore(size, kept, deadlines)
        return tt

    def cancel(self, slot: int, k: int) -> None:
        self._contact(slot)
        timers.cancel(self.t.arrays(), slot, k)

    def event(self, slot: int, k: int) -> bytes:
        """The payload of the event timer k of `slot` keeps."""
        return _payload(self.t.event(slot, k))

    def next_for(self, slot: int) -> int:
        """The contact's earliest deadline (NONE when none is pending)."""
        return self.next_due(slot, NONE)[0]

    def next_due(self, slot: int, before_ms: int) -> tuple[int, int]:
        self._contact(slot)
        d, k = timers.next_due(self.t.arrays(), slot, before_ms)
        return int(d), int(k)

    def due_for_contact(self, slot: int, after_ms: int) -> list[tuple[int, int]]:
        """The contact's timers with deadline < after_ms in firing order: next_due, then cancel it (as
        the shard fires it), until none is due."""
        out = []
        while True:
            d, k = self.next_due(slot, after_ms)
            if k < 0:
                assert d == NONE
                return out
            out.append((d, k))
            self.cancel(slot, k)

    def fire_due(self, limit_ms: int, inclusive: bool) -> list[tuple[int, int, int]]:
        """Every pending (deadline, slot, k) with deadline < limit (<= when inclusive), in order, each
        fired (its event read, then cancelled) as the shard does before it asks for the next."""
        bound = limit_ms + 1 if inclusive else limit_ms
        out = []
        while True:
            d, slot, k = timers.pop_due(self.t.arrays(), bound, self.size)
            if k == timers.NEEDS_ROOM:
                self.t.make_due_room()
                self.largest_due = max(self.largest_due, len(self.t.due))
                continue
            if k < 0:
                assert (d, slot, k) == (NONE, -1, timers.NOT_DUE)
                self.t.release_due()
                return out
            out.append((int(d), int(slot), int(k)))
            self.fired_events.append(self.event(int(slot), int(k)))  # (no longer kept once it fired)
            self.cancel(int(slot), int(k))

    def bounds(self) -> list[int]:
        """The lower bound of each block's deadlines."""
        return [int(b) for b in self.t.block_min[: (self.size + BLOCK - 1) // BLOCK]]

    def check_bounds(self) -> None:
        """Every block's bound is at or below the deadlines of its contacts' pending timers."""
        for b, bound in enumerate(self.bounds()):
            deadlines = [d for s in range(b * BLOCK, min((b + 1) * BLOCK, self.size)) for d in self.deadlines(s)]
            assert bound <= min(deadlines, default=NONE)

    def deadlines(self, slot: int) -> list[int]:
        """The contact's deadline for each timer rule (NONE: not pending)."""
        return [self.t.deadline(slot, k) for k in range(self.t.width)]

    def check_next(self) -> None:
        """Every contact's next deadline is the minimum of its deadlines."""
        assert [self.next_for(s) for s in range(self.size)] == [min(self.deadlines(s)) for s in range(self.size)]


def _table(n_timers: int = 3, capacity: int = 4) -> _Table:
    return _Table(n_timers, capacity)


def test_columns_of_a_table():
    # A row holds INLINE (2) timers of the 3 rules: each place's rule, deadline and record; and how many
    # of the contact's timers spilled.
    # A deadline is kept as the milliseconds after the contact's clock, which the shard's columns hold.
    cols = Columns(4)
    with pytest.raises(ValueError, match="add the `clock` column first"):
        TimerTable(cols, 3)
    cols.add("clock", np.int64, NEVER)
    TimerTable(cols, 3)
    a = cols.arrays
    assert {n: (a[n].shape, a[n].dtype) for n in a} == {
        "clock": ((4,), np.int64), "timer_rule": ((4, 2), np.uint8), "timer_due_in": ((4, 2), np.uint32),
        "timer_event": ((4, 2), np.uint32), "timer_spilled": ((4,), np.uint8)}
    assert (a["timer_rule"] == FREE).all() and not a["timer_spilled"].any()
    one = Columns(4)
    one.add("clock", np.int64, NEVER)
    TimerTable(one, 1)
    assert one.arrays["timer_rule"].shape == (4, 1)


def test_arm_cancel_and_rearm():
    tt = _table()
    assert tt.t.pending() == 0
    assert tt.next_for(0) == NONE
    tt.arm(0, 1, T0 + 100, b"e1")
    assert (tt.t.deadline(0, 1), tt.event(0, 1), tt.next_for(0), tt.t.pending()) == (T0 + 100, b"e1", T0 + 100, 1)
    # Re-arming replaces both the deadline and the event that armed it.
    tt.arm(0, 1, T0 + 200, b"e2")
    assert (tt.t.deadline(0, 1), tt.event(0, 1), tt.next_for(0), tt.t.pending()) == (T0 + 200, b"e2", T0 + 200, 1)
    tt.cancel(0, 1)
    assert (tt.t.deadline(0, 1), tt.next_for(0), tt.t.pending()) == (NONE, NONE, 0)
    tt.cancel(0, 1)  # cancelling a timer that is not pending changes nothing
    assert tt.t.pending() == 0
    tt.arm(0, 1, T0 + 50, b"e3")
    assert (tt.t.deadline(0, 1), tt.event(0, 1), tt.t.pending()) == (T0 + 50, b"e3", 1)


def test_next_for_is_the_earliest_deadline_of_the_contact():
    tt = _table()
    tt.arm(0, 0, T0 + 300, b"a")
    tt.arm(0, 2, T0 + 100, b"b")
    tt.arm(1, 1, T0 + 50, b"c")  # another contact does not count
    assert tt.next_for(0) == T0 + 100
    tt.cancel(0, 2)
    assert tt.next_for(0) == T0 + 300
    assert tt.next_for(1) == T0 + 50
    assert tt.t.pending() == 2
    # Re-arming the earliest timer later or earlier moves it.
    tt.arm(0, 1, T0 + 200, b"d")
    assert tt.next_for(0) == T0 + 200
    tt.arm(0, 1, T0 + 400, b"d2")
    assert tt.next_for(0) == T0 + 300
    tt.arm(0, 0, T0 + 10, b"a2")
    assert tt.next_for(0) == T0 + 10
    tt.check_next()


def _three_timers_of_one_contact() -> _Table:
    tt = _table()
    tt.arm(0, 0, T0 + 300, b"a")
    tt.arm(0, 1, T0 + 100, b"b")
    tt.arm(0, 2, T0 + 100, b"c")
    tt.arm(1, 0, T0 + 10, b"other contact")
    return tt


def test_due_for_contact_strictly_before_in_deadline_then_rule_order():
    assert _three_timers_of_one_contact().due_for_contact(0, T0 + 301) == [(T0 + 100, 1), (T0 + 100, 2), (T0 + 300, 0)]
    # Strictly before the bound: a deadline equal to it is not due.
    assert _three_timers_of_one_contact().due_for_contact(0, T0 + 300) == [(T0 + 100, 1), (T0 + 100, 2)]
    assert _three_timers_of_one_contact().due_for_contact(0, T0 + 100) == []
    # The other contact's timer stays pending, and so does the one not due.
    tt = _three_timers_of_one_contact()
    tt.due_for_contact(0, T0 + 300)
    assert (tt.t.pending(), tt.next_for(0), tt.next_for(1)) == (2, T0 + 300, T0 + 10)


def test_next_due_changes_nothing():
    tt = _three_timers_of_one_contact()
    # Asking twice gives the same answer: it is a query; firing is the caller's cancel.
    assert tt.next_due(0, T0 + 301) == (T0 + 100, 1)
    assert tt.next_due(0, T0 + 301) == (T0 + 100, 1)
    assert tt.next_due(0, T0 + 100) == (NONE, -1)
    assert tt.next_due(2, T0 + 10**9) == (NONE, -1)  # a contact without timers
    assert tt.t.pending() == 4
    assert tt.bounds() == [T0 + 10]  # slots 0 and 1 share block 0


def test_fire_due_strict_and_inclusive():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(1, 0, T0 + 200, b"b")
    tt.arm(2, 0, T0 + 300, b"c")
    # Strict: deadline < limit.
    assert tt.fire_due(T0 + 100, inclusive=False) == []
    assert tt.fire_due(T0 + 200, inclusive=False) == [(T0 + 100, 0, 0)]
    # Inclusive: deadline <= limit.
    assert tt.fire_due(T0 + 200, inclusive=True) == [(T0 + 200, 1, 0)]
    assert tt.t.pending() == 1 and tt.fired_events == [b"a", b"b"]
    # The scans left the block's bound at what stays pending.
    assert tt.bounds() == [T0 + 300]
    assert tt.fire_due(T0 + 1000, inclusive=True) == [(T0 + 300, 2, 0)]
    assert tt.fire_due(T0 + 1000, inclusive=True) == []
    assert tt.bounds() == [NONE]


def test_fire_due_orders_by_deadline_then_slot_then_rule():
    tt = _table()
    tt.arm(3, 1, T0 + 5, b"a")
    tt.arm(2, 0, T0 + 7, b"b")
    tt.arm(1, 2, T0 + 5, b"c")
    tt.arm(1, 0, T0 + 5, b"d")
    assert tt.fire_due(T0 + 10, inclusive=False) == [
        (T0 + 5, 1, 0), (T0 + 5, 1, 2), (T0 + 5, 3, 1), (T0 + 7, 2, 0)]
    assert tt.fired_events == [b"d", b"c", b"a", b"b"]


def test_cancelled_timers_leave_the_bound_low_until_a_scan():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(1, 0, T0 + 150, b"b")
    tt.cancel(0, 0)
    assert tt.bounds() == [T0 + 100]
    assert tt.fire_due(T0 + 120, inclusive=True) == []  # a scan finds nothing due and tightens the bound
    assert tt.bounds() == [T0 + 150]
    assert tt.fire_due(T0 + 1000, inclusive=True) == [(T0 + 150, 1, 0)]
    assert tt.bounds() == [NONE] and tt.t.pending() == 0


def test_rearm_to_an_earlier_deadline_lowers_the_bound():
    tt = _table()
    tt.arm(0, 0, T0 + 500, b"a")
    assert tt.bounds() == [T0 + 500]
    tt.arm(0, 0, T0 + 100, b"b")
    assert tt.bounds() == [T0 + 100]
    # Only the current deadline fires, with the event of the last arm.
    assert tt.fire_due(T0 + 1000, inclusive=True) == [(T0 + 100, 0, 0)]
    assert tt.fired_events == [b"b"]


def test_rearm_to_a_later_deadline_fires_at_the_later_one():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(0, 0, T0 + 500, b"b")
    assert tt.bounds() == [T0 + 100]  # a bound is lowered by arms and raised only by scans
    assert tt.fire_due(T0 + 200, inclusive=False) == []
    assert tt.bounds() == [T0 + 500]
    assert tt.fire_due(T0 + 500, inclusive=False) == []
    assert tt.fire_due(T0 + 500, inclusive=True) == [(T0 + 500, 0, 0)]


def test_rearm_later_is_found_in_the_same_pass_when_it_is_due_too():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(0, 0, T0 + 500, b"b")
    tt.arm(1, 0, T0 + 300, b"c")
    assert tt.fire_due(T0 + 600, inclusive=False) == [(T0 + 300, 1, 0), (T0 + 500, 0, 0)]


def test_rearm_to_the_same_deadline_fires_it_once():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.fire_due(T0 + 50, inclusive=False)
    tt.cancel(0, 0)
    tt.arm(0, 0, T0 + 100, b"b")
    assert tt.event(0, 0) == b"b"
    assert tt.fire_due(T0 + 200, inclusive=False) == [(T0 + 100, 0, 0)]
    assert tt.fired_events == [b"b"]
    with pytest.raises(KeyError, match="not pending"):  # fired: its event is no longer kept
        tt.event(0, 0)


def test_a_timer_fired_then_armed_again_fires_again():
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    assert tt.fire_due(T0 + 200, inclusive=False) == [(T0 + 100, 0, 0)]
    tt.arm(0, 0, T0 + 300, b"b")  # the next sequence
    assert tt.bounds() == [T0 + 300]
    assert tt.fire_due(T0 + 300, inclusive=True) == [(T0 + 300, 0, 0)]
    assert tt.fired_events == [b"a", b"b"]


def test_many_rearms_hold_no_memory():
    tt = _table()
    # An inactive_for-like timer re-armed 10k times to ever later deadlines while the watermark
    # follows 1 s behind: nothing is queued, nothing grows.
    for i in range(10_000):
        tt.arm(0, 0, T0 + i * 10 + 1000, b"e")
        assert tt.fire_due(T0 + i * 10, inclusive=False) == []
    # The bound stays at the first deadline until the watermark passes it; that scan sets it to the deadline
    # then, 1 s on: a scan every 101 re-arms, the last at i = 9,999.
    assert len(tt.t.due) == DUE_MIN and tt.bounds() == [T0 + 9_999 * 10 + 1000]
    # Cancel and re-arm (a sequence restarted by A after B), and re-arms to ever earlier deadlines
    # (a falls_below score lowered by negative points): the timer fires once, at its last deadline.
    tt2 = _table()
    for i in range(10_000):
        tt2.cancel(0, 0)
        tt2.arm(0, 0, T0 + 10_000 + i, b"e")
    for i in range(10_000):
        tt2.arm(0, 0, T0 + 10_000_000 - i, b"e")
    assert tt2.t.pending() == 1 and tt2.bounds() == [T0 + 10_000]
    assert tt2.fire_due(T0 + 10_000_000, inclusive=False) == [(T0 + 10_000_000 - 9_999, 0, 0)]
    assert tt2.bounds() == [NONE]


def test_successive_bounds_fire_consecutive_windows_in_order():
    # What end of input reports and fires: with the timers up to one bound fired, the next bound
    # fires exactly those in (previous bound, next bound), in order.
    tt = _table()
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(0, 1, T0 + 200, b"b")
    tt.arm(1, 0, T0 + 300, b"c")
    tt.arm(2, 2, T0 + 150, b"d")
    assert tt.fire_due(T0 + 100, inclusive=True) == [(T0 + 100, 0, 0)]
    assert tt.fire_due(T0 + 299, inclusive=True) == [(T0 + 150, 2, 2), (T0 + 200, 0, 1)]
    assert tt.fire_due(T0 + 300, inclusive=True) == [(T0 + 300, 1, 0)]
    assert tt.t.pending() == 0 and tt.fired_events == [b"a", b"d", b"b", b"c"]


def test_restore_computes_the_bounds_from_the_deadlines():
    tt = _table(capacity=200)
    tt.arm(0, 0, T0 + 100, b"a")
    tt.arm(0, 0, T0 + 400, b"a2")  # later: the live bound stays at +100
    tt.arm(1, 1, T0 + 50, b"b")
    tt.arm(2, 2, T0 + 70, b"gone")
    tt.cancel(2, 2)
    tt.arm(130, 0, T0 + 20, b"c")
    tt.arm(130, 0, T0 + 600, b"c2")
    assert tt.bounds() == [T0 + 50, NONE, T0 + 20]
    # The arena first (it compacts, which moves the timers' offsets), then the columns.
    cols, arena = tt.snapshot()
    assert cols["timer_deadline"][[0, 1, 2, 130]].tolist() == [[T0 + 400, NONE], [T0 + 50, NONE], [NONE, NONE],
                                                                 [T0 + 600, NONE]]
    # Only what pending timers keep, as records (the kept summaries), in contact order.
    assert arena["arena"].tobytes() == (kept_record(_summary(b"a2")) + kept_record(_summary(b"b"))
                                        + kept_record(_summary(b"c2")))
    assert arena["shared"].tobytes() == b""
    # Later changes to the live table do not reach the snapshot.
    tt.arm(2, 0, T0 + 10, b"c")
    tt.cancel(1, 1)
    snap = pickle.loads(pickle.dumps({"columns": cols, "timers": arena}))
    restored = _Table.restored(snap["columns"], snap["timers"], 131, capacity=2)
    assert restored.bounds() == [T0 + 50, NONE, T0 + 600]  # exact
    assert restored.t.pending() == 3
    assert [restored.event(s, k) for s, k in ((1, 1), (0, 0), (130, 0))] == [b"b", b"a2", b"c2"]
    assert [restored.next_for(s) for s in (0, 1, 2, 130)] == [T0 + 400, T0 + 50, NONE, T0 + 600]
    assert restored.fire_due(T0 + 1000, inclusive=False) == [(T0 + 50, 1, 1), (T0 + 400, 0, 0), (T0 + 600, 130, 0)]


def test_a_restored_table_continues_like_the_live_one():
    live = _table(n_timers=2, capacity=4)
    rng = random.Random(3)
    for i in range(200):
        live.arm(rng.randrange(400), rng.randrange(2), T0 + rng.randrange(10_000), b"x%d" % i)
    cols, arena = pickle.loads(pickle.dumps(live.snapshot()))
    restored = _Table.restored(cols, arena, live.size, n_timers=2)
    restored.check_next()
    restored.check_bounds()
    for i in range(100):  # the same later operations on both
        slot, k, d = rng.randrange(450), rng.randrange(2), T0 + rng.randrange(20_000)
        for tt in (live, restored):
            tt.arm(slot, k, d, b"y%d" % i)
    fired = []
    for tt in (live, restored):
        due = tt.fire_due(T0 + 15_000, inclusive=False)
        fired.append(list(zip(due, tt.fired_events, strict=True)))
    assert fired[0] == fired[1] and len(fired[0]) > 20
    assert live.t.pending() == restored.t.pending()


def test_due_timers_of_many_blocks_order_as_deadline_slot_k():
    tt = _table(n_timers=3, capacity=512)
    # Slot 300 and k 2 above their deadline-mates; a deadline before 1970 orders first too. Slots 5 and
    # 7 are in block 0, 300 in block 4, 511 in block 7.
    tt.arm(300, 2, T0, b"a")
    tt.arm(7, 1, T0, b"b")
    tt.arm(7, 0, T0, b"c")
    tt.arm(511, 0, T0 - 1, b"d")
    tt.arm(5, 0, -5, b"e")
    assert tt.bounds() == [-5, NONE, NONE, NONE, T0, NONE, NONE, T0 - 1]
    assert tt.fire_due(T0, inclusive=False) == [(-5, 5, 0), (T0 - 1, 511, 0)]
    assert tt.bounds() == [T0, NONE, NONE, NONE, T0, NONE, NONE, NONE]
    assert tt.fire_due(T0, inclusive=True) == [(T0, 7, 0), (T0, 7, 1), (T0, 300, 2)]


def test_more_timer_rules_than_the_loader_allows_are_refused():
    assert MAX_TIMER_TRIGGERS == 255 == FREE  # rule numbers 0..254 in a uint8, 255 marks a free place
    with pytest.raises(ValueError, match="at most 255 timer rules"):
        _table(n_timers=256)


def test_the_largest_rule_number_and_a_large_slot_fire_in_order():
    # 255 timer rules: the due buffer names a timer as slot * 255 + k; slot 70_000 is above 16 bits. Its
    # third timer (rule 0) spills, keyed the same way.
    tt = _table(n_timers=255, capacity=4)
    tt.arm(70_000, 254, T0 + 2, b"a")
    tt.arm(70_000, 253, T0 + 2, b"b")
    tt.arm(70_000, 0, T0 + 3, b"d")
    tt.arm(69_999, 254, T0 + 1, b"c")
    assert tt.t.spilled() == 1 and tt.t.spill_keys[tt.t.spill_keys != timers.NO_SPILL].tolist() == [70_000 * 255]
    assert tt.bounds()[70_000 // BLOCK] == T0 + 1 and len(tt.bounds()) == 70_001 // BLOCK + 1
    assert (tt.event(70_000, 254), tt.event(70_000, 0)) == (b"a", b"d")
    assert tt.fire_due(T0 + 3, inclusive=True) == [(T0 + 1, 69_999, 254), (T0 + 2, 70_000, 253),
                                                   (T0 + 2, 70_000, 254), (T0 + 3, 70_000, 0)]
    assert tt.t.pending() == tt.t.spilled() == 0


def test_a_table_without_timer_rules():
    tt = _table(n_timers=0)
    assert tt.t.pending() == 0
    assert tt.next_for(0) == NONE
    assert tt.due_for_contact(0, T0) == []
    assert tt.fire_due(T0, inclusive=True) == []
    assert tt.bounds() == [NONE]


def test_a_burst_of_due_timers_grows_the_due_buffer_and_gives_it_back():
    # 3000 contacts x 2 timers, each re-armed earlier and later 10 times in random order, all due at
    # once: far more than the buffer's first DUE_MIN entries. They fire exactly in order.
    rng = random.Random(11)
    tt = _table(n_timers=2, capacity=4)
    ops = [(s, k) for s in range(3000) for k in range(2)] * 10
    rng.shuffle(ops)
    for slot, k in ops:
        tt.arm(slot, k, T0 + rng.randrange(-500_000, 500_000), b"e")
    assert tt.t.pending() == 6000
    tt.check_next()
    tt.check_bounds()
    expected = sorted((tt.t.deadline(s, k), s, k) for s in range(3000) for k in range(2))
    assert tt.fire_due(T0 + 10**9, inclusive=False) == expected
    assert tt.largest_due >= 6000 and len(tt.t.due) == DUE_MIN
    assert tt.bounds() == [NONE] * ((3000 + BLOCK - 1) // BLOCK)


@pytest.mark.parametrize(("n_timers", "contacts", "spills"), [(3, 50, 3), (6, 20, 15), (12, 30, 15), (3, 300, 1)])
def test_random_operations_match_a_brute_force_model(n_timers, contacts, spills):
    # arm / cancel / fire by watermark (pop_due, then cancel, as the shard does) / fire by event
    # (next_due, then cancel) against a dict of deadlines. Contacts hold up to n_timers timers, 2 in
    # their row: the others spill, and leave the spill table as they fire or are cancelled.
    rng = random.Random(20261123)
    tt = _table(n_timers=n_timers, capacity=4)
    model: dict[tuple[int, int], tuple[int, bytes]] = {}
    watermark = T0
    fired_by_watermark = 0
    most_spilled = 0
    for step in range(6000):
        op = rng.random()
        slot, k = rng.randrange(contacts), rng.randrange(n_timers)
        if op < 0.55:
            d = watermark + rng.randrange(-10, 3000)
            event = b"s%d" % step
            tt.arm(slot, k, d, event)
            model[(slot, k)] = (d, event)
        elif op < 0.7:
            tt.cancel(slot, k)
            model.pop((slot, k), None)
        elif op < 0.85:
            watermark += rng.randrange(0, 400)
            expected = sorted((d, s, kk) for (s, kk), (d, _) in model.items() if d < watermark)
            fired_before = len(tt.fired_events)
            got = tt.fire_due(watermark, inclusive=False)
            assert got == expected
            assert tt.fired_events[fired_before:] == [model[(s, kk)][1] for _, s, kk in got]
            for _, s, kk in got:
                del model[(s, kk)]
            fired_by_watermark += len(got)
        else:
            limit = watermark + rng.randrange(0, 2000)
            expected_c = sorted((d, kk) for (s, kk), (d, _) in model.items() if s == slot and d < limit)
            got_c = tt.due_for_contact(slot, limit)
            assert got_c == expected_c
            for _, kk in got_c:
                del model[(slot, kk)]
        assert tt.t.pending() == len(model)
        # Every contact's timers beyond the 2 in its row are spilled (a row's place freed later may
        # leave more spilled, never fewer).
        per_contact = Counter(s for s, _ in model)
        assert sum(max(0, n - 2) for n in per_contact.values()) <= tt.t.spilled() <= len(model)
        most_spilled = max(most_spilled, tt.t.spilled())
        if step % 50 == 0:
            tt.check_bounds()
        if step % 500 == 0:
            tt.check_next()
            # Compacting the arena keeps every pending timer's event.
            tt.t.compact_events(tt.size, force=True)
            assert all(tt.event(s, kk) == e for (s, kk), (_, e) in model.items())
    tt.check_next()
    assert fired_by_watermark > 500 and most_spilled >= spills


def test_spilled_timers_grow_the_spill_table_and_leave_it_when_they_go():
    # 300 contacts with all 6 timers pending: 2 in each row, 1200 spilled, far past the table's first 64
    # entries. Then every timer is cancelled or fired in a random order; the others stay exactly.
    rng = random.Random(7)
    tt = _table(n_timers=6, capacity=4)
    model = {}
    for slot in range(300):
        for k in rng.sample(range(6), 6):
            d = T0 + rng.randrange(100_000)
            tt.arm(slot, k, d, b"%d/%d" % (slot, k))
            model[(slot, k)] = d
    assert tt.t.pending() == 1800 and tt.t.spilled() == 1200 and len(tt.t.spill_keys) == 2048
    assert tt.columns.arrays["timer_spilled"][:300].tolist() == [4] * 300
    tt.check_next()
    snapshot = pickle.loads(pickle.dumps(tt.snapshot()))
    order = list(model)
    rng.shuffle(order)
    for i, (slot, k) in enumerate(order):
        if i % 2:
            tt.cancel(slot, k)
        else:  # the contact's earliest (deadline, rule), wherever it is; the event is read before cancelling
            assert tt.next_due(slot, NONE) == min((d, kk) for (s, kk), d in model.items() if s == slot)
            assert tt.event(slot, k) == b"%d/%d" % (slot, k)
            tt.cancel(slot, k)
        del model[(slot, k)]
        if i % 97 == 0:
            assert all(tt.t.deadline(s, kk) == d for (s, kk), d in model.items())
            assert tt.t.pending() == len(model)
    assert tt.t.pending() == tt.t.spilled() == 0 and not tt.columns.arrays["timer_spilled"].any()
    assert tt.fire_due(T0 + 10**6, inclusive=False) == []
    # The snapshot taken with all of them pending restores them all, spilled ones included.
    restored = _Table.restored(*snapshot, 300, n_timers=6)
    assert restored.t.pending() == 1800 and restored.t.spilled() == 1200
    restored.check_next()
    assert restored.event(299, 5) == b"299/5"
    assert len(restored.fire_due(T0 + 10**6, inclusive=False)) == 1800 and restored.t.spilled() == 0


# -- the event arena ----------------------------------------------------------------------


def test_compact_events_keeps_only_what_pending_timers_hold():
    tt = _table(n_timers=3, capacity=4)
    tt.arm(0, 0, T0 + 1, b"first-version")
    tt.arm(0, 0, T0 + 2, b"second")  # the first version is garbage now
    shared = tt.store(b"one event, two timers")
    tt.arm(1, 0, T0 + 3, b"one event, two timers", stored=shared)
    tt.arm(1, 2, T0 + 4, b"one event, two timers", stored=shared)
    tt.arm(2, 1, T0 + 5, b"cancelled")
    tt.cancel(2, 1)
    # A record is the kept summary: 11 bytes of header, 2 of traits length, the payload (as traits) of 13, 6,
    # 21, 9 bytes.
    assert tt.t.event_bytes() == 26 + 19 + 34 + 22
    tt.t.compact_events(tt.size)  # far below the threshold: nothing moves
    assert tt.t.event_bytes() == 101
    tt.t.compact_events(tt.size, force=True)
    # The shared event is stored once; the old version and the cancelled timer's event are gone.
    assert tt.t.event_bytes() == 19 + 34
    assert [tt.event(0, 0), tt.event(1, 0), tt.event(1, 2)] == [
        b"second", b"one event, two timers", b"one event, two timers"]
    refs = [int(timers.event_ref(tt.t.arrays(), s, k)) for s, k in ((0, 0), (1, 0), (1, 2))]
    assert refs == [0, 19, 19]  # in bytes
    # Arming after the compaction appends after the live bytes: a payload of 5 -> 18.
    tt.arm(3, 0, T0 + 6, b"later")
    assert tt.event(3, 0) == b"later" and tt.t.event_bytes() == 53 + 18


def test_reserve_grows_the_arena_and_the_block_bounds_keeping_their_contents():
    tt = _table(n_timers=1, capacity=4)
    big = bytes(range(256)) * 400  # 100 KiB: more than the initial 64 KiB arena
    tt.arm(0, 0, T0, b"small")
    tt.arm(1, 0, T0 + 1, big)
    assert tt.event(0, 0) == b"small" and tt.event(1, 0) == big
    assert len(tt.t.arena) >= 5 + len(big)
    for slot in range(2, 2000):  # 32 blocks
        tt.arm(slot, 0, T0 - slot, b"e")
    assert tt.t.pending() == 2000
    assert tt.fire_due(T0 - 1995, inclusive=True)[:3] == [(T0 - 1999, 1999, 0), (T0 - 1998, 1998, 0),
                                                         (T0 - 1997, 1997, 0)]


# -- shared properties ------------------------------------------------------------------------------

PRICING = b'{"path":"/pricing","url":"https://shop.example/pricing","title":"Pricing"}'
PRODUCT = b'{"path":"/products/p-90","url":"https://shop.example/products/p-90","title":"Product"}'


def test_long_properties_are_stored_once_and_given_back_in_place():
    tt = _table(n_timers=1)
    assert len(b'{"i":1}') < SHARE_FROM <= len(PRICING)
    tt.arm(0, 0, T0, b"a", properties=PRICING)
    tt.arm(1, 0, T0, b"bb", properties=PRICING)
    tt.arm(2, 0, T0, b"c", properties=b'{"i":1}')
    assert [tt.t.event(s, 0) for s in range(3)] == [_summary(b"a", PRICING), _summary(b"bb", PRICING),
                                                    _summary(b"c", b'{"i":1}')]
    # Kept records: the header, a 4-byte reference in place of the properties, the payload (as traits):
    # 13 + 4 + 1 and 13 + 4 + 2; the short properties stay: 13 + 7 + 1.
    assert tt.t.arena[:tt.t.meta[timers.ARENA_USED]].tobytes() == (
        kept_record(_summary(b"a", PRICING), properties_ref=0) + kept_record(_summary(b"bb", PRICING), properties_ref=0)
        + kept_record(_summary(b"c", b'{"i":1}')))
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == arena_record(PRICING)
    assert int(tt.t.meta[timers.SHARED_RECORDS]) == 1 and int((tt.t.shared_index != timers.NO_ENTRY).sum()) == 1
    assert tt.t.event_bytes() == 18 + 19 + 21 + len(arena_record(PRICING))


def test_event_names_are_shared_and_message_ids_kept_without_quotes():
    tt = _table(n_timers=1)
    viewed = pack_parts(0, b'"m-1"', b'"Product Viewed"', b"", b"", T0)
    added = pack_parts(0, b'"m-2"', b'"Product Added"', b"", b"", T0)
    short = pack_parts(0, b'""', b'"Buy"', b"", b"", T0)  # an empty id keeps its quotes; a short name stays
    for slot, summary in enumerate([viewed, added, pack_parts(0, b'"m-3"', b'"Product Viewed"', b"", b"", T0), short]):
        tt._contact(slot)
        tt.t.reserve(len(summary), tt.size)
        timers.arm(tt.t.arrays(), slot, 0, T0, timers.store_event(tt.t.arrays(), np.frombuffer(summary, np.uint8), 0))
    # 11 + 3 + 4 = 18 bytes each, against 24 + 5 + 16 = 45 as packed summaries.
    assert tt.t.arena[:tt.t.meta[timers.ARENA_USED]].tobytes() == (
        kept_record(viewed, name_ref=0) + kept_record(added, name_ref=3)
        + kept_record(pack_parts(0, b'"m-3"', b'"Product Viewed"', b"", b"", T0), name_ref=0) + kept_record(short))
    assert len(kept_record(viewed, name_ref=0)) == 18 and len(kept_record(short)) == 18
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == (arena_record(b'"Product Viewed"')
                                                                      + arena_record(b'"Product Added"'))
    assert [tt.t.event(s, 0) for s in range(4)] == [viewed, added, pack_parts(0, b'"m-3"', b'"Product Viewed"', b"",
                                                                             b"", T0), short]
    # A compaction moves each shared name once, whichever records refer to it.
    tt.cancel(0, 0)
    tt.t.compact_events(tt.size, force=True)
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == (arena_record(b'"Product Added"')
                                                                      + arena_record(b'"Product Viewed"'))
    assert [tt.t.event(s, 0) for s in (1, 2, 3)] == [added, pack_parts(0, b'"m-3"', b'"Product Viewed"', b"", b"", T0),
                                                     short]


def test_compaction_keeps_the_shared_properties_pending_timers_refer_to():
    tt = _table(n_timers=1)
    tt.arm(0, 0, T0, b"a", properties=PRICING)
    tt.arm(1, 0, T0, b"b", properties=PRODUCT)
    tt.arm(2, 0, T0, b"c", properties=PRODUCT)
    tt.arm(0, 0, T0 + 1, b"a2", properties=PRODUCT)  # PRICING is garbage now
    tt.cancel(1, 0)
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == arena_record(PRICING) + arena_record(PRODUCT)
    tt.t.compact_events(tt.size, force=True)
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == arena_record(PRODUCT)
    assert int(tt.t.meta[timers.SHARED_RECORDS]) == 1 and int((tt.t.shared_index != timers.NO_ENTRY).sum()) == 1
    assert (tt.t.event(0, 0), tt.t.event(2, 0)) == (_summary(b"a2", PRODUCT), _summary(b"c", PRODUCT))
    # Found again after the compaction (the index was rebuilt), and a new one appended.
    tt.arm(3, 0, T0, b"d", properties=PRODUCT)
    tt.arm(4, 0, T0, b"e", properties=PRICING)
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == arena_record(PRODUCT) + arena_record(PRICING)
    assert [tt.t.event(s, 0) for s in (3, 4)] == [_summary(b"d", PRODUCT), _summary(b"e", PRICING)]


def test_a_snapshot_keeps_the_shared_properties_and_a_restored_table_finds_them():
    live = _table(n_timers=2)
    for slot in range(50):
        live.arm(slot, slot % 2, T0 + slot, b"x%d" % slot, properties=(PRICING, PRODUCT, b"{}")[slot % 3])
    cols, arena = pickle.loads(pickle.dumps(live.snapshot()))
    assert arena["shared"].tobytes() == arena_record(PRICING) + arena_record(PRODUCT)
    restored = _Table.restored(cols, arena, live.size, n_timers=2)
    assert [restored.t.event(s, s % 2) for s in range(50)] == [live.t.event(s, s % 2) for s in range(50)]
    restored.arm(60, 0, T0, b"y", properties=PRODUCT)
    assert restored.t.meta[timers.SHARED_USED] == len(arena["shared"])  # shared with the restored record
    assert restored.t.event(60, 0) == _summary(b"y", PRODUCT)


def test_an_index_entry_whose_hash_matches_is_used_only_for_the_same_bytes():
    tt = _table(n_timers=1)
    tt.arm(0, 0, T0, b"a", properties=PRICING)
    # Give PRICING's entry PRODUCT's hash, as a collision would: a PRODUCT lookup finds it, compares
    # the bytes, and goes on to an entry of its own.
    h = timers._properties_hash(np.frombuffer(PRODUCT, np.uint8), 0, len(PRODUCT), tt.t.meta[timers.HASH_SEED])
    index = tt.t.shared_index
    index[:] = timers.NO_ENTRY
    index[(h >> 32) & (len(index) - 1)] = ((h & 0x7FFFFFFF) << 32) | 0
    tt.arm(1, 0, T0, b"b", properties=PRODUCT)
    assert tt.t.shared[:tt.t.meta[timers.SHARED_USED]].tobytes() == arena_record(PRICING) + arena_record(PRODUCT)
    assert tt.t.event(1, 0) == _summary(b"b", PRODUCT) and tt.t.event(0, 0) == _summary(b"a", PRICING)
    assert int(tt.t.meta[timers.SHARED_RECORDS]) == 2


def test_new_properties_stay_in_their_record_when_the_shared_buffer_is_full():
    tt = _table(n_timers=1)
    # As if the shared buffer were full (its bytes are never read), and no `reserve` to double it
    # before this event (the kernel stores a batch's events between two reserves).
    tt.t.meta[timers.SHARED_USED] = len(tt.t.shared) - 16
    summary = _summary(b"a", PRICING)
    ref = int(timers.store_event(tt.t.arrays(), np.frombuffer(summary, np.uint8), 0))
    kept = kept_record(summary)
    assert tt.t.arena[ref:ref + len(kept)].tobytes() == kept
    assert int(tt.t.meta[timers.SHARED_RECORDS]) == 0


def test_each_table_seeds_its_index_hash():
    tables = [_table(n_timers=1) for _ in range(3)]
    seeds = {int(tt.t.meta[timers.HASH_SEED]) for tt in tables}
    assert len(seeds) == 3 and min(seeds) >= 0
    data = np.frombuffer(PRICING, np.uint8)
    assert len({int(timers._properties_hash(data, 0, len(PRICING), seed)) for seed in seeds}) == 3
    # The seed never reaches a snapshot: a restored table has its own, and finds the records anyway.
    for tt in tables:
        tt.arm(0, 0, T0, b"a", properties=PRICING)
    restored = _Table.restored(*tables[0].snapshot(), 1, n_timers=1)
    assert restored.t.meta[timers.HASH_SEED] not in seeds
    restored.arm(1, 0, T0, b"b", properties=PRICING)
    assert restored.t.meta[timers.SHARED_USED] == len(arena_record(PRICING))


def test_random_arms_with_shared_properties_keep_every_event_exactly():
    # Arms, cancels and firings with properties drawn from repeated ones (two of them differing in
    # one byte), short ones (never shared), long ones and unique ones; compactions and a snapshot
    # and restore on the way. Every pending timer keeps exactly the summary it was armed with.
    rng = random.Random(7)
    repeated = [PRICING, PRODUCT, PRODUCT.replace(b"p-90", b"p-91"), b'{"i":1}', b"", b'{"x":"' + b"y" * 300 + b'"}']
    tt = _table(n_timers=3)
    model: dict[tuple[int, int], tuple[int, bytes]] = {}
    watermark = T0
    for step in range(5000):
        slot, k = rng.randrange(200), rng.randrange(3)
        op = rng.random()
        if op < 0.6:
            properties = (rng.choice(repeated) if rng.random() < 0.7
                          else b'{"order_id":"o-%09d"}' % step)
            d = watermark + rng.randrange(1, 5000)
            tt.arm(slot, k, d, b"s%d" % step, properties=properties)
            model[(slot, k)] = (d, _summary(b"s%d" % step, properties))
        elif op < 0.7:
            tt.cancel(slot, k)
            model.pop((slot, k), None)
        else:
            watermark += rng.randrange(0, 300)
            for d, s, kk in tt.fire_due(watermark, inclusive=False):
                assert model.pop((s, kk))[0] == d
        if step % 700 == 699:
            tt.t.compact_events(tt.size, force=True)
        if step == 2500:  # continue on a restored copy
            tt = _Table.restored(*pickle.loads(pickle.dumps(tt.snapshot())), tt.size)
        if step % 250 == 0:
            assert {key: tt.t.event(*key) for key in model} == {key: e for key, (_, e) in model.items()}
    assert {key: tt.t.event(*key) for key in model} == {key: e for key, (_, e) in model.items()}
    assert int(tt.t.meta[timers.SHARED_RECORDS]) > 5  # sharing happened


# -- deadlines after the contact's clock --------------------------------------------------------------


def test_a_row_keeps_the_milliseconds_after_the_clock_and_the_clock_moving_brings_them_nearer():
    tt = _table(n_timers=3)
    tt.arm(0, 1, CLOCK + 100, b"a")
    tt.arm(0, 2, CLOCK + 250, b"b")
    rows = tt.columns.arrays
    assert rows["timer_rule"][0].tolist() == [1, 2] and rows["timer_due_in"][0].tolist() == [100, 250]
    # The contact's clock moves 40 ms on (as an event of its moves it): 60 and 210 ms to go, the same deadlines.
    rows["clock"][0] = CLOCK + 40
    timers.age(tt.t.arrays(), 0, 40)
    assert rows["timer_due_in"][0].tolist() == [60, 210]
    assert tt.deadlines(0) == [NONE, CLOCK + 100, CLOCK + 250]
    assert tt.t.deadlines(1).tolist() == [[CLOCK + 100, CLOCK + 250]]
    assert tt.due_for_contact(0, CLOCK + 101) == [(CLOCK + 100, 1)]
    # A cancelled place is free and reads 0 (a restored row's free places do too).
    assert rows["timer_rule"][0].tolist() == [FREE, 2] and rows["timer_due_in"][0].tolist() == [0, 210]


def test_a_deadline_a_row_cannot_hold_spills_and_fires_in_its_place():
    tt = _table(n_timers=3)
    last = CLOCK + 0xFFFFFFFF  # 49.7 days after the clock: the furthest a row holds
    tt.arm(0, 0, last, b"in the row")
    tt.arm(1, 0, last + 1, b"one ms further")
    tt.arm(2, 0, CLOCK - 1, b"before the clock")
    rows = tt.columns.arrays
    assert rows["timer_rule"][:3, 0].tolist() == [0, FREE, FREE] and rows["timer_due_in"][0, 0] == 0xFFFFFFFF
    assert rows["timer_spilled"][:3].tolist() == [0, 1, 1] and tt.t.spilled() == 2 and tt.t.pending() == 3
    # Re-armed beyond what its row holds, a timer leaves the row for the spill table; nothing else changes.
    tt.arm(0, 0, last + 5, b"re-armed further")
    assert rows["timer_rule"][0].tolist() == [FREE, FREE] and rows["timer_spilled"][0] == 1
    assert (tt.t.spilled(), tt.t.pending()) == (3, 3)
    assert tt.event(0, 0) == b"re-armed further" and tt.deadlines(0) == [last + 5, NONE, NONE]
    tt.check_bounds()
    tt.check_next()
    assert tt.fire_due(last + 10, inclusive=False) == [(CLOCK - 1, 2, 0), (last + 1, 1, 0), (last + 5, 0, 0)]
    assert tt.fired_events == [b"before the clock", b"one ms further", b"re-armed further"]
    assert tt.t.pending() == tt.t.spilled() == 0


def test_a_snapshot_row_too_far_from_the_clock_is_restored_into_the_spill_table():
    # Snapshots keep deadlines as times; one written before rows were kept after the clock may hold, in
    # a row, a deadline more than 49.7 days after its contact's clock.
    tt = _table(n_timers=2)
    tt.arm(0, 0, T0, b"near")
    tt.arm(0, 1, T0 + 1, b"far")
    tt.arm(1, 1, T0 + 2, b"other")
    columns, kept = tt.snapshot()
    columns["timer_deadline"][0, 1] = CLOCK + 0x100000000
    restored = _Table.restored(columns, kept, 2, n_timers=2)
    rows = restored.columns.arrays
    assert rows["timer_rule"][:2].tolist() == [[0, FREE], [1, FREE]]
    assert rows["timer_spilled"][:2].tolist() == [1, 0] and restored.t.spilled() == 1 and restored.t.pending() == 3
    assert restored.deadlines(0) == [T0, CLOCK + 0x100000000] and restored.event(0, 1) == b"far"
    restored.check_bounds()
    assert restored.fire_due(CLOCK + 0x100000001, inclusive=False) == [(T0, 0, 0), (T0 + 2, 1, 1),
                                                                       (CLOCK + 0x100000000, 0, 1)]
