"""promtool on deploy/prometheus: the configurations, the alert rules and their unit tests.

Needs Debian's `prometheus` package (`make test` installs it: .ci/install-test-tools); without it these tests fail.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.stack import ALERTS_TEST_YML, ALERTS_YML, KUBERNETES_YML, PROMETHEUS_YML, alert_rules, tool


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], input=stdin, capture_output=True, timeout=60, cwd=cwd)


def output(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


@pytest.mark.parametrize("config", [PROMETHEUS_YML, KUBERNETES_YML], ids=["compose", "kubernetes"])
def test_check_config(config: Path, tmp_path):
    # In place (rule_files is relative to the configuration's directory)...
    proc = promtool("check", "config", str(config))
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS: 1 rule files found" in output(proc)
    # ...and as a copy elsewhere whose rule_files names the alerts by absolute path.
    data = yaml.safe_load(config.read_text())
    assert data["rule_files"] == ["alerts.yml"]
    data["rule_files"] = [str(ALERTS_YML)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(data))
    proc = promtool("check", "config", str(copy))
    assert proc.returncode == 0, output(proc)


def test_check_rules():
    proc = promtool("check", "rules", str(ALERTS_YML))
    assert proc.returncode == 0, output(proc)
    assert f"SUCCESS: {len(alert_rules())} rules found" in output(proc)


def test_alert_unit_tests_pass(tmp_path):
    # From a copy, so that a stray relative path in the test file could not resolve by accident.
    for path in (ALERTS_YML, ALERTS_TEST_YML):
        shutil.copy(path, tmp_path / path.name)
    proc = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert "SUCCESS" in output(proc)


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not():
    tests = yaml.safe_load(ALERTS_TEST_YML.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts no unit test fires"
    assert names - quiet == set(), "alerts without a unit test that checks they stay quiet (or pending)"


def test_alerts_have_severity_summary_description_and_runbook():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_the_alerts_the_issue_asks_for_are_there():
    rules = {rule["alert"]: rule for rule in alert_rules()}
    assert rules["HalflifeEngineDown"]["for"] == "1m"
    assert 'up{job="halflife-engine"} == 0' in rules["HalflifeEngineDown"]["expr"]
    assert "halflife_source_backlog_entries" in rules["SourceBacklogGrowing"]["expr"]
    assert rules["SourceBacklogGrowing"]["for"] == "5m"
    assert rules["TriggerLatencyP99High"]["expr"] == (
        "histogram_quantile(0.99, sum by (le) (rate(halflife_trigger_latency_seconds_bucket{source=\"event\"}[5m]))) > 5")
    assert rules["TriggerLatencyP99High"]["for"] == "5m"
    assert "halflife_events_dead_lettered_total" in rules["DeadLetterRateHigh"]["expr"]
    assert 'outcome="failed"' in rules["WebhookFailures"]["expr"]
    assert "[10m]" in rules["NoEventsWhileCollectorReceives"]["expr"]
    assert 'status=~"5.."' in rules["CollectorErrors"]["expr"]
