"""Shared fixtures: paths and a runner for the real `halflife` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"
EXAMPLE_RULES = ROOT / "rules" / "examples" / "ecommerce.yaml"


def halflife(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (`python -m engine` is the `halflife` entry point)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT, env=env, **kwargs)


@pytest.fixture(scope="session")
def shop_events(tmp_path_factory) -> Path:
    """20k synthetic shop events with duplicates and bounded disorder, written once."""
    from engine.shop import Shop, ShopConfig

    path = tmp_path_factory.mktemp("shop") / "events.jsonl"
    lines = Shop(ShopConfig(seed=11, contacts=800, duplicate_rate=0.02)).lines(20_000)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (never a mock); tests flush it via `redis_url`."""
    from engine.testing import RedisServer

    with RedisServer(str(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
