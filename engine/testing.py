"""Test helpers: run rules on events through the real dataflow and get the triggers back.

    triggers = run_rules(RULES_YAML, [event, event, ...])
    assert [(t["rule"], t["contact"], t["at"]) for t in triggers] == [...]

Also the small process, port and stream helpers the tests and bench/faults.py, bench/soak.py share.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

import numpy as np
import orjson
import redis
from bytewax.testing import run_main

from engine import summaries
from engine.config import RunConfig
from engine.dataflow import build_flow
from engine.decode import BatchDecoder, EventBatch, split_lines
from rules import load_rules
from rules.compiler import Plan, compile_rules


@dataclass
class RunResult:
    triggers: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    summary: dict[str, Any]
    keys: list[tuple[str, str, str, str]] = field(default_factory=list)  # (rule, contact, at, channel), sorted


def _read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f.read().splitlines() if line.strip()]


def event_batch(events: Iterable[dict[str, Any] | bytes], plan: Plan | None = None,
                watermarks: Iterable[int] | None = None) -> EventBatch:
    """The columnar batch the engine's decoder makes of `events` (dicts or JSON lines) for `plan`'s
    matchers; every event must be valid. `watermarks`: what the source would stamp on them."""
    lines = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]
    batch, dead = BatchDecoder(plan).decode(*split_lines(b"\n".join(lines)), np.arange(len(lines), dtype=np.int64))
    if dead or len(batch) != len(lines):
        raise ValueError(f"not every event is valid: {[(d.reason, d.detail) for d in dead]}")
    if watermarks is not None:
        batch.watermarks = np.array(list(watermarks), np.int64)
    return batch


def plan_of(rules_yaml: str) -> Plan:
    """The compiled plan of a rule file's text."""
    with tempfile.TemporaryDirectory(prefix="halflife-rules-") as tmp:
        path = os.path.join(tmp, "rules.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(rules_yaml)
        return compile_rules(load_rules(path))


def run_rules(rules_yaml: str, events: Iterable[dict[str, Any] | bytes | str], *, batch_size: int = 1000,
              shards: int = 8) -> RunResult:
    """Run `rules_yaml` on `events` (dicts, or raw lines as bytes/str) in this thread."""
    with tempfile.TemporaryDirectory(prefix="halflife-test-") as tmp:
        rules = os.path.join(tmp, "rules.yaml")
        with open(rules, "w", encoding="utf-8") as f:
            f.write(rules_yaml)
        inp = os.path.join(tmp, "events.jsonl")
        with open(inp, "wb") as f:
            for e in events:
                raw = e.encode() if isinstance(e, str) else e if isinstance(e, bytes) else orjson.dumps(e)
                f.write(raw + b"\n")
        cfg = RunConfig(
            rules=rules, input=inp, output=os.path.join(tmp, "out.jsonl"), dlq=os.path.join(tmp, "dlq.jsonl"),
            profiles=os.path.join(tmp, "profiles.jsonl"), batch_size=batch_size, shards=shards,
            summary_path=os.path.join(tmp, "summary.json"),
        )
        run_main(build_flow(cfg), epoch_interval=timedelta(seconds=10))
        triggers = _read_jsonl(cfg.output)
        with open(cfg.summary_path or "", "rb") as f:
            summary = orjson.loads(f.read())
        return RunResult(
            triggers=sorted(triggers, key=lambda t: (t["at"], t["rule"], t["contact"], t["channel"])),
            dead_letters=_read_jsonl(cfg.dlq),
            profiles=sorted(_read_jsonl(cfg.profiles or ""), key=lambda p: (p["at"], p["rule"], p["contact"])),
            summary=summary,
            keys=sorted((t["rule"], t["contact"], t["at"], t["channel"]) for t in triggers),
        )


def free_port() -> int:
    """A localhost TCP port free right now (the OS picks it; another process may take it before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def arena_record(data: bytes) -> bytes:
    """`data` as operators/timers.py stores a record of its shared buffer (and, up to snapshot format 7,
    of its arena): the length (u32, little-endian), the bytes, padding to 8 bytes."""
    record = len(data).to_bytes(4, "little") + data
    return record + bytes(-len(record) % 8)


def kept_record(summary: bytes, name_ref: int | None = None, properties_ref: int | None = None) -> bytes:
    """A packed summary as operators/timers.py keeps it in its arena: in the kept form (engine/summaries.py),
    its name or properties replaced by a reference to a shared record where given (records are not padded).
    Written from the layout, apart from the compiled `write_kept`, so that tests check one against the other."""
    call, _, id_len, name_len, _, properties_len, traits_len, time_ms = struct.unpack_from("<BBHHHIIq", summary)
    at = summaries.HEADER
    message_id = summary[at:at + id_len]
    name = summary[at + id_len:at + id_len + name_len]
    at += id_len + name_len
    properties, traits = summary[at:at + properties_len], summary[at + properties_len:at + properties_len + traits_len]
    flags = call
    if len(message_id) > 2 and message_id[:1] == b'"':
        flags |= summaries.ID_UNQUOTED
        message_id = message_id[1:-1]
    if name_ref is not None:
        flags |= summaries.NAME_SHARED
        name = name_ref.to_bytes(4, "little")
    if properties_ref is not None:
        flags |= summaries.PROPERTIES_SHARED
        properties = properties_ref.to_bytes(4, "little")
    kept_name = 0 if name_ref is not None else len(name)
    kept_properties = 0 if properties_ref is not None else len(properties)
    if (len(message_id) > 0xFF or kept_name > 0xFF or kept_properties > 0xFFFF or len(traits) > 0xFFFF
            or not -(1 << 47) <= time_ms < 1 << 47):
        header = struct.pack("<BHHIIq", flags | summaries.WIDE, len(message_id), kept_name, kept_properties,
                             len(traits), time_ms)
    else:
        header = struct.pack("<BBBH", flags | (summaries.HAS_TRAITS if traits else 0), len(message_id), kept_name,
                             kept_properties) + time_ms.to_bytes(6, "little", signed=True)
        header += struct.pack("<H", len(traits)) if traits else b""
    return header + message_id + name + properties + traits


def free_port_block(n: int) -> int:
    """A localhost port P with P .. P + n - 1 all free right now, for `--processes n --metrics-port P`
    (process i serves on P + i). Like free_port, another process may take one before use."""
    for _ in range(100):
        base = free_port()
        if base + n > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base + 1, base + n):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise RuntimeError(f"no block of {n} free localhost ports")


def wait_port(port: int, timeout_s: float = 30, proc: subprocess.Popen | None = None) -> None:
    """Wait until 127.0.0.1:`port` accepts connections; fail early if `proc` (meant to listen there) exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the process meant to listen on {port} exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s:g} s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20) -> tuple[int, str]:
    """Signal the group of `proc` (start_new_session=True), SIGKILL it if it lingers: (returncode, piped output or "")."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    text = b"".join(x if isinstance(x, bytes) else x.encode() for x in (out, err) if x)
    return proc.returncode, text.decode(errors="replace")


def stream_records(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The JSON `data` field of every entry of a Redis stream, oldest first (read 10,000 at a time)."""
    out: list[dict[str, Any]] = []
    start = "-"
    while True:
        chunk = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key, min=start, count=10_000))
        if not chunk:
            return out
        out.extend(orjson.loads(fields[b"data"]) for _, fields in chunk)
        ms, seq = chunk[-1][0].decode().split("-")
        start = f"{ms}-{int(seq) + 1}"


class RedisServer:
    """A throwaway `redis-server` on a free localhost port, in its own directory.

        with RedisServer(tmp_path) as server:
            client = redis.Redis.from_url(server.url)

    `appendonly=True` turns on AOF (for restart tests); `stop()`/`start()` restart it on
    the same port and directory.
    """

    def __init__(self, directory: str, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: Any = None

    def start(self, timeout_s: float = 10.0) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory, "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while True:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
