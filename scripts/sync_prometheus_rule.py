"""Write the Kubernetes PrometheusRule from the Prometheus rules file docker compose loads.

deploy/grafana/alerts/errand-rules.yaml is the one place alert rules are edited;
the Prometheus Operator reads rules only from PrometheusRule objects, and kustomize
cannot turn a rules file into one, so this script does (the deploy tests fail while
the two differ):

    uv run python scripts/sync_prometheus_rule.py
"""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
#: The rules file (edit this one) and the PrometheusRule generated from it.
RULES = ROOT / "deploy/grafana/alerts/errand-rules.yaml"
PROMETHEUS_RULE = ROOT / "deploy/k8s/components/grafana/prometheusrule.yaml"
HEADER = """\
# GENERATED from deploy/grafana/alerts/errand-rules.yaml by
# scripts/sync_prometheus_rule.py: edit that file, then run the script.
# release: prometheus is what kube-prometheus-stack selects rules by, as for the
# ServiceMonitors in deploy/k8s/base/monitoring.yaml.
"""


def prometheus_rule(rules: dict[str, object]) -> dict[str, object]:
    """Return the PrometheusRule carrying the groups of a Prometheus rules file."""
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "errand",
            "labels": {"app.kubernetes.io/name": "errand", "release": "prometheus"},
        },
        "spec": {"groups": rules["groups"]},
    }


def main() -> None:
    """Regenerate :data:`PROMETHEUS_RULE` from :data:`RULES`."""
    rule = prometheus_rule(yaml.safe_load(RULES.read_text()))
    body = yaml.safe_dump(rule, sort_keys=False, width=1_000, allow_unicode=True)
    PROMETHEUS_RULE.write_text(HEADER + body)
    print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
