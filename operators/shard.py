"""The per-shard rule operator: all contacts of one virtual shard, columnar, one timer heap.

Each shard is one bytewax stateful key. Its logic owns:

* `ContactIndex`: contact id -> slot;
* per-contact columns (`Columns`, numpy, slot-major): the contact clock, the dedupe
  ring, score values and update times, count rings, timer deadlines and the events
  that armed them, `unless` last-seen times and last firing times;
* one `TimerTable` heap for the whole shard.

Events arrive as columnar `EventBatch`es. Per batch, matchers are evaluated by event
name (`Plan.match`) and each distinct matcher bit set is turned into an `Effects`
record once; the per-event loop then only applies effects in arrival order, because
the SPEC's per-contact semantics (clock, timers firing between events, cooldowns) are
sequential per contact.

Snapshot (for bytewax recovery): a dict with the contact ids, copies of every column
cut to the number of contacts, the heap, the counters and the shard's largest event
time. Size is about (8 x columns + ids) bytes per contact plus 24 bytes per heap entry;
`ShardLogic.snapshot` returns copies, so later processing never mutates a snapshot.
Resuming builds the same state, so a resumed run fires the same triggers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic

from engine.decode import EventBatch
from engine.records import (
    EndOfInput,
    ShardEnd,
    event_summary,
    profile_lines,
    trigger_lines,
    wall_ms,
)
from operators.contacts import Columns, ContactIndex
from operators.counts import CountWindows
from operators.dedupe import MessageRing, message_digest
from operators.scores import ScoreColumns, crossing_time
from operators.suppress import Suppression
from operators.timers import NONE, TimerTable
from rules.compiler import RISES_ABOVE, Plan, TriggerPlan

NEVER = np.iinfo(np.int64).min

# What a timer carries: the causing event, its name and its own time.
Armed = tuple[dict, "str | None", int]


class ShardState:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.index = ContactIndex()
        self.columns = Columns()
        self.columns.add("clock", np.int64, NEVER)
        self.ring = MessageRing(self.columns)
        self.scores = ScoreColumns(self.columns, len(plan.scores))
        self.counts = CountWindows(self.columns, [plan.triggers[t].at_least for t in plan.count_triggers])
        self.timers = TimerTable(self.columns, len(plan.timer_triggers))
        self.suppression = Suppression(self.columns, len(plan.unless_matchers), len(plan.triggers))
        self.max_time = NEVER  # largest time of this shard's accepted events
        self.processed = 0
        self.deduplicated = 0
        self.fired: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()  # "rule:reason"
        self._score_triggers = plan.scores_by_trigger
        self._timer_plans = [plan.triggers[t] for t in plan.timer_triggers]

    # -- events -------------------------------------------------------------------

    def process(self, batch: EventBatch, out: list[Any]) -> None:
        n = len(batch.contacts)
        if n == 0:
            return
        slots = self.index.slots(batch.contacts)
        self.columns.ensure(len(self.index))
        bits = self.plan.match(batch.names, batch.events)
        digests = [message_digest(m) for m in batch.message_ids]
        times = batch.times.tolist()
        clock = self.columns.arrays["clock"]
        timer_next = self.columns.arrays["timer_next"]
        ring = self.ring
        effects_for = self.plan.effects_for
        max_time = self.max_time
        deduplicated = 0
        for i in range(n):
            slot = slots[i]
            digest = digests[i]
            if digest and ring.seen(slot, digest):
                deduplicated += 1
                continue
            ring.accept(slot, digest)
            t = times[i]
            if t > max_time:
                max_time = t
            now = int(clock[slot])
            if t > now:
                now = t
            if timer_next[slot] < now:
                self._fire_contact_timers(slot, now, out)
            clock[slot] = now
            effects = effects_for(bits[i])
            if not effects.empty:
                self._apply(slot, now, effects, (batch.events[i], batch.names[i], t), out)
        self.max_time = max_time
        self.deduplicated += deduplicated
        self.processed += n - deduplicated

    def _apply(self, slot: int, now: int, effects: Any, event: Armed, out: list[Any]) -> None:
        plan = self.plan
        triggers = plan.triggers
        timers = self.timers
        for u in effects.unless_seen:
            self.suppression.saw(slot, u, now)
        firing: list[TriggerPlan] = []
        for t, cancels, starts in effects.sequences:
            tp = triggers[t]
            if cancels:
                timers.cancel(slot, tp.timer)
            if starts:
                timers.arm(slot, tp.timer, now + tp.within_ms, event)
        for s, add in effects.scores:
            sp = plan.scores[s]
            before, after = self.scores.update(slot, s, now, sp.half_life_ms, add, sp.lo, sp.hi)
            for tp in self._score_triggers.get(s, ()):
                if tp.kind == RISES_ABOVE:
                    if before < tp.threshold <= after:
                        firing.append(tp)
                elif after >= tp.threshold:
                    timers.arm(slot, tp.timer, crossing_time(after, now, sp.half_life_ms, tp.threshold), event)
                elif timers.deadline(slot, tp.timer) != NONE:
                    timers.cancel(slot, tp.timer)
                    firing.append(tp)
        for t in effects.counts:
            tp = triggers[t]
            if self.counts.add(slot, tp.count_slot, now, tp.within_ms):
                firing.append(tp)
        for tp in firing:
            self._fire(slot, tp, now, event, out)

    # -- timers ---------------------------------------------------------------------

    def _fire_contact_timers(self, slot: int, before_ms: int, out: list[Any]) -> None:
        """Path (a): an event at `before_ms` first fires the contact's earlier timers."""
        for deadline, k in self.timers.due_for_contact(slot, before_ms):
            self._fire_timer(deadline, slot, k, out)

    def _fire_timer(self, deadline: int, slot: int, k: int, out: list[Any]) -> None:
        event = self.timers.event(slot, k)
        self.timers.cancel(slot, k)
        self._fire(slot, self._timer_plans[k], deadline, event, out)

    def advance_watermark(self, watermark: int, out: list[Any]) -> None:
        """Path (b): fire every timer with deadline < watermark."""
        for deadline, slot, k in self.timers.pop_due(watermark, inclusive=False):
            self._fire_timer(deadline, slot, k, out)

    def local_watermark(self) -> int:
        """The largest event time this shard accepted, minus lateness.

        Never ahead of the SPEC's global watermark (the shard saw a subset of the input
        read so far), so a timer fired by it is never fired early.
        """
        return self.max_time - self.plan.lateness_ms if self.max_time != NEVER else NEVER

    def end_of_input(self, marker: EndOfInput, out: list[Any]) -> ShardEnd:
        """Fire timers up to this shard's largest time; report those that depend on others."""
        if self.max_time != NEVER:
            for deadline, slot, k in self.timers.pop_due(self.max_time, inclusive=True):
                self._fire_timer(deadline, slot, k, out)
        conditional = []
        for deadline, slot, k in self.timers.due_between(self.max_time, marker.max_time):
            tp = self._timer_plans[k]
            reason = self._suppressed_reason(slot, tp, deadline)
            outs = [] if reason else self._outputs(slot, tp, deadline, self.timers.event(slot, k))
            conditional.append((deadline, tp.name, reason, outs))
        return ShardEnd(
            max_time=self.max_time,
            processed=self.processed,
            deduplicated=self.deduplicated,
            pending=self.timers.pending(),
            contacts=len(self.index),
            fired=dict(self.fired),
            suppressed=dict(self.suppressed),
            conditional=conditional,
        )

    # -- firing -----------------------------------------------------------------------

    def _suppressed_reason(self, slot: int, tp: TriggerPlan, at_ms: int) -> str | None:
        return self.suppression.reason(slot, tp.index, at_ms, tp.unless, tp.unless_within_ms, tp.cooldown_ms)

    def _fire(self, slot: int, tp: TriggerPlan, at_ms: int, event: Armed, out: list[Any]) -> None:
        reason = self._suppressed_reason(slot, tp, at_ms)
        if reason is not None:
            self.suppressed[f"{tp.name}:{reason}"] += 1
            return
        self.suppression.fired(slot, tp.index, at_ms)
        self.fired[tp.name] += 1
        out.extend(self._outputs(slot, tp, at_ms, event))

    def _outputs(self, slot: int, tp: TriggerPlan, at_ms: int, event: Armed) -> list[Any]:
        contact = self.index.ids[slot]
        outs: list[Any] = []
        if tp.channels:
            scores = {
                sp.name: self.scores.value_at(slot, sp.index, at_ms, sp.half_life_ms) for sp in self.plan.scores
            }
            raw, name, t = event
            outs.extend(trigger_lines(tp.name, contact, at_ms, tp.channels, scores,
                                      event_summary(raw, name, t), wall_ms()))
        if tp.profile_actions:
            outs.extend(profile_lines(tp.name, contact, at_ms, tp.profile_actions))
        return outs

    # -- recovery ---------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        size = len(self.index)
        return {
            "version": 1,
            "ids": self.index.snapshot(),
            "columns": self.columns.snapshot(size),
            "heap": self.timers.snapshot(),
            "max_time": self.max_time,
            "processed": self.processed,
            "deduplicated": self.deduplicated,
            "fired": dict(self.fired),
            "suppressed": dict(self.suppressed),
        }

    @classmethod
    def restore(cls, plan: Plan, snap: dict[str, Any]) -> ShardState:
        state = cls(plan)
        state.index = ContactIndex.restore(snap["ids"])
        state.columns.restore(snap["columns"], len(state.index))
        state.timers.restore(snap["heap"])
        state.max_time = snap["max_time"]
        state.processed = snap["processed"]
        state.deduplicated = snap["deduplicated"]
        state.fired = Counter(snap["fired"])
        state.suppressed = Counter(snap["suppressed"])
        return state


class ShardLogic(StatefulBatchLogic[Any, Any, dict]):
    """Bytewax glue: feeds batches and markers to a ShardState, applies the watermark."""

    def __init__(self, plan: Plan, resume: dict | None) -> None:
        self.state = ShardState(plan) if resume is None else ShardState.restore(plan, resume)

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        state = self.state
        for value in values:
            if isinstance(value, EventBatch):
                state.process(value, out)
            elif isinstance(value, EndOfInput):
                state.advance_watermark(state.local_watermark(), out)
                out.append(state.end_of_input(value, out))
        state.advance_watermark(state.local_watermark(), out)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict:
        return self.state.snapshot()
