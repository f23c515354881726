"""Throughput of `engine.decode.decode_lines` on realistic shop traffic.

    .venv/bin/python -m bench.decode_bench [--events N] [--batch B] [--repeat R]

The events mirror conformance case 022: track/page/screen/identify/group/alias calls with
properties and context, string, integer and anonymous contacts, ISO timestamps with ``Z``, with
offsets and without a zone, epoch milliseconds, and some `sentAt`/`receivedAt` pairs. It prints
the decode rate and, for scale, the rate of `orjson.loads` alone on the same batches (keeping each
batch's objects, as the decoder does); the difference is the decoder's own overhead per event.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import orjson

from engine.decode import decode_lines
from engine.times import format_time

_START_MS = 1_795_392_000_000  # 2026-11-23T00:00:00Z
_TRACKS = (
    ("Product Viewed", 40),
    ("Email Opened", 19),
    ("Product Added", 15),
    ("Form Submitted", 10),
    ("Checkout Started", 7),
    ("Email Clicked", 6),
    ("Order Completed", 4),
)
_CATEGORIES = ("shirts", "bags", "shoes", "hats", "electronics")
_PAGES = (("Landing", "/"), ("Pricing", "/pricing"), ("Product", "/products/p-7"), ("Other", "/about"))


def _timestamp(rng: random.Random, ms: int) -> object:
    roll = rng.random()
    if roll < 0.75:
        return format_time(ms)
    if roll < 0.86:
        return ms
    if roll < 0.92:
        return format_time(ms)[:-1]
    hours = rng.choice((-5, -8, 1, 2))
    local = format_time(ms + hours * 3_600_000)[:-1]
    return f"{local}{'+' if hours >= 0 else '-'}{abs(hours):02d}:00"


def make_lines(count: int, seed: int = 22) -> list[bytes]:
    """`count` valid event lines, about 2.3 events per second of event time, as SDKs send them."""
    rng = random.Random(seed)
    names = [name for name, _ in _TRACKS]
    weights = [weight for _, weight in _TRACKS]
    lines = []
    ms = _START_MS
    for i in range(count):
        ms += rng.randrange(0, 870)
        contact = rng.randrange(1, 500)
        event: dict[str, object] = {"messageId": f"55f0-{i:07d}"}
        roll = rng.random()
        if roll < 0.5:
            product = rng.randrange(1, 60)
            event |= {
                "type": "track",
                "event": rng.choices(names, weights)[0],
                "properties": {
                    "product_id": f"p-{product}",
                    "category": rng.choice(_CATEGORIES),
                    "price": round(rng.uniform(5, 500), 1),
                    "url": f"https://shop.example/products/p-{product}",
                },
            }
        elif roll < 0.95:
            title, path = rng.choice(_PAGES)
            event |= {
                "type": "page",
                "name": title,
                "properties": {"path": path, "url": f"https://shop.example{path}", "title": title},
            }
        else:
            event |= {"type": rng.choice(("screen", "identify", "group", "alias")), "traits": {"plan": "pro"}}
        event["context"] = {"channel": rng.choice(("web", "app", "api", "email"))}
        who = rng.random()
        if who < 0.65:
            event["userId"] = f"u-{contact}"
        elif who < 0.75:
            event["userId"] = 100_000 + contact
        event["anonymousId"] = f"anon-{contact:04d}"
        event["timestamp"] = _timestamp(rng, ms)
        if rng.random() < 0.1:
            event["sentAt"] = format_time(ms + rng.randrange(0, 20_000))
            event["receivedAt"] = format_time(ms + rng.randrange(0, 60_000))
        lines.append(orjson.dumps(event))
    return lines


def _best_seconds(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000, help="events to generate (default 200000)")
    parser.add_argument("--batch", type=int, default=1000, help="lines per decode_lines call (default 1000)")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best is reported (default 7)")
    args = parser.parse_args()

    lines = make_lines(args.events)
    positions = list(range(len(lines)))
    batches = [(lines[i : i + args.batch], positions[i : i + args.batch]) for i in range(0, len(lines), args.batch)]
    batch, dead = decode_lines(lines, positions)
    assert len(batch) == len(lines) and not dead, "the generated events must all be valid"

    def decode_all() -> None:
        for chunk, where in batches:
            decode_lines(chunk, where)

    def loads_all() -> None:
        # The floor: parse every line and keep the batch's objects alive, as decode_lines must.
        loads = orjson.loads
        for chunk, _ in batches:
            [loads(line) for line in chunk]

    decode_s = _best_seconds(decode_all, args.repeat)
    loads_s = _best_seconds(loads_all, args.repeat)
    n = len(lines)
    mean_bytes = sum(map(len, lines)) / n
    print(f"{n} events, {mean_bytes:.0f} bytes/line, batches of {args.batch}, best of {args.repeat} runs")
    print(f"decode_lines : {n / decode_s:12,.0f} events/s  {decode_s / n * 1e6:6.3f} us/event")
    print(f"orjson.loads : {n / loads_s:12,.0f} events/s  {loads_s / n * 1e6:6.3f} us/event")
    print(f"overhead     : {(decode_s - loads_s) / n * 1e6:6.3f} us/event beyond orjson.loads")


if __name__ == "__main__":
    main()
