"""Webhook delivery of trigger records: signed POSTs, retries with backoff, a dead-letter stream.

Configuration
-------------
`--webhook CHANNEL=URL` (repeatable) or `HALFLIFE_WEBHOOKS="email=https://a/hook,sms=https://b/hook"`
names the channels delivered by webhook. Every such channel needs its own HMAC secret, from the
environment variable `HALFLIFE_WEBHOOK_SECRET_<CHANNEL>` (channel upper-cased, every character
other than A-Z and 0-9 replaced by `_`: channel `push-eu` -> `HALFLIFE_WEBHOOK_SECRET_PUSH_EU`) or
from a secrets file of `CHANNEL=SECRET` lines (`#` comments and blank lines allowed). A file entry
wins over the environment. A channel without a secret is a configuration error: unsigned webhooks
are never sent. So is a set of channels whose names map to one variable (`push-eu`, `push_eu` and
`PUSH.EU`; `Email` and `email`) unless each of them has its own file entry: they would silently
share one secret.

    targets = parse_webhook_specs(specs, load_webhook_secrets(path, os.environ))

Requests
--------
One POST per trigger record and channel:

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <record id>                      (same value on every retry and after a resume)
    X-Halflife-Timestamp: <unix seconds, integer>     (fresh on every attempt)
    X-Halflife-Signature: sha256=<hex>
    <body: the trigger record of SPEC §4, byte for byte>

Signature scheme (for receivers)
--------------------------------
    hex = HMAC-SHA256(key=secret, msg=timestamp + "." + body).hexdigest()

where `timestamp` is the `X-Halflife-Timestamp` header value as ASCII and `body` the raw request
body bytes (verify before parsing the JSON). Compare in constant time; reject timestamps more than a
few minutes away from your clock to stop replays. `verify_signature()` below does exactly that:

    ok = verify_signature(secret, request.headers["X-Halflife-Timestamp"], raw_body,
                          request.headers["X-Halflife-Signature"], tolerance_s=300)

Delivery guarantees
-------------------
At least once, deduplicated by `Idempotency-Key`: a receiver that records the ids it has processed
sees each trigger once. Within a batch deliveries run concurrently (at most `max_in_flight` requests
at a time per worker), so records of different triggers may arrive in any order.

A 2xx answer is success. Connection errors, timeouts, 408, 429 and 5xx are retried with exponential
backoff and full jitter (`uniform(0, min(max_delay_s, base_delay_s * 2**(attempt-1)))`); a
`Retry-After` header (seconds or HTTP date) raises the wait to its value, capped at `max_delay_s`.
Any other status (other 4xx, and 3xx: redirects are not followed) fails at once. After
`max_attempts` attempts, or a permanent failure, the record goes to the Redis stream
`{prefix}webhooks:failed` (fields `data`, `channel`, `error`, `attempts`); that write is retried
until Redis takes it. Without Redis it is written to stderr as one JSON line. Nothing is dropped.

`write_batch` returns only when every delivery of the batch has succeeded or been recorded as
failed: bytewax closes an epoch (and snapshots) only after the sink returns, so a resumed run
never skips an undelivered trigger. It may send a trigger again (same Idempotency-Key) and may
append a second `webhooks:failed` entry for the same id.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import random
import re
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engine import metrics
from engine.records import TriggerOut, each_record
from engine.redis_keys import Keys

SECRET_ENV_PREFIX = "HALFLIFE_WEBHOOK_SECRET_"
SIGNATURE_HEADER = "X-Halflife-Signature"
TIMESTAMP_HEADER = "X-Halflife-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "halflife-webhooks/0.1"

_ERROR_BODY_CHARS = 200


class WebhookConfigError(ValueError):
    """A malformed `--webhook` spec, secrets file line, or a channel without a secret."""


@dataclass(frozen=True)
class WebhookTarget:
    url: str
    secret: bytes  # per-channel HMAC secret

    def __repr__(self) -> str:  # never print secrets in logs or tracebacks
        return f"WebhookTarget(url={self.url!r}, secret=<{len(self.secret)} bytes>)"


# -- signatures --------------------------------------------------------------------------


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8")


def sign(secret: bytes | str, timestamp: int | str, body: bytes) -> str:
    """The `X-Halflife-Signature` value: `sha256=` + hex HMAC-SHA256(secret, timestamp + "." + body)."""
    mac = hmac.new(_as_bytes(secret), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes | str, timestamp: int | str | bytes | None, body: bytes,
                     header: str | bytes | None, *, tolerance_s: float | None = None, now: float | None = None) -> bool:
    """True when `header` is the signature of `body` sent at `timestamp` with `secret` (constant-time compare).

    With `tolerance_s`, the timestamp must also be within that many seconds of `now` (default: the
    clock), which stops replays of captured requests.
    """
    if timestamp is None or header is None:
        return False
    try:
        ts = timestamp.decode("ascii") if isinstance(timestamp, bytes) else str(timestamp)
        header_b = _as_bytes(header).strip()
        ts_value = int(ts)
    except (UnicodeError, ValueError):
        return False
    if tolerance_s is not None and abs((time.time() if now is None else now) - ts_value) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode("ascii"), header_b)


# -- configuration -----------------------------------------------------------------------


def secret_env_name(channel: str) -> str:
    """`push-eu` -> `HALFLIFE_WEBHOOK_SECRET_PUSH_EU`."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", channel.upper())


def split_webhook_env(value: str | None) -> list[str]:
    """`HALFLIFE_WEBHOOKS` is comma-separated `CHANNEL=URL` specs (blank entries ignored)."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def read_secrets_file(path: str) -> dict[str, str]:
    """`CHANNEL=SECRET` lines; `#` comments and blank lines are skipped. Keys are channel names."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            channel, sep, secret = line.partition("=")
            channel, secret = channel.strip(), secret.strip()
            if not sep or not channel or not secret:
                raise WebhookConfigError(f"{path}:{n}: expected CHANNEL=SECRET")
            if channel in out:
                raise WebhookConfigError(f"{path}:{n}: channel {channel!r} has a secret already")
            out[channel] = secret
    return out


def load_webhook_secrets(path: str | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The mapping `parse_webhook_specs` takes: `HALFLIFE_WEBHOOK_SECRET_*` variables, then the file's channels."""
    out = {k: v for k, v in (environ or {}).items() if k.startswith(SECRET_ENV_PREFIX)}
    if path:
        out.update(read_secrets_file(path))
    return out


def parse_webhook_specs(specs: list[str], secrets: Mapping[str, str]) -> dict[str, WebhookTarget]:
    """`["CHANNEL=URL", ...]` -> {channel: WebhookTarget}; raises WebhookConfigError with a readable message.

    A channel's secret is `secrets[channel]` (a secrets file entry), else
    `secrets[secret_env_name(channel)]` (so `os.environ` itself works as `secrets`). Channels whose names
    give the same variable name are refused unless every one of them has its own `secrets[channel]`:
    otherwise they would sign with one secret, which the operator meant for one of them.
    """
    urls: dict[str, str] = {}
    for spec in specs:
        channel, sep, url = spec.partition("=")
        channel, url = channel.strip(), url.strip()
        if not sep or not channel or not url:
            raise WebhookConfigError(f"--webhook {spec!r}: expected CHANNEL=URL, such as email=https://example.com/hook")
        if any(c.isspace() for c in channel):
            raise WebhookConfigError(f"--webhook {spec!r}: a channel name has no spaces")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookConfigError(f"--webhook {spec!r}: the URL must be http:// or https:// with a host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise WebhookConfigError(f"--webhook {spec!r}: invalid port in the URL") from None
        if channel in urls:
            raise WebhookConfigError(f"--webhook {spec!r}: channel {channel!r} is configured twice")
        urls[channel] = url
    by_variable: dict[str, list[str]] = {}
    for channel in urls:
        by_variable.setdefault(secret_env_name(channel), []).append(channel)
    for variable, channels in by_variable.items():
        if len(channels) > 1 and not all(secrets.get(ch) for ch in channels):
            names = [repr(ch) for ch in channels]
            listed = ", ".join(names[:-1]) + " and " + names[-1]
            raise WebhookConfigError(
                f"webhook channels {listed} would {'both' if len(channels) == 2 else 'all'} read their secret "
                f"from {variable} (a channel name is "
                "upper-cased and every character other than A-Z and 0-9 becomes _), so they would share one "
                "secret: rename the channels so that each has its own variable, or give each its own "
                "'CHANNEL=SECRET' line in a webhook secrets file"
            )
    targets: dict[str, WebhookTarget] = {}
    for channel, url in urls.items():
        secret = secrets.get(channel) or secrets.get(secret_env_name(channel))
        if not secret:
            raise WebhookConfigError(
                f"webhook channel {channel!r} has no secret: set {secret_env_name(channel)} "
                f"or add a line '{channel}=SECRET' to the webhook secrets file"
            )
        targets[channel] = WebhookTarget(url, secret.encode("utf-8"))
    return targets


# -- retry policy ------------------------------------------------------------------------


def backoff_delay(attempt: int, base_delay_s: float, max_delay_s: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform(0, min(max_delay_s, base_delay_s * 2**(attempt-1))) after failed attempt `attempt` (1-based)."""
    cap = min(max_delay_s, base_delay_s * (2 ** min(attempt - 1, 62)))
    return (rng or random).uniform(0.0, cap)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _retryable_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _record_id(line: bytes) -> str | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    value = record.get("id") if isinstance(record, dict) else None
    return value if isinstance(value, str) and value else None


# -- the sink ----------------------------------------------------------------------------


class _WebhookPartition(StatelessSinkPartition[Any]):
    """One worker's deliveries: an asyncio loop in a daemon thread with one pooled ClientSession."""

    def __init__(self, sink: WebhookSink, name: str) -> None:
        self.sink = sink
        self.keys = Keys(sink.prefix)
        self.delivered = 0  # 2xx answers
        self.retried = 0  # attempts after the first
        self.failed = 0  # deliveries recorded in webhooks:failed (or on stderr)
        self.ignored = 0  # items for channels without a webhook
        self.redis_errors = 0  # failed writes of a failure record (each retried)
        self._rng = random.Random()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        self._session: aiohttp.ClientSession | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._redis: Any = None
        self._call(self._setup())

    # loop plumbing

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _setup(self) -> None:
        sink = self.sink
        connector = aiohttp.TCPConnector(limit=sink.max_in_flight)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=sink.timeout_s),
            headers={"User-Agent": USER_AGENT}, skip_auto_headers=("Accept-Encoding",),
        )
        self._semaphore = asyncio.Semaphore(sink.max_in_flight)
        if sink.redis_url is not None:
            import redis.asyncio

            self._redis = redis.asyncio.Redis.from_url(
                sink.redis_url, socket_timeout=max(sink.timeout_s, 1.0), socket_connect_timeout=max(sink.timeout_s, 1.0),
            )

    async def _teardown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._redis is not None:
            await self._redis.aclose()

    # bytewax interface

    def write_batch(self, items: list[Any]) -> None:
        work: list[tuple[str, WebhookTarget, TriggerOut]] = []
        targets = self.sink.targets
        for out in each_record(item[1] if isinstance(item, tuple) else item for item in items):
            target = targets.get(out.channel)
            if target is None:
                self.ignored += 1
            else:
                work.append((out.channel, target, out))
        if work:
            self._call(self._deliver_all(work))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._teardown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    # delivery

    async def _deliver_all(self, work: list[tuple[str, WebhookTarget, TriggerOut]]) -> None:
        await asyncio.gather(*(self._deliver(channel, target, out.line) for channel, target, out in work))

    async def _deliver(self, channel: str, target: WebhookTarget, body: bytes) -> None:
        sink = self.sink
        record_id = _record_id(body)
        if record_id is None:
            await self._record_failure(channel, body, "invalid trigger record: no id", 0)
            return
        assert self._session is not None and self._semaphore is not None
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                self.retried += 1
                metrics.WEBHOOK_DELIVERIES.labels(channel, "retried").inc()
            retry_after: float | None = None
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                IDEMPOTENCY_HEADER: record_id,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(target.secret, timestamp, body),
            }
            try:
                async with self._semaphore:
                    async with self._session.post(target.url, data=body, headers=headers, allow_redirects=False) as resp:
                        status = resp.status
                        if 200 <= status < 300:
                            try:  # drain so the connection goes back to the pool; the receiver has accepted already
                                await resp.read()
                            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                                pass
                            self.delivered += 1
                            metrics.WEBHOOK_DELIVERIES.labels(channel, "delivered").inc()
                            return
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                        error = await _status_error(resp)
                retryable = _retryable_status(status)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                error = _exception_error(exc, sink.timeout_s)
                retryable = True
            if not retryable or attempt >= sink.max_attempts:
                await self._record_failure(channel, body, error, attempt)
                return
            delay = backoff_delay(attempt, sink.base_delay_s, sink.max_delay_s, self._rng)
            if retry_after is not None:
                delay = max(delay, min(retry_after, sink.max_delay_s))
            await asyncio.sleep(delay)

    async def _record_failure(self, channel: str, body: bytes, error: str, attempts: int) -> None:
        self.failed += 1
        metrics.WEBHOOK_DELIVERIES.labels(channel, "failed").inc()
        if self._redis is None:
            try:
                data: Any = orjson.loads(body)
            except orjson.JSONDecodeError:
                data = body.decode("utf-8", "replace")
            line = orjson.dumps({"stream": self.keys.failed, "channel": channel, "error": error,
                                 "attempts": attempts, "data": data})
            sys.stderr.write(line.decode() + "\n")
            sys.stderr.flush()
            return
        fields = {"data": body, "channel": channel, "error": error, "attempts": str(attempts)}
        failures = 0
        while True:
            try:
                await self._redis.xadd(self.keys.failed, fields)
                return
            except Exception as exc:  # noqa: BLE001 - any Redis/connection error: keep trying, never drop
                self.redis_errors += 1
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    sys.stderr.write(f"halflife webhooks: cannot write to {self.keys.failed} ({type(exc).__name__}: "
                                     f"{exc}); retrying\n")
                    sys.stderr.flush()
                cap = min(self.sink.max_delay_s, 5.0)
                await asyncio.sleep(backoff_delay(min(failures, 30), max(self.sink.base_delay_s, 0.01), cap, self._rng) + 0.01)


async def _status_error(resp: aiohttp.ClientResponse) -> str:
    """`HTTP 400: <start of the body>` (the body shortened and on one line)."""
    try:
        raw = await resp.content.read(_ERROR_BODY_CHARS * 4)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        raw = b""
    text = " ".join(raw.decode("utf-8", "replace").split())[:_ERROR_BODY_CHARS]
    return f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}"


def _exception_error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timeout after {timeout_s:g}s"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class WebhookSink(DynamicSink[tuple[str, TriggerOut]]):
    """Items are `(key, TriggerOut)`; records of channels in `targets` are POSTed, the others ignored.

    Each worker gets a partition with its own event loop thread, connection pool and
    `max_in_flight` bound. `delivered`, `retried`, `failed`, `ignored` and `redis_errors` sum
    the counters of this process's partitions (for metrics).
    """

    def __init__(self, targets: dict[str, WebhookTarget], redis_url: str | None, prefix: str = "hl:",
                 timeout_s: float = 5.0, max_attempts: int = 8, base_delay_s: float = 0.2, max_delay_s: float = 30.0,
                 max_in_flight: int = 64) -> None:
        metrics.declare_webhooks(sorted(targets))
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if not (timeout_s > 0 and base_delay_s >= 0 and max_delay_s >= 0):
            raise ValueError("timeout_s must be positive, delays not negative")
        self.targets = dict(targets)
        self.redis_url = redis_url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_in_flight = max_in_flight
        self.partitions: list[_WebhookPartition] = []

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _WebhookPartition:
        part = _WebhookPartition(self, f"{step_id}-webhooks-{worker_index}")
        self.partitions.append(part)
        return part

    def _sum(self, name: str) -> int:
        return sum(getattr(p, name) for p in self.partitions)

    @property
    def delivered(self) -> int:
        return self._sum("delivered")

    @property
    def retried(self) -> int:
        return self._sum("retried")

    @property
    def failed(self) -> int:
        return self._sum("failed")

    @property
    def ignored(self) -> int:
        return self._sum("ignored")

    @property
    def redis_errors(self) -> int:
        return self._sum("redis_errors")

    def stats(self) -> dict[str, int]:
        return {name: self._sum(name) for name in ("delivered", "retried", "failed", "ignored", "redis_errors")}
