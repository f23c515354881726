"""deploy/: the compose file, the Kubernetes manifests, the Dockerfile and the Grafana files parse,
reference files that exist, run command lines the real CLI accepts, and agree on ports and names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from engine.cli import _parser
from rules import check_rules
from tests.conftest import EXAMPLE_RULES, ROOT
from tests.deploy.stack import (
    ALERTS_YML,
    COLLECTOR_JOB,
    COMPOSE,
    DASHBOARD,
    DATASOURCE_UID,
    DEPLOY,
    ENGINE_JOB,
    KUBERNETES_YML,
    PROMETHEUS_YML,
    alert_rules,
    container,
    dashboard_exprs,
    halflife_argv_in_script,
    k8s_object,
    k8s_objects,
    metric_names,
    registry_names,
    shell_script,
)

ENGINE_SERVICES = ("engine-0", "engine-1")


def parse(argv: list[str]) -> argparse.Namespace:
    """The real `halflife` parser; a rejected command line fails the test with argparse's message."""
    try:
        return _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"halflife {' '.join(argv)}: rejected by the CLI parser (exit {exc.code})")


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def redis_host(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.scheme == "redis", url
    return parts.hostname or "", parts.port or 6379


# --- docker compose ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_argv(compose: dict, name: str) -> list[str]:
    command = compose["services"][name]["command"]
    assert isinstance(command, list), f"{name}: command must be a list (no shell parsing)"
    return command


def mounts(service: dict) -> dict[str, str]:
    """container path -> source (host path or named volume)."""
    out = {}
    for spec in service.get("volumes", []):
        source, target = spec.split(":")[:2]
        out[target] = source
    return out


def test_compose_has_the_stack(compose):
    assert set(compose["services"]) == {"redis", "collector", "recovery-init", *ENGINE_SERVICES, "prometheus", "grafana"}
    assert set(compose["volumes"]) >= {"redis-data", "recovery", "prometheus-data", "grafana-data"}


def test_compose_redis_keeps_an_append_only_file_on_a_volume(compose):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert mounts(redis)["/data"] == "redis-data"


def test_compose_references_files_that_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert context == ROOT, f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), name
        for target, source in mounts(service).items():
            if source.startswith((".", "/")):
                assert (DEPLOY / source).resolve().exists(), f"{name}: {source} (mounted at {target}) does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_compose_command_lines_parse_and_agree(compose):
    services = compose["services"]
    collector = parse(service_argv(compose, "collector"))
    assert collector.command == "collect"
    assert collector.host == "0.0.0.0"
    assert redis_host(collector.redis) == ("redis", 6379)
    assert f"{collector.port}:{collector.port}" in services["collector"]["ports"]
    assert "HALFLIFE_WRITE_KEYS" in services["collector"]["environment"]

    addresses = None
    for i, name in enumerate(ENGINE_SERVICES):
        service = services[name]
        args = parse(service_argv(compose, name))
        assert args.command == "run"
        assert args.process_id == i
        members = args.addresses.split(";")
        addresses = addresses or members
        assert members == addresses, "every member must be given the same --addresses"
        assert len(members) == len(ENGINE_SERVICES)
        host, cluster_port = host_port(members[i])
        assert host == name == service["hostname"], f"--addresses names {host} for member {i}"
        assert str(cluster_port) in service["expose"]
        assert args.metrics_host == "0.0.0.0"
        assert str(args.metrics_port) in service["expose"]
        assert args.shards == collector.shards, "the engine and the collector must agree on --shards"
        for target in (args.input, args.output, args.dlq, args.profiles):
            assert redis_host(target) == ("redis", 6379)
        volumes = mounts(service)
        assert volumes[args.recovery] == "recovery", "members share the recovery volume"
        assert volumes[args.recovery] == mounts(services["recovery-init"])["/var/lib/halflife/recovery"]
        rules_source = (DEPLOY / volumes[args.rules.rstrip("/")]).resolve()
        assert rules_source == EXAMPLE_RULES.parent
        assert check_rules(str(rules_source)) == []
        assert service["depends_on"]["recovery-init"]["condition"] == "service_completed_successfully"


def test_compose_prometheus_scrapes_every_member_and_the_collector(compose):
    services = compose["services"]
    prometheus = services["prometheus"]
    volumes = mounts(prometheus)
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file="))
    assert (DEPLOY / volumes[config_path]).resolve() == PROMETHEUS_YML
    # rule_files are relative to the configuration: alerts.yml must be mounted next to it.
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    for rule_file in config["rule_files"]:
        mounted = os.path.join(os.path.dirname(config_path), rule_file)
        assert (DEPLOY / volumes[mounted]).resolve() == ALERTS_YML

    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]}
    expected_engines = []
    for name in ENGINE_SERVICES:
        args = parse(service_argv(compose, name))
        # A member run with --process-id serves /metrics on exactly --metrics-port, in its own container.
        expected_engines.append(f"{name}:{args.metrics_port}")
    assert sorted(jobs[ENGINE_JOB]) == sorted(expected_engines)
    collector = parse(service_argv(compose, "collector"))
    assert jobs[COLLECTOR_JOB] == [f"collector:{collector.port}"]


def test_compose_grafana_provisioning_is_mounted_and_points_at_prometheus(compose):
    grafana = compose["services"]["grafana"]
    volumes = mounts(grafana)
    provisioning = (DEPLOY / volumes["/etc/grafana/provisioning"]).resolve()
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    provider = yaml.safe_load((provisioning / "dashboards" / "halflife.yml").read_text())["providers"][0]
    dashboards = (DEPLOY / volumes[provider["options"]["path"]]).resolve()
    assert (dashboards / DASHBOARD.name).resolve() == DASHBOARD
    [datasource] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["uid"] == DATASOURCE_UID and datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    prometheus = compose["services"]["prometheus"]
    assert url.hostname == "prometheus"
    assert f"{url.port}:{url.port}" in prometheus["ports"]


@pytest.mark.slow
def test_compose_recovery_init_script_creates_partitions_once(compose, tmp_path):
    """The one-shot service's script, run here: partitions the engine can use, untouched on a rerun."""
    import subprocess
    import sys

    script = compose["services"]["recovery-init"]["command"][0].replace("$$", "$")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    script = script.replace("/var/lib/halflife/recovery", str(recovery))
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    for _ in range(2):
        proc = subprocess.run(["sh", "-c", script], capture_output=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
    parts = sorted(p.name for p in recovery.glob("part-*.sqlite3"))
    assert parts == [f"part-{i}.sqlite3" for i in range(8)]
    assert b"recovery partitions present" in proc.stdout


# --- Dockerfile -------------------------------------------------------------------------------------

def test_dockerfile_copies_files_that_exist_and_runs_halflife():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    for match in re.finditer(r"^COPY (.+)$", text, re.M):
        *sources, _target = match.group(1).split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert re.search(r'^ENTRYPOINT \["halflife"\]$', text, re.M)
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {8088, 9100, 9108}
    # The Dockerfile-specific ignore file lets every copied path into the build context.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].split("/")[0] for line in ignore if line.startswith("!")}
    for match in re.finditer(r"^COPY (.+)$", text, re.M):
        for source in match.group(1).split()[:-1]:
            assert source.rstrip("/") in allowed, f"{source} is excluded from the build context"


# --- Kubernetes -------------------------------------------------------------------------------------

def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(service: dict, workload: dict) -> bool:
    return all(pod_labels(workload).get(k) == v for k, v in service["spec"]["selector"].items())


def named_port(c: dict, name: str) -> int:
    [port] = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return port


def service_port(service: dict, name: str) -> dict:
    [port] = [p for p in service["spec"]["ports"] if p["name"] == name]
    return port


def engine_argv(ordinal: int) -> list[str]:
    engine = k8s_object("StatefulSet", "halflife-engine")
    return halflife_argv_in_script(shell_script(container(engine, "engine")), HOSTNAME=f"halflife-engine-{ordinal}")


def test_k8s_manifests_parse_and_are_namespace_free():
    objects = k8s_objects()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in objects}
    assert kinds == {
        ("Service", "halflife-engine"), ("StatefulSet", "halflife-engine"),
        ("Service", "halflife-collector"), ("Service", "halflife-collector-pods"), ("Deployment", "halflife-collector"),
        ("ConfigMap", "halflife-rules"), ("Service", "halflife-redis"), ("StatefulSet", "halflife-redis"),
    }
    for path, doc in objects:
        assert "namespace" not in doc["metadata"], f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "halflife"
    images = {c["image"] for _, doc in objects if doc["kind"] in ("StatefulSet", "Deployment")
              for c in doc["spec"]["template"]["spec"].get("containers", []) + doc["spec"]["template"]["spec"].get(
                  "initContainers", []) if not c["image"].startswith("redis:")}
    assert len(images) == 1, f"every halflife container runs the same image: {images}"


def test_k8s_engine_statefulset_forms_one_cluster():
    engine = k8s_object("StatefulSet", "halflife-engine")
    service = k8s_object("Service", engine["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None", "the cluster's addresses come from a headless Service"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert selects(service, engine)
    assert engine["spec"]["selector"]["matchLabels"].items() <= pod_labels(engine).items()
    assert engine["spec"]["podManagementPolicy"] == "Parallel"
    replicas = engine["spec"]["replicas"]
    assert replicas == 2
    c = container(engine, "engine")
    cluster_port = named_port(c, "cluster")
    metrics_port = named_port(c, "metrics")
    assert service_port(service, "cluster")["port"] == cluster_port
    assert service_port(service, "metrics")["port"] == metrics_port
    annotations = engine["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"

    expected = [f"{engine['metadata']['name']}-{j}.{service['metadata']['name']}:{cluster_port}" for j in range(replicas)]
    mount_paths = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    for ordinal in range(replicas):
        args = parse(engine_argv(ordinal))
        assert args.command == "run"
        assert args.process_id == ordinal, "the process id is the pod ordinal"
        assert args.addresses.split(";") == expected
        assert args.metrics_host == "0.0.0.0"
        # Every pod serves on the same port: the scrape annotation is one value for all of them.
        assert args.metrics_port == metrics_port == int(annotations["prometheus.io/port"])
        assert args.recovery == mount_paths["recovery"]
        assert args.rules == mount_paths["rules"]
        for target in (args.input, args.output, args.dlq, args.profiles):
            redis_service = k8s_object("Service", redis_host(target)[0])
            assert service_port(redis_service, "redis")["port"] == redis_host(target)[1]
    [claim] = engine["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "recovery"
    [rules_volume] = [v for v in engine["spec"]["template"]["spec"]["volumes"] if v["name"] == "rules"]
    assert k8s_object("ConfigMap", rules_volume["configMap"]["name"])

    init = container(engine, "recovery-partitions", init=True)
    env = {e["name"]: e["value"] for e in init["env"]}
    assert int(env["MEMBERS"]) == replicas
    assert int(env["PARTITIONS"]) >= replicas
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["recovery"] == mount_paths["recovery"]


def test_k8s_collector_deployment_agrees_with_its_services_and_the_engine():
    collector = k8s_object("Deployment", "halflife-collector")
    c = container(collector, "collector")
    args = parse(c["args"])
    assert args.command == "collect"
    assert args.host == "0.0.0.0"
    http = named_port(c, "http")
    assert args.port == http
    annotations = collector["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == http and annotations["prometheus.io/scrape"] == "true"
    for name in ("halflife-collector", "halflife-collector-pods"):
        service = k8s_object("Service", name)
        assert selects(service, collector)
        assert service_port(service, "http")["targetPort"] == "http"
    assert k8s_object("Service", "halflife-collector-pods")["spec"]["clusterIP"] == "None"
    redis_service = k8s_object("Service", redis_host(args.redis)[0])
    assert service_port(redis_service, "redis")["port"] == redis_host(args.redis)[1]
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["HALFLIFE_WRITE_KEYS"]["valueFrom"]
    assert args.shards == parse(engine_argv(0)).shards, "the engine and the collector must agree on --shards"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"


def test_k8s_redis_keeps_an_append_only_file():
    redis = k8s_object("StatefulSet", "halflife-redis")
    args = container(redis, "redis")["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert selects(k8s_object("Service", "halflife-redis"), redis)


def test_k8s_rules_configmap_is_the_example_rules():
    configmap = k8s_object("ConfigMap", "halflife-rules")
    assert configmap["data"] == {EXAMPLE_RULES.name: EXAMPLE_RULES.read_text()}


def test_rules_load_from_a_configmap_volume_layout(tmp_path):
    """kubelet mounts a ConfigMap as symlinks into a hidden timestamped directory; --rules DIR must read it once."""
    data = k8s_object("ConfigMap", "halflife-rules")["data"]
    stamped = tmp_path / "..2026_01_01_00_00_00.000000001"
    stamped.mkdir()
    for name, text in data.items():
        (stamped / name).write_text(text)
    (tmp_path / "..data").symlink_to(stamped.name)
    for name in data:
        (tmp_path / name).symlink_to(Path("..data") / name)
    assert check_rules(str(tmp_path)) == []


def test_k8s_prometheus_config_finds_the_pods_through_the_headless_services():
    config = yaml.safe_load(KUBERNETES_YML.read_text())
    jobs = {job["job_name"]: job["dns_sd_configs"] for job in config["scrape_configs"]}
    assert set(jobs) == {ENGINE_JOB, COLLECTOR_JOB}
    engine_c = container(k8s_object("StatefulSet", "halflife-engine"), "engine")
    collector_c = container(k8s_object("Deployment", "halflife-collector"), "collector")
    for job, port in ((ENGINE_JOB, named_port(engine_c, "metrics")), (COLLECTOR_JOB, named_port(collector_c, "http"))):
        [sd] = jobs[job]
        assert sd["type"] == "A" and sd["port"] == port
        for name in sd["names"]:
            assert k8s_object("Service", name)["spec"]["clusterIP"] == "None", f"{name} must be headless"


# --- Grafana ----------------------------------------------------------------------------------------

def test_grafana_datasource_has_a_fixed_uid():
    [datasource] = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["uid"] == DATASOURCE_UID


def test_dashboard_uses_only_the_provisioned_datasource():
    text = DASHBOARD.read_text()
    assert "${DS_" not in text and "__inputs" not in text
    dashboard = json.loads(text)
    expected = {"type": "prometheus", "uid": DATASOURCE_UID}
    ids = []
    for panel in dashboard["panels"]:
        ids.append(panel["id"])
        if panel["type"] == "row":
            assert panel["panels"] == [], "collapsed rows would hide their panels from these checks"
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids))


def test_dashboard_has_the_rows_the_issue_asks_for():
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Overview", "Rules", "Events and dead letters", "Sinks", "State and timers", "Batches", "Collector"]
    overview = []
    for panel in dashboard["panels"][1:]:
        if panel["type"] == "row":
            break
        overview.append(panel["title"])
    assert {"Events /s", "Triggers /s", "Trigger latency", "Event-time lag"} <= set(overview)


def exported_names() -> set[str]:
    from engine import metrics
    from engine.collector import _Metrics

    return registry_names(metrics.REGISTRY) | registry_names(_Metrics().registry) | {"up"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_expressions_name_only_metrics_the_code_exports(source):
    exprs = dashboard_exprs() if source == "dashboard" else [(r["alert"], r["expr"]) for r in alert_rules()]
    exported = exported_names()
    unknown = {(title, name) for title, expr in exprs for name in metric_names(expr) if name not in exported}
    assert unknown == set()


def test_dashboard_shows_every_metric_the_code_exports():
    from engine import metrics
    from engine.collector import _Metrics

    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    families = {f.name for registry in (metrics.REGISTRY, _Metrics().registry) for f in registry.collect()}
    unused = {f for f in families if not any(u == f or u.startswith(f + "_") for u in used)}
    assert unused == set(), "metrics the dashboard does not show"


def test_metric_name_parser():
    assert metric_names('sum by (rule, le) (rate(halflife_x_bucket{route=~"/v1/.*", a="b"}[5m])) > 0.5') == {
        "halflife_x_bucket"}
    assert metric_names('up{job="halflife-engine"} == 0 or absent(up{job="halflife-engine"})') == {"up"}
    assert metric_names("time() - min(halflife_w) and on () (sum(increase(y_total[10m])) or vector(0)) == 0") == {
        "halflife_w", "y_total"}
    assert metric_names("topk(5, max by (shard) (halflife_b)) * 1e3") == {"halflife_b"}
