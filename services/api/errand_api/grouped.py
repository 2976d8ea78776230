"""Plain submissions of concurrent requests handled in groups (bench/README.md).

One API process is bound by its Python (the GIL), and each plain ``POST /v1/jobs``
made three blocking round trips of its own: the token bucket's script (Redis), the
one-statement write (PostgreSQL) and the publish with its confirm (RabbitMQ). Each
round trip costs the process more than its Python: the thread hand-offs around it and
the per-call work of three clients. Measured by leaving them out one at a time
(bench/HISTORY.md): the publish ~40% of the throughput, the token bucket ~24%.

Here the event loop hands each plain submission (see :mod:`errand_api.fastpath`) of a
caller with no in-flight cap to a thread of its own (or a few). A thread takes every
submission waiting (up to ``ERRAND_SUBMIT_GROUP_MAX``) and runs them as one group, as
PostgreSQL's group commit does for flushes:

1. the token bucket for every one, in one pipeline (Redis runs the scripts in order,
   each atomically, as for one request after the other);
2. each job validated and built in the request's context (its trace, its log
   context), on a session of its own: a plain one (a type that reuses no results, a
   caller with no in-flight cap) as plain objects with the rows' values
   (:func:`~errand_api.submission.build_plain`), any other by the route's own
   :func:`~errand_api.submission.create_job`, then written, committed and published
   alone, as the route does;
3. every plain one written in one statement (:func:`~errand_api.hotpath.write_many`,
   one transaction); if that statement fails, each is written alone by the same
   statement, so one bad row fails alone;
4. events, metrics, log line and answer as the route makes them
   (:func:`~errand_api.routes.jobs.finish_submission`);
5. every message in one AMQP transaction (:class:`~errand_api.publisher.GroupPublisher`);
   a message the broker did not take un-admits its job, which the reconciler sends
   later, as for the route;
6. each answer handed back to the event loop.

Each request is answered after its job is committed and its message taken by the
broker, as before. What a group shares: one wait. A slow statement or broker delays
every submission of its group (and, with one thread, the groups behind it).

One thread by default (``ERRAND_SUBMIT_GROUP_THREADS``): with two, the groups were
smaller and the process spent its GIL on more hand-offs (3 of 4 alternating pairs
slower, bench/HISTORY.md).
"""

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dramatiq.brokers.rabbitmq import RabbitmqBroker
from fastapi import Response
from sqlalchemy import update
from sqlmodel import Session, col

from errand_api.admission import publish_admitted
from errand_api.deps import Services
from errand_api.errors import ShuttingDown
from errand_api.hotpath import holds_connection, write_many, write_submission
from errand_api.publisher import GroupPublisher, Outgoing
from errand_api.routes import jobs
from errand_api.schemas import JobCreate
from errand_api.submission import Created, build_plain, create_job
from errand_schema.auth import CALLER_KEY, CallerLimits, Principal
from errand_schema.events import JobEventMessage
from errand_schema.flow import admissible_at_once
from errand_schema.messages import RunJobStep
from errand_schema.models import Job

logger = logging.getLogger(__name__)

#: What a group publishes: (message, queue, priority) of the route's admissions.
Admitted = list[tuple[RunJobStep, str, str]]


@dataclass
class _Item:
    """One submission on its way through a group."""

    principal: Principal
    limits: CallerLimits
    body: JobCreate
    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Response]"
    session: Session | None = None
    response: Response = field(default_factory=lambda: _sub_response())
    created: Created | None = None
    #: A plain submission's ``queued`` event row (:func:`build_plain`): it goes into
    #: the group's statement. None: it goes alone.
    event_row: Any = None
    admit: bool = False
    #: The answer, or what to raise in the request; None while under way.
    outcome: Response | BaseException | None = None
    #: Messages to send with the group's, once ``outcome`` is set.
    admitted: Admitted = field(default_factory=list)
    #: Its events, appended to the stream with the group's, before the messages.
    events: list[JobEventMessage] = field(default_factory=list)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the request's context (trace, log context)."""
        return self.context.run(fn, *args)


def _sub_response() -> Response:
    """FastAPI's sub-response: headers only, no status until the route sets one."""
    sub = Response()
    del sub.headers["content-length"]
    sub.status_code = None  # type: ignore[assignment]
    return sub


def groupable(body: JobCreate, limits: CallerLimits, default_cap: int) -> bool:
    """Whether a submission may go to a group: none of what takes the route's other
    paths at once (deduplication's lock, dependencies, a start time, an in-flight cap
    whose admission reads and locks the user's jobs: those run on the request threads,
    several at once, as before)."""
    cap = limits.max_in_flight if limits.max_in_flight is not None else default_cap
    return (
        cap <= 0
        and body.dedup is None
        and not body.depends_on
        and body.run_at is None
        and body.delay_s is None
    )


class SubmissionGroups:
    """The threads that run plain submissions in groups (see the module)."""

    def __init__(self, services: Services, *, threads: int = 1, max_group: int = 64) -> None:
        self._services = services
        self._threads_wanted = threads
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    async def submit(self, principal: Principal, limits: CallerLimits, body: JobCreate) -> Response:
        """The answer to one plain submission (raises what the route would raise).

        Raises:
            ShuttingDown: The API is stopping (no thread takes submissions any more).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Response] = loop.create_future()
        item = _Item(principal, limits, body, contextvars.copy_context(), loop, future)
        with self._lock:
            if self._closed:
                raise ShuttingDown("The API is shutting down; retry shortly.", {"Retry-After": "1"})
            self._start()
            self._queue.put(item)
        return await future

    def close(self, timeout_s: float = 10.0) -> None:
        """Answer what is queued, then stop the threads; what they could not take in
        ``timeout_s`` is answered ``503``."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
            for _ in threads:
                self._queue.put(None)
        for thread in threads:
            thread.join(timeout_s)
        left = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item.outcome = ShuttingDown(
                    "The API is shutting down; retry shortly.", {"Retry-After": "1"}
                )
                left.append(item)
        _answer(left)

    def _start(self) -> None:
        """Start the threads wanted (again, for one that died). Under ``_lock``."""
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self._threads_wanted:
            thread = threading.Thread(
                target=self._run, name=f"errand-submit-{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        broker = self._services.broker
        assert isinstance(broker, RabbitmqBroker)  # see create_app
        publisher = GroupPublisher(broker)
        stopped = False
        try:
            while True:
                first = self._queue.get()
                if first is None:
                    stopped = True
                    return
                group = [first]
                while len(group) < self._max_group:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stopped = True
                        break
                    group.append(nxt)
                try:
                    _Group(self._services, publisher, group).run()
                except Exception:  # never lose the thread: the group answered already
                    logger.exception("a group of submissions failed after its answers")
                if stopped:
                    return
        finally:
            publisher.close()
            # This thread's connection of the broker (queue declarations, and the
            # route's publishes of what went alone): closed with the thread.
            del broker.connection
            if not stopped:  # ended by what no handler caught: another takes its place
                with self._lock:
                    if not self._closed:
                        self._threads.remove(threading.current_thread())
                        self._start()


class _Group:
    """One group of submissions, from the token bucket to the answers."""

    def __init__(self, services: Services, publisher: GroupPublisher, items: list[_Item]) -> None:
        self.services = services
        self.publisher = publisher
        self.items = items

    def run(self) -> None:
        try:
            try:
                self._tokens()
                self._create()
                self._write()
            except Exception as exc:  # answer every request, whatever happened
                logger.exception("a group of %d submissions failed", len(self.items))
                for item in self.items:
                    if item.outcome is None:
                        item.outcome = exc
            try:
                # Whatever the answers: what was committed as admitted is sent (or
                # un-admitted for the reconciler), even for an item that failed later.
                self._publish()
            except Exception as exc:
                logger.exception("the messages of a group of %d submissions", len(self.items))
                for item in self.items:
                    if item.admitted:
                        item.outcome = exc
        finally:  # even when the thread itself ends here: nobody is left waiting
            _answer(self.items)
            for item in self.items:
                self._close(item)

    @staticmethod
    def _close(item: _Item) -> None:
        session, item.session = item.session, None
        if session is not None:
            try:
                session.close()
            except Exception:  # its connection is broken: the pool drops it
                logger.debug("closing a submission's session failed", exc_info=True)

    def _live(self) -> list[_Item]:
        return [item for item in self.items if item.outcome is None]

    def _tokens(self) -> None:
        """The token bucket of every submission, in one round trip."""
        services = self.services
        takes, asking = [], []
        for item in self.items:
            session = Session(services.engine, expire_on_commit=False)
            session.info[CALLER_KEY] = item.limits  # as get_principal leaves a cached caller
            item.session = session
            take = self._step(item, jobs.token_bucket_of, session, services, item.principal, 1)
            if item.outcome is None:
                takes.append(take)
                asking.append(item)
        for item, decision in zip(asking, services.limiter.take_many(takes), strict=True):
            if isinstance(decision, Exception):
                item.outcome = decision
            else:
                self._step(item, jobs.enforce, decision, item.response)

    def _create(self) -> None:
        """Each job built: a plain one without ORM rows, kept for the group's statement
        (:func:`~errand_api.submission.build_plain`); any other as the route builds it
        (:func:`~errand_api.submission.create_job`), finished alone."""
        services = self.services
        cap = services.settings.max_in_flight_per_user
        for item in self._live():
            session = item.session
            assert session is not None
            args = (session, services.catalog, item.principal, item.body, services.rules)
            built = self._step(item, build_plain, *args, cap)
            if item.outcome is not None:
                continue
            if built is not None:
                # Its building may have read the database (a type's first use in a
                # while): hand that connection back now, as a group's sessions all
                # holding one could exhaust the pool (the reads wrote nothing).
                if holds_connection(session):
                    self._step(item, session.commit)
                    if item.outcome is not None:
                        continue
                item.created, item.event_row = built.created, built.event_row
                continue
            item.created = self._step(item, create_job, *args)
            if item.outcome is not None:
                continue
            created = item.created
            assert created is not None
            item.admit = created.new and admissible_at_once(session, created.job, cap)
            self._alone(item)

    def _write(self) -> None:
        """The plain submissions' rows in one statement, then each one committed and
        answered (its messages kept for the group's publish)."""
        plain = [item for item in self._live() if item.event_row is not None]
        if not plain:
            return
        rows = [(item.created, item.event_row) for item in plain]
        try:
            with self.services.engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as conn:
                published = write_many(conn, rows)  # type: ignore[arg-type]
        except Exception:
            logger.warning(
                "the statement of %d submissions failed; writing them one by one",
                len(plain),
                exc_info=True,
            )
            for item in plain:
                self._step(item, self._write_alone, item)
            return
        for item, at in zip(plain, published, strict=True):
            self._step(item, self._finish, item, at)

    def _write_alone(self, item: _Item) -> None:
        """A plain submission of a group whose statement failed: in a statement of its
        own (the same one, one row)."""
        assert item.created is not None
        with self.services.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            (published_at,) = write_many(conn, [(item.created, item.event_row)])
        self._finish(item, published_at)

    def _finish(self, item: _Item, published_at: Any) -> None:
        session, created = item.session, item.created
        assert session is not None
        assert created is not None
        created.job.published_at = published_at
        messages = jobs.commit_submission(self.services, session, created, published_at is not None)
        item.outcome = jobs.finish_submission(
            self.services,
            session,
            created,
            item.response,
            messages,
            item.admitted.extend,
            item.events.extend,
        )

    def _alone(self, item: _Item) -> None:
        """The route's own path for one submission (write, commit, publish, answer)."""
        self._step(item, self._route_path, item)

    def _route_path(self, item: _Item) -> None:
        session, created = item.session, item.created
        assert session is not None
        assert created is not None
        services = self.services
        at_once = write_submission(session, created, admit=item.admit) if created.new else None
        messages = jobs.commit_submission(services, session, created, at_once)
        item.outcome = jobs.finish_submission(
            services,
            session,
            created,
            item.response,
            messages,
            lambda m: publish_admitted(services, session, m),
        )

    def _publish(self) -> None:
        """Every event of the group appended to the stream at once, then every admitted
        message in one transaction; the jobs of those the broker did not take are
        un-admitted (the reconciler sends them later)."""
        self.services.events.publish([e for item in self.items for e in item.events])
        outgoing: list[Outgoing] = []
        owners: list[_Item] = []
        for item in self.items:
            if item.admitted:
                for msg, queue_name, priority in item.admitted:
                    outgoing.append((msg, queue_name, priority, item.context))
                    owners.append(item)
        if not outgoing:
            return
        sent = self.publisher.publish(outgoing)
        unsent = [m[0].job_id for m, ok in zip(outgoing, sent, strict=True) if not ok]
        if not unsent:
            return
        try:
            with self.services.engine.begin() as conn:
                conn.execute(update(Job).where(col(Job.id).in_(unsent)).values(published_at=None))
        except Exception as exc:  # as the route: a failed un-admission is a 500
            for (msg, *_), item in zip(outgoing, owners, strict=True):
                if msg.job_id in unsent:
                    item.outcome = exc

    def _step(self, item: _Item, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the item's context; what it raises becomes its outcome."""
        try:
            return item.run(fn, *args)
        except Exception as exc:
            item.outcome = exc
            self._close(item)  # a connection it holds goes back to the pool now
            return None


def _answer(items: list[_Item]) -> None:
    """Hand each item's outcome to its request's event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
    for item in items:
        by_loop.setdefault(item.loop, []).append(item)
    for loop, waiting in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(items: list[_Item]) -> None:
    for item in items:
        if item.future.done():
            continue
        outcome = item.outcome
        if isinstance(outcome, Response):
            item.future.set_result(outcome)
        else:
            item.future.set_exception(
                outcome if outcome is not None else RuntimeError("submission not handled")
            )
