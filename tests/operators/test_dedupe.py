"""operators/dedupe.py: the per-contact ring of the last 16 accepted message ids (SPEC §2).

De-duplication runs in the source partition (`Deduplicator`), before the watermark is computed:
a duplicate is counted and has no other effect, it moves no clock and no watermark."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections import deque
from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.decode import EventBatch
from engine.hashing import NO_DIGEST, digest_of, digests
from engine.testing import event_batch, run_rules
from operators.contacts import ContactIndex
from operators.dedupe import RING, SMALL, Deduplicator

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
    assert dedupe.index.snapshot()["hashes"].tolist() == digests(["u", "v", "w"]).tolist()


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
    assert restored.index.snapshot()["hashes"].tolist() == digests(contacts).tolist()
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
    assert len(restored.index) == n + 1 and restored.index.snapshot()["hashes"][n] == digest_of("new")


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


# -- the adaptive ring: one digest inline, then a short row of 4, then a ring of 16 -------------------


def _slot(dedupe: Deduplicator, contact: str) -> int:
    return dedupe.index.snapshot()["hashes"].tolist().index(digest_of(contact))


def _state_of(dedupe: Deduplicator, contact: str) -> tuple[int, int, str, list[int] | None]:
    """A contact's inline digest, its fill, where its other digests are ("inline", "short" or "ring")
    and that row (None: inline)."""
    s = _slot(dedupe, contact)
    a = dedupe.columns.arrays
    r = int(a["dedupe_ring"][s])
    inline, fill = int(a["dedupe_inline"][s]), int(a["dedupe_fill"][s])
    if r == -1:
        return inline, fill, "inline", None
    if r < -1:
        return inline, fill, "short", dedupe.small[-2 - r].tolist()
    return inline, fill, "ring", dedupe.pool[r].tolist()


def test_a_contact_moves_inline_then_to_a_short_row_then_to_a_ring():
    assert SMALL == 4
    dedupe = Deduplicator()
    m = digests([f"m{i}" for i in range(7)]).tolist()
    assert _kept(dedupe, ["u", "u"], ["m0", "m0"]) == [0]
    assert _state_of(dedupe, "u") == (m[0], 1, "inline", None)
    assert dedupe.pool_used == 0 and dedupe.small_rows_held() == 0
    # The 2nd accepted event: the inline digest and the 2nd go to a short row.
    assert _kept(dedupe, ["u", "u", "u"], ["m1", "m0", "m1"]) == [0]
    assert _state_of(dedupe, "u") == (NO_DIGEST, 2, "short", [m[0], m[1], NO_DIGEST, NO_DIGEST])
    assert dedupe.small_rows_held() == 1
    assert _kept(dedupe, ["u", "u"], ["m2", "m3"]) == [0, 1]
    assert _state_of(dedupe, "u") == (NO_DIGEST, 4, "short", m[:4])
    # The 5th: the short row's 4 digests in order, then the 5th, in a ring; the short row is freed.
    assert _kept(dedupe, ["u", "u"], ["m3", "m4"]) == [1]
    assert _state_of(dedupe, "u") == (NO_DIGEST, 5, "ring", [*m[:5], *[NO_DIGEST] * 11])
    assert dedupe.pool_used == 1 and dedupe.small_rows_held() == 0
    assert _kept(dedupe, ["u"], ["m5"]) == [0]
    assert _state_of(dedupe, "u")[1:] == (6, "ring", [*m[:6], *[NO_DIGEST] * 10])
    # A freed short row is the next one taken, cleared of what it held.
    assert _kept(dedupe, ["v", "v"], ["m6", "m0"]) == [0, 1]
    assert _state_of(dedupe, "v") == (NO_DIGEST, 2, "short", [m[6], m[0], NO_DIGEST, NO_DIGEST])
    assert dedupe.meta.tolist()[1] == 1  # still one short row in the pool: u's, now v's
    assert _kept(dedupe, ["v", "v"], [None, "m6"]) == [0]
    assert _state_of(dedupe, "v") == (NO_DIGEST, 3, "short", [m[6], m[0], NO_DIGEST, NO_DIGEST])


# Hand-computed: m0..m3 fill the inline ring; m4 (the 5th) moves u to a ring; n0..n10 make 16 accepted
# events, so m0 (idx 16) is still a duplicate; n11 (17th accepted) pushes m0 out: m0 (18) is new, and
# accepting it pushes m1 out: m1 (19) is new, pushing m2 out. The last 16 are then m3, m4, n0..n11, m0,
# m1: m3 (20) is a duplicate, m2 (21) is not.
CROSSING = [*(f"m{i}" for i in range(5)), *(f"n{i}" for i in range(11)), "m0", "n11", "m0", "m1", "m3", "m2"]
CROSSING_KEPT = [*range(16), 17, 18, 19, 21]
# m0..m20 all new (21 accepted: the last 16 are m5..m20); m5 exactly 16 back is a duplicate (21); m4, 17
# back, is not (22) and pushes m5 out, so m5 is not either (23), pushing m6 out (24 is new); m20 (25) and
# m4 (26) are duplicates.
RESEND = [*(f"m{i}" for i in range(21)), "m5", "m4", "m5", "m6", "m20", "m4"]
RESEND_KEPT = [*range(21), 22, 23, 24]


@pytest.mark.parametrize(("mids", "expected"), [(CROSSING, CROSSING_KEPT), (RESEND, RESEND_KEPT)])
def test_a_contact_crossing_into_its_ring_in_one_batch_and_across_batches(mids, expected):
    assert _kept(Deduplicator(), ["u"] * len(mids), mids) == expected
    dedupe = Deduplicator()
    assert [i for i, m in enumerate(mids) if _one(dedupe, "u", m)] == expected
    # Split in two batches at every point, around the 4th/5th event among them.
    for k in range(len(mids) + 1):
        dedupe = Deduplicator()
        first = _kept(dedupe, ["u"] * k, mids[:k])
        second = [k + i for i in _kept(dedupe, ["u"] * (len(mids) - k), mids[k:])]
        assert first + second == expected, k
    # With other contacts interleaved (some crossing too, some staying inline) and a third of the
    # events in each of three batches.
    contacts, ids, where = [], [], []
    for i, m in enumerate(mids):
        contacts += ["u", f"v{i % 3}", f"w{i}"]
        ids += [m, f"v{i // 3}", m]
        where.append(len(contacts) - 3)
    dedupe = Deduplicator()
    kept = []
    for a, b in [(0, 20), (20, 45), (45, len(ids))]:
        kept += [a + i for i in _kept(dedupe, contacts[a:b], ids[a:b])]
    assert [where.index(i) for i in kept if i in where] == expected
    assert all(i - 2 in where for i in kept if i % 3 == 2)  # every w is new: one event each
    assert _state_of(dedupe, "w0") == (digest_of("m0"), 1, "inline", None)
    assert dedupe.pool_used == 1 + 3  # u and v0..v2 (7+ events each); no w
    assert dedupe.small_rows_held() == 0


def test_the_pools_grow_inside_one_batch():
    # 300 contacts reach their 2nd accepted event, and then their 5th, in the same batch: far more rows
    # than each pool's first allocation, so the kernel stops, the pool grows and it continues, several times.
    n = 300
    contacts = [f"c-{i}" for _ in range(7) for i in range(n)]
    mids = [f"m-{k}" if k < 6 else "m-0" for k in range(7) for _ in range(n)]
    dedupe = Deduplicator()
    assert _kept(dedupe, contacts, mids) == list(range(6 * n))  # the 7th round repeats m-0: duplicates
    assert dedupe.pool_used == n and len(dedupe.pool) >= n
    # Every short row was taken and freed again: none is held, all are on the free list.
    assert dedupe.meta.tolist()[1] == n and len(dedupe.small) >= n and dedupe.small_rows_held() == 0
    assert _kept(dedupe, contacts[:n], [f"m-{k}" for k in range(n)]) == list(range(6, n))
    assert dedupe.nbytes() == (dedupe.index.nbytes() + dedupe.columns.nbytes() + dedupe.pool.nbytes
                               + dedupe.small.nbytes + dedupe.meta.nbytes)
    # Contacts that accept at most 4 events hold no ring; those that accept one hold no short row.
    few = Deduplicator()
    _kept(few, [f"c-{i}" for _ in range(4) for i in range(n)], [f"m-{k}" for k in range(4) for _ in range(n)])
    assert few.pool_used == 0 and len(few.pool) == 0 and few.small_rows_held() == n
    one = Deduplicator()
    _kept(one, [f"c-{i}" for i in range(n)], ["m"] * n)
    assert one.pool_used == 0 and one.small_rows_held() == 0 and len(one.small) == 0


def _reference(contacts: list[str], mids: list[str | None], rings: dict[str, deque]) -> list[int]:
    """The SPEC's rule with a deque of the last 16 accepted ids per contact (updated in place)."""
    kept = []
    for i, (c, m) in enumerate(zip(contacts, mids, strict=True)):
        ring = rings.setdefault(c, deque(maxlen=RING))
        if m is not None and m in ring:
            continue
        ring.append(m)
        kept.append(i)
    return kept


def _random_stream(rng: np.random.Generator, n: int, contacts: int) -> tuple[list[str], list[str | None]]:
    """Zipf-like contacts (a few with hundreds of events, most with a few), each drawing its ids from a
    small vocabulary of its own, so that ids come back at every distance; a tenth without an id."""
    weights = 1.0 / np.arange(1, contacts + 1) ** 1.1
    who = rng.choice(contacts, n, p=weights / weights.sum())
    vocabulary = rng.integers(3, 40, contacts)
    cs = [f"c-{int(c)}" for c in who]
    ms: list[str | None] = [None if rng.random() < 0.1 else f"m-{int(rng.integers(0, vocabulary[c]))}" for c in who]
    return cs, ms


def _run_split(dedupe: Deduplicator, batch: EventBatch, rng: np.random.Generator, a: int, b: int) -> list[int]:
    """Events a..b-1 of `batch` in random batches (some empty, some single events); the kept indices."""
    kept = []
    while a < b:
        size = int(rng.choice([0, 1, 2, 7, 50, 400]))
        kept += [a + i for i in np.flatnonzero(dedupe.accepted(batch.slice(a, min(a + size, b)))).tolist()]
        a += size
    return kept


@pytest.mark.parametrize(("seed", "n_contacts"), [(0, 5), (1, 60), (2, 400), (3, 400), (4, 2000), (5, 2000)])
def test_random_streams_match_a_deque_of_sixteen_per_contact(seed, n_contacts):
    rng = np.random.default_rng(seed)
    contacts, mids = _random_stream(rng, 6000, n_contacts)
    expected = _reference(contacts, mids, {})
    batch = _batch(contacts, mids)
    dedupe = Deduplicator()
    assert _run_split(dedupe, batch, rng, 0, len(mids)) == expected
    assert _kept(Deduplicator(), contacts, mids) == expected
    # Both decisions many times, and contacts both inline and in rings at the end.
    assert 0.2 * len(mids) < len(expected) < 0.9 * len(mids)
    if n_contacts >= 400:
        assert 0 < dedupe.pool_used < len(dedupe.index) and 0 < dedupe.small_rows_held() < len(dedupe.index)


@pytest.mark.parametrize("seed", range(4))
def test_a_snapshot_mid_stream_restores_to_the_same_decisions(seed):
    rng = np.random.default_rng(100 + seed)
    contacts, mids = _random_stream(rng, 5000, 300)
    expected = _reference(contacts, mids, {})
    batch = _batch(contacts, mids)
    live = Deduplicator()
    cuts = sorted(int(c) for c in rng.integers(0, len(mids), 3))
    kept = _run_split(live, batch, rng, 0, cuts[0])
    for a, b in zip(cuts, [*cuts[1:], len(mids)], strict=True):
        snap = live.snapshot()
        pickled = pickle.dumps(snap)
        restored = Deduplicator.restore(pickle.loads(pickled))
        # The same state, and a copy: the restored one's snapshot is the same, and neither one's later
        # events change the snapshot taken.
        again = restored.snapshot()
        assert again["pool"].tolist() == snap["pool"].tolist() and restored.pool_used == live.pool_used
        assert again["small"].tolist() == snap["small"].tolist() and again["small_free"] == snap["small_free"]
        assert all(again["columns"][k].tolist() == v.tolist() for k, v in snap["columns"].items())
        assert set(again["columns"]) == set(snap["columns"]) == {"dedupe_inline", "dedupe_fill", "dedupe_ring"}
        step = _run_split(restored, batch, np.random.default_rng(b), a, b)
        assert _run_split(live, batch, np.random.default_rng(b), a, b) == step
        assert pickle.dumps(snap) == pickled
        kept += step
        live = restored if a % 2 else live  # go on with either one
    assert kept == expected
    assert 0 < live.pool_used < len(live.index)


def _old_snapshot(contacts: list[str], accepted: dict[str, list[str | None]]) -> dict:
    """A snapshot in the layout before the adaptive ring: a ring of 16 digests per contact
    (`dedupe_ids`, accepted event k at k % 16, the rest NO_DIGEST) and its next position."""
    n = len(contacts)
    ids = np.full((n, RING), NO_DIGEST, np.int64)
    following = np.zeros(n, np.uint8)
    for s, c in enumerate(contacts):
        for k, d in enumerate(digests(accepted[c]).tolist()):
            ids[s, k % RING] = d
        following[s] = len(accepted[c]) % RING
    # (A ContactIndex's snapshot then held the contacts' digests too.)
    index = {**ContactIndex.of(contacts).snapshot(), "hashes": digests(contacts)}
    return {"index": index, "columns": {"dedupe_ids": ids, "dedupe_next": following}}


def test_an_old_layout_snapshot_is_converted():
    m = [f"m{i}" for i in range(20)]
    accepted: dict[str, list[str | None]] = {
        "a": m,  # 20 accepted: the ring is m4..m19, oldest at position 4
        "b": ["x0", *[None] * 14],  # x0 is 15 back
        "c": [*[None] * 14, "y0", "y1"],  # only the newest 2 hold ids: inline
        "d": [None] * 3,  # no id at all: inline, empty
        "e": ["z0", "z1", "z2", "z3"],  # a ring not yet full: inline
    }
    contacts = list(accepted)
    dedupe = Deduplicator.restore(pickle.loads(pickle.dumps(_old_snapshot(contacts, accepted))))
    assert dedupe.index.snapshot()["hashes"].tolist() == digests(contacts).tolist()
    assert dedupe.pool_used == 2 and len(dedupe.pool) == 2  # a and b
    assert dedupe.small_rows_held() == len(dedupe.small) == 2  # c and e: rows for them only
    y, z = digests(["y0", "y1"]).tolist(), digests(["z0", "z1", "z2", "z3"]).tolist()
    assert _state_of(dedupe, "c") == (NO_DIGEST, 2, "short", [*y, NO_DIGEST, NO_DIGEST])
    assert _state_of(dedupe, "d") == (NO_DIGEST, 0, "inline", None)
    assert _state_of(dedupe, "e") == (NO_DIGEST, 4, "short", z)
    ring_a = _state_of(dedupe, "a")
    assert ring_a[1:] == (4, "ring", [*digests(m[16:]).tolist(), *digests(m[4:16]).tolist()])
    # It decides as the old one did. a: m4 is exactly 16 back, m3 17 back.
    assert _kept(dedupe, ["a", "a", "a"], ["m4", "m3", "m4"]) == [1, 2]  # m3 pushed m4 out
    # b: x0 stays for one more accepted event, not two.
    assert _kept(dedupe, ["b", "b", "b", "b"], [None, "x0", None, "x0"]) == [0, 2, 3]
    # c: y0 stays for 14 more accepted events (crossing into a ring on the 3rd); the 15th pushes it out.
    assert _kept(dedupe, ["c"] * 15, [*[None] * 14, "y0"]) == list(range(14))
    assert _kept(dedupe, ["c", "c", "c"], [None, "y1", "y0"]) == [0, 2]
    assert _kept(dedupe, ["d", "e", "e"], ["m0", "z0", "z4"]) == [0, 2]
    # A random history converts to the same decisions as the deque model's.
    rng = np.random.default_rng(5)
    contacts, mids = _random_stream(rng, 8000, 200)
    rings: dict[str, deque] = {}
    _reference(contacts[:4000], mids[:4000], rings)
    history: dict[str, list[str | None]] = {}
    for c, mid in zip(contacts[:4000], mids[:4000], strict=True):  # the accepted ones, in order
        h = history.setdefault(c, [])
        if mid is None or mid not in h[-RING:]:
            h.append(mid)
    assert {c: list(h[-RING:]) for c, h in history.items()} == {c: list(r) for c, r in rings.items()}
    order = list(dict.fromkeys(contacts[:4000]))
    dedupe = Deduplicator.restore(_old_snapshot(order, history))
    assert 0 < dedupe.pool_used < len(order)
    expected = _reference(contacts[4000:], mids[4000:], rings)
    assert _kept(dedupe, contacts[4000:], mids[4000:]) == expected


def _two_level_snapshot(contacts: list[str], accepted: dict[str, list[str | None]]) -> dict:
    """A snapshot in the layout before the short rows: 4 digests inline for every contact (`dedupe_fill`
    of them used, the rest NO_DIGEST) and, from the 5th accepted event on, a ring of 16 in the pool
    (accepted event k at k % 16, `dedupe_fill` its next position) instead."""
    n = len(contacts)
    inline = np.full((n, SMALL), NO_DIGEST, np.int64)
    fill = np.zeros(n, np.uint8)
    ring = np.full(n, -1, np.int32)
    pool = []
    for s, c in enumerate(contacts):
        ids = digests(accepted[c]).tolist()
        if len(ids) <= SMALL:
            inline[s, : len(ids)] = ids
            fill[s] = len(ids)
            continue
        row = [NO_DIGEST] * RING
        for k, d in enumerate(ids):
            row[k % RING] = d
        ring[s], fill[s] = len(pool), len(ids) % RING
        pool.append(row)
    return {"index": {"hashes": digests(contacts)},
            "columns": {"dedupe_inline": inline, "dedupe_fill": fill, "dedupe_ring": ring},
            "pool": np.array(pool, np.int64).reshape(-1, RING)}


def test_a_two_level_snapshot_is_converted():
    m = [f"m{i}" for i in range(20)]
    accepted: dict[str, list[str | None]] = {"a": m, "b": [None], "c": ["y0"], "d": ["y0", None, "y1"],
                                             "e": ["z0", "z1", "z2", "z3"], "f": []}
    contacts = list(accepted)
    dedupe = Deduplicator.restore(pickle.loads(pickle.dumps(_two_level_snapshot(contacts, accepted))))
    y, z = digests(["y0", "y1"]).tolist(), digests(["z0", "z1", "z2", "z3"]).tolist()
    assert _state_of(dedupe, "a")[1:] == (4, "ring", [*digests(m[16:]).tolist(), *digests(m[4:16]).tolist()])
    assert _state_of(dedupe, "b") == (NO_DIGEST, 1, "inline", None)
    assert _state_of(dedupe, "c") == (y[0], 1, "inline", None)
    assert _state_of(dedupe, "d") == (NO_DIGEST, 3, "short", [y[0], NO_DIGEST, y[1], NO_DIGEST])
    assert _state_of(dedupe, "e") == (NO_DIGEST, 4, "short", z)
    assert _state_of(dedupe, "f") == (NO_DIGEST, 0, "inline", None)
    assert dedupe.pool_used == 1 and dedupe.small_rows_held() == 2 and len(dedupe.small) == 2  # rows for d, e only
    # It decides as the deque model does, on a random history too.
    rings = {c: deque(h[-RING:], maxlen=RING) for c, h in accepted.items()}
    later = ["a", "a", "c", "c", "d", "d", "e", "e", "e", "b"]
    later_ids = ["m4", "m3", "y0", "y1", "y1", "y0", "z0", "z9", "z0", None]
    assert _kept(dedupe, later, later_ids) == _reference(later, later_ids, rings) == [1, 3, 7, 9]
    rng = np.random.default_rng(6)
    contacts, mids = _random_stream(rng, 8000, 200)
    rings = {}
    _reference(contacts[:4000], mids[:4000], rings)
    order = list(dict.fromkeys(contacts[:4000]))
    dedupe = Deduplicator.restore(_two_level_snapshot(order, {c: list(rings[c]) for c in order}))
    assert 0 < dedupe.pool_used < len(order) and 0 < dedupe.small_rows_held()
    expected = _reference(contacts[4000:], mids[4000:], rings)
    assert _kept(dedupe, contacts[4000:], mids[4000:]) == expected


def test_a_snapshot_with_another_inline_width_is_refused():
    dedupe = Deduplicator()
    _kept(dedupe, ["u"], ["m"])
    snap = dedupe.snapshot()
    snap["columns"]["dedupe_inline"] = np.zeros((1, SMALL + 1), np.int64)
    with pytest.raises(ValueError, match="inline"):
        Deduplicator.restore(snap)


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
