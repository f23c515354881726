"""Hostile requests to the collector (SPEC §7) served for real (aiohttp on 127.0.0.1, a real redis-server).

Every well-formed HTTP request to a /v1 route gets one of 200/400/401/413/415/503 with a JSON object
body -- never 500 (its one documented use is a shard-count mismatch between collector and event store,
which needs a misconfiguration, not a request) -- and the server stays up. Nothing accepted is lost:
the events the answers report as accepted are exactly the events in the shard streams, and the
rejected ones exactly the dead letters. Requests are written byte by byte on a socket, so headers,
encodings and framing can be anything HTTP/1.1 allows.

Malformed HTTP itself (bad header syntax, header lines over 8 KiB, broken chunk framing) is answered by
aiohttp's own parser (400, text/plain) before the collector sees it; `test_malformed_http_is_refused_
by_aiohttp_and_the_server_stays_up` checks that it never reaches a handler or stops the server.
"""

from __future__ import annotations

import base64
import gzip
import threading
import zlib
from functools import cache
from typing import Any

import orjson
import pytest
import redis
from hostile import COLLECTOR_KEY, Served, event_line, fuzz, hostile_value, http_request, json_values, nested
from hypothesis import event, given
from hypothesis import strategies as st

ALLOWED = {200, 400, 401, 413, 415, 503}
ROUTES = ["track", "page", "identify", "screen", "group", "alias", "batch"]
TS = "2026-11-23T14:00:00.000Z"


class Ledger:
    """What the answers said was accepted and rejected, to compare with Redis at the end."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.rejected = 0


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def _auth(kind: str) -> list[tuple[bytes, bytes]]:
    key = COLLECTOR_KEY.encode()
    return {
        "valid": [(b"Authorization", b"Basic " + base64.b64encode(key + b":"))],
        "valid-password": [(b"Authorization", b"Basic " + base64.b64encode(key + b":secret:with:colons"))],
        "lowercase-scheme": [(b"authorization", b"basic " + base64.b64encode(key + b":"))],
        "wrong": [(b"Authorization", b"Basic " + base64.b64encode(b"nope:"))],
        "prefix": [(b"Authorization", b"Basic " + base64.b64encode(key[:-1] + b":"))],
        "bearer": [(b"Authorization", b"Bearer " + key)],
        "garbage": [(b"Authorization", b"Basic %%%not-base64")],
        "non-ascii": [(b"Authorization", b"Basic \xc3\xa9\xff")],
        "empty": [(b"Authorization", b"")],
        "twice": [(b"Authorization", b"Basic " + base64.b64encode(b"nope:")),
                  (b"Authorization", b"Basic " + base64.b64encode(key + b":"))],
        "none": [],
    }[kind]


_TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~", min_size=1, max_size=20)
_VALUE = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)).map(bytes.strip)
random_headers = st.lists(st.tuples(_TOKEN.map(str.encode), _VALUE), max_size=5).map(
    lambda hs: [(n, v) for n, v in hs if n.lower() not in (b"content-length", b"transfer-encoding", b"connection",
                                                          b"host", b"expect", b"upgrade")])
_GOOD = st.sampled_from([b"gzip", b"x-gzip", b"GZIP", b" gzip ", b"deflate", b"identity"])
_BAD = st.sampled_from([b"br", b"zstd", b"gzip, deflate", b"gzip, gzip", b"compress", b"*", b"", b"\xc3\xa9"])
encodings = st.one_of(st.none(), st.none(), _GOOD, _GOOD, _BAD)


@cache
def bombs() -> dict[str, bytes]:
    """Compressed bodies far over the decompressed limit (built once: ~100 MiB of zeros)."""
    out = {}
    for name, wbits, size in [("gzip-100MiB", 16 + zlib.MAX_WBITS, 100 << 20), ("deflate-16MiB", zlib.MAX_WBITS, 16 << 20)]:
        c = zlib.compressobj(9, zlib.DEFLATED, wbits)
        parts = [c.compress(b'{"batch":[{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'","p":"')]
        zeros = b"0" * (1 << 20)
        parts += [c.compress(zeros) for _ in range(size >> 20)]
        parts += [c.compress(b'"}]}'), c.flush()]
        out[name] = b"".join(parts)
    member = gzip.compress(b" " * (200 * 1024))
    out["gzip-many-members"] = member * 10  # each member under the limit, together over it
    out["gzip-of-gzip"] = gzip.compress(gzip.compress(b'{"userId":"u","event":"E"}'))
    out["gzip-trailing-garbage"] = gzip.compress(b'{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'"}') + b"junk"
    return out


def _valid_event(i: int) -> dict[str, Any]:
    return {"type": "track", "event": "Product Viewed", "userId": f"u-{i % 7}", "timestamp": TS}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """(how to encode, body): the body before any Content-Encoding is applied."""
    # Half of the bodies are valid events (so that the valid path meets every hostile header and encoding).
    kind = draw(st.one_of(st.just(11), st.integers(0, 10)))
    if kind == 0:
        return "raw", draw(st.binary(max_size=300))
    if kind == 1:
        return "raw", orjson.dumps(draw(json_values))
    if kind == 2:
        return "raw", draw(hostile_value())
    if kind == 3:
        return "raw", draw(event_line())
    if kind == 4:  # a batch of event-like lines, some hostile
        lines = draw(st.lists(st.one_of(event_line(), hostile_value(), st.just(orjson.dumps(_valid_event(0)))),
                              max_size=8))
        return "raw", b'{"batch":[' + b",".join(lines) + b"]" + draw(st.sampled_from([b"}", b',"writeKey":1}', b""]))
    if kind == 5:  # a huge batch: at, over and far over max_batch_events (64)
        n = draw(st.sampled_from([64, 65, 1000]))
        return "raw", orjson.dumps({"batch": [_valid_event(i) for i in range(n)]})
    if kind == 6:  # huge strings: over max_string_bytes (2 KiB), over the line limit (32 KiB), over the body limit
        size = draw(st.sampled_from([2048, 2049, 40_000, 70_000]))
        event = {**_valid_event(1), "properties": {"blob": "é" * (size // 2)}}
        return "raw", orjson.dumps({"batch": [event, _valid_event(2)]})
    if kind == 7:  # deep nesting: at/over max_depth (16), over the engine's 64, over what orjson writes, parses
        levels = draw(st.sampled_from([14, 15, 16, 63, 64, 300, 1020, 5000]))
        deep = b'{"batch":[{"userId":"u","event":"E","timestamp":"' + TS.encode() + b'","properties":'
        return "raw", deep + nested(levels, b"1", draw(st.sampled_from("[{"))).replace(b"[", b'{"a":[', 1) + b"}}]}"
    if kind == 8:
        return "bomb", draw(st.sampled_from(sorted(bombs()))).encode()
    if kind == 9:  # writeKey in the body (Segment's other way to authenticate)
        key = draw(st.sampled_from([COLLECTOR_KEY, "nope", ""]))
        return "raw", orjson.dumps({**_valid_event(3), "writeKey": key if draw(st.booleans()) else 12})
    if kind == 10:  # over the body limit (64 KiB) as sent
        return "raw", b'{"batch":[' + b" " * (65 * 1024) + b"]}"
    events = draw(st.lists(st.builds(_valid_event, st.integers(0, 50)), min_size=1, max_size=5))
    return "valid", orjson.dumps(events)  # shaped for the route by the test


def _encode(body: bytes, encoding: bytes | None, compress: bool) -> bytes:
    if not compress or encoding is None:
        return body
    name = encoding.strip().lower()
    if name in (b"gzip", b"x-gzip"):
        return gzip.compress(body)
    if name == b"deflate":
        return zlib.compress(body)
    return body


def _send(served: Served, ledger: Ledger, route: str, headers: list[tuple[bytes, bytes]], body: bytes,
          chunked: bool) -> tuple[int, dict[str, Any]]:
    status, out_headers, payload = http_request(served.port, "POST", f"/v1/{route}", headers, body, chunked=chunked)
    assert status in ALLOWED, (status, payload[:300])
    assert out_headers.get("content-type", "").startswith("application/json"), out_headers
    reply = orjson.loads(payload)
    assert type(reply) is dict and type(reply.get("success")) is bool
    if status == 200:
        assert reply == {"success": True}
    else:
        assert reply["success"] is False and isinstance(reply["error"], str) and reply["error"]
        assert COLLECTOR_KEY not in reply["error"]
    return status, reply


@fuzz()
@given(route=st.sampled_from(ROUTES), auth=st.just("valid") | st.sampled_from(["valid-password",
                                                           "lowercase-scheme", "wrong", "prefix", "bearer", "garbage",
                                                           "non-ascii", "empty", "twice", "none"]),
       extra=random_headers, encoding=encodings, compress=st.integers(0, 4).map(bool), chunked=st.booleans(),
       body=bodies())
def test_hostile_requests_get_a_json_answer_and_lose_nothing(collector: Served, ledger: Ledger, route: str, auth: str,
                                                             extra: list[tuple[bytes, bytes]], encoding: bytes | None,
                                                             compress: bool, chunked: bool,
                                                             body: tuple[str, bytes]) -> None:
    how, raw = body
    if how == "valid":
        events = orjson.loads(raw)
        raw = orjson.dumps({"batch": events} if route == "batch" else events[0])
    if how == "bomb":
        name = raw.decode()
        data = bombs()[name]
        encoding = b"deflate" if name.startswith("deflate") else b"gzip"
    else:
        data = _encode(raw, encoding, compress)
    headers = _auth(auth) + extra
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    status, reply = _send(collector, ledger, route, headers, data, chunked)
    event(f"status {status}")
    if how == "bomb":
        event(f"{name}: {status}")
    if auth in ("wrong", "prefix", "bearer", "garbage", "non-ascii", "empty", "none") and b"writeKey" not in raw:
        # Never accepted without a key. (The body is read, decompressed and parsed before the key is checked,
        # because Segment's `writeKey` may be in it: an unauthenticated body can still get 400/413/415.)
        assert status in (400, 401, 413, 415) and "accepted" not in reply, reply
    if how == "bomb" and name != "gzip-of-gzip" and name != "gzip-trailing-garbage":
        assert status in (401, 413), reply
    with ledger.lock:
        if status == 200:
            parsed = orjson.loads(zlib.decompress(data, 47) if encoding and data[:2] == b"\x1f\x8b" else
                                  zlib.decompress(data) if encoding and encoding.strip().lower() == b"deflate"
                                  else data) if data else None
            ledger.accepted += len(parsed["batch"]) if route == "batch" else 1
        elif status == 400 and "accepted" in reply:
            ledger.accepted += reply["accepted"]
            ledger.rejected += reply["rejected"]


def test_zz_nothing_accepted_was_lost_and_the_server_is_up(collector: Served, ledger: Ledger) -> None:
    # Runs after the property (file order): the shard streams hold exactly what the answers accepted.
    client = redis.Redis.from_url(collector.config.redis_url)
    try:
        stored = sum(int(fields[b"n"]) for key in client.scan_iter("hl:events:*") for _, fields in client.xrange(key))
        assert stored == ledger.accepted
        assert client.xlen("hl:dlq") == ledger.rejected
    finally:
        client.close()
    status, _, body = http_request(collector.port, "GET", "/health", [], b"")
    assert (status, orjson.loads(body)) == (200, {"status": "ok"})
    _, _, metrics = http_request(collector.port, "GET", "/metrics", [], b"")
    errors = [line for line in metrics.splitlines()
              if line.startswith(b"halflife_collector_requests_total{") and b'status="500"' in line]
    assert all(line.endswith(b" 0.0") for line in errors), errors
    assert COLLECTOR_KEY.encode() not in metrics
    assert collector.alive()


@pytest.mark.parametrize("request_bytes", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nBad Header: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"POST /" + b"v" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/track HTTP/9.9\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /v1/track HTTP/1.1\r\nHost: x\r\n\r\n",
    b"DELETE /v1/batch HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v2/track HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST /v1/track HTTP/1.1\r\nHost: x\r\nExpect: 100-continue-please\r\nContent-Length: 2\r\n\r\n{}",
])
def test_malformed_http_is_refused_by_aiohttp_and_the_server_stays_up(collector: Served, request_bytes: bytes) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                break
    status = int(data.split(b" ", 2)[1])
    assert status in (400, 404, 405, 413, 417, 431, 505), data[:200]
    status, _, body = http_request(collector.port, "GET", "/health", [], b"")
    assert status == 200 and collector.alive()
