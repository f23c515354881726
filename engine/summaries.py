"""Event summaries, packed: what a trigger record carries as its `event`, kept compact until a record is written.

SPEC §4: a trigger record's `event` is the event that caused the firing, for a timer the event that
armed it. As JSON it is `event_summary` (engine/records.py): messageId, type, event, timestamp,
properties and non-empty traits. Every event's summary is made when it is decoded and kept by the
timers it arms (an `inactive_for` rule re-arms on every event, so nearly every contact keeps one), yet
few become records. So a summary is packed: a header, then the parts the JSON takes from the event,
as the event wrote them; the rest of the JSON (its keys, the type, the ISO time, the name of a page
or screen call) is written only with a record (`write_json`). A page view's summary takes 112 bytes
packed against 191 as JSON.

Layout, little-endian (`HEADER` bytes, then the parts in this order):

    type u8 (engine.decode's call types: track, page, screen, identify, group, alias), flags u8,
    message id u16, name u16, 0 u16, properties u32, traits u32: the JSON text bytes of each
    part (0 = absent: messageId null, no name of its own, properties {}, no traits);
    time i64: the event time in epoch milliseconds (the JSON's `timestamp`).

Flag SHARED_PROPERTIES: the properties part is a u32 reference (in 8-byte units) to a record of a
separate buffer (`shared`: a uint32 length, then the bytes) instead of the bytes themselves; the
header still gives their length. Timers keep their events' summaries this way (operators/timers.py):
a shop's pages and products repeat, so most kept events share their properties with others.

Properties and traits get 32 bits: the exact decoder re-serialises them, and a number can come out
longer than it went in (`1e9` as `1000000000.0`).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from engine.compiled import kernel
from engine.rawmem import copy_bytes, load_u32, load_u64, store_u64
from engine.times import format_iso_bytes, parse_time

__all__ = ["HEADER", "JSON_OVERHEAD", "NO_SHARED", "SHARED_PROPERTIES", "SHARED_REF", "from_json", "pack",
           "pack_parts", "packed_length", "properties_span", "stored_length", "summary_json", "write_header",
           "write_json"]

HEADER: Final = 24
SHARED_PROPERTIES: Final = 1
SHARED_REF: Final = 4  # the bytes of a shared properties reference
SHARED_ALIGN: Final = 8  # a reference counts in units of this
SHARED_RECORD_HEADER: Final = 4  # a shared record: its length (u32), then the properties
NO_SHARED: Final = np.zeros(8, np.uint8)  # the `shared` buffer of summaries that share nothing
CALL_TYPES: Final = ("track", "page", "screen", "identify", "group", "alias")
_CALL_EVENTS: Final = (None, "Page Viewed", "Screen Viewed", None, None, None)
TRACK: Final = 0


def _table(parts: list[bytes]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    return (np.frombuffer(b"".join(parts), np.uint8).copy(), np.cumsum([0] + [len(p) for p in parts]).astype(np.int64))


# Part k < 6: call type k's "type" value; 6 + k: its "event" value when it has no name of its own; then the
# JSON's fixed text.
_JSON_PARTS: Final = [b'{"messageId":', b',"type":', b',"event":', b',"timestamp":"', b'","properties":',
                      b',"traits":', b"null", b"{}", b"}"]
_TEXT, _TEXT_OFFSETS = _table([b'"%s"' % t.encode() for t in CALL_TYPES]
                              + [orjson.dumps(e) for e in _CALL_EVENTS] + _JSON_PARTS)
_EVENT_OF, _PART = 6, 12
# The most bytes the JSON takes beyond the packed parts: its fixed text, the ISO time, the longest type and
# event value, minus the header it no longer has.
JSON_OVERHEAD: Final = sum(map(len, _JSON_PARTS)) + 24 + max(len(t) + 2 for t in CALL_TYPES) + len(b'"Screen Viewed"')


def pack(event: dict[str, Any], name: str | None, time_ms: int) -> bytes:
    """The packed summary of a decoded event (the exact decoder's path): its parts as orjson writes them."""
    message_id = event.get("messageId")
    call = event.get("type") or "track"
    properties = event.get("properties")
    traits = event.get("traits")
    return pack_parts(CALL_TYPES.index(call), b"" if message_id is None else orjson.dumps(message_id),
                      orjson.dumps(name) if call == "track" else b"", orjson.dumps(properties) if properties else b"",
                      orjson.dumps(traits) if traits else b"", time_ms)


def from_json(summary: bytes) -> bytes:
    """The packed form of a summary given as JSON (what snapshots of format 4 and earlier kept)."""
    s = orjson.loads(summary)
    call = CALL_TYPES.index(s["type"])
    message_id = s.get("messageId")
    properties = s.get("properties")
    traits = s.get("traits")
    time_ms = parse_time(s["timestamp"])
    if time_ms is None:
        raise ValueError(f"a summary's timestamp must be ISO-8601, got {s['timestamp']!r}")
    return pack_parts(call, b"" if message_id is None else orjson.dumps(message_id),
                      orjson.dumps(s["event"]) if call == TRACK else b"", orjson.dumps(properties) if properties else b"",
                      orjson.dumps(traits) if traits else b"", time_ms)


def pack_parts(call: int, message_id: bytes, name: bytes, properties: bytes, traits: bytes, time_ms: int) -> bytes:
    header = (bytes([call, 0]) + len(message_id).to_bytes(2, "little") + len(name).to_bytes(2, "little") + b"\0\0"
              + len(properties).to_bytes(4, "little") + len(traits).to_bytes(4, "little")
              + time_ms.to_bytes(8, "little", signed=True))
    return header + message_id + name + properties + traits


def summary_json(packed: bytes) -> bytes:
    """The JSON of a packed summary (`event_summary`'s), in Python (for inspection and tests)."""
    out = np.empty(len(packed) + JSON_OVERHEAD, np.uint8)
    end = write_json(np.frombuffer(packed, np.uint8), 0, NO_SHARED, out, 0)
    return out[:end].tobytes()


# -- compiled part ------------------------------------------------------------------------------------

_MASK16 = np.uint64(0xFFFF)
_MASK32 = np.uint64(0xFFFFFFFF)
_S16 = np.uint64(16)
_S32 = np.uint64(32)


@kernel(inline=True)
def _put(k, out, pos):  # type: ignore[no-untyped-def]
    return copy_bytes(out, pos, _TEXT, _TEXT_OFFSETS[k], _TEXT_OFFSETS[k + 1] - _TEXT_OFFSETS[k])


@kernel(inline=True)
def write_header(out, pos, call, message_id, name, properties, traits, time_ms):  # type: ignore[no-untyped-def]
    """The header of a summary whose parts take the given bytes, at out[pos:]; returns where the parts go."""
    store_u64(out, pos, np.uint64(call) | (np.uint64(message_id) << _S16) | (np.uint64(name) << _S32))
    store_u64(out, pos + 8, np.uint64(properties) | (np.uint64(traits) << _S32))
    store_u64(out, pos + 16, np.uint64(time_ms))
    return pos + HEADER


@kernel(inline=True)
def properties_span(src, start):  # type: ignore[no-untyped-def]
    """(where the properties part of the summary at src[start:] starts, its length)."""
    first = load_u64(src, start)
    at = start + HEADER + np.int64((first >> _S16) & _MASK16) + np.int64((first >> _S32) & _MASK16)
    return at, np.int64(load_u64(src, start + 8) & _MASK32)


@kernel(inline=True)
def packed_length(src, start):  # type: ignore[no-untyped-def]
    """The length of the summary at src[start:] with its properties in place (shared or not)."""
    first = load_u64(src, start)
    sizes = load_u64(src, start + 8)
    return (HEADER + np.int64((first >> _S16) & _MASK16) + np.int64((first >> _S32) & _MASK16)
            + np.int64(sizes & _MASK32) + np.int64(sizes >> _S32))


@kernel(inline=True)
def stored_length(src, start):  # type: ignore[no-untyped-def]
    """The bytes the summary at src[start:] takes as stored: its packed length, less its properties
    for a SHARED_REF when they are shared."""
    length = packed_length(src, start)
    if src[start + 1] & SHARED_PROPERTIES:
        length += SHARED_REF - np.int64(load_u64(src, start + 8) & _MASK32)
    return length


@kernel(inline=True)
def write_json(src, start, shared, out, pos):  # type: ignore[no-untyped-def]
    """The JSON of the packed summary at src[start:] (its shared properties in `shared`), written at
    out[pos:] (at most its packed length plus JSON_OVERHEAD bytes); returns the position after it."""
    first = load_u64(src, start)
    sizes = load_u64(src, start + 8)
    time_ms = np.int64(load_u64(src, start + 16))
    call = np.int64(first & np.uint64(0xFF))
    message_id = np.int64((first >> _S16) & _MASK16)
    name = np.int64((first >> _S32) & _MASK16)
    properties = np.int64(sizes & _MASK32)
    traits = np.int64(sizes >> _S32)
    at = start + HEADER
    pos = _put(_PART, out, pos)
    if message_id:
        pos = copy_bytes(out, pos, src, at, message_id)
    else:
        pos = _put(_PART + 6, out, pos)
    at += message_id
    pos = _put(_PART + 1, out, pos)
    pos = _put(call, out, pos)
    pos = _put(_PART + 2, out, pos)
    if call == TRACK:
        pos = copy_bytes(out, pos, src, at, name)
    else:
        pos = _put(_EVENT_OF + call, out, pos)
    at += name
    pos = _put(_PART + 3, out, pos)
    pos = format_iso_bytes(time_ms, out, pos)
    pos = _put(_PART + 4, out, pos)
    if (first >> np.uint64(8)) & np.uint64(SHARED_PROPERTIES):
        pos = copy_bytes(out, pos, shared, load_u32(src, at) * SHARED_ALIGN + SHARED_RECORD_HEADER, properties)
        at += SHARED_REF
    elif properties:
        pos = copy_bytes(out, pos, src, at, properties)
        at += properties
    else:
        pos = _put(_PART + 7, out, pos)
    if traits:
        pos = _put(_PART + 5, out, pos)
        pos = copy_bytes(out, pos, src, at, traits)
    return _put(_PART + 8, out, pos)
