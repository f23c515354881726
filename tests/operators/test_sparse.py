"""operators/sparse.py: the integer -> int64 hash table behind sparse per-contact state."""

from __future__ import annotations

import numpy as np
import pytest

from operators import sparse
from operators.sparse import EMPTY, EMPTY_U32, MIN_CAPACITY, SparseTable

WIDE = 2**62  # a table whose keys go beyond 32 bits: int64 keys
NARROW = 2**32 - 2  # the largest uint32 key that is not EMPTY_U32


def _put(table: SparseTable, key: int, value: int) -> None:
    table.make_room(1)
    sparse.put(table.arrays(), key, value)


@pytest.mark.parametrize(("max_key", "dtype", "empty"), [(WIDE, np.int64, EMPTY), (NARROW, np.uint32, EMPTY_U32),
                                                        (2**32 - 1, np.int64, EMPTY)])
def test_a_new_table_is_empty(max_key, dtype, empty):
    table = SparseTable(max_key)
    assert len(table) == 0 and len(table.keys) == MIN_CAPACITY and table.keys.dtype == dtype
    assert (table.keys == empty).all()
    assert table.get(0, -7) == -7 and table.get(12345, -7) == -7


@pytest.mark.parametrize(("max_key", "large"), [(WIDE, [2**40 + 1, 2**61]), (NARROW, [2**31 + 1, NARROW])])
def test_puts_replace_and_get_finds_every_key_after_growth(max_key, large):
    table = SparseTable(max_key)
    keys = [k * 13 + 5 for k in range(5000)] + large
    for k in keys:
        _put(table, k, 2 * k)
    for k in keys[:100]:
        _put(table, k, -k)  # replaced: no new entry
    assert len(table) == len(keys)
    # 5002 entries at most 3/4 full: 8192 slots.
    assert len(table.keys) == 8192 and table.meta[sparse.LIMIT] == 6144
    assert [table.get(k, 0) for k in keys[:3]] == [-5, -18, -31]
    assert all(table.get(k, 0) == 2 * k for k in keys[100:])
    assert table.get(6, 0) == 0 and table.get(large[1] - 1, -1) == -1  # absent keys
    stored, values = table.items()
    assert stored.tolist() == sorted(keys)


def test_room_says_when_a_kernel_must_stop_for_growth():
    table = SparseTable(NARROW)
    assert table.meta[sparse.LIMIT] == 48
    for k in range(47):
        _put(table, k, k)
    assert sparse.room(table.arrays(), 1) and not sparse.room(table.arrays(), 2)
    table.make_room(2)
    assert len(table.keys) == 128 and sparse.room(table.arrays(), 2)
    assert [table.get(k, -1) for k in range(47)] == list(range(47))


@pytest.mark.parametrize("max_key", [WIDE, NARROW])
def test_snapshot_and_restore_keep_every_entry(max_key):
    table = SparseTable(max_key)
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, min(max_key, 2**40), 3000))
    for k in keys.tolist():
        _put(table, k, k % 1000)
    snap = table.snapshot()
    assert snap["keys"].dtype == np.int64 and snap["keys"].tolist() == keys.tolist()
    restored = SparseTable.restore(snap, max_key)
    assert len(restored) == len(keys)
    assert all(restored.get(k, -1) == k % 1000 for k in keys.tolist())


def test_a_snapshot_with_a_key_beyond_the_tables_bound_is_refused():
    table = SparseTable(WIDE)
    _put(table, 2**33, 1)
    with pytest.raises(ValueError, match="holds key 8589934592, above 4294967294"):
        SparseTable.restore(table.snapshot(), NARROW)
