"""The Grafana dashboard and the alert rules query only metrics the services export."""

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
METRIC_MODULES = [
    ROOT / "services/api/errand_api/metrics.py",
    ROOT / "services/worker/errand_worker/metrics.py",
    ROOT / "services/notifier/errand_notifier/metrics.py",
]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported() -> set[str]:
    names: set[str] = set()
    for module in METRIC_MODULES:
        text = module.read_text()
        names |= set(re.findall(r'"(errand_[a-z_]+)"', text))
        for histogram in re.findall(r'Histogram\(\s*"(errand_[a-z_]+)"', text):
            names |= {histogram + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b(errand_[a-z_]+)\b", expr))


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/errand.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "deploy/grafana/alerts/errand-rules.yaml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_every_dashboard_query_names_an_exported_metric() -> None:
    exported = _exported()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    for expr in exprs:
        missing = _queried(expr) - exported
        assert _queried(expr), expr
        assert not missing, f"{expr} names {missing}"


def test_every_alert_rule_names_an_exported_metric() -> None:
    exported = _exported()
    for expr in _alert_exprs():
        assert _queried(expr) <= exported, expr


def test_the_dashboard_covers_queues_throughput_latency_failures_dlq_and_the_notifier() -> None:
    queried = set().union(*map(_queried, _dashboard_exprs()))
    for metric in (
        "errand_queue_depth",
        "errand_jobs_completed_total",
        "errand_step_duration_seconds_bucket",
        "errand_jobs_failed_total",
        "errand_dlq_depth",
        "errand_socketio_connections",
    ):
        assert metric in queried, metric
