"""The benchmark workload: a vectorised synthetic shop, deterministic from a seed, > 1M events/s.

    python -m bench.workload --events 2000000 --contacts 1000000 --output events.jsonl
    python -m bench.workload --events 2000000 --output redis://127.0.0.1:6379/0 --shards 64

The same shop as `engine.shop` (the demo's), drawn in blocks with numpy instead of event by event:

* sessions start as a Poisson process (`sessions_per_second` of event time); each belongs to a
  contact drawn from a bounded Zipf law over a pool of up to 10M contacts (which ids are popular is
  itself a seeded permutation);
* a contact has an account with probability `account_rate` (a fixed property of the contact); an
  account holder's web session is logged in (`userId` + `anonymousId`) with probability
  `login_rate`, otherwise it is anonymous (`anonymousId` only: another contact key, as in Segment);
* a web session is a landing page, optionally a login (`identify`), then browse steps (product page
  + Product Viewed + sometimes Product Added, category, pricing and other pages, form submits
  followed by an `identify`) separated by log-normal think times; a session with a cart goes to
  checkout and orders for a `checkout_rate` fraction, starts checkout and abandons for some of the
  rest, and walks away from the cart otherwise;
* a `email_share` fraction of account holders' sessions are campaign emails: opened, then
  unsubscribed from, or clicked, a click usually continuing into a web session that lands on the
  link and carries the campaign in its context;
* sessions are interleaved in time order; `disorder_ms` makes each timestamp up to that much
  earlier than the emission order (bounded disorder); `duplicate_rate` re-sends events with the same
  messageId a few events later (SDK retries).

Lines are not built per event with a dict and a JSON encoder: each event is two byte pieces, a
head chosen from a pre-built table (type, name, context, properties that depend on the page,
product, campaign...; checkouts and orders append their value and product list, built per event
for these few), and a fixed-width tail (ids, messageId, timestamp, cart/order/email ids) written as
digits into numpy byte matrices, one per (kind, identity) layout. A chunk is one `b"".join`.

Everything derives from `WorkloadConfig`: the first N events do not depend on N, nor on where they
are written. `time_scale` shrinks every intra-session duration (think times, checkout) for runs whose
event time is the wall clock (the e2e bench); `paced_rate` replaces the timestamps by a fixed-rate
schedule `start_ms + i / rate` (monotone, so the session structure is kept).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from queue import Queue
from typing import Any, BinaryIO

import numpy as np

from engine import shop as _shop

__all__ = ["Chunk", "Workload", "WorkloadConfig", "entries", "write_file", "write_redis"]

# -- the shop's catalogue (shared with engine.shop) ---------------------------------------------------

_BASE_URL = _shop._BASE_URL
_CATEGORIES = _shop._CATEGORIES
_PRICE_BANDS = _shop._PRICE_BANDS
_N_PRODUCTS = _shop._PRODUCTS
_PRICING_PAGES = _shop._PRICING_PAGES
_OTHER_PAGES = _shop._OTHER_PAGES
_FORMS = _shop._FORMS
_FIRST_NAMES = _shop._FIRST_NAMES
_COUNTRIES = _shop._COUNTRIES
# Two campaigns spelt the way the example rules' `in: [black_friday, cyber_monday]` expects.
_CAMPAIGNS = ("black_friday", "cyber_monday", "black-friday-early", "restock", "weekly-digest")
_N_CTX = 2 * (1 + len(_CAMPAIGNS))  # (web, app) x (no campaign, campaign 1..5)

# Page table: home, categories, pricing pages, other pages, checkout, then one page per product.
_PAGES: list[tuple[str, str]] = [("/", "Home")]
_PAGE_CATEGORY = len(_PAGES)
_PAGES += [(f"/category/{c}", "Category") for c in _CATEGORIES]
_PAGE_PRICING = len(_PAGES)
_PAGES += list(_PRICING_PAGES)
_PAGE_OTHER = len(_PAGES)
_PAGES += list(_OTHER_PAGES)
_PAGE_CHECKOUT = len(_PAGES)
_PAGES.append(("/checkout", "Checkout"))
_PAGE_PRODUCT = len(_PAGES)
_N_PAGES = _PAGE_PRODUCT + _N_PRODUCTS
_N_LINKS = _N_PRODUCTS + len(_CATEGORIES)  # email links: products, then categories

# Event kinds.
(K_PAGE, K_VIEW, K_ADD, K_CHECKOUT, K_ORDER, K_FORM, K_IDENTIFY, K_OPEN, K_CLICK, K_UNSUB) = range(10)
KIND_NAMES = ("Page Viewed", "Product Viewed", "Product Added", "Checkout Started", "Order Completed",
              "Form Submitted", "identify", "Email Opened", "Email Clicked", "Unsubscribed")
# Contact identities: anonymous (anonymousId), known (userId + anonymousId), email (userId).
ID_ANON, ID_KNOWN, ID_EMAIL = range(3)

# Session shape (as in engine.shop).
_EMAIL_SHARE = 0.2
_APP_SHARE = 0.3
_LOGIN_IDENTIFY = 0.3
_ADD_TO_CART = 0.16
_CHECKOUT_WITHOUT_ORDER = 0.4
_FORM_SUBMIT = 0.04
_UNSUBSCRIBE = 0.03
_CLICK = 0.35
_CLICK_THROUGH = 0.8
_THINK_MU = math.log(20_000.0)  # ms
_THINK_SIGMA = 1.0
_THINK_MIN_MS = 1_000.0
_THINK_MAX_MS = 600_000.0
_MAX_BROWSE_STEPS = 20
# Think-time quantiles (ms): log-normal (median 20 s) clamped to [1 s, 10 min], at 4096 evenly spaced levels.
_THINK_TABLE = np.clip(np.exp(_THINK_MU + _THINK_SIGMA * np.array(
    [statistics.NormalDist().inv_cdf((k + 0.5) / 4096) for k in range(4096)])), _THINK_MIN_MS, _THINK_MAX_MS)
_ID_WIDTH = 9  # cart, order and email ids: c-000000001
_SEQ_WIDTH = 10  # messageId: <prefix>0000000001


@dataclass(frozen=True)
class WorkloadConfig:
    seed: int = 7
    contacts: int = 1_000_000  # contact pool (up to 10M)
    zipf_a: float = 1.1  # contact popularity skew; 0 = uniform
    start_ms: int = 1795442400000  # 2026-11-23T14:00:00Z
    sessions_per_second: float = 50.0  # of event time
    checkout_rate: float = 0.35  # carts that end in an order
    account_rate: float = 0.6  # contacts with an account
    login_rate: float = 0.7  # account holders' web sessions that are logged in
    email_share: float = _EMAIL_SHARE
    mean_browse_steps: float = 5.0
    disorder_ms: int = 0
    duplicate_rate: float = 0.0
    time_scale: float = 1.0  # multiplies every intra-session duration
    paced_rate: float | None = None  # events/s: timestamps become start_ms + i / rate
    cover: bool = False  # the first `contacts` sessions visit every contact of the pool once
    id_prefix: str | None = None  # messageId prefix (default: the seed in hex and "-")
    block_sessions: int = 0  # sessions drawn per block (0: chosen from the rates)

    def __post_init__(self) -> None:
        if not 1 <= self.contacts <= 100_000_000:
            raise ValueError("contacts must be within [1, 1e8]")
        if self.zipf_a < 0 or not self.sessions_per_second > 0 or not self.time_scale > 0:
            raise ValueError("zipf_a >= 0, sessions_per_second > 0 and time_scale > 0 are required")
        for name in ("checkout_rate", "account_rate", "login_rate", "email_share", "duplicate_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.disorder_ms < 0 or self.mean_browse_steps < 0:
            raise ValueError("disorder_ms and mean_browse_steps must be >= 0")
        if self.paced_rate is not None and not self.paced_rate > 0:
            raise ValueError("paced_rate must be > 0")

    @property
    def prefix(self) -> str:
        return self.id_prefix if self.id_prefix is not None else f"{self.seed:x}-"


# -- byte tables ---------------------------------------------------------------------------------------


def _b(text: str) -> bytes:
    return text.encode("utf-8")


def _money(cents: int) -> bytes:
    return b"%d.%02d" % divmod(int(cents), 100)


@dataclass
class _Catalogue:
    """Products and the head tables, drawn from the seed like engine.shop's catalogue."""

    price_cents: np.ndarray
    product_lut: np.ndarray  # uniform bucket (of 65536) -> product: inverse CDF of the popularity
    heads: list[np.ndarray]  # per kind: object array of head bytes
    head_lens: list[np.ndarray]  # per kind: int64 lengths
    item_pieces: np.ndarray  # ((product * 2 + quantity - 1) * 2 + last) -> b'{"product_id":...,"quantity":q}' [+ b","]


def _catalogue(seed: int) -> _Catalogue:
    rng = np.random.default_rng([seed, 1])
    cat_idx = (rng.random(_N_PRODUCTS) * len(_CATEGORIES)).astype(np.int64)
    low = np.array([_PRICE_BANDS[_CATEGORIES[c]][0] for c in cat_idx])
    high = np.array([_PRICE_BANDS[_CATEGORIES[c]][1] for c in cat_idx])
    ends = np.array([99, 0, 50])[(rng.random(_N_PRODUCTS) * 3).astype(np.int64)]
    price_cents = (np.floor(low + (high - low) * rng.random(_N_PRODUCTS) ** 2) * 100 + ends).astype(np.int64)
    weights = 1.0 / np.arange(1, _N_PRODUCTS + 1)
    product_cdf = np.cumsum(weights) / weights.sum()
    product_lut = np.minimum(np.searchsorted(product_cdf, (np.arange(65536) + 0.5) / 65536), _N_PRODUCTS - 1)

    ctx = []
    for channel in ("web", "app"):
        ctx.append(_b(f'"context":{{"channel":"{channel}"}}'))
        for c in _CAMPAIGNS:
            ctx.append(_b(f'"context":{{"channel":"{channel}","campaign":{{"name":"{c}","source":"email",'
                          f'"medium":"email"}}}}'))
    products = []
    for p in range(_N_PRODUCTS):
        pid = f"p-{p + 1}"
        products.append(_b(f'"product_id":"{pid}","category":"{_CATEGORIES[cat_idx[p]]}",'
                           f'"price":{_money(price_cents[p]).decode()},"url":"{_BASE_URL}/products/{pid}"'))
    pages = list(_PAGES) + [(f"/products/p-{p + 1}", "Product") for p in range(_N_PRODUCTS)]
    page_props = [_b(f'"name":"{title}","properties":{{"path":"{path}","url":"{_BASE_URL}{path}","title":"{title}"}}')
                  for path, title in pages]
    api_ctx = [b'"context":{"channel":"api"}'] + [
        _b(f'"context":{{"channel":"api","campaign":{{"name":"{c}","source":"email","medium":"email"}}}}')
        for c in _CAMPAIGNS]
    links = [f"/products/p-{p + 1}" for p in range(_N_PRODUCTS)] + [f"/category/{c}" for c in _CATEGORIES]

    tables: list[list[bytes]] = [[] for _ in KIND_NAMES]
    tables[K_PAGE] = [b'{"type":"page",' + pp + b"," + cx + b"," for pp in page_props for cx in ctx]
    tables[K_VIEW] = [b'{"type":"track","event":"Product Viewed","properties":{' + pr + b"}," + cx + b","
                      for pr in products for cx in ctx]
    tables[K_ADD] = [b'{"type":"track","event":"Product Added",' + cx + b',"properties":{' + pr + b","
                     for pr in products for cx in ctx]
    tables[K_CHECKOUT] = [b'{"type":"track","event":"Checkout Started",' + cx + b',"properties":{"currency":"USD",'
                          for cx in ctx]
    tables[K_ORDER] = [b'{"type":"track","event":"Order Completed",' + cx + b',"properties":{"currency":"USD",'
                       for cx in api_ctx]
    tables[K_FORM] = [_b(f'{{"type":"track","event":"Form Submitted","properties":{{"form_id":"{f}"}},') + cx + b","
                      for f in _FORMS for cx in ctx]
    tables[K_IDENTIFY] = [b'{"type":"identify",' + cx
                          + _b(f',"traits":{{"first_name":"{_FIRST_NAMES[k % len(_FIRST_NAMES)]}",'
                               f'"country":"{_COUNTRIES[k % len(_COUNTRIES)]}",')
                          for k in range(40) for cx in ctx]
    for kind, name in ((K_OPEN, "Email Opened"), (K_UNSUB, "Unsubscribed")):
        tables[kind] = [_b(f'{{"type":"track","event":"{name}","context":{{"channel":"email"}},'
                           f'"properties":{{"campaign":"{c}",') for c in _CAMPAIGNS]
    tables[K_CLICK] = [_b(f'{{"type":"track","event":"Email Clicked","context":{{"channel":"email"}},'
                          f'"properties":{{"campaign":"{c}","link_url":"{_BASE_URL}{link}",')
                       for c in _CAMPAIGNS for link in links]
    heads = []
    head_lens = []
    for table in tables:
        arr = np.empty(len(table), dtype=object)
        arr[:] = table
        heads.append(arr)
        head_lens.append(np.fromiter((len(t) for t in table), dtype=np.int64, count=len(table)))
    items = [_b(f'{{"product_id":"p-{p + 1}","price":{_money(price_cents[p]).decode()},"quantity":{q}}}') + end
             for p in range(_N_PRODUCTS) for q in (1, 2) for end in (b",", b"")]
    item_pieces = np.empty(len(items), dtype=object)
    item_pieces[:] = items
    return _Catalogue(price_cents, product_lut, heads, head_lens, item_pieces)


# -- tails: fixed-width byte matrices ------------------------------------------------------------------

_IDENTS = {
    ID_ANON: [b'"anonymousId":"anon-', ("person",), b'",'],
    ID_KNOWN: [b'"userId":"u-', ("person",), b'","anonymousId":"anon-', ("person",), b'",'],
    ID_EMAIL: [b'"userId":"u-', ("person",), b'",'],
}
_NUMBERED_KINDS = (K_ADD, K_CHECKOUT, K_ORDER, K_OPEN, K_CLICK, K_UNSUB)
_KIND_TAILS: dict[int, list[Any]] = {
    K_ADD: [b'"quantity":', ("a1", 1), b',"cart_id":"c-', ("a0", _ID_WIDTH), b'"},'],
    K_CHECKOUT: [b'"cart_id":"c-', ("a0", _ID_WIDTH), b'"},'],
    K_ORDER: [b'"order_id":"o-', ("a1", _ID_WIDTH), b'","cart_id":"c-', ("a0", _ID_WIDTH), b'"},'],
    K_IDENTIFY: [b'"email":"shopper', ("person",), b'@mail.example"},'],
    K_OPEN: [b'"email_id":"e-', ("a0", _ID_WIDTH), b'"},'],
    K_CLICK: [b'"email_id":"e-', ("a0", _ID_WIDTH), b'"},'],
    K_UNSUB: [b'"email_id":"e-', ("a0", _ID_WIDTH), b'"},'],
}


def _tail_layout(kind: int, ident: int, person_width: int, prefix: bytes) -> list[Any]:
    """Parts of a tail: bytes, or (column, width) digits. Ends with the newline."""
    parts: list[Any] = list(_KIND_TAILS.get(kind, []))
    parts += _IDENTS[ident]
    parts += [b'"messageId":"' + prefix, ("seq", _SEQ_WIDTH), b'","timestamp":"', ("ts", 23), b'Z"}\n']
    out: list[Any] = []
    for p in parts:
        if isinstance(p, tuple) and len(p) == 1:
            p = (p[0], person_width)
        if out and isinstance(p, bytes) and isinstance(out[-1], bytes):
            out[-1] += p
        else:
            out.append(p)
    return out


def _digit_rows(values: np.ndarray, width: int) -> np.ndarray:
    """(n, width) ASCII digits of `values` (zero-padded, most significant first).

    Four digits at a time: one division and four gathers from 10,000-entry tables, instead of a
    division per digit (integer division is the slow part).
    """
    n = len(values)
    out = np.empty((n, width), dtype=np.uint8)
    v = values
    pos = width
    while pos > 0:
        if pos > 4:
            q = v // 10000
            group = v - q * 10000
            v = q
        else:
            group = v
        take = min(4, pos)
        for k in range(take):
            out[:, pos - 1 - k] = _DIG4[3 - k][group]
        pos -= take
    return out


_DIG4 = np.array([[ord(f"{g:04d}"[k]) for g in range(10000)] for k in range(4)], dtype=np.uint8)


def _time_rows(stamps: np.ndarray) -> np.ndarray:
    """(n, 23) ASCII of "YYYY-MM-DDTHH:MM:SS.mmm" for epoch milliseconds."""
    n = len(stamps)
    sec = stamps // 1000
    out = np.empty((n, 23), dtype=np.uint8)
    first = int(sec.min()) if n else 0
    span = int(sec.max()) - first + 1 if n else 0
    if span <= n + 64:  # a table of the seconds in the range, gathered (events mostly share seconds)
        table = _second_rows(np.arange(first, first + span, dtype=np.int64)).view("V19").ravel()
        out[:, :19] = table[sec - first].view(np.uint8).reshape(n, 19)
    else:
        out[:, :19] = _second_rows(sec)
    out[:, 19] = ord(".")
    out[:, 20:23] = _digit_rows(stamps - sec * 1000, 3)
    return out


def _second_rows(sec: np.ndarray) -> np.ndarray:
    """(n, 19) ASCII of "YYYY-MM-DDTHH:MM:SS" for epoch seconds."""
    days = sec // 86400
    sod = sec - days * 86400
    y, mo, d = _civil(days)
    h = sod // 3600
    rem = sod - h * 3600
    mi = rem // 60
    s = rem - mi * 60
    out = np.empty((len(sec), 19), dtype=np.uint8)
    out[:, 0:4] = _digit_rows(y, 4)
    out[:, 4] = ord("-")
    out[:, 5:7] = _digit_rows(mo, 2)
    out[:, 7] = ord("-")
    out[:, 8:10] = _digit_rows(d, 2)
    out[:, 10] = ord("T")
    out[:, 11:13] = _digit_rows(h, 2)
    out[:, 13] = ord(":")
    out[:, 14:16] = _digit_rows(mi, 2)
    out[:, 16] = ord(":")
    out[:, 17:19] = _digit_rows(s, 2)
    return out


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Year, month, day of days since 1970-01-01 (Howard Hinnant's civil_from_days), vectorised."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


# -- chunks --------------------------------------------------------------------------------------------


class Chunk:
    """A run of consecutive events of the stream, as columns; lines are formatted on demand.

    `seq` is the message sequence number (messageId = prefix + seq; a duplicate repeats it),
    `stamps` the timestamp written (ms), `person`/`ident` the contact (`Workload.contact_ids`).
    Formatting goes in slices of at most FORMAT_SLICE events: big temporaries would be fresh
    memory every time, and page faults cost more than the formatting itself.
    """

    FORMAT_SLICE = 8192

    def __init__(self, workload: Workload, cols: dict[str, np.ndarray], extras: list[bytes]) -> None:
        self.workload = workload
        self.cols = cols
        self.extras = extras

    def __len__(self) -> int:
        return len(self.cols["code"])

    @property
    def stamps(self) -> np.ndarray:
        return self.cols["stamp"]

    @property
    def seq(self) -> np.ndarray:
        return self.cols["seq"]

    @property
    def person(self) -> np.ndarray:
        return self.cols["code"] >> _PERSON_SHIFT

    @property
    def ident(self) -> np.ndarray:
        return (self.cols["code"] >> 4) & 3

    @property
    def kind(self) -> np.ndarray:
        return self.cols["code"] & 15

    @property
    def duplicate(self) -> np.ndarray:
        return self.cols["dup"].astype(bool)

    def lengths(self) -> np.ndarray:
        """Byte length of each line (newline included)."""
        return self.workload.line_lengths(self.cols, self.extras)

    def take(self, rows: np.ndarray) -> Chunk:
        return Chunk(self.workload, {c: v[rows] for c, v in self.cols.items()}, self.extras)

    def cut(self, n: int) -> Chunk:
        return Chunk(self.workload, {c: v[:n] for c, v in self.cols.items()}, self.extras)

    def pieces(self) -> Iterator[list[bytes]]:
        """The lines as byte pieces (a line = 2 consecutive pieces), in slices of at most FORMAT_SLICE events."""
        n = len(self)
        step = self.FORMAT_SLICE
        for a in range(0, n, step):
            sub = {c: v[a:a + step] for c, v in self.cols.items()}
            yield self.workload.format(sub, self.extras).ravel().tolist()

    def parts(self) -> Iterator[bytes]:
        """The lines, joined, in slices of at most FORMAT_SLICE events."""
        for pieces in self.pieces():
            yield b"".join(pieces)

    def data(self) -> bytes:
        return b"".join(self.parts())

    def lines(self) -> list[bytes]:
        return self.data().split(b"\n")[:-1]


@dataclass
class _Routing:
    """Shard of each (identity, person): crc32 of the contact id mod shards, computed once per contact."""

    shards: int
    width: int
    cache: dict[int, np.ndarray] = field(default_factory=dict)

    def shard(self, person: np.ndarray, ident: np.ndarray) -> np.ndarray:
        out = np.empty(len(person), dtype=np.int64)
        known = ident != ID_ANON  # userId present: the contact key is u-N
        for is_user, mask in ((True, known), (False, ~known)):
            if not mask.any():
                continue
            p = person[mask]
            table = self.cache.get(is_user)
            if table is None or len(table) <= int(p.max()):
                size = max(int(p.max()) + 1, 0 if table is None else 2 * len(table))
                new = np.full(size, -1, dtype=np.int32)
                if table is not None:
                    new[: len(table)] = table
                table = self.cache[is_user] = new
            sh = table[p]
            missing = np.unique(p[sh < 0])
            if len(missing):
                fmt = (b"u-%0" if is_user else b"anon-%0") + str(self.width).encode() + b"d"
                crc = zlib.crc32
                table[missing] = np.fromiter((crc(fmt % int(c)) % self.shards for c in missing.tolist()),
                                             dtype=np.int32, count=len(missing))
                sh = table[p]
            out[mask] = sh
        return out


class Workload:
    """The event stream of a `WorkloadConfig`; `chunks()` starts it again from the beginning."""

    def __init__(self, config: WorkloadConfig | None = None) -> None:
        self.config = config or WorkloadConfig()
        self.person_width = max(1, len(str(self.config.contacts - 1)))
        self._cat = _catalogue(self.config.seed)
        self._layouts: dict[tuple[int, int], tuple[int, np.ndarray, list[tuple[int, str, int]]]] = {}

    # -- public -----------------------------------------------------------------------------------

    def contact_ids(self, person: np.ndarray, ident: np.ndarray) -> list[str]:
        w = self.person_width
        return [(f"u-{p:0{w}d}" if i != ID_ANON else f"anon-{p:0{w}d}") for p, i in zip(person.tolist(), ident.tolist(),
                                                                                       strict=True)]

    def router(self, shards: int) -> _Routing:
        return _Routing(shards, self.person_width)

    def chunks(self, max_events: int | None = None) -> Iterator[Chunk]:
        """Chunks of the stream (one per generated block), cut after `max_events` events."""
        stream = _Stream(self)
        emitted = 0
        for chunk in stream.run():
            if max_events is not None and emitted + len(chunk) >= max_events:
                yield chunk.cut(max_events - emitted)
                return
            emitted += len(chunk)
            yield chunk

    def lines(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        for chunk in self.chunks(n):
            out += chunk.lines()
        return out

    # -- formatting -------------------------------------------------------------------------------

    def _layout(self, kind: int, ident: int) -> tuple[int, np.ndarray, list[tuple[int, str, int]]]:
        key = (kind, ident)
        got = self._layouts.get(key)
        if got is None:
            parts = _tail_layout(kind, ident, self.person_width, _b(self.config.prefix))
            width = sum(len(p) if isinstance(p, bytes) else p[1] for p in parts)
            template = np.zeros(width, dtype=np.uint8)
            fields = []
            off = 0
            for p in parts:
                if isinstance(p, bytes):
                    template[off:off + len(p)] = np.frombuffer(p, dtype=np.uint8)
                    off += len(p)
                else:
                    fields.append((off, p[0], p[1]))
                    off += p[1]
            got = self._layouts[key] = (width, template, fields)
        return got

    def line_lengths(self, packed: dict[str, np.ndarray], extras: list[bytes]) -> np.ndarray:
        cols = _unpack(packed)
        kinds = cols["kind"]
        out = np.empty(len(kinds), dtype=np.int64)
        for kind in np.unique(kinds).tolist():
            rows = np.flatnonzero(kinds == kind)
            ident = cols["ident"][rows]
            widths = np.array([self._layout(kind, i)[0] for i in range(3)], dtype=np.int64)
            out[rows] = self._cat.head_lens[kind][cols["head"][rows]] + widths[ident]
        x = cols["xref"]
        has = np.flatnonzero(x >= 0)
        if len(has):
            out[has] += np.fromiter((len(extras[k]) for k in x[has].tolist()), dtype=np.int64, count=len(has))
        return out

    def format(self, packed: dict[str, np.ndarray], extras: list[bytes]) -> np.ndarray:
        """Pieces (n, 2) (head, tail) of events in emission order; a line is head + tail.

        Digits are computed once per field for the whole slice as (n, width) matrices; each
        (kind, identity) layout fills an (m, width) matrix from its template and gathers its
        events' digit rows into it: m fixed-width tails.
        """
        cols = _unpack(packed)
        n = len(cols["kind"])
        stamps = packed["stamp"]
        digit_rows: dict[str, np.ndarray] = {
            "person": _digit_rows(cols["person"], self.person_width),
            "seq": _digit_rows(packed["seq"], _SEQ_WIDTH),
        }
        digit_rows["ts"] = _time_rows(stamps)
        kinds = cols["kind"]
        numbered = np.isin(kinds, _NUMBERED_KINDS)
        if numbered.any():  # cart, order and email ids and quantities: digits once for the slice
            for name in ("a0", "a1"):
                digit_rows[name] = _digit_rows(np.where(numbered, cols[name], 0), _ID_WIDTH)
            digit_rows["a1_1"] = np.ascontiguousarray(digit_rows["a1"][:, -1:])
        heads = cols["head"]
        layout_key = (kinds * 3 + cols["ident"]).astype(np.int16)
        order = np.argsort(layout_key, kind="stable")
        # Everything in layout order once, so that each layout below works on contiguous ranges.
        views = {name: rows.view(f"V{rows.shape[1]}").ravel()[order] for name, rows in digit_rows.items()}
        sorted_key = layout_key[order]
        sorted_heads = heads[order]
        bounds = [0, *(np.flatnonzero(np.diff(sorted_key)) + 1).tolist(), n]
        head_col = np.empty(n, dtype=object)
        tail_col = np.empty(n, dtype=object)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            kind, ident = divmod(int(sorted_key[a]), 3)
            width, template, fields = self._layout(kind, ident)
            m = b - a
            lines = np.empty((m, width), dtype=np.uint8)
            lines[:] = template
            for off, name, w in fields:
                view = views[name if w == _ID_WIDTH or name not in ("a0", "a1") else f"{name}_{w}"]
                lines[:, off:off + w] = view[a:b].view(np.uint8).reshape(m, w)
            tail_col[a:b] = lines.view(f"S{width}").ravel().astype(object)
            head_col[a:b] = self._cat.heads[kind][sorted_heads[a:b]]
        pieces = np.empty((n, 2), dtype=object)
        pieces[order, 0] = head_col
        pieces[order, 1] = tail_col
        x = cols["xref"]
        has = np.flatnonzero(x >= 0)
        for i, k in zip(has.tolist(), x[has].tolist(), strict=True):
            pieces[i, 0] = pieces[i, 0] + extras[k]
        return pieces


# Event columns while sessions are generated and merged: time, a packed code (person << 26 | head << 6 |
# ident << 4 | kind), packed numbers (a0 << 31 | a1: cart, order, email ids, quantity) and an index into
# the list of extras (-1: none). Few columns, because every merge step copies each of them.
_COLS = ("t", "code", "aa", "xref")
_HEAD_BITS = 20
_PERSON_SHIFT = 6 + _HEAD_BITS


def _unpack(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    code = cols["code"]
    aa = cols["aa"]
    return {"kind": code & 15, "ident": (code >> 4) & 3, "head": (code >> 6) & ((1 << _HEAD_BITS) - 1),
            "person": code >> _PERSON_SHIFT, "a0": aa >> 31, "a1": aa & ((1 << 31) - 1), "xref": cols["xref"]}


def _merge_order(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Indices into concat(a, b) that merge two sorted arrays (a first among equals)."""
    na, nb = len(a), len(b)
    pos_b = np.searchsorted(a, b, side="right") + np.arange(nb)
    out = np.empty(na + nb, dtype=np.int64)
    is_a = np.ones(na + nb, dtype=bool)
    is_a[pos_b] = False
    out[pos_b] = np.arange(na, na + nb)
    out[is_a] = np.arange(na)
    return out


class _Stream:
    """One pass over the workload: random state, counters and the events carried to the next block."""

    def __init__(self, wl: Workload) -> None:
        self.wl = wl
        cfg = self.cfg = wl.config
        self.rng = np.random.default_rng([cfg.seed, 2])
        self.t = float(cfg.start_ms)
        self.sessions = 0
        self.carts = 0
        self.orders = 0
        self.emails = 0
        self.seq = 0
        self.emitted = 0
        self.extras: list[bytes] = []  # checkout/order extras of carried events; `xref` indexes it
        p = cfg.contacts
        # An affine permutation of the pool: rank -> contact number (popular ids are spread out).
        mult = int(self.rng.integers(p // 3 + 1, max(p // 3 + 2, p))) if p > 2 else 1
        while math.gcd(mult, p) != 1:
            mult += 1
        self.perm_a = mult
        self.perm_b = int(self.rng.integers(0, p))
        self.account_salt = int(self.rng.integers(1, 1 << 30))
        self.carry = {c: np.empty(0, dtype=np.int64) for c in _COLS}
        # Blocks of about one session length of event time keep the carried events near one block.
        self.block = cfg.block_sessions or int(min(65536, max(8192, cfg.sessions_per_second * 150 * cfg.time_scale)))

    # -- draws ------------------------------------------------------------------------------------

    def contacts(self, n: int) -> np.ndarray:
        cfg = self.cfg
        p = cfg.contacts
        u = self.rng.random(n)
        a = cfg.zipf_a
        if a == 0:
            rank = (u * p).astype(np.int64)
        elif abs(a - 1.0) < 1e-9:
            rank = np.floor(np.power(p + 1.0, u)).astype(np.int64) - 1
        else:
            top = (p + 1.0) ** (1.0 - a)
            rank = np.floor(np.power((top - 1.0) * u + 1.0, 1.0 / (1.0 - a))).astype(np.int64) - 1
        rank = np.clip(rank, 0, p - 1)
        if cfg.cover and self.sessions < p:
            g = np.arange(self.sessions, self.sessions + n, dtype=np.int64)
            rank = np.where(g < p, g, rank)
        return (rank * self.perm_a + self.perm_b) % p

    def has_account(self, person: np.ndarray) -> np.ndarray:
        h = ((person + self.account_salt) * 2654435761) % (1 << 32)
        return h < self.cfg.account_rate * (1 << 32)

    def think(self, n: int) -> np.ndarray:
        # Inverse CDF of the clamped log-normal from a table (a uniform draw and a gather, no exp/normal).
        return _THINK_TABLE[(self.rng.random(n) * (len(_THINK_TABLE) - 1)).astype(np.int64)] * self.cfg.time_scale

    def quick(self, n: int, low: float, high: float) -> np.ndarray:
        return (low + self.rng.random(n) * (high - low)) * self.cfg.time_scale

    def product(self, n: int) -> np.ndarray:
        lut = self.wl._cat.product_lut
        return lut[(self.rng.random(n) * len(lut)).astype(np.int64)]

    # -- one block of sessions ----------------------------------------------------------------------

    def block_events(self) -> tuple[dict[str, np.ndarray], float]:
        cfg = self.cfg
        rng = self.rng
        n = self.block
        gaps = rng.exponential(1000.0 / cfg.sessions_per_second, n)
        starts_f = self.t + np.cumsum(gaps)
        self.t = float(starts_f[-1])
        starts = starts_f.astype(np.int64)
        person = self.contacts(n)
        self.sessions += n
        account = self.has_account(person)
        email = account & (rng.random(n) < cfg.email_share)
        events: list[dict[str, np.ndarray]] = []

        # Email sessions: opened, then unsubscribed, or clicked (often continuing into a web session).
        e = np.flatnonzero(email)
        ne = len(e)
        campaign = (rng.random(ne) * len(_CAMPAIGNS)).astype(np.int64)
        email_id = np.arange(self.emails + 1, self.emails + ne + 1, dtype=np.int64)
        self.emails += ne
        r = rng.random(ne)
        unsub = r < _UNSUBSCRIBE
        click = ~unsub & (r < _UNSUBSCRIBE + _CLICK)
        t_follow = starts[e] + np.where(unsub, self.quick(ne, 3_000, 90_000), self.quick(ne, 2_000, 120_000)).astype(
            np.int64)
        link = np.where(rng.random(ne) < 0.6, self.product(ne),
                        _N_PRODUCTS + (rng.random(ne) * len(_CATEGORIES)).astype(np.int64))
        through = click & (rng.random(ne) < _CLICK_THROUGH)
        ep = person[e]
        events.append(_ev(starts[e], K_OPEN, ep, ID_EMAIL, campaign, email_id))
        events.append(_ev(t_follow[unsub], K_UNSUB, ep[unsub], ID_EMAIL, campaign[unsub], email_id[unsub]))
        events.append(_ev(t_follow[click], K_CLICK, ep[click], ID_EMAIL, campaign[click] * _N_LINKS + link[click],
                          email_id[click]))

        # Web sessions: organic ones, then email click-throughs.
        w = np.flatnonzero(~email)
        logged_in = account[w] & (rng.random(len(w)) < cfg.login_rate)
        nt = int(through.sum())
        w_start = np.concatenate([starts[w], t_follow[through] + self.quick(nt, 500, 4_000).astype(np.int64)])
        w_person = np.concatenate([person[w], ep[through]])
        w_ident = np.concatenate([np.where(logged_in, ID_KNOWN, ID_ANON), np.full(nt, ID_KNOWN)])
        w_campaign = np.concatenate([np.zeros(len(w), dtype=np.int64), campaign[through] + 1])
        w_landing = np.concatenate([np.full(len(w), -1, dtype=np.int64), link[through]])
        events += self.web_sessions(w_start, w_person, w_ident, w_campaign, w_landing)
        block = {c: np.concatenate([ev[c] for ev in events]) for c in _COLS}
        return block, float(starts[-1])

    def web_sessions(self, start: np.ndarray, person: np.ndarray, ident: np.ndarray, campaign: np.ndarray,
                     landing: np.ndarray) -> list[dict[str, np.ndarray]]:
        cfg = self.cfg
        rng = self.rng
        ns = len(start)
        channel = (rng.random(ns) < _APP_SHARE).astype(np.int64)
        ctx = channel * (1 + len(_CAMPAIGNS)) + campaign
        if cfg.mean_browse_steps:
            browse = np.minimum(rng.exponential(cfg.mean_browse_steps, ns), _MAX_BROWSE_STEPS).astype(np.int64)
        else:
            browse = np.zeros(ns, dtype=np.int64)
        n_steps = browse + 1
        total = int(n_steps.sum())
        sess = np.repeat(np.arange(ns), n_steps)
        first = np.cumsum(n_steps) - n_steps
        is_landing = np.zeros(total, dtype=bool)
        is_landing[first] = True

        # Step type from one uniform: landing (home .35, category .35, product .2, pricing .1) or
        # browse (product .5, category .2, pricing .1, form .04, other .16); a second uniform picks
        # the page within its type. Email click-throughs land on the link.
        u = rng.random((2, total))
        q = (u[0] * 100).astype(np.int64)
        stype = np.where(is_landing, _LANDING_LUT[q], _BROWSE_LUT[q])
        link = landing[sess]
        via_link = is_landing & (link >= 0)
        if via_link.any():
            stype[via_link] = np.where(link[via_link] < _N_PRODUCTS, _S_PRODUCT, _S_CATEGORY)
        sub = u[1]
        page = (_STEP_PAGE_BASE[stype] + (sub * _STEP_PAGE_COUNT[stype]).astype(np.int64))
        cat_link = via_link & (stype == _S_CATEGORY)
        page[cat_link] = _PAGE_CATEGORY + link[cat_link] - _N_PRODUCTS
        is_product = stype == _S_PRODUCT
        is_form = stype == _S_FORM
        product = self.product(total)
        prod_link = via_link & is_product
        product[prod_link] = link[prod_link]
        page[is_product] = _PAGE_PRODUCT + product[is_product]
        form = (sub * len(_FORMS)).astype(np.int64)

        v = rng.random((4, total))
        add = is_product & (v[0] < _ADD_TO_CART)
        qty = 1 + (v[1] < 0.2)
        scale = cfg.time_scale
        q_view = (50 + v[2] * 1_450) * scale
        q_add = (3_000 + v[3] * 57_000) * scale
        q_form = (100 + v[2] * 1_400) * scale
        login_identify = is_landing & (ident[sess] == ID_KNOWN) & (v[3] < _LOGIN_IDENTIFY)
        q_login = (200 + v[1] * 2_800) * scale
        dur = np.where(is_product, q_view + add * q_add, np.where(is_form, q_form, 0.0))
        t_login = dur + q_login
        dur = np.where(login_identify, t_login, dur)
        advance = self.think(total)
        advance[1:] += dur[:-1]
        advance[is_landing] = 0.0
        cs = np.cumsum(advance)
        t_step = start[sess] + (cs - cs[first][sess]).astype(np.int64)
        s_person = person[sess]
        s_ident = ident[sess]
        s_ctx = ctx[sess]

        # Carts: one per session with an add; checkouts and orders at the end of the session.
        add_idx = np.flatnonzero(add)
        add_sess = sess[add_idx]
        has_cart = np.zeros(ns, dtype=bool)
        has_cart[add_sess] = True
        n_cart = int(has_cart.sum())
        cart_id = np.zeros(ns, dtype=np.int64)
        cart_id[has_cart] = np.arange(self.carts + 1, self.carts + n_cart + 1)
        self.carts += n_cart
        w = rng.random((2, ns))
        converts = has_cart & (w[0] < cfg.checkout_rate)
        checkout = converts | (has_cart & (w[1] < _CHECKOUT_WITHOUT_ORDER))
        last = first + n_steps - 1
        t_end = t_step[last] + dur[last].astype(np.int64) + self.think(ns).astype(np.int64)
        t_started = t_end + ((50 + w[1] * 1_450) * scale).astype(np.int64)
        t_order = t_started + ((30_000 + w[0] * 270_000) * scale).astype(np.int64)
        order_id = np.zeros(ns, dtype=np.int64)
        n_orders = int(converts.sum())
        order_id[converts] = np.arange(self.orders + 1, self.orders + n_orders + 1)
        self.orders += n_orders

        # Extras of checkouts and orders: value and product list, concatenated per session with
        # np.add.reduceat over byte objects.
        c_sess = np.flatnonzero(checkout)
        xref_chk = np.empty(0, dtype=np.int64)
        xref_ord = np.empty(0, dtype=np.int64)
        if len(c_sess):
            cat = self.wl._cat
            in_chk = checkout[add_sess]
            ai = add_idx[in_chk]
            asess = add_sess[in_chk]
            last_item = np.ones(len(ai), dtype=bool)
            last_item[:-1] = asess[1:] != asess[:-1]
            item_code = (product[ai] * 2 + qty[ai] - 1) * 2 + last_item
            pieces = cat.item_pieces[item_code]
            starts_ = np.flatnonzero(np.concatenate([[True], asess[1:] != asess[:-1]]))
            plist = np.add.reduceat(pieces, starts_) if len(pieces) else pieces
            cents = np.add.reduceat(cat.price_cents[product[ai]] * qty[ai], starts_)
            money = np.array([_money(c) for c in cents.tolist()], dtype=object)
            body = money + b',"products":[' + plist + b"],"
            base = len(self.extras)
            self.extras += (b'"value":' + body).tolist()
            xref_chk = np.arange(base, base + len(c_sess))
            conv = converts[c_sess]
            base = len(self.extras)
            self.extras += (b'"revenue":' + body[conv]).tolist()
            xref_ord = np.arange(base, base + int(conv.sum()))

        out = []
        not_form = ~is_form
        out.append(_ev(t_step[not_form], K_PAGE, s_person[not_form], s_ident[not_form],
                       page[not_form] * _N_CTX + s_ctx[not_form]))
        t_view = t_step + q_view.astype(np.int64)
        out.append(_ev(t_view[is_product], K_VIEW, s_person[is_product], s_ident[is_product],
                       product[is_product] * _N_CTX + s_ctx[is_product]))
        t_add = t_view + q_add.astype(np.int64)
        out.append(_ev(t_add[add], K_ADD, s_person[add], s_ident[add], product[add] * _N_CTX + s_ctx[add],
                       cart_id[sess[add]], qty[add]))
        out.append(_ev(t_step[is_form], K_FORM, s_person[is_form], s_ident[is_form],
                       form[is_form] * _N_CTX + s_ctx[is_form]))
        ident_rows = np.flatnonzero(is_form | login_identify)
        t_ident = t_step[ident_rows] + np.where(is_form, q_form, t_login)[ident_rows].astype(np.int64)
        ip = s_person[ident_rows]
        out.append(_ev(t_ident, K_IDENTIFY, ip, s_ident[ident_rows], (ip % 40) * _N_CTX + s_ctx[ident_rows]))
        cp = person[checkout]
        ci = ident[checkout]
        out.append(_ev(t_end[checkout], K_PAGE, cp, ci, (_PAGE_CHECKOUT * _N_CTX) + ctx[checkout]))
        out.append(_ev(t_started[checkout], K_CHECKOUT, cp, ci, ctx[checkout], cart_id[checkout], xref=xref_chk))
        out.append(_ev(t_order[converts], K_ORDER, person[converts], ident[converts], campaign[converts],
                       cart_id[converts], order_id[converts], xref=xref_ord))
        return out

    # -- the stream -------------------------------------------------------------------------------

    def run(self) -> Iterator[Chunk]:
        cfg = self.cfg
        while True:
            block, boundary = self.block_events()
            order = np.argsort(block["t"])
            block = {c: v[order] for c, v in block.items()}
            carry = self.carry
            merged = _merge_order(carry["t"], block["t"])
            cols = {c: np.concatenate([carry[c], block[c]])[merged] for c in _COLS}
            cut = int(np.searchsorted(cols["t"], boundary, side="left"))
            out = {c: v[:cut] for c, v in cols.items()}
            self.carry = {c: v[cut:] for c, v in cols.items()}
            n = cut
            if n == 0:
                continue
            # Extras referenced by carried events stay in the list, renumbered; the others go with the chunk.
            extras_all = self.extras
            x = out["xref"]
            has = np.flatnonzero(x >= 0)
            chunk_extras = [extras_all[k] for k in x[has].tolist()]
            x[has] = np.arange(len(has))
            kept = self.carry["xref"]
            keep = np.flatnonzero(kept >= 0)
            self.extras = [extras_all[k] for k in kept[keep].tolist()]
            kept[keep] = np.arange(len(keep))

            seq = np.arange(self.seq, self.seq + n, dtype=np.int64)
            self.seq += n
            if cfg.paced_rate is not None:
                idx = np.arange(self.emitted, self.emitted + n, dtype=np.int64)
                stamps = cfg.start_ms + np.floor(idx * (1000.0 / cfg.paced_rate)).astype(np.int64)
            else:
                stamps = out["t"]
            self.emitted += n
            if cfg.disorder_ms:
                stamps = stamps - (self.rng.random(n) * (cfg.disorder_ms + 1)).astype(np.int64)
            fmt = {"code": out["code"], "aa": out["aa"], "xref": x, "seq": seq, "stamp": stamps,
                   "dup": np.zeros(n, dtype=np.int8)}
            if cfg.duplicate_rate:
                src = np.flatnonzero(self.rng.random(n) < cfg.duplicate_rate)
                if len(src):
                    # A retry lands 1-64 events after the original (same bytes, same messageId), but never
                    # where the stream has moved past its timestamp by more than disorder_ms.
                    running = np.maximum.accumulate(stamps)
                    last_ok = np.searchsorted(running, stamps[src] + cfg.disorder_ms, side="right") - 1
                    at = np.maximum(src, np.minimum(src + self.rng.integers(1, 65, len(src)), last_ok))
                    keys = np.concatenate([np.arange(n, dtype=np.float64), at + 0.5])
                    o = np.argsort(keys, kind="stable")
                    rows = np.concatenate([np.arange(n), src])[o]
                    dup = np.concatenate([fmt["dup"], np.ones(len(src), dtype=np.int8)])[o]
                    fmt = {c: v[rows] for c, v in fmt.items()}
                    fmt["dup"] = dup
            yield Chunk(self.wl, fmt, chunk_extras)


# Step types and their pages.
_S_HOME, _S_CATEGORY, _S_PRICING, _S_OTHER, _S_PRODUCT, _S_FORM = range(6)
_LANDING_LUT = np.array([_S_HOME] * 35 + [_S_CATEGORY] * 35 + [_S_PRODUCT] * 20 + [_S_PRICING] * 10)
_BROWSE_LUT = np.array([_S_PRODUCT] * 50 + [_S_CATEGORY] * 20 + [_S_PRICING] * 10 + [_S_FORM] * 4 + [_S_OTHER] * 16)
_STEP_PAGE_BASE = np.array([0, _PAGE_CATEGORY, _PAGE_PRICING, _PAGE_OTHER, 0, 0])
_STEP_PAGE_COUNT = np.array([1, len(_CATEGORIES), len(_PRICING_PAGES), len(_OTHER_PAGES), 0, 0])


def _ev(t: np.ndarray, kind: int, person: np.ndarray, ident: Any, head: np.ndarray, a0: Any = 0, a1: Any = 0,
        xref: np.ndarray | None = None) -> dict[str, np.ndarray]:
    n = len(t)
    code = (np.asarray(person, dtype=np.int64) << _PERSON_SHIFT) | (np.asarray(head, dtype=np.int64) << 6) \
        | (np.asarray(ident, dtype=np.int64) << 4) | kind
    aa = (np.asarray(a0, dtype=np.int64) << 31) | np.asarray(a1, dtype=np.int64)
    return {"t": np.asarray(t, dtype=np.int64), "code": code,
            "aa": aa if np.ndim(aa) else np.full(n, aa, dtype=np.int64),
            "xref": np.full(n, -1, dtype=np.int64) if xref is None else np.asarray(xref, dtype=np.int64)}


# -- writers -------------------------------------------------------------------------------------------


# Writing the pieces with writev instead of joining them first: no big temporary buffer per slice
# (fresh memory costs a page fault per 4 KiB, which cost more than the formatting), one copy (the kernel's).
_IOV_MAX = 1024


def _writev_all(fd: int, pieces: list[bytes], offset: int | None = None) -> int:
    """Write every piece, in order (at `offset` with pwritev); returns the bytes written."""
    total = 0
    for i in range(0, len(pieces), _IOV_MAX):
        group = pieces[i:i + _IOV_MAX]
        size = sum(map(len, group))
        done = os.writev(fd, group) if offset is None else os.pwritev(fd, group, offset + total)
        if done < size:  # a short write: finish this group byte-wise
            rest = memoryview(b"".join(group))[done:]
            while rest:
                k = os.write(fd, rest) if offset is None else os.pwrite(fd, rest, offset + total + size - len(rest))
                rest = rest[k:]
        total += size
    return total


def write_file(workload: Workload, n: int, out: BinaryIO | str, jobs: int = 1) -> int:
    """Write the first `n` events as JSON Lines to a stream or a path; returns the number written.

    With a path and `jobs` > 1, this process generates and merges the sessions and computes every
    chunk's byte offset (line lengths are known before formatting), and `jobs` worker processes
    format the chunks and write them in place (`pwritev`): the same bytes, in parallel.
    """
    if jobs > 1 and isinstance(out, str):
        return _write_file_parallel(workload, n, out, jobs)
    if isinstance(out, str):
        with open(out, "wb") as f:
            return write_file(workload, n, f)
    try:
        fd = out.fileno()
    except (AttributeError, OSError):
        fd = -1
    if fd >= 0:
        out.flush()
    written = 0
    # Writes (kernel copies) release the GIL: a writer thread overlaps them with the formatting.
    queue: Queue[list[bytes] | None] = Queue(maxsize=8)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while (pieces := queue.get()) is not None:
                if fd >= 0:
                    _writev_all(fd, pieces)
                else:
                    out.write(b"".join(pieces))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            while queue.get() is not None:
                pass

    thread = threading.Thread(target=writer, name="workload-writer", daemon=True)
    thread.start()
    try:
        for chunk in workload.chunks(n):
            for pieces in chunk.pieces():
                if errors:
                    break
                queue.put(pieces)
            written += len(chunk)
    finally:
        queue.put(None)
        thread.join()
    if errors:
        raise errors[0]
    return written


_WORKER: dict[str, Any] = {}


def _init_file_worker(config: WorkloadConfig, path: str) -> None:
    _WORKER["workload"] = Workload(config)
    _WORKER["fd"] = os.open(path, os.O_WRONLY)


def _format_at(cols: dict[str, np.ndarray], extras: list[bytes], offset: int) -> int:
    chunk = Chunk(_WORKER["workload"], cols, extras)
    for pieces in chunk.pieces():
        offset += _writev_all(_WORKER["fd"], pieces, offset)
    return len(chunk)


def _write_file_parallel(workload: Workload, n: int, path: str, jobs: int) -> int:
    import multiprocessing

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.close(fd)
    ctx = multiprocessing.get_context("spawn")
    written = 0
    offset = 0
    with ctx.Pool(jobs, initializer=_init_file_worker, initargs=(workload.config, path)) as pool:
        pending: deque[Any] = deque()
        for chunk in workload.chunks(n):
            pending.append(pool.apply_async(_format_at, (chunk.cols, chunk.extras, offset)))
            offset += int(chunk.lengths().sum())
            while len(pending) > 2 * jobs:
                written += pending.popleft().get()
        while pending:
            written += pending.popleft().get()
    os.truncate(path, offset)
    return written


def write_redis(workload: Workload, n: int, url: str, shards: int = 64, entry_events: int = 100,
                prefix: str = "hl:", jobs: int = 1) -> int:
    """XADD the first `n` events to the shard streams `{prefix}events:{i}` (entries of <= entry_events events).

    Sets `{prefix}config shards`. With `jobs` > 1, worker process w writes the shards s with
    s % jobs == w (so every stream still receives its entries in order).
    """
    import redis

    from engine.redis_keys import Keys

    client = redis.Redis.from_url(url)
    try:
        client.hset(Keys(prefix).config, "shards", shards)
    finally:
        client.close()
    if jobs <= 1:
        return _redis_writer(workload, workload.chunks(n), url, shards, entry_events, prefix, 0, 1)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    queues = [ctx.Queue(maxsize=4) for _ in range(jobs)]
    procs = [ctx.Process(target=_redis_worker, args=(workload.config, q, url, shards, entry_events, prefix, w, jobs))
             for w, q in enumerate(queues)]
    for p in procs:
        p.start()
    written = 0
    try:
        for chunk in workload.chunks(n):
            for q in queues:
                q.put((chunk.cols, chunk.extras))
            written += len(chunk)
    finally:
        for q in queues:
            q.put(None)
        for p in procs:
            p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a Redis writer process failed: exit codes {[p.exitcode for p in procs]}")
    return written


def _redis_worker(config: WorkloadConfig, queue: Any, url: str, shards: int, entry_events: int, prefix: str,
                  worker: int, jobs: int) -> None:
    workload = Workload(config)

    def chunks() -> Iterator[Chunk]:
        while (item := queue.get()) is not None:
            yield Chunk(workload, *item)

    _redis_writer(workload, chunks(), url, shards, entry_events, prefix, worker, jobs)


def _redis_writer(workload: Workload, chunks: Iterator[Chunk], url: str, shards: int, entry_events: int, prefix: str,
                  worker: int, jobs: int) -> int:
    import redis

    from engine.redis_keys import Keys

    keys = Keys(prefix)
    stream_keys = [keys.events(i) for i in range(shards)]
    router = workload.router(shards)
    client = redis.Redis.from_url(url)
    written = 0
    try:
        for chunk in chunks:
            if jobs > 1:
                mine = np.flatnonzero(router.shard(chunk.person, chunk.ident) % jobs == worker)
                chunk = chunk.take(mine)
            pipe = client.pipeline(transaction=False)
            pending = 0
            for shard, payload, count in entries(chunk, router, entry_events):
                pipe.xadd(stream_keys[shard], {"events": payload, "n": count})
                pending += 1
                if pending >= 256:
                    pipe.execute()
                    pending = 0
            if pending:
                pipe.execute()
            written += len(chunk)
    finally:
        client.close()
    return written


def entries(chunk: Chunk, router: _Routing, entry_events: int) -> Iterator[tuple[int, bytes, int]]:
    """(shard, newline-joined events, count) per stream entry of a chunk; a contact's events stay in order."""
    shard = router.shard(chunk.person, chunk.ident)
    order = np.argsort(shard, kind="stable")
    sorted_shard = shard[order]
    bounds = np.flatnonzero(np.diff(sorted_shard)) + 1
    starts = np.concatenate([[0], bounds]).tolist()
    stops = np.concatenate([bounds, [len(order)]]).tolist()
    cuts: list[tuple[int, int, int]] = []
    for a, b in zip(starts, stops, strict=True):
        s = int(sorted_shard[a])
        cuts += [(s, i, min(b, i + entry_events)) for i in range(a, b, entry_events)]
    by_shard = chunk.take(order)
    data = memoryview(by_shard.data())
    ends = np.cumsum(by_shard.lengths()).tolist()
    for s, i, j in cuts:
        lo = ends[i - 1] if i else 0
        yield s, bytes(data[lo:ends[j - 1] - 1]), j - i


# -- command line (halflife bench workload; arguments in bench/cli.py) ----------------------------------


def config_from_args(args: argparse.Namespace) -> WorkloadConfig:
    return WorkloadConfig(seed=args.seed, contacts=args.contacts, zipf_a=args.zipf,
                          sessions_per_second=args.sessions_per_second, disorder_ms=args.disorder_ms,
                          duplicate_rate=args.duplicates)


def generate(args: argparse.Namespace, output: str) -> dict[str, Any]:
    """Write the workload to `output`; returns events, seconds, events/s (wall) and this process's CPU."""
    wl = Workload(config_from_args(args))
    started = time.perf_counter()
    cpu = time.process_time()
    if output.startswith(("redis://", "rediss://", "unix://")):
        written = write_redis(wl, args.events, output, args.shards, args.entry_events, jobs=args.jobs)
    else:
        written = write_file(wl, args.events, output, jobs=args.jobs)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    return {"events": written, "seconds": seconds, "events_per_s": written / seconds if seconds > 0 else 0.0,
            "main_process_cpu_s": cpu, "jobs": args.jobs}


def main(args: argparse.Namespace) -> int:
    import tempfile

    from bench.common import new_result, table, write_result

    if args.smoke:
        args.events = min(args.events, 20_000)
        args.jobs = min(args.jobs, 2)
    result = new_result("workload", args)
    result["config"] = config_from_args(args).__dict__
    rows = []
    with tempfile.TemporaryDirectory(prefix="halflife-workload-") as tmp:
        output = args.output or os.path.join(tmp, "events.jsonl")
        runs = []
        for jobs in sorted({1, args.jobs}) if not args.output else [args.jobs]:
            args.jobs = jobs
            run = generate(args, output)
            run["output"] = "redis" if output.startswith("redis") else ("temporary file" if not args.output else output)
            if not output.startswith("redis"):
                run["bytes_per_event"] = os.path.getsize(output) / max(1, run["events"])
            runs.append(run)
            run["events_per_cpu_s"] = run["events"] / run["main_process_cpu_s"] if jobs == 1 else float("nan")
            rows.append([jobs, run["events"], run["seconds"], run["events_per_s"], run["events_per_cpu_s"],
                         run.get("bytes_per_event", float("nan"))])
    result["runs"] = runs
    result["events_per_s"] = max(r["events_per_s"] for r in runs)
    path = write_result("workload", result, args.results_dir)
    print(f"halflife bench workload: {args.events:,} events, {args.contacts:,} contacts, seed {args.seed}, "
          f"to {runs[-1]['output']}")
    print(table(rows, ["jobs", "events", "seconds", "events/s", "events per CPU s", "bytes/event"]))
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    from bench.cli import standalone

    sys.exit(standalone(["workload", *sys.argv[1:]]))
