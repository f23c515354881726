"""SIGKILL during the very first start, while the --recovery partitions are being created."""

from __future__ import annotations

import pytest

from bench.faults import scenario_first_start
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow


def test_kill_while_creating_recovery_then_restart_comes_up(tmp_path):
    # Each attempt: a fresh directory, kill within 20 ms of it appearing, start again. Stops at the first
    # start that does not come up (8 attempts in 10 failed before the partitions were staged and renamed
    # into place), so a regression costs seconds.
    report = scenario_first_start(tmp_path, seed=16, attempts=10, stop_at_first=True)
    assert not report.problems, explain(report)
