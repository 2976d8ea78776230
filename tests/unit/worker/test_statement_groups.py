"""The groups of a worker process's statements (:class:`errand_worker.grouped.StatementGroups`):
who leads, what shares a statement, and what each thread gets when a statement fails.
The statements here are stand-ins; tests/integration/test_step_groups.py runs the real
ones on PostgreSQL."""

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError

from errand_schema.db import ReplyLost, once_more_on_disconnect
from errand_worker import grouped
from errand_worker.grouped import NothingWritten, StatementGroups, _Request

from helpers import wait_for


@dataclass
class Statements:
    """``run_one``/``run_many`` that record their calls (with the connection each ran on);
    the first ``run_one`` waits for :attr:`release` (its thread then leads alone while
    the others queue up)."""

    many_error: BaseException | None = None
    one_error: BaseException | None = None
    calls: list[tuple[str, Any, Any]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def one(self, conn: Any, ask: tuple[str, int]) -> str:
        first = not self.calls
        self.calls.append(("one", conn, ask))
        if first:
            self.entered.set()
            assert self.release.wait(10)
        if self.one_error is not None and ask[0] == "boom":
            raise self.one_error
        return f"{ask[0]}{ask[1]}:one"

    def many(self, conn: Any, asks: list[tuple[str, int]]) -> list[str]:
        self.calls.append(("many", conn, list(asks)))
        if self.many_error is not None:
            raise self.many_error
        return [f"{key}{n}:many" for key, n in asks]


@dataclass
class Caller:
    """A thread asking the groups once, on a connection of its own."""

    thread: threading.Thread
    conn: object
    answer: list[Any]

    def join(self) -> Any:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.answer[0]


def _ask(groups: StatementGroups[Any, Any], ask: tuple[str, int]) -> Caller:
    conn, answer = object(), []

    def run() -> None:
        try:
            answer.append(groups.run(conn, ask))  # type: ignore[arg-type]
        except BaseException as exc:  # the test looks at what each thread got
            answer.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return Caller(thread, conn, answer)


def _queue(
    groups: StatementGroups[Any, Any], statements: Statements, *asks: tuple[str, int]
) -> tuple[Caller, list[Caller]]:
    """A first caller leading alone (held in its statement), then ``asks`` waiting for the
    next group in this order."""
    first = _ask(groups, ("a", 0))
    assert statements.entered.wait(10)
    callers = []
    for n, ask in enumerate(asks, start=1):
        callers.append(_ask(groups, ask))
        wait_for(lambda n=n: len(groups.waiting()) == n, what=f"{n} asks waiting")
    return first, callers


@pytest.fixture
def statements() -> Iterator[Statements]:
    made = Statements()
    yield made
    made.release.set()  # never leave a thread waiting


def _groups(statements: Statements, max_size: int = 16) -> StatementGroups[Any, Any]:
    return StatementGroups(
        statements.many, statements.one, lambda ask: ask[0], max_size=max_size, name="tests"
    )


def test_asks_that_wait_while_a_statement_runs_share_the_next_one(statements: Statements) -> None:
    groups = _groups(statements)
    first, callers = _queue(groups, statements, ("b", 1), ("c", 2), ("d", 3))
    statements.release.set()
    assert first.join() == "a0:one"
    assert [c.join() for c in callers] == ["b1:many", "c2:many", "d3:many"]
    # The first to arrive alone ran its own statement at once; the three that waited
    # shared one, run on the connection of the first of them (it led the group).
    assert [(kind, ask) for kind, _, ask in statements.calls] == [
        ("one", ("a", 0)),
        ("many", [("b", 1), ("c", 2), ("d", 3)]),
    ]
    assert statements.calls[0][1] is first.conn
    assert statements.calls[1][1] is callers[0].conn
    assert (groups.groups, groups.grouped) == (1, 3)
    # Nobody leads now: the next ask runs alone at once.
    assert _ask(groups, ("e", 4)).join() == "e4:one"


def test_two_asks_for_one_row_never_share_a_statement(statements: Statements) -> None:
    groups = _groups(statements)
    first, callers = _queue(groups, statements, ("b", 1), ("c", 2), ("b", 3))
    statements.release.set()
    assert first.join() == "a0:one"
    assert [c.join() for c in callers] == ["b1:many", "c2:many", "b3:one"]
    assert [(kind, ask) for kind, _, ask in statements.calls][1:] == [
        ("many", [("b", 1), ("c", 2)]),
        ("one", ("b", 3)),
    ]


def test_a_group_holds_at_most_its_size(statements: Statements) -> None:
    groups = _groups(statements, max_size=2)
    first, callers = _queue(groups, statements, ("b", 1), ("c", 2), ("d", 3))
    statements.release.set()
    first.join()
    assert [c.join() for c in callers] == ["b1:many", "c2:many", "d3:one"]


def test_when_a_group_statement_fails_each_ask_runs_alone(statements: Statements) -> None:
    statements.many_error = DBAPIError("UPDATE", {}, Exception("deadlock detected"))
    groups = _groups(statements)
    first, callers = _queue(groups, statements, ("b", 1), ("c", 2))
    statements.release.set()
    first.join()
    # Nothing of the failed statement was written: each runs its own instead.
    assert [c.join() for c in callers] == ["b1:one", "c2:one"]
    ones = {(ask, conn) for kind, conn, ask in statements.calls if kind == "one"}
    assert ones == {
        (("a", 0), first.conn),
        (("b", 1), callers[0].conn),
        (("c", 2), callers[1].conn),
    }


def test_when_a_group_loses_its_connection_every_ask_is_run_again(statements: Statements) -> None:
    lost = DBAPIError("UPDATE", {}, ConnectionError("gone"), connection_invalidated=True)
    statements.many_error = lost
    groups = _groups(statements)
    first, (leader, other) = _queue(groups, statements, ("b", 1), ("c", 2))
    statements.release.set()
    first.join()
    # The leader's own connection died: its caller sees that (and drops it); the other
    # thread learns that what was written is unknown. Both then run again (the runner's
    # once_more_on_disconnect), as after a lost reply of their own.
    assert leader.join() is lost
    assert isinstance(other.join(), ReplyLost)
    assert _ask(groups, ("d", 3)).join() == "d3:one"


def test_an_ask_alone_fails_as_its_statement_would(statements: Statements) -> None:
    statements.one_error = ValueError("bad value")
    groups = _groups(statements)
    statements.release.set()
    assert _ask(groups, ("a", 0)).join() == "a0:one"
    assert isinstance(_ask(groups, ("boom", 1)).join(), ValueError)
    assert _ask(groups, ("c", 2)).join() == "c2:one"


def test_a_lost_group_reply_is_run_again_as_a_lost_reply_of_ones_own() -> None:
    tries: list[str] = []

    def work() -> str:
        tries.append("first")
        raise ReplyLost("lost")

    def again() -> str:
        tries.append("again")
        return "found its own write"

    assert once_more_on_disconnect(work, again) == "found its own write"
    assert tries == ["first", "again"]


class Interrupted(BaseException):
    """As the interrupts the watchdog raises into a worker thread (not an Exception)."""


def test_an_interrupt_during_a_group_statement_has_each_ask_run_again(
    statements: Statements,
) -> None:
    statements.many_error = Interrupted()
    groups = _groups(statements)
    first, (leader, other) = _queue(groups, statements, ("b", 1), ("c", 2))
    statements.release.set()
    first.join()
    # Whether the statement was written is unknown: the interrupted thread stops, the
    # other runs its ask again as after a lost reply.
    assert isinstance(leader.join(), Interrupted)
    assert isinstance(other.join(), ReplyLost)
    assert _ask(groups, ("d", 3)).join() == "d3:one"


@pytest.mark.parametrize("promoted", [True, False], ids=["given the lead", "still waiting"])
def test_a_thread_that_stops_waiting_leaves_the_group_able_to_go_on(promoted: bool) -> None:
    """An interrupt raised into a waiting thread (the watchdog's, were it ever armed
    there) makes it stop waiting: its request is forgotten and, if it had just been
    given the lead, the lead passes to the next request waiting. (Called directly: an
    interrupt delivered inside ``threading``'s own waits is not reproducible.)"""
    groups = StatementGroups(
        lambda _conn, asks: asks, lambda _conn, ask: ask, lambda ask: ask, max_size=16, name="t"
    )
    stopped, after = _Request("b"), _Request("c")
    groups._busy = True
    groups._waiting = [stopped, after]
    stopped.lead = promoted
    groups._abandon(stopped)
    assert groups.waiting() == ["c"]
    assert after.lead is promoted
    assert after.ready.is_set() is promoted
    assert groups._busy
    groups._waiting = []
    after.lead = True
    groups._abandon(after)  # the last one: nobody leads, the next ask runs at once
    assert not groups._busy
    assert groups.run(object(), "d") == "d"  # type: ignore[arg-type]


def test_an_error_after_a_group_statement_has_each_ask_run_again(statements: Statements) -> None:
    """Not a database error: it may have come after the statement committed (reading
    its rows), so what was written is unknown, for the leader too."""
    statements.many_error = KeyError("attempt_id")
    groups = _groups(statements)
    first, (leader, other) = _queue(groups, statements, ("b", 1), ("c", 2))
    statements.release.set()
    first.join()
    assert isinstance(leader.join(), ReplyLost)
    assert isinstance(other.join(), ReplyLost)


def test_a_group_statement_that_could_not_be_built_has_each_ask_run_alone(
    statements: Statements,
) -> None:
    """An output that is not JSON: nothing was sent, so the others are not held up by
    it; each runs alone, and only the bad one fails."""
    statements.many_error = NothingWritten("Object of type set is not JSON serializable")
    groups = _groups(statements)
    first, callers = _queue(groups, statements, ("b", 1), ("c", 2))
    statements.release.set()
    first.join()
    assert [c.join() for c in callers] == ["b1:one", "c2:one"]


def test_a_group_refuses_values_that_are_not_json_and_repeated_jobs() -> None:
    with pytest.raises(NothingWritten):
        grouped._json({"output": {1, 2}})
    with pytest.raises(NothingWritten):
        grouped._distinct(["a", "b", "a"])


def _gathering(
    statements: Statements, busy: int | Callable[[], int], gather_s: float
) -> StatementGroups[Any, Any]:
    """Groups whose leader gathers for ``gather_s``; ``busy`` threads hold a step (or what
    ``busy()`` says each time it is asked)."""
    return StatementGroups(
        statements.many,
        statements.one,
        lambda ask: ask[0],
        max_size=16,
        name="tests",
        gather_s=gather_s,
        busy=busy if callable(busy) else lambda: busy,
    )


def test_a_leader_gathers_the_asks_of_the_other_busy_threads(statements: Statements) -> None:
    statements.release.set()
    # Two threads hold a step: the first to ask waits (up to a long gather) for the
    # other, and both share one statement as soon as it has asked.
    groups = _gathering(statements, busy=2, gather_s=30.0)
    first = _ask(groups, ("a", 0))
    wait_for(lambda: len(groups.waiting()) == 1, what="the leader gathering")
    second = _ask(groups, ("b", 1))
    assert (first.join(), second.join()) == ("a0:many", "b1:many")
    assert [(kind, ask) for kind, _, ask in statements.calls] == [("many", [("a", 0), ("b", 1)])]


def test_a_thread_alone_in_its_process_never_gathers(statements: Statements) -> None:
    statements.release.set()
    groups = _gathering(statements, busy=1, gather_s=30.0)
    # Caller.join gives it 10 s: a gather of 30 s would fail this.
    assert _ask(groups, ("a", 0)).join() == "a0:one"


def test_a_leader_goes_alone_when_the_others_do_not_ask_in_time(statements: Statements) -> None:
    statements.release.set()
    groups = _gathering(statements, busy=3, gather_s=0.05)
    started = time.monotonic()
    assert _ask(groups, ("a", 0)).join() == "a0:one"
    assert time.monotonic() - started >= 0.05  # it did wait for them first
    assert [kind for kind, _, _ in statements.calls] == ["one"]


def test_a_leader_stopped_while_gathering_passes_the_lead_on(statements: Statements) -> None:
    statements.release.set()
    calls = []

    def busy() -> int:
        calls.append(1)
        if len(calls) == 1:  # as an interrupt raised into the gathering thread
            raise RuntimeError("interrupted")
        return 1

    groups = _gathering(statements, busy, gather_s=30.0)
    first = _ask(groups, ("a", 0))
    assert isinstance(first.join(), RuntimeError)
    assert groups.waiting() == []
    # The lead was not kept: the next ask leads and runs at once.
    assert _ask(groups, ("b", 1)).join() == "b1:one"


def test_a_leader_stopped_while_gathering_hands_the_lead_to_a_waiting_thread(
    statements: Statements,
) -> None:
    statements.release.set()
    calls = []

    def busy() -> int:
        calls.append(1)
        if len(calls) == 1:
            return 2  # the leader waits for another ask
        if len(calls) == 2:  # woken by it: as an interrupt raised into the leader
            raise RuntimeError("interrupted")
        return 1

    groups = _gathering(statements, busy, gather_s=30.0)
    first = _ask(groups, ("a", 0))
    wait_for(lambda: len(calls) == 1, what="the leader gathering")
    second = _ask(groups, ("b", 1))
    assert isinstance(first.join(), RuntimeError)
    # The waiting thread was handed the lead and wrote its own ask.
    assert second.join() == "b1:one"
    assert [(kind, ask) for kind, _, ask in statements.calls] == [("one", ("b", 1))]
