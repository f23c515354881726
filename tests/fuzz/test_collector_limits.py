"""The collector's per-event limits: nesting depth (`too_deep`) and string length (`string_too_long`).

A request with events over a limit answers 400 naming the reason, dead-letters those events (Redis
`hl:dlq`, reason and raw) and still writes the valid ones; the limits are configurable by flag and
environment, with safe defaults, and can never exceed the engine's own depth limit.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from hostile import Served, http_request, nested

from engine.collector import CollectorConfig, add_arguments, config_from_args, main
from engine.decode import MAX_DEPTH

KEY = "limits-key-4242"
TS = "2026-11-23T14:00:00.000Z"


@pytest.fixture
def served(redis_url: str) -> Iterator[Served]:
    server = Served(CollectorConfig(redis_url=redis_url, write_keys=(KEY,), shards=2, max_depth=8,
                                    max_string_bytes=100)).start()
    try:
        yield server
    finally:
        server.stop()


def post(served: Served, body: bytes, route: str = "batch") -> tuple[int, dict[str, Any]]:
    auth = [(b"Authorization", b"Basic " + base64.b64encode(KEY.encode() + b":"))]
    status, _, payload = http_request(served.port, "POST", f"/v1/{route}", auth, body)
    return status, orjson.loads(payload)


def event(contact: str, props: bytes = b"{}") -> bytes:
    return b'{"userId":"%b","event":"E","timestamp":"%b","properties":%b}' % (contact.encode(), TS.encode(), props)


def stored(url: str) -> tuple[list[str], list[dict[str, str]]]:
    client = redis.Redis.from_url(url)
    try:
        contacts = [orjson.loads(line)["userId"] for key in sorted(client.scan_iter("hl:events:*"))
                    for _, fields in client.xrange(key) for line in fields[b"events"].split(b"\n")]
        dead = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in client.xrange("hl:dlq")]
        return sorted(contacts), dead
    finally:
        client.close()


def test_too_deep_events_are_dead_lettered_and_the_rest_accepted(served: Served, redis_url: str) -> None:
    # The event object is level 1, `properties` level 2 (7 levels of objects: 8 in all, the limit).
    at_limit = event("u-ok", nested(7, b"1", "{"))
    over = event("u-deep", b'{"a":' + nested(7, b"1", "[") + b"}")  # 9 levels
    far_over = event("u-far", nested(300, b"1", "{"))  # more than orjson writes: refused without re-encoding
    status, reply = post(served, b'{"batch":[' + b",".join([at_limit, over, far_over, event("u-2")]) + b"]}")
    assert status == 400
    assert reply["accepted"] == 2 and reply["rejected"] == 2
    assert "too_deep: 2" in reply["error"] and "nested deeper than 8 levels" in reply["error"]
    contacts, dead = stored(redis_url)
    assert contacts == ["u-2", "u-ok"]
    assert [d["reason"] for d in dead] == ["too_deep", "too_deep"]
    assert orjson.loads(dead[0]["raw"])["userId"] == "u-deep"


def test_long_strings_are_dead_lettered_and_the_rest_accepted(served: Served, redis_url: str) -> None:
    exactly = event("u-ok", orjson.dumps({"s": "é" * 50}))  # 100 UTF-8 bytes: at the limit
    value = event("u-value", orjson.dumps({"s": "é" * 50 + "x"}))  # 101 bytes
    key = event("u-key", orjson.dumps({"k" * 101: 1}))  # keys count too
    name = b'{"userId":"u-name","event":"' + b"E" * 101 + b'","timestamp":"' + TS.encode() + b'"}'
    escaped = event("u-escaped", b'{"s":"' + b"\\u00e9" * 50 + b'"}')  # 300 bytes of JSON, 100 bytes of text
    status, reply = post(served, b'{"batch":[' + b",".join([exactly, value, key, name, escaped]) + b"]}")
    assert status == 400 and (reply["accepted"], reply["rejected"]) == (2, 3)
    assert "string_too_long: 3" in reply["error"] and "over the limit of 100 bytes" in reply["error"]
    contacts, dead = stored(redis_url)
    assert contacts == ["u-escaped", "u-ok"]
    assert [d["reason"] for d in dead] == ["string_too_long"] * 3


def test_a_single_event_route_over_a_limit_is_400(served: Served, redis_url: str) -> None:
    status, reply = post(served, event("u-1", orjson.dumps({"s": "x" * 101})), route="track")
    assert status == 400 and (reply["accepted"], reply["rejected"]) == (0, 1)
    assert stored(redis_url) == ([], [stored(redis_url)[1][0]]) and stored(redis_url)[1][0]["reason"] == "string_too_long"


def test_limits_are_counted_in_the_metrics(served: Served) -> None:
    post(served, b'{"batch":[' + event("u", nested(20)) + b"," + event("v", orjson.dumps({"s": "x" * 200})) + b"]}")
    _, _, metrics = http_request(served.port, "GET", "/metrics", [], b"")
    assert b'halflife_collector_events_rejected_total{reason="too_deep"} 1.0' in metrics
    assert b'halflife_collector_events_rejected_total{reason="string_too_long"} 1.0' in metrics


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--redis", "redis://127.0.0.1:1/0", *argv])


def test_defaults_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = CollectorConfig(redis_url="redis://x/0", write_keys=("k",))
    assert (defaults.max_depth, defaults.max_string_bytes) == (32, 8192)
    args = _parse(["--write-key", "k"])
    assert (args.max_depth, args.max_string_bytes) == (32, 8192)
    cfg = config_from_args(_parse(["--write-key", "k", "--max-depth", "5", "--max-string-bytes", "1000"]))
    assert (cfg.max_depth, cfg.max_string_bytes) == (5, 1000)
    monkeypatch.setenv("HALFLIFE_MAX_DEPTH", "7")
    monkeypatch.setenv("HALFLIFE_MAX_STRING_BYTES", "777")
    cfg = config_from_args(_parse(["--write-key", "k"]))
    assert (cfg.max_depth, cfg.max_string_bytes) == (7, 777)


@pytest.mark.parametrize("overrides,message", [
    ({"max_depth": MAX_DEPTH + 1}, f"max_depth must be <= {MAX_DEPTH}"),
    ({"max_depth": 0}, "max_depth must be >= 1"),
    ({"max_string_bytes": 0}, "max_string_bytes must be >= 1"),
])
def test_limits_are_validated(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CollectorConfig(redis_url="redis://x/0", write_keys=("k",), **overrides)


def test_main_refuses_a_depth_over_the_engines(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["--write-key", "k", "--max-depth", str(MAX_DEPTH + 1), "--log-level", "ERROR"])
    assert main(args) == 2
    assert f"max_depth must be <= {MAX_DEPTH}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _parse(["--max-string-bytes", "-1"])
