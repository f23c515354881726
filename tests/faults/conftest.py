"""Fault tests: the live engine under kill -9, cluster member loss, a Redis restart, a webhook outage
and a slow webhook, each compared with the replay-mode oracle. The scenarios live in `bench/faults.py`
(`python -m bench.faults` runs them at a larger scale for minutes); these tests run them small."""

from __future__ import annotations

import shutil

import pytest

from bench.faults import Report


def pytest_collection_modifyitems(config, items):
    if shutil.which("redis-server") is None:
        skip = pytest.mark.skip(reason="redis-server is not installed (apt-get install redis-server)")
        for item in items:
            if "tests/faults" in str(item.fspath):
                item.add_marker(skip)


def explain(report: Report) -> str:
    """The report as an assertion message: the summary line, every problem, the notes."""
    lines = [report.line(), *(f"problem: {p[:2000]}" for p in report.problems)]
    lines += [f"{k}: {str(v)[:1000]}" for k, v in report.notes.items()]
    return "\n".join(lines)
