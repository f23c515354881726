"""A slow webhook receiver with a large backlog in Redis: memory stays bounded, nothing is dropped."""

from __future__ import annotations

import pytest

from bench.faults import scenario_slow
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow

# The backlog below is ~130k events: ~33 MiB of JSON in Redis, ~165 MiB once decoded into Python
# objects (measured). An engine that read ahead of its sink would grow by about that much.
MAX_RSS_GROWTH_KIB = 32 * 1024


def test_slow_receiver_keeps_memory_flat_and_delivers_everything(tmp_path):
    # 150k events in Redis before the engine starts; the triggers of channels sales, onsite and email
    # (about 7 per 100 events) go to a receiver taking 50-200 ms per request, 16 requests at a time
    # (~130 deliveries/s). After a 3 s warm-up, 12 s of sampling the engine's VmRSS; then the receiver
    # speeds up and everything must arrive.
    report = scenario_slow(tmp_path, seed=15, events=150_000, contacts=2000, delay=(0.05, 0.2), concurrency=16,
                           slow_s=12.0, warmup_s=3.0, webhook_channels=("sales", "onsite", "email"))
    assert not report.problems, explain(report)
    assert report.notes["backlog"] >= 100_000, explain(report)  # the backlog really sat in Redis
    assert report.notes["rss_growth_kib"] < MAX_RSS_GROWTH_KIB, explain(report)
    assert report.notes["receiver max concurrent requests"] <= 64  # the sink's in-flight bound
    # Eventually everything: each trigger accepted once, none failed, hl:triggers equal to the oracle.
    assert report.webhook_accepted == report.webhook_expected > 5_000
    assert report.webhook_redeliveries == 0 and report.failed == 0
    assert report.live_triggers == report.oracle_triggers and report.duplicates == 0
