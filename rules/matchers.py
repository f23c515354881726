"""Matchers compiled to plain closures over the raw decoded event (SPEC §3 "Matchers").

These run for every event and every rule on the hot path, so each condition is
specialised once, at compile time, on its operator, its literal's type and its
path length; nothing is interpreted per event and nothing is ever `eval`-ed.

JSON values follow the decoder: objects are dicts, arrays are lists; literals
from the rules may also hold arrays as tuples (the loader stores them so).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from rules.model import Condition, MatcherSpec

Predicate = Callable[[dict[str, Any]], bool]
_Test = Callable[[Any], bool]

# A missing value: a path through a non-object or to an absent key. It equals
# nothing and is distinct from a present JSON null.
_MISSING: Any = object()
_ARRAY = (list, tuple)
_NUMBER_TYPES: frozenset[type] = frozenset({int, float})
_STRING_TYPES: frozenset[type] = frozenset({str})
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def json_equal(a: Any, b: Any) -> bool:
    """JSON value equality: numbers numerically (1 == 1.0), never bool == number,
    never string == number; arrays and objects structurally with the same rules."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)):
        return isinstance(b, (int, float)) and a == b
    if isinstance(a, str):
        return isinstance(b, str) and a == b
    if a is None:
        return b is None
    if isinstance(a, _ARRAY):
        return (
            isinstance(b, _ARRAY)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, Mapping):
        return (
            isinstance(b, Mapping) and a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
        )
    return False


def json_key(value: Any) -> Hashable:
    """A hashable key that is equal for two JSON values exactly when `json_equal` holds.

    Python's own `==` and `hash` make `True == 1 == 1.0` and cannot hash objects, so
    conditions and matchers must be keyed by this (see `matcher_key`), not by themselves.
    """
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("string", value)
    if value is None:
        return ("null",)
    if isinstance(value, _ARRAY):
        return ("array", tuple(json_key(x) for x in value))
    if isinstance(value, Mapping):
        return ("object", frozenset((k, json_key(v)) for k, v in value.items()))
    raise ValueError(f"not a JSON value: {value!r}")


def matcher_key(spec: MatcherSpec) -> Hashable:
    """A key under which two matchers are equal only if they match the same events,
    for sharing one compiled matcher among rules (MatcherSpec's own `==` treats
    `{x: 1}` and `{x: true}` as equal, and a `where` object literal cannot be hashed)."""
    return spec.events, tuple((c.path, c.op, json_key(c.value)) for c in spec.where)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _equals(literal: Any) -> _Test:
    """A test `value == literal` in the JSON sense, specialised on the literal's type."""
    if isinstance(literal, bool):
        return lambda v: v is literal
    if _is_number(literal):
        # `==` alone would let True equal 1; JSON decoders give the True/False singletons.
        return lambda v: v == literal and v is not True and v is not False
    if isinstance(literal, str):
        # str.__eq__ is False for every non-str, including the _MISSING sentinel.
        return lambda v: literal == v
    if literal is None:
        return lambda v: v is None
    return lambda v: json_equal(literal, v)


def _member_of(literals: Any) -> _Test:
    """A test `value equals one of literals`. Scalars are bucketed by JSON type so that
    hashing (where hash(True) == hash(1) == hash(1.0)) never mixes bools and numbers."""
    strings = frozenset(x for x in literals if isinstance(x, str))
    numbers = frozenset(x for x in literals if _is_number(x))
    bools = frozenset(x for x in literals if isinstance(x, bool))
    has_null = any(x is None for x in literals)
    composites = tuple(x for x in literals if isinstance(x, (*_ARRAY, Mapping)))

    def test(v: Any) -> bool:
        if isinstance(v, str):
            return v in strings
        if isinstance(v, bool):
            return v in bools
        if isinstance(v, (int, float)):
            return v in numbers
        if v is None:
            return has_null
        return any(json_equal(x, v) for x in composites)

    return test


def _ordered(op: str, literal: Any) -> _Test:
    # Two numbers or two strings, else false. Exact types, as JSON decoders produce them:
    # type(True) is bool, so bools never compare with numbers.
    if _is_number(literal):
        kinds: frozenset[type] = _NUMBER_TYPES
    elif isinstance(literal, str):
        kinds = _STRING_TYPES
    else:
        raise ValueError(f"{op!r} needs a number or a string, got {literal!r}")
    compare = _COMPARISONS[op]
    return lambda v: type(v) in kinds and compare(v, literal)


def _contains(literal: Any) -> _Test:
    element_equals = _equals(literal)
    if isinstance(literal, str):
        return lambda v: (
            (literal in v)
            if isinstance(v, str)
            else (isinstance(v, list) and any(element_equals(x) for x in v))
        )
    return lambda v: isinstance(v, list) and any(element_equals(x) for x in v)


def _test(op: str, value: Any) -> _Test:
    if op == "eq":
        return _equals(value)
    if op == "ne":
        eq = _equals(value)
        return lambda v: not eq(v)
    if op in ("in", "not_in"):
        if not isinstance(value, _ARRAY):
            raise ValueError(f"{op!r} needs a list of values, got {value!r}")
        member = _member_of(value)
        return member if op == "in" else (lambda v: not member(v))
    if op in ("gt", "gte", "lt", "lte"):
        return _ordered(op, value)
    if op == "startswith":
        if not isinstance(value, str):
            raise ValueError(f"'startswith' needs a string, got {value!r}")
        return lambda v: isinstance(v, str) and v.startswith(value)
    if op == "contains":
        return _contains(value)
    if op == "exists":
        if not isinstance(value, bool):
            raise ValueError(f"'exists' needs true or false, got {value!r}")
        if value:
            return lambda v: v is not None and v is not _MISSING
        return lambda v: v is None or v is _MISSING
    raise ValueError(f"unknown operator {op!r}")


def _getter(path: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    """The value at `path` in an event, or _MISSING; unrolled for the common short paths."""
    if not path:
        raise ValueError("a condition path needs at least one key")
    if len(path) == 1:
        (k0,) = path
        return lambda ev: ev.get(k0, _MISSING)
    if len(path) == 2:
        k0, k1 = path

        def get2(ev: dict[str, Any]) -> Any:
            v = ev.get(k0)
            return v.get(k1, _MISSING) if isinstance(v, dict) else _MISSING

        return get2

    def get(ev: dict[str, Any]) -> Any:
        v: Any = ev
        for k in path:
            if not isinstance(v, dict):
                return _MISSING
            v = v.get(k, _MISSING)
        return v

    return get


def compile_test(condition: Condition) -> Callable[[Any], bool]:
    """The test a condition applies to the value at its path (`MISSING` when there is none)."""
    return _test(condition.op, condition.value)


MISSING: Any = _MISSING


def compile_condition(condition: Condition) -> Predicate:
    """One condition as a predicate over an event. Raises ValueError for a value
    that does not suit the operator (the loader reports those with a line)."""
    get = _getter(condition.path)
    test = _test(condition.op, condition.value)
    return lambda ev: test(get(ev))


def compile_where(conditions: tuple[Condition, ...]) -> Predicate:
    """A predicate that holds when every condition holds for the raw event dict.

    >>> from rules.model import Condition, MatcherSpec
    >>> pred = compile_where((Condition(("properties", "price"), "gte", 100),))
    >>> pred({"properties": {"price": 120.5}}), pred({"properties": {"price": True}}), pred({})
    (True, False, False)
    """
    preds = tuple(compile_condition(c) for c in conditions)
    if not preds:
        return lambda ev: True
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        p0, p1 = preds
        return lambda ev: p0(ev) and p1(ev)

    def all_hold(ev: dict[str, Any]) -> bool:
        for p in preds:
            if not p(ev):
                return False
        return True

    return all_hold


def event_matches(events: frozenset[str] | None, name: str | None) -> bool:
    """Whether a matcher's `event` accepts an event named `name`.

    None (no `event` key) accepts every valid event; otherwise the name must be
    listed, so nameless events (identify, group, alias) never match it.
    """
    return events is None or (name is not None and name in events)
