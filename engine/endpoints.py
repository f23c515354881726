"""Where a run reads and writes, from its targets: files and stdio (replay) or Redis (live).

`--input redis://…` reads the shard streams; `--output`, `--dlq`, `--profiles` may each
be a file, `-`/`stderr`, or a Redis URL; webhook channels add a webhook sink.
"""

from __future__ import annotations

from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import Sink

from engine.config import RunConfig, is_redis
from engine.sinks import line_sink
from engine.sources import JsonLinesSource
from rules.compiler import Plan


def source_for(cfg: RunConfig, plan: Plan) -> FixedPartitionedSource:
    if is_redis(cfg.input):
        from engine.redis_source import RedisStreamSource

        return RedisStreamSource(cfg.input, cfg.shards, cfg.batch_size, plan, prefix=cfg.prefix)
    return JsonLinesSource(cfg.input, cfg.shards, cfg.batch_size, plan)


def trigger_sinks(cfg: RunConfig) -> list[tuple[str, Sink]]:
    """(step name, sink) pairs; each takes `(channel, TriggerOut)` items."""
    sinks: list[tuple[str, Sink]] = []
    if is_redis(cfg.output):
        from engine.redis_sinks import RedisTriggerSink

        sinks.append(("triggers", RedisTriggerSink(cfg.output, prefix=cfg.prefix, retention_s=cfg.trigger_retention_s)))
    else:
        sinks.append(("triggers", line_sink(cfg.output)))
    if cfg.webhooks:
        from engine.webhooks import WebhookSink

        failed_to = cfg.output if is_redis(cfg.output) else None
        sinks.append(("webhooks", WebhookSink(cfg.webhooks, failed_to, prefix=cfg.prefix,
                                              max_attempts=cfg.webhook_max_attempts)))
    return sinks


def dead_letter_sink(cfg: RunConfig) -> Sink:
    """Takes `(key, DeadLetter)` items."""
    if is_redis(cfg.dlq):
        from engine.redis_sinks import RedisDeadLetterSink

        return RedisDeadLetterSink(cfg.dlq, prefix=cfg.prefix)
    return line_sink(cfg.dlq)


def profile_sink(cfg: RunConfig) -> Sink | None:
    """Takes `(contact, ProfileOut | ContactState)` items; None without `--profiles`."""
    if not cfg.profiles:
        return None
    if is_redis(cfg.profiles):
        from engine.redis_sinks import RedisProfileSink

        return RedisProfileSink(cfg.profiles, prefix=cfg.prefix)
    return line_sink(cfg.profiles)
