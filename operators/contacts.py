"""Contact index of one shard: contact id -> slot, and the growable columns keyed by slot.

Every per-contact state array in a shard has the slot as its first axis. Operators register
their arrays in `Columns` so they all grow together (`next_capacity`) when new contacts arrive.

`ContactIndex` maps contact ids to dense slots 0..n-1 (first seen, first numbered; never reused)
without a Python object per contact: an open-addressing table keyed by the id's 63-bit digest
(`engine.hashing`), and the ids' UTF-8 end to end in one buffer. A table entry is an int32 holding
the slot in its low 24 bits and 7 bits of the digest above them, so a probe compares the ids' bytes
only where those bits match (127 in 128 other entries are passed over without loading anything
else), and two ids with the same digest still get two slots. The digests are not kept: the table
is rebuilt from the ids when it grows. (A column of them took 9.5 B/contact in the state benchmark
at 1M contacts.) A shard holds at most 2^24 contacts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.blobs import Blobs
from engine.compiled import kernel
from engine.hashing import digest
from engine.rawmem import copy_bytes

__all__ = ["Columns", "ContactIndex", "DigestIndex", "grown", "next_capacity"]

EMPTY = -1
MAX_ID_BYTES = (1 << 32) - 1  # what uint32 offsets address
SLOT_BITS = 24  # a ContactIndex table entry: the slot, and 7 bits of the digest above it
MAX_SLOTS = 1 << SLOT_BITS
_SLOT_MASK = MAX_SLOTS - 1
_TAG_SHIFT = np.int64(56)  # the digest's bits 56..62 (the probe starts from its low bits)


class Columns:
    """Named numpy arrays sharing the contact axis, grown together by `next_capacity`."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._specs: dict[str, tuple[Any, tuple[int, ...], Any]] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, dtype: Any, fill: Any, width: int | None = None) -> np.ndarray:
        shape = () if width is None else (width,)
        self._specs[name] = (dtype, shape, fill)
        arr = np.full((self.capacity, *shape), fill, dtype=dtype)
        self.arrays[name] = arr
        return arr

    def ensure(self, size: int) -> bool:
        """Make room for `size` slots; True when the arrays were reallocated."""
        if size <= self.capacity:
            return False
        cap = next_capacity(self.capacity, size)
        for name, (dtype, shape, fill) in self._specs.items():
            new = np.full((cap, *shape), fill, dtype=dtype)
            new[: self.capacity] = self.arrays[name]
            self.arrays[name] = new
        self.capacity = cap
        return True

    def snapshot(self, size: int, copy: bool = True) -> dict[str, np.ndarray]:
        """The first `size` rows; `copy=False` gives views, valid until the columns next change."""
        return {name: arr[:size].copy() if copy else arr[:size] for name, arr in self.arrays.items()}

    def restore(self, arrays: dict[str, np.ndarray], size: int) -> None:
        self.ensure(max(size, 1))
        for name, saved in arrays.items():
            self.arrays[name][:size] = saved

    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


class ContactIndex:
    """Contact id -> slot; see the module docstring.

    >>> from engine.blobs import Blobs
    >>> from engine.hashing import digests
    >>> index = ContactIndex()
    >>> ids = ["u-1", "u-2", "u-1"]
    >>> index.slots(digests(ids), Blobs.of(i.encode() for i in ids)).tolist(), len(index), index.id(1)
    ([0, 1, 0], 2, 'u-2')
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.table = np.full(_table_size(capacity), EMPTY, np.int32)  # power of two, at most half full
        # Slot s is id_data[id_offsets[s]:id_offsets[s + 1]]; 32 bits (4 GiB of ids per shard) saved 4 B/contact.
        self.id_offsets = np.zeros(capacity + 1, np.uint32)
        self.id_data = np.zeros(16 * capacity, np.uint8)

    def __len__(self) -> int:
        return self.size

    def slots(self, hashes: npt.NDArray[np.int64], contacts: Blobs) -> npt.NDArray[np.int32]:
        """The slot of each contact, numbering new ones in first-seen order. `hashes` must be their
        digests (`engine.hashing.digest` of the id's bytes): the table is rebuilt from the ids."""
        n = len(hashes)
        self._reserve(self.size + n, int(self.id_offsets[self.size]) + contacts.total_bytes())
        out = np.empty(n, np.int32)
        self.size = _lookup_insert(self.table, self.id_offsets, self.id_data, self.size, hashes,
                                   contacts.data, contacts.starts, contacts.ends, out)
        return out

    def id(self, slot: int) -> str:
        return self.id_data[self.id_offsets[slot]:self.id_offsets[slot + 1]].tobytes().decode("utf-8")

    def ids(self) -> list[str]:
        data = self.id_data.tobytes()
        offsets = self.id_offsets[: self.size + 1].tolist()
        return [data[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    def _reserve(self, slots: int, id_bytes: int) -> None:
        """Room for `slots` contacts (what a batch of new ones could make) and `id_bytes` of ids."""
        if slots > MAX_SLOTS:  # (a batch's contacts counted as if all were new)
            raise MemoryError("a shard holds at most 2^24 (16,777,216) contacts: use more --shards")
        capacity = len(self.id_offsets) - 1
        if slots > capacity:
            self.id_offsets = grown(self.id_offsets, next_capacity(capacity, slots) + 1)
        if id_bytes > MAX_ID_BYTES:
            raise MemoryError("a shard's contact ids take more than 4 GiB: use more --shards")
        if id_bytes > len(self.id_data):
            self.id_data = grown(self.id_data, next_capacity(len(self.id_data), id_bytes))
        if 2 * slots > len(self.table):
            self.table = np.full(_table_size(slots), EMPTY, np.int32)
            _rehash_ids(self.table, self.id_offsets, self.id_data, self.size)

    def nbytes(self) -> int:
        """Bytes this index holds (allocated, not only used)."""
        return int(self.table.nbytes + self.id_offsets.nbytes + self.id_data.nbytes)

    def snapshot(self, copy: bool = True) -> dict[str, np.ndarray]:
        """`copy=False` gives views, valid until the index next changes."""
        n = self.size
        snap: dict[str, np.ndarray] = {"id_offsets": self.id_offsets[: n + 1],
                                       "id_data": self.id_data[: self.id_offsets[n]]}
        return {name: arr.copy() for name, arr in snap.items()} if copy else snap

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> ContactIndex:
        """From its snapshot (one written before format 7 also holds the digests, which are not needed)."""
        index = cls()
        n = len(snap["id_offsets"]) - 1
        index._reserve(n, len(snap["id_data"]))
        index.id_offsets[: n + 1] = snap["id_offsets"]
        index.id_data[: len(snap["id_data"])] = snap["id_data"]
        index.size = n
        _rehash_ids(index.table, index.id_offsets, index.id_data, n)
        return index

    @classmethod
    def of(cls, ids: list[str]) -> ContactIndex:
        """An index holding `ids` as slots 0..n-1."""
        from engine.hashing import digests

        index = cls()
        index.slots(digests(ids), Blobs.of(i.encode("utf-8") for i in ids))
        return index


class DigestIndex:
    """Contact digest -> slot, without the ids: for state that never names its contact (the source's
    de-duplication rings). It saves the ids' bytes and offsets, 25 of the 42 bytes per contact a
    `ContactIndex` takes with the benchmark's ids. Two ids with the same 63-bit digest share a slot;
    for the rings that only merges those two contacts' windows of 16 message ids (about one pair
    in 2·10^7 deployments of a million contacts has one)."""

    def __init__(self, capacity: int = 1024) -> None:
        self.size = 0
        self.table = np.full(_table_size(capacity), EMPTY, np.int32)  # power of two, at most half full
        self.hashes = np.zeros(capacity, np.int64)  # per slot

    def __len__(self) -> int:
        return self.size

    def slots(self, hashes: npt.NDArray[np.int64]) -> npt.NDArray[np.int32]:
        """The slot of each digest, numbering new ones in first-seen order. The arrays grow when
        a new digest finds them full (a source's batch is mostly known contacts: room made for all
        of it would grow them early). The table doubles with the digests it holds, not with their
        array's capacity: sized by the capacity, it doubled for the state benchmark's 1M contacts
        once the capacity passed 2^20, for 8.4 B/contact."""
        out = np.empty(len(hashes), np.int32)
        done = 0
        while True:
            done, self.size = _lookup_insert_digest(self.table, self.hashes, self.size, hashes, out, done)
            if done == len(hashes):
                return out
            if self.size == len(self.hashes):
                self.hashes = grown(self.hashes, next_capacity(len(self.hashes), len(self.hashes) + 1))
            if 2 * (self.size + 1) > len(self.table):
                self.table = np.full(_table_size(self.size + 1), EMPTY, np.int32)
                _rehash(self.table, self.hashes, self.size)

    def nbytes(self) -> int:
        return int(self.table.nbytes + self.hashes.nbytes)

    def snapshot(self, copy: bool = True) -> dict[str, np.ndarray]:
        hashes = self.hashes[: self.size]
        return {"hashes": hashes.copy() if copy else hashes}

    @classmethod
    def restore(cls, snap: dict[str, np.ndarray]) -> DigestIndex:
        """From its snapshot or a `ContactIndex`'s (whose ids it leaves out)."""
        n = len(snap["hashes"])
        index = cls()  # (its first table and array are small: they are replaced for n digests)
        first = len(index.hashes)
        index.hashes = grown(np.asarray(snap["hashes"], np.int64), next_capacity(first, n))
        index.size = n
        index.table = np.full(_table_size(max(n, first)), EMPTY, np.int32)  # for the digests held, as `slots` sizes it
        _rehash(index.table, index.hashes, n)
        return index


def next_capacity(capacity: int, needed: int) -> int:
    """What an array of `capacity` elements grows to for `needed`: an eighth more at a time.

    Per-contact arrays grow this way, not by doubling, which left them up to half empty: the state
    benchmark measured 386.8 B/contact at 1M contacts, where the shards had just filled a power of
    two, and 528.1 at 1.2M. Growing by a quarter, the shard columns' capacity was 1.19x their contacts
    there (1.2x at 0.8, 1.2 and 1.5M); by an eighth it is at most 1.125x, 1.06x on average. An element
    is copied about 8 times as the array grows, not once: a contact's columns are under 100 bytes, and
    they grow only while new contacts arrive."""
    while capacity < needed:
        capacity += max(capacity // 8, 16)
    return capacity


def _table_size(slots: int) -> int:
    """The open-addressing table for `slots` slots: a power of two, at most half full."""
    size = 2
    while size < 2 * slots:
        size *= 2
    return size


def grown(arr: np.ndarray, size: int, used: int | None = None) -> np.ndarray:
    """`arr` in a new array of `size` (zeros after its first `used` elements, all of it by default)."""
    used = len(arr) if used is None else used
    new = np.zeros(size, arr.dtype)
    new[:used] = arr[:used]
    return new


@kernel
def _rehash(table, hashes, size):  # type: ignore[no-untyped-def]
    table[:] = EMPTY
    mask = len(table) - 1
    for s in range(size):
        h = hashes[s] & mask
        while table[h] != EMPTY:
            h = (h + 1) & mask
        table[h] = s


@kernel(inline=True)
def _entry_tag(key):  # type: ignore[no-untyped-def]
    return np.int32((key >> _TAG_SHIFT) & 0x7F)


@kernel
def _rehash_ids(table, id_offsets, id_data, size):  # type: ignore[no-untyped-def]
    table[:] = EMPTY
    mask = len(table) - 1
    for s in range(size):
        key = digest(id_data, np.int64(id_offsets[s]), np.int64(id_offsets[s + 1]))
        h = key & mask
        while table[h] != EMPTY:
            h = (h + 1) & mask
        table[h] = (_entry_tag(key) << SLOT_BITS) | s


@kernel
def _lookup_insert(table, id_offsets, id_data, size, keys, data, starts, ends, out):  # type: ignore[no-untyped-def]
    mask = len(table) - 1
    for i in range(len(keys)):
        key = keys[i]
        tag = _entry_tag(key)
        a = starts[i]
        length = ends[i] - a
        h = key & mask
        while True:
            e = table[h]
            if e == EMPTY:
                s = size
                table[h] = (tag << SLOT_BITS) | s
                id_offsets[s + 1] = copy_bytes(id_data, id_offsets[s], data, a, length)
                size += 1
                break
            if e >> SLOT_BITS == tag:
                s = e & _SLOT_MASK
                o = id_offsets[s]
                if id_offsets[s + 1] - o == length:
                    j = 0
                    while j < length and id_data[o + j] == data[a + j]:
                        j += 1
                    if j == length:
                        break
            h = (h + 1) & mask
        out[i] = s
    return size


@kernel
def _lookup_insert_digest(table, hashes, size, keys, out, start):  # type: ignore[no-untyped-def]
    """Slots of keys start.. into `out`; returns (the first key not done: a new one that found the
    digests full, or the table half full; the size)."""
    mask = len(table) - 1
    for i in range(start, len(keys)):
        key = keys[i]
        h = key & mask
        while True:
            s = table[h]
            if s == EMPTY:
                if size == len(hashes) or 2 * (size + 1) > len(table):
                    return i, size
                s = size
                table[h] = s
                hashes[s] = key
                size += 1
                break
            if hashes[s] == key:
                break
            h = (h + 1) & mask
        out[i] = s
    return len(keys), size
