"""The e2e bench's open-loop generator: one process, a fixed schedule, XADDs into the shard streams.

    python -m bench.e2e_sender '<json config>'

Prepares everything before the start: the workload's first rate x seconds events, timestamped
`start + i / rate` (the intended send time of event i, written to `intended` as epoch seconds),
grouped into ticks of `tick_s` and, per tick, into one entry per shard of at most `entry_events`
events. Prints `READY <json>` and, from `start_at` on, sends tick k's entries (one pipeline) at
`start_at + (k + 1) * tick_s`, never waiting for the engine: the schedule is fixed in advance, so
latency measured from the intended times is free of coordinated omission. Ends with `DONE <json>`
(events sent, how far behind its schedule the sender ever was).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import orjson


def prepare(cfg: dict[str, Any]) -> tuple[list[tuple[float, list[tuple[int, bytes, int]]]], int]:
    from bench.workload import Workload, WorkloadConfig

    rate = float(cfg["rate"])
    n = int(rate * cfg["seconds"])
    start_ms = int(cfg["start_ms"])
    tick_s = float(cfg["tick_s"])
    wl = Workload(WorkloadConfig(seed=cfg["seed"], contacts=cfg["contacts"], sessions_per_second=max(1.0, rate / 9.0),
                                 time_scale=cfg.get("time_scale", 0.05), paced_rate=rate, start_ms=start_ms,
                                 id_prefix=cfg["id_prefix"]))
    router = wl.router(cfg["shards"])
    entry_events = int(cfg["entry_events"])
    intended = start_ms / 1000.0 + np.arange(n) / rate
    np.save(cfg["intended_path"], intended)
    ticks: dict[int, list[tuple[int, bytes, int]]] = {}
    for chunk in wl.chunks(n):
        seq = chunk.seq
        tick = (seq / rate / tick_s).astype(np.int64)
        shard = router.shard(chunk.person, chunk.ident)
        order = np.lexsort((seq, shard, tick))
        ordered = chunk.take(order)
        data = memoryview(ordered.data())
        ends = np.cumsum(ordered.lengths()).tolist()
        key = (tick[order] * 65536 + shard[order])
        bounds = np.flatnonzero(np.diff(key)) + 1
        starts = [0, *bounds.tolist()]
        stops = [*bounds.tolist(), len(order)]
        k_sorted = key.tolist()
        for a, b in zip(starts, stops, strict=True):
            t, s = divmod(k_sorted[a], 65536)
            for i in range(a, b, entry_events):
                j = min(b, i + entry_events)
                lo = ends[i - 1] if i else 0
                ticks.setdefault(t, []).append((s, bytes(data[lo:ends[j - 1] - 1]), j - i))
    start = start_ms / 1000.0
    schedule = [(start + (t + 1) * tick_s, entries) for t, entries in sorted(ticks.items())]
    return schedule, n


def send(cfg: dict[str, Any], schedule: list[tuple[float, list[tuple[int, bytes, int]]]]) -> dict[str, Any]:
    import redis

    prefix = cfg.get("prefix", "hl:")
    keys = [f"{prefix}events:{i}" for i in range(cfg["shards"])]
    client = redis.Redis.from_url(cfg["url"])
    behind_max = 0.0
    behind_sum = 0.0
    sent = 0
    for at, entries in schedule:
        now = time.time()
        if at > now:
            time.sleep(at - now)
        else:
            behind_max = max(behind_max, now - at)
        behind_sum += max(0.0, time.time() - at)
        pipe = client.pipeline(transaction=False)
        for shard, payload, count in entries:
            pipe.xadd(keys[shard], {"events": payload, "n": count})
            sent += count
        pipe.execute()
    client.close()
    return {"sent": sent, "behind_max_s": behind_max, "behind_mean_s": behind_sum / max(1, len(schedule)),
            "ticks": len(schedule)}


def main() -> int:
    cfg = orjson.loads(sys.argv[1])
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    schedule, n = prepare(cfg)
    entries = sum(len(e) for _, e in schedule)
    print("READY " + orjson.dumps({"events": n, "entries": entries, "prepare_s": time.perf_counter() - t0,
                                    "late_start_s": max(0.0, time.time() - cfg["start_ms"] / 1000.0)}).decode(),
          flush=True)
    cpu1 = time.process_time()
    stats = send(cfg, schedule)
    stats["send_cpu_s"] = time.process_time() - cpu1
    stats["prepare_cpu_s"] = cpu1 - cpu0
    print("DONE " + orjson.dumps(stats).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
