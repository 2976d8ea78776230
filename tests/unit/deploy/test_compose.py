"""docker-compose.yml: valid Compose, and each Errand container set up as its code reads.

The file is validated against the Compose Specification's JSON schema (vendored in
``schemas/compose-spec.json``, see its README). Each Errand service's environment is
interpolated with test secrets and parsed by the settings class of the module it runs.
"""

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from errand_notifier.settings import NotifierSettings
from errand_worker.main import SHUTDOWN_MARGIN_S
from errand_worker.settings import WorkerSettings

from deploy_support import (
    ENTRYPOINT_SETTINGS,
    ROOT,
    SCHEMAS,
    dockerfile_cmd,
    dockerfile_env,
    parse_settings,
    python_module,
    readable_env_names,
)

COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy/nginx/errand.conf"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
#: ``${NAME}``, ``${NAME:?message}`` (a required secret) or ``${NAME:-default}``.
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _errand_services() -> dict[str, tuple[dict[str, Any], str]]:
    """Compose services built from our Dockerfiles -> (service, module it runs)."""
    found = {}
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if not build:
            continue
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        command = service.get("command") or dockerfile_cmd(dockerfile)
        found[name] = (service, python_module(command))
    return found


def _process_env(service: dict[str, Any]) -> dict[str, str]:
    """The image's ERRAND_ ENV, overridden by the service's, interpolated as with an
    empty .env: defaults as written, required variables with test secrets."""
    build = service["build"]
    image_env = dockerfile_env(ROOT / build["context"] / build["dockerfile"])
    env = {k: v for k, v in image_env.items() if k.startswith("ERRAND_")}
    for name, value in service.get("environment", {}).items():
        env[name] = _INTERPOLATION.sub(_interpolate, value)
    return env


def _interpolate(match: re.Match[str]) -> str:
    if match.group(2) == "-":
        return match.group(3)
    return f"test-{match.group(1).lower()}-0123456789"


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors
    misspelt = _compose()
    misspelt["services"]["api"]["dependson"] = ["redis"]
    assert not validator.is_valid(misspelt), "the schema refuses unknown keys"


def test_the_whole_stack_is_there() -> None:
    services = _compose()["services"]
    modules = [module for _, module in _errand_services().values()]
    assert modules.count("errand_schema.migrate") == 1
    assert modules.count("errand_api") == 1
    assert modules.count("errand_notifier") == 2, "two notifiers behind the load balancer"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert "management" in services["rabbitmq"]["image"]
    assert {"postgres", "redis", "lb", "otel-collector", "tempo", "prometheus", "grafana"} <= set(
        services
    )


@pytest.mark.parametrize("name", sorted(_errand_services()))
def test_every_errand_service_sets_only_settings_its_process_reads(name: str) -> None:
    service, module = _errand_services()[name]
    unread = set(service["environment"]) - readable_env_names(ENTRYPOINT_SETTINGS[module])
    assert not unread, f"{name}: {sorted(unread)} are read by no setting"


@pytest.mark.parametrize("name", sorted(_errand_services()))
def test_every_errand_service_environment_parses_into_its_settings(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, module = _errand_services()[name]
    settings = parse_settings(ENTRYPOINT_SETTINGS[module], _process_env(service), monkeypatch)
    assert settings.database_url.startswith("postgresql+psycopg://errand:test-")


def test_the_worker_is_given_every_smtp_setting_and_a_server_to_send_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = _compose()["services"]["worker"]
    smtp = {n for n in readable_env_names(WorkerSettings) if n.startswith("ERRAND_SMTP_")}
    assert smtp <= set(worker["environment"]), sorted(smtp - set(worker["environment"]))
    assert "${ERRAND_SMTP_PASSWORD:?" not in worker["environment"]["ERRAND_SMTP_PASSWORD"], (
        "optional: only with a username"
    )
    settings = parse_settings(WorkerSettings, _process_env(worker), monkeypatch)
    assert settings.smtp_host in _compose()["services"], "the default is the stack's Mailpit"
    assert settings.smtp_password is None


def test_errand_containers_are_hardened_as_in_kubernetes() -> None:
    for name, (service, _) in _errand_services().items():
        assert service["read_only"] is True, name
        assert service["tmpfs"] == ["/tmp"], name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_the_worker_stop_grace_covers_its_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _compose()["services"]["worker"]
    settings = parse_settings(WorkerSettings, _process_env(worker), monkeypatch)
    drain_s = settings.shutdown_grace_s + SHUTDOWN_MARGIN_S
    assert drain_s + 5 <= _seconds(worker["stop_grace_period"]) <= drain_s + 30


def test_two_notifiers_sit_behind_a_sticky_websocket_load_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compose = _compose()
    lb = compose["services"]["lb"]
    assert f"./{NGINX.relative_to(ROOT)}:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    conf = NGINX.read_text()
    notifiers = {}
    for name, (service, module) in _errand_services().items():
        if module == "errand_notifier":
            env = _process_env(service)
            notifiers[name] = parse_settings(NotifierSettings, env, monkeypatch)
    (upstream,) = re.findall(r"upstream errand_notifiers \{(.*?)\}", conf, re.S)
    assert "ip_hash;" in upstream, "Engine.IO long-polling needs sticky sessions"
    servers = set(re.findall(r"server ([\w.-]+:\d+)", upstream))
    assert servers == {f"{name}:{s.port}" for name, s in notifiers.items()}
    idle_s = max(s.ping_interval_s + s.ping_timeout_s for s in notifiers.values())
    locations = re.findall(r"location [^{]+\{(.*?)\}", conf, re.S)
    to_notifiers = [loc for loc in locations if "proxy_pass http://errand_notifiers" in loc]
    assert len(to_notifiers) == 2
    for location in to_notifiers:
        assert "proxy_http_version 1.1;" in location
        assert "proxy_set_header Upgrade $http_upgrade;" in location
        assert "proxy_set_header Connection $connection_upgrade;" in location
        (timeout,) = re.findall(r"proxy_read_timeout (\d+)s;", location)
        assert int(timeout) > idle_s
    # The README's example: the API on :8000, ERRAND_NOTIFIER_URL on :8001.
    assert "8001:8001" in lb["ports"]
    assert "listen 8001;" in conf
    assert "8000:8000" in compose["services"]["api"]["ports"]


def test_every_bind_mounted_file_exists() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source}"


def test_prometheus_scrapes_every_errand_process_on_its_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets: set[str] = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets |= set(static["targets"])
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{name}:{sd['port']}" for name in sd["names"]}
    expected = set()
    for name, (service, module) in _errand_services().items():
        if module == "errand_schema.migrate":
            continue
        settings = parse_settings(ENTRYPOINT_SETTINGS[module], _process_env(service), monkeypatch)
        port = settings.metrics_port if module == "errand_worker" else settings.port
        expected.add(f"{name}:{port}")
    assert targets == expected
    assert (ROOT / "deploy/grafana/alerts/errand-rules.yaml").exists()
