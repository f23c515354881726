"""One timer structure per shard: a deadline per (contact, timer rule), a min-heap, and the events.

`deadline[slot, k]` is the truth (NONE when the timer is not pending); the heap is an index for
the watermark path and may hold stale entries, which are dropped when popped. Its invariant: every
pending timer has a heap entry at or before its deadline. So arming a timer that is not pending,
or re-arming it earlier, pushes; re-arming it later (an `inactive_for` rule re-arms on every event)
pushes nothing, and the earlier entry, once popped and found stale, re-pushes the current deadline.
Entries of cancelled timers and superseded ones are dropped when popped; the heap is rebuilt from
the deadlines whenever it doubles, so it stays within twice the pending timers. (A column of the
deadline each timer's live entry has, which would spare some of those pushes, cost 8 bytes per
contact and timer rule.) A heap entry is two int64s, (deadline, slot << 8 | k), ordered as
(deadline, slot, k).

Each pending timer keeps the summary of the event that armed it (the trigger record's `event`,
packed: engine/summaries.py) in the shard's event arena, an append-only byte buffer of records (a uint32
length, the summary, padding to 8 bytes); `timer_event[slot, k]` is a uint32 reference to it in
8-byte units, 4 bytes per timer instead of an int64 offset and an int32 length. One event arming
several timers is stored once. Re-arms leave old records behind; `compact_events` copies the live
ones into a new arena once the garbage is half the live bytes, so the arena stays within about
1.5x what pending timers keep. The heap and `timer_next` are derived: snapshots leave them out
and `restore` rebuilds them from the deadlines.

The compiled functions take the table as one tuple, `TimerTable.arrays()`:
(deadline, next, event, heap_deadline, heap_ref, arena, meta), where
meta holds the heap size, the pending count, the arena's used bytes and the heap size that
triggers a rebuild.

Bytewax's own per-key timers are not used: with one key per contact the runtime scans every key
with a timer on every activation (see BYTEWAX-NOTES.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from engine.compiled import kernel
from engine.rawmem import copy_bytes
from operators.contacts import Columns, grown
from rules.model import MAX_TIMER_TRIGGERS

NONE = np.iinfo(np.int64).max
K_BITS = 8
assert (1 << K_BITS) >= MAX_TIMER_TRIGGERS  # the loader refuses rule sets with more timer rules
K_MASK = (1 << K_BITS) - 1
COMPACT_MIN = 1024
HEAP_SIZE, PENDING, ARENA_USED, COMPACT_AT = range(4)
ALIGN = 8  # arena records start at multiples of 8: a uint32 reference then addresses 32 GiB
HEADER = 4  # a record is its length (uint32, little-endian), then the summary's bytes
RECORD_OVERHEAD = HEADER + ALIGN - 1  # the most a record takes beyond its summary
ARENA_MIN = 1 << 16
COMPACT_ABOVE = 1 << 20  # arena bytes below which garbage is left alone
# An arena that reached it fills up to COMPACT_ABOVE again after each compaction: it keeps this much
# room (growing back to it cost a shard of the hot path's bench 9 copies after every compaction).
ARENA_REFILL = COMPACT_ABOVE + COMPACT_ABOVE // 4


class TimerTable:
    def __init__(self, columns: Columns, n_timers: int) -> None:
        if n_timers > MAX_TIMER_TRIGGERS:
            raise ValueError(f"at most {MAX_TIMER_TRIGGERS} timer rules per rule set, got {n_timers}")
        self.columns = columns
        self.n_timers = n_timers
        width = max(n_timers, 1)
        columns.add("timer_deadline", np.int64, NONE, width)
        columns.add("timer_next", np.int64, NONE, derived=True)  # min over the row: the contact's next deadline
        columns.add("timer_event", np.uint32, 0, width)  # the arming event's arena record, in ALIGN units
        self.heap_deadline = np.zeros(COMPACT_MIN, np.int64)
        self.heap_ref = np.zeros(COMPACT_MIN, np.int64)
        self.arena = np.zeros(ARENA_MIN, np.uint8)
        self.meta = np.array([0, 0, 0, COMPACT_MIN], np.int64)
        self._live_after_compaction = 0
        self._row = np.zeros(width, np.uint32)  # the compaction kernel's scratch

    def arrays(self) -> tuple[Any, ...]:
        a = self.columns.arrays
        return (a["timer_deadline"], a["timer_next"], a["timer_event"], self.heap_deadline,
                self.heap_ref, self.arena, self.meta)

    def pending(self) -> int:
        return int(self.meta[PENDING])

    def reserve(self, pushes: int, events: int, event_bytes: int, size: int) -> None:
        """Room for `pushes` more heap entries and `events` more arena records of `event_bytes` in all
        (`size`: the contacts, for a compaction that makes the room)."""
        used = int(self.meta[HEAP_SIZE])
        need = used + pushes + 1
        if need > len(self.heap_deadline):
            cap = max(need, 2 * len(self.heap_deadline))
            self.heap_deadline = grown(self.heap_deadline, cap, used)
            self.heap_ref = grown(self.heap_ref, cap, used)
        extra = event_bytes + events * RECORD_OVERHEAD
        if int(self.meta[ARENA_USED]) + extra > len(self.arena):
            self.compact_events(size)
            need = int(self.meta[ARENA_USED]) + extra
            if need > len(self.arena):
                step = len(self.arena) if len(self.arena) < COMPACT_ABOVE else len(self.arena) // 2
                self.arena = grown(self.arena, max(need, len(self.arena) + step), int(self.meta[ARENA_USED]))
        if int(self.meta[ARENA_USED]) + extra > ALIGN * (1 << 32):
            self.compact_events(size, force=True)
            if int(self.meta[ARENA_USED]) + extra > ALIGN * (1 << 32):
                raise MemoryError("a shard's pending timers keep more than 32 GiB of events: use more --shards")

    def event(self, slot: int, k: int) -> bytes:
        at = ALIGN * int(self.columns.arrays["timer_event"][slot, k])
        length = int(self.arena[at:at + HEADER].view("<u4")[0])
        return self.arena[at + HEADER:at + HEADER + length].tobytes()

    def deadline(self, slot: int, k: int) -> int:
        return int(self.columns.arrays["timer_deadline"][slot, k])

    def compact_events(self, size: int, force: bool = False) -> None:
        """Copy the records pending timers keep into a new arena, once garbage is half the live bytes
        (every stored byte is then copied about twice; `force`: now).

        The new arena holds the live records and half as much again, so the arena stays within
        about 1.5x its live bytes (it was 2-3x with doubling)."""
        used = int(self.meta[ARENA_USED])
        live_before = self._live_after_compaction
        if not force and (used < COMPACT_ABOVE or 2 * used < 3 * live_before):
            return
        live = _live_bytes(self.columns.arrays["timer_deadline"], self.columns.arrays["timer_event"], self.arena,
                           self._row, size)
        new = np.zeros(max(ARENA_MIN, live + live // 2, min(len(self.arena), ARENA_REFILL)), np.uint8)
        moved = _move_records(self.columns.arrays["timer_deadline"], self.columns.arrays["timer_event"], self.arena,
                              new, self._row, size)
        assert moved == live
        self._live_after_compaction = live
        self.arena = new
        self.meta[ARENA_USED] = live

    @staticmethod
    def from_offsets(columns: dict[str, np.ndarray], arena: np.ndarray) -> dict[str, Any]:
        """Snapshot format 3 (an int64 offset and an int32 length per timer, raw summaries in the
        arena) as this format: the columns are changed in place; the new arena snapshot is returned."""
        deadline = columns["timer_deadline"]
        offsets = columns.pop("timer_event_offset")
        lengths = columns.pop("timer_event_length")
        pending = deadline != NONE
        bound = int(lengths[pending].sum()) + RECORD_OVERHEAD * int(pending.sum())
        refs = np.zeros(deadline.shape, np.uint32)
        new = np.zeros(max(bound, 1), np.uint8)
        used = _records_from_offsets(deadline, offsets, lengths, arena, refs, new)
        columns["timer_event"] = refs
        return {"arena": new[:used].copy()}

    @staticmethod
    def convert_events(columns: dict[str, np.ndarray], arena: np.ndarray,
                       convert: Callable[[bytes], bytes]) -> dict[str, Any]:
        """A snapshot's arena with every pending timer's event converted by `convert` (a snapshot of an
        earlier format); a record several timers share stays shared. The references in `columns` are
        replaced; the new arena snapshot is returned."""
        deadline = columns["timer_deadline"]
        refs = columns["timer_event"] = columns["timer_event"].copy()
        raw = arena.tobytes()
        new = bytearray()
        placed: dict[int, int] = {}
        for s, k in zip(*np.nonzero(deadline != NONE), strict=True):
            old = ALIGN * int(refs[s, k])
            if old not in placed:
                length = int.from_bytes(raw[old:old + HEADER], "little")
                event = convert(raw[old + HEADER:old + HEADER + length])
                placed[old] = len(new) // ALIGN
                new += len(event).to_bytes(HEADER, "little") + event
                new += bytes(-len(new) % ALIGN)
            refs[s, k] = placed[old]
        return {"arena": np.frombuffer(bytes(new), np.uint8).copy()}

    def event_bytes(self) -> int:
        return int(self.meta[ARENA_USED])

    def nbytes(self) -> int:
        """The heap and the arena (the columns are counted with the shard's other columns)."""
        return int(self.heap_deadline.nbytes + self.heap_ref.nbytes + self.arena.nbytes)

    def entries(self) -> list[tuple[int, int, int]]:
        """The heap's entries as (deadline, slot, k), in order (for inspection)."""
        n = int(self.meta[HEAP_SIZE])
        return sorted((int(d), int(r) >> K_BITS, int(r) & K_MASK)
                      for d, r in zip(self.heap_deadline[:n], self.heap_ref[:n], strict=True))

    def snapshot(self, size: int, copy: bool = True) -> dict[str, Any]:
        """The arena's live part (the columns go with the shard's other columns); `copy=False` gives a
        view, valid until the arena next changes."""
        self.compact_events(size, force=True)
        arena = self.arena[: self.meta[ARENA_USED]]
        return {"arena": arena.copy() if copy else arena}

    def restore(self, size: int, snap: dict[str, Any]) -> None:
        """Rebuild the derived state (pending count, heap, next deadlines) after the columns were restored."""
        arena = snap["arena"]
        self.arena = np.zeros(max(ARENA_MIN, len(arena) + len(arena) // 2), np.uint8)
        self.arena[: len(arena)] = arena
        self.meta[ARENA_USED] = len(arena)
        self._live_after_compaction = len(arena)
        a = self.columns.arrays
        deadlines = a["timer_deadline"]
        pending = int(np.count_nonzero(deadlines[:size] != NONE)) if self.n_timers else 0
        self.meta[PENDING] = pending
        a["timer_next"][:] = deadlines.min(axis=1)
        self.reserve(pending, 0, 0, size)
        compact(self.arrays(), size)


# -- the event arena ------------------------------------------------------------------------------------


@kernel(inline=True)
def record_length(arena, at):  # type: ignore[no-untyped-def]
    """The summary length of the record at byte `at`."""
    return (np.int64(arena[at]) | (np.int64(arena[at + 1]) << 8) | (np.int64(arena[at + 2]) << 16)
            | (np.int64(arena[at + 3]) << 24))


@kernel(inline=True)
def _aligned(n):  # type: ignore[no-untyped-def]
    return (n + ALIGN - 1) // ALIGN * ALIGN


@kernel(inline=True)
def _write_record(dst, at, src, start, length):  # type: ignore[no-untyped-def]
    """Write src[start:start + length] as a record at byte `at` of dst; where the next record goes."""
    dst[at] = length & 0xFF
    dst[at + 1] = (length >> 8) & 0xFF
    dst[at + 2] = (length >> 16) & 0xFF
    dst[at + 3] = (length >> 24) & 0xFF
    return _aligned(copy_bytes(dst, at + HEADER, src, start, length))


@kernel(inline=True)
def store_event(timers, data, start, length):  # type: ignore[no-untyped-def]
    """Append data[start:start + length] to the arena as a record; its reference (for `arm`)."""
    arena, meta = timers[5], timers[6]
    at = meta[ARENA_USED]
    meta[ARENA_USED] = _write_record(arena, at, data, start, length)
    return at // ALIGN


@kernel(inline=True)
def _shared_earlier(deadline, row, s, k):  # type: ignore[no-untyped-def]
    """Index j < k of a pending timer of row s that kept the same record as timer k (`row`: the row's
    references as they were before a move), or -1. One event arming several timers is stored once."""
    for j in range(k):
        if deadline[s, j] != NONE and row[j] == row[k]:
            return j
    return -1


@kernel
def _live_bytes(deadline, refs, arena, row, size):  # type: ignore[no-untyped-def]
    total = 0
    for s in range(size):
        for k in range(deadline.shape[1]):
            row[k] = refs[s, k]
        for k in range(deadline.shape[1]):
            if deadline[s, k] != NONE and _shared_earlier(deadline, row, s, k) < 0:
                total += _aligned(HEADER + record_length(arena, np.int64(row[k]) * ALIGN))
    return total


@kernel
def _move_records(deadline, refs, arena, new, row, size):  # type: ignore[no-untyped-def]
    """Copy the records of pending timers into `new` (no sort: a record is shared only within a row)."""
    at = 0
    for s in range(size):
        for k in range(deadline.shape[1]):
            row[k] = refs[s, k]
        for k in range(deadline.shape[1]):
            if deadline[s, k] == NONE:
                continue
            j = _shared_earlier(deadline, row, s, k)
            if j >= 0:
                refs[s, k] = refs[s, j]
                continue
            old = np.int64(row[k]) * ALIGN
            refs[s, k] = at // ALIGN
            at = _aligned(copy_bytes(new, at, arena, old, HEADER + record_length(arena, old)))
    return at


@kernel
def _records_from_offsets(deadline, offsets, lengths, arena, refs, new):  # type: ignore[no-untyped-def]
    at = 0
    for s in range(deadline.shape[0]):
        for k in range(deadline.shape[1]):
            if deadline[s, k] == NONE:
                continue
            j = _shared_earlier(deadline, offsets[s], s, k)
            if j >= 0:
                refs[s, k] = refs[s, j]
                continue
            refs[s, k] = at // ALIGN
            at = _write_record(new, at, arena, offsets[s, k], np.int64(lengths[s, k]))
    return at


# -- the heap -------------------------------------------------------------------------------------------


@kernel(inline=True)
def _less(hd, hr, i, j):  # type: ignore[no-untyped-def]
    return hd[i] < hd[j] or (hd[i] == hd[j] and hr[i] < hr[j])


@kernel
def _sift_down(hd, hr, i, n):  # type: ignore[no-untyped-def]
    while True:
        child = 2 * i + 1
        if child >= n:
            return
        if child + 1 < n and _less(hd, hr, child + 1, child):
            child += 1
        if not _less(hd, hr, child, i):
            return
        hd[i], hd[child] = hd[child], hd[i]
        hr[i], hr[child] = hr[child], hr[i]
        i = child


@kernel(inline=True)
def heap_push(timers, deadline, ref):  # type: ignore[no-untyped-def]
    hd, hr, meta = timers[3], timers[4], timers[6]
    i = meta[HEAP_SIZE]
    meta[HEAP_SIZE] = i + 1
    hd[i] = deadline
    hr[i] = ref
    while i > 0:
        parent = (i - 1) // 2
        if not _less(hd, hr, i, parent):
            break
        hd[i], hd[parent] = hd[parent], hd[i]
        hr[i], hr[parent] = hr[parent], hr[i]
        i = parent


@kernel
def heap_pop(timers):  # type: ignore[no-untyped-def]
    hd, hr, meta = timers[3], timers[4], timers[6]
    d = hd[0]
    r = hr[0]
    n = meta[HEAP_SIZE] - 1
    meta[HEAP_SIZE] = n
    hd[0] = hd[n]
    hr[0] = hr[n]
    _sift_down(hd, hr, 0, n)
    return d, r


@kernel
def compact(timers, size):  # type: ignore[no-untyped-def]
    """Rebuild the heap from the deadlines: one entry per pending timer.

    Re-arms to an earlier deadline (a `falls_below` score lowered by negative points) leave
    superseded entries behind; rebuilding when the heap has doubled keeps it within twice the
    pending timers at amortised O(1) per push.
    """
    deadline, hd, hr, meta = timers[0], timers[3], timers[4], timers[6]
    n = 0
    for s in range(size):
        for k in range(deadline.shape[1]):
            d = deadline[s, k]
            if d != NONE:
                hd[n] = d
                hr[n] = (s << K_BITS) | k
                n += 1
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(hd, hr, i, n)
    meta[HEAP_SIZE] = n
    meta[COMPACT_AT] = max(COMPACT_MIN, 2 * n)


# -- timers ---------------------------------------------------------------------------------------------


@kernel(inline=True)
def _refresh_next(timers, slot, previous, current):  # type: ignore[no-untyped-def]
    """Keep next[slot] = the row's minimum after one deadline went previous -> current."""
    deadline, nxt = timers[0], timers[1]
    n = nxt[slot]
    if current <= n:
        nxt[slot] = current
    elif previous == n:  # the earliest timer moved later or went away: rescan the row
        m = NONE
        for k in range(deadline.shape[1]):
            if deadline[slot, k] < m:
                m = deadline[slot, k]
        nxt[slot] = m


@kernel(inline=True)
def arm(timers, slot, k, at_ms, event_ref, size):  # type: ignore[no-untyped-def]
    """Arm (or re-arm: one call restarts a pending timer) timer k of a contact, keeping the arena
    record `event_ref` (`store_event`) as its event."""
    deadline, ev_ref, meta = timers[0], timers[2], timers[6]
    previous = deadline[slot, k]
    deadline[slot, k] = at_ms
    if previous == NONE:
        meta[PENDING] += 1
    ev_ref[slot, k] = event_ref
    if at_ms < previous:  # not pending (NONE is the largest int64), or earlier: the heap needs an entry
        heap_push(timers, at_ms, (np.int64(slot) << K_BITS) | k)
        if meta[HEAP_SIZE] > meta[COMPACT_AT]:
            compact(timers, size)
    _refresh_next(timers, slot, previous, at_ms)


@kernel(inline=True)
def cancel(timers, slot, k):  # type: ignore[no-untyped-def]
    deadline, meta = timers[0], timers[6]
    previous = deadline[slot, k]
    if previous != NONE:
        meta[PENDING] -= 1
        deadline[slot, k] = NONE
        _refresh_next(timers, slot, previous, NONE)


@kernel(inline=True)
def next_due(timers, slot, before_ms):  # type: ignore[no-untyped-def]
    """The contact's timer with the earliest (deadline, k) below `before_ms`: (deadline, k), or (NONE, -1)."""
    deadline = timers[0]
    best = NONE
    best_k = -1
    for k in range(deadline.shape[1]):
        d = deadline[slot, k]
        if d < before_ms and d < best:
            best = d
            best_k = k
    return best, best_k


@kernel
def pop_due(timers, bound):  # type: ignore[no-untyped-def]
    """The next pending timer with a deadline below `bound`, popped: (deadline, slot, k), or (NONE, -1, -1).

    The caller fires and clears it. Stale entries on the way are dropped, or re-pushed at the timer's
    current deadline when it moved later (the entry kept the heap's invariant for it).
    """
    deadline, hd, meta = timers[0], timers[3], timers[6]
    while meta[HEAP_SIZE] > 0 and hd[0] < bound:
        d, ref = heap_pop(timers)
        slot = ref >> K_BITS
        k = ref & K_MASK
        current = deadline[slot, k]
        if current == d:
            return d, slot, k
        if current != NONE and current > d:
            heap_push(timers, current, ref)
    return NONE, -1, -1
