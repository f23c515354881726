import pytest

from rules import parse_duration
from rules.durations import MAX_DURATION_MS


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("0s", 0),
        ("1ms", 1),
        ("250ms", 250),
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("1h", 3_600_000),
        ("7d", 604_800_000),
        ("30d", 2_592_000_000),
        ("007s", 7_000),
    ],
)
def test_valid_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


HINT = "write an integer and a unit (ms, s, m, h or d), such as '90s', '30m' or '7d'"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("7 days", f"invalid duration '7 days': {HINT}"),
        ("30", f"invalid duration '30': {HINT}"),
        ("", f"invalid duration '': {HINT}"),
        ("5M", f"invalid duration '5M': {HINT}"),
        ("1w", f"invalid duration '1w': {HINT}"),
        (" 5m", f"invalid duration ' 5m': {HINT}"),
        ("1e3s", f"invalid duration '1e3s': {HINT}"),
        ("١s", f"invalid duration '١s': {HINT}"),
        ("1.5h", "invalid duration '1.5h': use a whole number of a smaller unit (e.g. '90m', not '1.5h')"),
        (".5s", "invalid duration '.5s': use a whole number of a smaller unit (e.g. '90m', not '1.5h')"),
        ("-5m", "invalid duration '-5m': durations cannot be negative"),
        (30, f"invalid duration 30: a duration needs a unit; {HINT}"),
        (1.5, f"invalid duration 1.5: a duration needs a unit; {HINT}"),
        (True, f"invalid duration True: {HINT}"),
        (None, f"invalid duration None: {HINT}"),
        (["5m"], f"invalid duration ['5m']: {HINT}"),
    ],
)
def test_invalid_durations(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


def test_maximum_duration() -> None:
    assert MAX_DURATION_MS == 2**53 - 1
    assert parse_duration(f"{MAX_DURATION_MS}ms") == MAX_DURATION_MS
    too_long = f"invalid duration '{MAX_DURATION_MS + 1}ms': longer than the maximum of 9007199254740991ms"
    with pytest.raises(ValueError, match="^" + too_long + "$"):
        parse_duration(f"{MAX_DURATION_MS + 1}ms")
    with pytest.raises(ValueError, match="longer than the maximum"):
        parse_duration("9" * 5000 + "d")
