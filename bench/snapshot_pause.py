"""How long bytewax's epoch snapshots stop the pipeline, with the engine's real state.

    halflife bench snapshots [--contacts 200000] [--rules bench/rules/e2e.yaml] [--seconds 9]
                             [--epoch 2] [--rounds 2] [--smoke]

At the end of every epoch bytewax takes each stateful key's snapshot and writes it into the
recovery SQLite file on the worker thread; nothing else runs on that worker meanwhile. This builds
a state of `--contacts` contacts through the real operators (as `halflife bench hotpath` does for
its state size), then runs a bytewax dataflow with recovery on whose source polls continuously and
whose 64 stateful keys snapshot that state, and records the gaps between the source's polls: one
long gap per epoch is the pause.

Two ways of snapshotting, alternated `--rounds` times in one run so that they are compared side by
side: `plain` returns the state's dict of arrays (what the engine gave bytewax before
`engine.snapshots`), `packed` returns it through `engine.snapshots.pack`, as the engine does.
The source's snapshot is the dedupe rings, plain or packed alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import timedelta
from typing import Any

import numpy as np
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import run_main

from bench.common import new_result, table, write_result
from bench.e2e import E2E_RULES
from bench.hotpath import build_state
from engine.snapshots import pack

MODES = ("plain", "packed")


def _dataflow(mode: str, shard_state: dict[str, Any], dedupe: Any, seconds: float, gaps: list[float]) -> Dataflow:
    keys = sorted(shard_state)

    def snap(value: Any) -> Any:
        return pack(value) if mode == "packed" else value

    class Polls(StatefulSourcePartition[tuple[str, str], Any]):
        def __init__(self) -> None:
            self.started = self.last = time.perf_counter()

        def next_batch(self) -> list[tuple[str, str]]:
            now = time.perf_counter()
            if now - self.started > 1.0:  # past start-up
                gaps.append(now - self.last)
            self.last = now
            if now - self.started > seconds:
                raise StopIteration
            time.sleep(0.0005)
            return [(k, k) for k in keys]

        def snapshot(self) -> Any:
            return snap(dedupe.snapshot())

    class Source(FixedPartitionedSource[tuple[str, str], Any]):
        def list_parts(self) -> list[str]:
            return ["polls"]

        def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Polls:
            return Polls()

    class Holder(StatefulBatchLogic[str, None, Any]):
        key = ""

        def on_batch(self, values: list[str]) -> tuple[list[None], bool]:
            self.key = values[0]
            return [], StatefulBatchLogic.RETAIN

        def snapshot(self) -> Any:
            return snap(shard_state[self.key].snapshot())

    class Nothing(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
            class Drop(StatelessSinkPartition[Any]):
                def write_batch(self, items: list[Any]) -> None:
                    pass

            return Drop()

    flow = Dataflow("snapshot_pause")
    held = op.stateful_batch("shards", op.input("polls", flow, Source()), lambda resume: Holder())
    op.output("out", held, Nothing())
    return flow


def run_mode(mode: str, shard_state: dict[str, Any], dedupe: Any, args: argparse.Namespace,
             recovery_dir: str) -> dict[str, Any]:
    shutil.rmtree(recovery_dir, ignore_errors=True)
    os.makedirs(recovery_dir)
    init_db_dir(recovery_dir, 1)
    gaps: list[float] = []
    run_main(_dataflow(mode, shard_state, dedupe, args.seconds, gaps), epoch_interval=timedelta(seconds=args.epoch),
             recovery_config=RecoveryConfig(recovery_dir))
    ms = np.array(gaps) * 1000.0
    # One pause per epoch past start-up: the run's `seconds // epoch - 1` longest gaps.
    pauses = sorted(ms, reverse=True)[: max(1, int(args.seconds // args.epoch) - 1)]
    return {"mode": mode, "pauses_ms": [round(float(p), 1) for p in sorted(pauses)],
            "median_pause_ms": float(np.median(pauses)), "median_poll_ms": float(np.median(ms)),
            "recovery_file_bytes": sum(os.path.getsize(os.path.join(recovery_dir, f)) for f in os.listdir(recovery_dir)
                                       if f.startswith("part-0.sqlite3"))}  # with its WAL


def main(args: argparse.Namespace) -> int:
    args.rules = args.rules or str(E2E_RULES)
    if args.smoke:
        args.contacts, args.seconds, args.epoch, args.rounds = min(args.contacts, 2_000), 3.5, 1.0, 1
    result = new_result("snapshots", args)
    _, logics, partition, events, _ = build_state(args.rules, args.contacts)
    shard_state = {key: logic.state for key, logic in logics.items()}
    contacts = sum(len(s.index) for s in shard_state.values())
    runs = []
    with tempfile.TemporaryDirectory(prefix="halflife-pause-") as tmp:
        recovery_dir = args.recovery_dir or os.path.join(tmp, "recovery")
        for n in range(args.rounds):
            for mode in MODES:
                runs.append({"round": n, **run_mode(mode, shard_state, partition.dedupe, args, recovery_dir)})
    result.update(contacts=contacts, events=events, shards=len(shard_state), rules=args.rules,
                  epoch_s=args.epoch, seconds=args.seconds, runs=runs)
    medians = {m: float(np.median([r["median_pause_ms"] for r in runs if r["mode"] == m])) for m in MODES}
    result["median_pause_ms"] = medians
    result["pause_ratio_packed_to_plain"] = medians["packed"] / medians["plain"] if medians["plain"] else None
    print(f"halflife bench snapshots: {contacts:,} contacts in {len(shard_state)} shards ({args.rules}), "
          f"epochs of {args.epoch:g} s, {args.seconds:g} s per run")
    print(table([[r["round"], r["mode"], r["median_pause_ms"], " ".join(f"{p:.0f}" for p in r["pauses_ms"]),
                  r["recovery_file_bytes"] / 1e6] for r in runs],
                ["round", "snapshots", "median pause ms", "pauses ms", "recovery file MB"]))
    print(f"packed/plain median pause: {result['pause_ratio_packed_to_plain']:.2f}")
    print(f"written {write_result('snapshots', result, args.results_dir)}")
    return 0

