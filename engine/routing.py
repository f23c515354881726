"""Contact -> virtual shard routing, stable across processes, restarts and languages.

shard = crc32(utf-8 contact id) mod shards. The collector (live mode) must route with
the same function so that one contact's events stay in order in one shard stream.
"""

from __future__ import annotations

import zlib

import numpy as np

from engine.compiled import kernel
from engine.decode import EventBatch
from engine.hashing import crc32_spans


def shard_of(contact: str, shards: int) -> int:
    return zlib.crc32(contact.encode("utf-8", "surrogatepass")) % shards


def shard_key(shard: int) -> str:
    return f"shard-{shard:04d}"


def shards_of(batch: EventBatch, shards: int) -> np.ndarray:
    """The shard of every event of the batch."""
    contacts = batch.contacts
    crc = crc32_spans(contacts.data, contacts.starts, contacts.ends, np.empty(len(batch), np.uint32))
    return (crc % np.uint32(shards)).astype(np.int64)


def split_by_shard(batch: EventBatch, shards: int) -> list[tuple[int, EventBatch]]:
    """Sub-batches per shard, each keeping the input order of its events.

    One stable sort by shard permutes every column once; each sub-batch is then a slice
    of the permuted batch. The contact ids and summaries are copied in shard order: a shard's loop
    reads its events' bytes one after the other (reading them scattered over the whole block cost
    the shard loop twice the copy).
    """
    n = len(batch)
    if n == 0:
        return []
    ids = shards_of(batch, shards)
    if shards == 1 or (ids == ids[0]).all():
        batch.shard = int(ids[0])
        return [(batch.shard, batch)]
    order = np.empty(n, np.int64)
    starts = np.zeros(shards + 1, np.int64)
    _counting_sort(ids, order, starts)
    sorted_batch = batch.take(order)
    sorted_batch.contacts = sorted_batch.contacts.compact()
    sorted_batch.summaries = sorted_batch.summaries.compact()
    out = []
    for shard in np.flatnonzero(np.diff(starts)).tolist():
        sub = sorted_batch.slice(int(starts[shard]), int(starts[shard + 1]))
        sub.shard = shard
        out.append((shard, sub))
    return out


@kernel
def _counting_sort(ids, order, starts):  # type: ignore[no-untyped-def]
    """A stable sort of event indices by shard: order[starts[s]:starts[s + 1]] are shard s's events, in
    input order (one pass to count, one to place: no comparison sort)."""
    for i in range(len(ids)):
        starts[ids[i] + 1] += 1
    for s in range(1, len(starts)):
        starts[s] += starts[s - 1]
    for i in range(len(ids)):
        s = ids[i]
        order[starts[s]] = i
        starts[s] += 1
    for s in range(len(starts) - 1, 0, -1):
        starts[s] = starts[s - 1]
    starts[0] = 0
