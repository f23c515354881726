"""operators/shard.py: the per-shard rule operator.

SPEC §3: per-contact clock, timers (path (a) by a later event of the contact, path (b) by the
input's watermark), cancellation at the deadline, end of input, and the generic contract:
snapshot -> pickle -> restore -> continue gives the same triggers as an uninterrupted run, for
any split point, any batch size and any shard count.

The shard receives de-duplicated, columnar EventBatches (engine/decode.py) stamped with the
watermark before each event (the source does that), decoded with the shard's own plan (the
matcher bit sets depend on it). Hand-built batches here are decoded by `engine.testing.event_batch`
and stamped by `Source`, written independently of engine/sources.py; the contract tests feed the
shards through the real source partition (decode, dedupe, stamp, route).
"""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest

from engine import metrics, summaries
from engine.decode import EventBatch, decode_lines
from engine.hashing import digests
from engine.records import (
    EndOfInput,
    ProfileOut,
    ProfileRecords,
    ReaderEnd,
    ShardEnd,
    TriggerOut,
    TriggerRecords,
    Watermark,
    each_record,
)
from engine.routing import shard_key, split_by_shard
from engine.shop import Shop, ShopConfig
from engine.snapshots import unpack
from engine.sources import DLQ_KEY, END_KEY, DecodingPartition, ReaderState, block_of
from engine.summaries import summary_json
from engine.testing import event_batch, plan_of, run_rules
from engine.times import parse_time
from operators import counts, timers
from operators.dedupe import Deduplicator
from operators.finalize import summarize
from operators.shard import NEVER, SNAPSHOT_VERSION, RecoveryFormatError, ShardLogic, ShardState
from operators.timers import BLOCK, DUE_MIN, FREE, NONE, TimerTable
from rules.compiler import Plan

T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
HOUR = 3_600_000
MIN = 60_000
CART_W = 1_800_000  # 30m

RULES = """\
version: 1
scores:
  heat:
    half_life: 1h
    points:
      - {event: Ping, add: 10}
      - {event: Cool, add: -8}
  views:
    half_life: 1h
    points:
      - {event: Page, add: 4}
triggers:
  cooled:
    when: {score: heat, falls_below: 3}
    actions: [{emit: out}]
  cart:
    when: {first: {event: Added}, then_not: {event: Order}, within: 30m}
    actions: [{emit: email}, {tag: carted}]
  burst:
    when: {count: {event: Page}, within: 1s, at_least: 2}
    actions: [{emit: out}]
"""


def _plan(text: str = RULES) -> Plan:
    return plan_of(text)


def ev(contact: str, name: str, t: int, mid: str | None = None, **props: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "track", "event": name, "userId": contact, "timestamp": t}
    if mid is not None:
        e["messageId"] = mid
    if props:
        e["properties"] = props
    return e


def batch(plan: Plan, *events: dict[str, Any], watermarks: list[int] | None = None) -> EventBatch:
    """The engine's columnar batch of `events`, decoded for `plan`, for shard 0."""
    b = event_batch(events, plan, watermarks=watermarks)
    b.shard = 0
    return b


class Source:
    """Stamps hand-built batches the way the source does (SPEC §3, replay mode).

    Each event carries the watermark just before it: the largest time read before it minus
    `lateness_ms`, or NEVER before the first event. The events are taken as accepted (no
    duplicates among them). Kept across calls, like a source partition's state. Batches are
    decoded for `plan`.
    """

    def __init__(self, plan: Plan, lateness_ms: int | None = None) -> None:
        self.plan = plan
        self.lateness_ms = plan.lateness_ms if lateness_ms is None else lateness_ms
        self.max_time = NEVER

    @property
    def watermark(self) -> int:
        """The watermark after everything read so far."""
        return NEVER if self.max_time == NEVER else self.max_time - self.lateness_ms

    def stamp(self, b: EventBatch) -> EventBatch:
        marks = []
        for t in b.times.tolist():
            marks.append(self.watermark)
            self.max_time = max(self.max_time, t)
        b.watermarks = np.array(marks, dtype=np.int64)
        return b

    def __call__(self, *events: dict[str, Any]) -> EventBatch:
        return self.stamp(batch(self.plan, *events))


def flat(out: Any) -> list[Any]:
    """A ShardLogic's output items with the per-batch groups (TriggerRecords, ProfileRecords) opened."""
    return list(each_record(out))


def records(out: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(o.line) for o in flat(out) if isinstance(o, TriggerOut)]


def keys(out: list[Any]) -> list[tuple[str, str, int, str]]:
    """(rule, contact, at in ms, channel) of the trigger records in `out`, in output order."""
    return [(r["rule"], r["contact"], parse_time(r["at"]), r["channel"]) for r in records(out)]


def timer_of(plan: Plan, name: str) -> int:
    return next(t.timer for t in plan.triggers if t.name == name)


def last_update(state: ShardState, slot: int, score: int) -> tuple[float, int]:
    """(stored value, time of the last update) of a contact's score."""
    return float(state.columns.arrays["score_value"][slot, score]), int(state.scores.lasts(slot + 1)[slot, score])


def slot_of(state: ShardState, contact: str) -> int:
    return state.index.ids().index(contact)


def test_the_helper_stamps_like_the_spec_says():
    read = Source(Plan.empty(), lateness_ms=1000)
    b1 = read(ev("a", "P", T0 + 5000), ev("b", "P", T0 + 2000), ev("a", "P", T0 + 9000))
    assert b1.watermarks.tolist() == [NEVER, T0 + 4000, T0 + 4000]
    assert (b1.contact_ids(), b1.times.tolist()) == (["a", "b", "a"], [T0 + 5000, T0 + 2000, T0 + 9000])
    b2 = read(ev("a", "P", T0))
    assert b2.watermarks.tolist() == [T0 + 8000]
    assert read.watermark == T0 + 8000


def test_a_batch_without_watermarks_is_refused():
    state = ShardState(_plan())
    with pytest.raises(AssertionError, match="watermarks"):
        state.process(batch(state.plan, ev("u", "Ping", T0)), [])


# -- falls_below -----------------------------------------------------------------------------

# Ping at T0: heat = 10; it falls below 3 at T0 + ceil(3_600_000 * log2(10/3)) = T0 + 6_253_077
# (3_600_000 * log2(10/3) = 6_253_076.139, 50-digit decimals).
COOLED_AT = T0 + 6_253_077


def test_falls_below_timer_fires_by_watermark_at_the_exact_ceiling():
    plan = _plan()
    state = ShardState(plan)
    out: list[Any] = []
    state.process(Source(state.plan)(ev("u", "Ping", T0, "m-1")), out)
    assert out == []
    assert state.watermark == NEVER  # the only stamp is the one before the first event
    assert state.timers.deadline(0, timer_of(plan, "cooled")) == COOLED_AT
    assert state.timers.pending() == 1
    # The watermark must pass the deadline (watermark > d).
    state.advance_watermark(COOLED_AT, out)
    assert out == []
    state.advance_watermark(COOLED_AT + 1, out)
    assert keys(out) == [("cooled", "u", COOLED_AT, "out")]
    rec = records(out)[0]
    assert rec["at"] == "2026-11-23T15:44:13.077Z"  # 6_253_077 ms = 1 h 44 min 13.077 s
    # The score at the firing time: 10 * 2^(-6253077/3600000) = 2.99999950266598... < 3.
    assert rec["scores"]["heat"] < 3.0
    assert math.isclose(rec["scores"]["heat"], 2.9999995026659816, rel_tol=1e-12)
    assert rec["event"]["messageId"] == "m-1"  # the last score update armed it
    assert state.timers.pending() == 0
    # It fired once: firing disarms.
    state.advance_watermark(COOLED_AT + 10 * HOUR, out)
    assert len(out) == 1


def test_falls_below_rearmed_by_a_later_update():
    plan = _plan()
    state = ShardState(plan)
    out: list[Any] = []
    # Ping at T0 (10), Ping at T0 + 1h: 10/2 + 10 = 15, below 3 after 3_600_000 * log2(5) =
    # 8_358_941.14 ms -> T0 + 1h + 8_358_942.
    state.process(Source(state.plan)(ev("u", "Ping", T0), ev("u", "Ping", T0 + HOUR)), out)
    rearmed = T0 + HOUR + 8_358_942
    assert state.timers.deadline(0, timer_of(plan, "cooled")) == rearmed
    state.advance_watermark(COOLED_AT + 1, out)
    assert out == []
    state.advance_watermark(rearmed + 1, out)
    assert keys(out) == [("cooled", "u", rearmed, "out")]


def test_falls_below_fires_at_an_event_that_leaves_the_score_below():
    plan = _plan()
    state = ShardState(plan)
    read = Source(state.plan)
    out: list[Any] = []
    # Ping at T0 (10, armed); Cool one half-life later: 5 - 8 = -3 < 3 -> fires at now, disarmed.
    state.process(read(ev("u", "Ping", T0), ev("u", "Cool", T0 + HOUR, "m-cool")), out)
    assert keys(out) == [("cooled", "u", T0 + HOUR, "out")]
    assert records(out)[0]["event"]["messageId"] == "m-cool"
    assert records(out)[0]["scores"]["heat"] == -3.0
    assert state.timers.pending() == 0
    state.advance_watermark(COOLED_AT + 10 * HOUR, out)
    assert len(out) == 1
    # Not armed (never >= 3 since): another Cool fires nothing.
    state.process(read(ev("u", "Cool", T0 + 2 * HOUR)), out)
    assert len(out) == 1


def test_falls_below_through_shard_logic_with_lateness():
    plan = _plan(RULES.replace("version: 1\n", "version: 1\nlateness: 1s\n"))
    logic = ShardLogic(plan, None)
    read = Source(plan, lateness_ms=1000)
    out, _ = logic.on_batch([read(ev("u", "Ping", T0))])
    assert list(out) == []
    # Another contact's event at d + 1 s; the source then broadcasts the watermark after it:
    # d + 1 s - 1 s = d, not past d.
    out, _ = logic.on_batch([read(ev("v", "Other", COOLED_AT + 1000)), Watermark(read.watermark)])
    assert read.watermark == COOLED_AT
    assert list(out) == []
    assert logic.state.watermark == COOLED_AT
    # ... at d + 1001 ms: watermark d + 1 > d, u's timer fires at d.
    out, _ = logic.on_batch([read(ev("v", "Other", COOLED_AT + 1001)), Watermark(read.watermark)])
    assert keys(list(out)) == [("cooled", "u", COOLED_AT, "out")]
    assert logic.state.watermark == COOLED_AT + 1


# -- sequences: path (a), cancellation at the deadline ------------------------------------------


def test_path_a_a_later_event_fires_the_timer_first_at_its_deadline():
    plan = _plan()
    state = ShardState(plan)
    read = Source(state.plan)
    out: list[Any] = []
    # Added (sku a) at T0, Added (sku b) at T0 + 1 min restarts the timer: d = T0 + 60_000 + 30 min.
    d = T0 + 60_000 + CART_W
    state.process(read(ev("u", "Added", T0, sku="a"), ev("u", "Added", T0 + 60_000, "m-b", sku="b")), out)
    assert state.timers.deadline(0, timer_of(plan, "cart")) == d
    # An event exactly at d does not fire it (effective time must be > d) ...
    state.process(read(ev("u", "Page", d)), out)
    assert out == []
    # ... one 1 ms later does, with `at` = d, before the event is applied.
    state.process(read(ev("u", "Ping", d + 1)), out)
    assert keys(out) == [("cart", "u", d, "email")]
    rec = records(out)[0]
    assert rec["event"]["messageId"] == "m-b"
    assert rec["event"]["properties"] == {"sku": "b"}  # the latest A's properties
    # The contact's state held exactly its events up to d: the Page at d (4 points), not the Ping
    # at d + 1 (10 points), which is applied right after.
    assert rec["scores"] == {"heat": 0.0, "views": 4.0}
    assert last_update(state, 0, 0) == (10.0, d + 1)
    # The profile change comes with it.
    profiles = [orjson.loads(o.line) for o in out if isinstance(o, ProfileOut)]
    assert [(p["rule"], p["action"], p["value"], parse_time(p["at"])) for p in profiles] == [
        ("cart", "tag", "carted", d)]
    # Fired and disarmed; the only pending timer is `cooled`, armed by the Ping.
    assert state.timers.deadline(0, timer_of(plan, "cart")) == NONE
    assert state.timers.pending() == 1


def test_a_cancelling_event_exactly_at_the_deadline_cancels():
    state = ShardState(_plan())
    out: list[Any] = []
    state.process(Source(state.plan)(ev("u", "Added", T0), ev("u", "Order", T0 + CART_W)), out)
    state.advance_watermark(T0 + 100 * HOUR, out)
    assert out == []
    assert state.timers.pending() == 0


def test_a_cancelling_event_one_ms_after_the_deadline_does_not_cancel():
    state = ShardState(_plan())
    out: list[Any] = []
    state.process(Source(state.plan)(ev("u", "Added", T0), ev("u", "Order", T0 + CART_W + 1)), out)
    assert keys(out) == [("cart", "u", T0 + CART_W, "email")]
    assert state.timers.pending() == 0


def test_timers_of_other_contacts_are_not_fired_by_an_event_time():
    state = ShardState(_plan())
    out: list[Any] = []
    # v's event is 10 h later, but the watermark before it is T0 (u's Added): path (a) is per
    # contact, so only a watermark past T0 + 30 min fires u's timer.
    state.process(Source(state.plan)(ev("u", "Added", T0), ev("v", "Page", T0 + 10 * HOUR)), out)
    assert out == []
    assert state.watermark == T0
    state.advance_watermark(T0 + CART_W, out)
    assert out == []
    state.advance_watermark(T0 + CART_W + 1, out)
    assert keys(out) == [("cart", "u", T0 + CART_W, "email")]


# -- path (b): the watermark stamped on each event, Watermark items ----------------------------------


def test_an_events_watermark_past_its_contacts_deadline_fires_the_timer_before_it_is_applied():
    plan = _plan()
    # u: Added at T0 (d = T0 + 30 min). Then u's Order stamped T0 + 1 min, read when the input's
    # watermark is already d + 1: the timer fires at d first, the Order finds nothing to cancel.
    state = ShardState(plan)
    out: list[Any] = []
    state.process(batch(state.plan, ev("u", "Added", T0, "m-a"), ev("u", "Order", T0 + MIN),
                        watermarks=[NEVER, T0 + CART_W + 1]), out)
    assert keys(out) == [("cart", "u", T0 + CART_W, "email")]
    assert records(out)[0]["event"]["messageId"] == "m-a"
    assert state.timers.pending() == 0
    assert state.watermark == T0 + CART_W + 1
    # The same with a watermark of exactly d (not past it): the Order cancels (its effective time
    # T0 + 1 min <= d), and nothing ever fires.
    state = ShardState(plan)
    out = []
    state.process(batch(state.plan, ev("u", "Added", T0), ev("u", "Order", T0 + MIN), watermarks=[NEVER, T0 + CART_W]), out)
    state.advance_watermark(T0 + 100 * HOUR, out)
    assert out == []
    assert state.timers.pending() == 0


def test_a_watermark_past_the_deadline_fires_before_the_contacts_state_changes():
    state = ShardState(_plan())
    out: list[Any] = []
    # u: Added at T0 then, stamped with a watermark past d, a late Page at T0 + 1 min. The firing at d
    # must see u's state up to d only: views = 0, not the Page's 4 points.
    state.process(batch(state.plan, ev("u", "Added", T0), ev("u", "Page", T0 + MIN), watermarks=[NEVER, T0 + 2 * HOUR]), out)
    assert keys(out) == [("cart", "u", T0 + CART_W, "email")]
    assert records(out)[0]["scores"] == {"heat": 0.0, "views": 0.0}
    assert last_update(state, 0, 1) == (4.0, T0 + MIN)


def test_watermark_items_fire_every_contacts_timers_and_never_go_back():
    logic = ShardLogic(_plan(), None)
    read = Source(logic.state.plan)
    # u, v, w arm carts at T0, T0 + 10 min, T0 + 20 min (deadlines +30 min).
    out, _ = logic.on_batch([read(ev("u", "Added", T0), ev("v", "Added", T0 + 10 * MIN),
                                  ev("w", "Added", T0 + 20 * MIN))])
    assert list(out) == []
    out, _ = logic.on_batch([Watermark(T0 + 40 * MIN)])  # d_v = T0 + 40 min is not passed
    assert keys(list(out)) == [("cart", "u", T0 + 30 * MIN, "email")]
    assert logic.state.watermark == T0 + 40 * MIN
    # A smaller watermark (another reader's, an old broadcast) does not move it back ...
    out, _ = logic.on_batch([Watermark(T0)])
    assert list(out) == []
    assert logic.state.watermark == T0 + 40 * MIN
    # ... and a batch stamped lower does not either.
    out, _ = logic.on_batch([batch(logic.state.plan, ev("x", "Page", T0), watermarks=[T0 - HOUR])])
    assert list(out) == []
    assert logic.state.watermark == T0 + 40 * MIN
    out, _ = logic.on_batch([Watermark(T0 + 40 * MIN + 1), Watermark(T0 + 50 * MIN + 1)])
    assert keys(list(out)) == [("cart", "v", T0 + 40 * MIN, "email"), ("cart", "w", T0 + 50 * MIN, "email")]
    assert logic.state.timers.pending() == 0


def test_other_contacts_timers_fire_by_the_watermark_within_a_batch():
    logic = ShardLogic(_plan(), None)
    read = Source(logic.state.plan)
    out, _ = logic.on_batch([read(ev("u", "Added", T0))])
    assert list(out) == []
    # One batch of v's events: the second one is stamped T0 + 2 h > d_u. u has no event here, yet its
    # timer fires in this very batch (no Watermark broadcast needed).
    out, _ = logic.on_batch([read(ev("v", "Page", T0 + 2 * HOUR), ev("v", "Page", T0 + 3 * HOUR))])
    assert keys(list(out)) == [("cart", "u", T0 + CART_W, "email")]
    assert logic.state.watermark == T0 + 2 * HOUR


def test_the_watermark_passing_a_deadline_fires_it_before_a_late_cancel():
    logic = ShardLogic(_plan(), None)  # lateness 0
    # Read in this order: a Added at T0 (d = T0 + 30 min); b at T0 + 2 h (watermark T0 + 2 h > d:
    # SPEC (b) fires a's timer at d); a's Order stamped T0 + 1 min arrives late and finds no timer.
    read = Source(logic.state.plan)
    out, _ = logic.on_batch([read(ev("a", "Added", T0), ev("b", "Page", T0 + 2 * HOUR),
                                  ev("a", "Order", T0 + 60_000))])
    assert keys(list(out)) == [("cart", "a", T0 + CART_W, "email")]


@pytest.mark.parametrize("shards", [1, 2, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 1000])
def test_the_watermark_passing_a_deadline_fires_it_before_a_late_cancel_dataflow(batch_size, shards):
    events = [ev("a", "Added", T0), ev("b", "Page", T0 + 2 * HOUR), ev("a", "Order", T0 + 60_000)]
    result = run_rules(RULES, events, batch_size=batch_size, shards=shards)
    assert result.keys == [("cart", "a", "2026-11-23T14:30:00.000Z", "email")]
    assert (result.summary["late"], result.summary["pending_timers"], result.summary["triggers"]) == (
        1, 0, {"cart": 1})


# -- the per-contact clock ------------------------------------------------------------------------


def test_an_event_older_than_the_clock_is_applied_at_the_clock():
    plan = _plan()
    state = ShardState(plan)
    read = Source(state.plan)
    out: list[Any] = []
    # Clock at T0 + 10 s; an Added stamped T0 arms the timer at clock + 30 min.
    state.process(read(ev("u", "Page", T0 + 10_000), ev("u", "Added", T0)), out)
    assert state.timers.deadline(0, timer_of(plan, "cart")) == T0 + 10_000 + CART_W
    assert int(state.columns.arrays["clock"][0]) == T0 + 10_000
    # The old event's score update is at the clock too: Ping stamped T0 - 1h stores 10 at T0 + 10 s.
    state.process(read(ev("u", "Ping", T0 - HOUR)), out)
    assert last_update(state, 0, 0) == (10.0, T0 + 10_000)


def test_an_old_cancelling_event_counts_at_the_clock():
    state = ShardState(_plan())
    out: list[Any] = []
    # Added at T0 (d = T0 + 30 min); the clock reaches d exactly (no firing: not > d); an Order
    # stamped T0 + 5 ms is applied at the clock = d <= d, so it cancels. The watermark before it
    # is d, not past d either.
    state.process(Source(state.plan)(ev("u", "Added", T0), ev("u", "Page", T0 + CART_W), ev("u", "Order", T0 + 5)), out)
    state.advance_watermark(T0 + 100 * HOUR, out)
    assert out == []


def test_an_old_event_fires_at_the_clock():
    state = ShardState(_plan())
    out: list[Any] = []
    # Page at T0 + 5 s, then a Page stamped T0: applied at T0 + 5 s, the count in (now - 1s, now]
    # is 2, so `burst` fires at the clock, not at the event's own time.
    state.process(Source(state.plan)(ev("u", "Page", T0 + 5_000), ev("u", "Page", T0)), out)
    assert keys(out) == [("burst", "u", T0 + 5_000, "out")]
    assert records(out)[0]["event"]["timestamp"] == "2026-11-23T14:00:00.000Z"  # its own time


# -- scale ----------------------------------------------------------------------------------------


def test_state_grows_past_the_initial_capacity():
    plan = _plan()
    state = ShardState(plan)
    read = Source(state.plan)
    out: list[Any] = []
    n = 2501  # > 1024 initial slots: the columns grow by an eighth 8 times (1152, 1296, ..., 2334, 2625)
    state.process(read(*(ev(f"c-{i}", "Added", T0 + i) for i in range(n))), out)
    state.process(read(*(ev(f"c-{i}", "Ping", T0 + n + i) for i in range(0, n, 2))), out)
    assert out == []
    assert state.columns.capacity == 2625
    assert state.timers.pending() == n + (n + 1) // 2
    state.advance_watermark(T0 + CART_W + n, out)  # fires deadlines < T0 + 30 min + n
    assert keys(out) == [("cart", f"c-{i}", T0 + i + CART_W, "email") for i in range(n)]
    assert last_update(state, n - 1, 0) == (10.0, T0 + n + n - 1)
    assert last_update(state, n - 2, 0) == (0.0, NEVER)


def test_the_shards_of_a_thread_take_turns_with_one_firings_table():
    plan = _plan()
    a, b = ShardState(plan), ShardState(plan)
    assert a.firings is b.firings  # scratch of the thread, not a shard's
    read_a, read_b = Source(plan), Source(plan)
    out_a: list[Any] = []
    out_b: list[Any] = []
    # Firings of a left unwritten (as within one `on_batch`): b may not take the table over.
    a.process(read_a(ev("u", "Ping", T0, "m-1"), ev("u", "Cool", T0 + 1, "m-2")), out_a, flush=False)
    with pytest.raises(RuntimeError, match="another shard's firings are not written yet"):
        b.process(read_b(ev("v", "Ping", T0, "m-3")), out_b)
    a.flush(out_a)
    assert keys(out_a) == [("cooled", "u", T0 + 1, "out")]
    # Each shard's records name its own contacts, however the turns alternate.
    b.process(read_b(ev("v", "Ping", T0, "m-3"), ev("v", "Cool", T0 + 2, "m-4")), out_b)
    a.process(read_a(ev("w", "Ping", T0 + 3, "m-5"), ev("w", "Cool", T0 + 4, "m-6")), out_a)
    assert keys(out_b) == [("cooled", "v", T0 + 2, "out")]
    assert keys(out_a) == [("cooled", "u", T0 + 1, "out"), ("cooled", "w", T0 + 4, "out")]


INACTIVE = """\
version: 1
triggers:
  quiet:
    when: {inactive_for: 1m}
    actions: [{emit: out}]
"""


def test_inactive_for_rearms_on_every_event_holding_nothing_more():
    logic = ShardLogic(_plan(INACTIVE), None)
    read = Source(logic.state.plan)
    outs: list[Any] = []
    # 10k events 1 s apart, in batches of 100 (the watermark advances with every event).
    times = [T0 + 1000 * i for i in range(10_000)]
    due_sizes = []
    for start in range(0, len(times), 100):
        out, _ = logic.on_batch([read(*(ev("u", "Ping", t) for t in times[start:start + 100]))])
        outs.extend(out)
        due_sizes.append(len(logic.state.timers.due))
    assert outs == []
    assert max(due_sizes) == DUE_MIN
    assert logic.state.timers.pending() == 1
    # A 60 s + 1 ms gap: the timer fires at last + 60 s (path (a)), then re-arms.
    last = times[-1]
    out, _ = logic.on_batch([read(ev("u", "Ping", last + 60_001))])
    assert keys(list(out)) == [("quiet", "u", last + 60_000, "out")]
    assert logic.state.timers.deadline(0, 0) == last + 60_001 + 60_000


LONG_QUIET = """\
version: 1
triggers:
  quiet:
    when: {inactive_for: 60d}
    actions: [{emit: out}]
  briefly:
    when: {inactive_for: 1h}
    actions: [{emit: out}]
"""


def test_a_timer_further_than_a_row_holds_spills_and_fires_exactly():
    # 60 days is more than the 49.7 a row holds after the contact's clock: `quiet` waits in the spill
    # table, `briefly` in the row; both re-arm with every event and fire at their exact deadlines.
    logic = ShardLogic(_plan(LONG_QUIET), None)
    read = Source(logic.state.plan)
    day = 86_400_000
    out, _ = logic.on_batch([read(ev("u", "Ping", T0), ev("u", "Ping", T0 + 5000))])
    state = logic.state
    quiet, briefly = timer_of(state.plan, "quiet"), timer_of(state.plan, "briefly")
    assert list(out) == [] and state.timers.spilled() == 1 and state.timers.pending() == 2
    assert state.columns.arrays["timer_rule"][0].tolist() == [briefly, FREE]
    assert state.columns.arrays["timer_due_in"][0, 0] == 3_600_000
    assert (state.timers.deadline(0, quiet), state.timers.deadline(0, briefly)) == (T0 + 5000 + 60 * day,
                                                                                    T0 + 5000 + 3_600_000)
    # 61 days later: `briefly` fired an hour after the last event, `quiet` 60 days after it.
    out, _ = logic.on_batch([read(ev("u", "Ping", T0 + 61 * day))])
    assert keys(list(out)) == [("briefly", "u", T0 + 5000 + 3_600_000, "out"), ("quiet", "u", T0 + 5000 + 60 * day, "out")]
    assert state.timers.spilled() == 1 and state.timers.pending() == 2


# -- end of input (the shard's part; the summary is in test_finalize) ------------------------------


def test_end_of_input_fires_up_to_the_inputs_largest_time_and_reports_the_rest():
    logic = ShardLogic(_plan(), None)
    read = Source(logic.state.plan)
    # Timers: u at T0 + 30 min, v at T0 + 40 min, w at T0 + 50 min. This shard's largest time is u's
    # Page at T0 + 30 min exactly; the input's largest time (another shard's event) is T0 + 40 min.
    out, _ = logic.on_batch([read(ev("u", "Added", T0), ev("v", "Added", T0 + 10 * MIN),
                                  ev("w", "Added", T0 + 20 * MIN), ev("u", "Page", T0 + CART_W))])
    assert list(out) == []
    out, _ = logic.on_batch([EndOfInput(T0 + 40 * MIN)])
    out = list(out)
    # u's and v's deadlines are <= the largest time: they fire (<=, not <), in deadline order;
    # w's stays pending. The ShardEnd comes after the firings.
    assert keys(out) == [("cart", "u", T0 + 30 * MIN, "email"), ("cart", "v", T0 + 40 * MIN, "email")]
    assert isinstance(out[-1], ShardEnd)
    assert out[-1] == ShardEnd(pending=1, contacts=3, fired={"cart": 2}, suppressed={})
    assert logic.state.timers.deadline(slot_of(logic.state, "w"), timer_of(logic.state.plan, "cart")) == (
        T0 + 50 * MIN)


def test_end_of_input_fires_what_the_watermark_passed_and_counts_suppressions():
    plan = _plan("""\
version: 1
triggers:
  cart:
    when: {first: {event: Added}, then_not: {event: Order}, within: 30m}
    unless: {event: Block, within: 1h}
    actions: [{emit: email}]
""")
    state = ShardState(plan)
    out: list[Any] = []
    # u: Block at T0 then Added (d = T0 + 30 min, suppressed by `unless` at d); v: Added at T0 + 5 min
    # (d = T0 + 35 min). The last stamp is T0 + 5 min; the marker's largest time is T0 + 35 min.
    state.process(Source(state.plan)(ev("u", "Block", T0), ev("u", "Added", T0), ev("v", "Added", T0 + 5 * MIN)), out)
    end = state.end_of_input(EndOfInput(T0 + 35 * MIN), out)
    assert keys(out) == [("cart", "v", T0 + 35 * MIN, "email")]
    assert end == ShardEnd(pending=0, contacts=2, fired={"cart": 1}, suppressed={"cart:unless": 1})


def test_end_of_input_of_an_empty_shard():
    logic = ShardLogic(_plan(), None)
    out, _ = logic.on_batch([EndOfInput(NEVER)])
    assert list(out) == [ShardEnd(pending=0, contacts=0, fired={}, suppressed={})]


# -- the generic contract: snapshot/restore, batch size, shard count --------------------------------

CONTRACT_RULES = """\
version: 1
lateness: 2s
scores:
  interest:
    half_life: 2m
    min: 0
    max: 40
    points:
      - {event: Page Viewed, add: 1}
      - {event: Page Viewed, where: {properties.path: {startswith: /pricing}}, add: 2}
      - {event: Product Viewed, add: 2}
      - {event: Product Added, add: 5}
      - {event: Unsubscribed, add: -20}
triggers:
  hot:
    when: {score: interest, rises_above: 8}
    unless: {event: Order Completed, within: 10m}
    cooldown: 5m
    actions: [{emit: sales}, {tag: hot}]
  cooled:
    when: {score: interest, falls_below: 3}
    actions: [{emit: sales}, {untag: hot}]
  browsing:
    when: {count: {event: Product Viewed}, within: 2m, at_least: 3}
    actions: [{emit: onsite}]
  cart:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 3m}
    cooldown: 10m
    actions: [{emit: email}, {emit: push}]
  quiet:
    when: {inactive_for: 5m}
"""

SHARDS = 3


@pytest.fixture(scope="module")
def contract() -> tuple[Plan, list[bytes]]:
    plan = _plan(CONTRACT_RULES)
    # Bounded disorder (1.5 s < lateness 2 s: no late events) and SDK retries (duplicates).
    cfg = ShopConfig(seed=5, contacts=40, sessions_per_minute=12.0, disorder_ms=1500, duplicate_rate=0.05)
    return plan, Shop(cfg).lines(1200)


class LinesPartition(DecodingPartition):
    """The real source partition (decode, dedupe, stamp, route) over a list of lines, `batch_size` a read.

    `broadcast`: send a Watermark to every shard after every read (True) or never (False); the
    outputs must not depend on it.
    """

    def __init__(self, lines: list[bytes], batch_size: int, shards: int, plan: Plan,
                 state: ReaderState | None = None, broadcast: bool = False) -> None:
        super().__init__("contract", state or ReaderState(), shards, plan)
        self.lines = lines
        self.batch_size = batch_size
        self.WATERMARK_EVERY_S = 0.0 if broadcast else math.inf

    def read_block(self):  # type: ignore[no-untyped-def]
        lo = self.state.offset
        if lo >= len(self.lines):
            return None
        hi = min(lo + self.batch_size, len(self.lines))
        self.state.offset = hi
        return block_of(self.lines[lo:hi], list(range(lo, hi)))


def _output_key(o: Any) -> tuple:
    rec = orjson.loads(o.line)
    if isinstance(o, TriggerOut):
        del rec["emitted_at"]  # wall clock, the only part that may differ between runs
        return ("trigger", rec["rule"], rec["contact"], rec["at"], rec["channel"], orjson.dumps(rec))
    assert isinstance(o, ProfileOut), o
    return ("profile", rec["rule"], rec["contact"], rec["at"], rec["action"], orjson.dumps(rec))


def _collect(out: Any, outputs: list[Any], ends: list[ShardEnd]) -> None:
    """One on_batch result: records come grouped (at most one TriggerRecords and one ProfileRecords
    per call), end reports as they are."""
    kinds = [type(o) for o in out]
    assert kinds.count(TriggerRecords) <= 1 and kinds.count(ProfileRecords) <= 1, kinds
    for o in out:
        if isinstance(o, ShardEnd):
            ends.append(o)
        else:
            assert isinstance(o, TriggerRecords | ProfileRecords), o
            assert o.records, "no empty groups"
            outputs.extend(o.records)


class Run:
    """A source partition feeding ShardLogics the way bytewax does: per read, each shard key gets
    its items in order in one `on_batch` call; ShardLogics are built on a key's first item."""

    def __init__(self, plan: Plan, lines: list[bytes], batch_size: int, shards: int, broadcast: bool,
                 snapshot: tuple[ReaderState, dict[str, dict]] | None = None) -> None:
        self.plan = plan
        reader_state, shard_snaps = snapshot if snapshot is not None else (None, {})
        self.part = LinesPartition(lines, batch_size, shards, plan, reader_state, broadcast)
        self.logics = {k: ShardLogic(plan, snap) for k, snap in shard_snaps.items()}
        self.outputs: list[Any] = []
        self.shard_ends: list[ShardEnd] = []
        self.reader_ends: list[ReaderEnd] = []
        self.dead: list[Any] = []

    def step(self) -> bool:
        try:
            items = self.part.next_batch()
        except StopIteration:
            return False
        per_key: dict[str, list[Any]] = {}
        for key, value in items:
            if key == END_KEY:
                self.reader_ends.append(value)
            elif key == DLQ_KEY:
                self.dead.append(value)
            else:
                per_key.setdefault(key, []).append(value)
        for key, values in per_key.items():
            logic = self.logics.get(key)
            if logic is None:
                logic = self.logics[key] = ShardLogic(self.plan, None)
            out, _ = logic.on_batch(values)
            _collect(out, self.outputs, self.shard_ends)
        return True

    def run(self, steps: int | None = None) -> Run:
        done = 0
        while (steps is None or done < steps) and self.step():
            done += 1
        return self

    def snapshot(self) -> tuple[ReaderState, dict[str, dict]]:
        return self.part.snapshot(), {k: logic.snapshot() for k, logic in self.logics.items()}

    def carry(self, other: Run, ends: bool = True) -> Run:
        """What `other` had already emitted downstream before the snapshot.

        `ends=False`: its end reports are not carried. With one reader, a snapshot taken after the
        input ended also holds the summary step's state after it emitted the summary and discarded
        its reports; the resumed source sends the end markers again and a new summary follows."""
        self.outputs = list(other.outputs)
        if ends:
            self.shard_ends = list(other.shard_ends)
            self.reader_ends = list(other.reader_ends)
        self.dead = list(other.dead)
        return self

    def result(self) -> tuple[list[tuple], dict[str, Any]]:
        assert self.dead == []
        return sorted(_output_key(o) for o in self.outputs), summarize(self.shard_ends, self.reader_ends)


def _run(plan: Plan, lines: list[bytes], batch_size: int, split: int | None = None, shards: int = SHARDS,
         late_pickle: bool = False, broadcast: bool = False) -> tuple[list[tuple], dict[str, Any]]:
    """Run the input; after `split` reads, snapshot everything, pickle, restore and continue.

    With `late_pickle` the snapshot is pickled only after the original run has processed the
    rest of the input (so a snapshot sharing state with the live run would show up).
    """
    first = Run(plan, lines, batch_size, shards, broadcast).run(split)
    if split is None:
        return first.result()
    snap = first.snapshot()
    carried = Run(plan, lines, batch_size, shards, broadcast).carry(first, ends=not snap[0].finished)
    uninterrupted = None
    if late_pickle:
        uninterrupted = first.run().result()
    resumed = Run(plan, lines, batch_size, shards, broadcast, pickle.loads(pickle.dumps(snap)))
    result = resumed.carry(carried).run().result()
    if uninterrupted is not None:
        assert result == uninterrupted
    return result


def _run_pieces(plan: Plan, lines: list[bytes], batch_size: int, shards: int) -> tuple[list[tuple], dict[str, Any]]:
    """The same pipeline assembled by hand: event_batch (the decoder) -> Deduplicator -> `Source`
    stamping -> split_by_shard -> ShardLogic; EndOfInput carries the largest accepted time."""
    dedupe = Deduplicator()
    read = Source(plan)
    logics: dict[int, ShardLogic] = {}
    outs: list[Any] = []
    ends: list[ShardEnd] = []
    processed = deduplicated = 0
    for lo in range(0, len(lines), batch_size):
        events = event_batch(lines[lo:lo + batch_size], plan)  # raises on any invalid line
        keep = np.flatnonzero(dedupe.accepted(events))
        processed += len(keep)
        deduplicated += len(events) - len(keep)
        accepted = read.stamp(events.take(keep))
        for s, sub in split_by_shard(accepted, shards):
            assert sub.shard == s
            if s not in logics:
                logics[s] = ShardLogic(plan, None)
            out, _ = logics[s].on_batch([sub])
            _collect(out, outs, ends)
    for s in range(shards):
        if s not in logics:
            logics[s] = ShardLogic(plan, None)
        out, _ = logics[s].on_batch([EndOfInput(read.max_time)])
        _collect(out, outs, ends)
    assert len(ends) == shards
    reader = ReaderEnd("pieces", len(lines), processed, deduplicated, 0, {}, 0, read.max_time)
    return sorted(_output_key(o) for o in outs), summarize(ends, [reader])


@pytest.fixture(scope="module")
def reference(contract: tuple[Plan, list[bytes]]) -> tuple[list[tuple], dict[str, Any]]:
    plan, lines = contract
    return _run(plan, lines, batch_size=len(lines))


def test_contract_input_exercises_every_rule(contract, reference):
    plan, lines = contract
    outputs, summary = reference
    fired = {k[1] for k in outputs if k[0] == "trigger"}
    assert fired == {"hot", "cooled", "browsing", "cart", "quiet"}
    assert len(outputs) > 100
    # The input has duplicates (counted, not applied), events out of time order but none late, and
    # timers still pending at the end.
    events, dead = decode_lines(lines, list(range(len(lines))))
    assert dead == []
    times = events.times.tolist()
    assert any(b < a for a, b in zip(times, times[1:], strict=False))
    assert summary["deduplicated"] > 0
    assert summary["processed"] + summary["deduplicated"] == summary["events_in"] == len(lines)
    assert (summary["dead_lettered"], summary["late"]) == (0, 0)
    assert summary["pending_timers"] > 0
    assert summary["max_event_time"] == max(times)
    assert sum(summary["triggers"].values()) == sum(1 for k in outputs if k[0] == "trigger" and k[4] in (
        "sales", "onsite", "email", "triggers")) > 0


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize("batch_size", [1, 7, 64, 500])
def test_batch_size_does_not_change_outputs(contract, reference, batch_size, broadcast):
    plan, lines = contract
    assert _run(plan, lines, batch_size=batch_size, broadcast=broadcast) == reference


@pytest.mark.parametrize("shards", [1, 8])
def test_shard_count_does_not_change_outputs(contract, reference, shards):
    plan, lines = contract
    assert _run(plan, lines, batch_size=100, shards=shards) == reference
    assert _run(plan, lines, batch_size=100, shards=shards, broadcast=True) == reference


@pytest.mark.parametrize("batch_size", [1, 64])
def test_the_pipeline_pieces_by_hand_give_the_same_outputs(contract, reference, batch_size):
    # Cross-checks the source's stamping and dedupe against `Source` and Deduplicator used directly.
    plan, lines = contract
    assert _run_pieces(plan, lines, batch_size, shards=5) == reference


@pytest.mark.parametrize("shards", [1, 8])
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_the_real_dataflow_gives_the_same_triggers_and_summary(contract, reference, batch_size, shards):
    # The driver above against bytewax itself (engine.testing.run_rules builds the real flow).
    plan, lines = contract
    outputs, summary = reference
    result = run_rules(CONTRACT_RULES, lines, batch_size=batch_size, shards=shards)
    assert result.keys == sorted(k[1:5] for k in outputs if k[0] == "trigger")
    assert result.summary == summary


def test_even_late_input_gives_the_same_outputs_for_any_batching(contract):
    # The SPEC promises determinism for input without late events; with the exact watermark stamped
    # on every event the shards see the same thing for late input too. Disorder of up to 60 s with a
    # lateness of 2 s: hundreds of late events.
    plan, _ = contract
    cfg = ShopConfig(seed=5, contacts=40, sessions_per_minute=12.0, disorder_ms=60_000, duplicate_rate=0.05)
    lines = Shop(cfg).lines(1200)
    expected = _run(plan, lines, batch_size=len(lines))
    assert expected[1]["late"] > 100
    for batch_size, shards in [(1, 1), (7, 8), (100, 3)]:
        assert _run(plan, lines, batch_size=batch_size, shards=shards, broadcast=True) == expected
    assert _run(plan, lines, batch_size=50, split=11, shards=8) == expected


def test_snapshot_pickle_restore_at_any_point_gives_the_same_outputs(contract, reference):
    plan, lines = contract
    reads = math.ceil(len(lines) / 50)
    for split in range(reads + 2):  # 0 reads ... every read, the end items, past the end
        assert _run(plan, lines, batch_size=50, split=split) == reference, split
    for split in (0, 5, reads - 1, reads):
        assert _run(plan, lines, batch_size=50, split=split, shards=8, broadcast=True) == reference, split


LONG_GAP_RULES = """\
version: 1
lateness: 2s
scores:
  loyalty:
    half_life: 30d
    points:
      - {event: Order Completed, add: 10}
  interest:
    half_life: 20d
    points:
      - {event: Product Viewed, add: 2}
  hot:
    half_life: 1h
    points:
      - {event: Product Viewed, add: 2}
triggers:
  loyal:
    when: {score: loyalty, rises_above: 12}
  lapsed:
    when: {score: loyalty, falls_below: 4}
  gone:
    when: {inactive_for: 60d}
  no_reorder:
    when: {first: {event: Order Completed}, then_not: {event: Order Completed}, within: 55d}
  regular:
    when: {count: {event: Order Completed}, within: 90d, at_least: 3}
  curious:
    when: {score: interest, rises_above: 5}
  hot_now:
    when: {score: hot, rises_above: 3}
"""


def test_gaps_of_months_give_the_same_outputs_through_snapshots_at_every_read():
    # Contacts that come back after 20 to 100 days: scores' times go far behind their clocks and timers
    # far ahead of them (kept in the far table and the spill table), on both sides of every snapshot.
    # Every record carries the 30- and 20-day scores, decayed from those times: a time a millisecond off
    # changes their last digits.
    plan = _plan(LONG_GAP_RULES)
    rng = random.Random(12)
    day = 86_400_000
    t = T0
    lines = []
    for i in range(300):
        t += rng.choice((rng.randrange(1, 120_000), rng.randrange(20 * day, 100 * day)))
        name = rng.choice(("Order Completed", "Product Viewed", "Product Viewed"))
        lines.append(orjson.dumps(ev(f"c{rng.randrange(8)}", name, t - rng.randrange(1500), mid=f"m{i}")))
    whole = Run(plan, lines, len(lines), SHARDS, False).run()
    expected = whole.result()
    states = [logic.state for logic in whole.logics.values()]
    assert sum(len(s.scores.far) for s in states) > 0 and sum(s.timers.spilled() for s in states) > 0
    fired = Counter(key[1] for key in expected[0])
    assert set(fired) == {"loyal", "lapsed", "gone", "no_reorder", "regular", "curious", "hot_now"}, fired
    for batch_size in (1, 7):
        assert _run(plan, lines, batch_size=batch_size) == expected, batch_size
    for split in range(0, 300 // 7 + 2):
        assert _run(plan, lines, batch_size=7, split=split) == expected, split


def test_a_snapshot_is_not_changed_by_later_processing(contract, reference):
    plan, lines = contract
    reads = math.ceil(len(lines) / 25)
    for split in (1, reads // 3, reads // 2, reads - 1, reads):
        assert _run(plan, lines, batch_size=25, split=split, late_pickle=True) == reference, split


def test_snapshot_restore_with_single_event_batches(contract, reference):
    plan, lines = contract
    for split in (3, 101, 602):
        assert _run(plan, lines, batch_size=1, split=split) == reference, split


def test_shard_state_snapshot_round_trip_keeps_every_column(contract):
    plan, lines = contract
    run = Run(plan, lines, batch_size=700, shards=1, broadcast=False).run(1)
    state = run.logics[shard_key(0)].state
    snap = state.snapshot()
    assert snap["version"] == SNAPSHOT_VERSION
    restored = ShardState.restore(plan, pickle.loads(pickle.dumps(snap)))
    size = len(state.index)
    assert size > 30
    assert restored.index.ids() == state.index.ids()
    assert len(set(state.index.ids())) == size
    assert set(restored.columns.arrays) == set(state.columns.arrays)
    for name, arr in state.columns.arrays.items():
        assert np.array_equal(restored.columns.arrays[name][:size], arr[:size]), name
    pending = _pending_timers(state)
    assert len(pending) > 0 and state.timers.spilled() > 0  # (the contract's rules have 3 timer rules)
    assert _bounds(restored) == _exact_bounds(state)  # computed from the deadlines
    # Every pending timer keeps the summary of the event that armed it, byte for byte.
    for _, s, k in pending:
        kept = restored.timers.event(s, k)
        assert kept == state.timers.event(s, k)
        assert orjson.loads(summary_json(kept))["messageId"] is not None
    assert restored.watermark == state.watermark > NEVER
    assert restored.fired() == state.fired() and restored.suppressed() == state.suppressed()
    assert sum(state.fired().values()) > 0
    assert restored.timers.pending() == state.timers.pending() > 0


def _pending_timers(state: ShardState) -> list[tuple[int, int, int]]:
    """(deadline, slot, k) of every pending timer, in order."""
    t = state.timers
    return sorted((t.deadline(s, k), s, k) for s in range(len(state.index)) for k in range(t.width)
                  if t.deadline(s, k) != NONE)


def _bounds(state: ShardState) -> list[int]:
    return state.timers.block_min[: (len(state.index) + BLOCK - 1) // BLOCK].tolist()


def _exact_bounds(state: ShardState) -> list[int]:
    """The least deadline of each block's pending timers."""
    bounds = [NONE] * ((len(state.index) + BLOCK - 1) // BLOCK)
    for d, s, _ in _pending_timers(state):
        bounds[s // BLOCK] = min(bounds[s // BLOCK], d)
    return bounds


def _resumed(plan: Plan, lines: list[bytes], first: Run, reader: Any, converted: dict) -> Any:
    """The result of the run that `first` began, resumed where `first` stopped from its reader state and the
    `converted` shard snapshots."""
    carried = Run(plan, lines, 50, SHARDS, False).carry(first)
    resumed = Run(plan, lines, 50, SHARDS, False, (pickle.loads(pickle.dumps(reader)), converted))
    return resumed.carry(carried).run().result()


def _remapped(snap: dict, arena: bytes, moved: dict[int, int], version: int) -> dict:
    """`snap` with the arena `arena`, its timers' record references mapped through `moved`, and `version`."""
    columns = dict(snap["columns"])
    refs = columns["timer_event"] = columns["timer_event"].copy()
    pending = columns["timer_rule"] != FREE
    refs[pending] = [moved[r] for r in refs[pending].tolist()]
    kept = {**snap["timers"], "arena": np.frombuffer(arena, np.uint8).copy(),
            "spill_event": np.array([moved[r] for r in snap["timers"]["spill_event"].tolist()], np.uint32)}
    return {**snap, "version": version, "columns": columns, "timers": kept}


def _as_format_8(snap: dict) -> dict:
    """A shard snapshot as format 8 wrote it: each arena record a packed summary (its properties a reference
    to a shared record, with the summary's flag SHARED_PROPERTIES, where the kept summary shares them; its name
    in place), padding to 4."""
    arena, shared = snap["timers"]["arena"], snap["timers"]["shared"]
    packed = bytearray()
    moved = {}
    at = 0
    while at < len(arena):
        out = np.zeros(summaries.kept_packed_length(arena, at, shared) + 8, np.uint8)
        summary = out[:summaries.expand_kept(arena, at, shared, out)].tobytes()
        properties_ref = summaries.kept_refs(arena, at)[1]
        if properties_ref >= 0:
            properties_at, n = summaries.properties_span(np.frombuffer(summary, np.uint8), 0)
            summary = (summary[:1] + bytes([summaries.SHARED_PROPERTIES]) + summary[2:properties_at]
                       + arena[properties_ref:properties_ref + 4].tobytes() + summary[properties_at + n:])
        moved[at] = len(packed) // 4
        packed += summary + bytes(-len(summary) % 4)
        at += int(summaries.kept_length(arena, at))
    return _remapped(snap, bytes(packed), moved, 8)


def _as_format_7(snap: dict) -> dict:
    """A format-8 shard snapshot as format 7 wrote it: each arena record a uint32 length, the summary, padding
    to 8, referred to in 8-byte units."""
    arena = snap["timers"]["arena"]
    legacy = bytearray()
    moved = {}
    at = 0
    while at < len(arena):
        n = int(timers._packed_stored_length(arena, at))
        moved[at // 4] = len(legacy) // 8
        legacy += n.to_bytes(4, "little") + arena[at:at + n].tobytes()
        legacy += bytes(-len(legacy) % 8)
        at += n + -n % 4
    return _remapped(snap, bytes(legacy), moved, 7)


def _format_7_of(snap: dict) -> dict:
    """A packed shard snapshot of this format as format 7 wrote it."""
    return _as_format_7(_as_format_8(unpack(pickle.loads(pickle.dumps(snap)))))


def test_a_format_8_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    current = {key: unpack(pickle.loads(pickle.dumps(snap))) for key, snap in shards.items()}
    converted = {key: _as_format_8(snap) for key, snap in current.items()}
    # Packed summaries are longer: a header of 24 bytes, quoted ids, names in place.
    assert all(len(converted[key]["timers"]["arena"]) > len(snap["timers"]["arena"])
               for key, snap in current.items() if len(snap["timers"]["arena"]))
    assert any(converted[key]["timers"]["arena"][1] == summaries.SHARED_PROPERTIES for key in converted
               if len(converted[key]["timers"]["arena"]))
    for key, snap in converted.items():
        state, restored = first.logics[key].state, ShardState.restore(plan, snap)
        assert _pending_timers(restored) == _pending_timers(state)
        assert all(restored.timers.event(s, k) == state.timers.event(s, k) for _, s, k in _pending_timers(state))
        # The arena and shared buffer a snapshot of this format holds, byte for byte, and the same references.
        again = restored.snapshot()
        for part in ("arena", "shared"):
            assert again["timers"][part].tobytes() == current[key]["timers"][part].tobytes()
        assert np.array_equal(again["columns"]["timer_event"], current[key]["columns"]["timer_event"])
    assert _resumed(plan, lines, first, reader, converted) == reference


def test_a_format_7_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    current = {key: unpack(pickle.loads(pickle.dumps(snap))) for key, snap in shards.items()}
    converted = {key: _as_format_7(_as_format_8(snap)) for key, snap in current.items()}
    assert sum(first.logics[key].state.timers.spilled() for key in shards) > 0
    # A record took a length of its own and padding to 8, not 4.
    assert all(len(converted[key]["timers"]["arena"]) > len(snap["timers"]["arena"])
               for key, snap in current.items() if len(snap["timers"]["arena"]))
    for key, snap in converted.items():
        state, restored = first.logics[key].state, ShardState.restore(plan, snap)
        assert _pending_timers(restored) == _pending_timers(state)
        assert all(restored.timers.event(s, k) == state.timers.event(s, k) for _, s, k in _pending_timers(state))
        # The arena a snapshot of this format holds, byte for byte, and the same references.
        again = restored.snapshot()
        assert again["timers"]["arena"].tobytes() == current[key]["timers"]["arena"].tobytes()
        assert np.array_equal(again["columns"]["timer_event"], current[key]["columns"]["timer_event"])
    assert _resumed(plan, lines, first, reader, converted) == reference


def _as_format_6(snap: dict, width: int) -> dict:
    """A format-7 shard snapshot as format 6 wrote it: a deadline and a record reference for every contact and
    each of the `width` timer rules (NONE where none is pending), nothing spilled."""
    columns = dict(snap["columns"])
    rule, deadline, refs = columns.pop("timer_rule"), columns.pop("timer_deadline"), columns.pop("timer_event")
    del columns["timer_spilled"]
    dense = np.full((len(rule), width), NONE, np.int64)
    dense_refs = np.zeros((len(rule), width), np.uint32)
    for s, j in zip(*np.nonzero(rule != FREE), strict=True):
        dense[s, rule[s, j]], dense_refs[s, rule[s, j]] = deadline[s, j], refs[s, j]
    kept = dict(snap["timers"])
    for key, d, ref in zip(kept.pop("spill_keys").tolist(), kept.pop("spill_deadline").tolist(),
                           kept.pop("spill_event").tolist(), strict=True):
        dense[key // width, key % width], dense_refs[key // width, key % width] = d, ref
    columns["timer_deadline"], columns["timer_event"] = dense, dense_refs
    index = dict(snap["index"])  # which held the contacts' digests too
    offsets, data = index["id_offsets"].tolist(), index["id_data"].tobytes()
    index["hashes"] = digests([data[a:b].decode() for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    return {**snap, "version": 6, "columns": columns, "timers": kept, "index": index}


def test_a_format_6_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    width = len(plan.timer_triggers)
    converted = {key: _as_format_6(_format_7_of(snap), width) for key, snap in shards.items()}
    assert sum(first.logics[key].state.timers.spilled() for key in shards) > 0
    for key, snap in converted.items():  # the same timers, keeping the same events
        state, restored = first.logics[key].state, ShardState.restore(plan, snap)
        assert _pending_timers(restored) == _pending_timers(state)
        assert _bounds(restored) == _exact_bounds(state)
        assert all(restored.timers.event(s, k) == state.timers.event(s, k) for _, s, k in _pending_timers(state))
    assert _resumed(plan, lines, first, reader, converted) == reference


def _as_format_5(snap: dict) -> dict:
    """A shard snapshot as format 5 wrote it: count rings, unless and last-fired times as dense columns,
    EMPTY or NEVER where unset (the unless column kept even for rules without unless matchers), and
    the events timers keep with their properties in place."""
    size = len(snap["index"]["hashes"])
    rings = snap["counts"]
    sizes = rings["sizes"]
    count_times = np.full((size, max(sum(sizes), 1)), counts.EMPTY, np.int64)
    count_next = np.zeros((size, max(len(sizes), 1)), np.uint16)
    for key, at in zip(rings["keys"].tolist(), rings["values"].tolist(), strict=True):
        slot, rule = divmod(key, len(sizes))
        first = sum(sizes[:rule])
        count_next[slot, rule] = rings["pool"][at]
        count_times[slot, first:first + sizes[rule]] = rings["pool"][at + 1:at + 1 + sizes[rule]]
    times = snap["suppression"]
    n_unless, width = times["unless"], times["width"]
    dense = np.full((size, width), NEVER, np.int64)
    dense[times["keys"] // width, times["keys"] % width] = times["values"]
    unless_seen = dense[:, :n_unless] if n_unless else np.full((size, 1), NEVER, np.int64)
    columns = {**snap["columns"], "unless_seen": unless_seen, "last_fired": dense[:, n_unless:],
               "count_times": count_times, "count_next": count_next}
    kept = TimerTable.convert_events(columns, snap["timers"]["arena"], lambda summary: summary, snap["timers"]["shared"])
    return ({key: value for key, value in snap.items() if key not in ("suppression", "counts")}
            | {"version": 5, "columns": columns, "timers": kept})


def test_a_format_5_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    width = len(plan.timer_triggers)
    converted = {key: _as_format_5(_as_format_6(_format_7_of(snap), width))
                 for key, snap in shards.items()}
    assert sum(int((snap["columns"]["last_fired"] != NEVER).sum()) for snap in converted.values()) > 0
    assert sum(int((snap["columns"]["count_times"] != counts.EMPTY).sum()) for snap in converted.values()) > 0
    assert all("shared" not in snap["timers"] for snap in converted.values())
    assert sum(len(unpack(snap)["timers"]["shared"]) for snap in shards.values()) > 0  # format 6 shares some
    for key, snap in converted.items():  # the same times
        state, restored = first.logics[key].state, ShardState.restore(plan, snap)
        n_rules = len(state.counts.sizes)
        assert ({(k, tuple(state.counts.ring(*divmod(k, n_rules)))) for k in state.counts.snapshot()["keys"].tolist()}
                == {(k, tuple(restored.counts.ring(*divmod(k, n_rules))))
                    for k in restored.counts.snapshot()["keys"].tolist()})
        assert restored.suppression.snapshot()["keys"].tolist() == state.suppression.snapshot()["keys"].tolist()
        assert restored.suppression.snapshot()["values"].tolist() == state.suppression.snapshot()["values"].tolist()
    assert _resumed(plan, lines, first, reader, converted) == reference


def _as_format_4(snap: dict) -> dict:
    """A format-5 shard snapshot as format 4 wrote it: the events timers keep as their summaries' JSON."""
    columns = dict(snap["columns"])
    kept = TimerTable.convert_events(columns, snap["timers"]["arena"], summary_json)
    return {**snap, "version": 4, "columns": columns, "timers": kept}


def _same_events(state: ShardState, restored: ShardState) -> None:
    """Every pending timer keeps an event with the same JSON (a conversion re-serialises it: 11.50 -> 11.5)."""
    for _, s, k in _pending_timers(state):
        assert orjson.loads(summary_json(restored.timers.event(s, k))) == orjson.loads(summary_json(state.timers.event(s, k)))


def test_a_format_4_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    width = len(plan.timer_triggers)
    converted = {key: _as_format_4(_as_format_5(_as_format_6(_format_7_of(snap), width)))
                 for key, snap in shards.items()}
    some = next(s for s in converted.values() if len(s["timers"]["arena"]))
    assert some["timers"]["arena"][4:16].tobytes() == b'{"messageId"'  # JSON, as format 4 kept it
    for key, snap in converted.items():
        _same_events(first.logics[key].state, ShardState.restore(plan, snap))
    assert _resumed(plan, lines, first, reader, converted) == reference


def _as_format_3(snap: dict) -> dict:
    """A format-4 shard snapshot as format 3 wrote it: an int64 offset and an int32 length per timer
    into an arena of the bare summaries (stored in a different order, to show nothing relies on it)."""
    columns = dict(snap["columns"])
    refs = columns.pop("timer_event")
    arena = snap["timers"]["arena"].tobytes()
    deadline = columns["timer_deadline"]
    offsets = np.zeros(refs.shape, np.int64)
    lengths = np.zeros(refs.shape, np.int32)
    old = b""
    placed: dict[int, int] = {}
    for s, k in sorted(zip(*np.nonzero(deadline != NONE), strict=True), reverse=True):
        at = 8 * int(refs[s, k])
        length = int.from_bytes(arena[at:at + 4], "little")
        if at not in placed:
            placed[at] = len(old)
            old += arena[at + 4:at + 4 + length]
        offsets[s, k], lengths[s, k] = placed[at], length
    columns["timer_event_offset"], columns["timer_event_length"] = offsets, lengths
    return {**snap, "version": 3, "columns": columns, "timers": {"arena": np.frombuffer(old, np.uint8).copy()}}


def test_a_format_3_snapshot_is_converted_and_resumes_exactly(contract, reference):
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    reader, shards = first.snapshot()
    width = len(plan.timer_triggers)
    converted = {key: _as_format_3(_as_format_4(_as_format_5(_as_format_6(_format_7_of(snap),
                                                                          width))))
                 for key, snap in shards.items()}
    assert sum(int((snap["columns"]["timer_event_length"] > 0).sum()) for snap in converted.values()) > 0
    for key, snap in converted.items():  # the same timers, keeping the same events
        _same_events(first.logics[key].state, ShardState.restore(plan, snap))
    assert _resumed(plan, lines, first, reader, converted) == reference


def test_a_snapshot_of_an_earlier_format_is_refused_with_what_to_do(contract, reference):
    # The layouts before the compiled engine (version 1: decoded events in the timer columns and
    # the heap saved; version 2: the per-event operator's) are not resumed: a clear refusal, before anything
    # runs, instead of a resumed run with different state.
    plan, lines = contract
    first = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).run(10)
    _, shards = first.snapshot()
    snap = unpack(pickle.loads(pickle.dumps(next(iter(shards.values())))))
    for version in (1, 2, None):
        old = dict(snap)
        if version is None:
            del old["version"]  # the first release wrote no version
        else:
            old["version"] = version
        with pytest.raises(RecoveryFormatError, match=f"format {version or 1}, written by an earlier halflife") as err:
            ShardLogic(plan, old)
        assert f"reads format {SNAPSHOT_VERSION}" in str(err.value)
        assert "empty --recovery directory" in str(err.value)
    # The current format resumes, to the same outputs.
    carried = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False).carry(first)
    resumed = Run(plan, lines, batch_size=50, shards=SHARDS, broadcast=False,
                  snapshot=pickle.loads(pickle.dumps(first.snapshot())))
    assert resumed.carry(carried).run().result() == reference


def test_without_a_recovery_directory_no_snapshot_is_taken_and_the_size_is_still_reported(contract):
    plan, lines = contract
    run = Run(plan, lines, batch_size=700, shards=1, broadcast=False).run(1)
    state = run.logics[shard_key(0)].state
    logic = ShardLogic(plan, None, recovery=False)
    logic.state = state
    assert logic.snapshot() is None
    size = len(state.index)
    columns = state.columns.snapshot(size, copy=False)
    # A snapshot keeps times where the state has ages and deadlines after the clock.
    columns["score_age"] = columns["score_age"].astype(np.int64)
    columns["timer_due_in"] = columns["timer_due_in"].astype(np.int64)
    expected = (sum(a.nbytes for a in columns.values()) + sum(a.nbytes for a in state.index.snapshot().values())
                + state.timers.event_bytes() + 16 * len(state.suppression) + 16 * len(state.counts)
                + 8 * int(state.counts.pool_used[0]))
    assert len(state.suppression) > 0 and len(state.counts) > 0 and expected > 100 * size
    assert metrics.REGISTRY.get_sample_value("halflife_state_bytes", {"shard": str(state.shard)}) == expected
    assert ShardLogic(plan, None).snapshot() is not None  # with one (the default), every epoch's end takes one
