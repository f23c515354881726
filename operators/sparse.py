"""An integer -> int64 hash table in numpy arrays, for per-contact state that most contacts never have.

A dense column costs every contact its width whether it is used or not. State that only some
contacts have (a rule's last firing, a count rule's recent times) goes into a `SparseTable`
keyed by `slot * width + column` instead: open addressing with linear probing, Fibonacci hashing
(consecutive keys spread over the table), at most 3/4 full, doubled when it would be fuller.
Entries are never removed. Keys are uint32s when the owner's keys are all below 2^32 - 1 (`max_key`:
a shard has at most 2^24 slots, so with up to 256 columns), which took the suppression times from
16.8 to 12.6 B/contact in the state benchmark (1M contacts, the example rules); int64s otherwise.

Compiled code takes the table as a tuple whose first three items are (keys, values, meta) (an
owner may append arrays of its own); meta holds the used entries, the entries allowed before the
table must grow, the hash's shift and the key that marks an empty entry. Kernels that add entries stop when fewer than their worst
case are left (`room`); the caller grows the table (`make_room`) and calls them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from operators.contacts import MAX_SLOTS

EMPTY = -1  # no key, in an int64 table (keys are >= 0)
EMPTY_U32 = 0xFFFFFFFF  # no key, in a uint32 table
USED, LIMIT, SHIFT, NO_KEY = range(4)
MIN_CAPACITY = 64
_FIBONACCI = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / the golden ratio


class SparseTable:
    def __init__(self, max_key: int, capacity: int = MIN_CAPACITY) -> None:
        self.max_key = max_key
        self._empty = EMPTY_U32 if max_key < EMPTY_U32 else EMPTY
        self._allocate(capacity)

    @classmethod
    def per_slot(cls, width: int) -> SparseTable:
        """A table keyed by `slot * width + column` for a shard's slots (uint32 keys up to 256 columns)."""
        return cls(MAX_SLOTS * max(width, 1) - 1)

    def _allocate(self, capacity: int) -> None:
        assert capacity >= MIN_CAPACITY and capacity & (capacity - 1) == 0
        self.keys = np.full(capacity, self._empty, np.uint32 if self._empty == EMPTY_U32 else np.int64)
        self.values = np.zeros(capacity, np.int64)
        self.meta = np.array([0, capacity // 4 * 3, 65 - capacity.bit_length(), self._empty], np.int64)

    def arrays(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        return self.keys, self.values, self.meta

    def __len__(self) -> int:
        return int(self.meta[USED])

    def make_room(self, puts: int) -> None:
        """Room for `puts` more entries."""
        need = len(self) + puts
        if need <= self.meta[LIMIT]:
            return
        capacity = len(self.keys)
        while capacity // 4 * 3 < need:
            capacity *= 2
        keys, values = self.items()
        self._allocate(capacity)
        put_all(self.arrays(), keys, values)

    def items(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The keys, in order, and their values."""
        live = self.keys != self._empty
        keys = self.keys[live].astype(np.int64)
        order = np.argsort(keys, kind="stable")
        return keys[order], self.values[live][order]

    def get(self, key: int, default: int) -> int:
        return int(get(self.arrays(), key, default))

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.values.nbytes + self.meta.nbytes)

    def snapshot(self) -> dict[str, Any]:
        keys, values = self.items()
        return {"keys": keys, "values": values}

    @classmethod
    def restore(cls, snap: dict[str, Any], max_key: int) -> SparseTable:
        keys = np.asarray(snap["keys"], np.int64)
        if len(keys) and int(keys.max()) > max_key:
            raise ValueError(f"a snapshot's sparse table holds key {int(keys.max())}, above {max_key}")
        table = cls(max_key)
        table.make_room(len(snap["keys"]))
        put_all(table.arrays(), keys, np.asarray(snap["values"], np.int64))
        return table


@kernel(inline=True)
def position(table, key):  # type: ignore[no-untyped-def]
    """Where `key` is in the table, or the empty entry where it would go."""
    keys, meta = table[0], table[2]
    mask = len(keys) - 1
    empty = meta[NO_KEY]
    h = np.int64((np.uint64(key) * _FIBONACCI) >> np.uint64(meta[SHIFT]))
    while np.int64(keys[h]) != empty and np.int64(keys[h]) != key:
        h = (h + 1) & mask
    return h


@kernel(inline=True)
def get(table, key, default):  # type: ignore[no-untyped-def]
    h = position(table, key)
    return table[1][h] if np.int64(table[0][h]) == key else default


@kernel(inline=True)
def put(table, key, value):  # type: ignore[no-untyped-def]
    keys, values, meta = table[0], table[1], table[2]
    h = position(table, key)
    if np.int64(keys[h]) == meta[NO_KEY]:
        keys[h] = key
        meta[USED] += 1
    values[h] = value


@kernel
def put_all(table, keys, values):  # type: ignore[no-untyped-def]
    for i in range(len(keys)):
        put(table, keys[i], values[i])


@kernel(inline=True)
def room(table, puts):  # type: ignore[no-untyped-def]
    """Whether `puts` more entries fit without growing the table."""
    meta = table[2]
    return meta[USED] + puts <= meta[LIMIT]
