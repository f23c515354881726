"""`halflife bench e2e`: the collector-less Redis path, end to end, under an open-loop load.

    halflife bench e2e [--processes 1,2] [--rates 50000,100000] [--step-seconds 12] [--smoke]

For each engine process count: a throwaway redis-server (`engine.testing.RedisServer`), `hl:config
shards` set, and `halflife run --input redis://… --output redis://… --processes N --metrics-port P`
as a user would start it. Then a sweep of offered rates, each a step of `--step-seconds`:

* the generator (`bench.e2e_sender`, its own process) XADDs the workload into the shard streams on
  a schedule fixed in advance (events timestamped with their intended send time, entries of up to
  `--entry-events` events per shard per tick);
* every 0.5 s the engine's /metrics are read: backlog = events the schedule has sent so far minus
  `halflife_events_in_total` (all processes); the rate is sustainable when the backlog stays flat
  (its slope over the second half of the step is under 3% of the rate, and it ends under one
  second's worth of events) and the generator kept to its schedule (never 0.5 s behind). The
  engine's own `halflife_source_backlog_entries` (stream entries not read yet) is recorded too,
  with its slope, as a second opinion;
* `hl:triggers` is read: a trigger's arrival is its stream entry id (the Redis server's clock when
  the sink appended it); triggers fired at an event (rises_above, count) have latency = arrival -
  the intended send time of the event in their `event.messageId`; timer triggers have arrival -
  deadline (`at`), which includes the rules' `lateness`.

Without `--rates`, the sweep is a search: from `--start-rate`, times `--factor` while sustainable,
then one bisection between the last sustainable rate and the first that was not. A last step at
50% of the maximum sustainable rate (`--latency-seconds`) gives the latency at half load.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.common import ROOT, new_result, read_metrics, table, write_result
from engine.testing import free_port_block

E2E_RULES = Path(__file__).resolve().parent / "rules" / "e2e.yaml"
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
QUANTILES = (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))


# -- latency ----------------------------------------------------------------------------------------------


def histogram(latencies_s: np.ndarray) -> dict[str, Any]:
    """Percentiles (ms) and log-spaced bucket counts of latencies in seconds."""
    if len(latencies_s) == 0:
        return {"count": 0}
    ms = latencies_s * 1000.0
    out: dict[str, Any] = {"count": int(len(ms))}
    for name, q in QUANTILES:
        out[name] = float(np.percentile(ms, q))
    out["max"] = float(ms.max())
    out["mean"] = float(ms.mean())
    edges = np.array(BUCKETS_MS, dtype=float)
    counts = np.bincount(np.searchsorted(edges, ms, side="left"), minlength=len(edges) + 1)
    out["buckets_ms"] = {f"<={e:g}": int(c) for e, c in zip(edges, counts[:-1], strict=True)}
    out["buckets_ms"][f">{edges[-1]:g}"] = int(counts[-1])
    return out


class TriggerLog:
    """Reads `hl:triggers` incrementally: (arrival s, rule, message id, at ms, event time ms) per trigger."""

    def __init__(self, client: Any, prefix: str = "hl:") -> None:
        self.client = client
        self.key = f"{prefix}triggers"
        self.last = "-"
        self.rows: list[tuple[float, str, str, int, int]] = []

    def read(self) -> int:
        from engine.times import parse_time

        n = 0
        while True:
            start = self.last if self.last == "-" else "(" + self.last
            entries = self.client.xrange(self.key, min=start, max="+", count=10_000)
            if not entries:
                return n
            for entry_id, fields in entries:
                eid = entry_id.decode()
                r = orjson.loads(fields[b"data"])
                ev = r.get("event") or {}
                self.rows.append((int(eid.split("-", 1)[0]) / 1000.0, r["rule"], ev.get("messageId") or "",
                                  parse_time(r["at"]) or 0, parse_time(ev.get("timestamp")) or 0))
            self.last = entries[-1][0].decode()
            n += len(entries)


def step_latency(rows: list[tuple[float, str, str, int, int]], id_prefix: str, intended: np.ndarray,
                 timer_rules: set[str]) -> dict[str, Any]:
    event_lat: list[float] = []
    event_sent: list[float] = []
    timer_lat: list[float] = []
    n = len(intended)
    for arrival, rule, mid, at_ms, ev_ms in rows:
        if not mid.startswith(id_prefix):
            continue
        if rule in timer_rules and at_ms != ev_ms:
            timer_lat.append(arrival - at_ms / 1000.0)
        else:
            seq = int(mid[len(id_prefix):])
            if seq < n:
                event_lat.append(arrival - intended[seq])
                event_sent.append(intended[seq])
    out: dict[str, Any] = {"at_event": histogram(np.array(event_lat)), "by_timer": histogram(np.array(timer_lat))}
    # Latency over the step (by second of intended send time): pauses (snapshots, GC) show as spikes.
    if event_sent:
        sent = np.array(event_sent)
        lat = np.array(event_lat) * 1000.0
        second = (sent - intended[0]).astype(np.int64)
        series = []
        for sec in range(int(second.max()) + 1):
            sel = lat[second == sec]
            if len(sel):
                series.append([sec, round(float(np.percentile(sel, 50)), 1), round(float(np.percentile(sel, 99)), 1),
                               round(float(sel.max()), 1)])
        out["at_event_by_second"] = series  # [second, p50 ms, p99 ms, max ms]
    return out


# -- processes --------------------------------------------------------------------------------------------


def scrape(ports: list[int]) -> dict[str, float]:
    """Sums over processes of the metrics the bench reads; missing endpoints count as absent."""
    want = {"halflife_events_in_total": 0.0, "halflife_events_processed_total": 0.0,
            "halflife_source_backlog_entries": 0.0, "halflife_triggers_fired_total": 0.0,
            "halflife_snapshot_duration_seconds_sum": 0.0}
    seen = 0
    for port in ports:
        sums = read_metrics(port)
        if sums is None:
            continue
        seen += 1
        for name in want:
            want[name] += sums.get(name, 0.0)
    want["endpoints"] = seen
    return want


class Engine:
    """`halflife run` against Redis, in its own process group (stopped with SIGINT, then killed)."""

    def __init__(self, url: str, processes: int, rules: str, tmp: str, args: argparse.Namespace) -> None:
        self.processes = processes
        self.port = free_port_block(processes)
        self.ports = [self.port + i for i in range(processes)]
        self.log_path = os.path.join(tmp, f"engine-{processes}.log")
        cmd = [sys.executable, "-m", "engine", "run", "--rules", rules, "--input", url, "--output", url, "--dlq", url,
               "--recovery", os.path.join(tmp, f"recovery-{processes}"), "--processes", str(processes),
               "--metrics-port", str(self.port), "--shards", str(args.shards), "--batch-size", str(args.batch_size),
               "--snapshot-interval", str(args.snapshot_interval)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BYTEWAX_DATAFLOW_API")}
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 90.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the engine exited with {self.proc.returncode}: {self.tail()}")
            m = scrape(self.ports)
            if m["endpoints"] == len(self.ports) and m["halflife_source_backlog_entries"] >= 0 and self._reading():
                return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"the engine did not start within {timeout_s:.0f} s: {self.tail()}")

    def _reading(self) -> bool:
        # Partitions set their backlog gauge on their first read: every process has its source running.
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    if b"halflife_source_backlog_entries{" not in resp.read():
                        return False
            except OSError:
                return False
        return True

    def cpu_seconds(self) -> float:
        """utime + stime of the engine's process group members (the supervisor and its children)."""
        total = 0.0
        tck = os.sysconf("SC_CLK_TCK")
        for pid in _group_pids(self.proc.pid):
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tck
            except OSError:
                continue
        return total

    def tail(self, n: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout=15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this bench started: any child left behind
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (1-based) of stat is the process group
            pids.append(int(entry))
    return pids


# -- one step ---------------------------------------------------------------------------------------------


def run_step(name: str, rate: float, seconds: float, url: str, engine: Engine, log: TriggerLog, tmp: str,
             args: argparse.Namespace, timer_rules: set[str], drain_s: float) -> dict[str, Any]:
    n = int(rate * seconds)
    tick_s = min(0.02, max(0.005, args.entry_events * args.shards / rate))
    margin = 2.0 + n / 150_000
    start_ms = int((time.time() + margin) * 1000)
    id_prefix = f"{name}-"
    intended_path = os.path.join(tmp, f"intended-{name}.npy")
    cfg = {"url": url, "rate": rate, "seconds": seconds, "start_ms": start_ms, "tick_s": tick_s, "seed": args.seed,
           "contacts": args.contacts, "shards": args.shards, "entry_events": args.entry_events, "id_prefix": id_prefix,
           "intended_path": intended_path}
    sender = subprocess.Popen([sys.executable, "-m", "bench.e2e_sender", orjson.dumps(cfg).decode()], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    ready: dict[str, Any] = {}
    done: dict[str, Any] = {}

    def read_sender() -> None:
        assert sender.stdout is not None
        for line in sender.stdout:
            if line.startswith("READY "):
                ready.update(orjson.loads(line[6:]))
            elif line.startswith("DONE "):
                done.update(orjson.loads(line[5:]))

    reader = threading.Thread(target=read_sender, daemon=True)
    reader.start()
    start = start_ms / 1000.0
    base = scrape(engine.ports)
    cpu0: float | None = None
    samples: list[tuple[float, float, float]] = []  # (t since start, backlog events, backlog entries)
    end = start + seconds + 0.1
    while True:
        now = time.time()
        if now >= end and (sender.poll() is not None or now > end + 30):
            break
        if cpu0 is None and now >= start:
            cpu0 = engine.cpu_seconds()  # the engine's CPU while the schedule runs (not while idle before it)
        m = scrape(engine.ports)
        if now >= start:
            expected = rate * min(seconds, now - start)
            samples.append((now - start, expected - (m["halflife_events_in_total"] - base["halflife_events_in_total"]),
                            m["halflife_source_backlog_entries"]))
        time.sleep(0.5)
    cpu_run = engine.cpu_seconds() - (cpu0 if cpu0 is not None else 0.0)
    # Our share of the epoch pause: the shards' and partitions' snapshot() time, per process and epoch
    # (bytewax's writing of the snapshots comes on top).
    snapshot_s = scrape(engine.ports)["halflife_snapshot_duration_seconds_sum"] - base[
        "halflife_snapshot_duration_seconds_sum"]
    epochs = max(1.0, seconds / args.snapshot_interval)
    sender.wait(timeout=60)
    reader.join(timeout=5)
    # Drain: wait until the engine has read what was sent (bounded), then collect the triggers.
    drained_in = None
    t_drain = time.time()
    while time.time() - t_drain < drain_s:
        m = scrape(engine.ports)
        if m["halflife_events_in_total"] - base["halflife_events_in_total"] >= done.get("sent", n):
            drained_in = time.time() - t_drain
            break
        time.sleep(0.25)
    time.sleep(2.5)  # the triggers of the last events, in flight
    log.read()
    intended = np.load(intended_path)
    latency = step_latency(log.rows, id_prefix, intended, timer_rules)
    t = np.array([s[0] for s in samples])
    lag = np.array([s[1] for s in samples])
    second_half = t >= seconds / 2
    slope = float(np.polyfit(t[second_half], lag[second_half], 1)[0]) if second_half.sum() >= 3 else float("nan")
    final_lag = float(lag[-1]) if len(lag) else float("nan")
    entries = np.array([s[2] for s in samples])
    entries_slope = (float(np.polyfit(t[second_half], entries[second_half], 1)[0]) if second_half.sum() >= 3
                     else float("nan"))
    sustainable = bool(len(lag) >= 3 and slope <= 0.03 * rate and final_lag <= rate * 1.0
                       and done.get("behind_max_s", 0.0) < 0.5 and ready.get("late_start_s", 0.0) < 0.5)
    return {
        "name": name, "rate": rate, "seconds": seconds, "events": n, "sent": done.get("sent", 0),
        "sustainable": sustainable, "backlog_slope_events_per_s": slope, "backlog_final_events": final_lag,
        "backlog_entries_slope_per_s": entries_slope,
        "backlog_max_events": float(lag.max()) if len(lag) else float("nan"),
        "drained_in_s": drained_in, "engine_cpu_s": cpu_run,
        "engine_cpu_s_per_million": cpu_run / max(1, n) * 1e6,
        "snapshot_ms_per_epoch": snapshot_s * 1000.0 / engine.processes / epochs,
        "backlog_samples": [[round(a, 2), round(b), c] for a, b, c in samples],
        "sender": {**ready, **done, "tick_s": tick_s},
        "latency": latency,
    }


def run_for(processes: int, args: argparse.Namespace, rules: str, timer_rules: set[str]) -> dict[str, Any]:
    import redis

    from engine.testing import RedisServer

    out: dict[str, Any] = {"processes": processes, "steps": []}
    with tempfile.TemporaryDirectory(prefix="halflife-e2e-") as tmp, RedisServer(tmp) as server:
        client = redis.Redis.from_url(server.url)
        client.hset("hl:config", "shards", args.shards)
        engine = Engine(server.url, processes, rules, tmp, args)
        try:
            out["startup_s"] = engine.wait_ready()
            log = TriggerLog(client)
            steps: list[dict[str, Any]] = out["steps"]

            def step(name: str, rate: float, seconds: float) -> dict[str, Any]:
                result = run_step(name, rate, seconds, server.url, engine, log, tmp, args, timer_rules,
                                  drain_s=max(10.0, 4 * seconds))
                steps.append(result)
                ev = result["latency"]["at_event"]
                print(f"  {processes} process(es), {rate:>9,.0f} events/s: "
                      f"{'sustainable' if result['sustainable'] else 'NOT sustainable'} (backlog slope "
                      f"{result['backlog_slope_events_per_s']:,.0f}/s, final {result['backlog_final_events']:,.0f}), "
                      f"p99 {ev.get('p99', float('nan')):,.1f} ms", flush=True)
                return result

            if args.rates:
                for k, rate in enumerate(float(r) for r in args.rates.split(",")):
                    step(f"s{k}", rate, args.step_seconds)
                passed = [s["rate"] for s in steps if s["sustainable"]]
            else:
                passed, failed = [], None
                rate = args.start_rate
                k = 0
                while rate <= args.max_rate:
                    if step(f"s{k}", rate, args.step_seconds)["sustainable"]:
                        passed.append(rate)
                        rate *= args.factor
                    else:
                        failed = rate
                        break
                    k += 1
                if failed is not None and passed:
                    mid = (passed[-1] + failed) / 2
                    if step(f"s{k + 1}", mid, args.step_seconds)["sustainable"]:
                        passed.append(mid)
            out["max_sustainable_rate"] = max(passed) if passed else 0.0
            if args.latency_seconds > 0 and out["max_sustainable_rate"] > 0:
                half = out["max_sustainable_rate"] / 2
                out["half_load"] = step("L", half, args.latency_seconds)
            out["engine_log_tail"] = engine.tail(1500)
        finally:
            engine.stop()
            client.close()
    return out


# -- the subcommand ---------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    from engine.dataflow import load_plan
    from rules.compiler import FALLS_BELOW, SEQUENCE

    if args.smoke:
        args.processes = "1"
        args.rates = args.rates or "2000"
        args.step_seconds = min(args.step_seconds, 3.0)
        args.latency_seconds = 0.0
        args.contacts = min(args.contacts, 5_000)
        args.shards = min(args.shards, 8)
        args.snapshot_interval = min(args.snapshot_interval, 1.0)
    rules = args.rules or str(E2E_RULES)
    plan = load_plan(rules)
    timer_rules = {t.name for t in plan.triggers if t.kind in (SEQUENCE, FALLS_BELOW)}
    result = new_result("e2e", args)
    result["rules"] = os.path.relpath(rules, ROOT) if rules.startswith(str(ROOT)) else rules
    result["config"] = {k: getattr(args, k) for k in ("shards", "entry_events", "batch_size", "snapshot_interval",
                                                      "contacts", "step_seconds", "latency_seconds", "seed")}
    result["runs"] = []
    print(f"halflife bench e2e: rules {result['rules']}, {args.shards} shards, steps of {args.step_seconds:g} s")
    for processes in [int(p) for p in str(args.processes).split(",") if p]:
        result["runs"].append(run_for(processes, args, rules, timer_rules))
    path = write_result("e2e", result, args.results_dir)
    print(report(result))
    print(f"\nwritten {path}")
    return 0


def report(result: dict[str, Any]) -> str:
    out = []
    rows = []
    for run in result["runs"]:
        for s in run["steps"]:
            ev, tm = s["latency"]["at_event"], s["latency"]["by_timer"]
            rows.append([run["processes"], s["name"], s["rate"], s["sustainable"], s["backlog_slope_events_per_s"],
                         s["engine_cpu_s_per_million"], s.get("snapshot_ms_per_epoch", float("nan")),
                         ev.get("count", 0), ev.get("p50", float("nan")),
                         ev.get("p99", float("nan")), ev.get("p99.9", float("nan")), ev.get("max", float("nan")),
                         tm.get("p99", float("nan"))])
    out.append(table(rows, ["procs", "step", "offered ev/s", "flat", "backlog slope/s", "engine CPU s/M",
                            "snapshot ms/epoch", "triggers", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "timer p99 ms"]))
    out.append("")
    summary = []
    for run in result["runs"]:
        half = run.get("half_load") or {}
        ev = (half.get("latency") or {}).get("at_event", {})
        summary.append([run["processes"], run.get("max_sustainable_rate", 0.0), half.get("rate", float("nan")),
                        ev.get("p50", float("nan")), ev.get("p99", float("nan")), ev.get("p99.9", float("nan")),
                        ev.get("max", float("nan"))])
    out.append(table(summary, ["processes", "max sustainable ev/s", "half-load ev/s", "p50 ms", "p99 ms", "p99.9 ms",
                               "max ms"]))
    return "\n".join(out)
