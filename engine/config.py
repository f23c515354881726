"""Run configuration: one frozen object built from flags (which fall back to HALFLIFE_* env)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunConfig:
    rules: str
    input: str = "-"
    output: str = "-"
    dlq: str = "stderr"
    profiles: str | None = None
    recovery: str | None = None
    workers: int = 1
    processes: int = 1
    batch_size: int = 65536
    shards: int = 64
    snapshot_interval_s: float = 10.0
    summary_path: str | None = None  # where the end-of-input step writes the run summary (JSON)
    prefix: str = "hl:"  # Redis key prefix (live mode)
    trigger_retention_s: int = 7 * 86400  # how long the Redis sink remembers trigger ids
    webhooks: dict[str, Any] = field(default_factory=dict)  # channel -> engine.webhooks.WebhookTarget
    webhook_max_attempts: int = 8
    metrics_port: int | None = None  # process i serves /metrics on metrics_port + i
    metrics_host: str = "127.0.0.1"

    @property
    def live(self) -> bool:
        return is_redis(self.input)


def is_redis(target: str | None) -> bool:
    return bool(target) and str(target).startswith(("redis://", "rediss://", "unix://"))
