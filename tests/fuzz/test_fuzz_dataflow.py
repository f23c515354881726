"""Whole runs of the real dataflow on generated mixes of valid, duplicate, hostile and blank lines.

For every run: the engine finishes (no crash), `events_in = processed + deduplicated + dead_lettered`,
and each term equals what the SPEC says for these lines (`hostile.expected_outcome` for validity,
`hostile.expected_dedupe` for the last-16 message ids per contact); every dead letter carries its
line's bytes and byte offset. Valid events include some nested up to the decoder's MAX_DEPTH that
fire triggers, whose records must still be writable (they nest the causing event 2 levels deeper).
"""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from hostile import expected_dedupe, expected_outcome, fuzz, hostile_lines, nested
from hypothesis import given
from hypothesis import strategies as st

from engine.decode import MAX_DEPTH, REASONS
from engine.testing import run_rules
from engine.times import MAX_TIME_MS

RULES = (Path(__file__).resolve().parents[2] / "rules" / "examples" / "ecommerce.yaml").read_text()
T0 = 1_795_442_400_000  # 2026-11-23T14:00:00Z
CONTACTS = ["u-1", "u-2", "a-3", 7]
NAMES = ["Product Added", "Order Completed", "Page Viewed", "Email Opened", "Checkout Started"]


@st.composite
def valid_event(draw: st.DrawFn) -> bytes:
    contact = draw(st.sampled_from(CONTACTS))
    event: dict[str, Any] = {"type": draw(st.sampled_from(["track", "track", "page", "identify"])),
                             "event": draw(st.sampled_from(NAMES)),
                             ("userId" if draw(st.booleans()) else "anonymousId"): contact,
                             "timestamp": T0 + draw(st.integers(0, 90)) * 60_000}
    if draw(st.integers(0, 15)) == 0:  # the ends of the valid range
        event["timestamp"] = draw(st.sampled_from([0, 1, MAX_TIME_MS - 1, MAX_TIME_MS - 86_400_000]))
    if draw(st.booleans()):
        event["messageId"] = f"m-{draw(st.integers(0, 25))}"
    if event["type"] == "page":
        event["properties"] = {"path": draw(st.sampled_from(["/pricing", "/"]))}
    if draw(st.integers(0, 5)) == 0:  # as deep as the decoder accepts: the trigger record must still encode
        inner = nested(MAX_DEPTH - 3, b"1", "{")
        return orjson.dumps(event)[:-1] + b',"properties":{"deep":' + inner + b"}}"
    return orjson.dumps(event)


@st.composite
def mixes(draw: st.DrawFn) -> list[bytes]:
    lines: list[bytes] = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(st.integers(0, 9))
        if kind < 5 or not lines:
            lines.append(draw(valid_event()))
        elif kind < 7:
            lines.append(draw(st.sampled_from(lines)))  # an SDK retry: the same line again
        else:
            lines.append(draw(hostile_lines))
    return lines


@fuzz(dataflow=True)
@given(mixes(), st.integers(1, 16), st.integers(1, 8))
def test_every_run_accounts_for_every_line(lines: list[bytes], batch_size: int, shards: int) -> None:
    result = run_rules(RULES, lines, batch_size=batch_size, shards=shards)
    summary = result.summary

    # The engine's own view of the input: run_rules writes each item and a newline.
    data = b"".join(raw + b"\n" for raw in lines)
    offsets, offset = [], 0
    split = data.split(b"\n")[:-1]
    for raw in split:
        offsets.append(offset)
        offset += len(raw) + 1
    outcomes = [expected_outcome(raw) for raw in split]
    events = [(pos, raw, o) for pos, raw, o in zip(offsets, split, outcomes, strict=True) if o is not None]
    assert not any(o[0] == "unknown" for _, _, o in events)
    valid = [o[1] for _, _, o in events if o[0] == "valid"]
    dead = [(pos, raw, o[1]) for pos, raw, o in events if o[0] == "dead"]
    duplicates = sum(expected_dedupe([v[1] for v in valid], [v[0].get("messageId") for v in valid]))

    assert summary["events_in"] == len(events)
    assert summary["events_in"] == summary["processed"] + summary["deduplicated"] + summary["dead_lettered"]
    assert (summary["processed"], summary["deduplicated"], summary["dead_lettered"]) == (
        len(valid) - duplicates, duplicates, len(dead))
    assert summary["dead_letter_reasons"] == dict(Counter(reason for _, _, reason in dead))
    assert set(summary["dead_letter_reasons"]) <= set(REASONS)

    letters = sorted(result.dead_letters, key=lambda d: d["position"])
    assert [(d["position"], d["reason"]) for d in letters] == [(pos, reason) for pos, _, reason in dead]
    for letter, (_, raw, _) in zip(letters, dead, strict=True):
        assert (letter["raw"].encode() if "raw" in letter else base64.b64decode(letter["raw_b64"])) == raw
    fired = {rule for rule, n in summary["triggers"].items() if n}
    assert {t["rule"] for t in result.triggers} <= fired
    assert all(t["event"] and t["contact"] for t in result.triggers)


def test_the_deepest_accepted_events_fire_and_snapshot(tmp_path: Path) -> None:
    # Regression: an event nested 253+ levels crashed the engine when a trigger record embedding it was
    # written (orjson writes 254 levels), and 500+ levels crashed the recovery snapshot (pickle ran out of
    # recursion), on every restart. Now: up to MAX_DEPTH levels are accepted, fire, snapshot and resume;
    # deeper events are dead-lettered as too_deep.
    import subprocess
    import sys

    lines = []
    for i, levels in enumerate([MAX_DEPTH, MAX_DEPTH + 1, 253, 500, 1000]):  # the event's nesting levels
        props = b'{"deep":' + nested(levels - 2, b"1", "{") + b"}"
        lines.append(b'{"event":"Product Added","userId":"u-%d","timestamp":%d,"properties":%b}' % (i, T0, props))
        lines.append(b'{"event":"Page Viewed","userId":"u-%d","timestamp":%d}' % (i, T0 + 3_600_000))
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    args = [sys.executable, "-m", "engine", "run", "--rules", str(Path(__file__).resolve().parents[2] / "rules" / "examples"
                                                                   / "ecommerce.yaml"),
            "--input", str(events), "--output", str(tmp_path / "out.jsonl"), "--dlq", str(tmp_path / "dlq.jsonl"),
            "--recovery", str(tmp_path / "recovery"), "--snapshot-interval", "0.05", "--batch-size", "1"]
    done = subprocess.run(args, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Traceback" not in done.stderr
    assert b"events in 10: processed 6, deduplicated 0, dead-lettered 4" in done.stderr
    dead = [orjson.loads(x) for x in (tmp_path / "dlq.jsonl").read_bytes().splitlines()]
    assert [d["reason"] for d in dead] == ["too_deep"] * 4
    triggers = [orjson.loads(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    cart = {t["contact"] for t in triggers if t["rule"] == "cart_abandoned"}
    assert cart == {"u-0"}  # u-1 has MAX_DEPTH + 1 levels, the others more
    deep = next(t for t in triggers if t["rule"] == "cart_abandoned")["event"]["properties"]
    assert deep["deep"]["a"]["a"]
