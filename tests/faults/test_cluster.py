"""A two-process live cluster losing one member to SIGKILL: the supervisor restarts it from --recovery."""

from __future__ import annotations

import pytest

from bench.faults import scenario_cluster
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow


def test_member_sigkill_restarts_the_cluster_with_the_oracle_triggers(tmp_path):
    report = scenario_cluster(tmp_path, seed=12, events=40_000, contacts=400, rate=4000.0, kills=2,
                              webhook_channels=("email", "lifecycle"))
    assert not report.problems, explain(report)
    assert report.kills == 2
    # The supervisor (started once) restarted the cluster after each member's death.
    assert report.notes["supervisor starts"] == 1
    assert report.restarts == 2, explain(report)
    assert report.live_triggers == report.oracle_triggers > 5000
    assert report.duplicates == 0 and report.missing == report.extra == 0
    assert report.webhook_accepted == report.webhook_expected > 1000 and report.failed == 0
