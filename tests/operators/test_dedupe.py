"""operators/dedupe.py: the per-contact ring of the last 16 accepted message ids (SPEC §2).

De-duplication runs in the source partition (`Deduplicator`), before the watermark is computed:
a duplicate is counted and has no other effect, it moves no clock and no watermark."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.decode import EventBatch
from engine.hashing import NO_DIGEST, digest_of, digests
from engine.testing import event_batch, run_rules
from operators.dedupe import RING, Deduplicator

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
MIN = 60_000
HOUR = 3_600_000


def _batch(contacts: list[str], message_ids: list[str | None]) -> EventBatch:
    """One event per (contact, message id) through the engine's decoder; None: no messageId."""
    events = []
    for c, m in zip(contacts, message_ids, strict=True):
        e = {"event": "E", "userId": c, "timestamp": T0}
        if m is not None:
            e["messageId"] = m
        events.append(e)
    return event_batch(events)


def _kept(dedupe: Deduplicator, contacts: list[str], message_ids: list[str | None]) -> list[int]:
    """Indices of the events `accepted` keeps."""
    keep = dedupe.accepted(_batch(contacts, message_ids))
    assert keep.dtype == np.bool_ and len(keep) == len(contacts)
    return np.flatnonzero(keep).tolist()


def _one(dedupe: Deduplicator, contact: str, message_id: str | None) -> bool:
    """Accept one event on its own; True when it is not a duplicate."""
    return _kept(dedupe, [contact], [message_id]) == [0]


def test_ring_holds_sixteen():
    assert RING == 16


def test_the_last_sixteen_accepted_ids_are_duplicates_the_seventeenth_oldest_is_not():
    dedupe = Deduplicator()
    ids = [f"m-{i}" for i in range(17)]
    assert all(_one(dedupe, "u", m) for m in ids[:16])
    # All sixteen are duplicates now (a duplicate is not accepted, so checking them changes nothing).
    assert _kept(dedupe, ["u"] * 16, ids[:16]) == []
    assert _one(dedupe, "u", ids[16])
    # m-0 is now the 17th-oldest accepted id: no longer a duplicate; m-1..m-16 still are. (m-0 last:
    # accepting it pushes m-1 out.)
    assert _kept(dedupe, ["u"] * 17, [*ids[1:17], ids[0]]) == [16]


def test_events_without_an_id_take_a_place_in_the_ring():
    dedupe = Deduplicator()
    assert _one(dedupe, "u", "m-0")
    assert all(_one(dedupe, "u", None) for _ in range(15))
    assert not _one(dedupe, "u", "m-0")  # m-0 plus 15 id-less events: 16 accepted events
    assert _one(dedupe, "u", None)
    assert _one(dedupe, "u", "m-0")  # the 17th accepted event pushed m-0 out


def test_a_missing_id_is_never_a_duplicate():
    dedupe = Deduplicator()
    # A fresh ring is full of "no id" (NO_DIGEST): an id-less event must not match it, nor earlier
    # id-less events, however many.
    assert _kept(dedupe, ["u"] * 40, [None] * 40) == list(range(40))
    assert _one(dedupe, "u", None)
    assert _one(dedupe, "fresh", None)
    # An explicit null is no id either.
    line = b'{"event":"E","userId":"u","timestamp":%d,"messageId":null}' % T0
    batch = event_batch([line, line])
    assert batch.message_digests.tolist() == [NO_DIGEST, NO_DIGEST]
    assert dedupe.accepted(batch).tolist() == [True, True]
    assert Deduplicator().accepted(event_batch([])).tolist() == []


def test_an_empty_message_id_is_an_id():
    dedupe = Deduplicator()
    # "" is present, so it is the event's identity (unlike a missing id).
    assert _kept(dedupe, ["u", "u", "u"], ["", "", None]) == [0, 2]


def test_message_id_equality_is_on_the_decoded_string():
    dedupe = Deduplicator()
    # The same id written with a JSON escape (decoded by the exact path) and plainly (the fast path).
    lines = [b'{"event":"E","userId":"u","timestamp":%d,"messageId":"m\\u002d1"}' % T0,
             b'{"event":"E","userId":"u","timestamp":%d,"messageId":"m-1"}' % T0,
             b'{"event":"E","userId":"u","timestamp":%d,"messageId":"m-\\u00fc"}' % T0,
             '{"event":"E","userId":"u","timestamp":%d,"messageId":"m-ü"}'.encode() % T0]
    batch = event_batch(lines)
    assert batch.message_digests.tolist() == digests(["m-1", "m-1", "m-ü", "m-ü"]).tolist()
    assert dedupe.accepted(batch).tolist() == [True, False, True, False]


def test_contacts_have_separate_rings():
    dedupe = Deduplicator()
    assert _one(dedupe, "u", "m-1")
    assert not _one(dedupe, "u", "m-1")
    assert _one(dedupe, "v", "m-1")
    # v's 16 new ids push m-1 out of v's ring only.
    assert _kept(dedupe, ["v"] * 16, [f"x-{i}" for i in range(16)]) == list(range(16))
    assert _kept(dedupe, ["u", "v"], ["m-1", "m-1"]) == [1]


def test_message_digest():
    assert digest_of(None) == NO_DIGEST == 0
    d = digest_of("m-123")
    assert d == digest_of("m-123")  # stable across calls
    assert 0 < d < 2**63  # non-zero, fits the int64 ring
    assert digest_of("") != 0
    ids = [f"{7:x}-{i:09d}" for i in range(10_000)]
    all_digests = set(digests(ids).tolist())
    assert len(all_digests) == 10_000 and 0 not in all_digests
    # Lone surrogates (possible in JSON strings) do not raise.
    assert digest_of("\ud800") > 0
    # The decoder's message digests are these digests.
    batch = _batch(["u", "u", "v"], ["m-123", None, ""])
    assert batch.message_digests.tolist() == [d, NO_DIGEST, digest_of("")]


def test_message_digest_is_stable_across_processes():
    # Unlike Python's salted str hash, the digest must be the same in another process (resume).
    code = "from engine.hashing import digest_of; print(digest_of('m-123'), hash('m-123'))"
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                              check=True)
        outs.append(proc.stdout.split())
    assert outs[0][1] != outs[1][1]  # the salted hash does differ between the processes ...
    assert outs[0][0] == outs[1][0] == str(digest_of("m-123"))  # ... the digest does not


# -- Deduplicator: the rings of a source partition -----------------------------------------------


def test_deduplicator_keeps_events_whose_id_is_new_for_their_contact():
    dedupe = Deduplicator()
    kept = _kept(dedupe, ["u", "v", "u", "v", "v", "u"], ["m-1", "m-1", "m-1", None, None, "m-2"])
    # Only the third event repeats an id of its own contact; the same id on another contact is not
    # a duplicate, and events without an id never are.
    assert kept == [0, 1, 3, 4, 5]
    # The rings persist between calls: all three ids are known now, per contact.
    assert _kept(dedupe, ["v", "u", "u", "v", "w"], ["m-1", "m-2", "m-3", "m-2", "m-1"]) == [2, 3, 4]
    assert dedupe.index.ids() == ["u", "v", "w"]


def test_a_duplicate_takes_no_place_in_the_ring():
    ids = [f"m-{i}" for i in range(16)]
    # m-0 again: a duplicate, dropped; m-16: the 17th accepted event pushes m-0 out; so m-0 after it
    # is not a duplicate. Had the duplicate taken a ring place (as a second m-0, pushing out the
    # first), m-0 would still be in the ring and the last event would be a second duplicate.
    mids = [*ids, "m-0", "m-16", "m-0"]
    assert _kept(Deduplicator(), ["u"] * len(mids), mids) == [*range(16), 17, 18]
    # The same one event at a time.
    dedupe = Deduplicator()
    assert [i for i, m in enumerate(mids) if _one(dedupe, "u", m)] == [*range(16), 17, 18]


def test_events_without_an_id_count_as_accepted_events():
    dedupe = Deduplicator()
    # m-0 and 15 id-less events: 16 accepted events, m-0 is still among them.
    assert _kept(dedupe, ["u"] * 17, ["m-0", *[None] * 15, "m-0"]) == list(range(16))
    # One more id-less event is the 17th accepted: m-0 leaves the ring.
    assert _kept(dedupe, ["u", "u", "u"], [None, "m-0", "m-0"]) == [0, 1]


def test_interleaved_contacts_in_one_batch_are_decided_in_order():
    # Three contacts' events interleaved in one batch decide exactly as one event at a time.
    rng = np.random.default_rng(20261123)
    contacts = [f"c-{int(c)}" for c in rng.integers(0, 3, 600)]
    mids: list[str | None] = [None if r == 0 else f"m-{int(r)}" for r in rng.integers(0, 30, 600)]
    one_by_one = Deduplicator()
    expected = [i for i, (c, m) in enumerate(zip(contacts, mids, strict=True)) if _one(one_by_one, c, m)]
    # Reference: the SPEC's rule written out (the ids of the contact's last 16 accepted events).
    accepted: dict[str, list[str | None]] = {}
    reference = []
    for i, (c, m) in enumerate(zip(contacts, mids, strict=True)):
        ring = accepted.setdefault(c, [])
        if m is not None and m in ring[-16:]:
            continue
        ring.append(m)
        reference.append(i)
    assert expected == reference
    assert 100 < len(reference) < 550  # both kinds of decision happen many times
    assert _kept(Deduplicator(), contacts, mids) == reference


def test_deduplicator_snapshot_restores_every_ring_and_is_a_copy():
    n = 1500  # more contacts than the initial column capacity (1024)
    dedupe = Deduplicator()
    contacts = [f"c-{i}" for i in range(n)]
    assert _kept(dedupe, contacts, [f"m-{i}" for i in range(n)]) == list(range(n))
    snap = dedupe.snapshot()
    # Later processing on the live one: 16 new ids per contact push every m-i out.
    for k in range(16):
        _kept(dedupe, contacts, [f"x-{k}"] * n)
    assert _kept(dedupe, contacts, [f"m-{i}" for i in range(n)]) == list(range(n))
    # The restored one has the rings as they were at the snapshot.
    restored = Deduplicator.restore(pickle.loads(pickle.dumps(snap)))
    assert restored.index.ids() == contacts
    assert _kept(restored, contacts, [f"m-{i}" for i in range(n)]) == []
    assert _kept(restored, contacts, [f"m-{i + 1}" for i in range(n)]) == list(range(n))
    # ... with the ring position too: 14 more ids leave m-i as the oldest of 16 (still a duplicate);
    # the 15th pushes it out.
    for k in range(14):
        _one(restored, "c-7", f"y-{k}")
    assert not _one(restored, "c-7", "m-7")
    _one(restored, "c-7", "y-14")
    assert _one(restored, "c-7", "m-7")
    # A new contact gets a new slot after the restored ones.
    assert _one(restored, "new", "m-0")
    assert len(restored.index) == n + 1 and restored.index.id(n) == "new"


def test_a_restored_deduplicator_continues_identically():
    # Snapshot -> pickle -> restore at a split point, then the same events: the same decisions as
    # the uninterrupted one, for every later event.
    rng = np.random.default_rng(7)
    contacts = [f"c-{int(c)}" for c in rng.integers(0, 50, 4000)]
    mids: list[str | None] = [None if r == 0 else f"m-{int(r)}" for r in rng.integers(0, 40, 4000)]
    live = Deduplicator()
    first = _kept(live, contacts[:2000], mids[:2000])
    restored = Deduplicator.restore(pickle.loads(pickle.dumps(live.snapshot())))
    expected = _kept(live, contacts[2000:], mids[2000:])
    assert _kept(restored, contacts[2000:], mids[2000:]) == expected
    assert 0 < len(expected) < 2000 and 0 < len(first) < 2000


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


def test_a_duplicate_of_an_escaped_id_through_the_dataflow():
    # The retry spells the id with a JSON escape: still the same messageId, so still a duplicate.
    lines = [orjson.dumps(_ping("u", "m-1", T0)),
             b'{"type":"track","event":"Ping","userId":"u","timestamp":%d,"messageId":"m\\u002d1"}' % (T0 + 1)]
    s = run_rules(COUNT_RULES, lines, batch_size=1000, shards=1).summary
    assert (s["events_in"], s["processed"], s["deduplicated"], s["max_event_time"]) == (2, 1, 1, T0)
