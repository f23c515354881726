"""Replay input: JSON Lines from a file or stdin, read and decoded in batches.

One partition per input file: one contact's events must reach its shard in input
order, and a single reader guarantees that. The partition reads a block of lines into one
buffer, decodes it (`engine.decode.BatchDecoder`), drops duplicates, stamps each event with the
watermark before it, routes valid events to their shard as one sub-batch per shard, sends dead
letters to the dead-letter output, and after the last line sends `EndOfInput` to every shard and
its counters to the end-of-input step.

Resume state: the byte offset of the next line, the counters and the dedupe rings, so
a resumed run continues exactly after the last snapshot and reports the same totals.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BufferedIOBase
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from engine import metrics
from engine.decode import BatchDecoder, EventBatch, newline_positions, split_lines
from engine.records import EndOfInput, ReaderEnd, Watermark, wall_ms
from engine.routing import shard_key, split_by_shard
from engine.snapshots import pack, unpack
from operators.dedupe import Deduplicator
from rules.compiler import Plan

# A block of input: (buffer, line starts, line ends, positions); every line is followed by a
# newline in the buffer (`engine.decode.split_lines`), blank lines may be among them.
Block = tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]

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
    dedupe: tuple | dict[str, Any] | None = None  # Deduplicator.snapshot(), packed (engine.snapshots)
    cursor: str = "0-0"  # stream sources: the id of the last entry read


def block_of(lines: Sequence[bytes], positions: Sequence[int]) -> Block:
    """A block holding `lines` (without newlines; a newline inside one stands in as a carriage return,
    which JSON reads the same way) with their positions; blank lines are dropped."""
    kept = [(line.replace(b"\n", b"\r"), p) for line, p in zip(lines, positions, strict=True) if line.strip()]
    buf, starts, ends = split_lines(b"\n".join(line for line, _ in kept))
    return buf, starts, ends, np.array([p for _, p in kept], np.int64)


class DecodingPartition(StatefulSourcePartition[tuple[str, Any], ReaderState]):
    """Decodes, de-duplicates, stamps watermarks on and routes what `read_block` returns.

    Subclasses provide `read_block` (and advance `state.offset`): `None` means the
    input has ended, an empty block that nothing is available yet.

    Every event carries the input's watermark just before it (largest accepted time
    read so far − lateness), so a shard fires a contact's timers exactly as if the
    watermark had been applied event by event, however the input is batched and
    sharded. Shards that get no events still learn the watermark from a `Watermark`
    broadcast at most every WATERMARK_EVERY_S.
    """

    WATERMARK_EVERY_S = 0.2

    def __init__(self, name: str, state: ReaderState, shards: int, plan: Plan | None, *, live: bool = False,
                 own_shard: int | None = None) -> None:
        """`plan`: the rules, whose matchers the decoder evaluates (None: no rules, lateness 0).
        `live`: the watermark also advances with the wall clock (SPEC §3, live mode).
        `own_shard`: a partition that carries one shard's stream sends its watermark
        broadcasts to that shard only (the wall clock reaches the others anyway)."""
        self.name = name
        self.state = state
        self.shards = shards
        self.decoder = BatchDecoder(plan)
        self.lateness_ms = plan.lateness_ms if plan is not None else 0
        self.live = live
        self.watermark_targets = list(range(shards)) if own_shard is None else [own_shard]
        self.dedupe = Deduplicator() if state.dedupe is None else Deduplicator.restore(unpack(state.dedupe))
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

    def read_block(self) -> Block | None:
        raise NotImplementedError

    def next_batch(self) -> list[tuple[str, Any]]:
        state = self.state
        if state.finished:
            if self._end_again:
                self._end_again = False
                return self._end_items()
            raise StopIteration()
        block = self.read_block()
        if block is None:
            state.finished = True
            return self._end_items()
        out: list[tuple[str, Any]] = []
        if len(block[1]):
            started = time.perf_counter()
            out = self._decode(block)
            metrics.BATCH_DURATION.labels("read").observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.labels("read").observe(len(block[1]))
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

    def _decode(self, block: Block) -> list[tuple[str, Any]]:
        state = self.state
        batch, dead = self.decoder.decode(*block)
        lines = len(batch) + len(dead)  # blank lines are not events
        state.events_in += lines
        metrics.EVENTS_IN.inc(lines)
        out: list[tuple[str, Any]] = []
        reasons: dict[str, int] = {}
        for dl in dead:
            reasons[dl.reason] = reasons.get(dl.reason, 0) + 1
            out.append((DLQ_KEY, dl))
        for reason, n in reasons.items():
            state.dead_lettered += n
            state.reasons[reason] = state.reasons.get(reason, 0) + n
            metrics.EVENTS_DEAD_LETTERED.labels(reason).inc(n)
        if len(batch):
            keep = self.dedupe.accepted(batch)
            duplicates = len(batch) - int(np.count_nonzero(keep))
            if duplicates:
                state.deduplicated += duplicates
                metrics.EVENTS_DEDUPLICATED.inc(duplicates)
                batch = batch.take(np.flatnonzero(keep))
        if len(batch):
            state.processed += len(batch)
            metrics.EVENTS_PROCESSED.inc(len(batch))
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
        started = time.perf_counter()
        snap = self._snapshot()
        metrics.SNAPSHOT_DURATION.labels("read").observe(time.perf_counter() - started)
        return snap

    def _snapshot(self) -> ReaderState:
        s = self.state
        return ReaderState(s.offset, s.events_in, s.processed, s.deduplicated, s.dead_lettered, dict(s.reasons),
                           s.late, s.max_time, s.finished, pack(self.dedupe.snapshot(copy=False)), s.cursor)


class _StreamPartition(DecodingPartition):
    """Reads blocks of `batch_size` lines from a binary stream into one reused buffer.

    Bytes after the last complete line wait in the buffer for the next block. A block's buffer is
    this partition's own and is overwritten by the next read: the decoder copies what it keeps.
    A line longer than KEEP_RAW_BYTES is not held whole: its first KEEP_RAW_BYTES bytes are the
    line (an `oversize` dead letter) and the rest up to its newline is skipped.
    """

    CHUNK = 1 << 20

    def __init__(self, name: str, stream: BufferedIOBase, state: ReaderState, shards: int, batch_size: int,
                 plan: Plan | None) -> None:
        super().__init__(name, state, shards, plan)
        self.stream = stream
        # A pipe answers with what it has (read1), and a block ends with what the pipe had: lines
        # reach the engine as they are written, whatever the batch size.
        self._pipe = stream is sys.stdin.buffer
        self._readinto = stream.readinto1 if self._pipe else stream.readinto
        self.batch_size = batch_size
        self._buf = np.empty(4 * self.CHUNK, np.uint8)
        self._lo = 0  # the unconsumed bytes are _buf[_lo:_hi]; _buf[_lo] is at file offset state.offset
        self._hi = 0
        self._newlines = np.empty(0, np.int64)  # positions of the newlines in _buf[_lo:_hi], ascending
        self._skip = False  # inside a line longer than KEEP_RAW_BYTES, after its kept prefix
        self._eof = False

    def _fill(self) -> None:
        """Read one more chunk behind the unconsumed bytes (moved to the front first)."""
        if self._lo:
            kept = self._hi - self._lo
            self._buf[:kept] = self._buf[self._lo:self._hi]
            self._newlines -= self._lo
            self._lo, self._hi = 0, kept
        if self._hi + self.CHUNK + 1 > len(self._buf):
            grown = np.empty(2 * len(self._buf) + self.CHUNK, np.uint8)
            grown[:self._hi] = self._buf[:self._hi]
            self._buf = grown
        got = self._readinto(memoryview(self._buf)[self._hi:self._hi + self.CHUNK]) or 0  # type: ignore[arg-type]
        if not got:
            self._eof = True
            return
        found = np.empty(got, np.int64)
        n = newline_positions(self._buf, self._hi, self._hi + got, found)
        self._newlines = np.concatenate([self._newlines, found[:n]])
        self._hi += got
        if self._skip:
            self._skip_rest()

    def _skip_rest(self) -> None:
        """Drop the rest of an over-long line, up to and with its newline."""
        if len(self._newlines):
            cut = int(self._newlines[0]) + 1
            self._newlines = self._newlines[1:]
            self._skip = False
        else:
            cut = self._hi
        self.state.offset += cut - self._lo
        self._lo = cut

    def _tail(self) -> int:
        """Bytes after the last newline read: the line being read."""
        return self._hi - (int(self._newlines[-1]) + 1 if len(self._newlines) else self._lo)

    def read_block(self) -> Block | None:
        while not self._eof and (self._skip or (len(self._newlines) < self.batch_size
                                                and self._tail() <= KEEP_RAW_BYTES)):
            self._fill()
            if self._pipe and len(self._newlines) and not self._skip:
                break
        lo = self._lo
        if not len(self._newlines):
            if self._hi - lo > KEEP_RAW_BYTES:  # one line longer than the limit: its prefix is the line
                end = lo + KEEP_RAW_BYTES
                self._skip = True
            elif self._eof and self._hi > lo:  # the last line, without its newline
                end = self._hi
            else:
                return None if self._eof else _EMPTY_BLOCK
            self._buf[end] = 10
            block = self._block(np.array([end], np.int64))
            self.state.offset += self._hi - lo
            self._lo = self._hi
            return block
        take = min(self.batch_size, len(self._newlines))
        ends = self._newlines[:take]
        self._newlines = self._newlines[take:]
        block = self._block(ends)
        self.state.offset += int(ends[-1]) + 1 - lo
        self._lo = int(ends[-1]) + 1
        return block

    def _block(self, ends: npt.NDArray[np.int64]) -> Block:
        """The lines ending at `ends` (newlines in _buf) from _lo on, as a block."""
        starts = np.empty_like(ends)
        starts[0] = self._lo
        starts[1:] = ends[:-1] + 1
        positions = starts - self._lo + self.state.offset
        long = np.flatnonzero(ends - starts > KEEP_RAW_BYTES)
        if len(long):  # read whole with its chunk: keep only the prefix, as for one read in parts
            ends = ends.copy()
            ends[long] = starts[long] + KEEP_RAW_BYTES
            self._buf[ends[long]] = 10
        return self._buf, starts, ends, positions

    def close(self) -> None:
        if self.stream is not sys.stdin.buffer:
            self.stream.close()


_EMPTY_BLOCK: Block = (np.frombuffer(b"\n", np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64),
                       np.zeros(0, np.int64))


class JsonLinesSource(FixedPartitionedSource[tuple[str, Any], ReaderState]):
    """A file (or `-` for stdin) of JSON Lines events, as one partition."""

    def __init__(self, path: str, shards: int, batch_size: int, plan: Plan | None) -> None:
        self.path = path
        self.shards = shards
        self.batch_size = batch_size
        self.plan = plan

    def list_parts(self) -> list[str]:
        # bytewax lists partitions on every worker once the cluster is connected:
        # the supervisor's start-up watchdog waits for this sign of life.
        report_started()
        return [self.path]

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderState | None) -> _StreamPartition:
        state = resume_state or ReaderState()
        if self.path == "-":
            stream = cast(BufferedIOBase, sys.stdin.buffer)
        else:
            stream = open(self.path, "rb")  # noqa: SIM115 - closed by the partition
            stream.seek(state.offset)
        return _StreamPartition(for_part, stream, state, self.shards, self.batch_size, self.plan)
