"""Live mode end to end, against a real redis-server: HTTP -> collector -> Redis -> engine -> Redis.

Replay mode is the oracle: the same events through `halflife run` on a file give the
triggers the live pipeline must produce.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from engine.shop import Shop, ShopConfig
from engine.testing import free_port, stop_process, stream_records, wait_port
from engine.times import format_time
from tests.conftest import ROOT, halflife

pytestmark = pytest.mark.slow

# Short windows so the whole session's timers are due within seconds of wall time.
FAST_RULES = """
version: 1
lateness: 10s
scores:
  engagement:
    half_life: 3s
    points:
      - {event: [Page Viewed, Product Viewed], add: 1}
      - {event: Product Added, add: 4}
      - {event: [Email Opened, Email Clicked], add: 2}
triggers:
  hot:
    when: {score: engagement, rises_above: 8}
    cooldown: 2s
    actions: [{emit: sales}, {tag: hot}]
  cooling:
    when: {score: engagement, falls_below: 2}
    actions: [{untag: hot}]
  browsing:
    when: {count: {event: Product Viewed}, within: 1s, at_least: 3}
    actions: [{emit: onsite}]
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 1s}
    actions: [{emit: email}]
  quiet:
    when: {inactive_for: 2s}
    actions: [{emit: email}, {stage: dormant}]
"""

SHARDS = 8
WRITE_KEY = "test-write-key"


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def retimed_session(n: int, start_ms: int, span_ms: int) -> list[dict]:
    """n shop events, re-timed to [start_ms, start_ms + span_ms], in order."""
    events = Shop(ShopConfig(seed=21, contacts=40, sessions_per_minute=400.0)).take(n)
    for i, e in enumerate(events):
        e["timestamp"] = format_time(start_ms + span_ms * i // n)
    return events


def wait_started(recovery: Path, settle_s: float = 2.0) -> None:
    """The engine creates its recovery partitions first, then bytewax starts reading."""
    deadline = time.monotonic() + 30
    while not list(recovery.glob("*.sqlite3")):
        assert time.monotonic() < deadline, "the engine did not start"
        time.sleep(0.05)
    time.sleep(settle_s)


def engine_args(rules: Path, url: str, recovery: Path, *extra: str) -> list[str]:
    return ["run", "--rules", str(rules), "--input", url, "--output", url, "--dlq", url, "--profiles", url,
            "--recovery", str(recovery), "--shards", str(SHARDS), "--snapshot-interval", "1", *extra]


def test_http_to_triggers_equals_replay(redis_url, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_RULES)
    port = free_port()
    collector = spawn("collect", "--redis", redis_url, "--port", str(port), "--write-key", WRITE_KEY,
                      "--shards", str(SHARDS))
    engine = spawn(*engine_args(rules, redis_url, tmp_path / "rec"))
    try:
        wait_port(port, proc=collector)
        wait_started(tmp_path / "rec")
        import urllib.request
        from base64 import b64encode

        now = int(time.time() * 1000)
        # Events 7 s to 1 s old: within the 10 s lateness, so none is late when the engine reads it.
        events = retimed_session(600, now - 7000, 6000)
        auth = "Basic " + b64encode(f"{WRITE_KEY}:".encode()).decode()
        for i in range(0, len(events), 100):
            body = orjson.dumps({"batch": events[i:i + 100]})
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/batch", data=body, method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": auth})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert json.loads(resp.read()) == {"success": True}
        max_time = max(now - 7000 + 6000 * i // 600 for i in range(600))
        # Every timer due by max_time fires once the wall clock passes max_time + 10 s lateness.
        time.sleep(max(0.0, (max_time + 12_000) / 1000 - time.time()))
        client = redis.Redis.from_url(redis_url)
        live = stream_records(client, "hl:triggers")
    finally:
        code, engine_err = stop_process(engine)
        stop_process(collector)
    assert code in (0, -signal.SIGTERM, 143), engine_err[-2000:]

    # The oracle: the same events replayed from a file. (The collector adds receivedAt, which
    # does not change an event's time when it has a timestamp and no sentAt.)
    replay_input = tmp_path / "events.jsonl"
    replay_input.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    out = tmp_path / "replay.jsonl"
    run = halflife("run", "--rules", str(rules), "--input", str(replay_input), "--output", str(out),
                   "--dlq", str(tmp_path / "dlq.jsonl"), "--shards", str(SHARDS))
    assert run.returncode == 0, run.stderr.decode()
    replay = [json.loads(x) for x in out.read_text().splitlines()]

    def keys(records, up_to=None):
        return sorted((r["rule"], r["contact"], r["at"], r["channel"], r["id"]) for r in records
                      if up_to is None or r["at"] <= up_to)

    assert len(replay) > 20
    assert {r["rule"] for r in replay} >= {"hot", "cart_abandoned", "quiet"}
    # Live mode keeps going after the input: timers later than the last event fire there too.
    assert keys(live, format_time(max_time)) == keys(replay)
    assert len({r["id"] for r in live}) == len(live)
    channel = stream_records(client, "hl:triggers:email")
    assert keys(channel) == keys([r for r in live if r["channel"] == "email"])

    # Profiles: `quiet` sets the stage; every contact seen has scores and a last-seen time.
    quiet = sorted({r["contact"] for r in live if r["rule"] == "quiet"})
    shown = halflife("profile", quiet[0], "--redis", redis_url)
    assert shown.returncode == 0, shown.stderr
    profile = json.loads(shown.stdout)
    assert profile["contact"] == quiet[0] and profile["stage"] == "dormant"
    assert set(profile["scores"]) == {"engagement"} and profile["last_seen"].endswith("Z")
    assert halflife("profile", "nobody", "--redis", redis_url).returncode == 1


def test_live_timer_fires_within_two_seconds_of_its_deadline(redis_url, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\ntriggers:\n  cart_abandoned:\n    when: {first: {event: Product Added}, "
                     "then_not: {event: Order Completed}, within: 30s}\n    actions: [{emit: email}]\n")
    engine = spawn(*engine_args(rules, redis_url, tmp_path / "rec"))
    client = redis.Redis.from_url(redis_url)
    try:
        wait_started(tmp_path / "rec")
        now = int(time.time() * 1000)
        event = {"type": "track", "event": "Product Added", "userId": "u-1", "messageId": "m-1",
                 "timestamp": format_time(now), "properties": {"product_id": "p-1"}}
        shard = __import__("engine.routing", fromlist=["shard_of"]).shard_of("u-1", SHARDS)
        client.hset("hl:config", "shards", SHARDS)
        client.xadd(f"hl:events:{shard}", {"events": orjson.dumps(event), "n": 1})
        deadline_s = (now + 30_000) / 1000
        arrived = None
        while time.time() < deadline_s + 10:
            if client.xlen("hl:triggers"):
                arrived = time.time()
                break
            time.sleep(0.02)
    finally:
        stop_process(engine)
    assert arrived is not None, "no trigger within 10 s after the deadline"
    [record] = stream_records(client, "hl:triggers")
    assert (record["rule"], record["contact"], record["at"]) == ("cart_abandoned", "u-1", format_time(now + 30_000))
    assert arrived - deadline_s <= 2.0, f"trigger arrived {arrived - deadline_s:.2f} s after its deadline"


def test_sigkill_and_restart_gives_the_no_crash_streams(redis_server, tmp_path):
    # Times a day old with a 2-day lateness: the wall clock fires nothing, so two runs of
    # the same streams are comparable trigger for trigger.
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_RULES.replace("lateness: 10s", "lateness: 2d"))
    now = int(time.time() * 1000)
    events = retimed_session(30_000, now - 86_400_000, 600_000)
    route = __import__("engine.routing", fromlist=["shard_of"]).shard_of

    def load(client: redis.Redis) -> None:
        client.hset("hl:config", "shards", SHARDS)
        by_shard: dict[int, list[bytes]] = {}
        for e in events:
            by_shard.setdefault(route(e.get("userId") or e["anonymousId"], SHARDS), []).append(orjson.dumps(e))
        pipe = client.pipeline(transaction=False)
        for shard, lines in sorted(by_shard.items()):
            for i in range(0, len(lines), 50):
                pipe.xadd(f"hl:events:{shard}", {"events": b"\n".join(lines[i:i + 50]), "n": len(lines[i:i + 50])})
        pipe.execute()

    def settle(client: redis.Redis, proc: subprocess.Popen, timeout_s: float = 120) -> None:
        """Wait until the engine has consumed every event stream, then until the trigger stream has
        not grown for 2 s. Consumed: the engine trims a stream to the cursor of its previous snapshot,
        so a stream read to its end keeps at most its last entry. (A quiet trigger stream alone is
        no proof: a restarted engine on a loaded machine can take longer than any quiet window to
        resume.)"""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n = client.xlen("hl:triggers")
            consumed = all(client.xlen(f"hl:events:{s}") <= 1 for s in range(SHARDS))
            if n != last or not consumed:
                last, since = n, time.monotonic()
            elif time.monotonic() - since > 2 and n > 0:
                return
            assert proc.poll() is None, stop_process(proc)
            time.sleep(0.2)
        raise AssertionError("the engine did not settle")

    results = []
    for crash in (False, True):
        client = redis.Redis.from_url(redis_server.url)
        client.flushall()
        load(client)
        rec = tmp_path / f"rec-{crash}"
        engine = spawn(*engine_args(rules, redis_server.url, rec, "--batch-size", "200"))
        if crash:
            while client.xlen("hl:triggers") < 200:
                assert engine.poll() is None, stop_process(engine)
                time.sleep(0.02)
            stop_process(engine, signal.SIGKILL)
            engine = spawn(*engine_args(rules, redis_server.url, rec, "--batch-size", "200"))
        settle(client, engine)
        stop_process(engine)
        records = stream_records(client, "hl:triggers")
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), "a trigger id appears twice in hl:triggers"
        for ch in {r["channel"] for r in records}:
            ch_ids = [r["id"] for r in stream_records(client, f"hl:triggers:{ch}")]
            assert len(ch_ids) == len(set(ch_ids))
        results.append(sorted((r["rule"], r["contact"], r["at"], r["channel"], r["id"]) for r in records))
    assert len(results[0]) > 200
    assert results[1] == results[0]
