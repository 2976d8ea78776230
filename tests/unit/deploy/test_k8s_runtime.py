"""deploy/k8s against the code: settings, probes, drain, routing and network reach.

Each container's environment is assembled as the kubelet would (image ENV, ConfigMaps,
the Secret) and parsed by the settings class of the module it runs, so a probe port, a
grace period or a queue name is checked against the value the process will really use.
"""

from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from errand_notifier.settings import NotifierSettings
from errand_worker.main import SHUTDOWN_MARGIN_S
from errand_worker.settings import WorkerSettings

from deploy_support import (
    ENTRYPOINT_SETTINGS,
    K8S,
    api_paths,
    container_env,
    containers,
    entry_module,
    named,
    notifier_paths,
    of_kind,
    parse_settings,
    pod_spec,
    readable_env_names,
    runtime_env,
    secret_values,
)

Manifests = tuple[dict[str, Any], ...]

#: Served by the API but only for the cluster: never routed by the Ingress.
INTERNAL_PATHS = {"/healthz", "/readyz", "/metrics"}
#: Default ports of the URL schemes the settings hold.
SCHEME_PORTS = {"postgresql+psycopg": 5432, "amqp": 5672, "redis": 6379, "http": 80}
#: Addresses no pod may reach through a "public internet" egress rule.
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}


def _main_container(manifests: Manifests, deployment: str) -> dict[str, Any]:
    spec = pod_spec(named(manifests, "Deployment", deployment))
    container: dict[str, Any] = spec["containers"][0]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _url_port(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or SCHEME_PORTS[parts.scheme]


def test_every_container_sets_only_settings_its_process_reads(manifests: Manifests) -> None:
    for workload, container in containers(manifests):
        settings = ENTRYPOINT_SETTINGS[entry_module(container)]
        unread = set(container_env(manifests, container)) - readable_env_names(settings)
        assert not unread, f"{workload}: {sorted(unread)} are read by no setting"


def test_every_container_environment_parses_into_its_settings(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload, container in containers(manifests):
        settings = ENTRYPOINT_SETTINGS[entry_module(container)]
        parsed = parse_settings(settings, runtime_env(manifests, container), monkeypatch)
        assert parsed.database_url.startswith("postgresql+psycopg://"), workload


def test_secret_references_name_keys_of_the_documented_secret(manifests: Manifests) -> None:
    example = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    kubernetes_validate.validate(example, "1.30.0", strict=True)
    documented = set(example["stringData"])
    assert set(secret_values(manifests)) <= documented
    for workload, container in containers(manifests):
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "errand-secrets", workload
                assert ref["key"] in documented, workload
    for auth in of_kind(manifests, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == "errand-secrets"
            assert ref["key"] in documented


@pytest.mark.parametrize(
    ("deployment", "liveness", "readiness"),
    [
        # Readiness on the database alone: without the broker or Redis a pod still
        # serves (jobs accepted, clients caught up from PostgreSQL), and a pod taken out
        # of its Service serves nothing.
        ("errand-api", "/healthz", "/readyz?require=database"),
        ("errand-notifier", "/healthz", "/readyz?require=database"),
        ("errand-worker", "/metrics", "/metrics"),
    ],
)
def test_probes_ask_real_endpoints_on_the_port_the_process_listens_on(
    manifests: Manifests,
    monkeypatch: pytest.MonkeyPatch,
    deployment: str,
    liveness: str,
    readiness: str,
) -> None:
    container = _main_container(manifests, deployment)
    module = entry_module(container)
    settings = parse_settings(
        ENTRYPOINT_SETTINGS[module], runtime_env(manifests, container), monkeypatch
    )
    if module == "errand_worker":
        # No health endpoint: the Prometheus server a booted worker process starts.
        port, routes = settings.metrics_port, {"/metrics"}
        assert port, "ERRAND_METRICS_PORT=0 would leave the probes nothing to ask"
    else:
        port = settings.port
        routes = api_paths() if module == "errand_api" else notifier_paths()
        assert settings.host == "0.0.0.0", "a pod must listen beyond loopback"
    expected = {"startupProbe": liveness, "livenessProbe": liveness, "readinessProbe": readiness}
    for probe, path in expected.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, (deployment, probe)
        assert path.split("?")[0] in routes, (deployment, probe)
        assert _port_number(container, get["port"]) == port, (deployment, probe)


def test_worker_termination_grace_covers_its_drain(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = named(manifests, "Deployment", "errand-worker")
    container = pod_spec(worker)["containers"][0]
    settings = parse_settings(WorkerSettings, runtime_env(manifests, container), monkeypatch)
    # errand_worker.main gives Dramatiq shutdown_grace_s + SHUTDOWN_MARGIN_S to stop.
    drain_s = settings.shutdown_grace_s + SHUTDOWN_MARGIN_S
    grace_s = pod_spec(worker)["terminationGracePeriodSeconds"]
    assert drain_s + 5 <= grace_s <= drain_s + 30, (drain_s, grace_s)


def test_http_services_finish_their_pre_stop_and_drain_within_the_grace(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    for deployment in ("errand-api", "errand-notifier"):
        spec = pod_spec(named(manifests, "Deployment", deployment))
        container = spec["containers"][0]
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        budget_s = float(pre_stop[1]) + 10
        if deployment == "errand-notifier":
            env = runtime_env(manifests, container)
            budget_s += parse_settings(NotifierSettings, env, monkeypatch).shutdown_drain_s
        assert budget_s <= spec["terminationGracePeriodSeconds"], deployment


def test_the_ingress_routes_every_public_api_path_and_hides_the_internal_ones(
    manifests: Manifests,
) -> None:
    ingress = named(manifests, "Ingress", "errand-api")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]

    def routed(path: str) -> bool:
        return any(
            path == p["path"]
            or (p["pathType"] == "Prefix" and path.startswith(p["path"].rstrip("/") + "/"))
            for p in paths
        )

    public = api_paths() - INTERNAL_PATHS
    assert public
    for path in sorted(public):
        assert routed(path), f"{path} is not reachable through the Ingress"
    for path in sorted(INTERNAL_PATHS):
        assert not routed(path), f"{path} must stay inside the cluster"


def test_ingress_backends_are_services_with_that_port(manifests: Manifests) -> None:
    for ingress in of_kind(manifests, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = named(manifests, "Service", backend["name"])
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_the_notifier_ingress_is_sticky_and_keeps_websockets_open(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingress = named(manifests, "Ingress", "errand-notifier")
    api_ingress = named(manifests, "Ingress", "errand-api")
    hosts = {r["host"] for r in ingress["spec"]["rules"]}
    assert hosts == {r["host"] for r in api_ingress["spec"]["rules"]}, "one origin"
    (path,) = [p for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert path["path"] == "/socket.io", "python-socketio's default path"
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    assert notes["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent"
    container = _main_container(manifests, "errand-notifier")
    settings = parse_settings(NotifierSettings, runtime_env(manifests, container), monkeypatch)
    # A socket is idle at most one ping interval plus its timeout.
    idle_s = settings.ping_interval_s + settings.ping_timeout_s
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) > idle_s
    service = named(manifests, "Service", "errand-notifier")
    assert service["spec"]["sessionAffinity"] == "ClientIP"


def _policy_for(manifests: Manifests, workload: dict[str, Any]) -> dict[str, Any]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if p["spec"]["podSelector"]
        and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    return policy


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy["spec"].get("egress", []) for p in rule["ports"]}


def test_everything_is_denied_unless_a_policy_allows_it(manifests: Manifests) -> None:
    deny = named(manifests, "NetworkPolicy", "errand-default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    for policy in of_kind(manifests, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            assert rule["from"], "an ingress rule without sources admits everyone"
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer:
                    assert set(peer["ipBlock"]["except"]) >= PRIVATE_RANGES


def test_each_workload_reaches_the_services_its_settings_name(manifests: Manifests) -> None:
    for workload in of_kind(manifests, "Deployment", "Job"):
        name = workload["metadata"]["name"]
        policy = _policy_for(manifests, workload)
        container = pod_spec(workload)["containers"][0]
        env = runtime_env(manifests, container)
        needed = {53, _url_port(env["ERRAND_DATABASE_URL"])}
        if name != "errand-migrate":
            needed |= {_url_port(env["ERRAND_REDIS_URL"])}
            needed |= {_url_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"])}
        if name in ("errand-api", "errand-worker"):
            needed |= {_url_port(env["ERRAND_RABBITMQ_URL"])}
        assert needed <= _egress_ports(policy), name
        ports = {p["containerPort"] for p in container.get("ports", [])}
        allowed_in = {p["port"] for r in policy["spec"].get("ingress", []) for p in r["ports"]}
        assert allowed_in == ports, name


def test_the_worker_is_given_every_smtp_setting_and_may_reach_the_server(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = named(manifests, "Deployment", "errand-worker")
    container = pod_spec(worker)["containers"][0]
    configured: set[str] = set()
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            configured |= set(named(manifests, "ConfigMap", source["configMapRef"]["name"])["data"])
    from_secret = {
        i["name"] for i in container.get("env", []) if "secretKeyRef" in i.get("valueFrom", {})
    }
    smtp = {n for n in readable_env_names(WorkerSettings) if n.startswith("ERRAND_SMTP_")}
    assert smtp, "WorkerSettings has no ERRAND_SMTP_* setting any more"
    assert smtp <= configured | from_secret, sorted(smtp - configured - from_secret)
    assert "ERRAND_SMTP_PASSWORD" in from_secret - configured, "a secret, from errand-secrets"
    settings = parse_settings(WorkerSettings, runtime_env(manifests, container), monkeypatch)
    assert settings.smtp_port in _egress_ports(_policy_for(manifests, worker))


def test_only_the_processes_that_need_a_service_may_reach_it(manifests: Manifests) -> None:
    def egress(name: str, kind: str = "Deployment") -> set[int]:
        return _egress_ports(_policy_for(manifests, named(manifests, kind, name)))

    assert 5672 not in egress("errand-notifier"), "the notifier never talks to RabbitMQ"
    assert egress("errand-migrate", "Job") == {53, 5432}
    assert 80 not in egress("errand-api") | egress("errand-notifier")
