"""`halflife bench baseline`: halflife against the same rules written the idiomatic bytewax way.

    halflife bench baseline [--events 500000] [--contacts 1000000] [--smoke]

One workload file (no late events: disorder 0; a few SDK-retry duplicates), both dataflows in this
process, one after the other, each with the lines in memory, one bytewax worker and a sink that
keeps the trigger records: halflife's (`engine.dataflow.build_flow`, as `bench hotpath` runs it)
and the baseline (`bench.baselines.idiomatic`: key by contact, one `StatefulLogic` per contact,
per-key timers). The sets of (rule, contact, at, channel) must be equal, or the comparison is not
honest: the command then fails (exit 1) and shows the differences. Reports both rates (wall and
per core) and their ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from datetime import timedelta
from typing import Any

from bench.common import EXAMPLE_RULES, Timer, new_result, read_lines, table, trigger_keys, write_result
from bench.hotpath import BlackholeSink, prepare_input, run_halflife


def run_baseline(lines: list[bytes], rules: str, *, batch_size: int = 1000, epoch_s: float = 10.0) -> dict[str, Any]:
    from bytewax._bytewax import cli_main

    from bench.baselines.idiomatic import build_flow
    from engine.dataflow import load_plan

    plan = load_plan(rules)
    collected: list[bytes] = []
    sink = BlackholeSink(collected)
    flow = build_flow(plan, lines, sink, batch_size)
    with Timer() as timer:
        cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=epoch_s))
    events = len(lines)
    return {
        "events": events,
        "wall_s": timer.wall,
        "cpu_s": timer.cpu,
        "events_per_s": events / timer.wall if timer.wall else 0.0,
        "cpu_s_per_million": timer.cpu / events * 1e6 if events else 0.0,
        "per_core_events_per_s": events / timer.cpu if timer.cpu else 0.0,
        "trigger_records": sink.items,
        "trigger_lines": collected,
    }


def main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.events = min(args.events, 10_000)
        args.contacts = min(args.contacts, 3_000)
        args.sessions_per_second = min(args.sessions_per_second, 0.2)  # timers fire within 10k events
        args.jobs = 1
    args.rules = args.rules or str(EXAMPLE_RULES)
    result = new_result("baseline", args)
    with tempfile.TemporaryDirectory(prefix="halflife-bench-") as tmp:
        path, gen = prepare_input(args, tmp, disorder_ms=0, duplicates=args.duplicates)
        result["workload"] = gen
        lines = read_lines(path)
    result["rules"] = os.path.relpath(args.rules)
    hl = run_halflife(b"\n".join(lines) + b"\n", args.rules, shards=args.shards, batch_size=args.batch_size,
                      collect=True)
    hl_keys = trigger_keys(hl.pop("trigger_lines"))
    if hl["summary"].get("late"):
        print(f"warning: {hl['summary']['late']} late events: the baseline fires timers by the contact path only")
    base = run_baseline(lines, args.rules, batch_size=args.batch_size)
    base_keys = trigger_keys(base.pop("trigger_lines"))
    a, b = set(hl_keys), set(base_keys)
    equal = hl_keys == base_keys
    result["halflife"] = hl
    result["baseline"] = base
    result["triggers"] = {
        "equal": equal,
        "halflife": len(hl_keys),
        "baseline": len(base_keys),
        "only_halflife": [list(k) for k in sorted(a - b)[:20]],
        "only_baseline": [list(k) for k in sorted(b - a)[:20]],
        "duplicates_halflife": len(hl_keys) - len(a),
        "duplicates_baseline": len(base_keys) - len(b),
    }
    result["ratio"] = hl["events_per_s"] / base["events_per_s"] if base["events_per_s"] else 0.0
    result["ratio_per_core"] = (hl["per_core_events_per_s"] / base["per_core_events_per_s"]
                                if base["per_core_events_per_s"] else 0.0)
    written = write_result("baseline", result, args.results_dir)
    print(report(result))
    print(f"\nwritten {written}")
    if not equal:
        print("\nFAILED: halflife and the baseline fired different triggers; the comparison is not valid.")
        return 1
    return 0


def report(result: dict[str, Any]) -> str:
    hl, base, trig = result["halflife"], result["baseline"], result["triggers"]
    out = [f"halflife bench baseline: {hl['events']:,} events ({result['workload'].get('events_per_s', 0):,.0f} "
           f"events/s generated), {os.path.basename(result['rules'])}, 1 worker each"]
    out.append(table([
        ["halflife (engine.dataflow)", hl["events_per_s"], hl["cpu_s_per_million"], hl["per_core_events_per_s"],
         trig["halflife"]],
        ["idiomatic bytewax (bench/baselines)", base["events_per_s"], base["cpu_s_per_million"],
         base["per_core_events_per_s"], trig["baseline"]],
    ], ["dataflow", "events/s", "CPU s per million", "events/s per core", "triggers"]))
    out.append("")
    out.append(f"triggers equal (rule, contact, at, channel): {'yes' if trig['equal'] else 'NO'}")
    if not trig["equal"]:
        out.append(f"  only in halflife ({len(trig['only_halflife'])} shown): {trig['only_halflife'][:5]}")
        out.append(f"  only in the baseline ({len(trig['only_baseline'])} shown): {trig['only_baseline'][:5]}")
    out.append(f"halflife / baseline: {result['ratio']:.1f}x events/s, {result['ratio_per_core']:.1f}x per core")
    return "\n".join(out)
