"""The real CLI on files: conformance cases, rule errors, summary, exit codes."""

from __future__ import annotations

import json
import select
import subprocess
import sys

import pytest

from tests.conftest import CONFORMANCE, EXAMPLE_RULES, halflife

CASES = sorted(p for p in (CONFORMANCE / "cases").iterdir() if p.is_dir()) if CONFORMANCE.exists() else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance_case(case, tmp_path):
    out, dlq = tmp_path / "out.jsonl", tmp_path / "dlq.jsonl"
    run = halflife("run", "--rules", str(case / "rules.yaml"), "--input", str(case / "events.jsonl"),
                   "--output", str(out), "--dlq", str(dlq), "--recovery", str(tmp_path / "rec"))
    assert run.returncode == 0, run.stderr.decode()
    check = subprocess.run([sys.executable, str(CONFORMANCE / "check.py"), str(case), str(out), "--dlq", str(dlq)],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    expected = json.loads((case / "expected.json").read_text())
    summary = run.stderr.decode()
    assert (f"events in {expected['events_in']}: processed {expected['processed']}, "
            f"deduplicated {expected['deduplicated']}, dead-lettered {expected['dead_letters']}") in summary
    assert f"pending timers {expected['pending_timers']}," in summary
    reasons = {json.loads(line)["reason"] for line in dlq.read_text().splitlines()}
    assert reasons == set(expected["dead_letter_reasons"])


def test_summary_counts_and_dead_letters(tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\ntriggers:\n  seen:\n    when: {count: {event: Ping}, within: 1h, at_least: 2}\n")
    events = tmp_path / "e.jsonl"
    events.write_text(
        '{"event":"Ping","userId":"u1","messageId":"a","timestamp":"2026-11-23T14:00:00Z"}\n'
        '{"event":"Ping","userId":"u1","messageId":"a","timestamp":"2026-11-23T14:00:00Z"}\n'
        "not json\n"
        "\n"
        '{"event":"Ping","userId":"u1","messageId":"b","timestamp":"2026-11-23T14:10:00Z"}\n'
        # late (below the watermark 14:10 with lateness 0): applied at u1's clock, 14:10
        '{"event":"Ping","userId":"u1","messageId":"c","timestamp":"2026-11-23T14:05:00Z"}\n'
    )
    out, dlq = tmp_path / "o.jsonl", tmp_path / "d.jsonl"
    run = halflife("run", "--rules", str(rules), "--input", str(events), "--output", str(out), "--dlq", str(dlq))
    assert run.returncode == 0, run.stderr
    err = run.stderr.decode()
    assert "events in 5: processed 3, deduplicated 1, dead-lettered 1 {'not_json': 1}, late 1" in err
    assert "seen                     1" in err
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert (record["rule"], record["contact"], record["at"], record["channel"]) == (
        "seen", "u1", "2026-11-23T14:10:00.000Z", "triggers")
    assert record["event"]["messageId"] == "b"
    [dead] = [json.loads(line) for line in dlq.read_text().splitlines()]
    assert dead["reason"] == "not_json" and dead["raw"] == "not json"


def test_stdin_to_stdout(tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\ntriggers:\n  t:\n    when: {count: {event: Ping}, within: 1h, at_least: 1}\n"
                     "    actions: [{emit: a}, {emit: b}]\n")
    line = b'{"event":"Ping","userId":"u1","timestamp":1795442400000}\n'
    run = halflife("run", "--rules", str(rules), input=line)
    assert run.returncode == 0, run.stderr
    records = [json.loads(x) for x in run.stdout.splitlines()]
    assert sorted(r["channel"] for r in records) == ["a", "b"]
    assert {r["at"] for r in records} == {"2026-11-23T14:00:00.000Z"}
    assert len({r["id"] for r in records}) == 2


def test_a_pipe_is_read_as_it_is_written_whatever_the_batch_size(tmp_path):
    """One line into an open pipe makes its trigger record without waiting for a full batch."""
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\ntriggers:\n  t:\n    when: {count: {event: Ping}, within: 1h, at_least: 1}\n")
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", "--rules", str(rules), "--input", "-",
                                "--batch-size", "65536"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(b'{"event":"Ping","userId":"u1","timestamp":1795442400000}\n')
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], 30)  # the pipe is still open
        assert ready, "no trigger record while the pipe stays open"
        record = json.loads(process.stdout.readline())
        assert (record["rule"], record["contact"], record["at"]) == ("t", "u1", "2026-11-23T14:00:00.000Z")
        process.stdin.close()
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()


def test_invalid_rules_exit_2_with_file_line(tmp_path):
    rules = tmp_path / "bad.yaml"
    rules.write_text("version: 1\ntriggers:\n  t:\n    when: {score: nope, rises_above: 1}\n    cooldown: -5m\n")
    for args in (("rules", "check", str(rules)), ("run", "--rules", str(rules), "--input", "-")):
        run = halflife(*args, input=b"")
        assert run.returncode == 2
        lines = run.stderr.decode().splitlines()
        assert any(line.startswith(f"{rules}:4: ") and "nope" in line for line in lines), lines
        assert any(line.startswith(f"{rules}:5: ") for line in lines), lines
        assert "Traceback" not in run.stderr.decode()


def test_rules_check_ok_for_examples():
    run = halflife("rules", "check", str(EXAMPLE_RULES))
    assert run.returncode == 0 and b"ok" in run.stderr


def test_usage_errors_exit_2(tmp_path):
    assert halflife("run", "--rules", str(EXAMPLE_RULES), "--batch-size", "0").returncode == 2
    assert halflife("run", "--rules", str(EXAMPLE_RULES), "--recovery", str(tmp_path)).returncode == 2
    assert halflife("frobnicate").returncode == 2


def test_help_names_env_vars():
    run = halflife("run", "--help")
    assert run.returncode == 0
    text = run.stdout.decode()
    for env in ("HALFLIFE_RULES", "HALFLIFE_INPUT", "HALFLIFE_SHARDS", "HALFLIFE_BATCH_SIZE", "HALFLIFE_RECOVERY"):
        assert env in text


def test_profiles_output(tmp_path):
    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\ntriggers:\n  buyer:\n    when: {count: {event: Order Completed}, within: 1d, "
                     "at_least: 1}\n    actions: [{tag: buyer}, {stage: customer}]\n")
    events = tmp_path / "e.jsonl"
    events.write_text('{"event":"Order Completed","userId":"u9","timestamp":"2026-11-23T15:00:00.5Z"}\n')
    out, prof = tmp_path / "o.jsonl", tmp_path / "p.jsonl"
    run = halflife("run", "--rules", str(rules), "--input", str(events), "--output", str(out),
                   "--profiles", str(prof))
    assert run.returncode == 0, run.stderr
    assert out.read_text() == ""  # profile actions only: no trigger record
    changes = sorted((c["contact"], c["action"], c["value"], c["at"])
                     for c in map(json.loads, prof.read_text().splitlines()))
    assert changes == [("u9", "stage", "customer", "2026-11-23T15:00:00.500Z"),
                       ("u9", "tag", "buyer", "2026-11-23T15:00:00.500Z")]


def test_the_deepest_accepted_event_still_makes_a_trigger_record(tmp_path):
    from engine.decode import MAX_DEPTH

    def nested(levels: int) -> dict:
        props: dict = {}
        cur = props
        for _ in range(levels - 1):
            cur["a"] = {}
            cur = cur["a"]
        return props

    rules = tmp_path / "r.yaml"
    rules.write_text("version: 1\ntriggers:\n  t:\n    when: {count: {event: Ping}, within: 1h, at_least: 1}\n")
    events = tmp_path / "e.jsonl"
    # The event object is level 1, so properties may nest MAX_DEPTH - 1 levels; one more is too deep.
    ok = {"event": "Ping", "userId": "ok", "timestamp": 1795442400000, "properties": nested(MAX_DEPTH - 1)}
    deep = {"event": "Ping", "userId": "deep", "timestamp": 1795442400000, "properties": nested(MAX_DEPTH)}
    events.write_text(json.dumps(ok) + "\n" + json.dumps(deep) + "\n")
    out, dlq = tmp_path / "o.jsonl", tmp_path / "d.jsonl"
    run = halflife("run", "--rules", str(rules), "--input", str(events), "--output", str(out), "--dlq", str(dlq))
    assert run.returncode == 0, run.stderr.decode()[-1000:]
    assert [json.loads(x)["contact"] for x in out.read_text().splitlines()] == ["ok"]
    assert [json.loads(x)["reason"] for x in dlq.read_text().splitlines()] == ["too_deep"]


def test_rerun_of_a_finished_run_with_its_recovery_repeats_the_summary(shop_events, tmp_path):
    args = ["run", "--rules", str(EXAMPLE_RULES), "--input", str(shop_events), "--output", str(tmp_path / "out.jsonl"),
            "--dlq", str(tmp_path / "dlq.jsonl"), "--recovery", str(tmp_path / "rec")]
    first = halflife(*args)
    assert first.returncode == 0, first.stderr.decode()
    written = (tmp_path / "out.jsonl").read_bytes()
    again = halflife(*args)
    assert again.returncode == 0, again.stderr.decode()

    def summary(run: subprocess.CompletedProcess) -> list[str]:
        return [line for line in run.stderr.decode().splitlines() if not line.startswith("wall time")]

    assert summary(again) == summary(first)
    distinct = len({json.loads(line)["messageId"] for line in shop_events.read_text().splitlines()})
    assert summary(first)[0] == f"events in 20000: processed {distinct}, deduplicated {20000 - distinct}, dead-lettered 0"
    assert (tmp_path / "out.jsonl").read_bytes() == written  # the end-of-input timers are not fired twice
