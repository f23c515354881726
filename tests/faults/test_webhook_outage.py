"""The webhook receiver down for a while, then back: everything delivered, once, nothing failed."""

from __future__ import annotations

import pytest

from bench.faults import scenario_webhook
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow


def test_receiver_outage_delivers_everything_once(tmp_path):
    # Down = connection refused for 0.3 s, then 503 with Retry-After: 5 for 4 s (a proxy in front of a
    # restarting receiver). The engine runs with its default webhook retry budget (8 attempts, i.e. no
    # --webhook-max-attempts; full-jitter backoff from 0.2 s, Retry-After honoured up to 30 s);
    # bench/faults.py explains why the refusal is short.
    report = scenario_webhook(tmp_path, seed=14, events=30_000, contacts=400, rate=4000.0, refuse_s=0.3,
                              unavailable_s=4.0, retry_after="5")
    assert not report.problems, explain(report)
    assert report.notes["requests dropped while refusing / answered 503"][1] > 0  # deliveries met the outage
    # Every trigger of the three webhook channels accepted exactly once (no crash: no re-delivery).
    assert report.webhook_accepted == report.webhook_expected == report.oracle_triggers > 3000
    assert report.webhook_redeliveries == 0 and report.failed == 0
    assert report.live_triggers == report.oracle_triggers and report.duplicates == 0
