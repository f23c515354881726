"""A compiled JSON Lines scanner: validates each line and locates the values the engine reads.

The engine needs a handful of fields of every event (contact, name, times, message id, the paths
its rules test) and the raw JSON of a few more (properties, traits), not a Python object per
event. `scan_lines` walks a block of lines once, in compiled code, and for each line either

* vouches for it (`OK`): the line is JSON that `orjson.loads` accepts, its top level is an object
  nested at most `max_depth` levels, and every wanted path's value is located (`kind`, the span
  of its JSON text, and whether a string holds escapes); or
* declines it (`SLOW`): anything it cannot vouch for exactly -- invalid JSON, invalid UTF-8, a top
  level that is not an object, nesting past the limit, a number with an exponent or more than 18
  integer digits, a duplicate wanted key, an escaped key where keys are compared -- goes to the
  exact per-line decoder (`engine.decode.decode_lines`), which names the dead letter or accepts it.

`BLANK` marks whitespace-only lines (not events). The scanner is conservative by design: it may
decline a line that orjson would accept, never the reverse, so the fast path and the exact one can
only agree. tests/fuzz/test_fuzz_batch_decode.py checks that on hostile input.

Wanted paths are given as a trie (`PathTrie`): the top-level keys of the event object and, below
the keys that are objects, their wanted keys. Keys are compared as raw bytes; a wanted key written
with escapes declines the line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from engine.rawmem import load_prefix

__all__ = [
    "ABSENT", "ARRAY", "BLANK", "FALSE", "FLOAT", "INT", "NULL", "OBJECT", "OK", "SLOW", "STRING", "TRUE",
    "PathTrie", "ScanResult", "scan_lines",
]

# Value kinds. INT is an integer literal of at most 18 digits (exact in int64), FLOAT a literal with a fraction.
ABSENT, NULL, FALSE, TRUE, INT, FLOAT, STRING, OBJECT, ARRAY = range(9)
# Line status.
OK, BLANK, SLOW = 0, 1, 2

_MAX_INT_DIGITS: Final = 18
_NO_NODE: Final = -1


@dataclass(frozen=True)
class PathTrie:
    """Wanted paths as flat arrays: node n's entries are `first[n] .. first[n] + count[n] - 1`.

    Entry e is the key `keys[key_start[e]:key_start[e] + key_len[e]]`, located as field `field[e]`;
    `child[e]` is the node of its wanted keys when its value is an object (-1 when none are wanted).
    Every entry is a field, interior ones included, so that a duplicate key is always seen.

    Keys are found by hashing, not by trying each entry: node n's open-addressing table is
    `slots[slot_base[n]:slot_base[n] + slot_mask[n] + 1]` (entries, -1 for empty, at most a quarter
    full), keyed by `key_hash` of the key's first 8 bytes and its length; `words[e]` holds entry e's
    first 16 bytes as two little-endian words, so most keys compare in one or two word compares.
    """

    paths: tuple[tuple[str, ...], ...]  # field i is paths[i]
    first: npt.NDArray[np.int32]
    count: npt.NDArray[np.int32]
    key_start: npt.NDArray[np.int32]
    key_len: npt.NDArray[np.int32]
    field: npt.NDArray[np.int32]
    child: npt.NDArray[np.int32]
    keys: npt.NDArray[np.uint8]
    slot_base: npt.NDArray[np.int64]
    slot_mask: npt.NDArray[np.uint64]
    slots: npt.NDArray[np.int32]
    words: npt.NDArray[np.uint64]

    @classmethod
    def build(cls, paths: Sequence[tuple[str, ...]]) -> PathTrie:
        """Fields are numbered in the order of `paths` (prefixes not listed get the next numbers)."""
        ordered: list[tuple[str, ...]] = []
        for path in paths:
            if not path:
                raise ValueError("a path needs at least one key")
            for depth in range(1, len(path) + 1):
                prefix = tuple(path[:depth])
                if prefix not in ordered and (depth == len(path) or prefix not in paths):
                    ordered.append(prefix)
        listed = [tuple(p) for p in paths]
        ordered = list(dict.fromkeys(listed + ordered))
        index = {p: i for i, p in enumerate(ordered)}
        # Nodes: the root (), then every path that has wanted keys below it.
        nodes: list[tuple[str, ...]] = [()]
        for p in ordered:
            if p[:-1] not in nodes:
                nodes.append(p[:-1])
        entries_of: dict[tuple[str, ...], list[tuple[str, ...]]] = {n: [] for n in nodes}
        for p in ordered:
            entries_of[p[:-1]].append(p)
        first: list[int] = []
        count: list[int] = []
        key_start: list[int] = []
        key_len: list[int] = []
        field: list[int] = []
        child: list[int] = []
        words: list[int] = []
        slot_base: list[int] = []
        slot_mask: list[int] = []
        slots: list[int] = []
        keys = bytearray()
        for n in nodes:
            first.append(len(field))
            count.append(len(entries_of[n]))
            size = 8
            while size < 4 * len(entries_of[n]):
                size *= 2
            table = [-1] * size
            for p in entries_of[n]:
                raw = p[-1].encode("utf-8")
                entry = len(field)
                key_start.append(len(keys))
                key_len.append(len(raw))
                keys += raw
                field.append(index[p])
                child.append(nodes.index(p) if p in nodes else _NO_NODE)
                padded = raw[:16].ljust(16, b"\0")
                words += [int.from_bytes(padded[:8], "little"), int.from_bytes(padded[8:], "little")]
                slot = _key_hash_py(int.from_bytes(raw[:8].ljust(8, b"\0"), "little"), len(raw)) & (size - 1)
                while table[slot] >= 0:
                    slot = (slot + 1) & (size - 1)
                table[slot] = entry
            slot_base.append(len(slots))
            slot_mask.append(size - 1)
            slots += table
        i32 = np.int32
        return cls(tuple(ordered), np.array(first, i32), np.array(count, i32), np.array(key_start, i32),
                   np.array(key_len, i32), np.array(field, i32), np.array(child, i32),
                   np.frombuffer(bytes(keys) or b"\0", np.uint8).copy(), np.array(slot_base, np.int64),
                   np.array(slot_mask, np.uint64), np.array(slots, i32),
                   np.array(words or [0, 0], np.uint64).reshape(-1, 2))

    @property
    def fields(self) -> int:
        return len(self.paths)

    def field_of(self, path: tuple[str, ...]) -> int:
        return self.paths.index(tuple(path))

    def arrays(self) -> tuple[npt.NDArray, ...]:
        """What the compiled scanner takes (`scan_line`'s `trie`)."""
        return (self.first, self.count, self.key_start, self.key_len, self.field, self.child, self.keys,
                self.slot_base, self.slot_mask, self.slots, self.words)


_HASH_MULTIPLIER = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _key_hash_py(word: int, length: int) -> int:
    """`key_hash` in Python, for building the tables."""
    return (((word ^ length) * _HASH_MULTIPLIER) & _MASK64) >> 40


@dataclass
class ScanResult:
    """Per line: `status`; per line and field: `kind`, `start`/`end` (the value's JSON text in the
    buffer; a string's span includes its quotes), `escaped` (a string value holds backslash escapes)."""

    status: npt.NDArray[np.uint8]
    kind: npt.NDArray[np.uint8]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    escaped: npt.NDArray[np.uint8]


def scan_lines(buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
               trie: PathTrie, max_depth: int) -> ScanResult:
    """Scan lines `buf[starts[i]:ends[i]]` (without their newline); see the module docstring.

    Every `buf[ends[i]]` must exist and be a newline (or another control byte): string scanning
    relies on it to stop without a bound check. `split_lines` arranges that.
    """
    n = len(starts)
    if n and (int(ends.max()) >= len(buf) or not _SPECIAL[buf[ends]].all()):
        raise ValueError("every line must be followed by a newline in the buffer")
    f = trie.fields
    result = ScanResult(np.empty(n, np.uint8), np.zeros((n, f), np.uint8), np.zeros((n, f), np.int64),
                        np.zeros((n, f), np.int64), np.zeros((n, f), np.uint8))
    _scan_all(buf, starts, ends, trie.arrays(), max_depth, result.status, result.kind, result.start, result.end,
              result.escaped)
    return result


# -- compiled part ------------------------------------------------------------------------------------
#
# Indices are unsigned (uint64) throughout: numba then skips the negative-index wraparound it
# otherwise adds to every array access, a third of the scanner's time. Mixing them with signed
# integers would silently turn into float arithmetic, hence the typed constants.

_0 = np.uint64(0)
_1 = np.uint64(1)
_2 = np.uint64(2)
_4 = np.uint64(4)
_5 = np.uint64(5)
_6 = np.uint64(6)
_8 = np.uint64(8)
_16 = np.uint64(16)
_40 = np.uint64(40)
_MULTIPLIER = np.uint64(_HASH_MULTIPLIER)

# Bytes that end a run of plain string content: the quote, the backslash, controls, non-ASCII.
_SPECIAL = np.zeros(256, np.uint8)
_SPECIAL[34] = _SPECIAL[92] = 1
_SPECIAL[:32] = 1
_SPECIAL[128:] = 1
_WHITESPACE = np.zeros(256, np.uint8)
_WHITESPACE[[32, 9, 10, 13]] = 1
_DIGIT = np.zeros(256, np.uint8)
_DIGIT[48:58] = 1


@kernel(inline=True)
def _skip_ws(b, i, end, ws):  # type: ignore[no-untyped-def]
    while i < end and ws[b[i]]:
        i += _1
    return i


@kernel
def _hex4(b, i, end):  # type: ignore[no-untyped-def]
    """The code unit of the 4 hex digits at i, or -1."""
    if i + _4 > end:
        return -1
    v = 0
    for j in range(4):
        c = b[i + np.uint64(j)]
        if 48 <= c <= 57:
            h = c - 48
        elif 97 <= c <= 102:
            h = c - 87
        elif 65 <= c <= 70:
            h = c - 55
        else:
            return -1
        v = v * 16 + h
    return v


@kernel
def _string_rest(b, i, end):  # type: ignore[no-untyped-def]
    """The rest of a string from a byte `_SPECIAL` marks: escapes (surrogates only as a high-low
    pair) and UTF-8 (the well-formed sequences of RFC 3629: no surrogates, nothing above U+10FFFF).
    Returns (index after the closing quote, 1 if escaped, ok)."""
    escaped = 0
    special = _SPECIAL
    while i < end:
        c = b[i]
        if c == 34:
            return i + _1, escaped, True
        if c == 92:
            escaped = 1
            if i + _1 >= end:
                return i, 0, False
            e = b[i + _1]
            if e == 117:
                u = _hex4(b, i + _2, end)
                if u < 0:
                    return i, 0, False
                i += _6
                if 0xD800 <= u <= 0xDBFF:
                    if i + _6 > end or b[i] != 92 or b[i + _1] != 117:
                        return i, 0, False
                    low = _hex4(b, i + _2, end)
                    if not 0xDC00 <= low <= 0xDFFF:
                        return i, 0, False
                    i += _6
                elif 0xDC00 <= u <= 0xDFFF:
                    return i, 0, False
            elif e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110 or e == 114 or e == 116:
                i += _2
            else:
                return i, 0, False
        elif c < 32:
            return i, 0, False
        elif c >= 128:
            if 0xC2 <= c <= 0xDF:
                if i + _1 >= end or not 0x80 <= b[i + _1] <= 0xBF:
                    return i, 0, False
                i += _2
            elif 0xE0 <= c <= 0xEF:
                if i + _2 >= end:
                    return i, 0, False
                c1 = b[i + _1]
                lo = 0xA0 if c == 0xE0 else 0x80
                hi = 0x9F if c == 0xED else 0xBF
                if not lo <= c1 <= hi or not 0x80 <= b[i + _2] <= 0xBF:
                    return i, 0, False
                i += np.uint64(3)
            elif 0xF0 <= c <= 0xF4:
                if i + np.uint64(3) >= end:
                    return i, 0, False
                c1 = b[i + _1]
                lo = 0x90 if c == 0xF0 else 0x80
                hi = 0x8F if c == 0xF4 else 0xBF
                if not lo <= c1 <= hi or not 0x80 <= b[i + _2] <= 0xBF or not 0x80 <= b[i + np.uint64(3)] <= 0xBF:
                    return i, 0, False
                i += _4
            else:
                return i, 0, False
        else:
            i += _1
        while i < end and special[b[i]] == 0:
            i += _1
    return i, 0, False


@kernel(inline=True)
def _scan_string(b, i, end):  # type: ignore[no-untyped-def]
    """b[i] is the opening quote: (index after the closing quote, 1 if escaped, ok)."""
    i += _1
    special = _SPECIAL
    # `end` holds a byte that `_SPECIAL` marks (the newline, or the sentinel `scan_lines` adds), so the
    # common run of plain content needs no bound check.
    while special[b[i]] == 0:
        i += _1
    if b[i] == 34 and i < end:
        return i + _1, 0, True
    return _string_rest(b, i, end)


@kernel
def _scan_number(b, i, end):  # type: ignore[no-untyped-def]
    """Returns (index after the number, INT or FLOAT, ok); not ok for what the scanner does not vouch for."""
    digit = _DIGIT
    if b[i] == 45:
        i += _1
        if i >= end:
            return i, 0, False
    c = b[i]
    if c == 48:
        i += _1
    elif 49 <= c <= 57:
        s = i
        while i < end and digit[b[i]]:
            i += _1
        if i - s > np.uint64(_MAX_INT_DIGITS):
            return i, 0, False
    else:
        return i, 0, False
    kind = INT
    if i < end and b[i] == 46:
        i += _1
        s = i
        while i < end and digit[b[i]]:
            i += _1
        if i == s:
            return i, 0, False
        kind = FLOAT
    if i < end and (b[i] == 101 or b[i] == 69):
        return i, 0, False
    return i, kind, True


@kernel(inline=True)
def key_hash(word, length):  # type: ignore[no-untyped-def]
    """The hash of a key from its first 8 bytes (zero-padded) and its length."""
    return ((word ^ np.uint64(length)) * _MULTIPLIER) >> _40


@kernel(inline=True)
def _find_key(b, ks, ke, node, trie):  # type: ignore[no-untyped-def]
    """The trie entry for key b[ks:ke] at `node`, or -1."""
    key_start, key_len, keys, slot_base, slot_mask, slots, words = (trie[2], trie[3], trie[6], trie[7], trie[8],
                                                                    trie[9], trie[10])
    length = ke - ks
    w0 = load_prefix(b, ks, length)
    mask = slot_mask[node]
    base = slot_base[node]
    h = key_hash(w0, length) & mask
    while True:
        e = slots[base + np.int64(h)]
        if e < 0:
            return -1
        if np.uint64(key_len[e]) == length and words[e, 0] == w0:
            if length <= _8:
                return e
            if words[e, 1] == load_prefix(b, ks + _8, length - _8):
                if length <= _16:
                    return e
                k = np.uint64(key_start[e])
                j = _16
                while j < length and b[ks + j] == keys[k + j]:
                    j += _1
                if j == length:
                    return e
        h = (h + _1) & mask


@kernel(inline=True)
def scan_line(b, start, end, trie, max_depth, kind, vstart, vend, escaped, stack_obj, stack_node,  # type: ignore[no-untyped-def]
              stack_field):
    """Scan one line into `kind`, `vstart`, `vend`, `escaped` (one entry per field; `kind` all ABSENT
    on entry, the others are read only where `kind` is set); returns OK, BLANK or SLOW. The stacks
    hold `max_depth + 1` entries. `start` and `end` are uint64; `trie` is `PathTrie.arrays()`."""
    field, child = trie[4], trie[5]
    ws = _WHITESPACE
    i = _skip_ws(b, start, end, ws)
    if i >= end:
        return BLANK
    if b[i] != 123:
        return SLOW
    stack_obj[0] = 1
    stack_node[0] = 0
    stack_field[0] = -1
    depth = 1
    i = _skip_ws(b, i + _1, end, ws)
    if i < end and b[i] == 125:  # {}
        depth = 0
        i += _1
    while depth > 0:
        top = depth - 1
        f = -1
        node = -1
        if stack_obj[top]:
            if i >= end or b[i] != 34:
                return SLOW
            ks = i + _1
            i, key_escaped, ok = _scan_string(b, i, end)
            if not ok:
                return SLOW
            parent = stack_node[top]
            if parent >= 0:
                if key_escaped:
                    return SLOW
                e = _find_key(b, ks, i - _1, parent, trie)
                if e >= 0:
                    f = field[e]
                    node = child[e]
                    if kind[f] != ABSENT:
                        return SLOW  # a duplicate wanted key: the exact decoder keeps the last one
            i = _skip_ws(b, i, end, ws)
            if i >= end or b[i] != 58:
                return SLOW
            i = _skip_ws(b, i + _1, end, ws)
            if i >= end:
                return SLOW
        c = b[i]
        if c == 34:
            s = i
            i, esc, ok = _scan_string(b, i, end)
            if not ok:
                return SLOW
            if f >= 0:
                kind[f] = STRING
                vstart[f] = s
                vend[f] = i
                escaped[f] = esc
        elif c == 123 or c == 91:
            if depth >= max_depth:
                return SLOW
            is_object = c == 123
            if f >= 0:
                kind[f] = OBJECT if is_object else ARRAY
                vstart[f] = i
            stack_obj[depth] = is_object
            stack_node[depth] = node if is_object else -1
            stack_field[depth] = f
            i = _skip_ws(b, i + _1, end, ws)
            if i < end and b[i] == (125 if is_object else 93):  # empty
                if f >= 0:
                    vend[f] = i + _1
                i += _1
            else:
                depth += 1
                continue
        elif c == 45 or 48 <= c <= 57:
            s = i
            i, k, ok = _scan_number(b, i, end)
            if not ok:
                return SLOW
            if f >= 0:
                kind[f] = k
                vstart[f] = s
                vend[f] = i
        else:
            if c == 116 and i + _4 <= end and b[i + _1] == 114 and b[i + _2] == 117 and b[i + np.uint64(3)] == 101:
                k = TRUE
                n = _4
            elif (c == 102 and i + _5 <= end and b[i + _1] == 97 and b[i + _2] == 108 and b[i + np.uint64(3)] == 115
                  and b[i + _4] == 101):
                k = FALSE
                n = _5
            elif c == 110 and i + _4 <= end and b[i + _1] == 117 and b[i + _2] == 108 and b[i + np.uint64(3)] == 108:
                k = NULL
                n = _4
            else:
                return SLOW
            if f >= 0:
                kind[f] = k
                vstart[f] = i
                vend[f] = i + n
            i += n
        # After a value: a comma, or the brackets it closes.
        while True:
            i = _skip_ws(b, i, end, ws)
            if i >= end:
                return SLOW
            c = b[i]
            if c == 44:
                i = _skip_ws(b, i + _1, end, ws)
                break
            top = depth - 1
            if c != (125 if stack_obj[top] else 93):
                return SLOW
            closed = stack_field[top]
            if closed >= 0:
                vend[closed] = i + _1
            depth -= 1
            i += _1
            if depth == 0:
                break
    if _skip_ws(b, i, end, ws) != end:
        return SLOW
    return OK


@kernel(allocates=True)
def _scan_all(b, starts, ends, trie, max_depth, status, kind, vstart, vend, escaped):  # type: ignore[no-untyped-def]
    stack_obj = np.empty(max_depth + 1, np.uint8)
    stack_node = np.empty(max_depth + 1, np.int32)
    stack_field = np.empty(max_depth + 1, np.int32)
    for row in range(len(starts)):
        st = scan_line(b, np.uint64(starts[row]), np.uint64(ends[row]), trie, max_depth, kind[row], vstart[row],
                       vend[row], escaped[row], stack_obj, stack_node, stack_field)
        status[row] = st
        if st != OK:
            kind[row, :] = ABSENT
