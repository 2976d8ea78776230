"""The deployment files at a glance: the stack's shape, its secrets, its runbook.

The detailed checks (schemas, settings, probes, scaling, hadolint) are in tests/unit/deploy/.
"""

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = {"rabbitmq", "postgres", "redis"}
ERRAND = {"api", "worker", "notifier-1", "notifier-2"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_starts_the_services_after_the_migration_and_healthy_infrastructure() -> None:
    services = _compose()["services"]
    assert ERRAND | INFRA | {"migrate"} <= set(services)
    for name in ERRAND:
        deps = services[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["redis"] == {"condition": "service_healthy"}, name
    assert services["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in INFRA:
        assert "healthcheck" in services[name], name


def test_compose_secrets_are_required_not_defaulted() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in (
        "POSTGRES_PASSWORD",
        "RABBITMQ_PASSWORD",
        "ERRAND_BOOTSTRAP_ADMIN_KEY",
        "ERRAND_SIGNING_SECRET",
    ):
        assert f"${{{secret}:?missing}}" in text
        assert f"${{{secret}:-" not in text
    example = (ROOT / ".env.example").read_text()
    assert {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD"} <= set(re.findall(r"^(\w+)=", example, re.M))


def test_the_deploy_readme_covers_deploying_scaling_upgrading_and_rolling_back() -> None:
    text = (ROOT / "deploy/README.md").read_text()
    headings = set(re.findall(r"^## (.+)$", text, re.M))
    assert {"Deploy", "Scale", "Upgrade", "Roll back"} <= headings
    for needle in ("errand-migrate", "terminationGracePeriodSeconds", "rollout undo", "quorum"):
        assert needle in text, needle


def test_every_path_the_deploy_readme_names_exists() -> None:
    text = (ROOT / "deploy/README.md").read_text()
    paths = set(re.findall(r"`((?:deploy|services|tests|shared)/[\w./-]+)`", text))
    assert paths
    for path in sorted(paths):
        assert (ROOT / path).exists(), path
