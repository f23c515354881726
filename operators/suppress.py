"""Firing modifiers: `unless` (a matching event in (t - W, t]) and `cooldown` (no firing
in (t, t + W) after a firing at t), plus the SPEC's at-most-once per contact and event
time. A suppressed firing records nothing, so it starts no cooldown.
"""

from __future__ import annotations

import numpy as np

from engine.compiled import kernel
from operators.contacts import Columns

NEVER = np.iinfo(np.int64).min
# Why a firing is suppressed; REASONS[code - 1] names code.
NOT_SUPPRESSED, UNLESS, COOLDOWN, SAME_TIME = range(4)
REASONS = ("unless", "cooldown", "same_time")


class Suppression:
    def __init__(self, columns: Columns, n_unless: int, n_triggers: int) -> None:
        columns.add("unless_seen", np.int64, NEVER, max(n_unless, 1))  # per distinct `unless` matcher
        columns.add("last_fired", np.int64, NEVER, max(n_triggers, 1))


@kernel(inline=True)
def reason(unless_seen, last_fired, slot, trigger, at_ms, unless, unless_within_ms, cooldown_ms):  # type: ignore[no-untyped-def]
    """Why a firing at `at_ms` is suppressed (UNLESS, SAME_TIME, COOLDOWN), or NOT_SUPPRESSED."""
    if unless >= 0:
        seen = unless_seen[slot, unless]
        if seen != NEVER and at_ms - unless_within_ms < seen <= at_ms:
            return UNLESS
    last = last_fired[slot, trigger]
    if last != NEVER:
        if at_ms == last:
            return SAME_TIME
        if at_ms < last + cooldown_ms:
            return COOLDOWN
    return NOT_SUPPRESSED
