"""operators/counts.py: edge-triggered sliding-window counts (SPEC §3 `count ... within ... at_least`)."""

from __future__ import annotations

import random

import numpy as np

from operators import counts
from operators.contacts import Columns
from operators.counts import EMPTY, CountWindows

T0 = 1_795_442_400_000


class _Windows:
    """The count columns of some rules (their `at_least` sizes) and the compiled `add` over them."""

    def __init__(self, *sizes: int, capacity: int = 4) -> None:
        self.columns = Columns(capacity)
        CountWindows(self.columns, list(sizes))
        self.sizes = list(sizes)

    def add(self, slot: int, rule: int, now_ms: int, within_ms: int) -> bool:
        a = self.columns.arrays
        return counts.add(a["count_times"], a["count_next"], slot, rule, sum(self.sizes[:rule]), self.sizes[rule],
                          now_ms, within_ms)


def _windows(*sizes: int, capacity: int = 4) -> _Windows:
    return _Windows(*sizes, capacity=capacity)


def _run(cw: _Windows, times: list[int], within: int, slot: int = 0, rule: int = 0) -> list[bool]:
    return [cw.add(slot, rule, t, within) for t in times]


def test_columns_one_ring_per_rule_side_by_side():
    cols = Columns(4)
    CountWindows(cols, [2, 3, 1])
    times, following = cols.arrays["count_times"], cols.arrays["count_next"]
    assert (times.shape, times.dtype, following.shape, following.dtype) == ((4, 6), np.int64, (4, 3), np.uint16)
    assert (times == EMPTY).all() and (following == 0).all()
    # Without count rules the columns still have one (unused) column each.
    cols = Columns(4)
    CountWindows(cols, [])
    assert cols.arrays["count_times"].shape == (4, 1) and cols.arrays["count_next"].shape == (4, 1)


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
    # Each rule writes only its own columns: rule 0 owns columns 0-1, rule 1 columns 2-4.
    times = cw.columns.arrays["count_times"]
    assert times[0].tolist() == [T0, T0 + 1, T0, T0 + 1, T0 + 2]
    assert times[1].tolist() == [T0, T0 + 2, EMPTY, EMPTY, EMPTY]
    assert cw.columns.arrays["count_next"][:2].tolist() == [[0, 0], [0, 0]]


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
    # at_least is at most 1000 (rules.loader.MAX_AT_LEAST): the ring position (uint16) holds it.
    cw = _windows(1000, 2)
    # 2500 events 1 ms apart, W = 1001 ms: n reaches 1000 at the 1000th event and then 1001, where
    # it stays (1000 others inside before every later event, K - 1 = 999 never again): one edge. Then a gap of W:
    # n = 1 again; 999 more 1 ms apart: a second edge at the 1000th of them.
    times = [T0 + i for i in range(2500)]
    times += [T0 + 2499 + 1001 + i for i in range(1000)]
    fired = _run(cw, times, 1001)
    assert [i for i, f in enumerate(fired) if f] == [999, 3499]
    assert int(cw.columns.arrays["count_next"][0, 0]) == 3500 % 1000
    # The second rule's two columns, right after the first rule's thousand, are untouched.
    assert cw.columns.arrays["count_times"][0, 1000:].tolist() == [EMPTY, EMPTY]
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
