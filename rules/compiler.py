"""Compile a validated RuleSet into the plan the shard operator executes.

The plan is built once at start-up. Matchers are de-duplicated and indexed; for every
event batch `Plan.match` computes a bit set per event (bit m = matcher m holds), and
`Plan.effects_for(bits)` turns each distinct bit set into an `Effects` record once,
cached, so the per-event loop only looks up what it must do instead of re-testing rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

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
    unless_matchers: list[int]  # matcher index per unless column
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
            common["unless"] = len(unless_matchers)
            common["unless_within_ms"] = t.unless.within_ms
            unless_matchers.append(intern(t.unless.matcher))
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
