"""engine/sources.py: the decoding partition stamps the exact input watermark on every event."""

from __future__ import annotations

import pickle

import orjson

from engine.decode import DeadLetter, EventBatch
from engine.records import EndOfInput, ReaderEnd, Watermark
from engine.sources import NEVER, DecodingPartition, ReaderState, block_of
from rules.compiler import Plan

T0 = 1795442400000  # 2026-11-23T14:00:00Z


class ListPartition(DecodingPartition):
    """Serves fixed batches of lines, then ends."""

    WATERMARK_EVERY_S = 3600.0  # no Watermark broadcast in these tests unless asked

    def __init__(self, batches: list[list[dict | bytes]], state: ReaderState | None = None, lateness_ms: int = 0,
                 shards: int = 1) -> None:
        super().__init__("list", state or ReaderState(), shards, Plan.empty(lateness_ms))
        self.batches = batches

    def read_block(self):
        if self.state.offset >= len(self.batches):
            return None
        batch = self.batches[self.state.offset]
        self.state.offset += 1
        lines = [e if isinstance(e, bytes) else orjson.dumps(e) for e in batch]
        return block_of(lines, list(range(len(lines))))


def ev(contact: str, t: int, mid: str | None = None) -> dict:
    e = {"event": "Ping", "userId": contact, "timestamp": t}
    if mid is not None:
        e["messageId"] = mid
    return e


def batches_of(items) -> list[EventBatch]:
    return [v for _, v in items if isinstance(v, EventBatch)]


def test_watermark_before_each_event_excludes_duplicates_and_counts_late():
    part = ListPartition([[
        ev("a", T0, "m1"),
        ev("b", T0 + 60_000, "x1"),
        ev("b", T0 + 7_200_000, "x1"),  # duplicate of x1 with a later time: moves no watermark
        ev("a", T0 + 30_000, "m2"),     # late: 30 s < watermark 60 s (lateness 10 s)
        ev("a", T0 + 55_000),           # not late: 55 s >= 60 s - 10 s
    ]], lateness_ms=10_000)
    [batch] = batches_of(part.next_batch())
    assert batch.contact_ids() == ["a", "b", "a", "a"]
    # watermark before each event: none, 0 - 10 s, 60 s - 10 s, 60 s - 10 s
    assert batch.watermarks.tolist() == [NEVER, T0 - 10_000, T0 + 50_000, T0 + 50_000]
    s = part.state
    assert (s.events_in, s.processed, s.deduplicated, s.late, s.max_time) == (5, 4, 1, 1, T0 + 60_000)


def test_watermarks_continue_across_batches_and_resume():
    first = ListPartition([[ev("a", T0 + 5_000)], [ev("a", T0 + 1_000, "late")], [ev("a", T0 + 9_000)]])
    [b1] = batches_of(first.next_batch())
    assert b1.watermarks.tolist() == [NEVER]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    [b2] = batches_of(first.next_batch())
    assert b2.watermarks.tolist() == [T0 + 5_000]
    # A partition resumed from the snapshot taken after batch 1 continues identically.
    resumed = ListPartition(first.batches, state=snap)
    [r2] = batches_of(resumed.next_batch())
    assert r2.watermarks.tolist() == [T0 + 5_000]
    assert resumed.state.late == first.state.late == 1


def test_dedupe_rings_survive_resume():
    part = ListPartition([[ev("a", T0, "m1")], [ev("a", T0, "m1")]])
    part.next_batch()
    resumed = ListPartition(part.batches, state=pickle.loads(pickle.dumps(part.snapshot())))
    assert batches_of(resumed.next_batch()) == []
    assert (resumed.state.processed, resumed.state.deduplicated) == (1, 1)


def test_end_of_input_goes_to_every_shard_with_the_largest_accepted_time():
    part = ListPartition([[ev("a", T0, "m1"), ev("b", T0 + 1000), ev("a", T0 + 99_000, "m1"), b"nope"]], shards=3)
    first = part.next_batch()
    assert [v.reason for _, v in first if isinstance(v, DeadLetter)] == ["not_json"]
    end = part.next_batch()
    markers = [(k, v) for k, v in end if isinstance(v, EndOfInput)]
    assert markers == [(f"shard-{s:04d}", EndOfInput(T0 + 1000)) for s in range(3)]
    [(key, reader_end)] = [(k, v) for k, v in end if isinstance(v, ReaderEnd)]
    assert key == "end"
    assert (reader_end.events_in, reader_end.processed, reader_end.deduplicated, reader_end.dead_lettered,
            reader_end.dead_letter_reasons, reader_end.max_time) == (4, 2, 1, 1, {"not_json": 1}, T0 + 1000)


def test_watermark_broadcast_reaches_every_shard():
    part = ListPartition([[ev("a", T0 + 20_000)]], shards=4, lateness_ms=5_000)
    part.WATERMARK_EVERY_S = 0.0
    items = part.next_batch()
    marks = [(k, v) for k, v in items if isinstance(v, Watermark)]
    assert marks == [(f"shard-{s:04d}", Watermark(T0 + 15_000)) for s in range(4)]
