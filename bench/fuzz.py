"""The long hostile-input run: the property tests of tests/fuzz under hypothesis' "long" profile.

    .venv/bin/python -m bench.fuzz [--examples 100000] [--dataflow-examples 2000]
                                   [--groups decoder,loader,collector,dataflow] [--jobs 2] [--seed N]

CI runs the same properties with a few hundred examples each (profile "ci"); this runs
`--examples` per property (the dataflow properties, a whole bytewax run per example, get
`--dataflow-examples`). Groups run as separate pytest processes, `--jobs` at a time; each group's
full output (with hypothesis' statistics and any falsifying example) is kept in
bench/results/fuzz-<group>.log. Prints, per property, the examples run and the time, and exits 1
when any property failed. The collector group needs `redis-server` on the PATH (as the tests do).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
GROUPS: dict[str, list[str]] = {
    "decoder": ["tests/fuzz/test_fuzz_decode.py"],
    "loader": ["tests/fuzz/test_fuzz_rules.py", "-k", "not cli"],
    "collector": ["tests/fuzz/test_fuzz_collector.py"],
    "dataflow": ["tests/fuzz/test_fuzz_dataflow.py", "-k", "accounts_for_every_line"],
}
_TEST = re.compile(r"^(tests/fuzz/\S+::\S+):$")
_COUNTS = re.compile(r"(\d+) passing, (\d+) failing, and (\d+) invalid test cases")
_STOPPED = re.compile(r"Stopped because (.+)$")
_SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|errors?|xfailed)\b.*?) in [\d.]+s", re.M)


@dataclass
class Property:
    name: str
    passing: int = 0
    failing: int = 0
    invalid: int = 0
    stopped: str = ""


@dataclass
class GroupResult:
    group: str
    returncode: int
    seconds: float
    summary: str
    log: Path
    properties: list[Property] = field(default_factory=list)


def parse_statistics(output: str) -> list[Property]:
    """Per property: the examples hypothesis ran in every phase, and why it stopped."""
    found: list[Property] = []
    current: Property | None = None
    for line in output.splitlines():
        test = _TEST.match(line.strip())
        if test:
            current = Property(test.group(1).split("::", 1)[1])
            found.append(current)
            continue
        if current is None:
            continue
        counts = _COUNTS.search(line)
        if counts:
            current.passing += int(counts.group(1))
            current.failing += int(counts.group(2))
            current.invalid += int(counts.group(3))
        stopped = _STOPPED.search(line)
        if stopped:
            current.stopped = stopped.group(1).strip()
    return found


def run_group(group: str, examples: int, dataflow_examples: int, seed: int | None) -> GroupResult:
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"fuzz-{group}.log"
    env = {**os.environ, "HYPOTHESIS_PROFILE": "long", "HALFLIFE_FUZZ_EXAMPLES": str(examples),
           "HALFLIFE_FUZZ_DATAFLOW_EXAMPLES": str(dataflow_examples), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
            "-o", "addopts=", *GROUPS[group]]
    if seed is not None:
        argv += [f"--hypothesis-seed={seed}"]
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    summaries = _SUMMARY.findall(text)
    return GroupResult(group, done.returncode, seconds, summaries[-1] if summaries else "(no pytest summary)", log,
                       parse_statistics(text))


def report(results: list[GroupResult], examples: int, dataflow_examples: int) -> str:
    lines = [f"halflife fuzz: profile long, {examples:,} examples per property "
             f"({dataflow_examples:,} for whole dataflow runs)"]
    for result in results:
        status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
        lines.append(f"\n{result.group}: {status}, {result.seconds / 60:.1f} min, {result.summary}  [{result.log}]")
        for prop in result.properties:
            lines.append(f"  {prop.name:<58} {prop.passing:>8,} passing {prop.failing:>3} failing "
                         f"{prop.invalid:>7,} invalid  ({prop.stopped})")
    total = sum(p.passing for r in results for p in r.properties)
    failing = sum(p.failing for r in results for p in r.properties)
    wall = max((r.seconds for r in results), default=0.0)
    lines.append(f"\ntotal: {total:,} passing examples, {failing} failing, "
                 f"{sum(r.seconds for r in results) / 60:.1f} min of group time ({wall / 60:.1f} min for the longest)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000, help="examples per property (default 100000)")
    parser.add_argument("--dataflow-examples", type=int, default=2_000,
                        help="examples per whole-dataflow property (default 2000)")
    parser.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated, of {', '.join(GROUPS)}")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="groups run at once")
    parser.add_argument("--seed", type=int, help="hypothesis seed (default: random)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown or not groups or args.examples < 1 or args.dataflow_examples < 1 or args.jobs < 1:
        parser.error(f"unknown group(s) {unknown}" if unknown else "nothing to run")
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda g: run_group(g, args.examples, args.dataflow_examples, args.seed), groups))
    print(report(results, args.examples, args.dataflow_examples))
    print(f"wall time {(time.monotonic() - started) / 60:.1f} min")
    return 0 if all(r.returncode == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
