"""Every `halflife bench` subcommand in smoke mode, as a user runs it: it works and writes sane JSON.

Never a speed assertion: CI keeps the benches working, the numbers come from real runs.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from tests.conftest import halflife


def _run(results: Path, *args: str, timeout: float = 120) -> dict:
    proc = halflife("bench", *args, "--smoke", "--results-dir", str(results), timeout=timeout)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:] + proc.stderr.decode()[-3000:]
    files = sorted(glob.glob(str(results / f"*-{args[0]}.json")))
    assert files, f"no result file for {args[0]}"
    data = json.loads(Path(files[-1]).read_text())
    assert data["name"] == args[0] and data["smoke"] is True and data["machine"]["cpus"] >= 1
    return data


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-results")


def test_workload(results: Path) -> None:
    data = _run(results, "workload")
    assert data["runs"] and all(r["events"] == 20_000 and r["events_per_s"] > 0 for r in data["runs"])
    assert 150 < data["runs"][0]["bytes_per_event"] < 600


def test_hotpath(results: Path) -> None:
    data = _run(results, "hotpath", "--state-sweep", "1000,2500")
    run = data["hotpath"]
    assert run["events"] == 20_000 and run["events_per_s"] > 0 and run["cpu_s_per_million"] > 0
    assert run["summary"]["events_in"] == 20_000
    assert run["summary"]["processed"] + run["summary"]["deduplicated"] == 20_000
    assert run["trigger_records"] > 0 and sum(run["summary"]["triggers"].values()) > 0
    assert {"read", "rules"} <= set(run["stages_s"])
    state = data["state"]
    assert state["contacts"] >= 2_000 and state["bytes_per_contact"] > 0
    assert any(k.startswith("source.dedupe") for k in state["breakdown_bytes"])
    assert any("index" in k for k in state["breakdown_bytes"])
    assert sum(state["breakdown_bytes"].values()) == state["bytes_total"]
    # The sweep's states, at the sizes asked for (a build stops at its first batch past them).
    sweep = data["state_sweep"]
    assert len(sweep) == 2
    assert 1_000 <= sweep[0]["contacts"] < 1_500 and 2_500 <= sweep[1]["contacts"] < 3_000
    assert all(s["bytes_total"] == round(s["bytes_per_contact"] * s["contacts"]) for s in sweep)


def test_baseline_fires_the_same_triggers(results: Path) -> None:
    data = _run(results, "baseline")
    trig = data["triggers"]
    assert trig["equal"] is True and trig["only_halflife"] == [] and trig["only_baseline"] == []
    assert trig["halflife"] == trig["baseline"] > 100
    assert data["halflife"]["summary"]["late"] == 0
    # Timers fired (path a and end of input), not only event-time firings.
    fired = data["halflife"]["summary"]["triggers"]
    assert fired.get("cart_abandoned", 0) > 0 and fired.get("checkout_abandoned", 0) > 0
    assert data["ratio"] > 0 and data["baseline"]["events_per_s"] > 0


def test_e2e(results: Path) -> None:
    data = _run(results, "e2e", timeout=180)
    run = data["runs"][0]
    assert run["processes"] == 1 and run["steps"]
    step = run["steps"][0]
    assert step["sent"] == step["events"] > 0
    assert step["backlog_samples"]
    assert step["snapshot_ms_per_epoch"] > 0  # epochs of 1 s: the engine's snapshot timings reached the bench
    lat = step["latency"]["at_event"]
    assert lat["count"] > 0
    assert 0 < lat["p50"] <= lat["p99"] <= lat["max"] < 30_000
    assert sum(lat["buckets_ms"].values()) == lat["count"]


def test_collector(results: Path) -> None:
    data = _run(results, "collector")
    col = data["collector"]
    assert col["events_per_s"] > 0 and col["errors"] == 0 and col["requests"] > 0
    assert col["p50_ms"] > 0 and col["collector_cpu_s_per_million"] > 0


def test_report(results: Path) -> None:
    data = _run(results, "report")
    report = Path(data["report"])
    text = report.read_text()
    assert "| hot path events/s per core |" in text and "## End to end through Redis" in text
    assert set(data["images"]) == {"throughput.png", "latency.png", "state.png"}
    for image in data["images"]:
        assert (report.parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_record_the_command_line_without_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.common import new_result

    monkeypatch.setattr("sys.argv", ["halflife", "bench", "workload", "--output", "redis://app:s3cret@db:6379/0"])
    assert new_result("workload", None)["command"] == "halflife bench workload --output redis://app:***@db:6379/0"


def test_snapshots_pause_with_plain_and_packed_state(results: Path) -> None:
    data = _run(results, "snapshots")
    assert data["contacts"] >= 2_000 and data["shards"] == 64
    assert [r["mode"] for r in data["runs"]] == ["plain", "packed"]
    plain, packed = data["runs"]
    # Packing shrinks what bytewax stores (a size, not a speed: the state compresses whatever the machine).
    assert 0 < packed["recovery_file_bytes"] < plain["recovery_file_bytes"]
    assert all(r["pauses_ms"] and r["median_pause_ms"] > 0 for r in data["runs"])
