"""The compiled batch decoder against the exact one, on hostile and on realistic lines.

`BatchDecoder.decode` (the scanner in engine/jsonscan.py, the checks and extraction of
engine/decode.py and the column matchers of rules/columns.py, all compiled) must say of every line
exactly what the per-line path says: `decode_lines` for validity, the dead letter's reason, detail
and raw bytes, the event's time, contact and message id; `event_summary` for the JSON a trigger
record carries; `Plan.match` (the matchers as Python closures, rules/matchers.py) for the matcher
bit set. Here the expectations are computed from those reference functions alone, line by line.

A summary (packed, engine/summaries.py) is compared as the JSON a record carries, as JSON values
(types kept apart: 1, 1.0 and true differ): the compiled path copies the sender's own text of
`properties` and `traits` (`11.50`, `"\\u00e9"`), where the reference re-serialises them (`11.5`, `"\u00e9"`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hostile import HOSTILE_NUMBERS, HOSTILE_STRINGS, fuzz, hostile_lines, hostile_value
from hypothesis import example, given
from hypothesis import strategies as st

from engine.decode import BatchDecoder, decode_lines
from engine.hashing import digests
from engine.records import event_summary
from engine.shop import Shop, ShopConfig
from engine.sources import block_of
from engine.testing import plan_of
from rules.compiler import Plan

# Every operator of the rule language on the paths the strategies below fill, with literals at the edges of
# each comparison (strings that are prefixes of each other, numbers a rounding away from the values).
WIDE_RULES = """\
version: 1
scores:
  s:
    half_life: 1h
    points:
      - {event: Page Viewed, where: {properties.path: {startswith: /pricing}}, add: 1}
      - {event: [Page Viewed, Product Added], where: {properties.path: {contains: ic}}, add: 1}
      - {where: {properties.path: /pricing}, add: 1}
      - {where: {properties.path: {ne: /}}, add: 1}
      - {where: {properties.path: {in: [/, /pricing, 1, true, null]}}, add: 1}
      - {where: {properties.path: {not_in: [/pricing, 2.5]}}, add: 1}
      - {where: {properties.path: {gt: /p}}, add: 1}
      - {where: {properties.path: {lte: "/pricing"}}, add: 1}
      - {where: {properties.path: {contains: "\\u00e9"}}, add: 1}
      - {where: {properties.price: {gte: 10}}, add: 1}
      - {where: {properties.price: {lt: 49.9}}, add: 1}
      - {where: {properties.price: {gt: 0.1}}, add: 1}
      - {where: {properties.price: {lte: -0.0}}, add: 1}
      - {where: {properties.price: 1}, add: 1}
      - {where: {properties.price: {in: [1.5, 9007199254740993, "1"]}}, add: 1}
      - {where: {properties.price: {ne: 0}}, add: 1}
      - {where: {properties.a: {exists: true}}, add: 1}
      - {where: {properties.a: {exists: false}}, add: 1}
      - {where: {properties.a: {contains: 1}}, add: 1}
      - {where: {properties.a: {contains: x}}, add: 1}
      - {where: {properties.a: {eq: true}}, add: 1}
      - {where: {properties.a: {eq: [1, 2]}}, add: 1}
      - {where: {properties.a: {eq: {b: 1}}}, add: 1}
      - {where: {properties: {exists: true}}, add: 1}
      - {where: {context.channel: {not_in: [api]}}, add: 1}
      - {where: {traits.plan: pro, name: x}, add: 1}
      - {event: [Product Added, E, Order Completed], add: 1}
      - {event: Email Opened, add: 1}
triggers:
  t:
    when: {score: s, rises_above: 1000}
"""

_PLANS: dict[str, Plan] = {}


def plan(name: str) -> Plan:
    if name not in _PLANS:
        if name == "wide":
            _PLANS[name] = plan_of(WIDE_RULES)
        else:
            with open(f"rules/examples/{name}.yaml", encoding="utf-8") as f:
                _PLANS[name] = plan_of(f.read())
    return _PLANS[name]


def strict(value: Any) -> Any:
    """A JSON value with its types spelled out, so that equal means equal as JSON (1 != 1.0 != true)."""
    if isinstance(value, dict):
        return ("object", {k: strict(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("array", [strict(v) for v in value])
    return (type(value).__name__, value)


def expected(plan: Plan, lines: list[bytes], positions: list[int]) -> tuple[list[dict[str, Any]], list[Any]]:
    """What every accepted line must become, and the dead letters, from the reference functions."""
    decoded, dead = decode_lines(lines, positions)
    bits = plan.match(decoded.names, decoded.events)
    rows = []
    for i in range(len(decoded)):
        rows.append({
            "position": decoded.positions[i],
            "time": int(decoded.times[i]),
            "contact": decoded.contacts[i],
            "contact_hash": int(digests([decoded.contacts[i]])[0]),
            "message_digest": int(digests([decoded.message_ids[i]])[0]),
            "summary": strict(event_summary(decoded.events[i], decoded.names[i], int(decoded.times[i]))),
            "bits": bits[i],
        })
    return rows, dead


def actual(decoder: BatchDecoder, lines: list[bytes], positions: list[int]) -> tuple[list[dict[str, Any]], list[Any]]:
    batch, dead = decoder.decode(*block_of(lines, positions))
    words = batch.bits.shape[1]
    rows = []
    for i in range(len(batch)):
        rows.append({
            "position": int(batch.positions[i]),
            "time": int(batch.times[i]),
            "contact": batch.contact(i),
            "contact_hash": int(batch.contact_hashes[i]),
            "message_digest": int(batch.message_digests[i]),
            "summary": strict(batch.summary(i)),
            "bits": sum(int(batch.bits[i, w]) << (64 * w) for w in range(words)),
        })
    return rows, dead


def check(plan_name: str, lines: list[bytes]) -> None:
    """The batch decoder says of `lines` what the reference functions say (lines hold no newline)."""
    p = plan(plan_name)
    kept = [line.replace(b"\n", b"\r") for line in lines]  # as block_of frames them
    positions = [10 * i + 3 for i in range(len(kept))]
    want_rows, want_dead = expected(p, kept, positions)
    got_rows, got_dead = actual(BatchDecoder(p), kept, positions)
    assert [(d.position, d.reason, d.detail, d.raw) for d in got_dead] == \
        [(d.position, d.reason, d.detail, d.raw) for d in want_dead]
    assert len(got_rows) == len(want_rows)
    for got, want in zip(got_rows, want_rows, strict=True):
        assert got == want, (lines[(got["position"] - 3) // 10], got, want)


# -- realistic lines: what the fast path meets in production ----------------------------------------------


def test_shop_events_agree_with_the_exact_decoder() -> None:
    lines = Shop(ShopConfig(seed=11, contacts=300, sessions_per_minute=400.0)).lines(4000)
    check("ecommerce", lines)
    check("wide", lines)


def test_workload_events_agree_with_the_exact_decoder() -> None:
    from bench.workload import Workload, WorkloadConfig

    chunk = next(iter(Workload(WorkloadConfig(seed=3, contacts=2000, duplicate_rate=0.01)).chunks()))
    lines = chunk.lines()[:5000]
    check("ecommerce", lines)


# -- hostile lines ------------------------------------------------------------------------------------------

_numbers = st.sampled_from(HOSTILE_NUMBERS + [b"10", b"10.0", b"9.999999999999999999", b"49.9", b"49.900000000000006",
                                              b"49.89999999999999", b"0.1", b"0.10000000000000001", b"-0.0", b"0",
                                              b"1.0", b"1.5", b"9007199254740993", b"9007199254740992",
                                              b"1e1", b"123456789012345678", b"1234567890123456789"])
_strings = st.sampled_from(HOSTILE_STRINGS + [b'"/pricing"', b'"/pricing/x"', b'"/p"', b'"/"', b'"/q"', b'"/pricinf"',
                                              b'"\\/pricing"', b'"/pr\\u0069cing"', b'"caf\xc3\xa9"', b'"caf\\u00e9"',
                                              b'"api"', b'"x"', b'"1"', b'"pro"', b'"ic"'])
_values = st.one_of(_numbers, _strings, hostile_value(),
                    st.sampled_from([b"true", b"false", b"null", b"[1,2]", b'[1, 2]', b'["x",1]', b'{"b":1}',
                                     b'{"b":1.0}', b"[]", b"{}", b'[[1]]']))


@st.composite
def where_lines(draw: st.DrawFn) -> bytes:
    """Valid-looking events whose properties, context and traits carry hostile values at the rules' paths."""
    props = []
    for key in draw(st.lists(st.sampled_from(["path", "price", "a", "path", "b"]), max_size=4)):
        props.append(b'"%s":%s' % (key.encode(), draw(_values)))
    head = draw(st.sampled_from([b'"type":"page"', b'"event":"Page Viewed"', b'"event":"Product Added"',
                                 b'"event":"Order Completed"', b'"event":"E"', b'"type":"identify"',
                                 b'"event":"Email Opened"', b'"event":"Page\\u0020Viewed"']))
    parts = [head, b'"userId":"u-%d"' % draw(st.integers(0, 3)), b'"timestamp":1795442400000',
             b'"properties":{' + b",".join(props) + b"}"]
    if draw(st.booleans()):
        parts.append(b'"context":{"channel":%s}' % draw(_values))
    if draw(st.booleans()):
        parts.append(b'"traits":{"plan":%s},"name":%s' % (draw(_values), draw(_values)))
    if draw(st.booleans()):
        parts.append(b'"messageId":%s' % draw(_strings))
    return b"{" + b",".join(parts) + b"}"


@fuzz()
@given(st.lists(hostile_lines, max_size=12))
def test_hostile_lines(lines: list[bytes]) -> None:
    check("ecommerce", lines)


@fuzz()
@given(st.lists(where_lines(), min_size=1, max_size=12))
@example([b'{"event":"Page Viewed","userId":"u","timestamp":1,"properties":{"path":"/pricing","price":49.9}}'])
@example([b'{"event":"E","userId":"u","timestamp":1,"properties":{"price":9.999999999999999999}}'])
def test_where_values(lines: list[bytes]) -> None:
    check("wide", lines)


@fuzz()
@given(st.lists(st.one_of(where_lines(), hostile_lines), min_size=1, max_size=12))
def test_mixed_lines(lines: list[bytes]) -> None:
    check("wide", lines)


def test_positions_follow_lines_when_the_slow_path_takes_some() -> None:
    lines = [b'{"event":"E","userId":"u-%d","timestamp":%d}' % (i, 1000 + i) for i in range(5)]
    lines[1] = b'{"event":"E","userId":"u-\\u0031","timestamp":1001}'  # escaped: the exact decoder takes it
    lines[3] = b"not json"
    batch, dead = BatchDecoder(plan("ecommerce")).decode(*block_of(lines, [0, 10, 20, 30, 40]))
    assert batch.positions.tolist() == [0, 10, 20, 40]
    assert batch.contact_ids() == ["u-0", "u-1", "u-2", "u-4"]
    assert batch.times.tolist() == [1000, 1001, 1002, 1004]
    assert [(d.position, d.reason) for d in dead] == [(30, "not_json")]
    assert np.array_equal(batch.contact_hashes, digests(["u-0", "u-1", "u-2", "u-4"]))


def test_a_rule_path_that_is_also_an_event_field() -> None:
    # `type` and `userId` are fields every event is scanned for; the rules' other paths must keep their columns.
    p = plan_of("""\
version: 1
scores:
  s:
    half_life: 1h
    points:
      - {where: {type: page}, add: 1}
      - {where: {properties.path: {startswith: /pricing}}, add: 2}
      - {where: {userId: {exists: true}}, add: 4}
triggers:
  t:
    when: {score: s, rises_above: 1000}
""")
    lines = [b'{"type":"page","userId":"u-1","timestamp":1,"properties":{"path":"/pricing"}}',
             b'{"event":"E","anonymousId":"a-1","timestamp":1,"properties":{"path":"/"}}']
    batch, dead = BatchDecoder(p).decode(*block_of(lines, [0, 1]))
    assert dead == [] and batch.bits[:, 0].tolist() == [0b111, 0]
