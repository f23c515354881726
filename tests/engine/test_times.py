from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import times
from engine.times import MAX_TIME_MS, format_time, parse_time

# 2026-11-23T14:00:00.000Z, by hand: 20780 days from 1970-01-01 to 2026-11-23, plus 14 h.
T14 = 20_780 * 86_400_000 + 14 * 3_600_000
assert T14 == 1_795_442_400_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T14:00:00.123Z", 1_795_442_400_123),
        ("2026-11-23T14:00:00.000Z", T14),
        ("2026-11-23T14:00:00Z", T14),
        ("2026-11-23T14:00:00", T14),  # no zone: UTC
        ("2026-11-23 14:00:00.123Z", T14 + 123),  # space for T
        ("2026-11-23T14:00:00.123", T14 + 123),
        # 19:15:36.156 at UTC-5 is 00:15:36.156 the next day.
        ("2026-11-22T19:15:36.156-05:00", T14 - 14 * 3_600_000 + 15 * 60_000 + 36_156),
        ("2026-11-23T19:30:00+05:30", T14),
        ("2026-11-23T19:30:00.000+0530", T14),
        ("2026-11-23T14:00:00-00:00", T14),
        ("2026-11-23T14:00:00+00:00", T14),
        # Fractions: padded when short, truncated (never rounded) when long.
        ("2026-11-23T14:00:00.1Z", T14 + 100),
        ("2026-11-23T14:00:00.12Z", T14 + 120),
        ("2026-11-23T14:00:00.1239Z", T14 + 123),
        ("2026-11-23T14:00:00.999999999Z", T14 + 999),
        ("2026-11-23T14:00:00.0009Z", T14),
        # Calendar edges.
        ("1970-01-01T00:00:00.000Z", 0),
        ("2000-02-29T00:00:00Z", 951_782_400_000),  # 2000 is a leap year (divisible by 400)
        ("2024-02-29T12:00:00Z", 1_709_208_000_000),
        ("2026-12-31T23:59:59.999Z", 1_798_761_599_999),
        ("9999-12-31T23:59:59.999Z", MAX_TIME_MS - 1),
    ],
)
def test_parse_iso(text: str, expected: int) -> None:
    assert parse_time(text) == expected
    # The second parse of a string takes the cached fast path where it applies: same answer.
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-13-45T25:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-00-10T00:00:00Z",
        "2026-11-00T00:00:00Z",
        "2026-11-31T00:00:00Z",
        "2026-02-29T00:00:00Z",  # 2026 is not a leap year
        "2100-02-29T00:00:00Z",  # divisible by 100, not by 400
        "2026-11-23T24:00:00Z",
        "2026-11-23T23:60:00Z",
        "2026-11-23T23:59:60Z",  # no leap seconds
        "2026-11-23T14:00:00+24:00",
        "2026-11-23T14:00:00+05:60",
        "2026-11-23T14:00:00+5:00",
        "2026-11-23T14:00:00+05",
        "2026-11-23T14:00:00.Z",
        "2026-11-23T14:00Z",
        "2026-11-23",
        "2026-11-23T14:00:00.000ZZ",
        "2026-11-23T14:00:00.000Z ",
        " 2026-11-23T14:00:00.000Z",
        "2026-11-23t14:00:00.000Z",
        "26-11-23T14:00:00Z",
        "+2026-11-23T14:00:00Z",
        "２０２６-11-23T14:00:00Z",  # full-width digits are Unicode digits, not ISO digits
        "2026-11-23T14:00:00.12３Z",
        "1795392817882",  # numeric strings are neither epoch numbers nor ISO
        "1795392817882.5",
        "yesterday",
        "11/23/2026",
        "",
        "1969-12-31T23:59:59.999Z",  # before the epoch
        "1970-01-01T00:00:00+00:01",  # 1969 in UTC
        "9999-12-31T23:59:59.999-00:01",  # year 10000 in UTC
    ],
)
def test_parse_iso_rejects(text: str) -> None:
    assert parse_time(text) is None
    assert parse_time(text) is None  # invalid results are cached as invalid, not as something else


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1_795_392_817_882, 1_795_392_817_882),
        (1_795_392_817_882.9, 1_795_392_817_882),  # floored
        (1_795_392_817_882.0, 1_795_392_817_882),
        (0.5, 0),
        (MAX_TIME_MS - 1, MAX_TIME_MS - 1),
        (-1, None),
        (-0.5, None),  # floors to -1
        (MAX_TIME_MS, None),
        (float(MAX_TIME_MS), None),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        (True, None),  # a JSON boolean is not a number
        (False, None),
        (None, None),
        ([1_795_392_817_882], None),
        ({"t": 1}, None),
    ],
)
def test_parse_numbers_and_other_types(value: object, expected: int | None) -> None:
    assert parse_time(value) == expected


def test_caches_stay_correct_when_cleared() -> None:
    # More distinct minutes and zones than the cache holds: the clearing must not change results.
    base = T14
    for i in range(times._CACHE_LIMIT + 50):
        ms = base + i * 60_000 + 7
        assert parse_time(format_time(ms)) == ms
        zone_minutes = i % (24 * 60)
        local = format_time(ms + zone_minutes * 60_000)[:-1]
        assert parse_time(f"{local}+{zone_minutes // 60:02d}:{zone_minutes % 60:02d}") == ms
    assert len(times._minute_cache) <= times._CACHE_LIMIT
    assert len(times._zone_cache) <= times._CACHE_LIMIT


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (1_795_442_400_123, "2026-11-23T14:00:00.123Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (951_782_400_000, "2000-02-29T00:00:00.000Z"),
        (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
        (MAX_TIME_MS - 1, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_format_time(ms: int, text: str) -> None:
    assert format_time(ms) == text


def _utc(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=ms)


valid_ms = st.integers(min_value=0, max_value=MAX_TIME_MS - 1)


@given(valid_ms)
def test_format_matches_datetime_and_round_trips(ms: int) -> None:
    text = format_time(ms)
    assert text == _utc(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    assert parse_time(text) == ms


@given(
    # A day short of the end, so that no offset pushes the local time past datetime's year 9999.
    st.integers(min_value=0, max_value=MAX_TIME_MS - 86_400_001),
    st.integers(min_value=0, max_value=999),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.integers(min_value=0, max_value=9),
    st.sampled_from(["T", " "]),
    st.booleans(),
)
def test_parse_matches_datetime(ms: int, micro_extra: int, offset_minutes: int, digits: int, sep: str, colon: bool) -> None:
    # Write an instant in some zone, with `digits` fraction digits, and compare with datetime.
    instant = _utc(ms) + dt.timedelta(microseconds=micro_extra)
    local = instant + dt.timedelta(minutes=offset_minutes)
    sign = "-" if offset_minutes < 0 else "+"
    hh, mm = divmod(abs(offset_minutes), 60)
    zone = f"{sign}{hh:02d}{':' if colon else ''}{mm:02d}"
    fraction = f"{local.microsecond:06d}000"[:digits]
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + (f".{fraction}" if digits else "") + zone
    # Truncation: only the fraction digits actually written count.
    written_ms = int((fraction + "000")[:3]) if digits else 0
    expected = ms - ms % 1000 + written_ms
    assert parse_time(text) == expected
