"""The benchmark workload: valid Segment events, deterministic, routed like the collector routes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson

from bench.workload import ID_ANON, Workload, WorkloadConfig, entries, write_file, write_redis
from engine.decode import decode_lines
from engine.routing import shard_of


def test_every_line_is_a_valid_event_of_the_shop() -> None:
    wl = Workload(WorkloadConfig(seed=3, contacts=10_000, sessions_per_second=2.0))
    lines = wl.lines(30_000)
    assert len(lines) == 30_000
    batch, dead = decode_lines(lines, list(range(len(lines))))
    assert dead == []
    names = Counter(batch.names)
    for name in ("Page Viewed", "Product Viewed", "Product Added", "Checkout Started", "Order Completed",
                 "Email Opened", "Email Clicked", "Form Submitted", None):
        assert names[name] > 0, name
    assert names["Page Viewed"] > names["Product Viewed"] > names["Product Added"] > names["Order Completed"]
    assert len(set(batch.message_ids)) == len(lines)
    # Time order (no disorder configured), within the pool, both identities present.
    assert (np.diff(batch.times) >= 0).all()
    assert any(c.startswith("anon-") for c in batch.contacts) and any(c.startswith("u-") for c in batch.contacts)
    order = next(orjson.loads(line) for line in lines if b"Order Completed" in line)
    assert order["properties"]["revenue"] == round(sum(p["price"] * p["quantity"] for p in order["properties"]["products"]), 2)


def test_deterministic_and_independent_of_the_length_asked_for() -> None:
    cfg = WorkloadConfig(seed=5, contacts=1000, duplicate_rate=0.02, disorder_ms=3000)
    a = Workload(cfg).lines(12_345)
    b = Workload(cfg).lines(20_000)
    assert a == b[:12_345]
    assert Workload(WorkloadConfig(seed=6, contacts=1000)).lines(100) != a[:100]


def test_duplicates_and_bounded_disorder() -> None:
    cfg = WorkloadConfig(seed=2, contacts=2000, duplicate_rate=0.05, disorder_ms=2000)
    lines = Workload(cfg).lines(20_000)
    batch, dead = decode_lines(lines, list(range(len(lines))))
    assert not dead
    dups = len(lines) - len(set(batch.message_ids))
    assert 0.03 * len(lines) < dups < 0.07 * len(lines)
    running = np.maximum.accumulate(batch.times)
    assert (batch.times >= running - 2000).all()
    assert (batch.times < running).any()


def test_zipf_contacts_cover_mode_and_line_lengths() -> None:
    wl = Workload(WorkloadConfig(seed=1, contacts=500, cover=True, mean_browse_steps=0.0))
    chunk = next(wl.chunks(3000))
    assert sum(1 for _ in [chunk.lengths()]) == 1
    assert int(chunk.lengths().sum()) == len(chunk.data())
    persons = set(chunk.person.tolist())
    assert len(persons) == 500  # every contact of the pool once, before any Zipf draw
    skewed = Workload(WorkloadConfig(seed=1, contacts=100_000, zipf_a=1.2)).lines(20_000)
    contacts = Counter(orjson.loads(line).get("userId") or orjson.loads(line)["anonymousId"] for line in skewed)
    top = contacts.most_common(1)[0][1]
    assert top > 20 * (len(skewed) / len(contacts))


def test_file_writers_write_the_same_bytes(tmp_path) -> None:
    import io

    cfg = WorkloadConfig(seed=9, contacts=5000)
    write_file(Workload(cfg), 30_000, str(tmp_path / "one.jsonl"))  # writev from a writer thread
    write_file(Workload(cfg), 30_000, str(tmp_path / "two.jsonl"), jobs=2)  # two processes, pwritev at offsets
    buffer = io.BytesIO()
    write_file(Workload(cfg), 30_000, buffer)  # a stream without a file descriptor: joined writes
    one = (tmp_path / "one.jsonl").read_bytes()
    assert one == (tmp_path / "two.jsonl").read_bytes() == buffer.getvalue()
    assert one.count(b"\n") == 30_000
    assert one.split(b"\n")[:-1] == Workload(cfg).lines(30_000)


def test_redis_entries_are_routed_by_the_engine_hash(redis_url) -> None:
    import redis

    wl = Workload(WorkloadConfig(seed=4, contacts=3000))
    chunk = next(wl.chunks(5000))
    contacts = wl.contact_ids(chunk.person, chunk.ident)
    assert all(c.startswith("anon-") == (i == ID_ANON) for c, i in zip(contacts, chunk.ident.tolist(), strict=True))
    for shard, payload, count in entries(chunk, wl.router(8), 100):
        events = [orjson.loads(x) for x in payload.split(b"\n")]
        assert len(events) == count <= 100
        assert {shard_of(e.get("userId") or e["anonymousId"], 8) for e in events} == {shard}

    assert write_redis(Workload(WorkloadConfig(seed=4, contacts=3000)), 4000, redis_url, shards=8, entry_events=50) == 4000
    client = redis.Redis.from_url(redis_url)
    assert client.hget("hl:config", "shards") == b"8"
    seen = 0
    for i in range(8):
        for _, fields in client.xrange(f"hl:events:{i}"):
            lines = fields[b"events"].split(b"\n")
            assert int(fields[b"n"]) == len(lines) <= 50
            for line in lines:
                e = orjson.loads(line)
                assert shard_of(e.get("userId") or e["anonymousId"], 8) == i
            seen += len(lines)
    assert seen == 4000
