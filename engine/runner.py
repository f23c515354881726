"""Runs the dataflow: in this process, or as a supervised local cluster of processes.

bytewax has no multi-process launcher for production: each process runs `cli_main`
with its process id and every address. `--processes N` starts N children of this
command on free localhost ports and supervises them. The cluster fails together (when
one process dies its peers exit), so recovery means restarting the whole cluster from
the recovery directory; the supervisor does that until MAX_RESTARTS quick failures in a
row (a cluster that ran for STABLE_AFTER_S resets the count). A start-up
watchdog restarts a cluster that has not started within STARTUP_TIMEOUT_S (a small
fraction of two-process start-ups were seen to hang silently).
"""

from __future__ import annotations

import contextlib
import gc
import glob
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig, init_db_dir

from engine import metrics
from engine.config import RunConfig, is_redis
from engine.dataflow import build_flow, load_plan
from engine.sources import STARTED_DIR_ENV
from engine.warmup import load_kernels

MAX_RESTARTS = 5  # consecutive quick failures before the supervisor gives up
STABLE_AFTER_S = 60.0  # a cluster that ran this long resets the count
NOT_STARTED = -1000  # a cluster that hung at start-up wrote nothing: always safe to start again
STARTUP_TIMEOUT_S = 60.0
RECOVERY_PARTITIONS_MIN = 8


def _recovery(cfg: RunConfig) -> RecoveryConfig | None:
    if not cfg.recovery:
        return None
    return RecoveryConfig(Path(cfg.recovery), backup_interval=timedelta(0))


def prepare_recovery(cfg: RunConfig) -> bool:
    """Create the recovery partitions once (their count is fixed for the directory's life).

    Returns True when this run starts fresh, False when it resumes.
    """
    if not cfg.recovery:
        return True
    if glob.glob(os.path.join(cfg.recovery, "*.sqlite3")):
        make_recovery_private(cfg.recovery)
        return False
    # Create the partitions beside the directory and rename them into place in one step: a
    # run killed during creation must not leave a partial set that no later run could start from.
    parent = os.path.dirname(os.path.abspath(cfg.recovery))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".halflife-recovery-", dir=parent)
    previous_umask = os.umask(0o077)  # SQLite creates the files: private from their first byte
    try:
        init_db_dir(Path(staging), max(RECOVERY_PARTITIONS_MIN, cfg.workers * cfg.processes))
        for part in glob.glob(os.path.join(staging, "*.sqlite3")):
            os.chmod(part, 0o600)
        os.chmod(staging, 0o700)
        if os.path.isdir(cfg.recovery):
            os.rmdir(cfg.recovery)  # empty (no partitions): replaced by the staged one
        os.rename(staging, cfg.recovery)
    finally:
        os.umask(previous_umask)
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return True


def make_recovery_private(directory: str) -> None:
    """Mode 0700 for an existing recovery directory and 0600 for every file in it.

    A directory made beforehand (by a deployment, a restore from backup, an older version) may be
    wider; whoever can read it reads contact state, whoever can write it runs code at resume (the
    snapshots are pickles). What this user owns is fixed; anything else that is open to others is
    reported on stderr (only its owner or root can change it). Subdirectories (a member's staging
    directory) are made with mkdtemp, 0700, and left alone.
    """
    uid = os.geteuid()

    def fix(path: str, st: os.stat_result, want: int) -> None:
        mode = stat.S_IMODE(st.st_mode)
        if mode == want:
            return
        if st.st_uid == uid:
            try:
                os.chmod(path, want)
                return
            except FileNotFoundError:  # a journal SQLite removed meanwhile
                return
            except OSError:
                pass
        if mode & 0o077:
            print(f"halflife: {path} is mode {mode:04o}, owned by uid {st.st_uid}: it should be {want:04o} "
                  f"(recovery snapshots are pickles: whoever can write them runs code at resume); fix its mode "
                  "or owner", file=sys.stderr)

    fix(directory, os.stat(directory), 0o700)
    with os.scandir(directory) as entries:
        for entry in entries:
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            fix(entry.path, st, 0o600)


def prepare_outputs(cfg: RunConfig) -> None:
    """Empty the output files of a fresh run.

    A sink partition is only built when its first item arrives, so an output that
    receives nothing in this run would otherwise keep an earlier run's lines.
    """
    for path in (cfg.output, cfg.dlq, cfg.profiles):
        if (path and path not in ("-", "stderr") and not is_redis(path)
                and (not os.path.exists(path) or os.path.isfile(path))):
            with open(path, "wb"):
                pass


def run_in_process(cfg: RunConfig, process_id: int | None = None, addresses: list[str] | None = None) -> None:
    plan = load_plan(cfg.rules)
    flow = build_flow(cfg, plan)
    load_kernels(plan)
    # What exists now (modules, numba's dispatchers, the compiled plan) lives as long as the process;
    # frozen out of the collector, it is no longer walked by every full collection, each of which
    # paused the worker for 60-120 ms at 90k events/s.
    gc.freeze()
    if cfg.metrics_port is not None:
        metrics.serve(cfg.metrics_port, cfg.metrics_host)
    cli_main(
        flow,
        workers_per_process=cfg.workers,
        process_id=process_id,
        addresses=addresses,
        epoch_interval=timedelta(seconds=cfg.snapshot_interval_s),
        recovery_config=_recovery(cfg),
    )


def run_cluster_process(cfg: RunConfig, process_id: int, addresses: list[str]) -> None:
    prepare_member_recovery(cfg, process_id, len(addresses))
    run_in_process(cfg, process_id, addresses)


def prepare_member_recovery(cfg: RunConfig, process_id: int, members: int) -> None:
    """A cluster member creates its share of the recovery partitions (j mod members == its id).

    Members on one shared directory together create them all; members with a volume
    each (one per pod) get exactly theirs. A directory that has partitions is left alone.
    The local supervisor creates them all before starting its children.
    """
    if not cfg.recovery:
        return
    os.makedirs(cfg.recovery, mode=0o700, exist_ok=True)
    make_recovery_private(cfg.recovery)  # makedirs leaves the mode of a directory that existed as it was
    if glob.glob(os.path.join(cfg.recovery, "*.sqlite3")):
        return
    count = max(RECOVERY_PARTITIONS_MIN, cfg.workers * members)
    with tempfile.TemporaryDirectory(prefix="halflife-recovery-", dir=cfg.recovery) as staging:
        previous_umask = os.umask(0o077)
        try:
            init_db_dir(Path(staging), count)
        finally:
            os.umask(previous_umask)
        for j in range(process_id, count, members):
            name = f"part-{j}.sqlite3"
            os.chmod(os.path.join(staging, name), 0o600)
            os.replace(os.path.join(staging, name), os.path.join(cfg.recovery, name))


def _free_ports(n: int, avoid: frozenset[int] = frozenset()) -> list[int]:
    """`n` distinct localhost ports free right now, none in `avoid` (ports this run will bind later,
    such as the members' metrics ports: the OS hands out ports near each other, so a cluster
    address could otherwise land on metrics port P + 1)."""
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        while len(ports) < n:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _run_cluster_once(cfg: RunConfig, argv: list[str], started_timeout_s: float,
                      extra_env: dict[str, str] | None = None) -> int:
    metrics_ports = (frozenset() if cfg.metrics_port is None
                     else frozenset(range(cfg.metrics_port, cfg.metrics_port + cfg.processes)))
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(cfg.processes, avoid=metrics_ports))
    with tempfile.TemporaryDirectory(prefix="halflife-cluster-") as started_dir:
        env = {**os.environ, **(extra_env or {}), STARTED_DIR_ENV: started_dir}
        procs = []
        for i in range(cfg.processes):
            member = [*argv, "--process-id", str(i), "--addresses", addresses, "--summary-path", cfg.summary_path or ""]
            if cfg.metrics_port is not None:  # one port per local process: P, P + 1, ...
                member += ["--metrics-port", str(cfg.metrics_port + i), "--metrics-host", cfg.metrics_host]
            procs.append(subprocess.Popen([sys.executable, "-m", "engine", *member], env=env))
        launched = time.monotonic()
        try:
            while True:
                codes = [p.poll() for p in procs]
                if all(c == 0 for c in codes):
                    return 0
                failed = [c for c in codes if c not in (None, 0)]
                if failed:
                    print(f"halflife: a cluster process exited with {failed[0]}; stopping the cluster",
                          file=sys.stderr)
                    return failed[0] or 1
                if (time.monotonic() - launched > started_timeout_s
                        and len(os.listdir(started_dir)) < cfg.processes):
                    print(f"halflife: the cluster did not start within {started_timeout_s:g} s; stopping it",
                          file=sys.stderr)
                    return NOT_STARTED
                time.sleep(0.1)
        finally:
            _stop(procs)


def run(cfg: RunConfig, argv_for_children: list[str], env_for_children: dict[str, str] | None = None) -> int:
    """`env_for_children`: variables for cluster members on top of this process's environment."""
    if prepare_recovery(cfg):
        prepare_outputs(cfg)
    if cfg.processes == 1:
        run_in_process(cfg)
        return 0
    restarts = 0
    while True:
        started = time.monotonic()
        code = _run_cluster_once(cfg, argv_for_children, STARTUP_TIMEOUT_S, env_for_children)
        if code == 0:
            return 0
        if code != NOT_STARTED and not cfg.recovery:
            return 1  # without recovery a restart would replay outputs already written
        # Only a crash loop gives up: a cluster that ran for a while earns its restarts back,
        # so a long-running live cluster survives any number of occasional crashes.
        restarts = 1 if time.monotonic() - started > STABLE_AFTER_S else restarts + 1
        if restarts > MAX_RESTARTS:
            print(f"halflife: the cluster failed {MAX_RESTARTS + 1} times in a row; giving up", file=sys.stderr)
            return 1
        print(f"halflife: restarting the cluster{' from ' + cfg.recovery if cfg.recovery else ''} "
              f"(restart {restarts} of {MAX_RESTARTS} in a row)", file=sys.stderr)


def format_summary(summary: dict[str, Any], wall_s: float) -> str:
    lines = [
        f"events in {summary['events_in']}: processed {summary['processed']}, "
        f"deduplicated {summary['deduplicated']}, dead-lettered {summary['dead_lettered']}"
        + (f" {summary['dead_letter_reasons']}" if summary["dead_letter_reasons"] else "")
        + (f", late {summary['late']}" if summary.get("late") else ""),
    ]
    triggers = summary["triggers"]
    total = sum(triggers.values())
    lines.append(f"triggers fired {total}" + "".join(f"\n  {rule:<24} {n}" for rule, n in triggers.items()))
    if summary["suppressed"]:
        lines.append("suppressed " + ", ".join(f"{k} {v}" for k, v in summary["suppressed"].items()))
    lines.append(f"pending timers {summary['pending_timers']}, contacts {summary['contacts']}")
    rate = summary["events_in"] / wall_s if wall_s > 0 else 0.0
    lines.append(f"wall time {wall_s:.2f} s, {rate:,.0f} events/s")
    return "\n".join(lines)
