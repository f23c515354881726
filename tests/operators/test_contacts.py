"""operators/contacts.py: contact id -> dense slot, and the growable slot-major columns."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from engine.blobs import Blobs
from engine.hashing import digest_of, digests
from operators.contacts import MAX_ID_BYTES, MAX_SLOTS, Columns, ContactIndex, DigestIndex, next_capacity

# -- ContactIndex -------------------------------------------------------------------------


def _slots(index: ContactIndex, ids: list[str]) -> list[int]:
    """The slots of `ids`, given as the engine gives them: digests and UTF-8 blobs."""
    out = index.slots(digests(ids), Blobs.of(i.encode("utf-8") for i in ids))
    assert out.dtype == np.int32
    return out.tolist()


def test_slots_are_dense_in_first_seen_order():
    index = ContactIndex()
    assert len(index) == 0
    assert index.ids() == []
    assert _slots(index, ["b", "a", "b", "c", "a"]) == [0, 1, 0, 2, 1]
    assert index.ids() == ["b", "a", "c"]
    assert len(index) == 3
    assert _slots(index, ["c", "d", "b", "e"]) == [2, 3, 0, 4]
    assert index.ids() == ["b", "a", "c", "d", "e"]
    assert [index.id(s) for s in range(5)] == ["b", "a", "c", "d", "e"]
    assert _slots(index, []) == []
    assert len(index) == 5


def test_contact_ids_are_exact_strings():
    index = ContactIndex()
    # "1" and "01" and "u-1" are different contacts; unicode ids are kept as they are.
    assert _slots(index, ["1", "01", "u-1", "ü-1", "1"]) == [0, 1, 2, 3, 0]
    assert index.id(3) == "ü-1"
    # "ü" is two bytes in UTF-8: an id with the same characters in another normal form is another contact.
    assert _slots(index, ["u\u0308-1", "ü-1"]) == [4, 3]
    assert index.ids() == ["1", "01", "u-1", "ü-1", "u\u0308-1"]


def test_ids_with_the_same_digest_get_their_own_slots():
    index = ContactIndex()
    # The digest is only a hint: ids are compared byte for byte on a digest match. Give three
    # different ids one digest (and a prefix of one of them, of another length).
    same = np.full(4, 12345, np.int64)
    ids = [b"u-1", b"u-2", b"u-1", b"u-"]
    assert index.slots(same, Blobs.of(ids)).tolist() == [0, 1, 0, 2]
    assert index.ids() == ["u-1", "u-2", "u-"]
    # Looked up again, each finds its own slot. The key is (digest, bytes): the same bytes under
    # another digest are another entry (the engine always passes an id's own digest).
    assert index.slots(same[:3], Blobs.of([b"u-", b"u-2", b"u-1"])).tolist() == [2, 1, 0]
    real = np.array([digest_of("u-2")], np.int64)
    assert index.slots(real, Blobs.of([b"u-2"])).tolist() == [3]
    assert len(index) == 4


def _colliding_pair(low_bits: int) -> list[str]:
    """Two ids whose digests agree on their low `low_bits` bits and on the 7 bits a table entry
    keeps: their probes start at the same entry of every table of up to 2^low_bits entries, and
    the entries they leave there cannot be told apart without the ids' bytes."""
    ids = [f"collide-{i}" for i in range(60_000)]
    seen: dict[tuple[int, int], str] = {}
    for contact, d in zip(ids, digests(ids).tolist(), strict=True):
        key = (d & ((1 << low_bits) - 1), d >> 56)
        if key in seen:
            return [seen[key], contact]
        seen[key] = contact
    raise AssertionError("no colliding pair among the candidates")


def test_colliding_ids_stay_apart_when_the_table_grows():
    index = ContactIndex(capacity=4)
    # Two ids whose entries collide in every table up to 8,192 entries, then enough other contacts to
    # grow the table (rebuilt from the ids each time) and the id buffer (16 bytes per initial slot)
    # several times over.
    pair = _colliding_pair(13)
    assert _slots(index, pair) == [0, 1]
    many = [f"contact-with-a-long-id-{i:05d}" for i in range(3000)]
    assert _slots(index, many) == list(range(2, 3002))
    assert len(index.table) == 8192
    assert _slots(index, pair[::-1]) == [1, 0]
    assert _slots(index, many[::-1]) == list(range(3001, 1, -1))
    assert index.ids() == [*pair, *many]
    assert len(index) == 3002


def test_index_snapshot_restore():
    index = ContactIndex()
    _slots(index, ["x", "y", "z"])
    snap = index.snapshot()
    _slots(index, ["w"])  # later contacts do not reach the snapshot
    assert set(snap) == {"id_offsets", "id_data"}  # the table is rebuilt from the ids
    assert (snap["id_offsets"].tolist(), snap["id_data"].tobytes()) == ([0, 1, 2, 3], b"xyz")
    assert ContactIndex.restore(snap).ids() == ["x", "y", "z"]
    restored = ContactIndex.restore(pickle.loads(pickle.dumps(snap)))
    assert _slots(restored, ["z", "x", "new"]) == [2, 0, 3]
    assert len(restored) == 4
    assert restored.ids() == ["x", "y", "z", "new"]
    # The restored index does not share its arrays with the snapshot.
    assert snap["id_offsets"].tolist() == [0, 1, 2, 3]
    assert ContactIndex.restore(snap).ids() == ["x", "y", "z"]


def test_index_restore_of_more_contacts_than_the_initial_capacity():
    ids = [f"c-{i}" for i in range(2500)]
    index = ContactIndex.of(ids)
    restored = ContactIndex.restore(pickle.loads(pickle.dumps(index.snapshot())))
    assert len(restored) == 2500
    assert _slots(restored, [ids[2499], ids[0], "new", ids[1024]]) == [2499, 0, 2500, 1024]


def test_an_index_of_given_ids():
    index = ContactIndex.of(["a", "b", "c"])
    assert (len(index), index.ids(), index.id(1)) == (3, ["a", "b", "c"], "b")
    assert _slots(index, ["c", "d"]) == [2, 3]
    assert len(ContactIndex.of([])) == 0


def test_index_nbytes_counts_its_arrays():
    index = ContactIndex(capacity=8)
    # table (2 x 8 int32) + offsets (9 uint32) + id bytes (16 x 8).
    assert index.nbytes() == 16 * 4 + 9 * 4 + 128
    # One more than the capacity: the slots grow by 16 (an eighth of 8 is less than the least step),
    # the table doubles to stay at most half full, the 27 id bytes still fit.
    _slots(index, [f"c-{i}" for i in range(9)])
    assert index.nbytes() == 32 * 4 + 25 * 4 + 128


def test_capacities_grow_by_an_eighth():
    assert [next_capacity(c, c + 1) for c in (8, 64, 1024, 1152)] == [24, 80, 1152, 1296]
    assert next_capacity(1024, 1024) == 1024
    assert next_capacity(1024, 1500) == 1640  # 1152, 1296, 1458, 1640


def test_an_index_snapshot_with_int64_offsets_restores():
    # Snapshots up to format 6 as first written held the offsets as int64.
    snap = ContactIndex.of(["ann", "bo", "cy"]).snapshot()
    snap["id_offsets"] = snap["id_offsets"].astype(np.int64)
    restored = ContactIndex.restore(snap)
    assert (restored.ids(), restored.id_offsets.dtype) == (["ann", "bo", "cy"], np.uint32)
    assert _slots(restored, ["bo", "dee"]) == [1, 3]


def test_an_index_snapshot_with_the_digests_restores():
    # Snapshots up to format 6 held each contact's digest too; the ids are enough.
    ids = [f"c-{i}" for i in range(2000)]
    snap = {**ContactIndex.of(ids).snapshot(), "hashes": digests(ids)}
    restored = ContactIndex.restore(snap)
    assert _slots(restored, [ids[1999], "new", ids[7]]) == [1999, 2000, 7]


def test_ids_beyond_what_32_bit_offsets_address_are_refused():
    index = ContactIndex()
    with pytest.raises(MemoryError, match="more than 4 GiB: use more --shards"):
        index._reserve(1, MAX_ID_BYTES + 1)


def test_more_contacts_than_a_table_entry_can_number_are_refused():
    # A table entry holds the slot in 24 bits: 2^24 contacts per shard (counting a batch's as all new).
    assert MAX_SLOTS == 1 << 24
    with pytest.raises(MemoryError, match="at most 2\\^24 .* use more --shards"):
        ContactIndex()._reserve(MAX_SLOTS + 1, 0)


# -- DigestIndex --------------------------------------------------------------------------


def test_digest_index_numbers_digests_in_first_seen_order_and_keeps_no_ids():
    index = DigestIndex(capacity=4)
    assert index.slots(digests(["b", "a", "b"])).tolist() == [0, 1, 0]
    # Enough new digests to grow the table and the digests several times over.
    many = digests([f"c-{i}" for i in range(3000)])
    assert index.slots(many).tolist() == list(range(2, 3002))
    assert index.slots(many[::-1]).tolist() == list(range(3001, 1, -1))
    assert index.slots(digests(["a"])).tolist() == [1]
    assert len(index) == 3002
    # Two ids with one digest are one slot here (the id is not compared): the known trade-off.
    assert index.slots(np.array([12345, 12345], np.int64)).tolist() == [3002, 3002]
    # The digests grew only when full, not for every digest of a call: from 4 by 16 (the least step)
    # or an eighth at a time to 3,100 for 3,003; the table is the power of two at least twice 3,003.
    assert index.nbytes() == index.table.nbytes + index.hashes.nbytes == 8192 * 4 + 3100 * 8
    # The table follows the digests held, not their capacity: 1,000 digests in an array of 1,075 take
    # 2,048 entries (sized for the capacity, 4,096).
    small = DigestIndex(capacity=4)
    small.slots(many[:1000])
    assert (len(small.hashes), len(small.table)) == (1075, 2048)


def test_digest_index_restores_from_its_snapshot_and_from_a_contact_index_snapshot():
    ids = [f"c-{i}" for i in range(1500)]
    written = {**ContactIndex.of(ids).snapshot(), "hashes": digests(ids)}  # as dedupe snapshots before DigestIndex
    for snap in (written, DigestIndex.restore(written).snapshot()):
        restored = DigestIndex.restore(pickle.loads(pickle.dumps(snap)))
        assert set(snap) <= {"hashes", "id_offsets", "id_data"} and len(restored) == 1500
        assert restored.slots(digests(["c-1499", "c-0", "new", "c-1024"])).tolist() == [1499, 0, 1500, 1024]


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


def test_ensure_grows_by_an_eighth_and_preserves_values_and_fill():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, -1)
    cols.add("b", np.float64, 0.0, width=2)
    cols.add("o", object, None)
    cols.arrays["a"][:] = [10, 11, 12, 13]
    cols.arrays["b"][3] = [1.5, 2.5]
    cols.arrays["o"][2] = ("event", 1)
    assert cols.ensure(5) is True
    assert cols.capacity == 20  # 4 + 16, the least step
    assert cols.arrays["a"].tolist() == [10, 11, 12, 13] + [-1] * 16
    assert cols.arrays["b"][3].tolist() == [1.5, 2.5]
    assert cols.arrays["b"][4:].tolist() == [[0.0, 0.0]] * 16
    assert cols.arrays["o"][2] == ("event", 1) and cols.arrays["o"][19] is None
    assert cols.ensure(20) is False
    # 150 slots from capacity 20: 16 at a time (the least step) to 148, then an eighth more: 166.
    assert cols.ensure(150) is True
    assert cols.capacity == 166
    assert cols.arrays["a"].shape == (166,)
    assert cols.arrays["a"][:5].tolist() == [10, 11, 12, 13, -1]
    assert cols.arrays["b"].shape == (166, 2)


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
    assert fresh.capacity == 18  # 2 + 16, the least step
    assert fresh.arrays["a"][:10].tolist() == list(range(10))
    assert (fresh.arrays["a"][10:] == -1).all()
    assert fresh.arrays["b"][9].tolist() == [7.0, 8.0]
    # Growing the restored columns keeps the restored values.
    assert fresh.ensure(19) is True
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


def test_columns_nbytes_is_the_sum_of_the_arrays():
    cols = Columns(capacity=4)
    cols.add("a", np.int64, 0)  # 4 x 8
    cols.add("b", np.float32, 0.0, width=3)  # 4 x 3 x 4
    cols.add("c", np.uint8, 0, width=2)  # 4 x 2 x 1
    assert cols.nbytes() == 32 + 48 + 8
    cols.ensure(5)  # 4 -> 20 slots
    assert cols.nbytes() == 5 * (32 + 48 + 8)
