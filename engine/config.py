"""Run configuration: one frozen object built from flags (which fall back to HALFLIFE_* env)."""

from __future__ import annotations

from dataclasses import dataclass


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
    batch_size: int = 1000
    shards: int = 64
    snapshot_interval_s: float = 10.0
    summary_path: str | None = None  # where the end-of-input step writes the run summary (JSON)
