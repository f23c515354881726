"""A real Prometheus scrapes a live engine (two supervised processes) and collector fed with a scripted
workload; then every PromQL expression of the Grafana dashboard and of the alert rules is evaluated
through Prometheus's HTTP API.

The workload makes every panel have data, faults included:
* a webhook receiver answers the `email` channel 503 once per trigger, then 200 (outcomes `retried`
  and `delivered`), and the `sales` channel 410 (a permanent failure: outcome `failed`);
* Redis runs out of memory for a few seconds (`maxmemory 1`, noeviction): the engine's Redis sinks
  fail and retry (sink errors and retries) and the collector answers 503 (5xx and Redis errors);
* some events are invalid (collector: 400, rejected by reason), one stream entry written behind the
  collector's back is not JSON (engine: dead-lettered), a batch is posted twice (engine: deduplicated)
  and a few events are older than the lateness (engine: late).

Needs Debian's `prometheus` package (`make test` installs it: .ci/install-test-tools); without it these tests fail.
"""

from __future__ import annotations

import gzip
import math
import subprocess
import threading
import time
from base64 import b64encode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import redis
import yaml

from bench.common import read_metrics
from engine.shop import Shop, ShopConfig
from engine.testing import RedisServer, free_port, free_port_block, wait_port
from engine.times import format_time
from tests.deploy.stack import (
    ALERTS_YML,
    COLLECTOR_JOB,
    ENGINE_JOB,
    PROMETHEUS_YML,
    Prometheus,
    alert_rules,
    dashboard_exprs,
    exposition_names,
    grafana_to_promql,
    halflife_env,
    http_get,
    http_post,
    metric_names,
    spawn,
    stop,
    tail,
    tool,
)

pytestmark = pytest.mark.slow

RULES = """
version: 1
lateness: 3s
scores:
  engagement:
    half_life: 3s
    points:
      - {event: [Page Viewed, Product Viewed], add: 1}
      - {event: Product Added, add: 4}
      - {event: [Email Opened, Email Clicked], add: 2}
triggers:
  hot:
    when: {score: engagement, rises_above: 6}
    cooldown: 2s
    actions: [{emit: sales}, {tag: hot}]
  browsing:
    when: {count: {event: Product Viewed}, within: 1s, at_least: 3}
    unless: {event: Order Completed, within: 1h}
    actions: [{emit: onsite}]
  cart_abandoned:
    when: {first: {event: Product Added}, then_not: {event: Order Completed}, within: 1s}
    actions: [{emit: email}]
  quiet:
    when: {inactive_for: 2s}
    actions: [{emit: email}, {stage: dormant}]
"""
SHARDS = 8
WRITE_KEY = "deploy-test-key"
PROCESSES = 2


class _Receiver(BaseHTTPRequestHandler):
    """/flaky: 503 on the first attempt of each Idempotency-Key, then 200. /gone: 410 always."""

    seen: set[str] = set()
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        key = self.headers.get("Idempotency-Key", "")
        if self.path == "/gone":
            status = 410
        else:
            with self.lock:
                first = key not in self.seen
                self.seen.add(key)
            status = 503 if first else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def events_between(n: int, start_ms: int, end_ms: int, seed: int) -> list[dict]:
    events = Shop(ShopConfig(seed=seed, contacts=40, sessions_per_minute=400.0)).take(n)
    for i, e in enumerate(events):
        e["timestamp"] = format_time(start_ms + (end_ms - start_ms) * i // n)
    return events


class Stack:
    """The processes of the live test and what the workload observed."""

    def __init__(self, tmp) -> None:
        self.tmp = tmp
        self.procs: list = []
        self.sink_errors_in_window = 0.0  # what the engines counted before Redis took writes again
        self.prometheus: Prometheus | None = None
        self.redis_server: RedisServer | None = None
        self.receiver: ThreadingHTTPServer | None = None
        self.statuses: dict[int, int] = {}
        self.initial_texts: dict[str, str] = {}  # /metrics before the first event
        self.metrics_texts: dict[str, str] = {}  # /metrics after the workload

    def post(self, path: str, payload: dict, compress: bool = False) -> int:
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json",
                   "Authorization": "Basic " + b64encode(f"{WRITE_KEY}:".encode()).decode()}
        if compress:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        status, _ = http_post(f"http://127.0.0.1:{self.collector_port}{path}", body, headers)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status

    def start(self) -> None:
        tmp = self.tmp
        self.redis_server = RedisServer(str(tmp))
        self.redis_server.start()
        url = self.redis_server.url
        self.redis = redis.Redis.from_url(url)

        self.receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        threading.Thread(target=self.receiver.serve_forever, daemon=True).start()
        hooks = f"http://127.0.0.1:{self.receiver.server_address[1]}"

        rules = tmp / "rules.yaml"
        rules.write_text(RULES)
        self.collector_port = free_port()
        self.metrics_port = free_port_block(PROCESSES)
        self.engine_ports = [self.metrics_port + i for i in range(PROCESSES)]
        self.collector = spawn(["collect", "--redis", url, "--port", str(self.collector_port), "--write-key", WRITE_KEY,
                                "--shards", str(SHARDS)], tmp / "collector.log")
        self.procs.append(self.collector)
        self.engine_log = tmp / "engine.log"
        self.engine = spawn(
            ["run", "--rules", str(rules), "--input", url, "--output", url, "--dlq", url, "--profiles", url,
             "--recovery", str(tmp / "recovery"), "--shards", str(SHARDS), "--snapshot-interval", "1",
             "--processes", str(PROCESSES), "--metrics-port", str(self.metrics_port),
             "--webhook", f"email={hooks}/flaky", "--webhook", f"sales={hooks}/gone"],
            self.engine_log,
            env=halflife_env(HALFLIFE_WEBHOOK_SECRET_EMAIL="email-secret", HALFLIFE_WEBHOOK_SECRET_SALES="sales-secret"))
        self.procs.append(self.engine)
        wait_port(self.collector_port, proc=self.collector)
        for port in self.engine_ports:
            wait_port(port, timeout_s=60, proc=self.engine)
        # Every process's source partitions poll their streams (the backlog gauge appears) before the
        # workload starts, so no event waits for a cluster that is still forming.
        deadline = time.monotonic() + 60
        for port in self.engine_ports:
            while b"halflife_source_backlog_entries{" not in http_get(f"http://127.0.0.1:{port}/metrics")[1]:
                assert self.engine.poll() is None, tail(self.engine_log)
                assert time.monotonic() < deadline, f"the engine's sources did not start:\n{tail(self.engine_log)}"
                time.sleep(0.1)

        self.initial_texts = {f"engine:{p}": http_get(f"http://127.0.0.1:{p}/metrics")[1].decode()
                              for p in self.engine_ports}
        self.initial_texts["collector"] = http_get(f"http://127.0.0.1:{self.collector_port}/metrics")[1].decode()

        # Prometheus with deploy/prometheus/prometheus.yml's jobs and alert rules, scraping these processes.
        config = yaml.safe_load(PROMETHEUS_YML.read_text())
        prometheus_port = free_port()
        targets = {
            ENGINE_JOB: [f"127.0.0.1:{p}" for p in self.engine_ports],
            COLLECTOR_JOB: [f"127.0.0.1:{self.collector_port}"],
            "prometheus": [f"127.0.0.1:{prometheus_port}"],
        }
        assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
        scrape_configs = []
        for job in config["scrape_configs"]:
            job = {**job, "static_configs": [{"targets": targets[job["job_name"]]}], "scrape_interval": "1s"}
            scrape_configs.append(job)
        self.prometheus = Prometheus(tmp / "prometheus", scrape_configs, [str(ALERTS_YML)], port=prometheus_port)
        self.prometheus.start()
        # Two scrapes of every target before the workload, so that the counters' increases are seen.
        deadline = time.monotonic() + 30
        while True:
            result = self.prometheus.query("count_over_time(up[1m]) >= 2")["data"]["result"]
            if len(result) == sum(len(t) for t in targets.values()):
                break
            assert time.monotonic() < deadline, f"prometheus does not scrape every target:\n{tail(self.prometheus.log)}"
            time.sleep(0.2)

    def workload(self) -> None:
        # Warm-up traffic, scraped before the rest: a series that first appears with its value already
        # above 0 shows no increase for those first counts, so the workload proper must come after the
        # collector's series exist (see test_labelled_series_exist_before_their_first_event).
        now = int(time.time() * 1000)
        assert self.post("/v1/batch", {"batch": events_between(20, now - 1000, now, seed=3)}) == 200
        time.sleep(2.5)

        now = int(time.time() * 1000)
        # 400 events over the last 2.5 s (within the 3 s lateness: none late), 50 per request.
        events = events_between(400, now - 2500, now, seed=21)
        for i in range(0, len(events), 50):
            assert self.post("/v1/batch", {"batch": events[i:i + 50]}, compress=i % 100 == 0) == 200
        # The first request again: the collector accepts it, the engine drops the repeats.
        assert self.post("/v1/batch", {"batch": events[:50]}) == 200
        # Single-event routes too.
        single = {"type": "track", "event": "Email Opened", "userId": "u-single", "messageId": "single-1",
                  "timestamp": format_time(now)}
        assert self.post("/v1/track", single) == 200
        assert self.post("/v1/page", {**single, "type": "page", "name": "Pricing", "messageId": "single-2"}) == 200
        # Invalid events: the collector rejects them (400) and dead-letters them itself.
        invalid = [{"type": "track", "event": "Page Viewed", "messageId": f"bad-{i}", "timestamp": format_time(now)}
                   for i in range(5)]
        assert self.post("/v1/batch", {"batch": invalid + events_between(20, now - 1000, now, seed=5)}) == 400
        # Late events: a minute old, below the watermark on arrival.
        assert self.post("/v1/batch", {"batch": events_between(10, now - 60_000, now - 59_000, seed=9)}) == 200
        # A stream entry from another producer that is not JSON: the engine dead-letters it.
        self.redis.xadd("hl:events:0", {"events": b"this is not json", "n": 1})

        # Timers (quiet) fire about 5 s after their events (deadline + 3 s lateness). Redis refuses writes
        # while they are being emitted: the trigger sink fails and retries, the collector answers 503.
        # First the engines finish what came before: a failed webhook delivery (the "sales" channel)
        # writes its record to Redis, and while Redis refuses that write the worker waits (its sinks
        # never drop), so the trigger sink would not get to fail. Then fresh contacts view one page
        # each: timers due inside the window however long the requests above took, and no "sales"
        # trigger (the engines' XREAD still works under maxmemory).
        self._wait_until_engines_are_idle()
        fresh_now = int(time.time() * 1000)
        fresh = [{"type": "page", "name": "Home", "userId": f"fresh-{i}", "messageId": f"fresh-{i}",
                  "properties": {"path": "/"}, "timestamp": format_time(fresh_now)} for i in range(10)]
        assert self.post("/v1/batch", {"batch": fresh}) == 200
        self.redis.config_set("maxmemory", "1")
        try:
            for seed in (13, 14):  # two 503s, a scrape apart (the first creates the series)
                time.sleep(1.5)
                late_now = int(time.time() * 1000)
                assert self.post("/v1/batch", {"batch": events_between(10, late_now - 500, late_now, seed=seed)}) == 503
            time.sleep(1.5)
            # On a loaded machine the timers' records can come after that: refuse until a sink has failed.
            waited = time.monotonic()
            while not self._sink_errors() and time.monotonic() - waited < 15.0:
                time.sleep(0.25)
            self.sink_errors_in_window = self._sink_errors()
        finally:
            self.redis.config_set("maxmemory", "0")
        # Let the sinks catch up and the timers fire, then give Prometheus a few more scrapes.
        time.sleep(6.0)
        for port in self.engine_ports:
            self.metrics_texts[f"engine:{port}"] = http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        self.metrics_texts["collector"] = http_get(f"http://127.0.0.1:{self.collector_port}/metrics")[1].decode()
        time.sleep(3.0)

    def _engine_totals(self, *metrics: str) -> tuple[float, ...]:
        """Each of `metrics` summed over its samples in every engine process."""
        totals = [0.0] * len(metrics)
        for port in self.engine_ports:
            sums = read_metrics(port)
            assert sums is not None, f"no metrics on engine port {port}:\n{tail(self.engine_log)}"
            totals = [t + sums.get(m, 0.0) for t, m in zip(totals, metrics, strict=True)]
        return tuple(totals)

    def _sink_errors(self) -> float:
        return self._engine_totals("halflife_sink_errors_total")[0]

    def _wait_until_engines_are_idle(self, timeout_s: float = 20.0) -> None:
        """Until the engines' events read, records written and webhook deliveries stay the same for 1 s."""
        def counts() -> tuple[float, ...]:
            return self._engine_totals("halflife_events_in_total", "halflife_sink_writes_total",
                                       "halflife_webhook_deliveries_total")
        deadline = time.monotonic() + timeout_s
        last = counts()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = counts()
            if now == last:
                return
            last = now
        raise AssertionError(f"the engines did not settle within {timeout_s} s:\n{tail(self.engine_log)}")

    def close(self) -> None:
        if self.prometheus is not None:
            self.prometheus.stop()
        for proc in reversed(self.procs):
            stop(proc)
        if self.receiver is not None:
            self.receiver.shutdown()
        if self.redis_server is not None:
            self.redis_server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tool("prometheus")  # fail before starting anything when it is missing
    s = Stack(tmp_path_factory.mktemp("deploy-live"))
    try:
        s.start()
        s.workload()
        assert s.engine.poll() is None, f"the engine exited:\n{tail(s.engine_log)}"
        yield s
    finally:
        s.close()


def vector(stack: Stack, expr: str) -> list[dict]:
    data = stack.prometheus.query(expr)
    assert data["status"] == "success", f"{expr}: {data.get('errorType')}: {data.get('error')}"
    assert data["data"]["resultType"] == "vector", expr
    return data["data"]["result"]


def total(stack: Stack, expr: str) -> float:
    return sum(float(sample["value"][1]) for sample in vector(stack, expr))


def test_prometheus_scrapes_every_engine_process_and_the_collector(stack):
    up = {(s["metric"]["job"], s["metric"]["instance"]): s["value"][1] for s in vector(stack, "up")}
    expected = {(ENGINE_JOB, f"127.0.0.1:{p}") for p in stack.engine_ports} | {
        (COLLECTOR_JOB, f"127.0.0.1:{stack.collector_port}"), ("prometheus", f"127.0.0.1:{stack.prometheus.port}")}
    assert set(up) == expected
    assert set(up.values()) == {"1"}


def test_the_workload_reached_every_fault_path(stack):
    """The faults the workload injects show up in the metrics (so the panels have real data)."""
    assert stack.statuses.get(503), stack.statuses
    checks = {
        "events read by both processes": 'count(increase(halflife_events_in_total[1m]) > 0) == 2',
        "triggers fired": "sum(increase(halflife_triggers_fired_total[1m])) > 0",
        "trigger latency observed": "sum(increase(halflife_trigger_latency_seconds_count[1m])) > 0",
        "duplicates dropped": "sum(increase(halflife_events_deduplicated_total[1m])) > 0",
        "late events": "sum(increase(halflife_events_late_total[1m])) > 0",
        "engine dead letter": 'sum(increase(halflife_events_dead_lettered_total{reason="not_json"}[1m])) > 0',
        "collector rejected": 'sum(increase(halflife_collector_events_rejected_total{reason="missing_contact"}[1m])) > 0',
        "collector 503": 'sum(halflife_collector_requests_total{status="503"}) >= 2',
        "collector 400": 'sum(halflife_collector_requests_total{status="400"}) > 0',
        "collector redis errors": "sum(increase(halflife_collector_redis_errors_total[1m])) > 0",
        "sink errors": "sum(increase(halflife_sink_errors_total[1m])) > 0",
        "sink retries": "sum(increase(halflife_sink_retries_total[1m])) > 0",
        "webhook delivered": 'sum(increase(halflife_webhook_deliveries_total{outcome="delivered"}[1m])) > 0',
        "webhook retried": 'sum(increase(halflife_webhook_deliveries_total{outcome="retried"}[1m])) > 0',
        "webhook failed": 'sum(increase(halflife_webhook_deliveries_total{outcome="failed"}[1m])) > 0',
        "suppressed by cooldown": 'sum(increase(halflife_triggers_suppressed_total{reason="cooldown"}[1m])) > 0',
        "state snapshotted": "sum(halflife_state_bytes) > 0",
        "contacts in state": "sum(halflife_contacts) > 0",
        "backlog measured per shard": f"count(halflife_source_backlog_entries) == {SHARDS}",
    }
    missing = [name for name, expr in checks.items() if not vector(stack, expr)]
    assert missing == [], (f"sink errors while Redis refused writes: {stack.sink_errors_in_window}\n"
                           f"{tail(stack.engine_log)}")


def test_every_dashboard_expression_returns_data(stack):
    problems = []
    exprs = dashboard_exprs()
    assert len(exprs) > 30
    for title, expr in exprs:
        result = vector(stack, grafana_to_promql(expr))
        values = [float(s["value"][1]) for s in result]
        if not result:
            problems.append(f"{title}: no data: {expr}")
        elif not any(math.isfinite(v) for v in values):
            problems.append(f"{title}: only NaN/Inf: {expr}")
    assert problems == []


def test_every_alert_expression_evaluates(stack):
    for rule in alert_rules():
        vector(stack, rule["expr"])  # raises on an error; an empty result is fine


def test_prometheus_evaluates_the_alert_rules_without_errors(stack):
    data = stack.prometheus.api("rules")
    assert data["status"] == "success"
    rules = [r for g in data["data"]["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alert_rules()}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


def test_alerts_after_the_workload(stack):
    """Only WebhookFailures (no `for`) can fire within seconds, and it must: `sales` deliveries failed."""
    alerts = stack.prometheus.api("alerts")["data"]["alerts"]
    firing = {(a["labels"]["alertname"], a["labels"].get("channel")) for a in alerts if a["state"] == "firing"}
    assert firing == {("WebhookFailures", "sales")}
    active = {a["labels"]["alertname"] for a in alerts}
    assert not active & {"HalflifeEngineDown", "HalflifeCollectorDown", "NoEventsWhileCollectorReceives",
                         "WatermarkStalled"}


def test_expressions_name_only_metrics_the_processes_export(stack):
    scraped = set().union(*(exposition_names(text) for text in stack.metrics_texts.values())) | {"up"}
    exprs = dashboard_exprs() + [(r["alert"], r["expr"]) for r in alert_rules()]
    unknown = sorted({(title, name) for title, expr in exprs for name in metric_names(expr) if name not in scraped})
    assert unknown == []


def test_promtool_check_metrics_passes_on_the_engine_and_the_collector(stack):
    assert set(stack.metrics_texts) == {f"engine:{p}" for p in stack.engine_ports} | {"collector"}
    for name, text in stack.metrics_texts.items():
        assert "halflife_" in text, name
        proc = subprocess.run([tool("promtool"), "check", "metrics"], input=text.encode(), capture_output=True,
                              timeout=60)
        assert proc.returncode == 0, f"{name}: {(proc.stdout + proc.stderr).decode()}"


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (Linux /proc/net/tcp and tcp6)."""
    import ipaddress

    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[k:k + 4][::-1] for k in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(raw)))
    return found


def test_metrics_bind_localhost_by_default(stack):
    """Without --metrics-host the engine's /metrics listens on 127.0.0.1 only (the collector's default host too)."""
    for port in [*stack.engine_ports, stack.collector_port]:
        assert listening_addresses(port) == {"127.0.0.1"}, port


def series(text: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    from prometheus_client.parser import text_string_to_metric_families

    return {tuple(sorted(sample.labels.items())) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name}


def test_labelled_series_exist_before_their_first_event(stack):
    """rate()/increase() cannot see the counts a series already holds when it first appears, so a counter
    child created by its first increment hides that increment: the first webhook failure of a channel
    would never fire WebhookFailures, a first burst of 503s never CollectorErrors, a sink's first errors
    never SinkErrors. The series the alerts and panels divide or sum must exist at 0 from the start.
    """
    engine_start = "\n".join(t for k, t in stack.initial_texts.items() if k.startswith("engine:"))
    engine_end = "\n".join(t for k, t in stack.metrics_texts.items() if k.startswith("engine:"))
    missing = []
    for channel in ("email", "sales"):  # the channels this run delivers by webhook
        for outcome in ("delivered", "retried", "failed"):
            labels = (("channel", channel), ("outcome", outcome))
            if labels not in series(engine_start, "halflife_webhook_deliveries_total"):
                missing.append(f"halflife_webhook_deliveries_total{dict(labels)}")
    sinks = {dict(labels)["sink"] for labels in series(engine_end, "halflife_sink_writes_total")}
    assert sinks
    for name in ("halflife_sink_writes_total", "halflife_sink_errors_total", "halflife_sink_retries_total"):
        for sink in sorted(sinks):
            if (("sink", sink),) not in series(engine_start, name):
                missing.append(f"{name}{{sink={sink!r}}}")
    collector_start = series(stack.initial_texts["collector"], "halflife_collector_requests_total")
    for route in ("/v1/track", "/v1/page", "/v1/identify", "/v1/screen", "/v1/group", "/v1/alias", "/v1/batch"):
        for status in ("200", "400", "500", "503"):
            if (("route", route), ("status", status)) not in collector_start:
                missing.append(f"halflife_collector_requests_total{{route={route!r}, status={status!r}}}")
    assert missing == [], "series created only by their first increment:\n" + "\n".join(missing)
