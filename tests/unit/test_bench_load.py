"""The bench's load generator keeps its own collector out of the latencies it measures."""

import gc
from collections.abc import Iterator

import pytest

from bench.load import _collector_out_of_the_way


@pytest.fixture(autouse=True)
def _no_freeze_left() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def _in_sight(obj: object) -> bool:
    """Whether the collector walks ``obj`` (frozen objects are not listed)."""
    return any(o is obj for o in gc.get_objects())


def test_a_round_freezes_what_exists_and_unfreezes_after() -> None:
    before: list[int] = []  # alive before the round: frozen during it
    with _collector_out_of_the_way():
        made: list[int] = []  # made during the round: walked as usual
        assert not _in_sight(before)
        assert _in_sight(made)
    assert _in_sight(before)
    assert gc.get_freeze_count() == 0


def test_a_cycle_made_during_the_round_is_still_collected() -> None:
    class Node:
        other: "Node"

    with _collector_out_of_the_way():
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2


def test_a_freeze_made_before_the_round_is_left_in_place() -> None:
    gc.freeze()
    kept = gc.get_freeze_count()
    with _collector_out_of_the_way():
        pass
    assert gc.get_freeze_count() >= kept > 0
