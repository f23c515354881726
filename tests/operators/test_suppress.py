"""operators/suppress.py: `unless`, `cooldown` and at-most-once per event time (SPEC §3 "Modifiers")."""

from __future__ import annotations

import numpy as np
import orjson

from engine.records import each_record
from engine.testing import event_batch, plan_of, run_rules
from operators import suppress
from operators.contacts import Columns
from operators.shard import NEVER, ShardState
from operators.suppress import COOLDOWN, NOT_SUPPRESSED, REASONS, SAME_TIME, UNLESS, Suppression

T0 = 1_795_442_400_000
HOUR = 3_600_000


class _Supp:
    """The suppression columns and the compiled `reason`; `saw`/`fired` record as the shard kernel does."""

    def __init__(self, n_unless: int = 1, n_triggers: int = 2) -> None:
        self.columns = Columns(4)
        Suppression(self.columns, n_unless, n_triggers)

    def saw(self, slot: int, unless: int, now_ms: int) -> None:
        self.columns.arrays["unless_seen"][slot, unless] = now_ms

    def fired(self, slot: int, trigger: int, at_ms: int) -> None:
        self.columns.arrays["last_fired"][slot, trigger] = at_ms

    def reason(self, slot: int, trigger: int, at_ms: int, unless: int, unless_within_ms: int, cooldown_ms: int) -> int:
        a = self.columns.arrays
        return suppress.reason(a["unless_seen"], a["last_fired"], slot, trigger, at_ms, unless, unless_within_ms,
                               cooldown_ms)


def _supp(n_unless: int = 1, n_triggers: int = 2) -> _Supp:
    return _Supp(n_unless, n_triggers)


def test_reason_codes_and_names():
    assert (NOT_SUPPRESSED, UNLESS, COOLDOWN, SAME_TIME) == (0, 1, 2, 3)
    assert [REASONS[c - 1] for c in (UNLESS, COOLDOWN, SAME_TIME)] == ["unless", "cooldown", "same_time"]


def test_columns_start_as_never_seen_and_never_fired():
    cols = Columns(4)
    Suppression(cols, 3, 2)
    seen, last = cols.arrays["unless_seen"], cols.arrays["last_fired"]
    assert (seen.shape, seen.dtype, last.shape, last.dtype) == ((4, 3), np.int64, (4, 2), np.int64)
    assert (seen == NEVER).all() and (last == NEVER).all()
    # No `unless` matchers: one unused column, so the kernel's array stays 2-d.
    cols = Columns(4)
    Suppression(cols, 0, 1)
    assert cols.arrays["unless_seen"].shape == (4, 1)


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
    assert (s.columns.arrays["last_fired"] == NEVER).all()
    assert (s.columns.arrays["unless_seen"] == NEVER).all()


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
    assert int(state.columns.arrays["unless_seen"][0, 0]) == T0
    assert int(state.columns.arrays["last_fired"][0, 0]) == T0 + 20_000 + HOUR


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
