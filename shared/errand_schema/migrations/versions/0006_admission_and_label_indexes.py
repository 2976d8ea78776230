"""admission and label indexes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 02:10:00

``ix_jobs_waiting`` makes the admission probe after every finished job one index
lookup instead of a walk over the user's admitted backlog; ``ix_jobs_labels`` serves
label filters (``labels @> ...``; a plain index on SQLite).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "status = 'queued' AND published_at IS NULL AND held_at IS NULL"


def upgrade() -> None:
    op.create_index(
        'ix_jobs_waiting',
        'jobs',
        ['owner_id', 'created_at'],
        unique=False,
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )
    op.create_index(
        'ix_jobs_labels',
        'jobs',
        ['labels'],
        unique=False,
        postgresql_using='gin',
        postgresql_ops={'labels': 'jsonb_path_ops'},
    )


def downgrade() -> None:
    op.drop_index('ix_jobs_labels', table_name='jobs')
    op.drop_index('ix_jobs_waiting', table_name='jobs')
