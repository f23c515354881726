"""Locust load for the collector: shoppers' SDKs posting realistic /v1/batch requests.

    locust -f bench/locustfile.py --headless -u 32 -r 32 -t 30s --host http://127.0.0.1:8088

Needs the `bench` extra (`pip install -e '.[bench]'`) and a running collector (`halflife collect`)
with the write key in HALFLIFE_BENCH_WRITE_KEY (default `bench-write-key`). Each user is one SDK
connection (FastHttpUser, keep-alive) sending, back to back, `/v1/batch` bodies of
HALFLIFE_BENCH_BATCH events (default 100) cut from the benchmark workload (`bench.workload`:
sessions of page and product views, carts, checkouts, emails, interleaved as live traffic is);
users start at different places of the stream. `halflife bench collector --locust` runs this
headless against a throwaway collector and reads locust's CSV statistics.
"""

from __future__ import annotations

import base64
import os

from locust import FastHttpUser, constant, task

from bench.workload import Workload, WorkloadConfig

WRITE_KEY = os.environ.get("HALFLIFE_BENCH_WRITE_KEY", "bench-write-key")
BATCH = int(os.environ.get("HALFLIFE_BENCH_BATCH", "100"))
EVENTS = int(os.environ.get("HALFLIFE_BENCH_EVENTS", "50000"))
AUTH = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode(),
        "Content-Type": "application/json"}


def _bodies() -> list[bytes]:
    lines = Workload(WorkloadConfig(seed=5, contacts=20_000)).lines(EVENTS)
    return [b'{"batch":[' + b",".join(lines[i:i + BATCH]) + b"]}" for i in range(0, len(lines) - BATCH + 1, BATCH)]


BODIES = _bodies()


class Shopper(FastHttpUser):
    wait_time = constant(0)
    _next = 0

    def on_start(self) -> None:
        Shopper._next += 7919  # users start at different places of the stream
        self.i = Shopper._next % len(BODIES)

    @task
    def batch(self) -> None:
        body = BODIES[self.i]
        self.i = (self.i + 1) % len(BODIES)
        with self.client.post("/v1/batch", data=body, headers=AUTH, catch_response=True) as resp:  # type: ignore[arg-type]
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}")
