"""Sliding-window counts, edge-triggered: fire when the count in (now - W, now] reaches K.

For a rule with `at_least: K` only the K most recent matching times matter: the new
event makes n = 1 + (stored times inside the window), and the count rises to exactly K
when exactly K - 1 stored times are inside. Each (contact, count rule) keeps them as a ring
(per-contact times never decrease, so the ring is also time-ordered).

Most contacts never send most counted events (orders, pricing pages), so a contact gets a ring
at its first matching event only: rings are rows of one int64 pool per shard, found through a
`SparseTable` (operators/sparse.py) keyed by `slot * rules + rule`. A ring of K is K + 1 int64s:
the position the next time goes to, then the K times (EMPTY until filled). Rings are never freed.
Dense columns of K int64s per rule took 50 of the 596 bytes per contact with the example rules at
1M contacts.

Compiled code takes `CountRings.arrays()`: the table's arrays, then the pool, its used length, and
(rules, the most pool int64s one event can take).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from operators import sparse
from operators.contacts import next_capacity
from operators.sparse import SparseTable

EMPTY = np.iinfo(np.int64).min
POOL_START = 1024
RULES, PER_EVENT = range(2)


class CountRings:
    """The count rings of a shard's contacts; see the module docstring."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = list(sizes)
        self.table = SparseTable.per_slot(len(sizes))
        self.pool = np.full(POOL_START, EMPTY, np.int64)
        self.pool_used = np.zeros(1, np.int64)
        self._layout = np.array([len(sizes), sum(sizes) + len(sizes)], np.int64)

    def arrays(self) -> tuple[Any, ...]:
        return (*self.table.arrays(), self.pool, self.pool_used, self._layout)

    def __len__(self) -> int:
        """Rings held."""
        return len(self.table)

    def make_room(self) -> None:
        """Room for the rings one more event may start."""
        self.table.make_room(len(self.sizes))
        need = int(self.pool_used[0]) + int(self._layout[PER_EVENT])
        if need > len(self.pool):
            self.pool = _pool(self.pool[: self.pool_used[0]], next_capacity(len(self.pool), need))

    def ring(self, slot: int, rule: int) -> list[int]:
        """The times in the ring of (contact, rule), oldest first, EMPTY left out (for inspection)."""
        at = self.table.get(slot * len(self.sizes) + rule, -1)
        if at < 0:
            return []
        size = self.sizes[rule]
        following = int(self.pool[at])
        times = self.pool[at + 1:at + 1 + size].tolist()
        return [t for t in times[following:] + times[:following] if t != EMPTY]

    def nbytes(self) -> int:
        return self.table.nbytes() + int(self.pool.nbytes + self.pool_used.nbytes + self._layout.nbytes)

    def snapshot(self, copy: bool = True) -> dict[str, Any]:
        pool = self.pool[: self.pool_used[0]]
        return {**self.table.snapshot(), "pool": pool.copy() if copy else pool, "sizes": list(self.sizes)}

    def snapshot_bytes(self) -> int:
        return 16 * len(self) + 8 * int(self.pool_used[0])

    def restore(self, snap: dict[str, Any]) -> None:
        if list(snap["sizes"]) != self.sizes:
            raise ValueError(f"count rings of sizes {list(snap['sizes'])}, the rules have {self.sizes}")
        self.table = SparseTable.restore(snap, self.table.max_key)
        used = len(snap["pool"])
        self.pool = _pool(snap["pool"], max(POOL_START, used + used // 2))
        self.pool_used[0] = used

    @staticmethod
    def from_columns(times: npt.NDArray[np.int64], following: npt.NDArray[np.integer],
                     sizes: list[int]) -> dict[str, Any]:
        """The snapshot of the dense columns that snapshot format 5 and earlier kept (`times`: each
        rule's K columns side by side; `following`: each rule's next position)."""
        keys, offsets, rows = [], [], []
        used = 0
        for rule, size in enumerate(sizes):
            first = sum(sizes[:rule])
            ring = times[:, first:first + size]
            slots = np.flatnonzero((ring != EMPTY).any(axis=1))
            block = np.empty((len(slots), size + 1), np.int64)
            block[:, 0] = following[slots, rule]
            block[:, 1:] = ring[slots]
            keys.append(slots.astype(np.int64) * len(sizes) + rule)
            offsets.append(used + np.arange(len(slots), dtype=np.int64) * (size + 1))
            rows.append(block.ravel())
            used += block.size
        return {"keys": np.concatenate(keys or [np.zeros(0, np.int64)]),
                "values": np.concatenate(offsets or [np.zeros(0, np.int64)]),
                "pool": np.concatenate(rows or [np.zeros(0, np.int64)]), "sizes": list(sizes)}


def _pool(rings: npt.NDArray[np.int64], size: int) -> npt.NDArray[np.int64]:
    """A pool of `size` int64s starting with `rings`, EMPTY after them (a new ring's times start EMPTY)."""
    pool = np.full(size, EMPTY, np.int64)
    pool[: len(rings)] = rings
    return pool


@kernel(inline=True)
def room(rings):  # type: ignore[no-untyped-def]
    """Whether the rings one more event may start fit."""
    layout = rings[5]
    return sparse.room(rings, layout[RULES]) and rings[4][0] + layout[PER_EVENT] <= len(rings[3])


@kernel(inline=True)
def add(rings, slot, rule, size, now_ms, within_ms):  # type: ignore[no-untyped-def]
    """Record a matching event of count rule `rule` (K = `size`) at `now_ms`; True when the count has
    just reached K."""
    keys, offsets, meta, pool, used = rings[0], rings[1], rings[2], rings[3], rings[4]
    key = np.int64(slot) * rings[5][RULES] + rule
    h = sparse.position(rings, key)
    if keys[h] == key:
        at = offsets[h]
    else:  # the contact's first matching event of this rule: a new ring (the pool's unused part is EMPTY)
        at = used[0]
        used[0] = at + 1 + size
        pool[at] = 0
        keys[h] = key
        offsets[h] = at
        meta[sparse.USED] += 1
    inside = 0
    for j in range(at + 1, at + 1 + size):
        if pool[j] > now_ms - within_ms:
            inside += 1
    following = pool[at]
    pool[at + 1 + following] = now_ms
    pool[at] = (following + 1) % size
    return inside == size - 1
