"""Hostile input for the event decoder (SPEC §2), checked against an independent oracle.

tests/engine/test_decode.py fuzzes with random bytes and random JSON values; here the lines are built
as JSON *text*, so that they carry what no JSON encoder writes: NaN and Infinity, numbers that
overflow a double or 64 bits, lone surrogates, invalid UTF-8, duplicate keys, deep nesting, huge
strings and timestamps far in the past and the future. Every line's fate is compared with
`hostile.expected_outcome`, a plain re-statement of the SPEC checks on top of Python's own json
parser (held to RFC 8259): a differential test of orjson and of the decoder's inline fast paths.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from hostile import (
    HOSTILE_NUMBERS,
    HOSTILE_STRINGS,
    blank_lines,
    event_line,
    expected_outcome,
    fuzz,
    hostile_lines,
    hostile_value,
    nested,
)
from hypothesis import example, given
from hypothesis import strategies as st

from engine.decode import MAX_DEPTH, MAX_LINE_BYTES, REASONS, decode_lines
from engine.times import MAX_TIME_MS

TS = "2026-11-23T14:00:00.000Z"
T14 = 1_795_442_400_000


def _check(lines: list[bytes], **limits: Any) -> tuple[Any, list[Any]]:
    """decode_lines never raises, decides every non-blank line once, and agrees with the oracle."""
    positions = [1000 + 7 * i for i in range(len(lines))]
    batch, dead = decode_lines(lines, positions, **limits)
    non_blank = [positions[i] for i, raw in enumerate(lines) if raw and not raw.isspace()]
    assert sorted(batch.positions + [d.position for d in dead]) == non_blank
    assert len(batch.events) == len(batch.contacts) == len(batch.names) == len(batch.message_ids) == len(batch)
    assert batch.times.dtype == np.int64 and batch.times.shape == (len(batch),)
    by_position = {pos: raw for pos, raw in zip(positions, lines, strict=True)}
    for d in dead:
        assert d.reason in REASONS and d.detail and d.raw == by_position[d.position]
        assert len(d.detail) < 400  # details quote values, never whole containers
        record = orjson.loads(d.to_json())
        raw = record["raw"].encode() if "raw" in record else base64.b64decode(record["raw_b64"])
        assert raw == d.raw and record["reason"] == d.reason and record["position"] == d.position
    if limits:
        return batch, dead
    valid = dict(zip(batch.positions, range(len(batch)), strict=True))
    reasons = {d.position: d.reason for d in dead}
    for pos, raw in by_position.items():
        expected = expected_outcome(raw)
        if expected is None or expected[0] == "unknown":
            continue
        if expected[0] == "dead":
            assert reasons.get(pos) == expected[1], (raw[:300], reasons.get(pos), expected)
            continue
        obj, contact, name, ms = expected[1]
        assert pos in valid, (raw[:300], reasons.get(pos))
        i = valid[pos]
        assert batch.events[i] == obj  # duplicate keys: the last value wins, as in Python's json
        assert (batch.contacts[i], batch.names[i], int(batch.times[i])) == (contact, name, ms)
        assert batch.message_ids[i] == obj.get("messageId")
        assert 0 <= ms < MAX_TIME_MS
    return batch, dead


@fuzz()
@given(st.lists(hostile_lines, max_size=12))
def test_hostile_lines_agree_with_the_oracle(lines: list[bytes]) -> None:
    _check(lines)


@fuzz()
@given(st.lists(event_line(), min_size=1, max_size=8))
def test_event_like_lines_agree_with_the_oracle(lines: list[bytes]) -> None:
    # Mostly objects with the SPEC's fields, so that lines get past the JSON checks and fail (or pass)
    # at every later check.
    batch, dead = _check(lines)
    assert len(batch) + len(dead) == sum(1 for raw in lines if raw and not raw.isspace())


@fuzz()
@given(st.lists(st.one_of(hostile_lines, blank_lines), max_size=12), st.integers(1, MAX_DEPTH),
       st.sampled_from([None, 1, 16, 2048, 8192]))
def test_collector_limits_never_raise(lines: list[bytes], max_depth: int, max_string_bytes: int | None) -> None:
    batch, dead = _check(lines, max_depth=max_depth, max_string_bytes=max_string_bytes)
    unlimited, unlimited_dead = decode_lines(lines, range(len(lines)))
    # The limits only ever turn valid events into too_deep / string_too_long dead letters.
    assert len(batch) <= len(unlimited)
    extra = Counter(d.reason for d in dead) - Counter(d.reason for d in unlimited_dead)
    assert set(extra) <= {"too_deep", "string_too_long"}
    assert len(batch) + len(dead) == len(unlimited) + len(unlimited_dead)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _longest(value: Any) -> int:
    if isinstance(value, dict):
        return max([len(k.encode()) for k in value] + [_longest(v) for v in value.values()], default=0)
    if isinstance(value, list):
        return max(map(_longest, value), default=0)
    return len(value.encode()) if isinstance(value, str) else 0


@fuzz()
@given(st.recursive(st.one_of(st.integers(0, 9), st.text(max_size=40)),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=40), inner, max_size=3),
                    max_leaves=30),
       st.integers(1, 12), st.integers(1, 60))
def test_depth_and_string_limits_are_exact(properties: Any, max_depth: int, max_string_bytes: int) -> None:
    event = {"userId": "u-1", "event": "E", "timestamp": TS, "properties": {"p": properties}}
    batch, dead = decode_lines([orjson.dumps(event)], [0], max_depth=max_depth, max_string_bytes=max_string_bytes)
    if _depth(event) > max_depth:
        assert [d.reason for d in dead] == ["too_deep"]
    elif max(_longest(event), len(TS)) > max_string_bytes:
        assert [d.reason for d in dead] == ["string_too_long"]
    else:
        assert len(batch) == 1 and dead == []


# --- examples the properties must cover, spelled out -----------------------------------------------------


def _one(raw: bytes) -> tuple[str, Any]:
    batch, dead = decode_lines([raw], [0])
    if dead:
        return "dead", dead[0].reason
    return "valid", (batch.contacts[0], batch.names[0], int(batch.times[0]), batch.events[0])


@pytest.mark.parametrize("levels,expected", [
    (MAX_DEPTH - 1, "valid"),  # the event object and MAX_DEPTH - 1 levels in `properties`: exactly MAX_DEPTH
    (MAX_DEPTH, "too_deep"),
    (253, "too_deep"),  # deep enough to crash orjson when a trigger record nested it 2 more levels
    (500, "too_deep"),  # deep enough to crash pickling a recovery snapshot
    (1022, "too_deep"),
    (10_000, "not_json"),  # deeper than orjson parses at all
])
def test_deep_nesting(levels: int, expected: str) -> None:
    raw = b'{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'","properties":' + nested(levels, b"1", "{") + b"}"
    if len(raw) > MAX_LINE_BYTES:
        raw = b'{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'","properties":{"a":' + nested(levels) + b"}}"
    outcome = _one(raw)
    assert outcome[0] == expected or outcome[1] == expected
    if expected == "valid":
        # Everything accepted can be written back inside a trigger record (2 levels deeper).
        orjson.dumps({"record": {"event": outcome[1][3]}})


@pytest.mark.parametrize("raw,expected", [
    (b'{"userId":"u","event":"E","timestamp":1e400}', "not_json"),
    (b'{"userId":"u","event":"E","timestamp":-1e400}', "not_json"),
    (b'{"userId":"u","event":"E","timestamp":NaN}', "not_json"),
    (b'{"userId":"u","event":"E","timestamp":' + str(2**70).encode() + b"}", "bad_timestamp"),  # a double 1.18e21
    (b'{"userId":"u","event":"E","timestamp":1e20}', "bad_timestamp"),
    (b'{"userId":"u","event":"E","timestamp":-1}', "bad_timestamp"),
    (b'{"userId":"u","event":"E","timestamp":-1795442400000}', "bad_timestamp"),
    (b'{"userId":"u","event":"E","timestamp":"0001-01-01T00:00:00Z"}', "bad_timestamp"),
    (b'{"userId":"u","event":"E","timestamp":"10000-01-01T00:00:00Z"}', "bad_timestamp"),
    (b'{"userId":"u","event":"E","timestamp":"9999-12-31T23:59:59-01:00"}', "bad_timestamp"),
    (b'{"userId":' + str(2**70).encode() + b',"event":"E","timestamp":1}', "missing_contact"),  # a double, not an id
    (b'{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'","properties":{"p":1e400}}', "not_json"),
    (b'{"userId":"\\ud800","event":"E","timestamp":1}', "not_json"),
    (b'{"userId":"u","event":"\xff","timestamp":1}', "not_json"),
])
def test_hostile_numbers_strings_and_times(raw: bytes, expected: str) -> None:
    assert _one(raw) == ("dead", expected)


@pytest.mark.parametrize("raw,contact,ms", [
    (b'{"userId":"u","event":"E","timestamp":"9999-12-31T23:59:59.999Z"}', "u", MAX_TIME_MS - 1),
    (b'{"userId":"u","event":"E","timestamp":' + str(MAX_TIME_MS - 1).encode() + b"}", "u", MAX_TIME_MS - 1),
    (b'{"userId":"u","event":"E","timestamp":"1970-01-01T00:00:00Z"}', "u", 0),
    (b'{"userId":"u","event":"E","timestamp":-0.0}', "u", 0),
    (b'{"userId":' + str(2**63).encode() + b',"event":"E","timestamp":1}', str(2**63), 1),  # beyond int64: still an id
    (b'{"userId":"u","event":"E","timestamp":1,"properties":{"big":' + str(2**70).encode() + b"}}", "u", 1),
])
def test_extreme_but_valid(raw: bytes, contact: str, ms: int) -> None:
    kind, (got_contact, _, got_ms, _) = _one(raw)
    assert (kind, got_contact, got_ms) == ("valid", contact, ms)


def test_duplicate_keys_last_value_wins() -> None:
    # The decision (documented in SECURITY.md): orjson keeps the last value of a repeated key, and so does
    # everything after it -- the contact, the time, the name and the properties rules see.
    raw = (b'{"userId":"first","event":"A","timestamp":1,"userId":"last","event":"B","timestamp":"' + TS.encode()
           + b'","properties":{"p":1,"p":2}}')
    kind, (contact, name, ms, event) = _one(raw)
    assert (kind, contact, name, ms, event["properties"]) == ("valid", "last", "B", T14, {"p": 2})
    # A valid value hidden behind an invalid one does not help, nor the reverse.
    assert _one(b'{"userId":"u","event":"E","timestamp":"bad","timestamp":1}')[0] == "valid"
    assert _one(b'{"userId":"u","event":"E","timestamp":1,"timestamp":"bad"}') == ("dead", "bad_timestamp")


@pytest.mark.parametrize("raw", [b"", b" ", b"\t", b"\r", b" \t\r\x0b\x0c "])
def test_blank_and_whitespace_lines_are_not_events(raw: bytes) -> None:
    batch, dead = decode_lines([raw, raw], [0, 1])
    assert len(batch) == 0 and dead == []


@pytest.mark.parametrize("raw", [b"\xc2\xa0", b"\xe2\x80\x83", b"\x00", b"\xef\xbb\xbf"])
def test_unicode_spaces_nul_and_bom_are_not_blank(raw: bytes) -> None:
    assert _one(raw) == ("dead", "not_json")


# --- timestamps far away, against datetime ---------------------------------------------------------------


@fuzz()
@given(year=st.integers(0, 99_999), month=st.integers(0, 13), day=st.integers(0, 32), hour=st.integers(0, 25),
       minute=st.integers(0, 60), second=st.integers(0, 61), fraction=st.text("0123456789", max_size=10),
       zone=st.one_of(st.just("Z"), st.just(""), st.tuples(st.sampled_from("+-"), st.integers(0, 25), st.integers(0, 61))))
@example(year=1, month=1, day=1, hour=0, minute=0, second=0, fraction="", zone="Z")
@example(year=9999, month=12, day=31, hour=23, minute=59, second=59, fraction="999", zone="Z")
@example(year=9999, month=12, day=31, hour=23, minute=30, second=0, fraction="", zone=("-", 1, 0))
@example(year=1970, month=1, day=1, hour=0, minute=30, second=0, fraction="", zone=("+", 1, 0))
def test_iso_timestamps_far_in_the_past_and_future(year: int, month: int, day: int, hour: int, minute: int,
                                                   second: int, fraction: str, zone: Any) -> None:
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if fraction:
        text += "." + fraction
    if isinstance(zone, tuple):
        sign, zh, zm = zone
        text += f"{sign}{zh:02d}:{zm:02d}"
    else:
        text += zone
    expected: int | None
    try:
        if isinstance(zone, tuple) and (zone[1] > 23 or zone[2] > 59):
            raise ValueError("zone")
        local = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
        offset = 0 if not isinstance(zone, tuple) else (1 if zone[0] == "+" else -1) * (zone[1] * 60 + zone[2]) * 60_000
        epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        ms = (local - epoch) // dt.timedelta(milliseconds=1) + int((fraction + "000")[:3]) - offset
        expected = ms if 0 <= ms < MAX_TIME_MS and len(str(year)) == 4 else None
    except (ValueError, OverflowError):
        expected = None
    raw = orjson.dumps({"userId": "u", "event": "E", "timestamp": text})
    outcome = _one(raw)
    if expected is None:
        assert outcome == ("dead", "bad_timestamp"), text
    else:
        assert outcome[0] == "valid" and outcome[1][2] == expected, text


@fuzz()
@given(st.one_of(st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False),
                 st.sampled_from([0, MAX_TIME_MS - 1, MAX_TIME_MS, -1, 10**20, 1e20, -0.0, 0.999])))
def test_epoch_ms_far_in_the_past_and_future(value: int | float) -> None:
    raw = b'{"userId":"u","event":"E","timestamp":' + (orjson.dumps(value) if abs(value) < 2**63 else str(value).encode()) + b"}"
    outcome = _one(raw)
    as_number = float(value) if type(value) is int and not -(2**63) <= value < 2**64 else value
    floor = int(as_number // 1) if isinstance(as_number, float) else as_number
    if 0 <= floor < MAX_TIME_MS:
        assert outcome[0] == "valid" and outcome[1][2] == floor
    else:
        assert outcome == ("dead", "bad_timestamp")


# --- hostile values in every field ---------------------------------------------------------------------------


@fuzz()
@given(st.sampled_from(["type", "event", "userId", "anonymousId", "messageId", "timestamp", "sentAt", "receivedAt",
                        "properties", "context", "traits"]),
       st.one_of(hostile_value(), st.sampled_from(HOSTILE_NUMBERS + HOSTILE_STRINGS)))
def test_a_hostile_value_in_any_field(field: str, value: bytes) -> None:
    base = {"type": "track", "event": "E", "userId": "u", "anonymousId": "a", "messageId": "m", "timestamp": TS,
            "sentAt": TS, "receivedAt": TS, "properties": {}, "context": {}, "traits": {}}
    parts = [orjson.dumps(k) + b":" + (value if k == field else orjson.dumps(v)) for k, v in base.items()]
    _check([b"{" + b",".join(parts) + b"}"])
