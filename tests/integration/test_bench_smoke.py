"""Small-N runs of the benchmark scenarios 2, 3 and 7 (bench/), checking correctness only.

Nothing here asserts a timing: only that every accepted job completed, and no step
completed twice, when jobs drain from a backlog, run four steps each, lose their
worker to kill -9 mid-step, or are submitted while the broker is cut off.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench import dbq
from bench.infra import Resources, register_job_types, resources
from bench.probe import Variant, run_variant, summarize
from bench.procs import Group, group
from bench.scenarios.drain import errand_drain
from bench.scenarios.multistep import backlog_phase
from bench.scenarios.recovery import broker_cut, kill_trial
from bench.system import start_api, start_worker, wait_worker_ready

from helpers import Infra

pytestmark = pytest.mark.integration


@dataclass
class BenchSystem:
    """The bench's own resources, an API process and a user key."""

    res: Resources
    group: Group
    api_url: str
    key: str


@pytest.fixture(scope="module")
def bench_system(infra: Infra) -> Iterator[BenchSystem]:
    """Resources made and removed by the bench code (``infra`` gates on the services)."""
    with resources("smoke") as res, group() as g:
        register_job_types(res)
        _, key = res.make_user("smoke")
        _, api_url = start_api(res, g)
        yield BenchSystem(res, g, api_url, key)


@pytest.fixture
def fresh(bench_system: BenchSystem) -> BenchSystem:
    """The system with no jobs left from an earlier test."""
    bench_system.res.sql("TRUNCATE jobs CASCADE")
    return bench_system


def test_drain_of_a_backlog_completes_every_job_once(fresh: BenchSystem) -> None:
    with group() as g:
        row = errand_drain(fresh.res, g, fresh.api_url, fresh.key, 100, processes=1, threads=4)
    assert row["submit_errors"] == 0
    assert row["completed"] == 100
    assert row["lost"] == 0
    assert row["twice"] == 0


def test_four_step_jobs_complete_every_step_once(fresh: BenchSystem) -> None:
    row = backlog_phase(fresh.res, fresh.api_url, fresh.key, 20, processes=1, threads=4)
    assert row["errors"] == 0
    assert row["lost"] == 0
    assert row["twice"] == 0
    assert dbq.attempts_completed(fresh.res) == 20 * 4


def test_a_step_whose_worker_is_killed_runs_again_and_completes_once(fresh: BenchSystem) -> None:
    with group() as g:
        workers = [
            start_worker(
                fresh.res,
                g,
                processes=1,
                threads=2,
                wait=False,
                ERRAND_LEASE_S="2",
                ERRAND_HEARTBEAT_S="0.5",
            )
            for _ in range(2)
        ]
        for worker in workers:
            wait_worker_ready(worker, 1)
        kill_trial(fresh.res, g, fresh.api_url, fresh.key, workers, step_s=1.0, replace=False)
    rows = fresh.res.sql("SELECT status FROM jobs")
    assert [r[0] for r in rows] == ["completed"]
    assert dbq.completed_twice(fresh.res) == 0
    outcomes = sorted(str(r[0]) for r in fresh.res.sql("SELECT outcome FROM job_attempts"))
    assert outcomes == ["completed", "lost"]


def test_jobs_submitted_while_the_broker_is_cut_off_all_complete_once(fresh: BenchSystem) -> None:
    row = broker_cut(rate=20.0, before=1.0, cut=2.0, after=0.5, res=fresh.res)
    assert row["accepted"] > 0
    assert not row["timed_out"]
    assert row["lost"] == 0
    assert row["twice"] == 0


def test_the_drain_probe_measures_each_variant_on_a_fresh_system(infra: Infra) -> None:
    # The probe makes and removes its own resources for every run (no shared fixture)
    variants = [Variant.parse("base"), Variant.parse("alone:ERRAND_STEP_GROUP_MAX=0")]
    runs = [run_variant(v, 60, processes=1, threads=4) for v in variants]
    for run, variant in zip(runs, variants, strict=True):
        assert run["variant"] == variant.name
        assert run["completed"] == 60
        assert run["lost"] == 0
        assert run["twice"] == 0
        # 60 jobs drain in a moment: the steady part may hold none (its costs are then
        # None), never more than the jobs between the first 15 and the last 15
        assert 0 <= run["window_jobs"] <= 60
        costs = [v for k, v in run.items() if k.endswith(("_ms", "_per_job"))]
        assert len(costs) == 7
        assert all(c is None if run["window_jobs"] == 0 else c >= 0 for c in costs)
        assert run["timed_out"] is False
    # Means over the runs that did not fail; a run that lost a job is counted apart
    extra = [{**runs[0], "jobs_s": 0.0}, {**runs[0], "lost": 1, "jobs_s": 5.0}]
    means = summarize([*runs, *extra])
    assert [(m["variant"], m["runs"], m["failed"]) for m in means] == [
        ("base", 2, 1),
        ("alone", 1, 0),
    ]
    assert means[0]["jobs_s"] == round(runs[0]["jobs_s"] / 2, 3)


def test_a_probe_variant_is_a_name_and_its_environment() -> None:
    assert Variant.parse("base") == Variant("base", {})
    assert Variant.parse("g:A=1,B=x=y") == Variant("g", {"A": "1", "B": "x=y"})
    with pytest.raises(ValueError, match="not VAR=VALUE"):
        Variant.parse("g:A")
