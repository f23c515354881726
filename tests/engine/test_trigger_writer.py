"""The compiled trigger writer against `RecordWriter`, the per-record Python writer: the same bytes.

Contacts with every character JSON must escape and ids long enough to take several BLAKE2b blocks,
score values orjson writes in every form (exponents, -0.0, 17 significant digits), triggers with
no, one and several channels, events from the batch and from the timers' arena.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.blake2 import blake2b_128_hex
from engine.blobs import Blobs
from engine.records import RecordWriter, TriggerOut, TriggerRecords, each_record
from engine.summaries import pack, summary_json
from engine.testing import arena_record, kept_record
from engine.times import format_time
from engine.trigger_writer import TriggerWriter

EMITTED = b"2026-12-07T10:00:00.000Z"
TRIGGERS = [("hot_lead", ("sales_alerts",)), ("quiet", ()), ("both", ("email", "push")),
            ('w\u00e9ird "rule"\\', ("c\u00e9", "sales_alerts"))]


@pytest.mark.parametrize("length", [0, 1, 7, 8, 63, 111, 127, 128, 129, 200, 255, 256, 257, 1000])
def test_blake2b_is_hashlibs(length: int) -> None:
    rng = random.Random(length)
    data = bytes(rng.getrandbits(8) for _ in range(length))
    out = np.zeros(40, np.uint8)
    end = blake2b_128_hex(np.frombuffer(b"ab" + data, np.uint8), 2, length, np.zeros(40, np.uint64), out, 5)
    assert end == 37
    assert out[5:37].tobytes().decode() == hashlib.blake2b(data, digest_size=16).hexdigest()


contacts = st.one_of(
    st.sampled_from(["u-1", "anon-429857", "", "a\"b", "back\\slash", "tab\tnew\nline\r", "\x00\x01\x1f\x7f",
                     "caf\u00e9", "\U0001f600", "x" * 300, "\u2028"]),
    st.text(max_size=40),
)
scores = st.one_of(st.sampled_from([0.0, -0.0, 1e-7, 1e22, 1.5, 0.1 + 0.2, 12.0, 5e-324, 1.7976931348623157e308,
                                    123456789012345680.0, -3.25]),
                   st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(TRIGGERS) - 1), contacts,
                          st.integers(0, 253_402_300_799_999), st.booleans(), st.booleans(),
                          st.lists(scores, min_size=2, max_size=2)), max_size=12),
       st.integers(0, 2))
def test_records_are_record_writers_bytes(firings: list[tuple], n_scores: int) -> None:
    score_names = ["engagement", "intent \"x\""][:n_scores]
    writer = TriggerWriter(TRIGGERS, score_names)
    ids = sorted({c for _, c, *_ in firings})
    index = Blobs.of(c.encode("utf-8", "surrogatepass") for c in ids)
    batch_events = [pack({"messageId": f"m-{i}", "type": "page", "properties": {"i": i}}, "Page Viewed", 1000 + i)
                    for i in range(len(firings))]
    kept_events = [pack({"messageId": f"k-{i}", "event": "E\u00e9 long name", "traits": {"n": "\u00e9"},
                         "properties": {"sku": f"p-{i % 2}"}}, "E\u00e9 long name", 2000 + i) for i in range(len(firings))]
    # Timers keep them in the kept form; the odd ones with their properties shared (record 2 of `shared`, after
    # a record of 16 bytes) and every third with its name shared (record 5).
    shared = np.frombuffer(arena_record(b"0123456789ab") + arena_record(b'{"sku":"p-1"}')
                           + arena_record('"E\u00e9 long name"'.encode()), np.uint8)
    kept = Blobs.of([kept_record(e, 5 if i % 3 == 0 else None, 2 if i % 2 else None) for i, e in enumerate(kept_events)])
    batch = Blobs.of(batch_events)
    n = len(firings)
    values = np.array([f[5] for f in firings], np.float64).reshape(n, 2)
    source = np.array([f[4] for f in firings], np.uint8)
    blobs = [kept if s else batch for s in source.tolist()]
    records = writer.write(
        np.array([f[0] for f in firings], np.int32), np.array([ids.index(f[1]) for f in firings], np.int32),
        np.array([f[2] for f in firings], np.int64), np.array([f[3] for f in firings], np.uint8), source,
        np.array([b.starts[i] for i, b in enumerate(blobs)], np.int64),
        np.array([len(kept_events[i] if s else batch_events[i]) for i, s in enumerate(source.tolist())], np.int64),
        values, batch.data, kept.data, shared, index.data, np.concatenate([[0], index.ends]), EMITTED)

    expected: list[TriggerOut] = []
    for i, (t, contact, at, by_timer, from_kept, _) in enumerate(firings):
        name, channels = TRIGGERS[t]
        event = summary_json(kept_events[i] if from_kept else batch_events[i])
        score_values = dict(zip(score_names, values[i].tolist()[:n_scores], strict=True))
        expected += RecordWriter(name, channels, ()).triggers(contact, at, format_time(at).encode(), score_values,
                                                              event, EMITTED, by_timer)
    assert list(records) == expected
    assert records.data == b"".join(o.line + b"\n" for o in expected)
    assert [records.line(i) for i in range(len(records))] == [o.line for o in expected]


def test_columns_of_records_written_one_by_one_concatenate() -> None:
    one = RecordWriter("a", ("x", "y"), ()).triggers("u-1", 5, format_time(5).encode(), {}, b"{}", EMITTED)
    two = RecordWriter("b", ("y",), ()).triggers("u-2", 7, format_time(7).encode(), {}, b"{}", EMITTED, True)
    joined = TriggerRecords.concat([TriggerRecords.of(one), TriggerRecords.of(two)])
    assert list(each_record([joined])) == one + two
    assert joined.at_ms.tolist() == [5, 5, 7] and joined.by_timer.tolist() == [False, False, True]
    assert [joined.rule_names[r] for r in joined.rule] == ["a", "a", "b"]
    assert [joined.channel_names[c] for c in joined.channel] == ["x", "y", "y"]
