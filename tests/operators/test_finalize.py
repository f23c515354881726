"""operators/finalize.py: the end-of-input agreement (SPEC §3: at end of input, every pending timer
with deadline <= the largest event time in the whole input fires; later ones stay pending)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic

from engine.decode import EventBatch
from engine.records import EndOfInput, ReaderEnd, ShardEnd, TriggerOut
from engine.testing import run_rules
from engine.times import parse_time
from operators.finalize import EndOfInputLogic, summarize
from operators.shard import ShardState
from rules import load_rules
from rules.compiler import compile_rules

T0 = 1_795_442_400_000
MIN = 60_000


def _shard_end(max_time: int, pending: int, conditional: list, fired: dict | None = None,
               suppressed: dict | None = None, processed: int = 0, deduplicated: int = 0,
               contacts: int = 0) -> ShardEnd:
    return ShardEnd(max_time=max_time, processed=processed, deduplicated=deduplicated, pending=pending,
                    contacts=contacts, fired=fired or {}, suppressed=suppressed or {},
                    conditional=conditional)


def _reader_end(events_in: int = 0, dead: int = 0, reasons: dict | None = None, late: int = 0,
                max_time: int = 0) -> ReaderEnd:
    return ReaderEnd("input", events_in, dead, reasons or {}, late, max_time)


def test_summarize_fires_conditional_timers_up_to_the_largest_shard_time():
    a = _shard_end(
        max_time=1000, pending=4, processed=10, deduplicated=2, contacts=3,
        fired={"r": 2}, suppressed={"r:unless": 1},
        conditional=[
            (1500, "r", None, ["out-a1", "out-a2"]),  # 1500 <= 2000: fires, both outputs
            (2500, "r", None, ["out-late"]),  # 2500 > 2000: stays pending, nothing emitted
            (2000, "r", "cooldown", []),  # == 2000: happens, but suppressed
        ],
    )
    b = _shard_end(
        max_time=2000, pending=1, processed=5, deduplicated=1, contacts=2,
        fired={"r": 1, "q": 1},
        conditional=[],
    )
    c = _shard_end(max_time=1200, pending=1, processed=1, contacts=1,
                   conditional=[(2000, "q", None, ["out-c"])])  # == 2000: fires
    reader = _reader_end(events_in=20, dead=3, reasons={"not_json": 2, "bad_type": 1}, late=4, max_time=2600)
    summary, outputs = summarize([a, b, c], [reader])
    assert outputs == ["out-a1", "out-a2", "out-c"]
    assert summary == {
        "events_in": 20,
        "processed": 16,  # 10 + 5 + 1
        "deduplicated": 3,  # 2 + 1
        "dead_lettered": 3,
        "dead_letter_reasons": {"bad_type": 1, "not_json": 2},  # sorted by reason
        "late": 4,
        # r: 2 + 1 shard firings + 1 conditional; q: 1 + 1 conditional.
        "triggers": {"q": 2, "r": 4},
        "suppressed": {"r:cooldown": 1, "r:unless": 1},
        # 4 + 1 + 1 pending, minus the three conditional timers that happened (fired or suppressed).
        "pending_timers": 3,
        "contacts": 6,
        # The largest time among accepted events: the shards' maximum, not the reader's 2600
        # (which counts duplicates).
        "max_event_time": 2000,
    }


def test_summarize_sums_several_readers():
    summary, outputs = summarize(
        [_shard_end(max_time=5, pending=0, conditional=[])],
        [_reader_end(events_in=3, dead=1, reasons={"oversize": 1}, late=1),
         _reader_end(events_in=4, dead=2, reasons={"oversize": 1, "not_object": 1}, late=2)],
    )
    assert outputs == []
    assert (summary["events_in"], summary["dead_lettered"], summary["late"]) == (7, 3, 3)
    assert summary["dead_letter_reasons"] == {"not_object": 1, "oversize": 2}


def test_end_of_input_logic_waits_for_every_shard_and_reader_and_resumes():
    logic = EndOfInputLogic(shards=2, readers=1, resume=None)
    s1 = _shard_end(max_time=100, pending=1, conditional=[(150, "r", None, ["x"])], processed=1)
    s2 = _shard_end(max_time=200, pending=0, conditional=[], processed=2)
    assert logic.on_batch([s1]) == ([], StatefulBatchLogic.RETAIN)
    assert logic.on_batch([_reader_end(events_in=3)]) == ([], StatefulBatchLogic.RETAIN)
    # A crash here: the resumed step still has what it had received.
    resumed = EndOfInputLogic(shards=2, readers=1, resume=pickle.loads(pickle.dumps(logic.snapshot())))
    out, keep = resumed.on_batch([s2])
    assert keep == StatefulBatchLogic.DISCARD
    assert out[0] == "x"
    assert (out[1]["processed"], out[1]["pending_timers"], out[1]["triggers"]) == (3, 0, {"r": 1})
    assert len(out) == 2


# -- with real shards ------------------------------------------------------------------------------

RULES = """\
version: 1
triggers:
  cart:
    when: {first: {event: Added}, then_not: {event: Order}, within: 30m}
    actions: [{emit: email}]
"""


def _batch(rows: list[tuple[str, str, int]]) -> EventBatch:
    events = [{"type": "track", "event": name, "userId": c, "timestamp": t} for c, name, t in rows]
    return EventBatch(events, [c for c, _, _ in rows], [n for _, n, _ in rows],
                      np.array([t for _, _, t in rows], dtype=np.int64), [None] * len(rows),
                      list(range(len(rows))))


def _keys(out: list[Any]) -> list[tuple[str, str, int]]:
    recs = [orjson.loads(o.line) for o in out if isinstance(o, TriggerOut)]
    return [(r["rule"], r["contact"], parse_time(r["at"])) for r in recs]


def test_two_shards_agree_on_the_largest_time(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    plan = compile_rules(load_rules(path))
    s1, s2 = ShardState(plan), ShardState(plan)
    out: list[Any] = []
    # Shard 1: a at T0 (d = T0 + 30m), b at T0 + 20m (d = T0 + 50m); its largest time is T0 + 20m.
    s1.process(_batch([("a", "Added", T0), ("b", "Added", T0 + 20 * MIN)]), out)
    # Shard 2: c's events up to T0 + 40m, the largest time of the whole input.
    s2.process(_batch([("c", "Page", T0 + 40 * MIN)]), out)
    marker = EndOfInput(T0 + 40 * MIN)
    ends = [s1.end_of_input(marker, out), s2.end_of_input(marker, out)]
    assert out == []  # neither shard could fire a's timer alone
    summary, fired = summarize(ends, [])
    # a's deadline T0 + 30m <= T0 + 40m fires; b's T0 + 50m stays pending.
    assert _keys(fired) == [("cart", "a", T0 + 30 * MIN)]
    assert summary["pending_timers"] == 1
    assert summary["triggers"] == {"cart": 1}
    assert summary["max_event_time"] == T0 + 40 * MIN


def test_end_of_input_through_the_dataflow():
    events = [
        {"event": "Added", "userId": "a", "timestamp": T0},  # d = T0 + 30m: fires
        {"event": "Added", "userId": "b", "timestamp": T0 + 20 * MIN},  # d = T0 + 50m: pending
        {"event": "Added", "userId": "c", "timestamp": T0 + 10 * MIN},  # d = T0 + 40m = largest: fires
        {"event": "Page", "userId": "d", "timestamp": T0 + 40 * MIN},
    ]
    for shards in (1, 8):
        result = run_rules(RULES, events, shards=shards)
        assert result.keys == [
            ("cart", "a", "2026-11-23T14:30:00.000Z", "email"),
            ("cart", "c", "2026-11-23T14:40:00.000Z", "email"),
        ], shards
        assert result.summary["pending_timers"] == 1
        assert result.summary["triggers"] == {"cart": 2}
        assert result.summary["processed"] == 4
