"""The notifier's heap keeper: survivors are frozen each step; churn brings a full
collection that frees cycles among frozen objects; stopping hands everything back."""

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from errand_notifier import heap


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only a collection frees it


def test_a_step_freezes_what_survived_and_churn_brings_a_full_collection() -> None:
    keeper = heap.HeapKeeper(full_every_s=3600)
    node = _Node()
    gone = weakref.ref(node)
    assert keeper.step(clients=1000) == "step"
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()
    assert gone() is not None  # frozen: a cycle among frozen objects waits
    for _ in range(heap.MIN_CHURN - 1):
        keeper.client_left()
    assert keeper.step(clients=900) == "step"  # fewer left than a quarter of 1,000
    for _ in range(250 - heap.MIN_CHURN + 1):
        keeper.client_left()
    assert keeper.step(clients=750) == "full"
    assert gone() is None


def test_a_full_collection_comes_after_full_every_s_even_without_churn() -> None:
    keeper = heap.HeapKeeper(full_every_s=0.0)
    assert keeper.step(clients=0) == "full"


async def test_run_steps_until_cancelled_and_then_unfreezes() -> None:
    keeper = heap.HeapKeeper(full_every_s=3600)
    task = asyncio.create_task(keeper.run(0.01, lambda: 0))
    async with asyncio.timeout(5):
        while gc.get_freeze_count() == 0:
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0
