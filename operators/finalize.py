"""End of input (replay mode): gather every shard's and reader's report into the run summary.

Shards fire their remaining due timers when `EndOfInput` reaches them; this step (a
single key) waits for all of them and every reader, then emits one summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from engine.records import ReaderEnd, ShardEnd

NEVER = -(2**63)


def summarize(shard_ends: list[ShardEnd], reader_ends: list[ReaderEnd]) -> dict[str, Any]:
    fired: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for s in shard_ends:
        fired.update(s.fired)
        suppressed.update(s.suppressed)
    for r in reader_ends:
        reasons.update(r.dead_letter_reasons)
    largest = max((r.max_time for r in reader_ends), default=NEVER)
    return {
        "events_in": sum(r.events_in for r in reader_ends),
        "processed": sum(r.processed for r in reader_ends),
        "deduplicated": sum(r.deduplicated for r in reader_ends),
        "dead_lettered": sum(r.dead_lettered for r in reader_ends),
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "late": sum(r.late for r in reader_ends),
        "triggers": dict(sorted(fired.items())),
        "suppressed": dict(sorted(suppressed.items())),
        "pending_timers": sum(s.pending for s in shard_ends),
        "contacts": sum(s.contacts for s in shard_ends),
        "max_event_time": None if largest == NEVER else largest,
    }


class EndOfInputLogic(StatefulBatchLogic[Any, Any, tuple]):
    def __init__(self, shards: int, readers: int, resume: tuple | None) -> None:
        self.shards = shards
        self.readers = readers
        self.shard_ends: list[ShardEnd] = []
        self.reader_ends: list[ReaderEnd] = []
        if resume is not None:
            self.shard_ends, self.reader_ends = list(resume[0]), list(resume[1])

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        for v in values:
            if isinstance(v, ShardEnd):
                self.shard_ends.append(v)
            elif isinstance(v, ReaderEnd):
                self.reader_ends.append(v)
        if len(self.shard_ends) < self.shards or len(self.reader_ends) < self.readers:
            return [], StatefulBatchLogic.RETAIN
        return [summarize(self.shard_ends, self.reader_ends)], StatefulBatchLogic.DISCARD

    def snapshot(self) -> tuple:
        return (list(self.shard_ends), list(self.reader_ends))
