"""`halflife bench …`: the benchmarks. Light to import: each subcommand imports its module when it runs.

    halflife bench workload  --events N --output FILE|redis://…   the workload generator and its rate
    halflife bench hotpath   [--events N] [--state-contacts N]       in-process dataflow, CPU/event, state bytes
    halflife bench baseline  [--events N]                           the same rules the idiomatic bytewax way
    halflife bench e2e       [--processes 1,2]                      through Redis: sustainable rate, latency
    halflife bench collector [--seconds S] [--locust]               HTTP collector: events/s, request latency
    halflife bench snapshots [--contacts N]                         the pause bytewax's epoch snapshots cause
    halflife bench report                                           bench/results/report.md with plots

Every subcommand prints a table and writes bench/results/<UTC timestamp>-<name>.json (`--results-dir`);
`--smoke` runs it at tiny sizes in seconds (CI keeps the benches working; it never asserts speed).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable

SUBCOMMANDS = {
    "workload": ("bench.workload", "generate the benchmark workload (file or Redis) and report the rate"),
    "hotpath": ("bench.hotpath", "the dataflow in one process: events/s, CPU s per million, stages, state bytes"),
    "baseline": ("bench.baseline", "halflife vs the same rules written the idiomatic bytewax way, same file"),
    "e2e": ("bench.e2e", "Redis end to end: max sustainable rate, event->trigger latency histogram"),
    "collector": ("bench.collector", "the HTTP collector under /v1/batch load: events/s accepted, latency"),
    "snapshots": ("bench.snapshot_pause", "the pause of the epoch snapshots with real state: plain vs packed"),
    "report": ("bench.report", "markdown report with plots from the latest results"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds (for CI)")
        p.add_argument("--results-dir", help="where the JSON results go (default bench/results)")
        ARGUMENTS[name](p)


def _workload(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=5_000_000, help="number of events (default %(default)s)")
    p.add_argument("--output", help="JSON Lines file, or redis://HOST:PORT/DB (default: a temporary file)")
    p.add_argument("--contacts", type=int, default=1_000_000, help="contact pool, up to 10M (default %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="random seed (default %(default)s)")
    p.add_argument("--zipf", type=float, default=1.1, help="contact popularity exponent (default %(default)s)")
    p.add_argument("--sessions-per-second", type=float, default=50.0,
                   help="session starts per second of event time (default %(default)s)")
    p.add_argument("--disorder-ms", type=int, default=0, help="bounded timestamp disorder (default %(default)s)")
    p.add_argument("--duplicates", type=float, default=0.0, help="fraction of events re-sent (default %(default)s)")
    p.add_argument("--shards", type=int, default=64, help="Redis output: shard streams (default %(default)s)")
    p.add_argument("--entry-events", type=int, default=100, help="Redis output: events per XADD entry")
    p.add_argument("--jobs", type=int, default=2,
                   help="worker processes formatting (file) or writing (Redis) in parallel (default %(default)s)")


def _common_workload(p: argparse.ArgumentParser, events: int) -> None:
    p.add_argument("--events", type=int, default=events, help="workload events (default %(default)s)")
    p.add_argument("--contacts", type=int, default=1_000_000, help="workload contact pool (default %(default)s)")
    p.add_argument("--input", help="a pre-generated workload file (default: generate one with --seed)")
    p.add_argument("--rules", help="rules (default: rules/examples/ecommerce.yaml)")
    p.add_argument("--shards", type=int, default=64, help="virtual shards (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=65536, help="input lines per batch (default %(default)s)")
    p.add_argument("--seed", type=int, default=7, help="workload seed (default %(default)s)")
    p.add_argument("--sessions-per-second", type=float, default=5.0,
                   help="workload sessions per second of event time: with 5, 2M events span about 11 hours, so "
                        "the 15 min-2 h timers fire (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="processes generating the workload file (default %(default)s)")


def _contact_counts(value: str) -> list[int]:
    try:
        counts = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of contact counts: {value!r}") from None
    if any(c <= 0 for c in counts):
        raise argparse.ArgumentTypeError(f"contact counts are positive: {value!r}")
    return counts


def _hotpath(p: argparse.ArgumentParser) -> None:
    _common_workload(p, 2_000_000)
    p.add_argument("--state-contacts", type=int, default=1_000_000,
                   help="contacts in the state whose bytes are counted; 0 skips it (default %(default)s)")
    p.add_argument("--state-sweep", type=_contact_counts, default=[],
                   help="more contact counts to measure the state at, comma-separated (bytes per contact depend on "
                        "where the shards' arrays stand in their growth): 800000,1200000,1500000")
    p.add_argument("--repeat", type=int, default=3,
                   help="runs of the dataflow in this process; the one of median CPU time is reported, every run's "
                        "figure listed: the machines are shared and noisy (default %(default)s)")
    p.add_argument("--profile", action="store_true",
                   help="run the dataflow under cProfile: top functions printed, stats saved next to the JSON")


def _baseline(p: argparse.ArgumentParser) -> None:
    _common_workload(p, 500_000)
    p.add_argument("--duplicates", type=float, default=0.005, help="workload duplicate rate (default %(default)s)")


def _e2e(p: argparse.ArgumentParser) -> None:
    p.add_argument("--processes", default="1,2", help="engine process counts to measure (default %(default)s)")
    p.add_argument("--rates", help="offered rates to sweep, events/s, comma-separated (default: a geometric search)")
    p.add_argument("--start-rate", type=float, default=25_000, help="first rate of the search (default %(default)s)")
    p.add_argument("--factor", type=float, default=1.5, help="rate step of the search (default %(default)s)")
    p.add_argument("--max-rate", type=float, default=2_000_000, help="stop the search here (default %(default)s)")
    p.add_argument("--step-seconds", type=float, default=12.0, help="seconds per rate (default %(default)s)")
    p.add_argument("--latency-seconds", type=float, default=20.0,
                   help="seconds of the run at 50%% of the maximum rate (default %(default)s)")
    p.add_argument("--contacts", type=int, default=200_000, help="workload contact pool (default %(default)s)")
    p.add_argument("--shards", type=int, default=64, help="shard streams (default %(default)s)")
    p.add_argument("--entry-events", type=int, default=100, help="events per XADD entry at most (default %(default)s)")
    p.add_argument("--rules", help="rules (default: bench/rules/e2e.yaml)")
    p.add_argument("--batch-size", type=int, default=65536, help="engine --batch-size (default %(default)s)")
    p.add_argument("--snapshot-interval", type=float, default=10.0,
                   help="engine --snapshot-interval, the engine's own default (default %(default)s)")
    p.add_argument("--seed", type=int, default=11)


def _collector(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=15.0, help="measured seconds (default %(default)s)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring (default %(default)s)")
    p.add_argument("--connections", type=int, default=16, help="aiohttp client connections (default %(default)s)")
    p.add_argument("--batch", type=int, default=100, help="events per /v1/batch request (default %(default)s)")
    p.add_argument("--shards", type=int, default=64, help="collector --shards (default %(default)s)")
    p.add_argument("--locust", action="store_true", help="drive it with locust (bench/locustfile.py) instead")
    p.add_argument("--users", type=int, default=32, help="locust users (default %(default)s)")


def _snapshots(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contacts", type=int, default=200_000, help="contacts in the state (default %(default)s)")
    p.add_argument("--rules", help="rules (default: bench/rules/e2e.yaml)")
    p.add_argument("--seconds", type=float, default=9.0, help="seconds per run (default %(default)s)")
    p.add_argument("--epoch", type=float, default=2.0, help="epoch length, seconds (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternated (default %(default)s)")
    p.add_argument("--recovery-dir", help="where the recovery files go (default: a temporary directory)")


def _report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", help="report path (default: <results dir>/report.md)")


ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "workload": _workload, "hotpath": _hotpath, "baseline": _baseline, "e2e": _e2e, "collector": _collector,
    "snapshots": _snapshots, "report": _report,
}


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(SUBCOMMANDS[args.bench_command][0])
    return int(module.main(args))


def standalone(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(standalone())
