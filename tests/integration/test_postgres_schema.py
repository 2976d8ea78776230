"""On PostgreSQL the migrated schema matches the models, and the constraints hold."""

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel

import errand_schema.models  # noqa: F401  (registers the tables)
from errand_schema.auth import create_user
from errand_schema.models import Job

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
