"""operators/scores.py: decay, crossing times and the score columns (SPEC §3 "Scores")."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np

from engine.testing import event_batch, plan_of
from operators import scores
from operators.contacts import Columns
from operators.scores import AGE_FAR, AGE_NEVER, NEVER, TWO, ScoreColumns, crossing_time
from operators.shard import ShardState

HOUR = 3_600_000
WEEK = 7 * 86_400_000
T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
INF = math.inf


def decay(value: float, last_ms: int, now_ms: int, half_life_ms: float) -> float:
    """The compiled decay, with the run-time base 2 the engine passes."""
    return scores.decay(value, last_ms, now_ms, half_life_ms, TWO)


# -- decay ------------------------------------------------------------------------------


def test_decay_whole_half_lives_are_exact_halvings():
    # 8 * 2^-1 = 4, 8 * 2^-2 = 2, 8 * 2^-3 = 1: powers of two are exact in binary floating point.
    assert decay(8.0, 0, HOUR, HOUR) == 4.0
    assert decay(8.0, 0, 2 * HOUR, HOUR) == 2.0
    assert decay(8.0, 0, 3 * HOUR, HOUR) == 1.0
    # Only the elapsed time counts, not the absolute times: 12 * 2^-1 = 6 a week after T0.
    assert decay(12.0, T0, T0 + WEEK, float(WEEK)) == 6.0


def test_decay_of_a_negative_score_moves_towards_zero():
    # -8 * 2^-2 = -2: decay is never clamped, a negative score rises towards 0.
    assert decay(-8.0, 0, 2 * HOUR, HOUR) == -2.0


def test_decay_half_a_half_life_is_one_over_sqrt_two():
    # 8 * 2^(-1/2) = 4 * sqrt(2) = 5.656854249492381 (to double precision).
    assert math.isclose(decay(8.0, 0, HOUR // 2, HOUR), 4 * math.sqrt(2), rel_tol=1e-15)


def test_decay_of_zero_and_at_the_same_time():
    assert decay(0.0, 0, 10 * HOUR, HOUR) == 0.0
    # Same time: the value is returned unchanged (no 2^0 rounding involved).
    assert decay(7.3, T0, T0, HOUR) == 7.3
    assert decay(-0.1, T0, T0, HOUR) == -0.1


def test_decay_is_pythons_formula_bit_for_bit():
    # The SPEC's S * 2^(-(now - last)/half_life), as Python computes it, for many inputs: the
    # compiled pow must round exactly like Python's (a literal 2.0 would turn into exp2, which
    # differs in about one case in a thousand).
    rng = random.Random(20261123)
    cases = 0
    for _ in range(20_000):
        value = rng.choice((rng.uniform(-100, 100), rng.uniform(0, 1e6), rng.expovariate(0.1), 3.0, -20.0))
        half_life = rng.choice((1000, HOUR, WEEK, 86_400_000, rng.randint(1, 10**10)))
        last = rng.choice((0, T0, rng.randint(-(10**12), 10**13)))
        now = last + rng.choice((1, 7, rng.randint(0, 10 * half_life), rng.randint(0, 10**11)))
        expected = value if value == 0.0 or now == last else value * 2.0 ** (-(now - last) / half_life)
        got = decay(value, last, now, float(half_life))
        assert got == expected or (math.isnan(got) and math.isnan(expected)), (value, last, now, half_life)
        cases += 1
    assert cases == 20_000


def test_value_at_and_update_decay_bit_for_bit_too():
    rng = random.Random(7)
    sc = _Scores(n_scores=1)
    now = T0
    stored, last = 0.0, NEVER
    for _ in range(5000):
        now += rng.randint(0, 3 * HOUR)
        add = rng.uniform(-5, 10)
        expected_before = stored * 2.0 ** (-(now - last) / HOUR) if last != NEVER else 0.0
        if stored == 0.0 or now == last:
            expected_before = stored
        sc.advance(0, now)
        assert sc.value_at(0, 0, now, HOUR) == expected_before
        assert sc.update(0, 0, now, HOUR, add, -INF, INF) == (expected_before, expected_before + add)
        assert sc.last_update(0, 0) == (expected_before + add, now)
        stored, last = expected_before + add, now


# -- crossing_time ----------------------------------------------------------------------


def test_crossing_time_exact_integer_crossings():
    # 8 -> 4 after exactly one half-life: 0 + 3_600_000 * log2(2) = 3_600_000, no rounding up.
    assert crossing_time(8.0, 0, HOUR, 4.0) == 3_600_000
    # 8 -> 1: log2(8) = 3 half-lives.
    assert crossing_time(8.0, 0, HOUR, 1.0) == 3 * HOUR
    # From a real epoch time: T0 + one half-life, exactly.
    assert crossing_time(10.0, T0, HOUR, 5.0) == T0 + HOUR
    # A score exactly at the threshold crosses at its own update time: log2(1) = 0.
    assert crossing_time(3.0, T0, HOUR, 3.0) == T0


def test_crossing_time_rounds_up_to_the_next_millisecond():
    # 10 falling below 3 with a 1 h half-life: 3_600_000 * log2(10/3) = 6_253_076.1389983... ms,
    # so the ceiling is 6_253_077 (computed with 50-digit decimals).
    assert crossing_time(10.0, 0, HOUR, 3.0) == 6_253_077
    # ... and the score really is below 3 there and not yet one millisecond earlier:
    # 10 * 2^(-6253077/3600000) = 2.99999950..., 10 * 2^(-6253076/3600000) = 3.00000008...
    assert decay(10.0, 0, 6_253_077, HOUR) < 3.0
    assert decay(10.0, 0, 6_253_076, HOUR) >= 3.0
    # 5 below 2 with a 1 h half-life, from T0: 3_600_000 * log2(2.5) = 4_758_941.14... -> 4_758_942.
    assert crossing_time(5.0, T0, HOUR, 2.0) == T0 + 4_758_942
    # 12 below 2 with a 7 d half-life: 604_800_000 * log2(6) = 1_563_385_320.43... -> 1_563_385_321.
    assert crossing_time(12.0, 0, WEEK, 2.0) == 1_563_385_321


def test_crossing_time_ceiling_does_not_depend_on_the_absolute_time():
    # 9.41 falling below 3 with a 1 h half-life: 3_600_000 * log2(9.41/3) = 5_937_236.0000376 ms
    # (50-digit decimals), so the crossing is 5_937_237 ms after the update, from 0 or from T0.
    assert crossing_time(9.41, 0, HOUR, 3.0) == 5_937_237
    # At 5_937_236 ms the score is still 3.0000000000217 >= 3: firing then would be 1 ms early.
    assert decay(9.41, T0, T0 + 5_937_236, HOUR) >= 3.0
    assert crossing_time(9.41, T0, HOUR, 3.0) == T0 + 5_937_237


def test_crossing_time_is_the_spec_formula_for_many_inputs():
    # last + ceil(half_life * log2(S/T)), as Python computes it: the compiled log2 and ceiling must
    # agree exactly, or a timer would fire a millisecond early or late.
    rng = random.Random(5)
    for _ in range(20_000):
        value = rng.choice((rng.uniform(0.001, 1e6), float(rng.randint(1, 1000))))
        threshold = rng.choice((rng.uniform(0.001, value), float(rng.randint(1, max(1, int(value))))))
        if threshold > value:
            continue
        half_life = float(rng.choice((1000, HOUR, WEEK, rng.randint(1, 10**10))))
        last = rng.choice((0, T0))
        expected = last + math.ceil(half_life * math.log2(value / threshold))
        assert crossing_time(value, last, half_life, threshold) == expected, (value, last, half_life, threshold)


# -- ScoreColumns -----------------------------------------------------------------------


class _Scores:
    """The contact clock, the score columns and the compiled functions over them, as the shard kernel uses them."""

    def __init__(self, n_scores: int = 2, capacity: int = 4) -> None:
        self.columns = Columns(capacity)
        self.columns.add("clock", np.int64, NEVER)
        self.scores = ScoreColumns(self.columns, n_scores)

    def advance(self, slot: int, now_ms: int) -> None:
        """The contact's clock moves to `now_ms` if that is later, as the shard kernel moves it."""
        clock = self.columns.arrays["clock"]
        before = int(clock[slot])
        if now_ms > before:
            clock[slot] = now_ms
            if before != NEVER:
                self.scores.make_room()
                scores.age(self.columns.arrays["score_age"], self.scores.arrays(), slot, before, now_ms)

    def value_at(self, slot: int, score: int, now_ms: int, half_life_ms: float) -> float:
        a = self.columns.arrays
        return scores.value_at(a["score_value"], a["score_age"], self.scores.arrays(), a["clock"], slot, score, now_ms,
                               float(half_life_ms), TWO)

    def update(self, slot: int, score: int, now_ms: int, half_life_ms: float, add: float, lo: float,
               hi: float) -> tuple[float, float]:
        """The update of an event at `now_ms`: the contact's clock moves there first (if it is later)."""
        self.advance(slot, now_ms)
        a = self.columns.arrays
        return scores.update(a["score_value"], a["score_age"], self.scores.arrays(), a["clock"], slot, score,
                             float(half_life_ms), add, lo, hi, TWO)

    def last_update(self, slot: int, score: int) -> tuple[float, int]:
        return float(self.columns.arrays["score_value"][slot, score]), int(self.scores.lasts(slot + 1)[slot, score])


def test_score_columns_shape_and_fill():
    cols = Columns(4)
    ScoreColumns(cols, 3)
    v, age = cols.arrays["score_value"], cols.arrays["score_age"]
    assert (v.shape, v.dtype, age.shape, age.dtype) == ((4, 3), np.float64, (4, 3), np.uint32)
    assert (v == 0.0).all() and (age == AGE_NEVER).all()
    assert NEVER == np.iinfo(np.int64).min
    # A rule set without scores still gets one (unused) column, so the kernels' arrays are 2-d.
    cols = Columns(4)
    ScoreColumns(cols, 0)
    assert cols.arrays["score_value"].shape == (4, 1)


def test_a_score_starts_at_zero():
    sc = _Scores()
    assert sc.value_at(0, 0, T0, HOUR) == 0.0
    assert sc.last_update(0, 0) == (0.0, NEVER)


def test_update_returns_before_decayed_to_now_and_after():
    sc = _Scores()
    # First update: 0 before, 0 + 8 after.
    assert sc.update(0, 0, T0, HOUR, 8.0, -INF, INF) == (0.0, 8.0)
    assert sc.last_update(0, 0) == (8.0, T0)
    # One half-life later: before = 8 * 2^-1 = 4, after = 4 + 1 = 5.
    assert sc.update(0, 0, T0 + HOUR, HOUR, 1.0, -INF, INF) == (4.0, 5.0)
    assert sc.last_update(0, 0) == (5.0, T0 + HOUR)
    # Two half-lives after that: 5 / 4 = 1.25 (value_at does not store anything).
    assert sc.value_at(0, 0, T0 + 3 * HOUR, HOUR) == 1.25
    assert sc.last_update(0, 0) == (5.0, T0 + HOUR)


def test_update_with_zero_add_restarts_decay_from_now():
    sc = _Scores()
    sc.update(0, 0, 0, HOUR, 8.0, -INF, INF)
    # An update adding 0 one half-life later stores 4 at time HOUR; one more half-life: 2.
    assert sc.update(0, 0, HOUR, HOUR, 0.0, -INF, INF) == (4.0, 4.0)
    assert sc.last_update(0, 0) == (4.0, HOUR)
    assert sc.value_at(0, 0, 2 * HOUR, HOUR) == 2.0


def test_update_clamps_the_result_but_not_before():
    sc = _Scores()
    # max 10: 8 + 5 = 13 -> 10; before is the unclamped decayed 8.
    sc.update(0, 0, 0, HOUR, 8.0, 0.0, 10.0)
    assert sc.update(0, 0, 0, HOUR, 5.0, 0.0, 10.0) == (8.0, 10.0)
    # min 0: 10 * 2^-1 = 5, 5 - 7 = -2 -> 0.
    assert sc.update(0, 0, HOUR, HOUR, -7.0, 0.0, 10.0) == (5.0, 0.0)
    assert sc.last_update(0, 0) == (0.0, HOUR)


def test_update_saturates_instead_of_overflowing():
    sc = _Scores()
    # Absurd points: 1e308 + 1e308 overflows to inf; the score saturates at the largest double.
    sc.update(0, 0, T0, HOUR, 1e308, -INF, INF)
    assert sc.update(0, 0, T0, HOUR, 1e308, -INF, INF) == (1e308, 1.7976931348623157e308)
    assert sc.update(1, 0, T0, HOUR, -1e308, -INF, INF) == (0.0, -1e308)
    assert sc.update(1, 0, T0, HOUR, -1e308, -INF, INF) == (-1e308, -1.7976931348623157e308)


def test_scores_and_contacts_are_independent():
    sc = _Scores(n_scores=2)
    sc.update(0, 0, 0, HOUR, 8.0, -INF, INF)
    sc.update(1, 1, 0, HOUR, 3.0, -INF, INF)
    assert sc.value_at(0, 1, 0, HOUR) == 0.0
    assert sc.value_at(1, 0, 0, HOUR) == 0.0
    assert sc.value_at(0, 0, HOUR, HOUR) == 4.0
    # Each score decays with the half-life it is asked with: 3 * 2^(-1h/2h) = 3 / sqrt(2).
    assert math.isclose(sc.value_at(1, 1, HOUR, 2.0 * HOUR), 3 / math.sqrt(2), rel_tol=1e-15)


def test_an_age_is_the_time_behind_the_contacts_clock():
    sc = _Scores()
    sc.update(0, 0, T0, HOUR, 8.0, -INF, INF)
    ages = sc.columns.arrays["score_age"]
    assert ages[0].tolist() == [0, AGE_NEVER]
    # Another event 5 s later that updates only score 1: score 0's age is 5000 ms, its time still T0.
    sc.update(0, 1, T0 + 5000, HOUR, 2.0, -INF, INF)
    assert ages[0].tolist() == [5000, 0]
    assert sc.last_update(0, 0) == (8.0, T0)
    assert sc.last_update(0, 1) == (2.0, T0 + 5000)
    # An earlier time does not move the clock back (the shard applies late events at the clock).
    sc.advance(0, T0)
    assert (int(sc.columns.arrays["clock"][0]), ages[0].tolist()) == (T0 + 5000, [5000, 0])
    # Half an hour on: 8 * 2^(-1805 s / 1 h) from T0, exactly as from the stored time.
    sc.advance(0, T0 + 1_805_000)
    assert ages[0].tolist() == [1_805_000, 1_800_000]
    assert sc.value_at(0, 0, T0 + HOUR, HOUR) == 4.0
    assert sc.value_at(0, 1, T0 + 5000 + HOUR, HOUR) == 1.0


def test_an_age_beyond_a_uint32_moves_the_exact_time_into_the_far_table():
    sc = _Scores()
    ages = sc.columns.arrays["score_age"]
    sc.update(0, 0, T0, WEEK, 12.0, -INF, INF)
    sc.update(0, 1, T0, WEEK, 3.0, -INF, INF)
    # 2^32 - 3 ms (49.7 days) behind the clock is the oldest age there is.
    sc.update(0, 1, T0 + 0xFFFFFFFD, WEEK, 1.0, -INF, INF)
    assert ages[0].tolist() == [0xFFFFFFFD, 0]
    assert len(sc.scores.far) == 0
    # One more millisecond and score 0's time goes to the far table, under key slot x 2 + 0.
    sc.advance(0, T0 + 0xFFFFFFFE)
    assert ages[0].tolist() == [AGE_FAR, 1]
    assert sc.scores.far.items()[0].tolist() == [0] and sc.scores.far.get(0, NEVER) == T0
    assert sc.last_update(0, 0) == (12.0, T0)
    # Its value is decayed from T0 exactly: 12 * 2^(-(2^32 - 2 + 4 weeks) / 1 week).
    later = T0 + 0xFFFFFFFE + 4 * WEEK
    assert sc.value_at(0, 0, later, WEEK) == 12.0 * 2.0 ** (-(0xFFFFFFFE + 4 * WEEK) / WEEK)
    # The clock moving on leaves a far time alone; an update makes the age 0 again.
    sc.advance(0, later)
    assert sc.last_update(0, 0) == (12.0, T0)
    before = 12.0 * 2.0 ** (-(0xFFFFFFFE + 4 * WEEK) / WEEK)
    assert sc.update(0, 0, later, WEEK, 5.0, -INF, INF) == (before, before + 5.0)
    assert ages[0, 0] == 0 and sc.last_update(0, 0) == (before + 5.0, later)
    # A second contact's far time is keyed by its own slot: 3 x 2 + 1.
    sc.update(3, 1, T0, WEEK, 6.0, -INF, INF)
    sc.advance(3, T0 + 60 * 86_400_000)
    assert sorted(sc.scores.far.items()[0].tolist()) == [0, 7]
    assert sc.last_update(3, 1) == (6.0, T0) and sc.last_update(3, 0) == (0.0, NEVER)


def test_times_round_trip_through_lasts_and_restore_lasts():
    sc = _Scores(n_scores=3, capacity=8)
    sc.update(0, 0, T0, HOUR, 1.0, -INF, INF)
    sc.update(0, 2, T0 + 7, HOUR, 2.0, -INF, INF)
    sc.update(1, 1, T0 - 90 * 86_400_000, HOUR, 3.0, -INF, INF)
    sc.update(1, 2, T0, HOUR, 4.0, -INF, INF)  # slot 1, score 1: 90 days back, far
    sc.advance(2, T0)  # a contact with a clock and no score
    lasts = sc.scores.lasts(4)
    assert lasts.tolist() == [[T0, NEVER, T0 + 7], [NEVER, T0 - 90 * 86_400_000, T0], [NEVER] * 3, [NEVER] * 3]
    restored = _Scores(n_scores=3, capacity=8)
    restored.columns.restore({"clock": sc.columns.arrays["clock"][:4]}, 4)
    restored.scores.restore_lasts(lasts, 4)
    assert restored.columns.arrays["score_age"][:4].tolist() == [[7, AGE_NEVER, 0], [AGE_NEVER, AGE_FAR, 0],
                                                                 [AGE_NEVER] * 3, [AGE_NEVER] * 3]
    assert restored.scores.far.items()[0].tolist() == [4] and restored.scores.far.get(4, NEVER) == T0 - 90 * 86_400_000
    assert (restored.scores.lasts(4) == lasts).all()


# -- the clamp applies once, after the sum of all matching points (through a shard) --------


CLAMP_RULES = """\
version: 1
scores:
  s:
    half_life: 1h
    min: 0
    max: 10
    points:
      - {event: Big, add: 15}
      - {event: Big, add: -10}
      - {event: Drop, add: -4}
      - {event: Drop, add: 6}
triggers:
  t:
    when: {score: s, rises_above: 100}
"""


def _track(state: ShardState, out: list, contact: str, name: str, t: int, watermark: int) -> None:
    """One track event through the shard, stamped with `watermark` as the source would stamp it."""
    state.process(event_batch([{"type": "track", "event": name, "userId": contact, "timestamp": t}], state.plan,
                              watermarks=[watermark]), out)


def test_clamp_applies_after_the_sum_of_points():
    plan = plan_of(CLAMP_RULES)
    state = ShardState(plan)
    out: list = []

    def send(contact: str, name: str, t: int, watermark: int) -> None:
        # Stamped as the source does (lateness 0): the largest time read before the event.
        _track(state, out, contact, name, t, watermark)

    def last_update(slot: int) -> tuple[float, int]:
        return float(state.columns.arrays["score_value"][slot, 0]), int(state.scores.lasts(slot + 1)[slot, 0])

    # Big: 0 + (15 - 10) = 5. Clamping after each entry would give min(15, 10) - 10 = 0.
    send("u", "Big", T0, NEVER)
    assert last_update(0) == (5.0, T0)
    # A second Big one half-life later: 5 * 2^-1 + 5 = 7.5.
    send("u", "Big", T0 + HOUR, T0)
    assert last_update(0) == (7.5, T0 + HOUR)
    # w starts at 0; Drop = clamp(0 + (-4 + 6)) = 2. Clamping after -4 alone would give 0 + 6 = 6.
    send("w", "Drop", T0, T0 + HOUR)
    assert last_update(1) == (2.0, T0)
    assert state.scores_at(0, T0 + 2 * HOUR) == {"s": 3.75}
    assert out == []


FAR_RULES = """\
version: 1
scores:
  recent:
    half_life: 1h
    points:
      - {event: Page Viewed, add: 1}
  loyal:
    half_life: 30d
    points:
      - {event: Order Completed, add: 10}
triggers:
  t:
    when: {score: loyal, rises_above: 100}
"""


def test_a_contact_back_after_sixty_days_keeps_its_old_score_exactly_through_a_snapshot():
    plan = plan_of(FAR_RULES)
    state = ShardState(plan)
    out: list = []
    day = 86_400_000

    def send(name: str, t: int) -> None:
        _track(state, out, "u", name, t, t)

    send("Order Completed", T0)
    send("Page Viewed", T0 + 60 * day)  # only `recent`: `loyal`'s time is 60 days back, in the far table
    assert state.columns.arrays["score_age"][0].tolist() == [0, AGE_FAR]
    assert state.scores.lasts(1).tolist() == [[T0 + 60 * day, T0]]
    # 10 * 2^(-60 d / 30 d) = 2.5, and 1 for `recent` just updated.
    assert state.scores_at(0, T0 + 60 * day) == {"recent": 1.0, "loyal": 2.5}
    snap = pickle.loads(pickle.dumps(state.snapshot()))
    assert snap["columns"]["score_last"].tolist() == [[T0 + 60 * day, T0]] and "score_age" not in snap["columns"]
    restored = ShardState.restore(plan, snap)
    assert restored.columns.arrays["score_age"][0].tolist() == [0, AGE_FAR]
    # 30 days on: `recent` 2^-720 (720 half-lives), `loyal` 10 * 2^-3.
    expected = {"recent": 2.0 ** -720, "loyal": 1.25}
    assert restored.scores_at(0, T0 + 90 * day) == state.scores_at(0, T0 + 90 * day) == expected
    # An order then: 1.25 + 10, its age 0 again, the far time no longer read; 30 days later 11.25 / 2.
    for shard in (state, restored):
        _track(shard, out, "u", "Order Completed", T0 + 90 * day, T0 + 90 * day)
        assert shard.scores.lasts(1).tolist() == [[T0 + 60 * day, T0 + 90 * day]]
        assert shard.scores_at(0, T0 + 120 * day)["loyal"] == 5.625
    assert out == []
