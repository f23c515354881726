"""The halflife dataflow, in one place.

    read: decode, dedupe, ──┬─ dead letters ──────────────────────────────▶ dlq
    stamp watermarks        ├─ (shard, EventBatch | Watermark | EndOfInput) ─▶ rules (per-shard state)
                            │                                                    │
                            │                            triggers, profile changes ─▶ output, profiles
                            └─ ReaderEnd ──▶ end_of_input ◀── ShardEnd ──────────┘
                                                  └── summary

Every step moves batches: a source item is one shard's share of one read batch.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from engine.config import RunConfig
from engine.decode import DeadLetter
from engine.records import ProfileOut, ReaderEnd, ShardEnd, TriggerOut
from engine.sinks import line_sink
from engine.sources import END_KEY, JsonLinesSource
from operators.finalize import EndOfInputLogic
from operators.shard import ShardLogic
from rules import load_rules
from rules.compiler import Plan, compile_rules


class _SummaryPartition(StatelessSinkPartition[dict]):
    def __init__(self, path: str | None) -> None:
        self.path = path

    def write_batch(self, items: list[dict]) -> None:
        if self.path is None:
            return
        for summary in items:
            with open(self.path, "wb") as f:
                f.write(orjson.dumps(summary))


class SummarySink(DynamicSink[dict]):
    def __init__(self, path: str | None) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SummaryPartition:
        return _SummaryPartition(self.path)


def load_plan(rules_path: str) -> Plan:
    return compile_rules(load_rules(rules_path))


def build_flow(cfg: RunConfig, plan: Plan | None = None, source: FixedPartitionedSource | None = None,
               trigger_sink: Sink | None = None) -> Dataflow:
    """The dataflow for `cfg`; `source` and `trigger_sink` replace the file ones (the demo does)."""
    plan = plan or load_plan(cfg.rules)
    flow = Dataflow("halflife")
    source = source or JsonLinesSource(cfg.input, cfg.shards, cfg.batch_size, plan.lateness_ms)
    read = op.input("read", flow, source)

    dead = op.filter_map("dead_letters", read, lambda kv: kv[1].to_json() if isinstance(kv[1], DeadLetter) else None)
    op.output("dlq", op.key_on("dlq_key", dead, lambda _: "dlq"), line_sink(cfg.dlq))

    to_shards = op.filter("events", read, lambda kv: kv[0].startswith("shard-"))
    shard_out = op.stateful_batch(
        "rules", to_shards, lambda resume: ShardLogic(plan, resume)
    )
    shard_values = op.key_rm("shard_values", shard_out)

    reader_ends = op.filter("reader_ends", read, lambda kv: isinstance(kv[1], ReaderEnd))
    shard_ends = op.filter_map("shard_ends", shard_values, lambda v: (END_KEY, v) if isinstance(v, ShardEnd) else None)
    end = op.stateful_batch(
        "end_of_input",
        op.merge("end_reports", reader_ends, shard_ends),
        lambda resume: EndOfInputLogic(cfg.shards, 1, resume),
    )

    triggers = op.filter_map("trigger_lines", shard_values,
                             lambda v: ("out", v.line) if isinstance(v, TriggerOut) else None)
    op.output("triggers", triggers, trigger_sink or line_sink(cfg.output))
    if cfg.profiles:
        profiles = op.filter_map("profile_lines", shard_values,
                                 lambda v: ("profiles", v.line) if isinstance(v, ProfileOut) else None)
        op.output("profiles", profiles, line_sink(cfg.profiles))
    summaries: Any = op.key_rm("end_values", end)
    op.output("summary_out", summaries, SummarySink(cfg.summary_path))
    return flow
