"""The per-shard rule operator: all contacts of one virtual shard, columnar, one timer heap.

Each shard is one bytewax stateful key. Its logic owns:

* `ContactIndex`: contact id -> slot;
* per-contact columns (`Columns`, numpy, slot-major): the contact clock, score values
  and update times, count rings, timer deadlines and the JSON lines of the events that armed them,
  `unless` last-seen times and last firing times;
* one `TimerTable` heap for the whole shard.

Events arrive as columnar `EventBatch`es, already de-duplicated by the source, each
stamped with the input's watermark just before it. Before an event is applied, its
contact's timers with a deadline below max(effective time, watermark) fire: path (a)
and path (b) of the SPEC at the exact point of the input where they happen. Timers of
other contacts are fired by watermark once per batch (their order cannot change any
outcome). Per batch, matchers are evaluated by event name (`Plan.match`) and each
distinct matcher bit set is turned into an `Effects` record once; the per-event loop
then only applies effects in arrival order, because the SPEC's per-contact semantics
(clock, timers firing between events, cooldowns) are sequential per contact.

Snapshot (for bytewax recovery): a dict with the contact ids, copies of every column
cut to the number of contacts, the counters and the last watermark (the timer heap is
rebuilt from the deadline column on restore). Size is about (8 x columns + ids) bytes
per contact plus the JSON lines kept by pending timers;
`ShardLogic.snapshot` returns copies, so later processing never mutates a snapshot.
Resuming builds the same state, so a resumed run fires the same triggers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import orjson
from bytewax.operators import StatefulBatchLogic

from engine import metrics
from engine.decode import EventBatch, decode_lines
from engine.records import (
    ContactState,
    EndOfInput,
    ShardEnd,
    TriggerOut,
    Watermark,
    event_summary,
    profile_lines,
    trigger_lines,
    wall_ms,
)
from operators.contacts import Columns, ContactIndex
from operators.counts import CountWindows
from operators.scores import ScoreColumns, crossing_time
from operators.suppress import Suppression
from operators.timers import NONE, TimerTable
from rules.compiler import RISES_ABOVE, Plan, TriggerPlan

NEVER = np.iinfo(np.int64).min

# The causing event of a trigger: its decoded dict, its name and its own time. A timer keeps only
# the event's JSON line (a fifth of the dict's bytes, and every contact holds one for an
# `inactive_for` rule) and decodes it again, to the same event, when it fires.
Causing = tuple[dict, "str | None", int]


class ShardState:
    def __init__(self, plan: Plan, contact_states: bool = False) -> None:
        """`contact_states`: after each batch, emit a `ContactState` per contact it touched
        (for profile stores that show current scores and last-seen times)."""
        self.plan = plan
        self.contact_states = contact_states
        self.index = ContactIndex()
        self.columns = Columns()
        self.columns.add("clock", np.int64, NEVER)
        self.scores = ScoreColumns(self.columns, len(plan.scores))
        self.counts = CountWindows(self.columns, [plan.triggers[t].at_least for t in plan.count_triggers])
        self.timers = TimerTable(self.columns, len(plan.timer_triggers))
        self.suppression = Suppression(self.columns, len(plan.unless_matchers), len(plan.triggers))
        self.watermark = NEVER  # the input's watermark as far as this shard knows
        self.shard = -1  # learnt from the first batch (bytewax does not tell a logic its key)
        self.suppressed_in_batch: list[tuple[str, str]] = []  # for metrics, drained per batch
        self.fired: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()  # "rule:reason"
        self._score_triggers = plan.scores_by_trigger
        self._timer_plans = [plan.triggers[t] for t in plan.timer_triggers]

    # -- events -------------------------------------------------------------------

    def process(self, batch: EventBatch, out: list[Any]) -> None:
        """Apply a batch of accepted events in order (`batch.watermarks` must be set)."""
        n = len(batch.contacts)
        if n == 0:
            return
        self.shard = batch.shard
        slots = self.index.slots(batch.contacts)
        self.columns.ensure(len(self.index))
        bits = self.plan.match(batch.names, batch.events)
        times = batch.times.tolist()
        assert batch.watermarks is not None, "the source stamps watermarks on every batch"
        watermarks = batch.watermarks.tolist()
        clock = self.columns.arrays["clock"]
        timer_next = self.columns.arrays["timer_next"]
        effects_for = self.plan.effects_for
        for i in range(n):
            slot = slots[i]
            t = times[i]
            now = int(clock[slot])
            if t > now:
                now = t
            # Timers due by the event's own time (path a) or by the watermark (path b).
            limit = now if now > watermarks[i] else watermarks[i]
            if timer_next[slot] < limit:
                self._fire_contact_timers(slot, limit, out)
            clock[slot] = now
            effects = effects_for(bits[i])
            if not effects.empty:
                self._apply(slot, now, effects, batch, i, t, out)
        if watermarks[-1] > self.watermark:
            self.watermark = watermarks[-1]
        if self.contact_states:
            for slot in dict.fromkeys(slots):
                now = int(clock[slot])
                scores = {sp.name: self.scores.value_at(slot, sp.index, now, sp.half_life_ms)
                          for sp in self.plan.scores}
                out.append(ContactState(self.index.ids[slot], scores, now))

    def _apply(self, slot: int, now: int, effects: Any, batch: EventBatch, i: int, t: int, out: list[Any]) -> None:
        line = batch.lines[i]
        plan = self.plan
        triggers = plan.triggers
        timers = self.timers
        for u in effects.unless_seen:
            self.suppression.saw(slot, u, now)
        firing: list[TriggerPlan] = []
        for trigger, cancels, starts in effects.sequences:
            tp = triggers[trigger]
            if starts:  # (re)starts: also what cancelling and then starting would leave
                timers.arm(slot, tp.timer, now + tp.within_ms, line)
            elif cancels:
                timers.cancel(slot, tp.timer)
        for s, add in effects.scores:
            sp = plan.scores[s]
            before, after = self.scores.update(slot, s, now, sp.half_life_ms, add, sp.lo, sp.hi)
            for tp in self._score_triggers.get(s, ()):
                if tp.kind == RISES_ABOVE:
                    if before < tp.threshold <= after:
                        firing.append(tp)
                elif after >= tp.threshold:
                    timers.arm(slot, tp.timer, crossing_time(after, now, sp.half_life_ms, tp.threshold), line)
                elif timers.deadline(slot, tp.timer) != NONE:
                    timers.cancel(slot, tp.timer)
                    firing.append(tp)
        for trigger in effects.counts:
            tp = triggers[trigger]
            if self.counts.add(slot, tp.count_slot, now, tp.within_ms):
                firing.append(tp)
        if firing:
            event: Causing = (batch.events[i], batch.names[i], t)
            for tp in firing:
                self._fire(slot, tp, now, event, out)

    # -- timers ---------------------------------------------------------------------

    def _fire_contact_timers(self, slot: int, before_ms: int, out: list[Any]) -> None:
        """Path (a): an event at `before_ms` first fires the contact's earlier timers."""
        for deadline, k in self.timers.due_for_contact(slot, before_ms):
            self._fire_timer(deadline, slot, k, out)

    def _fire_timer(self, deadline: int, slot: int, k: int, out: list[Any]) -> None:
        decoded, _ = decode_lines([self.timers.event(slot, k)], [0])
        event: Causing = (decoded.events[0], decoded.names[0], int(decoded.times[0]))
        self.timers.cancel(slot, k)
        self._fire(slot, self._timer_plans[k], deadline, event, out, by_timer=True)

    def advance_watermark(self, watermark: int, out: list[Any]) -> None:
        """Path (b): fire every timer with deadline < watermark."""
        if watermark > self.watermark:
            self.watermark = watermark
        for deadline, slot, k in self.timers.pop_due(self.watermark, inclusive=False):
            self._fire_timer(deadline, slot, k, out)

    def end_of_input(self, marker: EndOfInput, out: list[Any]) -> ShardEnd:
        """Fire every timer with deadline <= the largest event time of the input."""
        self.advance_watermark(self.watermark, out)
        if marker.max_time != NEVER:
            for deadline, slot, k in self.timers.pop_due(marker.max_time, inclusive=True):
                self._fire_timer(deadline, slot, k, out)
        return ShardEnd(
            pending=self.timers.pending(),
            contacts=len(self.index),
            fired=dict(self.fired),
            suppressed=dict(self.suppressed),
        )

    # -- firing -----------------------------------------------------------------------

    def _suppressed_reason(self, slot: int, tp: TriggerPlan, at_ms: int) -> str | None:
        return self.suppression.reason(slot, tp.index, at_ms, tp.unless, tp.unless_within_ms, tp.cooldown_ms)

    def _fire(self, slot: int, tp: TriggerPlan, at_ms: int, event: Causing, out: list[Any], by_timer: bool = False) -> None:
        reason = self._suppressed_reason(slot, tp, at_ms)
        if reason is not None:
            self.suppressed[f"{tp.name}:{reason}"] += 1
            self.suppressed_in_batch.append((tp.name, reason))
            return
        self.suppression.fired(slot, tp.index, at_ms)
        self.fired[tp.name] += 1
        out.extend(self._outputs(slot, tp, at_ms, event, by_timer))

    def _outputs(self, slot: int, tp: TriggerPlan, at_ms: int, event: Causing, by_timer: bool = False) -> list[Any]:
        contact = self.index.ids[slot]
        outs: list[Any] = []
        if tp.channels:
            scores = {
                sp.name: self.scores.value_at(slot, sp.index, at_ms, sp.half_life_ms) for sp in self.plan.scores
            }
            raw, name, t = event
            outs.extend(trigger_lines(tp.name, contact, at_ms, tp.channels, scores,
                                      event_summary(raw, name, t), wall_ms(), by_timer))
        if tp.profile_actions:
            outs.extend(profile_lines(tp.name, contact, at_ms, tp.profile_actions))
        return outs

    # -- recovery ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        size = len(self.index)
        columns = self.columns.snapshot(size)
        if self.shard >= 0:
            metrics.STATE_BYTES.labels(str(self.shard)).set(sum(a.nbytes for a in columns.values()))
        return {
            "version": 2,
            "ids": self.index.snapshot(),
            "columns": columns,
            "watermark": self.watermark,
            "fired": dict(self.fired),
            "suppressed": dict(self.suppressed),
        }

    @classmethod
    def restore(cls, plan: Plan, snap: dict[str, Any], contact_states: bool = False) -> ShardState:
        state = cls(plan, contact_states)
        state.index = ContactIndex.restore(snap["ids"])
        columns = snap["columns"]
        if snap.get("version", 1) == 1:
            # Version 1 timers kept (decoded event, name, time); the event's JSON encodes it again.
            kept = columns["timer_event"].copy()
            for at in zip(*np.nonzero(kept != None), strict=True):  # noqa: E711 - elementwise on objects
                kept[at] = orjson.dumps(kept[at][0])
            columns = {**columns, "timer_event": kept}
        state.columns.restore(columns, len(state.index))
        state.timers.restore()
        state.watermark = snap["watermark"]
        state.shard = snap.get("shard", -1)
        state.fired = Counter(snap["fired"])
        state.suppressed = Counter(snap["suppressed"])
        return state


class ShardLogic(StatefulBatchLogic[Any, Any, dict]):
    """Bytewax glue: feeds batches, watermarks and the end marker to a ShardState."""

    def __init__(self, plan: Plan, resume: dict | None, contact_states: bool = False, live: bool = False) -> None:
        """`live`: trigger latency (emission − event time) is observed for the metrics."""
        self.state = (ShardState(plan, contact_states) if resume is None
                      else ShardState.restore(plan, resume, contact_states))
        self.live = live
        # Labelled children resolved once: `.labels()` costs more than the observation itself.
        self._batch_duration = metrics.BATCH_DURATION.labels("rules")
        self._batch_size = metrics.BATCH_SIZE.labels("rules")
        self._latency = {True: metrics.TRIGGER_LATENCY.labels("timer"), False: metrics.TRIGGER_LATENCY.labels("event")}
        self._fired_children: dict[tuple[str, str], Any] = {}
        self._shard_gauges: tuple[Any, Any] | None = None

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        out: list[Any] = []
        state = self.state
        events = 0
        for value in values:
            if isinstance(value, EventBatch):
                events += len(value.contacts)
                state.process(value, out)
            elif isinstance(value, Watermark):
                state.advance_watermark(value.value, out)
            elif isinstance(value, EndOfInput):
                out.append(state.end_of_input(value, out))
        state.advance_watermark(state.watermark, out)
        self._observe(out, time.perf_counter() - started, events)
        return out, StatefulBatchLogic.RETAIN

    def _observe(self, out: list[Any], seconds: float, events: int) -> None:
        """Metrics, once per batch."""
        state = self.state
        if events:
            self._batch_duration.observe(seconds)
            self._batch_size.observe(events)
        if out:
            fired: Counter[tuple[str, str]] = Counter()
            now_ms = wall_ms() if self.live else 0
            for v in out:
                if isinstance(v, TriggerOut):
                    fired[(v.rule, v.channel)] += 1
                    if self.live:
                        self._latency[v.by_timer].observe(max(0.0, (now_ms - v.at_ms) / 1000))
            for key, n in fired.items():
                child = self._fired_children.get(key)
                if child is None:
                    child = self._fired_children[key] = metrics.TRIGGERS_FIRED.labels(*key)
                child.inc(n)
        if state.suppressed_in_batch:
            for (rule, reason), n in Counter(state.suppressed_in_batch).items():
                metrics.TRIGGERS_SUPPRESSED.labels(rule, reason).inc(n)
            state.suppressed_in_batch.clear()
        if state.shard >= 0:
            if self._shard_gauges is None:
                shard = str(state.shard)
                self._shard_gauges = (metrics.CONTACTS.labels(shard), metrics.PENDING_TIMERS.labels(shard))
            contacts, pending = self._shard_gauges
            contacts.set(len(state.index))
            pending.set(state.timers.pending())

    def snapshot(self) -> dict:
        return self.state.snapshot()
