"""operators/scores.py: decay, crossing times and the score columns (SPEC §3 "Scores")."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson

from engine.decode import EventBatch
from operators.contacts import Columns
from operators.scores import NEVER, ScoreColumns, crossing_time, decay
from operators.shard import ShardState
from rules import load_rules
from rules.compiler import compile_rules

HOUR = 3_600_000
WEEK = 7 * 86_400_000
T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z


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


# -- ScoreColumns -----------------------------------------------------------------------


def _scores(n_scores: int = 2, capacity: int = 4) -> ScoreColumns:
    return ScoreColumns(Columns(capacity), n_scores)


def test_a_score_starts_at_zero():
    sc = _scores()
    assert sc.value_at(0, 0, T0, HOUR) == 0.0
    assert sc.last_update(0, 0) == (0.0, NEVER)


def test_update_returns_before_decayed_to_now_and_after():
    sc = _scores()
    # First update: 0 before, 0 + 8 after.
    assert sc.update(0, 0, T0, HOUR, 8.0, -math.inf, math.inf) == (0.0, 8.0)
    assert sc.last_update(0, 0) == (8.0, T0)
    # One half-life later: before = 8 * 2^-1 = 4, after = 4 + 1 = 5.
    assert sc.update(0, 0, T0 + HOUR, HOUR, 1.0, -math.inf, math.inf) == (4.0, 5.0)
    assert sc.last_update(0, 0) == (5.0, T0 + HOUR)
    # Two half-lives after that: 5 / 4 = 1.25 (value_at does not store anything).
    assert sc.value_at(0, 0, T0 + 3 * HOUR, HOUR) == 1.25
    assert sc.last_update(0, 0) == (5.0, T0 + HOUR)


def test_update_with_zero_add_restarts_decay_from_now():
    sc = _scores()
    sc.update(0, 0, 0, HOUR, 8.0, -math.inf, math.inf)
    # An update adding 0 one half-life later stores 4 at time HOUR; one more half-life: 2.
    assert sc.update(0, 0, HOUR, HOUR, 0.0, -math.inf, math.inf) == (4.0, 4.0)
    assert sc.value_at(0, 0, 2 * HOUR, HOUR) == 2.0


def test_update_clamps_the_result_but_not_before():
    sc = _scores()
    # max 10: 8 + 5 = 13 -> 10; before is the unclamped decayed 8.
    sc.update(0, 0, 0, HOUR, 8.0, 0.0, 10.0)
    assert sc.update(0, 0, 0, HOUR, 5.0, 0.0, 10.0) == (8.0, 10.0)
    # min 0: 10 * 2^-1 = 5, 5 - 7 = -2 -> 0.
    assert sc.update(0, 0, HOUR, HOUR, -7.0, 0.0, 10.0) == (5.0, 0.0)


def test_scores_and_contacts_are_independent():
    sc = _scores(n_scores=2)
    sc.update(0, 0, 0, HOUR, 8.0, -math.inf, math.inf)
    sc.update(1, 1, 0, HOUR, 3.0, -math.inf, math.inf)
    assert sc.value_at(0, 1, 0, HOUR) == 0.0
    assert sc.value_at(1, 0, 0, HOUR) == 0.0
    assert sc.value_at(0, 0, HOUR, HOUR) == 4.0
    # Each score decays with the half-life it is asked with: 3 * 2^(-1h/2h) = 3 / sqrt(2).
    assert math.isclose(sc.value_at(1, 1, HOUR, 2.0 * HOUR), 3 / math.sqrt(2), rel_tol=1e-15)


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


def _batch(rows: list[tuple[str, str, int]], before: int) -> EventBatch:
    """Rows as the source sends them (lateness 0): each stamped with the largest time read before it."""
    events = [{"type": "track", "event": name, "userId": c, "timestamp": t} for c, name, t in rows]
    times = [t for _, _, t in rows]
    marks = [max([before, *times[:i]]) for i in range(len(rows))]
    return EventBatch(events, [c for c, _, _ in rows], [n for _, n, _ in rows],
                      np.array(times, dtype=np.int64), [None] * len(rows),
                      list(range(len(rows))), [orjson.dumps(e) for e in events], watermarks=np.array(marks, dtype=np.int64))


def test_clamp_applies_after_the_sum_of_points(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(CLAMP_RULES)
    state = ShardState(compile_rules(load_rules(path)))
    out: list = []
    # Big: 0 + (15 - 10) = 5. Clamping after each entry would give min(15, 10) - 10 = 0.
    state.process(_batch([("u", "Big", T0)], before=NEVER), out)
    assert state.scores.last_update(0, 0) == (5.0, T0)
    # A second Big one half-life later: 5 * 2^-1 + 5 = 7.5.
    state.process(_batch([("u", "Big", T0 + HOUR)], before=T0), out)
    assert state.scores.last_update(0, 0) == (7.5, T0 + HOUR)
    # w starts at 0; Drop = clamp(0 + (-4 + 6)) = 2. Clamping after -4 alone would give 0 + 6 = 6.
    state.process(_batch([("w", "Drop", T0)], before=T0 + HOUR), out)
    assert state.scores.last_update(1, 0) == (2.0, T0)
    assert out == []


def test_crossing_time_ceiling_does_not_depend_on_the_absolute_time():
    # 9.41 falling below 3 with a 1 h half-life: 3_600_000 * log2(9.41/3) = 5_937_236.0000376 ms
    # (50-digit decimals), so the crossing is 5_937_237 ms after the update, from 0 or from T0.
    assert crossing_time(9.41, 0, HOUR, 3.0) == 5_937_237
    # At 5_937_236 ms the score is still 3.0000000000217 >= 3: firing then would be 1 ms early.
    assert decay(9.41, T0, T0 + 5_937_236, HOUR) >= 3.0
    assert crossing_time(9.41, T0, HOUR, 3.0) == T0 + 5_937_237
