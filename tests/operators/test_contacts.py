"""operators/contacts.py: contact id -> dense slot, and the growable slot-major columns."""

from __future__ import annotations

import pickle

import numpy as np

from operators.contacts import Columns, ContactIndex

# -- ContactIndex -------------------------------------------------------------------------


def test_slots_are_dense_in_first_seen_order():
    index = ContactIndex()
    assert len(index) == 0
    assert index.slots(["b", "a", "b", "c", "a"]) == [0, 1, 0, 2, 1]
    assert index.ids == ["b", "a", "c"]
    assert len(index) == 3
    assert index.slots(["c", "d", "b", "e"]) == [2, 3, 0, 4]
    assert index.ids == ["b", "a", "c", "d", "e"]
    assert index.slot_of == {"b": 0, "a": 1, "c": 2, "d": 3, "e": 4}
    assert index.slots([]) == []


def test_contact_ids_are_exact_strings():
    index = ContactIndex()
    # "1" and "01" and "u-1" are different contacts; unicode ids are kept as they are.
    assert index.slots(["1", "01", "u-1", "ü-1", "1"]) == [0, 1, 2, 3, 0]


def test_index_snapshot_restore():
    index = ContactIndex()
    index.slots(["x", "y", "z"])
    snap = index.snapshot()
    index.slots(["w"])  # later contacts do not reach the snapshot
    assert snap == ["x", "y", "z"]
    restored = ContactIndex.restore(pickle.loads(pickle.dumps(snap)))
    assert restored.slots(["z", "x", "new"]) == [2, 0, 3]
    assert len(restored) == 4
    # The restored index does not share its list with the snapshot.
    assert snap == ["x", "y", "z"]


# -- Columns ------------------------------------------------------------------------------


def test_add_creates_filled_arrays_with_the_contact_axis_first():
    cols = Columns(capacity=4)
    a = cols.add("a", np.int64, -1)
    b = cols.add("b", np.float64, 0.5, width=3)
    o = cols.add("o", object, None, width=2)
    assert a.shape == (4,) and a.dtype == np.int64 and (a == -1).all()
    assert b.shape == (4, 3) and (b == 0.5).all()
    assert o.shape == (4, 2) and all(v is None for v in o.ravel())
    assert cols.arrays["b"] is b


def test_ensure_within_capacity_keeps_the_arrays():
    cols = Columns(capacity=4)
    a = cols.add("a", np.int64, 0)
    assert cols.ensure(4) is False
    assert cols.arrays["a"] is a
    assert cols.capacity == 4


def test_ensure_doubles_and_preserves_values_and_fill():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, -1)
    cols.add("b", np.float64, 0.0, width=2)
    cols.add("o", object, None)
    cols.arrays["a"][:] = [10, 11, 12, 13]
    cols.arrays["b"][3] = [1.5, 2.5]
    cols.arrays["o"][2] = ("event", 1)
    assert cols.ensure(5) is True
    assert cols.capacity == 8  # 4 doubled once
    assert cols.arrays["a"].tolist() == [10, 11, 12, 13, -1, -1, -1, -1]
    assert cols.arrays["b"][3].tolist() == [1.5, 2.5]
    assert cols.arrays["b"][4:].tolist() == [[0.0, 0.0]] * 4
    assert cols.arrays["o"][2] == ("event", 1) and cols.arrays["o"][7] is None
    # 17 slots from capacity 8: 8 -> 16 -> 32.
    assert cols.ensure(17) is True
    assert cols.capacity == 32
    assert cols.arrays["a"].shape == (32,)
    assert cols.arrays["a"][:5].tolist() == [10, 11, 12, 13, -1]
    assert cols.arrays["b"].shape == (32, 2)


def test_columns_snapshot_is_cut_and_copied():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, 0)
    cols.add("b", np.float64, 0.0, width=2)
    cols.arrays["a"][:3] = [1, 2, 3]
    cols.arrays["b"][1] = [4.0, 5.0]
    snap = cols.snapshot(3)
    assert snap["a"].tolist() == [1, 2, 3]
    assert snap["b"].tolist() == [[0.0, 0.0], [4.0, 5.0], [0.0, 0.0]]
    cols.arrays["a"][0] = 99  # the live columns change, the snapshot does not
    assert snap["a"][0] == 1


def test_columns_restore_grows_to_fit():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, -1)
    cols.add("b", np.float64, 0.0, width=2)
    cols.ensure(10)
    cols.arrays["a"][:10] = np.arange(10)
    cols.arrays["b"][9] = [7.0, 8.0]
    snap = pickle.loads(pickle.dumps(cols.snapshot(10)))

    fresh = Columns(capacity=2)
    fresh.add("a", np.int64, -1)
    fresh.add("b", np.float64, 0.0, width=2)
    fresh.restore(snap, 10)
    assert fresh.capacity == 16  # 2 -> 4 -> 8 -> 16
    assert fresh.arrays["a"][:10].tolist() == list(range(10))
    assert (fresh.arrays["a"][10:] == -1).all()
    assert fresh.arrays["b"][9].tolist() == [7.0, 8.0]
    # Growing the restored columns keeps the restored values.
    fresh.ensure(17)
    assert fresh.arrays["a"][:11].tolist() == [*range(10), -1]


def test_columns_restore_of_an_empty_snapshot():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, -1)
    snap = cols.snapshot(0)
    fresh = Columns(capacity=4)
    fresh.add("a", np.int64, -1)
    fresh.restore(snap, 0)
    assert fresh.capacity == 4
    assert (fresh.arrays["a"] == -1).all()
