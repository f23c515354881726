"""engine/metrics.py: what a run adds to the engine's Prometheus metrics (deltas: metrics are process-wide)."""

from __future__ import annotations

import urllib.request

from engine import metrics
from engine.testing import free_port, run_rules

RULES = """
version: 1
triggers:
  twice:
    when: {count: {event: Ping}, within: 1h, at_least: 2}
    cooldown: 1h
    actions: [{emit: a}, {emit: b}]
"""


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    return {
        "in": value("halflife_events_in_total"),
        "processed": value("halflife_events_processed_total"),
        "dedup": value("halflife_events_deduplicated_total"),
        "late": value("halflife_events_late_total"),
        "not_json": value("halflife_events_dead_lettered_total", reason="not_json"),
        "fired_a": value("halflife_triggers_fired_total", rule="twice", channel="a"),
        "fired_b": value("halflife_triggers_fired_total", rule="twice", channel="b"),
        "cooldown": value("halflife_triggers_suppressed_total", rule="twice", reason="cooldown"),
        "rules_batches": value("halflife_batch_size_events_count", step="rules"),
        "file_writes": value("halflife_sink_writes_total", sink="file"),
    }


def test_a_run_counts_events_triggers_and_suppressions():
    t0 = 1795442400000
    events = [
        {"event": "Ping", "userId": "u1", "messageId": "1", "timestamp": t0},
        {"event": "Ping", "userId": "u1", "messageId": "1", "timestamp": t0},  # duplicate
        {"event": "Ping", "userId": "u1", "messageId": "2", "timestamp": t0 + 1000},  # n = 2: fires (a, b)
        b"{nope",
        {"event": "Ping", "userId": "u2", "messageId": "3", "timestamp": t0 + 2000},
        {"event": "Ping", "userId": "u1", "messageId": "4", "timestamp": t0 + 500},  # late; n = 3: no edge
        {"event": "Ping", "userId": "u1", "messageId": "5", "timestamp": t0 + 7_200_000},  # n = 1
        {"event": "Ping", "userId": "u1", "messageId": "6", "timestamp": t0 + 7_201_000},  # n = 2: fires again
        {"event": "Ping", "userId": "u2", "messageId": "7", "timestamp": t0 + 7_202_000},  # u2 n = 1 (1h apart)
        {"event": "Ping", "userId": "u2", "messageId": "8", "timestamp": t0 + 7_202_500},  # u2 n = 2: fires
    ]
    before = snapshot()
    result = run_rules(RULES, events, batch_size=3, shards=2)
    after = snapshot()
    delta = {k: after[k] - before[k] for k in before}
    assert len(result.triggers) == 6
    assert delta == {"in": 10, "processed": 8, "dedup": 1, "late": 1, "not_json": 1, "fired_a": 3, "fired_b": 3,
                     "cooldown": 0, "rules_batches": delta["rules_batches"], "file_writes": delta["file_writes"]}
    assert delta["rules_batches"] >= 3  # 8 events in batches of at most 3 reach the shards
    assert delta["file_writes"] == 6 + 1  # 6 trigger lines and 1 dead letter, all to files


def test_cooldown_suppressions_are_counted_by_rule_and_reason():
    t0 = 1795442400000
    events = [{"event": "Ping", "userId": "u1", "messageId": str(i), "timestamp": t0 + i * 60_000 * 31}
              for i in range(4)]
    # Pings at 14:00, 14:31, 15:02, 15:33, each 31 min after the previous: within 1h every ping
    # from the second on sees exactly one earlier ping, so the count reaches 2 at 14:31, 15:02
    # and 15:33. 14:31 fires (cooldown until 15:31), 15:02 is suppressed, 15:33 fires.
    before = snapshot()
    result = run_rules(RULES, events)
    after = snapshot()
    assert [t["at"][11:19] for t in result.triggers if t["channel"] == "a"] == ["14:31:00", "15:33:00"]
    assert after["cooldown"] - before["cooldown"] == 1


def test_serve_exposes_the_registry(tmp_path):
    port = free_port()
    metrics.serve(port)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "# TYPE halflife_events_in_total counter" in body
    assert "# TYPE halflife_trigger_latency_seconds histogram" in body
