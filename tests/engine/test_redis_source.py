"""engine/redis_source.py against a real redis-server: reading, resuming, trimming, errors, and a real dataflow."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import threading
import time
from datetime import datetime, timedelta, timezone

import orjson
import pytest
import redis
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from engine.config import RunConfig
from engine.dataflow import build_flow
from engine.decode import DeadLetter, EventBatch
from engine.records import wall_ms
from engine.redis_keys import Keys
from engine.redis_sinks import RedisTriggerSink
from engine.redis_source import (
    RedisStreamPartition,
    RedisStreamSource,
    ShardCountMismatch,
    StreamReaderState,
    check_shards,
    stream_backlog,
)
from engine.routing import shard_key, shard_of
from engine.shop import Shop, ShopConfig
from engine.testing import RedisServer, plan_of, run_rules, stream_records
from rules import load_rules
from rules.compiler import Plan, compile_rules

KEY = "hl:events:0"
T0 = 1795442400000


def ev(contact: str, t: int, name: str = "Ping", **extra) -> bytes:
    return orjson.dumps({"event": name, "userId": contact, "timestamp": t, **extra})


def add(client: redis.Redis, *lines: bytes, key: str = KEY) -> str:
    return client.xadd(key, {"events": b"\n".join(lines)}).decode()


def partition(url: str, state=None, *, batch_size: int = 1000, shards: int = 1, shard: int = 0,
              trim_lag: int = 1) -> RedisStreamPartition:
    source = RedisStreamSource(url, shards, batch_size, Plan.empty(), trim_lag=trim_lag)
    return source.build_part("read", Keys().events(shard), state)


def read_lines(part: RedisStreamPartition) -> tuple[list[bytes], list[int]]:
    """One read of the partition, as its lines and their positions."""
    buf, starts, ends, positions = part.read_block()
    return [buf[a:b].tobytes() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)], positions.tolist()


def drain(part: RedisStreamPartition) -> tuple[list[bytes], list[int]]:
    lines, positions = [], []
    while True:
        got, pos = read_lines(part)
        if not got:
            return lines, positions
        lines += got
        positions += pos


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def test_reads_entries_in_order_across_entries_and_batches(redis_url, client):
    expected = []
    for i in range(7):
        lines = [ev(f"c{i}", T0 + 10 * i + j) for j in range(3)]
        expected += lines
        add(client, *lines)
    single = ev("solo", T0 + 500)
    last = client.xadd(KEY, {"event": single}).decode()
    expected.append(single)
    part = partition(redis_url, batch_size=4)
    sizes = []
    got = []
    while True:
        lines, positions = read_lines(part)
        if not lines:
            break
        assert positions == list(range(len(got), len(got) + len(lines)))
        sizes.append(len(lines))
        got += lines
    assert got == expected
    assert max(sizes) <= 4 + 2  # a batch stops once it has batch_size events; entries are never split
    assert len(sizes) >= len(expected) // 6
    assert part.state.cursor == last and part.state.offset == len(expected) and part.state.entries == 8


def xread_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_xread", {}).get("calls", 0))


def wait_until_due(part: RedisStreamPartition) -> None:
    awake = part.next_awake()
    if awake is not None:
        time.sleep(max(0.0, (awake - datetime.now(timezone.utc)).total_seconds()))


def test_the_partitions_of_a_worker_share_one_xread(redis_url, client):
    source = RedisStreamSource(redis_url, 4, 1000, Plan.empty())
    parts = [source.build_part("read", Keys().events(i), None) for i in range(4)]
    written = {i: [ev(f"c{i}", T0 + j) for j in range(i + 1)] for i in range(3)}  # stream 3 stays empty
    for i, lines in written.items():
        add(client, *lines, key=Keys().events(i))
    before = xread_calls(client)
    got = [read_lines(p) for p in parts]
    assert [lines for lines, _ in got] == [written[0], written[1], written[2], []]
    assert [positions for _, positions in got] == [[0], [0, 1], [0, 1, 2], []]
    assert xread_calls(client) - before == 1
    # Polled again before they are due, none of them asks Redis; once due, one read covers them all.
    assert [read_lines(p) for p in parts] == [([], [])] * 4 and xread_calls(client) - before == 1
    add(client, ev("late", T0 + 9), key=Keys().events(3))
    wait_until_due(parts[3])
    assert [read_lines(p)[0] for p in reversed(parts)] == [[ev("late", T0 + 9)], [], [], []]
    assert xread_calls(client) - before == 2


def test_a_stream_with_more_than_its_share_reads_on_alone(redis_url, client):
    source = RedisStreamSource(redis_url, 2, 12, Plan.empty())
    busy, quiet = (source.build_part("read", Keys().events(i), None) for i in range(2))
    lines = [ev("a", T0 + i) for i in range(30)]
    for i in range(0, 30, 2):
        add(client, *lines[i:i + 2], key=Keys().events(0))
    add(client, ev("b", T0), key=Keys().events(1))
    got: list[bytes] = []
    sizes = []
    while len(got) < 30:
        batch, positions = read_lines(busy)
        assert batch, "the busy stream stopped before its end"
        assert positions == list(range(len(got), len(got) + len(batch)))
        got += batch
        sizes.append(len(batch))
    assert got == lines
    assert sizes[0] == 12 and max(sizes) <= 12  # the shared read's share, then its own reads up to a batch
    assert read_lines(quiet)[0] == [ev("b", T0)]  # buffered by the first shared read
    assert read_lines(busy) == ([], []) and busy.next_awake() is not None


def test_entries_buffered_for_a_partition_are_read_again_after_a_resume(redis_url, client):
    source = RedisStreamSource(redis_url, 2, 1000, Plan.empty())
    first, second = (source.build_part("read", Keys().events(i), None) for i in range(2))
    add(client, ev("a", T0), key=Keys().events(0))
    add(client, ev("b", T0), ev("b", T0 + 1), key=Keys().events(1))
    assert read_lines(first)[0] == [ev("a", T0)]  # the shared read buffered the second stream's entry too
    snap = pickle.loads(pickle.dumps(second.snapshot()))
    assert snap.cursor == "0-0" and snap.entries == 0 and snap.offset == 0
    resumed = partition(redis_url, snap, shards=2, shard=1)
    assert read_lines(resumed) == ([ev("b", T0), ev("b", T0 + 1)], [0, 1])


def test_each_thread_has_its_own_shared_reads(redis_url):
    source = RedisStreamSource(redis_url, 2, 100, Plan.empty())
    mine = source.worker_reads()
    theirs = []
    thread = threading.Thread(target=lambda: theirs.append(source.worker_reads()))
    thread.start()
    thread.join()
    assert source.worker_reads() is mine and theirs[0] is not mine
    assert source.build_part("read", Keys().events(0), None).reads is mine


def test_next_batch_routes_events_in_order_and_skips_blank_lines(redis_url, client):
    add(client, ev("a", T0), b"", b"   ", ev("a", T0 + 1, "Second"), b"")
    part = partition(redis_url, shards=1)
    items = part.next_batch()
    batches = [v for k, v in items if isinstance(v, EventBatch)]
    assert [k for k, v in items if isinstance(v, EventBatch)] == [shard_key(0)]
    assert [batches[0].summary(i)["event"] for i in range(2)] == ["Ping", "Second"]
    assert batches[0].positions.tolist() == [0, 1]
    assert part.state.events_in == 2


def test_resume_from_a_snapshot_neither_rereads_nor_skips(redis_url, client):
    lines = [ev("a", T0 + i, messageId=f"m{i}") for i in range(30)]
    for i in range(0, 30, 3):
        add(client, *lines[i:i + 3])
    first = partition(redis_url, batch_size=6)
    read1, _ = read_lines(first)
    read2, _ = read_lines(first)
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    assert isinstance(snap, StreamReaderState) and snap.entries == 4 and snap.offset == 12
    rest, positions = drain(first)
    resumed = partition(redis_url, snap, batch_size=6)
    again, again_positions = drain(resumed)
    assert read1 + read2 + rest == lines
    assert again == rest and again_positions == positions == list(range(12, 30))


def test_dedupe_rings_survive_a_resume(redis_url, client):
    add(client, ev("a", T0, messageId="m1"), ev("a", T0 + 1, messageId="m2"))
    part = partition(redis_url)
    part.next_batch()
    resumed = partition(redis_url, pickle.loads(pickle.dumps(part.snapshot())))
    add(client, ev("a", T0 + 2, messageId="m1"), ev("a", T0 + 3, messageId="m3"))
    batches = [v for _, v in resumed.next_batch() if isinstance(v, EventBatch)]
    assert [[b.summary(i)["messageId"] for i in range(len(b))] for b in batches] == [["m3"]]
    assert resumed.state.deduplicated == 1


def test_an_empty_stream_returns_at_once_and_asks_to_sleep(redis_url, client):
    part = partition(redis_url)
    for _ in range(3):
        started = time.perf_counter()
        assert read_lines(part) == ([], [])
        elapsed = time.perf_counter() - started
        assert elapsed < 0.05
        awake = part.next_awake()
        assert awake is not None
        assert timedelta(0) < awake - datetime.now(timezone.utc) <= timedelta(milliseconds=50)
    add(client, ev("a", T0))
    # Polled before it is due, the partition does not look again (bytewax polls at next_awake).
    assert read_lines(part) == ([], []) and part.next_awake() == awake
    time.sleep(max(0.0, (awake - datetime.now(timezone.utc)).total_seconds()))
    lines, _ = read_lines(part)
    assert len(lines) == 1 and part.next_awake() is None  # data: come back at once


def test_trims_only_up_to_the_previous_snapshot(redis_url, client):
    ids = [client.xadd(KEY, {"event": ev("a", T0 + i)}).decode() for i in range(10)]

    def first_id() -> str:
        return client.xrange(KEY, count=1)[0][0].decode()

    part = partition(redis_url, batch_size=1)  # one single-event entry per call
    for _ in range(3):
        read_lines(part)
    snap1 = part.snapshot()  # nothing durable before it: no trim
    assert snap1.cursor == ids[2] and client.xlen(KEY) == 10
    for _ in range(3):
        read_lines(part)
    part.snapshot()  # trims below snapshot 1's cursor only
    assert client.xlen(KEY) == 8 and first_id() == ids[2]
    read_lines(part)
    read_lines(part)
    snap3 = part.snapshot()
    assert snap3.cursor == ids[7]
    assert client.xlen(KEY) == 5 and first_id() == ids[5]
    part.snapshot()  # nothing read since snapshot 3: trims below its cursor
    assert client.xlen(KEY) == 3 and first_id() == ids[7]
    # A partition resumed from snapshot 3 still finds every entry after its cursor...
    resumed = partition(redis_url, pickle.loads(pickle.dumps(snap3)), batch_size=1)
    assert [orjson.loads(x)["timestamp"] for x in drain(resumed)[0]] == [T0 + 8, T0 + 9]
    # ...and counts the snapshot it resumed from as its previous one.
    resumed.snapshot()
    assert client.xlen(KEY) == 3 and first_id() == ids[7]
    resumed.snapshot()
    assert client.xlen(KEY) == 1 and first_id() == ids[9]


def test_trim_lag_keeps_more_snapshots(redis_url, client):
    ids = [client.xadd(KEY, {"event": ev("a", T0 + i)}).decode() for i in range(6)]
    part = partition(redis_url, batch_size=1, trim_lag=2)
    for expected_len in (6, 6, 6, 5):  # snapshot k trims below the cursor of snapshot k - 2
        read_lines(part)
        part.snapshot()
        assert client.xlen(KEY) == expected_len
    assert client.xrange(KEY, count=1)[0][0].decode() == ids[1]


def test_backlog_counts_unread_entries_whatever_is_trimmed(redis_url, client):
    for i in range(5):
        add(client, ev("a", T0 + i), ev("b", T0 + i))
    part = partition(redis_url, batch_size=2)
    assert part.backlog() == 5
    read_lines(part)
    read_lines(part)
    assert part.backlog() == 3
    part.snapshot()
    part.snapshot()  # trims the entries read
    assert client.xlen(KEY) == 4 and part.backlog() == 3
    assert stream_backlog(client, "hl:events:missing", 0) == 0


def test_invalid_lines_are_dead_lettered(redis_url, client):
    add(client, ev("a", T0), b"{not json", orjson.dumps({"event": "X", "timestamp": T0}), ev("b", T0 + 1))
    part = partition(redis_url)
    items = part.next_batch()
    dead = [v for k, v in items if isinstance(v, DeadLetter)]
    assert [(d.reason, d.position, d.raw) for d in dead] == [
        ("not_json", 1, b"{not json"),
        ("missing_contact", 2, orjson.dumps({"event": "X", "timestamp": T0})),
    ]
    batch = next(v for k, v in items if isinstance(v, EventBatch))
    assert batch.contact_ids() == ["a", "b"]
    s = part.state
    assert (s.events_in, s.processed, s.dead_lettered, s.reasons) == (4, 2, 2, {"not_json": 1, "missing_contact": 1})


def test_entries_without_events_are_skipped_and_logged(redis_url, client, caplog):
    client.xadd(KEY, {"other": b"x"})
    add(client, ev("a", T0))
    part = partition(redis_url)
    with caplog.at_level(logging.WARNING, logger="engine.redis_source"):
        lines, _ = read_lines(part)
    assert len(lines) == 1 and part.skipped_entries == 1
    assert "neither an `events` nor an `event` field" in caplog.text


def test_refuses_a_shard_count_mismatch(redis_url, client):
    assert RedisStreamSource(redis_url, 4, 100, Plan.empty()).list_parts() == [f"hl:events:{i}" for i in range(4)]
    client.hset("hl:config", "shards", 8)
    with pytest.raises(ShardCountMismatch, match="--shards 8"):
        RedisStreamSource(redis_url, 4, 100, Plan.empty()).list_parts()
    assert len(RedisStreamSource(redis_url, 8, 100, Plan.empty()).list_parts()) == 8
    assert check_shards(client, 8) == 8
    # Another prefix is another deployment.
    assert check_shards(client, 4, prefix="other:") is None


def test_survives_a_redis_restart_and_keeps_its_cursor(tmp_path, caplog):
    with RedisServer(str(tmp_path), appendonly=True) as server:
        c = redis.Redis.from_url(server.url)
        add(c, ev("a", T0), ev("a", T0 + 1))
        part = partition(server.url)
        assert len(read_lines(part)[0]) == 2
        c.close()
        server.stop()
        with caplog.at_level(logging.WARNING, logger="engine.redis_source"):
            waits = []
            for _ in range(4):
                started = time.perf_counter()
                assert read_lines(part) == ([], [])
                assert time.perf_counter() - started < 1.0
                waits.append((part.next_awake() - datetime.now(timezone.utc)).total_seconds())
        assert len([r for r in caplog.records if "cannot read from Redis" in r.getMessage()]) == 1
        assert waits == sorted(waits) and waits[-1] > waits[0] and waits[-1] <= 2.0  # exponential backoff
        server.start()
        c = redis.Redis.from_url(server.url)
        add(c, ev("a", T0 + 2))
        deadline = time.monotonic() + 10
        lines: list[bytes] = []
        while not lines:
            assert time.monotonic() < deadline, "no reads after the restart"
            awake = part.next_awake()
            if awake is not None:
                time.sleep(max(0.0, (awake - datetime.now(timezone.utc)).total_seconds()))
            lines, positions = read_lines(part)
        assert [orjson.loads(x)["timestamp"] for x in lines] == [T0 + 2] and positions == [2]
        assert part.connection_errors == 4
        c.close()


# -- a real dataflow --------------------------------------------------------------------

RULES = """
version: 1
lateness: 10s
scores:
  engagement:
    half_life: 1d
    points:
      - {event: [Page Viewed, Product Viewed], add: 1}
      - {event: Product Added, add: 4}
triggers:
  hot:
    when: {score: engagement, rises_above: 12}
    cooldown: 1h
    actions: [{emit: sales}, {tag: hot}]
  browsing:
    when: {count: {event: Product Viewed}, within: 10m, at_least: 3}
    actions: [{emit: onsite}]
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 30s}
    actions: [{emit: email}]
"""


class DrainingPartition(RedisStreamPartition):
    """A live partition that ends once every partition of the run has found its stream empty.

    Ending only then keeps each `EndOfInput` behind all events (a replay run ends the same
    way); `stop_after_entries` instead aborts the run like a crash once that many entries
    were read in total.
    """

    drained: set[str] = set()
    parts: set[str] = set()
    entries_read = 0
    stop_after_entries: int | None = None
    pause_s = 0.002

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        type(self).parts.add(self.name)

    def read_block(self):
        cls = type(self)
        if cls.stop_after_entries is not None and cls.entries_read >= cls.stop_after_entries:
            from bytewax.inputs import AbortExecution

            raise AbortExecution()
        before = self.state.entries
        block = super().read_block()
        cls.entries_read += self.state.entries - before
        time.sleep(cls.pause_s)  # spread the run over several epochs
        if len(block[1]):
            return block
        cls.drained.add(self.name)
        return None if cls.drained >= cls.parts else block


def draining_source(url: str, shards: int, batch_size: int, stop_after_entries: int | None = None,
                    pause_s: float = 0.002):
    partition_class = type("Draining", (DrainingPartition,), {
        "drained": set(), "parts": set(), "entries_read": 0, "stop_after_entries": stop_after_entries,
        "pause_s": pause_s})

    class Source(RedisStreamSource):
        pass

    Source.partition_class = partition_class
    return Source(url, shards, batch_size, dataclasses.replace(plan_of(RULES), lateness_ms=60_000))


def write_shop(client: redis.Redis, shards: int, n: int) -> list[bytes]:
    """`n` shop events (timed a day ahead so the wall-clock watermark stays out of the way), written as the
    collector does: routed by contact, a few events per entry."""
    config = ShopConfig(seed=5, contacts=50, sessions_per_minute=120.0, duplicate_rate=0.02,
                        start_ms=wall_ms() + 86_400_000)
    lines = Shop(config).lines(n)
    pending: dict[int, list[bytes]] = {}
    for i, line in enumerate(lines):
        e = orjson.loads(line)
        shard = shard_of(e.get("userId") or e["anonymousId"], shards)
        pending.setdefault(shard, []).append(line)
        if len(pending[shard]) == 7 or i == len(lines) - 1:
            for s, group in sorted(pending.items()):
                client.xadd(Keys().events(s), {"events": b"\n".join(group)})
            pending.clear()
    return lines


def live_run(url: str, tmp_path, source, recovery=None) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    cfg = RunConfig(rules=str(rules), input=url, output=url, dlq=str(tmp_path / "dlq.jsonl"), shards=4,
                    batch_size=50, recovery=None if recovery is None else str(recovery))
    flow = build_flow(cfg, compile_rules(load_rules(str(rules))), source=source, trigger_sink=RedisTriggerSink(url))
    run_main(flow, epoch_interval=timedelta(milliseconds=50),
             recovery_config=None if recovery is None else RecoveryConfig(str(recovery)))


def stream_triggers(client: redis.Redis, key: str = "hl:triggers") -> list[tuple[str, str, str, str, str]]:
    return sorted((t["rule"], t["contact"], t["at"], t["channel"], t["id"]) for t in stream_records(client, key))


def replay_triggers(lines: list[bytes]) -> list[tuple[str, str, str, str, str]]:
    result = run_rules(RULES, lines, shards=4)
    return sorted((t["rule"], t["contact"], t["at"], t["channel"], t["id"]) for t in result.triggers)


def test_dataflow_on_redis_streams_gives_the_replay_triggers(redis_url, client, tmp_path):
    lines = write_shop(client, 4, 1500)
    expected = replay_triggers(lines)
    assert len(expected) > 20 and {t[0] for t in expected} == {"hot", "browsing", "cart_abandoned"}
    live_run(redis_url, tmp_path, draining_source(redis_url, 4, 50))
    got = stream_triggers(client)
    assert got == expected
    assert stream_triggers(client, "hl:triggers:email") == [t for t in expected if t[3] == "email"]
    # Consumed entries were trimmed, up to the run's last snapshots only.
    assert sum(client.xlen(Keys().events(s)) for s in range(4)) < 1500 / 7


def test_crash_and_resume_gives_every_trigger_once(redis_url, client, tmp_path):
    lines = write_shop(client, 4, 1500)
    expected = replay_triggers(lines)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    entries = sum(client.xlen(Keys().events(s)) for s in range(4))
    live_run(redis_url, tmp_path, draining_source(redis_url, 4, 20, stop_after_entries=entries // 2, pause_s=0.01),
             recovery)
    partial = stream_triggers(client)
    assert 0 < len(partial) < len(expected)
    # Several epochs went by before the crash: their snapshots trimmed the streams.
    assert sum(client.xlen(Keys().events(s)) for s in range(4)) < entries
    live_run(redis_url, tmp_path, draining_source(redis_url, 4, 20), recovery)
    got = stream_triggers(client)
    assert len({t[4] for t in got}) == len(got)  # no id twice
    assert got == expected


def test_no_channel_name_reaches_a_key_of_another_kind():
    keys = Keys("hl:")
    # Channels live under triggers:{channel}; the engine's own streams are outside that namespace,
    # so a rule may emit to a channel called "failed" or "dlq" without mixing records.
    own = {keys.failed, keys.dlq, keys.triggers, keys.config}
    assert {keys.channel(name) for name in ("failed", "dlq", "config", "")}.isdisjoint(own)
    assert keys.failed == "hl:webhooks:failed"
