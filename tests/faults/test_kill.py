"""kill -9 of the live engine at random moments, restarted from --recovery each time."""

from __future__ import annotations

import pytest

from bench.faults import scenario_kill
from tests.faults.conftest import explain

pytestmark = pytest.mark.slow


def test_repeated_sigkill_gives_the_oracle_triggers_once(tmp_path):
    # 40k events streamed at 4k/s while the engine is killed 7 times: each time once the (re)started
    # engine has written a new trigger, after a seeded random delay (start-up takes 1-3 s on a loaded
    # machine, so the kills follow the engine, not the clock; the scenario bounds every wait).
    report = scenario_kill(tmp_path, seed=11, events=40_000, contacts=400, rate=4000.0, kills=7,
                           webhook_channels=("email", "sales", "lifecycle"))
    assert not report.problems, explain(report)
    assert report.kills == 7 and report.restarts == 7
    # Every kill landed mid-stream (triggers written, not all of them yet), and every restarted engine
    # wrote triggers of its own before it was killed again: no kill hit an engine still starting up.
    at_kill = [t for _, t, _ in report.notes["at_kill (events written, hl:triggers, webhook keys)"]]
    assert len(at_kill) == 7 and all(0 < t < report.oracle_triggers for t in at_kill), explain(report)
    assert at_kill == sorted(set(at_kill)), explain(report)  # strictly increasing
    # hl:triggers and every hl:triggers:{channel}: the oracle's set, each id once (check() counts duplicates).
    assert report.live_triggers == report.oracle_triggers > 5000
    assert report.duplicates == 0 and report.missing == report.extra == report.content_mismatches == 0
    # Webhooks: at-least-once with an Idempotency-Key. Every oracle id of the channels was accepted (an
    # effect once per key); re-deliveries after a crash carried the same key and the same record.
    assert report.webhook_accepted == report.webhook_expected > 1000
    assert report.failed == 0
