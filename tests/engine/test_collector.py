"""The Segment-compatible collector (SPEC §7) against a real redis-server (the `redis_url` fixture).

The app runs in aiohttp's TestServer inside `asyncio.run` (no pytest-asyncio), with
`auto_decompress=False` as `halflife collect` serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import logging
import os
import re
import subprocess
import sys
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from engine.collector import CollectorConfig, add_arguments, build_app, config_from_args, main
from engine.decode import decode_lines
from engine.routing import shard_of
from engine.testing import RedisServer, free_port, stop_process
from engine.times import parse_time

ROOT = Path(__file__).resolve().parents[2]
KEY = "wk-test-0123456789"
OTHER_KEY = "wk-other-abcdef"
SHARDS = 8
TS = "2026-11-23T14:00:00.000Z"
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def basic(key: str = KEY, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


def track(contact: str, name: str = "Product Viewed", **extra: Any) -> dict[str, Any]:
    return {"type": "track", "event": name, "userId": contact, "timestamp": TS, **extra}


def config(redis_url: str, **overrides: Any) -> CollectorConfig:
    return CollectorConfig(**{"redis_url": redis_url, "write_keys": (KEY, OTHER_KEY), "shards": SHARDS, **overrides})


def serve(cfg: CollectorConfig, scenario: Callable[[TestClient], Awaitable[Any]]) -> Any:
    """Run `scenario(client)` against a fresh collector app."""

    async def run() -> Any:
        server = TestServer(build_app(cfg))
        await server.start_server(auto_decompress=False)
        client = TestClient(server)
        await client.start_server()
        try:
            return await scenario(client)
        finally:
            await client.close()

    return asyncio.run(run())


async def post(client: TestClient, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
               data: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    payload = data if data is not None else orjson.dumps(body)
    hdrs = basic() if headers is None else headers
    async with client.post(path, data=payload, headers=hdrs) as resp:
        return resp.status, orjson.loads(await resp.read()), dict(resp.headers)


def one(cfg: CollectorConfig, path: str, body: Any = None, **kwargs: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    return serve(cfg, lambda client: post(client, path, body, **kwargs))


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def entries(r: redis.Redis, shard: int, prefix: str = "hl:") -> list[tuple[int, list[dict[str, Any]]]]:
    """(n, events) of every entry of one shard stream, oldest first."""
    out = []
    for _id, fields in r.xrange(f"{prefix}events:{shard}"):
        events = [orjson.loads(line) for line in fields[b"events"].split(b"\n")]
        assert int(fields[b"n"]) == len(events)
        out.append((int(fields[b"n"]), events))
    return out


def all_events(r: redis.Redis, prefix: str = "hl:") -> dict[int, list[dict[str, Any]]]:
    return {s: [e for _, evs in entries(r, s, prefix) for e in evs] for s in range(SHARDS) if r.exists(f"{prefix}events:{s}")}


def stream_keys(r: redis.Redis) -> list[str]:
    return sorted(k.decode() for k in r.keys("hl:events:*"))


def dlq(r: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in r.xrange("hl:dlq")]


# --- routes and stamping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("route,name", [("track", "Product Viewed"), ("page", "Page Viewed"), ("screen", "Screen Viewed"),
                                        ("identify", None), ("group", None), ("alias", None)])
def test_every_single_route_writes_one_event_with_the_route_type(redis_url, r, route, name):
    body: dict[str, Any] = {"userId": "u-1", "timestamp": TS, "properties": {"path": "/p"}}
    if route == "track":
        body["event"] = "Product Viewed"
    before = int(time.time() * 1000)
    status, reply, headers = one(config(redis_url), f"/v1/{route}", body)
    after = int(time.time() * 1000)
    assert (status, reply) == (200, {"success": True})
    assert headers["Content-Type"].startswith("application/json")
    shard = shard_of("u-1", SHARDS)
    assert stream_keys(r) == [f"hl:events:{shard}"]
    [(n, [event])] = entries(r, shard)
    assert n == 1
    assert event["type"] == route
    assert event["userId"] == "u-1" and event["timestamp"] == TS and event["properties"] == {"path": "/p"}
    assert ISO_MS.fullmatch(event["receivedAt"]) and before <= parse_time(event["receivedAt"]) <= after
    assert isinstance(event["messageId"], str) and event["messageId"]
    # What the collector wrote is what the engine accepts, under the same name.
    batch, dead = decode_lines([orjson.dumps(event)], [0])
    assert dead == [] and batch.names == [name] and batch.contacts == ["u-1"]
    assert dlq(r) == []


def test_the_body_type_wins_over_the_route(redis_url, r):
    status, reply, _ = one(config(redis_url), "/v1/track", {"type": "page", "userId": "u-1", "timestamp": TS})
    assert (status, reply) == (200, {"success": True})
    [(_, [event])] = entries(r, shard_of("u-1", SHARDS))
    assert event["type"] == "page"


def test_message_ids_are_kept_or_filled_uniquely_and_received_at_is_server_time(redis_url, r):
    batch = [track("u-1", messageId="m-own"), track("u-1"), track("u-1", messageId=None),
             track("u-1", receivedAt="1999-01-01T00:00:00.000Z")]
    status, reply, _ = one(config(redis_url), "/v1/batch", {"batch": batch})
    assert (status, reply) == (200, {"success": True})
    [(n, events)] = entries(r, shard_of("u-1", SHARDS))
    assert n == 4
    ids = [e["messageId"] for e in events]
    assert ids[0] == "m-own"
    assert len(set(ids)) == 4 and all(isinstance(i, str) and i for i in ids)
    assert len({e["receivedAt"] for e in events}) == 1  # one stamp per request
    assert events[3]["receivedAt"] != "1999-01-01T00:00:00.000Z"


def test_batch_level_sent_at_context_and_integrations_apply_to_every_call(redis_url, r):
    body = {"batch": [track("u-1"), track("u-1", sentAt="2026-11-23T14:00:01.000Z", context={"ip": "10.0.0.1"})],
            "sentAt": "2026-11-23T14:00:05.000Z", "context": {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"},
            "integrations": {"All": True}}
    status, _, _ = one(config(redis_url), "/v1/batch", body)
    assert status == 200
    [(_, [first, second])] = entries(r, shard_of("u-1", SHARDS))
    assert first["sentAt"] == "2026-11-23T14:00:05.000Z"
    assert first["context"] == {"library": {"name": "analytics-python"}, "ip": "1.2.3.4"}
    assert first["integrations"] == {"All": True}
    assert second["sentAt"] == "2026-11-23T14:00:01.000Z"
    assert second["context"] == {"library": {"name": "analytics-python"}, "ip": "10.0.0.1"}  # the call's own keys win


# --- batches: valid and invalid events ----------------------------------------------------------------------


def test_batch_with_invalid_events_accepts_the_valid_ones_per_shard_and_dead_letters_the_rest(redis_url, r):
    contacts = ["u-1", "u-2", "u-3", "anon-9"]
    batch = [
        track("u-1", properties={"i": 0}),
        {"type": "track", "event": "X", "timestamp": TS},  # 1: no contact
        track("u-2", properties={"i": 2}),
        42,  # 3: not an object
        track("u-1", properties={"i": 4}),
        {"type": "bogus", "userId": "u-1", "timestamp": TS},  # 5: unknown type
        {"type": "page", "anonymousId": "anon-9", "timestamp": TS, "properties": {"i": 6}},
        track("u-3", timestamp="yesterday"),  # 7: bad timestamp
        track("u-3", properties={"i": 8}),
        {"type": "track", "userId": "u-3", "timestamp": TS},  # 9: track without event
    ]
    status, reply, _ = one(config(redis_url), "/v1/batch", {"batch": batch})
    assert status == 400
    assert reply["success"] is False
    assert (reply["accepted"], reply["rejected"]) == (5, 5)
    assert reply["error"] == ("5 of 10 events rejected (not_object: 1, bad_type: 1, missing_contact: 1, missing_event: 1, "
                              "bad_timestamp: 1); first: event 1: missing_contact: no contact: needs a non-empty string "
                              "or integer 'userId' or 'anonymousId'")
    expected: dict[int, list[int]] = {}
    for i, contact in [(0, "u-1"), (2, "u-2"), (4, "u-1"), (6, "anon-9"), (8, "u-3")]:
        expected.setdefault(shard_of(contact, SHARDS), []).append(i)
    assert stream_keys(r) == sorted(f"hl:events:{s}" for s in expected)
    for shard, positions in expected.items():
        # ONE entry per (request, shard), the shard's events in request order.
        [(n, events)] = entries(r, shard)
        assert n == len(positions)
        assert [e["properties"]["i"] for e in events] == positions
        assert all(shard_of(e.get("userId") or e["anonymousId"], SHARDS) == shard for e in events)
    assert {c: shard_of(c, SHARDS) for c in contacts}  # routing is the engine's function
    letters = dlq(r)
    assert [(d["reason"], d["detail"]) for d in letters] == [
        ("missing_contact", "no contact: needs a non-empty string or integer 'userId' or 'anonymousId'"),
        ("not_object", "JSON number is not an object"),
        ("bad_type", "unknown type 'bogus'; expected one of track, page, screen, identify, group, alias"),
        ("bad_timestamp", "unparseable timestamp 'yesterday'"),
        ("missing_event", "a track call needs a non-empty string 'event'"),
    ]
    assert letters[1]["raw"] == "42"
    raw = orjson.loads(letters[0]["raw"])
    assert raw["event"] == "X" and ISO_MS.fullmatch(raw["receivedAt"]) and raw["messageId"]


def test_all_invalid_batch_writes_only_dead_letters(redis_url, r):
    status, reply, _ = one(config(redis_url), "/v1/batch", {"batch": [{"event": "X"}, "text"]})
    assert status == 400
    assert (reply["accepted"], reply["rejected"]) == (0, 2)
    assert stream_keys(r) == []
    assert [d["reason"] for d in dlq(r)] == ["missing_contact", "not_object"]


def test_dead_letter_raw_is_truncated_to_8_kib(redis_url, r):
    big = {"type": "track", "event": "X", "timestamp": TS, "properties": {"blob": "x" * 40_000}}  # no contact, 40 KB
    status, reply, _ = one(config(redis_url), "/v1/track", big)
    assert status == 400 and reply["rejected"] == 1
    [letter] = dlq(r)
    assert letter["reason"] == "oversize"
    assert len(letter["raw"]) == 8192


def test_an_event_too_deep_to_re_encode_is_dead_lettered_not_fatal(redis_url, r):
    deep: Any = 1
    for _ in range(300):  # orjson reads 1024 levels but writes only 254
        deep = {"a": deep}
    body = {"batch": [track("u-1", properties=deep), track("u-2")]}
    status, reply, _ = one(config(redis_url), "/v1/batch", data=json.dumps(body).encode())
    assert status == 400 and (reply["accepted"], reply["rejected"]) == (1, 1)
    [letter] = dlq(r)
    assert letter["reason"] == "too_deep" and letter["detail"].startswith("nested deeper than 32 levels (cannot be encoded")
    assert [e["userId"] for events in all_events(r).values() for e in events] == ["u-2"]


def test_one_contacts_events_keep_their_order_in_its_shard_stream_across_requests(redis_url, r):
    async def scenario(client: TestClient) -> None:
        seq = 0
        for request in range(5):
            batch = []
            for k in range(20):
                contact = "u-7" if k % 3 == 0 else f"u-{request}-{k}"
                batch.append(track(contact, properties={"seq": seq}))
                seq += 1
            status, reply, _ = await post(client, "/v1/batch", {"batch": batch})
            assert (status, reply) == (200, {"success": True})

    serve(config(redis_url), scenario)
    shard = shard_of("u-7", SHARDS)
    mine = [e["properties"]["seq"] for e in all_events(r)[shard] if e["userId"] == "u-7"]
    assert mine == [request * 20 + k for request in range(5) for k in range(0, 20, 3)]
    # Each request added exactly one entry to this shard.
    assert len(entries(r, shard)) == 5


def test_empty_batch_is_accepted_and_writes_nothing(redis_url, r):
    assert one(config(redis_url), "/v1/batch", {"batch": []})[:2] == (200, {"success": True})
    assert stream_keys(r) == [] and dlq(r) == []


@pytest.mark.parametrize("data,error", [
    (b"{not json", "body is not valid JSON: "),
    (b"[1, 2]", "body must be a JSON object"),
    (b'"text"', "body must be a JSON object"),
])
def test_malformed_bodies_are_400_and_write_nothing(redis_url, r, data, error):
    status, reply, _ = one(config(redis_url), "/v1/track", data=data)
    assert status == 400 and reply["success"] is False and reply["error"].startswith(error)
    assert set(reply) == {"success", "error"}
    assert r.keys("hl:*") in ([], [b"hl:config"])


@pytest.mark.parametrize("body,error", [
    ({"events": []}, "field 'batch' must be a list of events"),
    ({"batch": {"a": 1}}, "field 'batch' must be a list of events"),
    ({"batch": [track("u-1")] * 4}, "batch of 4 events is over the limit of 3"),
])
def test_bad_batches_are_400_and_write_nothing(redis_url, r, body, error):
    status, reply, _ = one(config(redis_url, max_batch_events=3), "/v1/batch", body)
    assert (status, reply) == (400, {"success": False, "error": error})
    assert stream_keys(r) == [] and dlq(r) == []


# --- authentication ---------------------------------------------------------------------------------------


def test_auth(redis_url, r, caplog):
    caplog.set_level(logging.DEBUG)

    async def scenario(client: TestClient) -> list[tuple[int, dict[str, Any]]]:
        results = []
        for headers, body in [
            ({}, track("u-1")),  # no key
            (basic("wrong-key"), track("u-1")),
            ({"Authorization": "Bearer " + KEY}, track("u-1")),
            ({"Authorization": "Basic not-base64!"}, track("u-1")),
            (basic(KEY[:-1]), track("u-1")),  # a prefix of a key
            ({}, {**track("u-1"), "writeKey": "wrong-key"}),
            ({}, {**track("u-1"), "writeKey": 12}),
            ({}, b"{broken"),
            (basic(KEY), track("u-1", properties={"ok": 1})),
            (basic(KEY, "ignored-password"), track("u-1", properties={"ok": 2})),
            (basic(OTHER_KEY), track("u-1", properties={"ok": 3})),
            ({}, {**track("u-1", properties={"ok": 4}), "writeKey": KEY}),
            ({}, {"batch": [track("u-1", properties={"ok": 5})], "writeKey": OTHER_KEY}),
        ]:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            path = "/v1/batch" if isinstance(body, dict) and "batch" in body else "/v1/track"
            status, reply, _ = await post(client, path, headers=headers, data=data)
            results.append((status, reply))
        return results

    results = serve(config(redis_url), scenario)
    unauthorized = (401, {"success": False, "error": "missing or invalid write key"})
    assert results[:8] == [unauthorized] * 8
    assert results[8:] == [(200, {"success": True})] * 5
    events = all_events(r)[shard_of("u-1", SHARDS)]
    assert [e["properties"]["ok"] for e in events] == [1, 2, 3, 4, 5]
    assert all("writeKey" not in e for e in events)  # the secret is never stored
    assert dlq(r) == []
    assert KEY not in caplog.text and OTHER_KEY not in caplog.text


def test_insecure_no_auth_accepts_without_a_key_and_still_strips_write_keys(redis_url, r):
    cfg = CollectorConfig(redis_url=redis_url, write_keys=(), shards=SHARDS, insecure_no_auth=True)
    status, reply, _ = one(cfg, "/v1/track", {**track("u-1"), "writeKey": "whatever"}, headers={})
    assert (status, reply) == (200, {"success": True})
    [(_, [event])] = entries(r, shard_of("u-1", SHARDS))
    assert "writeKey" not in event


def test_config_requires_a_write_key_unless_insecure():
    with pytest.raises(ValueError, match="no write key"):
        CollectorConfig(redis_url="redis://127.0.0.1:1/0", write_keys=())
    with pytest.raises(ValueError, match="write key must be"):
        CollectorConfig(redis_url="redis://127.0.0.1:1/0", write_keys=("a:b",))


# --- size limits and compression -------------------------------------------------------------------------


def test_body_over_the_limit_is_413_by_content_length(redis_url, r):
    body = {"batch": [track("u-1", properties={"pad": "x" * 500}) for _ in range(4)]}
    status, reply, _ = one(config(redis_url, max_body_bytes=1000), "/v1/batch", body)
    assert (status, reply) == (413, {"success": False, "error": f"body of {len(orjson.dumps(body))} bytes is over the "
                                                                "limit of 1000 bytes"})
    assert stream_keys(r) == []


def test_chunked_body_over_the_limit_is_413_while_reading(redis_url, r):
    body = orjson.dumps({"batch": [track("u-1", properties={"pad": "x" * 500}) for _ in range(4)]})

    async def chunks():
        for i in range(0, len(body), 300):
            yield body[i:i + 300]

    async def scenario(client: TestClient) -> tuple[int, dict[str, Any]]:
        async with client.post("/v1/batch", data=chunks(), headers=basic()) as resp:
            assert "Content-Length" not in resp.request_info.headers
            return resp.status, orjson.loads(await resp.read())

    assert serve(config(redis_url, max_body_bytes=1000), scenario) == (
        413, {"success": False, "error": "body is over the limit of 1000 bytes"})
    assert stream_keys(r) == []


def test_a_body_that_trickles_in_is_408_and_writes_nothing(redis_url, r):
    body = orjson.dumps({"batch": [track("u-1")]})

    async def trickle():
        yield body[:10]
        await asyncio.sleep(3)  # the rest would come after the collector gave up
        yield body[10:]

    async def scenario(client: TestClient) -> tuple[int, dict[str, Any], float]:
        started = time.monotonic()
        async with client.post("/v1/batch", data=trickle(), headers=basic()) as resp:
            return resp.status, orjson.loads(await resp.read()), time.monotonic() - started

    status, reply, took = serve(config(redis_url, body_timeout_s=0.5), scenario)
    assert (status, reply) == (408, {"success": False, "error": "the body did not arrive within 0.5 s"})
    assert took < 2.5
    assert stream_keys(r) == []


def test_gzip_body_is_accepted(redis_url, r):
    body = {"batch": [track("u-1", properties={"i": i}) for i in range(50)]}
    status, reply, _ = one(config(redis_url), "/v1/batch", data=gzip.compress(orjson.dumps(body)),
                           headers={**basic(), "Content-Encoding": "gzip"})
    assert (status, reply) == (200, {"success": True})
    assert [e["properties"]["i"] for e in all_events(r)[shard_of("u-1", SHARDS)]] == list(range(50))


def test_multi_member_gzip_and_deflate_bodies_are_accepted(redis_url, r):
    raw = orjson.dumps(track("u-1", properties={"i": 1}))
    two_members = gzip.compress(raw[:10]) + gzip.compress(raw[10:])
    assert one(config(redis_url), "/v1/track", data=two_members, headers={**basic(), "Content-Encoding": "gzip"})[0] == 200
    deflated = zlib.compress(orjson.dumps(track("u-1", properties={"i": 2})))
    assert one(config(redis_url), "/v1/track", data=deflated, headers={**basic(), "Content-Encoding": "deflate"})[0] == 200
    assert [e["properties"]["i"] for e in all_events(r)[shard_of("u-1", SHARDS)]] == [1, 2]


def test_gzip_bomb_is_413_quickly_and_writes_nothing(redis_url, r):
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    prefix = b'{"batch": [{"userId": "u-1", "event": "X", "timestamp": "' + TS.encode() + b'", "properties": {"pad": "'
    parts = [compressor.compress(prefix)]
    zeros = b"0" * (1 << 20)
    for _ in range(100):  # 100 MiB of padding
        parts.append(compressor.compress(zeros))
    parts.append(compressor.compress(b'"}}]}'))
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 200_000
    started = time.monotonic()
    status, reply, _ = one(config(redis_url), "/v1/batch", data=bomb, headers={**basic(), "Content-Encoding": "gzip"})
    elapsed = time.monotonic() - started
    assert (status, reply) == (413, {"success": False, "error": "decompressed body is over the limit of 4194304 bytes"})
    assert elapsed < 2.0
    assert stream_keys(r) == [] and dlq(r) == []


def test_gzip_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(redis_url, r):
    event = orjson.dumps(track("u-1"))
    limit = len(event) + 10
    exact = event[:-1] + b" " * 10 + b"}"
    assert len(exact) == limit
    cfg = config(redis_url, max_decompressed_bytes=limit)
    hdrs = {**basic(), "Content-Encoding": "gzip"}
    assert one(cfg, "/v1/track", data=gzip.compress(exact), headers=hdrs)[0] == 200
    assert one(cfg, "/v1/track", data=gzip.compress(exact + b" "), headers=hdrs)[0] == 413


@pytest.mark.parametrize("data,encoding,status,error", [
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xff\xff\xff", "gzip", 400,
     "body is not valid gzip: Error -3 while decompressing data: invalid block type"),
    # mtime=0: a parameter must be the same in every pytest-xdist worker, or collection fails.
    (gzip.compress(b'{"userId": "u-1"}', mtime=0)[:-12], "gzip", 400, "truncated compressed body"),
    (b"{}", "br", 415, "unsupported Content-Encoding 'br'; use gzip"),
], ids=["invalid-block", "truncated", "brotli"])
def test_bad_compressed_bodies(redis_url, r, data, encoding, status, error):
    code, reply, _ = one(config(redis_url), "/v1/track", data=data, headers={**basic(), "Content-Encoding": encoding})
    assert code == status and reply["error"].startswith(error)
    assert stream_keys(r) == []


# --- back-pressure and Redis failures ----------------------------------------------------------------------


def test_full_shard_stream_is_503_with_retry_after_and_nothing_written(redis_url, r):
    full = shard_of("u-1", SHARDS)
    other = next(c for c in (f"u-{i}" for i in range(100)) if shard_of(c, SHARDS) != full)
    for _ in range(2):
        r.xadd(f"hl:events:{full}", {"events": b"{}", "n": 1})

    async def scenario(client: TestClient) -> list[tuple[int, dict[str, Any], str | None]]:
        out = []
        for body in [{"batch": [track(other), track("u-1"), {"event": "no contact"}]}, {"batch": [track(other)]}]:
            status, reply, headers = await post(client, "/v1/batch", body)
            out.append((status, reply, headers.get("Retry-After")))
        r.xtrim(f"hl:events:{full}", maxlen=1, approximate=False)  # the engine consumed and trimmed
        status, reply, headers = await post(client, "/v1/batch", {"batch": [track("u-1")]})
        out.append((status, reply, headers.get("Retry-After")))
        return out

    results = serve(config(redis_url, max_stream_length=2), scenario)
    assert results == [
        (503, {"success": False, "error": f"backlog full (hl:events:{full} holds 2 entries), retry later"}, "5"),
        (200, {"success": True}, None),
        (200, {"success": True}, None),
    ]
    assert r.xlen(f"hl:events:{full}") == 2
    assert [e["userId"] for e in all_events(r)[shard_of(other, SHARDS)]] == [other]  # only the second request's
    assert dlq(r) == []  # the refused request's dead letter was not written either


def test_redis_down_is_503_with_retry_after_and_health_503(caplog):
    url = f"redis://:s3cret-pass@127.0.0.1:{free_port()}/0"
    caplog.set_level(logging.DEBUG)

    async def scenario(client: TestClient) -> tuple[Any, ...]:
        status, reply, headers = await post(client, "/v1/track", track("u-1"))
        async with client.get("/health") as resp:
            health = (resp.status, orjson.loads(await resp.read()))
        empty = await post(client, "/v1/batch", {"batch": []})
        return status, reply, headers.get("Retry-After"), health, empty[:2]

    status, reply, retry_after, health, empty = serve(config(url, redis_timeout_s=1.0), scenario)
    assert (status, reply, retry_after) == (503, {"success": False, "error": "event store unavailable, retry later"}, "1")
    assert health == (503, {"status": "unavailable", "error": "redis does not answer"})
    assert empty == (200, {"success": True})  # nothing to store, nothing lost
    assert "s3cret-pass" not in caplog.text and KEY not in caplog.text
    assert ":***@127.0.0.1" in caplog.text


def test_collector_reconnects_when_redis_comes_back(tmp_path):
    server = RedisServer(str(tmp_path))
    server.start()
    try:
        async def scenario(client: TestClient) -> list[int]:
            codes = [(await post(client, "/v1/track", track("u-1")))[0]]
            server.stop()
            codes.append((await post(client, "/v1/track", track("u-1")))[0])
            async with client.get("/health") as resp:
                codes.append(resp.status)
            server.start()
            codes.append((await post(client, "/v1/track", track("u-1", properties={"after": True})))[0])
            async with client.get("/health") as resp:
                codes.append(resp.status)
            return codes

        assert serve(config(server.url), scenario) == [200, 503, 503, 200, 200]
        client = redis.Redis.from_url(server.url)
        [(_, [event])] = entries(client, shard_of("u-1", SHARDS))  # the restarted server kept no data
        assert event["properties"] == {"after": True}
        client.close()
    finally:
        server.stop()


def test_health_ok(redis_url):
    async def scenario(client: TestClient) -> tuple[int, Any]:
        async with client.get("/health") as resp:
            return resp.status, orjson.loads(await resp.read())

    assert serve(config(redis_url), scenario) == (200, {"status": "ok"})


# --- shard-count agreement ---------------------------------------------------------------------------------


def test_shard_count_is_recorded_at_startup(redis_url, r):
    async def scenario(client: TestClient) -> Any:
        return r.hget("hl:config", "shards")

    assert serve(config(redis_url), scenario) == b"8"


def test_shard_count_mismatch_is_refused_with_500(redis_url, r, caplog):
    r.hset("hl:config", "shards", 16)
    status, reply, _ = one(config(redis_url), "/v1/batch", {"batch": [track("u-1"), {"event": "bad"}]})
    assert (status, reply) == (500, {"success": False, "error": "shard count mismatch: the event store is configured for "
                                                                "16 shards, this collector for 8"})
    assert stream_keys(r) == [] and dlq(r) == []
    assert r.hget("hl:config", "shards") == b"16"
    assert "hl:config says shards=16" in caplog.text


def test_custom_prefix(redis_url, r):
    status, _, _ = one(config(redis_url, prefix="t1:"), "/v1/batch", {"batch": [track("u-1"), {"event": "bad"}]})
    assert status == 400
    assert r.hget("t1:config", "shards") == b"8"
    assert [e["userId"] for e in all_events(r, "t1:")[shard_of("u-1", SHARDS)]] == ["u-1"]
    assert r.xlen("t1:dlq") == 1 and not r.exists("hl:dlq") and not r.exists("hl:config")


# --- metrics -----------------------------------------------------------------------------------------------


def test_metrics(redis_url):
    bodies = [
        {"batch": [track("u-1"), track("u-2"), {"event": "X"}, track("u-3", timestamp="bad")]},
        {"batch": [track("u-1")]},
    ]

    async def scenario(client: TestClient) -> str:
        for body in bodies:
            await post(client, "/v1/batch", body)
        await post(client, "/v1/track", track("u-9"), headers={})
        async with client.get("/health"):
            pass
        async with client.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            return await resp.text()

    text = serve(config(redis_url), scenario)
    sent = sum(len(orjson.dumps(b)) for b in bodies) + len(orjson.dumps(track("u-9")))
    for line in [
        'halflife_collector_requests_total{route="/v1/batch",status="400"} 1.0',
        'halflife_collector_requests_total{route="/v1/batch",status="200"} 1.0',
        'halflife_collector_requests_total{route="/v1/track",status="401"} 1.0',
        'halflife_collector_requests_total{route="/health",status="200"} 1.0',
        'halflife_collector_request_duration_seconds_count{route="/v1/batch"} 2.0',
        'halflife_collector_request_duration_seconds_count{route="/v1/track"} 1.0',
        'halflife_collector_events_accepted_total 3.0',
        'halflife_collector_events_rejected_total{reason="missing_contact"} 1.0',
        'halflife_collector_events_rejected_total{reason="bad_timestamp"} 1.0',
        'halflife_collector_events_rejected_total{reason="not_json"} 0.0',
        f'halflife_collector_bytes_received_total {float(sent)}',
    ]:
        assert line in text.splitlines(), line
    assert '# TYPE halflife_collector_request_duration_seconds histogram' in text


# --- command line ------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="halflife collect")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_and_environment(monkeypatch, tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# keys\nk-file-1\n\n  k-file-2  \n")
    cfg = config_from_args(_parse(["--redis", "redis://h:1/0", "--write-key", "k1", "--write-key", "k2",
                                   "--write-keys-file", str(keys_file), "--shards", "16", "--port", "9000"]))
    assert cfg.write_keys == ("k1", "k2", "k-file-1", "k-file-2")
    assert (cfg.redis_url, cfg.shards, cfg.port, cfg.host, cfg.prefix) == ("redis://h:1/0", 16, 9000, "127.0.0.1", "hl:")

    monkeypatch.setenv("HALFLIFE_REDIS", "redis://:env-secret@h:2/0")
    monkeypatch.setenv("HALFLIFE_WRITE_KEYS", "env-key-1, env-key-2")
    monkeypatch.setenv("HALFLIFE_SHARDS", "32")
    monkeypatch.setenv("HALFLIFE_MAX_STREAM_LENGTH", "500")
    cfg = config_from_args(_parse([]))
    assert (cfg.redis_url, cfg.write_keys, cfg.shards, cfg.max_stream_length) == (
        "redis://:env-secret@h:2/0", ("env-key-1", "env-key-2"), 32, 500)
    # Flags beat the environment.
    assert config_from_args(_parse(["--write-key", "flag-key", "--shards", "4"])).write_keys == ("flag-key",)

    parser = argparse.ArgumentParser(prog="halflife collect")
    add_arguments(parser)
    text = parser.format_help()
    assert "env-secret" not in text and "env-key-1" not in text
    assert "HALFLIFE_WRITE_KEYS" in text and "HALFLIFE_REDIS" in text and "HALFLIFE_SHARDS" in text


def test_main_exits_2_on_bad_configuration(monkeypatch, capsys):
    monkeypatch.delenv("HALFLIFE_WRITE_KEYS", raising=False)
    assert main(_parse(["--redis", "redis://127.0.0.1:1/0"])) == 2
    assert "no write key" in capsys.readouterr().err
    monkeypatch.setenv("HALFLIFE_INSECURE_NO_AUTH", "maybe")
    assert main(_parse(["--redis", "redis://127.0.0.1:1/0", "--write-key", "k"])) == 2
    monkeypatch.delenv("HALFLIFE_INSECURE_NO_AUTH")
    assert main(_parse(["--redis", "nosuch://x", "--write-key", "k"])) == 2


def test_main_refuses_a_shard_count_mismatch_at_startup(redis_url, r, capsys):
    r.hset("hl:config", "shards", 16)
    assert main(_parse(["--redis", redis_url, "--write-key", KEY, "--shards", "8", "--port", "0"])) == 2
    err = capsys.readouterr().err
    assert "hl:config says shards=16 but --shards is 8" in err and KEY not in err


def test_cors_preflight(redis_url):
    async def scenario(client: TestClient) -> tuple[int, str]:
        async with client.options("/v1/batch", headers={"Origin": "https://shop.example",
                                                         "Access-Control-Request-Method": "POST"}) as resp:
            return resp.status, resp.headers["Access-Control-Allow-Headers"]

    assert serve(config(redis_url), scenario) == (204, "Authorization, Content-Type, Content-Encoding")


_RUN_MAIN = (
    "import argparse, sys\n"
    "from engine.collector import add_arguments, main\n"
    "parser = argparse.ArgumentParser(prog='halflife collect')\n"
    "add_arguments(parser)\n"
    "sys.exit(main(parser.parse_args(sys.argv[1:])))\n"
)


def test_main_serves_until_sigterm_and_never_logs_the_key(redis_url, r):
    port = free_port()
    env = {**os.environ, "HALFLIFE_WRITE_KEYS": KEY, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-c", _RUN_MAIN, "--redis", redis_url, "--port", str(port), "--shards",
                                str(SHARDS), "--log-level", "DEBUG", "--access-log"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        async def scenario() -> tuple[int, int, int]:
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 20
                while True:
                    try:
                        async with session.get(url + "/health") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert process.poll() is None and time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                async with session.post(url + "/v1/batch", data=orjson.dumps({"batch": [track("u-1")]}),
                                        headers=basic()) as resp:
                    ok = resp.status
                async with session.post(url + "/v1/track", data=orjson.dumps(track("u-1")), headers=basic("nope")) as resp:
                    denied = resp.status
                bomb = gzip.compress(b" " * (5 << 20))
                async with session.post(url + "/v1/track", data=bomb, headers={**basic(), "Content-Encoding": "gzip"}) as resp:
                    too_big = resp.status
                return ok, denied, too_big

        assert asyncio.run(scenario()) == (200, 401, 413)
    finally:
        code, logs = stop_process(process)
    assert code == 0
    assert "halflife collect listening on http://127.0.0.1:" in logs and '"POST /v1/batch HTTP/1.1" 200' in logs
    assert KEY not in logs and base64.b64encode(f"{KEY}:".encode()).decode() not in logs
    assert [e["userId"] for e in all_events(r)[shard_of("u-1", SHARDS)]] == ["u-1"]


def test_write_script_is_reloaded_after_a_script_flush(redis_url, r):
    async def scenario(client: TestClient) -> list[int]:
        codes = [(await post(client, "/v1/track", track("u-1", properties={"i": 1})))[0]]
        r.script_flush()  # e.g. a Redis restart or failover
        codes.append((await post(client, "/v1/track", track("u-1", properties={"i": 2})))[0])
        return codes

    assert serve(config(redis_url), scenario) == [200, 200]
    assert [e["properties"]["i"] for e in all_events(r)[shard_of("u-1", SHARDS)]] == [1, 2]


def test_a_redis_that_does_not_answer_is_503_within_the_timeout():
    async def run() -> tuple[int, dict[str, Any], str | None, float]:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 20)  # accept, read, never answer

        hung = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = hung.sockets[0].getsockname()[1]
        server = TestServer(build_app(config(f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.3)))
        await server.start_server(auto_decompress=False)
        client = TestClient(server)
        await client.start_server()
        try:
            started = time.monotonic()
            status, reply, headers = await post(client, "/v1/track", track("u-1"))
            return status, reply, headers.get("Retry-After"), time.monotonic() - started
        finally:
            await client.close()
            hung.close()

    status, reply, retry_after, elapsed = asyncio.run(run())
    assert (status, reply, retry_after) == (503, {"success": False, "error": "event store unavailable, retry later"}, "1")
    assert elapsed < 1.5


def test_malformed_http_is_logged_as_one_line_per_interval_without_traceback():
    from aiohttp.http_exceptions import BadHttpMessage

    from engine.collector import MalformedHttpLog

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            return logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s",
                                     ("127.0.0.1",), sys.exc_info())

    quiet = MalformedHttpLog(every_s=3600)
    first = record(BadHttpMessage("Invalid character in chunk size:\n\n  b'zz'\n    ^"))
    assert quiet.filter(first)
    assert (first.levelname, first.exc_info, first.getMessage()) == (
        "WARNING", None, "1 malformed HTTP request(s) refused with 400 in the last 3600 s "
                         "(latest: Invalid character in chunk size:)")
    assert [quiet.filter(record(BadHttpMessage("Invalid method"))) for _ in range(5)] == [False] * 5
    other = record(ValueError("a bug"))
    assert quiet.filter(other) and other.exc_info is not None and other.levelname == "ERROR"
    quiet.last -= 3600  # the interval has passed: the next one reports the 5 held back and itself
    again = record(BadHttpMessage("Invalid method"))
    assert quiet.filter(again)
    assert again.getMessage().startswith("6 malformed HTTP request(s) refused with 400")
