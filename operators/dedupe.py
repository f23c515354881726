"""Per-contact de-duplication over the message ids of the last 16 accepted events.

An accepted event without a messageId still takes its place in the ring (as id 0), so
"the last 16 accepted events" is counted exactly as the SPEC words it. Ids are stored as
stable 64-bit digests (never Python's salted `hash`, which would not survive a restart
in another process).

De-duplication runs in the source partition, before the watermark is computed: a
duplicate "moves no clock and no watermark", and only a step that sees the input in
order can know the watermark before each event. A partition reads one file (replay) or
one shard's stream (live), so its contacts are exactly the ones it de-duplicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from operators.contacts import Columns, ContactIndex

RING = 16
NO_ID = 0
SEQUENTIAL_BELOW = 16  # rounds smaller than this are finished event by event


_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x2545F4914F6CDD1D)


def _finalize(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def message_digests(message_ids: Sequence[str | None]) -> np.ndarray:
    """Stable non-zero 63-bit digests of message ids (0 for a missing id), for a whole batch at once.

    The UTF-8 bytes are read as little-endian 64-bit words, each mixed into the state with
    a multiply and the splitmix64 finaliser, then the length; only an id's own words count,
    so a digest does not depend on the other ids of its batch.
    """
    n = len(message_ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    raw = [b"" if m is None else m.encode("utf-8", "surrogatepass") for m in message_ids]
    lengths = np.fromiter(map(len, raw), dtype=np.uint64, count=n)
    width = max(8, -(-int(lengths.max()) // 8) * 8)
    words = np.array(raw, dtype=f"S{width}").view("<u8").reshape(n, width // 8)
    with np.errstate(over="ignore"):
        h = np.full(n, _SEED, dtype=np.uint64)
        for j in range(words.shape[1]):
            mixed = _finalize((h ^ words[:, j]) * _MULTIPLIER)
            h = np.where(lengths > np.uint64(8 * j), mixed, h)
        h = _finalize(h ^ lengths)
    digests = (h >> np.uint64(1)).astype(np.int64)
    digests[digests == NO_ID] = 1
    digests[[m is None for m in message_ids]] = NO_ID
    return digests


def message_digest(message_id: str | None) -> int:
    """The digest of one message id (see `message_digests`)."""
    return int(message_digests([message_id])[0])


class MessageRing:
    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        columns.add("dedupe_ids", np.int64, NO_ID, RING)
        columns.add("dedupe_next", np.uint8, 0)

    def seen(self, slot: int, digest: int) -> bool:
        """True if `digest` is among the contact's last 16 accepted ids."""
        if digest == NO_ID:
            return False
        return bool((self.columns.arrays["dedupe_ids"][slot] == digest).any())

    def accept(self, slot: int, digest: int) -> None:
        arrays = self.columns.arrays
        pos = int(arrays["dedupe_next"][slot])
        arrays["dedupe_ids"][slot, pos] = digest
        arrays["dedupe_next"][slot] = (pos + 1) % RING


class Deduplicator:
    """The rings of every contact a source partition reads, with their own contact index."""

    def __init__(self) -> None:
        self.index = ContactIndex()
        self.columns = Columns()
        self.ring = MessageRing(self.columns)

    def accepted(self, contacts: Sequence[str], message_ids: Sequence[str | None]) -> list[int]:
        """Indices of the events that are not duplicates, accepting them in order.

        Vectorised in rounds: round r decides every contact's r-th event of the batch at
        once (a contact's events stay in order; different contacts are independent), so
        the Python work is per round, not per event.
        """
        n = len(contacts)
        if n == 0:
            return []
        slots = np.asarray(self.index.slots(contacts), dtype=np.intp)
        self.columns.ensure(len(self.index))
        digests = message_digests(message_ids)
        ids = self.columns.arrays["dedupe_ids"]
        following = self.columns.arrays["dedupe_next"]
        # rank[i] = how many earlier events of the batch belong to event i's contact
        order = np.argsort(slots, kind="stable")
        ordered = slots[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
        rank = np.empty(n, dtype=np.intp)
        rank[order] = np.arange(n) - group_start
        keep = np.ones(n, dtype=bool)
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(int(rank.max()) + 2))
        for r in range(len(bounds) - 1):
            events = by_rank[bounds[r]:bounds[r + 1]]
            if len(events) < SEQUENTIAL_BELOW:
                # A few busy contacts left: per event is cheaper than a round each.
                self._one_by_one(np.sort(by_rank[bounds[r]:]), slots, digests, keep)
                break
            d = digests[events]
            s = slots[events]
            duplicate = (d != NO_ID) & (ids[s] == d[:, None]).any(axis=1)
            keep[events[duplicate]] = False
            accepted = ~duplicate
            s = s[accepted]
            pos = following[s]
            ids[s, pos] = d[accepted]
            following[s] = (pos + 1) % RING
        return np.flatnonzero(keep).tolist()

    def _one_by_one(self, events: np.ndarray, slots: np.ndarray, digests: np.ndarray, keep: np.ndarray) -> None:
        ring = self.ring
        for i in events.tolist():
            slot = int(slots[i])
            digest = int(digests[i])
            if digest and ring.seen(slot, digest):
                keep[i] = False
            else:
                ring.accept(slot, digest)

    def snapshot(self) -> dict[str, Any]:
        return {"ids": self.index.snapshot(), "columns": self.columns.snapshot(len(self.index))}

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Deduplicator:
        dedupe = cls()
        dedupe.index = ContactIndex.restore(snap["ids"])
        dedupe.columns.restore(snap["columns"], len(dedupe.index))
        return dedupe
