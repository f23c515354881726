"""Packed event summaries (engine/summaries.py): the JSON a record carries is `event_summary`'s, byte for byte;
the kept form timers keep gives back the packed summary and the same JSON."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from engine.records import event_summary
from engine.summaries import (
    HEADER,
    JSON_OVERHEAD,
    NO_SHARED,
    WIDE,
    expand_kept,
    from_json,
    kept_json,
    kept_length,
    kept_packed_length,
    kept_refs,
    pack,
    summary_json,
    write_kept,
)
from engine.testing import arena_record, kept_record

T = 1_795_442_400_123  # 2026-11-23T14:00:00.123Z

EVENTS: list[tuple[dict[str, Any], str | None]] = [
    ({"type": "track", "event": "Product Added", "messageId": "m-1", "properties": {"sku": "a", "price": 49.9}},
     "Product Added"),
    ({"event": "E\u00e9 \"q\"", "properties": {}, "traits": {}}, "E\u00e9 \"q\""),
    ({"type": "page", "messageId": "p", "properties": {"path": "/pricing"}}, "Page Viewed"),
    ({"type": "screen"}, "Screen Viewed"),
    ({"type": "identify", "userId": 7, "traits": {"plan": "pro", "n": [1, 2.5, None]}}, None),
    ({"type": "group", "properties": None, "traits": None}, None),
    ({"type": "alias", "messageId": "\u2028\\"}, None),
]


@pytest.mark.parametrize(("event", "name"), EVENTS)
def test_the_json_of_a_packed_summary_is_event_summarys(event: dict[str, Any], name: str | None) -> None:
    packed = pack(event, name, T)
    assert summary_json(packed) == orjson.dumps(event_summary(event, name, T))
    assert from_json(summary_json(packed)) == packed


def test_a_page_view_packs_in_60_percent_of_its_json() -> None:
    event = {"type": "page", "messageId": "7-0000000000",
             "properties": {"path": "/pricing", "url": "https://shop.example/pricing", "title": "Pricing"}}
    packed = pack(event, "Page Viewed", T)
    assert (len(packed), len(summary_json(packed))) == (HEADER + 14 + 74, 191)


# -- the kept form ----------------------------------------------------------------------------------

LONG = "x" * 300
KEPT_CASES: list[tuple[dict[str, Any], str | None, int]] = [
    *((event, name, T) for event, name in EVENTS),
    ({"messageId": "", "event": "E"}, "E", T),  # an empty id keeps its quotes (no quotes would read as null)
    ({"messageId": 12345, "event": "E"}, "E", T),  # not a string: kept as written
    ({"messageId": LONG, "event": "E", "properties": {"k": "v"}}, "E", T),  # a 302-byte id: the wide header
    ({"messageId": "m", "event": LONG}, LONG, T),  # a 302-byte name: the wide header
    ({"messageId": "m", "event": "E", "properties": {"k": "v" * 70_000}}, "E", T),
    ({"type": "identify", "traits": {"k": "v" * 70_000}}, None, T),
    ({"messageId": "m", "event": "E"}, "E", -1),  # before 1970
    ({"messageId": "m", "event": "E"}, "E", -(1 << 47)),  # the 48 bits' bounds
    ({"messageId": "m", "event": "E"}, "E", (1 << 47) - 1),
    ({"messageId": "m", "event": "E"}, "E", 1 << 47),  # year 6429: the wide header
    ({"messageId": "m", "event": "E"}, "E", 253_402_300_799_999),  # 9999-12-31T23:59:59.999Z
]


def _kept(packed: bytes, name_ref: int = -1, properties_ref: int = -1) -> bytes:
    out = np.zeros(len(packed) + 8, np.uint8)
    end = write_kept(out, 3, np.frombuffer(b"\0" * 5 + packed, np.uint8), 5, name_ref, properties_ref)
    return out[3:end].tobytes()


@pytest.mark.parametrize(("event", "name", "time_ms"), KEPT_CASES)
def test_a_kept_summary_is_the_layout_and_gives_back_the_packed_one(event: dict[str, Any], name: str | None,
                                                                     time_ms: int) -> None:
    packed = pack(event, name, time_ms)
    kept = _kept(packed)
    assert kept == kept_record(packed)
    src = np.frombuffer(b"\0" * 3 + kept + b"\0" * 8, np.uint8)
    assert kept_length(src, 3) == len(kept)
    assert kept_packed_length(src, 3, NO_SHARED) == len(packed)
    out = np.zeros(len(packed) + 8, np.uint8)
    assert out[:expand_kept(src, 3, NO_SHARED, out)].tobytes() == packed
    json = np.zeros(len(packed) + JSON_OVERHEAD, np.uint8)
    assert json[:kept_json(src, 3, NO_SHARED, json, 0)].tobytes() == summary_json(packed)
    wide = kept[0] & WIDE != 0
    assert wide == (len(packed) > 70_000 or LONG in orjson.dumps(event).decode() or not -(1 << 47) <= time_ms < 1 << 47)


def test_kept_summaries_refer_to_their_shared_name_and_properties() -> None:
    event = {"messageId": "7-0000000106", "event": "Product Viewed",
             "properties": {"path": "/products/p-90", "price": 49.9}, "traits": {"plan": "pro"}}
    packed = pack(event, "Product Viewed", T)
    name, properties = b'"Product Viewed"', orjson.dumps(event["properties"])
    shared = np.frombuffer(arena_record(b"0123456789ab") + arena_record(name) + arena_record(properties), np.uint8)
    # Records 2 and 5 of `shared` (in 8-byte units: 16 and 16 + 24 bytes).
    for name_ref, properties_ref, length in ((2, 5, 11 + 2 + 12 + 4 + 4 + 14), (2, -1, 11 + 2 + 12 + 4 + 38 + 14),
                                             (-1, 5, 11 + 2 + 12 + 16 + 4 + 14)):
        kept = _kept(packed, name_ref, properties_ref)
        assert len(kept) == length
        assert kept == kept_record(packed, None if name_ref < 0 else name_ref,
                                                           None if properties_ref < 0 else properties_ref)
        assert kept_refs(np.frombuffer(kept, np.uint8), 0) == (-1 if name_ref < 0 else 25,
                                                               -1 if properties_ref < 0 else 25 + (4 if name_ref >= 0 else 16))
        src = np.frombuffer(kept + b"\0" * 8, np.uint8)
        assert kept_packed_length(src, 0, shared) == len(packed)
        out = np.zeros(len(packed) + 8, np.uint8)
        assert out[:expand_kept(src, 0, shared, out)].tobytes() == packed
        json = np.zeros(len(packed) + JSON_OVERHEAD, np.uint8)
        assert json[:kept_json(src, 0, shared, json, 0)].tobytes() == summary_json(packed)
