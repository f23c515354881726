"""Redis (AOF) stopped and started mid-run, events arriving through the collector."""

from __future__ import annotations

import pytest

from bench.faults import scenario_redis
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow


def test_redis_restart_loses_and_duplicates_nothing(tmp_path):
    report = scenario_redis(tmp_path, seed=13, events=30_000, contacts=400, rate=4000.0, outages=1, down_s=2.0)
    assert not report.problems, explain(report)
    probes = {what: (status, retry_after) for what, status, retry_after in report.notes["probes"]}
    # While Redis is down: /health 503, an event 503 with Retry-After; after: /health 200.
    assert probes["health while down"][0] == 503
    assert probes["track while down"][0] == 503 and probes["track while down"][1] == "1"
    assert probes["health after restart"][0] == 200
    # The client (retrying 503 after Retry-After, as an SDK does) met the outage and got every batch in.
    statuses = report.notes["client statuses"]
    assert statuses.get(503, 0) >= 1, explain(report)
    assert set(statuses) <= {200, 503}
    assert statuses[200] == 30_000 // 10 + 1  # every batch of 10 and the flush batch, accepted once each
    # The engine was never restarted: it reconnected by itself, and its output is the oracle's.
    assert report.restarts == 1 and report.live_triggers == report.oracle_triggers > 3000
    assert report.duplicates == 0 and report.missing == report.extra == 0
