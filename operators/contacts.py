"""Contact index of one shard: contact id -> slot, and the growable columns keyed by slot.

Every per-contact state array in a shard has the slot as its first axis. Operators
register their arrays here so they all grow together (capacity doubles) when new
contacts arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Columns:
    """Named numpy arrays sharing the contact axis; grown in place by doubling."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._specs: dict[str, tuple[Any, tuple[int, ...], Any]] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.derived: set[str] = set()

    def add(self, name: str, dtype: Any, fill: Any, width: int | None = None, derived: bool = False) -> np.ndarray:
        """`derived`: computable from the other columns; left out of snapshots, its owner rebuilds it."""
        shape = () if width is None else (width,)
        self._specs[name] = (dtype, shape, fill)
        if derived:
            self.derived.add(name)
        arr = np.full((self.capacity, *shape), fill, dtype=dtype)
        self.arrays[name] = arr
        return arr

    def ensure(self, size: int) -> bool:
        """Make room for `size` slots; True when the arrays were reallocated."""
        if size <= self.capacity:
            return False
        cap = self.capacity
        while cap < size:
            cap *= 2
        for name, (dtype, shape, fill) in self._specs.items():
            new = np.full((cap, *shape), fill, dtype=dtype)
            new[: self.capacity] = self.arrays[name]
            self.arrays[name] = new
        self.capacity = cap
        return True

    def snapshot(self, size: int) -> dict[str, np.ndarray]:
        return {name: arr[:size].copy() for name, arr in self.arrays.items() if name not in self.derived}

    def restore(self, arrays: dict[str, np.ndarray], size: int) -> None:
        self.ensure(max(size, 1))
        for name, saved in arrays.items():
            self.arrays[name][:size] = saved


class ContactIndex:
    """Maps contact ids to dense slots 0..n-1 (slots are never reused within a run)."""

    def __init__(self) -> None:
        self.slot_of: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def slots(self, contacts: Sequence[str]) -> list[int]:
        """Slot per contact, assigning new slots in first-seen order."""
        slot_of = self.slot_of
        ids = self.ids
        out = []
        for c in contacts:
            s = slot_of.get(c)
            if s is None:
                s = slot_of[c] = len(ids)
                ids.append(c)
            out.append(s)
        return out

    def snapshot(self) -> list[str]:
        return list(self.ids)

    @classmethod
    def restore(cls, ids: list[str]) -> ContactIndex:
        index = cls()
        index.ids = list(ids)
        index.slot_of = {c: i for i, c in enumerate(index.ids)}
        return index
