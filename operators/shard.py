"""The per-shard rule operator: all contacts of one virtual shard, columnar, one timer table.

Each shard is one bytewax stateful key. Its logic owns:

* `ContactIndex`: contact id -> slot;
* per-contact columns (`Columns`, numpy, slot-major): the contact clock, score values and the ages
  of their updates, the timers in the contact's row (deadlines after the clock, the events that armed
  them); times are uint32 milliseconds relative to the clock, and snapshots hold them as int64 times;
* one `TimerTable` for the whole shard (pending timers, the bounds that find due ones, kept events);
* state most contacts never have, in hash tables (operators/sparse.py): `CountRings`, the recent
  times of count rules, and `SuppressionTimes`, the `unless` last-seen and last firing times.

Events arrive as columnar `EventBatch`es, already de-duplicated by the source, each stamped with
the input's watermark just before it and carrying its matcher bit set. Per batch, each distinct bit
set becomes an effect id (`rules.compiler.EffectTable`), and one compiled loop (`_apply_events`)
applies the events in arrival order, because the SPEC's per-contact semantics (clock, timers firing
between events, cooldowns) are sequential per contact. Before an event is applied, its contact's
timers with a deadline below max(effective time, watermark) fire: path (a) and path (b) of the SPEC
at the exact point of the input where they happen. Timers of other contacts are fired by watermark
once per batch (their order cannot change any outcome).

The loop writes firings into `Firings` (rule, slot, time, the causing event's summary, the scores);
Python then turns each firing into its trigger records and profile changes -- work per firing, not
per event.

Snapshot (for bytewax recovery): a dict with the contact index, copies of every column cut to the
number of contacts, the live part of the event arena, the count rings
and suppression times, the counters and the last watermark. Size is about 8 bytes x (1 + 2 scores
+ 1.5 x timer rules) per contact, plus the contact id, the summaries pending timers keep, 16 bytes
per suppression time and 8 x (K + 3) bytes per count ring.
`ShardLogic.snapshot` returns copies, so later processing never mutates a snapshot. Resuming builds
the same state, so a resumed run fires the same triggers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from bytewax.operators import StatefulBatchLogic

from engine import metrics, summaries
from engine.compiled import kernel
from engine.decode import EventBatch
from engine.records import (
    ContactState,
    EndOfInput,
    ProfileOut,
    ProfileRecords,
    RecordWriter,
    ShardEnd,
    TriggerRecords,
    Watermark,
    wall_ms,
)
from engine.snapshots import pack, unpack
from engine.times import format_time
from engine.trigger_writer import TriggerWriter
from operators import counts, scores, sparse, suppress, timers
from operators.contacts import Columns, ContactIndex
from operators.counts import CountRings
from operators.scores import ScoreColumns
from operators.suppress import REASONS, SuppressionTimes
from operators.timers import TimerTable
from rules.compiler import RISES_ABOVE, SEQ_START, EffectTable, Plan, PlanArrays, per_thread

NEVER = np.iinfo(np.int64).min
SNAPSHOT_VERSION = 9

# Where a firing's causing event is: the batch (event index) or the timer arena (offset).
FROM_BATCH, FROM_ARENA = 0, 1


class Firings:
    """What the compiled loop fired, as columns; `count` rows are filled.

    Scratch of a worker thread, not of a shard (`for_thread`): a shard's firings are written as records
    before its batch call returns, so the shards a worker runs one after another can take turns. One
    table per shard was 13 of the state benchmark's bytes per contact (64 shards of 4,096 rows)."""

    def __init__(self, capacity: int, n_scores: int, max_per_event: int) -> None:
        self.trigger = np.empty(capacity, np.int32)
        self.slot = np.empty(capacity, np.int32)
        self.at = np.empty(capacity, np.int64)
        self.by_timer = np.empty(capacity, np.uint8)
        self.source = np.empty(capacity, np.uint8)
        self.offset = np.empty(capacity, np.int64)
        self.length = np.empty(capacity, np.int64)
        self.scores = np.empty((capacity, max(n_scores, 1)), np.float64)
        self.count = np.zeros(1, np.int64)
        self.pending = np.empty(max_per_event, np.int32)  # the loop's list of one event's firings
        self.owner: object = None  # the shard whose firings the rows are

    @classmethod
    def for_thread(cls, plan: Plan) -> Firings:
        """This thread's table for `plan` (see the class docstring)."""
        per_event = len(plan.triggers) + len(plan.timer_triggers)
        return per_thread(plan, "firings",
                          lambda: cls(max(4096, 4 * per_event), len(plan.scores), max(1, len(plan.triggers))))

    def arrays(self) -> tuple[Any, ...]:
        return (self.trigger, self.slot, self.at, self.by_timer, self.source, self.offset, self.length, self.scores,
                self.count, self.pending)

    @property
    def capacity(self) -> int:
        return len(self.trigger)


class ShardState:
    def __init__(self, plan: Plan, contact_states: bool = False, profile_changes: bool = True) -> None:
        """`contact_states`: after each batch, emit a `ContactState` per contact it touched
        (for profile stores that show current scores and last-seen times). `profile_changes`: emit
        the `tag`/`untag`/`stage` actions of firings (False when no profile store takes them)."""
        self.plan = plan
        self.contact_states = contact_states
        self.profile_changes = profile_changes
        self.index = ContactIndex()
        self.columns = Columns()
        self.columns.add("clock", np.int64, NEVER)
        self.scores = ScoreColumns(self.columns, len(plan.scores))
        self.counts = CountRings([plan.triggers[t].at_least for t in plan.count_triggers])
        self.timers = TimerTable(self.columns, len(plan.timer_triggers))
        self.suppression = SuppressionTimes(len(plan.unless_matchers), len(plan.triggers))
        self.plan_arrays = PlanArrays.of(plan).as_tuple()
        self.effects = EffectTable.for_thread(plan)
        self.watermark = NEVER  # the input's watermark as far as this shard knows
        self.shard = -1  # learnt from the first batch (bytewax does not tell a logic its key)
        n_triggers = max(len(plan.triggers), 1)
        self.fired_counts = np.zeros(n_triggers, np.int64)
        self.suppressed_counts = np.zeros((n_triggers, len(REASONS) + 1), np.int64)
        # Most firings one event can cause: its own triggers, and its contact's due timers first.
        self._per_event = len(plan.triggers) + len(plan.timer_triggers)
        self._puts_per_event = len(plan.unless_matchers) + self._per_event  # suppression times an event may set
        self._trigger_writer = TriggerWriter([(t.name, t.channels) for t in plan.triggers], [sp.name for sp in plan.scores])
        self._profile_writers = [RecordWriter(t.name, (), t.profile_actions) if t.profile_actions else None
                                 for t in plan.triggers]
        self._no_events = np.zeros(1, np.uint8)
        self._firing_batch: EventBatch | None = None
        self.suppressed_in_batch: list[tuple[str, str]] = []  # for metrics, drained per batch

    @property
    def firings(self) -> Firings:
        """The thread's firings table, taken over by this shard (the previous one has written its rows)."""
        table = Firings.for_thread(self.plan)
        if table.owner is not self:
            if table.count[0]:  # (not an assert: python -O would let the rows go out under this shard's ids)
                raise RuntimeError("another shard's firings are not written yet")
            table.owner = self
        return table

    # -- events -------------------------------------------------------------------

    def _state(self) -> tuple[Any, ...]:
        a = self.columns.arrays
        return (a["clock"], a["score_value"], a["score_age"], self.scores.arrays(), self.counts.arrays(),
                self.suppression.arrays(), self.fired_counts, self.suppressed_counts)

    def process(self, batch: EventBatch, out: list[Any], flush: bool = True) -> None:
        """Apply a batch of accepted events in order (`batch.watermarks` must be set). `flush=False` leaves
        the records of its firings to the next `flush` (one set of records for several steps)."""
        n = len(batch)
        if n == 0:
            return
        assert batch.watermarks is not None, "the source stamps watermarks on every batch"
        self.flush(out)  # an earlier batch's firings: they refer to its events and to the arena as it is
        self.shard = batch.shard
        slots = self.index.slots(batch.contact_hashes, batch.contacts)
        self.columns.ensure(len(self.index))
        effect_ids = self.effects.ids(batch.bits)
        summaries = batch.summaries
        self.timers.reserve(summaries.total_bytes(), len(self.index))
        events = (slots, batch.times, batch.watermarks, effect_ids, summaries.data, summaries.starts, summaries.ends)
        self._firing_batch = batch
        self._make_room(out)
        i = 0
        while True:
            i = _apply_events(self._state(), self.timers.arrays(), self.plan_arrays, self.effects.as_tuple(), events,
                              self.firings.arrays(), i, self._per_event, self._puts_per_event)
            if i == n:
                break
            self._make_room(out)
        if batch.watermarks[-1] > self.watermark:
            self.watermark = int(batch.watermarks[-1])
        if flush:
            self.flush(out)
        if self.contact_states:
            touched = np.unique(slots)
            clock = self.columns.arrays["clock"]
            for slot in touched.tolist():
                now = int(clock[slot])
                out.append(ContactState(self.index.id(slot), self.scores_at(slot, now), now))

    def flush(self, out: list[Any]) -> None:
        """The records of the firings not yet written; then the arena may be compacted (firings refer to it)."""
        self._drain(out)
        self._firing_batch = None
        self.timers.compact_events(len(self.index))

    def scores_at(self, slot: int, at_ms: int) -> dict[str, float]:
        a = self.columns.arrays
        return {sp.name: scores.value_at(a["score_value"], a["score_age"], self.scores.arrays(), a["clock"], slot,
                                         sp.index, at_ms, sp.half_life_ms, scores.TWO) for sp in self.plan.scores}

    # -- timers ---------------------------------------------------------------------

    def advance_watermark(self, watermark: int, out: list[Any], flush: bool = True) -> None:
        """Path (b): fire every timer with deadline < watermark (`flush` as in `process`)."""
        if watermark > self.watermark:
            self.watermark = watermark
        self._pop_due(self.watermark, out)
        if flush:
            self.flush(out)

    def _pop_due(self, bound: int, out: list[Any]) -> None:
        while not _fire_due(self._state(), self.timers.arrays(), self.plan_arrays, self.firings.arrays(), bound,
                            len(self.index)):
            self._make_room(out)
        self.timers.release_due()

    def _make_room(self, out: list[Any]) -> None:
        """Room for one more event in every table the compiled loops fill (what they stop for): a full
        firings table has its records written, the suppression and spill tables, the count pool and the
        due buffer grow."""
        if int(self.firings.count[0]) + self._per_event > self.firings.capacity:
            self._drain(out)
        self.suppression.make_room(self._puts_per_event)
        self.scores.make_room()
        self.counts.make_room()
        self.timers.make_spill_room(self.timers.width)
        self.timers.make_due_room()

    def end_of_input(self, marker: EndOfInput, out: list[Any]) -> ShardEnd:
        """Fire every timer with deadline <= the largest event time of the input."""
        self.advance_watermark(self.watermark, out, flush=False)
        if marker.max_time != NEVER:
            self._pop_due(marker.max_time + 1, out)
        self.flush(out)
        return ShardEnd(pending=self.timers.pending(), contacts=len(self.index), fired=self.fired(),
                        suppressed=self.suppressed())

    # -- firing -----------------------------------------------------------------------

    def fired(self) -> dict[str, int]:
        return {t.name: int(n) for t, n in zip(self.plan.triggers, self.fired_counts.tolist(), strict=False) if n}

    def suppressed(self) -> dict[str, int]:
        """Suppressed firings by "rule:reason"."""
        out = {}
        for t in self.plan.triggers:
            for code, reason in enumerate(REASONS, start=1):
                n = int(self.suppressed_counts[t.index, code])
                if n:
                    out[f"{t.name}:{reason}"] = n
        return out

    def _drain(self, out: list[Any]) -> None:
        """Trigger records (one `TriggerRecords` for all the firings the loop wrote) and profile changes."""
        f = self.firings
        count = int(f.count[0])
        if not count:
            return
        f.count[0] = 0
        emitted = format_time(wall_ms()).encode()
        if self._trigger_writer.emits:
            batch = self._firing_batch  # the batch whose events firings with source FROM_BATCH refer to
            events = batch.summaries.data if batch is not None else self._no_events
            records = self._trigger_writer.write(
                f.trigger[:count], f.slot[:count], f.at[:count], f.by_timer[:count], f.source[:count], f.offset[:count],
                f.length[:count], f.scores[:count], events, self.timers.arena, self.timers.shared, self.index.id_data,
                self.index.id_offsets,
                emitted)
            if len(records):
                out.append(records)
        if self.profile_changes:
            writers = self._profile_writers
            for j, trigger in enumerate(f.trigger[:count].tolist()):
                writer = writers[trigger]
                if writer is not None:
                    at = int(f.at[j])
                    out.extend(writer.profile(self.index.id(int(f.slot[j])), at, format_time(at).encode()))

    def take_suppressed_in_batch(self, before: np.ndarray) -> list[tuple[tuple[str, str], int]]:
        diff = self.suppressed_counts - before
        out = []
        for trig, code in zip(*np.nonzero(diff), strict=True):
            out.append(((self.plan.triggers[int(trig)].name, REASONS[int(code) - 1]), int(diff[trig, code])))
        return out

    # -- recovery ---------------------------------------------------------------------

    def nbytes(self) -> int:
        """Bytes of state this shard holds (allocated), the rule plan excluded."""
        return (self.index.nbytes() + self.columns.nbytes() + self.scores.nbytes() + self.timers.nbytes()
                + self.counts.nbytes() + self.suppression.nbytes())

    def snapshot(self, copy: bool = True) -> dict[str, Any]:
        """The shard's state; `copy=False` gives views into the live arrays, valid until the next batch
        (for `pack`, which compresses them before returning)."""
        size = len(self.index)
        timers = self.timers.snapshot(size, copy)  # first: it compacts the arena, which moves the timers' offsets
        columns = self._columns_snapshot(size, copy)
        snap = {
            "version": SNAPSHOT_VERSION,
            "index": self.index.snapshot(copy),
            "columns": columns,
            "timers": timers,
            "counts": self.counts.snapshot(copy),
            "suppression": self.suppression.snapshot(),
            "watermark": self.watermark,
            "shard": self.shard,
            "fired": self.fired_counts.copy(),
            "suppressed": self.suppressed_counts.copy(),
        }
        self.observe_size()
        return snap

    def _columns_snapshot(self, size: int, copy: bool) -> dict[str, np.ndarray]:
        """The columns' first `size` rows, with int64 times where the state keeps the scores' ages and the
        timers' deadlines after the clock."""
        columns = self.columns.snapshot(size, copy)
        del columns["score_age"], columns["timer_due_in"]
        columns["score_last"] = self.scores.lasts(size)
        columns["timer_deadline"] = self.timers.deadlines(size)
        return columns

    def snapshot_bytes(self) -> int:
        """Bytes a snapshot takes before packing: the columns and the index cut to the contacts, the
        events pending timers keep."""
        size = len(self.index)
        columns = self.columns.snapshot(size, copy=False)
        widened = 4 * (columns["score_age"].size + columns["timer_due_in"].size)  # kept as int64 times
        return (sum(a.nbytes for a in columns.values()) + widened
                + sum(a.nbytes for a in self.index.snapshot(False).values())
                + self.timers.event_bytes() + self.counts.snapshot_bytes() + self.suppression.snapshot_bytes())

    def observe_size(self) -> None:
        if self.shard >= 0:
            metrics.STATE_BYTES.labels(str(self.shard)).set(self.snapshot_bytes())

    @classmethod
    def restore(cls, plan: Plan, snap: dict[str, Any], contact_states: bool = False,
                profile_changes: bool = True) -> ShardState:
        version = snap.get("version")
        if version in (3, 4):  # timers kept their events' summaries as JSON: packed (format 3: re-laid out first)
            snap = {**snap, "columns": dict(snap["columns"]), "version": SNAPSHOT_VERSION}
            arena = snap["timers"]["arena"]
            if version == 3:  # an int64 offset and an int32 length per timer
                arena = TimerTable.from_offsets(snap["columns"], arena)["arena"]
            snap["timers"] = TimerTable.convert_events(snap["columns"], arena, summaries.from_json)
            version = 5
        if version == 5:  # dense columns of count rings, unless and last-fired times
            snap = {**snap, "columns": dict(snap["columns"]), "version": SNAPSHOT_VERSION}
            columns = snap["columns"]
            snap["counts"] = CountRings.from_columns(columns.pop("count_times"), columns.pop("count_next"),
                                                     [plan.triggers[t].at_least for t in plan.count_triggers])
            snap["suppression"] = SuppressionTimes.from_columns(columns.pop("unless_seen"), columns.pop("last_fired"),
                                                                len(plan.unless_matchers), len(plan.triggers))
            version = 6
        if version == 6:  # a deadline and a reference for every contact and timer rule
            snap = {**snap, "columns": dict(snap["columns"]), "version": SNAPSHOT_VERSION}
            snap["timers"] = {**snap["timers"], **TimerTable.from_dense(snap["columns"])}
            version = 7
        if version == 7:  # arena records with a length of their own, padded to 8
            snap = {**snap, "columns": dict(snap["columns"]), "version": SNAPSHOT_VERSION}
            snap["timers"] = TimerTable.from_legacy_records(snap["columns"], snap["timers"])
            version = 8
        if version == 8:  # arena records that are packed summaries
            snap = {**snap, "columns": dict(snap["columns"]), "version": SNAPSHOT_VERSION}
            snap["timers"] = TimerTable.from_packed_records(snap["columns"], snap["timers"])
        if snap.get("version") != SNAPSHOT_VERSION:
            raise RecoveryFormatError(
                f"this recovery directory holds shard state of format {snap.get('version', 1)}, written by an "
                f"earlier halflife; this release reads format {SNAPSHOT_VERSION}. Finish the run with the release "
                f"that wrote it, or start with an empty --recovery directory (input is then read again from the "
                f"start of the file or stream).")
        state = cls(plan, contact_states, profile_changes)
        state.index = ContactIndex.restore(snap["index"])
        size = len(state.index)
        columns = dict(snap["columns"])
        lasts, deadlines = columns.pop("score_last"), columns.pop("timer_deadline")
        state.columns.restore(columns, size)
        state.scores.restore_lasts(lasts, size)
        state.timers.restore(size, snap["timers"], deadlines)
        state.counts.restore(snap["counts"])
        state.suppression.restore(snap["suppression"])
        state.watermark = snap["watermark"]
        state.shard = snap.get("shard", -1)
        state.fired_counts[:] = snap["fired"]
        state.suppressed_counts[:] = snap["suppressed"]
        return state


class RecoveryFormatError(RuntimeError):
    """A snapshot this release cannot read."""


class ShardLogic(StatefulBatchLogic[Any, Any, tuple | None]):
    """Bytewax glue: feeds batches, watermarks and the end marker to a ShardState."""

    def __init__(self, plan: Plan, resume: tuple | dict | None, contact_states: bool = False, live: bool = False,
                 profile_changes: bool = True, recovery: bool = True) -> None:
        """`live`: trigger latency (emission − event time) is observed for the metrics; `recovery`:
        snapshots are kept (bytewax asks for one at every epoch's end even when it has no recovery
        directory to write it to: then none is taken); the other flags are ShardState's."""
        self.state = (ShardState(plan, contact_states, profile_changes) if resume is None
                      else ShardState.restore(plan, unpack(resume), contact_states, profile_changes))
        self.live = live
        self.recovery = recovery
        # Labelled children resolved once: `.labels()` costs more than the observation itself.
        self._batch_duration = metrics.BATCH_DURATION.labels("rules")
        self._batch_size = metrics.BATCH_SIZE.labels("rules")
        self._snapshot_duration = metrics.SNAPSHOT_DURATION.labels("rules")
        self._latency = {True: metrics.TRIGGER_LATENCY.labels("timer"), False: metrics.TRIGGER_LATENCY.labels("event")}
        self._fired_children: dict[int, list[Any]] = {}
        self._shard_gauges: tuple[Any, Any] | None = None

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        started = time.perf_counter()
        out: list[Any] = []
        state = self.state
        fired_before = state.fired_counts.copy()
        suppressed_before = state.suppressed_counts.copy()
        events = 0
        for value in values:  # the records of all their firings are written once, at the end
            if isinstance(value, EventBatch):
                events += len(value)
                state.process(value, out, flush=False)
            elif isinstance(value, Watermark):
                state.advance_watermark(value.value, out, flush=False)
            elif isinstance(value, EndOfInput):
                out.append(state.end_of_input(value, out))
        state.advance_watermark(state.watermark, out)
        self._observe(out, time.perf_counter() - started, events, fired_before, suppressed_before)
        # Records leave as one item per kind: bytewax's cost is per item.
        triggers = [v for v in out if isinstance(v, TriggerRecords)]
        profiles = [v for v in out if isinstance(v, ProfileOut | ContactState)]
        grouped: list[Any] = [v for v in out if isinstance(v, ShardEnd)]
        if triggers:
            grouped.insert(0, TriggerRecords.concat(triggers))
        if profiles:
            grouped.insert(0, ProfileRecords(profiles))
        return grouped, StatefulBatchLogic.RETAIN

    def _observe(self, out: list[Any], seconds: float, events: int, fired_before: np.ndarray,
                 suppressed_before: np.ndarray) -> None:
        """Metrics, once per batch, from the shard's counters (no work per record outside live mode)."""
        state = self.state
        if events:
            self._batch_duration.observe(seconds)
            self._batch_size.observe(events)
        fired = np.flatnonzero(state.fired_counts != fired_before)
        for trigger in fired.tolist():
            n = int(state.fired_counts[trigger] - fired_before[trigger])
            for child in self._fired_children_of(trigger):
                child.inc(n)
        if self.live and len(fired):
            now_ms = wall_ms()
            for v in out:
                if isinstance(v, TriggerRecords):
                    for at_ms, by_timer in zip(v.at_ms.tolist(), v.by_timer.tolist(), strict=True):
                        self._latency[by_timer].observe(max(0.0, (now_ms - at_ms) / 1000))
        if not np.array_equal(state.suppressed_counts, suppressed_before):
            for (rule, reason), n in state.take_suppressed_in_batch(suppressed_before):
                metrics.TRIGGERS_SUPPRESSED.labels(rule, reason).inc(n)
        if state.shard >= 0:
            if self._shard_gauges is None:
                shard = str(state.shard)
                self._shard_gauges = (metrics.CONTACTS.labels(shard), metrics.PENDING_TIMERS.labels(shard))
            contacts, pending = self._shard_gauges
            contacts.set(len(state.index))
            pending.set(state.timers.pending())

    def _fired_children_of(self, trigger: int) -> list[Any]:
        """The `triggers_fired` children of a rule: one per channel it writes records to."""
        children = self._fired_children.get(trigger)
        if children is None:
            t = self.state.plan.triggers[trigger]
            children = self._fired_children[trigger] = [metrics.TRIGGERS_FIRED.labels(t.name, c) for c in t.channels]
        return children

    def snapshot(self) -> tuple | None:
        if not self.recovery:
            self.state.observe_size()
            return None
        started = time.perf_counter()
        packed = pack(self.state.snapshot(copy=False))
        self._snapshot_duration.observe(time.perf_counter() - started)
        return packed


# -- the compiled loop ---------------------------------------------------------------------------------
#
# Tuples, unpacked by position (see ShardState._state, TimerTable.arrays, PlanArrays, EffectTable,
# Firings.arrays):
#   state   (clock, score_value, score_age, far score times, count rings, suppression times, fired, suppressed)
#   plan    PlanArrays fields in order
#   effects (unless, sequence, add, has, count, empty)
#   events  (slots, times, watermarks, effect ids, summary data, summary starts, summary ends)


@kernel(inline=True)
def _fire(state, plan, out, slot, trigger, at_ms, by_timer, source, offset, length):  # type: ignore[no-untyped-def]
    times, fired, suppressed = state[5], state[6], state[7]
    unless, unless_within, cooldown = plan[9], plan[10], plan[11]
    why = suppress.reason(times, slot, trigger, at_ms, unless[trigger], unless_within[trigger], cooldown[trigger])
    if why != suppress.NOT_SUPPRESSED:
        suppressed[trigger, why] += 1
        return
    suppress.fired(times, slot, trigger, at_ms)
    fired[trigger] += 1
    o_trigger, o_slot, o_at, o_timer, o_source, o_offset, o_length, o_scores, o_count, _ = out
    j = o_count[0]
    o_count[0] = j + 1
    o_trigger[j] = trigger
    o_slot[j] = slot
    o_at[j] = at_ms
    o_timer[j] = by_timer
    o_source[j] = source
    o_offset[j] = offset
    o_length[j] = length
    clock, values, ages, far, half_life, two = state[0], state[1], state[2], state[3], plan[0], plan[17]
    for s in range(len(half_life)):
        o_scores[j, s] = scores.value_at(values, ages, far, clock, slot, s, at_ms, half_life[s], two)


@kernel(inline=True)
def _fire_timer(state, tm, plan, out, deadline, slot, k):  # type: ignore[no-untyped-def]
    offset = timers.cancel(tm, slot, k)
    length = summaries.kept_packed_length(tm[4], offset, tm[6])
    _fire(state, plan, out, slot, plan[13][k], deadline, 1, FROM_ARENA, offset, length)


@kernel
def _fire_due(state, tm, plan, out, bound, size):  # type: ignore[no-untyped-def]
    """Fire pending timers with a deadline below `bound`, in order; False when `out`, the suppression
    times or the due buffer filled up first."""
    capacity = len(out[0])
    while True:
        if out[8][0] >= capacity or not sparse.room(state[5], 1):
            return False
        d, slot, k = timers.pop_due(tm, bound, size)
        if k == timers.NOT_DUE:
            return True
        if k == timers.NEEDS_ROOM:
            return False
        _fire_timer(state, tm, plan, out, d, slot, k)


@kernel
def _apply_events(state, tm, plan, effects, events, out, first, per_event, puts_per_event):  # type: ignore[no-untyped-def]
    """Apply events first.. in order; returns the index of the first event not applied (all: len),
    stopping early when `out` might not hold another event's firings, or the suppression times, count
    rings or spilled timers what another event may add."""
    clock, values, ages, far, rings, times_set = state[0], state[1], state[2], state[3], state[4], state[5]
    (half_life, lo, hi, st_start, st_trig, kind, threshold, timer_of, within, _unless, _unless_within, _cooldown,
     _count_slot, _timer_trigger, count_size, count_trigger, sequence_triggers, two) = plan
    e_unless, e_sequence, e_add, e_has, e_count, e_empty = effects
    slots, times, watermarks, effect_ids, data, starts, ends = events
    capacity = len(out[0])
    firing = out[9]
    for i in range(first, len(slots)):
        if (out[8][0] + per_event > capacity or not sparse.room(times_set, puts_per_event) or not counts.room(rings)
                or not timers.spill_room(tm, tm[5][timers.WIDTH]) or not sparse.room(far, ages.shape[1])):
            return i
        slot = slots[i]
        now = clock[slot]
        t = times[i]
        if t > now:
            now = t
        # Timers due by the event's own time (path a) or by the watermark (path b).
        limit = now if now > watermarks[i] else watermarks[i]
        while True:
            d, k = timers.next_due(tm, slot, limit)
            if k < 0:
                break
            _fire_timer(state, tm, plan, out, d, slot, k)
        before = clock[slot]
        if now > before:
            clock[slot] = now
            if before != NEVER:  # (a new contact has no score and no timer yet)
                scores.age(ages, far, slot, before, now)
                timers.age(tm, slot, now - before)
        e = effect_ids[i]
        if e_empty[e]:
            continue
        start = starts[i]
        length = ends[i] - start
        stored = -1  # the event's arena record, once a timer keeps it
        for u in range(e_unless.shape[1]):
            if e_unless[e, u]:
                suppress.saw(times_set, slot, u, now)
        fires = 0
        for q in range(len(sequence_triggers)):
            action = e_sequence[e, q]
            if action == 0:
                continue
            trig = sequence_triggers[q]
            if action == SEQ_START:  # (re)starts: also what cancelling and then starting would leave
                if stored < 0:
                    stored = timers.store_event(tm, data, start)
                timers.arm(tm, slot, timer_of[trig], now + within[trig], stored)
            else:
                timers.cancel(tm, slot, timer_of[trig])
        for s in range(len(half_life)):
            if not e_has[e, s]:
                continue
            before, after = scores.update(values, ages, far, clock, slot, s, half_life[s], e_add[e, s], lo[s], hi[s], two)
            for j in range(st_start[s], st_start[s + 1]):
                trig = st_trig[j]
                if kind[trig] == RISES_ABOVE:
                    if before < threshold[trig] <= after:
                        firing[fires] = trig
                        fires += 1
                elif after >= threshold[trig]:
                    if stored < 0:
                        stored = timers.store_event(tm, data, start)
                    timers.arm(tm, slot, timer_of[trig], scores.crossing_time(after, now, half_life[s], threshold[trig]),
                               stored)
                elif timers.cancel(tm, slot, timer_of[trig]) >= 0:  # it was pending: the score fell below
                    firing[fires] = trig
                    fires += 1
        for c in range(len(count_trigger)):
            if e_count[e, c]:
                trig = count_trigger[c]
                if counts.add(rings, slot, c, count_size[c], now, within[trig]):
                    firing[fires] = trig
                    fires += 1
        for j in range(fires):
            _fire(state, plan, out, slot, firing[j], now, 0, FROM_BATCH, start, length)
    return len(slots)

