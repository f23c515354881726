"""Blobs: spans of a shared buffer; routing gathers spans, a pickle carries only a batch's own bytes."""

from __future__ import annotations

import pickle

import numpy as np

from engine.blobs import Blobs


def test_take_and_slice_share_the_buffer_and_keep_the_order() -> None:
    blobs = Blobs.of([b"alpha", b"", b"gamma", b"de"])
    taken = blobs.take(np.array([3, 0, 1]))
    assert taken.data is blobs.data
    assert [taken[i] for i in range(len(taken))] == [b"de", b"alpha", b""]
    assert taken.total_bytes() == 7 and taken.lengths().tolist() == [2, 5, 0]
    part = blobs.slice(1, 3)
    assert part.data is blobs.data and [part[0], part[1]] == [b"", b"gamma"]


def test_a_pickle_holds_only_the_blobs_own_bytes() -> None:
    big = Blobs.of([b"x" * 10_000, b"kept", b"y" * 10_000])
    one = big.take(np.array([1]))
    restored = pickle.loads(pickle.dumps(one))
    assert len(pickle.dumps(one)) < 1_000
    assert restored[0] == b"kept" and len(restored.data) == 4
    assert one.data is big.data  # pickling did not change the original


def test_concat_of_shared_and_separate_buffers() -> None:
    blobs = Blobs.of([b"a", b"bb", b"ccc"])
    shared = Blobs.concat([blobs.take(np.array([2])), blobs.take(np.array([0]))])
    assert shared.data is blobs.data and [shared[0], shared[1]] == [b"ccc", b"a"]
    mixed = Blobs.concat([blobs.take(np.array([1])), Blobs.of([b"dddd", b""])])
    assert [mixed[i] for i in range(3)] == [b"bb", b"dddd", b""]
    assert Blobs.concat([Blobs.empty(), Blobs.of([b"z"])])[0] == b"z"
