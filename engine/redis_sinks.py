"""Live outputs to Redis (SPEC §6): trigger streams, dead letters and contact profiles.

All three are bytewax `DynamicSink`s: every worker writes its own items with its own client.

Redis errors never drop an item. A partition's `write_batch` retries a failed write forever,
with exponential backoff (50 ms doubling up to 2 s) and jitter, logging the first failure,
then at most every 30 s while it lasts, then the recovery. Meanwhile the worker is blocked
in `write_batch` (all its steps wait), so its epoch cannot end and no source reads on: that is
bytewax's backpressure (the epoch is its only backpressure point), and once Redis is back
the batch is written and the dataflow continues. Every write of a batch is idempotent, or
at-least-once where noted, so retrying a batch that was partly applied before the
connection dropped is harmless.

* `RedisTriggerSink`, items `(key, TriggerOut)` (or `(key, json_line)`): one Lua script per
  record, atomically: when the ledger key `{prefix}trigger-id:{id}` is new, `XADD
  {prefix}triggers * data <json>`, `XADD {prefix}triggers:{channel} * data <json>` and the
  ledger key with `EX retention` (a check-and-set `SET NX EX`; see TRIGGER_SCRIPT for
  why the key is set last); otherwise nothing. A trigger id is a digest of (rule, contact, at, channel), so records that
  bytewax emits again after a crash and resume, or that a retried batch writes again, are
  recognized and appear once in each stream (as long as the ledger remembers them:
  `retention_s`, a week by default). The script is loaded once and called with `EVALSHA`
  in one pipeline per batch; it is loaded again when Redis answers `NOSCRIPT` (a restart
  or `SCRIPT FLUSH`).
* `RedisDeadLetterSink`, items `(key, DeadLetter)` (or their JSON): `XADD {prefix}dlq * reason
  .. detail .. position .. raw .. raw_bytes ..`; `raw` is cut to `max_raw_bytes`,
  `raw_bytes` is the original length. At-least-once: a dead letter emitted again after a
  resume, or a batch retried after a reply was lost, is appended again.
* `RedisProfileSink`, items `(contact, ProfileOut)` (or their JSON) and `(contact, ContactState)`:
  `tag` adds the contact to the set `{prefix}tag:{value}` and the tag to the JSON list
  `tags` (sorted) of the hash `{prefix}contact:{contact}`; `untag` removes both; `stage`
  sets the hash field `stage`; each sets `last_change` (the change's event time, ISO-8601).
  One Lua script applies a change atomically. A contact state sets `scores` (JSON) and
  `last_seen` (ISO-8601). Idempotent: applying a change again changes nothing.

`read_profile` decodes a contact's hash; `profile_main` is `halflife profile CONTACT --redis URL`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine import metrics
from engine.decode import DeadLetter
from engine.records import ProfileOut, TriggerOut, each_record
from engine.redaction import redact_url
from engine.redis_keys import Keys
from engine.times import format_time

__all__ = [
    "RedisDeadLetterSink",
    "Retrier",
    "RedisProfileSink",
    "RedisTriggerSink",
    "add_profile_arguments",
    "profile_main",
    "read_profile",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 2.0
LOG_EVERY_S = 30.0
CHUNK = 1000  # commands per pipeline round trip


def _connect(url: str) -> redis.Redis:
    # One immediate reconnect for a pooled connection that went stale; `Retrier` does the rest.
    return redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1),
                                health_check_interval=30)


class Retrier:
    """Calls a function until it does not raise a Redis error, sleeping with exponential backoff and jitter.

    `errors` counts the failed attempts (every one is retried); client-side argument errors
    (`redis.DataError`) are bugs and are raised.
    """

    def __init__(self, what: str, first_s: float = BACKOFF_FIRST_S, cap_s: float = BACKOFF_CAP_S,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.what = what
        self.first_s = first_s
        self.cap_s = cap_s
        self.sleep = sleep
        self.errors = 0

    def delay(self, attempt: int) -> float:
        """Backoff before retry number `attempt` (1, 2, ...): half fixed, half random ("equal jitter")."""
        ceiling = min(self.cap_s, self.first_s * 2 ** min(attempt - 1, 30))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        started = last_log = 0.0
        while True:
            try:
                result = fn()
            except redis.DataError:
                raise
            except redis.RedisError as exc:
                attempt += 1
                self.errors += 1
                sink = self.what.replace(" sink", "").replace("-", "_").replace(" ", "_")
                metrics.SINK_ERRORS.labels(f"redis_{sink}").inc()
                metrics.SINK_RETRIES.labels(f"redis_{sink}").inc()
                now = time.monotonic()
                if attempt == 1:
                    started = last_log = now
                    log.warning("%s: Redis write failed (%s: %s); retrying with backoff, the dataflow waits",
                                self.what, type(exc).__name__, exc)
                elif now - last_log >= LOG_EVERY_S:
                    last_log = now
                    log.warning("%s: Redis write still failing after %d attempts over %.0f s (%s: %s); still retrying",
                                self.what, attempt, now - started, type(exc).__name__, exc)
                self.sleep(self.delay(attempt))
                continue
            if attempt:
                log.warning("%s: Redis write succeeded after %d failed attempts over %.1f s", self.what, attempt,
                            time.monotonic() - started)
            return result


class _Script:
    """A Lua script called with EVALSHA, loaded on first use and again after NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.loaded = False

    def pipelined(self, client: redis.Redis, build: Callable[[Any], None]) -> list[Any]:
        """Execute the pipeline that `build(pipe)` fills (calling `pipe.evalsha(script.sha, ...)`).

        On NOSCRIPT (Redis restarted or flushed its scripts) the script is loaded again and the
        whole pipeline runs again: callers only pipeline idempotent commands.
        """
        for attempt in (1, 2):
            if not self.loaded:
                client.script_load(self.source)
                self.loaded = True
            pipe = client.pipeline(transaction=False)
            build(pipe)
            try:
                return pipe.execute()
            except redis.exceptions.NoScriptError:
                self.loaded = False
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class _Partition(StatelessSinkPartition[tuple[str, Any]]):
    def __init__(self, url: str, what: str, first_s: float, cap_s: float) -> None:
        self.client = _connect(url)
        self.retrier = Retrier(what, first_s, cap_s)
        self.metric_name = "redis_" + what.replace(" sink", "").replace("-", "_").replace(" ", "_")
        metrics.declare_sink(self.metric_name)

    def close(self) -> None:
        self.client.close()


# -- triggers ---------------------------------------------------------------------------

# KEYS: ledger key, all-triggers stream, channel stream; ARGV: record JSON, retention in seconds.
# Atomic as a whole (no other command runs in between), it is the check-and-set
# `SET ledger 1 NX EX retention` followed by the two appends when the id was new. Redis does
# not roll back a script that fails part-way, so the script first makes sure that both
# appends can succeed (a key of another type fails the whole record before any write, and
# the sink retries it until someone fixes the key) and writes the ledger key last.
TRIGGER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 2, 3 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'stream' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[i] .. ' holds a ' .. kind .. ', not a stream')
  end
end
redis.call('XADD', KEYS[2], '*', 'data', ARGV[1])
redis.call('XADD', KEYS[3], '*', 'data', ARGV[1])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
return 1
"""


def _trigger_record(value: Any) -> tuple[bytes, str, str]:
    """(JSON line, channel, trigger id) of a TriggerOut or of its JSON line."""
    if isinstance(value, TriggerOut) and value.id:
        return value.line, value.channel, value.id
    line = value.line if isinstance(value, TriggerOut) else value
    record = orjson.loads(line)
    channel = value.channel if isinstance(value, TriggerOut) else record["channel"]
    return line, channel, record["id"]


class _TriggerPartition(_Partition):
    def __init__(self, sink: RedisTriggerSink) -> None:
        super().__init__(sink.url, "trigger sink", sink.backoff_s, sink.backoff_cap_s)
        self.keys = Keys(sink.prefix)
        self.retention = str(int(sink.retention_s))
        self.script = _Script(TRIGGER_SCRIPT)
        self.written = 0  # records appended
        self.duplicates = 0  # records whose id was already in the ledger

    def _build(self, calls: list[tuple[tuple[str, str, str], tuple[bytes, str]]]) -> Callable[[Any], None]:
        sha = self.script.sha

        def build(pipe: Any) -> None:
            for keys, args in calls:
                pipe.evalsha(sha, 3, *keys, *args)

        return build

    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        records = list(each_record(v for _, v in items))
        metrics.SINK_WRITES.labels(self.metric_name).inc(len(records))
        keys = self.keys
        calls = []
        for value in records:
            line, channel, trigger_id = _trigger_record(value)
            calls.append(((keys.trigger_id(trigger_id), keys.triggers, keys.channel(channel)), (line, self.retention)))
        for start in range(0, len(calls), CHUNK):
            chunk = calls[start:start + CHUNK]
            results = self.retrier.call(partial(self.script.pipelined, self.client, self._build(chunk)))
            new = sum(int(r) for r in results)
            self.written += new
            self.duplicates += len(results) - new


class RedisTriggerSink(DynamicSink[tuple[str, Any]]):
    """Trigger records to `{prefix}triggers` and `{prefix}triggers:{channel}`, each id at most once."""

    def __init__(self, url: str, prefix: str = "hl:", retention_s: int = 7 * 86400, *,
                 backoff_s: float = BACKOFF_FIRST_S, backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        if retention_s < 1:
            raise ValueError(f"retention_s must be positive, got {retention_s}")
        self.url = url
        self.prefix = prefix
        self.retention_s = retention_s
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TriggerPartition:
        return _TriggerPartition(self)


# -- dead letters -----------------------------------------------------------------------


def _dead_letter(value: Any) -> DeadLetter:
    if isinstance(value, DeadLetter):
        return value
    record = orjson.loads(value)  # DeadLetter.to_json()
    raw = record["raw"].encode("utf-8") if "raw" in record else base64.b64decode(record.get("raw_b64", ""))
    return DeadLetter(record["reason"], raw, int(record.get("position", -1)), record.get("detail", ""))


class _DeadLetterPartition(_Partition):
    def __init__(self, sink: RedisDeadLetterSink) -> None:
        super().__init__(sink.url, "dead-letter sink", sink.backoff_s, sink.backoff_cap_s)
        self.key = Keys(sink.prefix).dlq
        self.max_raw_bytes = sink.max_raw_bytes
        self.maxlen = sink.maxlen
        self.written = 0

    def fields(self, dl: DeadLetter) -> dict[Any, Any]:
        return {"reason": dl.reason, "detail": dl.detail, "position": dl.position,
                "raw": dl.raw[:self.max_raw_bytes], "raw_bytes": len(dl.raw)}

    def _write(self, entries: list[dict[Any, Any]]) -> None:
        pipe = self.client.pipeline(transaction=True)  # all of a chunk or none of it
        for fields in entries:
            if self.maxlen is None:
                pipe.xadd(self.key, fields)
            else:
                pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        metrics.SINK_WRITES.labels(self.metric_name).inc(len(items))
        entries = [self.fields(_dead_letter(value)) for _, value in items]
        for start in range(0, len(entries), CHUNK):
            chunk = entries[start:start + CHUNK]
            self.retrier.call(partial(self._write, chunk))
            self.written += len(chunk)


class RedisDeadLetterSink(DynamicSink[tuple[str, Any]]):
    """Dead letters to `{prefix}dlq` (fields reason, detail, position, raw, raw_bytes).

    `maxlen`: cap the stream at about that many entries (oldest dropped by Redis); None keeps all.
    """

    def __init__(self, url: str, prefix: str = "hl:", max_raw_bytes: int = 8192, *, maxlen: int | None = None,
                 backoff_s: float = BACKOFF_FIRST_S, backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        self.url = url
        self.prefix = prefix
        self.max_raw_bytes = max_raw_bytes
        self.maxlen = maxlen
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self)


# -- profiles ---------------------------------------------------------------------------

# KEYS: contact hash, tag set; ARGV: action (tag|untag), tag, contact id, last_change.
# cjson encodes an empty table as {}: an empty tag list is written as [] by hand. A `tags`
# field that is not a JSON list (written by hand) is rebuilt from this change on.
TAG_SCRIPT = """
local present = {}
local raw = redis.call('HGET', KEYS[1], 'tags')
if raw then
  local ok, list = pcall(cjson.decode, raw)
  if ok and type(list) == 'table' then
    for _, t in ipairs(list) do present[t] = true end
  end
end
if ARGV[1] == 'tag' then
  redis.call('SADD', KEYS[2], ARGV[3])
  present[ARGV[2]] = true
else
  redis.call('SREM', KEYS[2], ARGV[3])
  present[ARGV[2]] = nil
end
local tags = {}
for t in pairs(present) do tags[#tags + 1] = t end
table.sort(tags)
local encoded = '[]'
if #tags > 0 then encoded = cjson.encode(tags) end
redis.call('HSET', KEYS[1], 'tags', encoded, 'last_change', ARGV[4])
return #tags
"""

PROFILE_ACTIONS = ("tag", "untag", "stage")


def _profile_change(value: Any) -> tuple[str, str, str, str]:
    """(contact, action, value, last_change) of a ProfileOut or of its JSON line."""
    if isinstance(value, ProfileOut):
        return value.contact, value.action, value.value, format_time(value.at_ms)
    record = orjson.loads(value)  # records.profile_lines()
    return record["contact"], record["action"], record["value"], record["at"]


class _ProfilePartition(_Partition):
    def __init__(self, sink: RedisProfileSink) -> None:
        super().__init__(sink.url, "profile sink", sink.backoff_s, sink.backoff_cap_s)
        self.keys = Keys(sink.prefix)
        self.script = _Script(TAG_SCRIPT)
        self.applied = 0

    def _build(self, ops: list[tuple[str, Any, Any]]) -> Callable[[Any], None]:
        # One pipeline, in item order: a contact's changes are applied in the order they fired.
        sha = self.script.sha

        def build(pipe: Any) -> None:
            for kind, keys, args in ops:
                if kind == "tag":
                    pipe.evalsha(sha, 2, *keys, *args)
                else:
                    pipe.hset(keys, mapping=args)

        return build

    def write_batch(self, items: list[tuple[str, Any]]) -> None:
        records = list(each_record(v for _, v in items))
        metrics.SINK_WRITES.labels(self.metric_name).inc(len(records))
        keys = self.keys
        ops: list[tuple[str, Any, Any]] = []
        for value in records:
            if hasattr(value, "last_seen_ms") and hasattr(value, "scores"):  # records.ContactState
                ops.append(("hset", keys.contact(value.contact), {
                    "scores": orjson.dumps(value.scores), "last_seen": format_time(value.last_seen_ms)}))
                continue
            contact, action, name, at = _profile_change(value)
            if action == "stage":
                ops.append(("hset", keys.contact(contact), {"stage": name, "last_change": at}))
            elif action in ("tag", "untag"):
                ops.append(("tag", (keys.contact(contact), keys.tag(name)), (action, name, contact, at)))
            else:
                raise ValueError(f"unknown profile action {action!r} (expected one of {', '.join(PROFILE_ACTIONS)})")
        for start in range(0, len(ops), CHUNK):
            chunk = ops[start:start + CHUNK]
            self.retrier.call(partial(self.script.pipelined, self.client, self._build(chunk)))
            self.applied += len(chunk)


class RedisProfileSink(DynamicSink[tuple[str, Any]]):
    """Profile changes and contact states to `{prefix}contact:{id}` hashes and `{prefix}tag:{name}` sets."""

    def __init__(self, url: str, prefix: str = "hl:", *, backoff_s: float = BACKOFF_FIRST_S,
                 backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        self.url = url
        self.prefix = prefix
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProfilePartition:
        return _ProfilePartition(self)


# -- reading profiles -------------------------------------------------------------------

JSON_FIELDS = ("scores", "tags")


def read_profile(client: redis.Redis, contact: str, prefix: str = "hl:") -> dict[str, Any]:
    """A contact's profile hash, decoded (`scores` and `tags` parsed from JSON); `{}` for an unknown contact."""
    raw = client.hgetall(Keys(prefix).contact(contact))
    if not raw:
        return {}
    profile: dict[str, Any] = {"contact": contact}
    for key, value in sorted(raw.items()):
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if name in JSON_FIELDS:
            try:
                profile[name] = orjson.loads(text)
                continue
            except orjson.JSONDecodeError:
                pass
        profile[name] = text
    profile.setdefault("tags", [])
    return profile


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    """`halflife profile CONTACT --redis URL [--prefix P]` (flags fall back to HALFLIFE_REDIS, HALFLIFE_PREFIX)."""
    redis_url = os.environ.get("HALFLIFE_REDIS")
    parser.add_argument("contact", help="contact id (userId or anonymousId)")
    parser.add_argument("--redis", default=redis_url, required=redis_url is None, metavar="URL",
                        help="Redis URL, e.g. redis://localhost:6379/0 [env: HALFLIFE_REDIS]")
    parser.add_argument("--prefix", default=os.environ.get("HALFLIFE_PREFIX", "hl:"),
                        help="Redis key prefix [env: HALFLIFE_PREFIX] (default: hl:)")


def profile_main(args: argparse.Namespace) -> int:
    """Print the contact's profile as JSON; 1 when the contact is unknown or Redis unreachable, 2 for a bad URL.

    The URL is only ever shown redacted (`redact_url`): it may hold the Redis password."""
    try:
        client = redis.Redis.from_url(args.redis, socket_timeout=5.0, socket_connect_timeout=5.0)
    except ValueError as exc:
        print(f"halflife profile: --redis {redact_url(args.redis)}: {exc}", file=sys.stderr)
        return 2
    try:
        profile = read_profile(client, args.contact, args.prefix)
    except redis.RedisError as exc:
        print(f"halflife profile: cannot read from Redis at {redact_url(args.redis)}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not profile:
        print(f"halflife profile: unknown contact {args.contact!r} (no {Keys(args.prefix).contact(args.contact)})",
              file=sys.stderr)
        return 1
    sys.stdout.buffer.write(orjson.dumps(profile, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()
    return 0
