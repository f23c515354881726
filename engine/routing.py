"""Contact -> virtual shard routing, stable across processes, restarts and languages.

shard = crc32(utf-8 contact id) mod shards. The collector (live mode) must route with
the same function so that one contact's events stay in order in one shard stream.
"""

from __future__ import annotations

import zlib

import numpy as np

from engine.decode import EventBatch
from engine.hashing import crc32_spans


def shard_of(contact: str, shards: int) -> int:
    return zlib.crc32(contact.encode("utf-8", "surrogatepass")) % shards


def shard_key(shard: int) -> str:
    return f"shard-{shard:04d}"


def shards_of(batch: EventBatch, shards: int) -> np.ndarray:
    """The shard of every event of the batch."""
    offsets = batch.contacts.offsets
    crc = crc32_spans(batch.contacts.data, offsets[:-1], offsets[1:], np.empty(len(batch), np.uint32))
    return (crc % np.uint32(shards)).astype(np.int64)


def split_by_shard(batch: EventBatch, shards: int) -> list[tuple[int, EventBatch]]:
    """Sub-batches per shard, each keeping the input order of its events.

    One stable sort by shard permutes every column once; each sub-batch is then a slice
    of the permuted batch, with its own copy of the bytes (it may be pickled to another process).
    """
    n = len(batch)
    if n == 0:
        return []
    ids = shards_of(batch, shards)
    if shards == 1 or (ids == ids[0]).all():
        batch.shard = int(ids[0])
        return [(batch.shard, batch)]
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    sorted_batch = batch.take(order)
    bounds = [0, *(np.flatnonzero(np.diff(sorted_ids)) + 1).tolist(), n]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        sub = sorted_batch.slice(a, b)
        sub.shard = int(sorted_ids[a])
        out.append((sub.shard, sub))
    return out
