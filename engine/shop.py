"""A deterministic synthetic shop: Segment-style behavioral events for the demo and the benchmarks.

Shoppers from a Zipf-skewed contact pool start sessions as a Poisson process. A web session lands on a
page, browses categories, products and pricing pages, sometimes fills a cart and then either orders
(a ``checkout_rate`` fraction of carts) or abandons, with or without starting checkout. Contacts who have
been seen logged in receive campaign emails they open, click through (into a web session), or
unsubscribe from. Sessions overlap in time; a heap of each session's next event time interleaves them so
the stream comes out in time order, the way a collector would see live traffic.

Everything derives from ``ShopConfig.seed``: two shops with equal configs produce identical streams, and
every call to :meth:`Shop.events` starts the same stream again from the beginning.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import accumulate, islice
from statistics import NormalDist
from typing import Any

import orjson

__all__ = ["Event", "Shop", "ShopConfig"]

Event = dict[str, Any]

_BASE_URL = "https://shop.example"
_CATEGORIES = ("shoes", "shirts", "hats", "bags", "electronics", "home", "beauty", "toys")
# Price bands per category so that price-based rules (big spender, high-value cart) see a realistic mix.
_PRICE_BANDS = {
    "shoes": (39.0, 189.0),
    "shirts": (12.0, 79.0),
    "hats": (9.0, 49.0),
    "bags": (25.0, 249.0),
    "electronics": (19.0, 899.0),
    "home": (8.0, 299.0),
    "beauty": (5.0, 89.0),
    "toys": (7.0, 129.0),
}
_PRODUCTS = 240
_PRICING_PAGES = (("/pricing", "Pricing"), ("/pricing/plus", "Pricing"), ("/pricing/compare", "Pricing"))
_OTHER_PAGES = (
    ("/", "Home"),
    ("/search", "Search"),
    ("/help/shipping", "Help"),
    ("/help/returns", "Help"),
    ("/account", "Account"),
    ("/about", "About"),
)
_CAMPAIGNS = ("black-friday-early", "black-friday", "cyber-monday", "restock", "weekly-digest")
_FORMS = ("newsletter", "back-in-stock", "contact", "b2b-quote")
_FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Margaret", "Linus", "Frances", "Dennis")
_COUNTRIES = ("US", "US", "US", "CA", "GB", "DE", "FR", "AU")

# Session shape. Web sessions are 3-30 events: the browse loop stops at a drawn target of at most
# _MAX_TARGET events, and one browse step adds at most 3 events (page, view, add) and the ending at
# most 3 more (checkout page, Checkout Started, Order Completed) -- 24 + 3 + 3 = 30.
_MIN_TARGET = 3
_MAX_TARGET = 24
_MEAN_EXTRA_TARGET = 6.0
_EMAIL_SHARE = 0.2  # fraction of session starts that are campaign email interactions
_APP_SHARE = 0.3  # web sessions from the mobile app rather than the browser
_LOGIN_IDENTIFY = 0.3  # known sessions that start with an identify (login)
_ADD_TO_CART = 0.16  # per product view
_CHECKOUT_WITHOUT_ORDER = 0.4  # of non-converting carts: start checkout, then abandon
_FORM_SUBMIT = 0.04  # per browse step, at most once per session
_UNSUBSCRIBE = 0.03  # per email open
_CLICK = 0.35  # per email open
_CLICK_THROUGH = 0.8  # clicks that continue into a web session
# Think times (seconds): log-normal page-to-page gaps, median 20 s, capped so that a session cannot
# stall for hours; the cap also bounds how long a converting cart takes to reach its order.
_THINK_MU = math.log(20.0)
_THINK_SIGMA = 1.0
_THINK_MIN_S = 1.0
_THINK_MAX_S = 600.0
_THINK_STEPS = 1024


def _think_quantiles() -> tuple[float, ...]:
    """Quantiles (ms) of the clamped log-normal think time at 0, 1/_THINK_STEPS, ..., 1."""
    dist = NormalDist(_THINK_MU, _THINK_SIGMA)
    table = [_THINK_MIN_S * 1000.0]
    for k in range(1, _THINK_STEPS):
        seconds = math.exp(dist.inv_cdf(k / _THINK_STEPS))
        table.append(1000.0 * min(max(seconds, _THINK_MIN_S), _THINK_MAX_S))
    # u < 1 keeps k + 1 <= _THINK_STEPS; the last bin interpolates linearly up to the cap.
    table.append(_THINK_MAX_S * 1000.0)
    return tuple(table)


_THINK_QUANTILES = _think_quantiles()

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class ShopConfig:
    seed: int = 7
    contacts: int = 1000  # size of the contact pool
    zipf_a: float = 1.2  # contact popularity skew (Zipf-like; returning shoppers)
    start_ms: int = 1795442400000  # 2026-11-23T14:00:00Z
    sessions_per_minute: float = 30.0
    checkout_rate: float = 0.35  # fraction of carts that end in an order
    known_user_rate: float = 0.6  # sessions with a userId (else anonymousId only)
    # Bounded disorder: each event's timestamp may be up to this much earlier than emission order.
    disorder_ms: int = 0
    duplicate_rate: float = 0.0  # fraction of events re-sent with the same messageId (SDK retries)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("seed must be >= 0")
        if self.contacts < 1:
            raise ValueError("contacts must be >= 1")
        if not self.zipf_a >= 0.0:
            raise ValueError("zipf_a must be >= 0")
        if not self.sessions_per_minute > 0.0:
            raise ValueError("sessions_per_minute must be > 0")
        for name in ("checkout_rate", "known_user_rate", "duplicate_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.disorder_ms < 0:
            raise ValueError("disorder_ms must be >= 0")


_MILLIS = tuple(f"{m:03d}Z" for m in range(1000))
_PREFIX_CACHE_MAX = 4096


def _iso_formatter() -> Callable[[int], str]:
    """A formatter epoch ms -> ``YYYY-MM-DDTHH:MM:SS.mmmZ`` for one stream.

    datetime formatting would cost more than building the event itself. Event times cluster in recent
    seconds (even with disorder), so the ``YYYY-MM-DDTHH:MM:SS.`` prefix is cached per second and the
    day part per day; the milliseconds come from a table.
    """
    prefixes: dict[int, str] = {}
    day_cache: list[Any] = [None, ""]

    def prefix_of(sec: int) -> str:
        if len(prefixes) >= _PREFIX_CACHE_MAX:
            prefixes.clear()
        day, rem = divmod(sec, 86_400)
        if day != day_cache[0]:
            day_cache[0] = day
            day_cache[1] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
        hour, rem = divmod(rem, 3600)
        minute, second = divmod(rem, 60)
        prefix = prefixes[sec] = f"{day_cache[1]}{hour:02d}:{minute:02d}:{second:02d}."
        return prefix

    get = prefixes.get
    millis = _MILLIS

    def iso(ms: int) -> str:
        sec = ms // 1000
        return (get(sec) or prefix_of(sec)) + millis[ms - sec * 1000]

    return iso


@dataclass(frozen=True)
class _Product:
    id: str
    category: str
    price: float
    path: str
    url: str


class _Stream:
    """One pass over the shop: the random state, counters and heap of a single ``events()`` call."""

    def __init__(self, config: ShopConfig) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        rnd = self.rng.random
        # Which contact ids are popular is itself drawn from the seed, so nothing downstream can come
        # to rely on "u-1 is the hot key".
        ranks = list(range(1, config.contacts + 1))
        self.rng.shuffle(ranks)
        self.contact_ids = ranks
        self.contact_cdf = list(accumulate(1.0 / (k**config.zipf_a) for k in range(1, config.contacts + 1)))
        products: list[_Product] = []
        for n in range(1, _PRODUCTS + 1):
            category = _CATEGORIES[int(rnd() * len(_CATEGORIES))]
            low, high = _PRICE_BANDS[category]
            # Shop prices end in .99 or .00 (and a few .50), not at arbitrary cents.
            price = math.floor(low + (high - low) * rnd() ** 2) + (0.99, 0.0, 0.5)[int(rnd() * 3)]
            path = f"/products/p-{n}"
            products.append(_Product(f"p-{n}", category, price, path, _BASE_URL + path))
        self.products = products
        # Product popularity is skewed too: a few best sellers take most of the views.
        self.product_cdf = list(accumulate(1.0 / k for k in range(1, _PRODUCTS + 1)))
        # Email goes to contacts who have logged in at least once (so the shop has their address),
        # and an unsubscribe is final.
        self.known: set[int] = set()
        self.unsubscribed: set[int] = set()
        self.carts = 0
        self.orders = 0
        self.emails = 0

    # -- draws ---------------------------------------------------------------------------------

    def contact(self) -> int:
        cdf = self.contact_cdf
        return self.contact_ids[min(bisect_right(cdf, self.rng.random() * cdf[-1]), len(cdf) - 1)]

    def product(self) -> _Product:
        cdf = self.product_cdf
        return self.products[min(bisect_right(cdf, self.rng.random() * cdf[-1]), _PRODUCTS - 1)]

    def think_ms(self) -> int:
        # Inverse-CDF sampling from a precomputed quantile table, linearly interpolated: one uniform
        # draw instead of a gauss() and an exp(), which were the most expensive part of a browse step.
        x = self.rng.random() * _THINK_STEPS
        k = int(x)
        low = _THINK_QUANTILES[k]
        return int(low + (x - k) * (_THINK_QUANTILES[k + 1] - low))

    def quick_ms(self, low_ms: int, high_ms: int) -> int:
        """Gaps between calls made by the same page load (page then track), or short form fills."""
        return low_ms + int(self.rng.random() * (high_ms - low_ms))

    # -- sessions ------------------------------------------------------------------------------

    def session(self, t0: int) -> tuple[list[int], list[Event]]:
        """The next session starting at ``t0``: absolute event times (non-decreasing) and events."""
        rnd = self.rng.random
        person = self.contact()
        if rnd() < _EMAIL_SHARE and person in self.known and person not in self.unsubscribed:
            return self.email_session(t0, person)
        known = rnd() < self.cfg.known_user_rate
        if known:
            self.known.add(person)
        times: list[int] = []
        events: list[Event] = []
        self.web_session(t0, person, known, None, None, times, events)
        return times, events

    def email_session(self, t0: int, person: int) -> tuple[list[int], list[Event]]:
        rnd = self.rng.random
        self.emails += 1
        campaign = _CAMPAIGNS[int(rnd() * len(_CAMPAIGNS))]
        email_id = f"e-{self.emails}"
        user_id = f"u-{person}"
        times = [t0]
        events: list[Event] = [
            {
                "type": "track",
                "event": "Email Opened",
                "properties": {"campaign": campaign, "email_id": email_id},
                "context": {"channel": "email"},
                "userId": user_id,
            }
        ]
        r = rnd()
        if r < _UNSUBSCRIBE:
            self.unsubscribed.add(person)
            times.append(t0 + self.quick_ms(3_000, 90_000))
            events.append(
                {
                    "type": "track",
                    "event": "Unsubscribed",
                    "properties": {"campaign": campaign, "email_id": email_id},
                    "context": {"channel": "email"},
                    "userId": user_id,
                }
            )
        elif r < _UNSUBSCRIBE + _CLICK:
            target = self.product() if rnd() < 0.6 else None
            path = target.path if target else f"/category/{_CATEGORIES[int(rnd() * len(_CATEGORIES))]}"
            t = t0 + self.quick_ms(2_000, 120_000)
            times.append(t)
            events.append(
                {
                    "type": "track",
                    "event": "Email Clicked",
                    "properties": {"campaign": campaign, "email_id": email_id, "link_url": _BASE_URL + path},
                    "context": {"channel": "email"},
                    "userId": user_id,
                }
            )
            if rnd() < _CLICK_THROUGH:
                self.web_session(t + self.quick_ms(500, 4_000), person, True, campaign, path, times, events)
        return times, events

    def web_session(
        self,
        t0: int,
        person: int,
        known: bool,
        campaign: str | None,
        landing: str | None,
        times: list[int],
        events: list[Event],
    ) -> None:
        rng = self.rng
        rnd = rng.random
        channel = "app" if rnd() < _APP_SHARE else "web"
        ids: dict[str, str] = (
            {"userId": f"u-{person}", "anonymousId": f"anon-{person}"}
            if known
            else {"anonymousId": f"anon-{person}"}
        )
        campaign_ctx = {"name": campaign, "source": "email", "medium": "email"} if campaign else None
        target = _MIN_TARGET + min(int(rng.expovariate(1.0 / _MEAN_EXTRA_TARGET)), _MAX_TARGET - _MIN_TARGET)
        start = len(events)
        t = t0

        add_time = times.append
        add_event = events.append

        def emit(at: int, event: Event, ctx_channel: str = channel) -> None:
            if campaign_ctx is None:
                event["context"] = {"channel": ctx_channel}
            else:
                event["context"] = {"channel": ctx_channel, "campaign": campaign_ctx.copy()}
            event.update(ids)
            add_time(at)
            add_event(event)

        def page(at: int, path: str, title: str) -> None:
            emit(
                at,
                {
                    "type": "page",
                    "name": title,
                    "properties": {"path": path, "url": _BASE_URL + path, "title": title},
                },
            )

        def product_props(p: _Product) -> dict[str, Any]:
            return {"product_id": p.id, "category": p.category, "price": p.price, "url": p.url}

        cart: list[tuple[_Product, int]] = []
        cart_id = ""

        def view_product(at: int, p: _Product) -> int:
            nonlocal cart_id
            page(at, p.path, "Product")
            at += self.quick_ms(50, 1_500)
            emit(at, {"type": "track", "event": "Product Viewed", "properties": product_props(p)})
            if rnd() < _ADD_TO_CART:
                at += self.quick_ms(3_000, 60_000)
                if not cart:
                    self.carts += 1
                    cart_id = f"c-{self.carts}"
                quantity = 1 if rnd() < 0.8 else 2
                cart.append((p, quantity))
                props = product_props(p)
                props["quantity"] = quantity
                props["cart_id"] = cart_id
                emit(at, {"type": "track", "event": "Product Added", "properties": props})
            return at

        def identify(at: int) -> int:
            emit(
                at,
                {
                    "type": "identify",
                    "traits": {
                        "email": f"shopper{person}@mail.example",
                        "first_name": _FIRST_NAMES[person % len(_FIRST_NAMES)],
                        "country": _COUNTRIES[person % len(_COUNTRIES)],
                    },
                },
            )
            return at

        # Landing: email click-throughs land where the link pointed; organic traffic mostly on the
        # home page or a category, sometimes straight on a product (search ads) or pricing.
        r = rnd()
        if landing is not None and landing.startswith("/products/"):
            t = view_product(t, self.products[int(landing.rsplit("-", 1)[1]) - 1])
        elif landing is not None:
            page(t, landing, "Category")
        elif r < 0.35:
            page(t, "/", "Home")
        elif r < 0.7:
            page(t, f"/category/{_CATEGORIES[int(rnd() * len(_CATEGORIES))]}", "Category")
        elif r < 0.9:
            t = view_product(t, self.product())
        else:
            path, title = _PRICING_PAGES[int(rnd() * len(_PRICING_PAGES))]
            page(t, path, title)
        if known and rnd() < _LOGIN_IDENTIFY:
            t = identify(t + self.quick_ms(200, 3_000))

        form_done = False
        while len(events) - start < target:
            t += self.think_ms()
            r = rnd()
            if r < 0.5:
                t = view_product(t, self.product())
            elif r < 0.7:
                page(t, f"/category/{_CATEGORIES[int(rnd() * len(_CATEGORIES))]}", "Category")
            elif r < 0.8:
                path, title = _PRICING_PAGES[int(rnd() * len(_PRICING_PAGES))]
                page(t, path, title)
            elif r < 0.8 + _FORM_SUBMIT and not form_done:
                form_done = True
                emit(
                    t,
                    {
                        "type": "track",
                        "event": "Form Submitted",
                        "properties": {"form_id": _FORMS[int(rnd() * 4)]},
                    },
                )
                # The site identifies whoever submitted a form with an email field, logged in or not.
                t = identify(t + self.quick_ms(100, 1_500))
            else:
                path, title = _OTHER_PAGES[int(rnd() * len(_OTHER_PAGES))]
                page(t, path, title)

        if not cart:
            return
        value = round(sum(p.price * q for p, q in cart), 2)
        converts = rnd() < self.cfg.checkout_rate
        if not converts and rnd() >= _CHECKOUT_WITHOUT_ORDER:
            return  # walked away from the cart without starting checkout
        products = [{"product_id": p.id, "price": p.price, "quantity": q} for p, q in cart]
        t += self.think_ms()
        page(t, "/checkout", "Checkout")
        t += self.quick_ms(50, 1_500)
        emit(
            t,
            {
                "type": "track",
                "event": "Checkout Started",
                "properties": {"cart_id": cart_id, "value": value, "currency": "USD", "products": products},
            },
        )
        if not converts:
            return
        self.orders += 1
        # Filling in shipping and payment details takes a while; the order is confirmed server-side.
        t += self.quick_ms(30_000, 300_000)
        emit(
            t,
            {
                "type": "track",
                "event": "Order Completed",
                "properties": {
                    "order_id": f"o-{self.orders}",
                    "cart_id": cart_id,
                    "revenue": value,
                    "currency": "USD",
                    "products": products,
                },
            },
            "api",
        )

    # -- the interleaved stream ----------------------------------------------------------------

    def run(self) -> Iterator[Event]:
        cfg = self.cfg
        rng = self.rng
        rnd = rng.random
        heap: list[tuple[int, int, int, list[int] | None, list[Event]]] = []
        push = heapq.heappush
        pop = heapq.heappop
        replace = heapq.heapreplace
        iso = _iso_formatter()
        id_prefix = f"{cfg.seed:x}-"
        disorder = cfg.disorder_ms
        dup_rate = cfg.duplicate_rate
        gap_rate = cfg.sessions_per_minute / 60_000.0  # session starts per ms
        # Kept fractional so that rates above one session per millisecond still come out right.
        next_start: float = cfg.start_ms
        seq = 0  # tie-break for equal times, so heap order never compares the lists
        counter = 0
        while True:
            if not heap or next_start < heap[0][0] + 1:
                times, events = self.session(int(next_start))
                seq += 1
                push(heap, (times[0], seq, 0, times, events))
                next_start += rng.expovariate(gap_rate)
                continue
            at, order, i, times_or_none, events = heap[0]
            event = events[i]
            if times_or_none is None:
                # An SDK retry of an event already emitted: same bytes, same messageId.
                pop(heap)
                yield event
                continue
            i += 1
            if i < len(events):
                replace(heap, (times_or_none[i], order, i, times_or_none, events))
            else:
                pop(heap)
            event["messageId"] = f"{id_prefix}{counter:09d}"
            counter += 1
            delay = 0
            if disorder:
                delay = int(rnd() * (disorder + 1))
            event["timestamp"] = iso(at - delay)
            if dup_rate and rnd() < dup_rate:
                # The retry lands at most disorder_ms after the event's own timestamp, so duplicates
                # never break the disorder bound that consumers configure lateness for. It is copied
                # now, so a consumer that stamps the original (receivedAt, ...) leaves the retry as sent.
                seq += 1
                push(heap, (at + int(rnd() * (disorder - delay + 1)), seq, 0, None, [dict(event)]))
            yield event


class Shop:
    """A synthetic shop; every ``events()`` call replays the same stream from ``config.start_ms``."""

    def __init__(self, config: ShopConfig | None = None) -> None:
        self.config = config if config is not None else ShopConfig()

    def events(self) -> Iterator[Event]:
        """Endless events in emission order (timestamps at most ``disorder_ms`` out of order)."""
        return _Stream(self.config).run()

    def take(self, n: int) -> list[Event]:
        return list(islice(self.events(), n))

    def lines(self, n: int) -> list[bytes]:
        """The first ``n`` events as orjson-encoded JSON, one per element, without newlines."""
        dumps = orjson.dumps
        # Keeping orjson's own result objects costs about one page fault per line (its buffers are
        # over-allocated and then shrunk in place); a compact copy lets each buffer be reused at once.
        # Measured: 176k -> 230k lines/s for lines(500_000).
        return [bytes(memoryview(dumps(event))) for event in islice(self.events(), n)]
