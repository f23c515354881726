"""`halflife bench collector`: the Segment-compatible collector under /v1/batch load.

    halflife bench collector [--seconds 15] [--connections 16] [--batch 100]     aiohttp client (bench/collector_bench.py)
    halflife bench collector --locust [--users 32]                              locust, headless (bench/locustfile.py)

Both start a throwaway redis-server and the collector (`halflife collect`, its own process) and
report events/s accepted (200 answers x events per request), request latency, and the collector's
CPU seconds per million events (its per-core rate).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from bench.common import ROOT, new_result, table, write_result


def run_locust(args: argparse.Namespace) -> dict[str, Any]:
    from bench import collector_bench as cb

    locust = shutil.which("locust") or os.path.join(os.path.dirname(sys.executable), "locust")
    if not os.path.exists(locust):
        raise SystemExit("locust is not installed: pip install -e '.[bench]'")
    with cb.running_collector(args.shards) as (url, process, server), \
            tempfile.TemporaryDirectory(prefix="halflife-locust-") as tmp:
        cb.asyncio.run(_wait_healthy(url, process))
        prefix = os.path.join(tmp, "run")
        cmd = [locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(args.users), "-r",
               str(args.users), "-t", f"{max(2, round(args.seconds))}s", "--host", url, "--csv", prefix, "--only-summary",
               "--loglevel", "WARNING"]
        env = {**os.environ, "HALFLIFE_BENCH_WRITE_KEY": cb.WRITE_KEY, "HALFLIFE_BENCH_BATCH": str(args.batch),
               "PYTHONPATH": str(ROOT)}
        cpu0 = cb._cpu_seconds(process.pid)
        completed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.seconds + 120)
        cpu = cb._cpu_seconds(process.pid) - cpu0
        with open(prefix + "_stats.csv", newline="") as f:
            rows = {r["Name"]: r for r in csv.DictReader(f)}
    agg = rows.get("Aggregated") or next(iter(rows.values()))
    if not int(agg["Request Count"]):
        raise RuntimeError(f"locust made no request (exit {completed.returncode}): {completed.stderr[-2000:]}")
    requests = int(agg["Request Count"])
    failures = int(agg["Failure Count"])
    events = (requests - failures) * args.batch
    rps = float(agg["Requests/s"])
    return {
        "driver": "locust", "command": " ".join(cmd[1:]).replace(url, "http://127.0.0.1:<port>"),
        "users": args.users, "requests": requests, "errors": failures, "wall_s": max(2, round(args.seconds)),
        "events_per_s": rps * args.batch * (1 - failures / max(1, requests)),
        "p50_ms": _number(agg["50%"]), "p99_ms": _number(agg["99%"]), "p99_9_ms": _number(agg["99.9%"]),
        "collector_cpu_s": cpu, "collector_cpu_s_per_million": cpu / events * 1e6 if events else float("nan"),
        "locust_exit_code": completed.returncode,
    }


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


async def _wait_healthy(url: str, process: Any) -> None:
    import aiohttp

    from bench import collector_bench as cb

    async with aiohttp.ClientSession() as session:
        await cb._wait_healthy(session, url, process, 30.0)


def main(args: argparse.Namespace) -> int:
    from bench import collector_bench as cb

    if args.smoke:
        args.seconds = min(args.seconds, 1.5)
        args.warmup = min(args.warmup, 0.5)
        args.connections = min(args.connections, 4)
        args.shards = min(args.shards, 8)
        args.users = min(args.users, 2)
    result = new_result("collector", args)
    if args.locust:
        run = run_locust(args)
    else:
        ns = argparse.Namespace(seconds=args.seconds, warmup=args.warmup, connections=args.connections,
                                batch=args.batch, shards=args.shards, events=10_000 if args.smoke else 50_000)
        run = {"driver": "aiohttp (bench/collector_bench.py)", "connections": args.connections, **cb.measure(ns)}
    run["batch"] = args.batch
    run["shards"] = args.shards
    run["collector_events_per_s_per_core"] = (1e6 / run["collector_cpu_s_per_million"]
                                              if run.get("collector_cpu_s_per_million") else float("nan"))
    result["collector"] = run
    path = write_result("collector", result, args.results_dir)
    print(f"halflife bench collector: {run['driver']}, /v1/batch of {args.batch} events, {args.shards} shards")
    print(table([
        ["events/s accepted", run["events_per_s"]],
        ["requests (non-200)", f"{run['requests']:,} ({run['errors']})"],
        ["request p50 ms", run["p50_ms"]],
        ["request p99 ms", run["p99_ms"]],
        ["collector CPU s per million events", run["collector_cpu_s_per_million"]],
        ["collector events/s per core", run["collector_events_per_s_per_core"]],
    ], ["collector", "value"]))
    print(f"\nwritten {path}")
    return 0 if run["errors"] == 0 else 1
