"""Dependency rules of STYLE.md, checked by walking every module's imports."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "errand_schema": ROOT / "shared" / "errand_schema",
    "errand_api": ROOT / "services" / "api" / "errand_api",
    "errand_worker": ROOT / "services" / "worker" / "errand_worker",
    "errand_notifier": ROOT / "services" / "notifier" / "errand_notifier",
    "errand": ROOT / "errand",
}
SERVICES = {"errand_api", "errand_worker", "errand_notifier"}
#: What errand_schema may import beyond the standard library and itself.
SCHEMA_ALLOWED = {
    "pydantic",
    "pydantic_settings",
    "sqlmodel",
    "sqlalchemy",
    "redis",
    "alembic",
    "opentelemetry",
    "psycopg",
}
SCHEMA_FORBIDDEN = {"fastapi", "dramatiq", "socketio", "pika", "starlette", "uvicorn"}


def _modules(package: str) -> list[Path]:
    return sorted(p for p in PACKAGES[package].rglob("*.py") if "versions" not in p.parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_service_imports_another_service(service: str) -> None:
    for path in _modules(service):
        others = (_imports(path) & SERVICES) - {service}
        assert not others, f"{path.relative_to(ROOT)} imports {others}"


def test_the_schema_package_imports_no_service_or_transport_library() -> None:
    for path in _modules("errand_schema"):
        bad = _imports(path) & (SERVICES | SCHEMA_FORBIDDEN | {"errand"})
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_environment_is_read_only_in_settings_modules(package: str) -> None:
    for path in _modules(package):
        if path.name == "settings.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in {"environ", "getenv"}
            ):
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} reads os.{node.attr}")
