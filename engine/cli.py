"""`halflife` command line. Every flag falls back to a HALFLIFE_* environment variable,
and `--help` names it. Exit codes: 0 success, 2 usage or invalid rules, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import orjson

from engine.argtypes import positive_float, positive_int
from engine.config import RunConfig, is_redis
from rules import RuleError, check_rules


class _EnvDefault(argparse.Action):
    """An option whose default comes from an environment variable, named in --help."""

    def __init__(self, option_strings: list[str], dest: str, env: str | None = None, default: Any = None,
                 required: bool = False, help: str | None = None, **kwargs: Any) -> None:
        env = env or "HALFLIFE_" + dest.upper()
        shown = default
        if env in os.environ:
            default = os.environ[env]
            required = False
            shown = f"from {env}"  # never print the value: it may be a URL with a password
        help = f"{help or ''} [env: {env}]" + (f" (default: {shown})" if shown is not None else "")
        super().__init__(option_strings, dest, default=default, required=required, help=help, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halflife", description="Real-time behavioral trigger engine.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the dataflow on events (replay mode: a file or stdin)",
                         description="Run the dataflow: events in, triggers out (JSON Lines).")
    run.add_argument("--rules", action=_EnvDefault, required=True, help="rule file or directory")
    run.add_argument("--input", action=_EnvDefault, default="-",
                     help="JSON Lines events file, - for stdin, or redis://HOST:PORT/DB for the shard streams (live)")
    run.add_argument("--output", action=_EnvDefault, default="-",
                     help="trigger records: file, - for stdout, or redis://… (hl:triggers and hl:triggers:{channel})")
    run.add_argument("--dlq", action=_EnvDefault, default="stderr",
                     help="dead letters (JSON with reason and raw line): file, stderr, or redis://… (hl:dlq)")
    run.add_argument("--profiles", action=_EnvDefault,
                     help="profile changes (tag, untag, stage): file, or redis://… (hl:contact:{id}, hl:tag:{name})")
    run.add_argument("--webhook", action="append", default=[], metavar="CHANNEL=URL",
                     help="POST the channel's triggers to URL (repeatable; secret from "
                          "HALFLIFE_WEBHOOK_SECRET_<CHANNEL>) [env: HALFLIFE_WEBHOOKS, comma-separated]")
    run.add_argument("--webhook-max-attempts", action=_EnvDefault, type=positive_int, default=8,
                     help="delivery attempts per webhook before it goes to hl:webhooks:failed")
    run.add_argument("--prefix", action=_EnvDefault, default="hl:", help="Redis key prefix")
    run.add_argument("--recovery", action=_EnvDefault,
                     help="recovery directory (bytewax SQLite snapshots); a killed run resumes from it")
    run.add_argument("--workers", action=_EnvDefault, type=positive_int, default=1,
                     help="worker threads per process")
    run.add_argument("--processes", action=_EnvDefault, type=positive_int, default=1,
                     help="local processes forming one bytewax cluster (supervised)")
    run.add_argument("--batch-size", action=_EnvDefault, type=positive_int, default=65536,
                     help="most input lines per batch (a pipe or a live stream passes on what it has)")
    run.add_argument("--shards", action=_EnvDefault, type=positive_int, default=64,
                     help="virtual shards (state partitions); the unit of parallelism")
    run.add_argument("--snapshot-interval", action=_EnvDefault, type=positive_float, default=10.0,
                     help="seconds between recovery snapshots (the bytewax epoch)")
    run.add_argument("--metrics-port", action=_EnvDefault, type=int,
                     help="serve Prometheus /metrics on this port (process i of --processes N uses port + i)")
    run.add_argument("--metrics-host", action=_EnvDefault, default="127.0.0.1", help="address /metrics binds to")
    run.add_argument("--process-id", action=_EnvDefault, type=int,
                     help="run as member N of a cluster spread over machines (with --addresses; no local "
                          "supervisor: the orchestrator restarts members, all from --recovery)")
    run.add_argument("--addresses", action=_EnvDefault,
                     help='every member\'s "host:port", separated by ";" (with --process-id)')
    # Set by the local cluster supervisor for its children; not for people.
    run.add_argument("--summary-path", help=argparse.SUPPRESS)

    collect = sub.add_parser("collect", help="the Segment-compatible HTTP collector (writes Redis shard streams)",
                             description="Segment-compatible HTTP collector: /v1/track, /v1/page, /v1/identify, "
                                         "/v1/screen, /v1/batch -> Redis shard streams.")
    from engine import collector

    collector.add_arguments(collect)

    profile = sub.add_parser("profile", help="print a contact's profile from Redis")
    from engine import redis_sinks

    redis_sinks.add_profile_arguments(profile)

    rules = sub.add_parser("rules", help="rule file tools")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    check = rules_sub.add_parser("check", help="validate rules; prints errors as file:line: message")
    check.add_argument("path", help="rule file or directory")

    demo = sub.add_parser("demo", help="a synthetic shop streamed through the engine, triggers printed live")
    demo.add_argument("--rules", action=_EnvDefault, help="rule file or directory (default: shipped e-commerce rules)")
    demo.add_argument("--contacts", action=_EnvDefault, type=positive_int, default=300, help="shoppers in the pool")
    demo.add_argument("--seconds", action=_EnvDefault, type=positive_float, default=20.0,
                      help="how long to run (wall clock)")
    demo.add_argument("--speed", action=_EnvDefault, type=positive_float, default=10.0,
                      help="shop minutes per wall-clock second")
    demo.add_argument("--seed", action=_EnvDefault, type=int, default=7, help="random seed")

    bench = sub.add_parser("bench", help="the benchmarks (workload, hotpath, baseline, e2e, collector, report)",
                           description="The benchmarks; each prints a table and writes bench/results/*.json.")
    from bench import cli as bench_cli  # argument definitions only: each benchmark imports its module when run

    bench_cli.add_arguments(bench)
    return parser


def _webhook_specs(args: argparse.Namespace) -> list[str]:
    specs = list(args.webhook)
    if not specs and os.environ.get("HALFLIFE_WEBHOOKS"):
        specs = [x.strip() for x in os.environ["HALFLIFE_WEBHOOKS"].split(",") if x.strip()]
    return specs


def _run_config(args: argparse.Namespace, summary_path: str | None) -> RunConfig:
    webhooks = {}
    specs = _webhook_specs(args)
    if specs:
        from engine.webhooks import load_webhook_secrets, parse_webhook_specs

        # Only HALFLIFE_WEBHOOK_SECRET_* variables: a channel named like another variable (HOME) must not
        # sign with that variable's value.
        webhooks = parse_webhook_specs(specs, load_webhook_secrets(None, os.environ))
    return RunConfig(
        rules=args.rules, input=args.input, output=args.output, dlq=args.dlq, profiles=args.profiles,
        recovery=args.recovery, workers=int(args.workers), processes=int(args.processes),
        batch_size=int(args.batch_size), shards=int(args.shards),
        snapshot_interval_s=float(args.snapshot_interval), summary_path=summary_path,
        prefix=args.prefix, webhooks=webhooks, webhook_max_attempts=int(args.webhook_max_attempts),
        metrics_port=None if args.metrics_port is None else int(args.metrics_port), metrics_host=args.metrics_host,
    )


def _cmd_rules_check(args: argparse.Namespace) -> int:
    problems = check_rules(args.path)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 2
    print(f"{args.path}: ok", file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from engine import runner

    problems = check_rules(args.rules)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 2
    if args.recovery and args.input == "-":
        print("halflife run: --recovery needs --input FILE (stdin cannot be replayed after a crash)",
              file=sys.stderr)
        return 2
    if is_redis(args.input) and not args.recovery:
        print("halflife run: live mode (--input redis://…) needs --recovery DIR: the engine resumes its streams "
              "from its snapshots and trims only what they hold", file=sys.stderr)
        return 2
    if (args.process_id is None) != (args.addresses is None):
        print("halflife run: --process-id and --addresses go together", file=sys.stderr)
        return 2
    if args.process_id is not None:  # one member of a cluster (a child of the supervisor, or a pod)
        addresses = [a for a in args.addresses.split(";") if a]
        if not 0 <= int(args.process_id) < len(addresses):
            print(f"halflife run: --process-id {args.process_id} is not an index into {len(addresses)} addresses",
                  file=sys.stderr)
            return 2
        cfg = _run_config(args, args.summary_path)
        runner.run_cluster_process(cfg, int(args.process_id), addresses)
        return 0
    try:
        _run_config(args, None)
    except ValueError as exc:
        print(f"halflife run: {exc}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="halflife-run-") as tmp:
        cfg = _run_config(args, os.path.join(tmp, "summary.json"))
        started = time.monotonic()
        argv, env = _child_argv(args)
        code = runner.run(cfg, argv_for_children=argv, env_for_children=env)
        wall = time.monotonic() - started
        if code != 0 or cfg.live:
            return code
        try:
            with open(cfg.summary_path or "", "rb") as f:
                summary = orjson.loads(f.read())
        except OSError:
            print("halflife run: the dataflow ended without a summary (input did not reach its end?)",
                  file=sys.stderr)
            return 1
    print(runner.format_summary(summary, wall), file=sys.stderr)
    return 0


def _child_argv(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """A cluster member's arguments, and the variables that carry the rest: where it reads and writes
    (URLs may hold a Redis password, and any local user can read a command line in `ps`)."""
    argv = ["run", "--rules", args.rules, "--workers", str(args.workers), "--processes", "1",
            "--batch-size", str(args.batch_size), "--shards", str(args.shards),
            "--snapshot-interval", str(args.snapshot_interval)]
    carried = {"HALFLIFE_INPUT": args.input, "HALFLIFE_OUTPUT": args.output, "HALFLIFE_DLQ": args.dlq,
               "HALFLIFE_PROFILES": args.profiles, "HALFLIFE_WEBHOOKS": ",".join(_webhook_specs(args))}
    env = {name: value for name, value in carried.items() if value}
    if args.recovery:
        argv += ["--recovery", args.recovery]
    argv += ["--webhook-max-attempts", str(args.webhook_max_attempts)]
    if args.metrics_port is not None:
        argv += ["--metrics-port", str(args.metrics_port), "--metrics-host", args.metrics_host]
    return argv + ["--prefix", args.prefix], env


def _cmd_demo(args: argparse.Namespace) -> int:
    from engine import demo

    return demo.main(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "rules":
            return _cmd_rules_check(args)
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "collect":
            from engine import collector

            return collector.main(args)
        if args.command == "profile":
            from engine import redis_sinks

            return redis_sinks.profile_main(args)
        if args.command == "bench":
            from bench import cli as bench_cli

            return bench_cli.main(args)
    except RuleError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
