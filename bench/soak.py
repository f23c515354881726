"""Soak: the live stack at a fixed offered rate for a long time, sampled every 10 s.

    .venv/bin/python -m bench.soak                          # 30 min at DEFAULT_RATE events/s, 10,000 contacts
    .venv/bin/python -m bench.soak --minutes 3 --rate 4000  # a short one
    .venv/bin/python -m bench.soak --find-max               # step-up: the highest rate the engine sustains
    .venv/bin/python -m bench.soak --rate auto              # step-up first, then soak at half that rate

The stack: a throwaway redis-server with AOF (`appendonly yes`) in a temporary directory, the collector
(`halflife collect`), the engine (`halflife run` in live mode with `--recovery` and `--metrics-port`,
`SOAK_RULES` -- the shipped e-commerce rules with windows of seconds -- or `--rules`, Redis outputs for
triggers, dead letters and profiles), and a load generator in its own process: `--connections`
keep-alive connections POSTing `/v1/batch` requests of `--batch` events on a fixed schedule (open loop:
the offered rate does not drop when the system slows down, requests only queue), events of a fixed
population (`--pool` shop events of `--contacts` shoppers from `engine.shop.Shop`, cycled), each
stamped with the current time and a fresh messageId; a 503 is retried after its Retry-After, as an SDK
does. A stand-in consumer trims `hl:triggers*` to the last 10,000 entries each sample, as a real
consumer would, so that Redis does not grow with the output.

Every `--interval` seconds it records: engine and collector RSS (VmRSS), Redis memory, events offered
and accepted, non-200 answers, the backlog (events accepted by the collector minus the engine's
`halflife_events_in_total`; also `sum(halflife_source_backlog_entries)` and the XLEN sum of the shard
streams, which includes consumed entries the engine has not trimmed yet), triggers/s (from
`halflife_triggers_fired_total`), trigger latency p50/p99 over the interval (the engine's histogram),
contacts in state, `hl:webhooks:failed` and `hl:dlq` lengths and dead letters. The results go to
`bench/results/<timestamp>-soak.json` and a table is printed as it goes.

Verdicts (over the samples after warm-up = the last 2/3 of the run):
* RSS flat: the least-squares slope of the engine's RSS is below `--rss-slope` MiB/min (default 0.5,
  i.e. < 10 MiB over 20 minutes), and the same for the collector;
* backlog flat: its slope is below 0.5% of the offered rate (events/s of backlog growth), and the
  largest backlog is below 10 s of traffic;
* no errors: no non-200 answer or connection error at the load generator, nothing in `hl:webhooks:failed`,
  no dead letter, no engine sink error;
* the offered rate was achieved (>= 97% of the target: otherwise the load generator was the limit).

Step-up (`--find-max`): offered rates from `--start-rate` growing by 25% per step of `--step-seconds`,
sampling the backlog every 2 s; a rate is sustained when the backlog's slope over the last 2/3 of the
step is below 2% of the rate, its last value below 1 s of traffic and the load generator achieved it.
The highest sustained rate is the maximum; `DEFAULT_RATE` is half the value measured on the project's
2-core machine (where the load generator, the collector, Redis and the engine share the two cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis

from engine.redis_keys import Keys
from engine.testing import RedisServer, free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# The shipped e-commerce rules with windows of seconds. With a fixed population at thousands of events/s
# every contact is active every few seconds: with the shipped windows (days) each contact would fire its
# cooldowns once and the sinks would idle. These keep ~100-200 triggers/s flowing (scores crossing both
# ways, sliding counts, cart timers fired by the wall-clock watermark) and profile changes with them.
SOAK_RULES = """
version: 1
lateness: 2s
scores:
  engagement:
    half_life: 20s
    min: 0
    max: 100
    points:
      - {event: Page Viewed, where: {properties.path: {startswith: /pricing}}, add: 3}
      - {event: Product Viewed, add: 1}
      - {event: [Email Opened, Email Clicked], add: 2}
      - {event: Unsubscribed, add: -20}
triggers:
  hot_lead:
    when: {score: engagement, rises_above: 15}
    unless: {event: Order Completed, within: 1m}
    cooldown: 1m
    actions: [{emit: sales_alerts}, {tag: hot}]
  pricing_binge:
    when: {count: {event: Page Viewed, where: {properties.path: {startswith: /pricing}}}, within: 30s, at_least: 3}
    actions: [{emit: sales_alerts}]
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 10s}
    cooldown: 1m
    actions: [{emit: email}]
  cooling_off:
    when: {score: engagement, falls_below: 5}
    actions: [{untag: hot}]
  gone_quiet:
    when: {inactive_for: 20s}
    actions: [{emit: email}, {stage: dormant}]
"""
WRITE_KEY = "soak-write-key"
KEYS = Keys("hl:")
# About half the maximum sustainable rate measured with --find-max on the 2-core development machine,
# which other sessions were loading at the same time (load average 4-6), so the maximum moved between
# runs: with SOAK_RULES, `--start-rate 11000 --growth 1.1 --step-seconds 36` sustained 23,581 events/s
# (25,939: the backlog grew by 1.2k events/s); with earlier, minute-scale soak rules 14,520; with the
# shipped e-commerce rules 15,258 and 15,972. Half of the middle of that range, ~16k, is 8,000.
DEFAULT_RATE = 8000.0
MIB = 1024.0

# Shared counters of the load generator (one writer: the load generator process).
STAT_NAMES = ("offered", "accepted", "requests", "ok", "non200", "unavailable", "conn_errors", "behind_s", "ready")


def rss_kb(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# -- load generator (its own process) ---------------------------------------------------------------


def _templates(contacts: int, zipf: float, seed: int, size: int) -> list[tuple[bytes, bytes, bytes]]:
    """Events split around their timestamp and messageId: (head, middle, tail), in the shop's order."""
    from engine.shop import Shop, ShopConfig

    out = []
    for event in Shop(ShopConfig(seed=seed, contacts=contacts, zipf_a=zipf)).take(size):
        event.pop("timestamp", None)
        event.pop("messageId", None)
        body = orjson.dumps(event)
        # {"messageId":"<id>", ..., "timestamp":"<ts>"}: the two fields go first, the rest after.
        out.append((b'{"messageId":"', b'","timestamp":"', b'",' + body[1:]))
    return out


async def _drive(port: int, rate: Any, stop: Any, stats: Any, contacts: int, zipf: float, seed: int, batch: int,
                 connections: int, pool_size: int) -> None:
    import aiohttp

    from engine.times import format_time

    templates = _templates(contacts, zipf, seed, pool_size)
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    url = f"http://127.0.0.1:{port}/v1/batch"
    index = 0
    counter = 0
    run_id = os.urandom(4).hex()
    schedule = {"t0": time.monotonic(), "released": 0.0, "rate": rate.value}
    slots = asyncio.Semaphore(0)
    started = {"released": 0, "taken": 0}  # requests due in all / started by a worker

    def body() -> bytes:
        nonlocal index, counter
        ts = format_time(time.time_ns() // 1_000_000).encode()
        parts = []
        for _ in range(batch):
            head, middle, tail = templates[index]
            index = (index + 1) % len(templates)
            counter += 1
            parts.append(head + f"{run_id}-{counter}".encode() + middle + ts + tail)
        return b'{"batch":[' + b",".join(parts) + b"]}"

    async def ticker() -> None:
        """Releases one request slot each time `batch` more events are due at the current rate."""
        while not stop.is_set():
            now = time.monotonic()
            if rate.value != schedule["rate"]:  # a new rate: a new schedule from now
                schedule.update(t0=now, released=0.0, rate=rate.value)
            due = (now - schedule["t0"]) * schedule["rate"] / batch
            while schedule["released"] + 1 <= due:
                schedule["released"] += 1
                started["released"] += 1
                slots.release()
            waiting = started["released"] - started["taken"]  # due but not started: the generator is behind
            stats[STAT_NAMES.index("behind_s")] = waiting * batch / max(1.0, schedule["rate"])
            await asyncio.sleep(0.002)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(slots.acquire(), 0.5)
            except asyncio.TimeoutError:
                continue
            started["taken"] += 1
            data = body()
            stats[STAT_NAMES.index("offered")] += batch
            while True:
                try:
                    async with session.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                        retry_after = resp.headers.get("Retry-After")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    stats[STAT_NAMES.index("conn_errors")] += 1
                    await asyncio.sleep(0.5)
                    continue
                stats[STAT_NAMES.index("requests")] += 1
                if status == 200:
                    stats[STAT_NAMES.index("ok")] += 1
                    stats[STAT_NAMES.index("accepted")] += batch
                    break
                stats[STAT_NAMES.index("non200")] += 1
                if status == 503:
                    stats[STAT_NAMES.index("unavailable")] += 1
                    try:
                        wait = float(retry_after or 1)
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(min(5.0, wait))
                    continue
                break  # 4xx: a bug, counted, not retried

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        stats[STAT_NAMES.index("ready")] = 1
        tasks = [asyncio.create_task(ticker())] + [asyncio.create_task(worker(session)) for _ in range(connections)]
        await asyncio.gather(*tasks)


def _loadgen_main(port: int, rate: Any, stop: Any, stats: Any, contacts: int, zipf: float, seed: int, batch: int,
                  connections: int, pool_size: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_drive(port, rate, stop, stats, contacts, zipf, seed, batch, connections, pool_size))


# -- the stack --------------------------------------------------------------------------------------


@dataclass
class Stack:
    workdir: Path
    shards: int
    contacts: int
    seed: int
    batch: int
    connections: int
    pool_size: int
    snapshot_s: float
    rules: Path
    zipf: float = 0.8

    def __enter__(self) -> Stack:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> Stack:
        self.server = RedisServer(str(self.workdir), appendonly=True)
        self.server.start()
        self.client = redis.Redis.from_url(self.server.url)
        self.port = free_port()
        self.metrics_port = free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.workdir / "collector.log", "ab") as log:
            self.collector = subprocess.Popen(
                [sys.executable, "-m", "engine", "collect", "--redis", self.server.url, "--port", str(self.port),
                 "--write-key", WRITE_KEY, "--shards", str(self.shards), "--log-level", "WARNING"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        url = self.server.url
        with open(self.workdir / "engine.log", "ab") as log:
            self.engine = subprocess.Popen(
                [sys.executable, "-m", "engine", "run", "--rules", str(self.rules), "--input", url, "--output", url,
                 "--dlq", url, "--profiles", url, "--recovery", str(self.workdir / "recovery"),
                 "--shards", str(self.shards), "--snapshot-interval", str(self.snapshot_s),
                 "--metrics-port", str(self.metrics_port)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        self._wait(lambda: _http_ok(self.port, "/health"), "the collector")
        self._wait(lambda: metrics(self.metrics_port) is not None, "the engine's /metrics")
        ctx = mp.get_context("spawn")
        self.rate = ctx.Value("d", 0.0, lock=False)
        self.stop_flag = ctx.Event()
        self.stats = ctx.Array("d", len(STAT_NAMES), lock=False)
        self.loadgen = ctx.Process(target=_loadgen_main, name="soak-loadgen", daemon=True,
                                   args=(self.port, self.rate, self.stop_flag, self.stats, self.contacts, self.zipf,
                                         self.seed, self.batch, self.connections, self.pool_size))
        self.loadgen.start()
        self._wait(lambda: self.stat("ready") == 1 or not self.loadgen.is_alive(), "the load generator")
        if not self.loadgen.is_alive():
            raise RuntimeError("the load generator died at start")
        return self

    def _wait(self, ready: Any, what: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            for proc in (self.collector, self.engine):
                if proc.poll() is not None:
                    raise RuntimeError(f"{what}: a process exited with {proc.returncode}; see {self.workdir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up within {timeout_s:g} s; see {self.workdir}")
            time.sleep(0.1)

    def stat(self, name: str) -> float:
        return float(self.stats[STAT_NAMES.index(name)])

    def alive(self) -> bool:
        return self.engine.poll() is None and self.collector.poll() is None and self.loadgen.is_alive()

    def __exit__(self, *exc: object) -> None:
        if getattr(self, "loadgen", None) is not None:
            self.stop_flag.set()
            self.loadgen.join(timeout=10)
            if self.loadgen.is_alive():
                self.loadgen.terminate()
        for proc in (getattr(self, "engine", None), getattr(self, "collector", None)):
            if proc is not None:
                stop_process(proc, timeout_s=30)
        if getattr(self, "client", None) is not None:
            self.client.close()
        if getattr(self, "server", None) is not None:
            self.server.stop()


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def metrics(port: int) -> list[tuple[str, dict[str, str], float]] | None:
    """The samples of a Prometheus text page: (name, labels, value); None when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for part in rest.rstrip("}").split(","):
            if "=" in part:
                k, v = part.split("=", 1)
                labels[k.strip()] = v.strip().strip('"')
        try:
            out.append((name, labels, float(value)))
        except ValueError:
            continue
    return out


def metric_sum(samples: list[tuple[str, dict[str, str], float]], name: str) -> float:
    return sum(v for n, _, v in samples if n == name)


def histogram(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[float, float]:
    """Cumulative bucket counts by upper bound (summed over the other labels)."""
    out: dict[float, float] = {}
    for n, labels, v in samples:
        if n == name + "_bucket":
            le = float("inf") if labels.get("le") == "+Inf" else float(labels.get("le", "nan"))
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The q-quantile's bucket upper bound over the observations between two histogram snapshots."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    target = q * counts[-1]
    for bound, count in zip(bounds, counts, strict=True):
        if count >= target:
            return bound
    return bounds[-1]


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in points) / var * 60.0


def stream_lengths(client: redis.Redis, shards: int) -> tuple[int, int, int, int]:
    """(XLEN sum of the shard streams, hl:triggers, hl:webhooks:failed, hl:dlq)."""
    pipe = client.pipeline(transaction=False)
    for i in range(shards):
        pipe.xlen(KEYS.events(i))
    pipe.xlen(KEYS.triggers)
    pipe.xlen(KEYS.failed)
    pipe.xlen(KEYS.dlq)
    values = pipe.execute()
    return sum(values[:shards]), values[shards], values[shards + 1], values[shards + 2]


def trim_outputs(client: redis.Redis) -> None:
    """The stand-in consumer: keep the last 10,000 entries of hl:triggers and of each channel stream."""
    for key in client.scan_iter(match=KEYS.triggers + "*", count=1000, _type="STREAM"):
        if key.decode() != KEYS.failed:
            client.xtrim(key, maxlen=10_000, approximate=True)


# -- sampling ---------------------------------------------------------------------------------------


class Sampler:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.t0 = time.monotonic()
        self.last: dict[str, Any] | None = None

    def sample(self) -> dict[str, Any]:
        st = self.stack
        now = time.monotonic()
        m = metrics(st.metrics_port) or []
        xlen_events, triggers_len, failed, dlq = stream_lengths(st.client, st.shards)
        info = st.client.info("memory")
        accepted = st.stat("accepted")
        events_in = metric_sum(m, "halflife_events_in_total")
        fired = metric_sum(m, "halflife_triggers_fired_total")
        latency = histogram(m, "halflife_trigger_latency_seconds")
        row: dict[str, Any] = {
            "t_s": round(now - self.t0, 1),
            "target_rate": st.rate.value,
            "offered": st.stat("offered"),
            "accepted": accepted,
            "non200": st.stat("non200"),
            "conn_errors": st.stat("conn_errors"),
            "loadgen_behind_s": round(st.stat("behind_s"), 2),
            "engine_rss_mib": round((rss_kb(st.engine.pid) or 0) / MIB, 1),
            "collector_rss_mib": round((rss_kb(st.collector.pid) or 0) / MIB, 1),
            "redis_used_mib": round(int(info.get("used_memory", 0)) / MIB / MIB, 1),
            "events_in": events_in,
            "backlog_events": max(0.0, accepted - events_in),
            "backlog_entries_metric": metric_sum(m, "halflife_source_backlog_entries"),
            "xlen_events": xlen_events,
            "triggers_fired": fired,
            "contacts": metric_sum(m, "halflife_contacts"),
            "pending_timers": metric_sum(m, "halflife_pending_timers"),
            "dead_lettered": metric_sum(m, "halflife_events_dead_lettered_total"),
            "sink_errors": metric_sum(m, "halflife_sink_errors_total"),
            "triggers_failed": failed,
            "dlq": dlq,
            "hl_triggers_len": triggers_len,
        }
        last = self.last
        if last is not None and row["t_s"] > last["t_s"]:
            dt = row["t_s"] - last["t_s"]
            row["offered_per_s"] = round((row["offered"] - last["offered"]) / dt, 1)
            row["accepted_per_s"] = round((row["accepted"] - last["accepted"]) / dt, 1)
            row["engine_events_per_s"] = round((events_in - last["events_in"]) / dt, 1)
            row["triggers_per_s"] = round((fired - last["triggers_fired"]) / dt, 1)
            row["latency_p50_s"] = quantile(last["_latency"], latency, 0.5)
            row["latency_p99_s"] = quantile(last["_latency"], latency, 0.99)
        row["_latency"] = latency
        self.last = row
        return row


COLUMNS = [("t_s", "t(s)", 7, "{:.0f}"), ("offered_per_s", "offer/s", 8, "{:,.0f}"),
           ("engine_events_per_s", "engine/s", 8, "{:,.0f}"), ("backlog_events", "backlog", 8, "{:,.0f}"),
           ("backlog_entries_metric", "bl.entr", 7, "{:,.0f}"), ("xlen_events", "xlen", 8, "{:,.0f}"),
           ("engine_rss_mib", "eng MiB", 7, "{:.1f}"), ("collector_rss_mib", "col MiB", 7, "{:.1f}"),
           ("redis_used_mib", "rds MiB", 7, "{:.0f}"), ("triggers_per_s", "trig/s", 7, "{:,.0f}"),
           ("latency_p99_s", "lat p99", 7, "{}"), ("contacts", "contacts", 8, "{:,.0f}"),
           ("non200", "non200", 6, "{:.0f}"), ("triggers_failed", "failed", 6, "{}"), ("dlq", "dlq", 5, "{}")]


def header() -> str:
    return " ".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)


def fmt(row: dict[str, Any]) -> str:
    cells = []
    for key, _, width, pattern in COLUMNS:
        value = row.get(key)
        cells.append(f"{'-' if value is None else pattern.format(value):>{width}}")
    return " ".join(cells)


def judge(samples: list[dict[str, Any]], rate: float, rss_slope: float) -> dict[str, Any]:
    """The verdicts of the module doc, over the last 2/3 of the samples."""
    rows = [s for s in samples if "offered_per_s" in s]
    tail = rows[len(rows) // 3:]
    if len(tail) < 3:
        return {"ok": False, "reason": "too few samples"}
    engine_slope = slope_per_min([(s["t_s"], s["engine_rss_mib"]) for s in tail])
    collector_slope = slope_per_min([(s["t_s"], s["collector_rss_mib"]) for s in tail])
    backlog_slope = slope_per_min([(s["t_s"], s["backlog_events"]) for s in tail]) / 60.0  # events/s
    backlog_max = max(s["backlog_events"] for s in tail)
    duration = tail[-1]["t_s"] - tail[0]["t_s"]
    offered = (tail[-1]["offered"] - tail[0]["offered"]) / duration if duration > 0 else 0.0
    last = samples[-1]
    verdicts = {
        "rss_flat": engine_slope < rss_slope and collector_slope < rss_slope,
        "backlog_flat": backlog_slope < 0.005 * rate and backlog_max < 10 * rate,
        "no_errors": last["non200"] == 0 and last["triggers_failed"] == 0 and last["dlq"] == 0
        and last["dead_lettered"] == 0 and last["conn_errors"] == 0 and last["sink_errors"] == 0,
        "rate_achieved": offered >= 0.97 * rate,
    }
    return {
        **verdicts,
        "ok": all(verdicts.values()),
        "engine_rss_slope_mib_per_min": round(engine_slope, 3),
        "collector_rss_slope_mib_per_min": round(collector_slope, 3),
        "engine_rss_mib_min_max_after_warmup": [min(s["engine_rss_mib"] for s in tail),
                                               max(s["engine_rss_mib"] for s in tail)],
        "collector_rss_mib_min_max_after_warmup": [min(s["collector_rss_mib"] for s in tail),
                                                  max(s["collector_rss_mib"] for s in tail)],
        "backlog_slope_events_per_s": round(backlog_slope, 2),
        "backlog_max_events_after_warmup": backlog_max,
        "offered_per_s_after_warmup": round(offered, 1),
        "engine_events_per_s_after_warmup": round(
            (tail[-1]["events_in"] - tail[0]["events_in"]) / duration if duration > 0 else 0.0, 1),
        "triggers_per_s_after_warmup": round(
            (tail[-1]["triggers_fired"] - tail[0]["triggers_fired"]) / duration if duration > 0 else 0.0, 1),
        "warmup_s": tail[0]["t_s"],
    }


def find_max(stack: Stack, start_rate: float, step_s: float, growth: float = 1.25, max_rate: float = 200_000,
             log: Any = print) -> dict[str, Any]:
    """Step the offered rate up until the backlog grows; the highest sustained rate."""
    sampler = Sampler(stack)
    steps = []
    rate = start_rate
    best = 0.0
    while rate <= max_rate:
        stack.rate.value = rate
        points = []  # (t, backlog, offered)
        deadline = time.monotonic() + step_s
        while time.monotonic() < deadline:
            time.sleep(2.0)
            row = sampler.sample()
            points.append((row["t_s"], row["backlog_events"], row["offered"]))
            if not stack.alive():
                raise RuntimeError("a process of the stack died during the step-up")
        tail = points[len(points) // 3:]
        achieved = (tail[-1][2] - tail[0][2]) / max(1e-9, tail[-1][0] - tail[0][0])
        tail = [(t, b) for t, b, _ in tail]
        slope = slope_per_min(tail) / 60.0
        last_backlog = tail[-1][1]
        sustained = slope < 0.02 * rate and last_backlog < rate and achieved >= 0.95 * rate
        steps.append({"rate": rate, "achieved": round(achieved, 1), "backlog_slope_per_s": round(slope, 1),
                      "backlog_last": last_backlog, "sustained": sustained})
        log(f"step-up {rate:>9,.0f} events/s offered, {achieved:>9,.0f} achieved: backlog slope {slope:>9,.1f}/s, "
            f"last {last_backlog:>9,.0f} -> {'sustained' if sustained else 'NOT sustained'}")
        if not sustained:
            break
        best = rate
        rate = round(rate * growth)
    # Let the engine drain what the failed step left before anything else.
    stack.rate.value = 0.0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sampler.sample()["backlog_events"] > 0:
        time.sleep(1.0)
    return {"max_sustained_rate": best, "steps": steps, "step_s": step_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak duration (default 30)")
    parser.add_argument("--rate", default=str(DEFAULT_RATE),
                        help=f"offered events/s, or 'auto' (step-up first, then half the maximum); default {DEFAULT_RATE:g}")
    parser.add_argument("--contacts", type=int, default=10_000, help="the shop's contact pool (default 10,000)")
    parser.add_argument("--zipf", type=float, default=0.8,
                        help="contact popularity skew (default 0.8: ~5,700 of 10,000 contacts in the event pool)")
    parser.add_argument("--rules", help="rule file (default: the built-in soak rules, SOAK_RULES)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    parser.add_argument("--batch", type=int, default=100, help="events per /v1/batch request (default 100)")
    parser.add_argument("--connections", type=int, default=8, help="load generator connections (default 8)")
    parser.add_argument("--shards", type=int, default=64, help="shard streams (default 64)")
    parser.add_argument("--snapshot-interval", type=float, default=10.0, help="engine --snapshot-interval (default 10)")
    parser.add_argument("--pool", type=int, default=100_000, help="distinct shop events cycled by the load generator")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rss-slope", type=float, default=0.5, help="RSS slope limit, MiB/min (default 0.5)")
    parser.add_argument("--find-max", action="store_true", help="only run the step-up and report the maximum")
    parser.add_argument("--start-rate", type=float, default=2000.0, help="step-up: first rate (default 2000)")
    parser.add_argument("--step-seconds", type=float, default=40.0, help="step-up: seconds per step (default 40)")
    parser.add_argument("--growth", type=float, default=1.25, help="step-up: rate factor per step (default 1.25)")
    parser.add_argument("--output", help="results JSON (default bench/results/<timestamp>-soak.json)")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (logs, AOF, recovery)")
    args = parser.parse_args(argv)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out_path = Path(args.output) if args.output else RESULTS / f"{stamp}-{'stepup' if args.find_max else 'soak'}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="halflife-soak-"))
    config = {k: v for k, v in vars(args).items() if k not in ("output", "keep")}
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": config,
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                          "platform": platform.platform()},
                              "workdir": str(workdir)}

    def log(text: str) -> None:
        print(text, flush=True)

    log(f"halflife soak: workdir {workdir}, results {out_path}")
    # `kill` (SIGTERM) stops the run like Ctrl-C: the stack's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    code = 0
    if args.rules:
        rules = Path(args.rules).resolve()
    else:
        rules = workdir / "soak-rules.yaml"
        rules.write_text(SOAK_RULES)
    stack = Stack(workdir, args.shards, args.contacts, args.seed, args.batch, args.connections, args.pool,
                  args.snapshot_interval, rules, args.zipf)
    try:
        with stack:
            if args.find_max or args.rate == "auto":
                step = find_max(stack, args.start_rate, args.step_seconds, growth=args.growth, log=log)
                result["step_up"] = step
                log(f"maximum sustained rate: {step['max_sustained_rate']:,.0f} events/s")
                if args.find_max:
                    return 0
                rate = step["max_sustained_rate"] / 2
            else:
                rate = float(args.rate)
            result["rate"] = rate
            log(f"soak: {rate:,.0f} events/s offered for {args.minutes:g} min, {args.contacts:,} contacts, "
                f"sampling every {args.interval:g} s")
            log(header())
            sampler = Sampler(stack)
            samples: list[dict[str, Any]] = []
            stack.rate.value = rate
            end = time.monotonic() + args.minutes * 60
            next_at = time.monotonic()
            while time.monotonic() < end:
                next_at += args.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
                row = sampler.sample()
                trim_outputs(stack.client)
                samples.append(row)
                log(fmt(row))
                result["samples"] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in samples]
                out_path.write_text(json.dumps(result, indent=1))  # as it goes: a long run leaves figures
                if not stack.alive():
                    log(f"a process of the stack died; see {workdir}")
                    result["died"] = True
                    code = 1
                    break
            verdict = judge(samples, rate, args.rss_slope)
            result["verdict"] = verdict
    finally:
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        out_path.write_text(json.dumps(result, indent=1))
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    verdict = result.get("verdict", {})
    if verdict:
        log("")
        for key in ("rss_flat", "backlog_flat", "no_errors", "rate_achieved"):
            log(f"{key:<14} {'yes' if verdict.get(key) else 'NO'}")
        for key, value in verdict.items():
            if key not in ("rss_flat", "backlog_flat", "no_errors", "rate_achieved", "ok"):
                log(f"  {key}: {value}")
        log(f"verdict: {'PASS' if verdict.get('ok') else 'FAIL'}  ({out_path})")
        code = code or (0 if verdict.get("ok") else 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
