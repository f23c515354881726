"""Throughput of the collector (`engine.collector`) on /v1/batch requests of realistic shop events.

    .venv/bin/python -m bench.collector_bench [--seconds 10] [--connections 16] [--batch 100] [--shards 64]

Starts a throwaway redis-server (`engine.testing.RedisServer`) and the collector in its own process
(`engine.collector.main` with parsed flags, as `halflife collect` runs it), then drives it with an
aiohttp client: `--connections` concurrent keep-alive connections POSTing pre-built, uncompressed
`/v1/batch` bodies of `--batch` events from `engine.shop.Shop` for `--seconds`. The streams are
trimmed once a second, as the engine would, so Redis memory stays flat.

Prints events/s accepted, request latency p50/p99, and the CPU seconds the collector process spent
per million events (utime + stime from /proc/<pid>/stat over the measured window). The last figure
gives the per-core rate, 1e6 / (CPU s per million), independent of whether the client, Redis and the
collector share cores on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import redis.asyncio as aioredis

from engine.redis_keys import Keys
from engine.shop import Shop, ShopConfig
from engine.testing import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
WRITE_KEY = "bench-write-key"
_RUN_COLLECTOR = (
    "import argparse, sys\n"
    "from engine.collector import add_arguments, main\n"
    "parser = argparse.ArgumentParser(prog='halflife collect')\n"
    "add_arguments(parser)\n"
    "sys.exit(main(parser.parse_args(sys.argv[1:])))\n"
)


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" closing the command name: state is field 3, utime 14 and stime 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bodies(events: int, batch: int) -> list[bytes]:
    shop = Shop(ShopConfig(seed=5, contacts=20_000))
    items = shop.take(events)
    return [orjson.dumps({"batch": items[i:i + batch]}) for i in range(0, len(items) - batch + 1, batch)]


async def _wait_healthy(session: aiohttp.ClientSession, url: str, process: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the collector exited with code {process.returncode}")
        try:
            async with session.get(url + "/health") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the collector did not become healthy")
        await asyncio.sleep(0.05)


async def _trim(redis_url: str, shards: int, stop: asyncio.Event) -> None:
    """Stand in for the engine: keep the streams short so Redis memory stays flat."""
    keys = Keys()
    client = aioredis.Redis.from_url(redis_url)
    try:
        while not stop.is_set():
            pipe = client.pipeline(transaction=False)
            for i in range(shards):
                pipe.xtrim(keys.events(i), maxlen=100)
            await pipe.execute()
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
    finally:
        await client.aclose()


async def _drive(url: str, bodies: list[bytes], connections: int, seconds: float, warmup: float,
                 pid: int, redis_pid: int, redis_url: str, shards: int, batch: int) -> dict[str, float]:
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    headers = {"Authorization": auth, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    stop = asyncio.Event()
    latencies: list[float] = []
    counts = {"ok": 0, "other": 0}
    measuring = False
    async with aiohttp.ClientSession(connector=connector) as session:
        await _wait_healthy(session, url, subprocess_by_pid[pid], 30.0)
        trimmer = asyncio.create_task(_trim(redis_url, shards, stop))

        async def worker(offset: int) -> None:
            i = offset
            n = len(bodies)
            perf = time.perf_counter
            while not stop.is_set():
                body = bodies[i % n]
                i += connections
                started = perf()
                async with session.post(url + "/v1/batch", data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                if measuring:
                    latencies.append(perf() - started)
                    counts["ok" if status == 200 else "other"] += 1

        workers = [asyncio.create_task(worker(k)) for k in range(connections)]
        await asyncio.sleep(warmup)
        cpu0, rcpu0, t0 = _cpu_seconds(pid), _cpu_seconds(redis_pid), time.perf_counter()
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
        cpu1, rcpu1, t1 = _cpu_seconds(pid), _cpu_seconds(redis_pid), time.perf_counter()
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        await trimmer
    latencies.sort()
    events = counts["ok"] * batch
    wall = t1 - t0
    cpu = cpu1 - cpu0
    return {
        "wall_s": wall,
        "requests": counts["ok"],
        "errors": counts["other"],
        "events_per_s": events / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan"),
        "collector_cpu_s": cpu,
        "collector_cpu_s_per_million": cpu / events * 1e6 if events else float("nan"),
        "redis_cpu_s_per_million": (rcpu1 - rcpu0) / events * 1e6 if events else float("nan"),
    }


subprocess_by_pid: dict[int, subprocess.Popen] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=16, help="concurrent client connections")
    parser.add_argument("--batch", type=int, default=100, help="events per /v1/batch request")
    parser.add_argument("--shards", type=int, default=64, help="collector --shards")
    parser.add_argument("--events", type=int, default=50_000, help="distinct pre-built events (cycled)")


@contextlib.contextmanager
def running_collector(shards: int) -> Iterator[tuple[str, subprocess.Popen, RedisServer]]:
    """A throwaway redis-server and the collector (`halflife collect` in its own process): (url, process, server)."""
    with tempfile.TemporaryDirectory(prefix="halflife-collector-bench-") as tmp, RedisServer(tmp) as server:
        port = free_port()
        cmd = [sys.executable, "-c", _RUN_COLLECTOR, "--redis", server.url, "--port", str(port),
               "--write-key", WRITE_KEY, "--shards", str(shards), "--log-level", "WARNING"]
        process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        subprocess_by_pid[process.pid] = process
        try:
            yield f"http://127.0.0.1:{port}", process, server
        finally:
            process.terminate()
            process.wait(timeout=15)


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Drive the collector with the aiohttp client; the figures `main` prints."""
    bodies = _bodies(args.events, args.batch)
    with running_collector(args.shards) as (url, process, server):
        result = asyncio.run(_drive(url, bodies, args.connections, args.seconds, args.warmup, process.pid,
                                    server.process.pid, server.url, args.shards, args.batch))
    result["body_kib"] = sum(map(len, bodies)) / len(bodies) / 1024
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="collector_bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    result = measure(args)
    print(f"{args.events // args.batch} bodies of {args.batch} events, {result['body_kib']:.1f} KiB each")
    per_core = 1e6 / result["collector_cpu_s_per_million"]
    print(f"accepted: {result['events_per_s']:,.0f} events/s ({result['requests']} requests of {args.batch} in "
          f"{result['wall_s']:.1f} s, {result['errors']} non-200), {args.connections} connections, {args.shards} shards")
    print(f"latency: p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms")
    print(f"collector CPU: {result['collector_cpu_s_per_million']:.2f} s per million events "
          f"= {per_core:,.0f} events/s per core ({result['collector_cpu_s'] / result['wall_s']:.0%} of a core used); "
          f"redis-server: {result['redis_cpu_s_per_million']:.2f} s per million")
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
