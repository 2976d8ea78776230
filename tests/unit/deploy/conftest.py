"""Fixtures of the deploy tests: each Kubernetes overlay, rendered once per session."""

from typing import Any

import pytest

from deploy_support import K8S, OVERLAYS, render


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    """The name of a kustomize overlay under deploy/k8s/overlays."""
    name: str = request.param
    return name


@pytest.fixture
def manifests(overlay: str) -> tuple[dict[str, Any], ...]:
    """Every resource of ``overlay``, as ``kubectl kustomize`` renders it."""
    return render(K8S / "overlays" / overlay)
