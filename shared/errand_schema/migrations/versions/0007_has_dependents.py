"""jobs.has_dependents

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 12:00:00

Set on a job when another is submitted depending on it, in the submitting transaction,
so the worker's completion of a job nobody depends on skips its look for dependents
(one statement of five per job). Existing dependencies are carried over.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        'jobs',
        sa.Column('has_dependents', sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute(
        "UPDATE jobs SET has_dependents = true "
        "WHERE id IN (SELECT depends_on_id FROM job_dependencies)"
    )


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('has_dependents')
