"""The workers' KEDA ScaledObject scales on signals that exist.

RabbitMQ's queue length for every queue the workers consume, and Errand's own
per-queue oldest-job age, which the API exports (errand_api/metrics.py) and KEDA reads
through its Prometheus scaler.
"""

import re
from typing import Any

import pytest

from errand_worker.settings import WorkerSettings

from deploy_support import (
    ROOT,
    metric_labels,
    named,
    of_kind,
    parse_settings,
    pod_spec,
    runtime_env,
    secret_values,
)

Manifests = tuple[dict[str, Any], ...]

API_METRICS = ROOT / "services/api/errand_api/metrics.py"
#: The age gauge the Prometheus triggers must use.
OLDEST_AGE = "errand_queue_oldest_age_seconds"
_SELECTOR = re.compile(r"\b(errand_[a-z_]+)\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)="([^"]*)"')


def _scaled_worker(manifests: Manifests) -> dict[str, Any]:
    return named(manifests, "ScaledObject", "errand-worker")


def _worker_queues(manifests: Manifests, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    container = pod_spec(named(manifests, "Deployment", "errand-worker"))["containers"][0]
    settings = parse_settings(WorkerSettings, runtime_env(manifests, container), monkeypatch)
    return set(settings.queues)


def _triggers(manifests: Manifests, kind: str) -> list[dict[str, Any]]:
    return [t for t in _scaled_worker(manifests)["spec"]["triggers"] if t["type"] == kind]


def test_the_scaled_object_targets_the_worker_deployment(manifests: Manifests) -> None:
    spec = _scaled_worker(manifests)["spec"]
    assert spec["scaleTargetRef"]["name"] == "errand-worker"
    named(manifests, "Deployment", "errand-worker")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]


def test_every_consumed_queue_scales_on_its_rabbitmq_length(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    triggers = _triggers(manifests, "rabbitmq")
    assert {t["metadata"]["queueName"] for t in triggers} == _worker_queues(manifests, monkeypatch)
    auths = {a["metadata"]["name"]: a for a in of_kind(manifests, "TriggerAuthentication")}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["mode"] == "QueueLength"
        assert float(meta["value"]) > 0
        auth = auths[trigger["authenticationRef"]["name"]]
        (ref,) = auth["spec"]["secretTargetRef"]
        assert ref["parameter"] == "host"
        assert secret_values(manifests)[ref["key"]].startswith(("amqp://", "amqps://"))
        assert ref["key"] == "ERRAND_RABBITMQ_URL", "the URL the services use"


def test_every_consumed_queue_scales_on_its_oldest_job_age_from_prometheus(
    manifests: Manifests, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = metric_labels(API_METRICS)
    assert "queue" in exported[OLDEST_AGE]
    (namespace,) = of_kind(manifests, "Namespace")
    triggers = _triggers(manifests, "prometheus")
    aged_queues = set()
    for trigger in triggers:
        meta = trigger["metadata"]
        selectors = _SELECTOR.findall(meta["query"])
        assert selectors, meta["query"]
        for metric, matchers in selectors:
            assert metric in exported, f"{metric} is not a metric the API exports"
            labels = dict(_MATCHER.findall(matchers))
            # One Prometheus may scrape several installations.
            assert labels["namespace"] == namespace["metadata"]["name"]
            assert set(labels) - {"namespace"} <= set(exported[metric])
            if metric == OLDEST_AGE:
                aged_queues.add(labels["queue"])
        # An age is not shared out between workers: a Value target, not AverageValue.
        assert trigger["metricType"] == "Value"
        assert float(meta["threshold"]) > float(meta["activationThreshold"]) >= 0
        assert meta["serverAddress"].startswith("http")
    assert aged_queues == _worker_queues(manifests, monkeypatch)
