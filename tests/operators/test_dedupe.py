"""operators/dedupe.py: the per-contact ring of the last 16 accepted message ids (SPEC §2).

De-duplication runs in the source partition (`Deduplicator`), before the watermark is computed:
a duplicate is counted and has no other effect, it moves no clock and no watermark."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from engine.testing import run_rules
from operators.contacts import Columns
from operators.dedupe import NO_ID, RING, Deduplicator, MessageRing, message_digest

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
MIN = 60_000
HOUR = 3_600_000


def _ring(capacity: int = 4) -> MessageRing:
    return MessageRing(Columns(capacity))


def test_ring_holds_sixteen():
    assert RING == 16


def test_the_last_sixteen_accepted_ids_are_duplicates_the_seventeenth_oldest_is_not():
    ring = _ring()
    ids = [message_digest(f"m-{i}") for i in range(17)]
    for d in ids[:16]:
        assert not ring.seen(0, d)
        ring.accept(0, d)
    assert all(ring.seen(0, d) for d in ids[:16])
    ring.accept(0, ids[16])
    # m-0 is now the 17th-oldest accepted id: no longer a duplicate; m-1..m-16 still are.
    assert not ring.seen(0, ids[0])
    assert all(ring.seen(0, d) for d in ids[1:17])


def test_events_without_an_id_take_a_place_in_the_ring():
    ring = _ring()
    m0 = message_digest("m-0")
    ring.accept(0, m0)
    for _ in range(15):
        ring.accept(0, NO_ID)
    assert ring.seen(0, m0)  # m-0 plus 15 id-less events: 16 accepted events
    ring.accept(0, NO_ID)
    assert not ring.seen(0, m0)  # the 17th accepted event pushes m-0 out


def test_a_missing_id_is_never_a_duplicate():
    ring = _ring()
    assert not ring.seen(0, NO_ID)  # the empty ring is full of NO_ID
    ring.accept(0, NO_ID)
    assert not ring.seen(0, NO_ID)


def test_contacts_have_separate_rings():
    ring = _ring()
    d = message_digest("m-1")
    ring.accept(0, d)
    assert ring.seen(0, d)
    assert not ring.seen(1, d)


def test_message_digest():
    assert message_digest(None) == NO_ID == 0
    d = message_digest("m-123")
    assert d == message_digest("m-123")  # stable across calls
    assert 0 < d < 2**63  # non-zero, fits the int64 ring
    assert message_digest("") != 0
    ids = [f"{7:x}-{i:09d}" for i in range(10_000)]
    digests = {message_digest(m) for m in ids}
    assert len(digests) == 10_000 and 0 not in digests
    # Lone surrogates (possible in JSON strings) do not raise.
    assert message_digest("\ud800") > 0


def test_message_digest_is_stable_across_processes():
    # Unlike Python's salted str hash, the digest must be the same in another process (resume).
    code = "from operators.dedupe import message_digest; print(message_digest('m-123'), hash('m-123'))"
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              check=True)
        outs.append(proc.stdout.split())
    assert outs[0][1] != outs[1][1]  # the salted hash does differ between the processes ...
    assert outs[0][0] == outs[1][0] == str(message_digest("m-123"))  # ... the digest does not


# -- Deduplicator: the rings of a source partition -----------------------------------------------


def test_deduplicator_keeps_events_whose_id_is_new_for_their_contact():
    dedupe = Deduplicator()
    kept = dedupe.accepted(["u", "v", "u", "v", "v", "u"], ["m-1", "m-1", "m-1", None, None, "m-2"])
    # Only the third event repeats an id of its own contact; the same id on another contact is not
    # a duplicate, and events without an id never are.
    assert kept == [0, 1, 3, 4, 5]
    # The rings persist between calls: all three ids are known now, per contact.
    assert dedupe.accepted(["v", "u", "u", "v", "w"], ["m-1", "m-2", "m-3", "m-2", "m-1"]) == [2, 3, 4]
    assert dedupe.index.ids == ["u", "v", "w"]


def test_a_duplicate_takes_no_place_in_the_ring():
    ids = [f"m-{i}" for i in range(16)]
    # m-0 again: a duplicate, dropped; m-16: the 17th accepted event pushes m-0 out; so m-0 after it
    # is not a duplicate. Had the duplicate taken a ring place (as a second m-0, pushing out the
    # first), m-0 would still be in the ring and the last event would be a second duplicate.
    mids = [*ids, "m-0", "m-16", "m-0"]
    assert Deduplicator().accepted(["u"] * len(mids), mids) == [*range(16), 17, 18]
    # The same one event at a time.
    dedupe = Deduplicator()
    assert [i for i, m in enumerate(mids) if dedupe.accepted(["u"], [m]) == [0]] == [*range(16), 17, 18]


def test_events_without_an_id_count_as_accepted_events():
    dedupe = Deduplicator()
    # m-0 and 15 id-less events: 16 accepted events, m-0 is still among them.
    assert dedupe.accepted(["u"] * 17, ["m-0", *[None] * 15, "m-0"]) == list(range(16))
    # One more id-less event is the 17th accepted: m-0 leaves the ring.
    assert dedupe.accepted(["u", "u", "u"], [None, "m-0", "m-0"]) == [0, 1]


def test_deduplicator_snapshot_restores_every_ring_and_is_a_copy():
    n = 1500  # more contacts than the initial column capacity (1024)
    dedupe = Deduplicator()
    contacts = [f"c-{i}" for i in range(n)]
    assert dedupe.accepted(contacts, [f"m-{i}" for i in range(n)]) == list(range(n))
    snap = dedupe.snapshot()
    # Later processing on the live one: 16 new ids per contact push every m-i out.
    for k in range(16):
        dedupe.accepted(contacts, [f"x-{k}"] * n)
    assert dedupe.accepted(contacts, [f"m-{i}" for i in range(n)]) == list(range(n))
    # The restored one has the rings as they were at the snapshot.
    restored = Deduplicator.restore(pickle.loads(pickle.dumps(snap)))
    assert restored.index.ids == contacts
    assert restored.accepted(contacts, [f"m-{i}" for i in range(n)]) == []
    assert restored.accepted(contacts, [f"m-{i + 1}" for i in range(n)]) == list(range(n))
    # ... with the ring position too: 14 more ids leave m-i as the oldest of 16 (still a duplicate);
    # the 15th pushes it out.
    for k in range(14):
        restored.accepted(["c-7"], [f"y-{k}"])
    assert restored.accepted(["c-7"], ["m-7"]) == []
    restored.accepted(["c-7"], ["y-14"])
    assert restored.accepted(["c-7"], ["m-7"]) == [0]
    # A new contact gets a new slot after the restored ones.
    assert restored.accepted(["new"], ["m-0"]) == [0]
    assert restored.index.slot_of["new"] == n


# -- through the dataflow (de-duplication happens in the source) ------------------------------------

COUNT_RULES = """\
version: 1
triggers:
  eighteen:
    when: {count: {event: Ping}, within: 1d, at_least: 18}
    actions: [{emit: out}]
"""


def _ping(contact: str, mid: str | None, t: int) -> dict:
    e = {"type": "track", "event": "Ping", "userId": contact, "timestamp": t}
    if mid is not None:
        e["messageId"] = mid
    return e


@pytest.mark.parametrize("shards", [1, 8])
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_dedupe_counts_through_the_dataflow(batch_size, shards):
    events: list = [_ping("u", f"m-{i}", T0 + i) for i in range(16)]
    events += [_ping("u", "m-0", T0 + 16), _ping("u", "m-16", T0 + 17), _ping("u", "m-0", T0 + 18)]
    # Another contact with u's id, and id-less events: none is a duplicate.
    events += [_ping("v", "m-1", T0), _ping("v", None, T0), _ping("v", None, T0)]
    # Validation comes first: an invalid event's id is not remembered.
    events += [{"event": "Ping", "userId": "w", "timestamp": "not a time", "messageId": "m-w"},
               _ping("w", "m-w", T0)]
    result = run_rules(COUNT_RULES, events, batch_size=batch_size, shards=shards)
    s = result.summary
    assert (s["events_in"], s["processed"], s["deduplicated"], s["dead_lettered"]) == (24, 22, 1, 1)
    # u's 18th accepted Ping is the last event (T0 + 18 ms): the duplicate neither counted nor took
    # a ring place (then the last m-0 would have been a duplicate and the count would stop at 17).
    assert result.keys == [("eighteen", "u", "2026-11-23T14:00:00.018Z", "out")]
    assert s["max_event_time"] == T0 + 18


CART_RULES = """\
version: 1
lateness: 0s
triggers:
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 30m}
    actions: [{emit: email}]
"""


def _track(contact: str, name: str, t: int, mid: str) -> dict:
    return {"type": "track", "event": name, "userId": contact, "timestamp": t, "messageId": mid}


def _late_duplicate_input(dup_id: str) -> list[dict]:
    return [
        _track("u-a", "Product Added", T0, "a-1"),  # d = T0 + 30m
        _track("u-b", "Product Added", T0, "b-1"),  # d = T0 + 30m
        _track("u-b", "Ping", T0 + MIN, "m1"),
        _track("u-c", "Product Added", T0 + 5 * MIN, "c-1"),  # d = T0 + 35m
        _track("u-b", "Ping", T0 + 2 * HOUR, dup_id),  # "m1": a retry stamped 2 h later
        _track("u-a", "Order Completed", T0 + 10 * MIN, "a-2"),
        _track("u-b", "Order Completed", T0 + 10 * MIN, "b-2"),
    ]


@pytest.mark.parametrize("shards", [1, 8])
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_a_duplicate_with_a_later_time_moves_no_clock_and_no_watermark(batch_size, shards):
    result = run_rules(CART_RULES, _late_duplicate_input("m1"), batch_size=batch_size, shards=shards)
    # The watermark stays at T0 + 5m when the Orders arrive (not late, they cancel u-a's and u-b's
    # timers); u-b's clock stays at T0 + 1m (its Order at T0 + 10m <= d cancels; the dup fired nothing).
    assert result.keys == []
    s = result.summary
    assert (s["events_in"], s["processed"], s["deduplicated"], s["late"]) == (7, 6, 1, 0)
    # The largest accepted time is T0 + 10m, not the duplicate's T0 + 2h: u-c's deadline T0 + 35m lies
    # between the two and stays pending.
    assert s["max_event_time"] == T0 + 10 * MIN
    assert (s["pending_timers"], s["triggers"], s["contacts"]) == (1, {}, 3)


@pytest.mark.parametrize("shards", [1, 8])
@pytest.mark.parametrize("batch_size", [1, 1000])
def test_the_same_input_without_the_duplicate_fires_all_three(batch_size, shards):
    # Control: with a fresh id the 2 h event is accepted. It fires u-b's timer (path (a)); the watermark
    # T0 + 2h fires u-a's before its (now late) Order and u-c's.
    result = run_rules(CART_RULES, _late_duplicate_input("m2"), batch_size=batch_size, shards=shards)
    assert result.keys == [
        ("cart_abandoned", "u-a", "2026-11-23T14:30:00.000Z", "email"),
        ("cart_abandoned", "u-b", "2026-11-23T14:30:00.000Z", "email"),
        ("cart_abandoned", "u-c", "2026-11-23T14:35:00.000Z", "email"),
    ]
    s = result.summary
    assert (s["events_in"], s["processed"], s["deduplicated"], s["late"]) == (7, 7, 0, 2)
    assert (s["max_event_time"], s["pending_timers"], s["triggers"]) == (T0 + 2 * HOUR, 0, {"cart_abandoned": 3})
