"""engine/redis_sinks.py against a real redis-server: idempotent triggers, dead letters, profiles, retries."""

from __future__ import annotations

import argparse
import logging
import threading
import time

import orjson
import pytest
import redis

from engine.decode import DeadLetter
from engine.records import ContactState, profile_lines, trigger_lines
from engine.redis_sinks import (
    RedisDeadLetterSink,
    RedisProfileSink,
    RedisTriggerSink,
    Retrier,
    add_profile_arguments,
    profile_main,
    read_profile,
)
from engine.testing import RedisServer

T0 = 1795442400000


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def triggers(n: int, channels=("email", "sales")) -> list[tuple[str, object]]:
    items = []
    for i in range(n):
        for out in trigger_lines("cart", f"c{i}", T0 + i, channels, {"engagement": 1.5}, b'{"event":"X"}', T0 + i + 5):
            items.append((out.channel, out))
    return items


def records(client: redis.Redis, key: str) -> list[dict]:
    entries = client.xrange(key)
    assert all(list(fields) == [b"data"] for _, fields in entries)
    return [orjson.loads(fields[b"data"]) for _, fields in entries]


def test_trigger_sink_writes_each_record_once_to_both_streams(redis_url, client):
    part = RedisTriggerSink(redis_url).build("triggers", 0, 1)
    items = triggers(3)
    part.write_batch(items)
    part.write_batch(items)  # bytewax emits the same records again after a resume
    part.write_batch(items[:2] + triggers(4)[-2:])  # a batch mixing old and new records
    part.close()
    everything = records(client, "hl:triggers")
    ids = [r["id"] for r in everything]
    assert len(ids) == len(set(ids)) == 8
    assert [orjson.loads(v.line) for _, v in items] == everything[:6]  # in order, byte for byte
    assert [r["id"] for r in records(client, "hl:triggers:email")] == [r["id"] for r in everything if r["channel"] == "email"]
    assert len(records(client, "hl:triggers:sales")) == 4
    assert part.written == 8 and part.duplicates == 8


def test_the_id_ledger_expires_after_the_retention(redis_url, client):
    part = RedisTriggerSink(redis_url, retention_s=3600).build("triggers", 0, 1)
    items = triggers(1, channels=("email",))
    part.write_batch(items)
    trigger_id = orjson.loads(items[0][1].line)["id"]
    assert client.get(f"hl:trigger-id:{trigger_id}") == b"1"
    assert 3590 <= client.ttl(f"hl:trigger-id:{trigger_id}") <= 3600


def test_trigger_sink_accepts_json_lines_and_a_prefix(redis_url, client):
    part = RedisTriggerSink(redis_url, prefix="shop1:").build("triggers", 0, 1)
    lines = [("out", v.line) for _, v in triggers(2, channels=("push",))]
    part.write_batch(lines + lines)
    assert len(records(client, "shop1:triggers")) == len(records(client, "shop1:triggers:push")) == 2
    assert client.exists("hl:triggers") == 0


def test_trigger_sink_reloads_its_script_after_a_script_flush(redis_url, client):
    part = RedisTriggerSink(redis_url).build("triggers", 0, 1)
    part.write_batch(triggers(1))
    client.script_flush()
    part.write_batch(triggers(2))
    assert len(records(client, "hl:triggers")) == 4
    assert part.retrier.errors == 0  # NOSCRIPT is handled, not retried as an error


def test_a_key_of_the_wrong_type_blocks_the_sink_until_fixed_and_writes_nothing_twice(redis_url, client, caplog):
    client.set("hl:triggers:email", "not a stream")
    part = RedisTriggerSink(redis_url, backoff_cap_s=0.05).build("triggers", 0, 1)
    writer = threading.Thread(target=part.write_batch, args=(triggers(2),))
    with caplog.at_level(logging.WARNING, logger="engine.redis_sinks"):
        writer.start()
        time.sleep(0.3)
        assert writer.is_alive() and part.retrier.errors >= 3
        # The `sales` records of the batch are complete; the `email` ones are not written at all.
        assert [r["channel"] for r in records(client, "hl:triggers")] == ["sales", "sales"]
        assert len(client.keys("hl:trigger-id:*")) == 2
        client.delete("hl:triggers:email")
        writer.join(timeout=10)
    assert not writer.is_alive()
    assert sorted(r["channel"] for r in records(client, "hl:triggers")) == ["email", "email", "sales", "sales"]
    assert len(records(client, "hl:triggers:email")) == len(records(client, "hl:triggers:sales")) == 2
    assert "WRONGTYPE hl:triggers:email holds a string" in caplog.text


def test_dead_letters_carry_reason_detail_position_and_truncated_raw(redis_url, client):
    part = RedisDeadLetterSink(redis_url, max_raw_bytes=10).build("dlq", 0, 1)
    big = b"x" * 40
    part.write_batch([
        ("dlq", DeadLetter("not_json", b"{nope", 7, "expected a JSON value")),
        ("dlq", DeadLetter("oversize", big, 8, "line of 40 bytes")),
        ("dlq", DeadLetter("not_json", b"\xff\xfe", 9, "not UTF-8").to_json()),  # the JSON form is accepted too
    ])
    entries = [fields for _, fields in client.xrange("hl:dlq")]
    assert entries == [
        {b"reason": b"not_json", b"detail": b"expected a JSON value", b"position": b"7", b"raw": b"{nope",
         b"raw_bytes": b"5"},
        {b"reason": b"oversize", b"detail": b"line of 40 bytes", b"position": b"8", b"raw": b"x" * 10,
         b"raw_bytes": b"40"},
        {b"reason": b"not_json", b"detail": b"not UTF-8", b"position": b"9", b"raw": b"\xff\xfe", b"raw_bytes": b"2"},
    ]


def changes(contact: str, at_ms: int, *actions: tuple[str, str]) -> list[tuple[str, object]]:
    return [(contact, p) for p in profile_lines("rule", contact, at_ms, tuple(actions))]


def test_profile_sink_tags_untags_and_stages_idempotently(redis_url, client):
    part = RedisProfileSink(redis_url).build("profiles", 0, 1)
    batch = (changes("u1", T0, ("tag", "vip"), ("tag", "hot"), ("stage", "customer"))
             + changes("u2", T0 + 5, ("tag", "hot"))
             + changes("u1", T0 + 10, ("untag", "vip")))
    part.write_batch(batch)
    part.write_batch(batch)  # re-applied after a resume: nothing changes
    assert client.smembers("hl:tag:hot") == {b"u1", b"u2"}
    assert client.smembers("hl:tag:vip") == set()
    assert client.hgetall("hl:contact:u1") == {b"tags": b'["hot"]', b"stage": b"customer",
                                              b"last_change": b"2026-11-23T14:00:00.010Z"}
    part.write_batch(changes("u1", T0 + 20, ("tag", "b-list"), ("tag", "älter"), ("untag", "missing")))
    assert orjson.loads(client.hget("hl:contact:u1", "tags")) == ["b-list", "hot", "älter"]
    part.write_batch(changes("u1", T0 + 30, ("untag", "hot"), ("untag", "b-list"), ("untag", "älter")))
    assert client.hget("hl:contact:u1", "tags") == b"[]"
    part.write_batch([("out", p.line) for _, p in changes("u2", T0 + 40, ("stage", "dormant"))])  # JSON form
    assert client.hget("hl:contact:u2", "stage") == b"dormant"


def test_profile_sink_writes_contact_states_and_read_profile_decodes_them(redis_url, client):
    part = RedisProfileSink(redis_url).build("profiles", 0, 1)
    part.write_batch([("u1", ContactState("u1", {"engagement": 12.5, "intent": 0.0}, T0 + 1))]
                     + changes("u1", T0 + 1, ("tag", "hot"), ("stage", "lead")))
    assert read_profile(client, "u1") == {
        "contact": "u1", "scores": {"engagement": 12.5, "intent": 0.0}, "tags": ["hot"], "stage": "lead",
        "last_seen": "2026-11-23T14:00:00.001Z", "last_change": "2026-11-23T14:00:00.001Z"}
    assert read_profile(client, "nobody") == {}


def test_profile_command(redis_url, client, capsys):
    RedisProfileSink(redis_url).build("profiles", 0, 1).write_batch(changes("u 1", T0, ("tag", "hot")))
    parser = argparse.ArgumentParser()
    add_profile_arguments(parser)
    assert profile_main(parser.parse_args(["u 1", "--redis", redis_url])) == 0
    assert orjson.loads(capsys.readouterr().out) == {"contact": "u 1", "tags": ["hot"],
                                                     "last_change": "2026-11-23T14:00:00.000Z"}
    assert profile_main(parser.parse_args(["ghost", "--redis", redis_url])) == 1
    assert "unknown contact 'ghost'" in capsys.readouterr().err


def test_retrier_backs_off_exponentially_with_jitter_and_logs_once(caplog):
    sleeps: list[float] = []
    retrier = Retrier("test sink", first_s=0.1, cap_s=1.0, sleep=sleeps.append)
    attempts = iter([redis.ConnectionError("down")] * 6 + [None])

    def flaky() -> str:
        exc = next(attempts)
        if exc:
            raise exc
        return "ok"

    with caplog.at_level(logging.WARNING, logger="engine.redis_sinks"):
        assert retrier.call(flaky) == "ok"
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, ceilings, strict=True))
    assert retrier.errors == 6
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "retrying" in messages[0] and "succeeded after 6" in messages[1]
    with pytest.raises(redis.DataError):
        retrier.call(lambda: (_ for _ in ()).throw(redis.DataError("bad argument")))


def test_sinks_wait_for_redis_and_then_write_everything_once(tmp_path):
    with RedisServer(str(tmp_path)) as server:
        trigger_part = RedisTriggerSink(server.url, backoff_cap_s=0.2).build("triggers", 0, 1)
        dlq_part = RedisDeadLetterSink(server.url, backoff_cap_s=0.2).build("dlq", 0, 1)
        profile_part = RedisProfileSink(server.url, backoff_cap_s=0.2).build("profiles", 0, 1)
        trigger_part.write_batch(triggers(1))  # loads the script before the restart
        server.stop()
        items = triggers(5)
        done = threading.Event()
        errors: list[BaseException] = []

        def write() -> None:
            try:
                trigger_part.write_batch(items)
                dlq_part.write_batch([("dlq", DeadLetter("not_json", b"{", 0, "bad"))])
                profile_part.write_batch(changes("u1", T0, ("tag", "hot")))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.8)
        assert not done.is_set()  # blocked, retrying: nothing dropped, nothing raised
        assert trigger_part.retrier.errors >= 3
        server.start()  # an empty server (no persistence): the script must be loaded again
        writer.join(timeout=15)
        assert done.is_set() and not errors
        c = redis.Redis.from_url(server.url)
        assert len(records(c, "hl:triggers")) == 10 and len({r["id"] for r in records(c, "hl:triggers")}) == 10
        assert c.xlen("hl:dlq") == 1 and c.smembers("hl:tag:hot") == {b"u1"}
        # Writing the same batch again (a resume) adds nothing.
        trigger_part.write_batch(items)
        assert len(records(c, "hl:triggers")) == 10
        c.close()
        for part in (trigger_part, dlq_part, profile_part):
            part.close()
