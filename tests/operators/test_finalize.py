"""operators/finalize.py: the end-of-input summary (SPEC §3: at end of input, every pending timer
with deadline <= the largest event time in the whole input fires; later ones stay pending).

The source sends `EndOfInput(largest accepted time)` to every shard, so each shard fires its own
timers; this step only gathers every shard's and reader's report into the run summary.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import orjson
import pytest
from bytewax.operators import StatefulBatchLogic

from engine.decode import EventBatch
from engine.records import EndOfInput, ReaderEnd, ShardEnd, TriggerOut, each_record
from engine.testing import event_batch, plan_of, run_rules
from engine.times import parse_time
from operators.finalize import EndOfInputLogic, summarize
from operators.shard import ShardState

T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
MIN = 60_000
NEVER = -(2**63)


def _shard_end(pending: int = 0, contacts: int = 0, fired: dict | None = None,
               suppressed: dict | None = None) -> ShardEnd:
    return ShardEnd(pending=pending, contacts=contacts, fired=fired or {}, suppressed=suppressed or {})


def _reader_end(events_in: int = 0, processed: int = 0, deduplicated: int = 0, dead: int = 0,
                reasons: dict | None = None, late: int = 0, max_time: int = NEVER, name: str = "input") -> ReaderEnd:
    return ReaderEnd(partition=name, events_in=events_in, processed=processed, deduplicated=deduplicated,
                     dead_lettered=dead, dead_letter_reasons=reasons or {}, late=late, max_time=max_time)


def test_summarize_sums_every_shard_and_reader():
    shards = [
        _shard_end(pending=4, contacts=3, fired={"r": 2}, suppressed={"r:unless": 1}),
        _shard_end(pending=1, contacts=2, fired={"r": 1, "q": 1}, suppressed={"r:unless": 2, "q:cooldown": 1}),
        _shard_end(),  # a shard that got no events
    ]
    readers = [
        _reader_end(events_in=20, processed=15, deduplicated=2, dead=3, reasons={"not_json": 2, "bad_type": 1},
                    late=4, max_time=T0 + 2000, name="a"),
        _reader_end(events_in=6, processed=4, deduplicated=1, dead=1, reasons={"not_json": 1}, late=1,
                    max_time=T0 + 9000, name="b"),
    ]
    assert summarize(shards, readers) == {
        "events_in": 26,
        "processed": 19,
        "deduplicated": 3,
        "dead_lettered": 4,
        "dead_letter_reasons": {"bad_type": 1, "not_json": 3},  # sorted by reason
        "late": 5,
        "triggers": {"q": 1, "r": 3},  # sorted by rule
        "suppressed": {"q:cooldown": 1, "r:unless": 3},
        "pending_timers": 5,
        "contacts": 5,
        "max_event_time": T0 + 9000,  # the largest accepted time of every reader
    }
    # The counters add up as the SPEC says: events_in = processed + deduplicated + dead-lettered.
    s = summarize(shards, readers)
    assert s["events_in"] == s["processed"] + s["deduplicated"] + s["dead_lettered"]


def test_max_event_time_is_none_without_a_valid_event():
    only_dead = summarize([_shard_end()], [_reader_end(events_in=2, dead=2, reasons={"not_json": 2})])
    assert only_dead["max_event_time"] is None
    assert (only_dead["events_in"], only_dead["dead_lettered"], only_dead["processed"]) == (2, 2, 0)
    assert summarize([], []) == {
        "events_in": 0, "processed": 0, "deduplicated": 0, "dead_lettered": 0, "dead_letter_reasons": {},
        "late": 0, "triggers": {}, "suppressed": {}, "pending_timers": 0, "contacts": 0, "max_event_time": None,
    }
    # A reader without events does not hide another's largest time; a negative time (before 1970) is a time.
    assert summarize([], [_reader_end(), _reader_end(max_time=-5)])["max_event_time"] == -5


def test_end_of_input_logic_waits_for_every_shard_and_reader_and_resumes():
    s1 = _shard_end(pending=1, contacts=1, fired={"r": 1})
    s2 = _shard_end(pending=2, contacts=4, fired={"r": 2, "q": 1})
    reader = _reader_end(events_in=9, processed=8, deduplicated=1, max_time=T0)
    expected = summarize([s1, s2], [reader])
    assert (expected["pending_timers"], expected["contacts"], expected["triggers"]) == (3, 5, {"q": 1, "r": 3})

    logic = EndOfInputLogic(shards=2, readers=1, resume=None)
    assert logic.on_batch([s1]) == ([], StatefulBatchLogic.RETAIN)
    assert logic.on_batch([]) == ([], StatefulBatchLogic.RETAIN)
    assert logic.on_batch([reader]) == ([], StatefulBatchLogic.RETAIN)  # one shard still missing
    # A crash here: the resumed step still has what it had received.
    snap = logic.snapshot()
    resumed = EndOfInputLogic(shards=2, readers=1, resume=pickle.loads(pickle.dumps(snap)))
    assert resumed.on_batch([s2]) == ([expected], StatefulBatchLogic.DISCARD)
    # The live step, fed the same, gives the same; its snapshot taken before was not changed.
    assert logic.on_batch([s2]) == ([expected], StatefulBatchLogic.DISCARD)
    assert snap == ([s1], [reader])


def test_end_of_input_logic_waits_for_the_readers_too():
    logic = EndOfInputLogic(shards=1, readers=2, resume=None)
    r1 = _reader_end(events_in=1, processed=1, max_time=T0, name="a")
    r2 = _reader_end(events_in=2, processed=2, max_time=T0 + 5, name="b")
    shard = _shard_end(contacts=2)
    assert logic.on_batch([shard, r1]) == ([], StatefulBatchLogic.RETAIN)
    out, keep = logic.on_batch([r2])
    assert keep == StatefulBatchLogic.DISCARD
    assert out == [summarize([shard], [r1, r2])]
    assert (out[0]["events_in"], out[0]["max_event_time"]) == (3, T0 + 5)


# -- with real shards ------------------------------------------------------------------------------

RULES = """\
version: 1
triggers:
  cart:
    when: {first: {event: Added}, then_not: {event: Order}, within: 30m}
    actions: [{emit: email}]
"""


def _keys(out: list[Any]) -> list[tuple[str, str, int]]:
    recs = [orjson.loads(o.line) for o in each_record(out) if isinstance(o, TriggerOut)]
    return [(r["rule"], r["contact"], parse_time(r["at"])) for r in recs]


def test_every_shard_fires_up_to_the_inputs_largest_time():
    plan = plan_of(RULES)
    # One input, read in this order, stamped as the source does (lateness 0), split over two shards.
    rows = [("a", "Added", T0), ("c", "Added", T0 + 10 * MIN), ("b", "Added", T0 + 20 * MIN),
            ("d", "Page", T0 + 40 * MIN)]
    events = [{"type": "track", "event": n, "userId": c, "timestamp": t} for c, n, t in rows]
    read = event_batch(events, plan, watermarks=[NEVER, T0, T0 + 10 * MIN, T0 + 20 * MIN])

    def part(idx: list[int], shard: int) -> EventBatch:
        """The events at `idx`, as routing hands them to `shard`."""
        sub = read.take(np.array(idx))
        sub.shard = shard
        return sub

    s1, s2 = ShardState(plan), ShardState(plan)
    out: list[Any] = []
    s1.process(part([0, 2], 0), out)  # a (d = T0 + 30m), b (d = T0 + 50m)
    s2.process(part([1, 3], 1), out)  # c (d = T0 + 40m), d (no timer)
    assert out == []
    # Shard 1's own largest time is T0 + 20m; the marker carries the input's: T0 + 40m.
    marker = EndOfInput(T0 + 40 * MIN)
    out1: list[Any] = []
    out2: list[Any] = []
    ends = [s1.end_of_input(marker, out1), s2.end_of_input(marker, out2)]
    assert _keys(out1) == [("cart", "a", T0 + 30 * MIN)]  # b's T0 + 50m stays pending
    assert _keys(out2) == [("cart", "c", T0 + 40 * MIN)]  # == the largest time: fires
    assert ends == [ShardEnd(pending=1, contacts=2, fired={"cart": 1}, suppressed={}),
                    ShardEnd(pending=0, contacts=2, fired={"cart": 1}, suppressed={})]
    summary = summarize(ends, [_reader_end(events_in=4, processed=4, max_time=T0 + 40 * MIN)])
    assert (summary["triggers"], summary["pending_timers"], summary["contacts"], summary["max_event_time"]) == (
        {"cart": 2}, 1, 4, T0 + 40 * MIN)


@pytest.mark.parametrize("shards", [1, 8])
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_end_of_input_through_the_dataflow(batch_size, shards):
    events = [
        {"event": "Added", "userId": "a", "timestamp": T0},  # d = T0 + 30m: fires
        {"event": "Added", "userId": "b", "timestamp": T0 + 20 * MIN},  # d = T0 + 50m: pending
        {"event": "Added", "userId": "c", "timestamp": T0 + 10 * MIN},  # d = T0 + 40m = largest: fires
        {"event": "Page", "userId": "d", "timestamp": T0 + 40 * MIN},
        b"not json",
    ]
    result = run_rules(RULES, events, batch_size=batch_size, shards=shards)
    assert result.keys == [
        ("cart", "a", "2026-11-23T14:30:00.000Z", "email"),
        ("cart", "c", "2026-11-23T14:40:00.000Z", "email"),
    ]
    assert result.summary == {
        "events_in": 5, "processed": 4, "deduplicated": 0, "dead_lettered": 1,
        "dead_letter_reasons": {"not_json": 1}, "late": 1,  # c (T0 + 10m) was read after b (T0 + 20m)
        "triggers": {"cart": 2}, "suppressed": {}, "pending_timers": 1, "contacts": 4,
        "max_event_time": T0 + 40 * MIN,
    }


@pytest.mark.parametrize("shards", [1, 8])
def test_a_run_without_valid_events(shards):
    result = run_rules(RULES, [b"not json", {"event": "Added"}], shards=shards)
    assert result.keys == []
    s = result.summary
    assert (s["events_in"], s["processed"], s["dead_lettered"], s["max_event_time"], s["contacts"]) == (
        2, 0, 2, None, 0)
    empty = run_rules(RULES, [], shards=shards).summary
    assert (empty["events_in"], empty["max_event_time"], empty["pending_timers"]) == (0, None, 0)
