"""Helpers of the deploy tests: rendered overlays, container environments, settings names.

The rules every deploy test leans on live here once: which settings class a process
reads (by the module it runs), which environment names that class reads, and how a
Kubernetes container's environment is assembled from its ConfigMaps and Secret.
"""

import ast
import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from errand_api.settings import ApiSettings
from errand_notifier.settings import NotifierSettings
from errand_schema.settings import DatabaseSettings
from errand_worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[3]
SCHEMAS = Path(__file__).parent / "schemas"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")

#: The module a container runs (``python -m <module>``) -> the settings class it reads.
ENTRYPOINT_SETTINGS: dict[str, type[BaseSettings]] = {
    "errand_api": ApiSettings,
    "errand_worker": WorkerSettings,
    "errand_notifier": NotifierSettings,
    "errand_schema.migrate": DatabaseSettings,
}
#: Image name (before the overlays' registry and tag) -> its Dockerfile.
DOCKERFILES = {
    f"errand-{service}": ROOT / "services" / service / "Dockerfile"
    for service in ("api", "worker", "notifier")
}
#: Environment names the settings classes never see but the test must clear, so that
#: a developer's shell cannot leak into a parse.
_ENV_PREFIXES = ("ERRAND_", "OTEL_", "PROMETHEUS_")


def readable_env_names(settings: type[BaseSettings]) -> set[str]:
    """Return the environment names ``settings`` reads (upper case).

    A field reads ``<env_prefix><NAME>`` unless it has a ``validation_alias``, which
    pydantic-settings then reads as it is, without the prefix.
    """
    prefix = str(settings.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{name}".upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names |= {choice.upper() for choice in alias.choices if isinstance(choice, str)}
    return names


def parse_settings(
    settings: type[BaseSettings], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Build ``settings`` from exactly ``env``, as the process would at start-up."""
    for name in list(os.environ):
        if name.upper().startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return settings(_env_file=None)


def dockerfile_cmd(dockerfile: Path) -> list[str]:
    """Return the exec-form ``CMD`` of the last stage of ``dockerfile``."""
    commands = re.findall(r"^CMD (\[.*\])\s*$", dockerfile.read_text(), re.M)
    assert commands, f"{dockerfile} has no exec-form CMD"
    return list(json.loads(commands[-1]))


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """Return the ``ENV`` of the last stage of ``dockerfile`` (``KEY=value`` forms)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    last_stage = re.split(r"^FROM ", text, flags=re.M)[-1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", last_stage, re.M):
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', line):
            env[key] = value.strip('"')
    return env


def python_module(command: list[str]) -> str:
    """Return X of ``python -m X ...``."""
    assert command[:2] == ["python", "-m"], command
    return command[2]


def require_kubectl() -> str:
    """Return kubectl's path; skip without it locally, fail without it in CI."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl (with its built-in kustomize) is needed to render deploy/k8s"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return kubectl


@cache
def render(path: Path) -> tuple[dict[str, Any], ...]:
    """Render a kustomization offline with ``kubectl kustomize``."""
    result = subprocess.run(
        [require_kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], *kinds: str) -> list[dict[str, Any]]:
    """Return the resources of these kinds."""
    return [doc for doc in docs if doc["kind"] in kinds]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    """Return the one resource of ``kind`` called ``name``."""
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """Return the pod spec of a Deployment or Job."""
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(workload name, container)`` for every container of every workload."""
    for workload in of_kind(docs, "Deployment", "Job"):
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield workload["metadata"]["name"], container


def image_name(image: str) -> str:
    """``ghcr.io/errand/errand-api:1.0`` -> ``errand-api``."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def entry_module(container: dict[str, Any]) -> str:
    """Return the module a container runs: its command, else its image's CMD."""
    dockerfile = DOCKERFILES[image_name(container["image"])]
    command = container.get("command") or dockerfile_cmd(dockerfile)
    return python_module(list(command) + list(container.get("args", [])))


def secret_values(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The values of the Secret ``errand-secrets``: rendered (dev) or the example (prod)."""
    rendered = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "errand-secrets"]
    example = K8S / "secret.example.yaml"
    secret = rendered[0] if rendered else yaml.safe_load(example.read_text())
    values = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    values.update(secret.get("stringData", {}))
    return values


def container_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """Assemble a container's environment from its envFrom and env, as the kubelet does.

    A reference that cannot be resolved fails, unless it is marked optional.
    """
    secrets = secret_values(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            assert source["secretRef"]["name"] == "errand-secrets", source
            env.update(secrets)
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
            continue
        ref = item["valueFrom"]
        if "configMapKeyRef" in ref:
            data = named(docs, "ConfigMap", ref["configMapKeyRef"]["name"])["data"]
            env[item["name"]] = data[ref["configMapKeyRef"]["key"]]
            continue
        key_ref = ref["secretKeyRef"]
        assert key_ref["name"] == "errand-secrets", key_ref
        if key_ref["key"] in secrets:
            env[item["name"]] = secrets[key_ref["key"]]
        else:
            assert key_ref.get("optional"), f"{item['name']}: no key {key_ref['key']}"
    return env


def api_paths() -> set[str]:
    """Return the paths of every route the API app mounts (its routers, as main.py
    includes them), without building the app."""
    import errand_api.main as main

    paths: set[str] = set()
    for node in ast.walk(ast.parse(Path(main.__file__).read_text())):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "include_router"
        ):
            continue
        target = node.args[0]
        assert isinstance(target, ast.Attribute)
        assert isinstance(target.value, ast.Name)
        router = getattr(getattr(main, target.value.id), target.attr)
        prefix = next((k.value for k in node.keywords if k.arg == "prefix"), None)
        base = prefix.value if isinstance(prefix, ast.Constant) else ""
        paths |= {base + route.path for route in router.routes}
    return paths


def notifier_paths() -> set[str]:
    """Return the notifier's HTTP routes (``Route("/x", ...)`` in its main.py)."""
    import errand_notifier.main as main

    return {
        node.args[0].value
        for node in ast.walk(ast.parse(Path(main.__file__).read_text()))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "Route"
        and isinstance(node.args[0], ast.Constant)
    }


def metric_labels(module: Path) -> dict[str, list[str]]:
    """Return ``{metric name: label names}`` of the metrics a module defines."""
    kinds = {"Counter", "Gauge", "Histogram", "GaugeMetricFamily"}
    metrics: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(module.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        if node.func.id not in kinds or not node.args:
            continue
        name = node.args[0]
        if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
            continue
        labels = [k.value for k in node.keywords if k.arg == "labels"]
        labels += node.args[2:3]
        metrics[name.value] = [
            elt.value
            for lst in labels
            if isinstance(lst, ast.List)
            for elt in lst.elts
            if isinstance(elt, ast.Constant)
        ]
    return metrics


def runtime_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any]) -> dict[str, str]:
    """The settings-related environment a container's process sees: its image's
    ``ENV`` overridden by the manifest's."""
    image_env = dockerfile_env(DOCKERFILES[image_name(container["image"])])
    env = {k: v for k, v in image_env.items() if k.startswith(_ENV_PREFIXES)}
    env.update(container_env(docs, container))
    return env
