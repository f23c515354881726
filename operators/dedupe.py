"""Per-contact de-duplication over the message ids of the last 16 accepted events.

An accepted event without a messageId still takes its place in the ring (as id 0), so
"the last 16 accepted events" is counted exactly as the SPEC words it. Ids are stored as
stable 64-bit digests (never Python's salted `hash`, which would not survive a restart
in another process).
"""

from __future__ import annotations

import hashlib

import numpy as np

from operators.contacts import Columns

RING = 16
NO_ID = 0


def message_digest(message_id: str | None) -> int:
    """Stable non-zero 63-bit digest of a message id; 0 for a missing id."""
    if message_id is None:
        return NO_ID
    d = int.from_bytes(hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                       "little") >> 1
    return d or 1


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
