from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.decode import MAX_LINE_BYTES, REASONS, DeadLetter, EventBatch, decode_lines

T14 = 1_795_442_400_000  # 2026-11-23T14:00:00.000Z
TS = "2026-11-23T14:00:00.000Z"
CASE_013 = Path(__file__).resolve().parents[3] / "shared" / "conformance" / "cases" / "013"


def decode(*lines: bytes) -> tuple[EventBatch, list[DeadLetter]]:
    return decode_lines(lines, [i * 100 for i in range(len(lines))])


def line(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def reason(raw: bytes) -> str:
    batch, dead = decode(raw)
    assert len(batch) == 0 and len(dead) == 1, (batch, dead)
    return dead[0].reason


def only_event(raw: bytes) -> EventBatch:
    batch, dead = decode(raw)
    assert dead == [] and len(batch) == 1
    return batch


# --- valid events --------------------------------------------------------------------------------


def test_track_columns() -> None:
    event = {
        "type": "track",
        "event": "Product Added",
        "userId": "u-81",
        "anonymousId": "a-9f2",
        "messageId": "m-123",
        "timestamp": "2026-11-23T14:00:00.123Z",
        "properties": {"product_id": "p-7", "price": 49.9},
    }
    batch, dead = decode_lines([orjson.dumps(event), line(userId="u-2", event="E", timestamp=T14)], [7, 9])
    assert dead == []
    assert batch.events == [event, {"userId": "u-2", "event": "E", "timestamp": T14}]
    assert batch.contacts == ["u-81", "u-2"]
    assert batch.names == ["Product Added", "E"]
    assert batch.message_ids == ["m-123", None]
    assert batch.positions == [7, 9]
    assert batch.times.dtype == np.int64
    assert batch.times.tolist() == [T14 + 123, T14]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        ("page", "Page Viewed"),
        ("screen", "Screen Viewed"),
        ("identify", None),
        ("group", None),
        ("alias", None),
    ],
)
def test_call_type_names(call: str, name: str | None) -> None:
    # Only a track needs `event`; the others are named by their type, or not at all.
    assert only_event(line(type=call, userId="u", timestamp=TS)).names == [name]
    assert only_event(line(type=call, event="Ignored", userId="u", timestamp=TS)).names == [name]


def test_absent_or_null_type_is_track() -> None:
    assert only_event(line(event="E", userId="u", timestamp=TS)).names == ["E"]
    assert only_event(line(type=None, event="E", userId="u", timestamp=TS)).names == ["E"]


def test_null_typed_fields_count_as_absent() -> None:
    batch = only_event(
        line(
            event="E",
            userId="u",
            timestamp=TS,
            messageId=None,
            properties=None,
            context=None,
            traits=None,
        )
    )
    assert batch.message_ids == [None]


@pytest.mark.parametrize(
    ("ids", "contact"),
    [
        ({"userId": "u-1", "anonymousId": "a-1"}, "u-1"),
        ({"anonymousId": "a-1"}, "a-1"),
        ({"userId": "", "anonymousId": "a-1"}, "a-1"),
        ({"userId": None, "anonymousId": "a-1"}, "a-1"),
        ({"userId": 42}, "42"),
        ({"userId": 0}, "0"),
        ({"userId": -7}, "-7"),
        ({"userId": 42, "anonymousId": "a-1"}, "42"),
        ({"anonymousId": 42}, "42"),
        ({"userId": True, "anonymousId": "a-1"}, "a-1"),  # a bool is not an integer id
        ({"userId": 4.2, "anonymousId": "a-1"}, "a-1"),
        ({"userId": {"id": 1}, "anonymousId": "a-1"}, "a-1"),
    ],
)
def test_contact_key(ids: dict[str, Any], contact: str) -> None:
    assert only_event(line(event="E", timestamp=TS, **ids)).contacts == [contact]


@pytest.mark.parametrize(
    "ids",
    [{}, {"userId": ""}, {"userId": True}, {"userId": False, "anonymousId": ""}, {"anonymousId": 1.5}],
)
def test_no_contact_key(ids: dict[str, Any]) -> None:
    assert reason(line(event="E", timestamp=TS, **ids)) == "missing_contact"


def test_time_sources() -> None:
    # Epoch ms (float floored), ISO with an offset, and the receivedAt fallback for an absent or
    # null timestamp.
    batch, dead = decode(
        line(event="E", userId="u", timestamp=1_795_392_817_882.9),
        line(event="E", userId="u", timestamp="2026-11-23T09:00:00.5-05:00"),
        line(event="E", userId="u", receivedAt=TS),
        line(event="E", userId="u", timestamp=None, receivedAt=T14 + 1),
    )
    assert dead == []
    assert batch.times.tolist() == [1_795_392_817_882, T14 + 500, T14, T14 + 1]


def test_clock_skew_correction() -> None:
    # The client's clock is 10 s ahead: sent at 14:00:10.000 by its clock, received at 14:00:05.500.
    # Event time = receivedAt - (sentAt - timestamp) = 14:00:05.500 - 10 s = 13:59:55.500.
    skewed = {"event": "E", "userId": "u", "timestamp": TS, "sentAt": "2026-11-23T14:00:10.000Z"}
    received = "2026-11-23T14:00:05.500Z"
    batch, dead = decode(
        line(**skewed, receivedAt=received),
        line(**skewed, receivedAt=T14 + 5_500),  # the same with epoch numbers
        line(**skewed),  # no receivedAt: no correction
        line(**{**skewed, "sentAt": "not a time"}, receivedAt=received),  # ignored
        line(**skewed, receivedAt="soon"),  # ignored
        line(**{**skewed, "sentAt": None}, receivedAt=received),  # no sentAt: no correction
    )
    assert dead == []
    assert batch.times.tolist() == [T14 - 4_500, T14 - 4_500, T14, T14, T14, T14]


def test_skew_correction_out_of_range_is_bad_timestamp() -> None:
    raw = line(event="E", userId="u", timestamp=0, sentAt=1_000, receivedAt=500)
    assert reason(raw) == "bad_timestamp"


# --- dead letters --------------------------------------------------------------------------------

VALID = {"event": "E", "userId": "u", "timestamp": TS}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"x" * (MAX_LINE_BYTES + 1), "oversize"),
        (b"this is not json", "not_json"),
        (b'{"userId":"u"', "not_json"),  # truncated
        (b'{"userId":"u"} x', "not_json"),  # trailing garbage
        (b'{"v":NaN}', "not_json"),
        (b'{"v":Infinity}', "not_json"),
        (b'{"v":-Infinity}', "not_json"),
        (b'\xff\xfe{"userId":"u"}', "not_json"),  # not UTF-8
        (b'{"userId":"\xc3("}', "not_json"),  # invalid UTF-8 inside a string
        (b"\xef\xbb\xbf{}", "not_json"),  # a BOM
        (b"[" * 30_000, "not_json"),  # deeper than orjson allows (1024 levels)
        (b"[1,2,3]", "not_object"),
        (b'"just a string"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        (b"true", "not_object"),
        (line(**VALID, type="shout"), "bad_type"),
        (line(**VALID, type="Track"), "bad_type"),
        (line(**VALID, type=""), "bad_type"),
        (line(**VALID, type=1), "wrong_field_type"),
        (line(**VALID, type=["track"]), "wrong_field_type"),
        (line(**{**VALID, "event": 7}), "wrong_field_type"),
        (line(**VALID, messageId=7), "wrong_field_type"),
        (line(**VALID, properties="x"), "wrong_field_type"),
        (line(**VALID, properties=[]), "wrong_field_type"),
        (line(**VALID, context=[1]), "wrong_field_type"),
        (line(**VALID, traits=True), "wrong_field_type"),
        (line(event="E", timestamp=TS), "missing_contact"),
        (line(userId="u", timestamp=TS), "missing_event"),
        (line(userId="u", event="", timestamp=TS), "missing_event"),
        (line(type="track", userId="u", event=None, timestamp=TS), "missing_event"),
        (line(userId="u", event="E", timestamp="yesterday"), "bad_timestamp"),
        (line(userId="u", event="E", timestamp="2026-13-45T25:00:00Z"), "bad_timestamp"),
        (line(userId="u", event="E", timestamp=True), "bad_timestamp"),
        (line(userId="u", event="E", timestamp={"t": 1}), "bad_timestamp"),
        (line(userId="u", event="E", timestamp="1795392817882"), "bad_timestamp"),
        (line(userId="u", event="E", timestamp=-1), "bad_timestamp"),
        (line(userId="u", event="E", timestamp="yesterday", receivedAt=TS), "bad_timestamp"),
        (line(userId="u", event="E"), "missing_timestamp"),
        (line(userId="u", event="E", timestamp=None), "missing_timestamp"),
        (line(userId="u", event="E", receivedAt="soon"), "missing_timestamp"),
        (line(userId="u", event="E", sentAt=TS), "missing_timestamp"),
    ],
)
def test_reason(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{}", "missing_contact"),
        (b'{"type":"shout"}', "bad_type"),  # bad_type before missing_contact
        (b'{"type":"shout","properties":"x"}', "bad_type"),  # before wrong_field_type
        (b'{"type":1,"properties":"x"}', "wrong_field_type"),
        (b'{"properties":"x"}', "wrong_field_type"),  # before missing_contact
        (b'{"event":""}', "missing_contact"),  # before missing_event
        (b'{"userId":"u","timestamp":"bad"}', "missing_event"),  # before bad_timestamp
        (b'{"userId":"u"}', "missing_event"),  # before missing_timestamp
        (b"[" + b" " * MAX_LINE_BYTES + b"]", "oversize"),  # before not_object
        (b"{" + b" " * MAX_LINE_BYTES, "oversize"),  # before not_json
    ],
)
def test_first_failing_check_wins(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


def test_reasons_are_listed_in_check_order() -> None:
    assert REASONS == (
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


def _padded(size: int) -> bytes:
    head = line(**VALID, properties={"blob": ""})
    raw = head.replace(b'"blob":""', b'"blob":"' + b"x" * (size - len(head)) + b'"')
    assert len(raw) == size
    return raw


def test_line_size_limit() -> None:
    batch, dead = decode(_padded(MAX_LINE_BYTES), _padded(MAX_LINE_BYTES + 1))
    assert batch.positions == [0]
    assert [(d.reason, d.position) for d in dead] == [("oversize", 100)]


def test_blank_lines_are_skipped() -> None:
    blanks = [b"", b" ", b"\t", b"  \r", b"\r", b"\x0b\x0c", b" " * (MAX_LINE_BYTES + 10)]
    batch, dead = decode(*blanks, line(**VALID), *blanks)
    assert dead == []
    assert batch.positions == [len(blanks) * 100]


def test_surrounding_whitespace_and_crlf() -> None:
    only_event(b"  " + line(**VALID) + b" \t\r")


def test_dead_letters_keep_order_raw_and_position() -> None:
    lines = [b"nope", line(**VALID), b"[1]", b"", line(event="E")]
    batch, dead = decode_lines(lines, [10, 20, 30, 40, 50])
    assert batch.positions == [20]
    assert [(d.reason, d.raw, d.position) for d in dead] == [
        ("not_json", b"nope", 10),
        ("not_object", b"[1]", 30),
        ("missing_contact", line(event="E"), 50),
    ]


def test_details_name_the_problem() -> None:
    _, dead = decode(
        line(**VALID, properties="x", context=[1]),
        line(**VALID, type="shout"),
        line(userId="u", event="E", timestamp="yesterday"),
        b"x" * (MAX_LINE_BYTES + 1),
    )
    assert dead[0].detail == "field 'properties' must be an object, got string; field 'context' must be an object, got array"
    assert "'shout'" in dead[1].detail and "page" in dead[1].detail
    assert dead[2].detail == "unparseable timestamp 'yesterday'"
    assert str(MAX_LINE_BYTES + 1) in dead[3].detail


def test_deeply_nested_values_in_details() -> None:
    # orjson accepts 1024 levels, the decoder MAX_DEPTH (too_deep, before any detail quotes a value);
    # within the limit, containers in details are named, not shown.
    deep = b"[" * 1000 + b"]" * 1000
    within = b"[" * 240 + b"]" * 240
    _, dead = decode(
        b'{"userId":"u","event":"E","timestamp":' + deep + b"}",
        b'{"userId":"u","event":"E","receivedAt":' + deep + b"}",
        b'{"userId":"u","event":"E","timestamp":' + within + b"}",
        b'{"userId":"u","event":"E","receivedAt":' + within + b"}",
        b'{"userId":"u","event":"E","timestamp":"' + b"9" * 30_000 + b'"}',
    )
    assert [d.reason for d in dead] == ["too_deep", "too_deep", "bad_timestamp", "missing_timestamp", "bad_timestamp"]
    assert all(len(d.detail) < 200 for d in dead)


def test_dead_letter_to_json() -> None:
    text = DeadLetter("not_object", '[1, "é"]'.encode(), 12, "JSON array is not an object")
    assert orjson.loads(text.to_json()) == {
        "reason": "not_object",
        "detail": "JSON array is not an object",
        "position": 12,
        "raw": '[1, "é"]',
    }
    binary = DeadLetter("not_json", b"\xff\xfe{}", 0, "not UTF-8 JSON")
    record = orjson.loads(binary.to_json())
    assert "raw" not in record
    assert base64.b64decode(record["raw_b64"]) == b"\xff\xfe{}"


def test_empty_input() -> None:
    batch, dead = decode_lines([], [])
    assert len(batch) == 0 and dead == [] and batch.times.dtype == np.int64


def test_lines_and_positions_must_pair_up() -> None:
    with pytest.raises(ValueError):
        decode_lines([line(**VALID)], [])


@pytest.mark.skipif(not CASE_013.is_dir(), reason="the shared conformance cases are not checked out")
def test_conformance_case_013_dead_letters() -> None:
    expected = orjson.loads((CASE_013 / "expected.json").read_bytes())
    data = (CASE_013 / "events.jsonl").read_bytes()
    lines, positions, offset = [], [], 0
    for raw in data.split(b"\n"):
        lines.append(raw)
        positions.append(offset)
        offset += len(raw) + 1
    batch, dead = decode_lines(lines, positions)
    assert len(batch) == expected["processed"] + expected["deduplicated"]
    assert len(dead) == expected["dead_letters"]
    assert dict(Counter(d.reason for d in dead)) == expected["dead_letter_reasons"]
    assert batch.message_ids == ["m-1", "m-big2", "m-2", "m-3"]


# --- properties ----------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Per field, values that pass its check (mostly) or anything at all, so that random events get
# through every check sometimes and fail at each of them other times.
_TIMES = [TS, T14, "2026-11-23T09:00:00.1239-05:00", 1_795_392_817_882.9, "2026-02-30T00:00:00Z"]
_PLAUSIBLE: dict[str, list[Any]] = {
    "type": ["track", "page", "screen", "identify", "group", "alias", None],
    "event": ["E", "Product Added", ""],
    "userId": ["u-1", 42, ""],
    "anonymousId": ["a-1", 7],
    "messageId": ["m-1", None],
    "timestamp": _TIMES,
    "sentAt": _TIMES,
    "receivedAt": _TIMES,
    "properties": [{}, {"k": 1}, None],
    "context": [{}, None],
    "traits": [{}, None],
}
event_like = st.fixed_dictionaries(
    {},
    optional={
        key: st.one_of(st.sampled_from(values), st.sampled_from(values), json_values) for key, values in _PLAUSIBLE.items()
    },
)


def _check_invariants(lines: list[bytes]) -> None:
    positions = list(range(len(lines)))
    batch, dead = decode_lines(lines, positions)
    non_blank = [i for i, raw in enumerate(lines) if raw.strip()]
    assert len(batch) + len(dead) == len(non_blank)
    assert sorted(batch.positions + [d.position for d in dead]) == non_blank
    assert len(batch.events) == len(batch.contacts) == len(batch.names) == len(batch.message_ids)
    assert batch.times.shape == (len(batch),) and batch.times.dtype == np.int64
    assert all(d.reason in REASONS for d in dead)
    assert all(contact for contact in batch.contacts)
    assert ((batch.times >= 0) & (batch.times < 253_402_300_800_000)).all()
    for record in dead:
        assert orjson.loads(record.to_json())["reason"] == record.reason


@given(st.lists(st.binary(max_size=60), max_size=20))
def test_random_bytes_never_raise(lines: list[bytes]) -> None:
    _check_invariants(lines)


@given(st.lists(st.one_of(event_like, json_values), max_size=10))
def test_random_json_never_raises(values: list[Any]) -> None:
    _check_invariants([orjson.dumps(value) for value in values])


@given(st.lists(event_like, min_size=1, max_size=10), st.data())
def test_corrupted_json_never_raises(values: list[dict[str, Any]], data: st.DataObject) -> None:
    # Valid-looking lines with one byte flipped or cut: the parser's error paths.
    lines = []
    for value in values:
        raw = bytearray(orjson.dumps(value))
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(min_value=0, max_value=255))
        else:
            del raw[at:]
        lines.append(bytes(raw))
    _check_invariants(lines)
