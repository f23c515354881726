"""One timer structure per shard: the contacts' pending timers, the bounds that find the due ones, and the events they keep.

A contact's pending timers are held in its row, INLINE (2) of them: each place names its timer rule
(`timer_rule`, FREE when empty), its deadline and its event; more spill into the shard's spill table
(an open-addressing table keyed by slot x (timer rules) + k, whose entries leave when their timer
fires or is cancelled), and `timer_spilled` counts them. With the example rules at 1M contacts, 52%
of the contacts have one timer pending, 37% two, 11% three and 0.2% more: a deadline and a reference
for each of the 5 timer rules took 71.5 B/contact (allocated, at that size), the row of 2 and the
spill table take 42.7: 19.1 deadlines, 9.5 references, 3.6 rules and counts, 10.5 spill table.
A row keeps a deadline as the milliseconds after the contact's clock (`timer_due_in`, a uint32), which
the shard's `clock` column holds: a pending timer is never due before its contact's clock (the
timers due by an event's time fire before the event moves the clock), so when the clock moves on
`age` brings the row's timers nearer by as much. A deadline further than DUE_IN_MAX (49.7 days)
after the clock, or before it, goes to the spill table, which keeps int64 times (`_fits_inline`).
Int64 deadlines took 17.6 of the state benchmark's bytes per contact at 1M contacts; these take 8.8.
Snapshots keep the times (`deadlines`; `restore` takes them back, and spills a row's deadline that
does not fit).
A timer's deadline (`deadline_of`; NONE when it is not pending) is the truth. The watermark path
finds due timers through `block_min`: for each block of BLOCK (64) consecutive slots, a lower bound
of its pending timers' deadlines (NONE: none pending). Arming lowers it and nothing raises it but a
scan: `pop_due` scans the blocks whose bound is below the watermark, collects their due timers into
a buffer sorted by (deadline, slot, k), which the caller fires in turn, and sets each scanned
block's bound to the exact minimum of what stays pending. A cancelled or re-armed timer leaves its
block's bound low until the next scan, which costs a block's rows once. A min-heap of 12-byte
entries, one per arm that lowered a timer's deadline and at most twice the pending timers, took
22.4 B/contact of the state benchmark's 337.3 at 1M contacts; the bounds take 1/8 byte, and the
buffer holds one watermark step's due timers.

Each pending timer keeps the summary of the event that armed it (the trigger record's `event`) in the
shard's event arena, an append-only byte buffer of records: the summary in the kept form
(engine/summaries.py: a header of 11 bytes where a packed summary has 24, the message id without its
quotes, a shared name), one after the other. A timer's event is a uint32 reference to its first byte.
The state benchmark's pending timers kept 65.7 live bytes per contact at 1M contacts when a record was
a length of its own, the packed summary and padding to 8 (snapshot formats up to 7), 60.8 as the
packed summary padded to 4 (format 8), 38.6 in the kept form padded to 4, 37.4 unpadded (format 9).
One event arming several timers is stored once. Re-arms leave old records behind; `compact_events`
copies the live ones into a new arena once the garbage is an eighth of the live bytes, so the arena
stays within about 1.125x what pending timers keep. The block bounds are derived: snapshots leave them out and `restore`
computes them from the deadlines. A contact's earliest deadline is found by scanning its row, and the spill
table only for a contact that spilled (`next_due`), at each of its events: the row is in cache
anyway, since an `inactive_for` rule re-arms on every event, and a column of minimums cost 8 bytes
per contact.

Properties and event names are shared: a shop's pages and products repeat, and an `inactive_for`
rule keeps nearly every contact's last event, so most kept summaries carry properties that other kept
summaries carry too, and nearly all carry one of a few names. Properties of at least SHARE_FROM bytes
and names of at least SHARE_NAME_FROM go, once, into a second buffer of records (`shared`), found
through an open-addressing table of int64s (`shared_index`: 31 bits of their hash above their record's
reference, one load per probe) and compared byte for byte; the kept summary holds a 4-byte reference
instead (flags PROPERTIES_SHARED, NAME_SHARED). A page view's record went from 120 to 48 bytes with
shared properties, and to 32 in the kept form. New parts that find the shared buffer or its index full
(both grow between batches) stay in their record. `compact_events` compacts both buffers together, when
either holds garbage.

The compiled functions take the table as one tuple, `TimerTable.arrays()`: (due_in, event,
block_min, due, arena, meta, shared, shared_index, rule, spilled, spill_keys, spill_deadline,
spill_event, clock), where `due` is the buffer of due timers (deadline, slot x timer rules + k) and meta
holds the buffer's used entries, the pending count, the arena's used bytes, the buffer's next entry
to fire, the shared buffer's used bytes and its records, the index's hash seed, the number of timer
rules, the spill table's used entries and hash shift, and the block a collection resumes at.

Bytewax's own per-key timers are not used: with one key per contact the runtime scans every key
with a timer on every activation (see BYTEWAX-NOTES.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from engine import summaries
from engine.compiled import kernel
from engine.rawmem import copy_bytes, load_prefix, load_u32, load_u64, store_u32
from operators.contacts import Columns, grown, next_capacity
from rules.model import MAX_TIMER_TRIGGERS

NONE = np.iinfo(np.int64).max
NEVER = np.iinfo(np.int64).min  # a contact clock before the contact's first event
DUE_IN_MAX = 0xFFFFFFFF  # the furthest a deadline in a contact's row can be after its clock (49.7 days)
BLOCK_SHIFT = 6
BLOCK = 1 << BLOCK_SHIFT  # the slots of a block, which has one lower bound of its deadlines
DUE_MIN = 1024  # the due buffer's entries, at least (and at least a block's worth of timers)
NOT_DUE, NEEDS_ROOM = -1, -2  # what `pop_due` gives as k when it gives no timer
(DUE_USED, PENDING, ARENA_USED, DUE_NEXT, SHARED_USED, SHARED_RECORDS, HASH_SEED, WIDTH, SPILL_USED,
 SPILL_SHIFT, DUE_SCAN) = range(11)
INLINE = 2  # timers a contact holds in its row; more spill into the shard's table of spilled timers
FREE = 255  # an inline place holding no timer (so a rule set has at most 255 timer rules)
SPILL_MIN = 64  # the spill table's first size (a power of two, at most 3/4 full)
# Arena records are not padded (the kernels load unaligned), so a uint32 reference addresses 4 GiB. Those of
# snapshot format 8 were padded to 4 and referred to in 4-byte units.
PACKED_ALIGN = 4
# Shared properties are records of a uint32 length, then the bytes, padded to 8 (as the arena's were up to
# snapshot format 7: LEGACY_ALIGN, LEGACY_HEADER).
SHARED_ALIGN = LEGACY_ALIGN = summaries.SHARED_ALIGN
SHARED_HEADER = LEGACY_HEADER = summaries.SHARED_RECORD_HEADER
ARENA_MIN = 1 << 16
# Arena bytes below which garbage is left alone. At 1 MiB, the state benchmark's 64 shards of 15.6k
# contacts (60.8 live bytes of records per contact) held arenas of 83.9 B/contact, all at the refill
# size below; at 512 KiB, 70.7. Building those 1M contacts then spent 0.67 s compacting instead of
# 0.30-0.39 (576 compactions instead of 192; 256 KiB: 960 and 0.84 s, for no fewer bytes).
COMPACT_ABOVE = 1 << 19
# An arena that reached it fills up to COMPACT_ABOVE again after each compaction: it keeps this much
# room (growing back to it cost a shard of the hot path's bench 9 copies after every compaction).
ARENA_REFILL = COMPACT_ABOVE + COMPACT_ABOVE // 4
# A compacted arena keeps live // ARENA_ROOM bytes of room, and is compacted again once the garbage of
# re-arms has filled it (or grows by len // ARENA_ROOM when the live records did).
ARENA_ROOM = 8
# Properties shorter than this stay in their summary: sharing them saves at most 12 bytes a record
# and costs a shared record and an index entry (about 21 bytes).
SHARE_FROM = 16
# Event names (JSON strings) from this length are shared: a shop sends a few dozen names, so their
# shared records cost next to nothing, and "Product Viewed" takes 4 bytes instead of 16.
SHARE_NAME_FROM = 8
SHARED_MIN = ARENA_MIN
INDEX_MIN = 1 << 10
NO_ENTRY = -1
# The spill table's keys, slot x (timer rules) + k, are uint32s: slots are below 2^24 and there are at most
# 255 timer rules, so no key is NO_SPILL.
NO_SPILL = 0xFFFFFFFF
assert MAX_TIMER_TRIGGERS <= FREE


class TimerTable:
    def __init__(self, columns: Columns, n_timers: int) -> None:
        if n_timers > MAX_TIMER_TRIGGERS:
            raise ValueError(f"at most {MAX_TIMER_TRIGGERS} timer rules per rule set, got {n_timers}")
        self.columns = columns
        self.n_timers = n_timers
        self.width = max(n_timers, 1)
        inline = min(self.width, INLINE)
        if "clock" not in columns.arrays:
            raise ValueError("the timers' deadlines are kept relative to the contact clock: add the `clock` column first")
        columns.add("timer_rule", np.uint8, FREE, inline)  # the timer rule each inline place holds
        columns.add("timer_due_in", np.uint32, 0, inline)  # its deadline, in ms after the contact's clock
        columns.add("timer_event", np.uint32, 0, inline)  # the arming event's arena record, in bytes
        columns.add("timer_spilled", np.uint8, 0)  # how many of the contact's timers are in the spill table
        self.block_min = np.full(1, NONE, np.int64)
        self._due_min = max(DUE_MIN, BLOCK * self.width)
        self.due = np.zeros((self._due_min, 2), np.int64)
        self.arena = np.zeros(ARENA_MIN, np.uint8)
        # The shared index's hash is seeded per table (the index is rebuilt on restore, never saved):
        # properties crafted to collide in one process do not collide in another.
        seed = int.from_bytes(os.urandom(8), "little") >> 1
        self.meta = np.array([0, 0, 0, 0, 0, 0, seed, self.width, 0, 0, 0], np.int64)
        self.shared = np.zeros(SHARED_MIN, np.uint8)
        self.shared_index = np.full(INDEX_MIN, NO_ENTRY, np.int64)
        self._allocate_spill(SPILL_MIN)
        self._live_after_compaction = 0
        self._shared_after_compaction = 0
        self._row = np.zeros(self.width, np.uint32)  # the compaction kernels' scratch
        self._where = np.zeros(self.width, np.int64)

    def _allocate_spill(self, capacity: int) -> None:
        self.spill_keys = np.full(capacity, NO_SPILL, np.uint32)  # slot x timer rules + k, as the due buffer names timers
        self.spill_deadline = np.zeros(capacity, np.int64)
        self.spill_event = np.zeros(capacity, np.uint32)
        self.meta[SPILL_USED] = 0
        self.meta[SPILL_SHIFT] = 65 - capacity.bit_length()

    def arrays(self) -> tuple[Any, ...]:
        a = self.columns.arrays
        return (a["timer_due_in"], a["timer_event"], self.block_min, self.due, self.arena, self.meta,
                self.shared, self.shared_index, a["timer_rule"], a["timer_spilled"], self.spill_keys,
                self.spill_deadline, self.spill_event, a["clock"])

    def pending(self) -> int:
        return int(self.meta[PENDING])

    def spilled(self) -> int:
        return int(self.meta[SPILL_USED])

    def make_spill_room(self, arms: int) -> None:
        """Room in the spill table for `arms` more timers (the compiled loop stops for it: `spill_room`)."""
        need = int(self.meta[SPILL_USED]) + arms
        capacity = len(self.spill_keys)
        if 4 * need <= 3 * capacity:
            return
        while 4 * need > 3 * capacity:
            capacity *= 2
        keys, deadlines, events = self._spill_items()
        self._allocate_spill(capacity)
        _spill_put_all(self.arrays(), keys, deadlines, events)

    def _spill_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        live = self.spill_keys != NO_SPILL
        keys = self.spill_keys[live]
        order = np.argsort(keys, kind="stable")
        return keys[order], self.spill_deadline[live][order], self.spill_event[live][order]

    def make_due_room(self) -> None:
        """Room in the due buffer for one more block's timers (`pop_due` stops for it)."""
        used = int(self.meta[DUE_USED])
        if used + BLOCK * self.width > len(self.due):
            due = np.zeros((max(2 * len(self.due), used + BLOCK * self.width), 2), np.int64)
            due[:used] = self.due[:used]
            self.due = due

    def release_due(self) -> None:
        """Give back a due buffer that a burst of due timers grew (call it when it is empty)."""
        assert self.meta[DUE_NEXT] == self.meta[DUE_USED] and self.meta[DUE_SCAN] == 0
        if len(self.due) > self._due_min:
            self.due = np.zeros((self._due_min, 2), np.int64)
        self.meta[DUE_USED] = self.meta[DUE_NEXT] = 0

    def reserve(self, event_bytes: int, size: int) -> None:
        """Block bounds for `size` contacts and room for arena records of packed summaries of `event_bytes`
        in all (a kept summary is never longer than the packed one; `size` also tells a compaction which
        contacts to walk)."""
        blocks = (size + BLOCK - 1) >> BLOCK_SHIFT
        if blocks > len(self.block_min):
            block_min = np.full(next_capacity(len(self.block_min), blocks), NONE, np.int64)
            block_min[: len(self.block_min)] = self.block_min
            self.block_min = block_min
        if int(self.meta[ARENA_USED]) + event_bytes > len(self.arena):
            self.compact_events(size)
            need = int(self.meta[ARENA_USED]) + event_bytes
            if need > len(self.arena):
                step = len(self.arena) if len(self.arena) < COMPACT_ABOVE else len(self.arena) // ARENA_ROOM
                self.arena = grown(self.arena, max(need, len(self.arena) + step), int(self.meta[ARENA_USED]))
        if int(self.meta[ARENA_USED]) + event_bytes > 1 << 32:
            self.compact_events(size, force=True)
            if int(self.meta[ARENA_USED]) + event_bytes > 1 << 32:
                raise MemoryError("a shard's pending timers keep more than 4 GiB of events: use more --shards")
        # Shared properties that find no room stay in their records (`store_event`): the shared buffer
        # grows by an eighth once it is 15/16 full (a compaction leaves it an eighth of room), and its
        # index doubles once it is 9/16 full, instead of making room for every event's. (In the state
        # bench, with 16.4 B/contact of live properties, the buffer took 21.1 B/contact so; 24.1 growing
        # by a quarter at 7/8 with a quarter of room, 34.4 by half at 3/4, 45.8 doubling. Its live bytes
        # and the arena's stayed the same, and the hot path did not tell them apart.)
        used = int(self.meta[SHARED_USED])
        if 16 * used > 15 * len(self.shared) and len(self.shared) * 9 // 8 <= SHARED_ALIGN * (1 << 32):
            self.shared = grown(self.shared, len(self.shared) * 9 // 8, used)
        if 16 * int(self.meta[SHARED_RECORDS]) > 9 * len(self.shared_index):
            self._index_shared(2 * len(self.shared_index))

    def _index_shared(self, capacity: int) -> None:
        """A new index of the shared buffer's records, of `capacity` entries (a power of two)."""
        self.shared_index = np.full(capacity, NO_ENTRY, np.int64)
        self.meta[SHARED_RECORDS] = _index_records(self.shared, int(self.meta[SHARED_USED]), self.shared_index,
                                                   self.meta[HASH_SEED])

    def event(self, slot: int, k: int) -> bytes:
        """The summary timer k of the contact keeps, its properties in place."""
        ref = event_ref(self.arrays(), slot, k)
        if ref < 0:
            raise KeyError(f"timer {k} of slot {slot} is not pending")
        at = int(ref)
        out = np.zeros(summaries.kept_packed_length(self.arena, at, self.shared) + 8, np.uint8)
        end = summaries.expand_kept(self.arena, at, self.shared, out)
        return out[:end].tobytes()

    def deadline(self, slot: int, k: int) -> int:
        """Timer k's deadline for the contact, NONE when it is not pending."""
        return int(deadline_of(self.arrays(), slot, k))

    def compact_events(self, size: int, force: bool = False) -> None:
        """Copy the records pending timers keep, and the properties they share, into new buffers once
        the arena's garbage is an eighth of its live bytes, or the shared buffer's half (`force`: now).

        The new arena holds the live records and an eighth again (ARENA_ROOM), so the arena stays within
        about 1.125x its live bytes; the shared buffer, which is small, its live bytes and an eighth again.
        With a quarter of room, the state benchmark's arena and shared buffer took 65.4 B/contact at 1M
        contacts (37.4 and 16.4 live); with an eighth, 60.7. Building those contacts spent 15.1 s
        compacting instead of 13.4 (of 233 and 226 s, run side by side on a slow machine): compactions
        come twice as often, but many are the growing arenas' anyway."""
        used = int(self.meta[ARENA_USED])
        shared_used = int(self.meta[SHARED_USED])
        if not force and ((used < COMPACT_ABOVE or ARENA_ROOM * used < (ARENA_ROOM + 1) * self._live_after_compaction)
                          and (shared_used < COMPACT_ABOVE or 2 * shared_used < 3 * self._shared_after_compaction)):
            return
        live = _live_bytes(self.arrays(), self._row, self._where, size)
        new = np.zeros(max(ARENA_MIN, live + live // ARENA_ROOM, min(len(self.arena), ARENA_REFILL)), np.uint8)
        shared = np.zeros(max(SHARED_MIN, shared_used), np.uint8)
        copied, shared_live = _move_records(self.arrays(), new, self._row, self._where, size, shared)
        assert copied == live
        self._live_after_compaction = live
        self.arena = new
        self.meta[ARENA_USED] = live
        self._shared_after_compaction = shared_live
        self.shared = grown(shared, max(SHARED_MIN, shared_live + shared_live // 8), shared_live)
        self.meta[SHARED_USED] = shared_live
        self._index_shared(len(self.shared_index))

    @staticmethod
    def from_offsets(columns: dict[str, np.ndarray], arena: np.ndarray) -> dict[str, Any]:
        """Snapshot format 3 (an int64 offset and an int32 length per timer, raw summaries in the
        arena) as this format: the columns are changed in place; the new arena snapshot is returned."""
        deadline = columns["timer_deadline"]
        offsets = columns.pop("timer_event_offset")
        lengths = columns.pop("timer_event_length")
        pending = deadline != NONE
        bound = int(lengths[pending].sum()) + (LEGACY_HEADER + LEGACY_ALIGN - 1) * int(pending.sum())
        refs = np.zeros(deadline.shape, np.uint32)
        new = np.zeros(max(bound, 1), np.uint8)
        used = _records_from_offsets(deadline, offsets, lengths, arena, refs, new)
        columns["timer_event"] = refs
        return {"arena": new[:used].copy()}

    @staticmethod
    def convert_events(columns: dict[str, np.ndarray], arena: np.ndarray,
                       convert: Callable[[bytes], bytes], shared: np.ndarray | None = None) -> dict[str, Any]:
        """A snapshot's arena with every pending timer's event converted by `convert` (a snapshot of an
        earlier format), given as stored or, with the snapshot's `shared` properties, as a packed
        summary with its properties in place; a record several timers share stays shared. The references in
        `columns` are replaced; the new arena snapshot (sharing nothing) is returned."""
        deadline = columns["timer_deadline"]
        refs = columns["timer_event"] = columns["timer_event"].copy()
        raw = arena.tobytes()
        new = bytearray()
        placed: dict[int, int] = {}
        for s, k in zip(*np.nonzero(deadline != NONE), strict=True):
            old = LEGACY_ALIGN * int(refs[s, k])
            if old not in placed:
                length = int.from_bytes(raw[old:old + LEGACY_HEADER], "little")
                if shared is None:  # (the records of formats 3 and 4 are JSON)
                    event = convert(raw[old + LEGACY_HEADER:old + LEGACY_HEADER + length])
                else:
                    expanded = np.zeros(summaries.packed_length(arena, old + LEGACY_HEADER) + 8, np.uint8)
                    event = convert(expanded[:_expand_packed(arena, old + LEGACY_HEADER, shared, expanded)].tobytes())
                placed[old] = len(new) // LEGACY_ALIGN
                new += len(event).to_bytes(LEGACY_HEADER, "little") + event
                new += bytes(-len(new) % LEGACY_ALIGN)
            refs[s, k] = placed[old]
        return {"arena": np.frombuffer(bytes(new), np.uint8).copy()}

    @staticmethod
    def from_legacy_records(columns: dict[str, np.ndarray], timers: dict[str, Any]) -> dict[str, Any]:
        """Snapshot format 7 (arena records of a uint32 length, the summary, padding to 8; references
        in 8-byte units) as format 8: the references in `columns` and the spilled timers' are
        replaced; the timers' snapshot with the new arena is returned."""
        arena = timers["arena"]
        new = np.zeros(len(arena), np.uint8)
        moved = np.full(len(arena) // LEGACY_ALIGN + 1, -1, np.int64)  # a legacy record's new reference
        used = _unframe_records(arena, len(arena), new, moved)
        return {**timers, "arena": new[:used].copy(), "spill_event": _moved_refs(columns, timers, moved)}

    @staticmethod
    def from_packed_records(columns: dict[str, np.ndarray], timers: dict[str, Any]) -> dict[str, Any]:
        """Snapshot format 8 (arena records that are packed summaries, their properties shared where
        flagged) as this format: the references in `columns` and the spilled timers' are replaced;
        the timers' snapshot with the new arena and shared buffer is returned."""
        packed = timers["arena"]
        packed_shared = timers.get("shared", np.zeros(0, np.uint8))  # (formats before 6 share nothing)
        # Kept records are never longer than packed ones, with room to share every part.
        arena = np.zeros(len(packed) + 8, np.uint8)
        shared = np.zeros(len(packed_shared) + len(packed) + SHARED_ALIGN, np.uint8)
        index = np.full(INDEX_MIN, NO_ENTRY, np.int64)
        while 3 * len(index) < 4 * (_count_records(packed_shared, len(packed_shared)) + len(packed) // PACKED_ALIGN + 1):
            index = np.full(2 * len(index), NO_ENTRY, np.int64)
        meta = np.zeros(DUE_SCAN + 1, np.int64)
        moved = np.full(len(packed) // PACKED_ALIGN + 1, -1, np.int64)
        scratch = np.zeros(len(packed) + len(packed_shared) + summaries.HEADER, np.uint8)
        _keep_packed_records(packed, len(packed), packed_shared, arena, meta, shared, index, scratch, moved)
        return {**timers, "arena": arena[: meta[ARENA_USED]].copy(), "shared": shared[: meta[SHARED_USED]].copy(),
                "spill_event": _moved_refs(columns, timers, moved)}

    @staticmethod
    def from_dense(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Snapshot formats up to 6 (a deadline and a reference for every contact and timer rule) as
        this format: each contact's first INLINE pending timers (by rule) in its row, the others
        spilled. The columns are replaced in place; the spilled timers are returned."""
        deadline = columns.pop("timer_deadline")
        refs = columns.pop("timer_event")
        n, width = deadline.shape
        inline = min(width, INLINE)
        columns["timer_rule"] = np.full((n, inline), FREE, np.uint8)
        columns["timer_deadline"] = np.full((n, inline), NONE, np.int64)
        columns["timer_event"] = np.zeros((n, inline), np.uint32)
        columns["timer_spilled"] = np.zeros(n, np.uint8)
        extra = int(np.maximum(np.count_nonzero(deadline != NONE, axis=1) - inline, 0).sum())
        keys = np.zeros(extra, np.int64)
        deadlines = np.zeros(extra, np.int64)
        events = np.zeros(extra, np.uint32)
        _from_dense(deadline, refs, columns["timer_rule"], columns["timer_deadline"], columns["timer_event"],
                    columns["timer_spilled"], keys, deadlines, events)
        return {"spill_keys": keys, "spill_deadline": deadlines, "spill_event": events}

    def event_bytes(self) -> int:
        return int(self.meta[ARENA_USED] + self.meta[SHARED_USED])

    def nbytes(self) -> int:
        """The block bounds, the due buffer, the arena, the shared properties and the spill table (the
        columns are counted with the shard's other columns)."""
        return int(self.block_min.nbytes + self.due.nbytes + self.arena.nbytes + self.shared.nbytes
                   + self.shared_index.nbytes + self.spill_keys.nbytes + self.spill_deadline.nbytes
                   + self.spill_event.nbytes)

    def snapshot(self, size: int, copy: bool = True) -> dict[str, Any]:
        """The arena's live part and the spilled timers, by key (the columns go with the shard's other
        columns); `copy=False` gives views of the arena, valid until it next changes."""
        self.compact_events(size, force=True)
        arena = self.arena[: self.meta[ARENA_USED]]
        shared = self.shared[: self.meta[SHARED_USED]]
        keys, deadlines, events = self._spill_items()
        return {"arena": arena.copy() if copy else arena, "shared": shared.copy() if copy else shared,
                "spill_keys": keys, "spill_deadline": deadlines, "spill_event": events}

    def deadlines(self, size: int) -> np.ndarray:
        """The first `size` contacts' inline deadlines (NONE where a place is free), as snapshots keep them."""
        a = self.columns.arrays
        return np.where(a["timer_rule"][:size] != FREE, a["clock"][:size, None] + a["timer_due_in"][:size], NONE)

    def restore(self, size: int, snap: dict[str, Any], deadlines: np.ndarray) -> None:
        """The arena, the spilled timers and the rows' `deadlines` (NONE where a place is free); then the
        derived state (pending count, block bounds), after the other columns were restored."""
        arena = snap["arena"]
        self.arena = np.zeros(max(ARENA_MIN, len(arena) + len(arena) // 4), np.uint8)
        self.arena[: len(arena)] = arena
        self.meta[ARENA_USED] = len(arena)
        self._live_after_compaction = len(arena)
        shared = snap.get("shared", self.shared[:0])  # (snapshots before format 6 share nothing)
        self.shared = np.zeros(max(SHARED_MIN, len(shared) + len(shared) // 2), np.uint8)
        self.shared[: len(shared)] = shared
        self.meta[SHARED_USED] = len(shared)
        self._shared_after_compaction = len(shared)
        capacity = INDEX_MIN
        while 9 * capacity < 16 * _count_records(self.shared, len(shared)):
            capacity *= 2
        self._index_shared(capacity)
        keys = np.asarray(snap["spill_keys"], np.int64)
        self._allocate_spill(SPILL_MIN)
        self.make_spill_room(len(keys))
        _spill_put_all(self.arrays(), keys, np.asarray(snap["spill_deadline"], np.int64),
                       np.asarray(snap["spill_event"], np.uint32))
        a = self.columns.arrays
        rules, due_in, refs, clock = a["timer_rule"][:size], a["timer_due_in"][:size], a["timer_event"][:size], a["clock"][:size]
        ahead = deadlines - clock[:, None]
        inline = (rules != FREE) & (clock[:, None] != NEVER) & (deadlines >= clock[:, None]) & (ahead <= DUE_IN_MAX)
        due_in[inline] = ahead[inline]
        far = (rules != FREE) & ~inline  # (a snapshot written before rows were relative to the clock)
        if far.any():
            slots = np.nonzero(far)[0]
            self.make_spill_room(len(slots))
            _spill_put_all(self.arrays(), slots.astype(np.int64) * self.width + rules[far], deadlines[far], refs[far])
            rules[far] = FREE
            np.add.at(a["timer_spilled"], slots, 1)
        pending = int(np.count_nonzero(rules != FREE)) + int(self.meta[SPILL_USED])
        self.meta[PENDING] = pending
        self.block_min = np.full(1, NONE, np.int64)
        self.reserve(0, size)
        _bound_blocks(self.arrays(), size)


def _moved_refs(columns: dict[str, np.ndarray], timers: dict[str, Any], moved: np.ndarray) -> np.ndarray:
    """Replace the references of the pending timers in `columns` by moved[reference] (a snapshot's
    arena converted: -1 where no record was); the spilled timers' references, mapped the same way."""
    pending = columns["timer_rule"] != FREE
    refs = moved[columns["timer_event"][pending]]
    spill_refs = moved[np.asarray(timers["spill_event"], np.int64)]
    if (refs < 0).any() or (spill_refs < 0).any():
        raise ValueError("a pending timer of the snapshot refers to no record of its arena")
    columns["timer_event"] = columns["timer_event"].copy()
    columns["timer_event"][pending] = refs
    return spill_refs.astype(np.uint32)


# -- the event arena ------------------------------------------------------------------------------------


@kernel(inline=True)
def record_length(buf, at):  # type: ignore[no-untyped-def]
    """The length of the shared (or legacy) record at byte `at`."""
    return load_u32(buf, at)


@kernel(inline=True)
def _packed_aligned(n):  # type: ignore[no-untyped-def]
    return (n + PACKED_ALIGN - 1) // PACKED_ALIGN * PACKED_ALIGN


@kernel(inline=True)
def _shared_aligned(n):  # type: ignore[no-untyped-def]
    return (n + SHARED_ALIGN - 1) // SHARED_ALIGN * SHARED_ALIGN


@kernel(inline=True)
def _write_record(dst, at, src, start, length):  # type: ignore[no-untyped-def]
    """Write src[start:start + length] as a shared (or legacy) record at byte `at` of dst; where the next
    record goes."""
    store_u32(dst, at, length)
    return _shared_aligned(copy_bytes(dst, at + SHARED_HEADER, src, start, length))


_MIX = np.uint64(0x9E3779B97F4A7C15)
_S29 = np.uint64(29)
_S32 = np.uint64(32)


@kernel(inline=True)
def _properties_hash(data, start, length, seed):  # type: ignore[no-untyped-def]
    """A seeded hash of data[start:start + length] for the shared index. A multiply and a shift per 8
    bytes (engine.hashing's digest, made for ids that go into snapshots, mixes three times as much):
    the index compares the bytes of every match anyway."""
    h = (np.uint64(length) ^ np.uint64(seed)) * _MIX
    i = start
    end = start + length
    while i + 8 <= end:
        h = (h ^ load_u64(data, i)) * _MIX
        h ^= h >> _S29
        i += 8
    if i < end:
        h = (h ^ load_prefix(data, i, end - i)) * _MIX
    return h ^ (h >> _S32)


@kernel(inline=True)
def _same_bytes(a, a_start, b, b_start, length):  # type: ignore[no-untyped-def]
    j = 0
    while j + 8 <= length:
        if load_u64(a, a_start + j) != load_u64(b, b_start + j):
            return False
        j += 8
    while j < length:
        if a[a_start + j] != b[b_start + j]:
            return False
        j += 1
    return True


_REF_MASK = np.int64(0xFFFFFFFF)
_MOVED = 0xFFFFFFFF  # the length of a shared record a compaction has copied


@kernel(inline=True)
def _home(index, h):  # type: ignore[no-untyped-def]
    """Where the probe for hash `h` starts: its bits from 32 up."""
    return np.int64((h >> np.uint64(32)) & np.uint64(len(index) - 1))


@kernel(inline=True)
def _tag(h):  # type: ignore[no-untyped-def]
    """The 31 low bits of hash `h`, which an index entry holds above its record's reference."""
    return np.int64(h & np.uint64(0x7FFFFFFF))


@kernel(inline=True)
def _index_slot(index, shared, data, start, length, h):  # type: ignore[no-untyped-def]
    """(the index entry holding the shared record of data[start:start + length], or the empty one
    where it would go; its record's reference, or -1)."""
    mask = len(index) - 1
    tag = _tag(h)
    i = _home(index, h)
    while index[i] != NO_ENTRY:
        entry = index[i]
        if entry >> 32 == tag:
            at = (entry & _REF_MASK) * SHARED_ALIGN
            if record_length(shared, at) == length and _same_bytes(shared, at + SHARED_HEADER, data, start, length):
                return i, entry & _REF_MASK
        i = (i + 1) & mask
    return i, np.int64(-1)


@kernel(inline=True)
def _share(meta, shared, index, data, start, length):  # type: ignore[no-untyped-def]
    """The shared record of the bytes data[start:start + length] (added if new), or -1 when they are
    new and find no room."""
    h = _properties_hash(data, start, length, meta[HASH_SEED])
    i, ref = _index_slot(index, shared, data, start, length, h)
    if ref >= 0:
        return ref
    at = meta[SHARED_USED]
    if at + SHARED_HEADER + length + SHARED_ALIGN > len(shared) or 4 * (meta[SHARED_RECORDS] + 1) > 3 * len(index):
        return -1
    meta[SHARED_USED] = _write_record(shared, at, data, start, length)
    meta[SHARED_RECORDS] += 1
    index[i] = (_tag(h) << 32) | (at // SHARED_ALIGN)
    return at // SHARED_ALIGN


@kernel(inline=True)
def _store(arena, meta, shared, index, data, start):  # type: ignore[no-untyped-def]
    """Append the packed summary at data[start:] to the arena as a kept summary, its name and its
    properties shared when they are long enough; its reference."""
    name_at, name = summaries.name_span(data, start)
    properties_at, properties = summaries.properties_span(data, start)
    name_ref = _share(meta, shared, index, data, name_at, name) if name >= SHARE_NAME_FROM else -1
    properties_ref = _share(meta, shared, index, data, properties_at, properties) if properties >= SHARE_FROM else -1
    at = meta[ARENA_USED]
    meta[ARENA_USED] = summaries.write_kept(arena, at, data, start, name_ref, properties_ref)
    return at


@kernel(inline=True)
def store_event(timers, data, start):  # type: ignore[no-untyped-def]
    """Keep the packed summary at data[start:] in the arena (`_store`); its reference (for `arm`)."""
    return _store(timers[4], timers[5], timers[6], timers[7], data, start)


@kernel(inline=True)
def _packed_stored_length(src, start):  # type: ignore[no-untyped-def]
    """The bytes a packed summary took in the arena of snapshot formats 6 to 8: its packed length, less
    its properties for a SHARED_REF when they were shared."""
    length = summaries.packed_length(src, start)
    if src[start + 1] & summaries.SHARED_PROPERTIES:
        length += summaries.SHARED_REF - summaries.properties_span(src, start)[1]
    return length


@kernel
def _expand_packed(arena, start, shared, out):  # type: ignore[no-untyped-def]
    """A packed summary as the arena of snapshot formats 6 to 8 kept it (at arena[start:]), with its
    properties in place, at out[0:]; returns its end."""
    properties, n = summaries.properties_span(arena, start)
    shares = arena[start + 1] & summaries.SHARED_PROPERTIES
    stored = summaries.SHARED_REF if shares else n
    rest = start + _packed_stored_length(arena, start) - properties - stored
    end = copy_bytes(out, 0, arena, start, properties - start)
    out[1] &= ~np.uint8(summaries.SHARED_PROPERTIES)
    if shares:
        end = copy_bytes(out, end, shared, load_u32(arena, properties) * SHARED_ALIGN + SHARED_HEADER, n)
    else:
        end = copy_bytes(out, end, arena, properties, n)
    return copy_bytes(out, end, arena, properties + stored, rest)


@kernel(inline=True)
def _shared_earlier(deadline, row, s, k):  # type: ignore[no-untyped-def]
    """Index j < k of a pending timer of row s that kept the same record as timer k (`row`: the row's
    references as they were before a move), or -1. One event arming several timers is stored once."""
    for j in range(k):
        if deadline[s, j] != NONE and row[j] == row[k]:
            return j
    return -1


@kernel(inline=True)
def _pending_of(timers, s, row, where):  # type: ignore[no-untyped-def]
    """Contact s's pending timers: their records' references into row[:n] and where each is (an
    inline place j, or INLINE + its spill table entry) into where[:n], by rule; returns n."""
    rule, refs, spilled, spill_event = timers[8], timers[1], timers[9], timers[12]
    width = timers[5][WIDTH]
    n = 0
    for j in range(rule.shape[1]):
        if rule[s, j] != FREE:
            row[n] = refs[s, j]
            where[n] = j
            n += 1
    if spilled[s] > 0:
        for k in range(width):
            h = _spill_entry(timers, s, k)
            if h >= 0:
                row[n] = spill_event[h]
                where[n] = INLINE + h
                n += 1
    return n


@kernel(inline=True)
def _ref_at(timers, s, where):  # type: ignore[no-untyped-def]
    """The record reference of contact s's timer at `where` (an inline place, or INLINE + spill entry)."""
    return timers[1][s, where] if where < INLINE else timers[12][where - INLINE]


@kernel(inline=True)
def _deadline_at(timers, s, where):  # type: ignore[no-untyped-def]
    return _inline_deadline(timers, s, where) if where < INLINE else timers[11][where - INLINE]


@kernel(inline=True)
def _inline_deadline(timers, s, j):  # type: ignore[no-untyped-def]
    return timers[13][s] + np.int64(timers[0][s, j])


@kernel(inline=True)
def _fits_inline(timers, slot, at_ms):  # type: ignore[no-untyped-def]
    """Whether a deadline can be held in the contact's row: at most DUE_IN_MAX ms after its clock."""
    clock = timers[13][slot]
    return clock != NEVER and clock <= at_ms and at_ms - clock <= DUE_IN_MAX


@kernel(inline=True)
def _set_ref(timers, s, where, ref):  # type: ignore[no-untyped-def]
    if where < INLINE:
        timers[1][s, where] = ref
    else:
        timers[12][where - INLINE] = ref


@kernel(inline=True)
def _kept_earlier(row, i):  # type: ignore[no-untyped-def]
    """Index j < i with row[j] == row[i] (one event arming several timers is stored once), or -1."""
    for j in range(i):
        if row[j] == row[i]:
            return j
    return -1


@kernel
def _live_bytes(timers, row, where, size):  # type: ignore[no-untyped-def]
    arena = timers[4]
    total = 0
    for s in range(size):
        n = _pending_of(timers, s, row, where)
        for i in range(n):
            if _kept_earlier(row, i) < 0:
                total += summaries.kept_length(arena, np.int64(row[i]))
    return total


@kernel(inline=True)
def _move_shared(shared, new_shared, record, ref_at, shared_at):  # type: ignore[no-untyped-def]
    """Point the reference at record[ref_at:] to its shared record's copy in new_shared, copying the
    record there first unless an earlier reference did (which left in the shared buffer a forwarding
    reference: its length MOVED, its new reference in its first 4 bytes, since a shared part has at
    least SHARE_NAME_FROM bytes). Returns the bytes used in new_shared."""
    source = load_u32(record, ref_at) * SHARED_ALIGN
    n = record_length(shared, source)
    if n != _MOVED:
        moved_to = shared_at // SHARED_ALIGN
        shared_at = _write_record(new_shared, shared_at, shared, source + SHARED_HEADER, n)
        store_u32(shared, source + SHARED_HEADER, moved_to)
        store_u32(shared, source, _MOVED)
    store_u32(record, ref_at, load_u32(shared, source + SHARED_HEADER))
    return shared_at


@kernel
def _move_records(timers, new, row, where, size, new_shared):  # type: ignore[no-untyped-def]
    """Copy the records of pending timers into `new` (no sort: a record is shared only within a
    contact), and the shared parts they refer to into `new_shared`. Returns the bytes used in `new`
    and in `new_shared`."""
    arena, shared = timers[4], timers[6]
    at = 0
    shared_at = 0
    for s in range(size):
        n = _pending_of(timers, s, row, where)  # `row`: the references as they were before the moves
        for i in range(n):
            j = _kept_earlier(row, i)
            if j >= 0:
                _set_ref(timers, s, where[i], _ref_at(timers, s, where[j]))
                continue
            old = np.int64(row[i])
            _set_ref(timers, s, where[i], at)
            end = copy_bytes(new, at, arena, old, summaries.kept_length(arena, old))
            name_ref, properties_ref = summaries.kept_refs(new, at)
            if name_ref >= 0:
                shared_at = _move_shared(shared, new_shared, new, name_ref, shared_at)
            if properties_ref >= 0:
                shared_at = _move_shared(shared, new_shared, new, properties_ref, shared_at)
            at = end
    return at, shared_at


@kernel
def _keep_packed_records(packed, used, packed_shared, arena, meta, shared, index, scratch, moved):  # type: ignore[no-untyped-def]
    """Keep the records of packed[:used] (an arena of snapshot format 8: packed summaries, their
    properties in packed_shared where flagged, padded to 4) as kept summaries, in order, noting each
    one's new reference at moved[its old reference]."""
    at = 0
    while at < used:
        moved[at // PACKED_ALIGN] = meta[ARENA_USED]
        _expand_packed(packed, at, packed_shared, scratch)
        _store(arena, meta, shared, index, scratch, 0)
        at += _packed_aligned(_packed_stored_length(packed, at))


@kernel
def _unframe_records(legacy, used, new, moved):  # type: ignore[no-untyped-def]
    """Copy the legacy records of legacy[:used] into `new` as records of snapshot format 8, in order,
    noting each one's new reference at moved[its legacy reference]; returns the bytes used in `new`."""
    at = 0
    new_at = 0
    while at < used:
        n = record_length(legacy, at)
        moved[at // LEGACY_ALIGN] = new_at // PACKED_ALIGN
        new_at = _packed_aligned(copy_bytes(new, new_at, legacy, at + LEGACY_HEADER, n))
        at = _shared_aligned(at + LEGACY_HEADER + n)
    return new_at


@kernel
def _count_records(buf, used):  # type: ignore[no-untyped-def]
    n = 0
    at = 0
    while at < used:
        at = _shared_aligned(at + SHARED_HEADER + record_length(buf, at))
        n += 1
    return n


@kernel
def _index_records(shared, used, index, seed):  # type: ignore[no-untyped-def]
    """Enter every record of a shared buffer (distinct properties) into an empty index; returns how many."""
    mask = len(index) - 1
    count = 0
    at = 0
    while at < used:
        n = record_length(shared, at)
        h = _properties_hash(shared, at + SHARED_HEADER, n, seed)
        i = _home(index, h)
        while index[i] != NO_ENTRY:
            i = (i + 1) & mask
        index[i] = (_tag(h) << 32) | (at // SHARED_ALIGN)
        count += 1
        at = _shared_aligned(at + SHARED_HEADER + n)
    return count


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
            refs[s, k] = at // LEGACY_ALIGN
            at = _write_record(new, at, arena, offsets[s, k], np.int64(lengths[s, k]))
    return at


# -- the block bounds and the due buffer ---------------------------------------------------------------


@kernel(inline=True)
def _lower_bound(timers, slot, at_ms):  # type: ignore[no-untyped-def]
    block_min = timers[2]
    b = slot >> BLOCK_SHIFT
    if at_ms < block_min[b]:
        block_min[b] = at_ms


@kernel(inline=True)
def _take_if_due(due, n, low, d, ref, bound):  # type: ignore[no-untyped-def]
    """Timer `ref` of deadline d into due[n] if d < bound; (the new n, the least deadline not due)."""
    if d < bound:
        due[n, 0] = d
        due[n, 1] = ref
        return n + 1, low
    return n, min(low, d)


@kernel(inline=True)
def _scan_block(timers, b, bound, size, n):  # type: ignore[no-untyped-def]
    """Append the due timers (deadline < bound) of block b to the due buffer from entry n; (the new n,
    the least deadline of the block's timers that are not due)."""
    due, rule, spilled, spill_deadline = timers[3], timers[8], timers[9], timers[11]
    width = timers[5][WIDTH]
    low = NONE
    for s in range(b << BLOCK_SHIFT, min((b + 1) << BLOCK_SHIFT, size)):
        for j in range(rule.shape[1]):
            if rule[s, j] != FREE:
                n, low = _take_if_due(due, n, low, _inline_deadline(timers, s, j), s * width + rule[s, j], bound)
        if spilled[s] > 0:
            for k in range(width):
                h = _spill_entry(timers, s, k)
                if h >= 0:
                    n, low = _take_if_due(due, n, low, spill_deadline[h], s * width + k, bound)
    return n, low


@kernel(inline=True)
def _due_less(due, i, j):  # type: ignore[no-untyped-def]
    return due[i, 0] < due[j, 0] or (due[i, 0] == due[j, 0] and due[i, 1] < due[j, 1])


@kernel(inline=True)
def _due_swap(due, i, j):  # type: ignore[no-untyped-def]
    due[i, 0], due[j, 0] = due[j, 0], due[i, 0]
    due[i, 1], due[j, 1] = due[j, 1], due[i, 1]


@kernel(inline=True)
def _sift_down(due, i, n):  # type: ignore[no-untyped-def]
    while True:
        child = 2 * i + 1
        if child >= n:
            return
        if child + 1 < n and _due_less(due, child, child + 1):
            child += 1
        if not _due_less(due, i, child):
            return
        _due_swap(due, i, child)
        i = child


@kernel
def _sort_due(due, n):  # type: ignore[no-untyped-def]
    """Sort due[:n] by (deadline, slot x timer rules + k), in place (kernels allocate nothing): a heapsort."""
    for i in range(n // 2 - 1, -1, -1):
        _sift_down(due, i, n)
    for end in range(n - 1, 0, -1):
        _due_swap(due, 0, end)
        _sift_down(due, 0, end)


@kernel(inline=True)
def _collect_due(timers, bound, size):  # type: ignore[no-untyped-def]
    """Fill the due buffer with every pending timer whose deadline is below `bound`, in firing order
    (deadline, slot, k), bounding each scanned block anew; False when the buffer needs room first
    (`make_due_room`; the next call resumes at the block it stopped at)."""
    block_min, due, meta = timers[2], timers[3], timers[5]
    room = BLOCK * meta[WIDTH]
    n = meta[DUE_USED]
    for b in range(meta[DUE_SCAN], (size + BLOCK - 1) >> BLOCK_SHIFT):
        if block_min[b] < bound:
            if n + room > len(due):
                meta[DUE_USED] = n
                meta[DUE_SCAN] = b
                return False
            n, low = _scan_block(timers, b, bound, size, n)
            block_min[b] = low
    meta[DUE_SCAN] = 0
    meta[DUE_NEXT] = 0
    meta[DUE_USED] = n
    _sort_due(due, n)
    return True


@kernel
def _bound_blocks(timers, size):  # type: ignore[no-untyped-def]
    """Every block's bound, exact, from the deadlines (the bounds were NONE)."""
    rule, keys, spill_deadline = timers[8], timers[10], timers[11]
    width = timers[5][WIDTH]
    for s in range(size):
        for j in range(rule.shape[1]):
            if rule[s, j] != FREE:
                _lower_bound(timers, s, _inline_deadline(timers, s, j))
    for h in range(len(keys)):
        if keys[h] != NO_SPILL:
            _lower_bound(timers, keys[h] // width, spill_deadline[h])


# -- the spill table ------------------------------------------------------------------------------------
#
# Open addressing with linear probing over keys slot x timer rules + k, Fibonacci hashing, at most 3/4
# full; an entry is removed when its timer fires or is cancelled (backward-shift deletion, so probes
# never meet tombstones).

_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)


@kernel(inline=True)
def _spill_home(timers, key):  # type: ignore[no-untyped-def]
    return np.int64((np.uint64(key) * _FIBONACCI) >> np.uint64(timers[5][SPILL_SHIFT]))


@kernel(inline=True)
def _spill_position(timers, key):  # type: ignore[no-untyped-def]
    """Where `key` is in the spill table, or the empty entry where it would go."""
    keys = timers[10]
    mask = len(keys) - 1
    h = _spill_home(timers, key)
    while keys[h] != NO_SPILL and keys[h] != key:
        h = (h + 1) & mask
    return h


@kernel(inline=True)
def _spill_entry(timers, slot, k):  # type: ignore[no-untyped-def]
    """The spill table entry of the contact's timer k, or -1."""
    h = _spill_position(timers, slot * timers[5][WIDTH] + k)
    return h if timers[10][h] != NO_SPILL else np.int64(-1)


@kernel(inline=True)
def _spill_delete(timers, h):  # type: ignore[no-untyped-def]
    keys, deadlines, events, meta = timers[10], timers[11], timers[12], timers[5]
    mask = len(keys) - 1
    meta[SPILL_USED] -= 1
    while True:
        keys[h] = NO_SPILL
        j = h
        while True:
            j = (j + 1) & mask
            if keys[j] == NO_SPILL:
                return
            home = _spill_home(timers, keys[j])
            # The entry at j may move back to h unless its home lies cyclically in (h, j].
            if (h < j and h < home <= j) or (h > j and (home > h or home <= j)):
                continue
            keys[h] = keys[j]
            deadlines[h] = deadlines[j]
            events[h] = events[j]
            h = j
            break


@kernel(inline=True)
def spill_room(timers, arms):  # type: ignore[no-untyped-def]
    """Whether `arms` more timers fit in the spill table without growing it."""
    return 4 * (timers[5][SPILL_USED] + arms) <= 3 * len(timers[10])


@kernel
def _spill_put_all(timers, keys, deadlines, events):  # type: ignore[no-untyped-def]
    for i in range(len(keys)):
        h = _spill_position(timers, keys[i])
        timers[10][h] = keys[i]
        timers[11][h] = deadlines[i]
        timers[12][h] = events[i]
    timers[5][SPILL_USED] += len(keys)


@kernel
def _from_dense(dense, dense_refs, rule, deadline, refs, spilled, keys, deadlines, events):  # type: ignore[no-untyped-def]
    width = dense.shape[1]
    n = 0
    for s in range(dense.shape[0]):
        j = 0
        for k in range(width):
            if dense[s, k] == NONE:
                continue
            if j < rule.shape[1]:
                rule[s, j] = k
                deadline[s, j] = dense[s, k]
                refs[s, j] = dense_refs[s, k]
                j += 1
            else:
                keys[n] = s * width + k
                deadlines[n] = dense[s, k]
                events[n] = dense_refs[s, k]
                spilled[s] += 1
                n += 1


# -- timers ---------------------------------------------------------------------------------------------
#
# Timer k of a contact is in the first inline place j with rule[slot, j] == k, or in the spill table;
# an inline place holds a pending timer exactly when its rule is not FREE, and a spilled timer is
# pending while its entry exists. Most contacts have one or two timers pending (the example rules at
# 1M contacts: 52% one, 37% two, 11% three, 0.2% more), so the row holds INLINE of them.


@kernel(inline=True)
def _find(timers, slot, k):  # type: ignore[no-untyped-def]
    """Where pending timer k of the contact is: an inline place j, INLINE + its spill entry, or -1."""
    rule = timers[8]
    for j in range(rule.shape[1]):
        if rule[slot, j] == k:
            return j
    if timers[9][slot] > 0:
        h = _spill_entry(timers, slot, k)
        if h >= 0:
            return INLINE + h
    return -1


@kernel(inline=True)
def deadline_of(timers, slot, k):  # type: ignore[no-untyped-def]
    """Timer k's deadline for the contact, NONE when it is not pending."""
    where = _find(timers, slot, k)
    return NONE if where < 0 else _deadline_at(timers, slot, where)


@kernel(inline=True)
def event_ref(timers, slot, k):  # type: ignore[no-untyped-def]
    """The arena record pending timer k of the contact keeps (`store_event`), or -1."""
    where = _find(timers, slot, k)
    if where < 0:
        return np.int64(-1)
    return np.int64(_ref_at(timers, slot, where))


@kernel(inline=True)
def arm(timers, slot, k, at_ms, event_ref):  # type: ignore[no-untyped-def]
    """Arm (or re-arm: one call restarts a pending timer) timer k of a contact, keeping the arena
    record `event_ref` (`store_event`) as its event. A new timer that finds the contact's row full
    spills (the caller made room: `spill_room`), and so does one too far after the contact's clock for
    its row (`_fits_inline`)."""
    due_in, refs, meta, rule = timers[0], timers[1], timers[5], timers[8]
    where = _find(timers, slot, k)
    inline = _fits_inline(timers, slot, at_ms)
    if 0 <= where < INLINE and not inline:  # re-armed beyond what its row can hold: it moves to the spill table
        cancel(timers, slot, k)
        where = -1
    if where < 0:
        meta[PENDING] += 1
        for j in range(rule.shape[1]):
            if inline and rule[slot, j] == FREE:
                where = j
                rule[slot, j] = k
                break
        if where < 0:
            h = _spill_position(timers, slot * meta[WIDTH] + k)
            timers[10][h] = slot * meta[WIDTH] + k
            meta[SPILL_USED] += 1
            timers[9][slot] += 1
            where = INLINE + h
    if where < INLINE:
        due_in[slot, where] = at_ms - timers[13][slot]
        refs[slot, where] = event_ref
    else:
        timers[11][where - INLINE] = at_ms
        timers[12][where - INLINE] = event_ref
    _lower_bound(timers, slot, at_ms)


@kernel(inline=True)
def cancel(timers, slot, k):  # type: ignore[no-untyped-def]
    """Clear the contact's timer k; the arena record it kept (which stays in the arena until the next
    compaction), or -1 when it was not pending."""
    where = _find(timers, slot, k)
    if where < 0:
        return np.int64(-1)
    ref = np.int64(_ref_at(timers, slot, where))
    timers[5][PENDING] -= 1
    if where < INLINE:
        timers[8][slot, where] = FREE
        timers[0][slot, where] = 0  # (a free place's is 0, as a restored row's: rows compare equal)
    else:
        _spill_delete(timers, where - INLINE)
        timers[9][slot] -= 1
    return ref


@kernel(inline=True)
def next_due(timers, slot, before_ms):  # type: ignore[no-untyped-def]
    """The contact's timer with the earliest (deadline, k) below `before_ms`: (deadline, k), or (NONE, -1)."""
    rule = timers[8]
    best = NONE
    best_k = -1
    for j in range(rule.shape[1]):
        k = np.int64(rule[slot, j])
        if k != FREE:
            d = _inline_deadline(timers, slot, j)
            if d < before_ms and (d < best or (d == best and k < best_k)):
                best = d
                best_k = k
    if timers[9][slot] > 0:
        for k in range(timers[5][WIDTH]):
            h = _spill_entry(timers, slot, k)
            if h >= 0:
                d = timers[11][h]
                if d < before_ms and (d < best or (d == best and k < best_k)):
                    best = d
                    best_k = k
    return best, best_k


@kernel(inline=True)
def age(timers, slot, step):  # type: ignore[no-untyped-def]
    """The contact's clock moved on by `step` ms: its row's timers are that much nearer. None of them is
    before the new clock (the caller fired those first), so none goes below 0."""
    due_in, rule = timers[0], timers[8]
    for j in range(rule.shape[1]):
        if rule[slot, j] != FREE:
            due_in[slot, j] -= step


@kernel
def pop_due(timers, bound, size):  # type: ignore[no-untyped-def]
    """The next pending timer with a deadline below `bound`: (deadline, slot, k); (NONE, -1, NOT_DUE)
    when there is none, (NONE, -1, NEEDS_ROOM) when the due buffer needs room (`make_due_room`) first.

    The caller fires and cancels each timer before the next call, with the same `bound`, until there is
    none: the timers collected for the buffer are no longer counted in their blocks' bounds.
    """
    due, meta = timers[3], timers[5]
    width = meta[WIDTH]
    while True:
        if meta[DUE_NEXT] == meta[DUE_USED] or meta[DUE_SCAN] > 0:
            if meta[DUE_SCAN] == 0:
                meta[DUE_USED] = 0
            if not _collect_due(timers, bound, size):
                return NONE, np.int64(-1), np.int64(NEEDS_ROOM)
            if meta[DUE_USED] == 0:
                return NONE, np.int64(-1), np.int64(NOT_DUE)
        i = meta[DUE_NEXT]
        meta[DUE_NEXT] = i + 1
        d = due[i, 0]
        slot = due[i, 1] // width
        k = due[i, 1] % width
        if deadline_of(timers, slot, k) == d:  # (always, as the shard drives it)
            return d, slot, k
