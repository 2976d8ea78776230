"""docker-compose.yml and the Dockerfiles name only things the code has."""

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from errand_api.settings import ApiSettings
from errand_notifier.settings import NotifierSettings
from errand_worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "api": ApiSettings,
    "worker": WorkerSettings,
    "notifier": NotifierSettings,
    "migrate": ApiSettings,
}
INFRA = {"rabbitmq", "postgres", "redis"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_runs_the_three_services_on_rabbitmq_postgres_and_redis() -> None:
    services = _compose()["services"]
    assert {"api", "worker", "notifier", "migrate"} | INFRA <= set(services)
    for name in ("api", "worker", "notifier"):
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}
    for name in INFRA:
        assert "healthcheck" in services[name], name


@pytest.mark.parametrize("service", ["api", "worker", "notifier", "migrate"])
def test_compose_environment_names_only_settings_the_code_reads(service: str) -> None:
    env = _compose()["services"][service]["environment"]
    model_fields = SETTINGS[service].model_fields
    known = {f"ERRAND_{name.upper()}" for name in model_fields}
    known |= {str(f.validation_alias) for f in model_fields.values() if f.validation_alias}
    for name in env:
        assert name in known, f"{service}: {name} is not a setting the code reads"


def test_compose_secrets_are_required_not_defaulted() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in (
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "ERRAND_BOOTSTRAP_ADMIN_KEY",
        "ERRAND_SIGNING_SECRET",
    ):
        assert f"${{{secret}:?missing}}" in text


@pytest.mark.parametrize("service", ["api", "worker", "notifier"])
def test_dockerfile_is_multi_stage_non_root_and_runs_a_real_module(service: str) -> None:
    text = (ROOT / "services" / service / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text
    cmd = re.search(r'^CMD \["python", "-m", "([\w.]+)"(?:, "([\w.]+)")?', text, re.M)
    assert cmd is not None
    module = cmd.group(2) if cmd.group(1) == "dramatiq" else cmd.group(1)
    spec = importlib.util.find_spec(module)
    assert spec is not None, module
