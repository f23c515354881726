"""The batch decoder: JSON Lines bytes to validated, columnar events and dead letters (SPEC §2).

`decode_lines` is the engine's hot path: every input line goes through it exactly once. It is one
loop with local aliases and the checks written inline, and it builds plain lists that become one
numpy array at the end, because per-event helper calls and per-event numpy writes would each cost
more than the validation itself.

The order of the checks is part of the contract (the first failing check names the dead letter)
and is the order of `REASONS`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from engine.times import MAX_TIME_MS, parse_time

__all__ = ["MAX_DEPTH", "MAX_LINE_BYTES", "REASONS", "DeadLetter", "EventBatch", "decode_lines"]

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
class EventBatch:
    """Valid events as columns: index ``i`` of every field describes one event, in input order.

    `names` is the matchable event name (``None`` for identify, group and alias); `times` is event
    time in epoch ms after clock-skew correction; `positions` are the caller's positions.
    """

    events: list[dict[str, Any]]
    contacts: list[str]
    names: list[str | None]
    times: npt.NDArray[np.int64]
    message_ids: list[str | None]
    positions: list[int]
    # Each event's JSON line as read: a timer keeps the line, not the decoded dict (about a fifth of its size).
    lines: list[bytes]
    # The input's watermark just before each event; the source sets it after de-duplication.
    watermarks: npt.NDArray[np.int64] | None = None
    shard: int = -1  # set by routing: the shard a sub-batch is for

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
                 max_string_bytes: int | None = None) -> tuple[EventBatch, list[DeadLetter]]:
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

    batch = EventBatch(events, contacts, names, np.array(times, dtype=np.int64), message_ids, valid_positions,
                       valid_lines)
    return batch, dead
