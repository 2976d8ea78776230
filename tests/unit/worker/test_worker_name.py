"""Each Dramatiq worker process has a worker name of its own (leases, attempts, the
capacity it announces), though the supervisor read the settings before forking them."""

import pytest

from errand_worker import settings as worker_settings
from errand_worker.settings import WorkerSettings, per_process

BASE = {"database_url": "sqlite://", "rabbitmq_url": "memory://", "redis_url": "memory://"}


def test_the_default_name_is_the_process_own(monkeypatch: pytest.MonkeyPatch) -> None:
    inherited = WorkerSettings(**BASE)  # read by the supervisor, before the fork
    monkeypatch.setattr(worker_settings.os, "getpid", lambda: 424242)  # the child
    mine = per_process(inherited)
    assert mine.worker_name.endswith(":424242")
    assert mine.worker_name != inherited.worker_name
    assert mine.database_url == inherited.database_url


def test_a_name_set_by_hand_is_kept_by_one_process_and_told_apart_among_several(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_settings.os, "getpid", lambda: 424242)
    alone = WorkerSettings(**BASE, worker_name="pod-a", processes=1)
    assert per_process(alone).worker_name == "pod-a"
    several = WorkerSettings(**BASE, worker_name="pod-a", processes=4)
    assert per_process(several).worker_name == "pod-a/424242"
