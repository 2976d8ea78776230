"""The Grafana dashboard and the alert rules query only metrics the services export, and
the dashboard shows every metric of the notifier."""

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTIFIER_METRICS = ROOT / "services/notifier/errand_notifier/metrics.py"
METRIC_MODULES = [
    ROOT / "services/api/errand_api/metrics.py",
    ROOT / "services/worker/errand_worker/metrics.py",
    NOTIFIER_METRICS,
]
DASHBOARD = ROOT / "deploy/grafana/dashboards/errand.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported() -> set[str]:
    names: set[str] = set()
    for module in METRIC_MODULES:
        text = module.read_text()
        names |= set(re.findall(r'"(errand_[a-z_]+)"', text))
        for histogram in re.findall(r'Histogram\(\s*"(errand_[a-z_]+)"', text):
            names |= {histogram + suffix for suffix in HISTOGRAM_SUFFIXES}
    return names


def _families(module: Path) -> set[str]:
    """Metric names as defined (a histogram without its _bucket/_sum/_count)."""
    return set(re.findall(r'"(errand_[a-z_]+)"', module.read_text()))


def _family(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _queried(expr: str) -> set[str]:
    return set(re.findall(r"\b(errand_[a-z_]+)\b", expr))


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return panels


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p.get("targets", [])]


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


def test_every_notifier_metric_is_on_the_dashboard() -> None:
    shown = {_family(name) for expr in _dashboard_exprs() for name in _queried(expr)}
    missing = _families(NOTIFIER_METRICS) - shown
    assert not missing, f"no panel shows {sorted(missing)}"


def test_quantiles_are_taken_over_rates_of_buckets_by_le() -> None:
    for expr in _dashboard_exprs():
        if "histogram_quantile" not in expr:
            continue
        assert re.search(r"sum by \(le\b[^)]*\) \(rate\(errand_\w+_bucket\[\w+\]\)\)", expr), expr


def test_every_panel_queries_the_prometheus_chosen_in_the_dashboard() -> None:
    # A variable, not a fixed uid, so the dashboard works in any Grafana (compose's,
    # kube-prometheus-stack's) whatever its Prometheus data source is called.
    (variable,) = [v for v in _dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in _panels():
        if panel.get("targets"):
            assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{variable['name']}}}"}


def test_panels_fit_the_grid_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
    ids = [panel["id"] for panel in _panels()]
    assert len(ids) == len(set(ids))
