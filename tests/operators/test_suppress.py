"""operators/suppress.py: `unless`, `cooldown` and at-most-once per event time (SPEC §3 "Modifiers")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from engine.decode import EventBatch
from engine.testing import run_rules
from operators.contacts import Columns
from operators.shard import NEVER, ShardState
from operators.suppress import Suppression
from rules import load_rules
from rules.compiler import compile_rules

T0 = 1_795_442_400_000
HOUR = 3_600_000


def _supp(n_unless: int = 1, n_triggers: int = 2) -> Suppression:
    return Suppression(Columns(4), n_unless, n_triggers)


def test_nothing_seen_nothing_fired_is_not_suppressed():
    s = _supp()
    assert s.reason(0, 0, T0, 0, 1000, 5000) is None
    assert s.reason(0, 0, T0, -1, 0, 0) is None


def test_unless_window_is_half_open_t_minus_w_to_t():
    s = _supp()
    s.saw(0, 0, T0 + 1000)
    w = 500
    # (t - W, t] includes t itself: a matching event at the firing time suppresses it.
    assert s.reason(0, 0, T0 + 1000, 0, w, 0) == "unless"
    # t = seen + W - 1: seen is inside (t - 500, t].
    assert s.reason(0, 0, T0 + 1499, 0, w, 0) == "unless"
    # t = seen + W: seen = t - W is excluded.
    assert s.reason(0, 0, T0 + 1500, 0, w, 0) is None
    # A firing earlier than the matching event is not suppressed by it.
    assert s.reason(0, 0, T0 + 999, 0, w, 0) is None


def test_unless_only_for_its_column_and_contact():
    s = _supp(n_unless=2)
    s.saw(0, 1, T0)
    assert s.reason(0, 0, T0, 0, 1000, 0) is None  # other unless column
    assert s.reason(0, 0, T0, 1, 1000, 0) == "unless"
    assert s.reason(1, 0, T0, 1, 1000, 0) is None  # other contact
    assert s.reason(0, 0, T0, -1, 0, 0) is None  # the trigger has no `unless`


def test_unless_remembers_the_latest_matching_event():
    s = _supp()
    s.saw(0, 0, T0)
    s.saw(0, 0, T0 + 800)
    # W = 1500: the latest matching event (T0 + 800) decides, the earlier one (T0) is forgotten.
    assert s.reason(0, 0, T0 + 2000, 0, 1500, 0) == "unless"  # (T0+500, T0+2000] holds T0+800
    assert s.reason(0, 0, T0 + 2300, 0, 1500, 0) is None  # (T0+800, T0+2300] does not


def test_cooldown_is_open_interval_t_to_t_plus_w():
    s = _supp()
    s.fired(0, 0, T0)
    cd = 1000
    assert s.reason(0, 0, T0, -1, 0, cd) == "same_time"
    assert s.reason(0, 0, T0 + 1, -1, 0, cd) == "cooldown"
    assert s.reason(0, 0, T0 + 999, -1, 0, cd) == "cooldown"
    assert s.reason(0, 0, T0 + 1000, -1, 0, cd) is None  # t + W is outside (t, t + W)
    # Other triggers and contacts are not cooled down.
    assert s.reason(0, 1, T0 + 1, -1, 0, cd) is None
    assert s.reason(1, 0, T0 + 1, -1, 0, cd) is None


def test_without_cooldown_only_the_same_time_is_suppressed():
    s = _supp()
    s.fired(0, 0, T0)
    assert s.reason(0, 0, T0, -1, 0, 0) == "same_time"
    assert s.reason(0, 0, T0 + 1, -1, 0, 0) is None


def test_a_new_firing_moves_the_cooldown():
    s = _supp()
    s.fired(0, 0, T0)
    s.fired(0, 0, T0 + 1000)
    assert s.reason(0, 0, T0 + 1500, -1, 0, 1000) == "cooldown"  # (T0+1000, T0+2000)
    assert s.reason(0, 0, T0 + 2000, -1, 0, 1000) is None


def test_unless_is_reported_before_cooldown():
    s = _supp()
    s.saw(0, 0, T0)
    s.fired(0, 0, T0)
    assert s.reason(0, 0, T0, 0, 1000, 1000) == "unless"
    assert s.reason(0, 0, T0 + 1000, 0, 1000, 5000) == "cooldown"  # unless window has passed


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


def test_a_suppressed_firing_starts_no_cooldown_shard(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    state = ShardState(compile_rules(load_rules(path)))
    events = [{"type": "track", "event": n, "userId": "u", "timestamp": t} for n, t in PINGS]
    times = [t for _, t in PINGS]
    # Stamped as the source does (lateness 0): the largest time read before each event.
    marks = [NEVER, *np.maximum.accumulate(times)[:-1].tolist()]
    batch = EventBatch(events, ["u"] * len(PINGS), [n for n, _ in PINGS], np.array(times, dtype=np.int64),
                       [None] * len(PINGS), list(range(len(PINGS))), [orjson.dumps(e) for e in events],
                       watermarks=np.array(marks, dtype=np.int64))
    out: list = []
    state.process(batch, out)
    assert [o.rule for o in out] == ["ping", "ping"]
    assert [orjson.loads(o.line)["at"] for o in out] == [
        "2026-11-23T14:00:20.000Z", "2026-11-23T15:00:20.000Z"]
    assert dict(state.suppressed) == {"ping:unless": 1, "ping:cooldown": 1}
    assert dict(state.fired) == {"ping": 2}


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
