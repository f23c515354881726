"""engine/snapshots.py: shard and dedupe snapshots are packed for bytewax and resume exactly."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import orjson
import pytest

from engine import metrics
from engine.records import TriggerOut, each_record
from engine.snapshots import pack, unpack
from engine.sources import NEVER
from engine.testing import event_batch, plan_of
from operators.shard import ShardLogic
from tests.engine.test_sources import T0, ListPartition, batches_of, ev

RULES = """
version: 1
scores:
  engagement: {half_life: 1h, points: [{event: Ping, add: 2}]}
triggers:
  warm: {when: {score: engagement, rises_above: 3}}
  gone: {when: {inactive_for: 1h}}
"""


def test_pack_round_trips_arrays_exactly_and_compresses_repetitive_columns():
    columns = {"clock": np.full(100_000, -(2**63), np.int64), "score": np.linspace(0.0, 1.0, 7),
               "ids": np.array(list(b"u-1u-22"), np.uint8), "version": 4}
    packed = pack(columns)
    restored = unpack(pickle.loads(pickle.dumps(packed)))
    assert restored.keys() == columns.keys() and restored["version"] == 4
    for name in ("clock", "score", "ids"):
        assert restored[name].dtype == columns[name].dtype
        assert np.array_equal(restored[name], columns[name])
        restored[name][0] = 1  # writable, as restored state must be
    # 800,000 bytes of one sentinel: LZ4 keeps well under 1% of them.
    assert len(pickle.dumps(columns)) > 800_000 and len(pickle.dumps(packed)) < 8_000


def test_a_snapshot_written_before_packing_is_returned_as_it_is():
    old = {"version": 4, "index": {}}
    assert unpack(old) is old
    assert unpack(None) is None
    assert unpack(("other", b"", [])) == ("other", b"", [])


def _shard_with_events() -> ShardLogic:
    plan = plan_of(RULES)
    logic = ShardLogic(plan, None)
    logic.on_batch([event_batch([
        {"event": "Ping", "userId": "a", "timestamp": T0, "messageId": "m1"},
        {"event": "Ping", "userId": "b", "timestamp": T0 + 1_000, "messageId": "m2"},
        {"event": "Ping", "userId": "a", "timestamp": T0 + 2_000, "messageId": "m3"},
    ], plan, watermarks=[NEVER, T0, T0 + 1_000])])
    return logic


def test_a_shard_resumes_from_its_packed_snapshot_and_from_an_unpacked_one_alike():
    logic = _shard_with_events()
    packed = logic.snapshot()
    assert packed[0] == "halflife-lz4/2"
    plain = logic.state.snapshot()
    from_packed, from_plain = ShardLogic(logic.state.plan, packed), ShardLogic(logic.state.plan, plain)
    for resumed in (from_packed, from_plain):
        assert resumed.state.index.ids() == ["a", "b"]
        for name, arr in logic.state.columns.arrays.items():
            assert np.array_equal(resumed.state.columns.arrays[name][:2], arr[:2]), name
    # Both fire the same timers: `gone` for b at T0 + 1 s + 1 h, for a at T0 + 2 s + 1 h.
    later = event_batch([{"event": "Ping", "userId": "c", "timestamp": T0 + 7_300_000, "messageId": "m4"}],
                        logic.state.plan, watermarks=[T0 + 7_300_000])
    fired = []
    for resumed in (from_packed, from_plain):
        out, _ = resumed.on_batch([later])
        records = [orjson.loads(r.line) for r in each_record(out) if isinstance(r, TriggerOut)]
        fired.append(sorted((r["rule"], r["contact"], r["at"]) for r in records))
    assert fired[0] == fired[1] == [("gone", "a", "2026-11-23T15:00:02.000Z"), ("gone", "b", "2026-11-23T15:00:01.000Z")]


def test_a_packed_snapshot_keeps_the_state_it_was_taken_at_while_the_shard_moves_on():
    logic = _shard_with_events()
    packed = logic.snapshot()  # packed straight from views of the live arrays, not from copies
    before = logic.state.snapshot()
    logic.on_batch([event_batch([{"event": "Ping", "userId": "a", "timestamp": T0 + 3_000, "messageId": "m5"},
                                 {"event": "Ping", "userId": "d", "timestamp": T0 + 4_000, "messageId": "m6"}],
                                logic.state.plan, watermarks=[T0 + 2_000, T0 + 3_000])])
    assert len(logic.state.index) == 3
    restored = unpack(packed)
    assert restored["index"]["id_data"].tobytes() == before["index"]["id_data"].tobytes() == b"ab"
    assert restored["index"]["id_offsets"].tolist() == before["index"]["id_offsets"].tolist() == [0, 1, 2]
    for name, arr in before["columns"].items():
        assert np.array_equal(restored["columns"][name], arr), name
    assert np.array_equal(restored["timers"]["arena"], before["timers"]["arena"])


def test_the_dedupe_rings_resume_from_a_reader_state_written_before_packing():
    part = ListPartition([[ev("a", T0, "m1")], [ev("a", T0, "m1"), ev("a", T0, "m2")]])
    part.next_batch()
    snap = part.snapshot()
    assert snap.dedupe[0] == "halflife-lz4/2"
    unpacked = dataclasses.replace(snap, dedupe=unpack(snap.dedupe))
    for state in (snap, unpacked):
        resumed = ListPartition(part.batches, state=pickle.loads(pickle.dumps(state)))
        [batch] = batches_of(resumed.next_batch())
        assert [batch.summary(i)["messageId"] for i in range(len(batch))] == ["m2"]
        assert (resumed.state.processed, resumed.state.deduplicated) == (2, 1)


def test_every_snapshot_is_timed_under_its_step():
    def observed(step: str) -> tuple[float, float]:
        labels = {"step": step}
        return (metrics.REGISTRY.get_sample_value("halflife_snapshot_duration_seconds_count", labels) or 0.0,
                metrics.REGISTRY.get_sample_value("halflife_snapshot_duration_seconds_sum", labels) or 0.0)

    before = {step: observed(step) for step in ("read", "rules")}
    shard = _shard_with_events()
    shard.snapshot()
    shard.snapshot()
    part = ListPartition([[ev("a", T0, "m1")]])
    part.next_batch()
    part.snapshot()
    after = {step: observed(step) for step in ("read", "rules")}
    assert after["rules"][0] - before["rules"][0] == 2
    assert after["read"][0] - before["read"][0] == 1
    assert after["rules"][1] > before["rules"][1] and after["read"][1] > before["read"][1]


def test_a_packed_snapshot_is_data_only():
    with pytest.raises(TypeError, match="numeric arrays only"):
        pack({"ids": np.array(["u-1"], dtype=object)})
    with pytest.raises(TypeError, match="cannot hold"):
        pack({"when": object()})
    fmt, outline, parts = pack({"a": np.arange(3)})
    forged = outline.replace(b'"<i8"', b'"|O"')
    with pytest.raises(ValueError, match="non-numeric array type"):
        unpack((fmt, forged, parts))
    assert unpack((fmt, outline, parts))["a"].tolist() == [0, 1, 2]
    # Tuples, lists, None and numpy scalars keep their shape.
    assert unpack(pack({"t": (1, "x"), "l": [None, 2.5], "n": np.int64(7)})) == {"t": (1, "x"), "l": [None, 2.5], "n": 7}
