"""What the bench subcommands share: results files, tables, the workload file, in-memory source and sink.

Every subcommand writes `bench/results/<UTC timestamp>-<name>.json` (or under `--results-dir`) with
`name`, `started_at`, `machine` and its own figures, and prints a table.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from engine.redaction import redact_url

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
EXAMPLE_RULES = ROOT / "rules" / "examples" / "ecommerce.yaml"


def machine() -> dict[str, Any]:
    import bytewax  # noqa: F401 - only its version

    try:
        from importlib.metadata import version

        bw = version("bytewax")
    except Exception:  # pragma: no cover - metadata is always there when installed
        bw = "?"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "bytewax": bw,
            "platform": platform.platform(), "loadavg_1m_at_start": round(load[0], 2)}


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def write_result(name: str, result: dict[str, Any], results_dir: str | Path | None) -> Path:
    directory = Path(results_dir) if results_dir else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result.get("started_at_stamp") or utc_stamp()
    path = directory / f"{stamp}-{name}.json"
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return path


def new_result(name: str, args: Any) -> dict[str, Any]:
    stamp = utc_stamp()
    return {"name": name, "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "started_at_stamp": stamp, "smoke": bool(getattr(args, "smoke", False)), "machine": machine(),
            "command": _command_line()}


def _command_line() -> str:
    """This process's command line for the results file, URLs without their passwords."""
    argv = [redact_url(a) if "://" in a else a for a in sys.argv]
    return "halflife bench " + " ".join(argv[2:]) if argv[1:2] == ["bench"] else " ".join(argv)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    """A plain text table; numbers right-aligned."""
    cells = [[_cell(c) for c in row] for row in rows]
    if headers:
        cells.insert(0, list(headers))
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(len(r) for r in cells))]
    lines = []
    for n, row in enumerate(cells):
        parts = []
        for i, c in enumerate(row):
            numeric = n > 0 or not headers
            numeric = numeric and _is_number(rows[n - 1 if headers else n][i]) if i < len(row) else False
            parts.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
        if headers and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}"
    return str(v)


class Timer:
    """Wall and CPU (this process, all threads) seconds of a block."""

    def __enter__(self) -> Timer:
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def read_lines(path: str | Path) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def generate_file(path: str | Path, events: int, config: Any, jobs: int = 1) -> dict[str, Any]:
    """Write the workload to `path`; returns events, seconds, events/s."""
    from bench.workload import Workload, write_file

    wl = Workload(config)
    started = time.perf_counter()
    n = write_file(wl, events, str(path), jobs=jobs)
    seconds = time.perf_counter() - started
    return {"events": n, "seconds": seconds, "events_per_s": n / seconds if seconds else 0.0,
            "bytes": os.path.getsize(path)}


def trigger_keys(lines: Sequence[bytes]) -> list[tuple[str, str, str, str]]:
    """Sorted (rule, contact, at, channel) of trigger record lines."""
    keys = []
    for line in lines:
        r = orjson.loads(line)
        keys.append((r["rule"], r["contact"], r["at"], r["channel"]))
    keys.sort()
    return keys


def read_metrics(port: int, timeout_s: float = 2.0) -> dict[str, float] | None:
    """Prometheus text from 127.0.0.1:port/metrics, summed by metric name (labels dropped); None if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    sums: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            sums[name] += float(value)
        except ValueError:
            continue
    return dict(sums)
