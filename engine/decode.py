"""The decoder: JSON Lines bytes to validated events and dead letters (SPEC §2).

Two paths with one contract:

* `decode_lines` is exact and per line: orjson decodes each line to a dict and the checks run in
  Python, in the order of `REASONS` (the first failing check names the dead letter). The collector
  validates requests with it, and it is the engine's slow path.
* `BatchDecoder` is the engine's hot path: it takes a block of lines in one buffer, lets the
  compiled scanner (engine/jsonscan.py) validate them and locate their fields, runs the same
  checks compiled (`_classify`), and produces columns (`EventBatch`), never a dict per event. Every
  line it cannot vouch for -- anything invalid, anything unusual (escapes in an id, a float
  timestamp, a number the scanner does not vouch for) -- goes through `decode_lines`, so dead
  letters, their reasons and details, and every accepted event are exactly what `decode_lines`
  says (tests/fuzz/test_fuzz_batch_decode.py checks the two against each other on hostile input).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from engine import summaries
from engine.blobs import Blobs
from engine.compiled import kernel
from engine.hashing import NO_DIGEST, digest, digest_spans, digests
from engine.jsonscan import ABSENT, FLOAT, INT, NULL, OBJECT, OK, SLOW, STRING, PathTrie, scan_line
from engine.rawmem import copy_bytes
from engine.times import MAX_TIME_MS, parse_int_bytes, parse_iso_bytes, parse_time
from rules.columns import NO_NAME, OTHER_NAME, ColumnMatchers, event_bits

if TYPE_CHECKING:
    from rules.compiler import Plan

__all__ = ["MAX_DEPTH", "MAX_LINE_BYTES", "REASONS", "BatchDecoder", "DeadLetter", "DecodedLines", "EventBatch",
           "decode_lines"]

# 32 KiB, not counting the newline the caller strips.
MAX_LINE_BYTES: Final = 32768
# Nesting levels of JSON objects and arrays in one event, the event object itself being level 1. orjson
# parses 1024 levels, but the engine must also write what it accepts: orjson writes at most 254 levels and
# a trigger record nests the causing event's properties 2 levels down, so a deeper event would stop the
# engine at every restart (a poison pill). 250 keeps every accepted event writable and is far beyond any
# real event; the SPEC's reasons do not cover it, so it is documented as our own (README, dead letters).
MAX_DEPTH: Final = 250

# Every dead-letter reason code, in the order the checks run.
REASONS: Final = (
    "oversize",
    "not_json",
    "too_deep",
    "string_too_long",
    "not_object",
    "bad_type",
    "wrong_field_type",
    "missing_contact",
    "missing_event",
    "bad_timestamp",
    "missing_timestamp",
)

# Event names of the non-track call types; a track's name is its `event` field.
_CALL_NAMES: Final[dict[str, str | None]] = {
    "page": "Page Viewed",
    "screen": "Screen Viewed",
    "identify": None,
    "group": None,
    "alias": None,
}
_VALID_TYPES: Final = "track, " + ", ".join(_CALL_NAMES)

_STRING_FIELDS: Final = ("event", "messageId")
_OBJECT_FIELDS: Final = ("properties", "context", "traits")

# Dead-letter details quote the offending value; a 30 KB value would drown the message.
_PREVIEW_CHARS: Final = 80


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One rejected input line: why (`reason`, one of `REASONS`; `detail` for humans) and what."""

    reason: str
    raw: bytes
    position: int
    detail: str

    def to_json(self) -> bytes:
        """One JSON object ``{"reason", "detail", "position", "raw"}``.

        ``raw`` is the line as text when it is valid UTF-8; otherwise the key is ``raw_b64`` and
        holds the bytes in standard base64, so that no byte is lost or replaced.
        """
        record: dict[str, object] = {
            "reason": self.reason,
            "detail": self.detail,
            "position": self.position,
        }
        try:
            record["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            record["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        return orjson.dumps(record)


@dataclass(slots=True)
class DecodedLines:
    """What `decode_lines` accepted: index ``i`` of every field describes one event, in input order.

    `names` is the matchable event name (``None`` for identify, group and alias); `times` is event
    time in epoch ms after clock-skew correction; `positions` are the caller's positions.
    """

    events: list[dict[str, Any]]
    contacts: list[str]
    names: list[str | None]
    times: npt.NDArray[np.int64]
    message_ids: list[str | None]
    positions: list[int]
    lines: list[bytes]

    def __len__(self) -> int:
        return len(self.contacts)


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _preview(value: object) -> str:
    # Containers are named, not shown: their repr can be huge, and deep nesting (orjson allows
    # 1024 levels) would exceed the recursion limit of repr itself.
    if isinstance(value, (dict, list)):
        return f"(an {_json_type(value)})"
    text = repr(value)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."


def _wrong_fields(obj: dict[str, Any]) -> str:
    # Only called once the inline check has found a wrong field: name every one of them.
    problems = [
        f"field {key!r} must be a string, got {_json_type(obj[key])}"
        for key in _STRING_FIELDS
        if obj.get(key) is not None and type(obj[key]) is not str
    ]
    problems += [
        f"field {key!r} must be an object, got {_json_type(obj[key])}"
        for key in _OBJECT_FIELDS
        if obj.get(key) is not None and type(obj[key]) is not dict
    ]
    return "; ".join(problems)


def _too_deep(value: object, limit: int) -> bool:
    """True when `value` nests objects/arrays more than `limit` levels (itself being level 1)."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack = [(value, 1)]
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return True
        depth += 1
        for child in node.values() if type(node) is dict else node:  # type: ignore[attr-defined]
            if type(child) is dict or type(child) is list:
                push((child, depth))
    return False


def _string_over(value: object, limit: int) -> int:
    """The UTF-8 size of the first string (key or value) in `value` longer than `limit` bytes, else 0."""
    if type(value) is not dict and type(value) is not list:
        value = [value]
    stack = [value]
    pop = stack.pop
    push = stack.append
    while stack:
        node = pop()
        items = node.items() if type(node) is dict else enumerate(node)  # type: ignore[attr-defined]
        for key, child in items:
            for text in (key, child):
                # A character takes 1 to 4 UTF-8 bytes: only lengths in between need encoding.
                if type(text) is str and len(text) * 4 > limit:
                    size = len(text) if len(text) > limit else len(text.encode("utf-8", "surrogatepass"))
                    if size > limit:
                        return size
            if type(child) is dict or type(child) is list:
                push(child)
    return 0


def decode_lines(lines: Sequence[bytes], positions: Sequence[int], *, max_depth: int = MAX_DEPTH,
                 max_string_bytes: int | None = None) -> tuple[DecodedLines, list[DeadLetter]]:
    """Decode and validate JSON Lines; return the valid events and the dead letters, in order.

    `lines` are the lines without their newline; `positions[i]` (e.g. a byte offset) is carried
    into the result for `lines[i]`. Blank and whitespace-only lines are skipped: neither events
    nor dead letters. Nothing in the input bytes makes this raise; every other line becomes
    exactly one event or one dead letter.

    `max_depth` (at most `MAX_DEPTH`) and `max_string_bytes` (UTF-8 bytes of any key or string
    value; None: no limit beyond the line's) are the collector's stricter limits.
    """
    if not 1 <= max_depth <= MAX_DEPTH:
        raise ValueError(f"max_depth must be within 1..{MAX_DEPTH}, got {max_depth}")
    if max_string_bytes is not None and max_string_bytes < 1:
        raise ValueError(f"max_string_bytes must be >= 1, got {max_string_bytes}")
    events: list[dict[str, Any]] = []
    contacts: list[str] = []
    names: list[str | None] = []
    times: list[int] = []
    message_ids: list[str | None] = []
    valid_positions: list[int] = []
    valid_lines: list[bytes] = []
    dead: list[DeadLetter] = []

    loads = orjson.loads
    call_names = _CALL_NAMES
    max_bytes = MAX_LINE_BYTES
    max_ms = MAX_TIME_MS
    parse = parse_time
    add_event = events.append
    add_contact = contacts.append
    add_name = names.append
    add_time = times.append
    add_message_id = message_ids.append
    add_position = valid_positions.append
    add_line = valid_lines.append
    add_dead = dead.append

    for line, pos in zip(lines, positions, strict=True):
        if not line or line.isspace():
            continue
        if len(line) > max_bytes:
            add_dead(DeadLetter("oversize", line, pos, f"line is {len(line)} bytes, over {max_bytes}"))
            continue
        try:
            obj = loads(line)
        except Exception as exc:  # JSONDecodeError, or anything else: one line never stops a batch
            add_dead(DeadLetter("not_json", line, pos, f"not UTF-8 JSON: {exc}"))
            continue
        # A line with fewer brackets than the limit cannot nest deeper (brackets in strings only add).
        if line.count(b"{") + line.count(b"[") > max_depth and _too_deep(obj, max_depth):
            add_dead(DeadLetter("too_deep", line, pos, f"nested deeper than {max_depth} levels"))
            continue
        # No string is longer than the line that holds it (JSON escapes only lengthen it).
        if max_string_bytes is not None and len(line) > max_string_bytes:
            size = _string_over(obj, max_string_bytes)
            if size:
                detail = f"a string of {size} bytes is over the limit of {max_string_bytes} bytes"
                add_dead(DeadLetter("string_too_long", line, pos, detail))
                continue
        if type(obj) is not dict:
            add_dead(DeadLetter("not_object", line, pos, f"JSON {_json_type(obj)} is not an object"))
            continue
        get = obj.get

        name: str | None
        call = get("type")
        if call is None or call == "track":
            track = True
        elif type(call) is str:
            if call not in call_names:
                detail = f"unknown type {_preview(call)}; expected one of {_VALID_TYPES}"
                add_dead(DeadLetter("bad_type", line, pos, detail))
                continue
            track = False
            name = call_names[call]
        else:
            detail = f"field 'type' must be a string, got {_json_type(call)}"
            add_dead(DeadLetter("wrong_field_type", line, pos, detail))
            continue

        event = get("event")
        message_id = get("messageId")
        properties = get("properties")
        context = get("context")
        traits = get("traits")
        if (
            (type(event) is not str and event is not None)
            or (type(message_id) is not str and message_id is not None)
            or (type(properties) is not dict and properties is not None)
            or (type(context) is not dict and context is not None)
            or (traits is not None and type(traits) is not dict)
        ):
            add_dead(DeadLetter("wrong_field_type", line, pos, _wrong_fields(obj)))
            continue

        contact = get("userId")
        if type(contact) is not str or not contact:
            if type(contact) is int:
                contact = str(contact)
            else:
                contact = get("anonymousId")
                if type(contact) is not str or not contact:
                    if type(contact) is int:
                        contact = str(contact)
                    else:
                        detail = "no contact: needs a non-empty string or integer 'userId' or 'anonymousId'"
                        add_dead(DeadLetter("missing_contact", line, pos, detail))
                        continue

        if track:
            if not event:
                detail = "a track call needs a non-empty string 'event'"
                add_dead(DeadLetter("missing_event", line, pos, detail))
                continue
            name = event

        stamp = get("timestamp")
        if stamp is not None:
            ms = parse(stamp)
            if ms is None:
                detail = f"unparseable timestamp {_preview(stamp)}"
                add_dead(DeadLetter("bad_timestamp", line, pos, detail))
                continue
            sent_at = get("sentAt")
            received_at = get("receivedAt")
            if sent_at is not None and received_at is not None:
                sent_ms = parse(sent_at)
                received_ms = parse(received_at)
                # Segment's skew correction; an unparseable sentAt or receivedAt disables it.
                if sent_ms is not None and received_ms is not None:
                    ms = received_ms - (sent_ms - ms)
                    if not 0 <= ms < max_ms:
                        detail = f"skew-corrected time {ms} ms is out of range"
                        add_dead(DeadLetter("bad_timestamp", line, pos, detail))
                        continue
        else:
            received_at = get("receivedAt")
            ms = parse(received_at)
            if ms is None:
                if received_at is None:
                    detail = "no 'timestamp' and no 'receivedAt'"
                else:
                    detail = f"no 'timestamp' and unparseable receivedAt {_preview(received_at)}"
                add_dead(DeadLetter("missing_timestamp", line, pos, detail))
                continue

        add_event(obj)
        add_contact(contact)
        add_name(name)
        add_time(ms)
        add_message_id(message_id)
        add_position(pos)
        add_line(line)

    batch = DecodedLines(events, contacts, names, np.array(times, dtype=np.int64), message_ids, valid_positions,
                         valid_lines)
    return batch, dead


# -- the batch path ---------------------------------------------------------------------------------------

# The fields every event is scanned for, in this order; the rules' paths follow them.
FIXED_FIELDS: Final = (
    ("type",), ("event",), ("userId",), ("anonymousId",), ("messageId",), ("timestamp",), ("sentAt",),
    ("receivedAt",), ("properties",), ("context",), ("traits",),
)
(F_TYPE, F_EVENT, F_USER, F_ANONYMOUS, F_MESSAGE_ID, F_TIMESTAMP, F_SENT_AT, F_RECEIVED_AT, F_PROPERTIES,
 F_CONTEXT, F_TRAITS) = range(len(FIXED_FIELDS))

# Call types, in the order of `_TYPE_NAMES`.
TRACK, PAGE, SCREEN, IDENTIFY, GROUP, ALIAS = range(6)
_TYPE_NAMES: Final = summaries.CALL_TYPES


def _table(parts: Sequence[bytes]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Byte strings end to end, and the offsets between them: part k is table[offsets[k]:offsets[k + 1]]."""
    return (np.frombuffer(b"".join(parts) or b"\0", np.uint8).copy(),
            np.cumsum([0] + [len(p) for p in parts]).astype(np.int64))


# The call types' names, to recognise `type` (code k is _TYPE_NAMES[k]).
_TEXT, _TEXT_OFFSETS = _table([n.encode() for n in _TYPE_NAMES])


@dataclass(slots=True)
class EventBatch:
    """Accepted events as columns, in input order; what moves from the source to the shards.

    `times` is event time (ms, after clock-skew correction); `bits` the matcher bit sets
    (`rules.columns`, one row of 64-bit words per event); `contact_hashes` digests of the contact
    ids (`engine.hashing`), `message_digests` of the message ids (0: none); `contacts` the contact
    ids' UTF-8 and `summaries` each event's trigger-record ``event``, packed (engine/summaries.py: what
    a trigger it causes, or a timer it arms, carries); `positions` the caller's positions.
    """

    times: npt.NDArray[np.int64]
    bits: npt.NDArray[np.uint64]
    contact_hashes: npt.NDArray[np.int64]
    message_digests: npt.NDArray[np.int64]
    contacts: Blobs
    summaries: Blobs
    positions: npt.NDArray[np.int64]
    # The input's watermark just before each event; the source sets it after de-duplication.
    watermarks: npt.NDArray[np.int64] | None = None
    shard: int = -1  # set by routing: the shard a sub-batch is for

    def __len__(self) -> int:
        return len(self.times)

    def take(self, idx: npt.NDArray[np.intp]) -> EventBatch:
        return EventBatch(self.times[idx], self.bits[idx], self.contact_hashes[idx], self.message_digests[idx],
                          self.contacts.take(idx), self.summaries.take(idx), self.positions[idx],
                          None if self.watermarks is None else self.watermarks[idx], self.shard)

    def slice(self, a: int, b: int) -> EventBatch:
        """Events a..b-1, sharing this batch's buffers."""
        return EventBatch(self.times[a:b], self.bits[a:b], self.contact_hashes[a:b], self.message_digests[a:b],
                          self.contacts.slice(a, b), self.summaries.slice(a, b), self.positions[a:b],
                          None if self.watermarks is None else self.watermarks[a:b], self.shard)

    def contact(self, i: int) -> str:
        return self.contacts[i].decode("utf-8")

    def contact_ids(self) -> list[str]:
        return [self.contact(i) for i in range(len(self))]

    def summary(self, i: int) -> dict[str, Any]:
        """Event i's summary as the JSON a record carries, decoded (for inspection; the engine keeps it packed)."""
        return orjson.loads(summaries.summary_json(self.summaries[i]))

    @staticmethod
    def concat(a: EventBatch, b: EventBatch) -> EventBatch:
        return EventBatch(np.concatenate([a.times, b.times]), np.concatenate([a.bits, b.bits]),
                          np.concatenate([a.contact_hashes, b.contact_hashes]),
                          np.concatenate([a.message_digests, b.message_digests]),
                          Blobs.concat([a.contacts, b.contacts]), Blobs.concat([a.summaries, b.summaries]),
                          np.concatenate([a.positions, b.positions]))


def split_lines(data: bytes) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A buffer of JSON Lines as the batch decoder takes it: (buffer, line starts, line ends).

    The returned buffer ends with a newline (one is added when `data` lacks it), so that every
    line is followed by one, as the scanner requires. Blank lines stay (the decoder skips them).
    """
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buf = np.frombuffer(data or b"\n", np.uint8)
    ends = np.empty(data.count(b"\n"), np.int64)
    newline_positions(buf, 0, len(buf) if data else 0, ends)
    starts = np.empty_like(ends)
    if len(ends):
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    return buf, starts, ends


@kernel
def newline_positions(buf, start, end, out):  # type: ignore[no-untyped-def]
    """The positions of the newlines in buf[start:end], written to out; returns how many."""
    n = 0
    i = np.uint64(start)
    stop = np.uint64(end)
    while i < stop:
        if buf[i] == 10:
            out[n] = i
            n += 1
        i += np.uint64(1)
    return n


class BatchDecoder:
    """Decodes blocks of lines into `EventBatch`es for one rule plan (see the module docstring).

        decoder = BatchDecoder(plan)
        batch, dead = decoder.decode(*split_lines(data), positions)
    """

    def __init__(self, plan: Plan | None = None, max_depth: int = MAX_DEPTH) -> None:
        if not 1 <= max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be within 1..{MAX_DEPTH}, got {max_depth}")
        self.plan = plan
        self.max_depth = max_depth
        self.matchers = ColumnMatchers(plan.matchers if plan else [])
        self.trie = PathTrie.build(list(FIXED_FIELDS) + list(self.matchers.paths))
        # Conditions read the trie field of their path: a path may also be a fixed field (`where: {type: page}`).
        self._matcher_tables = self.matchers.tables(self.trie.field_of)
        code = self.matchers.code
        self._call_codes = np.array([OTHER_NAME, code("Page Viewed"), code("Screen Viewed"), NO_NAME, NO_NAME,
                                     NO_NAME], np.int32)
        fields = self.trie.fields
        # A line's fields and the scanner's stacks, reused from line to line.
        self._scratch = (np.zeros(fields, np.uint8), np.zeros(fields, np.int64), np.zeros(fields, np.int64),
                         np.zeros(fields, np.uint8), np.empty(max_depth + 1, np.uint8),
                         np.empty(max_depth + 1, np.int32), np.empty(max_depth + 1, np.int32))

    def decode(self, buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64],
               positions: npt.NDArray[np.int64]) -> tuple[EventBatch, list[DeadLetter]]:
        """Decode lines `buf[starts[i]:ends[i]]` (each followed by a newline in `buf`, see `split_lines`);
        `positions[i]` is carried into the batch or the dead letter of line i. Blank lines are skipped."""
        n = len(starts)
        if n and (int(ends.max()) >= len(buf) or not (buf[ends] == 10).all()):
            raise ValueError("every line must be followed by a newline in the buffer")
        m = self.matchers
        status = np.empty(n, np.uint8)
        times = np.empty(n, np.int64)
        bits = np.empty((n, m.words), np.uint64)
        undecided = np.empty((n * len(m.where), 3), np.int64)
        hashes = np.empty(n, np.int64)
        digests_ = np.empty(n, np.int64)
        # Sized by the lines, not the buffer: a source's buffer may hold much more than this block, and
        # allocations above glibc's mmap threshold are fresh pages, faulted in again at every batch.
        line_bytes = int((ends - starts).sum())
        contact_data = np.empty(line_bytes, np.uint8)
        contact_offsets = np.empty(n + 1, np.int64)
        summary_data = np.empty(line_bytes + n * summaries.HEADER + 8, np.uint8)
        summary_offsets = np.empty(n + 1, np.int64)
        counts = _decode_lines(
            buf, starts, ends, self.trie.arrays(), self.max_depth, MAX_LINE_BYTES, m.name_table, m.name_starts,
            m.name_ends, self._call_codes, _TEXT, _TEXT_OFFSETS, self._matcher_tables, self._scratch, status, times,
            bits, undecided, hashes, digests_, contact_data, contact_offsets, summary_data, summary_offsets)
        accepted, pending = int(counts[0]), int(counts[1])
        if pending:
            m.resolve(bits, undecided[:pending], lambda r: buf[starts[r]:ends[r]].tobytes())
        fast = np.flatnonzero(status == OK)
        batch = EventBatch(
            times[:accepted], bits[:accepted], hashes[:accepted], digests_[:accepted],
            Blobs.packed(contact_data, contact_offsets[:accepted + 1]),
            Blobs.packed(summary_data, summary_offsets[:accepted + 1]),
            positions[fast].astype(np.int64, copy=False))
        dead: list[DeadLetter] = []
        slow = np.flatnonzero(status == SLOW)
        if len(slow):
            # decode_lines carries each line's index, mapped back to the caller's position afterwards.
            lines = [buf[starts[i]:ends[i]].tobytes() for i in slow.tolist()]
            decoded, dead = decode_lines(lines, slow.tolist())
            held = positions.tolist()
            dead = [DeadLetter(d.reason, d.raw, held[d.position], d.detail) for d in dead]
            if len(decoded):
                rows = np.array(decoded.positions, np.intp)
                exact = self._from_decoded(decoded, positions[rows])
                both = EventBatch.concat(batch, exact)
                batch = both.take(np.argsort(np.concatenate([fast, rows]), kind="stable"))
        return batch, dead

    def _from_decoded(self, decoded: DecodedLines, positions: npt.NDArray[np.int64]) -> EventBatch:
        """The columns of events `decode_lines` accepted."""
        plan = self.plan
        words = self.matchers.words
        bits = np.zeros((len(decoded), words), np.uint64)
        if plan is not None:
            for i, b in enumerate(plan.match(decoded.names, decoded.events)):
                for w in range(words):
                    bits[i, w] = (b >> (64 * w)) & 0xFFFF_FFFF_FFFF_FFFF
        contacts = Blobs.of(c.encode("utf-8") for c in decoded.contacts)
        hashes = digest_spans(contacts.data, contacts.starts, contacts.ends, np.empty(len(decoded), np.int64))
        packed = Blobs.of(summaries.pack(e, name, int(t))
                          for e, name, t in zip(decoded.events, decoded.names, decoded.times.tolist(), strict=True))
        return EventBatch(decoded.times, bits, hashes, digests(decoded.message_ids), contacts, packed,
                          positions.astype(np.int64, copy=False))


# -- compiled part ------------------------------------------------------------------------------------


@kernel(inline=True)
def _is_empty_object(buf, s, e):  # type: ignore[no-untyped-def]
    for j in range(s + 1, e - 1):
        c = buf[j]
        if c != 32 and c != 9 and c != 13 and c != 10:
            return False
    return True


@kernel(inline=True)
def _time_of(buf, kind, start, end, escaped, f):  # type: ignore[no-untyped-def]
    """`parse_time` of field f: (status, ms) with status 1 = parsed, 0 = not a time, -1 = only the exact
    decoder can tell (an escaped string, a float)."""
    k = kind[f]
    if k == STRING:
        if escaped[f]:
            return -1, 0
        ok, ms = parse_iso_bytes(buf, start[f] + 1, end[f] - 1)
        return (1 if ok else 0), ms
    if k == INT:
        ok, ms = parse_int_bytes(buf, start[f], end[f])
        return (1 if ok else 0), ms
    if k == FLOAT:
        return -1, 0
    return 0, 0


@kernel(inline=True)
def _contact_span(buf, kind, start, end, escaped, f):  # type: ignore[no-untyped-def]
    """The contact id's UTF-8 span if field f holds a usable one: (1, s, e), (0, 0, 0) if it does not,
    (-1, 0, 0) if only the exact decoder can tell."""
    k = kind[f]
    if k == STRING:
        s = start[f] + 1
        e = end[f] - 1
        if e == s:
            return 0, 0, 0
        if escaped[f]:
            return -1, 0, 0
        return 1, s, e
    if k == INT:
        s = start[f]
        e = end[f]
        if e - s == 2 and buf[s] == 45 and buf[s + 1] == 48:  # -0 is the integer 0
            return -1, 0, 0
        return 1, s, e
    return 0, 0, 0


@kernel(inline=True)
def _same(buf, s, e, table, a, b):  # type: ignore[no-untyped-def]
    if e - s != b - a:
        return False
    for j in range(e - s):
        if buf[s + j] != table[a + j]:
            return False
    return True


@kernel(inline=True)
def _classify(buf, kind, start, end, escaped, text, text_offsets):  # type: ignore[no-untyped-def]
    """The checks of `decode_lines` on a scanned line: (ok, time, call type, contact start, contact end).
    Not ok: the exact decoder must decide (a dead letter, or something the fast path does not vouch for)."""
    no = (False, 0, 0, 0, 0)
    k = kind[F_TYPE]
    if k == ABSENT or k == NULL:
        t = TRACK
    elif k == STRING and not escaped[F_TYPE]:
        t = -1
        for c in range(6):
            if _same(buf, start[F_TYPE] + 1, end[F_TYPE] - 1, text, text_offsets[c], text_offsets[c + 1]):
                t = c
                break
        if t < 0:
            return no
    else:
        return no
    for f in (F_EVENT, F_MESSAGE_ID):
        k = kind[f]
        if k != ABSENT and k != NULL and (k != STRING or escaped[f]):
            return no
    for f in (F_PROPERTIES, F_CONTEXT, F_TRAITS):
        k = kind[f]
        if k != ABSENT and k != NULL and k != OBJECT:
            return no
    got, cs, ce = _contact_span(buf, kind, start, end, escaped, F_USER)
    if got == 0:
        got, cs, ce = _contact_span(buf, kind, start, end, escaped, F_ANONYMOUS)
    if got != 1:
        return no
    if t == TRACK and (kind[F_EVENT] != STRING or end[F_EVENT] - start[F_EVENT] == 2):
        return no
    k = kind[F_TIMESTAMP]
    if k != ABSENT and k != NULL:
        got, ms = _time_of(buf, kind, start, end, escaped, F_TIMESTAMP)
        if got != 1:
            return no
        ks = kind[F_SENT_AT]
        kr = kind[F_RECEIVED_AT]
        if ks != ABSENT and ks != NULL and kr != ABSENT and kr != NULL:
            got_sent, sent = _time_of(buf, kind, start, end, escaped, F_SENT_AT)
            got_received, received = _time_of(buf, kind, start, end, escaped, F_RECEIVED_AT)
            if got_sent < 0 or got_received < 0:
                return no
            if got_sent == 1 and got_received == 1:  # Segment's skew correction
                ms = received - (sent - ms)
                if ms < 0 or ms >= MAX_TIME_MS:
                    return no
    else:
        got, ms = _time_of(buf, kind, start, end, escaped, F_RECEIVED_AT)
        if got != 1:
            return no
    return True, ms, t, cs, ce


@kernel(inline=True)
def _pack_summary(buf, kind, start, end, ms, t, out, pos):  # type: ignore[no-untyped-def]
    """The event's summary, packed (engine/summaries.py), its parts copied from the line's own JSON text;
    returns the position after it."""
    message_id = end[F_MESSAGE_ID] - start[F_MESSAGE_ID] if kind[F_MESSAGE_ID] == STRING else 0
    name = end[F_EVENT] - start[F_EVENT] if t == TRACK else 0
    properties = end[F_PROPERTIES] - start[F_PROPERTIES] if kind[F_PROPERTIES] == OBJECT else 0
    traits = 0
    if kind[F_TRAITS] == OBJECT and not _is_empty_object(buf, start[F_TRAITS], end[F_TRAITS]):
        traits = end[F_TRAITS] - start[F_TRAITS]
    pos = summaries.write_header(out, pos, t, message_id, name, properties, traits, ms)
    pos = copy_bytes(out, pos, buf, start[F_MESSAGE_ID], message_id)
    pos = copy_bytes(out, pos, buf, start[F_EVENT], name)
    pos = copy_bytes(out, pos, buf, start[F_PROPERTIES], properties)
    return copy_bytes(out, pos, buf, start[F_TRAITS], traits)


@kernel
def _decode_lines(buf, starts, ends, trie, max_depth, max_line, names, name_starts, name_ends,  # type: ignore[no-untyped-def]
                  call_codes, text, text_offsets, matchers, scratch, status, times, bits, undecided, hashes, digests,
                  contact_data, contact_offsets, summary_data, summary_offsets):
    """Scan, check, match and extract every line in one pass (a line's fields stay in cache).
    Accepted lines fill the outputs in order, row j for the j-th accepted line; returns how many were
    accepted and how many (event, matcher) pairs went to `undecided` (`rules.columns.event_bits`).
    `scratch`: a line's fields and the scanner's stacks (BatchDecoder._scratch)."""
    line_kind, line_start, line_end, line_escaped, stack_obj, stack_node, stack_field = scratch
    j = 0
    pending = 0
    contact_offsets[0] = 0
    summary_offsets[0] = 0
    for r in range(len(starts)):
        line_kind[:] = ABSENT
        s = starts[r]
        e = ends[r]
        st = scan_line(buf, np.uint64(s), np.uint64(e), trie, max_depth, line_kind, line_start, line_end, line_escaped,
                       stack_obj, stack_node, stack_field)
        if st == OK:
            if e - s > max_line:
                st = SLOW
            else:
                ok, ms, t, cs, ce = _classify(buf, line_kind, line_start, line_end, line_escaped, text, text_offsets)
                if not ok:
                    st = SLOW
        status[r] = st
        if st != OK:
            continue
        times[j] = ms
        if t == TRACK:
            a = line_start[F_EVENT] + 1
            b = line_end[F_EVENT] - 1
            code = OTHER_NAME
            for c in range(len(name_starts)):
                if _same(buf, a, b, names, name_starts[c], name_ends[c]):
                    code = c
                    break
        else:
            code = call_codes[t]
        pending = event_bits(code, buf, line_kind, line_start, line_end, line_escaped, matchers, bits, j, r, undecided,
                             pending)
        contact_offsets[j + 1] = copy_bytes(contact_data, contact_offsets[j], buf, cs, ce - cs)
        hashes[j] = digest(buf, cs, ce)
        if line_kind[F_MESSAGE_ID] == STRING:
            digests[j] = digest(buf, line_start[F_MESSAGE_ID] + 1, line_end[F_MESSAGE_ID] - 1)
        else:
            digests[j] = NO_DIGEST
        summary_offsets[j + 1] = _pack_summary(buf, line_kind, line_start, line_end, ms, t, summary_data,
                                               summary_offsets[j])
        j += 1
    return j, pending
