"""Matchers over a batch of located values (SPEC §3 "Matchers"), compiled once per rule set.

The batch decoder (engine/decode.py) does not build a dict per event: the scanner locates each
event's name and the value at every path a `where` condition reads. `ColumnMatchers` turns the
plan's matchers into per-batch work on those columns:

* the event name becomes a code (`name_codes`): a name some matcher lists, or "another name", or
  "no name" (identify, group, alias); matchers without `where` are then one table lookup per
  event (`name_bits`);
* each condition of a `where` gets an answer per value kind, fixed at compile time wherever the
  literal cannot tell two values of that kind apart (the condition's own test, rules/matchers.py,
  applied to a missing value, null, true, false, a number, an object, an array or a string), a
  byte operation on the UTF-8 of a string value (equality, membership, prefix, substring,
  ordering: UTF-8 byte order is code point order), or, for what only the value can decide
  (numbers against numbers, arrays for `contains`, strings written with escapes), the value
  decoded by orjson and the condition's own test.

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

__all__ = ["NO_NAME", "OTHER_NAME", "ColumnMatchers", "Located", "name_codes"]

NO_NAME = -2  # identify, group, alias
OTHER_NAME = -1  # a name no matcher lists

# Answers of a condition for a value kind.
A_FALSE, A_TRUE, A_PYTHON, A_BYTES = range(4)
# Byte operations on a string value's UTF-8.
OP_EQUALS_ANY, OP_EQUALS_NONE, OP_STARTSWITH, OP_CONTAINS, OP_GT, OP_GTE, OP_LT, OP_LTE = range(8)
_ORDERED_OPS = {"gt": OP_GT, "gte": OP_GTE, "lt": OP_LT, "lte": OP_LTE}
_KINDS = 9


@dataclass
class Located:
    """Where each event's values at the rules' paths are: row i is event i, column p path p (see
    engine/jsonscan.ScanResult: kind, the span of the value's JSON text in `buf`, escapes)."""

    buf: npt.NDArray[np.uint8]
    kind: npt.NDArray[np.uint8]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    escaped: npt.NDArray[np.uint8]


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


@dataclass(frozen=True)
class _CompiledCondition:
    field: int  # index into the decoder's located fields
    answers: npt.NDArray[np.uint8]  # per value kind
    op: int  # byte operation, when some kind answers A_BYTES
    literals: npt.NDArray[np.uint8]  # UTF-8 of the string literal(s) of the byte operation, concatenated
    literal_starts: npt.NDArray[np.int64]
    literal_ends: npt.NDArray[np.int64]
    test: Callable[[Any], bool]  # the condition's own test, for A_PYTHON


def _compile_condition(condition: Condition, field: int) -> _CompiledCondition:
    test = compile_test(condition)
    literal = condition.value
    answers = np.full(_KINDS, A_PYTHON, np.uint8)

    def fixed(value: Any) -> int:
        return A_TRUE if test(value) else A_FALSE

    answers[ABSENT] = fixed(MISSING)
    answers[NULL] = fixed(None)
    answers[TRUE] = fixed(True)
    answers[FALSE] = fixed(False)
    if not _has(literal, _is_number):
        answers[INT] = answers[FLOAT] = fixed(0)
    if not _has(literal, lambda v: isinstance(v, Mapping)):
        answers[OBJECT] = fixed({})
    if condition.op != "contains" and not _has(literal, lambda v: isinstance(v, (list, tuple))):
        answers[ARRAY] = fixed([])
    op = OP_EQUALS_ANY
    strings: tuple[str, ...] = ()
    if condition.op in ("eq", "ne") and isinstance(literal, str):
        strings = (literal,)
        op = OP_EQUALS_ANY if condition.op == "eq" else OP_EQUALS_NONE
    elif condition.op in ("in", "not_in"):
        strings = tuple(v for v in literal if isinstance(v, str))
        op = OP_EQUALS_ANY if condition.op == "in" else OP_EQUALS_NONE
    elif condition.op in ("startswith", "contains") and isinstance(literal, str):
        strings = (literal,)
        op = OP_STARTSWITH if condition.op == "startswith" else OP_CONTAINS
    elif condition.op in _ORDERED_OPS and isinstance(literal, str):
        strings = (literal,)
        op = _ORDERED_OPS[condition.op]
    if strings or condition.op in ("in", "not_in"):
        answers[STRING] = A_BYTES
    else:
        answers[STRING] = fixed("")
    raw = [s.encode("utf-8", "surrogatepass") for s in strings]
    lengths = np.array([len(r) for r in raw], np.int64)
    ends = np.cumsum(lengths)
    literals = np.frombuffer(b"".join(raw) or b"\0", np.uint8).copy()
    return _CompiledCondition(field, answers, op, literals, ends - lengths, ends, test)


@dataclass(frozen=True)
class _WhereMatcher:
    word: int
    bit: np.uint64
    candidates: npt.NDArray[np.bool_]  # per name code + 2
    conditions: tuple[_CompiledCondition, ...]


class ColumnMatchers:
    """The plan's matchers for batch evaluation; see the module docstring.

    `names` are the event names that matchers list (code i is names[i]); `paths` the paths that
    `where` conditions read: the decoder locates them, path i as column i of `Located`.
    """

    def __init__(self, matchers: Sequence[Any]) -> None:
        """`matchers`: the plan's CompiledMatcher list (spec.events, spec.where)."""
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
            where.append(_WhereMatcher(word, bit, listed, conditions))
        self.where = tuple(where)
        self._where_tables = _where_tables(self.where, codes)
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

    def codes(self, buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
              ends: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """Codes of names given as UTF-8 spans of `buf` (a start of -1: no name)."""
        return name_codes(buf, starts, ends, self.name_table, self.name_starts, self.name_ends,
                          np.empty(len(starts), np.int32))

    def bits(self, codes: npt.NDArray[np.int32], located: Located) -> npt.NDArray[np.uint64]:
        """Matcher bit sets (n x words) of the events with name `codes` and paths `located` (row i: event i)."""
        bits = self.name_bits[codes + 2]
        if not self.where:
            return bits
        # One compiled pass sets the bits of every `where` matcher it can decide; the (event, matcher)
        # pairs that need a value decoded come back for Python.
        undecided = np.empty((len(codes) * len(self.where), 2), np.int64)
        n = _where_bits(codes, located.buf, located.kind, located.start, located.end, located.escaped,
                        *self._where_tables, bits, undecided)
        for i, w in undecided[:n].tolist():
            wm = self.where[w]
            if all(cond.test(self._value(located, i, cond.field)) for cond in wm.conditions):
                bits[i, wm.word] |= wm.bit
        return bits

    @staticmethod
    def _value(located: Located, i: int, field: int) -> Any:
        if located.kind[i, field] == ABSENT:
            return MISSING
        return orjson.loads(located.buf[located.start[i, field]:located.end[i, field]].tobytes())


def _where_tables(where: Sequence[_WhereMatcher], codes: int) -> tuple[np.ndarray, ...]:
    """The `where` matchers as flat arrays for `_where_bits`."""
    conditions = [c for wm in where for c in wm.conditions]
    literals = [bytes(c.literals[s:e]) for c in conditions for s, e in zip(c.literal_starts, c.literal_ends,
                                                                        strict=True)]
    literal_ends = np.cumsum([len(b) for b in literals]).astype(np.int64)
    per_condition = np.cumsum([0] + [len(c.literal_starts) for c in conditions]).astype(np.int64)
    return (
        np.array([wm.word for wm in where], np.int64),
        np.array([wm.bit for wm in where], np.uint64),
        np.array([wm.candidates for wm in where], np.bool_).reshape(len(where), codes),
        np.cumsum([0] + [len(wm.conditions) for wm in where]).astype(np.int64),
        np.array([c.field for c in conditions], np.int64),
        np.array([c.answers for c in conditions], np.uint8).reshape(len(conditions), _KINDS),
        np.array([c.op for c in conditions], np.int64),
        per_condition,
        np.frombuffer(b"".join(literals) or b"\0", np.uint8).copy(),
        literal_ends - np.array([len(b) for b in literals], np.int64),
        literal_ends,
    )


# -- compiled part ------------------------------------------------------------------------------------


@kernel
def name_codes(buf, starts, ends, table, table_starts, table_ends, out):  # type: ignore[no-untyped-def]
    for i in range(len(starts)):
        s = starts[i]
        if s < 0:
            out[i] = NO_NAME
            continue
        length = ends[i] - s
        code = OTHER_NAME
        for c in range(len(table_starts)):
            t0 = table_starts[c]
            if table_ends[c] - t0 != length:
                continue
            j = 0
            while j < length and buf[s + j] == table[t0 + j]:
                j += 1
            if j == length:
                code = c
                break
        out[i] = code
    return out


@kernel
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


@kernel
def _bytes_op(buf, s, e, op, lit, lit_starts, lit_ends):  # type: ignore[no-untyped-def]
    if op == OP_EQUALS_ANY or op == OP_EQUALS_NONE:
        found = False
        for k in range(len(lit_starts)):
            if _compare(buf, s, e, lit, lit_starts[k], lit_ends[k]) == 0:
                found = True
                break
        return found if op == OP_EQUALS_ANY else not found
    ls = lit_starts[0]
    le = lit_ends[0]
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


@kernel
def _where_bits(codes, buf, kind, start, end, escaped, words, masks, candidates, first_condition, fields, answers,  # type: ignore[no-untyped-def]
                ops, first_literal, literals, literal_starts, literal_ends, bits, undecided):
    """Set the bit of every `where` matcher that holds; write the (event, matcher) pairs only the
    values themselves can decide to `undecided`; return how many."""
    n = 0
    for i in range(len(codes)):
        row = codes[i] + 2
        for w in range(len(words)):
            if not candidates[w, row]:
                continue
            holds = True
            for c in range(first_condition[w], first_condition[w + 1]):
                f = fields[c]
                a = answers[c, kind[i, f]]
                if a == A_BYTES:
                    if escaped[i, f]:
                        a = A_PYTHON
                    else:  # the string's content, between its quotes
                        lo = first_literal[c]
                        hi = first_literal[c + 1]
                        a = A_TRUE if _bytes_op(buf, start[i, f] + 1, end[i, f] - 1, ops[c], literals,
                                                literal_starts[lo:hi], literal_ends[lo:hi]) else A_FALSE
                if a == A_FALSE:
                    holds = False
                    break
                if a == A_PYTHON:
                    undecided[n, 0] = i
                    undecided[n, 1] = w
                    n += 1
                    holds = False
                    break
            if holds:
                bits[i, words[w]] |= masks[w]
    return n
