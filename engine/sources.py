"""Replay input: JSON Lines from a file or stdin, read and decoded in batches.

One partition per input file: one contact's events must reach its shard in input
order, and a single reader guarantees that. The partition decodes each batch
(`engine.decode`), drops duplicates, stamps each event with the watermark before it, routes valid events
to their shard as one sub-batch per shard, sends dead letters to the dead-letter output,
and after the last line sends `EndOfInput` to every shard and its counters to the
end-of-input step.

Resume state: the byte offset of the next line, the counters and the dedupe rings, so
a resumed run continues exactly after the last snapshot and reports the same totals.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine import metrics
from engine.decode import EventBatch, decode_lines
from engine.records import EndOfInput, ReaderEnd, Watermark, wall_ms
from engine.routing import shard_key, split_by_shard, take
from operators.dedupe import Deduplicator

STARTED_DIR_ENV = "HALFLIFE_CLUSTER_STARTED_DIR"


def report_started() -> None:
    """Leave a mark for the cluster supervisor (only its children have the variable set)."""
    directory = os.environ.get(STARTED_DIR_ENV)
    if directory:
        with open(os.path.join(directory, f"started-{os.getpid()}"), "wb"):
            pass

END_KEY = "end"
DLQ_KEY = "dlq"
# Lines longer than this are not kept whole in memory: they are dead letters anyway.
KEEP_RAW_BYTES = 1 << 20
NEVER = int(np.iinfo(np.int64).min)


@dataclass
class ReaderState:
    """A partition's resume state: where to continue, its counters, its dedupe rings."""

    offset: int = 0
    events_in: int = 0
    processed: int = 0
    deduplicated: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    late: int = 0
    max_time: int = NEVER  # largest time among accepted events
    finished: bool = False
    dedupe: dict[str, Any] | None = None  # Deduplicator.snapshot()
    cursor: str = "0-0"  # stream sources: the id of the last entry read


class DecodingPartition(StatefulSourcePartition[tuple[str, Any], ReaderState]):
    """Decodes, de-duplicates, stamps watermarks on and routes what `read_lines` returns.

    Subclasses provide `read_lines` (and advance `state.offset`): `None` means the
    input has ended, an empty list that nothing is available yet.

    Every event carries the input's watermark just before it (largest accepted time
    read so far − lateness), so a shard fires a contact's timers exactly as if the
    watermark had been applied event by event, however the input is batched and
    sharded. Shards that get no events still learn the watermark from a `Watermark`
    broadcast at most every WATERMARK_EVERY_S.
    """

    WATERMARK_EVERY_S = 0.2

    def __init__(self, name: str, state: ReaderState, shards: int, lateness_ms: int, *, live: bool = False,
                 own_shard: int | None = None) -> None:
        """`live`: the watermark also advances with the wall clock (SPEC §3, live mode).
        `own_shard`: a partition that carries one shard's stream sends its watermark
        broadcasts to that shard only (the wall clock reaches the others anyway)."""
        self.name = name
        self.state = state
        self.shards = shards
        self.lateness_ms = lateness_ms
        self.live = live
        self.watermark_targets = list(range(shards)) if own_shard is None else [own_shard]
        self.dedupe = Deduplicator() if state.dedupe is None else Deduplicator.restore(state.dedupe)
        state.dedupe = None
        self._broadcast_at = 0.0
        # Resumed after the input had ended: send the end markers again, so that a rerun of a
        # finished run ends with its summary (the shards' end-of-input work is idempotent).
        self._end_again = state.finished

    def current_watermark(self) -> int:
        state = self.state
        watermark = NEVER if state.max_time == NEVER else state.max_time - self.lateness_ms
        if self.live:
            watermark = max(watermark, wall_ms() - self.lateness_ms)
        return watermark

    def read_lines(self) -> tuple[list[bytes], list[int]] | None:
        raise NotImplementedError

    def next_batch(self) -> list[tuple[str, Any]]:
        state = self.state
        if state.finished:
            if self._end_again:
                self._end_again = False
                return self._end_items()
            raise StopIteration()
        read = self.read_lines()
        if read is None:
            state.finished = True
            return self._end_items()
        lines, positions = read
        out: list[tuple[str, Any]] = []
        if lines:
            started = time.perf_counter()
            out = self._decode(lines, positions)
            metrics.BATCH_DURATION.labels("read").observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels("read").observe(len(lines))
        now = time.monotonic()
        if now - self._broadcast_at >= self.WATERMARK_EVERY_S:
            watermark = self.current_watermark()
            if watermark != NEVER:
                self._broadcast_at = now
                mark = Watermark(watermark)
                out.extend((shard_key(s), mark) for s in self.watermark_targets)
                metrics.WATERMARK.set(watermark / 1000)
                metrics.EVENT_TIME_LAG.set(max(0.0, (wall_ms() - watermark) / 1000))
        return out

    def _decode(self, lines: list[bytes], positions: list[int]) -> list[tuple[str, Any]]:
        state = self.state
        batch, dead = decode_lines(lines, positions)
        state.events_in += len(lines)
        metrics.EVENTS_IN.inc(len(lines))
        out: list[tuple[str, Any]] = []
        reasons: dict[str, int] = {}
        for dl in dead:
            reasons[dl.reason] = reasons.get(dl.reason, 0) + 1
            out.append((DLQ_KEY, dl))
        for reason, n in reasons.items():
            state.dead_lettered += n
            state.reasons[reason] = state.reasons.get(reason, 0) + n
            metrics.EVENTS_DEAD_LETTERED.labels(reason).inc(n)
        if len(batch.contacts):
            keep = self.dedupe.accepted(batch.contacts, batch.message_ids)
            duplicates = len(batch.contacts) - len(keep)
            if duplicates:
                state.deduplicated += duplicates
                metrics.EVENTS_DEDUPLICATED.inc(duplicates)
                batch = take(batch, keep)
        if len(batch.contacts):
            state.processed += len(batch.contacts)
            metrics.EVENTS_PROCESSED.inc(len(batch.contacts))
            self._stamp_watermarks(batch)
            out.extend((shard_key(s), sub) for s, sub in split_by_shard(batch, self.shards))
        return out

    def _stamp_watermarks(self, batch: EventBatch) -> None:
        state = self.state
        times = batch.times
        running = np.maximum.accumulate(np.concatenate(([state.max_time], times)))
        before = running[:-1]  # the largest accepted time read before each event
        known = before != NEVER
        watermarks = np.where(known, before - self.lateness_ms, NEVER)
        if self.live:
            watermarks = np.maximum(watermarks, wall_ms() - self.lateness_ms)
            known = watermarks != NEVER
        late = int(np.count_nonzero(known & (times < watermarks)))
        if late:
            state.late += late
            metrics.EVENTS_LATE.inc(late)
        state.max_time = int(running[-1])
        batch.watermarks = watermarks

    def _end_items(self) -> list[tuple[str, Any]]:
        state = self.state
        marker = EndOfInput(state.max_time)
        items: list[tuple[str, Any]] = [(shard_key(s), marker) for s in range(self.shards)]
        items.append((END_KEY, ReaderEnd(
            partition=self.name, events_in=state.events_in, processed=state.processed,
            deduplicated=state.deduplicated, dead_lettered=state.dead_lettered,
            dead_letter_reasons=dict(state.reasons), late=state.late, max_time=state.max_time)))
        return items

    def snapshot(self) -> ReaderState:
        s = self.state
        return ReaderState(s.offset, s.events_in, s.processed, s.deduplicated, s.dead_lettered, dict(s.reasons),
                           s.late, s.max_time, s.finished, self.dedupe.snapshot(), s.cursor)


class _StreamPartition(DecodingPartition):
    def __init__(self, name: str, stream: BinaryIO, state: ReaderState, shards: int, batch_size: int,
                 lateness_ms: int) -> None:
        super().__init__(name, state, shards, lateness_ms)
        self.stream = stream
        self.batch_size = batch_size

    def read_lines(self) -> tuple[list[bytes], list[int]] | None:
        lines: list[bytes] = []
        positions: list[int] = []
        offset = self.state.offset
        readline = self.stream.readline
        while len(lines) < self.batch_size:
            line = readline(KEEP_RAW_BYTES)
            if not line:
                break
            start = offset
            offset += len(line)
            if len(line) == KEEP_RAW_BYTES and not line.endswith(b"\n"):
                # Skip the rest of a huge line; its prefix is dead-lettered as oversize.
                while True:
                    rest = readline(KEEP_RAW_BYTES)
                    offset += len(rest)
                    if not rest or rest.endswith(b"\n"):
                        break
            line = line.rstrip(b"\n")
            if line.strip():
                lines.append(line)
                positions.append(start)
        at_end = offset == self.state.offset
        self.state.offset = offset
        return None if at_end else (lines, positions)

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()


class JsonLinesSource(FixedPartitionedSource[tuple[str, Any], ReaderState]):
    """A file (or `-` for stdin) of JSON Lines events, as one partition."""

    def __init__(self, path: str, shards: int, batch_size: int, lateness_ms: int) -> None:
        self.path = path
        self.shards = shards
        self.batch_size = batch_size
        self.lateness_ms = lateness_ms

    def list_parts(self) -> list[str]:
        # bytewax lists partitions on every worker once the cluster is connected:
        # the supervisor's start-up watchdog waits for this sign of life.
        report_started()
        return [self.path]

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderState | None) -> _StreamPartition:
        state = resume_state or ReaderState()
        if self.path == "-":
            stream: BinaryIO = sys.stdin.buffer
        else:
            stream = open(self.path, "rb")  # noqa: SIM115 - closed by the partition
            stream.seek(state.offset)
        return _StreamPartition(for_part, stream, state, self.shards, self.batch_size, self.lateness_ms)
