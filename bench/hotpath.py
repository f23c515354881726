"""`halflife bench hotpath`: the engine's own dataflow in one process, on a pre-generated workload file.

    halflife bench hotpath [--events 2000000] [--contacts 1000000] [--state-contacts 1000000]
                           [--state-sweep 800000,1200000] [--smoke]

Runs `engine.dataflow.build_flow` (decode -> dedupe -> route -> shard state -> rules) with the
workload's lines in memory as the source (a `DecodingPartition`, so decoding, de-duplication,
watermarks and routing are the engine's own) and a blackhole trigger sink, on one bytewax worker
(`cli_main`, as `halflife run` does), with the e-commerce rule set. Reports:

* events/s (wall) and CPU seconds per million events (`time.process_time`, every thread of the
  process): 1e6 / that is the measured per-core rate; of the median of `--repeat` runs in this
  process (each with fresh state, after the kernels are loaded), every run's figure listed;
* time per stage: `halflife_batch_duration_seconds` by step (read = decode, dedupe, watermarks,
  routing; rules = shard state and rules), the rest being bytewax, the filters and the sinks;
* state bytes per contact at `--state-contacts` contacts: a state built through the real
  operators (`DecodingPartition` -> `ShardLogic`, no bytewax), then every object it holds counted
  (numpy arrays by their allocated size, the contact index and ids, the timers, the
  events kept for timers, the source's dedupe rings), excluding the shared rule plan; the same at
  each size of `--state-sweep`, without the breakdown.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from bench.common import EXAMPLE_RULES, Timer, generate_file, new_result, table, write_result
from engine import metrics
from engine.decode import split_lines
from engine.records import TriggerRecords, each_record
from engine.sources import Block, DecodingPartition, ReaderState, block_of
from rules.compiler import Plan

# -- in-memory source and blackhole sink --------------------------------------------------------------


class MemoryPartition(DecodingPartition):
    """The engine's decoding partition over a file's bytes held in memory (no file reads in the measurement).

    Blocks of `batch_size` lines are views of the one buffer, as the file source's blocks are views
    of its read buffer; `state.offset` counts lines.
    """

    def __init__(self, lines: tuple[np.ndarray, np.ndarray, np.ndarray], state: ReaderState, shards: int, plan: Plan,
                 batch_size: int) -> None:
        super().__init__("memory", state, shards, plan)
        self.buf, self.starts, self.ends = lines
        self.batch_size = batch_size

    def read_block(self) -> Block | None:
        i = self.state.offset
        if i >= len(self.starts):
            return None
        j = min(len(self.starts), i + self.batch_size)
        self.state.offset = j
        return self.buf, self.starts[i:j], self.ends[i:j], self.starts[i:j]


class IterPartition(DecodingPartition):
    """The decoding partition over an iterator of line batches (for building large states)."""

    def __init__(self, batches: Iterator[list[bytes]], shards: int, plan: Plan) -> None:
        super().__init__("iter", ReaderState(), shards, plan)
        self.batches = batches

    def read_block(self) -> Block | None:
        lines = next(self.batches, None)
        if lines is None:
            return None
        i = self.state.offset
        self.state.offset += len(lines)
        return block_of(lines, range(i, i + len(lines)))


class MemorySource(FixedPartitionedSource[tuple[str, Any], ReaderState]):
    def __init__(self, data: bytes, shards: int, batch_size: int, plan: Plan) -> None:
        self.lines = split_lines(data)  # before the measurement: the file source finds lines as it reads
        self.shards = shards
        self.batch_size = batch_size
        self.plan = plan

    def list_parts(self) -> list[str]:
        return ["memory"]

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderState | None) -> MemoryPartition:
        return MemoryPartition(self.lines, resume_state or ReaderState(), self.shards, self.plan, self.batch_size)


class _Blackhole(StatelessSinkPartition[Any]):
    def __init__(self, sink: BlackholeSink) -> None:
        self.sink = sink

    def write_batch(self, items: list[Any]) -> None:
        for _, value in items:
            if isinstance(value, TriggerRecords):  # the shards' records come as one item per batch
                self.sink.items += len(value)
                if self.sink.collect is not None:
                    self.sink.collect.extend(value.line(i) for i in range(len(value)))
            else:
                records = list(each_record([value]))
                self.sink.items += len(records)
                if self.sink.collect is not None:
                    self.sink.collect.extend(v.line for v in records)


class BlackholeSink(DynamicSink[Any]):
    """Counts `(key, record)` items; keeps the records' JSON lines when `collect` is a list."""

    def __init__(self, collect: list[bytes] | None = None) -> None:
        self.items = 0
        self.collect = collect

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Blackhole:
        return _Blackhole(self)


# -- metrics ------------------------------------------------------------------------------------------


def stage_seconds() -> dict[str, float]:
    """Cumulative `halflife_batch_duration_seconds` sums by step."""
    out: dict[str, float] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "halflife_batch_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_sum"):
                out[sample.labels.get("step", "?")] = sample.value
    return out


def gauge_sum(name: str) -> float:
    total = 0.0
    for family in metrics.REGISTRY.collect():
        if family.name == name:
            total += sum(s.value for s in family.samples)
    return total


# -- the halflife run -----------------------------------------------------------------------------------


def run_halflife(data: bytes, rules: str, *, shards: int = 64, batch_size: int = 1000, epoch_s: float = 10.0,
                 collect: bool = False, profile: str | None = None) -> dict[str, Any]:
    """The engine's dataflow on a file's bytes in this process; figures, the run summary and (optionally)
    trigger lines."""
    import orjson
    from bytewax._bytewax import cli_main

    from engine.config import RunConfig
    from engine.dataflow import build_flow, load_plan
    from engine.warmup import load_kernels

    plan = load_plan(rules)
    with tempfile.TemporaryDirectory(prefix="halflife-bench-") as tmp:
        summary_path = os.path.join(tmp, "summary.json")
        cfg = RunConfig(rules=rules, input="memory", output=os.devnull, dlq=os.devnull, shards=shards,
                        batch_size=batch_size, snapshot_interval_s=epoch_s, summary_path=summary_path)
        collected: list[bytes] | None = [] if collect else None
        sink = BlackholeSink(collected)
        source = MemorySource(data, shards, batch_size, plan)
        flow = build_flow(cfg, plan, source=source, trigger_sink=sink)
        # As `halflife run` starts (engine/runner.py): kernels loaded, start-up objects out of the collector.
        load_kernels(plan)
        gc.freeze()
        stages0 = stage_seconds()
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        with Timer() as timer:
            cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=epoch_s))
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        stages1 = stage_seconds()
        with open(summary_path, "rb") as f:
            summary = orjson.loads(f.read())
    events = int(summary["events_in"])
    stages = {k: stages1.get(k, 0.0) - stages0.get(k, 0.0) for k in stages1}
    stages = {k: v for k, v in stages.items() if v > 0}
    stages["other (bytewax, filters, sinks, snapshots)"] = max(0.0, timer.wall - sum(stages.values()))
    out: dict[str, Any] = {
        "events": events,
        "wall_s": timer.wall,
        "cpu_s": timer.cpu,
        "events_per_s": events / timer.wall if timer.wall else 0.0,
        "cpu_s_per_million": timer.cpu / events * 1e6 if events else 0.0,
        "per_core_events_per_s": events / timer.cpu if timer.cpu else 0.0,
        "stages_s": stages,
        "trigger_records": sink.items,
        "summary": summary,
        "shards": shards,
        "batch_size": batch_size,
        "epoch_s": epoch_s,
    }
    if collected is not None:
        out["trigger_lines"] = collected
    return out


# -- state size -----------------------------------------------------------------------------------------

_SKIP_TYPES = (type, type(sys), type(len), type(lambda: 0))


def _reachable_ids(root: Any) -> set[int]:
    """ids of every object reachable from `root` (the shared plan: not per-contact state)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, _SKIP_TYPES):
            continue
        seen.add(id(o))
        stack.extend(_children(o))
    return seen


def _children(o: Any) -> Iterable[Any]:
    if isinstance(o, np.ndarray):
        return o.ravel().tolist() if o.dtype == object else ()
    if isinstance(o, dict):
        return [*o.keys(), *o.values()]
    if isinstance(o, (list, tuple, set, frozenset)):
        return o
    if isinstance(o, (str, bytes, int, float, bool)) or o is None:
        return ()
    kids: list[Any] = []
    d = getattr(o, "__dict__", None)
    if d is not None:
        kids.append(d)
    for cls in type(o).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if hasattr(o, slot):
                kids.append(getattr(o, slot))
    return kids


def deep_size(root: Any, seen: set[int], strings: list[int] | None = None) -> int:
    """Bytes held by `root` and everything it references that is not in `seen` (which it extends).

    When `strings` is given, the bytes of str objects are added to strings[0] instead of the result.
    """
    total = 0
    stack = [root]
    while stack:
        o = stack.pop()
        i = id(o)
        if i in seen or isinstance(o, _SKIP_TYPES) or o is None or o is True or o is False:
            continue
        if type(o) is int and -5 <= o <= 256:  # cached small ints
            continue
        seen.add(i)
        if isinstance(o, np.ndarray):
            base = o
            while isinstance(base.base, np.ndarray):
                base = base.base
            if base is not o:
                if id(base) in seen:
                    total += sys.getsizeof(o) - o.nbytes * (o.base is None)
                    continue
                seen.add(id(base))
            total += base.nbytes + 112  # the array object itself
            if o.dtype == object:
                stack.extend(base.ravel().tolist())
            continue
        if strings is not None and type(o) is str:
            strings[0] += sys.getsizeof(o)
            continue
        total += sys.getsizeof(o)
        stack.extend(_children(o))
    return total


def _sized(prefix: str, obj: Any, seen: set[int], out: dict[str, int]) -> None:
    strings = [0]
    out[prefix] += deep_size(obj, seen, strings)
    out[prefix + " (strings)"] += strings[0]


def breakdown(prefix: str, obj: Any, seen: set[int], out: dict[str, int], depth: int) -> None:
    """Bytes of `obj` by attribute path (`depth` levels of attributes; arrays dicts split by name)."""
    d = getattr(obj, "__dict__", None)
    if depth == 0 or d is None or isinstance(obj, np.ndarray):
        _sized(prefix, obj, seen, out)
        return
    if id(obj) not in seen:
        seen.add(id(obj))
        seen.add(id(d))
        out[prefix] += sys.getsizeof(obj) + sys.getsizeof(d)
    for name, value in d.items():
        if isinstance(value, dict) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            if id(value) not in seen:
                seen.add(id(value))
                out[prefix] += sys.getsizeof(value)
            for col, arr in value.items():
                _sized(f"{prefix}.{col}", arr, seen, out)
        else:
            breakdown(f"{prefix}.{name}", value, seen, out, depth - 1)


def build_state(rules: str, contacts: int, *, shards: int = 64, seed: int = 7,
                batch_size: int = 1000) -> tuple[Plan, dict[str, Any], IterPartition, int, Timer]:
    """A state of `contacts` contacts built through the real operators (`DecodingPartition` ->
    `ShardLogic`, no bytewax): the plan, the shard logics by key, the source partition (its dedupe
    rings), the events it took and the build's timer."""
    from bench.workload import Workload, WorkloadConfig
    from engine.dataflow import load_plan
    from operators.shard import ShardLogic

    plan = load_plan(rules)
    # Every contact of the pool gets one short session (cover mode), so the state reaches the size quickly.
    wl = Workload(WorkloadConfig(seed=seed, contacts=contacts, cover=True, mean_browse_steps=1.0))

    def batches() -> Iterator[list[bytes]]:
        for chunk in wl.chunks():
            lines = chunk.lines()
            for i in range(0, len(lines), batch_size):
                yield lines[i:i + batch_size]

    partition = IterPartition(batches(), shards, plan)
    logics: dict[str, ShardLogic] = {}
    events = 0
    with Timer() as build:
        while True:
            try:
                items = partition.next_batch()
            except StopIteration:
                break
            by_key: dict[str, list[Any]] = defaultdict(list)
            for key, value in items:
                if key.startswith("shard-"):
                    by_key[key].append(value)
            for key, values in by_key.items():
                logic = logics.get(key)
                if logic is None:
                    logic = logics[key] = ShardLogic(plan, None)
                logic.on_batch(values)
            events = partition.state.processed
            if _contacts(logics) >= contacts or events > 50 * contacts:  # (the cap: should contacts not be countable)
                break
    return plan, logics, partition, events, build


def state_size(rules: str, contacts: int, *, shards: int = 64, seed: int = 7, batch_size: int = 1000) -> dict[str, Any]:
    """Build a state with `contacts` contacts through the real operators and count every byte it holds."""
    from operators.shard import Firings

    plan, logics, partition, events, build = build_state(rules, contacts, shards=shards, seed=seed,
                                                         batch_size=batch_size)
    held = _contacts(logics)
    exclude = _reachable_ids(plan)
    seen = set(exclude)
    parts: dict[str, int] = defaultdict(int)
    with Timer() as count:
        for key in sorted(logics):
            breakdown("shard", logics[key].state, seen, parts, 2)
        breakdown("source.dedupe", partition.dedupe, seen, parts, 2)
        breakdown("worker.firings", Firings.for_thread(plan), seen, parts, 2)  # scratch of the thread, not of a shard
    total = sum(parts.values())
    parts = {k: v for k, v in sorted(parts.items(), key=lambda kv: -kv[1]) if v}
    return {
        "contacts": held,
        "events": events,
        "shards": len(logics),
        "bytes_total": total,
        "bytes_per_contact": total / held if held else 0.0,
        "breakdown_bytes": parts,
        "breakdown_bytes_per_contact": {k: v / held for k, v in parts.items()} if held else {},
        "build_s": build.wall,
        "count_s": count.wall,
    }


def _contacts(logics: dict[str, Any]) -> int:
    """Contacts held by the shards: their index sizes, else what they report in `halflife_contacts`."""
    total = 0
    for logic in logics.values():
        index = getattr(logic.state, "index", None)
        if index is None:
            return int(gauge_sum("halflife_contacts"))
        total += len(index)
    return total


# -- the subcommand -------------------------------------------------------------------------------------


def prepare_input(args: argparse.Namespace, tmp: str, disorder_ms: int, duplicates: float) -> tuple[str, dict[str, Any]]:
    """The workload file: `--input`, or one generated into `tmp`."""
    from bench.workload import WorkloadConfig

    if args.input:
        return args.input, {"file": args.input, "generated": False}
    path = os.path.join(tmp, "workload.jsonl")
    config = WorkloadConfig(seed=args.seed, contacts=args.contacts, disorder_ms=disorder_ms, duplicate_rate=duplicates,
                            sessions_per_second=args.sessions_per_second)
    gen = generate_file(path, args.events, config, jobs=args.jobs)
    gen.update({"file": "(temporary)", "generated": True, "config": config.__dict__})
    return path, gen


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.events = min(args.events, 20_000)
        args.contacts = min(args.contacts, 5_000)
        args.state_contacts = min(args.state_contacts, 2_000)
        args.state_sweep = [min(c, 3_000) for c in args.state_sweep]
        args.sessions_per_second = min(args.sessions_per_second, 0.2)  # timers fire within 20k events
        args.jobs = 1
    args.rules = args.rules or str(EXAMPLE_RULES)
    result = new_result("hotpath", args)
    with tempfile.TemporaryDirectory(prefix="halflife-bench-") as tmp:
        path, gen = prepare_input(args, tmp, disorder_ms=2_000, duplicates=0.005)
        result["workload"] = gen
        with open(path, "rb") as f:
            data = f.read()
    profile = None
    if args.profile:
        from bench.common import RESULTS_DIR

        directory = args.results_dir or str(RESULTS_DIR)
        os.makedirs(directory, exist_ok=True)
        profile = os.path.join(directory, f"{result['started_at_stamp']}-hotpath.pstats")
    runs = []
    for _ in range(1 if profile else max(1, args.repeat)):
        runs.append(run_halflife(data, args.rules, shards=args.shards, batch_size=args.batch_size, profile=profile))
    run = sorted(runs, key=lambda r: r["cpu_s_per_million"])[(len(runs) - 1) // 2]  # the median run
    run["runs_cpu_s_per_million"] = [r["cpu_s_per_million"] for r in runs]
    assert len({r["trigger_records"] for r in runs}) == 1, "every run fires the same triggers"
    run.pop("trigger_lines", None)
    if profile:
        import pstats

        run["profile"] = profile
        print(f"cProfile (slows the run; figures below are with the profiler on): {profile}")
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    result["rules"] = os.path.relpath(args.rules)
    result["hotpath"] = run
    if args.state_contacts:
        result["state"] = state_size(args.rules, args.state_contacts, shards=args.shards, seed=args.seed)
    if args.state_sweep:
        result["state_sweep"] = [
            {k: v for k, v in state_size(args.rules, n, shards=args.shards, seed=args.seed).items()
             if k in ("contacts", "events", "bytes_total", "bytes_per_contact")}
            for n in args.state_sweep]
    written = write_result("hotpath", result, args.results_dir)
    print(report(result))
    print(f"\nwritten {written}")
    return 0


def report(result: dict[str, Any]) -> str:
    run = result["hotpath"]
    gen = result.get("workload", {})
    out = [f"halflife bench hotpath: {run['events']:,} events, {os.path.basename(result.get('rules', ''))}, "
           f"{run['shards']} shards, batches of {run['batch_size']}, 1 worker"]
    every = run.get("runs_cpu_s_per_million", [run["cpu_s_per_million"]])
    if len(every) > 1:
        out.append(f"{len(every)} runs, CPU s per million events: {', '.join(f'{v:.3f}' for v in every)}; "
                   f"the median run below (best {1e6 / min(every):,.0f} events/s per core)")
    if gen.get("generated"):
        out.append(f"workload: generated at {gen['events_per_s']:,.0f} events/s ({gen['bytes'] / gen['events']:.0f} "
                   f"bytes/event)")
    out.append(table([
        ["events/s (wall)", run["events_per_s"]],
        ["CPU s per million events", run["cpu_s_per_million"]],
        ["events/s per core (1e6 / CPU s per million)", run["per_core_events_per_s"]],
        ["wall s", run["wall_s"]],
        ["trigger records", run["trigger_records"]],
        ["contacts", run["summary"].get("contacts", 0)],
    ], ["hot path", "value"]))
    wall = run["wall_s"] or 1.0
    out.append("")
    out.append(table([[k, v, 100 * v / wall, v / run["events"] * 1e6] for k, v in run["stages_s"].items()],
                     ["stage", "seconds", "% of wall", "s per million"]))
    fired = Counter(run["summary"].get("triggers", {}))
    if fired:
        out.append("")
        out.append(table(sorted(fired.items()), ["rule", "fired"]))
    state = result.get("state")
    if state:
        out.append("")
        out.append(f"state: {state['contacts']:,} contacts after {state['events']:,} events, "
                   f"{state['bytes_total'] / 2**20:,.1f} MiB = {state['bytes_per_contact']:,.1f} bytes per contact")
        rows = [[k, v, state["breakdown_bytes_per_contact"][k]] for k, v in state["breakdown_bytes"].items()]
        out.append(table(rows, ["held by", "bytes", "bytes/contact"]))
    sweep = result.get("state_sweep")
    if sweep:
        out.append("")
        out.append(table([[s["contacts"], s["events"], s["bytes_per_contact"]] for s in sweep],
                         ["state at contacts", "after events", "bytes/contact"]))
    return "\n".join(out)
