"""`halflife demo`: a synthetic shop streamed through the real dataflow, triggers printed live.

No Redis and no files: the shop (`engine.shop`) is the source, paced so that
`--speed` shop minutes pass per wall-clock second, and a terminal sink prints each
trigger as it fires under a one-line status.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any

import orjson
from bytewax._bytewax import cli_main
from bytewax.inputs import FixedPartitionedSource
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from engine.config import RunConfig
from engine.dataflow import build_flow, load_plan
from engine.records import each_record
from engine.shop import Shop, ShopConfig
from engine.sources import Block, DecodingPartition, ReaderState, block_of
from engine.times import parse_time
from rules.compiler import Plan

POLL_S = 0.05


class _Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events = 0
        self.triggers = 0
        self.shop_ms = 0
        self.tty = sys.stderr.isatty()

    def status(self) -> None:
        elapsed = time.monotonic() - self.started
        clock = datetime.fromtimestamp(self.shop_ms / 1000, tz=timezone.utc).strftime("%H:%M")
        line = (f"shop time {clock}  events {self.events:,}  triggers {self.triggers:,}  "
                f"{self.events / max(elapsed, 1e-9):,.0f} events/s")
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()

    def clear(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")


STATS = _Stats()


class _ShopPartition(DecodingPartition):
    def __init__(self, shop: Shop, start_ms: int, speed: float, seconds: float, shards: int, plan: Plan) -> None:
        super().__init__("shop", ReaderState(), shards, plan)
        self.events = shop.events()
        self.pending: dict | None = None
        self.start_ms = start_ms
        self.speed = speed
        self.stop_at = time.monotonic() + seconds
        self.began = time.monotonic()

    def read_block(self) -> Block | None:
        if time.monotonic() >= self.stop_at:
            return None
        shop_now = self.start_ms + int((time.monotonic() - self.began) * self.speed * 60_000)
        lines: list[bytes] = []
        while True:
            event = self.pending or next(self.events)
            self.pending = None
            if (parse_time(event["timestamp"]) or 0) > shop_now:
                self.pending = event
                break
            lines.append(orjson.dumps(event))
        positions = list(range(self.state.offset, self.state.offset + len(lines)))
        self.state.offset += len(lines)
        STATS.events += len(lines)
        STATS.shop_ms = shop_now
        STATS.status()
        return block_of(lines, positions)

    def next_awake(self) -> datetime | None:
        return datetime.now(timezone.utc) + timedelta(seconds=POLL_S)


class _ShopSource(FixedPartitionedSource[tuple[str, Any], ReaderState]):
    def __init__(self, args: argparse.Namespace, shards: int, plan: Plan) -> None:
        self.args = args
        self.shards = shards
        self.plan = plan

    def list_parts(self) -> list[str]:
        return ["shop"]

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderState | None) -> _ShopPartition:
        cfg = ShopConfig(seed=self.args.seed, contacts=self.args.contacts)
        return _ShopPartition(Shop(cfg), cfg.start_ms, self.args.speed, self.args.seconds, self.shards, self.plan)


class _TerminalPartition(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        STATS.clear()
        for trigger in each_record(v for _, v in items):
            r = orjson.loads(trigger.line)
            STATS.triggers += 1
            ev = r["event"] or {}
            props = ev.get("properties") or {}
            detail = props.get("product_id") or props.get("path") or props.get("campaign") or ""
            print(f"{r['at'][11:19]}  {r['rule']:<20} -> {r['channel']:<13} {r['contact']:<10} "
                  f"{ev.get('event') or ev.get('type')} {detail}", flush=True)
        STATS.status()


class _TerminalSink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _TerminalPartition:
        return _TerminalPartition()


def main(args: argparse.Namespace) -> int:
    rules = args.rules or str(resources.files("rules") / "examples" / "ecommerce.yaml")
    plan = load_plan(rules)
    cfg = RunConfig(rules=rules, dlq="stderr", shards=16)
    print(f"halflife demo: {args.contacts} shoppers, {args.speed:g} shop minutes per second, "
          f"{args.seconds:g} s, rules {os.path.relpath(rules)}", file=sys.stderr)
    flow = build_flow(cfg, plan, source=_ShopSource(args, cfg.shards, plan),
                      trigger_sink=_TerminalSink())
    cli_main(flow, epoch_interval=timedelta(seconds=1))
    STATS.clear()
    elapsed = time.monotonic() - STATS.started
    print(f"demo done: {STATS.events:,} events, {STATS.triggers:,} trigger records in {elapsed:.1f} s",
          file=sys.stderr)
    return 0
