"""Hostile-input tests: hypothesis profiles (see hostile.py) and a collector served for a whole module."""

from __future__ import annotations

from collections.abc import Iterator

import hostile
import pytest
import redis
from hostile import COLLECTOR_KEY, COLLECTOR_SHARDS, Served

from engine.collector import CollectorConfig


def pytest_report_header(config: pytest.Config) -> str:
    return f"halflife fuzz: hypothesis profile {hostile.PROFILE!r}"


@pytest.fixture(scope="module")
def collector(redis_server) -> Iterator[Served]:
    """One collector for a module's properties (hypothesis runs many examples against it), with small
    limits so that examples reach them cheaply; Redis is flushed first."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    cfg = CollectorConfig(redis_url=redis_server.url, write_keys=(COLLECTOR_KEY,), shards=COLLECTOR_SHARDS,
                          max_body_bytes=64 * 1024, max_decompressed_bytes=256 * 1024, max_batch_events=64,
                          max_depth=16, max_string_bytes=2048, dlq_max_length=100_000_000)  # no dlq trimming
    served = Served(cfg).start()
    try:
        yield served
    finally:
        served.stop()
