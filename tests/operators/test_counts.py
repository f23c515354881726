"""operators/counts.py: edge-triggered sliding-window counts (SPEC §3 `count ... within ... at_least`)."""

from __future__ import annotations

import random

import numpy as np

from operators import counts
from operators.counts import EMPTY, CountRings

T0 = 1_795_442_400_000


class _Windows:
    """The count rings of some rules (their `at_least` sizes) and the compiled `add` over them, making
    room before each event as the shard does."""

    def __init__(self, *sizes: int) -> None:
        self.rings = CountRings(list(sizes))
        self.sizes = list(sizes)

    def add(self, slot: int, rule: int, now_ms: int, within_ms: int) -> bool:
        self.rings.make_room()
        assert counts.room(self.rings.arrays())
        return bool(counts.add(self.rings.arrays(), slot, rule, self.sizes[rule], now_ms, within_ms))


def _windows(*sizes: int) -> _Windows:
    return _Windows(*sizes)


def _run(cw: _Windows, times: list[int], within: int, slot: int = 0, rule: int = 0) -> list[bool]:
    return [cw.add(slot, rule, t, within) for t in times]


def test_a_contact_gets_a_ring_at_its_first_matching_event_only():
    cw = _windows(2, 3, 1)
    assert len(cw.rings) == 0 and cw.rings.ring(0, 0) == []
    cw.add(5, 1, T0, 1000)
    # One ring, of K + 1 = 4 int64s: the next position, then the times (EMPTY until filled).
    assert len(cw.rings) == 1 and int(cw.rings.pool_used[0]) == 4
    assert cw.rings.pool[:4].tolist() == [1, T0, EMPTY, EMPTY]
    assert cw.rings.ring(5, 1) == [T0] and cw.rings.ring(5, 0) == [] and cw.rings.ring(4, 1) == []
    cw.add(5, 1, T0 + 1, 1000)
    cw.add(2, 2, T0 + 2, 1000)
    assert len(cw.rings) == 2 and int(cw.rings.pool_used[0]) == 6
    assert cw.rings.ring(5, 1) == [T0, T0 + 1] and cw.rings.ring(2, 2) == [T0 + 2]


def test_rings_grow_their_pool_and_table_and_round_trip_a_snapshot():
    cw = _windows(3, 1)
    for slot in range(3000):
        cw.add(slot, slot % 2, T0 + slot, 1000)
    assert len(cw.rings) == 3000 and int(cw.rings.pool_used[0]) == 1500 * 4 + 1500 * 2
    assert cw.rings.ring(2998, 0) == [T0 + 2998] and cw.rings.ring(2999, 1) == [T0 + 2999]
    snap = cw.rings.snapshot()
    restored = CountRings([3, 1])
    restored.restore(snap)
    assert [restored.ring(s, s % 2) for s in range(3000)] == [[T0 + s] for s in range(3000)]
    # A restored ring goes on counting: K = 3 reached at slot 0's third event.
    again = _Windows(3, 1)
    again.rings = restored
    assert [again.add(0, 0, T0 + d, 1000) for d in (1, 2)] == [False, True]


def test_rings_are_converted_from_the_dense_columns_of_format_5():
    # Format 5: rule 0 (K=2) in columns 0-1, rule 1 (K=1) in column 2; the next positions per rule.
    times = np.full((3, 3), EMPTY, np.int64)
    following = np.zeros((3, 2), np.uint16)
    times[0, :2] = [T0 + 10, T0 + 5]  # a full ring whose oldest is column 1
    following[0, 0] = 1
    times[2, 2] = T0
    snap = CountRings.from_columns(times, following, [2, 1])
    assert (snap["keys"].tolist(), snap["values"].tolist()) == ([0, 5], [0, 3])
    assert snap["pool"].tolist() == [1, T0 + 10, T0 + 5, 0, T0]
    rings = CountRings([2, 1])
    rings.restore(snap)
    assert rings.ring(0, 0) == [T0 + 5, T0 + 10] and rings.ring(2, 1) == [T0] and rings.ring(1, 0) == []


def test_an_event_exactly_w_earlier_is_outside_the_window():
    cw = _windows(2)
    # K = 2, W = 1000: window at 1000 is (0, 1000], so the event at 0 is outside: n = 1.
    assert _run(cw, [T0, T0 + 1000], 1000) == [False, False]
    # At T0 + 1999 the window is (T0 + 999, T0 + 1999]: holds T0 + 1000 and this one: n = 2.
    assert cw.add(0, 0, T0 + 1999, 1000) is True


def test_an_event_one_ms_inside_the_window_counts():
    cw = _windows(2)
    # Window at T0 + 999 is (T0 - 1, T0 + 999]: holds T0, so n = 2.
    assert _run(cw, [T0, T0 + 999], 1000) == [False, True]


def test_fires_only_when_the_count_reaches_exactly_k():
    cw = _windows(3)
    # K = 3, W = 10 s: n = 1, 2, 3 (fires), 4, 5 (stays >= K: no more firings).
    assert _run(cw, [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4], 10_000) == [False, False, True, False, False]


def test_fires_again_after_the_count_dropped_below_k():
    cw = _windows(2)
    # K = 2, W = 1000: T0 (n=1), +500 (n=2, fires), +600 (n=3).
    assert _run(cw, [T0, T0 + 500, T0 + 600], 1000) == [False, True, False]
    # At +1550 the window (T0+550, T0+1550] holds only +600 before this event: the count had
    # dropped to 1 and rises to 2 again, so it fires again (a rising edge, not a cleared window).
    assert cw.add(0, 0, T0 + 1550, 1000) is True
    # At +1599 the window (T0+599, T0+1599] holds +600, +1550 and this one: n = 3, no new edge.
    assert cw.add(0, 0, T0 + 1599, 1000) is False


def test_events_at_the_same_time_each_count():
    cw = _windows(3)
    # Three events at one instant: n = 1, 2, 3 -> fires at the third.
    assert _run(cw, [T0, T0, T0], 1) == [False, False, True]


def test_k_one_fires_whenever_the_window_was_empty():
    cw = _windows(1)
    # K = 1, W = 1000: T0 fires (n=1); +500 has T0 inside (n=2); +1500: window (T0+500, T0+1500]
    # excludes +500 (exactly W earlier), so n = 1 and it fires; +1501 has +1500 inside.
    assert _run(cw, [T0, T0 + 500, T0 + 1500, T0 + 1501], 1000) == [True, False, True, False]


def test_rules_and_contacts_do_not_share_rings():
    cw = _windows(2, 3)
    # Rule 0 (K=2) and rule 1 (K=3) for slot 0, interleaved; slot 1 separately.
    assert cw.add(0, 0, T0, 1000) is False   # rule 0: n = 1
    assert cw.add(0, 1, T0, 1000) is False   # rule 1: n = 1
    assert cw.add(1, 0, T0, 1000) is False   # slot 1 rule 0: n = 1
    assert cw.add(0, 1, T0 + 1, 1000) is False  # rule 1: n = 2
    assert cw.add(0, 0, T0 + 1, 1000) is True   # rule 0: n = 2
    assert cw.add(0, 1, T0 + 2, 1000) is True   # rule 1: n = 3
    assert cw.add(1, 0, T0 + 2, 1000) is True   # slot 1 rule 0: n = 2
    # Each (contact, rule) has its own ring, oldest first.
    assert [cw.rings.ring(0, 0), cw.rings.ring(0, 1)] == [[T0, T0 + 1], [T0, T0 + 1, T0 + 2]]
    assert [cw.rings.ring(1, 0), cw.rings.ring(1, 1)] == [[T0, T0 + 2], []]


def test_ring_wraparound_with_a_steady_rate():
    cw = _windows(3)
    # An event every 3 ms with W = 10: from the fourth event on, the window (t-10, t] holds t-9,
    # t-6, t-3 before the event (3 >= K) and n = 4, so the count goes 1, 2, 3, 4, 4, ...: exactly
    # one firing in 1000 events, although the 3-slot ring wraps around 333 times.
    fired = _run(cw, [T0 + 3 * i for i in range(1000)], 10)
    assert fired.index(True) == 2
    assert fired.count(True) == 1


def test_ring_wraparound_with_a_rate_that_lets_the_count_dip():
    cw = _windows(3)
    # An event every 4 ms with W = 10: before each event the window (t-10, t] holds only t-8 and
    # t-4 (t-12 left it 2 ms ago), so the count dips to 2 and rises to 3 at every event from the
    # third on: 998 rising edges in 1000 events.
    fired = _run(cw, [T0 + 4 * i for i in range(1000)], 10)
    assert fired[:3] == [False, False, True]
    assert fired.count(True) == 998


def test_the_largest_k_wraps_its_ring():
    # at_least is at most 1000 (rules.loader.MAX_AT_LEAST).
    cw = _windows(1000, 2)
    # 2500 events 1 ms apart, W = 1001 ms: n reaches 1000 at the 1000th event and then 1001, where
    # it stays (1000 others inside before every later event, K - 1 = 999 never again): one edge. Then a gap of W:
    # n = 1 again; 999 more 1 ms apart: a second edge at the 1000th of them.
    times = [T0 + i for i in range(2500)]
    times += [T0 + 2499 + 1001 + i for i in range(1000)]
    fired = _run(cw, times, 1001)
    assert [i for i, f in enumerate(fired) if f] == [999, 3499]
    assert int(cw.rings.pool[0]) == 3500 % 1000  # the next position
    assert cw.rings.ring(0, 0) == times[-1000:]
    assert cw.rings.ring(0, 1) == []  # the second rule has no ring yet
    assert _run(cw, [T0, T0], 1001, rule=1) == [False, True]


def test_ring_wraparound_matches_a_brute_force_count():
    rng = random.Random(20261123)
    for k in (1, 2, 3, 5):
        cw = _windows(k)
        within = 100
        t = T0
        times: list[int] = []
        expected: list[bool] = []
        for _ in range(3000):
            t += rng.choice((0, 1, 7, 20, 33, 50, 99, 100, 101, 250))
            times.append(t)
            # n = number of times (this one included) in (t - W, t]; fires when n == K exactly.
            # (times never decrease, so scan back from the newest)
            n = 0
            for u in reversed(times):
                if u <= t - within:
                    break
                n += 1
            expected.append(n == k)
        got = _run(cw, times, within)
        assert got == expected, k
        assert sum(expected) > 50  # the sequence exercises many rising edges for every K
