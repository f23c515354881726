"""Rule durations: `<integer><unit>` with unit ms, s, m, h or d, as integer milliseconds."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
# ASCII digits only: `\d` would also accept other scripts' digits.
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_FRACTION = re.compile(r"[0-9]*\.[0-9]+(ms|s|m|h|d)")
# Deadlines are computed in floats too (`last + half_life * log2(S/T)`); above 2**53 ms
# (about 285,000 years) they would silently lose precision.
MAX_DURATION_MS = 2**53 - 1
_HINT = "write an integer and a unit (ms, s, m, h or d), such as '90s', '30m' or '7d'"


def parse_duration(text: object) -> int:
    """Milliseconds in `text`, such as `'90s'` -> 90000.

    >>> parse_duration("30m")
    1800000
    >>> parse_duration("0s")
    0

    Raises ValueError naming the bad value and the expected form for anything else:
    numbers without a unit (also bools), fractions, negative values, unknown units,
    or more than MAX_DURATION_MS.
    """
    if not isinstance(text, str):
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            raise ValueError(f"invalid duration {text!r}: a duration needs a unit; {_HINT}")
        raise ValueError(f"invalid duration {text!r}: {_HINT}")
    match = _DURATION.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise ValueError(f"invalid duration {text!r}: durations cannot be negative")
        if _FRACTION.fullmatch(text):
            raise ValueError(
                f"invalid duration {text!r}: use a whole number of a smaller unit (e.g. '90m', not '1.5h')"
            )
        raise ValueError(f"invalid duration {text!r}: {_HINT}")
    digits, unit = match.groups()
    # Checked on the digit count first: int() of thousands of digits is slow and refused.
    if len(digits) > 20 or int(digits) * _UNIT_MS[unit] > MAX_DURATION_MS:
        raise ValueError(f"invalid duration {text!r}: longer than the maximum of {MAX_DURATION_MS}ms")
    return int(digits) * _UNIT_MS[unit]
