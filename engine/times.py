"""Event time: parsing input timestamps to integer epoch milliseconds and formatting them back.

All times in the engine are integer milliseconds since the Unix epoch (UTC). Valid times lie in
``[0, MAX_TIME_MS)``: from 1970-01-01 up to the end of year 9999, the range a four-digit ISO year
can express.

`parse_time` runs for every event (up to three times with clock-skew correction), so it avoids
`datetime`: a dict-lookup fast path for the canonical form, else one precompiled regex, integer
arithmetic, and small caches for the parts that repeat from event to event (the minute and the
zone offset). It must also behave the same on Python 3.10, whose `datetime.fromisoformat`
rejects ``Z`` and fractions longer than 6 digits.
"""

from __future__ import annotations

import math
import re
from typing import Final

import numpy as np

from engine.compiled import kernel

__all__ = ["MAX_TIME_MS", "format_time", "parse_time"]

MS_PER_DAY: Final = 86_400_000
# 10000-01-01T00:00:00Z: the first instant a four-digit year cannot write.
MAX_TIME_MS: Final = 253_402_300_800_000

# Groups: the minute with the colon that ends it ("YYYY-MM-DDTHH:MM:", the key of the minute cache),
# the second, the first three fraction digits (the rest are matched and dropped: truncation, not
# rounding), the zone. re.ASCII because `\d` alone would accept any Unicode decimal digit, and `int`
# would happily convert them.
_ISO: Final = re.compile(
    r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:)(\d\d)(?:\.(\d{1,3})\d*)?(Z|[+-]\d\d:?\d\d)?",
    re.ASCII,
)
_ISO_MATCH: Final = _ISO.fullmatch

_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Milliseconds per unit of a 1-, 2- or 3-digit fraction.
_FRACTION_SCALE: Final = (0, 100, 10, 1)
# For the fast path, tables that validate and convert in one dict access: only valid keys exist.
# Characters 17-19 and 20-23 of "YYYY-MM-DDTHH:MM:SS.mmmZ".
_SECOND_DOT_MS: Final = {f"{second:02d}.": second * 1000 for second in range(60)}
_MILLIS_Z: Final = {f"{millis:03d}Z": millis for millis in range(1000)}

# Consecutive events mostly share their minute and zone, so the parsed values of both are cached:
# a dict hit replaces five int conversions and the calendar arithmetic. The caches are bounded by
# clearing, which is cheap and rare. `None` caches "invalid", so bad input costs no more than good.
_CACHE_LIMIT: Final = 4096
_minute_cache: dict[str, int | None] = {}
_zone_cache: dict[str | None, int | None] = {}


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's days_from_civil: days since 1970-01-01 in the proleptic Gregorian calendar,
    # exact for every year without branching on leap years.
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _minute_ms(minute: str) -> int | None:
    """Epoch ms of a ``YYYY-MM-DDTHH:MM:`` string whose digits the regex checked, None if invalid."""
    year, month, day = int(minute[0:4]), int(minute[5:7]), int(minute[8:10])
    hours, minutes = int(minute[11:13]), int(minute[14:16])
    if not 1 <= month <= 12 or day < 1 or hours > 23 or minutes > 59:
        return None
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if day > _DAYS_IN_MONTH[month] + leap:
        return None
    return _days_from_civil(year, month, day) * MS_PER_DAY + (hours * 60 + minutes) * 60_000


def _zone_ms(zone: str | None) -> int | None:
    """Offset to subtract from local time to get UTC: ``Z`` or no zone is 0, else ``±HH[:]MM``."""
    if zone is None or zone == "Z":
        return 0
    hours, minutes = int(zone[1:3]), int(zone[-2:])
    if hours > 23 or minutes > 59:
        return None
    offset = (hours * 60 + minutes) * 60_000
    return -offset if zone[0] == "-" else offset


def _parse_iso(value: str) -> int | None:
    m = _ISO_MATCH(value)
    if m is None:
        return None
    minute, second, frac, zone = m.groups()
    # -1 means "not cached": no minute or offset is -1 ms, both are whole minutes.
    base = _minute_cache.get(minute, -1)
    if base == -1:
        if len(_minute_cache) >= _CACHE_LIMIT:
            _minute_cache.clear()
        base = _minute_cache[minute] = _minute_ms(minute)
    offset = _zone_cache.get(zone, -1)
    if offset == -1:
        if len(_zone_cache) >= _CACHE_LIMIT:
            _zone_cache.clear()
        offset = _zone_cache[zone] = _zone_ms(zone)
    if base is None or offset is None or second > "59":
        return None
    ms = base + int(second) * 1000 - offset
    if frac is not None:
        ms += int(frac) * _FRACTION_SCALE[len(frac)]
    return ms if 0 <= ms < MAX_TIME_MS else None


def parse_time(value: object) -> int | None:
    """Epoch milliseconds for a JSON timestamp value, or None when it is not a valid time.

    Accepted: a JSON number of epoch milliseconds (an int, or a finite float that is floored;
    never a bool), or an ISO-8601 string ``YYYY-MM-DD(T| )HH:MM:SS[.fraction][Z|±HH:MM|±HHMM]``.
    A string without a zone is UTC; fraction digits below the millisecond are truncated, not
    rounded. The result must lie in ``[0, MAX_TIME_MS)``.

    >>> parse_time("2026-11-23T14:00:00.123Z")
    1795442400123
    >>> parse_time("2026-11-23 09:00:00.1239-05:00")
    1795442400123
    >>> parse_time(1795442400123.9)
    1795442400123
    >>> parse_time("1795442400123") is None  # a numeric string is neither a number nor ISO
    True
    """
    if type(value) is str:
        # Fast path for the "YYYY-MM-DDTHH:MM:SS.mmmZ" that most SDKs send: three slices looked
        # up instead of the regex. The minute cache only holds prefixes the regex path has checked
        # and the tables only valid keys, so three hits cover every character of a valid time
        # (including its length, 24); anything else, or a minute not cached yet, takes the regex.
        base = _minute_cache.get(value[:17])
        second_ms = _SECOND_DOT_MS.get(value[17:20])
        millis = _MILLIS_Z.get(value[20:])
        if base is not None and second_ms is not None and millis is not None:
            ms = base + second_ms + millis
            # A 4-digit year with Z cannot pass MAX_TIME_MS; it can precede 1970.
            return ms if ms >= 0 else None
        return _parse_iso(value)
    if type(value) is int:
        return value if 0 <= value < MAX_TIME_MS else None
    if type(value) is float and math.isfinite(value):
        ms = math.floor(value)
        return ms if 0 <= ms < MAX_TIME_MS else None
    return None


_day_prefix_cache: dict[int, str] = {}


def format_time(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC, always three fraction digits) for epoch milliseconds.

    Defined for ``0 <= ms < MAX_TIME_MS``, the range `parse_time` produces.

    >>> format_time(1795442400123)
    '2026-11-23T14:00:00.123Z'
    """
    days, rest = divmod(ms, MS_PER_DAY)
    prefix = _day_prefix_cache.get(days)
    if prefix is None:
        if len(_day_prefix_cache) >= _CACHE_LIMIT:
            _day_prefix_cache.clear()
        prefix = _day_prefix_cache[days] = _civil_prefix(days)
    seconds, millis = divmod(rest, 1000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return f"{prefix}{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"


def _civil_prefix(days: int) -> str:
    # Hinnant's civil_from_days, the inverse of _days_from_civil.
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    return f"{year:04d}-{month:02d}-{day:02d}T"


# -- compiled forms, for the batch decoder (engine/decode.py) ----------------------------------------------
# The same grammar and arithmetic as `parse_time` and `format_time`, over UTF-8 bytes in a buffer;
# tests/engine/test_times.py checks them against the functions above.

_DAYS_IN_MONTH_ARRAY = np.array(_DAYS_IN_MONTH, np.int64)


@kernel(inline=True)
def _digits(b, i, n):  # type: ignore[no-untyped-def]
    """The value of the n ASCII digits at b[i:], or -1."""
    v = 0
    for j in range(i, i + n):
        c = b[j]
        if c < 48 or c > 57:
            return -1
        v = v * 10 + (c - 48)
    return v


@kernel
def _days_from_civil_nb(year, month, day):  # type: ignore[no-untyped-def]
    if month <= 2:
        year -= 1
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


@kernel
def parse_iso_bytes(b, s, e):  # type: ignore[no-untyped-def]
    """`parse_time` of the ISO string b[s:e] (its content, without quotes or escapes): (True, ms) or (False, 0)."""
    n = e - s
    if n < 19:
        return False, 0
    year = _digits(b, s, 4)
    month = _digits(b, s + 5, 2)
    day = _digits(b, s + 8, 2)
    hours = _digits(b, s + 11, 2)
    minutes = _digits(b, s + 14, 2)
    second = _digits(b, s + 17, 2)
    sep = b[s + 10]
    if (year < 0 or month < 0 or day < 0 or hours < 0 or minutes < 0 or second < 0 or b[s + 4] != 45
            or b[s + 7] != 45 or (sep != 84 and sep != 32) or b[s + 13] != 58 or b[s + 16] != 58):
        return False, 0
    i = s + 19
    millis = 0
    if i < e and b[i] == 46:  # a fraction: 1 to 3 digits count, more are dropped (truncation)
        i += 1
        start = i
        while i < e and 48 <= b[i] <= 57:
            if i - start < 3:
                millis = millis * 10 + (b[i] - 48)
            i += 1
        count = i - start
        if count == 0:
            return False, 0
        if count == 1:
            millis *= 100
        elif count == 2:
            millis *= 10
    offset = 0
    if i < e:
        c = b[i]
        if c == 90:  # Z
            i += 1
        elif c == 43 or c == 45:
            rest = e - i - 1
            if rest == 5 and b[i + 3] == 58:
                zh = _digits(b, i + 1, 2)
                zm = _digits(b, i + 4, 2)
            elif rest == 4:
                zh = _digits(b, i + 1, 2)
                zm = _digits(b, i + 3, 2)
            else:
                return False, 0
            if zh < 0 or zm < 0 or zh > 23 or zm > 59:
                return False, 0
            offset = (zh * 60 + zm) * 60_000
            if c == 45:
                offset = -offset
            i = e
        else:
            return False, 0
    if i != e:
        return False, 0
    if month < 1 or month > 12 or day < 1 or hours > 23 or minutes > 59 or second > 59:
        return False, 0
    leap = 1 if month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 0
    if day > _DAYS_IN_MONTH_ARRAY[month] + leap:
        return False, 0
    ms = (_days_from_civil_nb(year, month, day) * MS_PER_DAY + (hours * 60 + minutes) * 60_000 + second * 1000
          + millis - offset)
    if ms < 0 or ms >= MAX_TIME_MS:
        return False, 0
    return True, ms


@kernel
def parse_int_bytes(b, s, e):  # type: ignore[no-untyped-def]
    """`parse_time` of an integer literal b[s:e] of at most 18 digits: (True, ms) or (False, 0)."""
    negative = b[s] == 45
    i = s + 1 if negative else s
    v = 0
    while i < e:
        v = v * 10 + (b[i] - 48)
        i += 1
    if negative:
        v = -v
    if v < 0 or v >= MAX_TIME_MS:
        return False, 0
    return True, v


def format_times(times_ms: np.ndarray) -> bytes:
    """`format_time` of every time, end to end (24 bytes each)."""
    out = np.empty(24 * len(times_ms), np.uint8)
    _format_all(times_ms, out)
    return out.tobytes()


@kernel
def _format_all(times_ms, out):  # type: ignore[no-untyped-def]
    pos = 0
    for i in range(len(times_ms)):
        pos = format_iso_bytes(times_ms[i], out, pos)


@kernel
def format_iso_bytes(ms, out, pos):  # type: ignore[no-untyped-def]
    """Write `format_time(ms)` (24 bytes) at out[pos:]; returns pos + 24."""
    days = ms // MS_PER_DAY
    rest = ms - days * MS_PER_DAY
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    seconds = rest // 1000
    millis = rest - seconds * 1000
    minutes = seconds // 60
    second = seconds - minutes * 60
    hour = minutes // 60
    minute = minutes - hour * 60
    for k, v, w in ((0, year, 4), (5, month, 2), (8, day, 2), (11, hour, 2), (14, minute, 2), (17, second, 2),
                    (20, millis, 3)):
        for j in range(w - 1, -1, -1):
            out[pos + k + j] = 48 + v % 10
            v //= 10
    out[pos + 4] = 45
    out[pos + 7] = 45
    out[pos + 10] = 84
    out[pos + 13] = 58
    out[pos + 16] = 58
    out[pos + 19] = 46
    out[pos + 23] = 90
    return pos + 24
