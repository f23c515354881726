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

Properties and traits get 32 bits: the exact decoder re-serialises them, and a number can come out
longer than it went in (`1e9` as `1000000000.0`).

Timers keep summaries for days (an `inactive_for` rule keeps nearly every contact's last event), so
they keep them in a shorter form, the kept form (operators/timers.py's arena): a header of 11 bytes

    flags u8 (the call type in bits 0-2, then ID_UNQUOTED, NAME_SHARED, PROPERTIES_SHARED, HAS_TRAITS,
    WIDE), message id u8, name u8, properties u16, time i48; traits u16 only with HAS_TRAITS

or, with WIDE (a part too long for those fields, a time beyond the 48 bits' +-4,400 years), of 21:
flags u8, message id u16, name u16, properties u32, traits u32, time i64. Then the parts, where a
message id that is a JSON string is kept without its quotes (ID_UNQUOTED), and a shared name or
properties part is a u32 reference (SHARED_REF bytes) to a record of the separate `shared` buffer,
which holds its length (a shared part's length field is 0). In the state benchmark's build (the
example rules; counted at 200k contacts), the 24-byte header, the quotes and the names of the events
pending timers keep took 27.6 + 2.3 + 7.4 of their 63.6 bytes per contact; at 1M contacts the kept
form took their 60.8 live bytes to 37.4.

Flag SHARED_PROPERTIES of a packed summary's flags byte marked shared properties in the arenas of
snapshot formats 6 to 8, which kept packed summaries; they are converted on restore.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

from engine.compiled import kernel
from engine.rawmem import copy_bytes, load_prefix, load_u32, load_u64, store_u32, store_u64
from engine.times import format_iso_bytes, parse_time

__all__ = ["HEADER", "HAS_TRAITS", "ID_UNQUOTED", "JSON_OVERHEAD", "KEPT_HEADER", "KEPT_WIDE_HEADER", "NAME_SHARED",
           "NO_SHARED", "PROPERTIES_SHARED", "SHARED_PROPERTIES", "SHARED_REF", "WIDE", "expand_kept", "from_json",
           "kept_json", "kept_length", "kept_packed_length", "kept_refs", "name_span", "pack", "pack_parts", "packed_length",
           "properties_span", "summary_json", "write_header", "write_json", "write_kept"]

HEADER: Final = 24
SHARED_PROPERTIES: Final = 1  # (snapshot formats 6 to 8) a packed summary's flag: its properties are shared
SHARED_REF: Final = 4  # the bytes of a reference to a shared record
SHARED_ALIGN: Final = 8  # a reference counts in units of this
SHARED_RECORD_HEADER: Final = 4  # a shared record: its length (u32), then the part's bytes
NO_SHARED: Final = np.zeros(8, np.uint8)  # the `shared` buffer of summaries that share nothing
CALL_TYPES: Final = ("track", "page", "screen", "identify", "group", "alias")
_CALL_EVENTS: Final = (None, "Page Viewed", "Screen Viewed", None, None, None)
TRACK: Final = 0
_QUOTE: Final = 34  # '"'


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
    end = write_json(np.frombuffer(packed, np.uint8), 0, out, 0)
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
def name_span(src, start):  # type: ignore[no-untyped-def]
    """(where the name part of the packed summary at src[start:] starts, its length)."""
    first = load_u64(src, start)
    return start + HEADER + np.int64((first >> _S16) & _MASK16), np.int64((first >> _S32) & _MASK16)


@kernel(inline=True)
def packed_length(src, start):  # type: ignore[no-untyped-def]
    """The length of the summary at src[start:] with its properties in place (shared or not)."""
    first = load_u64(src, start)
    sizes = load_u64(src, start + 8)
    return (HEADER + np.int64((first >> _S16) & _MASK16) + np.int64((first >> _S32) & _MASK16)
            + np.int64(sizes & _MASK32) + np.int64(sizes >> _S32))


@kernel(inline=True)
def _copy_part(out, pos, src, shared, at, n, in_shared):  # type: ignore[no-untyped-def]
    if in_shared:
        return copy_bytes(out, pos, shared, at, n)
    return copy_bytes(out, pos, src, at, n)


@kernel(inline=True)
def _copy_message_id(out, pos, src, id_at, id_len, quoted):  # type: ignore[no-untyped-def]
    """The message id's bytes at out[pos:], in quotes when it is kept without them."""
    if not quoted:
        return copy_bytes(out, pos, src, id_at, id_len)
    out[pos] = _QUOTE
    pos = copy_bytes(out, pos + 1, src, id_at, id_len)
    out[pos] = _QUOTE
    return pos + 1


@kernel(inline=True)
def _write_event(src, shared, call, time_ms, id_at, id_len, quoted, name_at, name_len, name_shared,  # type: ignore[no-untyped-def]
                 properties_at, properties_len, properties_shared, traits_at, traits_len, out, pos):
    """The JSON of a summary from its parts (each in `src`, or in `shared` where flagged), at out[pos:]."""
    pos = _put(_PART, out, pos)
    if quoted or id_len:
        pos = _copy_message_id(out, pos, src, id_at, id_len, quoted)
    else:
        pos = _put(_PART + 6, out, pos)
    pos = _put(_PART + 1, out, pos)
    pos = _put(call, out, pos)
    pos = _put(_PART + 2, out, pos)
    if call == TRACK:
        pos = _copy_part(out, pos, src, shared, name_at, name_len, name_shared)
    else:
        pos = _put(_EVENT_OF + call, out, pos)
    pos = _put(_PART + 3, out, pos)
    pos = format_iso_bytes(time_ms, out, pos)
    pos = _put(_PART + 4, out, pos)
    if properties_len:
        pos = _copy_part(out, pos, src, shared, properties_at, properties_len, properties_shared)
    else:
        pos = _put(_PART + 7, out, pos)
    if traits_len:
        pos = _put(_PART + 5, out, pos)
        pos = copy_bytes(out, pos, src, traits_at, traits_len)
    return _put(_PART + 8, out, pos)


@kernel(inline=True)
def write_json(src, start, out, pos):  # type: ignore[no-untyped-def]
    """The JSON of the packed summary at src[start:], written at out[pos:] (at most its packed length
    plus JSON_OVERHEAD bytes); returns the position after it."""
    first = load_u64(src, start)
    sizes = load_u64(src, start + 8)
    message_id = np.int64((first >> _S16) & _MASK16)
    name = np.int64((first >> _S32) & _MASK16)
    properties = np.int64(sizes & _MASK32)
    at = start + HEADER
    return _write_event(src, src, np.int64(first & np.uint64(0xFF)), np.int64(load_u64(src, start + 16)), at,
                        message_id, False, at + message_id, name, False, at + message_id + name, properties, False,
                        at + message_id + name + properties, np.int64(sizes >> _S32), out, pos)


# -- the kept form ------------------------------------------------------------------------------------

_CALL_BITS: Final = 0x07
ID_UNQUOTED: Final = 0x08
NAME_SHARED: Final = 0x10
PROPERTIES_SHARED: Final = 0x20
HAS_TRAITS: Final = 0x40
WIDE: Final = 0x80
KEPT_HEADER: Final = 11
KEPT_WIDE_HEADER: Final = 21
_I48: Final = 1 << 47  # the 48-bit time's bound: -_I48 <= time < _I48


@kernel(inline=True)
def _u16(src, at):  # type: ignore[no-untyped-def]
    return np.int64(src[at]) | (np.int64(src[at + 1]) << 8)


@kernel(inline=True)
def _put_u16(out, at, value):  # type: ignore[no-untyped-def]
    out[at] = value & 0xFF
    out[at + 1] = (value >> 8) & 0xFF


@kernel(inline=True)
def _kept_fields(src, start):  # type: ignore[no-untyped-def]
    """(flags, the kept lengths of the message id, name, properties and traits (a shared part's: 0), the
    time, where the parts start) of the kept summary at src[start:]."""
    flags = np.int64(src[start])
    if flags & WIDE:
        return (flags, _u16(src, start + 1), _u16(src, start + 3), load_u32(src, start + 5), load_u32(src, start + 9),
                np.int64(load_prefix(src, start + 13, 8)), start + KEPT_WIDE_HEADER)
    time_ms = np.int64(load_prefix(src, start + 5, 6))
    if time_ms >= _I48:
        time_ms -= 2 * _I48
    if flags & HAS_TRAITS:
        return (flags, np.int64(src[start + 1]), np.int64(src[start + 2]), _u16(src, start + 3), _u16(src, start + 11),
                time_ms, start + KEPT_HEADER + 2)
    return (flags, np.int64(src[start + 1]), np.int64(src[start + 2]), _u16(src, start + 3), np.int64(0), time_ms,
            start + KEPT_HEADER)


@kernel(inline=True)
def kept_length(src, start):  # type: ignore[no-untyped-def]
    """The bytes the kept summary at src[start:] takes."""
    flags, message_id, name, properties, traits, _, at = _kept_fields(src, start)
    if flags & NAME_SHARED:
        name = SHARED_REF
    if flags & PROPERTIES_SHARED:
        properties = SHARED_REF
    return at - start + message_id + name + properties + traits


@kernel(inline=True)
def kept_refs(src, start):  # type: ignore[no-untyped-def]
    """Where the kept summary at src[start:] holds its shared name's and shared properties' references
    (-1: not shared)."""
    flags, message_id, name, _, _, _, at = _kept_fields(src, start)
    at += message_id
    name_ref = -1
    if flags & NAME_SHARED:
        name_ref = at
        name = SHARED_REF
    return name_ref, at + name if flags & PROPERTIES_SHARED else -1


@kernel(inline=True)
def _shared_part(src, at, shared):  # type: ignore[no-untyped-def]
    """(where the shared record that src[at:at + 4] refers to holds its bytes, how many)."""
    record = load_u32(src, at) * SHARED_ALIGN
    return record + SHARED_RECORD_HEADER, load_u32(shared, record)


@kernel(inline=True)
def _kept_part(src, at, n, in_shared, shared):  # type: ignore[no-untyped-def]
    """(where a kept part's bytes are, how many, where the next part starts) for the part at src[at:]
    of n bytes, or a reference to a shared record."""
    if in_shared:
        part_at, n = _shared_part(src, at, shared)
        return part_at, n, at + SHARED_REF
    return at, n, at + n


@kernel(inline=True)
def _kept_spans(src, start, shared):  # type: ignore[no-untyped-def]
    """(call, time, id at, id length, quoted, name at, length, shared, properties at, length, shared,
    traits at, length) of the kept summary at src[start:]: where its parts' bytes are, in src or shared."""
    flags, message_id, name, properties, traits, time_ms, at = _kept_fields(src, start)
    id_at = at
    name_shared = (flags & NAME_SHARED) != 0
    name_at, name, at = _kept_part(src, at + message_id, name, name_shared, shared)
    properties_shared = (flags & PROPERTIES_SHARED) != 0
    properties_at, properties, at = _kept_part(src, at, properties, properties_shared, shared)
    return (flags & _CALL_BITS, time_ms, id_at, message_id, (flags & ID_UNQUOTED) != 0, name_at, name, name_shared,
            properties_at, properties, properties_shared, at, traits)


@kernel(inline=True)
def _put_part(out, at, src, part_at, n, ref):  # type: ignore[no-untyped-def]
    """A kept part at out[at:]: a reference to shared record `ref`, or (ref < 0) its n bytes."""
    if ref < 0:
        return copy_bytes(out, at, src, part_at, n)
    store_u32(out, at, ref)
    return at + SHARED_REF


@kernel(inline=True)
def write_kept(out, pos, src, start, name_ref, properties_ref):  # type: ignore[no-untyped-def]
    """The packed summary at src[start:] in the kept form at out[pos:], its name and properties replaced
    by references to shared records where name_ref, properties_ref >= 0; returns where it ends."""
    first = load_u64(src, start)
    sizes = load_u64(src, start + 8)
    time_ms = np.int64(load_u64(src, start + 16))
    message_id = np.int64((first >> _S16) & _MASK16)
    name = np.int64((first >> _S32) & _MASK16)
    properties = np.int64(sizes & _MASK32)
    traits = np.int64(sizes >> _S32)
    id_at = start + HEADER
    name_at = id_at + message_id
    properties_at = name_at + name
    traits_at = properties_at + properties
    flags = np.int64(first & np.uint64(_CALL_BITS))
    id_kept = message_id
    if message_id > 2 and src[id_at] == _QUOTE:  # a JSON string of at least one character
        flags |= ID_UNQUOTED
        id_at += 1
        id_kept -= 2
    name_kept = name
    if name_ref >= 0:
        flags |= NAME_SHARED
        name_kept = 0
    properties_kept = properties
    if properties_ref >= 0:
        flags |= PROPERTIES_SHARED
        properties_kept = 0
    if id_kept > 0xFF or name_kept > 0xFF or properties_kept > 0xFFFF or traits > 0xFFFF or not -_I48 <= time_ms < _I48:
        out[pos] = flags | WIDE
        _put_u16(out, pos + 1, id_kept)
        _put_u16(out, pos + 3, name_kept)
        store_u32(out, pos + 5, properties_kept)
        store_u32(out, pos + 9, traits)
        store_u64(out, pos + 13, np.uint64(time_ms))
        at = pos + KEPT_WIDE_HEADER
    else:
        out[pos + 1] = id_kept
        out[pos + 2] = name_kept
        _put_u16(out, pos + 3, properties_kept)
        store_u32(out, pos + 5, time_ms)
        _put_u16(out, pos + 9, time_ms >> 32)
        at = pos + KEPT_HEADER
        if traits:
            flags |= HAS_TRAITS
            _put_u16(out, at, traits)
            at += 2
        out[pos] = flags
    at = copy_bytes(out, at, src, id_at, id_kept)
    at = _put_part(out, at, src, name_at, name, name_ref)
    at = _put_part(out, at, src, properties_at, properties, properties_ref)
    return copy_bytes(out, at, src, traits_at, traits)


@kernel(inline=True)
def kept_packed_length(src, start, shared):  # type: ignore[no-untyped-def]
    """The length of the kept summary at src[start:] as a packed summary (`expand_kept`'s)."""
    _, _, _, message_id, quoted, _, name, _, _, properties, _, _, traits = _kept_spans(src, start, shared)
    return HEADER + message_id + 2 * quoted + name + properties + traits


@kernel(inline=True)
def expand_kept(src, start, shared, out):  # type: ignore[no-untyped-def]
    """The kept summary at src[start:] as a packed summary at out[0:]; returns its end."""
    (call, time_ms, id_at, message_id, quoted, name_at, name, name_shared, properties_at, properties, properties_shared,
     traits_at, traits) = _kept_spans(src, start, shared)
    pos = write_header(out, 0, call, message_id + 2 * quoted, name, properties, traits, time_ms)
    pos = _copy_message_id(out, pos, src, id_at, message_id, quoted)
    pos = _copy_part(out, pos, src, shared, name_at, name, name_shared)
    pos = _copy_part(out, pos, src, shared, properties_at, properties, properties_shared)
    return copy_bytes(out, pos, src, traits_at, traits)


@kernel(inline=True)
def kept_json(src, start, shared, out, pos):  # type: ignore[no-untyped-def]
    """The JSON of the kept summary at src[start:] (its shared parts in `shared`), at out[pos:] (at most
    its packed length plus JSON_OVERHEAD bytes); returns the position after it."""
    (call, time_ms, id_at, message_id, quoted, name_at, name, name_shared, properties_at, properties, properties_shared,
     traits_at, traits) = _kept_spans(src, start, shared)
    return _write_event(src, shared, call, time_ms, id_at, message_id, quoted, name_at, name, name_shared,
                        properties_at, properties, properties_shared, traits_at, traits, out, pos)
