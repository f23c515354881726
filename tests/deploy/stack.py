"""Helpers for tests/deploy: the deploy/ files, PromQL names, and processes (prometheus, halflife) to run.

Not a test module: imported as `tests.deploy.stack`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from engine.testing import free_port, stop_process
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
KUBERNETES_YML = DEPLOY / "prometheus" / "kubernetes.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "halflife.json"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DATASOURCE_UID = "halflife-prometheus"
ENGINE_JOB = "halflife-engine"
COLLECTOR_JOB = "halflife-collector"

# Grafana's built-in variables, as the tests substitute them (the workload of the live test is well
# inside one minute).
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$__interval": "15s"}


# --- binaries ---------------------------------------------------------------------------------------

def tool(name: str) -> str:
    """The path of `prometheus`/`promtool`; a missing binary fails the test (it is never skipped)."""
    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: tests/deploy need Debian's `prometheus` package "
                    f"(run .ci/install-test-tools, or apt-get install prometheus)", pytrace=False)
    return path


# --- deploy files -----------------------------------------------------------------------------------

def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel, rows' nested panels included."""
    out = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((panel.get("title", ""), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(DASHBOARD.read_text())["panels"])
    return out


def grafana_to_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS_YML.read_text())["groups"] for rule in group["rules"]]


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml_docs(path)]


def k8s_object(kind: str, name: str) -> dict:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in deploy/k8s"
    return found[0]


def container(workload: dict, name: str, init: bool = False) -> dict:
    spec = workload["spec"]["template"]["spec"]
    [found] = [c for c in spec.get("initContainers" if init else "containers", []) if c["name"] == name]
    return found


def shell_script(c: dict) -> str:
    """The script of a `sh -c SCRIPT` container."""
    argv = [*c.get("command", []), *c.get("args", [])]
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
    return argv[2]


def halflife_argv_in_script(script: str, **env: str) -> list[str]:
    """The arguments after `exec halflife` in a shell script, with `${HOSTNAME##*-}` and $VARS expanded."""
    joined = script.replace("\\\n", " ")
    [line] = [ln for ln in joined.splitlines() if ln.strip().startswith("exec halflife ")]
    if "HOSTNAME" in env:
        line = line.replace("${HOSTNAME##*-}", env["HOSTNAME"].rsplit("-", 1)[1])
    for key, value in env.items():
        line = line.replace("${" + key + "}", value).replace("$" + key, value)
    assert "$" not in line, f"unexpanded variable in {line!r}"
    return shlex.split(line)[2:]


def option(argv: list[str], flag: str) -> str:
    i = argv.index(flag)
    return argv[i + 1]


def replace_option(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


# --- PromQL -----------------------------------------------------------------------------------------

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "day_of_month", "deriv", "exp",
    "floor", "group", "histogram_quantile", "holt_winters", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log2", "log10", "max", "max_over_time", "min", "min_over_time",
    "predict_linear", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "sqrt", "stddev", "stdvar", "sum", "sum_over_time", "time", "timestamp", "topk", "vector",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (labels, functions, keywords and durations excluded)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") and word in PROMQL_FUNCTIONS:
            continue
        if word.lower() in PROMQL_KEYWORDS:
            continue
        if re.fullmatch(r"\d", text[match.start() - 1:match.start()] or " "):
            continue  # the unit of a number such as 1e3
        names.add(word)
    return names


def exposition_names(text: str) -> set[str]:
    """Sample names in a Prometheus text exposition (halflife_x_total, halflife_y_bucket, ...)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def registry_names(registry: Any) -> set[str]:
    """Every sample name a prometheus_client registry can export, labelled families without children too."""
    names = set()
    for family in registry.collect():
        kind, name = family.type, family.name
        if kind == "counter":
            names |= {name + "_total", name + "_created"}
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count", name + "_created"}
        elif kind == "summary":
            names |= {name, name + "_sum", name + "_count", name + "_created"}
        else:
            names.add(name)
    return names


# --- processes --------------------------------------------------------------------------------------

def halflife_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HALFLIFE_")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`halflife ARGV` (python -m engine) in its own process group, output to `log`."""
    out = open(log, "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen([sys.executable, "-m", "engine", *argv], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env=env or halflife_env(), start_new_session=True)
    proc.log = out  # type: ignore[attr-defined]
    return proc


def spawn_shell(script: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    out = open(log, "wb")  # noqa: SIM115 - closed by stop()
    proc = subprocess.Popen(["sh", "-c", script], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    proc.log = out  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
    """`stop_process`, then close the log file `spawn`/`spawn_shell` opened for it."""
    code, _ = stop_process(proc, sig, timeout_s)
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()
    return code


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def http_get(url: str, timeout_s: float = 10) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, headers: dict[str, str], timeout_s: float = 10) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Prometheus:
    """A real `prometheus` on a free port, scraping every second, with its TSDB in `directory`."""

    def __init__(self, directory: Path, scrape_configs: list[dict], rule_files: list[str], port: int | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = directory / "prometheus.yml"
        self.config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        }))
        self.log = directory / "prometheus.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30) -> None:
        out = open(self.log, "wb")  # noqa: SIM115 - closed by stop()
        self.process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.directory / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.process.log = out  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{tail(self.log)}")
            try:
                if http_get(self.url + "/-/ready", timeout_s=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout_s} s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def api(self, path: str, **params: str) -> dict:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        data = json.loads(body)
        data["http_status"] = status
        return data

    def query(self, expr: str) -> dict:
        return self.api("query", query=expr)
