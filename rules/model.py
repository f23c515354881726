"""The validated rule set: what `rules.load_rules` returns and `rules.compile` consumes.

Every duration is integer milliseconds. Every object remembers where it was written
(`Origin`) so later errors and `halflife rules check` can point at `file:line`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ConditionOp = Literal[
    "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "startswith", "contains", "exists"
]


# Triggers that need a timer (sequences, inactive_for, falls_below): a contact's row of timers names
# each one's rule in 8 bits, one value of which marks an empty place (operators/timers.py).
MAX_TIMER_TRIGGERS = 255


@dataclass(frozen=True)
class Origin:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Condition:
    """One entry of a `where` map: `path` (split on dots) compared with `op` to `value`.

    A bare literal in YAML (`{name: Pricing}`) is `op="eq"`.
    """

    path: tuple[str, ...]
    op: ConditionOp
    value: Any


@dataclass(frozen=True)
class MatcherSpec:
    """`event` (None = every valid event) and the conditions that must all hold."""

    events: frozenset[str] | None
    where: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class PointsSpec:
    matcher: MatcherSpec
    add: float


@dataclass(frozen=True)
class ScoreSpec:
    name: str
    half_life_ms: int
    min: float | None
    max: float | None
    points: tuple[PointsSpec, ...]
    origin: Origin


@dataclass(frozen=True)
class RisesAbove:
    score: str
    threshold: float


@dataclass(frozen=True)
class FallsBelow:
    score: str
    threshold: float


@dataclass(frozen=True)
class CountWithin:
    matcher: MatcherSpec
    within_ms: int
    at_least: int


@dataclass(frozen=True)
class Sequence:
    """`first: A, then_not: B, within: W`; `inactive_for: W` is Sequence(M, M, W)."""

    first: MatcherSpec
    then_not: MatcherSpec
    within_ms: int


Condition_ = RisesAbove | FallsBelow | CountWithin | Sequence


@dataclass(frozen=True)
class Unless:
    matcher: MatcherSpec
    within_ms: int


@dataclass(frozen=True)
class Action:
    kind: Literal["emit", "tag", "untag", "stage"]
    value: str


@dataclass(frozen=True)
class TriggerSpec:
    name: str
    when: Condition_
    unless: Unless | None
    cooldown_ms: int
    actions: tuple[Action, ...]
    origin: Origin

    @property
    def channels(self) -> tuple[str, ...]:
        """Channels written to, one record each; a trigger without actions emits to `triggers`."""
        if not self.actions:
            return ("triggers",)
        return tuple(a.value for a in self.actions if a.kind == "emit")


@dataclass(frozen=True)
class RuleSet:
    lateness_ms: int
    scores: tuple[ScoreSpec, ...]
    triggers: tuple[TriggerSpec, ...]
    sources: tuple[str, ...] = field(default=())
