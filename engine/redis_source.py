"""Live input: the collector's Redis shard streams as a bytewax partitioned source.

One partition per shard stream `{prefix}events:{i}` (SPEC §6); the partition for stream
`i` is a `DecodingPartition` built with `live=True` (the watermark also follows the wall
clock, SPEC §3) and `own_shard=i` (the collector routes a contact to stream `i` with the
same hash that routes it to shard `i`, so that partition's watermark broadcasts go to
shard `i` only).

Reading. `read_block` never blocks: `XREAD` without `BLOCK` (bytewax runs every partition
of a worker on one thread, so a blocking read would stall the others, and `BLOCK 0` would
stall them forever). The partitions of one worker share their reads (`WorkerReads`): a
partition that has nothing buffered and whose stream was not looked at in the last ~10 ms
sends one `XREAD COUNT n STREAMS key1 .. keyK id1 .. idK` for every stream of the worker
with nothing buffered, and each partition keeps what came for its stream (a round trip per
poll instead of one per shard stream per poll: with 64 streams on a worker, the single-
stream reads were half the engine's time). A partition whose stream was not drained by
that read (its reply was a full `COUNT`) reads on alone, `XREAD COUNT n STREAMS key cursor`,
until it has `batch_size` events (entries are never split, so the last entry may take it a
little over) or its stream is drained. When nothing is there it returns an empty block and
`next_awake` asks bytewax to wake the partition again when its stream is due to be looked
at, so an idle worker sleeps instead of spinning. A live stream has no end: it never
returns `None`. Each entry's field `events` holds newline-joined JSON events (a
single-event field `event` is accepted too); blank lines are not events; an event's
position is a running event counter (`state.offset`).

Resume state: `StreamReaderState`, a `ReaderState` whose `cursor` is the id of the last
entry read into a block (so a resumed partition continues with the next entry, `XREAD`
being exclusive; entries buffered but not in a block yet are read again) and whose
`entries` counts the entries read since the stream was created (for `backlog`).

Redis errors. A connection error or timeout never crashes the dataflow: the partition logs
once, returns what it has, and retries with exponential backoff (50 ms doubling up to 2 s)
through `next_awake`, keeping its cursor; it logs again when the stream is readable again.
Errors that are not about the connection (a shard key that is not a stream) are raised.

Shard count. The collector records its shard count in `HGET {prefix}config shards`; the
source refuses to start with a different count, because every contact would then be read
by the wrong shard and lose its state and its timers.

Trimming policy. The engine trims the shard streams it has consumed; nothing else may
remove entries from them (a collector that must bound a stream refuses writes instead):

    In snapshot() the partition runs `XTRIM key MINID <cursor of its previous snapshot>`.

`MINID c` removes the entries with an id lower than `c` (entry `c` itself stays), so an
entry is removed only once a snapshot taken after it was read is durable, and only while a
later snapshot is being taken. Why that previous snapshot is durable: bytewax gates the
input on the epoch: a partition is not polled in epoch e+1, so it cannot reach the end of
epoch e+1, where `snapshot()` is called again, before every output and the recovery
writes of epoch e have completed. When snapshot k is taken, snapshot k-1 is committed, and a
crash at any later moment resumes from snapshot k-1 or a newer one, whose cursor is `>= c`:
every entry a resumed run reads again is still in the stream. (Measured on bytewax 0.21.1:
a process killed inside its k-th `snapshot()` call resumed from the (k-1)-th snapshot,
for several epoch lengths and downstream speeds.) Why not the current snapshot: when
`snapshot()` returns, bytewax has not written that state yet; a crash before the epoch
commits resumes from the previous snapshot and reads on from its cursor, and the entries
between the two cursors, trimmed already, would be lost. A resumed partition counts the
snapshot it resumed from as its previous snapshot (it is durable: it was just loaded).

So a stream keeps one to two snapshot intervals of consumed entries, plus what is not read
yet. `trim_lag=n` trims to the cursor of the snapshot n snapshots back, for deployments
that may resume from an older snapshot (recovery partitions restored from an archival
backup, bytewax's `backup_interval`); `trim=False` turns trimming off. A failed `XTRIM`
is logged and skipped: the next snapshot trims further. bytewax calls `snapshot()` at every
epoch also without `--recovery`, so such a run trims the same way (and a restart without
recovery starts again from the oldest entry left).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import redis
from bytewax.inputs import FixedPartitionedSource
from redis.backoff import NoBackoff
from redis.retry import Retry

from engine import metrics
from engine.compiled import kernel
from engine.decode import split_lines
from engine.redaction import redact_url
from engine.redis_keys import Keys
from engine.sources import Block, DecodingPartition, ReaderState, report_started
from rules.compiler import Plan

__all__ = [
    "RedisStreamPartition",
    "RedisStreamSource",
    "ShardCountMismatch",
    "StreamReaderState",
    "check_shards",
    "connect",
    "stream_backlog",
]

log = logging.getLogger(__name__)

# Errors that mean "Redis is not reachable right now" (BusyLoadingError, a server still
# loading its data set after a restart, is a ConnectionError).
RETRYABLE = (redis.ConnectionError, redis.TimeoutError)

IDLE_S = 0.01  # poll interval of an empty stream
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 2.0
MAX_READS_PER_CALL = 64  # XREAD round trips per read_lines call at most
MAX_ENTRIES_PER_READ = 10_000
NO_ENTRY = "0-0"
EMPTY_BLOCK: Block = (np.frombuffer(b"\n", np.uint8), np.empty(0, np.int64), np.empty(0, np.int64),
                      np.empty(0, np.int64))


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client with short timeouts and one immediate reconnect attempt (a pooled connection
    that went stale across a server restart); the callers do their own backoff."""
    options: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "retry": Retry(NoBackoff(), 1),
                               "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


BACKLOG_EVERY_S = 1.0  # how often a partition measures its stream's backlog for the metrics

class ShardCountMismatch(RuntimeError):
    """The engine's shard count differs from the collector's (`{prefix}config` `shards`)."""


def check_shards(client: redis.Redis, shards: int, prefix: str = "hl:") -> int | None:
    """Raise `ShardCountMismatch` when the collector recorded another shard count; return the recorded one."""
    key = Keys(prefix).config
    raw = client.hget(key, "shards")
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    try:
        configured = int(text)
    except ValueError:
        raise ShardCountMismatch(f"{key} field shards is {text!r}, not a shard count") from None
    if configured != shards:
        raise ShardCountMismatch(
            f"the collector writes {configured} shard streams ({key} shards = {configured}) but the engine runs with "
            f"{shards} shards: contacts would be read by the wrong shard. Run the engine with --shards {configured} "
            f"(or restart the collector with --shards {shards} on an empty Redis).")
    return configured


def stream_backlog(client: redis.Redis, key: str, entries_read: int) -> int:
    """Entries of `key` not read yet by a reader that has read `entries_read` entries since the stream was created.

    Redis 7 counts every entry ever added (`XINFO STREAM` `entries-added`, unaffected by
    trimming), so this costs one command whatever the stream's length. An older server
    lacks that count: the answer is then `XLEN`, an upper bound. A missing stream has no backlog.
    """
    try:
        info: dict[str, Any] = client.xinfo_stream(key)  # type: ignore[assignment]
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return 0
        raise
    added = info.get("entries-added")
    if added is None:
        return int(info.get("length") or 0)
    return max(0, int(added) - entries_read)


@dataclass
class StreamReaderState(ReaderState):
    """A stream partition's resume state: `cursor` = id of the last entry read, `entries` = entries read."""

    entries: int = 0


def _id_str(entry_id: Any) -> str:
    return entry_id.decode("ascii") if isinstance(entry_id, bytes) else str(entry_id)


def _utc_in(seconds: float) -> datetime:
    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


class WorkerReads:
    """The shared `XREAD` of the shard streams one worker reads (see the module docstring).

    Holds, per registered partition, the entries fetched but not yet in one of its blocks;
    a partition's read cursor is the id of its last buffered entry, or its state's cursor.
    """

    def __init__(self, client: redis.Redis, batch_size: int) -> None:
        self.client = client
        self.batch_size = max(1, batch_size)
        self.partitions: dict[bytes, RedisStreamPartition] = {}
        self.per_entry = 100.0  # running estimate of events per entry (sizes COUNT)

    def register(self, part: RedisStreamPartition) -> None:
        self.partitions[part.key.encode()] = part

    def fetch(self) -> None:
        """One `XREAD` for every registered stream with nothing buffered; raises what Redis raises."""
        waiting = [p for p in self.partitions.values() if not p.buffered]
        if not waiting:
            return
        # COUNT is per stream: together the streams bring about one batch, whatever their number.
        count = max(1, min(MAX_ENTRIES_PER_READ, int(self.batch_size / self.per_entry / len(waiting))))
        reply = self.client.xread({p.key: p.read_cursor() for p in waiting}, count=count)
        checked_at = time.monotonic()
        awake = _utc_in(IDLE_S)
        for p in waiting:
            p.looked_at(checked_at, awake)
        for key, entries in _streams(reply):
            part = self.partitions.get(key if isinstance(key, bytes) else str(key).encode())
            if part is not None and entries:
                part.buffered.extend(entries)
                part.undrained = len(entries) >= count

    def observed(self, entries: int, lines: int) -> None:
        if entries:
            self.per_entry = 0.7 * self.per_entry + 0.3 * max(1.0, lines / entries)


class RedisStreamPartition(DecodingPartition):
    """Reads one shard stream; see the module docstring for the reading, retry and trimming policies.

    `reads`: the worker's shared reads (`RedisStreamSource` passes the one of the calling
    thread); a partition made without one reads alone.
    """

    def __init__(self, name: str, client: redis.Redis, key: str, state: ReaderState, shards: int, own_shard: int,
                 batch_size: int, plan: Plan | None, *, trim: bool = True, trim_lag: int = 1,
                 reads: WorkerReads | None = None) -> None:
        if not isinstance(state, StreamReaderState):  # a plain ReaderState: start counting entries from here
            state = StreamReaderState(**{f.name: getattr(state, f.name) for f in fields(ReaderState)})
        super().__init__(name, state, shards, plan, live=True, own_shard=own_shard)
        self.state: StreamReaderState = state
        self.client = client
        self.key = key
        self.batch_size = max(1, batch_size)
        self.trim = trim
        # Cursors of the last snapshots known durable, oldest first; the one we resumed from counts.
        self._snapshot_cursors: deque[str] = deque(maxlen=max(1, trim_lag))
        if state.cursor != NO_ENTRY:
            self._snapshot_cursors.append(state.cursor)
        self._trimmed_to = NO_ENTRY
        self.reads = reads if reads is not None else WorkerReads(client, batch_size)
        self.reads.register(self)
        self.buffered: deque[tuple[Any, dict]] = deque()  # fetched entries not in a block yet
        self.undrained = False  # the last read of this stream stopped at its COUNT
        self._checked_at = -IDLE_S  # monotonic time of the last read that covered this stream
        self._idle_awake: datetime | None = None  # when this stream is due to be looked at again
        self._awake: datetime | None = None
        self._failures = 0
        self._failing_since = 0.0
        self.own_shard = own_shard
        self._backlog_at = 0.0
        self.skipped_entries = 0  # entries with neither `events` nor `event` (not written by the collector)
        self.connection_errors = 0

    def read_cursor(self) -> str:
        return _id_str(self.buffered[-1][0]) if self.buffered else self.state.cursor

    def looked_at(self, monotonic_s: float, awake: datetime) -> None:
        self._checked_at = monotonic_s
        self._idle_awake = awake
        self.undrained = False

    # -- reading ----------------------------------------------------------------------

    def read_block(self) -> Block:
        now = time.monotonic()
        if now - self._backlog_at >= BACKLOG_EVERY_S:
            self._backlog_at = now
            backlog = self.backlog()
            if backlog is not None:
                metrics.SOURCE_BACKLOG.labels(str(self.own_shard)).set(backlog)
        payloads: list[bytes] = []
        lines = 0
        state = self.state
        try:
            if not self.buffered and now - self._checked_at >= IDLE_S:
                self.reads.fetch()
            lines = self._take_buffered(payloads)
            while self.undrained and not self.buffered and lines < self.batch_size:
                count = max(1, min(MAX_ENTRIES_PER_READ, int((self.batch_size - lines) / self.reads.per_entry)))
                entries = _entries(self.client.xread({self.key: state.cursor}, count=count))
                self.undrained = len(entries) >= count
                self.buffered.extend(entries)
                lines += self._take_buffered(payloads)
        except RETRYABLE as exc:
            self._failed(exc)
            return self._block(payloads)  # the entries read before the error are consumed; the cursor says so
        if self._failures:
            log.warning("%s: Redis is reachable again after %.1f s; reading from %s", self.key,
                        time.monotonic() - self._failing_since, state.cursor)
            self._failures = 0
        block = self._block(payloads)
        drained = not self.buffered and not self.undrained
        self._awake = self._idle_awake if drained and not len(block[1]) else None
        return block

    def _take_buffered(self, payloads: list[bytes]) -> int:
        """Moves buffered entries into `payloads` until they hold about a batch; returns their lines."""
        state = self.state
        buffered = self.buffered
        lines = 0
        taken = 0
        while buffered and lines < self.batch_size:
            entry_id, entry_fields = buffered.popleft()
            payload = self._payload(entry_fields)
            if payload is not None:
                payloads.append(payload)
                lines += payload.count(b"\n") + 1
            state.cursor = _id_str(entry_id)
            taken += 1
        state.entries += taken
        self.reads.observed(taken, lines)
        return lines

    def _block(self, payloads: list[bytes]) -> Block:
        """The entries' lines as one block; a line's position is the running event counter."""
        if not payloads:  # most polls of a live stream find nothing
            return EMPTY_BLOCK
        buf, starts, ends = split_lines(b"\n".join(payloads))
        nonblank = np.flatnonzero(_not_blank(buf, starts, ends, np.empty(len(starts), np.bool_)))
        starts, ends = starts[nonblank], ends[nonblank]
        positions = np.arange(self.state.offset, self.state.offset + len(starts), dtype=np.int64)
        self.state.offset += len(starts)
        return buf, starts, ends, positions

    def _payload(self, entry_fields: dict | None) -> bytes | None:
        entry_fields = entry_fields or {}
        payload = entry_fields.get(b"events")
        if payload is None:
            payload = entry_fields.get(b"event")
            if payload is None:
                self.skipped_entries += 1
                if self.skipped_entries == 1:
                    log.warning("%s: skipping an entry with neither an `events` nor an `event` field (fields: %s); "
                                "only the first such entry is logged", self.key, sorted(entry_fields)[:8])
                return None
            # A single event: a newline inside it would split it in two. A carriage return means the
            # same in JSON (whitespace between tokens, invalid inside a string), so it stands in.
            return payload.replace(b"\n", b"\r")
        return payload

    def _failed(self, exc: Exception) -> None:
        self.connection_errors += 1
        self._failures += 1
        if self._failures == 1:
            self._failing_since = time.monotonic()
            log.warning("%s: cannot read from Redis (%s: %s); retrying with backoff up to %.0f s, from %s",
                        self.key, type(exc).__name__, exc, BACKOFF_CAP_S, self.state.cursor)
        delay = min(BACKOFF_CAP_S, BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 16))
        self._awake = _utc_in(delay)

    def next_awake(self) -> datetime | None:
        return self._awake

    # -- metrics ----------------------------------------------------------------------

    def backlog(self) -> int | None:
        """Entries of this stream not read yet (None when Redis is unreachable)."""
        try:
            return stream_backlog(self.client, self.key, self.state.entries)
        except RETRYABLE:
            return None

    # -- recovery ---------------------------------------------------------------------

    def _snapshot(self) -> StreamReaderState:
        base = super()._snapshot()
        snap = StreamReaderState(**{f.name: getattr(base, f.name) for f in fields(ReaderState)},
                                 entries=self.state.entries)
        if self.trim:
            self._trim()
        self._snapshot_cursors.append(snap.cursor)
        return snap

    def _trim(self) -> None:
        cursors = self._snapshot_cursors
        if len(cursors) < (cursors.maxlen or 1):
            return
        min_id = cursors[0]
        if min_id == NO_ENTRY or min_id == self._trimmed_to:
            return
        try:
            self.client.xtrim(self.key, minid=min_id, approximate=False)
        except RETRYABLE as exc:
            log.warning("%s: XTRIM MINID %s failed (%s); the next snapshot trims further", self.key, min_id, exc)
            return
        self._trimmed_to = min_id

    def close(self) -> None:
        # The client (and its pool) belongs to the source; nothing of ours to release.
        return


def _streams(reply: Any) -> list[tuple[Any, list[tuple[Any, dict]]]]:
    """(stream key, entries) of an XREAD reply (RESP2 list or RESP3 dict); streams without entries are left out."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [(key, value[0] if value and isinstance(value[0], list) else value) for key, value in reply.items()]
    return [(key, entries) for key, entries in reply]


def _entries(reply: Any) -> list[tuple[Any, dict]]:
    """The entries of a one-stream XREAD reply."""
    streams = _streams(reply)
    return streams[0][1] if streams else []


class RedisStreamSource(FixedPartitionedSource[tuple[str, Any], ReaderState]):
    """The shard streams `{prefix}events:0 .. {prefix}events:{shards-1}`, one partition each.

        RedisStreamSource("redis://localhost:6379/0", shards=64, batch_size=1000, plan=compile_rules(...))

    `trim`/`trim_lag`: the trimming policy of the module docstring. Subclasses may set
    `partition_class` (tests stop a live source when its stream is drained).
    """

    partition_class: type[RedisStreamPartition] = RedisStreamPartition

    def __init__(self, url: str, shards: int, batch_size: int, plan: Plan | None, prefix: str = "hl:", *,
                 trim: bool = True, trim_lag: int = 1) -> None:
        if shards < 1:
            raise ValueError(f"shards must be positive, got {shards}")
        self.url = url
        self.shards = shards
        self.batch_size = batch_size
        self.plan = plan
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.trim = trim
        self.trim_lag = trim_lag
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self._reads: dict[int, WorkerReads] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_client"], state["_lock"], state["_reads"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self._lock = threading.Lock()
        self._reads = {}

    def client(self) -> redis.Redis:
        """One client (a thread-safe connection pool) for all partitions of this process's workers."""
        with self._lock:
            if self._client is None:
                self._client = connect(self.url)
            return self._client

    def worker_reads(self) -> WorkerReads:
        """The shared reads of the calling thread's partitions: bytewax builds and polls a worker's
        partitions on that worker's thread, and only partitions polled by one thread may share."""
        client = self.client()
        with self._lock:
            return self._reads.setdefault(threading.get_ident(), WorkerReads(client, self.batch_size))

    def check(self, attempts: int = 10) -> None:
        """Refuse a shard-count mismatch; retries while Redis is unreachable (about 15 s), then raises."""
        delay = BACKOFF_FIRST_S
        for attempt in range(1, attempts + 1):
            try:
                check_shards(self.client(), self.shards, self.prefix)
                return
            except RETRYABLE as exc:
                if attempt == attempts:
                    raise RuntimeError(f"cannot reach Redis at {redact_url(self.url)} to check the shard count: {exc}") from exc
                if attempt == 1:
                    log.warning("cannot reach Redis at %s (%s); retrying", redact_url(self.url), exc)
                time.sleep(delay)
                delay = min(BACKOFF_CAP_S * 2, delay * 2)

    def list_parts(self) -> list[str]:
        self.check()
        report_started()
        return [self.keys.events(i) for i in range(self.shards)]

    def build_part(self, step_id: str, for_part: str, resume_state: ReaderState | None) -> RedisStreamPartition:
        shard = int(for_part.rsplit(":", 1)[1])
        if for_part != self.keys.events(shard) or shard >= self.shards:
            raise ValueError(f"unknown shard stream {for_part!r} (this source reads {self.keys.events(0)} .. "
                             f"{self.keys.events(self.shards - 1)})")
        state = resume_state if resume_state is not None else StreamReaderState()
        return self.partition_class(for_part, self.client(), for_part, state, self.shards, shard, self.batch_size,
                                    self.plan, trim=self.trim, trim_lag=self.trim_lag, reads=self.worker_reads())


@kernel
def _not_blank(buf, starts, ends, out):  # type: ignore[no-untyped-def]
    """Lines holding something other than whitespace (blank lines are not events, and not counted)."""
    for i in range(len(starts)):
        out[i] = False
        for j in range(starts[i], ends[i]):
            c = buf[j]
            if c != 32 and c != 9 and c != 13 and c != 11 and c != 12:
                out[i] = True
                break
    return out
