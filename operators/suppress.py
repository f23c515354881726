"""Firing modifiers: `unless` (a matching event in (t - W, t]) and `cooldown` (no firing
in (t, t + W) after a firing at t), plus the SPEC's at-most-once per contact and event
time. A suppressed firing records nothing, so it starts no cooldown.
"""

from __future__ import annotations

import numpy as np

from operators.contacts import Columns

NEVER = np.iinfo(np.int64).min


class Suppression:
    def __init__(self, columns: Columns, n_unless: int, n_triggers: int) -> None:
        self.columns = columns
        columns.add("unless_seen", np.int64, NEVER, max(n_unless, 1))
        columns.add("last_fired", np.int64, NEVER, max(n_triggers, 1))

    def saw(self, slot: int, unless: int, now_ms: int) -> None:
        self.columns.arrays["unless_seen"][slot, unless] = now_ms

    def reason(self, slot: int, trigger: int, at_ms: int, unless: int, unless_within_ms: int,
               cooldown_ms: int) -> str | None:
        """Why a firing at `at_ms` is suppressed ("unless", "cooldown", "same_time"), or None."""
        arrays = self.columns.arrays
        if unless >= 0:
            seen = int(arrays["unless_seen"][slot, unless])
            if seen != NEVER and at_ms - unless_within_ms < seen <= at_ms:
                return "unless"
        last = int(arrays["last_fired"][slot, trigger])
        if last != NEVER:
            if at_ms == last:
                return "same_time"
            if at_ms < last + cooldown_ms:
                return "cooldown"
        return None

    def fired(self, slot: int, trigger: int, at_ms: int) -> None:
        self.columns.arrays["last_fired"][slot, trigger] = at_ms
