"""Rule language: loading and validation (`loader`), matchers, compilation into plans."""

from rules.durations import parse_duration
from rules.errors import RuleError
from rules.loader import check_rules, load_rules
from rules.matchers import compile_where, event_matches
from rules.model import (
    Action,
    Condition,
    CountWithin,
    FallsBelow,
    MatcherSpec,
    Origin,
    PointsSpec,
    RisesAbove,
    RuleSet,
    ScoreSpec,
    Sequence,
    TriggerSpec,
    Unless,
)

__all__ = [
    "Action",
    "Condition",
    "CountWithin",
    "FallsBelow",
    "MatcherSpec",
    "Origin",
    "PointsSpec",
    "RisesAbove",
    "RuleError",
    "RuleSet",
    "ScoreSpec",
    "Sequence",
    "TriggerSpec",
    "Unless",
    "check_rules",
    "compile_where",
    "event_matches",
    "load_rules",
    "parse_duration",
]
