"""Fault scenarios for the live engine, each checked against the replay-mode oracle.

    .venv/bin/python -m bench.faults --minutes 5 --kills 20                 # every scenario, ~5 min of traffic in all
    .venv/bin/python -m bench.faults --scenarios kill,cluster --minutes 2 --kills 12 --seed 7
    .venv/bin/python -m bench.faults --scenarios webhook --refuse-seconds 10  # a receiver refusing connections for 10 s

Scenarios (`tests/faults/` runs the same functions at a small scale in CI):

* `kill`    -- `halflife run` (live, `--recovery`) killed with SIGKILL at random moments while events
               stream into Redis, restarted from `--recovery` each time. Each kill waits until the
               (re)started engine has written a new trigger, then comes after a seeded random delay, and
               the end of the stream is held back until the last kill: every kill lands mid-stream however
               long the start-up takes.
* `cluster` -- `--processes 2`: cluster member 1 killed with SIGKILL; the supervisor restarts the cluster
               from `--recovery` (and this harness restarts the supervisor, as an orchestrator would, if it
               gives up after its 5 restarts).
* `redis`   -- events sent through the collector by a client that retries 503 as an SDK does; Redis (AOF)
               stopped and started again mid-run: 503 with Retry-After while it is down, 200 after; the
               engine reconnects by itself.
* `webhook` -- the webhook receiver refuses connections, then answers 503 with Retry-After, then is back.
* `slow`    -- a webhook receiver taking 50-200 ms per request, 16 at a time, with 100k+ events waiting in
               Redis: the engine's resident memory stays flat (backpressure); then it speeds up, and
               everything is delivered.
* `first-start` -- SIGKILL while the very first start creates the `--recovery` partitions, then start
               again (no traffic, no oracle): the restarted engine must come up. (It once did not: the
               partly created directory was taken for one to resume from, and every later start failed
               with bytewax's NoPartitionsError or MissingPartitionsError. The partitions are now staged
               and renamed into place; `tests/faults/test_first_start.py` checks it.)

The oracle. Every scenario's events are also run through `halflife run` in replay mode (a file). The
rules have a 2-day lateness and the events are about a day old, so the wall clock fires nothing and the
live triggers are deterministic. Replay mode ends by firing every timer due by the largest event time;
live input never ends, so after the last event each shard stream gets one "flush" event (an `identify`
of a contact of that shard, timed largest event time + lateness + 1 ms): its watermark, broadcast by the
shard's partition, is largest event time + 1 ms, which fires exactly the timers replay fires at its end.
The flush contacts fire nothing themselves. So the final `hl:triggers` must equal the oracle's records
(rule, contact, at, channel, id, and the record itself apart from `emitted_at`).

Exactly once, by id. Redis streams: every trigger id at most once in `hl:triggers` and in each
`hl:triggers:{channel}` (the engine's id ledger), and the set equal to the oracle's. Webhooks are
at-least-once with an idempotency key: after a crash the engine may POST a trigger again (same
`Idempotency-Key`, same record apart from `emitted_at`). The test receiver does what a receiver must:
it verifies the signature, performs the effect for a key once and answers 2xx to a repeat without a
second effect. So per channel: the set of keys accepted = the oracle's ids of that channel, every
delivery of one key carries the same trigger, nothing in `hl:webhooks:failed`; re-deliveries are
counted (and reported) and allowed only across a crash -- without one (`webhook`, `slow`) each key must
be accepted exactly once.

The webhook sink's retry budget (`engine.webhooks.WebhookSink`: full-jitter backoff from 0.2 s doubling
to 30 s, honouring Retry-After up to 30 s; 8 attempts, `halflife run --webhook-max-attempts N` to change
that) is the production default here: this harness does not pass the flag. So the `webhook` scenario
refuses connections for 0.3 s only, then answers 503 with `Retry-After: 5` for 4 s (a proxy in
front of a restarting receiver): a delivery then meets at most one 503, and fails for good only if its
first 7 attempts all fall within the 0.3 s of refusal (p < 1e-6 by simulation of the backoff). With
`Retry-After: 1` and 0.5 s of refusal that chance is 0.25% per delivery caught at the start of the
outage, and a receiver refusing connections for 10 s (`--refuse-seconds 10`) sends deliveries to
`hl:webhooks:failed` for sure with the default 8 attempts: nothing redelivers them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.common import read_metrics
from engine.redis_keys import Keys
from engine.routing import shard_of
from engine.shop import Shop, ShopConfig
from engine.testing import RedisServer, free_port, stop_process, stream_records, wait_port
from engine.times import format_time, parse_time
from engine.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, secret_env_name, verify_signature

ROOT = Path(__file__).resolve().parents[1]
KEYS = Keys("hl:")
DAY_MS = 86_400_000
LATENESS_MS = 2 * DAY_MS
FLUSH_PREFIX = "hl-flush-"
WRITE_KEY = "faults-write-key"

# Short windows (seconds of event time) so that timers fire all along the stream; with a 2-day lateness
# the wall-clock watermark (now - 2 days) stays below the day-old events: it fires nothing.
RULES = """
version: 1
lateness: 2d
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
    actions: [{emit: lifecycle}, {stage: dormant}]
"""
CHANNELS = ("sales", "onsite", "email", "lifecycle")  # of about 0.012, 0.022, 0.038 and 0.31 triggers per event


# -- small helpers ----------------------------------------------------------------------------------


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def rss_kb(pid: int) -> int | None:
    """Resident set size of a process (VmRSS), in KiB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def contact_of(event: dict) -> str:
    return event.get("userId") or event["anonymousId"]


def trigger_key(record: dict) -> tuple[str, str, str, str, str]:
    return record["rule"], record["contact"], record["at"], record["channel"], record["id"]


def comparable(record: dict) -> bytes:
    """A trigger record without its wall-clock `emitted_at`, for comparing two emissions of one trigger."""
    return orjson.dumps({k: v for k, v in record.items() if k != "emitted_at"}, option=orjson.OPT_SORT_KEYS)


# -- the workload -----------------------------------------------------------------------------------


def workload(n: int, contacts: int, seed: int, *, start_ms: int | None = None, step_ms: int = 20) -> list[dict]:
    """n synthetic shop events of `contacts` shoppers, re-timed to about a day ago, `step_ms` apart on average."""
    start = wall_ms() - DAY_MS if start_ms is None else start_ms
    events = Shop(ShopConfig(seed=seed, contacts=contacts, sessions_per_minute=400.0)).take(n)
    for i, e in enumerate(events):
        e["timestamp"] = format_time(start + i * step_ms)
    return events


def flush_events(shards: int, max_ms: int) -> list[dict]:
    """One `identify` per shard stream, timed so that its watermark is max_ms + 1 (see the module doc)."""
    out = []
    for shard in range(shards):
        k = 0
        while shard_of(f"{FLUSH_PREFIX}{shard}-{k}", shards) != shard:
            k += 1
        out.append({"type": "identify", "userId": f"{FLUSH_PREFIX}{shard}-{k}", "messageId": f"flush-{shard}",
                    "timestamp": format_time(max_ms + LATENESS_MS + 1)})
    return out


def max_time_ms(events: list[dict]) -> int:
    return max(int(parse_time(e["timestamp"]) or 0) for e in events)


def replay_oracle(workdir: Path, rules: Path, events: list[dict], shards: int) -> list[dict]:
    """The triggers of `halflife run` in replay mode on the same events."""
    path = workdir / "oracle-events.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    out = workdir / "oracle-triggers.jsonl"
    run = subprocess.run([sys.executable, "-m", "engine", "run", "--rules", str(rules), "--input", str(path),
                          "--output", str(out), "--dlq", str(workdir / "oracle-dlq.jsonl"), "--shards", str(shards)],
                         cwd=ROOT, capture_output=True, timeout=600)
    if run.returncode != 0:
        raise RuntimeError(f"the replay oracle failed: {run.stderr.decode()[-2000:]}")
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if line.strip()]


# -- producers --------------------------------------------------------------------------------------


class DirectProducer(threading.Thread):
    """Writes events into the shard streams as the collector does (one entry per shard per `chunk` events),
    in order, at `rate` events/s (None: all at once), then the flush events.

    `allowed`: how many events it may write before it waits for `allow()` (None: all, then the flush). A
    scenario uses it to keep part of the stream back until it has done its faults; after a wait the
    producer goes on at `rate` from where it stopped (no burst to catch up)."""

    def __init__(self, url: str, events: list[dict], shards: int, rate: float | None, chunk: int = 100,
                 flush: list[dict] | None = None, allowed: int | None = None) -> None:
        super().__init__(daemon=True, name="producer")
        self.url = url
        self.rows = [(shard_of(contact_of(e), shards), orjson.dumps(e)) for e in events]
        self.flush = [(shard_of(contact_of(e), shards), orjson.dumps(e)) for e in flush or []]
        self.shards = shards
        self.rate = rate
        self.chunk = chunk
        self.written = 0
        self.error: BaseException | None = None
        self._allowed = allowed
        self._gate = threading.Condition()

    def allow(self, n: int | None) -> None:
        """Let it write up to `n` events (None: every event, then the flush)."""
        with self._gate:
            if n is None or self._allowed is None:
                self._allowed = None
            else:
                self._allowed = max(self._allowed, n)
            self._gate.notify_all()

    def _wait_allowed(self, i: int | None) -> tuple[int, bool]:
        """How far past event i it may write now (waiting until that is past i; i None: until everything
        and the flush is allowed), and whether it waited."""
        waited = False
        with self._gate:
            while self._allowed is not None and (i is None or self._allowed <= i):
                waited = True
                self._gate.wait(0.5)
            return (len(self.rows) if self._allowed is None else min(len(self.rows), self._allowed)), waited

    def _write(self, client: redis.Redis, rows: list[tuple[int, bytes]]) -> None:
        groups: dict[int, list[bytes]] = {}
        for shard, line in rows:
            groups.setdefault(shard, []).append(line)
        pipe = client.pipeline(transaction=False)
        for shard, lines in sorted(groups.items()):
            pipe.xadd(KEYS.events(shard), {"events": b"\n".join(lines), "n": len(lines)})
        pipe.execute()

    def run(self) -> None:
        try:
            client = redis.Redis.from_url(self.url)
            client.hset(KEYS.config, "shards", self.shards)
            paced_from, paced_i = time.monotonic(), 0  # the rate schedule: event paced_i at paced_from
            i = 0
            while i < len(self.rows):
                limit, waited = self._wait_allowed(i)
                if waited:
                    paced_from, paced_i = time.monotonic(), i
                if self.rate:
                    wait = paced_from + (i - paced_i) / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                rows = self.rows[i:min(i + self.chunk, limit)]
                self._write(client, rows)
                i += len(rows)
                self.written += len(rows)
            self._wait_allowed(None)
            if self.flush:
                self._write(client, self.flush)
            client.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc


class HttpProducer(threading.Thread):
    """POSTs /v1/batch requests of `batch` events to the collector at `rate` events/s, retrying a request
    until it is accepted, as an SDK does: after a 503 it waits Retry-After (at most 2 s), after a
    connection error 0.2 s. Then the flush events, the same way."""

    def __init__(self, port: int, events: list[dict], batch: int, rate: float | None, flush: list[dict]) -> None:
        super().__init__(daemon=True, name="http-producer")
        self.port = port
        self.bodies = [orjson.dumps({"batch": events[i:i + batch]}) for i in range(0, len(events), batch)]
        self.flush_body = orjson.dumps({"batch": flush})
        self.batch = batch
        self.rate = rate
        self.auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        self.statuses: Counter[int] = Counter()
        self.unavailable_without_retry_after = 0
        self.connection_errors = 0
        self.accepted = 0  # requests answered 200
        self.errors: list[str] = []
        self.done = threading.Event()

    def _post(self, conn: http.client.HTTPConnection | None, body: bytes) -> http.client.HTTPConnection | None:
        while True:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
                conn.request("POST", "/v1/batch", body=body,
                             headers={"Authorization": self.auth, "Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                self.connection_errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
                continue
            self.statuses[resp.status] += 1
            if resp.status == 200:
                self.accepted += 1
                return conn
            if resp.status == 503:
                retry_after = resp.getheader("Retry-After")
                if not retry_after:
                    self.unavailable_without_retry_after += 1
                try:
                    wait = float(retry_after or "1")
                except ValueError:
                    wait = 1.0
                time.sleep(min(2.0, max(0.05, wait)))
                continue
            self.errors.append(f"HTTP {resp.status}: {data[:200]!r}")
            return conn

    def run(self) -> None:
        conn = None
        started = time.monotonic()
        try:
            for i, body in enumerate(self.bodies):
                if self.rate:
                    wait = started + i * self.batch / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                conn = self._post(conn, body)
            conn = self._post(conn, self.flush_body)
        finally:
            if conn is not None:
                conn.close()
            self.done.set()


# -- the webhook receiver ---------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1 (aiohttp, in a thread): `/hook/{channel}`.

    It verifies each request's signature (the channel's secret, 5-minute tolerance) and that the record's
    id and channel match the `Idempotency-Key` and the path, performs the effect of a key once and answers
    200 to every valid delivery (a repeat included). `mode`: "up"; "refuse" (not listening, and a request
    on a kept-alive connection gets the connection closed); "unavailable" (503 with Retry-After).
    `delay`: seconds (low, high) each accepted request takes, drawn from a seeded RNG; `concurrency`: how
    many requests it works on at a time (the others wait), None for no limit.
    """

    def __init__(self, secrets: dict[str, str], *, delay: tuple[float, float] = (0.0, 0.0), seed: int = 0,
                 concurrency: int | None = None) -> None:
        self.secrets = {ch: s.encode() for ch, s in secrets.items()}
        self.concurrency = concurrency
        self.port = free_port()
        self.delay = delay
        self.retry_after = "1"
        self.mode = "up"
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.accepted: Counter[str] = Counter()  # key -> deliveries answered 2xx
        self.channel_of: dict[str, str] = {}
        self.bodies: dict[str, set[bytes]] = defaultdict(set)
        self.rejected: list[str] = []  # invalid deliveries (bad signature, id or channel mismatch)
        self.unavailable_answers = 0
        self.dropped = 0  # requests whose connection was closed in "refuse" mode
        self.in_flight = 0
        self.max_in_flight = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="receiver")
        self._runner: Any = None
        self._semaphore: asyncio.Semaphore | None = None

    def url(self, channel: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{channel}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __enter__(self) -> Receiver:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _listen(self) -> None:
        from aiohttp import web

        if self._semaphore is None and self.concurrency:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook/{channel}", self._hook)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        for attempt in range(50):
            try:
                await site.start()
                break
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.1)
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        await runner.cleanup()

    def refuse(self) -> None:
        """Stop listening and drop every connection: clients get connection errors."""
        self.mode = "refuse"
        if self._runner is not None:
            self._call(self._close())

    def unavailable(self, retry_after: str = "1") -> None:
        """Listen, but answer 503 with Retry-After to every request."""
        self.retry_after = retry_after
        if self._runner is None:
            self._call(self._listen())
        self.mode = "unavailable"

    def up(self) -> None:
        if self._runner is None:
            self._call(self._listen())
        self.mode = "up"

    async def _hook(self, request: Any) -> Any:
        from aiohttp import web

        channel = request.match_info["channel"]
        body = await request.read()
        if self.mode == "refuse":
            self.dropped += 1
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=503)
        if self.mode == "unavailable":
            self.unavailable_answers += 1
            return web.Response(status=503, headers={"Retry-After": self.retry_after}, text="down for maintenance")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            low, high = self.delay
            if high > 0:
                if self._semaphore is not None:
                    async with self._semaphore:
                        await asyncio.sleep(self._rng.uniform(low, high))
                else:
                    await asyncio.sleep(self._rng.uniform(low, high))
        finally:
            self.in_flight -= 1
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        secret = self.secrets.get(channel)
        if secret is None or not verify_signature(secret, request.headers.get(TIMESTAMP_HEADER), body,
                                                  request.headers.get(SIGNATURE_HEADER), tolerance_s=300):
            with self._lock:
                self.rejected.append(f"bad signature on channel {channel!r}, key {key!r}")
            return web.Response(status=401, text="bad signature")
        try:
            record = orjson.loads(body)
        except orjson.JSONDecodeError:
            record = {}
        if record.get("id") != key or record.get("channel") != channel:
            with self._lock:
                self.rejected.append(f"record id/channel {record.get('id')!r}/{record.get('channel')!r} "
                                     f"!= key {key!r} / path {channel!r}")
            return web.Response(status=422, text="id mismatch")
        with self._lock:
            self.accepted[key] += 1  # the effect happens on the first; a repeat is acknowledged only
            self.channel_of[key] = channel
            self.bodies[key].add(comparable(record))
        return web.Response(status=200, text="ok")

    def keys(self, channel: str) -> set[str]:
        with self._lock:
            return {k for k, ch in self.channel_of.items() if ch == channel}

    def total_accepted(self) -> int:
        with self._lock:
            return len(self.accepted)


# -- the engine -------------------------------------------------------------------------------------


class Engine:
    """`halflife run` in live mode, in its own process group, its stderr appended to a log file."""

    def __init__(self, workdir: Path, rules: Path, redis_url: str, *, shards: int, batch_size: int = 200,
                 snapshot_s: float = 0.5, processes: int = 1, webhooks: dict[str, str] | None = None,
                 secrets: dict[str, str] | None = None, metrics_port: int | None = None) -> None:
        self.recovery = workdir / "recovery"
        self.log_path = workdir / "engine.log"
        self.argv = [sys.executable, "-m", "engine", "run", "--rules", str(rules), "--input", redis_url,
                     "--output", redis_url, "--dlq", redis_url, "--profiles", redis_url,
                     "--recovery", str(self.recovery), "--shards", str(shards), "--batch-size", str(batch_size),
                     "--snapshot-interval", str(snapshot_s), "--processes", str(processes)]
        for channel, url in (webhooks or {}).items():
            self.argv += ["--webhook", f"{channel}={url}"]
        if metrics_port is not None:
            self.argv += ["--metrics-port", str(metrics_port)]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for channel, secret in (secrets or {}).items():
            self.env[secret_env_name(channel)] = secret
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Engine:
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts + 1} at {time.strftime('%H:%M:%S')}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a supervisor and its cluster members)."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> int | None:
        return None if self.proc is None else stop_process(self.proc)[0]

    def recovery_parts(self) -> list[str]:
        try:
            return sorted(os.listdir(self.recovery))
        except OSError:
            return []

    def wait_recovery_created(self, partitions: int = 8, timeout_s: float = 30.0) -> None:
        """Wait until the recovery directory holds its partitions (created by the first start)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.alive():
            parts = self.recovery_parts()
            if (sum(p.endswith(".sqlite3") for p in parts) >= partitions
                    and not any(p.endswith("-journal") for p in parts)):
                time.sleep(0.3)
                return
            time.sleep(0.01)

    def member_pids(self, process_id: int) -> list[int]:
        """Pids of this supervisor's cluster member `process_id` (`--processes N`)."""
        out = subprocess.run(["pgrep", "-P", str(self.pid), "-f", "--", f"--process-id {process_id} --addresses"],
                             capture_output=True, text=True).stdout.split()
        return [int(p) for p in out]

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# -- checking ---------------------------------------------------------------------------------------


@dataclass
class Report:
    scenario: str
    seed: int
    events: int = 0
    kills: int = 0
    restarts: int = 0  # engine restarts (kill), cluster restarts by the supervisor (cluster), Redis restarts (redis)
    oracle_triggers: int = 0
    live_triggers: int = 0
    missing: int = 0
    extra: int = 0
    duplicates: int = 0  # trigger ids appearing more than once in hl:triggers or a hl:triggers:{channel}
    content_mismatches: int = 0
    webhook_expected: int = 0
    webhook_accepted: int = 0  # distinct keys accepted
    webhook_redeliveries: int = 0  # 2xx answers beyond the first per key
    failed: int = 0  # entries in hl:webhooks:failed
    dead_letters: int = 0
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def line(self) -> str:
        return (f"{self.scenario:<11} seed {self.seed:<6} events {self.events:>8,} kills {self.kills:>3} "
                f"restarts {self.restarts:>3} triggers {self.live_triggers:>7,}/{self.oracle_triggers:<7,} "
                f"missing {self.missing} extra {self.extra} duplicates {self.duplicates} "
                f"webhooks {self.webhook_accepted:,}/{self.webhook_expected:,} (re-delivered {self.webhook_redeliveries}) "
                f"failed {self.failed} {self.seconds:.0f} s -> {'OK' if not self.problems else 'FAILED'}")


def wait_for_outputs(client: redis.Redis, oracle: list[dict], receiver: Receiver | None, channels: Iterable[str],
                     alive: Callable[[], bool], timeout_s: float, grace_s: float = 2.0) -> bool:
    """Wait until hl:triggers holds as many records as the oracle and every expected webhook key was accepted
    or recorded in hl:webhooks:failed, then `grace_s` more (for anything extra); False on timeout or when
    the engine died."""
    expected = {ch: {r["id"] for r in oracle if r["channel"] == ch} for ch in channels}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return False
        if client.xlen(KEYS.triggers) >= len(oracle):
            failed = set()
            if receiver is not None and client.xlen(KEYS.failed):
                failed = {orjson.loads(f[b"data"])["id"] for _, f in client.xrange(KEYS.failed)}
            if receiver is None or all(ids <= receiver.keys(ch) | failed for ch, ids in expected.items()):
                time.sleep(grace_s)
                return True
        time.sleep(0.2)
    return False


def check(report: Report, client: redis.Redis, oracle: list[dict], receiver: Receiver | None = None,
          webhook_channels: Iterable[str] = (), webhook_exactly_once: bool = False) -> None:
    """Compare the live outputs with the oracle; fills the report's counts and problems."""
    live = stream_records(client, KEYS.triggers)
    report.oracle_triggers, report.live_triggers = len(oracle), len(live)
    ids = Counter(r["id"] for r in live)
    dup = sum(n - 1 for n in ids.values() if n > 1)
    if dup:
        report.problem(f"{dup} duplicate trigger ids in {KEYS.triggers}")
    for channel in sorted({r["channel"] for r in live} | {r["channel"] for r in oracle}):
        records = stream_records(client, KEYS.channel(channel))
        ch_ids = Counter(r["id"] for r in records)
        ch_dup = sum(n - 1 for n in ch_ids.values() if n > 1)
        if ch_dup:
            report.problem(f"{ch_dup} duplicate trigger ids in {KEYS.channel(channel)}")
        dup += ch_dup
        if set(ch_ids) != {r["id"] for r in live if r["channel"] == channel}:
            report.problem(f"{KEYS.channel(channel)} differs from the {channel} records of {KEYS.triggers}")
    report.duplicates = dup
    want = {trigger_key(r) for r in oracle}
    got = {trigger_key(r) for r in live}
    missing, extra = sorted(want - got), sorted(got - want)
    report.missing, report.extra = len(missing), len(extra)
    if missing:
        report.problem(f"{len(missing)} oracle triggers missing from {KEYS.triggers}, e.g. {missing[:3]}")
    if extra:
        report.problem(f"{len(extra)} triggers in {KEYS.triggers} that the oracle does not have, e.g. {extra[:3]}")
    by_id = {r["id"]: comparable(r) for r in oracle}
    differ = [r["id"] for r in live if r["id"] in by_id and comparable(r) != by_id[r["id"]]]
    report.content_mismatches = len(differ)
    if differ:
        example = next(r for r in live if r["id"] == differ[0])
        oracle_record = next(r for r in oracle if r["id"] == differ[0])
        report.problem(f"{len(differ)} trigger records differ from the oracle's apart from emitted_at, "
                       f"e.g. live {example} vs oracle {oracle_record}")
    report.failed = client.xlen(KEYS.failed)
    if report.failed:
        entry = client.xrange(KEYS.failed, count=1)[0][1]
        report.problem(f"{report.failed} entries in {KEYS.failed}, e.g. channel {entry.get(b'channel')!r} "
                       f"error {entry.get(b'error')!r} attempts {entry.get(b'attempts')!r}")
    report.dead_letters = client.xlen(KEYS.dlq)
    if report.dead_letters:
        report.problem(f"{report.dead_letters} dead letters in {KEYS.dlq} (every event is valid)")
    if receiver is None:
        return
    for channel in webhook_channels:
        expected = {r["id"] for r in oracle if r["channel"] == channel}
        got_keys = receiver.keys(channel)
        report.webhook_expected += len(expected)
        report.webhook_accepted += len(got_keys)
        if expected - got_keys:
            report.problem(f"webhook {channel}: {len(expected - got_keys)} of {len(expected)} trigger ids never accepted")
        if got_keys - expected:
            report.problem(f"webhook {channel}: {len(got_keys - expected)} keys accepted that the oracle does not have")
        for key in got_keys & expected:
            if receiver.bodies[key] != {by_id[key]}:
                report.problem(f"webhook {channel}: key {key} delivered with {len(receiver.bodies[key])} different "
                               "records or not the oracle's record")
                break
    report.webhook_redeliveries = sum(n - 1 for n in receiver.accepted.values() if n > 1)
    if receiver.rejected:
        report.problem(f"{len(receiver.rejected)} invalid webhook deliveries, e.g. {receiver.rejected[:2]}")
    if webhook_exactly_once and report.webhook_redeliveries:
        report.problem(f"{report.webhook_redeliveries} webhook re-deliveries although the engine never crashed")


# -- scenarios --------------------------------------------------------------------------------------


def _setup(workdir: Path, seed: int, events: int, contacts: int, shards: int) -> tuple[Path, list[dict], list[dict], Future]:
    """Rules, events, flush events, and the oracle's triggers (computed in the background: `.result()`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    evs = workload(events, contacts, seed)
    flush = flush_events(shards, max_time_ms(evs))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oracle")
    oracle = pool.submit(replay_oracle, workdir, rules, evs, shards)
    pool.shutdown(wait=False)
    return rules, evs, flush, oracle


def _secrets(seed: int, channels: Iterable[str]) -> dict[str, str]:
    rng = random.Random(seed)
    return {ch: f"whsec-{ch}-{rng.getrandbits(64):016x}" for ch in channels}


def wait_for_new_triggers(client: redis.Redis, since: int, alive: Callable[[], bool], deadline: float) -> bool:
    """Wait until hl:triggers holds more than `since` records (the engine shows progress); False when the
    engine exited or `deadline` (time.monotonic()) passed first."""
    while time.monotonic() < deadline:
        if client.xlen(KEYS.triggers) > since:
            return True
        if not alive():
            return False
        time.sleep(0.01)
    return False


def scenario_kill(workdir: Path, *, seed: int = 1, events: int = 40_000, contacts: int = 400, rate: float = 5000.0,
                  kills: int = 6, shards: int = 8, webhook_channels: tuple[str, ...] = ("email", "sales", "lifecycle"),
                  timeout_s: float = 120.0) -> Report:
    """kill -9 of the live engine `kills` times at random moments while events stream in; restart from --recovery.

    The kills follow the engine, not the clock (its start-up takes from 0.6 s to several seconds on a
    loaded machine): the events are cut into `kills + 1` segments. Each (re)start lets the producer write
    the first half of the next segment; once the engine has written a trigger of its own (hl:triggers grew
    since that start) the producer gets the second half, streamed at `rate`, and the engine is killed after
    a seeded random delay within the time that half takes. The last segment and the flush events come
    after the last kill only. So every kill lands after the restarted engine made progress and before the
    stream is complete. `timeout_s` bounds the kill phase (a start that never shows progress is a problem)
    and, separately, the wait for the final outputs.
    """
    started = time.monotonic()
    report = Report("kill", seed, events=events)
    rules, evs, flush, oracle_job = _setup(workdir, seed, events, contacts, shards)
    rng = random.Random(seed)
    secrets = _secrets(seed, webhook_channels)
    segment = max(1, len(evs) // (kills + 1))
    lead = segment // 2
    window_s = (segment - lead) / rate
    with RedisServer(str(workdir)) as server, Receiver(secrets, seed=seed) as receiver:
        client = redis.Redis.from_url(server.url)
        engine = Engine(workdir, rules, server.url, shards=shards, secrets=secrets,
                        webhooks={ch: receiver.url(ch) for ch in webhook_channels})
        producer = DirectProducer(server.url, evs, shards, rate, flush=flush, allowed=lead)
        producer.start()
        engine.start()
        restarted = time.monotonic()
        at_kill = []
        progress_s: list[float] = []  # from each (re)start to its first new trigger
        delays_s: list[float] = []  # from that trigger to the kill
        try:
            deadline = time.monotonic() + timeout_s
            # A kill while the very first start creates the recovery partitions is scenario `first-start`
            # (it leaves a directory the engine cannot resume from): the kills here start once they exist.
            engine.wait_recovery_created()
            since = 0
            for k in range(kills):
                if not wait_for_new_triggers(client, since, engine.alive, deadline):
                    if engine.alive():
                        report.problem(f"no new trigger in {KEYS.triggers} within {time.monotonic() - restarted:.0f} s "
                                       f"of start {engine.starts} (kill phase limit {timeout_s:g} s): "
                                       f"{engine.log_tail()}")
                    else:
                        report.problem(f"the engine exited by itself (code {engine.proc.returncode if engine.proc else None}): "
                                       f"{engine.log_tail()}")
                    break
                progress_s.append(time.monotonic() - restarted)
                producer.allow((k + 1) * segment)
                delay = rng.uniform(0.0, window_s)
                time.sleep(delay)
                delays_s.append(delay)
                if not engine.alive():
                    report.problem(f"the engine exited by itself (code {engine.proc.returncode if engine.proc else None}): "
                                   f"{engine.log_tail()}")
                    break
                engine.kill()
                report.kills += 1
                at_kill.append((producer.written, client.xlen(KEYS.triggers), receiver.total_accepted()))
                producer.allow((k + 1) * segment + lead)
                engine.start()
                restarted = time.monotonic()
                # Counted once the killed engine's last commands are surely done, long before the new one
                # (a second of start-up at least) can write.
                since = client.xlen(KEYS.triggers)
                report.restarts += 1
            producer.allow(None)
            producer.join()
            if producer.error:
                report.problem(f"producer failed: {producer.error!r}")
            oracle = oracle_job.result()
            if not wait_for_outputs(client, oracle, receiver, webhook_channels, engine.alive, timeout_s):
                report.problem(f"outputs incomplete after {timeout_s:g} s (engine alive: {engine.alive()}): "
                               f"{engine.log_tail()}")
        finally:
            producer.allow(None)
            engine.stop()
        report.notes["at_kill (events written, hl:triggers, webhook keys)"] = at_kill
        report.notes["start to first new trigger (s)"] = [round(x, 2) for x in progress_s]
        report.notes["kill delay after it (s)"] = [round(x, 2) for x in delays_s]
        report.notes["kill window (s)"] = round(window_s, 2)
        check(report, client, oracle_job.result(), receiver, webhook_channels)
        client.close()
    report.seconds = time.monotonic() - started
    return report


def scenario_cluster(workdir: Path, *, seed: int = 2, events: int = 40_000, contacts: int = 400, rate: float = 4000.0,
                     kills: int = 2, shards: int = 8, webhook_channels: tuple[str, ...] = ("email", "lifecycle"),
                     timeout_s: float = 120.0) -> Report:
    """`--processes 2`: cluster member 1 killed with SIGKILL `kills` times; the supervisor restarts the cluster."""
    started = time.monotonic()
    report = Report("cluster", seed, events=events)
    rules, evs, flush, oracle_job = _setup(workdir, seed, events, contacts, shards)
    rng = random.Random(seed)
    secrets = _secrets(seed, webhook_channels)
    mean_gap = events / rate / max(1, kills)
    supervisor_starts = 0
    with RedisServer(str(workdir)) as server, Receiver(secrets, seed=seed) as receiver:
        client = redis.Redis.from_url(server.url)
        engine = Engine(workdir, rules, server.url, shards=shards, processes=2, secrets=secrets,
                        webhooks={ch: receiver.url(ch) for ch in webhook_channels})
        producer = DirectProducer(server.url, evs, shards, rate, flush=flush)
        producer.start()
        engine.start()
        supervisor_starts += 1
        killed: set[int] = set()
        try:
            for _ in range(kills):
                # The member to kill: the current cluster's process 1 (not one killed already).
                deadline = time.monotonic() + 90
                pids: list[int] = []
                while time.monotonic() < deadline:
                    if not engine.alive():  # gave up after its restarts: restart it as an orchestrator would
                        report.notes["supervisor exit codes"] = report.notes.get("supervisor exit codes", []) + [
                            engine.proc.returncode if engine.proc else None]
                        engine.start()
                        supervisor_starts += 1
                    pids = [p for p in engine.member_pids(1) if p not in killed]
                    if pids:
                        break
                    time.sleep(0.05)
                if not pids:
                    report.problem(f"cluster member 1 never appeared: {engine.log_tail()}")
                    break
                time.sleep(rng.uniform(0.3 * mean_gap, 1.5 * mean_gap))
                try:
                    os.kill(pids[0], signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.add(pids[0])
                report.kills += 1
            producer.join()
            if producer.error:
                report.problem(f"producer failed: {producer.error!r}")

            def alive() -> bool:  # the supervisor, restarted if it gave up
                nonlocal supervisor_starts
                if not engine.alive():
                    engine.start()
                    supervisor_starts += 1
                return True

            oracle = oracle_job.result()
            if not wait_for_outputs(client, oracle, receiver, webhook_channels, alive, timeout_s):
                report.problem(f"outputs incomplete after {timeout_s:g} s: {engine.log_tail()}")
        finally:
            engine.stop()
        log = engine.log_tail(10**7)
        report.restarts = log.count("restarting the cluster from")
        report.notes["supervisor starts"] = supervisor_starts
        if report.restarts + supervisor_starts - 1 < report.kills:
            report.problem(f"{report.kills} members killed but the cluster was restarted {report.restarts} times "
                           f"(supervisor started {supervisor_starts} times)")
        check(report, client, oracle_job.result(), receiver, webhook_channels)
        client.close()
    report.seconds = time.monotonic() - started
    return report


def _collector(redis_url: str, port: int, shards: int, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "engine", "collect", "--redis", redis_url, "--port", str(port),
                                 "--write-key", WRITE_KEY, "--shards", str(shards), "--redis-timeout", "2"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)


def _get(port: int, path: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)
    except OSError:
        return 0, {}


def _post_probe(port: int, event: dict) -> tuple[int, str | None]:
    """One /v1/track request: (status, Retry-After)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/track", data=orjson.dumps(event), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": "Basic " +
                                          base64.b64encode(f"{WRITE_KEY}:".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Retry-After")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Retry-After")


def scenario_redis(workdir: Path, *, seed: int = 3, events: int = 30_000, contacts: int = 400, rate: float = 4000.0,
                   outages: int = 1, down_s: float = 2.0, shards: int = 8, batch: int = 10,
                   timeout_s: float = 120.0) -> Report:
    """Redis (AOF) stopped and started `outages` times while a retrying client sends events through the collector."""
    started = time.monotonic()
    report = Report("redis", seed, events=events)
    rules, evs, flush, oracle_job = _setup(workdir, seed, events, contacts, shards)
    rng = random.Random(seed)
    redis_dir = workdir / "redis"
    redis_dir.mkdir(exist_ok=True)
    server = RedisServer(str(redis_dir), appendonly=True)
    server.start()
    port = free_port()
    collector = _collector(server.url, port, shards, workdir / "collector.log")
    engine = Engine(workdir, rules, server.url, shards=shards)
    client = redis.Redis.from_url(server.url)
    probes: list[tuple[str, int, str | None]] = []
    try:
        wait_port(port, proc=collector)
        engine.start()
        producer = HttpProducer(port, evs, batch, rate, flush)
        producer.start()
        duration = events / rate
        for _ in range(outages):
            # Each outage starts at a random moment of its slice of the send time.
            time.sleep(max(0.0, rng.uniform(0.2, 0.8) * duration / outages))
            server.stop()
            status, headers = _get(port, "/health")
            probes.append(("health while down", status, None))
            probe_status, retry_after = _post_probe(port, {"type": "track", "event": "Probe", "userId": "probe",
                                                           "timestamp": format_time(wall_ms() - DAY_MS)})
            probes.append(("track while down", probe_status, retry_after))
            if probe_status != 503 or not retry_after:
                report.problem(f"while Redis is down the collector answered {probe_status} (Retry-After {retry_after!r}); "
                               "503 with Retry-After expected")
            time.sleep(down_s)
            server.start()
            report.restarts += 1
            deadline = time.monotonic() + 10
            status = 0
            while time.monotonic() < deadline and status != 200:
                status, _ = _get(port, "/health")
                time.sleep(0.05)
            probes.append(("health after restart", status, None))
            if status != 200:
                report.problem(f"the collector's /health is {status} after Redis came back")
        producer.done.wait(timeout=timeout_s + duration)
        if not producer.done.is_set():
            report.problem("the client could not get every batch accepted")
        if producer.errors:
            report.problem(f"{len(producer.errors)} requests refused other than with 503: {producer.errors[:3]}")
        if producer.unavailable_without_retry_after:
            report.problem(f"{producer.unavailable_without_retry_after} 503 answers without Retry-After")
        report.notes["client statuses"] = dict(producer.statuses)
        report.notes["client connection errors"] = producer.connection_errors
        report.notes["probes"] = probes
        oracle = oracle_job.result()
        if not wait_for_outputs(client, oracle, None, (), engine.alive, timeout_s):
            report.problem(f"outputs incomplete after {timeout_s:g} s (engine alive: {engine.alive()}): "
                           f"{engine.log_tail()}")
        report.notes["engine log: Redis errors logged"] = engine.log_tail(10**7).count("Redis")
        if engine.starts != 1 or not engine.alive():
            report.problem(f"the engine was started {engine.starts} times, alive at the end: {engine.alive()}")
        check(report, client, oracle_job.result())
    finally:
        engine.stop()
        stop_process(collector)
        client.close()
        server.stop()
    report.seconds = time.monotonic() - started
    return report


def scenario_webhook(workdir: Path, *, seed: int = 4, events: int = 30_000, contacts: int = 400, rate: float = 4000.0,
                     refuse_s: float = 0.3, unavailable_s: float = 4.0, retry_after: str = "5", shards: int = 8,
                     webhook_channels: tuple[str, ...] = CHANNELS, timeout_s: float = 120.0) -> Report:
    """The webhook receiver refuses connections for `refuse_s`, answers 503 with `Retry-After: retry_after`
    for `unavailable_s`, then is back (see the module doc for the retry budget these fit in)."""
    started = time.monotonic()
    report = Report("webhook", seed, events=events)
    rules, evs, flush, oracle_job = _setup(workdir, seed, events, contacts, shards)
    secrets = _secrets(seed, webhook_channels)
    metrics_port = free_port()
    with RedisServer(str(workdir)) as server, Receiver(secrets, seed=seed) as receiver:
        client = redis.Redis.from_url(server.url)
        engine = Engine(workdir, rules, server.url, shards=shards, secrets=secrets, metrics_port=metrics_port,
                        webhooks={ch: receiver.url(ch) for ch in webhook_channels})
        producer = DirectProducer(server.url, evs, shards, rate, flush=flush)
        engine.start()
        try:
            # Wait until deliveries flow, then take the receiver down in the middle of the stream.
            producer.start()
            deadline = time.monotonic() + 60
            while receiver.total_accepted() < 50 and time.monotonic() < deadline:
                time.sleep(0.05)
            before = receiver.total_accepted()
            receiver.refuse()
            time.sleep(refuse_s)
            receiver.unavailable(retry_after)
            time.sleep(unavailable_s)
            receiver.up()
            report.notes["accepted before the outage"] = before
            report.notes["requests dropped while refusing / answered 503"] = [receiver.dropped, receiver.unavailable_answers]
            producer.join()
            if producer.error:
                report.problem(f"producer failed: {producer.error!r}")
            oracle = oracle_job.result()
            if not wait_for_outputs(client, oracle, receiver, webhook_channels, engine.alive, timeout_s):
                report.problem(f"outputs incomplete after {timeout_s:g} s (engine alive: {engine.alive()}): "
                               f"{engine.log_tail()}")
            metrics = read_metrics(metrics_port) or {}
            report.notes["engine webhook deliveries (delivered+retried+failed)"] = metrics.get(
                "halflife_webhook_deliveries_total")
        finally:
            engine.stop()
        if receiver.unavailable_answers == 0:
            report.problem("no delivery met the outage (the receiver answered no 503)")
        check(report, client, oracle_job.result(), receiver, webhook_channels, webhook_exactly_once=True)
        client.close()
    report.seconds = time.monotonic() - started
    return report


def scenario_slow(workdir: Path, *, seed: int = 5, events: int = 150_000, contacts: int = 2000,
                  delay: tuple[float, float] = (0.05, 0.2), concurrency: int | None = 16, slow_s: float = 12.0,
                  warmup_s: float = 3.0, shards: int = 8, webhook_channels: tuple[str, ...] = ("sales", "onsite", "email"),
                  timeout_s: float = 300.0) -> Report:
    """A backlog of `events` in Redis and a receiver taking `delay` s per request, `concurrency` requests at a
    time (about 128 deliveries/s with the defaults): RSS flat while it is slow, then it speeds up and
    everything must arrive."""
    started = time.monotonic()
    report = Report("slow", seed, events=events)
    rules, evs, flush, oracle_job = _setup(workdir, seed, events, contacts, shards)
    phases = {"setup": time.monotonic() - started}
    secrets = _secrets(seed, webhook_channels)
    metrics_port = free_port()
    with RedisServer(str(workdir)) as server, Receiver(secrets, delay=delay, seed=seed, concurrency=concurrency) as receiver:
        client = redis.Redis.from_url(server.url)
        producer = DirectProducer(server.url, evs, shards, None, chunk=1000, flush=flush)
        producer.run()  # all of it, before the engine starts
        if producer.error:
            raise producer.error
        phases["preload"] = time.monotonic() - started - sum(phases.values())
        engine = Engine(workdir, rules, server.url, shards=shards, secrets=secrets, metrics_port=metrics_port,
                        webhooks={ch: receiver.url(ch) for ch in webhook_channels}, batch_size=1000)
        engine.start()
        samples: list[tuple[float, int, float]] = []  # (seconds since the first delivery, RSS KiB, events read)
        try:
            deadline = time.monotonic() + 60
            while receiver.total_accepted() == 0 and time.monotonic() < deadline and engine.alive():
                time.sleep(0.05)
            t0 = time.monotonic()
            phases["engine start"] = time.monotonic() - started - sum(phases.values())
            while time.monotonic() - t0 < warmup_s + slow_s and engine.alive():
                metrics = read_metrics(metrics_port) or {}
                rss = rss_kb(engine.pid) or 0
                samples.append((time.monotonic() - t0, rss, metrics.get("halflife_events_in_total", float("nan"))))
                time.sleep(0.5)
            slow_deliveries = receiver.total_accepted()
            receiver.delay = (0.0, 0.0)
            phases["slow"] = time.monotonic() - started - sum(phases.values())
            oracle = oracle_job.result()
            if not wait_for_outputs(client, oracle, receiver, webhook_channels, engine.alive, timeout_s):
                report.problem(f"outputs incomplete after {timeout_s:g} s (engine alive: {engine.alive()}): "
                               f"{engine.log_tail()}")
            final_rss = rss_kb(engine.pid)
            phases["drain"] = time.monotonic() - started - sum(phases.values())
        finally:
            engine.stop()
        after = [s for s in samples if s[0] >= warmup_s]
        if not after:
            report.problem(f"no samples after the warm-up: {engine.log_tail()}")
        else:
            base = after[0][1]
            peak = max(s[1] for s in after)
            read = after[-1][2]
            backlog = events - read
            report.notes.update({
                "rss_kib at warm-up end / peak / after draining": [base, peak, final_rss],
                "rss growth during the slow phase (MiB)": round((peak - base) / 1024, 1),
                "events read by the end of the slow phase": read,
                "backlog at the end of the slow phase (events)": backlog,
                "webhook deliveries in the slow phase": slow_deliveries,
                "receiver max concurrent requests": receiver.max_in_flight,
                "samples (s, rss KiB, events read)": [(round(t, 1), r, e) for t, r, e in samples],
            })
            report.notes["rss_growth_kib"] = peak - base
            report.notes["backlog"] = backlog
        check(report, client, oracle_job.result(), receiver, webhook_channels, webhook_exactly_once=True)
        client.close()
    report.seconds = time.monotonic() - started
    report.notes["phases (s)"] = {k: round(v, 1) for k, v in phases.items()}
    return report


def scenario_first_start(workdir: Path, *, seed: int = 6, attempts: int = 10, shards: int = 8,
                         window_s: float = 0.02, stop_at_first: bool = False, **_: Any) -> Report:
    """SIGKILL during the very first start, while `--recovery` partitions are being created, then start again.

    Each attempt uses a fresh recovery directory: start the engine, wait for the directory to appear, kill
    it within `window_s`, start it again and see whether it is still running 3 s later (a start that cannot
    resume exits within about a second). Any attempt that does not come up is a problem.
    """
    started = time.monotonic()
    report = Report("first-start", seed)
    workdir.mkdir(parents=True, exist_ok=True)
    rules = workdir / "rules.yaml"
    rules.write_text(RULES)
    rng = random.Random(seed)
    outcomes = []
    with RedisServer(str(workdir)) as server:
        client = redis.Redis.from_url(server.url)
        client.hset(KEYS.config, "shards", shards)
        for attempt in range(attempts):
            work = workdir / f"attempt-{attempt}"
            work.mkdir()
            engine = Engine(work, rules, server.url, shards=shards)
            engine.start()
            deadline = time.monotonic() + 30
            while not engine.recovery.exists() and time.monotonic() < deadline:
                time.sleep(0.0005)
            time.sleep(rng.uniform(0.0, window_s))
            engine.kill()
            report.kills += 1
            left = engine.recovery_parts()
            engine.start()
            report.restarts += 1
            deadline = time.monotonic() + 3.0
            while engine.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            up = engine.alive()
            engine.stop()
            error = "" if up else (engine.log_tail(2000).strip().splitlines() or [""])[-1]
            outcomes.append({"left after the kill": left, "came up": up, "error": error})
            if not up:
                report.problem(f"attempt {attempt}: killed while creating {engine.recovery} (left {left}); every "
                               f"later start fails: {error}")
                if stop_at_first:
                    break
        client.close()
    report.notes["attempts"] = outcomes
    report.seconds = time.monotonic() - started
    return report


SCENARIOS = {
    "kill": scenario_kill,
    "cluster": scenario_cluster,
    "redis": scenario_redis,
    "webhook": scenario_webhook,
    "slow": scenario_slow,
    "first-start": scenario_first_start,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0,
                        help="minutes of event traffic in all, split evenly over the scenarios (default 5)")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the engine in the kill scenario (default 20)")
    parser.add_argument("--cluster-kills", type=int, default=None,
                        help="SIGKILLs of cluster member 1 in the cluster scenario (default: kills / 2)")
    parser.add_argument("--outages", type=int, default=None, help="Redis restarts in the redis scenario (default: 1 per "
                        "30 s of its traffic)")
    parser.add_argument("--rate", type=float, default=4000.0, help="offered events/s during traffic (default 4000)")
    parser.add_argument("--contacts", type=int, default=2000, help="shoppers in the pool (default 2000)")
    parser.add_argument("--refuse-seconds", type=float, default=0.3,
                        help="webhook scenario: seconds the receiver refuses connections (default 0.3)")
    parser.add_argument("--unavailable-seconds", type=float, default=4.0,
                        help="webhook scenario: seconds it then answers 503 (default 4)")
    parser.add_argument("--retry-after", default="5", help="webhook scenario: its Retry-After header (default 5)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of " + ", ".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=1, help="base seed (scenario i uses seed + i)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workdir", help="keep every scenario's files here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the reports to this JSON file")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios {unknown}")
    seconds = args.minutes * 60 / max(1, len([n for n in names if n != "first-start"]))
    events = max(10_000, int(args.rate * seconds))
    reports: list[Report] = []
    with tempfile.TemporaryDirectory(prefix="halflife-faults-") as tmp:
        base = Path(args.workdir) if args.workdir else Path(tmp)
        for i, name in enumerate(names):
            seed = args.seed + i
            common = {"seed": seed, "shards": args.shards, "contacts": args.contacts}
            work = base / f"{name}-{seed}"
            if name == "first-start":
                print(f"== {name}: {max(10, args.kills)} kills while the first start creates --recovery, seed {seed}",
                      flush=True)
            elif name == "slow":
                print(f"== {name}: {max(150_000, events):,} events in Redis, a slow receiver for "
                      f"{max(12.0, seconds / 2):.0f} s, seed {seed}", flush=True)
            else:
                print(f"== {name}: {events:,} events at {args.rate:,.0f}/s ({seconds:.0f} s of traffic), seed {seed}",
                      flush=True)
            if name == "kill":
                report = scenario_kill(work, events=events, rate=args.rate, kills=args.kills, timeout_s=600, **common)
            elif name == "cluster":
                kills = args.cluster_kills if args.cluster_kills is not None else max(1, args.kills // 2)
                report = scenario_cluster(work, events=events, rate=args.rate, kills=kills, timeout_s=600, **common)
            elif name == "redis":
                outages = args.outages if args.outages is not None else max(1, int(seconds // 30))
                report = scenario_redis(work, events=events, rate=args.rate, outages=outages, timeout_s=600, **common)
            elif name == "webhook":
                report = scenario_webhook(work, events=events, rate=args.rate, refuse_s=args.refuse_seconds,
                                          unavailable_s=args.unavailable_seconds, retry_after=args.retry_after,
                                          timeout_s=600, **common)
            elif name == "first-start":
                report = scenario_first_start(work, seed=seed, attempts=max(10, args.kills))
            else:
                report = scenario_slow(work, events=max(150_000, events), slow_s=max(12.0, seconds / 2), timeout_s=900,
                                       **common)
            reports.append(report)
            print(report.line(), flush=True)
            for problem in report.problems:
                print(f"   problem: {problem[:600]}", flush=True)
    print()
    print(f"{'scenario':<11} {'kills':>5} {'restarts':>8} {'triggers':>9} {'oracle':>9} {'dup ids':>7} {'mismatch':>8} "
          f"{'webhooks':>9} {'re-deliv':>8} {'failed':>6}  result")
    for r in reports:
        print(f"{r.scenario:<11} {r.kills:>5} {r.restarts:>8} {r.live_triggers:>9,} {r.oracle_triggers:>9,} {r.duplicates:>7} "
              f"{r.missing + r.extra + r.content_mismatches:>8} {r.webhook_accepted:>9,} {r.webhook_redeliveries:>8} "
              f"{r.failed:>6}  {'OK' if not r.problems else 'FAILED'}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in reports], indent=1, default=str))
    return 0 if all(not r.problems for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
