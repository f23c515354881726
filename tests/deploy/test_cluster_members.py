"""The engine cluster as deploy/ runs it: one `halflife run --process-id i --addresses ...` per container
(docker-compose.yml) or per pod (k8s/engine.yaml), no local supervisor.

These tests run the command lines and shell scripts taken from those files, with only the host
names, ports and paths replaced by local ones (the replacements are asserted to apply, so a changed
file cannot silently escape the test).
"""

from __future__ import annotations

import signal
import sqlite3
import time
from base64 import b64encode
from pathlib import Path

import orjson
import pytest
import redis
import yaml

from engine.routing import shard_of
from engine.shop import Shop, ShopConfig
from engine.testing import RedisServer, free_port, stream_records, wait_port
from engine.times import format_time
from tests.deploy.stack import (
    COMPOSE,
    container,
    halflife_env,
    http_get,
    http_post,
    k8s_object,
    option,
    replace_option,
    shell_script,
    spawn,
    spawn_shell,
    stop,
    tail,
)

pytestmark = pytest.mark.slow

# A day-old session and a two-day lateness: the wall clock fires nothing, every trigger comes from events.
RULES = """
version: 1
lateness: 2d
triggers:
  browsing:
    when: {count: {event: Product Viewed}, within: 1h, at_least: 2}
    actions: [{emit: onsite}]
  carted:
    when: {count: {event: Product Added}, within: 1h, at_least: 1}
    cooldown: 10m
    actions: [{emit: email}]
"""
WRITE_KEY = "members-test-key"


def day_old_events(n: int, seed: int, offset_ms: int = 0) -> list[dict]:
    start = int(time.time() * 1000) - 86_400_000 + offset_ms
    events = Shop(ShopConfig(seed=seed, contacts=60, sessions_per_minute=300.0)).take(n)
    for i, e in enumerate(events):
        e["timestamp"] = format_time(start + 600_000 * i // n)
        e["messageId"] = f"{seed}-{i}"
    return events


def distinct_ports(n: int) -> list[int]:
    """n free ports, none the successor of another (so `port + process id` would be caught)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if all(abs(p - q) > 1 for q in ports):
            ports.append(p)
    return ports


def substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the deploy file: update this test"
        text = text.replace(old, new)
    return text


def trigger_ids(client: redis.Redis) -> list[str]:
    return [r["id"] for r in stream_records(client, "hl:triggers")]


def wait_settled(client: redis.Redis, procs: list, logs: list[Path], minimum: int, timeout_s: float = 90) -> int:
    """Wait until hl:triggers holds at least `minimum` entries and has not grown for 3 s."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs, strict=True):
            assert proc.poll() is None, f"a member exited with {proc.returncode}:\n{tail(log)}"
        n = client.xlen("hl:triggers")
        if n != last:
            last, since = n, time.monotonic()
        elif n >= minimum and time.monotonic() - since > 3:
            return n
        time.sleep(0.2)
    raise AssertionError(f"hl:triggers did not settle (holds {last}):\n" + "\n".join(tail(log, 1500) for log in logs))


@pytest.fixture
def redis_url(tmp_path):
    with RedisServer(str(tmp_path)) as server:
        yield server.url


def test_compose_members_form_one_cluster_and_serve_metrics_on_their_port(redis_url, tmp_path):
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    recovery = tmp_path / "recovery"
    recovery.mkdir()

    # recovery-init, as compose runs it before the members.
    init = spawn_shell(substitute(services["recovery-init"]["command"][0].replace("$$", "$"),
                                  {"/var/lib/halflife/recovery": str(recovery)}), tmp_path / "init.log", halflife_env())
    assert init.wait(timeout=60) == 0, tail(tmp_path / "init.log")
    stop(init)

    cluster_ports = distinct_ports(2)
    metrics_ports = distinct_ports(2)
    addresses = ";".join(f"127.0.0.1:{p}" for p in cluster_ports)
    members, logs = [], []
    collector_port = free_port()
    collector_argv = services["collector"]["command"]
    collector_argv = replace_option(collector_argv, "--redis", redis_url)
    collector_argv = replace_option(replace_option(collector_argv, "--host", "127.0.0.1"), "--port", str(collector_port))
    collector = spawn(collector_argv, tmp_path / "collector.log", env=halflife_env(HALFLIFE_WRITE_KEYS=WRITE_KEY))
    try:
        for i, name in enumerate(("engine-0", "engine-1")):
            argv = list(services[name]["command"])
            assert option(argv, "--addresses") == "engine-0:9100;engine-1:9100"
            for flag, value in (("--rules", str(rules_dir)), ("--recovery", str(recovery)), ("--addresses", addresses),
                                ("--metrics-host", "127.0.0.1"), ("--metrics-port", str(metrics_ports[i]))):
                argv = replace_option(argv, flag, value)
            argv = [redis_url if a == "redis://redis:6379/0" else a for a in argv]
            logs.append(tmp_path / f"{name}.log")
            members.append(spawn(argv, logs[-1]))
        wait_port(collector_port, proc=collector)

        events = day_old_events(600, seed=31)
        auth = "Basic " + b64encode(f"{WRITE_KEY}:".encode()).decode()
        for i in range(0, len(events), 100):
            status, body = http_post(f"http://127.0.0.1:{collector_port}/v1/batch",
                                     orjson.dumps({"batch": events[i:i + 100]}),
                                     {"Content-Type": "application/json", "Authorization": auth})
            assert status == 200, body
        client = redis.Redis.from_url(redis_url)
        n = wait_settled(client, members, logs, minimum=20)
        assert len(set(trigger_ids(client))) == n

        # Each member serves /metrics on exactly its --metrics-port: compose gives both 9108 (one per
        # container) and prometheus.yml scrapes engine-0:9108 and engine-1:9108.
        served = {}
        for i, port in enumerate(metrics_ports):
            for candidate in (port, port + i):
                try:
                    status, body = http_get(f"http://127.0.0.1:{candidate}/metrics", timeout_s=2)
                except OSError:
                    continue
                if status == 200 and b"halflife_events_in_total" in body:
                    served[i] = candidate
                    break
        assert served == dict(enumerate(metrics_ports)), (
            f"member i must serve on --metrics-port, got {served} for --metrics-port {metrics_ports}")
    finally:
        for proc in members:
            stop(proc)
        stop(collector)


def run_init_container(script: str, ordinal: int, recovery: Path, env: dict[str, str], log: Path) -> None:
    proc = spawn_shell(substitute(script, {"/var/lib/halflife/recovery": str(recovery)}), log,
                       {**halflife_env(), **env, "HOSTNAME": f"halflife-engine-{ordinal}"})
    assert proc.wait(timeout=60) == 0, tail(log)
    stop(proc)


def executions(dirs: list[Path]) -> list[tuple[int, int]]:
    """(execution number, resume epoch) of every execution the recovery partitions recorded."""
    rows = set()
    for d in dirs:
        for part in d.glob("part-*.sqlite3"):
            with sqlite3.connect(part) as db:
                rows |= set(db.execute("SELECT ex_num, resume_epoch FROM exs"))
    return sorted(rows)


def commits(dirs: list[Path]) -> dict[int, int]:
    """Partition index -> the epoch of its last committed snapshot."""
    out: dict[int, int] = {}
    for d in dirs:
        for part in d.glob("part-*.sqlite3"):
            with sqlite3.connect(part) as db:
                out.update(db.execute("SELECT part_index, commit_epoch FROM commits"))
    return out


def test_statefulset_members_keep_their_partitions_on_their_own_volume_and_resume(redis_url, tmp_path):
    engine = k8s_object("StatefulSet", "halflife-engine")
    replicas = engine["spec"]["replicas"]
    init = container(engine, "recovery-partitions", init=True)
    init_env = {e["name"]: e["value"] for e in init["env"]}
    volumes = [tmp_path / f"recovery-{i}" for i in range(replicas)]
    for i, volume in enumerate(volumes):
        volume.mkdir()
        run_init_container(shell_script(init), i, volume, init_env, tmp_path / f"init-{i}.log")
        run_init_container(shell_script(init), i, volume, init_env, tmp_path / f"init-{i}-again.log")  # idempotent
    parts = int(init_env["PARTITIONS"])
    held = [sorted(int(p.stem.split("-")[1]) for p in v.glob("part-*.sqlite3")) for v in volumes]
    assert held == [[j for j in range(parts) if j % replicas == i] for i in range(replicas)]

    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yaml").write_text(RULES)
    cluster_ports = distinct_ports(replicas)
    metrics_ports = distinct_ports(replicas)
    script = shell_script(container(engine, "engine"))
    addresses = option(script.replace("\\\n", " ").split(), "--addresses").strip('"')

    def start_members() -> tuple[list, list[Path]]:
        procs, logs = [], []
        for i in range(replicas):
            local = substitute(script, {
                "redis://halflife-redis:6379/0": redis_url,
                "/etc/halflife/rules": str(rules_dir),
                "/var/lib/halflife/recovery": str(volumes[i]),
                addresses: ";".join(f"127.0.0.1:{p}" for p in cluster_ports),
                "--metrics-host 0.0.0.0": "--metrics-host 127.0.0.1",
                "--metrics-port 9108": f"--metrics-port {metrics_ports[i]}",
            })
            logs.append(tmp_path / f"member-{i}-{time.monotonic_ns()}.log")
            procs.append(spawn_shell(local, logs[-1], {**halflife_env(), "HOSTNAME": f"halflife-engine-{i}"}))
        return procs, logs

    shards = int(option(script.replace("\\\n", " ").split(), "--shards"))
    client = redis.Redis.from_url(redis_url)
    client.hset("hl:config", "shards", shards)

    def load(events: list[dict]) -> None:
        pipe = client.pipeline(transaction=False)
        for e in events:
            pipe.xadd(f"hl:events:{shard_of(e.get('userId') or e['anonymousId'], shards)}",
                      {"events": orjson.dumps(e), "n": 1})
        pipe.execute()

    load(day_old_events(800, seed=41))
    procs, logs = start_members()
    try:
        first = wait_settled(client, procs, logs, minimum=20)
        # A snapshot committed in every partition, on both volumes (every --snapshot-interval, 10 s).
        deadline = time.monotonic() + 60
        while len(committed := commits(volumes)) < parts or min(committed.values()) < 2:
            assert time.monotonic() < deadline, f"no snapshot in every partition: {committed}"
            time.sleep(0.5)
        # A member dies: the others must exit too (non-zero), so that Kubernetes restarts them all.
        stop(procs[-1], signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(p.poll() is None for p in procs[:-1]):
            assert time.monotonic() < deadline, "a member kept running after its peer died"
            time.sleep(0.1)
        assert all(p.returncode != 0 for p in procs[:-1])
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
    ids_before = trigger_ids(client)
    assert len(ids_before) == len(set(ids_before)) == first

    # Kubernetes restarts the pods: each member starts again from its own volume.
    load(day_old_events(400, seed=43, offset_ms=3_600_000))
    procs, logs = start_members()
    try:
        second = wait_settled(client, procs, logs, minimum=first + 1)
    finally:
        for proc in procs:
            stop(proc)
    ids = trigger_ids(client)
    assert len(ids) == len(set(ids)) == second
    assert ids[:first] == ids_before
    runs = executions(volumes)
    assert len(runs) == 2, runs
    assert runs[0][1] == 1 and runs[1][1] > 1, f"the second execution did not resume from a snapshot: {runs}"
