"""On PostgreSQL the migrated schema matches the models, and the constraints hold."""

import uuid
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, col, select

import errand_schema.models  # noqa: F401  (registers the tables)
from errand_api.search import LabelIs
from errand_schema.auth import create_user
from errand_schema.models import Job, JobAttempt, JobEvent

pytestmark = pytest.mark.integration


def test_postgres_migrations_match_the_models(db_engine: Engine) -> None:
    with db_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []


def test_a_bogus_status_is_refused_by_the_database(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        user, _ = create_user(session, f"ck-{uuid.uuid4().hex[:6]}")
        session.add(Job(type="noop", owner_id=user.id, status="bogus", queue="default"))
        with pytest.raises(IntegrityError):
            session.commit()


def test_the_partial_indexes_serve_the_queries_of_their_columns(db_engine: Engine) -> None:
    """The dedup, workflow, payload-hash and label indexes hold only the jobs that set
    those columns (errand_schema.models); each query of them must still be able to use
    its index, i.e. imply the index's predicate."""
    with Session(db_engine) as session:
        user, _ = create_user(session, f"pi-{uuid.uuid4().hex[:6]}")
        labelled = Job(type="noop", owner_id=user.id, status="queued", queue="default")
        labelled.labels = {"tenant": "acme"}
        plain = Job(type="noop", owner_id=user.id, status="queued", queue="default")
        session.add_all([labelled, plain])
        session.commit()
        owner, wanted = user.id, labelled.id
    queries = {
        "ix_jobs_labels": select(Job.id).where(LabelIs("tenant", "acme")),
        "ix_jobs_owner_dedup": select(Job.id).where(
            col(Job.owner_id) == owner, col(Job.dedup_key) == "k"
        ),
        "ix_jobs_workflow_id": select(Job.id).where(col(Job.workflow_id) == uuid.uuid4()),
        "ix_jobs_payload_hash": select(Job.id).where(col(Job.payload_hash) == "h"),
    }
    with db_engine.connect() as conn:
        _assert_each_uses_its_index(conn, queries)
        assert conn.execute(queries["ix_jobs_labels"]).scalars().all() == [wanted]
        conn.rollback()


def test_lookups_by_job_use_the_unique_indexes_they_lead(db_engine: Engine) -> None:
    """``job_events`` and ``job_attempts`` have no ``job_id`` index of their own
    (migration 0009): the unique index starting with ``job_id`` serves them."""
    job_id = uuid.uuid4()
    queries = {
        "uq_job_events_job_seq": select(JobEvent.seq).where(col(JobEvent.job_id) == job_id),
        "uq_job_attempts_number": select(JobAttempt.id).where(col(JobAttempt.job_id) == job_id),
    }
    with db_engine.connect() as conn:
        _assert_each_uses_its_index(conn, queries)
        conn.rollback()


def _assert_each_uses_its_index(conn: Connection, queries: dict[str, Any]) -> None:
    """Each query (by the index it should use) can use it (sequential scans off)."""
    conn.exec_driver_sql("SET enable_seqscan = off")
    for index, query in queries.items():
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
        assert index in plan, plan
