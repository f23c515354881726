"""The halflife dataflow, in one place.

    read: decode, dedupe, ──┬─ dead letters ──────────────────────────────▶ dlq
    stamp watermarks        ├─ (shard, EventBatch | Watermark | EndOfInput) ─▶ rules (per-shard state)
    (file/stdin, or Redis   │                                                    │
     shard streams)         │     triggers ─▶ output (file/stdout/Redis) [+ webhooks]
                            │     profile changes, contact states ─▶ profiles
                            └─ ReaderEnd ──▶ end_of_input ◀── ShardEnd ──────────┘
                                                  └── summary (replay mode only: live input never ends)

Every step moves batches: a source item is one shard's share of one read batch.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from engine import metrics
from engine.config import RunConfig, is_redis
from engine.decode import DeadLetter
from engine.endpoints import dead_letter_sink, profile_sink, source_for, trigger_sinks
from engine.records import ProfileRecords, ReaderEnd, ShardEnd, TriggerRecords
from engine.sources import END_KEY
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
    """The dataflow for `cfg`; `source` and `trigger_sink` replace the configured ones (the demo does).

    `cfg.recovery` must name the recovery directory the flow runs with (`recovery_config`): without
    one, the shards take no snapshots (bytewax asks for them at every epoch's end all the same)."""
    plan = plan or load_plan(cfg.rules)
    metrics.declare([t.name for t in plan.triggers], {t.name: t.channels for t in plan.triggers})
    flow = Dataflow("halflife")
    read = op.input("read", flow, source or source_for(cfg, plan))

    dead = op.filter("dead_letters", read, lambda kv: isinstance(kv[1], DeadLetter))
    op.output("dlq", dead, dead_letter_sink(cfg))

    to_shards = op.filter("events", read, lambda kv: kv[0].startswith("shard-"))
    profiles = profile_sink(cfg)
    contact_states = is_redis(cfg.profiles)
    shard_out = op.stateful_batch("rules", to_shards, lambda resume: ShardLogic(
        plan, resume, contact_states, cfg.live, profile_changes=profiles is not None, recovery=cfg.recovery is not None))
    shard_values = op.key_rm("shard_values", shard_out)

    triggers = op.filter_map("trigger_records", shard_values,
                             lambda v: ("triggers", v) if isinstance(v, TriggerRecords) else None)
    for name, sink in [("triggers", trigger_sink)] if trigger_sink else trigger_sinks(cfg):
        op.output(name, triggers, sink)
    if profiles is not None:
        changes = op.filter_map("profile_changes", shard_values,
                                lambda v: ("profiles", v) if isinstance(v, ProfileRecords) else None)
        op.output("profiles", changes, profiles)

    reader_ends = op.filter("reader_ends", read, lambda kv: isinstance(kv[1], ReaderEnd))
    shard_ends = op.filter_map("shard_ends", shard_values, lambda v: (END_KEY, v) if isinstance(v, ShardEnd) else None)
    end = op.stateful_batch(
        "end_of_input",
        op.merge("end_reports", reader_ends, shard_ends),
        lambda resume: EndOfInputLogic(cfg.shards, 1, resume),
    )
    summaries: Any = op.key_rm("summaries", end)
    op.output("summary_out", summaries, SummarySink(cfg.summary_path))
    return flow
