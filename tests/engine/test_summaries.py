"""Packed event summaries (engine/summaries.py): the JSON a record carries is `event_summary`'s, byte for byte."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from engine.records import event_summary
from engine.summaries import HEADER, from_json, pack, summary_json

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
