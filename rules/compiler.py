"""Compile a validated RuleSet into the plan the shard operator executes.

The plan is built once at start-up. Matchers are de-duplicated and indexed; for every
event batch `Plan.match` computes a bit set per event (bit m = matcher m holds), and
`Plan.effects_for(bits)` turns each distinct bit set into an `Effects` record once,
cached, so the per-event loop only looks up what it must do instead of re-testing rules.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from engine.compiled import kernel
from rules.matchers import compile_where, matcher_key
from rules.model import (
    CountWithin,
    FallsBelow,
    MatcherSpec,
    RisesAbove,
    RuleSet,
)
from rules.model import Sequence as SequenceSpec

# Trigger kinds, as small ints for the hot loop.
RISES_ABOVE, FALLS_BELOW, COUNT, SEQUENCE = range(4)


@dataclass(frozen=True)
class CompiledMatcher:
    spec: MatcherSpec
    predicate: Callable[[dict], bool] | None  # None: no `where`, the event name decides


@dataclass(frozen=True)
class ScorePlan:
    index: int
    name: str
    half_life_ms: float
    lo: float  # -inf when unclamped
    hi: float  # +inf when unclamped
    points: tuple[tuple[int, float], ...]  # (matcher index, add)


@dataclass(frozen=True)
class TriggerPlan:
    index: int
    name: str
    kind: int
    score: int = -1  # RISES_ABOVE / FALLS_BELOW
    threshold: float = 0.0
    matcher: int = -1  # COUNT
    at_least: int = 0
    first: int = -1  # SEQUENCE
    then_not: int = -1
    within_ms: int = 0  # COUNT / SEQUENCE
    unless: int = -1  # index into Plan.unless_matchers, -1 without `unless`
    unless_within_ms: int = 0
    cooldown_ms: int = 0
    channels: tuple[str, ...] = ()
    profile_actions: tuple[tuple[str, str], ...] = ()
    timer: int = -1  # column in the shard's timer table (SEQUENCE and FALLS_BELOW)
    count_slot: int = -1  # column block in the count table (COUNT)


@dataclass(frozen=True)
class Effects:
    """What one event does, derived from the set of matchers it satisfies."""

    unless_seen: tuple[int, ...]  # unless columns whose matcher holds
    sequences: tuple[tuple[int, bool, bool], ...]  # (trigger, cancels as B, starts as A)
    scores: tuple[tuple[int, float], ...]  # (score, summed add)
    counts: tuple[int, ...]  # COUNT triggers whose matcher holds

    @property
    def empty(self) -> bool:
        return not (self.unless_seen or self.sequences or self.scores or self.counts)


@dataclass
class Plan:
    lateness_ms: int
    matchers: list[CompiledMatcher]
    scores: list[ScorePlan]
    triggers: list[TriggerPlan]
    unless_matchers: list[int]  # matcher index per unless column (distinct matchers)
    timer_triggers: list[int]  # trigger index per timer column
    count_triggers: list[int]
    # Derived dispatch tables, filled by __post_init__.
    by_name: dict[str, list[int]] = field(default_factory=dict)
    any_name: list[int] = field(default_factory=list)
    _effects_cache: dict[int, Effects] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m, cm in enumerate(self.matchers):
            if cm.spec.events is None:
                self.any_name.append(m)
            else:
                for name in cm.spec.events:
                    self.by_name.setdefault(name, []).append(m)
        for name, ms in self.by_name.items():
            self.by_name[name] = sorted(set(ms) | set(self.any_name))
        self._weights = [1 << m for m in range(len(self.matchers))]

    @classmethod
    def empty(cls, lateness_ms: int = 0) -> Plan:
        """A plan without rules (for sources and tests that only need the lateness)."""
        return cls(lateness_ms, [], [], [], [], [], [])

    @property
    def scores_by_trigger(self) -> dict[int, list[TriggerPlan]]:
        out: dict[int, list[TriggerPlan]] = {}
        for t in self.triggers:
            if t.kind in (RISES_ABOVE, FALLS_BELOW):
                out.setdefault(t.score, []).append(t)
        return out

    def match(self, names: Sequence[str | None], events: Sequence[dict]) -> list[int]:
        """One matcher bit set per event (an int; bit m = matcher m holds)."""
        groups: dict[str | None, list[int]] = {}
        for i, name in enumerate(names):
            g = groups.get(name)
            if g is None:
                groups[name] = [i]
            else:
                g.append(i)
        bits = [0] * len(names)
        matchers = self.matchers
        weights = self._weights
        for name, idxs in groups.items():
            candidates = self.any_name if name is None else self.by_name.get(name, self.any_name)
            for m in candidates:
                pred = matchers[m].predicate
                w = weights[m]
                if pred is None:
                    for i in idxs:
                        bits[i] |= w
                else:
                    for i in idxs:
                        if pred(events[i]):
                            bits[i] |= w
        return bits

    def effects_for(self, bits: int) -> Effects:
        eff = self._effects_cache.get(bits)
        if eff is None:
            eff = self._effects_cache[bits] = self._derive_effects(bits)
        return eff

    def _derive_effects(self, bits: int) -> Effects:
        def holds(m: int) -> bool:
            return bool(bits >> m & 1)

        unless_seen = tuple(u for u, m in enumerate(self.unless_matchers) if holds(m))
        sequences = tuple(
            (t.index, holds(t.then_not), holds(t.first))
            for t in self.triggers
            if t.kind == SEQUENCE and (holds(t.then_not) or holds(t.first))
        )
        scores = []
        for s in self.scores:
            adds = [add for m, add in s.points if holds(m)]
            if adds:
                total = 0.0
                for add in adds:  # left-to-right in file order, as the SPEC's sum reads
                    total += add
                scores.append((s.index, total))
        counts = tuple(t.index for t in self.triggers if t.kind == COUNT and holds(t.matcher))
        return Effects(unless_seen, sequences, tuple(scores), counts)


def compile_rules(ruleset: RuleSet) -> Plan:
    # Keyed by JSON semantics: `true` and `1` are different matchers, dict literals hashable.
    matcher_index: dict[object, int] = {}
    matchers: list[CompiledMatcher] = []

    def intern(spec: MatcherSpec) -> int:
        key = matcher_key(spec)
        m = matcher_index.get(key)
        if m is None:
            m = matcher_index[key] = len(matchers)
            matchers.append(CompiledMatcher(spec, compile_where(spec.where) if spec.where else None))
        return m

    score_index = {s.name: i for i, s in enumerate(ruleset.scores)}
    scores = [
        ScorePlan(
            index=i,
            name=s.name,
            half_life_ms=float(s.half_life_ms),
            lo=-np.inf if s.min is None else float(s.min),
            hi=np.inf if s.max is None else float(s.max),
            points=tuple((intern(p.matcher), float(p.add)) for p in s.points),
        )
        for i, s in enumerate(ruleset.scores)
    ]
    triggers: list[TriggerPlan] = []
    unless_matchers: list[int] = []
    timer_triggers: list[int] = []
    count_triggers: list[int] = []
    for i, t in enumerate(ruleset.triggers):
        common: dict = dict(
            index=i,
            name=t.name,
            cooldown_ms=t.cooldown_ms,
            channels=t.channels,
            profile_actions=tuple((a.kind, a.value) for a in t.actions if a.kind != "emit"),
        )
        if t.unless is not None:
            # One last-seen column per distinct matcher: rules sharing an `unless` matcher share its times.
            m = intern(t.unless.matcher)
            if m not in unless_matchers:
                unless_matchers.append(m)
            common["unless"] = unless_matchers.index(m)
            common["unless_within_ms"] = t.unless.within_ms
        w = t.when
        if isinstance(w, RisesAbove):
            plan = TriggerPlan(kind=RISES_ABOVE, score=score_index[w.score], threshold=float(w.threshold),
                               **common)
        elif isinstance(w, FallsBelow):
            plan = TriggerPlan(kind=FALLS_BELOW, score=score_index[w.score], threshold=float(w.threshold),
                               timer=len(timer_triggers), **common)
            timer_triggers.append(i)
        elif isinstance(w, CountWithin):
            plan = TriggerPlan(kind=COUNT, matcher=intern(w.matcher), within_ms=w.within_ms,
                               at_least=w.at_least, count_slot=len(count_triggers), **common)
            count_triggers.append(i)
        elif isinstance(w, SequenceSpec):
            plan = TriggerPlan(kind=SEQUENCE, first=intern(w.first), then_not=intern(w.then_not),
                               within_ms=w.within_ms, timer=len(timer_triggers), **common)
            timer_triggers.append(i)
        else:  # pragma: no cover - the loader only builds the four kinds
            raise TypeError(f"unknown trigger condition {w!r}")
        triggers.append(plan)
    return Plan(
        lateness_ms=ruleset.lateness_ms,
        matchers=matchers,
        scores=scores,
        triggers=triggers,
        unless_matchers=unless_matchers,
        timer_triggers=timer_triggers,
        count_triggers=count_triggers,
    )


# -- the plan as arrays, for the compiled shard kernel (operators/shard.py) ---------------------------------

SEQ_NONE, SEQ_CANCEL, SEQ_START = 0, 1, 2


@dataclass(frozen=True)
class PlanArrays:
    """The plan's numbers as arrays; `as_tuple()` is what the kernel takes (see operators/shard.py)."""

    half_life_ms: np.ndarray  # per score
    lo: np.ndarray
    hi: np.ndarray
    score_trigger_starts: np.ndarray  # score s's triggers are score_triggers[starts[s]:starts[s + 1]]
    score_triggers: np.ndarray
    kind: np.ndarray  # per trigger
    threshold: np.ndarray
    timer: np.ndarray
    within_ms: np.ndarray
    unless: np.ndarray
    unless_within_ms: np.ndarray
    cooldown_ms: np.ndarray
    count_slot: np.ndarray
    timer_trigger: np.ndarray  # per timer column
    count_size: np.ndarray
    count_trigger: np.ndarray
    sequence_triggers: np.ndarray  # SEQUENCE triggers in trigger order (Effects.sequences order)
    two: np.ndarray  # operators.scores.TWO: the decay's base, read at run time

    @classmethod
    def of(cls, plan: Plan) -> PlanArrays:
        i32, i64, f64 = np.int32, np.int64, np.float64
        by_score = plan.scores_by_trigger
        starts = np.zeros(len(plan.scores) + 1, i32)
        listed: list[int] = []
        for s in range(len(plan.scores)):
            listed += [t.index for t in by_score.get(s, [])]
            starts[s + 1] = len(listed)
        t = plan.triggers
        sizes = [plan.triggers[i].at_least for i in plan.count_triggers]
        return cls(
            half_life_ms=np.array([s.half_life_ms for s in plan.scores], f64),
            lo=np.array([s.lo for s in plan.scores], f64),
            hi=np.array([s.hi for s in plan.scores], f64),
            score_trigger_starts=starts,
            score_triggers=np.array(listed, i32),
            kind=np.array([x.kind for x in t], np.int8),
            threshold=np.array([x.threshold for x in t], f64),
            timer=np.array([x.timer for x in t], i32),
            within_ms=np.array([x.within_ms for x in t], i64),
            unless=np.array([x.unless for x in t], i32),
            unless_within_ms=np.array([x.unless_within_ms for x in t], i64),
            cooldown_ms=np.array([x.cooldown_ms for x in t], i64),
            count_slot=np.array([x.count_slot for x in t], i32),
            timer_trigger=np.array(plan.timer_triggers, i32),
            count_size=np.array(sizes, i32),
            count_trigger=np.array(plan.count_triggers, i32),
            sequence_triggers=np.array([x.index for x in t if x.kind == SEQUENCE], i32),
            two=np.array([2.0]),
        )

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f) for f in self.__dataclass_fields__)


_PER_THREAD = threading.local()
T = TypeVar("T")


def per_thread(plan: Plan, kind: str, make: Callable[[], T]) -> T:
    """This thread's object of `kind` for `plan`, made by `make` the first time: scratch that the
    shards of a worker share (bytewax runs each worker in a thread of its own)."""
    objects: dict[tuple[str, int], tuple[Plan, Any]] = _PER_THREAD.__dict__.setdefault("by_plan", {})
    entry = objects.get((kind, id(plan)))  # (an entry holds its plan, so no other plan can have taken its id)
    if entry is None:
        if len(objects) >= 16:  # plans come and go in tests; a worker has one
            objects.clear()
        entry = objects[(kind, id(plan))] = (plan, make())
    return entry[1]


class EffectTable:
    """`Effects` as arrays indexed by an effect id: one id per distinct matcher bit set, assigned
    as bit sets first appear (a rule set has few: events of one name mostly share one).

    `ids(bits)` maps a batch's bit sets (one row of 64-bit words per event) to ids; `as_tuple()`
    is what the kernel reads: per effect, the unless columns seen, the sequence actions (one of
    SEQ_NONE/SEQ_CANCEL/SEQ_START per SEQUENCE trigger), the summed score adds and which scores
    are updated, the count columns hit, and whether the effect is empty.
    """

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._rows: list[Effects] = []
        self._arrays: tuple[np.ndarray, ...] = self._build()
        # An open-addressing table bit set -> id, searched by a compiled loop so that a batch costs
        # no Python work per event or per distinct bit set; only new bit sets go through Python.
        self._keys = np.zeros((0, 1), np.uint64)
        self._table = np.full(64, -1, np.int32)

    @classmethod
    def for_thread(cls, plan: Plan) -> EffectTable:
        """This thread's table for `plan`. A worker's shards meet the same few bit sets, so they share
        one table and each set is learnt once (with a table per shard, learning was 1-2 % of the hot
        path); per thread, because bytewax runs each worker in a thread of its own."""
        return per_thread(plan, "effects", lambda: cls(plan))

    def ids(self, bits: np.ndarray) -> np.ndarray:
        out = np.empty(len(bits), np.int32)
        if not len(self._keys):  # the bit sets' width is the plan's: known from the first batch
            self._keys = np.zeros((0, bits.shape[1]), np.uint64)
        if _lookup_effects(bits, self._keys, self._table, out):
            for row in np.unique(bits[out < 0], axis=0):
                self._add(row)
            self._arrays = self._build()
            _lookup_effects(bits, self._keys, self._table, out)
        return out

    def _add(self, row: np.ndarray) -> None:
        value = sum(int(w) << (64 * k) for k, w in enumerate(row.tolist()))
        self._rows.append(self.plan.effects_for(value))
        self._keys = np.concatenate([self._keys, row.reshape(1, -1).astype(np.uint64)])
        if 2 * len(self._keys) > len(self._table):
            self._table = np.full(2 * len(self._table), -1, np.int32)
            for e in range(len(self._keys) - 1):
                _insert_effect(self._keys, self._table, e)
        _insert_effect(self._keys, self._table, len(self._keys) - 1)

    def as_tuple(self) -> tuple[np.ndarray, ...]:
        return self._arrays

    def _build(self) -> tuple[np.ndarray, ...]:
        plan = self.plan
        e = max(1, len(self._rows))
        sequences = [t.index for t in plan.triggers if t.kind == SEQUENCE]
        unless = np.zeros((e, max(1, len(plan.unless_matchers))), np.uint8)
        seq = np.zeros((e, max(1, len(sequences))), np.uint8)
        add = np.zeros((e, max(1, len(plan.scores))), np.float64)
        has = np.zeros((e, max(1, len(plan.scores))), np.uint8)
        count = np.zeros((e, max(1, len(plan.count_triggers))), np.uint8)
        empty = np.ones(e, np.uint8)
        for i, eff in enumerate(self._rows):
            for u in eff.unless_seen:
                unless[i, u] = 1
            for trigger, cancels, starts in eff.sequences:
                seq[i, sequences.index(trigger)] = SEQ_START if starts else (SEQ_CANCEL if cancels else SEQ_NONE)
            for s, total in eff.scores:
                add[i, s] = total
                has[i, s] = 1
            for trigger in eff.counts:
                count[i, plan.triggers[trigger].count_slot] = 1
            empty[i] = eff.empty
        return unless, seq, add, has, count, empty


@kernel(inline=True)
def _effect_slot(keys, table, row, words):  # type: ignore[no-untyped-def]
    """Where `row` (or the empty place it would take) is in `table`: the slot index."""
    h = np.uint64(0)
    for w in range(words):
        h = (h ^ row[w]) * np.uint64(0x9E3779B97F4A7C15)
    mask = np.uint64(len(table) - 1)
    i = (h >> np.uint64(29)) & mask
    while True:
        e = table[i]
        if e < 0:
            return i
        same = True
        for w in range(words):
            if keys[e, w] != row[w]:
                same = False
                break
        if same:
            return i
        i = (i + np.uint64(1)) & mask


@kernel
def _lookup_effects(bits, keys, table, out):  # type: ignore[no-untyped-def]
    """out[i] = the effect id of bits[i], or -1 when its bit set has none yet; how many had none."""
    missing = 0
    words = bits.shape[1]
    for i in range(len(bits)):
        e = table[_effect_slot(keys, table, bits[i], words)]
        out[i] = e
        if e < 0:
            missing += 1
    return missing


@kernel
def _insert_effect(keys, table, e):  # type: ignore[no-untyped-def]
    table[_effect_slot(keys, table, keys[e], keys.shape[1])] = e
