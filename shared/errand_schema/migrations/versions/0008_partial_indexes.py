"""partial indexes for the columns most jobs leave unset

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 20:40:00

Every UPDATE of a job that moves its status (twice per step) gives the row new entries
in each of its indexes whose predicate it meets. The indexes of dedup keys, workflows,
payload hashes and labels now hold only the jobs that set them (an unlabelled job
holds JSON null): every query of those columns compares them with a value, which
implies the predicate (the label filter spells it out).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (name, columns, predicate); the predicate applies on both PostgreSQL and SQLite.
PARTIAL = [
    ('ix_jobs_owner_dedup', ['owner_id', 'dedup_key'], 'dedup_key IS NOT NULL'),
    ('ix_jobs_workflow_id', ['workflow_id'], 'workflow_id IS NOT NULL'),
    ('ix_jobs_payload_hash', ['payload_hash'], 'payload_hash IS NOT NULL'),
]
LABELLED = "labels @> '{}'::jsonb"


def upgrade() -> None:
    for name, columns, predicate in PARTIAL:
        op.drop_index(name, table_name='jobs')
        op.create_index(
            name,
            'jobs',
            columns,
            unique=False,
            postgresql_where=sa.text(predicate),
            sqlite_where=sa.text(predicate),
        )
    _labels_index(LABELLED)


def downgrade() -> None:
    _labels_index(None)
    for name, columns, _ in PARTIAL:
        op.drop_index(name, table_name='jobs')
        op.create_index(name, 'jobs', columns, unique=False)


def _labels_index(predicate: str | None) -> None:
    """Build the GIN label index again (PostgreSQL; a plain index on SQLite, as it was)."""
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.drop_index('ix_jobs_labels', table_name='jobs')
    op.create_index(
        'ix_jobs_labels',
        'jobs',
        ['labels'],
        unique=False,
        postgresql_using='gin',
        postgresql_ops={'labels': 'jsonb_path_ops'},
        postgresql_where=sa.text(predicate) if predicate else None,
    )
