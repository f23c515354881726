"""operators/suppress.py: `unless`, `cooldown` and at-most-once per event time (SPEC §3 "Modifiers")."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from engine.records import each_record
from engine.testing import event_batch, plan_of, run_rules
from operators import suppress
from operators.shard import NEVER, ShardState
from operators.sparse import MIN_CAPACITY
from operators.suppress import COOLDOWN, NOT_SUPPRESSED, REASONS, SAME_TIME, UNLESS, SuppressionTimes

T0 = 1_795_442_400_000
HOUR = 3_600_000


class _Supp:
    """The suppression times and the compiled `reason`; `saw`/`fired` record as the shard kernel does."""

    def __init__(self, n_unless: int = 1, n_triggers: int = 2) -> None:
        self.times = SuppressionTimes(n_unless, n_triggers)

    def saw(self, slot: int, unless: int, now_ms: int) -> None:
        self.times.make_room(1)
        suppress.saw(self.times.arrays(), slot, unless, now_ms)

    def fired(self, slot: int, trigger: int, at_ms: int) -> None:
        self.times.make_room(1)
        suppress.fired(self.times.arrays(), slot, trigger, at_ms)

    def reason(self, slot: int, trigger: int, at_ms: int, unless: int, unless_within_ms: int, cooldown_ms: int) -> int:
        return suppress.reason(self.times.arrays(), slot, trigger, at_ms, unless, unless_within_ms, cooldown_ms)


def _supp(n_unless: int = 1, n_triggers: int = 2) -> _Supp:
    return _Supp(n_unless, n_triggers)


def test_reason_codes_and_names():
    assert (NOT_SUPPRESSED, UNLESS, COOLDOWN, SAME_TIME) == (0, 1, 2, 3)
    assert [REASONS[c - 1] for c in (UNLESS, COOLDOWN, SAME_TIME)] == ["unless", "cooldown", "same_time"]


def test_times_start_as_never_seen_and_never_fired():
    times = SuppressionTimes(3, 2)
    assert len(times) == 0 and len(times.table.keys) == MIN_CAPACITY
    assert [times.unless_seen(s, u) for s in (0, 7) for u in range(3)] == [NEVER] * 6
    assert [times.last_fired(s, t) for s in (0, 7) for t in range(2)] == [NEVER] * 4


def test_times_are_keyed_by_contact_and_column_and_survive_growth():
    # 2 unless matchers and 3 triggers: slot s's columns are keys 5s .. 5s + 4 (unless first).
    s = _supp(n_unless=2, n_triggers=3)
    for slot in range(1000):
        s.saw(slot, slot % 2, T0 + slot)
        s.fired(slot, slot % 3, T0 + 10 * slot)
    s.saw(3, 1, T0 + 5)  # set again: replaced, not added
    assert len(s.times) == 2000
    assert len(s.times.table.keys) == 4096  # doubled from 64 while staying at most 3/4 full
    for slot in (0, 1, 2, 3, 500, 999):
        assert s.times.unless_seen(slot, slot % 2) == (T0 + 5 if slot == 3 else T0 + slot)
        assert s.times.unless_seen(slot, 1 - slot % 2) == NEVER
        assert [s.times.last_fired(slot, t) for t in range(3)] == [
            T0 + 10 * slot if t == slot % 3 else NEVER for t in range(3)]
    snap = s.times.snapshot()
    assert snap["keys"].tolist() == sorted({5 * slot + slot % 2 for slot in range(1000)}
                                           | {5 * slot + 2 + slot % 3 for slot in range(1000)})
    restored = SuppressionTimes(2, 3)
    restored.restore(snap)
    assert len(restored) == 2000
    assert [restored.last_fired(slot, slot % 3) for slot in range(1000)] == [T0 + 10 * slot for slot in range(1000)]
    assert restored.unless_seen(3, 1) == T0 + 5


def test_times_are_converted_from_the_dense_columns_of_format_5():
    # Format 5 kept a column per unless matcher (one even with none) and per trigger, NEVER where unset.
    seen = np.full((3, 1), NEVER, np.int64)
    last = np.full((3, 2), NEVER, np.int64)
    seen[2, 0] = T0
    last[0, 1], last[2, 0] = T0 + 1, T0 + 2
    snap = SuppressionTimes.from_columns(seen, last, 1, 2)
    assert (snap["keys"].tolist(), snap["values"].tolist()) == ([2, 6, 7], [T0 + 1, T0, T0 + 2])
    times = SuppressionTimes(1, 2)
    times.restore(snap)
    assert (times.last_fired(0, 1), times.unless_seen(2, 0), times.last_fired(2, 0), times.last_fired(1, 0)) == (
        T0 + 1, T0, T0 + 2, NEVER)
    # Without unless matchers the dummy column is dropped.
    snap = SuppressionTimes.from_columns(seen, last, 0, 2)
    assert (snap["keys"].tolist(), snap["width"]) == ([1, 4], 2)
    with pytest.raises(ValueError, match="0 unless matchers and width 2, the rules have 1 and 3"):
        SuppressionTimes(1, 2).restore(snap)


def test_nothing_seen_nothing_fired_is_not_suppressed():
    s = _supp()
    assert s.reason(0, 0, T0, 0, 1000, 5000) == NOT_SUPPRESSED
    assert s.reason(0, 0, T0, -1, 0, 0) == NOT_SUPPRESSED


def test_unless_window_is_half_open_t_minus_w_to_t():
    s = _supp()
    s.saw(0, 0, T0 + 1000)
    w = 500
    # (t - W, t] includes t itself: a matching event at the firing time suppresses it.
    assert s.reason(0, 0, T0 + 1000, 0, w, 0) == UNLESS
    # t = seen + W - 1: seen is inside (t - 500, t].
    assert s.reason(0, 0, T0 + 1499, 0, w, 0) == UNLESS
    # t = seen + W: seen = t - W is excluded.
    assert s.reason(0, 0, T0 + 1500, 0, w, 0) == NOT_SUPPRESSED
    # A firing earlier than the matching event is not suppressed by it.
    assert s.reason(0, 0, T0 + 999, 0, w, 0) == NOT_SUPPRESSED


def test_unless_only_for_its_column_and_contact():
    s = _supp(n_unless=2)
    s.saw(0, 1, T0)
    assert s.reason(0, 0, T0, 0, 1000, 0) == NOT_SUPPRESSED  # other unless column
    assert s.reason(0, 0, T0, 1, 1000, 0) == UNLESS
    assert s.reason(1, 0, T0, 1, 1000, 0) == NOT_SUPPRESSED  # other contact
    assert s.reason(0, 0, T0, -1, 0, 0) == NOT_SUPPRESSED  # the trigger has no `unless`


def test_unless_remembers_the_latest_matching_event():
    s = _supp()
    s.saw(0, 0, T0)
    s.saw(0, 0, T0 + 800)
    # W = 1500: the latest matching event (T0 + 800) decides, the earlier one (T0) is forgotten.
    assert s.reason(0, 0, T0 + 2000, 0, 1500, 0) == UNLESS  # (T0+500, T0+2000] holds T0+800
    assert s.reason(0, 0, T0 + 2300, 0, 1500, 0) == NOT_SUPPRESSED  # (T0+800, T0+2300] does not


def test_cooldown_is_open_interval_t_to_t_plus_w():
    s = _supp()
    s.fired(0, 0, T0)
    cd = 1000
    assert s.reason(0, 0, T0, -1, 0, cd) == SAME_TIME
    assert s.reason(0, 0, T0 + 1, -1, 0, cd) == COOLDOWN
    assert s.reason(0, 0, T0 + 999, -1, 0, cd) == COOLDOWN
    assert s.reason(0, 0, T0 + 1000, -1, 0, cd) == NOT_SUPPRESSED  # t + W is outside (t, t + W)
    # Other triggers and contacts are not cooled down.
    assert s.reason(0, 1, T0 + 1, -1, 0, cd) == NOT_SUPPRESSED
    assert s.reason(1, 0, T0 + 1, -1, 0, cd) == NOT_SUPPRESSED


def test_without_cooldown_only_the_same_time_is_suppressed():
    s = _supp()
    s.fired(0, 0, T0)
    assert s.reason(0, 0, T0, -1, 0, 0) == SAME_TIME
    assert s.reason(0, 0, T0 + 1, -1, 0, 0) == NOT_SUPPRESSED


def test_a_new_firing_moves_the_cooldown():
    s = _supp()
    s.fired(0, 0, T0)
    s.fired(0, 0, T0 + 1000)
    assert s.reason(0, 0, T0 + 1500, -1, 0, 1000) == COOLDOWN  # (T0+1000, T0+2000)
    assert s.reason(0, 0, T0 + 2000, -1, 0, 1000) == NOT_SUPPRESSED


def test_unless_is_reported_before_cooldown():
    s = _supp()
    s.saw(0, 0, T0)
    s.fired(0, 0, T0)
    assert s.reason(0, 0, T0, 0, 1000, 1000) == UNLESS
    assert s.reason(0, 0, T0 + 1000, 0, 1000, 5000) == COOLDOWN  # unless window has passed


def test_reason_records_nothing():
    s = _supp()
    # Asking (even for a firing that would not be suppressed) writes neither column: only a real
    # firing starts a cooldown.
    assert s.reason(0, 0, T0, 0, 1000, HOUR) == NOT_SUPPRESSED
    assert s.reason(0, 0, T0 + 1, 0, 1000, HOUR) == NOT_SUPPRESSED
    assert len(s.times) == 0


# -- through a shard and through the dataflow ---------------------------------------------


RULES = """\
version: 1
triggers:
  ping:
    when: {count: {event: Ping}, within: 1s, at_least: 1}
    unless: {event: Block, within: 10s}
    cooldown: 1h
    actions: [{emit: out}]
"""

# Block at T0; Ping at +5 s: suppressed by `unless` (T0 in (T0-5s, T0+5s]). Ping at +20 s fires:
# Block is outside (T0+10s, T0+20s], and the suppressed firing at +5 s started no cooldown (it
# would cover (T0+5s, T0+5s+1h)). Ping at +30 s: in cooldown (T0+20s, T0+20s+1h). Ping at
# +20s+1h: the cooldown's end is excluded, so it fires.
PINGS = [("Block", T0), ("Ping", T0 + 5_000), ("Ping", T0 + 20_000), ("Ping", T0 + 30_000),
         ("Ping", T0 + 20_000 + HOUR)]


def test_a_suppressed_firing_starts_no_cooldown_shard():
    plan = plan_of(RULES)
    state = ShardState(plan)
    events = [{"type": "track", "event": n, "userId": "u", "timestamp": t} for n, t in PINGS]
    times = [t for _, t in PINGS]
    # Stamped as the source does (lateness 0): the largest time read before each event.
    marks = [NEVER, *np.maximum.accumulate(times)[:-1].tolist()]
    out: list = []
    state.process(event_batch(events, plan, watermarks=marks), out)
    records = list(each_record(out))
    assert [o.rule for o in records] == ["ping", "ping"]
    assert [orjson.loads(o.line)["at"] for o in records] == [
        "2026-11-23T14:00:20.000Z", "2026-11-23T15:00:20.000Z"]
    assert state.suppressed() == {"ping:unless": 1, "ping:cooldown": 1}
    assert state.fired() == {"ping": 2}
    # What the kernel recorded: the Block's time as seen, the last (not suppressed) firing's time.
    assert state.suppression.unless_seen(0, 0) == T0
    assert state.suppression.last_fired(0, 0) == T0 + 20_000 + HOUR
    assert len(state.suppression) == 2


def test_a_suppressed_firing_starts_no_cooldown_dataflow():
    events = [{"type": "track", "event": n, "userId": "u", "timestamp": t} for n, t in PINGS]
    result = run_rules(RULES, events)
    # T0 = 2026-11-23T14:00:00Z.
    assert result.keys == [
        ("ping", "u", "2026-11-23T14:00:20.000Z", "out"),
        ("ping", "u", "2026-11-23T15:00:20.000Z", "out"),
    ]
    assert result.summary["suppressed"] == {"ping:cooldown": 1, "ping:unless": 1}


SAME_TIME_RULES = """\
version: 1
scores:
  s:
    half_life: 1h
    points:
      - {event: Up, add: 10}
      - {event: Down, add: -10}
triggers:
  up:
    when: {score: s, rises_above: 5}
    actions: [{emit: out}]
"""


def test_a_trigger_fires_at_most_once_per_contact_and_event_time():
    # Up (0 -> 10, fires), Down (10 -> 0), Up (0 -> 10: rises again) all at T0: the second rise
    # is at the same event time and is suppressed as "same_time"; the rise at T0 + 1 ms fires.
    events = [{"type": "track", "event": n, "userId": "u", "timestamp": t}
              for n, t in [("Up", T0), ("Down", T0), ("Up", T0), ("Down", T0 + 1), ("Up", T0 + 1)]]
    result = run_rules(SAME_TIME_RULES, events)
    assert result.keys == [
        ("up", "u", "2026-11-23T14:00:00.000Z", "out"),
        ("up", "u", "2026-11-23T14:00:00.001Z", "out"),
    ]
    assert result.summary["suppressed"] == {"up:same_time": 1}


UNLESS_THIS_EVENT_RULES = """\
version: 1
triggers:
  big_cart:
    when: {count: {event: Product Added}, within: 1h, at_least: 2}
    unless: {event: Product Added, where: {properties.coupon: {exists: true}}, within: 1m}
    actions: [{emit: out}]
"""


def test_unless_counts_the_firing_event_itself():
    # SPEC: "a matching event (this one included)". u's second add carries a coupon: it both
    # reaches the count and matches the `unless`, so its own firing is suppressed. v's does not.
    def add(contact: str, t: int, **props: str) -> dict:
        e: dict = {"type": "track", "event": "Product Added", "userId": contact, "timestamp": t}
        if props:
            e["properties"] = props
        return e

    events = [add("u", T0), add("u", T0 + 1000, coupon="C"), add("v", T0), add("v", T0 + 1000)]
    result = run_rules(UNLESS_THIS_EVENT_RULES, events)
    assert result.keys == [("big_cart", "v", "2026-11-23T14:00:01.000Z", "out")]
    assert result.summary["suppressed"] == {"big_cart:unless": 1}
