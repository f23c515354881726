"""Security properties (SECURITY.md): authentication, secrets, listening addresses, no code from the
network, recovery file modes, per-channel webhook signatures. Real processes wherever it matters."""

from __future__ import annotations

import argparse
import ast
import base64
import inspect
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from engine import cli, collector, metrics, runner
from engine.collector import COLLECTOR_KEY, CollectorConfig, build_app
from engine.testing import RedisServer, free_port, free_port_block, stop_process
from engine.webhooks import parse_webhook_specs, sign, verify_signature

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "rules" / "examples" / "ecommerce.yaml"
TS = "2026-11-23T14:00:00.000Z"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALFLIFE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def halflife(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, timeout=timeout, cwd=ROOT,
                          env=env or clean_env())


def wait_for_health(port: int, process: subprocess.Popen[bytes], want: int = 200, timeout: float = 20) -> None:
    from hostile import http_request

    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()
        try:
            if http_request(port, "GET", "/health", [], b"", timeout=2)[0] == want:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the collector did not become healthy"
        time.sleep(0.05)


# --- collector authentication ------------------------------------------------------------------------------


def test_collect_refuses_to_start_without_a_write_key(redis_url: str) -> None:
    done = halflife("collect", "--redis", redis_url, "--port", str(free_port()))
    assert done.returncode == 2
    assert b"no write key configured" in done.stderr and b"--insecure-no-auth" in done.stderr
    # An empty key list in the environment is no key either.
    done = halflife("collect", "--redis", redis_url, "--port", str(free_port()), env=clean_env(HALFLIFE_WRITE_KEYS=" , "))
    assert done.returncode == 2 and b"no write key configured" in done.stderr


def test_insecure_no_auth_must_be_explicit_and_is_logged(redis_url: str) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "engine", "collect", "--redis", redis_url, "--port", str(port),
                                "--insecure-no-auth"], cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_health(port, process)
    finally:
        code, output = stop_process(process)
    assert code == 0
    assert "--insecure-no-auth: accepting requests without a write key" in output
    done = halflife("collect", "--redis", redis_url, "--port", str(free_port()),
                    env=clean_env(HALFLIFE_INSECURE_NO_AUTH="maybe"))
    assert done.returncode == 2  # only an unambiguous yes turns authentication off


def test_write_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = collector.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(collector.hmac, "compare_digest", counting)
    keys = ("key-one-111111", "key-two-222222", "key-three-33333")
    state = build_app(CollectorConfig(redis_url="redis://127.0.0.1:1/0", write_keys=keys))[COLLECTOR_KEY]
    for candidate, ok in [(b"key-one-111111", True), (b"key-three-33333", True), (b"key-one-11111", False),
                          (b"", False), (b"key-one-111111x", False), (b"\xff" * 64, False)]:
        calls.clear()
        assert state.key_ok(candidate) is ok
        # Every configured key is compared, with hmac.compare_digest, whichever matches (if any).
        assert sorted(a for a, _ in calls) == sorted(k.encode() for k in keys)
        assert all(b == candidate for _, b in calls)
    source = inspect.getsource(collector)
    assert "in self.write_keys" not in source.replace("for key in self.write_keys", "")


# --- limits ----------------------------------------------------------------------------------------------


def test_limits_have_safe_defaults_and_are_configurable() -> None:
    parser = argparse.ArgumentParser()
    collector.add_arguments(parser)
    args = parser.parse_args(["--redis", "redis://127.0.0.1:1/0"])
    defaults = {name: getattr(args, name) for name in ("host", "max_body_bytes", "max_decompressed_bytes",
                                                      "max_batch_events", "max_depth", "max_string_bytes")}
    assert defaults == {"host": "127.0.0.1", "max_body_bytes": 512 * 1024, "max_decompressed_bytes": 4 * 1024 * 1024,
                        "max_batch_events": 2500, "max_depth": 32, "max_string_bytes": 8192}
    config = CollectorConfig(redis_url="redis://x/0", write_keys=("k",))
    assert {name: getattr(config, name) for name in defaults} == defaults
    assert args.insecure_no_auth is False


# --- secrets never in --help or logs -----------------------------------------------------------------------


SECRET_ENV = {
    "HALFLIFE_WRITE_KEYS": "wk-help-secret-1,wk-help-secret-2",
    "HALFLIFE_REDIS": "redis://:redis-help-password@127.0.0.1:1/0",
    "HALFLIFE_WEBHOOK_SECRET_EMAIL": "webhook-help-secret",
}


@pytest.mark.parametrize("command", [[], ["collect"], ["run"], ["profile"], ["rules", "check"], ["demo"]])
def test_help_never_shows_secrets(command: list[str]) -> None:
    done = halflife(*command, "--help", env=clean_env(**SECRET_ENV))
    assert done.returncode == 0
    text = done.stdout + done.stderr
    for secret in ("wk-help-secret", "redis-help-password", "webhook-help-secret"):
        assert secret.encode() not in text


def test_run_help_never_shows_redis_passwords() -> None:
    url = "redis://:run-help-password@127.0.0.1:1/0"
    done = halflife("run", "--help", env=clean_env(HALFLIFE_INPUT=url, HALFLIFE_OUTPUT=url, HALFLIFE_DLQ=url,
                                                   HALFLIFE_PROFILES=url))
    assert b"run-help-password" not in done.stdout + done.stderr


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, str]]:
    """A redis-server of its own that requires a password."""
    server = RedisServer(str(tmp_path))
    server.start()
    client = redis.Redis(port=server.port)
    client.config_set("requirepass", "redis-log-password-9")
    client.close()
    try:
        yield server, "redis-log-password-9"
    finally:
        server.stop()


def test_collector_run_never_logs_keys_or_the_redis_password(tmp_path: Path, password_redis: tuple[Any, str]) -> None:
    from hostile import http_request

    server, password = password_redis
    keys_file = tmp_path / "keys"
    keys_file.write_text("# keys\nwk-file-secret-22\n")
    secrets = [b"wk-flag-secret-11", b"wk-file-secret-22", password.encode()]
    logs = ""
    for url, want in [(f"redis://:{password}@127.0.0.1:{server.port}/0", 200),
                      (f"redis://:wrong-{password}@127.0.0.1:{server.port}/0", 503)]:  # the error paths log too
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "engine", "collect", "--redis", url, "--port", str(port),
                                    "--write-key", "wk-flag-secret-11", "--write-keys-file", str(keys_file),
                                    "--shards", "2", "--log-level", "DEBUG", "--access-log"],
                                   cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            wait_for_health(port, process, want)
            event = orjson.dumps({"userId": "u", "event": "E", "timestamp": TS})
            for key, body in [(b"wk-flag-secret-11", event), (b"wk-file-secret-22", event),
                              (b"wk-flag-secret-11x", event), (b"wk-file-secret-2", event), (b"", event),
                              (b"", event[:-1] + b',"writeKey":"wk-file-secret-22"}'),
                              (b"", event[:-1] + b',"writeKey":"wk-flag-secret-1"}')]:
                headers = [(b"Authorization", b"Basic " + base64.b64encode(key + b":" + password.encode()))] if key else []
                status, _, reply = http_request(port, "POST", "/v1/track", headers, body)
                assert status in (200, 401, 503)
                assert not any(secret in reply for secret in secrets)
            _, _, page = http_request(port, "GET", "/metrics", [], b"")
            assert not any(secret in page for secret in secrets)
        finally:
            _, output = stop_process(process)
        logs += output
    assert "POST /v1/track HTTP/1.1" in logs and "redis://:***@127.0.0.1" in logs
    encoded = [base64.b64encode(k + b":" + password.encode()) for k in secrets[:2]]
    for secret in secrets + encoded + [base64.b64encode(b"wk-flag-secret-11:")[:16]]:
        assert secret.decode() not in logs, secret


def test_profile_never_shows_the_redis_password(password_redis: tuple[Any, str]) -> None:
    # `halflife profile` against a server that wants a password (given wrong, then right for an unknown
    # contact), a port where nothing listens and a malformed URL, the URL on the command line or in
    # HALFLIFE_REDIS: the password is never on stdout or stderr; the URL is shown redacted.
    server, password = password_redis
    wrong = f"wrong-{password}"
    urls = [f"redis://:{wrong}@127.0.0.1:{server.port}/0", f"redis://default:{password}@127.0.0.1:{server.port}/0",
            f"redis://:{password}@127.0.0.1:{free_port()}/0", f"redis://:{password}@127.0.0.1:notaport/0",
            f"redis://127.0.0.1:{server.port}/0?password={password}"]
    shown = []
    for url in urls:
        for args, env in [(["--redis", url], clean_env()), ([], clean_env(HALFLIFE_REDIS=url))]:
            done = halflife("profile", "no-such-contact", *args, env=env, timeout=30)
            output = (done.stdout + done.stderr).decode()
            assert done.returncode in (1, 2), output
            assert password not in output and "Traceback" not in output, output
            shown.append(output)
    text = "\n".join(shown)
    assert f"redis://:***@127.0.0.1:{server.port}/0" in text  # the failures name the server, redacted
    assert "unknown contact 'no-such-contact'" in text  # the right password got through to Redis


def test_live_run_never_logs_the_redis_password(tmp_path: Path) -> None:
    # The engine's Redis source when Redis is unreachable at start: its warning (and, 15 s later, the
    # error that ends the run) names the URL redacted. The URLs come from the environment, as advised.
    password = "engine-log-password-5"
    url = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    env = clean_env(HALFLIFE_INPUT=url, HALFLIFE_OUTPUT=url, HALFLIFE_DLQ=url, HALFLIFE_PROFILES=url)
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", "--rules", str(RULES), "--recovery",
                                str(tmp_path / "recovery"), "--shards", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    seen = b""
    try:
        assert process.stderr is not None
        os.set_blocking(process.stderr.fileno(), False)
        deadline = time.monotonic() + 60
        while b"cannot reach Redis at" not in seen and process.poll() is None and time.monotonic() < deadline:
            seen += process.stderr.read() or b""
            time.sleep(0.05)
    finally:
        _, rest = stop_process(process)
    output = seen.decode(errors="replace") + rest
    assert "cannot reach Redis at redis://:***@127.0.0.1:" in output, output[-3000:]
    assert password not in output


def test_redact_url_hides_every_form_of_password() -> None:
    from engine.redaction import redact_url

    cases = {
        "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
        "redis://:pw-1@127.0.0.1:6379/0": "redis://:***@127.0.0.1:6379/0",
        "rediss://user:pw-2@[::1]:6380/1": "rediss://user:***@[::1]:6380/1",
        "redis://pw-3@host/0": "redis://***@host/0",  # redis-py's user name, often meant as a password
        "redis://:p@w-4@host/0": "redis://:***@host/0",
        "redis://:pw/5@host:1/0": "redis://***@host:1/0",  # an unescaped / ends the authority early
        "unix:///run/redis.sock?db=0&password=pw-6": "unix:///run/redis.sock?db=0&password=***",
        "redis://host/0?PASSWORD=pw-7&ssl=1": "redis://host/0?PASSWORD=***&ssl=1",
        "redis://[::1/0?password=pw-8": "(unparseable URL)",
    }
    for url, want in cases.items():
        assert redact_url(url) == want, url
    assert collector.redact_url is redact_url  # the collector and the Redis source use the same function


# --- listening addresses --------------------------------------------------------------------------------------


def _tcp_sockets(pids: set[int]) -> list[tuple[str, str, int]]:
    """(state, local address, pid) of the TCP sockets of these processes, from `ss -tanpH`."""
    done = subprocess.run(["ss", "-tanpH"], capture_output=True, text=True, check=True)
    out = []
    for line in done.stdout.splitlines():
        fields = line.split()
        owners = {int(pid) for pid in re.findall(r"pid=(\d+)", line)}
        for pid in owners & pids:
            out.append((fields[0], fields[3], pid))
    return out


def _children(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                out.add(int(entry))
    return out


def _non_loopback_addresses() -> list[str]:
    done = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    return [f.split()[3].split("/")[0] for f in done.stdout.splitlines()
            if len(f.split()) > 3 and not f.split()[3].startswith("127.")]


needs_ss = pytest.mark.skipif(subprocess.run(["which", "ss"], capture_output=True).returncode != 0,
                              reason="needs ss (iproute2)")


def test_defaults_are_loopback() -> None:
    parser = cli._parser()
    assert parser.parse_args(["collect", "--redis", "redis://x/0"]).host == "127.0.0.1"
    assert parser.parse_args(["run", "--rules", "r.yaml"]).metrics_host == "127.0.0.1"
    assert CollectorConfig(redis_url="redis://x/0", write_keys=("k",)).host == "127.0.0.1"
    assert inspect.signature(metrics.serve).parameters["host"].default == "127.0.0.1"


def test_local_cluster_addresses_are_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    launched: list[list[str]] = []

    class Finished:
        def __init__(self, argv: list[str], **kwargs: Any) -> None:
            launched.append(argv)

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(runner.subprocess, "Popen", Finished)
    cfg = cli._run_config(cli._parser().parse_args(["run", "--rules", str(RULES), "--processes", "3"]), None)
    assert runner._run_cluster_once(cfg, ["run"], 60) == 0
    addresses = {argv[argv.index("--addresses") + 1] for argv in launched}
    assert len(launched) == 3 and len(addresses) == 1
    assert [a.rsplit(":", 1)[0] for a in addresses.pop().split(";")] == ["127.0.0.1"] * 3


@needs_ss
def test_collector_listens_on_loopback_only(redis_url: str) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "engine", "collect", "--redis", redis_url, "--port", str(port)],
                               cwd=ROOT, env=clean_env(HALFLIFE_WRITE_KEYS="k-listen"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_health(port, process)
        listening = [local for state, local, _ in _tcp_sockets({process.pid}) if state == "LISTEN"]
        assert listening == [f"127.0.0.1:{port}"]
        for address in _non_loopback_addresses():
            with pytest.raises(OSError), socket.create_connection((address, port), timeout=2):
                pass
    finally:
        stop_process(process)


@needs_ss
def test_engine_cluster_and_metrics_sockets_are_loopback(tmp_path: Path) -> None:
    # A real two-process cluster reading stdin (kept open while we look): its metrics endpoints and the
    # bytewax cluster connections between the processes all use 127.0.0.1.
    metrics_port = free_port_block(2)
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", "--rules", str(RULES), "--input", "-",
                                "--output", str(tmp_path / "out.jsonl"), "--dlq", str(tmp_path / "dlq.jsonl"),
                                "--processes", "2", "--metrics-port", str(metrics_port)],
                               cwd=ROOT, env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            sockets = _tcp_sockets(_children(process.pid) | {process.pid})
            established = [s for s in sockets if s[0] == "ESTAB"]
            listening = sorted(s[1] for s in sockets if s[0] == "LISTEN")
            if len(listening) >= 2 and established:
                break
            assert process.poll() is None and time.monotonic() < deadline, (sockets, process.communicate())
            time.sleep(0.1)
        assert listening[:2] == sorted([f"127.0.0.1:{metrics_port}", f"127.0.0.1:{metrics_port + 1}"])
        assert all(local.startswith("127.0.0.1:") for _, local, _ in sockets), sockets
        assert process.stdin is not None
        process.stdin.write(orjson.dumps({"userId": "u", "event": "E", "timestamp": TS}) + b"\n")
        process.stdin.close()
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- nothing from the network is unpickled or evaluated ------------------------------------------------------

_FORBIDDEN_CALLS = {
    ("eval",), ("exec",), ("compile",), ("__import__",), ("pickle", "loads"), ("pickle", "load"),
    ("pickle", "Unpickler"), ("marshal", "loads"), ("marshal", "load"), ("shelve", "open"), ("yaml", "load"),
    ("yaml", "load_all"), ("yaml", "unsafe_load"), ("yaml", "unsafe_load_all"), ("yaml", "full_load"),
    ("yaml", "full_load_all"), ("os", "system"), ("os", "popen"), ("dill", "loads"), ("jsonpickle", "decode"),
}
_FORBIDDEN_IMPORTS = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
_FORBIDDEN_NAMES = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}


def _dotted(node: ast.expr) -> tuple[str, ...]:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        return (*_dotted(node.value), node.attr)
    return ()


def test_no_code_or_pickles_from_input() -> None:
    """engine/, operators/, rules/ never unpickle, eval, exec or unsafely YAML-load anything (bytewax's own
    pickling of snapshots and of items between cluster processes is outside them: see SECURITY.md)."""
    problems = []
    files = [p for package in ("engine", "operators", "rules") for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 20
    for path in files:
        source = path.read_text()
        tree = ast.parse(source, str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = _dotted(node.func)
                if name in _FORBIDDEN_CALLS or name[-2:] in _FORBIDDEN_CALLS or name[-1:] in {("eval",), ("exec",)}:
                    problems.append(f"{where}: calls {'.'.join(name)}")
                if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                       for k in node.keywords):
                    problems.append(f"{where}: shell=")
            elif isinstance(node, ast.Import):
                problems += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in _FORBIDDEN_IMPORTS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in _FORBIDDEN_IMPORTS:
                problems.append(f"{where}: imports from {node.module}")
            elif isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_NAMES and _dotted(node.value) == ("yaml",):
                problems.append(f"{where}: uses yaml.{node.attr}")
        for lineno, line in enumerate(source.splitlines(), 1):  # and plain grep, for what the AST walk cannot see
            code = line.split("#", 1)[0]
            for needle in ("pickle.load", "yaml.load(", "yaml.unsafe_load", "yaml.full_load", "eval(", "exec("):
                if needle in code and not code.strip().startswith(('"', "'")) and "_eval" not in code:
                    problems.append(f"{path.relative_to(ROOT)}:{lineno}: {needle}")
    assert problems == []
    # The rule loader composes YAML with a SafeLoader subclass and never constructs arbitrary tags.
    from rules import loader

    assert issubclass(loader._Loader, __import__("yaml").SafeLoader)


# --- recovery files ---------------------------------------------------------------------------------------


def _modes(directory: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(directory.stat().st_mode)}
    for entry in os.scandir(directory):
        try:
            out[entry.name] = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:  # a journal that came and went
            pass
    return out


def test_recovery_directory_is_0700_and_every_file_0600(tmp_path: Path) -> None:
    # umask 0: every mode below is the code's choice, not the umask's. The run is killed mid-way and
    # resumed, and the directory watched all through the resumed run, so that the files SQLite creates
    # and deletes as it snapshots (journals, -wal, -shm) are checked too, not only what is left at the end.
    events = tmp_path / "events.jsonl"
    with events.open("wb") as f:
        for i in range(30_000):
            f.write(orjson.dumps({"event": "Product Added", "userId": f"u-{i % 500}", "timestamp": 1_795_442_400_000 + i})
                    + b"\n")
    recovery = tmp_path / "recovery"
    argv = [sys.executable, "-m", "engine", "run", "--rules", str(RULES), "--input", str(events), "--output",
            str(tmp_path / "out.jsonl"), "--dlq", str(tmp_path / "dlq.jsonl"), "--recovery", str(recovery),
            "--snapshot-interval", "0.02", "--batch-size", "50"]
    first = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), umask=0, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").stat().st_size < 10_000:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    after_first = _modes(recovery)
    assert after_first.pop(".") == 0o700 and set(after_first.values()) == {0o600}, after_first

    seen: dict[str, set[int]] = {}
    resumed = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), umask=0, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    while resumed.poll() is None:
        for name, mode in _modes(recovery).items():
            seen.setdefault(name, set()).add(mode)
        time.sleep(0.002)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err.decode()[-2000:]
    for name, mode in _modes(recovery).items():
        seen.setdefault(name, set()).add(mode)
    assert seen.pop(".") == {0o700}
    assert any(name.endswith(".sqlite3") for name in seen)
    assert any(not name.endswith(".sqlite3") for name in seen), seen  # SQLite's own files were seen
    assert {name: modes for name, modes in seen.items() if modes != {0o600}} == {}


def test_recovery_partitions_are_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    created: dict[str, int] = {}
    real = runner.init_db_dir

    def watched(directory: Path, count: int) -> None:
        real(directory, count)
        created.update({p.name: stat.S_IMODE(p.stat().st_mode) for p in Path(directory).iterdir()})

    monkeypatch.setattr(runner, "init_db_dir", watched)
    old = os.umask(0o022)
    try:
        cfg = cli._run_config(cli._parser().parse_args(["run", "--rules", str(RULES), "--recovery",
                                                        str(tmp_path / "recovery")]), None)
        assert runner.prepare_recovery(cfg)
    finally:
        os.umask(old)
    assert created and set(created.values()) == {0o600}, created


def test_an_existing_recovery_directory_keeps_its_files_private(tmp_path: Path) -> None:
    # An empty directory made beforehand (e.g. by a deployment) is replaced by the staged, private one
    # (0700) in one rename; the partitions are 0600.
    recovery = tmp_path / "recovery"
    recovery.mkdir(mode=0o755)
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps({"event": "E", "userId": "u", "timestamp": 1_795_442_400_000}) + b"\n")
    done = subprocess.run([sys.executable, "-m", "engine", "run", "--rules", str(RULES), "--input", str(events),
                           "--output", str(tmp_path / "o"), "--dlq", str(tmp_path / "d"), "--recovery", str(recovery)],
                          cwd=ROOT, env=clean_env(), capture_output=True, timeout=60, umask=0o022)
    assert done.returncode == 0, done.stderr
    modes = _modes(recovery)
    assert modes.pop(".") == 0o700
    assert set(modes.values()) == {0o600}


def _recovery_cfg(recovery: Path) -> Any:
    return cli._run_config(cli._parser().parse_args(["run", "--rules", str(RULES), "--recovery", str(recovery)]), None)


def test_a_cluster_member_makes_an_existing_recovery_directory_private(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # os.makedirs(mode=0o700, exist_ok=True) leaves the mode of a directory that exists: a member
    # (`--process-id`, one pod per volume) given a 0755 directory, empty or with 0644 partitions from a
    # restore, makes it 0700 and every file 0600 before bytewax opens them.
    old = os.umask(0o022)
    try:
        empty = tmp_path / "empty"
        empty.mkdir(mode=0o755)
        runner.prepare_member_recovery(_recovery_cfg(empty), 0, 2)
        modes = _modes(empty)
        assert modes.pop(".") == 0o700 and modes and set(modes.values()) == {0o600}, modes
        assert sorted(modes) == [f"part-{j}.sqlite3" for j in range(0, 8, 2)]  # this member's share

        restored = tmp_path / "restored"
        restored.mkdir(mode=0o755)
        for name, mode in [("part-1.sqlite3", 0o644), ("part-3.sqlite3", 0o666), ("part-5.sqlite3-journal", 0o644),
                           ("part-7.sqlite3", 0o600)]:
            (restored / name).write_bytes(b"")
            os.chmod(restored / name, mode)
        (restored / "halflife-recovery-staging").mkdir(mode=0o700)  # a killed member's staging directory
        runner.prepare_member_recovery(_recovery_cfg(restored), 1, 2)
        modes = _modes(restored)
        assert modes.pop(".") == 0o700
        assert modes.pop("halflife-recovery-staging") == 0o700
        assert modes == dict.fromkeys(["part-1.sqlite3", "part-3.sqlite3", "part-5.sqlite3-journal",
                                       "part-7.sqlite3"], 0o600), modes  # fixed, none created over them
    finally:
        os.umask(old)
    assert capsys.readouterr().err == ""  # everything was ours: fixed silently


def test_resuming_makes_a_widened_recovery_directory_private_again(tmp_path: Path) -> None:
    # The single-process and supervisor path: a recovery directory whose modes were widened after it was
    # created (a restore, a chmod -R) is made 0700/0600 again when a run resumes from it.
    recovery = tmp_path / "recovery"
    cfg = _recovery_cfg(recovery)
    assert runner.prepare_recovery(cfg)
    os.chmod(recovery, 0o755)
    for part in recovery.iterdir():
        os.chmod(part, 0o644)
    assert not runner.prepare_recovery(cfg)  # resumes
    modes = _modes(recovery)
    assert modes.pop(".") == 0o700 and len(modes) >= 8 and set(modes.values()) == {0o600}, modes


def test_recovery_files_of_another_user_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # What this user does not own it cannot fix: a file open to others is named on stderr, not ignored.
    recovery = tmp_path / "recovery"
    recovery.mkdir(mode=0o700)
    (recovery / "part-0.sqlite3").write_bytes(b"")
    os.chmod(recovery / "part-0.sqlite3", 0o664)
    monkeypatch.setattr(runner.os, "geteuid", lambda: os.getuid() + 4242)
    runner.make_recovery_private(str(recovery))
    err = capsys.readouterr().err
    assert "part-0.sqlite3 is mode 0664" in err and "should be 0600" in err, err
    assert stat.S_IMODE((recovery / "part-0.sqlite3").stat().st_mode) == 0o664  # left as it was


# --- webhook signatures ---------------------------------------------------------------------------------------


def test_each_webhook_channel_signs_with_its_own_secret() -> None:
    environ = {"HALFLIFE_WEBHOOK_SECRET_EMAIL": "email-secret-a1", "HALFLIFE_WEBHOOK_SECRET_SMS": "sms-secret-b2"}
    targets = parse_webhook_specs(["email=https://h.example/e", "sms=https://h.example/s"], environ)
    body = b'{"id":"b1946ac92492d2347c6235b4d2611184","rule":"cart_abandoned"}'
    email = sign(targets["email"].secret, 1_795_442_400, body)
    sms = sign(targets["sms"].secret, 1_795_442_400, body)
    assert email != sms
    assert verify_signature(b"email-secret-a1", "1795442400", body, email)
    assert not verify_signature(b"email-secret-a1", "1795442400", body, sms)
    assert not verify_signature(b"sms-secret-b2", "1795442400", body, email)
    for target in targets.values():
        assert "secret-" not in repr(target) and "secret-" not in str(target)
    with pytest.raises(ValueError, match="has no secret"):  # never unsigned
        parse_webhook_specs(["email=https://h.example/e", "push=https://h.example/p"], environ)


@pytest.mark.parametrize(("channels", "variable"), [
    (["push-eu", "push_eu"], "HALFLIFE_WEBHOOK_SECRET_PUSH_EU"),
    (["Email", "email"], "HALFLIFE_WEBHOOK_SECRET_EMAIL"),
])
def test_run_refuses_channels_that_would_share_a_webhook_secret(tmp_path: Path, channels: list[str],
                                                                variable: str) -> None:
    # Two channel names that map to one HALFLIFE_WEBHOOK_SECRET_* variable would sign with the same
    # secret: `halflife run` exits 2 with one clear line naming both channels and the variable (no
    # traceback, no secret), whether the webhooks come from --webhook flags or HALFLIFE_WEBHOOKS.
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps({"event": "E", "userId": "u", "timestamp": TS}) + b"\n")
    base = ["run", "--rules", str(RULES), "--input", str(events), "--output", str(tmp_path / "out.jsonl"),
            "--dlq", str(tmp_path / "dlq.jsonl")]
    flags = [arg for i, ch in enumerate(channels) for arg in ("--webhook", f"{ch}=http://127.0.0.1:1/hook/{i}")]
    webhooks_env = ",".join(f"{ch}=http://127.0.0.1:1/hook/{i}" for i, ch in enumerate(channels))
    for argv, env in [(base + flags, clean_env(**{variable: "shared-secret-77"})),
                      (base, clean_env(**{variable: "shared-secret-77", "HALFLIFE_WEBHOOKS": webhooks_env}))]:
        done = halflife(*argv, env=env)
        err = done.stderr.decode()
        assert done.returncode == 2, err
        assert err.startswith("halflife run: webhook channels ") and err.count("\n") == 1, err
        assert all(repr(ch) in err for ch in channels) and variable in err, err
        assert "Traceback" not in err and "shared-secret-77" not in err + done.stdout.decode()
        assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_bytes() == b""


def test_a_channel_named_like_another_variable_does_not_sign_with_its_value(tmp_path: Path) -> None:
    # Only HALFLIFE_WEBHOOK_SECRET_* variables are secrets: a channel `HOME` has no secret (exit 2),
    # it does not sign with $HOME.
    events = tmp_path / "events.jsonl"
    events.write_bytes(orjson.dumps({"event": "E", "userId": "u", "timestamp": TS}) + b"\n")
    done = halflife("run", "--rules", str(RULES), "--input", str(events), "--output", str(tmp_path / "out.jsonl"),
                    "--webhook", "HOME=http://127.0.0.1:1/hook", env=clean_env(HOME="/home/someone-77"))
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert "HALFLIFE_WEBHOOK_SECRET_HOME" in err and "Traceback" not in err, err
    assert "someone-77" not in err + done.stdout.decode()


def test_cluster_members_get_urls_through_their_environment_not_their_command_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Any local user can read a command line (`ps`); a Redis URL may hold a password.
    from engine.cli import _child_argv, _parser

    url = "redis://app:s3cret-77@127.0.0.1:6390/0"
    args = _parser().parse_args(["run", "--rules", str(RULES), "--input", url, "--output", url, "--dlq", url,
                                 "--profiles", url, "--webhook", "email=https://u:hook-secret-77@example.com/h",
                                 "--processes", "2"])
    argv, env = _child_argv(args)
    assert not any("s3cret-77" in a or "hook-secret-77" in a for a in argv), argv
    assert {k: env[k] for k in ("HALFLIFE_INPUT", "HALFLIFE_OUTPUT", "HALFLIFE_DLQ", "HALFLIFE_PROFILES")} == dict.fromkeys(
        ("HALFLIFE_INPUT", "HALFLIFE_OUTPUT", "HALFLIFE_DLQ", "HALFLIFE_PROFILES"), url)
    assert env["HALFLIFE_WEBHOOKS"] == "email=https://u:hook-secret-77@example.com/h"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    member = _parser().parse_args(argv)  # what a member parses: the values come back from the variables
    assert (member.processes, member.input, member.output, member.dlq, member.profiles) == (1, url, url, url, url)
