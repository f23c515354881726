"""End of input (replay mode): agree on the largest event time and fire what it allows.

Only shards can tell duplicates apart, so only they know the largest time among
accepted events; the SPEC fires, at end of input, every pending timer with a deadline
<= that global largest time. Each shard fires what its own largest time already allows
and reports the rest as conditional firings; this step (a single key) waits for every
shard and every reader, takes the maximum, emits the conditional firings it allows,
and produces the run summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from bytewax.operators import StatefulBatchLogic

from engine.records import ReaderEnd, ShardEnd


def summarize(shard_ends: list[ShardEnd], reader_ends: list[ReaderEnd]) -> tuple[dict[str, Any], list[Any]]:
    """The run summary and the outputs of the conditional firings that happen."""
    largest = max((s.max_time for s in shard_ends), default=None)
    fired: Counter[str] = Counter()
    suppressed: Counter[str] = Counter()
    pending = 0
    outputs: list[Any] = []
    for s in shard_ends:
        fired.update(s.fired)
        suppressed.update(s.suppressed)
        pending += s.pending
        for deadline, rule, reason, outs in s.conditional:
            if largest is not None and deadline <= largest:
                pending -= 1
                if reason is None:
                    fired[rule] += 1
                    outputs.extend(outs)
                else:
                    suppressed[f"{rule}:{reason}"] += 1
    reasons: Counter[str] = Counter()
    for r in reader_ends:
        reasons.update(r.dead_letter_reasons)
    summary = {
        "events_in": sum(r.events_in for r in reader_ends),
        "processed": sum(s.processed for s in shard_ends),
        "deduplicated": sum(s.deduplicated for s in shard_ends),
        "dead_lettered": sum(r.dead_lettered for r in reader_ends),
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "late": sum(r.late for r in reader_ends),
        "triggers": dict(sorted(fired.items())),
        "suppressed": dict(sorted(suppressed.items())),
        "pending_timers": pending,
        "contacts": sum(s.contacts for s in shard_ends),
        "max_event_time": largest,
    }
    return summary, outputs


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
        summary, outputs = summarize(self.shard_ends, self.reader_ends)
        return [*outputs, summary], StatefulBatchLogic.DISCARD

    def snapshot(self) -> tuple:
        return (list(self.shard_ends), list(self.reader_ends))
