"""Compile and cache every kernel once: `python -m engine.warmup` (`make venv` runs it).

The engine's hot loops are numba kernels, cached on disk (engine/compiled.py). The first process to
use one compiles it, which takes tens of seconds for the whole engine; this runs a small replay that
reaches every kernel (valid and invalid lines, every rule kind, timers fired by events, by the
watermark and at the end, a snapshot and a resume) so that later runs, tests and benchmarks start at
full speed.

Even from the cache, a process loads each kernel at its first call, about a second for all of them.
`load_kernels` does that before a dataflow starts (`halflife run`, the benchmarks), with a few events
through the real operators, so that the first batch does not wait for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from importlib import resources

import numpy as np
import orjson
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from engine.compiled import CACHE_PREFIX, kernel_cache_dir
from engine.config import RunConfig
from engine.dataflow import build_flow
from engine.decode import BatchDecoder
from engine.records import EndOfInput
from engine.routing import split_by_shard
from engine.shop import Shop, ShopConfig
from engine.snapshots import pack, unpack
from engine.sources import block_of
from operators.dedupe import Deduplicator
from operators.shard import ShardState
from rules.compiler import Plan


def _lines() -> list[bytes]:
    lines = Shop(ShopConfig(seed=1, contacts=40, sessions_per_minute=200.0)).lines(3000)
    t = orjson.loads(lines[-1])["timestamp"]
    odd = [
        {"type": "identify", "userId": 7, "timestamp": t, "traits": {"plan": "pro"}},
        {"type": "screen", "anonymousId": "a-\u00e9", "timestamp": 1795442400000, "messageId": "s\\u0031"},
        {"event": "Order Completed", "userId": "u-x", "timestamp": t, "sentAt": t, "receivedAt": t,
         "properties": {"currency": "USD", "revenue": 600, "path": "/pricing"}},
    ]
    return lines + [orjson.dumps(e) for e in odd] + [b"{not json", b"[1]", b"   "]


def load_kernels(plan: Plan) -> None:
    """Load (or compile) the kernels the dataflow calls, by running a few hundred events through the
    decoder, de-duplication, routing and shard state (no bytewax, no metrics, no output), then a
    snapshot and a resume of each."""
    lines = _lines()
    lines = lines[:300] + lines[-6:]
    decoder = BatchDecoder(plan)
    dedupe = Deduplicator()
    states: dict[int, ShardState] = {}
    for i in range(0, len(lines), 100):
        chunk = lines[i:i + 100]
        batch, _ = decoder.decode(*block_of(chunk, range(i, i + len(chunk))))
        batch = batch.take(np.flatnonzero(dedupe.accepted(batch)))
        batch.watermarks = np.maximum.accumulate(batch.times) - plan.lateness_ms
        for shard, sub in split_by_shard(batch, 4):
            states.setdefault(shard, ShardState(plan)).process(sub, [])
    for state in states.values():
        state.shard = -1  # no state-size gauge for shards of this run
        end = int(state.watermark) + 1
        state.end_of_input(EndOfInput(end), [])
        ShardState.restore(plan, unpack(pack(state.snapshot(copy=False))))
    Deduplicator.restore(unpack(pack(dedupe.snapshot(copy=False))))


def main() -> int:
    started = time.perf_counter()
    rules = str(resources.files("rules") / "examples" / "ecommerce.yaml")
    lines = _lines()
    with tempfile.TemporaryDirectory(prefix="halflife-warmup-") as tmp:
        path = os.path.join(tmp, "events.jsonl")
        with open(path, "wb") as f:
            f.write(b"\n".join(lines))
        recovery = os.path.join(tmp, "recovery")
        os.makedirs(recovery)
        init_db_dir(recovery, 1)
        for half in (lines[: len(lines) // 2], lines):  # the second run resumes from the first one's snapshot
            with open(path, "wb") as f:
                f.write(b"\n".join(half))
            cfg = RunConfig(rules=rules, input=path, output=os.path.join(tmp, "out.jsonl"),
                            dlq=os.path.join(tmp, "dlq.jsonl"), profiles=os.path.join(tmp, "profiles.jsonl"),
                            batch_size=500, shards=4, summary_path=os.path.join(tmp, "summary.json"), recovery=recovery)
            run_main(build_flow(cfg), epoch_interval=timedelta(seconds=0), recovery_config=RecoveryConfig(recovery))
        # Blocks over read-only buffers (what the Redis source and in-memory sources hand the decoder).
        BatchDecoder().decode(*block_of(lines[:50], range(50)))
    cache = kernel_cache_dir()
    _remove_other_versions(cache)
    print(f"halflife: kernels compiled and cached in {time.perf_counter() - started:.1f} s ({cache})", file=sys.stderr)
    return 0


def _remove_other_versions(cache: str) -> None:
    """Caches of earlier versions of the kernels beside this one are never read again."""
    parent = os.path.dirname(cache)
    for name in os.listdir(parent):
        if name.startswith(CACHE_PREFIX) and os.path.join(parent, name) != cache:
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
