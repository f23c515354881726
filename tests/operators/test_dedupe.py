"""operators/dedupe.py: the per-contact ring of the last 16 accepted message ids (SPEC §2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from engine.decode import EventBatch
from operators.contacts import Columns
from operators.dedupe import NO_ID, RING, MessageRing, message_digest
from operators.shard import ShardState
from rules import load_rules
from rules.compiler import compile_rules

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_795_442_400_000


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


# -- through a shard: a duplicate is not an accepted event --------------------------------


RULES = """\
version: 1
triggers:
  t:
    when: {count: {event: Ping}, within: 1d, at_least: 1000}
"""


def _batch(rows: list[tuple[str, str | None, int]]) -> EventBatch:
    events = [{"type": "track", "event": "Ping", "userId": c, "timestamp": t, "messageId": m}
              for c, m, t in rows]
    return EventBatch(events, [c for c, _, _ in rows], ["Ping"] * len(rows),
                      np.array([t for _, _, t in rows], dtype=np.int64), [m for _, m, _ in rows],
                      list(range(len(rows))))


def test_a_duplicate_takes_no_place_in_the_ring(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    state = ShardState(compile_rules(load_rules(path)))
    out: list = []
    rows = [("u", f"m-{i}", T0 + i) for i in range(16)]
    rows.append(("u", "m-0", T0 + 16))  # duplicate of the oldest: counted, not accepted
    rows.append(("u", "m-16", T0 + 17))  # the 17th accepted event: pushes m-0 out
    rows.append(("u", "m-0", T0 + 18))  # m-0 is not among the last 16 accepted ids any more
    state.process(_batch(rows), out)
    # Had the duplicate taken a ring place, m-0 would still be in the ring and the last event
    # would be a second duplicate.
    assert (state.processed, state.deduplicated) == (18, 1)


def test_same_id_on_another_contact_is_not_a_duplicate(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    state = ShardState(compile_rules(load_rules(path)))
    out: list = []
    state.process(_batch([("u", "m-1", T0), ("v", "m-1", T0), ("u", "m-1", T0), ("v", None, T0),
                          ("v", None, T0)]), out)
    # Only the third event repeats an id of its own contact; events without an id never do.
    assert (state.processed, state.deduplicated) == (4, 1)
