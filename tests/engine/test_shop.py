"""The synthetic shop: determinism, Segment-shaped events, ordering bounds, funnel and duplicates."""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from engine.shop import Shop, ShopConfig, _iso_formatter, _Stream

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TYPES = {"track", "page", "identify"}
CHANNELS = {"web", "app", "email", "api"}
N = 20_000


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_ms(iso: str) -> int:
    parsed = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return (parsed - EPOCH) // timedelta(milliseconds=1)


def contact(event: dict[str, Any]) -> str:
    return event.get("userId") or event["anonymousId"]


@pytest.fixture(scope="module")
def default_events() -> list[dict[str, Any]]:
    return Shop(ShopConfig()).take(N)


# -- determinism ------------------------------------------------------------------------------------


def test_same_config_gives_identical_lines() -> None:
    config = ShopConfig(seed=11, disorder_ms=3_000, duplicate_rate=0.05)
    first = Shop(config).lines(5_000)
    assert first == Shop(ShopConfig(seed=11, disorder_ms=3_000, duplicate_rate=0.05)).lines(5_000)
    # Each events() call replays the stream from the start rather than continuing it.
    shop = Shop(config)
    assert shop.lines(5_000) == first
    assert shop.lines(5_000) == first


def test_different_seed_gives_different_lines() -> None:
    a = Shop(ShopConfig(seed=1)).lines(2_000)
    b = Shop(ShopConfig(seed=2)).lines(2_000)
    assert a != b
    assert len(set(a) & set(b)) == 0  # message ids carry the seed, so not a single line is shared


def test_lines_are_orjson_of_take() -> None:
    config = ShopConfig(seed=3, disorder_ms=1_000, duplicate_rate=0.1)
    lines = Shop(config).lines(3_000)
    assert lines == [orjson.dumps(event) for event in Shop(config).take(3_000)]
    assert all(b"\n" not in line for line in lines)
    assert all(isinstance(line, bytes) for line in lines)


def test_take_is_a_prefix_of_the_endless_stream() -> None:
    shop = Shop(ShopConfig(seed=5))
    assert shop.take(100) == shop.take(1_000)[:100]
    assert shop.take(0) == []


# -- event shape ------------------------------------------------------------------------------------


def test_every_event_is_a_valid_segment_object(default_events: list[dict[str, Any]]) -> None:
    for event in default_events:
        assert event["type"] in TYPES
        assert isinstance(event["messageId"], str) and event["messageId"]
        assert ISO.match(event["timestamp"]), event["timestamp"]
        assert event["context"]["channel"] in CHANNELS
        user_id, anonymous_id = event.get("userId"), event.get("anonymousId")
        assert user_id or anonymous_id
        if user_id is not None:
            assert re.fullmatch(r"u-[1-9]\d*", user_id)
        if anonymous_id is not None:
            assert re.fullmatch(r"anon-[1-9]\d*", anonymous_id)
        if user_id is not None and anonymous_id is not None:
            assert user_id[2:] == anonymous_id[5:]  # the same person, logged in
        if event["type"] == "track":
            assert isinstance(event["event"], str) and event["event"]
            assert isinstance(event["properties"], dict)
        elif event["type"] == "page":
            props = event["properties"]
            assert isinstance(event["name"], str) and event["name"]
            assert props["path"].startswith("/")
            assert props["url"] == "https://shop.example" + props["path"]
            assert props["title"] == event["name"]
        else:
            assert "event" not in event
            assert event["traits"]["email"].endswith("@mail.example")
        # Survives a JSON round trip unchanged: no NaN, tuples, or other non-JSON values.
        assert orjson.loads(orjson.dumps(event)) == event


def test_message_ids_are_sequential_and_carry_the_seed() -> None:
    events = Shop(ShopConfig(seed=0xBEEF)).take(1_000)
    assert [e["messageId"] for e in events] == [f"beef-{i:09d}" for i in range(1_000)]


def test_event_vocabulary(default_events: list[dict[str, Any]]) -> None:
    names = Counter(e.get("event", e["type"]) for e in default_events)
    assert set(names) == {
        "page",
        "identify",
        "Product Viewed",
        "Product Added",
        "Checkout Started",
        "Order Completed",
        "Email Opened",
        "Email Clicked",
        "Unsubscribed",
        "Form Submitted",
    }
    paths = Counter(e["properties"]["path"].split("/")[1] for e in default_events if e["type"] == "page")
    for section in ("", "pricing", "category", "products", "checkout"):
        assert paths[section] > 0, section
    assert {e["context"]["channel"] for e in default_events} == CHANNELS
    assert all(
        isinstance(e["properties"]["form_id"], str)
        for e in default_events
        if e.get("event") == "Form Submitted"
    )
    for e in default_events:
        if e.get("event", "").startswith("Email") or e.get("event") == "Unsubscribed":
            assert e["context"]["channel"] == "email"
            assert e["properties"]["campaign"]
        if e.get("event") in ("Product Viewed", "Product Added"):
            props = e["properties"]
            assert re.fullmatch(r"p-\d+", props["product_id"])
            assert props["category"] and props["price"] > 0


def test_first_event_is_at_start_ms() -> None:
    assert Shop(ShopConfig()).take(1)[0]["timestamp"] == "2026-11-23T14:00:00.000Z"
    start = 1_800_000_000_123
    assert to_ms(Shop(ShopConfig(start_ms=start)).take(1)[0]["timestamp"]) == start


def test_iso_formatter_matches_datetime() -> None:
    iso = _iso_formatter()
    rng = random.Random(1)
    samples = [0, 999, 1000, 86_399_999, 86_400_000, 951_782_400_000, 1_795_442_399_999, 4_102_444_800_000]
    samples += [rng.randrange(0, 4_102_444_800_000) for _ in range(5_000)]
    samples += [1_795_442_400_000 + rng.randrange(-10_000, 10_000) for _ in range(5_000)]  # cache hits
    for ms in samples:
        expected = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        assert iso(ms) == f"{expected}.{ms % 1000:03d}Z"
        assert to_ms(iso(ms)) == ms


def test_contacts_come_from_the_pool_with_a_skew() -> None:
    events = Shop(ShopConfig(contacts=50)).take(N)
    people = Counter(int(contact(e).rsplit("-", 1)[1]) for e in events)
    assert set(people) <= set(range(1, 51))
    counts = sorted(people.values(), reverse=True)
    assert counts[0] > 5 * counts[len(counts) // 2]  # a few returning shoppers dominate


# -- ordering ---------------------------------------------------------------------------------------


def test_timestamps_non_decreasing_without_disorder(default_events: list[dict[str, Any]]) -> None:
    times = [to_ms(e["timestamp"]) for e in default_events]
    assert times == sorted(times)
    span_minutes = (times[-1] - times[0]) / 60_000
    # 30 sessions a minute of a few to 30 events each: tens of minutes for 20k events.
    assert 20 < span_minutes < 300


@pytest.mark.parametrize("disorder_ms", [100, 5_000, 60_000])
def test_disorder_is_bounded(disorder_ms: int) -> None:
    events = Shop(ShopConfig(seed=9, disorder_ms=disorder_ms, duplicate_rate=0.05)).take(N)
    high: float = -math.inf
    worst: float = 0
    for event in events:
        t = to_ms(event["timestamp"])
        assert t >= high - disorder_ms, event
        worst = max(worst, high - t)
        high = max(high, t)
    # The bound is used, not merely respected.
    assert worst > disorder_ms * 0.8


# -- sessions and funnel ----------------------------------------------------------------------------


def test_web_sessions_have_3_to_30_events_in_time_order() -> None:
    stream = _Stream(ShopConfig(seed=4))
    lengths = []
    for k in range(3_000):
        times: list[int] = []
        events: list[dict[str, Any]] = []
        stream.web_session(1_000_000 + k, k % 97 + 1, k % 2 == 0, None, None, times, events)
        assert len(times) == len(events)
        assert times == sorted(times) and times[0] == 1_000_000 + k
        assert events[0]["type"] == "page"
        assert len({contact(e) for e in events}) == 1
        lengths.append(len(events))
    assert min(lengths) == 3
    assert max(lengths) <= 30
    assert max(lengths) >= 25


@pytest.mark.parametrize("checkout_rate", [0.35, 0.7])
def test_funnel_converts_about_checkout_rate_of_carts(checkout_rate: float) -> None:
    carts: dict[str, int] = {}  # cart_id -> time of its first Product Added
    checkouts: set[str] = set()
    orders: dict[str, dict[str, Any]] = {}
    resolved = converted = 0
    for seed in range(1, 6):
        events = Shop(ShopConfig(seed=seed, checkout_rate=checkout_rate)).take(N)
        carts.clear()
        checkouts.clear()
        orders.clear()
        for e in events:
            name = e.get("event")
            if name == "Product Added":
                carts.setdefault(e["properties"]["cart_id"], to_ms(e["timestamp"]))
            elif name == "Checkout Started":
                cart_id = e["properties"]["cart_id"]
                assert cart_id in carts
                checkouts.add(cart_id)
            elif name == "Order Completed":
                props = e["properties"]
                assert props["cart_id"] in checkouts  # every order went through checkout
                assert props["currency"] == "USD"
                assert props["revenue"] == round(
                    sum(p["price"] * p["quantity"] for p in props["products"]), 2
                )
                assert props["cart_id"] not in orders
                orders[props["cart_id"]] = props
        assert orders and set(orders) < set(checkouts) < set(carts)  # some abandon at each step
        # Carts added near the end of the slice may still convert after it: count only carts that had
        # 45 minutes to do so (converting carts reach their order within ~20 minutes).
        end = to_ms(events[-1]["timestamp"])
        settled = [c for c, t in carts.items() if t <= end - 45 * 60_000]
        resolved += len(settled)
        converted += sum(c in orders for c in settled)
    ratio = converted / resolved
    sd = math.sqrt(checkout_rate * (1 - checkout_rate) / resolved)
    assert resolved > 400
    assert abs(ratio - checkout_rate) < 4 * sd, (ratio, resolved)


def test_email_goes_only_to_returning_known_contacts(default_events: list[dict[str, Any]]) -> None:
    seen_known: set[str] = set()
    unsubscribed: set[str] = set()
    opened = 0
    for e in default_events:
        name = e.get("event")
        if name == "Email Opened":
            opened += 1
            assert e["userId"] in seen_known
            assert e["userId"] not in unsubscribed
            assert "anonymousId" not in e
        elif name == "Unsubscribed":
            unsubscribed.add(e["userId"])
        elif "userId" in e:
            seen_known.add(e["userId"])
    assert opened > 50


def test_known_user_rate_controls_user_ids() -> None:
    anonymous = Shop(ShopConfig(known_user_rate=0.0)).take(5_000)
    assert all("userId" not in e for e in anonymous)
    known = Shop(ShopConfig(known_user_rate=1.0)).take(5_000)
    assert all("userId" in e for e in known)


# -- duplicates -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "disorder_ms"), [(0.02, 0), (0.1, 2_000)])
def test_duplicates_resend_identical_events_at_about_the_rate(rate: float, disorder_ms: int) -> None:
    lines = Shop(ShopConfig(seed=21, duplicate_rate=rate, disorder_ms=disorder_ms)).lines(N)
    by_id: defaultdict[str, list[bytes]] = defaultdict(list)
    for line in lines:
        by_id[orjson.loads(line)["messageId"]].append(line)
    unique = len(by_id)
    duplicates = len(lines) - unique
    assert all(len(copies) <= 2 and len(set(copies)) == 1 for copies in by_id.values())  # byte-identical
    sd = math.sqrt(rate * (1 - rate) * unique)
    assert abs(duplicates - rate * unique) < 4 * sd, (duplicates, unique)


def test_no_duplicates_by_default(default_events: list[dict[str, Any]]) -> None:
    assert len({e["messageId"] for e in default_events}) == len(default_events)


def test_duplicates_are_independent_copies() -> None:
    stream = Shop(ShopConfig(duplicate_rate=1.0)).events()
    original = next(stream)
    pristine = dict(original)
    original["receivedAt"] = "x"  # a consumer stamping the original must not change its retry
    retry = next(stream)
    assert retry == pristine and retry is not original


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"contacts": 0},
        {"seed": -1},
        {"sessions_per_minute": 0.0},
        {"checkout_rate": 1.5},
        {"known_user_rate": -0.1},
        {"duplicate_rate": 2.0},
        {"disorder_ms": -1},
        {"zipf_a": -1.0},
    ],
)
def test_config_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ShopConfig(**kwargs)


def test_high_session_rate_still_progresses() -> None:
    events = Shop(ShopConfig(sessions_per_minute=6_000_000.0)).take(2_000)
    times = [to_ms(e["timestamp"]) for e in events]
    assert times == sorted(times)
    assert times[-1] - times[0] < 60_000
