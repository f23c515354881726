"""Per-contact de-duplication over the message ids of the last 16 accepted events.

An accepted event without a messageId still takes its place in the ring (as id 0), so
"the last 16 accepted events" is counted exactly as the SPEC words it. Ids are stored as
stable 63-bit digests (`engine.hashing`, never Python's salted `hash`, which would not
survive a restart in another process).

De-duplication runs in the source partition, before the watermark is computed: a
duplicate "moves no clock and no watermark", and only a step that sees the input in
order can know the watermark before each event. A partition reads one file (replay) or
one shard's stream (live), so its contacts are exactly the ones it de-duplicates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from engine.decode import EventBatch
from engine.hashing import NO_DIGEST
from operators.contacts import Columns, ContactIndex

__all__ = ["RING", "Deduplicator"]

RING = 16


class Deduplicator:
    """The rings of every contact a source partition reads, with their own contact index."""

    def __init__(self) -> None:
        self.index = ContactIndex()
        self.columns = Columns()
        self.columns.add("dedupe_ids", np.int64, NO_DIGEST, RING)
        self.columns.add("dedupe_next", np.uint8, 0)

    def accepted(self, batch: EventBatch) -> npt.NDArray[np.bool_]:
        """Which events of the batch are not duplicates, accepting them in order."""
        slots = self.index.slots(batch.contact_hashes, batch.contacts)
        self.columns.ensure(len(self.index))
        keep = np.empty(len(slots), np.bool_)
        _accept(slots, batch.message_digests, self.columns.arrays["dedupe_ids"], self.columns.arrays["dedupe_next"],
                keep)
        return keep

    def nbytes(self) -> int:
        return self.index.nbytes() + self.columns.nbytes()

    def snapshot(self) -> dict[str, Any]:
        return {"index": self.index.snapshot(), "columns": self.columns.snapshot(len(self.index))}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Deduplicator:
        dedupe = cls()
        dedupe.index = ContactIndex.restore(snap["index"])
        dedupe.columns.restore(snap["columns"], len(dedupe.index))
        return dedupe


@kernel
def _accept(slots, digests, ids, following, keep):  # type: ignore[no-untyped-def]
    for i in range(len(slots)):
        s = slots[i]
        d = digests[i]
        duplicate = False
        if d != NO_DIGEST:
            for j in range(RING):
                if ids[s, j] == d:
                    duplicate = True
                    break
        keep[i] = not duplicate
        if not duplicate:
            p = following[s]
            ids[s, p] = d
            following[s] = (p + 1) % RING
