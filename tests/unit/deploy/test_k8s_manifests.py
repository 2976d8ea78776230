"""deploy/k8s: each overlay renders, validates offline, and every workload is hardened.

Core kinds are validated with kubernetes-validate's bundled schemas (strict: unknown
fields fail) for the oldest and newest Kubernetes we support; the KEDA and
prometheus-operator kinds with the schemas vendored in ``schemas/`` (see its README).
"""

import json
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from deploy_support import (
    DOCKERFILES,
    SCHEMAS,
    containers,
    image_name,
    named,
    of_kind,
    pod_spec,
)

Manifests = tuple[dict[str, Any], ...]

#: The oldest Kubernetes minor version the manifests support.
MIN_KUBERNETES = "1.30.0"
#: Custom resources -> the vendored JSON schema each validates against.
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda-v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "triggerauthentication-keda-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}
#: ConfigMaps for the Grafana sidecar (deploy/k8s/components/grafana): fixed names.
GRAFANA_CONFIG_MAPS = {"errand-grafana-dashboards", "errand-grafana-datasources"}
SERVICES = ("errand-api", "errand-worker", "errand-notifier")
NAME = "app.kubernetes.io/name"
WORKLOAD_LABELS = (NAME, "app.kubernetes.io/component", "app.kubernetes.io/part-of")
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?$")
_UNITS = {None: 1.0, "m": 0.001, "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30}


def _quantity(value: str | int) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"unexpected quantity {value!r}"
    return float(match.group(1)) * _UNITS[match.group(2)]


def _crd_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMAS / CRD_SCHEMAS[(api_version, kind)]).read_text())
    return jsonschema.Draft202012Validator(schema)


def test_every_resource_validates_against_its_schema_offline(manifests: Manifests) -> None:
    assert manifests
    for doc in manifests:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
            errors = list(_crd_validator(doc["apiVersion"], doc["kind"]).iter_errors(doc))
            assert not errors, f"{where}: {[e.message for e in errors]}"
            continue
        for version in (MIN_KUBERNETES, latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} on Kubernetes {version}: {exc.message}")


def test_the_vendored_crd_schemas_refuse_a_misspelt_field() -> None:
    validator = _crd_validator("keda.sh/v1alpha1", "ScaledObject")
    good = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "triggers": [{"type": "cpu", "metadata": {}}]},
    }
    assert validator.is_valid(good)
    assert not validator.is_valid({**good, "spec": {**good["spec"], "maxReplicas": 3}})


def test_the_overlay_has_every_part_of_the_deployment(manifests: Manifests) -> None:
    kinds: dict[str, set[str]] = {}
    for doc in manifests:
        kinds.setdefault(doc["kind"], set()).add(doc["metadata"]["name"])
    assert kinds["Deployment"] == set(SERVICES)
    assert kinds["Job"] == {"errand-migrate"}
    assert kinds["Service"] == set(SERVICES)
    assert kinds["ServiceMonitor"] == set(SERVICES)
    assert kinds["PodDisruptionBudget"] == set(SERVICES)
    assert kinds["HorizontalPodAutoscaler"] == {"errand-api", "errand-notifier"}
    assert kinds["ScaledObject"] == {"errand-worker"}
    assert kinds["Ingress"] == {"errand-api", "errand-notifier"}
    assert {"errand-default-deny", *SERVICES, "errand-migrate"} <= kinds["NetworkPolicy"]
    assert {"errand-common", "errand-api", "errand-worker", "errand-notifier"} == {
        name.rsplit("-", 1)[0] for name in kinds["ConfigMap"] - GRAFANA_CONFIG_MAPS
    }, "generated ConfigMaps carry a content hash, so changed settings roll the pods"
    # No pod mounts these: a hashed name would only leave stale copies for the sidecar.
    assert kinds["ConfigMap"] >= GRAFANA_CONFIG_MAPS
    assert kinds["PrometheusRule"] == {"errand"}
    assert len(kinds["Namespace"]) == 1
    assert not {"StatefulSet", "DaemonSet"} & set(kinds), "data services are external"


def test_every_resource_is_labelled_and_in_the_overlay_namespace(manifests: Manifests) -> None:
    (namespace,) = of_kind(manifests, "Namespace")
    for doc in manifests:
        meta = doc["metadata"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "errand", doc["kind"]
        if doc["kind"] != "Namespace":
            assert meta["namespace"] == namespace["metadata"]["name"], doc["kind"]
    for workload in of_kind(manifests, "Deployment", "Job"):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        for label in WORKLOAD_LABELS:
            assert label in workload["metadata"]["labels"], (workload["metadata"]["name"], label)
            assert label in template_labels, (workload["metadata"]["name"], label)
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= template_labels.items()


def test_the_namespace_enforces_the_restricted_pod_security_standard(
    manifests: Manifests,
) -> None:
    (namespace,) = of_kind(manifests, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_every_pod_runs_as_non_root_without_privileges_or_a_token(
    manifests: Manifests, kind: str
) -> None:
    for workload in of_kind(manifests, kind):
        spec = pod_spec(workload)
        where = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["runAsUser"] != 0, where
        assert pod["runAsGroup"] != 0, where
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        sa = named(manifests, "ServiceAccount", spec["serviceAccountName"])
        assert sa["automountServiceAccountToken"] is False, where
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(spec), where
        assert all("hostPath" not in volume for volume in spec.get("volumes", [])), where


def test_every_container_has_a_read_only_root_filesystem_and_no_capabilities(
    manifests: Manifests,
) -> None:
    for workload, container in containers(manifests):
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, workload
        assert ctx["allowPrivilegeEscalation"] is False, workload
        assert ctx["capabilities"]["drop"] == ["ALL"], workload
        assert not ctx.get("privileged"), workload
        assert "add" not in ctx["capabilities"], workload
        # Python's tempfile (and the worker's PROMETHEUS_MULTIPROC_DIR) need /tmp.
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, workload


def test_every_container_requests_and_limits_cpu_and_memory(manifests: Manifests) -> None:
    for workload, container in containers(manifests):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            limit = _quantity(resources["limits"][resource])
            assert 0 < request <= limit, (workload, resource)


def test_every_deployment_container_has_liveness_and_readiness_probes(
    manifests: Manifests,
) -> None:
    for workload in of_kind(manifests, "Deployment"):
        for container in pod_spec(workload)["containers"]:
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert probe in container, (workload["metadata"]["name"], probe)


def test_each_service_selects_a_deployment_and_targets_a_port_it_declares(
    manifests: Manifests,
) -> None:
    deployments = of_kind(manifests, "Deployment")
    for service in of_kind(manifests, "Service"):
        selector = service["spec"]["selector"]
        matching = [
            d
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matching) == 1, service["metadata"]["name"]
        declared = [p for c in pod_spec(matching[0])["containers"] for p in c.get("ports", [])]
        ports = {p.get("name") for p in declared} | {p["containerPort"] for p in declared}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_images_come_from_the_registry_with_a_release_tag(
    manifests: Manifests, overlay: str
) -> None:
    for workload, container in containers(manifests):
        image = container["image"]
        assert image_name(image) in DOCKERFILES, (workload, image)
        registry_path, _, tag = image.rpartition(":")
        assert "/" in registry_path, (workload, image)
        assert tag, (workload, image)
        if overlay == "prod":
            assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{workload}: pin a release, not {tag}"


def test_autoscaled_deployments_leave_replicas_to_their_autoscaler(manifests: Manifests) -> None:
    targets = [h["spec"]["scaleTargetRef"] for h in of_kind(manifests, "HorizontalPodAutoscaler")]
    targets += [s["spec"]["scaleTargetRef"] for s in of_kind(manifests, "ScaledObject")]
    assert {t["name"] for t in targets} == set(SERVICES)
    for target in targets:
        assert target.get("kind", "Deployment") == "Deployment"
        deployment = named(manifests, "Deployment", target["name"])
        # A replicas field would be reset on every `kubectl apply`, fighting the HPA.
        assert "replicas" not in deployment["spec"], target["name"]
    for hpa in of_kind(manifests, "HorizontalPodAutoscaler"):
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_disruption_budgets_select_one_deployment_each(manifests: Manifests) -> None:
    deployments = of_kind(manifests, "Deployment")
    for pdb in of_kind(manifests, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matching = [
            d["metadata"]["name"]
            for d in deployments
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert matching == [pdb["metadata"]["name"]]
        # maxUnavailable keeps a one-replica (dev) Deployment drainable.
        assert pdb["spec"]["maxUnavailable"] == 1


def test_each_service_monitor_scrapes_a_named_port_of_one_service(manifests: Manifests) -> None:
    services = of_kind(manifests, "Service")
    for monitor in of_kind(manifests, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matching = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matching) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in matching[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
