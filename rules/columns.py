"""Matchers evaluated on scanned events (SPEC §3 "Matchers"), compiled once per rule set.

The batch decoder (engine/decode.py) does not build a dict per event: the scanner locates each
event's name and the value at every path a `where` condition reads. `ColumnMatchers` turns the
plan's matchers into tables that the decoder's compiled loop evaluates on each event while its
line is in cache (`event_bits`):

* the event name becomes a code: a name some matcher lists, or "another name", or "no name"
  (identify, group, alias); matchers without `where` are then one table row per event
  (`name_bits`);
* each condition of a `where` gets an answer per value kind, fixed at compile time wherever the
  literal cannot tell two values of that kind apart (the condition's own test, rules/matchers.py,
  applied to a missing value, null, true, false, a number, an object, an array or a string), a
  byte operation on the UTF-8 of a string value (equality, membership, prefix, substring,
  ordering: UTF-8 byte order is code point order), a comparison of a number value with the
  literal's numbers (both exact as doubles: integers up to 2^53, decimals of at most 19 digits with
  at most 22 after the point, as Clinger's fast path reads them), or, for what only the value can
  decide (other numbers, arrays for `contains`, strings written with escapes), the matcher's own
  predicate on the event decoded by orjson (`resolve`).

So a matcher holds here exactly when `Plan.match` says it holds on the decoded event
(tests/fuzz/test_fuzz_batch_decode.py checks that on hostile values).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from engine.compiled import kernel
from engine.jsonscan import ABSENT, ARRAY, FALSE, FLOAT, INT, NULL, OBJECT, STRING, TRUE
from rules.matchers import MISSING, compile_test
from rules.model import Condition

__all__ = ["NO_NAME", "OTHER_NAME", "ColumnMatchers", "event_bits"]

NO_NAME = -2  # identify, group, alias
OTHER_NAME = -1  # a name no matcher lists

# Answers of a condition for a value kind.
A_FALSE, A_TRUE, A_PYTHON, A_BYTES, A_NUMBER = range(5)
# Byte operations on a string value's UTF-8, and comparisons of a number value.
OP_EQUALS_ANY, OP_EQUALS_NONE, OP_STARTSWITH, OP_CONTAINS, OP_GT, OP_GTE, OP_LT, OP_LTE = range(8)
_ORDERED_OPS = {"gt": OP_GT, "gte": OP_GTE, "lt": OP_LT, "lte": OP_LTE}
_KINDS = 9
# Integers up to this size are exact as doubles.
_EXACT_INTEGER = 2**53


def _has(value: Any, wanted: Callable[[Any], bool]) -> bool:
    if wanted(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has(v, wanted) for v in value)
    if isinstance(value, Mapping):
        return any(_has(v, wanted) for v in value.values())
    return False


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _compared_numbers(condition: Condition) -> list[int | float]:
    """The literal's numbers a number value is compared with (equality, membership, order); others
    (numbers inside arrays and objects, `contains`) can never equal or order a number value."""
    op, literal = condition.op, condition.value
    if op in ("eq", "ne", "gt", "gte", "lt", "lte"):
        return [literal] if _is_number(literal) else []
    if op in ("in", "not_in"):
        return [v for v in literal if _is_number(v)]
    return []


@dataclass(frozen=True)
class _CompiledCondition:
    path: int  # index into ColumnMatchers.paths
    answers: npt.NDArray[np.uint8]  # per value kind
    op: int  # byte operation or comparison, when some kind answers A_BYTES or A_NUMBER
    strings: tuple[bytes, ...]  # UTF-8 of the string literal(s) of the byte operation
    numbers: tuple[float, ...]  # the literal's numbers, exact as doubles, for A_NUMBER


def _compile_condition(condition: Condition, path: int) -> _CompiledCondition:
    test = compile_test(condition)
    literal = condition.value
    answers = np.full(_KINDS, A_PYTHON, np.uint8)

    def fixed(value: Any) -> int:
        return A_TRUE if test(value) else A_FALSE

    answers[ABSENT] = fixed(MISSING)
    answers[NULL] = fixed(None)
    answers[TRUE] = fixed(True)
    answers[FALSE] = fixed(False)
    compared = _compared_numbers(condition)
    if not compared:
        answers[INT] = answers[FLOAT] = fixed(0)
    elif all(isinstance(v, float) or abs(v) <= _EXACT_INTEGER for v in compared):
        answers[INT] = answers[FLOAT] = A_NUMBER
    if not _has(literal, lambda v: isinstance(v, Mapping)):
        answers[OBJECT] = fixed({})
    if condition.op != "contains" and not _has(literal, lambda v: isinstance(v, (list, tuple))):
        answers[ARRAY] = fixed([])
    op = OP_EQUALS_ANY
    strings: tuple[str, ...] = ()
    if condition.op in ("eq", "ne"):
        strings = (literal,) if isinstance(literal, str) else ()
        op = OP_EQUALS_ANY if condition.op == "eq" else OP_EQUALS_NONE
    elif condition.op in ("in", "not_in"):
        strings = tuple(v for v in literal if isinstance(v, str))
        op = OP_EQUALS_ANY if condition.op == "in" else OP_EQUALS_NONE
    elif condition.op in ("startswith", "contains") and isinstance(literal, str):
        strings = (literal,)
        op = OP_STARTSWITH if condition.op == "startswith" else OP_CONTAINS
    elif condition.op in _ORDERED_OPS:
        strings = (literal,) if isinstance(literal, str) else ()
        op = _ORDERED_OPS[condition.op]
    if strings or condition.op in ("in", "not_in"):
        answers[STRING] = A_BYTES
    else:
        answers[STRING] = fixed("")
    return _CompiledCondition(path, answers, op, tuple(s.encode("utf-8", "surrogatepass") for s in strings),
                              tuple(float(v) for v in compared))


@dataclass(frozen=True)
class _WhereMatcher:
    word: int
    bit: np.uint64
    candidates: npt.NDArray[np.bool_]  # per name code + 2
    conditions: tuple[_CompiledCondition, ...]
    predicate: Callable[[dict[str, Any]], bool]  # the whole `where` on a decoded event, for A_PYTHON


class ColumnMatchers:
    """The plan's matchers for compiled evaluation; see the module docstring.

    `names` are the event names that matchers list (code i is names[i]); `paths` the paths that
    `where` conditions read: the decoder locates them (`tables` maps each to its scanner field).
    """

    def __init__(self, matchers: Sequence[Any]) -> None:
        """`matchers`: the plan's CompiledMatcher list (spec.events, spec.where, predicate)."""
        names: list[str] = []
        paths: list[tuple[str, ...]] = []
        for cm in matchers:
            for name in sorted(cm.spec.events or ()):
                if name not in names:
                    names.append(name)
            for c in cm.spec.where:
                if c.path not in paths:
                    paths.append(c.path)
        self.names = tuple(names)
        self.code_of = {n: i for i, n in enumerate(names)}
        self.paths = tuple(paths)
        self.words = max(1, -(-len(matchers) // 64))
        codes = len(names) + 2  # row = code + 2
        self.name_bits = np.zeros((codes, self.words), np.uint64)
        where: list[_WhereMatcher] = []
        for m, cm in enumerate(matchers):
            word, bit = m // 64, np.uint64(1 << (m % 64))
            listed = np.zeros(codes, np.bool_)
            if cm.spec.events is None:
                listed[:] = True
            else:
                for name in cm.spec.events:
                    listed[self.code_of[name] + 2] = True
            if not cm.spec.where:
                self.name_bits[listed, word] |= bit
                continue
            conditions = tuple(_compile_condition(c, paths.index(c.path)) for c in cm.spec.where)
            where.append(_WhereMatcher(word, bit, listed, conditions, cm.predicate))
        self.where = tuple(where)
        raw = [n.encode("utf-8", "surrogatepass") for n in names]
        self.name_table = np.frombuffer(b"".join(raw) or b"\0", np.uint8).copy()
        lengths = np.array([len(r) for r in raw], np.int64)
        self.name_ends = np.cumsum(lengths)
        self.name_starts = self.name_ends - lengths

    def code(self, name: str | None) -> int:
        """The code of a decoded event's name."""
        if name is None:
            return NO_NAME
        return self.code_of.get(name, OTHER_NAME)

    def tables(self, field_of: Callable[[tuple[str, ...]], int]) -> tuple[npt.NDArray, ...]:
        """What `event_bits` takes: the matchers as flat arrays, each condition reading the scanner field
        `field_of(its path)`."""
        where = self.where
        conditions = [c for wm in where for c in wm.conditions]
        strings = [s for c in conditions for s in c.strings]
        string_ends = np.cumsum([len(s) for s in strings]).astype(np.int64)
        i64 = np.int64
        return (
            self.name_bits,
            np.array([wm.word for wm in where], i64),
            np.array([wm.bit for wm in where], np.uint64),
            np.array([wm.candidates for wm in where], np.bool_).reshape(len(where), len(self.name_bits)),
            np.cumsum([0] + [len(wm.conditions) for wm in where]).astype(i64),
            np.array([field_of(self.paths[c.path]) for c in conditions], i64),
            np.array([c.answers for c in conditions], np.uint8).reshape(len(conditions), _KINDS),
            np.array([c.op for c in conditions], i64),
            np.cumsum([0] + [len(c.strings) for c in conditions]).astype(i64),
            np.frombuffer(b"".join(strings) or b"\0", np.uint8).copy(),
            string_ends - np.array([len(s) for s in strings], i64),
            string_ends,
            np.cumsum([0] + [len(c.numbers) for c in conditions]).astype(i64),
            np.array([v for c in conditions for v in c.numbers] or [0.0], np.float64),
        )

    def resolve(self, bits: npt.NDArray[np.uint64], undecided: npt.NDArray[np.int64],
                line: Callable[[int], bytes]) -> None:
        """Decide the (event, matcher) pairs `event_bits` left to Python: rows of (event row in `bits`,
        where-matcher index, the event's line number, which `line` turns into its JSON text)."""
        for j, w, r in undecided.tolist():
            wm = self.where[w]
            if wm.predicate(orjson.loads(line(r))):
                bits[j, wm.word] |= wm.bit


# -- compiled part ------------------------------------------------------------------------------------

# 10**k for k = 0..22: exact as doubles, so a decimal of at most 2^53 in its digits divided by one of them
# is the correctly rounded double of its text (Clinger's fast path), the value orjson and Python read.
_POWERS_OF_TEN = np.array([10.0**k for k in range(23)], np.float64)
_MAX_MANTISSA = np.uint64(_EXACT_INTEGER)


@kernel(inline=True)
def number_value(buf, s, e):  # type: ignore[no-untyped-def]
    """The double of the JSON number text buf[s:e] (an INT or a FLOAT the scanner vouched for: no
    exponent), when it is exact by the fast path: (True, value); else (False, 0.0)."""
    negative = buf[s] == 45
    i = s + 1 if negative else s
    mantissa = np.uint64(0)
    significant = 0
    after_point = -1  # digits after the point; -1 before it
    while i < e:
        c = buf[i]
        i += 1
        if c == 46:
            after_point = 0
            continue
        if after_point >= 0:
            after_point += 1
        if mantissa == 0 and c == 48:
            continue
        significant += 1
        if significant > 19:
            return False, 0.0
        mantissa = mantissa * np.uint64(10) + np.uint64(c - 48)
    if mantissa > _MAX_MANTISSA or after_point > 22:
        return False, 0.0
    value = np.float64(mantissa)
    if after_point > 0:
        value = value / _POWERS_OF_TEN[after_point]
    return True, -value if negative else value


@kernel(inline=True)
def _number_op(value, op, numbers, lo, hi):  # type: ignore[no-untyped-def]
    if op == OP_EQUALS_ANY or op == OP_EQUALS_NONE:
        found = False
        for k in range(lo, hi):
            if value == numbers[k]:
                found = True
                break
        return found if op == OP_EQUALS_ANY else not found
    x = numbers[lo]
    if op == OP_GT:
        return value > x
    if op == OP_GTE:
        return value >= x
    if op == OP_LT:
        return value < x
    return value <= x


@kernel(inline=True)
def _compare(buf, s, e, lit, ls, le):  # type: ignore[no-untyped-def]
    """-1, 0 or 1 as buf[s:e] sorts before, equal to or after lit[ls:le] (bytewise)."""
    n = min(e - s, le - ls)
    for j in range(n):
        a = buf[s + j]
        b = lit[ls + j]
        if a != b:
            return -1 if a < b else 1
    if e - s == le - ls:
        return 0
    return -1 if e - s < le - ls else 1


@kernel(inline=True)
def _bytes_op(buf, s, e, op, lit, lit_starts, lit_ends, lo, hi):  # type: ignore[no-untyped-def]
    if op == OP_EQUALS_ANY or op == OP_EQUALS_NONE:
        found = False
        for k in range(lo, hi):
            if lit_ends[k] - lit_starts[k] == e - s and _compare(buf, s, e, lit, lit_starts[k], lit_ends[k]) == 0:
                found = True
                break
        return found if op == OP_EQUALS_ANY else not found
    ls = lit_starts[lo]
    le = lit_ends[lo]
    n = le - ls
    if op == OP_STARTSWITH:
        if e - s < n:
            return False
        for j in range(n):
            if buf[s + j] != lit[ls + j]:
                return False
        return True
    if op == OP_CONTAINS:
        for p in range(s, e - n + 1):
            j = 0
            while j < n and buf[p + j] == lit[ls + j]:
                j += 1
            if j == n:
                return True
        return False
    c = _compare(buf, s, e, lit, ls, le)
    if op == OP_GT:
        return c > 0
    if op == OP_GTE:
        return c >= 0
    if op == OP_LT:
        return c < 0
    return c <= 0


@kernel(inline=True)
def event_bits(code, buf, kind, start, end, escaped, tables, bits, j, line, undecided, n):  # type: ignore[no-untyped-def]
    """Set bits[j] to the matcher bit set of one scanned event: name `code`, the scanner's `kind`,
    `start`, `end`, `escaped` per field (engine/jsonscan.py); `tables` is `ColumnMatchers.tables`.
    The (j, matcher, line) triples only the decoded event can decide go to undecided[n:]; returns
    the new n."""
    (name_bits, words, masks, candidates, first_condition, fields, answers, ops, first_literal, literals,
     literal_starts, literal_ends, first_number, numbers) = tables
    row = code + 2
    for w in range(name_bits.shape[1]):
        bits[j, w] = name_bits[row, w]
    for w in range(len(words)):
        if not candidates[w, row]:
            continue
        holds = True
        for c in range(first_condition[w], first_condition[w + 1]):
            f = fields[c]
            a = answers[c, kind[f]]
            if a == A_BYTES:
                if escaped[f]:
                    a = A_PYTHON
                else:  # the string's content, between its quotes
                    a = A_TRUE if _bytes_op(buf, start[f] + 1, end[f] - 1, ops[c], literals, literal_starts,
                                            literal_ends, first_literal[c], first_literal[c + 1]) else A_FALSE
            elif a == A_NUMBER:
                exact, value = number_value(buf, start[f], end[f])
                if not exact:
                    a = A_PYTHON
                else:
                    a = A_TRUE if _number_op(value, ops[c], numbers, first_number[c], first_number[c + 1]) else A_FALSE
            if a == A_FALSE:
                holds = False
                break
            if a == A_PYTHON:
                undecided[n, 0] = j
                undecided[n, 1] = w
                undecided[n, 2] = line
                n += 1
                holds = False
                break
        if holds:
            bits[j, words[w]] |= masks[w]
    return n
