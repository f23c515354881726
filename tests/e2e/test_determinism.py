"""SPEC §3 Determinism: the same trigger set for any batch size, shard count, worker and
process count, and across a SIGKILL and resume (no missing trigger, no duplicate line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import EXAMPLE_RULES, ROOT, halflife


def trigger_keys(path) -> list[tuple]:
    return sorted((r["rule"], r["contact"], r["at"], r["channel"], r["id"])
                  for r in map(json.loads, path.read_text().splitlines()))


def run_keys(tmp_path, events, *flags: str) -> list[tuple]:
    out = tmp_path / ("out" + "".join(flags).replace("-", "_") + ".jsonl")
    run = halflife("run", "--rules", str(EXAMPLE_RULES), "--input", str(events), "--output", str(out),
                   "--dlq", str(tmp_path / "dlq.jsonl"), *flags)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    return trigger_keys(out)


@pytest.fixture(scope="module")
def reference(shop_events, tmp_path_factory):
    keys = run_keys(tmp_path_factory.mktemp("ref"), shop_events)
    assert len(keys) > 500  # the workload exercises the rules
    assert {k[0] for k in keys} >= {"cart_abandoned", "hot_lead", "pricing_binge"}
    return keys


@pytest.mark.parametrize("flags", [
    ("--batch-size", "1"), ("--batch-size", "7"), ("--batch-size", "1000"),
    ("--shards", "1"), ("--shards", "64"), ("--workers", "2"),
], ids=lambda f: " ".join(f))
def test_same_triggers(flags, shop_events, reference, tmp_path):
    if flags == ("--batch-size", "1"):
        # one event per batch is slow: the first 3000 events are enough for it
        head = tmp_path / "head.jsonl"
        head.write_bytes(b"".join(shop_events.read_bytes().splitlines(keepends=True)[:3000]))
        assert run_keys(tmp_path, head, *flags) == run_keys(tmp_path, head, "--batch-size", "500")
        return
    assert run_keys(tmp_path, shop_events, *flags) == reference


@pytest.mark.slow
def test_two_processes(shop_events, reference, tmp_path):
    assert run_keys(tmp_path, shop_events, "--processes", "2", "--batch-size", "97") == reference


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigkill_and_resume(processes, tmp_path):
    from engine.shop import Shop, ShopConfig

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(Shop(ShopConfig(seed=5, contacts=3000)).lines(150_000)) + b"\n")
    reference = run_keys(tmp_path, events)

    out, rec = tmp_path / "killed.jsonl", tmp_path / "recovery"
    argv = [sys.executable, "-m", "engine", "run", "--rules", str(EXAMPLE_RULES), "--input", str(events),
            "--output", str(out), "--dlq", str(tmp_path / "k.dlq"), "--recovery", str(rec),
            "--snapshot-interval", "0.3", "--batch-size", "200", "--processes", processes]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    # Kill once some triggers are out but the input is far from done.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 0 < partial < len(reference), "the kill must land mid-input"

    resumed = subprocess.run(argv, cwd=ROOT, capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    keys = trigger_keys(out)
    assert len(keys) == len(set(keys)), "a line was written twice"
    assert keys == reference


@pytest.mark.slow
def test_supervisor_restarts_cluster_when_one_process_dies(tmp_path):
    from engine.shop import Shop, ShopConfig

    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(Shop(ShopConfig(seed=8, contacts=3000)).lines(120_000)) + b"\n")
    reference = run_keys(tmp_path, events)

    out = tmp_path / "supervised.jsonl"
    argv = [sys.executable, "-m", "engine", "run", "--rules", str(EXAMPLE_RULES), "--input", str(events),
            "--output", str(out), "--dlq", str(tmp_path / "d.jsonl"), "--recovery", str(tmp_path / "rec"),
            "--snapshot-interval", "0.3", "--batch-size", "200", "--processes", "2"]
    supervisor = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 20_000):
        time.sleep(0.05)
    child = subprocess.run(["pgrep", "-P", str(supervisor.pid), "-f", "--", "--process-id 1 --addresses"],
                           capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in child if int(p) != supervisor.pid]
    assert pids, "the second cluster process should be running"
    os.kill(pids[0], signal.SIGKILL)
    try:
        _, err = supervisor.communicate(timeout=300)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
    assert supervisor.returncode == 0, err.decode()[-2000:]
    assert b"restarting the cluster from" in err
    keys = trigger_keys(out)
    assert len(keys) == len(set(keys))
    assert keys == reference
