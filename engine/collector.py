"""`halflife collect`: the Segment-compatible HTTP collector (SPEC §7) in front of the Redis event streams (§6).

    POST /v1/track /v1/page /v1/identify /v1/screen /v1/group /v1/alias   one event (the route names its `type`)
    POST /v1/batch                                                         {"batch": [event, ...]}
    GET  /health                                                           200 when Redis answers PING, else 503
    GET  /metrics                                                          Prometheus text

Per request: read the body within `max_body_bytes` (Content-Length first, then counting), gunzip it
within `max_decompressed_bytes`, authenticate (HTTP Basic with the write key as user name, or Segment's
`writeKey` in the body), stamp every event with `receivedAt` (and a `messageId` when it has none), then
validate it with the engine's own decoder (`engine.decode.decode_lines`), so the collector and the
engine agree on what is valid; the collector is stricter only in its per-event limits, `max_depth`
nesting levels (reason `too_deep`) and `max_string_bytes` per key or string (`string_too_long`).
Valid events are grouped by `engine.routing.shard_of(contact)` -- the engine's routing -- into ONE
stream entry per (request, shard): fields `events` (newline-joined JSON lines, in request order) and
`n` (their count). Invalid events go to `{prefix}dlq` with their reason.

Writing. All the writes of one request are one EVALSHA of `_WRITE_SCRIPT`, which in one atomic step
checks `{prefix}config` (`shards` must equal ours; it is set when absent), checks that no target stream
already holds `max_stream_length` entries, then XADDs the dead letters and the shard entries. So a
request is written entirely or not at all, and back-pressure is exact (no cached lengths) and costs no
extra round trip. Measured against a pipeline of one XADD per shard (redis-py, ~50 shards touched by a
100-event request): the pipeline costs ~800 us of collector CPU per request, the script ~120 us.
(It is a multi-key script: under Redis Cluster its keys would need one hash tag.)

Acknowledgement. 200 (or 400 for a batch with invalid events) is sent only after Redis has applied the
script. When Redis is unreachable, times out or refuses the write, or a target stream is full, the
answer is 503 with `Retry-After` and nothing of the request was written (SDKs retry 5xx). The one
ambiguity left is a timeout after Redis received the script: then the events may be stored although
the client saw a 503 and retries; SDK events carry their `messageId`, and the engine drops repeats.

Trimming. The collector never trims event streams: the engine trims what it has consumed and
snapshotted. `max_stream_length` is the collector's back-pressure limit in entries (a stream never
exceeds it through the collector). The dead-letter stream, which nothing consumes, is capped
approximately (`MAXLEN ~ dlq_max_length`).

The aiohttp server must run with `auto_decompress=False` (as `main` and the tests do): the handler
decompresses gzip itself, so that no body can make it allocate more than the limit. (If a server
decompresses anyway, the handler sees plain JSON under `Content-Encoding: gzip`, accepts it as
such, and the body limit then applies to the decompressed bytes.)

Secrets (write keys, the Redis password) never appear in logs or in `--help`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import gc
import hashlib
import hmac
import itertools
import logging
import os
import sys
import time
import uuid
import zlib
from collections import Counter as _Tally
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import NoScriptError, RedisError, ResponseError

from engine.argtypes import port, positive_float, positive_int
from engine.decode import MAX_DEPTH, REASONS, decode_lines
from engine.redaction import redact_url
from engine.redis_keys import Keys
from engine.routing import shard_of
from engine.times import format_time

if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout
else:  # pragma: no cover - redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _timeout

__all__ = ["CollectorConfig", "add_arguments", "build_app", "main"]

log = logging.getLogger("halflife.collector")

# Routes of single calls and the `type` each sets when the body has none.
SINGLE_ROUTES: Final = ("track", "page", "identify", "screen", "group", "alias")
# A dead letter keeps at most this much of the (stamped) event.
DLQ_RAW_BYTES: Final = 8192
# Seconds a client should wait before retrying: Redis unreachable / a shard stream full.
RETRY_AFTER_UNAVAILABLE: Final = "1"
RETRY_AFTER_BACKLOG: Final = "5"
# Redis errors are logged at most this often (seconds); every one is counted in the metrics.
_LOG_EVERY_S: Final = 5.0

_OK_BODY: Final = b'{"success":true}'
_CORS: Final = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}

# KEYS: config, dlq, then the shard streams of this request.
# ARGV: shards, max_stream_length, dlq_max_length, n_dead, (reason, detail, raw) * n_dead, (events, n) per stream.
# Replies {1} written; {0, "config", current} shard count mismatch; {0, "full", index} stream KEYS[2 + index] full.
# Every check runs before the first write (XLEN also fails on a key of the wrong type), so a request is
# written entirely or not at all.
_WRITE_SCRIPT: Final = b"""
local current = redis.call('HGET', KEYS[1], 'shards')
if not current then
  redis.call('HSET', KEYS[1], 'shards', ARGV[1])
elseif current ~= ARGV[1] then
  return {0, 'config', current}
end
local maxlen = tonumber(ARGV[2])
for i = 3, #KEYS do
  if redis.call('XLEN', KEYS[i]) >= maxlen then
    return {0, 'full', i - 2}
  end
end
local dead = tonumber(ARGV[4])
local a = 5
if dead > 0 then
  redis.call('XLEN', KEYS[2])
  for _ = 1, dead do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'reason', ARGV[a], 'detail', ARGV[a + 1], 'raw', ARGV[a + 2])
    a = a + 3
  end
end
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], '*', 'events', ARGV[a], 'n', ARGV[a + 1])
  a = a + 2
end
return {1}
"""
_WRITE_SHA: Final = hashlib.sha1(_WRITE_SCRIPT).hexdigest().encode()


@dataclass(frozen=True)
class CollectorConfig:
    redis_url: str
    write_keys: tuple[str, ...]  # required unless insecure_no_auth
    shards: int = 64
    prefix: str = "hl:"
    host: str = "127.0.0.1"
    port: int = 8088
    max_body_bytes: int = 512 * 1024  # compressed/raw body limit -> 413
    max_decompressed_bytes: int = 4 * 1024 * 1024  # gzip bomb defence -> 413
    max_batch_events: int = 2500
    # Per event: nesting levels (the event object is level 1; at most decode.MAX_DEPTH) and the UTF-8 size of any
    # key or string value; an event over either is dead-lettered (too_deep, string_too_long) and the answer is 400.
    max_depth: int = 32
    max_string_bytes: int = 8192
    # Entries per shard stream; a request that would write to a stream holding this many gets 503
    # (the engine trims what it has consumed and snapshotted; the collector never trims).
    max_stream_length: int = 1_000_000
    insecure_no_auth: bool = False
    dlq_max_length: int = 100_000  # approximate cap of {prefix}dlq (MAXLEN ~)
    redis_connections: int = 32  # concurrent Redis operations (pool size); more requests wait
    redis_timeout_s: float = 5.0  # per Redis operation; then 503
    body_timeout_s: float = 30.0  # to receive a whole request body; then 408 (a trickling client holds a connection)

    def __post_init__(self) -> None:
        if not self.insecure_no_auth:
            if not self.write_keys:
                raise ValueError("no write key configured (--write-key, --write-keys-file or HALFLIFE_WRITE_KEYS); "
                                 "--insecure-no-auth accepts every request")
        for key in self.write_keys:
            if not key or key != key.strip() or ":" in key:
                raise ValueError("a write key must be non-empty, without surrounding whitespace and without ':'")
        for name in ("shards", "max_body_bytes", "max_decompressed_bytes", "max_batch_events", "max_stream_length",
                     "dlq_max_length", "redis_connections", "max_depth", "max_string_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_depth > MAX_DEPTH:
            raise ValueError(f"max_depth must be <= {MAX_DEPTH} (the engine's own limit), got {self.max_depth}")
        for name in ("redis_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port}")


class MalformedHttpLog(logging.Filter):
    """For the `aiohttp.server` logger: one WARNING line per `every_s` for malformed requests.

    aiohttp's parser refuses malformed HTTP (bad request line, headers or chunking) with 400 before
    any handler runs, and logs each at ERROR with a traceback: a hostile client could fill the logs.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.refused = 0
        self.last = -every_s

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        detail = (exc.message or "").strip().splitlines()[:1]
        record.msg = "%d malformed HTTP request(s) refused with 400 in the last %.0f s (latest: %s)"
        record.args = (self.refused, min(now - self.last, self.every_s), (detail[0] if detail else "?")[:100])
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.refused, self.last = 0, now
        return True


def _bulk(arg: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def _pack(args: Sequence[bytes]) -> bytes:
    """One Redis command in RESP (all arguments already bytes)."""
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


class _Reject(Exception):
    """A request refused as a whole: nothing of it is written."""

    def __init__(self, status: int, error: str, retry_after: str | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.retry_after = retry_after


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("halflife_collector_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.duration = Histogram("halflife_collector_request_duration_seconds", "HTTP request handling time",
                                  ["route"], registry=self.registry,
                                  buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                           2.5, 5.0, 10.0))
        self.accepted = Counter("halflife_collector_events_accepted", "Events written to the shard streams",
                                registry=self.registry)
        self.rejected = Counter("halflife_collector_events_rejected", "Events dead-lettered by the collector, by reason",
                                ["reason"], registry=self.registry)
        self.bytes = Counter("halflife_collector_bytes_received", "Request body bytes received (as sent, compressed)",
                             registry=self.registry)
        self.redis_errors = Counter("halflife_collector_redis_errors", "Redis operations that failed (answered 503)",
                                    registry=self.registry)
        self._requests: dict[tuple[str, int], Any] = {}
        self._durations: dict[str, Any] = {}
        self._rejected = {reason: self.rejected.labels(reason) for reason in REASONS}
        # Series exist at 0 before the first request, so rates and increases see the first ones.
        for route in ("/v1/track", "/v1/page", "/v1/identify", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch"):
            self._durations[route] = self.duration.labels(route)
            for status in (200, 400, 500, 503):
                self._requests[(route, status)] = self.requests.labels(route, str(status))

    def request(self, route: str, status: int, seconds: float) -> None:
        child = self._requests.get((route, status))
        if child is None:
            child = self._requests[(route, status)] = self.requests.labels(route, str(status))
        child.inc()
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = self.duration.labels(route)
        hist.observe(seconds)

    def rejected_events(self, tally: dict[str, int]) -> None:
        for reason, n in tally.items():
            child = self._rejected.get(reason)
            if child is None:
                child = self._rejected[reason] = self.rejected.labels(reason)
            child.inc(n)


class _Collector:
    """State and handlers of one collector app."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.keys = Keys(config.prefix)
        self.metrics = _Metrics()
        self.write_keys = tuple(k.encode("utf-8") for k in config.write_keys)
        self.pool = aioredis.ConnectionPool.from_url(
            # A few connections beyond the write slots, for /health.
            config.redis_url, max_connections=config.redis_connections + 4,
            socket_connect_timeout=min(config.redis_timeout_s, 2.0), socket_keepalive=True,
        )
        self.client = aioredis.Redis(connection_pool=self.pool)
        self.slots = asyncio.Semaphore(config.redis_connections)
        self.stream_keys = [self.keys.events(i).encode() for i in range(config.shards)]
        # The write script's command in RESP, from pre-encoded pieces: EVALSHA sha numkeys config dlq
        # streams... shards max_stream_length dlq_max_length n_dead dead... (events n)...
        self.resp_evalsha = _bulk(b"EVALSHA") + _bulk(_WRITE_SHA)
        self.resp_head = _bulk(self.keys.config.encode()) + _bulk(self.keys.dlq.encode())
        self.resp_streams = [_bulk(k) for k in self.stream_keys]
        self.resp_fixed = b"".join(_bulk(str(v).encode()) for v in (config.shards, config.max_stream_length,
                                                                     config.dlq_max_length))
        # messageIds for events without one: unique per process start, then a counter.
        self.id_prefix = f"hl-{uuid.uuid4().hex[:16]}-"
        self.ids = itertools.count(1)
        self.last_log = self.last_mismatch_log = -_LOG_EVERY_S

    # --- request pipeline -------------------------------------------------------------------------------

    async def read_body(self, request: web.Request) -> bytes:
        cfg = self.config
        length = request.content_length
        if length is not None and length > cfg.max_body_bytes:
            raise _Reject(413, f"body of {length} bytes is over the limit of {cfg.max_body_bytes} bytes")
        chunks = []
        size = 0
        content = request.content
        try:
            async with _timeout(cfg.body_timeout_s):
                while True:
                    chunk = await content.readany()
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > cfg.max_body_bytes:
                        raise _Reject(413, f"body is over the limit of {cfg.max_body_bytes} bytes")
                    chunks.append(chunk)
        except asyncio.TimeoutError:
            raise _Reject(408, f"the body did not arrive within {cfg.body_timeout_s:g} s") from None
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.metrics.bytes.inc(size)
        encoding = request.headers.get("Content-Encoding")
        if encoding:
            encoding = encoding.strip().lower()
            if encoding in ("gzip", "x-gzip"):
                body = self.decompress(body, 16 + zlib.MAX_WBITS)
            elif encoding == "deflate":
                body = self.decompress(body, zlib.MAX_WBITS)
            elif encoding != "identity":
                raise _Reject(415, f"unsupported Content-Encoding {encoding[:40]!r}; use gzip")
        return body

    def decompress(self, data: bytes, wbits: int) -> bytes:
        """Decompress every member of `data`, never producing more than the limit plus one byte."""
        if wbits > zlib.MAX_WBITS and data[:2] != b"\x1f\x8b" and data[:1] in (b"{", b"[", b" ", b"\n"):
            return data  # already decompressed by a server run with auto_decompress (see the module doc)
        limit = self.config.max_decompressed_bytes
        out: list[bytes] = []
        size = 0
        try:
            while data:
                d = zlib.decompressobj(wbits)
                while data:
                    chunk = d.decompress(data, limit + 1 - size)
                    size += len(chunk)
                    if size > limit:
                        raise _Reject(413, f"decompressed body is over the limit of {limit} bytes")
                    out.append(chunk)
                    data = d.unconsumed_tail
                if not d.eof:
                    raise _Reject(400, "truncated compressed body")
                data = d.unused_data
        except zlib.error as exc:
            raise _Reject(400, f"body is not valid {'gzip' if wbits > zlib.MAX_WBITS else 'deflate'}: {exc}") from None
        return b"".join(out)

    def header_key_ok(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization")
        if not auth or auth[:6].lower() != "basic ":
            return False
        try:
            decoded = base64.b64decode(auth[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return self.key_ok(decoded.split(b":", 1)[0])

    def key_ok(self, candidate: bytes) -> bool:
        # Compare with every key, always: the time taken does not depend on which key (if any) matched.
        ok = False
        for key in self.write_keys:
            ok |= hmac.compare_digest(key, candidate)
        return ok

    def events_of(self, body: Any, route: str, authorized: bool) -> list[Any]:
        """The request's events, each already stamped; raises _Reject for a bad body or a missing key."""
        if type(body) is not dict:
            if not authorized:
                raise _Reject(401, "missing or invalid write key")
            raise _Reject(400, "body must be a JSON object")
        body_key = body.pop("writeKey", None)
        if not authorized:
            if type(body_key) is not str or not self.key_ok(body_key.encode("utf-8", "surrogatepass")):
                raise _Reject(401, "missing or invalid write key")
        if route != "batch":
            if body.get("type") is None:
                body["type"] = route
            items: list[Any] = [body]
            sent_at = context = integrations = None
        else:
            items = body.get("batch")  # type: ignore[assignment]
            if type(items) is not list:
                raise _Reject(400, "field 'batch' must be a list of events")
            if len(items) > self.config.max_batch_events:
                raise _Reject(400, f"batch of {len(items)} events is over the limit of {self.config.max_batch_events}")
            # Segment applies a batch's `context` and `integrations` to all its calls; SDKs put `sentAt` on the batch.
            sent_at = body.get("sentAt")
            context = body.get("context")
            integrations = body.get("integrations")
            if type(context) is not dict or not context:
                context = None
            if type(integrations) is not dict or not integrations:
                integrations = None
        now = format_time(time.time_ns() // 1_000_000)
        prefix = self.id_prefix
        ids = self.ids
        for event in items:
            if type(event) is not dict:
                continue  # encoded as is: the decoder dead-letters it (not_object)
            if "writeKey" in event:
                del event["writeKey"]
            event["receivedAt"] = now
            if event.get("messageId") is None:
                event["messageId"] = f"{prefix}{next(ids)}"
            if sent_at is not None and "sentAt" not in event:
                event["sentAt"] = sent_at
            if context is not None:
                own = event.get("context")
                if own is None:
                    event["context"] = context
                elif type(own) is dict:
                    event["context"] = {**context, **own}
            if integrations is not None:
                own = event.get("integrations")
                if own is None:
                    event["integrations"] = integrations
                elif type(own) is dict:
                    event["integrations"] = {**integrations, **own}
        return items

    async def write(self, packed: bytes) -> list[Any]:
        """Run the write script (`packed`: its EVALSHA in RESP); raises _Reject(503) when Redis cannot take it."""
        try:
            async with _timeout(self.config.redis_timeout_s), self.slots:
                conn = await self.pool.get_connection()
                try:
                    try:
                        await conn.send_packed_command(packed, check_health=False)
                        reply = await conn.read_response()
                    except NoScriptError:
                        await conn.send_packed_command(_pack([b"SCRIPT", b"LOAD", _WRITE_SCRIPT]), check_health=False)
                        await conn.read_response()
                        await conn.send_packed_command(packed, check_health=False)
                        reply = await conn.read_response()
                except BaseException as exc:
                    # Unless a whole error reply was read, a reply may still be on its way: never reuse the connection.
                    if not isinstance(exc, ResponseError):
                        await conn.disconnect(nowait=True)
                    raise
                finally:
                    await self.pool.release(conn)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.redis_failed(exc)
            raise _Reject(503, "event store unavailable, retry later", RETRY_AFTER_UNAVAILABLE) from None
        return list(reply)

    def redis_failed(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        now = time.monotonic()
        if now - self.last_log >= _LOG_EVERY_S:
            self.last_log = now
            log.warning("redis %s: %s: %s (answering 503)", redact_url(self.config.redis_url), type(exc).__name__,
                        exc or "timeout")

    async def ingest(self, request: web.Request, route: str) -> tuple[int, bytes, dict[str, str] | None]:
        cfg = self.config
        authorized = cfg.insecure_no_auth or self.header_key_ok(request)
        body = await self.read_body(request)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if not authorized:
                raise _Reject(401, "missing or invalid write key") from None
            raise _Reject(400, f"body is not valid JSON: {exc}") from None
        del body
        items = self.events_of(parsed, route, authorized)
        if not items:
            return 200, _OK_BODY, None

        dumps = orjson.dumps
        try:
            lines = [dumps(event) for event in items]
            unencodable: list[tuple[int, str]] = []
        except orjson.JSONEncodeError:
            lines, unencodable = [], []
            for i, event in enumerate(items):
                try:
                    lines.append(dumps(event))
                except orjson.JSONEncodeError as exc:  # nesting deeper than orjson writes (254 levels)
                    lines.append(b"")
                    unencodable.append((i, f"nested deeper than {cfg.max_depth} levels (cannot be encoded: {exc})"))
        batch, dead = decode_lines(lines, range(len(lines)), max_depth=cfg.max_depth,
                                   max_string_bytes=cfg.max_string_bytes)

        # One stream entry per shard: the shard's lines in request order.
        shards = cfg.shards
        groups: dict[int, list[bytes]] = {}
        for pos, contact in zip(batch.positions, batch.contacts, strict=True):
            shard = shard_of(contact, shards)
            group = groups.get(shard)
            if group is None:
                groups[shard] = [lines[pos]]
            else:
                group.append(lines[pos])

        dead_rows = [(d.position, d.reason, d.detail, d.raw) for d in dead]
        if unencodable:
            dead_rows += [(i, "too_deep", detail, b"") for i, detail in unencodable]
            dead_rows.sort()
        order = sorted(groups)
        nargs = 3 + 2 + len(order) + 4 + 3 * len(dead_rows) + 2 * len(order)
        streams = self.resp_streams
        resp = [b"*%d\r\n" % nargs, self.resp_evalsha, _bulk(b"%d" % (2 + len(order))), self.resp_head]
        resp += [streams[s] for s in order]
        resp += (self.resp_fixed, _bulk(b"%d" % len(dead_rows)))
        for _, reason, detail, raw in dead_rows:
            resp += (_bulk(reason.encode()), _bulk(detail.encode("utf-8", "backslashreplace")), _bulk(raw[:DLQ_RAW_BYTES]))
        for s in order:
            group = groups[s]
            resp += (_bulk(b"\n".join(group)), _bulk(b"%d" % len(group)))

        reply = await self.write(b"".join(resp))
        if reply[0] != 1:
            what = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            if what == "config":
                current = reply[2].decode() if isinstance(reply[2], bytes) else str(reply[2])
                now = time.monotonic()
                if now - self.last_mismatch_log >= _LOG_EVERY_S:
                    self.last_mismatch_log = now
                    log.error("%s says shards=%s but this collector runs with --shards %d: refusing to write "
                              "(the engine would route contacts to other shards)", self.keys.config, current, shards)
                raise _Reject(500, f"shard count mismatch: the event store is configured for {current} shards, "
                                   f"this collector for {shards}")
            full = self.stream_keys[order[int(reply[2]) - 1]].decode()
            raise _Reject(503, f"backlog full ({full} holds {cfg.max_stream_length} entries), retry later",
                          RETRY_AFTER_BACKLOG)

        accepted = len(batch)
        if accepted:
            self.metrics.accepted.inc(accepted)
        if not dead_rows:
            return 200, _OK_BODY, None
        tally = _Tally(row[1] for row in dead_rows)
        self.metrics.rejected_events(tally)
        first = dead_rows[0]
        summary = ", ".join(f"{reason}: {n}" for reason, n in sorted(tally.items(), key=lambda kv: _reason_rank(kv[0])))
        error = (f"{len(dead_rows)} of {len(items)} events rejected ({summary}); "
                 f"first: event {first[0]}: {first[1]}: {first[2]}")
        return 400, orjson.dumps({"success": False, "error": error, "accepted": accepted, "rejected": len(dead_rows)}), None

    # --- handlers ---------------------------------------------------------------------------------------

    def route_handler(self, route: str) -> Callable[[web.Request], Any]:
        label = f"/v1/{route}"
        metrics = self.metrics
        perf = time.perf_counter

        async def handle(request: web.Request) -> web.Response:
            started = perf()
            try:
                status, body, headers = await self.ingest(request, route)
            except _Reject as rej:
                status = rej.status
                body = orjson.dumps({"success": False, "error": rej.error})
                headers = {"Retry-After": rej.retry_after} if rej.retry_after else None
            except (ConnectionResetError, asyncio.CancelledError):
                raise  # the client went away mid-request: nobody to answer
            except Exception:
                log.exception("%s: unexpected error (answering 500)", label)
                status, body, headers = 500, b'{"success":false,"error":"internal error"}', None
            response = web.Response(status=status, body=body, content_type="application/json", headers=headers)
            response.headers.update(_CORS)
            if status in (408, 413):
                response.force_close()  # do not read the rest of an oversized or trickling body
            metrics.request(label, status, perf() - started)
            return response

        return handle

    async def preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_CORS)

    async def health(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            async with _timeout(min(self.config.redis_timeout_s, 2.0)):
                await self.client.ping()
            status, body = 200, b'{"status":"ok"}'
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.redis_failed(exc)
            status, body = 503, b'{"status":"unavailable","error":"redis does not answer"}'
        self.metrics.request("/health", status, time.perf_counter() - started)
        return web.Response(status=status, body=body, content_type="application/json")

    async def metrics_page(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.metrics.request("/metrics", 200, time.perf_counter() - started)
        response = web.Response(body=generate_latest(self.metrics.registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def ensure_config(self) -> str | None:
        """Set `{prefix}config` shards when absent; the configured value when it differs from ours."""
        key = self.keys.config
        await self.client.hsetnx(key, "shards", self.config.shards)
        current = await self.client.hget(key, "shards")
        if isinstance(current, bytes):
            current = current.decode()
        if current is not None and current != str(self.config.shards):
            return str(current)
        return None

    async def on_startup(self, app: web.Application) -> None:
        try:
            async with _timeout(self.config.redis_timeout_s):
                mismatch = await self.ensure_config()
                await self.client.script_load(_WRITE_SCRIPT)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("redis %s is not reachable at startup (%s); answering 503 until it is",
                        redact_url(self.config.redis_url), type(exc).__name__)
            return
        if mismatch is not None:
            log.error("%s says shards=%s but this collector runs with shards=%d: every write will be refused",
                      self.keys.config, mismatch, self.config.shards)

    async def on_cleanup(self, app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        await self.client.aclose()
        await self.pool.aclose()


def _reason_rank(reason: str) -> int:
    return REASONS.index(reason) if reason in REASONS else len(REASONS)


COLLECTOR_KEY: Final = web.AppKey("halflife_collector", _Collector)


def build_app(config: CollectorConfig) -> web.Application:
    """The collector as an aiohttp app (serve it with `auto_decompress=False`; see the module doc)."""
    collector = _Collector(config)
    app = web.Application()
    app[COLLECTOR_KEY] = collector
    for route in (*SINGLE_ROUTES, "batch"):
        app.router.add_post(f"/v1/{route}", collector.route_handler(route))
        app.router.add_route("OPTIONS", f"/v1/{route}", collector.preflight)
    app.router.add_get("/health", collector.health)
    app.router.add_get("/metrics", collector.metrics_page)
    app.on_startup.append(collector.on_startup)
    app.on_cleanup.append(collector.on_cleanup)
    return app


# --- command line -----------------------------------------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _option(parser: argparse.ArgumentParser, flag: str, help: str, *, default: Any = None, type: Any = str,
            secret: bool = False, required: bool = False, metavar: str | None = None) -> None:
    """`flag`, defaulting to $HALFLIFE_<NAME>; --help names the variable and, unless `secret`, the default."""
    env = "HALFLIFE_" + flag.lstrip("-").replace("-", "_").upper()
    if env in os.environ:
        default = os.environ[env]  # argparse applies `type` to a string default
        required = False
    text = f"{help} [env: {env}]"
    if default is not None and not secret:
        text += f" (default: {default})"
    parser.add_argument(flag, default=default, type=type, required=required, help=text, metavar=metavar)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `halflife collect`; each also read from a HALFLIFE_* environment variable."""
    _option(parser, "--redis", "Redis URL of the event store, e.g. redis://127.0.0.1:6379/0", required=True,
            secret=True, metavar="URL")
    _option(parser, "--host", "address to listen on", default="127.0.0.1")
    _option(parser, "--port", "port to listen on", default=8088, type=port)
    parser.add_argument("--write-key", action="append", metavar="KEY",
                        help="a write key accepted as the HTTP Basic user name or as `writeKey` in the body; repeatable "
                             "[env: HALFLIFE_WRITE_KEYS, comma-separated, used when neither --write-key nor "
                             "--write-keys-file is given]")
    _option(parser, "--write-keys-file", "file of write keys, one per line (blank lines and # comments ignored)",
            metavar="FILE")
    _option(parser, "--shards", "shard streams; must equal the engine's --shards", default=64, type=positive_int)
    _option(parser, "--prefix", "Redis key prefix", default="hl:")
    insecure = os.environ.get("HALFLIFE_INSECURE_NO_AUTH")
    parser.add_argument("--insecure-no-auth", action="store_true",
                        default=None if insecure is not None and insecure.strip().lower() not in _TRUE + _FALSE
                        else (insecure or "").strip().lower() in _TRUE,
                        help="accept requests without a write key (local testing only) [env: HALFLIFE_INSECURE_NO_AUTH]")
    _option(parser, "--max-body-bytes", "request body limit, as sent (compressed); over it: 413", default=512 * 1024,
            type=positive_int)
    _option(parser, "--max-decompressed-bytes", "decompressed body limit; over it: 413", default=4 * 1024 * 1024,
            type=positive_int)
    _option(parser, "--max-batch-events", "events per /v1/batch request; over it: 400", default=2500, type=positive_int)
    _option(parser, "--max-depth", f"nesting levels per event (the event is level 1; at most {MAX_DEPTH}); a deeper event is "
            "dead-lettered as too_deep (400)", default=32, type=positive_int)
    _option(parser, "--max-string-bytes", "UTF-8 bytes of any key or string value of an event; a longer one is "
            "dead-lettered as string_too_long (400)", default=8192, type=positive_int)
    _option(parser, "--max-stream-length", "entries per shard stream; a write to a fuller stream gets 503 (the engine "
            "trims what it has consumed and snapshotted)", default=1_000_000, type=positive_int)
    _option(parser, "--dlq-max-length", "approximate cap of the dead-letter stream", default=100_000, type=positive_int)
    _option(parser, "--redis-connections", "concurrent Redis operations (pool size)", default=32, type=positive_int)
    _option(parser, "--redis-timeout", "seconds per Redis operation before answering 503", default=5.0,
            type=positive_float)
    _option(parser, "--body-timeout", "seconds to receive a request body before answering 408", default=30.0,
            type=positive_float)
    _option(parser, "--log-level", "DEBUG, INFO, WARNING or ERROR", default="INFO")
    access = os.environ.get("HALFLIFE_ACCESS_LOG", "").strip().lower() in _TRUE
    parser.add_argument("--access-log", action="store_true", default=access,
                        help="log every request (aiohttp access log; never includes credentials) [env: HALFLIFE_ACCESS_LOG]")


def _read_keys_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def config_from_args(args: argparse.Namespace) -> CollectorConfig:
    """A CollectorConfig from parsed `add_arguments` flags; ValueError/OSError for a bad configuration."""
    if args.insecure_no_auth is None:
        raise ValueError("HALFLIFE_INSECURE_NO_AUTH must be one of " + ", ".join(repr(v) for v in _TRUE + _FALSE[:-1]))
    keys: list[str] = list(args.write_key or [])
    if args.write_keys_file:
        keys += _read_keys_file(args.write_keys_file)
    if not args.write_key and not args.write_keys_file:
        keys += [k.strip() for k in os.environ.get("HALFLIFE_WRITE_KEYS", "").split(",") if k.strip()]
    return CollectorConfig(
        redis_url=args.redis, write_keys=tuple(dict.fromkeys(keys)), shards=args.shards, prefix=args.prefix,
        host=args.host, port=args.port, max_body_bytes=args.max_body_bytes,
        max_decompressed_bytes=args.max_decompressed_bytes, max_batch_events=args.max_batch_events,
        max_depth=args.max_depth, max_string_bytes=args.max_string_bytes,
        max_stream_length=args.max_stream_length, insecure_no_auth=bool(args.insecure_no_auth),
        dlq_max_length=args.dlq_max_length, redis_connections=args.redis_connections,
        redis_timeout_s=args.redis_timeout, body_timeout_s=args.body_timeout,
    )


async def _startup_check(config: CollectorConfig) -> str | None:
    collector = _Collector(config)
    try:
        async with _timeout(config.redis_timeout_s):
            return await collector.ensure_config()
    finally:
        await collector.close()


def main(args: argparse.Namespace) -> int:
    """Run the collector until SIGINT/SIGTERM. 0 after a clean stop, 2 for a bad configuration, 1 otherwise."""
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(f"halflife collect: unknown log level {args.log_level!r}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(MalformedHttpLog())
    log.setLevel(level)
    try:
        config = config_from_args(args)
        build_app(config)  # validates the Redis URL
    except (ValueError, OSError) as exc:
        print(f"halflife collect: {exc}", file=sys.stderr)
        return 2
    if config.insecure_no_auth:
        log.warning("--insecure-no-auth: accepting requests without a write key")
    try:
        mismatch = asyncio.run(_startup_check(config))
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        log.warning("redis %s is not reachable (%s); starting anyway, answering 503 until it is",
                    redact_url(config.redis_url), type(exc).__name__)
        mismatch = None
    if mismatch is not None:
        print(f"halflife collect: {config.prefix}config says shards={mismatch} but --shards is {config.shards}; "
              "the engine and the collector must agree (a mismatch would route contacts to the wrong shard)",
              file=sys.stderr)
        return 2
    log.info("halflife collect listening on http://%s:%d (redis %s, %d shards, prefix %r, %d write key(s))",
             config.host, config.port, redact_url(config.redis_url), config.shards, config.prefix,
             len(config.write_keys))
    # Each request allocates hundreds of short-lived dicts; with the default gen-0 threshold (700) the cyclic
    # GC runs several times per request and promotes live request objects. Measured on 100-event batches:
    # 9.4 -> 7.5 CPU s per million events.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    try:
        web.run_app(build_app(config), host=config.host, port=config.port, print=None, shutdown_timeout=10.0,
                    access_log=logging.getLogger("aiohttp.access") if args.access_log else None,
                    auto_decompress=False)
    except OSError as exc:
        log.error("cannot serve on %s:%d: %s", config.host, config.port, exc)
        return 1
    return 0
