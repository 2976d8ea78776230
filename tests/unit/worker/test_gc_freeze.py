"""A worker process freezes what it built at boot (errand_worker.middleware.gc_freeze)."""

import gc
import weakref

from dramatiq.brokers.stub import StubBroker

from errand_worker.middleware.gc_freeze import FreezeAfterBoot


class _Node:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_a_booted_worker_process_keeps_its_objects_out_of_the_collectors_passes() -> None:
    gc.unfreeze()
    node = _Node()
    gone = weakref.ref(node)
    del node
    try:
        FreezeAfterBoot().after_process_boot(StubBroker())
        assert gone() is None  # collected first: garbage is not frozen
        assert gc.get_freeze_count() > 1_000  # what is alive is
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
